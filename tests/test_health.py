"""Tests of the health gate of one rollout: events, the verdict and the report."""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest

from conftest import EVIDENCE_KEYS, Gate
from stagedroll import Action, MemoryStore, Rollouts
from stagedroll import Health as HealthPolicy
from stagedroll._health import DISABLED, Health, Verdict
from stagedroll._outcomes import UNIT_CAP
from stagedroll._sample_ratio import sample_ratio_log_e


def log_bar(alpha: float, part: float) -> float:
    """``log(1 / (alpha * part))``: where a test given ``part`` of ``alpha`` fires."""
    return -math.log(alpha * part)


def by_hand(events: int) -> float:
    """``E`` after ``events`` treatment events (none from control) at 50 % in one visit."""

    def mean_factor(n: int) -> float:
        return sum((2 * r / (r + 1)) ** n for r in (1.25, 1.5, 2, 3, 5, 10)) / 6

    starts = [math.ceil(4 * (2 ** (b / 32) - 1)) for b in range(1, 16 * 32 + 1)]
    blocks = sum(mean_factor(max(0, events - start)) for start in starts)
    return 0.9 * mean_factor(events) + 0.08 / len(starts) * blocks + 0.02


class TestErrorEvents:
    def test_first_error_of_a_unit_counts_once(self) -> None:
        """A unit's later errors are no new events."""
        gate = Gate()
        for _ in range(5):
            gate.error("u1", treatment=True)
        assert gate.health.errors.events_treatment == 1
        assert gate.arms.treatment.errors == 5

    def test_first_error_per_unit_across_arms(self) -> None:
        """The set of units with an event is the rollout's: one per unit, whatever the arm."""
        gate = Gate()
        gate.error("u1", treatment=False)
        gate.error("u1", treatment=True)
        assert (gate.health.errors.events_control, gate.health.errors.events_treatment) == (1, 0)

    def test_errors_without_a_unit_each_count(self) -> None:
        """With no unit (per-request bucketing), every error is an event."""
        gate = Gate()
        for _ in range(4):
            gate.error(None, treatment=True)
        for _ in range(3):
            gate.error(None, treatment=False)
        assert (gate.health.errors.events_treatment, gate.health.errors.events_control) == (4, 3)

    def test_a_successful_call_is_no_error_event(self) -> None:
        """Successes, with or without latency, never count as error events."""
        gate = Gate()
        gate.ok("u1", treatment=True)
        gate.ok("u2", treatment=True, latency_s=0.01)
        assert gate.health.errors.events_treatment == 0

    def test_a_treatment_error_may_make_a_step_due(self) -> None:
        """A treatment event returns "due"; a control event of a known unit does not."""
        gate = Gate()
        gate.ok("c1", treatment=False)
        gate.ok("t1", treatment=True)
        assert gate.error("t1", treatment=True) is True
        assert gate.error("c1", treatment=False) is False
        assert gate.error("t1", treatment=True) is False  # not a first error any more

    def test_no_events_at_share_zero(self) -> None:
        """At 0 % (rolled back to before the first stage) errors are not events."""
        gate = Gate(share=0.0)
        gate.error("u1", treatment=False)
        assert gate.health.errors.events_control == 0


class TestPairedEvents:
    def test_a_unit_has_a_first_event_on_each_arm(self) -> None:
        """Paired (a shadow, a migration): one unit's first error counts on both arms."""
        gate = Gate(paired=True)
        gate.error("u1", treatment=False)
        gate.error("u1", treatment=True)
        gate.error("u1", treatment=True)  # not a first event any more
        report = gate.report()
        assert (report.error_events_control, report.error_events_treatment) == (1, 1)
        unpaired = Gate()
        unpaired.error("u1", treatment=False)
        unpaired.error("u1", treatment=True)
        assert unpaired.report().error_events_treatment == 0

    def test_each_arm_sees_its_own_slow_units(self) -> None:
        """The hot path's slow-unit check reads the arm's own first events."""
        gate = Gate(paired=True, latency_slo_ms=10)
        gate.ok("u1", treatment=True, latency_s=0.5)
        assert "u1" in gate.arms.treatment.slow_seen
        assert "u1" not in gate.arms.control.slow_seen
        assert 3 not in gate.arms.control.slow_seen

    def test_an_error_without_an_event(self) -> None:
        """``event=False`` counts the error, and the test does not see it."""
        gate = Gate(paired=True)
        gate.record(gate.arms.treatment, True, None, key="u1", event=False)
        report = gate.report()
        assert gate.arms.treatment.errors == 1
        assert report.error_events_treatment == 0


class TestStaleArms:
    def test_an_event_of_a_finished_visit_is_not_counted(self) -> None:
        """A call decided before a stage change and ending after it: its error belonged to
        the old share, so no test counts it, and its unit keeps its first event."""
        gate = Gate(share=0.05)
        old = gate.arms
        gate.outcomes.enter(1, leaving=0)
        gate.health.set_share(0.5)
        gate.record(old.treatment, True, None, key="late")
        assert gate.health.errors.events_treatment == 0
        assert "late" not in gate.health.error_units

    def test_no_event_is_spent_at_a_share_without_comparison(self) -> None:
        """At 0 % nothing is compared; a unit's error there leaves its first event for later."""
        gate = Gate(share=0.0)
        gate.error("u", treatment=False)
        assert gate.health.errors.events_control == 0
        gate.health.set_share(0.1)
        gate.error("u", treatment=False)
        assert gate.health.errors.events_control == 1


class TestSlowEvents:
    def test_a_call_above_the_slo_is_a_slow_event(self) -> None:
        """With an SLO, the first call of a unit above it is a slow event; below it, none."""
        gate = Gate(latency_slo_ms=100)
        gate.ok("u1", treatment=True, latency_s=0.05)
        gate.ok("u2", treatment=True, latency_s=0.2)
        gate.ok("u2", treatment=True, latency_s=0.3)
        gate.ok("u3", treatment=False, latency_s=0.2)
        assert (gate.health.slow.events_treatment, gate.health.slow.events_control) == (1, 1)
        assert gate.health.errors.events_treatment == 0

    def test_slow_calls_without_a_unit_each_count(self) -> None:
        """Without a unit every slow call is an event."""
        gate = Gate(latency_slo_ms=100)
        for _ in range(3):
            gate.ok(None, treatment=True, latency_s=0.2)
        assert gate.health.slow.events_treatment == 3

    def test_the_threshold_is_learnt_from_control_calls(self) -> None:
        """With ``latency_p95``, nothing is slow until control calls taught the p95; then above
        it is."""
        gate = Gate(latency_p95=True)
        gate.ok("t0", treatment=True, latency_s=10.0)
        assert gate.health.slow.events_treatment == 0
        for i in range(2000):
            gate.ok(f"c{i}", treatment=False, latency_s=0.01)
        assert gate.report().slow_threshold_s == pytest.approx(0.01, rel=0.05)
        assert gate.arms.treatment.slow_at == gate.health.threshold.value
        gate.ok("t1", treatment=True, latency_s=10.0)
        assert gate.health.slow.events_treatment == 1

    def test_treatment_latencies_teach_nothing(self) -> None:
        """The threshold is the old path's: treatment latencies never move it."""
        gate = Gate(latency_p95=True)
        for i in range(2000):
            gate.ok(f"t{i}", treatment=True, latency_s=0.01)
        assert gate.report().slow_threshold_s is None


class TestWithoutALatencyTest:
    def test_no_call_is_ever_slow(self) -> None:
        """Without ``latency_slo_ms`` or ``latency_p95``, control latencies teach no threshold
        and no call, however slow, is a slow event."""
        gate = Gate()
        for i in range(2000):
            gate.ok(f"c{i}", treatment=False, latency_s=0.01)
        for i in range(500):
            gate.ok(f"t{i}", treatment=True, latency_s=60.0)
            gate.ok(f"c{i}", treatment=False, latency_s=60.0)
        report = gate.report()
        assert report.slow_threshold_s is None
        assert (report.slow_events_treatment, report.slow_events_control) == (0, 0)
        assert report.e_latency == 1.0
        assert gate.arms.control.slow_at == gate.arms.treatment.slow_at == math.inf
        assert gate.health.verdict().action is None

    def test_the_error_test_freezes_at_20(self) -> None:
        """The error test has all of ``alpha_freeze = 0.05``: it freezes at the first event
        where E >= 20 (with ``min_events``), not at 40."""
        gate = Gate()
        while gate.health.errors.e_value < 20:
            assert gate.health.verdict().action is None
            gate.error(f"t{gate.health.errors.events_treatment}", treatment=True)
        assert gate.health.errors.e_value < 40
        assert gate.health.errors.events_treatment >= gate.health.min_events
        assert gate.health.verdict() == Verdict(Action.FREEZE, "errors")
        assert gate.report().freeze_at_errors == pytest.approx(20.0)


class TestUnits:
    def test_new_units_per_arm(self) -> None:
        """Each arm counts its distinct units; with automatic advances, a new unit of the new
        path may make a step due (``min_units``), a known one or an old-path one not."""
        gate = Gate()
        gate.health.timed = True
        assert gate.ok("a", treatment=False) is False
        assert gate.ok("a", treatment=True) is True
        assert gate.ok("a", treatment=True) is False
        assert gate.ok("b", treatment=True, latency_s=0.01) is True
        gate.error("c", treatment=True)
        report = gate.report()
        assert (report.units_control, report.units_treatment) == (1, 3)

    def test_new_units_make_no_step_due_without_automatic_advances(self) -> None:
        """With ``advance = "manual"`` a new unit cannot make a step due: no check follows it."""
        gate = Gate()
        assert gate.ok("a", treatment=True) is False
        assert gate.report().units_treatment == 1

    def test_calls_without_a_unit_count_as_units(self) -> None:
        """With per-request bucketing each call is a unit of its own."""
        gate = Gate()
        for _ in range(7):
            gate.ok(None, treatment=True)
        gate.ok(None, treatment=True, latency_s=0.01)
        assert gate.report().units_treatment == 8

    def test_the_cap_stops_counting_and_freezes_the_sample_ratio(self) -> None:
        """Once an arm holds ``UNIT_CAP`` units, it stops counting; the sample ratio keeps the
        counts of that moment."""
        gate = Gate(share=0.5)
        for i in range(10):
            gate.ok(f"t{i}", treatment=True)
        for i in range(UNIT_CAP + 10):
            gate.ok(f"c{i}", treatment=False)
        control, treatment = gate.arms.control, gate.arms.treatment
        assert control.counting is False
        assert treatment.counting is True
        assert gate.report().units_control == UNIT_CAP
        frozen = gate.health.sample_ratio_log_e(control, treatment, 0.5)
        for i in range(10, 1000):
            gate.ok(f"t{i}", treatment=True)
        assert gate.report().units_treatment == 1000
        assert gate.health.sample_ratio_log_e(control, treatment, 0.5) == frozen
        assert frozen == pytest.approx(sample_ratio_log_e(10, UNIT_CAP, 0.5))

    def test_after_fork_a_full_arm_counts_again(self) -> None:
        """A forked child starts its own units: an arm full in the parent counts again, and
        the sample ratio no longer keeps the parent's counts."""
        gate = Gate(share=0.5)
        for i in range(UNIT_CAP + 10):
            gate.ok(f"c{i}", treatment=False)
        assert gate.arms.control.counting is False
        gate.outcomes._after_fork()
        gate.health.after_fork()
        control = gate.arms.control  # a new name: mypy keeps the narrowing of the one above
        assert control.counting is True
        gate.ok("c0", treatment=False)
        gate.ok("t0", treatment=True)
        report = gate.report()
        assert (report.units_control, report.units_treatment) == (1, 1)
        assert gate.health.sample_ratio_log_e(gate.arms.control, gate.arms.treatment, 0.5) < 0

    def test_a_finished_visit_stops_counting(self) -> None:
        """Leaving a stage drops the units of its visit (memory) and stops counting them."""
        gate = Gate()
        gate.ok("a", treatment=True)
        old = gate.arms
        new = gate.outcomes.enter(1, leaving=0)
        assert (old.treatment.counting, old.treatment.units) == (False, set())
        assert old.treatment.units_seen() == 1  # the count stays readable
        assert new.treatment.counting is True
        assert gate.record(old.control, False, None, key="late") is False
        assert old.control.units == set()

    def test_units_of_targeted_arms_are_not_counted(self) -> None:
        """Calls routed by targeting are no part of the comparison."""
        gate = Gate()
        assert gate.record(gate.arms.targeted_on, True, None, key=None) is False
        assert gate.health.errors.events_treatment == 0


class TestVerdict:
    def test_healthy_without_evidence(self) -> None:
        """A new gate says nothing."""
        assert Gate().health.verdict() == Verdict(None)

    def test_freeze_needs_the_bar_and_min_events(self) -> None:
        """Freeze once E reaches ``1/(alpha_freeze * part)`` and ``min_events`` treatment events.

        Without a latency test the error test gets all of alpha: the bar is 1/0.2 = 5,
        reached after 5 treatment events at 50 %, but the verdict waits for the 8th.
        """
        gate = Gate(alpha_freeze=0.2, min_events=8)
        bar = log_bar(0.2, 1.0)
        reached_at = None
        for i in range(1, 9):
            gate.error(f"t{i}", treatment=True)
            test = gate.health.errors
            if reached_at is None and test.log_e() >= bar:
                reached_at = i
            expected = "freeze" if i >= 8 and test.log_e() >= bar else None
            assert gate.health.verdict().action == expected
        assert reached_at == 5  # E = 7.4 (4.7 after 4): before min_events
        assert gate.health.verdict() == Verdict(Action.FREEZE, "errors")

    @pytest.mark.parametrize(
        ("knobs", "freeze_at", "rollback_at"),
        [
            pytest.param({}, 20, 1000, id="errors-only"),
            pytest.param({"latency_p95": True}, 40, 2000, id="with-latency"),
        ],
    )
    def test_freeze_bar_by_hand(
        self, knobs: dict[str, Any], freeze_at: float, rollback_at: float
    ) -> None:
        """The default bars of the error test, checked event by event: ``1/0.05 = 20`` (and
        ``1/0.001 = 1000``) alone, ``1/(0.05 * 0.5) = 40`` (and 2000) beside a latency test.

        ``E`` by hand, from the documentation of the sequential test: after ``i`` treatment
        events at 50 % in one stage visit, 0.9 of the budget bet from the first event, 0.08
        spread over the blocks (block ``b`` from event ``ceil(4 (2**(b/32) - 1))`` on, its
        weight held as it is until then) and 0.02 kept.
        """
        gate = Gate(**knobs)
        steps = []
        for i in range(1, 30):
            gate.error(f"t{i}", treatment=True)
            e = by_hand(i)
            steps.append((i, e))
            assert gate.health.errors.e_value == pytest.approx(e)
            assert (gate.health.verdict().action == "freeze") is (freeze_at <= e < rollback_at)
            assert (gate.health.verdict().action == "rollback") is (e >= rollback_at)
        # The bars fall within the run, each crossed for the first time somewhere in it.
        assert steps[0][1] < freeze_at <= rollback_at <= steps[-1][1]

    def test_rollback_at_its_bar_without_min_events(self) -> None:
        """Roll back at ``1/(alpha_rollback * part)``, however few events (min_events is moot)."""
        gate = Gate(alpha_rollback=0.001, min_events=1000)
        bar = log_bar(0.001, 1.0)
        while not gate.health.errors.reaches(bar):
            assert gate.health.verdict().action is None
            gate.error(f"t{gate.health.errors.events_treatment}", treatment=True)
        assert gate.health.verdict() == Verdict(Action.ROLLBACK, "errors")

    def test_control_events_hold_the_verdict_back(self) -> None:
        """Errors at the same rate in both arms never reach a bar."""
        gate = Gate()
        for i in range(300):
            gate.error(f"t{i}", treatment=True)
            gate.error(f"c{i}", treatment=False)
        assert gate.health.verdict().action is None
        assert gate.report().r_errors == pytest.approx(1.0)

    def test_latency_share_zero_never_freezes_on_latency(self) -> None:
        """With ``latency_share = 0`` slow calls carry no part of alpha: no verdict."""
        gate = Gate(latency_share=0.0, latency_slo_ms=100)
        for i in range(500):
            gate.ok(f"t{i}", treatment=True, latency_s=1.0)
        assert gate.health.slow.e_value > 1e10
        assert gate.health.verdict().action is None
        report = gate.report()
        assert report.freeze_at_errors == pytest.approx(20.0)
        assert report.freeze_at_latency == math.inf

    def test_latency_share_one_never_freezes_on_errors(self) -> None:
        """With ``latency_share = 1`` only the latency test decides, at the full ``1/alpha``."""
        gate = Gate(latency_share=1.0, latency_slo_ms=100)
        for i in range(500):
            gate.error(f"e{i}", treatment=True)
        assert gate.health.verdict().action is None
        for i in range(3):
            gate.ok(f"s{i}", treatment=True, latency_s=1.0)
        assert gate.health.slow.e_value < 20
        while gate.health.slow.e_value < 20:
            assert gate.health.verdict().action is None
            gate.ok(f"s{gate.health.slow.events_treatment}", treatment=True, latency_s=1.0)
        assert gate.health.verdict() == Verdict(Action.FREEZE, "latency")
        report = gate.report()
        assert report.freeze_at_errors == math.inf
        assert report.freeze_at_latency == pytest.approx(20.0)

    def test_the_latency_test_freezes_with_its_own_part(self) -> None:
        """By default each test has half of alpha: the slow-call test freezes at 40 too."""
        gate = Gate(latency_slo_ms=100)
        while gate.health.slow.e_value < 40:
            assert gate.health.verdict().action is None
            gate.ok(f"s{gate.health.slow.events_treatment}", treatment=True, latency_s=1.0)
        assert gate.health.verdict() == Verdict(Action.FREEZE, "latency")


class TestReport:
    def test_a_new_gate(self) -> None:
        """Before any outcome: E = 1 everywhere, no estimates, no threshold, sample ratio fine.
        Latency is not tested by default: the error test has all of each alpha."""
        report = Gate(share=0.05).report()
        assert report.enabled is True
        assert report.share == 0.05
        assert (report.e_errors, report.e_latency, report.e_sample_ratio) == (1.0, 1.0, 1.0)
        assert (report.r_errors, report.r_latency) == (None, None)
        assert report.slow_threshold_s is None
        assert report.freeze_at_errors == pytest.approx(20.0)
        assert report.rollback_at_errors == pytest.approx(1000.0)
        assert report.freeze_at_latency == report.rollback_at_latency == math.inf
        assert report.sample_ratio_ok is True

    def test_a_new_gate_with_a_latency_test(self) -> None:
        """With a latency test, each test has half of each alpha by default: 40 and 2000."""
        report = Gate(share=0.05, latency_p95=True).report()
        assert report.slow_threshold_s is None  # not learnt yet
        assert report.freeze_at_errors == report.freeze_at_latency == pytest.approx(40.0)
        assert report.rollback_at_errors == report.rollback_at_latency == pytest.approx(2000.0)

    def test_a_fixed_slo_is_reported(self) -> None:
        """The SLO, in seconds, is the threshold from the start."""
        assert Gate(latency_slo_ms=250).report().slow_threshold_s == 0.25

    def test_counts_and_estimates(self) -> None:
        """Events, units and ``r-hat`` come from the tests and the arms."""
        gate = Gate(share=0.2)
        for i in range(3):
            gate.error(f"t{i}", treatment=True)
        for i in range(6):
            gate.error(f"c{i}", treatment=False)
        gate.ok("t9", treatment=True)
        report = gate.report()
        assert (report.error_events_treatment, report.error_events_control) == (3, 6)
        assert (report.units_treatment, report.units_control) == (4, 6)
        assert report.r_errors == pytest.approx((3 / 6) * 0.8 / 0.2)
        assert report.e_errors == pytest.approx(gate.health.errors.e_value)

    def test_evidence_shape(self) -> None:
        """``evidence()`` is a read-only flat mapping with rounded numbers and no infinities."""
        gate = Gate(share=0.2)
        for i in range(3):
            gate.error(f"t{i}", treatment=True)
        gate.error("c0", treatment=False)
        evidence = gate.report().evidence()
        assert set(evidence) == EVIDENCE_KEYS
        assert all(v is None or isinstance(v, int | float) for v in evidence.values())
        assert evidence["error_events_treatment"] == 3
        assert evidence["slow_threshold_s"] is None
        assert evidence["e_errors"] == float(f"{gate.health.errors.e_value:.6g}")
        with pytest.raises(TypeError):
            evidence["e_errors"] = 0.0  # type: ignore[index]

    def test_an_overflowing_e_value_is_none_in_the_evidence(self) -> None:
        """An e-value past a float's range is ``inf`` in the report and ``None`` in the evidence."""
        gate = Gate(share=0.5)
        for i in range(1200):
            gate.error(f"t{i}", treatment=True)
        report = gate.report()
        assert report.e_errors == math.inf
        assert report.evidence()["e_errors"] is None

    def test_a_sample_ratio_mismatch(self) -> None:
        """Units only in treatment at 10 %: the sample-ratio test fires."""
        gate = Gate(share=0.1)
        for i in range(40):
            gate.ok(f"t{i}", treatment=True)
        report = gate.report()
        assert report.e_sample_ratio >= 1000
        assert report.sample_ratio_ok is False

    def test_disabled(self) -> None:
        """The report of a rollout without a gate: disabled, E = 1, nothing fires."""
        assert DISABLED.enabled is False
        assert (DISABLED.e_errors, DISABLED.e_latency, DISABLED.e_sample_ratio) == (1, 1, 1)
        assert DISABLED.freeze_at_errors == DISABLED.rollback_at_errors == math.inf
        assert DISABLED.sample_ratio_ok is True
        assert set(DISABLED.evidence()) == EVIDENCE_KEYS


class TestEpochs:
    def test_reset_starts_a_new_epoch(self) -> None:
        """``reset`` forgets the evidence and the units with an event; the share stays."""
        gate = Gate()
        for i in range(20):
            gate.error(f"t{i}", treatment=True)
        assert gate.health.verdict().action is not None
        gate.health.reset()
        assert gate.health.verdict().action is None
        assert gate.report().e_errors == 1.0
        gate.error("t0", treatment=True)
        assert gate.health.errors.events_treatment == 1

    def test_after_fork(self) -> None:
        """In a forked child the evidence and the learnt threshold are forgotten."""
        gate = Gate(latency_p95=True)
        for i in range(2000):
            gate.ok(f"c{i}", treatment=False, latency_s=0.01)
        for i in range(20):
            gate.error(f"t{i}", treatment=True)
        assert gate.report().slow_threshold_s is not None
        gate.health.after_fork()
        report = gate.report()
        assert report.e_errors == 1.0
        assert report.slow_threshold_s is None
        assert gate.arms.control.slow_at == gate.arms.treatment.slow_at == math.inf

    def test_after_fork_keeps_a_fixed_slo(self) -> None:
        """A fixed SLO is policy, not learnt: a forked child keeps it."""
        gate = Gate(latency_slo_ms=100)
        gate.health.after_fork()
        assert gate.report().slow_threshold_s == 0.1
        assert gate.arms.treatment.slow_at == 0.1


class TestThreads:
    def test_units_and_calls_are_exact_under_threads(self) -> None:
        """Concurrent reports through a rollout count every call and every distinct unit."""
        rollouts = Rollouts(
            {"rollouts": {"r": {"stages": [{"name": "half", "percent": 50}]}}},
            store=MemoryStore(),
            clock=lambda: 0.0,
        )
        threads, per_thread = 8, 400
        barrier = threading.Barrier(threads)

        def work(t: int) -> None:
            barrier.wait()
            for i in range(per_thread):
                # Each unit is reported by two threads: its first call is raced.
                unit = f"u{(t // 2) * per_thread + i}"
                rollouts.report("r", unit, error=False, latency_s=0.001)

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        status = rollouts.status("r")
        assert status.control.calls + status.treatment.calls == threads * per_thread
        assert status.control.units + status.treatment.units == threads * per_thread // 2
        assert status.health.units_treatment == status.treatment.units
        expected_in = sum(rollouts.enabled("r", f"u{i}") for i in range(threads * per_thread // 2))
        assert status.treatment.units == expected_in


class TestTinyParts:
    def test_a_tiny_latency_share_does_not_underflow(self) -> None:
        """alpha times a subnormal share underflows; the bars are still computed (huge)."""
        knobs: dict[str, Any] = {"latency_p95": True, "latency_share": 5e-324}
        health = Health(HealthPolicy(**knobs, alpha_freeze=1e-12, alpha_rollback=1e-12))
        assert math.isfinite(health.log_freeze[1])
        assert health.log_freeze[1] > 700
