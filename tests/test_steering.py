"""Tests of ``Steering``: reading and steering rollouts from the store alone, with no policy."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from stagedroll import (
    Action,
    CorruptStateError,
    MemoryStore,
    Rollouts,
    RolloutState,
    SQLiteStore,
    Status,
    Steering,
    StoreError,
    Transition,
    TransitionError,
    UnknownRolloutError,
)
from stagedroll.testing import FakeClock

POLICY: dict[str, Any] = {
    "rollouts": {
        "checkout": {
            "stages": [
                {"name": "canary", "percent": 1},
                {"name": "half", "percent": 50},
                {"name": "all", "percent": 100},
            ]
        },
        "search": {"stages": [{"name": "quarter", "percent": 25}]},
    }
}
LADDER = (("canary", 1.0), ("half", 50.0), ("all", 100.0))


def started(store: MemoryStore | SQLiteStore) -> Rollouts:
    """Start the policy's rollouts in ``store`` and advance checkout to ``half``."""
    rollouts = Rollouts(POLICY, store=store, clock=FakeClock(1_000.0))
    rollouts.advance("checkout", actor="alice")
    return rollouts


class TestReads:
    def test_names_state_and_history(self) -> None:
        """The store's rollouts, each state with the ladder of the policy that wrote it."""
        store = MemoryStore()
        started(store)
        steering = Steering(store)
        assert steering.names() == ["checkout", "search"]
        state = steering.load("checkout")
        assert state is not None
        assert (state.stage, state.stages) == (1, LADDER)
        assert [str(t.action) for t in steering.history("checkout")] == ["advance", "start"]
        assert steering.load("nothing") is None

    def test_a_failing_store_raises_store_error(self) -> None:
        """Reads of a store that fails raise ``StoreError``, naming what failed."""

        class Down(MemoryStore):
            def load(self, rollout: str) -> RolloutState | None:
                raise ConnectionError("refused")

            def names(self) -> list[str]:
                raise ConnectionError("refused")

        with pytest.raises(StoreError, match="read 'checkout'"):
            Steering(Down()).load("checkout")
        with pytest.raises(StoreError, match="list its rollouts"):
            Steering(Down()).names()


class TestTransitions:
    def test_kill_with_no_policy_takes_effect_in_the_service(self) -> None:
        """A kill made from the store alone turns the service's new path off."""
        store = MemoryStore()
        service = started(store)
        unit = next(u for u in (f"u{i}" for i in range(1_000)) if service.enabled("checkout", u))
        with structlog.testing.capture_logs() as logs:
            entry = Steering(store, clock=lambda: 2_000.0).apply(
                "checkout", Action.KILL, reason="incident 4711", actor="oncall"
            )
        assert entry == Transition(
            rollout="checkout",
            action=Action.KILL,
            from_stage=1,
            to_stage=1,
            from_status=Status.RUNNING,
            to_status=Status.KILLED,
            version=3,
            at=2_000.0,
            reason="incident 4711",
            actor="oncall",
        )
        # The kill, and the service (sharing the store) telling that another made it.
        events = {e["event"]: e for e in logs}
        assert events.keys() == {"rollout.killed", "rollout.changed"}
        assert events["rollout.killed"]["stage"] == "half"
        assert events["rollout.changed"]["actor"] == "oncall"
        assert not service.enabled("checkout", unit)

    def test_rollback_to_a_named_stage_after_a_kill(self, tmp_path: Path) -> None:
        """From killed, a rollback to a stage by name never serves more than that stage."""
        store = SQLiteStore(tmp_path / "state.db")
        try:
            started(store).close()
            steering = Steering(store)
            steering.apply("checkout", Action.KILL, actor="oncall")
            steering.apply("checkout", Action.ROLLBACK, to="canary", actor="oncall")
            state = steering.load("checkout")
            assert state is not None
            assert (state.stage, state.status) == (0, Status.ROLLED_BACK)
            assert state.stages == LADDER  # kept from the state it replaced
        finally:
            store.close()

    def test_unknown_stage_and_rollout(self) -> None:
        """A stage the ladder lacks, and a rollout the store lacks, are named in the error."""
        store = MemoryStore()
        started(store)
        steering = Steering(store)
        stages = r"to 'everyone': it has no such stage \(its stages: 'canary', 'half', 'all'"
        with pytest.raises(TransitionError, match=stages):
            steering.apply("checkout", Action.ROLLBACK, to="everyone")
        with pytest.raises(UnknownRolloutError, match="nothing"):
            steering.apply("nothing", Action.KILL)

    def test_a_state_without_a_ladder_can_be_killed_not_advanced(self) -> None:
        """A state from before ladders: kill, freeze and rollback work; advance and complete not."""
        store = MemoryStore()
        old = RolloutState(stage=1, status=Status.RUNNING, since=0.0, version=1, epoch=1)
        entry = Transition("legacy", Action.START, 1, 1, None, Status.RUNNING, 1, 0.0)
        assert store.compare_and_set("legacy", 0, old, entry)
        steering = Steering(store)
        with pytest.raises(TransitionError, match="before states carried their stages"):
            steering.apply("legacy", Action.ADVANCE)
        steering.apply("legacy", Action.KILL)
        steering.apply("legacy", Action.ROLLBACK)
        state = steering.load("legacy")
        assert state is not None
        assert (state.stage, state.status) == (0, Status.ROLLED_BACK)

    def test_a_concurrent_change_is_not_overwritten(self) -> None:
        """The compare-and-set refuses a transition judged on a state changed meanwhile."""

        class Racing(MemoryStore):
            def compare_and_set(self, rollout: str, expected: int, state: Any, entry: Any) -> bool:
                return False

        store = Racing()
        MemoryStore.compare_and_set(
            store,
            "x",
            0,
            RolloutState(0, Status.RUNNING, 0.0, 1, stages=(("a", 5.0),)),
            Transition("x", Action.START, 0, 0, None, Status.RUNNING, 1, 0.0),
        )
        with pytest.raises(TransitionError, match="changed meanwhile"):
            Steering(store).apply("x", Action.FREEZE)

    def test_a_url_is_opened_and_closed(self, tmp_path: Path) -> None:
        """Given a URL, ``Steering`` opens the store and closes it on leaving the block."""
        path = tmp_path / "state.db"
        store = SQLiteStore(path)
        started(store).close()
        store.close()
        with Steering(f"sqlite:///{path}") as steering:
            assert steering.names() == ["checkout", "search"]


class TestCorruptState:
    def test_a_corrupt_state_is_named_as_such_not_as_a_store_outage(self, tmp_path: Path) -> None:
        """A state written behind the store's back: ``CorruptStateError`` saying what serves."""
        path = tmp_path / "state.db"
        store = SQLiteStore(path)
        try:
            started(store).close()
            with sqlite3.connect(path) as db:
                db.execute("UPDATE rollouts SET state = '{not json' WHERE name = 'checkout'")
            serves = "serves the old path in every process"
            with pytest.raises(CorruptStateError, match=serves) as raised:
                Steering(store).apply("checkout", Action.KILL)
            assert isinstance(raised.value, StoreError)
            assert Steering(store).load("search") is not None  # the others read on
        finally:
            store.close()
