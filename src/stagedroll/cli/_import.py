"""``import``: a policy made from another flag system's export, and what did not map."""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from pathlib import Path

from ..importers import IMPORTERS, Imported, import_file
from ._main import FINDING, OK, USAGE, CliError, Context
from ._render import SCHEMA_VERSION, dump, printable

__all__ = ["add_arguments", "import_flags"]


def add_arguments(sub: argparse.ArgumentParser) -> None:
    """The arguments of ``import``."""
    sub.add_argument("vendor", choices=tuple(IMPORTERS), help="the system the export is from")
    sub.add_argument("file", metavar="FILE", help="the export: the vendor's flag JSON (or YAML)")
    sub.add_argument(
        "--source-env",
        metavar="NAME",
        help="the export's environment to take (Unleash, LaunchDarkly: when it has several)",
    )
    sub.add_argument(
        "--out",
        metavar="FILE",
        help="write the policy to FILE (.toml or .json) instead of stdout; never overwritten",
    )
    sub.add_argument(
        "--strict", action="store_true", help="exit 1 when any part of the export did not map"
    )


def import_flags(ctx: Context) -> int:
    """``import VENDOR FILE``: the policy on stdout (or ``--out``), the report on stderr."""
    args = ctx.args
    try:
        imported = import_file(args.vendor, args.file, environment=args.source_env)
    except OSError as exc:
        raise CliError(f"cannot read {args.file!r}: {exc.strerror or exc}", USAGE) from None
    imported.policy  # noqa: B018 - the output validates, or the command fails (a bug)
    unmapped = [{"flag": u.flag, "part": u.part, "reason": u.reason} for u in imported.unmapped]
    if args.out is not None:
        _write(Path(args.out), imported)
    if ctx.json:
        dump({"schema_version": SCHEMA_VERSION, "vendor": imported.vendor,
              "policy": imported.document, "unmapped": unmapped}, ctx.out)  # fmt: skip
    elif args.out is None:
        ctx.out.write(imported.to_toml())
    if not ctx.json:
        for item in imported.unmapped:
            ctx.err.write(f"stagedroll: not mapped: {printable(str(item))}\n")
        rollouts = len(imported.document.get("rollouts", {}))
        summary = f"{rollouts} rollout{'s' * (rollouts != 1)} imported from {imported.vendor}"
        ctx.err.write(f"stagedroll: {summary}, {len(unmapped)} part(s) not mapped\n")
    return FINDING if args.strict and unmapped else OK


def _write(path: Path, imported: Imported) -> None:
    """Write the policy to a new file ``path`` (its format by its suffix), never over one.

    The text goes to a temporary file beside it, which is then linked to ``path``: a write
    that fails (a full disk, a kill) leaves no partial policy behind, and a file that
    appears meanwhile is not overwritten.
    """
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise CliError(f"--out must name a .toml or .json file, not {str(path)!r}", USAGE)
    exists = f"--out: {str(path)!r} exists; stagedroll import writes a new file"
    if path.exists() or path.is_symlink():
        raise CliError(exists, USAGE)
    text = imported.to_toml() if suffix == ".toml" else imported.to_json()
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise CliError(f"--out: cannot write {str(path)!r}: {exc.strerror or exc}",
                       USAGE) from None  # fmt: skip
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.link(temporary, path)
    except FileExistsError:
        raise CliError(exists, USAGE) from None
    except OSError as exc:
        raise CliError(f"--out: cannot write {str(path)!r}: {exc.strerror or exc}",
                       USAGE) from None  # fmt: skip
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
