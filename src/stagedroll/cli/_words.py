"""What a rollout does and why, in plain words: ``status``, ``history``, the transitions.

Each function returns text that may quote a name, a reason or an actor as it was given;
the caller passes each line through :func:`~stagedroll.cli._render.fit`, which escapes it
and wraps it to the output's width.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .. import Action, HealthReport, RecentError, Status, Transition
from ._render import Ladder, iso, trigger

__all__ = [
    "Standing",
    "error_lines",
    "evidence_words",
    "headline",
    "history_lines",
    "place",
    "short_place",
    "since_line",
    "statistics",
    "transition_lines",
    "who",
]

_TIMES = "\u00d7"  # the multiplication sign: 3.4x as often
_UNIT_CAP = 50_000  # distinct units an arm counts per stage visit (docs/auto-freeze.md)
_ARMS = {"treatment": "the new path", "control": "the old path"}


def _pct(percent: float) -> str:
    return f"{percent:g} %"


def place(ladder: Ladder, stage: int) -> str:
    """Where a stage is in a sentence: ``stage canary (5 %)``, ``0 % (before the first stage)``."""
    if stage < 0:
        return "0 % (before the first stage)"
    if not ladder:  # a state written before states carried their ladder
        return f"stage #{stage + 1}"
    name, percent = ladder[min(stage, len(ladder) - 1)]
    return f"stage {name} ({_pct(percent)})"


def short_place(ladder: Ladder, stage: int) -> str:
    """Where a stage is, for a table cell: ``canary (5 %)``, ``0 % (before the first stage)``."""
    text = place(ladder, stage)
    return text.removeprefix("stage ")


def _served(ladder: Ladder, stage: int) -> float | None:
    if stage < 0:
        return 0.0
    if not ladder:
        return None
    return ladder[min(stage, len(ladder) - 1)][1]


def who(actor: str, status: Status | None = None, action: Action | None = None) -> str:
    """Who made a state or a step: an operator's name, the health gate, or stagedroll itself."""
    if actor != "stagedroll":
        return actor or "an unknown operator"
    gated = status in (Status.FROZEN, Status.ROLLED_BACK) or action in (
        Action.FREEZE,
        Action.ROLLBACK,
    )
    return "the health gate" if gated else "stagedroll (automatic)"


@dataclass(frozen=True, slots=True)
class Standing:
    """Where a rollout stands, from its live status or from its stored state alone."""

    rollout: str
    status: Status
    stage: int
    ladder: Ladder
    since: float
    version: int
    actor: str
    reason: str
    mode: str = "stages"
    """``"stages"``, or ``"fixed"``/``"off"`` where the environment decides the percent."""
    percent: float | None = None
    """The share in force, when it is known (a fixed environment's percent)."""
    environment: str | None = None
    killed_here: bool = False


def headline(s: Standing) -> str:
    """The rollout's state and what it means for the traffic, in one sentence."""
    at = place(s.ladder, s.stage)
    served = _served(s.ladder, s.stage)
    share = _pct(served) if served is not None else "its stage's share"
    if s.killed_here:
        return (
            f"killed in this process by $STAGEDROLL_KILL: the new path is off here "
            f"(the store says {s.status} at {at})"
        )
    if s.status is Status.KILLED:
        return f"killed at {at}: the new path is off for everyone"
    if s.status is Status.COMPLETE:
        return "complete: the new path is on for everyone"
    env = s.environment or "(none named)"
    if s.mode == "off":
        return f"off in environment {env}: the new path serves no one there"
    if s.mode == "fixed":
        fixed = _pct(s.percent) if s.percent is not None else "a fixed percent"
        return f"{s.status} in environment {env}, which fixes the new path at {fixed}"
    if s.status is Status.RUNNING:
        if s.stage < 0:
            return f"running at {at}: the new path serves no one yet"
        return f"running at {at}: the new path serves {share} of users"
    by = who(s.actor, s.status)
    if s.status is Status.FROZEN:
        if s.stage < 0:
            return f"frozen by {by} at {at}: the new path serves no one"
        return f"frozen by {by} at {at}: it keeps serving {share} and does not advance"
    if s.stage < 0:
        return f"rolled back by {by} to {at}: the new path serves no one"
    return f"rolled back by {by} to {at}: it serves {share} and does not advance by itself"


def since_line(s: Standing, *, reason: bool = True) -> str:
    """``since <time>, version <n>, by <who>: <reason>`` (``reason=False``: without it)."""
    why = f": {s.reason}" if s.reason and reason else ""
    return f"since {iso(s.since)}, version {s.version}, by {who(s.actor, s.status)}{why}"


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _of(failed: int, users: int) -> str:
    """`` of 2,300``: the users of an arm, out of which ``failed`` failed.

    Users are counted up to 50,000 per stage visit (the gate's cap); nothing is said when
    they were counted anew since the failures (a new stage visit).
    """
    if users < failed:
        return ""
    return f" of {users:,} or more" if users >= _UNIT_CAP else f" of {users:,}"


def _e(value: float) -> str:
    """An e-value for people: whole numbers from 10 on, two digits below."""
    if not math.isfinite(value):
        return "∞"
    if value >= 10:
        return f"{value:,.0f}"
    return f"{value:.2g}"


def evidence_words(evidence: Mapping[str, object], *, freeze_at: float | None = None) -> str:
    """The health evidence in words: who failed how often, and the evidence against its bar.

    ``the new path failed for 41 of 2,300 users, the old path for 12 of 2,280 (3.4 times
    as often); evidence 72 ≥ 20`` (with a multiplication sign). With a latency test, also
    the slow calls.
    """
    et, ec = (
        _count(evidence.get("error_events_treatment")),
        _count(evidence.get("error_events_control")),
    )
    ut, uc = _count(evidence.get("units_treatment")), _count(evidence.get("units_control"))
    if et == 0 and ec == 0:
        text = f"no failures yet ({ut:,} users on the new path, {uc:,} on the old)"
    else:
        text = (
            f"the new path failed for {et:,}{_of(et, ut)} users, "
            f"the old path for {ec:,}{_of(ec, uc)}"
        )
        ratio = evidence.get("r_errors")  # the gate's estimate, at the share in force
        if not isinstance(ratio, int | float) and et and ec and ut and uc:
            ratio = (et / ut) / (ec / uc)
        if isinstance(ratio, int | float) and math.isfinite(ratio):
            text += f" ({ratio:.2g}{_TIMES} as often)"
    slow = evidence.get("slow_threshold_s")
    if isinstance(slow, int | float):
        st, sc = (
            _count(evidence.get("slow_events_treatment")),
            _count(evidence.get("slow_events_control")),
        )
        if st or sc:
            text += f"; slow (over {slow:g} s) for {st:,} users on the new path, {sc:,} on the old"
        else:
            text += f"; no slow calls (over {slow:g} s)"
    e = evidence.get("e_errors")
    if isinstance(e, int | float):
        if freeze_at is None:
            text += f"; evidence {_e(e)}"
        elif e >= freeze_at:
            text += f"; evidence {_e(e)} ≥ {_e(freeze_at)}"
        else:
            text += f"; evidence {_e(e)}, it freezes at {_e(freeze_at)}"
    return text


def statistics(health: HealthReport) -> str:
    """The gate's statistics (``--verbose``): e-values, r-hat, the bars, the share."""
    r = "-" if health.r_errors is None else f"{health.r_errors:.3g}"
    text = (
        f"statistics: share {health.share:.4g}; errors E {health.e_errors:.4g} (freeze at "
        f"{_e(health.freeze_at_errors)}, roll back at {_e(health.rollback_at_errors)}), r-hat {r}"
    )
    if math.isfinite(health.freeze_at_latency) or health.slow_threshold_s is not None:
        rl = "-" if health.r_latency is None else f"{health.r_latency:.3g}"
        text += (
            f"; latency E {health.e_latency:.4g} (freeze at {_e(health.freeze_at_latency)}, "
            f"roll back at {_e(health.rollback_at_latency)}), r-hat {rl}"
        )
    ok = "ok" if health.sample_ratio_ok else "off: automatic advances stop"
    text += f"; sample ratio E {health.e_sample_ratio:.4g} ({ok})"
    if health.shares_elsewhere:
        text += "; other processes at shares " + ", ".join(
            f"{s:.4g}" for s in health.shares_elsewhere
        )
    return text


def _what(entry: Transition, ladder: Ladder) -> str:
    """What a transition did, in words."""
    before, after = place(ladder, entry.from_stage), place(ladder, entry.to_stage)
    action = entry.action
    if action is Action.START:
        return f"started at {after}"
    if action is Action.ADVANCE:
        return f"advanced from {before} to {after}"
    if action is Action.FREEZE:
        return f"frozen at {after}: it keeps its share and does not advance"
    if action is Action.UNFREEZE:
        return f"resumed: running at {after}" + (f" (was at {before})" if before != after else "")
    if action is Action.ROLLBACK:
        moved = f"from {before} to {after}" if before != after else f"at {after}"
        return f"rolled back {moved}: it stays there until an operator acts"
    if action is Action.KILL:
        return f"killed at {after}: the new path is off for everyone"
    return "complete: the new path is on for everyone"


def _by(entry: Transition) -> str:
    why = f": {entry.reason}" if entry.reason else ""
    kind = trigger(entry)
    if kind == "health_gate":
        return f"by the health gate{why}"
    if kind == "automatic":
        return f"by stagedroll (automatic){why}"
    return f"by the operator {entry.actor or '(unknown)'}{why}"


def transition_lines(entry: Transition, ladder: Ladder) -> list[str]:
    """A transition just made: what it did, then its version, who and why.

    After a kill, also the ways out: a plain ``unfreeze`` serves the killed stage again.
    """
    lines = [
        f"{entry.rollout}: {_what(entry, ladder)}",
        f"  version {entry.version}, {_by(entry)}",
    ]
    if entry.action is Action.KILL and entry.to_stage >= 0:
        at = place(ladder, entry.to_stage)
        lines.append(f"  unfreeze serves {at} again; rollback --to STAGE (or 0%) holds a lower one")
    return lines


def history_lines(entry: Transition, ladder: Ladder) -> list[str]:
    """One entry of the history: when, what, who and why, and the evidence in words."""
    lines = [
        f"{iso(entry.at)}  version {entry.version}: {_what(entry, ladder)}",
        f"    {_by(entry)}",
    ]
    if entry.evidence and not (trigger(entry) == "health_gate" and entry.reason):
        lines.append(f"    health: {evidence_words(entry.evidence)}")  # the gate's reason says it
    return lines


def error_lines(errors: Sequence[RecentError], *, limit: int = 5) -> list[str]:
    """The recent errors of a rollout's paths, newest first: type, message, count, arm, when."""
    if not errors:
        return ["  recent errors: none recorded"]
    lines = ["  recent errors, newest first:"]
    for error in errors[:limit]:
        times = "once" if error.count == 1 else f"{error.count:,} times"
        arm = _ARMS.get(error.arm, error.arm)
        lines.append(f"    {error.type}: {error.message}" if error.message else f"    {error.type}")
        lines.append(f"        {times} on {arm}, last seen {iso(error.last_seen)}")
    if len(errors) > limit:
        lines.append(f"    ... and {len(errors) - limit} more (--json lists them)")
    return lines
