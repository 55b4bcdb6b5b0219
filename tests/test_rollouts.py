from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from conftest import plain_policy
from stagedroll import (
    Action,
    MemoryStore,
    PolicyError,
    Reason,
    Rollouts,
    RolloutState,
    Status,
    StoreError,
    Transition,
    TransitionError,
    UnknownRolloutError,
    bucket,
    load_policy,
    threshold,
)


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
        assert store.load("checkout") == RolloutState(0, Status.RUNNING, 5.0, 1, "", "stagedroll")


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
        rollouts.kill("search")
        with pytest.raises(TransitionError, match="cannot roll back 'search': it was killed"):
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
        """A store failing at start-up: decisions serve the first stage; the failure is counted."""
        store = FailingStore()
        store.fail_load = True
        with structlog.testing.capture_logs() as logs:
            rollouts = Rollouts(policy, store=store)
        assert rollouts.decide("search", "user-2").reason in (
            Reason.IN_COHORT,
            Reason.OUT_OF_COHORT,
        )
        assert rollouts.failures.count("store.load_failed") == 3
        assert {e["event"] for e in logs} == {"store.load_failed"}

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
