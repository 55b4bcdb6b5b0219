from __future__ import annotations

import gc
import threading

import pytest

from stagedroll import Action, MemoryStore, RolloutState, Status, Store, Transition
from stagedroll.stores import store_from_url


def state(version: int, stage: int = 0) -> RolloutState:
    return RolloutState(stage=stage, status=Status.RUNNING, since=float(version), version=version)


def entry(version: int, stage: int = 0) -> Transition:
    return Transition("r", Action.ADVANCE, stage, stage, Status.RUNNING, Status.RUNNING, version,
                      float(version))  # fmt: skip


@pytest.fixture(name="store")
def _store() -> MemoryStore:
    return MemoryStore()


class TestMemoryStore:
    def test_is_a_store(self, store: MemoryStore) -> None:
        """MemoryStore satisfies the Store protocol."""
        assert isinstance(store, Store)

    def test_compare_and_set_creates_then_refuses_stale_versions(self, store: MemoryStore) -> None:
        """The first write expects version 0; a write with a stale version changes nothing."""
        assert store.load("r") is None
        assert store.compare_and_set("r", 0, state(1), entry(1))
        assert store.load("r") == state(1)
        assert not store.compare_and_set("r", 0, state(1, stage=3), entry(1, stage=3))
        assert store.load("r") == state(1)
        assert store.history("r") == [entry(1)]

    def test_version_must_rise_by_one(self, store: MemoryStore) -> None:
        """A new state whose version is not expected + 1 is a programming error."""
        with pytest.raises(ValueError, match="version must be 1"):
            store.compare_and_set("r", 0, state(2), entry(2))

    def test_history_is_newest_first_and_bounded(self) -> None:
        """History reads newest first, honours limit, and keeps at most max_history entries."""
        store = MemoryStore(max_history=3)
        for v in range(1, 6):
            assert store.compare_and_set("r", v - 1, state(v), entry(v))
        assert [t.version for t in store.history("r")] == [5, 4, 3]
        assert [t.version for t in store.history("r", limit=2)] == [5, 4]
        assert store.history("other") == []
        with pytest.raises(ValueError, match="max_history"):
            MemoryStore(max_history=0)

    def test_racing_threads_have_exactly_one_winner(self, store: MemoryStore) -> None:
        """Of many threads writing the same version, one succeeds."""
        barrier = threading.Barrier(8)
        wins: list[bool] = []

        def race(stage: int) -> None:
            barrier.wait()
            wins.append(store.compare_and_set("r", 0, state(1, stage), entry(1, stage)))

        threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert wins.count(True) == 1
        assert len(store.history("r")) == 1

    def test_watchers_hear_of_changes_and_are_held_weakly(self, store: MemoryStore) -> None:
        """A bound-method listener is called after a write and dropped once its owner is gone."""
        heard: list[tuple[str, int]] = []

        class Watcher:
            def on_state(self, name: str, new: RolloutState) -> None:
                heard.append((name, new.version))

        watcher = Watcher()
        store.watch(watcher.on_state)
        store.compare_and_set("r", 0, state(1), entry(1))
        del watcher
        gc.collect()
        store.compare_and_set("r", 1, state(2), entry(2))
        assert heard == [("r", 1)]

    def test_a_failing_listener_does_not_undo_the_write(self, store: MemoryStore) -> None:
        """A listener that raises is logged; the write stands and later listeners still run."""
        heard: list[int] = []

        def broken(name: str, new: RolloutState) -> None:
            raise RuntimeError("listener bug")

        store.watch(broken)
        store.watch(lambda name, new: heard.append(new.version))
        assert store.compare_and_set("r", 0, state(1), entry(1))
        assert heard == [1]
        store.close()
        store.compare_and_set("r", 1, state(2), entry(2))
        assert heard == [1]


class TestStoreFromUrl:
    def test_memory(self) -> None:
        """memory:// is a fresh MemoryStore."""
        assert isinstance(store_from_url("memory://"), MemoryStore)

    def test_unknown_scheme(self) -> None:
        """An unknown scheme is refused with the known ones listed."""
        with pytest.raises(ValueError, match="known schemes are memory://"):
            store_from_url("postgres://localhost/db")
