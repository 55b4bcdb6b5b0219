"""Policies made from the flags of Unleash, GrowthBook, LaunchDarkly and flagd.

A rollout running in another flag system moves here without moving a user: each importer
reads the vendor's exported flag definitions and writes a policy whose rollouts bucket as
the vendor did (their ``bucketing`` scheme, with the flag's own seed or salt), at the
percent each runs at now. Targeting that maps cleanly comes along (lists of unit ids,
simple attribute rules); every part that does not is reported in
:attr:`Imported.unmapped`, with the reason, never dropped silently.

>>> from stagedroll.importers import import_file
>>> imported = import_file("unleash", "export.json", environment="production")  # doctest: +SKIP
>>> print(imported.to_toml())  # doctest: +SKIP

``stagedroll import VENDOR FILE`` is the same from the command line; the migration guides
(``docs/migrating/``) show how to move a live rollout.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from ._flagd import from_flagd
from ._growthbook import from_growthbook
from ._imported import MAX_EXPORT_BYTES, Imported, Unmapped, read_export
from ._launchdarkly import from_launchdarkly
from ._unleash import from_unleash

__all__ = [
    "IMPORTERS",
    "MAX_EXPORT_BYTES",
    "Imported",
    "Unmapped",
    "Vendor",
    "from_flagd",
    "from_growthbook",
    "from_launchdarkly",
    "from_unleash",
    "import_file",
]

Vendor = Literal["unleash", "growthbook", "launchdarkly", "flagd"]

IMPORTERS: dict[str, Callable[..., Imported]] = {
    "unleash": from_unleash,
    "growthbook": from_growthbook,
    "launchdarkly": from_launchdarkly,
    "flagd": from_flagd,
}
"""Each vendor's importer, by the name ``stagedroll import`` takes."""


def import_file(
    vendor: Vendor,
    path: str | Path,
    *,
    environment: str | None = None,
    max_bytes: int = MAX_EXPORT_BYTES,
) -> Imported:
    """Read the export file ``path`` of ``vendor`` and make a policy of it.

    ``environment`` picks one of the export's environments where it has several (Unleash,
    LaunchDarkly): required then, and refused by the vendors whose exports have none. The
    file is read within ``max_bytes`` and the nesting bounds of policy files; a file that
    is not the vendor's export raises :class:`~stagedroll.exceptions.PolicyError` naming
    where, and one that cannot be read, :class:`OSError`.
    """
    if vendor not in IMPORTERS:
        raise ValueError(f"unknown vendor {vendor!r} (known: {', '.join(IMPORTERS)})")
    data = read_export(path, max_bytes=max_bytes)
    return IMPORTERS[vendor](data, environment=environment, source=str(path))
