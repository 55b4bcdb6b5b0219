"""The health gate's steps: when a rollout freezes, rolls back or advances by itself.

:class:`~._health.Health` says what the evidence shows; this module turns it into
transitions of a :class:`~._rollouts.Rollouts`: it reads the verdict and the clock, checks
the sample ratio before an advance, and writes the step by compare-and-set against the
state it judged. It also says, for ``status()``, what the next automatic step waits for.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from ._health import DISABLED, HealthReport
from ._state import Action, Status, Transition
from .exceptions import TransitionError

if TYPE_CHECKING:
    from ._rollout import Rollout
    from ._rollouts import Rollouts

__all__ = ["AUTOMATIC", "advance_due", "report", "step", "waiting_for"]

AUTOMATIC = "stagedroll"
"""The actor of the transitions that the health gate makes."""
_RETRY_AFTER_S = 1.0  # after a failed automatic step, wait this long before the next try


def report(owner: Rollouts, rollout: Rollout) -> HealthReport:
    """The health evidence of ``rollout`` in its current stage visit."""
    health = rollout.health
    if health is None:
        return DISABLED
    view = rollout._view
    share = rollout._share(view)
    outcomes = rollout.outcomes
    with outcomes.lock:
        for counts in view.arms:
            outcomes.fold_locked(counts)
        fired = health.sample_ratio_fired
        found = health.report(view.control, view.treatment, share)
    if not found.sample_ratio_ok and not fired:
        owner.failures.record("health.sample_ratio_mismatch", rollout=rollout.name,
                              stage=view.stage_name, share=share,
                              units_treatment=found.units_treatment,
                              units_control=found.units_control)  # fmt: skip
    return found


def step(owner: Rollouts, rollout: Rollout) -> Transition | None:
    """Make the automatic transition that the evidence and the clock call for, if any.

    Rollback or freeze when a test fires; advance when ``advance = "auto"``, the stage's
    bake time has passed since the state began, its ``min_units`` were seen on the new
    path, and the sample ratio is sound. The transition is a compare-and-set against the
    state that was judged, so two processes never both take it. Never raises: a lost race
    is no error, and a failing store is logged, counted and retried a second later.
    """
    health = rollout.health
    view = rollout._view
    state = view.state
    if (
        health is None
        or not state.version
        or state.status not in (Status.RUNNING, Status.FROZEN)
        or rollout._plan.killed
    ):
        return None  # no gate, an unknown state, stopped, or killed here ($STAGEDROLL_KILL)
    with rollout.outcomes.lock:
        verdict = health.verdict()
    action = verdict.action
    if action is Action.FREEZE and state.status is not Status.RUNNING:
        action = None  # already frozen: only a rollback can follow
    if action is None and state.status is Status.RUNNING and advance_due(owner, rollout) is None:
        action = Action.ADVANCE
    if action is None:
        return None
    now = owner.clock()
    if now < rollout._retry_at:
        return None
    found = report(owner, rollout)
    if found.shares_elsewhere:
        return None  # processes disagree on the share: logged and counted when they began
    if action is Action.ADVANCE:
        if not found.sample_ratio_ok:
            return None  # logged and counted once, when it fired
        reason = _advance_reason(rollout, found)
    else:
        reason = _breach(verdict.test, found, freeze=action is Action.FREEZE)
    try:
        return owner._transition(rollout.name, action, reason, AUTOMATIC, expected=state,
                                 evidence=found.evidence())  # fmt: skip
    except TransitionError:
        # Another process or thread moved first (the compare-and-set refused ours), or
        # the state no longer allows the step: follow the store, do nothing more.
        with contextlib.suppress(Exception):
            owner._load(rollout.name)
        return None
    except Exception as exc:
        rollout._retry_at = now + _RETRY_AFTER_S
        owner.failures.record("health.transition_failed", exc, rollout=rollout.name,
                              action=str(action))  # fmt: skip
        return None


def advance_due(owner: Rollouts, rollout: Rollout) -> str | None:
    """``None`` when an automatic advance is due, else what it waits for."""
    view = rollout._view
    plan = rollout._plan
    if plan.policy.advance != "auto":
        return "an operator: advance is manual"
    if view.stage >= plan.last_stage:
        return "an operator: the last stage is reached (complete the rollout)"
    if view.stage < 0:
        return None  # resumed at 0 % after a rollback: back to the first stage
    stage = plan.policy.stages[view.stage]
    if stage.bake is not None:
        left = view.state.since + stage.bake - owner.clock()
        if left > 0:
            return f"bake time: {_duration(left)} left"
    seen = view.treatment.units_seen()
    if seen < stage.min_units:
        return f"units on the new path: {seen} of {stage.min_units}"
    return None


def _advance_reason(rollout: Rollout, report: HealthReport) -> str:
    stage = rollout._plan.policy.stages[rollout._view.stage] if rollout._view.stage >= 0 else None
    parts: list[str] = []
    if stage is not None and stage.bake is not None:
        parts.append(f"baked {_duration(stage.bake)}")
    parts.append(f"{report.units_treatment} units on the new path")
    latency = f", latency {report.e_latency:.3g}" if report.slow_threshold_s else ""
    parts.append(f"E errors {report.e_errors:.3g}{latency}")
    return "healthy: " + ", ".join(parts)


def waiting_for(owner: Rollouts, rollout: Rollout, health: HealthReport) -> str | None:
    """What the next automatic step waits for, in words (``None``: nothing automatic)."""
    status = rollout._view.state.status
    if rollout._plan.removed:
        return "the policy: this rollout is no longer in it (every call takes the old path)"
    if rollout._plan.killed:
        return "an operator: killed in this process by $STAGEDROLL_KILL"
    if rollout._plan.mode != "stages":
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
    return advance_due(owner, rollout) or "the next outcome: an advance is due"


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


def _breach(test: str | None, report: HealthReport, *, freeze: bool) -> str:
    """Why the health gate froze or rolled back, in one line."""
    if test == "latency":
        e, r, t, c = (report.e_latency, report.r_latency, report.slow_events_treatment,
                      report.slow_events_control)  # fmt: skip
        what = "slow calls"
        bar = report.freeze_at_latency if freeze else report.rollback_at_latency
    else:
        e, r, t, c = (report.e_errors, report.r_errors, report.error_events_treatment,
                      report.error_events_control)  # fmt: skip
        what = "errors"
        bar = report.freeze_at_errors if freeze else report.rollback_at_errors
    ratio = f", r-hat {r:.2f}" if r is not None else ""
    return (f"{what}: E {e:.3g} >= {bar:.3g} ({t} events on the new path, {c} on the old"
            f"{ratio})")  # fmt: skip
