"""What both pictures share: matplotlib imported lazily, the time axis, labels, saving."""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .. import Action, Status, Transition
from ..exceptions import MissingExtraError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "MAX_ENTRIES",
    "MAX_LABEL",
    "MAX_LABELS",
    "Mark",
    "TimeAxis",
    "action_label",
    "chronological",
    "label",
    "new_figure",
    "not_labelled",
    "place_labels",
    "save",
]

MAX_ENTRIES = 2_000
"""The newest history entries drawn at most (a history may be long; a picture cannot be)."""
MAX_LABEL = 40
"""The longest name (stage, actor) shown; longer ones are cut with an ellipsis."""
MAX_LABELS = 12
"""The transitions labelled at most in a panel (the newest that fit); the rest are marks only."""
MAX_ROWS = 3
"""The rows of labels at most on each side of the marks (a burst must not reach the title)."""
WIDTH_IN, DPI = 8.0, 100  # 800 px wide as a PNG
AUTOMATIC = "stagedroll"

ACTION_STYLE: dict[Action, tuple[str, str]] = {
    # marker, colour
    Action.ADVANCE: ("^", "#2e7d32"),
    Action.FREEZE: ("D", "#1565c0"),
    Action.UNFREEZE: ("o", "#6a1b9a"),
    Action.ROLLBACK: ("v", "#c62828"),
    Action.KILL: ("X", "#212121"),
    Action.COMPLETE: ("*", "#2e7d32"),
}
STATUS_SHADE: dict[Status, tuple[str, str]] = {
    Status.FROZEN: ("#dbe7f5", "frozen"),
    Status.ROLLED_BACK: ("#f8dede", "rolled back"),
    Status.KILLED: ("#e2e2e2", "killed"),
}


def matplotlib() -> ModuleType:
    """``matplotlib`` (with ``matplotlib.figure``); :class:`MissingExtraError` without it."""
    try:
        module = importlib.import_module("matplotlib")
        importlib.import_module("matplotlib.figure")
    except ImportError:
        raise MissingExtraError("Drawing a rollout", "plot", "matplotlib") from None
    return module  # no pyplot: a Figure draws with Agg (PNG) or the SVG writer, no GUI


def new_figure(
    rows: int = 1, *, height: float = 4.5, ratios: Sequence[float] | None = None
) -> tuple[Figure, list[Any]]:
    """A figure 800 px wide with ``rows`` panels sharing the time axis: ``(figure, axes)``."""
    mpl = matplotlib()
    figure: Figure = mpl.figure.Figure(figsize=(WIDTH_IN, height), dpi=DPI, layout="constrained")
    axes = figure.subplots(nrows=rows, ncols=1, sharex=True, squeeze=False, height_ratios=ratios)[
        :, 0
    ]
    return figure, list(axes)


def label(text: object, limit: int = MAX_LABEL) -> str:
    r"""``text`` safe to show: control characters escaped, ``$`` not read as math, cut short."""
    shown = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode() for c in str(text)
    )
    if len(shown) > limit:
        shown = shown[: limit - 1] + "\u2026"
    return shown.replace("$", r"\$")  # mathtext reads only what is between two "$"


def action_label(entry: Transition) -> str:
    """``freeze (health gate)``, ``kill (alice)``: the action and who took it."""
    who = "health gate" if entry.actor == AUTOMATIC else label(entry.actor or "unknown", 24)
    return f"{entry.action.verb} ({who})"


def chronological(history: Iterable[Transition]) -> list[Transition]:
    """The entries oldest first (``history()`` gives them newest first), the newest few only."""
    entries = sorted(history, key=lambda e: (e.at, e.version))
    return entries[-MAX_ENTRIES:]


@dataclass(frozen=True, slots=True)
class TimeAxis:
    """Clock seconds shown as time since the first entry, in a unit that suits the span."""

    origin: float
    scale: float
    unit: str

    @classmethod
    def spanning(cls, start: float, end: float) -> TimeAxis:
        """The axis from ``start`` to ``end`` (clock seconds)."""
        span = max(end - start, 0.0)
        if span <= 120:
            return cls(start, 1.0, "seconds")
        if span <= 2 * 3600:
            return cls(start, 60.0, "minutes")
        if span <= 4 * 86400:
            return cls(start, 3600.0, "hours")
        return cls(start, 86400.0, "days")

    def __call__(self, seconds: float) -> float:
        """Where the moment ``seconds`` is on the axis."""
        return (seconds - self.origin) / self.scale

    def title(self) -> str:
        """The axis label: ``time since 2023-11-14 22:13 UTC (hours)``."""
        try:
            when = datetime.fromtimestamp(self.origin, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")
        except (OverflowError, OSError, ValueError):
            return f"time since the first entry ({self.unit})"
        return f"time since {when} UTC ({self.unit})"


Mark = tuple[float, float, str, str, bool]
"""Where a transition is drawn, its label, its colour, and whether the label goes below."""


def place_labels(axes: Any, marks: Sequence[Mark], *, top: bool) -> int:
    """Write the labels of the newest marks beside them, in rows so that none overlap.

    ``marks`` are in time order. ``top``: the labels go above the panel (for vertical
    lines); else above each point, or below it when the mark says so (a step down: a label
    above would cross the line). The newest mark is always labelled; older ones are while
    a label fits in :data:`MAX_ROWS` rows on its side, up to :data:`MAX_LABELS` labels (a
    burst of transitions must not pile its labels over the title and legend). The widths
    are estimated from the text (about 6 px a character at 8 pt). Returns how many marks
    were left without a label (see :func:`not_labelled`).
    """
    low, high = axes.get_xlim()
    width = max(high - low, 1e-12)
    pixels = axes.get_window_extent().width or 700.0
    rows: dict[bool, list[float]] = {True: [], False: []}  # per side, where each row starts
    shown = 0
    for x, y, text, colour, down in reversed(marks):  # newest first
        if shown == MAX_LABELS:
            break
        below = down and not top
        starts = rows[below]
        middle = (x - low) / width * pixels
        size = 6.0 * len(text) + 8
        row = next((i for i, start in enumerate(starts) if middle + size / 2 < start), len(starts))
        if row == MAX_ROWS:
            continue
        if row == len(starts):
            starts.append(math.inf)
        starts[row] = middle - size / 2
        shown += 1
        shift = 9 + 11 * row
        where: dict[str, Any] = {"xy": (x, y)}
        if top:
            where = {"xy": (x, 1.0), "xycoords": ("data", "axes fraction")}
            shift -= 6
        axes.annotate(text, **where, xytext=(0, -shift if below else shift),
                      textcoords="offset points", ha="center", va="top" if below else "bottom",
                      fontsize=8, color=colour, annotation_clip=False)  # fmt: skip
    return len(marks) - shown


def not_labelled(axes: Any, count: int) -> None:
    """Say in a small note (the panel's lower right corner) that ``count`` marks have no label."""
    if count <= 0:
        return
    words = f"{count:,} more transition{'s' if count > 1 else ''} not labelled"
    box = {"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1.5}
    axes.text(0.995, 0.02, words, transform=axes.transAxes, ha="right", va="bottom",
              fontsize=7, color="#555555", zorder=5, bbox=box)  # fmt: skip


def save(figure: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``figure`` to ``path`` (``.png`` or ``.svg``, by its suffix), reproducibly.

    The SVG carries no date and stable ids, so the same figure gives the same file; the
    PNG is 800 px wide. Returns the path written.
    """
    target = Path(path)
    kind = target.suffix.lower().lstrip(".")
    if kind not in ("png", "svg"):
        raise ValueError(f"path: {str(target)!r} must end in .png or .svg")
    mpl = matplotlib()
    settings = {"svg.hashsalt": "stagedroll", "svg.fonttype": "none"}
    metadata: dict[str, Any] = {"Date": None} if kind == "svg" else {"Software": None}
    with mpl.rc_context(settings):
        figure.savefig(target, format=kind, dpi=DPI, metadata=metadata)
    return target
