"""Tests for the health gate's steps: a pure function of the plan, the view, the verdict,
the clock and the evidence (built here without ``Rollouts``), and their reasons in words."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from conftest import plain_policy
from stagedroll import Action, HealthReport, Rollouts, Status, load_policy
from stagedroll._gate import Step, _breach, _duration, advance_due, step, waiting_for
from stagedroll._health import DISABLED, Verdict
from stagedroll._outcomes import Outcomes
from stagedroll._plan import Plan, View, compile_policy
from stagedroll._state import AUTOMATIC, RolloutState

HEALTHY = Verdict(None)
SOUND = dataclasses.replace(DISABLED, enabled=True, share=0.05)


def plan_of(**rollout: Any) -> Plan:
    """The plan of rollout ``r`` with three stages (1 %, 5 %, 25 %), for no environment."""
    stages = [
        {"name": "canary", "percent": 1, "bake": "1h", "min_units": 10},
        {"name": "early", "percent": 5},
        {"name": "wide", "percent": 25},
    ]
    policy = load_policy({"rollouts": {"r": {"stages": stages, **rollout}}})
    return compile_policy(policy, None)["r"]


def view_of(plan: Plan, stage: int = 0, status: Status = Status.RUNNING, *, units: int = 0) -> View:
    """The view of ``plan`` at ``stage`` since t=1000, with ``units`` seen on the new path."""
    state = RolloutState(stage, status, since=1000.0, version=3, epoch=1, history="h")
    outcomes = Outcomes()
    view = plan.view(state, outcomes)
    view.treatment.count_units()
    for i in range(units):
        view.treatment.units.add(f"u{i}")
        view.treatment.unit_count += 1
    return view


class TestStep:
    def test_an_advance_waits_for_the_bake_time_and_the_units(self) -> None:
        """Auto advance: nothing before the bake time, nor before ``min_units``; then one."""
        plan = plan_of(advance="auto")
        asked: list[int] = []

        def report() -> HealthReport:
            asked.append(1)
            return SOUND

        assert step(plan, view_of(plan, units=10), HEALTHY, 1000.0 + 3599, report) is None
        assert step(plan, view_of(plan, units=9), HEALTHY, 1000.0 + 3600, report) is None
        assert asked == []  # the evidence is not asked for while no step is due
        due = step(plan, view_of(plan, units=10), HEALTHY, 1000.0 + 3600, report)
        assert isinstance(due, Step)
        assert due.action is Action.ADVANCE
        assert due.reason.startswith("healthy: baked 1h")
        assert due.evidence == SOUND.evidence()

    def test_a_fired_test_freezes_then_rolls_back(self) -> None:
        """A freeze verdict freezes a running stage; a frozen one only rolls back."""
        plan = plan_of()
        freeze, rollback = Verdict(Action.FREEZE, "errors"), Verdict(Action.ROLLBACK, "errors")
        running, frozen = view_of(plan), view_of(plan, status=Status.FROZEN)
        made = step(plan, running, freeze, 0.0, lambda: SOUND)
        assert made is not None
        assert made.action is Action.FREEZE
        assert made.reason.startswith("errors: the new path failed for ")
        assert step(plan, frozen, freeze, 0.0, lambda: SOUND) is None
        made = step(plan, frozen, rollback, 0.0, lambda: SOUND)
        assert made is not None
        assert made.action is Action.ROLLBACK

    @pytest.mark.parametrize(
        "why",
        ["unknown state", "stopped", "killed here", "fleet disagrees", "sample ratio off"],
    )
    def test_no_step(self, why: str) -> None:
        """No automatic step for an unknown state, a stopped rollout, one killed in this
        process, while processes disagree on the share, nor an advance on a bad ratio."""
        plan = plan_of(advance="auto")
        view = view_of(plan, units=10)
        report = SOUND
        verdict = Verdict(Action.FREEZE, "errors")
        if why == "unknown state":
            view = plan.view(RolloutState(0, Status.RUNNING, 0.0, version=0), Outcomes())
        elif why == "stopped":
            view = view_of(plan, status=Status.KILLED)
        elif why == "killed here":
            plan.killed = True
        elif why == "fleet disagrees":
            report = dataclasses.replace(SOUND, shares_elsewhere=(0.2,))
        else:
            report, verdict = dataclasses.replace(SOUND, sample_ratio_ok=False), HEALTHY
        assert step(plan, view, verdict, 10_000.0, lambda: report) is None

    def test_what_an_advance_waits_for(self) -> None:
        """``advance_due`` says what is missing, in words."""
        plan = plan_of(advance="auto")
        assert advance_due(plan, view_of(plan), 1000.0) == "bake time: 1h left"
        assert advance_due(plan, view_of(plan, units=3), 5000.0) == "units on the new path: 3 of 10"
        assert advance_due(plan, view_of(plan, 2), 0.0) == (
            "an operator: the last stage is reached (complete the rollout)"
        )
        assert advance_due(plan_of(), view_of(plan_of()), 0.0) == "an operator: advance is manual"

    def test_no_advance_from_zero_percent(self) -> None:
        """At 0 % (stage -1) running, nothing advances by itself: an operator starts the canary."""
        plan = plan_of(advance="auto")
        zero = view_of(plan, -1, units=10)
        words = "an operator: at 0 % (advance to start the first stage, canary)"
        assert advance_due(plan, zero, 10_000.0) == words
        assert waiting_for(plan, zero, SOUND, 10_000.0) == words
        assert step(plan, zero, HEALTHY, 10_000.0, lambda: SOUND) is None

    def test_waiting_for_an_operator_after_a_freeze(self) -> None:
        """``waiting_for`` reads the status first."""
        plan = plan_of()
        frozen = view_of(plan, status=Status.FROZEN)
        assert waiting_for(plan, frozen, SOUND, 0.0) == (
            "an operator: frozen (unfreeze to resume); a rollback if the evidence grows"
        )


class TestDuration:
    @pytest.mark.parametrize(
        ("seconds", "text"),
        [
            (0, "0s"),
            (0.4, "0s"),
            (45, "45s"),
            (60, "1m"),
            (3599.6, "1h"),
            (5400, "1h30m"),
            (90061, "1d1h1m1s"),
        ],
    )
    def test_in_the_policys_words(self, seconds: float, text: str) -> None:
        """A number of seconds reads like a policy's duration."""
        assert _duration(seconds) == text

    def test_never_negative(self) -> None:
        """A bake time already over reads as no time left."""
        assert _duration(-5) == "0s"


class TestBreach:
    def test_names_the_test_its_bar_and_the_events(self) -> None:
        """The reason of a freeze or rollback says which test fired, at what bar, on what."""
        rollouts = Rollouts(plain_policy(10))
        for i in range(40):
            rollouts.report("checkout", f"user-{i}", error=True)
        report = rollouts.status("checkout").health
        events = report.error_events_control
        assert events > 0
        assert report.r_errors is not None
        e = f"{report.e_errors:,.0f}" if report.e_errors >= 10 else f"{report.e_errors:.2g}"
        assert _breach("errors", report, freeze=True) == (
            f"errors: the new path failed for {report.error_events_treatment} of "
            f"{report.units_treatment} users, the old path for {events} of {report.units_control}"
            f" ({report.r_errors:.2g}\u00d7 as often); evidence {e} \u2265 20"
        )
        assert _breach("errors", report, freeze=False).endswith(" \u2265 1,000")

    def test_latency_bars_with_the_split(self) -> None:
        """With a latency test each test has its part of alpha: bars of 40 and 2,000."""
        policy = plain_policy(10)
        policy["rollouts"]["checkout"]["health"] = {"latency_p95": True}
        report = Rollouts(policy).status("checkout").health
        assert _breach("latency", report, freeze=True) == (
            "slow calls: the new path was slow for 0 of 0 users, the old path for 0 of 0; "
            "evidence 1 \u2265 40"
        )
        assert _breach("latency", report, freeze=False).endswith("evidence 1 \u2265 2,000")

    def test_the_automatic_actor(self) -> None:
        """Automatic steps are made by the actor ``stagedroll``."""
        assert AUTOMATIC == "stagedroll"


class TestFromZero:
    def test_a_rollout_resumed_at_zero_stays_there(self) -> None:
        """Rolled back to 0 % and unfrozen, an auto-advancing rollout waits for an operator."""
        stages = [{"name": "canary", "percent": 10}, {"name": "all", "percent": 100}]
        rollouts = Rollouts({"rollouts": {"r": {"stages": stages, "advance": "auto"}}})
        rollouts.rollback("r", actor="alice")
        rollouts.unfreeze("r", actor="alice")
        for i in range(50):
            rollouts.report("r", f"user-{i}", error=False)
        assert rollouts.tick() == []
        status = rollouts.status("r")
        assert (status.stage, str(status.status), status.percent) == (-1, "running", 0.0)
        assert status.waiting_for == (
            "an operator: at 0 % (advance to start the first stage, canary)"
        )
        rollouts.advance("r", actor="alice")
        assert rollouts.status("r").stage_name == "canary"
