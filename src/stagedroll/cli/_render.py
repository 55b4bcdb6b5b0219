r"""How the CLI shows things: text tables for people, JSON objects of a stable shape for programs.

Text that the command line did not write itself (names, reasons, actors, units, paths,
error messages) can hold terminal control characters: ``\x1b[2J`` clears a screen, ``\r``
rewrites a line. :func:`printable` escapes every character that is not printable, and
:class:`EscapingWriter`, around stdout and stderr, escapes any that is left (a newline
aside). JSON output is unchanged by it: :func:`json.dumps` escapes those characters itself.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, TextIO, cast

from .. import RolloutPolicy, RolloutStatus, Transition

__all__ = [
    "EscapingWriter",
    "dump",
    "escaping",
    "evidence_text",
    "iso",
    "printable",
    "stage_label",
    "stage_name",
    "status_object",
    "table",
    "transition_line",
    "transition_object",
]


def _escaped(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str, *, keep: str = "") -> str:
    r"""``text`` with each character that is not printable (and not in ``keep``) escaped.

    Control characters (C0, DEL, C1), line and paragraph separators, format characters
    (bidirectional overrides, zero-width ones), unassigned code points and lone surrogates
    become ``\x1b``, ``\u202e``, ... A newline is escaped too, unless kept: one value
    stays on one line.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else _escaped(c) for c in text)


class EscapingWriter(io.TextIOBase):
    """A text stream that escapes what is not printable (newlines aside) on its way out.

    A character the stream's encoding cannot write is written as a backslash escape too,
    rather than failing the command.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream

    def write(self, text: str) -> int:
        """Write ``text``, escaped; returns its length, as :meth:`io.TextIOBase.write` does."""
        shown = text if "".join(text.split("\n")).isprintable() else printable(text, keep="\n")
        try:
            self._stream.write(shown)
        except UnicodeEncodeError:
            encoding = getattr(self._stream, "encoding", None) or "ascii"
            self._stream.write(shown.encode(encoding, "backslashreplace").decode(encoding))
        return len(text)

    def flush(self) -> None:
        """Flush the stream underneath."""
        self._stream.flush()

    def isatty(self) -> bool:
        """Whether the stream underneath is a terminal."""
        return self._stream.isatty()

    def writable(self) -> bool:
        """Always: this is an output stream."""
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]  # TextIOBase declares it read-only
        """The encoding of the stream underneath."""
        return getattr(self._stream, "encoding", None) or "utf-8"


def escaping(stream: TextIO) -> TextIO:
    """``stream`` behind an :class:`EscapingWriter` (typed as the stream it stands for)."""
    return cast(TextIO, EscapingWriter(stream))


def iso(seconds: float) -> str:
    """A time of the ``Rollouts`` clock (seconds since the epoch) as ISO 8601 in UTC."""
    try:
        moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return f"{seconds:g}"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _plain(value: Any) -> Any:
    """``value`` with every non-finite float as ``None``: JSON has no ``Infinity``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def dump(value: object, out: TextIO) -> None:
    """Write ``value`` as indented JSON, and a newline."""
    out.write(json.dumps(_plain(value), indent=2, allow_nan=False) + "\n")


def table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, right: Collection[int] = ()
) -> str:
    """A text table with a header, columns two spaces apart, trailing spaces trimmed.

    Each cell is shown :func:`printable`: a cell stays on its line, whatever it holds.
    """
    every = [list(header), *([printable(cell) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in every) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in every
    )


def stage_name(policy: RolloutPolicy, stage: int) -> str | None:
    """The name of stage ``stage`` (``None`` at ``-1``, before the first stage: 0 %)."""
    if stage < 0 or not policy.stages:
        return None
    return policy.stages[min(stage, len(policy.stages) - 1)].name


def stage_label(policy: RolloutPolicy, stage: int) -> str:
    """A stage for people: its name, or ``(0 %)`` before the first stage."""
    name = stage_name(policy, stage)
    return name if name is not None else "(0 %)"


def _number(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, int | float) else "-"


def evidence_text(evidence: Mapping[str, object], *, enabled: bool = True) -> str:
    """The health evidence in one line: E, r-hat, events and units (new path/old path)."""
    if not enabled:
        return "no health gate"
    if not evidence:
        return "-"
    text = (
        f"E {_number(evidence.get('e_errors'))}, r-hat {_number(evidence.get('r_errors'))}, "
        f"events {evidence.get('error_events_treatment', 0)}/"
        f"{evidence.get('error_events_control', 0)}, "
        f"units {evidence.get('units_treatment', 0)}/{evidence.get('units_control', 0)}"
    )
    if evidence.get("slow_threshold_s") is not None or evidence.get("e_latency", 1.0) != 1.0:
        text += (
            f"; latency E {_number(evidence.get('e_latency'))}, slow "
            f"{evidence.get('slow_events_treatment', 0)}/{evidence.get('slow_events_control', 0)}"
        )
    return text


def status_object(status: RolloutStatus) -> dict[str, Any]:
    """The JSON shape of one rollout's status (documented in :mod:`stagedroll.cli`)."""
    return {
        "rollout": status.rollout,
        "environment": status.environment,
        "mode": status.mode,
        "stage": status.stage,
        "stage_name": status.stage_name,
        "percent": status.percent,
        "status": str(status.status),
        "since": status.since,
        "since_iso": iso(status.since),
        "version": status.version,
        "reason": status.reason,
        "actor": status.actor,
        "next_stage": status.next_stage,
        "waiting_for": status.waiting_for,
        "health_enabled": status.health.enabled,
        "evidence": dict(status.health.evidence()),
        "internal_errors": status.internal_errors,
    }


def transition_object(entry: Transition, policy: RolloutPolicy) -> dict[str, Any]:
    """The JSON shape of one transition (documented in :mod:`stagedroll.cli`)."""
    return {
        "rollout": entry.rollout,
        "action": str(entry.action),
        "from_stage": entry.from_stage,
        "to_stage": entry.to_stage,
        "from_stage_name": stage_name(policy, entry.from_stage),
        "to_stage_name": stage_name(policy, entry.to_stage),
        "from_status": str(entry.from_status) if entry.from_status is not None else None,
        "to_status": str(entry.to_status),
        "version": entry.version,
        "at": entry.at,
        "at_iso": iso(entry.at),
        "reason": entry.reason,
        "actor": entry.actor,
        "evidence": dict(entry.evidence),
    }


def transition_line(entry: Transition, policy: RolloutPolicy) -> str:
    """One transition in words: ``checkout: freeze at canary (running -> frozen), v4, by bob``."""
    before, after = stage_label(policy, entry.from_stage), stage_label(policy, entry.to_stage)
    where = f"at {after}" if before == after else f"{before} -> {after}"
    was = str(entry.from_status) if entry.from_status is not None else "-"
    why = f": {entry.reason}" if entry.reason else ""
    return printable(
        f"{entry.rollout}: {entry.action} {where} ({was} -> {entry.to_status}), "
        f"version {entry.version}, by {entry.actor or 'unknown'}{why}"
    )
