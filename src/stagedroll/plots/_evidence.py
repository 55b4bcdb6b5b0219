"""The health gate's evidence over time against its bars, and each arm's error rate."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .. import Action, RolloutStatus, Status, Transition
from ._figure import (
    ACTION_STYLE,
    MAX_LABELS,
    Mark,
    TimeAxis,
    action_label,
    chronological,
    label,
    new_figure,
    not_labelled,
)
from ._figure import place_labels as _place
from ._timeline import end_of_span

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["evidence"]

ERRORS, LATENCY, NEW, OLD = "#1f6fb2", "#8e44ad", "#c0392b", "#7f8c8d"
FREEZE, ROLLBACK = "#e67e22", "#c0392b"
FLOOR = 1e-3  # the lowest e-value shown: below it the picture says nothing more
MAX_SAMPLES = 20_000
MIN_CALLS = 300  # an arm's error rate is drawn from this many calls of the stage on


def _new_epoch(entry: Transition) -> bool:
    """Whether the gate's evidence starts afresh after ``entry`` (see docs/transitions.md)."""
    if entry.action in (Action.START, Action.ROLLBACK):
        return True
    return entry.to_status is Status.RUNNING and entry.from_status is not Status.RUNNING


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _e(value: float | None) -> float:
    return max(value, FLOOR) if value is not None else math.nan


def _bar(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.3g}"


def _series(
    entries: list[Transition], samples: Sequence[tuple[float, RolloutStatus]]
) -> tuple[list[tuple[float, float, float]], list[Transition]]:
    """``(time, E errors, E latency)`` in order, ``nan`` between epochs; the entries with evidence.

    The samples and the evidence of each transition are merged by time; a transition that
    begins a new epoch breaks the line just after it.
    """
    points: list[tuple[float, int, float, float]] = []  # time, order, e errors, e latency
    marked = []
    for entry in entries:
        e_errors = _number(entry.evidence.get("e_errors"))
        if e_errors is not None:
            e_latency = _number(entry.evidence.get("e_latency"))
            points.append((entry.at, 0, _e(e_errors), _e(e_latency)))
            marked.append(entry)
        if _new_epoch(entry):
            points.append((entry.at, 1, math.nan, math.nan))
    for at, status in samples:
        health = status.health
        points.append((at, 2, _e(health.e_errors), _e(health.e_latency)))
    points.sort(key=lambda p: (p[0], p[1]))
    return [(t, e, lat) for t, _, e, lat in points], marked


def _rates(
    axes: Any, entries: list[Transition], samples: Sequence[tuple[float, RolloutStatus]],
    time: TimeAxis,
) -> None:  # fmt: skip
    """Each arm's error rate from the samples; else its units with an error, per transition."""
    if samples:
        for arm, colour, name in (("treatment", NEW, "new path"), ("control", OLD, "old path")):
            xs, ys = [], []
            for at, status in samples:
                stats = getattr(status, arm)
                xs.append(time(at))
                calls = stats.calls
                ys.append(100.0 * stats.errors / calls if calls >= MIN_CALLS else math.nan)
            axes.plot(xs, ys, color=colour, linewidth=1.5, label=name)
        axes.set_ylabel("errors\n(% of calls)")
        axes.set_ylim(bottom=0)
    else:
        for arm, colour, name in (("treatment", NEW, "new path"), ("control", OLD, "old path")):
            xs, ys = [], []
            for entry in entries:
                count = _number(entry.evidence.get(f"error_events_{arm}"))
                if count is not None:
                    xs.append(time(entry.at))
                    ys.append(count)
            axes.plot(xs, ys, color=colour, marker="o", linestyle="none", label=name)
        axes.set_ylabel("units with an error\n(at each transition)")
        axes.set_ylim(bottom=0)
    axes.legend(loc="upper left", fontsize=8, ncols=2, framealpha=0.85, edgecolor="none")
    axes.grid(axis="y", color="#e0e0e0", linewidth=0.8)
    axes.spines[["top", "right"]].set_visible(False)


def _drawn(bar: float | None) -> bool:
    return bar is not None and math.isfinite(bar) and bar > 0


def _bars(upper: Any, freeze_at: float | None, rollback_at: float | None) -> None:
    """The freeze and rollback bars as labelled lines, or a note that they are unknown."""
    for bar, colour, words in ((freeze_at, FREEZE, "freeze"), (rollback_at, ROLLBACK, "roll back")):
        if bar is None or not _drawn(bar):
            continue
        upper.axhline(bar, color=colour, linestyle=(0, (6, 4)), linewidth=1.3, zorder=1)
        upper.annotate(
            f"{words} at E = {_bar(bar)}",
            xy=(0.0, bar),
            xycoords=("axes fraction", "data"),
            xytext=(4, 3),
            textcoords="offset points",
            ha="left",
            va="bottom",
            fontsize=8,
            color=colour,
        )
    if not (_drawn(freeze_at) or _drawn(rollback_at)):
        note = "bars unknown: no policy for this rollout"
        upper.text(0.99, 0.97, note, transform=upper.transAxes, ha="right", va="top",
                   fontsize=8, color="#555555")  # fmt: skip


def _transitions(panels: Sequence[Any], entries: list[Transition], time: TimeAxis) -> list[Mark]:
    """Each transition as a vertical line across ``panels``; their marks, to label."""
    marks: list[Mark] = []
    lines: dict[str, list[float]] = {}
    for entry in entries:
        if entry.action is Action.START:
            continue
        _, colour = ACTION_STYLE[entry.action]
        x = time(entry.at)
        lines.setdefault(colour, []).append(x)
        marks.append((x, 1.0, action_label(entry), colour, False))
    burst = len(marks) > MAX_LABELS  # many lines: faint and solid, or dots make stripes
    for colour, at in lines.items():  # one collection per colour, however many transitions
        for axes in panels:
            axes.vlines(at, 0, 1, transform=axes.get_xaxis_transform(), colors=colour,
                        linewidth=0.6 if burst else 1, linestyles="-" if burst else ":",
                        alpha=0.35 if burst else 1.0, zorder=1)  # fmt: skip
    return marks


def evidence(
    history: Iterable[Transition],
    *,
    samples: Iterable[tuple[float, RolloutStatus]] | None = None,
    freeze_at: float | None = None,
    rollback_at: float | None = None,
    until: float | None = None,
    title: str | None = None,
) -> Figure:
    """The evidence of a rollout's health gate over time, against its bars.

    The upper panel draws the error test's e-value ``E`` (and the latency test's, when
    the rollout tests latency) on a log scale, with the freeze and rollback bars as
    labelled lines and each transition as a labelled vertical line. Its points come from
    the evidence that each history entry carries and, for a smooth curve, from
    ``samples``: ``(clock time, status)`` pairs read while the rollout ran
    (``rollouts.status(name)`` every so many calls). The evidence starts afresh after a
    rollback or a resume, and the curve breaks there. The lower panel draws each arm's
    error rate (errors per call in the stage, from the samples, once the arm has 300 calls
    there), or without samples, each arm's units with an error at each transition.

    The bars are ``freeze_at`` and ``rollback_at``, else those of the last sample
    (``health.freeze_at_errors``, ``health.rollback_at_errors``); with neither, the panel
    says that they are unknown. At most 12 transitions are labelled, the newest that fit;
    the others are drawn unlabelled, and a note says how many. The time axis fits the
    data (in seconds, minutes, hours or days), or runs to ``until``. At most the newest
    2,000 entries and 20,000 samples are drawn. Raises
    :class:`~stagedroll.exceptions.MissingExtraError` without matplotlib, and
    ``ValueError`` when there is nothing to draw or the history mixes rollouts.
    """
    entries = chronological(history)
    sampled = sorted(samples or (), key=lambda s: s[0])[-MAX_SAMPLES:]
    names = {e.rollout for e in entries} | {s.rollout for _, s in sampled}
    if len(names) > 1:
        raise ValueError(f"history: entries of {len(names)} rollouts; draw one at a time")
    points, marked = _series(entries, sampled)
    if not points:
        raise ValueError("history: no transition or sample to draw")
    if sampled:
        last = sampled[-1][1].health
        freeze_at = freeze_at if freeze_at is not None else last.freeze_at_errors
        rollback_at = rollback_at if rollback_at is not None else last.rollback_at_errors
    times = [p[0] for p in points]
    start = entries[0].at if entries else times[0]
    end = end_of_span(start, times[-1], until)
    time = TimeAxis.spanning(start, end)
    figure, (upper, lower) = new_figure(2, height=5.6, ratios=(2.3, 1))

    xs = [time(t) for t in times]
    upper.plot(xs, [p[1] for p in points], color=ERRORS, linewidth=2, label="E, errors")
    if any(not math.isnan(p[2]) and p[2] != 1.0 for p in points):
        upper.plot(xs, [p[2] for p in points], color=LATENCY, linewidth=1.5, linestyle="--",
                   label="E, slow calls")  # fmt: skip
    marked_e = [_e(_number(e.evidence.get("e_errors"))) for e in marked]
    upper.plot([time(e.at) for e in marked], marked_e,
               linestyle="none", marker="o", markersize=5, color=ERRORS, markeredgecolor="white",
               label="at a transition")  # fmt: skip
    upper.set_yscale("log")
    known = [p[1] for p in points if not math.isnan(p[1])]
    bars = [b for b in (freeze_at, rollback_at) if b is not None and _drawn(b)]
    low = min([*known, 0.5])
    high = max([*known, *bars, 10.0])
    upper.set_ylim(max(low / 2, FLOOR / 2), high * 6)
    _bars(upper, freeze_at, rollback_at)
    upper.axhline(1.0, color="#bbbbbb", linewidth=0.8, zorder=0)
    marks = _transitions((upper, lower), entries, time)
    upper.set_xlim(time(start), time(end))
    upper.set_ylabel("evidence E (log)")
    if len(upper.get_legend_handles_labels()[0]) > 2:  # the slow calls' curve too
        upper.legend(loc="upper left", fontsize=8, frameon=False)
    upper.spines[["top", "right"]].set_visible(False)
    not_labelled(upper, _place(upper, marks, top=True))
    _rates(lower, entries, sampled, time)
    lower.set_xlabel(time.title())
    name = next(iter(names))
    heading = title if title is not None else f"{name}: the health gate's evidence"
    figure.suptitle(label(heading, 80), fontsize=11, x=0.01, ha="left")
    return figure
