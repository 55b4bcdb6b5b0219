"""The timeline of a rollout: the share of units it served over time, and each transition."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from .. import Action, StageInfo, Status, Transition
from ._figure import (
    ACTION_STYLE,
    STATUS_SHADE,
    Mark,
    TimeAxis,
    action_label,
    chronological,
    label,
    new_figure,
    not_labelled,
    place_labels,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Ladder", "end_of", "end_of_span", "timeline"]

Ladder: TypeAlias = Sequence[StageInfo] | Sequence[tuple[str, float]]
"""A stage ladder: ``status().stages``, or ``(name, percent)`` pairs (``RolloutState.stages``)."""
MAX_PANELS = 6
LINE = "#37474f"


def _pairs(ladder: Ladder) -> list[tuple[str, float]]:
    return [(s.name, s.percent) if isinstance(s, StageInfo) else (s[0], s[1]) for s in ladder]


def _level(status: Status | None, stage: int, last: int) -> int:
    """Where a status and stage put the rollout on the stage axis: 0 is 0 %, ``i + 1`` stage ``i``.

    An entry leaves the rollout at its ``to_`` status and stage, and found it at its ``from_`` ones.
    """
    if status is Status.KILLED:
        return 0
    if status is Status.COMPLETE:
        return max(last, stage) + 1
    return max(stage, -1) + 1


def _tick(index: int, ladder: list[tuple[str, float]]) -> str:
    if index == 0:
        return "0 %"
    if index - 1 < len(ladder):
        name, percent = ladder[index - 1]
        return f"{label(name, 20)} \u00b7 {percent:g} %"
    return f"stage {index - 1}"


def end_of(entries: Sequence[Transition], until: float | None) -> float:
    """Where the time axis ends: ``until``, else a little after the last entry."""
    return end_of_span(entries[0].at, entries[-1].at, until)


def end_of_span(first: float, last: float, until: float | None) -> float:
    """Where a time axis from ``first`` ends: ``until`` when later than ``last``, else after it.

    6 % of the span after ``last`` (a minute when the span is nil): the axis fits the data.
    """
    if until is not None and until > last:
        return until
    span = last - first
    return last + (span * 0.06 if span > 0 else 60.0)


def _panel(axes: Any, entries: list[Transition], ladder: list[tuple[str, float]],
           time: TimeAxis, end: float) -> None:  # fmt: skip
    last = len(ladder) - 1
    levels = [_level(e.to_status, e.to_stage, last) for e in entries]
    xs = [time(e.at) for e in entries] + [time(end)]
    axes.step(xs, [*levels, levels[-1]], where="post", color=LINE, linewidth=2, zorder=2,
              label="stage in force")  # fmt: skip
    spans: dict[Status, list[tuple[float, float]]] = {}
    for entry, x0, x1 in zip(entries, xs, xs[1:], strict=False):
        if entry.to_status in STATUS_SHADE:
            spans.setdefault(entry.to_status, []).append((x0, x1 - x0))
    for status, (colour, name) in STATUS_SHADE.items():  # one shape per status, however many
        if status in spans:
            axes.broken_barh(spans[status], (0, 1), transform=axes.get_xaxis_transform(),
                             color=colour, zorder=0, linewidth=0, label=name)  # fmt: skip
    shaded = set(spans)
    marks: list[Mark] = []
    points: dict[Action, tuple[list[float], list[int]]] = {}
    for entry, x, level in zip(entries, xs, levels, strict=False):
        if entry.action is Action.START:
            continue
        _, colour = ACTION_STYLE[entry.action]
        at, where = points.setdefault(entry.action, ([], []))
        at.append(x)
        where.append(level)
        down = _level(entry.from_status, entry.from_stage, last) > level
        marks.append((x, level, action_label(entry), colour, down))
    for action, (at, where) in points.items():  # one line of markers per action
        marker, colour = ACTION_STYLE[action]
        axes.plot(at, where, marker=marker, color=colour, markersize=8, linestyle="none",
                  zorder=3, markeredgecolor="white")  # fmt: skip
    top = max(len(ladder), *levels)
    below_zero = any(down and level == 0 for _, level, _, _, down in marks)
    axes.set_ylim(-1.0 if below_zero else -0.4, top + 1.1)  # room for a label under 0 %
    axes.set_yticks(range(top + 1), [_tick(i, ladder) for i in range(top + 1)])
    axes.set_ylabel("% of units (stage)")
    axes.set_xlim(xs[0], xs[-1])
    axes.grid(axis="y", color="#e0e0e0", linewidth=0.8)
    axes.set_axisbelow(True)
    axes.spines[["top", "right"]].set_visible(False)
    not_labelled(axes, place_labels(axes, marks, top=False))
    if shaded:
        axes.legend(loc="upper left", fontsize=8, ncols=3, framealpha=0.85, edgecolor="none")


def timeline(
    history: Iterable[Transition],
    stages: Ladder | Mapping[str, Ladder] = (),
    *,
    until: float | None = None,
    title: str | None = None,
) -> Figure:
    """The share of units a rollout served over time, with each transition marked.

    ``history`` is what ``Rollouts.history(name)`` or ``Steering.history(name)`` returns
    (any order); ``stages`` the ladder that names the stages (``status(name).stages``, or
    ``RolloutState.stages``). A history of several rollouts draws one panel each, sharing
    the time axis, and takes their ladders as a mapping by name. The line steps at each
    transition; frozen, rolled back and killed spans are shaded; advance, freeze,
    unfreeze, rollback, kill and complete are marked and labelled with who made them
    ("health gate" for stagedroll's own). At most 12 transitions are labelled, the newest
    that fit (a burst would bury the picture): the others are marked only, and a note says
    how many. The time axis runs to ``until`` (clock seconds), else a little past the last
    entry, in seconds, minutes, hours or days as the span suits. At most the newest 2,000
    entries are drawn.

    Raises :class:`~stagedroll.exceptions.MissingExtraError` without matplotlib
    (``pip install 'stagedroll[plot]'``), and ``ValueError`` for an empty history or one
    of more than 6 rollouts.
    """
    entries = chronological(history)
    if not entries:
        raise ValueError("history: no transition to draw")
    groups: dict[str, list[Transition]] = {}
    for entry in entries:
        groups.setdefault(entry.rollout, []).append(entry)
    if len(groups) > MAX_PANELS:
        raise ValueError(f"history: {len(groups)} rollouts; at most {MAX_PANELS} are drawn")
    ladders: dict[str, list[tuple[str, float]]] = {}
    for name in groups:
        if isinstance(stages, Mapping):
            ladders[name] = _pairs(stages.get(name, ()))
        else:
            ladders[name] = _pairs(stages)
    end = end_of(entries, until)
    time = TimeAxis.spanning(entries[0].at, end)
    tallest = max(len(ladder) for ladder in ladders.values()) or 3
    height = min(2.6 + 0.35 * tallest, 4.5) if len(groups) == 1 else 1.4 + 2.4 * len(groups)
    figure, panels = new_figure(len(groups), height=height)
    for axes, (name, group) in zip(panels, groups.items(), strict=True):
        _panel(axes, group, ladders[name], time, end)
        if len(groups) > 1 or title is None:
            axes.set_title(label(name, 60), loc="left", fontsize=10, pad=8)
    if title is not None:
        figure.suptitle(label(title, 80), fontsize=11)
    panels[-1].set_xlabel(time.title())
    return figure
