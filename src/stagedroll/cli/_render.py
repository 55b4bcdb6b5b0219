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
import unicodedata
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, TextIO, cast

from .. import Action, RecentError, RolloutState, RolloutStatus, Status, Transition

__all__ = [
    "SCHEMA_VERSION",
    "WIDTH",
    "EscapingWriter",
    "Ladder",
    "columns",
    "dump",
    "dump_line",
    "error_object",
    "escaping",
    "fit",
    "iso",
    "printable",
    "stage_name",
    "status_object",
    "stored_object",
    "table",
    "transition_object",
    "trigger",
]

SCHEMA_VERSION = 1
"""The version of every JSON document the command line writes (``"schema_version"``)."""
WIDTH = 100
"""The columns that the default text output fits in."""

Ladder = Sequence[tuple[str, float]]
"""A rollout's stages as (name, percent), first to last: the policy's, or the stored state's."""


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


def dump_line(value: object, out: TextIO) -> None:
    """Write ``value`` as JSON on one line (a JSON Lines record), and a newline."""
    out.write(json.dumps(_plain(value), allow_nan=False) + "\n")


def _char_columns(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in "WF" else 1


def columns(text: str) -> int:
    """The terminal columns ``text`` takes: wide (CJK) characters two, combining marks none."""
    if text.isascii():
        return len(text)
    return sum(_char_columns(c) for c in text)


def _cut(word: str, room: int) -> tuple[str, str]:
    """The longest head of ``word`` that takes at most ``room`` columns (one char at least)."""
    used = 0
    for i, char in enumerate(word):
        used += _char_columns(char)
        if used > room and i > 0:
            return word[:i], word[i:]
    return word, ""


def shorten(text: str, room: int) -> str:
    """``text`` cut to ``room`` columns, ending with ``…`` when it was cut."""
    return text if columns(text) <= room else _cut(text, room - 1)[0] + "\u2026"


def fit(line: str, *, width: int = WIDTH) -> list[str]:
    """``line`` (made :func:`printable`) wrapped at spaces into lines of ``width`` columns.

    The lines after the first hang four columns deeper than the line's own indent; a word
    longer than a line is cut.
    """
    line = printable(line)
    if columns(line) <= width:
        return [line]
    indent = len(line) - len(line.lstrip(" "))
    hang = " " * min(indent + 4, width // 2)
    lines: list[str] = []
    current = line[: min(indent, width // 2)]
    for word in line[indent:].split(" "):
        prefix = current + (" " if current.strip() else "")
        if columns(prefix + word) <= width:
            current = prefix + word
            continue
        if current.strip():
            lines.append(current)
            current = hang
        rest = word
        while columns(current + rest) > width:
            head, rest = _cut(rest, width - columns(current))
            lines.append(current + head)
            current = hang
        current += rest
    if current.strip():
        lines.append(current)
    return lines


def table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, right: Collection[int] = ()
) -> str:
    """A text table with a header, columns two spaces apart, trailing spaces trimmed.

    Each cell is shown :func:`printable`: a cell stays on its line, whatever it holds. A
    row wider than :data:`WIDTH` is wrapped (:func:`fit`).
    """
    every = [list(header), *([printable(cell) for cell in row] for row in rows)]
    widths = [max(columns(row[i]) for row in every) for i in range(len(header))]

    def pad(cell: str, w: int, i: int) -> str:
        space = " " * (w - columns(cell))
        return space + cell if i in right else cell + space

    lines: list[str] = []
    for row in every:
        text = "  ".join(
            pad(cell, w, i) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        lines.extend(fit(text))
    return "\n".join(lines)


def stage_name(ladder: Ladder, stage: int) -> str | None:
    """The name of stage ``stage`` (``None`` at ``-1``, before the first stage, or unknown)."""
    if stage < 0 or not ladder:
        return None
    return ladder[min(stage, len(ladder) - 1)][0]


def trigger(entry: Transition) -> str:
    """What made a transition: ``"operator"``, ``"health_gate"`` or ``"automatic"``."""
    if entry.actor != "stagedroll":
        return "operator"
    if entry.action in (Action.FREEZE, Action.ROLLBACK):
        return "health_gate"
    return "automatic"


def transition_object(entry: Transition, ladder: Ladder) -> dict[str, Any]:
    """The JSON shape of one transition (documented in :mod:`stagedroll.cli`)."""
    return {
        "rollout": entry.rollout,
        "action": str(entry.action),
        "from_stage": entry.from_stage,
        "to_stage": entry.to_stage,
        "from_stage_name": stage_name(ladder, entry.from_stage),
        "to_stage_name": stage_name(ladder, entry.to_stage),
        "from_status": str(entry.from_status) if entry.from_status is not None else None,
        "to_status": str(entry.to_status),
        "version": entry.version,
        "at": entry.at,
        "at_iso": iso(entry.at),
        "reason": entry.reason,
        "actor": entry.actor,
        "trigger": trigger(entry),
        "evidence": dict(entry.evidence),
    }


def error_object(error: RecentError) -> dict[str, Any]:
    """The JSON shape of one recent error of a rollout's path."""
    return {
        "arm": error.arm,
        "type": error.type,
        "message": error.message,
        "count": error.count,
        "first_seen": error.first_seen,
        "first_seen_iso": iso(error.first_seen),
        "last_seen": error.last_seen,
        "last_seen_iso": iso(error.last_seen),
    }


def _served(status: Status, stage: int, ladder: Ladder) -> float | None:
    if status is Status.KILLED or stage < 0:
        return 0.0
    if status is Status.COMPLETE:
        return 100.0
    return ladder[min(stage, len(ladder) - 1)][1] if ladder else None


_STATUS_KEYS = (
    "rollout",
    "source",
    "in_policy",
    "policy_problem",
    "environment",
    "mode",
    "stage",
    "stage_name",
    "percent",
    "status",
    "since",
    "since_iso",
    "version",
    "reason",
    "actor",
    "stages",
    "next_stage",
    "waiting_for",
    "health_enabled",
    "evidence",
    "thresholds",
    "sample_ratio_ok",
    "shares_elsewhere",
    "internal_errors",
    "errors",
)
_EMPTY_OBJECT: dict[str, Any] = dict.fromkeys(_STATUS_KEYS)


def _errors(errors: Iterable[RecentError]) -> list[dict[str, Any]]:
    return [error_object(e) for e in errors]


def status_object(st: RolloutStatus) -> dict[str, Any]:
    """The JSON shape of a rollout of the policy (documented in :mod:`stagedroll.cli`)."""
    h = st.health
    return {
        **_EMPTY_OBJECT,
        "rollout": st.rollout,
        "source": "policy",
        "in_policy": True,
        "environment": st.environment,
        "mode": st.mode,
        "stage": st.stage,
        "stage_name": st.stage_name,
        "percent": st.percent,
        "status": str(st.status),
        "since": st.since,
        "since_iso": iso(st.since),
        "version": st.version,
        "reason": st.reason,
        "actor": st.actor,
        "stages": [{"name": s.name, "percent": s.percent} for s in st.stages],
        "next_stage": st.next_stage,
        "waiting_for": st.waiting_for,
        "health_enabled": h.enabled,
        "evidence": dict(h.evidence()),
        "thresholds": {
            "freeze_at_errors": h.freeze_at_errors,
            "freeze_at_latency": h.freeze_at_latency,
            "rollback_at_errors": h.rollback_at_errors,
            "rollback_at_latency": h.rollback_at_latency,
        },
        "sample_ratio_ok": h.sample_ratio_ok,
        "shares_elsewhere": list(h.shares_elsewhere),
        "internal_errors": st.internal_errors,
        "errors": _errors(st.errors),
    }


def stored_object(
    name: str,
    state: RolloutState | None,
    *,
    problem: str | None,
    environment: str | None,
    errors: Iterable[RecentError] = (),
) -> dict[str, Any]:
    """The JSON shape of a rollout steered from the store alone (``state`` ``None``: none)."""
    found: dict[str, Any] = {
        **_EMPTY_OBJECT,
        "rollout": name,
        "source": "none" if state is None else "store",
        "in_policy": False,
        "policy_problem": problem,
        "environment": environment,
        "stages": [],
        "evidence": {},
        "shares_elsewhere": [],
        "errors": [],
    }
    if state is None:
        return found
    ladder = state.stages
    last = len(ladder) - 1
    going = state.status not in (Status.KILLED, Status.COMPLETE) and state.stage < last
    return {
        **found,
        "stage": state.stage,
        "stage_name": stage_name(ladder, state.stage),
        "percent": _served(state.status, state.stage, ladder),
        "status": str(state.status),
        "since": state.since,
        "since_iso": iso(state.since),
        "version": state.version,
        "reason": state.reason,
        "actor": state.actor,
        "stages": [{"name": n, "percent": p} for n, p in ladder],
        "next_stage": ladder[state.stage + 1][0] if going else None,
        "errors": _errors(errors),
    }
