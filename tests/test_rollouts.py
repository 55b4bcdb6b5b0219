from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from conftest import EVIDENCE_KEYS, plain_policy
from stagedroll import (
    Action,
    MemoryStore,
    PolicyError,
    Reason,
    Rollouts,
    RolloutState,
    SQLiteStore,
    Status,
    StoreError,
    Transition,
    TransitionError,
    TransitionEvent,
    UnknownRolloutError,
    bucket,
    load_policy,
    threshold,
)
from stagedroll.testing import FakeClock


class FailingStore(MemoryStore):
    """A real MemoryStore whose operations can be made to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_load = False
        self.fail_write = False

    def load(self, rollout: str) -> RolloutState | None:
        if self.fail_load:
            raise ConnectionError("store down")
        return super().load(rollout)

    def compare_and_set(
        self, rollout: str, expected_version: int, state: RolloutState, transition: Transition
    ) -> bool:
        if self.fail_write:
            raise ConnectionError("store down")
        return super().compare_and_set(rollout, expected_version, state, transition)


class InterleavingStore(MemoryStore):
    """A MemoryStore where another writer advances the rollout just before our next write."""

    def __init__(self) -> None:
        super().__init__()
        self.interleave: Rollouts | None = None

    def compare_and_set(
        self, rollout: str, expected_version: int, state: RolloutState, transition: Transition
    ) -> bool:
        other, self.interleave = self.interleave, None
        if other is not None:
            other.advance(rollout, actor="other-process")
        return super().compare_and_set(rollout, expected_version, state, transition)


class ExplodingAttributes(Mapping[str, object]):
    """Attributes whose lookups fail, to reach the decision path's error handling."""

    def __getitem__(self, key: str) -> object:
        raise RuntimeError("attribute source failed")

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def get(self, key: str, default: object = None) -> object:
        raise RuntimeError("attribute source failed")


def units_in(rollouts: Rollouts, name: str, count: int = 2000) -> set[str]:
    return {f"user-{i}" for i in range(count) if rollouts.enabled(name, f"user-{i}")}


@pytest.fixture(name="rollouts")
def _rollouts(policy: dict[str, Any]) -> Rollouts:
    return Rollouts(policy, environment="prod", clock=lambda: 1000.0)


class TestConstruction:
    def test_from_file(self, tmp_path: Path) -> None:
        """from_file reads a TOML policy."""
        path = tmp_path / "rollouts.toml"
        path.write_text('[rollouts.a]\nstages = [{ name = "x", percent = 10 }]\n')
        rollouts = Rollouts.from_file(path)
        assert list(rollouts) == ["a"]
        assert len(rollouts) == 1
        assert "a" in rollouts
        assert "b" not in rollouts

    def test_accepts_a_policy_object_and_a_store_url(self) -> None:
        """A validated Policy and a memory:// URL are accepted as they are."""
        rollouts = Rollouts(load_policy(plain_policy(5)), store="memory://")
        assert isinstance(rollouts.store, MemoryStore)

    def test_environment_from_the_process(
        self, policy: dict[str, Any], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """STAGEDROLL_ENV names the environment when the constructor does not."""
        monkeypatch.setenv("STAGEDROLL_ENV", "dev")
        assert Rollouts(policy).environment == "dev"
        assert Rollouts(policy, environment="prod").environment == "prod"

    def test_unknown_environment_is_refused(self, policy: dict[str, Any]) -> None:
        """A process environment the policy does not declare is a PolicyError with a hint."""
        with pytest.raises(PolicyError, match=r"unknown environment 'prd'.*did you mean 'prod'"):
            Rollouts(policy, environment="prd")

    def test_start_is_recorded_once(self, policy: dict[str, Any]) -> None:
        """The first Rollouts on a store records each rollout's start; the next one reuses it."""
        store = MemoryStore()
        Rollouts(policy, store=store, clock=lambda: 5.0)
        Rollouts(policy, store=store, clock=lambda: 9.0)
        history = store.history("checkout")
        assert [t.action for t in history] == [Action.START]
        assert history[0].at == 5.0
        started = store.load("checkout")
        assert started is not None
        ladder = (("employees", 0.0), ("canary", 1.0), ("half", 50.0), ("all", 100.0))
        assert started == RolloutState(
            0, Status.RUNNING, 5.0, 1, "", "stagedroll", epoch=1, history=started.history,
            stages=ladder,
        )  # fmt: skip
        assert len(started.history) == 32  # a random id, kept by every transition


class TestDecisions:
    def test_bucketing_follows_the_contract(self, rollouts: Rollouts) -> None:
        """A plain stage puts a unit in iff its bucket is below the stage's threshold."""
        for i in range(500):
            unit = f"user-{i}"
            expected = bucket("search", unit) < threshold(25)
            decision = rollouts.decide("search", unit)
            assert decision.enabled is expected
            assert rollouts.enabled("search", unit) is expected
            assert rollouts["search"].enabled(unit) is expected
            assert decision.reason is (Reason.IN_COHORT if expected else Reason.OUT_OF_COHORT)
            assert decision.bucket == bucket("search", unit)
            assert (decision.stage, decision.percent) == ("quarter", 25.0)

    @given(unit=st.one_of(st.text(), st.integers(), st.uuids()))
    def test_fast_and_slow_paths_agree(self, unit: str | int | uuid.UUID) -> None:
        """Rollout.enabled, Rollouts.enabled and decide agree for every unit, ASCII or not."""
        rollouts = Rollouts(plain_policy(37.5), store=MemoryStore())
        expected = bucket("checkout", unit) < threshold(37.5)
        assert rollouts.enabled("checkout", unit) is expected
        assert rollouts["checkout"].enabled(unit) is expected
        assert rollouts.decide("checkout", unit).enabled is expected

    def test_a_lone_surrogate_is_a_unit_like_any_other(self, rollouts: Rollouts) -> None:
        """Text that is not valid Unicode is bucketed by its surrogate-preserving UTF-8 bytes."""
        decision = rollouts.decide("search", "user-\ud800")
        assert decision.bucket == bucket("search", "user-\ud800")
        assert rollouts.enabled("search", "user-\ud800") is decision.enabled

    def test_units_of_other_types_raise_type_error(self, rollouts: Rollouts) -> None:
        """A float, bool or object unit is a bug at the call site: TypeError, not a guess."""
        for bad in (1.5, True, b"user", object()):
            with pytest.raises(TypeError, match=r"must be str, int or uuid\.UUID"):
                rollouts.decide("search", bad)
            with pytest.raises(TypeError):
                rollouts.enabled("search", bad)
        with pytest.raises(TypeError, match="attributes must be a mapping"):
            rollouts.decide("search", "u", ["not", "a", "mapping"])  # type: ignore[arg-type]

    def test_an_int_too_long_for_text_is_a_type_error(self, rollouts: Rollouts) -> None:
        """An int unit beyond Python's int-to-text limit is refused like other bad units."""
        with pytest.raises(TypeError, match="pass a str"):
            rollouts.decide("search", 10**5000)

    def test_no_unit(self, rollouts: Rollouts) -> None:
        """None is no unit: off, with reason NO_UNIT."""
        decision = rollouts.decide("search", None)
        assert (decision.enabled, decision.reason) == (False, Reason.NO_UNIT)

    def test_deny_then_allow_then_segments(self, rollouts: Rollouts) -> None:
        """Deny wins over everything but status; allow and segments turn the path on."""
        assert rollouts.decide("checkout", "banned").reason is Reason.DENIED
        assert rollouts.decide("checkout", "vip").reason is Reason.ALLOWED
        staff = rollouts.decide("checkout", "u1", {"email": "ann@corp.test"})
        assert (staff.enabled, staff.reason) == (True, Reason.SEGMENT)
        other = rollouts.decide("checkout", "u1", {"email": "ann@else.test"})
        assert (other.enabled, other.reason) == (False, Reason.OUT_OF_COHORT)
        banned_staff = rollouts.decide("checkout", "banned", {"email": "x@corp.test"})
        assert banned_staff.reason is Reason.DENIED

    def test_segments_stay_included_in_later_stages(self, rollouts: Rollouts) -> None:
        """A segment included by an earlier stage stays in as the rollout advances."""
        rollouts.advance("checkout")
        staff = rollouts.decide("checkout", "u1", {"email": "ann@corp.test"})
        assert staff.reason is Reason.SEGMENT

    def test_status_decides_before_targeting(self, rollouts: Rollouts) -> None:
        """Killed is off even for allowed units; complete is on even for denied ones."""
        rollouts.kill("checkout")
        killed = rollouts.decide("checkout", "vip")
        assert (killed.enabled, killed.reason, killed.percent) == (False, Reason.KILLED, 0.0)
        rollouts.complete("checkout")
        done = rollouts.decide("checkout", "banned")
        assert (done.enabled, done.reason, done.percent) == (True, Reason.COMPLETE, 100.0)
        assert rollouts.enabled("checkout", None) is True

    def test_environments(self, policy: dict[str, Any]) -> None:
        """dev is fixed at 100 %; a rollout whose table lacks the environment is off there."""
        dev = Rollouts(policy, environment="dev")
        assert dev.decide("checkout", "anyone").enabled
        assert dev.status("checkout").mode == "fixed"
        policy["rollouts"]["checkout"]["environments"] = {"dev": 100}
        staging = Rollouts(policy, environment="staging")
        decision = staging.decide("checkout", "vip")
        assert (decision.enabled, decision.reason) == (False, Reason.ENVIRONMENT)
        assert staging.decide("search", "user-2").reason in (
            Reason.IN_COHORT,
            Reason.OUT_OF_COHORT,
        )

    def test_bucket_by_an_attribute(self, rollouts: Rollouts) -> None:
        """bucket_by buckets on the attribute; missing or ill-typed means no unit."""
        decision = rollouts.decide("orgs", "user-1", {"org": "acme"})
        assert decision.bucket == bucket("orgs", "acme")
        assert rollouts.decide("orgs", "user-1", {"org": 7}).bucket == bucket("orgs", 7)
        assert rollouts.decide("orgs", "user-1").reason is Reason.NO_UNIT
        assert rollouts.decide("orgs", "user-1", {"org": 1.5}).reason is Reason.NO_UNIT

    def test_cohorts_grow_monotonically(self) -> None:
        """Each stage's cohort contains the previous stage's."""
        rollouts = Rollouts(plain_policy(1, 5, 25, 50, 100))
        previous = units_in(rollouts, "checkout")
        for _ in range(4):
            rollouts.advance("checkout")
            current = units_in(rollouts, "checkout")
            assert previous <= current
            previous = current
        assert len(previous) == 2000

    def test_a_pinned_salt_keeps_the_cohort_across_renames(self) -> None:
        """Two rollouts with the same pinned salt have the same cohort."""
        policy = {
            "rollouts": {
                name: {"salt": "pinned", "stages": [{"name": "s", "percent": 30}]}
                for name in ("old-name", "new-name")
            }
        }
        rollouts = Rollouts(policy)
        assert units_in(rollouts, "old-name") == units_in(rollouts, "new-name")


class TestUnknownRollouts:
    def test_lookups_fail_at_once(self, rollouts: Rollouts) -> None:
        """rollouts[name] and guard(name) raise UnknownRolloutError naming the known ones."""
        with pytest.raises(UnknownRolloutError, match="unknown rollout 'chekout'") as info:
            rollouts["chekout"]
        assert "checkout, orgs, search" in str(info.value)
        assert isinstance(info.value, LookupError)
        with pytest.raises(UnknownRolloutError):
            rollouts.guard("chekout", fallback=print, unit=None)

    def test_decisions_are_off_and_logged_once(self, rollouts: Rollouts) -> None:
        """enabled and decide give off for an unknown name, with one warning per name."""
        with structlog.testing.capture_logs() as logs:
            for _ in range(10):
                assert rollouts.enabled("chekout", "u") is False
                assert rollouts.decide("chekout", "u").reason is Reason.UNKNOWN_ROLLOUT
        assert [e["event"] for e in logs] == ["rollout.unknown"]


class TestTransitions:
    def test_advance_widens_the_cohort_and_is_audited(self, rollouts: Rollouts) -> None:
        """advance moves to the next stage; history shows who, why and when, newest first."""
        transition = rollouts.advance("checkout", reason="canary looks fine", actor="alice")
        assert (transition.from_stage, transition.to_stage, transition.version) == (0, 1, 2)
        status = rollouts.status("checkout")
        assert (status.stage, status.stage_name, status.percent) == (1, "canary", 1.0)
        assert (status.reason, status.actor, status.since) == ("canary looks fine", "alice", 1000)
        assert status.next_stage == "half"
        actions = [(t.action, t.actor) for t in rollouts.history("checkout")]
        assert actions == [(Action.ADVANCE, "alice"), (Action.START, "stagedroll")]
        assert len(rollouts.history("checkout", limit=1)) == 1

    def test_actor_defaults_to_the_os_user(self, rollouts: Rollouts) -> None:
        """Without an actor, the transition names the user running the process."""
        assert rollouts.freeze("checkout").actor

    def test_refused_transitions_change_nothing(self, rollouts: Rollouts) -> None:
        """A transition that does not apply raises TransitionError and leaves the state."""
        rollouts.freeze("checkout")
        with pytest.raises(TransitionError, match="frozen"):
            rollouts.advance("checkout")
        assert rollouts.status("checkout").status is Status.FROZEN
        assert len(rollouts.history("checkout")) == 2

    def test_rollback_from_the_first_stage_is_zero_percent(self, rollouts: Rollouts) -> None:
        """Rolling back from the first stage turns the bucket off for everyone."""
        rollouts.rollback("search")
        status = rollouts.status("search")
        assert (status.stage, status.stage_name, status.percent) == (-1, None, 0.0)
        assert status.next_stage == "quarter"
        assert units_in(rollouts, "search") == set()
        rollouts.advance("search")
        assert units_in(rollouts, "search")

    def test_transitions_are_logged(self, rollouts: Rollouts) -> None:
        """Each transition logs its noun.verb event with rollout, stage, reason and actor."""
        with structlog.testing.capture_logs() as logs:
            rollouts.freeze("checkout", reason="errors up", actor="bob")
        (event,) = logs
        assert event["event"] == "rollout.frozen"
        assert (event["rollout"], event["stage"], event["reason"], event["actor"]) == (
            "checkout",
            "employees",
            "errors up",
            "bob",
        )

    def test_instances_sharing_a_store_see_each_other(self, policy: dict[str, Any]) -> None:
        """A kill through one Rollouts reaches another on the same store at once."""
        store = MemoryStore()
        first = Rollouts(policy, store=store)
        second = Rollouts(policy, store=store)
        first.complete("checkout")
        assert second.decide("checkout", "anyone").reason is Reason.COMPLETE
        second.kill("checkout")
        assert first.enabled("checkout", "anyone") is False

    def test_concurrent_freezes_have_one_winner(self, policy: dict[str, Any]) -> None:
        """Of several processes' worth of freezes racing, one wins and the rest are told."""
        store = MemoryStore()
        instances = [Rollouts(policy, store=store) for _ in range(6)]
        barrier = threading.Barrier(len(instances))
        outcomes: list[str] = []

        def freeze(rollouts: Rollouts) -> None:
            barrier.wait()
            try:
                rollouts.freeze("checkout", actor="racer")
                outcomes.append("won")
            except TransitionError:
                outcomes.append("refused")

        threads = [threading.Thread(target=freeze, args=(r,)) for r in instances]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["refused"] * 5 + ["won"]
        assert [t.action for t in store.history("checkout")] == [Action.FREEZE, Action.START]

    def test_a_write_that_lost_the_race_is_not_reapplied(self) -> None:
        """Two advances racing move one stage: the loser is told, not retried onto the next."""
        store = InterleavingStore()
        ours = Rollouts(plain_policy(1, 5, 25), store=store)
        store.interleave = Rollouts(plain_policy(1, 5, 25), store=store)
        with pytest.raises(
            TransitionError, match=r"changed meanwhile \(now stage 1.*other-process"
        ):
            ours.advance("checkout", actor="us")
        assert ours.status("checkout").stage == 1
        assert [t.actor for t in store.history("checkout")] == ["other-process", "stagedroll"]

    def test_rollback_wording(self, rollouts: Rollouts) -> None:
        """Refusals read as sentences: 'cannot roll back', not 'cannot rollback'."""
        rollouts.rollback("search")
        with pytest.raises(TransitionError, match="cannot roll back 'search': it is already at 0"):
            rollouts.rollback("search")

    def test_an_older_state_never_replaces_a_newer_one(self, rollouts: Rollouts) -> None:
        """Adopting a state older than the one in force changes nothing."""
        handle = rollouts["search"]
        old = handle.state
        rollouts.kill("search")
        handle._adopt(old)
        assert handle.state.status is Status.KILLED

    def test_a_policy_with_fewer_stages_holds_at_its_last(self, policy: dict[str, Any]) -> None:
        """A stored stage beyond the policy's stages is served as the last stage."""
        store = MemoryStore()
        Rollouts(plain_policy(1, 5, 25), store=store).complete("checkout")
        shrunk = Rollouts(plain_policy(1, 50), store=store)
        status = shrunk.status("checkout")
        assert (status.stage, status.stage_name) == (1, "s1")
        shrunk.rollback("checkout")
        assert shrunk.status("checkout").stage == 0


class TestNeverBreakTheHost:
    def test_store_down_at_start(self, policy: dict[str, Any]) -> None:
        """A store failing at start-up: the stable path for all; the failure is counted."""
        store = FailingStore()
        store.fail_load = True
        with structlog.testing.capture_logs() as logs:
            rollouts = Rollouts(policy, store=store)
        assert rollouts["search"].state.version == 0
        assert rollouts["search"].state.stage == -1
        assert not any(rollouts.enabled("search", f"user-{i}") for i in range(200))
        assert rollouts.decide("search", "user-2").reason is Reason.OUT_OF_COHORT
        assert rollouts.failures.count("store.load_failed") == 3
        assert {e["event"] for e in logs} == {"store.load_failed"}
        assert rollouts.tick() == []  # still down: nothing automatic from an unknown state
        with pytest.raises(StoreError):
            rollouts.freeze("search")

    def test_start_recovers_when_the_store_answers(self, policy: dict[str, Any]) -> None:
        """Once the store answers, tick starts the rollouts that could not start."""
        store = FailingStore()
        store.fail_load = True
        rollouts = Rollouts(policy, store=store)
        store.fail_load = False
        rollouts.tick()
        assert rollouts["search"].state.version == 1
        assert rollouts["search"].state.stage == 0
        assert [t.action for t in store.history("search")] == [Action.START]

    def test_transition_starts_a_rollout_that_could_not_start(self, policy: dict[str, Any]) -> None:
        """A transition on a rollout never started records its start first."""
        store = FailingStore()
        store.fail_load = True
        rollouts = Rollouts(policy, store=store)
        store.fail_load = False
        rollouts.freeze("search", actor="alice")
        assert [t.action for t in store.history("search")] == [Action.FREEZE, Action.START]

    def test_operator_calls_report_store_failures(self, policy: dict[str, Any]) -> None:
        """Transitions, status and history raise StoreError when the store fails."""
        store = FailingStore()
        rollouts = Rollouts(policy, store=store)
        store.fail_write = True
        with pytest.raises(StoreError, match="failed to freeze 'checkout'"):
            rollouts.freeze("checkout")
        store.fail_load = True
        with pytest.raises(StoreError):
            rollouts.status("checkout")
        assert rollouts.enabled("checkout", "vip") is True

    def test_an_internal_failure_gives_an_error_decision(self, rollouts: Rollouts) -> None:
        """A failure inside the decision is logged, counted and decided off with reason ERROR."""
        with structlog.testing.capture_logs() as logs:
            for _ in range(5):
                decision = rollouts.decide("checkout", "u1", ExplodingAttributes())
                assert (decision.enabled, decision.reason) == (False, Reason.ERROR)
            assert rollouts.enabled("checkout", "u1", ExplodingAttributes()) is False
        assert rollouts.failures.count("decision.failed") == 6
        assert [e["event"] for e in logs] == ["decision.failed"]


class TestBrokenLogging:
    @pytest.fixture(name="broken_logging")
    def _broken_logging(self) -> Iterator[None]:
        def explode(logger: object, method: str, event: MutableMapping[str, Any]) -> str:
            raise RuntimeError("logging is broken")

        structlog.configure(processors=[explode])
        yield
        structlog.reset_defaults()

    @pytest.mark.usefixtures("broken_logging")
    def test_decisions_and_transitions_survive_a_raising_logger(
        self, policy: dict[str, Any]
    ) -> None:
        """A logging setup that raises reaches neither decisions nor committed transitions."""
        store = MemoryStore()
        rollouts = Rollouts(policy, store=store)
        assert rollouts.enabled("chekout", "u") is False
        assert rollouts.decide("checkout", "u", ExplodingAttributes()).reason is Reason.ERROR
        rollouts.advance("checkout")
        rollouts.kill("checkout")
        assert [t.action for t in store.history("checkout")] == [
            Action.KILL,
            Action.ADVANCE,
            Action.START,
        ]


class TestStatus:
    def test_status_of_a_killed_and_a_complete_rollout(self, rollouts: Rollouts) -> None:
        """Killed reads 0 %, complete 100 %, whatever the stage."""
        rollouts.kill("search", reason="incident")
        killed = rollouts.status("search")
        assert (killed.status, killed.percent, killed.reason) == (Status.KILLED, 0.0, "incident")
        rollouts.complete("search")
        assert rollouts.status("search").percent == 100.0

    def test_repr(self, rollouts: Rollouts) -> None:
        """Reprs name the rollouts and the stage in force."""
        assert "checkout" in repr(rollouts)
        assert repr(rollouts["search"]) == "<Rollout 'search' stage='quarter' 25% running>"
        assert rollouts["search"].policy.stages[0].name == "quarter"
        assert rollouts["search"].state.version == 1


# -- the health gate through the public API ----------------------------------------------------


def auto_policy(
    *percents: float, bake: str | None = "10m", min_units: int = 0, **rollout: Any
) -> dict[str, Any]:
    """Rollout ``checkout`` advancing by itself through stages ``s0``, ``s1``... after ``bake``."""
    stages: list[dict[str, Any]] = [
        {"name": f"s{i}", "percent": p, **({"bake": bake} if bake else {})}
        for i, p in enumerate(percents or (10, 50, 100))
    ]
    stages[0]["min_units"] = min_units
    return {"rollouts": {"checkout": {"advance": "auto", "stages": stages, **rollout}}}


def report_stream(
    rollouts: Rollouts,
    *,
    seed: int,
    calls: int,
    control_rate: float,
    treatment_rate: float,
    name: str = "checkout",
    until: Status | None = None,
) -> None:
    """Report one call of each of ``calls`` new units, failing at each arm's rate (seeded)."""
    rng = random.Random(seed)
    for i in range(calls):
        unit = f"user-{i}"
        rate = treatment_rate if rollouts.enabled(name, unit) else control_rate
        rollouts.report(name, unit, error=rng.random() < rate)
        if until is not None and rollouts[name].state.status is until:
            return


def failing_guard(rollouts: Rollouts, name: str = "checkout") -> Callable[[str], str]:
    """A guarded function whose new path always raises; the old one answers ``old:<user>``."""

    def old(user: str) -> str:
        return f"old:{user}"

    @rollouts.guard(name, fallback=old, unit=lambda user: user)
    def new(user: str) -> str:
        raise RuntimeError(f"the new path fails for {user}")

    return new


class TestAutoFreeze:
    def test_a_healthy_stream_that_a_naive_rule_would_freeze(self) -> None:
        """A healthy seeded stream at 5 %: a naive rule fires on it, the health gate does not.

        The naive rule: after at least 100 calls, freeze when the new path's error rate is
        above twice the old path's, re-checked after every call.
        """
        rollouts = Rollouts(plain_policy(5, 100), clock=FakeClock(1000.0))
        rng = random.Random(4)
        calls = {True: 0, False: 0}
        errors = {True: 0, False: 0}
        naive_fired_at = None
        for i in range(20_000):
            unit = f"user-{i}"
            error = rng.random() < 0.02  # both paths fail 2 % of the time
            enabled = rollouts.report("checkout", unit, error=error).enabled
            calls[enabled] += 1
            errors[enabled] += error
            if (
                naive_fired_at is None
                and i + 1 >= 100
                and calls[True]
                and calls[False]
                and errors[True] / calls[True] > 2 * errors[False] / calls[False]
            ):
                naive_fired_at = i + 1
        assert naive_fired_at is not None
        status = rollouts.status("checkout")
        assert status.status is Status.RUNNING
        assert status.health.e_errors < status.health.freeze_at_errors
        assert status.health.error_events_treatment + status.health.error_events_control > 300
        assert [t.action for t in rollouts.history("checkout")] == [Action.START]

    def test_a_degraded_stream_freezes_then_rolls_back(self) -> None:
        """New-path errors at 3 times the old path's rate: frozen, then rolled back, by the gate."""
        rollouts = Rollouts(plain_policy(20, 100), clock=FakeClock(1000.0))
        report_stream(rollouts, seed=1, calls=30_000, control_rate=0.02, treatment_rate=0.06,
                      until=Status.ROLLED_BACK)  # fmt: skip
        rollback, freeze, start = rollouts.history("checkout")
        assert (rollback.action, freeze.action, start.action) == (
            Action.ROLLBACK,
            Action.FREEZE,
            Action.START,
        )
        assert (freeze.actor, rollback.actor) == ("stagedroll", "stagedroll")
        assert (freeze.to_status, rollback.to_status) == (Status.FROZEN, Status.ROLLED_BACK)
        assert (rollback.from_stage, rollback.to_stage) == (0, -1)
        for entry in (freeze, rollback):
            assert set(entry.evidence) == EVIDENCE_KEYS
            assert entry.reason.startswith("errors: the new path failed for ")
            assert entry.evidence["share"] == 0.2
        # No latency test by default: the error test has all of each alpha, 1/0.05 and 1/0.001.
        assert 20 <= freeze.evidence["e_errors"] < 1000  # type: ignore[operator]
        assert rollback.evidence["e_errors"] >= 1000  # type: ignore[operator]
        assert freeze.evidence["r_errors"] is not None
        status = rollouts.status("checkout")
        assert (status.status, status.stage, status.percent) == (Status.ROLLED_BACK, -1, 0.0)
        assert rollouts.enabled("checkout", "user-1") is False

    @pytest.mark.parametrize(
        ("health", "frozen"),
        [
            pytest.param({}, False, id="latency-not-tested"),
            pytest.param({"latency_p95": True}, True, id="latency_p95"),
            pytest.param({"latency_slo_ms": 30}, True, id="latency_slo_ms"),
        ],
    )
    def test_a_slower_new_path_is_frozen_only_when_latency_is_tested(
        self, health: dict[str, Any], frozen: bool
    ) -> None:
        """A new path five times slower, without errors: frozen on latency only when the
        policy asks for a latency test (an SLO or the old path's p95)."""
        policy = plain_policy(20, 100)
        policy["rollouts"]["checkout"]["health"] = health
        rollouts = Rollouts(policy, clock=FakeClock(1000.0))
        for i in range(3000):
            unit = f"user-{i}"
            latency = 0.05 if rollouts.enabled("checkout", unit) else 0.01
            rollouts.report("checkout", unit, error=False, latency_s=latency)
            if rollouts["checkout"].state.status is not Status.RUNNING:
                break
        status = rollouts.status("checkout")
        assert status.status is (Status.FROZEN if frozen else Status.RUNNING)
        if frozen:
            freeze = rollouts.history("checkout")[0]
            assert (freeze.action, freeze.actor) == (Action.FREEZE, "stagedroll")
            assert freeze.reason.startswith("slow calls: the new path was slow for ")
            assert status.health.e_latency >= status.health.freeze_at_latency == pytest.approx(40)
            assert status.health.e_errors == 1.0
        else:
            assert status.health.slow_threshold_s is None
            assert status.health.slow_events_treatment == status.health.slow_events_control == 0
            assert [t.action for t in rollouts.history("checkout")] == [Action.START]

    def test_a_failing_new_path_behind_a_guard(self) -> None:
        """A guarded new path that always fails: callers get the fallback, the gate rolls back."""
        rollouts = Rollouts(plain_policy(20, 100), clock=FakeClock(1000.0))
        new = failing_guard(rollouts)
        answers = {new(f"user-{i}") for i in range(2000)}
        assert answers == {f"old:user-{i}" for i in range(2000)}
        actions = [(t.action, t.actor) for t in rollouts.history("checkout")]
        assert actions == [
            (Action.ROLLBACK, "stagedroll"),
            (Action.FREEZE, "stagedroll"),
            (Action.START, "stagedroll"),
        ]

    def test_a_raising_hook_changes_nothing_for_the_caller(self) -> None:
        """A hook raising on the gate's transitions: the guarded calls answer as usual."""

        def hook(event: object) -> None:
            raise RuntimeError("the pager is down")

        rollouts = Rollouts(plain_policy(20, 100), clock=FakeClock(1000.0), on_transition=hook)
        new = failing_guard(rollouts)
        assert [new(f"user-{i}") for i in range(2000)] == [f"old:user-{i}" for i in range(2000)]
        assert rollouts.failures.count("hook.failed") == 2
        assert rollouts.status("checkout").status is Status.ROLLED_BACK

    def test_a_failing_store_never_raises_into_the_caller(self) -> None:
        """The store failing on the gate's write: calls answer, the failure is counted, and the
        step is retried a second later on the clock."""
        clock = FakeClock(1000.0)
        store = FailingStore()
        rollouts = Rollouts(plain_policy(20, 100), store=store, clock=clock)
        new = failing_guard(rollouts)
        store.fail_write = True
        assert [new(f"user-{i}") for i in range(1000)] == [f"old:user-{i}" for i in range(1000)]
        assert rollouts.failures.count("health.transition_failed") == 1
        assert rollouts.status("checkout").status is Status.RUNNING
        # Units on the new path: each one's failure is an event, after which the gate checks.
        later = [f"user-{i}" for i in range(1000, 3000)]
        first, second = [u for u in later if rollouts.enabled("checkout", u)][:2]
        clock.advance(0.5)
        new(first)
        assert rollouts.failures.count("health.transition_failed") == 1
        clock.advance(1)
        new(second)
        assert rollouts.failures.count("health.transition_failed") == 2
        store.fail_write = False
        clock.advance(1)
        assert rollouts.tick() != []
        assert rollouts.status("checkout").status is not Status.RUNNING
        assert rollouts.history("checkout")[0].actor == "stagedroll"

    def test_unfreeze_starts_a_new_epoch(self) -> None:
        """After an operator resumes a frozen rollout, its evidence starts again from E = 1."""
        rollouts = Rollouts(plain_policy(20, 100), clock=FakeClock(1000.0))
        report_stream(rollouts, seed=1, calls=30_000, control_rate=0.02, treatment_rate=0.06,
                      until=Status.FROZEN)  # fmt: skip
        frozen = rollouts.status("checkout")
        assert frozen.status is Status.FROZEN
        assert frozen.health.e_errors >= frozen.health.freeze_at_errors
        rollouts.unfreeze("checkout", reason="fixed the bug", actor="alice")
        health = rollouts.status("checkout").health
        assert (health.e_errors, health.e_latency) == (1.0, 1.0)
        assert (health.error_events_treatment, health.error_events_control) == (0, 0)
        units = (f"user-{i}" for i in range(100))
        treated = next(u for u in units if rollouts.enabled("checkout", u))
        rollouts.report("checkout", treated, error=True)
        assert rollouts.status("checkout").status is Status.RUNNING
        assert rollouts.status("checkout").health.error_events_treatment == 1

    def test_health_disabled_never_freezes(self) -> None:
        """``health = {enabled = false}``: a failing new path is counted, never frozen."""
        policy = plain_policy(20, 100)
        policy["rollouts"]["checkout"]["health"] = {"enabled": False}
        rollouts = Rollouts(policy, clock=FakeClock(1000.0))
        new = failing_guard(rollouts)
        for i in range(2000):
            new(f"user-{i}")
        status = rollouts.status("checkout")
        assert status.status is Status.RUNNING
        assert status.treatment.errors == status.treatment.calls > 0
        assert status.health.enabled is False
        assert (status.health.e_errors, status.health.sample_ratio_ok) == (1.0, True)
        assert rollouts["checkout"].health is None
        assert [t.action for t in rollouts.history("checkout")] == [Action.START]

    def test_a_fixed_environment_has_no_health_gate(self) -> None:
        """An environment fixed at a percent does not follow stages: nothing is tested there."""
        policy = plain_policy(20, 100)
        policy["rollouts"]["checkout"]["environments"] = {"dev": 50, "prod": "stages"}
        rollouts = Rollouts(policy, environment="dev", clock=FakeClock(1000.0))
        new = failing_guard(rollouts)
        for i in range(2000):
            new(f"user-{i}")
        status = rollouts.status("checkout")
        assert (status.mode, status.status) == ("fixed", Status.RUNNING)
        assert status.health.enabled is False
        assert status.waiting_for is None
        assert rollouts["checkout"].health is None
        assert [t.action for t in rollouts.history("checkout")] == [Action.START]


class TestAutoAdvance:
    def test_advance_after_the_bake_on_the_injected_clock(self) -> None:
        """Outcomes during the bake do not advance; the first one after it does, exactly once."""
        clock = FakeClock(1000.0)
        rollouts = Rollouts(auto_policy(), clock=clock)
        for i in range(200):
            rollouts.report("checkout", f"user-{i}", error=False)
        assert rollouts.status("checkout").waiting_for == "bake time: 10m left"
        clock.set(1000.0 + 599)
        for i in range(200, 400):
            rollouts.report("checkout", f"user-{i}", error=False)
        status = rollouts.status("checkout")
        assert (status.stage, status.waiting_for) == (0, "bake time: 1s left")
        clock.set(1000.0 + 600)
        rollouts.report("checkout", "user-400", error=False)
        for i in range(401, 600):
            rollouts.report("checkout", f"user-{i}", error=False)
        advance, _ = rollouts.history("checkout")
        assert (advance.action, advance.actor, advance.at) == (Action.ADVANCE, "stagedroll", 1600.0)
        assert (advance.from_stage, advance.to_stage) == (0, 1)
        assert advance.reason.startswith("healthy: baked 10m, ")
        assert set(advance.evidence) == EVIDENCE_KEYS
        assert advance.evidence["units_treatment"] == sum(
            bucket("checkout", f"user-{i}") < threshold(10) for i in range(401)
        )
        status = rollouts.status("checkout")
        assert (status.stage, status.since) == (1, 1600.0)
        assert status.waiting_for == "bake time: 10m left"

    def test_guarded_calls_of_known_units_take_a_due_advance(self) -> None:
        """Once the bake is over, a busy guard advances on its own, with no new unit needed."""
        clock = FakeClock(0.0)
        rollouts = Rollouts(auto_policy(), clock=clock)

        @rollouts.guard("checkout", fallback=lambda user: "old", unit=lambda user: user)
        def new(user: str) -> str:
            return "new"

        # Latency is not tested by default, so the guard's timing noise cannot freeze anything.
        for i in range(2000):
            new(f"user-{i % 20}")
        assert rollouts.status("checkout").stage == 0
        clock.set(600.0)
        for i in range(2000):
            new(f"user-{i % 20}")
        assert [t.action for t in rollouts.history("checkout")] == [Action.ADVANCE, Action.START]

    def test_reports_of_known_units_take_a_due_advance(self) -> None:
        """Outcomes reported without a latency, by units already seen, still advance after the
        bake (``tick`` is only needed by an idle process)."""
        clock = FakeClock(0.0)
        rollouts = Rollouts(auto_policy(), clock=clock)
        for i in range(20):
            rollouts.report("checkout", f"user-{i}", error=False)
        clock.set(600.0)
        for i in range(2000):
            rollouts.report("checkout", f"user-{i % 20}", error=False)
        assert rollouts.status("checkout").stage == 1

    def test_tick_advances_an_idle_rollout(self) -> None:
        """With no outcome at all, ``tick`` takes the advance once the bake is over, once."""
        clock = FakeClock(0.0)
        rollouts = Rollouts(auto_policy(), clock=clock)
        assert rollouts.tick() == []
        clock.set(600.0)
        (made,) = rollouts.tick()
        assert (made.action, made.to_stage, made.actor) == (Action.ADVANCE, 1, "stagedroll")
        assert rollouts.tick() == []
        assert [t.action for t in rollouts.history("checkout")] == [Action.ADVANCE, Action.START]

    def test_min_units_blocks_the_advance(self) -> None:
        """After the bake, the advance waits for ``min_units`` distinct new-path units."""
        clock = FakeClock(0.0)
        rollouts = Rollouts(auto_policy(min_units=20), clock=clock)
        clock.set(3600.0)
        on = [u for u in (f"user-{i}" for i in range(1000)) if rollouts.enabled("checkout", u)]
        off = [u for u in (f"user-{i}" for i in range(1000)) if not rollouts.enabled("checkout", u)]
        for _ in range(50):  # one unit, many calls: one unit
            rollouts.report("checkout", on[0], error=False)
        assert rollouts.status("checkout").waiting_for == "units on the new path: 1 of 20"
        for k in range(1, 20):
            for unit in off[9 * k : 9 * k + 9]:
                rollouts.report("checkout", unit, error=False)
            assert rollouts.status("checkout").stage == 0
            rollouts.report("checkout", on[k], error=False)
        status = rollouts.status("checkout")
        assert status.stage == 1
        advance = rollouts.history("checkout")[0]
        assert (advance.action, advance.evidence["units_treatment"]) == (Action.ADVANCE, 20)
        assert "20 users on the new path" in advance.reason

    def test_a_sample_ratio_mismatch_blocks_the_advance(self) -> None:
        """Outcomes reported for new-path units only: the sample ratio is off, nothing advances."""
        clock = FakeClock(0.0)
        rollouts = Rollouts(auto_policy(), clock=clock)
        on = [u for u in (f"user-{i}" for i in range(1000)) if rollouts.enabled("checkout", u)]
        for unit in on:
            rollouts.report("checkout", unit, error=False)
        clock.set(3600.0)
        assert rollouts.tick() == []
        rollouts.report("checkout", on[0], error=False)
        rollouts.report("checkout", "someone-new", error=False)
        status = rollouts.status("checkout")
        assert status.stage == 0
        assert status.health.sample_ratio_ok is False
        assert status.waiting_for == (
            "an operator: the sample ratio is off (check bucketing and reporting)"
        )
        assert rollouts.failures.count("health.sample_ratio_mismatch") >= 1

    def test_a_degraded_stage_is_not_advanced(self) -> None:
        """A rollout the gate froze during its bake stays frozen after it."""
        clock = FakeClock(0.0)
        rollouts = Rollouts(auto_policy(20, 100), clock=clock)
        report_stream(rollouts, seed=1, calls=30_000, control_rate=0.02, treatment_rate=0.06,
                      until=Status.FROZEN)  # fmt: skip
        clock.set(3600.0)
        assert rollouts.tick() == []
        assert Action.ADVANCE not in [t.action for t in rollouts.history("checkout")]

    def test_two_instances_never_double_advance(self) -> None:
        """Two Rollouts on one store, both seeing outcomes after the bake: one advance."""
        clock = FakeClock(0.0)
        store = MemoryStore()
        first = Rollouts(auto_policy(), store=store, clock=clock)
        second = Rollouts(auto_policy(), store=store, clock=clock)
        for i in range(0, 200, 2):
            first.report("checkout", f"user-{i}", error=False)
            second.report("checkout", f"user-{i + 1}", error=False)
        clock.set(600.0)
        for i in range(200, 600, 2):
            first.report("checkout", f"user-{i}", error=False)
            second.report("checkout", f"user-{i + 1}", error=False)
        first.tick()
        second.tick()
        actions = [t.action for t in store.history("checkout")]
        assert actions == [Action.ADVANCE, Action.START]
        assert first.status("checkout").stage == second.status("checkout").stage == 1

    def test_two_instances_and_threads_never_double_advance(self) -> None:
        """Threads reporting through two Rollouts at once, the bake over: one advance."""
        clock = FakeClock(0.0)
        store = MemoryStore()
        made: list[TransitionEvent] = []
        instances = [
            Rollouts(auto_policy(), store=store, clock=clock, on_transition=made.append)
            for _ in range(2)
        ]
        clock.set(600.0)
        threads, per_thread = 8, 100
        barrier = threading.Barrier(threads)

        def work(t: int) -> None:
            barrier.wait()
            for i in range(per_thread):
                instances[t % 2].report("checkout", f"user-{t}-{i}", error=False)

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert [t.action for t in store.history("checkout")] == [Action.ADVANCE, Action.START]
        assert [(e.action, e.automatic) for e in made] == [(Action.ADVANCE, True)]

    def test_after_a_rollback_an_operator_decides(self) -> None:
        """A rollout the gate rolled back does not advance by itself, bake or not."""
        clock = FakeClock(0.0)
        rollouts = Rollouts(auto_policy(20, 100), clock=clock)
        report_stream(rollouts, seed=1, calls=30_000, control_rate=0.02, treatment_rate=0.06,
                      until=Status.ROLLED_BACK)  # fmt: skip
        clock.set(100_000.0)
        assert rollouts.tick() == []
        assert rollouts.status("checkout").status is Status.ROLLED_BACK


class TestHealthStatus:
    def test_manual_advance(self) -> None:
        """A manual rollout's status shows its evidence and waits for an operator."""
        rollouts = Rollouts(plain_policy(10, 100), clock=FakeClock(1000.0))
        rollouts.report("checkout", "user-1", error=True)
        status = rollouts.status("checkout")
        assert status.waiting_for == "an operator: advance is manual"
        assert status.health.enabled is True
        assert status.health.share == 0.1
        assert status.health.units_treatment + status.health.units_control == 1
        assert status.health.freeze_at_errors == pytest.approx(20.0)

    def test_auto_advance(self) -> None:
        """An automatic rollout waits for its bake time, then for its units."""
        clock = FakeClock(0.0)
        rollouts = Rollouts(auto_policy(min_units=5), clock=clock)
        assert rollouts.status("checkout").waiting_for == "bake time: 10m left"
        clock.set(60.0)
        assert rollouts.status("checkout").waiting_for == "bake time: 9m left"
        clock.set(600.0)
        assert rollouts.status("checkout").waiting_for == "units on the new path: 0 of 5"

    def test_an_advance_due(self) -> None:
        """Once nothing is missing, the status says the next outcome (or tick) advances."""
        clock = FakeClock(0.0)
        rollouts = Rollouts(auto_policy(), clock=clock)
        clock.set(600.0)
        assert rollouts.status("checkout").waiting_for == "the next outcome: an advance is due"

    def test_frozen_rolled_back_and_last_stage(self) -> None:
        """Frozen, rolled back and the last stage all wait for an operator; killed for nothing."""
        rollouts = Rollouts(auto_policy(10, 100), clock=FakeClock(1000.0))
        rollouts.freeze("checkout")
        assert (
            rollouts.status("checkout").waiting_for
            == "an operator: frozen (unfreeze to resume); a rollback if the evidence grows"
        )
        rollouts.rollback("checkout")
        assert rollouts.status("checkout").waiting_for == (
            "an operator: rolled back (unfreeze or advance to resume)"
        )
        rollouts.advance("checkout")
        rollouts.advance("checkout")
        assert rollouts.status("checkout").waiting_for == (
            "an operator: the last stage is reached (complete the rollout)"
        )
        rollouts.kill("checkout")
        assert rollouts.status("checkout").waiting_for is None
        rollouts.complete("checkout")
        assert rollouts.status("checkout").waiting_for is None

    def test_a_rolled_back_rollout_reports_zero_share(self) -> None:
        """At stage -1 (0 %) nothing is compared: the share is 0."""
        rollouts = Rollouts(plain_policy(10, 100), clock=FakeClock(1000.0))
        rollouts.rollback("checkout")
        assert rollouts.status("checkout").health.share == 0.0

    def test_reading_the_status_does_not_stop_the_threshold_being_learnt(self) -> None:
        """Polling ``status()`` between outcomes leaves the latency test as it would be."""
        policy = plain_policy(50)
        policy["rollouts"]["checkout"]["health"] = {"latency_p95": True}
        quiet = Rollouts(policy, clock=FakeClock(1000.0))
        polled = Rollouts(policy, clock=FakeClock(1000.0))
        for i in range(500):
            for rollouts in (quiet, polled):
                rollouts.report("checkout", f"user-{i % 50}", error=False, latency_s=0.01)
            polled.status("checkout")
        assert quiet.status("checkout").health.slow_threshold_s is not None
        assert polled.status("checkout").health.slow_threshold_s is not None

    def test_automatic_advance_needs_the_health_gate(self) -> None:
        """``advance = "auto"`` with the health gate disabled is refused, naming the field."""
        with pytest.raises(PolicyError) as caught:
            Rollouts(auto_policy(health={"enabled": False}))
        assert [p.path for p in caught.value.problems] == ["rollouts.checkout.advance"]


class TestClose:
    def test_closes_the_store_it_made(self, tmp_path: Path) -> None:
        """A store made from a URL is closed with the Rollouts; decisions keep working."""
        with Rollouts(plain_policy(50), store=f"sqlite:///{tmp_path}/state.db") as rollouts:
            store = rollouts.store
            assert isinstance(store, SQLiteStore)
            before = [rollouts.enabled("checkout", f"u{i}") for i in range(100)]
        assert store._closed
        assert [rollouts.enabled("checkout", f"u{i}") for i in range(100)] == before

    def test_leaves_a_store_passed_in_open(self, tmp_path: Path) -> None:
        """A store object passed in belongs to the caller."""
        store = SQLiteStore(tmp_path / "state.db")
        try:
            Rollouts(plain_policy(50), store=store).close()
            assert not store._closed
            assert store.load("checkout") is not None
        finally:
            store.close()


class TestAdoptOrder:
    def test_a_late_notice_is_ignored(self) -> None:
        """A state delivered after a newer one (notices that crossed) changes nothing."""
        rollouts = Rollouts(plain_policy(10, 50), clock=lambda: 100.0)
        rollout = rollouts["checkout"]
        newer = RolloutState(1, Status.RUNNING, 100.0, version=3, epoch=1)
        older = RolloutState(0, Status.FROZEN, 99.0, version=2, epoch=1)
        rollout._adopt(newer)
        rollout._adopt(older)
        assert rollout.state == newer

    def test_the_same_version_begun_later_is_adopted(self) -> None:
        """Two histories at one version (after a data loss): the state that began later wins."""
        rollouts = Rollouts(plain_policy(10, 50), clock=lambda: 100.0)
        rollout = rollouts["checkout"]
        rollout._adopt(RolloutState(1, Status.RUNNING, 100.0, version=2, epoch=1))
        killed = RolloutState(0, Status.KILLED, 200.0, version=2, epoch=1)
        rollout._adopt(killed)
        assert rollout.state == killed
        assert not any(rollouts.enabled("checkout", f"u{i}") for i in range(200))

    def test_versions_order_states_whatever_the_clocks(self) -> None:
        """A skewed clock does not matter: the higher version wins."""
        rollouts = Rollouts(plain_policy(10, 50), clock=lambda: 100.0)
        rollout = rollouts["checkout"]
        newer = RolloutState(0, Status.RUNNING, 50.0, version=3, epoch=3)
        rollout._adopt(newer)
        rollout._adopt(RolloutState(0, Status.FROZEN, 400.0, version=2, epoch=1))
        assert rollout.state == newer


class TestStoreProtocolCheck:
    def test_a_store_of_an_earlier_protocol_is_refused_by_name(self) -> None:
        """A store lacking the newer methods is a clear TypeError, not a silent loss of pooling."""

        class OldSharedStore:
            refresh_interval = 1.0

            def __getattr__(self, name: str) -> Any:
                if name in ("names", "add_errors", "read_errors"):
                    raise AttributeError(name)
                return getattr(MemoryStore(), name)

            def on_refresh(self, callback: Callable[[], object]) -> None:
                """Never refreshes."""

        with pytest.raises(
            TypeError,
            match="lacks names, add_errors, read_errors, before_refresh, down, supervise ",
        ):
            Rollouts(plain_policy(5), store=OldSharedStore())

    def test_a_policy_of_too_many_stages_is_refused(self) -> None:
        """Every stored state carries its ladder: a rollout has at most 1,000 stages."""
        with pytest.raises(PolicyError, match="stages"):
            Rollouts(plain_policy(*([1.0] * 1_001)))


class CountingSQLiteStore(SQLiteStore):
    """A real SQLite store that counts the evidence calls a refresh makes of it."""

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        self.evidence_calls = 0

    def read_counts(self, rollout: str, segment: str) -> dict[str, int]:
        self.evidence_calls += 1
        return super().read_counts(rollout, segment)

    def add_counts(self, rollout: str, segment: str, counts: Mapping[str, int]) -> dict[str, int]:
        self.evidence_calls += 1
        return super().add_counts(rollout, segment, counts)

    def count_distinct(self, rollout: str, scope: str, units: Collection[str]) -> int:
        self.evidence_calls += 1
        return super().count_distinct(rollout, scope, units)


class TestIdlePooling:
    """The background refresh pools a rollout's evidence only when there is something to send,
    or an automatic advance due by the clock needs the fleet's totals: an idle process costs
    the store one version check per refresh, whatever the number of rollouts."""

    def refreshes(self, store: CountingSQLiteStore, n: int) -> int:
        """The evidence calls that ``n`` background refreshes made."""
        before = store.evidence_calls
        for _ in range(n):
            store._cycle()  # the refresh thread's work, run here (refresh_interval is 1 h)
        return store.evidence_calls - before

    def test_an_idle_rollout_reads_no_evidence(self, tmp_path: Path) -> None:
        """No outcome queued: no evidence call; outcomes queued: one flush, then idle again."""
        store = CountingSQLiteStore(tmp_path / "state.db", refresh_interval=3600)
        try:
            rollouts = Rollouts(plain_policy(50, 100), store=store)
            assert self.refreshes(store, 5) == 0
            for i in range(40):
                unit = f"user-{i}"
                rollouts.report("checkout", unit, error=i % 7 == 0)
            assert self.refreshes(store, 1) > 0  # the flush, and the fleet's totals
            assert self.refreshes(store, 5) == 0
            assert rollouts.status("checkout").health.units_treatment > 0  # status pools
        finally:
            store.close()

    def test_an_idle_rollout_due_to_advance_reads_the_totals_first(self, tmp_path: Path) -> None:
        """Idle until its bake time ends, a rollout reads no evidence; then its refresh reads
        the fleet's totals before it advances (never on old totals), and is idle again."""
        clock = FakeClock(1000.0)
        store = CountingSQLiteStore(tmp_path / "state.db", refresh_interval=3600)
        try:
            rollouts = Rollouts(auto_policy(10, 50, bake="1m"), store=store, clock=clock)
            assert self.refreshes(store, 3) == 0  # not baked yet
            clock.advance(120)
            assert self.refreshes(store, 1) > 0
            assert rollouts["checkout"].state.stage == 1  # advanced, on fresh totals
            assert self.refreshes(store, 3) == 0  # the new stage bakes
        finally:
            store.close()

    def test_an_advance_due_after_a_freeze_reads_the_totals_first(self, tmp_path: Path) -> None:
        """A rollout that was due to advance while frozen, then unfrozen, reads the fleet's
        totals at the refresh where it advances, as one due for the first time does."""
        clock = FakeClock(1000.0)
        store = CountingSQLiteStore(tmp_path / "state.db", refresh_interval=3600)
        try:
            rollouts = Rollouts(auto_policy(10, 50, 100, bake="1m"), store=store, clock=clock)
            rollouts.freeze("checkout", reason="looking", actor="alice")
            clock.advance(120)  # due by the clock, but frozen: no advance
            self.refreshes(store, 3)
            rollouts.unfreeze("checkout", reason="fine", actor="alice")
            clock.advance(120)
            assert self.refreshes(store, 1) > 0  # the refresh that advances reads the totals
            assert rollouts["checkout"].state.stage == 1
        finally:
            store.close()

    def test_an_idle_process_waits_on_the_fleets_sample_ratio_mismatch(
        self, tmp_path: Path
    ) -> None:
        """A sample-ratio mismatch in the fleet's totals holds the rollout in an idle process
        too: its bake time over (and after a period due while frozen), it does not advance."""
        clock = FakeClock(1000.0)
        store = CountingSQLiteStore(tmp_path / "state.db", refresh_interval=3600)
        other = SQLiteStore(tmp_path / "state.db", refresh_interval=3600)
        try:
            idle = Rollouts(auto_policy(10, 50, 100, bake="1m"), store=store, clock=clock)
            busy = Rollouts(auto_policy(10, 50, 100, bake="1m"), store=other, clock=clock)
            idle.freeze("checkout", reason="looking", actor="alice")
            clock.advance(120)  # due by the clock while frozen: the idle refreshes count
            self.refreshes(store, 3)
            idle.unfreeze("checkout", reason="fine", actor="alice")
            busy.status("checkout")
            for i in range(20_000):
                unit = f"user-{i}"
                if not busy.enabled("checkout", unit):  # only the old path reports
                    busy.report("checkout", unit, error=False)
            assert not busy.status("checkout").health.sample_ratio_ok  # flushed; it waits
            clock.advance(120)
            self.refreshes(store, 1)  # the idle process's refresh once the bake is over
            assert idle["checkout"].state.stage == 0, idle["checkout"].state.reason
        finally:
            store.close()
            other.close()
