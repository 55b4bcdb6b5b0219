"""Fork safety: objects that hold locks or per-process counts renew them in a forked child.

stagedroll starts no thread, but the host may: a lock held by one of its threads at the
moment of ``fork`` would stay held forever in the child. Objects registered here are told
after every fork, in the child, to replace their locks (and forget per-process counts).
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

__all__ = ["ForkAware", "register"]


class ForkAware(Protocol):
    """An object with state that must be renewed in a forked child."""

    def _after_fork(self) -> None: ...


_registered: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def register(obj: ForkAware) -> None:
    """Call ``obj._after_fork()`` in the child after each fork, for as long as ``obj`` lives."""
    _registered.add(obj)


def _renew() -> None:
    for obj in list(_registered):
        obj._after_fork()


if hasattr(os, "register_at_fork"):  # pragma: no branch - absent on Windows only
    os.register_at_fork(after_in_child=_renew)
