"""Tests of outcome accounting: arm counters, their frozen stats, and the per-stage sink."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from stagedroll import ArmStats, MemoryStore, Rollouts
from stagedroll._outcomes import UNTIMED, ArmCounts, Arms, Outcomes


@pytest.fixture(name="outcomes")
def _outcomes() -> Outcomes:
    """An empty outcome sink."""
    return Outcomes()


@pytest.fixture(name="arms")
def _arms(outcomes: Outcomes) -> Arms:
    """The arms of stage 0 of :func:`_outcomes`."""
    return outcomes.arms(0)


class TestArmStats:
    def test_defaults_are_zero(self) -> None:
        """A fresh ``ArmStats`` has no calls and no latency."""
        stats = ArmStats()
        assert (stats.calls, stats.errors, stats.fallbacks) == (0, 0, 0)
        assert stats.mean_latency_s is None

    def test_error_rate_is_none_before_calls(self) -> None:
        """The error rate is ``None`` until the first call, not zero."""
        assert ArmStats().error_rate is None

    def test_error_rate(self) -> None:
        """The error rate is errors per call."""
        assert ArmStats(calls=4, errors=1).error_rate == 0.25
        assert ArmStats(calls=3, errors=0).error_rate == 0.0
        assert ArmStats(calls=2, errors=2).error_rate == 1.0

    def test_is_frozen(self) -> None:
        """``ArmStats`` is immutable."""
        stats = ArmStats(calls=1)
        with pytest.raises(dataclasses.FrozenInstanceError):
            stats.calls = 2  # type: ignore[misc]

    def test_equality(self) -> None:
        """Stats with the same values compare equal."""
        assert ArmStats(calls=1, errors=1, fallbacks=1, mean_latency_s=0.5) == ArmStats(
            1, 1, 1, 0.5
        )
        assert ArmStats(calls=1) != ArmStats(calls=2)


class TestArmCounts:
    def test_starts_at_zero(self) -> None:
        """A new counter has no calls and keeps its flags."""
        counts = ArmCounts(enabled=True, compared=False)
        assert counts.enabled is True
        assert counts.compared is False
        assert (counts.calls, counts.errors, counts.fallbacks) == (0, 0, 0)
        assert (counts.latency_n, counts.latency_s) == (0, 0.0)

    def test_stats_before_calls(self) -> None:
        """The stats of an unused counter are all zero, with no mean latency."""
        assert ArmCounts(enabled=False, compared=True).stats() == ArmStats()

    def test_stats_copy_the_counters(self) -> None:
        """``stats()`` is a snapshot: later counting does not change it."""
        counts = ArmCounts(enabled=True, compared=True)
        counts.calls, counts.errors, counts.fallbacks = 4, 2, 1
        counts.latency_n, counts.latency_s = 2, 3.0
        stats = counts.stats()
        assert stats == ArmStats(calls=4, errors=2, fallbacks=1, mean_latency_s=1.5)
        counts.calls = 10
        assert stats.calls == 4


class TestRecord:
    def test_success(self, outcomes: Outcomes, arms: Arms) -> None:
        """A success adds a call and its latency, but no error."""
        outcomes.record(arms.treatment, error=False, latency_s=0.25)
        assert arms.treatment.stats() == ArmStats(calls=1, mean_latency_s=0.25)

    def test_error(self, outcomes: Outcomes, arms: Arms) -> None:
        """An error adds a call and an error."""
        outcomes.record(arms.control, error=True, latency_s=None)
        assert arms.control.stats() == ArmStats(calls=1, errors=1)

    def test_fallback(self, outcomes: Outcomes, arms: Arms) -> None:
        """A fallback is counted on top of the error."""
        outcomes.record(arms.treatment, error=True, latency_s=0.1, fallback=True)
        stats = arms.treatment.stats()
        assert (stats.calls, stats.errors, stats.fallbacks) == (1, 1, 1)

    def test_fallback_defaults_to_false(self, outcomes: Outcomes, arms: Arms) -> None:
        """Without ``fallback`` no fallback is counted."""
        outcomes.record(arms.treatment, error=True, latency_s=None)
        assert arms.treatment.stats().fallbacks == 0

    def test_mean_latency_skips_unknown_latencies(self, outcomes: Outcomes, arms: Arms) -> None:
        """Calls without a latency count as calls but not in the mean latency."""
        outcomes.record(arms.control, error=False, latency_s=1.0)
        outcomes.record(arms.control, error=False, latency_s=None)
        outcomes.record(arms.control, error=False, latency_s=3.0)
        stats = arms.control.stats()
        assert stats.calls == 3
        assert stats.mean_latency_s == 2.0

    def test_zero_latency_is_a_latency(self, outcomes: Outcomes, arms: Arms) -> None:
        """A latency of zero seconds is recorded (the mean is 0.0, not ``None``)."""
        outcomes.record(arms.control, error=False, latency_s=0.0)
        assert arms.control.stats().mean_latency_s == 0.0

    def test_only_the_given_arm_changes(self, outcomes: Outcomes, arms: Arms) -> None:
        """Recording on one arm leaves the other arms untouched."""
        outcomes.record(arms.treatment, error=True, latency_s=0.5, fallback=True)
        assert arms.control.stats() == ArmStats()
        assert arms.targeted_off.stats() == ArmStats()
        assert arms.targeted_on.stats() == ArmStats()

    def test_concurrent_records_are_exact(self, outcomes: Outcomes, arms: Arms) -> None:
        """Records from many threads add up exactly."""
        threads_n, calls_n = 8, 2000
        barrier = threading.Barrier(threads_n)

        def work() -> None:
            barrier.wait()
            for i in range(calls_n):
                outcomes.record(
                    arms.treatment, error=i % 2 == 0, latency_s=1.0, fallback=i % 4 == 0
                )

        threads = [threading.Thread(target=work) for _ in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        total = threads_n * calls_n
        assert arms.treatment.stats() == ArmStats(
            calls=total, errors=total // 2, fallbacks=total // 4, mean_latency_s=1.0
        )


class TestArms:
    def test_arms_have_their_roles(self, arms: Arms) -> None:
        """Control and targeted-off take the old path; treatment and targeted-on the new one."""
        assert (arms.control.enabled, arms.control.compared) == (False, True)
        assert (arms.treatment.enabled, arms.treatment.compared) == (True, True)
        assert (arms.targeted_off.enabled, arms.targeted_off.compared) == (False, False)
        assert (arms.targeted_on.enabled, arms.targeted_on.compared) == (True, False)

    def test_arms_are_distinct(self, arms: Arms) -> None:
        """The four arms of a stage are four separate counters."""
        assert len({id(arm) for arm in arms}) == 4

    def test_created_on_first_use_and_reused(self, outcomes: Outcomes) -> None:
        """A stage's arms are created when first asked for, then the same ones are returned."""
        first = outcomes.arms(2)
        assert outcomes.arms(2) is first
        assert all(arm.stats() == ArmStats() for arm in first)

    def test_each_stage_has_its_own(self, outcomes: Outcomes) -> None:
        """Different stages, including stage -1 (0 %), never share counters."""
        stages = [outcomes.arms(s) for s in (-1, 0, 1)]
        assert len({id(arm) for arms in stages for arm in arms}) == 12

    def test_counts_of_one_stage_stay_in_it(self, outcomes: Outcomes) -> None:
        """Calls recorded in one stage do not show in another."""
        outcomes.record(outcomes.arms(0).control, error=False, latency_s=None)
        assert outcomes.stats(0)[0].calls == 1
        assert outcomes.stats(1) == (ArmStats(), ArmStats(), ArmStats())

    def test_concurrent_first_use_gives_one_set(self, outcomes: Outcomes) -> None:
        """Threads asking for a new stage at once all get the same arms."""
        threads_n = 16
        barrier = threading.Barrier(threads_n)
        seen: list[Arms] = []
        lock = threading.Lock()

        def work() -> None:
            barrier.wait()
            arms = outcomes.arms(7)
            with lock:
                seen.append(arms)

        threads = [threading.Thread(target=work) for _ in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(seen) == threads_n
        assert all(arms is seen[0] for arms in seen)


class TestStats:
    def test_unused_stage(self, outcomes: Outcomes) -> None:
        """A stage without calls reports zeros, with no error rate or latency."""
        control, treatment, targeted = outcomes.stats(0)
        for stats in (control, treatment, targeted):
            assert stats == ArmStats()
            assert stats.error_rate is None

    def test_control_and_treatment(self, outcomes: Outcomes, arms: Arms) -> None:
        """``stats`` returns control and treatment as recorded."""
        outcomes.record(arms.control, error=False, latency_s=0.5)
        outcomes.record(arms.treatment, error=True, latency_s=1.5, fallback=True)
        outcomes.record(arms.treatment, error=False, latency_s=0.5)
        control, treatment, targeted = outcomes.stats(0)
        assert control == ArmStats(calls=1, mean_latency_s=0.5)
        assert treatment == ArmStats(calls=2, errors=1, fallbacks=1, mean_latency_s=1.0)
        assert treatment.error_rate == 0.5
        assert targeted == ArmStats()

    def test_targeted_merges_both_targeted_arms(self, outcomes: Outcomes, arms: Arms) -> None:
        """``targeted`` adds up the targeted calls of both paths."""
        outcomes.record(arms.targeted_on, error=True, latency_s=3.0, fallback=True)
        outcomes.record(arms.targeted_on, error=False, latency_s=None)
        outcomes.record(arms.targeted_off, error=True, latency_s=1.0)
        outcomes.record(arms.targeted_off, error=False, latency_s=2.0)
        control, treatment, targeted = outcomes.stats(0)
        # The mean latency weighs every timed call equally: (3 + 1 + 2) / 3.
        assert targeted == ArmStats(calls=4, errors=2, fallbacks=1, mean_latency_s=2.0)
        assert targeted.error_rate == 0.5
        assert control == treatment == ArmStats()

    def test_targeted_with_one_arm_only(self, outcomes: Outcomes, arms: Arms) -> None:
        """``targeted`` works when only one targeted arm was used."""
        outcomes.record(arms.targeted_off, error=False, latency_s=None)
        targeted = outcomes.stats(0)[2]
        assert targeted == ArmStats(calls=1)
        assert targeted.mean_latency_s is None

    def test_targeted_is_not_compared(self, outcomes: Outcomes, arms: Arms) -> None:
        """Targeted calls never show in control or treatment."""
        outcomes.record(arms.targeted_on, error=False, latency_s=0.1)
        outcomes.record(arms.targeted_off, error=False, latency_s=0.1)
        control, treatment, _ = outcomes.stats(0)
        assert control.calls == treatment.calls == 0

    def test_creates_the_stage(self, outcomes: Outcomes) -> None:
        """Asking for the stats of a new stage creates its arms."""
        outcomes.stats(5)
        arms = outcomes.arms(5)
        outcomes.record(arms.control, error=False, latency_s=None)
        assert outcomes.stats(5)[0].calls == 1


class TestRolloutOutcomes:
    def test_each_rollout_has_its_own_sink(self) -> None:
        """Two rollouts of one ``Rollouts`` count separately."""
        policy = {
            "rollouts": {
                "a": {"stages": [{"name": "all", "percent": 100}]},
                "b": {"stages": [{"name": "all", "percent": 100}]},
            }
        }
        rollouts = Rollouts(policy, store=MemoryStore())
        rollouts.report("a", "u1", error=True)
        assert rollouts.status("a").treatment.calls == 1
        assert rollouts.status("b").treatment.calls == 0
        assert rollouts["a"].outcomes is not rollouts["b"].outcomes

    def test_each_rollouts_instance_counts_its_own_calls(self) -> None:
        """Two ``Rollouts`` sharing a store count only the calls each one saw."""
        policy = {"rollouts": {"a": {"stages": [{"name": "all", "percent": 100}]}}}
        store = MemoryStore()
        first = Rollouts(policy, store=store)
        second = Rollouts(policy, store=store)
        first.report("a", "u1", error=False)
        assert first.status("a").treatment.calls == 1
        assert second.status("a").treatment.calls == 0

    def test_status_reads_the_current_stage(self) -> None:
        """``status`` reports the arms of the stage in force, the rollout's outcomes keep all."""
        policy = {
            "rollouts": {
                "a": {"stages": [{"name": "one", "percent": 10}, {"name": "two", "percent": 20}]}
            }
        }
        rollouts = Rollouts(policy, store=MemoryStore())
        for i in range(10):
            rollouts.report("a", f"u{i}", error=False)
        rollouts.advance("a")
        rollouts.report("a", "u0", error=True)
        status = rollouts.status("a")
        assert status.control.calls + status.treatment.calls == 1
        assert status.control.errors + status.treatment.errors == 1
        control, treatment, _ = rollouts["a"].outcomes.stats(0)
        assert control.calls + treatment.calls == 10


class TestUntimed:
    def test_untimed_calls_count_but_do_not_move_the_mean(self, arms: Arms) -> None:
        """A guard's untimed call (one of an arm no latency test watches) is a call, and no
        latency: the mean is that of the timed calls, folded or pending."""
        arm = arms.control
        arm.pending.extend([0.2, UNTIMED, UNTIMED, 0.4])
        pending = arm.stats()
        assert (pending.calls, pending.timed) == (4, 2)
        assert pending.mean_latency_s == pytest.approx(0.3)
        assert arm.fold() == [0.2, UNTIMED, UNTIMED, 0.4]
        assert arm.stats() == pending
        assert (arm.calls, arm.latency_n) == (4, 2)
        assert arm.latency_s == pytest.approx(0.6)


class TestNoGate:
    def test_counters_tell_a_listener_of_each_new_visit(self) -> None:
        """The counters know nothing of the gate: a listener is told of the compared arms of
        every new stage visit, and recording only counts."""
        visits: list[tuple[ArmCounts, ArmCounts]] = []
        outcomes = Outcomes(on_visit=lambda control, treatment: visits.append((control, treatment)))
        first = outcomes.arms(0)
        second = outcomes.enter(0, leaving=0)
        assert visits == [(first.control, first.treatment), (second.control, second.treatment)]
        outcomes.record(second.treatment, True, 0.5)
        assert outcomes.stats(0)[1] == ArmStats(calls=1, errors=1, mean_latency_s=0.5, timed=1)


class TestTargetedTimed:
    def test_targeted_stats_count_the_timed_calls_of_both_arms(self, outcomes: Outcomes) -> None:
        """The targeted stats sum both targeted arms, their timed calls included."""
        arms = outcomes.arms(0)
        outcomes.record(arms.targeted_on, False, 0.2)
        outcomes.record(arms.targeted_off, False, None)
        arms.targeted_off.pending.extend([0.4, UNTIMED])
        targeted = outcomes.stats(0)[2]
        assert (targeted.calls, targeted.timed) == (4, 2)
        assert targeted.mean_latency_s == pytest.approx(0.3)
