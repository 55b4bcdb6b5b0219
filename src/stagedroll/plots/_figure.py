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
    "Mark",
    "TimeAxis",
    "action_label",
    "chronological",
    "label",
    "new_figure",
    "place_labels",
    "save",
]

MAX_ENTRIES = 2_000
"""The newest history entries drawn at most (a history may be long; a picture cannot be)."""
MAX_LABEL = 40
"""The longest name (stage, actor) shown; longer ones are cut with an ellipsis."""
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


def place_labels(axes: Any, marks: Sequence[Mark], *, top: bool) -> None:
    """Write each mark's label beside it, in rows so that none overlap.

    ``top``: the labels go above the panel (for vertical lines); else above each point, or
    below it when the mark says so (a step down: a label above would cross the line). The
    widths are estimated from the text (about 6 px a character at 8 pt).
    """
    low, high = axes.get_xlim()
    width = max(high - low, 1e-12)
    pixels = axes.get_window_extent().width or 700.0
    rows: dict[bool, list[float]] = {True: [], False: []}  # per side, where each row ends
    for x, y, text, colour, down in marks:
        below = down and not top
        ends = rows[below]
        start = (x - low) / width * pixels
        size = 6.0 * len(text) + 8
        row = next((i for i, end in enumerate(ends) if start - size / 2 > end), len(ends))
        if row == len(ends):
            ends.append(-math.inf)
        ends[row] = start + size / 2
        shift = 9 + 11 * row
        where: dict[str, Any] = {"xy": (x, y)}
        if top:
            where = {"xy": (x, 1.0), "xycoords": ("data", "axes fraction")}
            shift -= 6
        axes.annotate(text, **where, xytext=(0, -shift if below else shift),
                      textcoords="offset points", ha="center", va="top" if below else "bottom",
                      fontsize=8, color=colour, annotation_clip=False)  # fmt: skip


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
