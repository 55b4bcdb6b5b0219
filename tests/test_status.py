"""Tests of the public read model: ``status``, ``snapshot`` and the change subscription."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import pytest

from conftest import plain_policy
from stagedroll import (
    MemoryStore,
    Rollouts,
    RolloutState,
    Snapshot,
    SQLiteStore,
    StageInfo,
    Status,
    Transition,
)


class CountingStore(MemoryStore):
    """A real MemoryStore that counts the calls made to it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def load(self, rollout: str) -> RolloutState | None:
        self.calls += 1
        return super().load(rollout)

    def compare_and_set(
        self, rollout: str, expected: int, state: RolloutState, entry: Transition
    ) -> bool:
        self.calls += 1
        return super().compare_and_set(rollout, expected, state, entry)

    def read_counts(self, rollout: str, segment: str) -> dict[str, int]:
        self.calls += 1
        return super().read_counts(rollout, segment)

    def count_distinct(self, rollout: str, scope: str, units: Collection[str]) -> int:
        self.calls += 1
        return super().count_distinct(rollout, scope, units)


class TestStatus:
    def test_the_ladder_and_where_it_stands(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A status carries the stage ladder, and says a kill of this process's environment."""
        monkeypatch.setenv("STAGEDROLL_KILL", "checkout")
        rollouts = Rollouts(plain_policy(5, 50))
        status = rollouts.status("checkout")
        assert status.stages == (StageInfo("s0", 5.0), StageInfo("s1", 50.0))
        assert status.killed_here
        assert status.percent == 0.0
        assert status.waiting_for == "an operator: killed in this process by $STAGEDROLL_KILL"

    def test_as_served_reads_no_store(self) -> None:
        """``status(fresh=False)`` and ``snapshot()`` make no store call at all."""
        store = CountingStore()
        rollouts = Rollouts(plain_policy(5), store=store)
        rollouts.report("checkout", "u1", error=True)
        before = store.calls
        status = rollouts["checkout"].status(fresh=False)
        snapshot = rollouts.snapshot()
        assert store.calls == before
        assert isinstance(snapshot, Snapshot)
        assert snapshot.rollouts["checkout"] == status
        assert status.control.errors + status.treatment.errors == 1

    def test_as_served_never_raises_with_the_store_down(self) -> None:
        """With a store that fails every call, the read model still answers: 0 %, unknown."""

        class DownStore(MemoryStore):
            def load(self, rollout: str) -> RolloutState | None:
                raise ConnectionError("down")

        rollouts = Rollouts(plain_policy(5), store=DownStore())
        snapshot = rollouts.snapshot()
        status = snapshot.rollouts["checkout"]
        assert (status.stage, status.version) == (-1, 0)
        assert snapshot.failures == {"store.load_failed": 1}


class TestOnChange:
    def test_a_state_read_by_status_is_told_once(self, tmp_path: Path) -> None:
        """Another process's freeze that this process first takes in through ``status`` (not
        its refresh) is told to the listeners, once."""
        path = tmp_path / "state.db"
        stores = SQLiteStore(path, refresh_interval=60), SQLiteStore(path, refresh_interval=60)
        writer, reader = (Rollouts(plain_policy(5, 50), store=store) for store in stores)
        seen: list[tuple[str, int, Status]] = []
        reader.on_change(lambda name, state: seen.append((name, state.version, state.status)))
        try:
            writer.freeze("checkout", actor="alice")
            assert reader.status("checkout").status is Status.FROZEN
            reader.tick()
            stores[1].refresh()
            assert seen == [("checkout", 2, Status.FROZEN)]
        finally:
            for store in stores:
                store.close()

    def test_a_listener_that_raises_changes_nothing(self) -> None:
        """A listener that raises (``SystemExit`` too) is counted; the transition stands."""
        rollouts = Rollouts(plain_policy(5, 50))

        def bad(name: str, state: RolloutState) -> None:
            raise SystemExit(3)

        rollouts.on_change(bad)
        rollouts.advance("checkout", actor="alice")
        assert rollouts.status("checkout").stage == 1
        assert rollouts.failures.count("hook.failed") == 1

    def test_off_change_stops_the_telling(self) -> None:
        """A listener removed hears no more changes; one never added is ``False``."""
        rollouts = Rollouts(plain_policy(5, 25, 50, 100))
        seen: list[int] = []

        def listener(name: str, state: RolloutState) -> None:
            seen.append(state.stage)

        assert rollouts.on_change(listener) is listener  # usable as a decorator
        rollouts.on_change(listener)
        rollouts.advance("checkout")
        assert seen == [1, 1]
        assert rollouts.off_change(listener) is True
        rollouts.advance("checkout")
        assert seen == [1, 1, 2]  # added twice, removed once
        assert rollouts.off_change(listener) is True
        assert rollouts.off_change(listener) is False
        rollouts.advance("checkout")
        assert seen == [1, 1, 2]

    def test_a_listener_may_remove_itself(self) -> None:
        """Removing a listener while changes are told is safe: the others are still told."""
        rollouts = Rollouts(plain_policy(5, 50, 100))
        seen: list[int] = []

        def once(name: str, state: RolloutState) -> None:
            rollouts.off_change(once)

        rollouts.on_change(once)
        rollouts.on_change(lambda name, state: seen.append(state.stage))
        rollouts.advance("checkout")
        rollouts.advance("checkout")
        assert seen == [1, 2]


class TestOnOutcome:
    def test_a_listener_that_raises_never_reaches_the_call(self) -> None:
        """An outcome listener that raises (``SystemExit`` too) is counted; guarded calls,
        ``report`` and ``track`` go on, and the listeners after it are still told."""
        rollouts = Rollouts(plain_policy(100))
        told: list[str | None] = []

        def bad(outcome: object) -> None:
            raise SystemExit(3)

        rollout = rollouts["checkout"]
        rollout.on_outcome(bad)
        rollout.on_outcome(lambda outcome: told.append(outcome.unit))
        guarded = rollouts.guard("checkout", fallback=lambda u: "old", unit=lambda u: u)
        assert guarded(lambda u: "new")("u1") == "new"
        rollouts.report("checkout", "u2", error=True)
        with rollouts.track("checkout", "u3"):
            pass
        assert told == ["u1", "u2", "u3"]
        assert rollouts.failures.count("hook.failed") == 3
