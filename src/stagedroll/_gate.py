"""The gate's steps: when a rollout freezes, rolls back or advances by itself.

:class:`~._health.Health` weighs the evidence; this module decides what to do with it. Its
functions are pure: :func:`step` takes the plan, the view in force, the gate's verdict, the
clock's reading and the evidence, and returns the :class:`Step` to take (or ``None``);
the rollout's handle applies it by compare-and-set against the state it judged. It also
says, for ``status()``, what the next automatic step waits for.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ._health import HealthReport, Verdict
from ._plan import Plan, View
from ._state import Action, Evidence, Status

__all__ = ["Step", "advance_due", "step", "waiting_for"]


@dataclass(frozen=True, slots=True)
class Step:
    """An automatic transition to make, why, and the evidence it was judged on."""

    action: Action
    reason: str
    evidence: Evidence


def step(
    plan: Plan, view: View, verdict: Verdict, now: float, report: Callable[[], HealthReport]
) -> Step | None:
    """The automatic transition that the evidence and the clock call for, if any.

    Rollback or freeze when a test fires (``verdict``); advance when ``advance = "auto"``,
    the stage's bake time has passed since the state began, its ``min_units`` were seen on
    the new path, and the sample ratio is sound. ``report`` gives the evidence; it is
    asked only when a step is due. Nothing while processes sharing the store disagree on
    the share (a policy change rolling out), nor for an unknown state, a stopped rollout,
    or one killed in this process (``$STAGEDROLL_KILL``). Never an advance from 0 % (stage
    ``-1``, after a rollback from the first stage): only an operator starts the first stage.
    """
    state = view.state
    if not state.version or state.status not in (Status.RUNNING, Status.FROZEN) or plan.killed:
        return None
    action = verdict.action
    if action is Action.FREEZE and state.status is not Status.RUNNING:
        action = None  # already frozen: only a rollback can follow
    if action is None and state.status is Status.RUNNING and advance_due(plan, view, now) is None:
        action = Action.ADVANCE
    if action is None:
        return None
    found = report()
    if found.shares_elsewhere:
        return None  # processes disagree on the share: logged and counted when they began
    if action is Action.ADVANCE:
        if not found.sample_ratio_ok:
            return None  # logged and counted once, when it fired
        reason = _advance_reason(plan, view, found)
    else:
        reason = _breach(verdict.test, found, freeze=action is Action.FREEZE)
    return Step(action, reason, found.evidence())


def advance_due(plan: Plan, view: View, now: float) -> str | None:
    """``None`` when an automatic advance is due, else what it waits for."""
    if plan.policy.advance != "auto":
        return "an operator: advance is manual"
    if view.stage >= plan.last_stage:
        return "an operator: the last stage is reached (complete the rollout)"
    if view.stage < 0:  # at 0 % (rolled back, then resumed): only an operator starts again
        return f"an operator: at 0 % (advance to start the first stage, {plan.stages[0].name})"
    stage = plan.policy.stages[view.stage]
    if stage.bake is not None:
        left = view.state.since + stage.bake - now
        if left > 0:
            return f"bake time: {_duration(left)} left"
    seen = view.treatment.units_seen()
    if seen < stage.min_units:
        return f"units on the new path: {seen} of {stage.min_units}"
    return None


def _advance_reason(plan: Plan, view: View, report: HealthReport) -> str:
    stage = plan.policy.stages[view.stage] if view.stage >= 0 else None
    parts: list[str] = []
    if stage is not None and stage.bake is not None:
        parts.append(f"baked {_duration(stage.bake)}")
    parts.append(f"{report.units_treatment:,} users on the new path")
    evidence = f"evidence {_number(report.e_errors)}"
    if report.slow_threshold_s:
        evidence += f" (errors), {_number(report.e_latency)} (slow calls)"
    return f"healthy: {', '.join(parts)}; {evidence}, below the freeze bar"


def waiting_for(plan: Plan, view: View, health: HealthReport, now: float) -> str | None:
    """What the next automatic step waits for, in words (``None``: nothing automatic)."""
    status = view.state.status
    if plan.removed:
        return "the policy: this rollout is no longer in it (every call takes the old path)"
    if plan.killed:
        return "an operator: killed in this process by $STAGEDROLL_KILL"
    if plan.mode != "stages":
        return None
    if status in (Status.RUNNING, Status.FROZEN) and health.enabled and health.shares_elsewhere:
        return _disagreement(health)
    if status is Status.FROZEN:
        return "an operator: frozen (unfreeze to resume); a rollback if the evidence grows"
    if status is Status.ROLLED_BACK:
        return "an operator: rolled back (unfreeze or advance to resume)"
    if status is not Status.RUNNING:
        return None
    if health.enabled and not health.sample_ratio_ok:
        return "an operator: the sample ratio is off (check bucketing and reporting)"
    return advance_due(plan, view, now) or "the next outcome: an advance is due"


def _disagreement(health: HealthReport) -> str:
    elsewhere = ", ".join(f"{share * 100:g}%" for share in health.shares_elsewhere)
    return (
        f"the fleet to agree on the policy: this process tests the new path at "
        f"{health.share * 100:g}%, others at {elsewhere} (a policy change rolling out?)"
    )


def _duration(seconds: float) -> str:
    """``seconds`` in the policy's words: ``"1h30m"``, ``"45s"``."""
    seconds = max(0, round(seconds))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            count, seconds = divmod(seconds, size)
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _number(value: float) -> str:
    """An e-value or a bar for people: whole numbers from 10 on, two digits below."""
    if not math.isfinite(value):
        return "∞"
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


def _breach(test: str | None, report: HealthReport, *, freeze: bool) -> str:
    """Why the health gate froze or rolled back, in one line of words.

    ``errors: the new path failed for 30 users, the old path for 7 (4.3 times as often);
    evidence 656 ≥ 20``; the statistics behind it are the transition's ``evidence``.
    """
    if test == "latency":
        e, r, t, c = (report.e_latency, report.r_latency, report.slow_events_treatment,
                      report.slow_events_control)  # fmt: skip
        what, did = "slow calls", "was slow"
        bar = report.freeze_at_latency if freeze else report.rollback_at_latency
    else:
        e, r, t, c = (report.e_errors, report.r_errors, report.error_events_treatment,
                      report.error_events_control)  # fmt: skip
        what, did = "errors", "failed"
        bar = report.freeze_at_errors if freeze else report.rollback_at_errors
    ratio = f" ({r:.2g}\u00d7 as often)" if r is not None and math.isfinite(r) else ""
    new, old = _of(t, report.units_treatment), _of(c, report.units_control)
    return (f"{what}: the new path {did} for {new} users, the old path for {old}{ratio}; "
            f"evidence {_number(e)} \u2265 {_number(bar)}")  # fmt: skip


def _of(events: int, units: int) -> str:
    """``41 of 2,300``: the units with an event, out of those seen (when they are counted)."""
    return f"{events:,} of {units:,}" if units >= events else f"{events:,}"
