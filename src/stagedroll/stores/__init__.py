"""State stores: where rollout state and its audit trail live.

``memory://`` selects :class:`MemoryStore`. :func:`store_from_url` turns a URL into a store.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ._memory import MemoryStore
from ._protocol import StateListener, Store

__all__ = ["MemoryStore", "StateListener", "Store", "store_from_url"]

_SCHEMES = ("memory",)


def store_from_url(url: str) -> Store:
    """Return the store a URL names: ``memory://``.

    Raises :class:`ValueError` for a scheme stagedroll does not know.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        return MemoryStore()
    known = ", ".join(f"{s}://" for s in _SCHEMES)
    raise ValueError(f"unsupported store URL {url!r}: known schemes are {known}")
