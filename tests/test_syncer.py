from __future__ import annotations

import gc
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from conftest import plain_policy
from stagedroll import (
    Action,
    Rollouts,
    RolloutState,
    SQLiteStore,
    Status,
    SyncingStore,
    Transition,
)

THREAD = "stagedroll-sqlite"
FAST = 0.05


def state(version: int, stage: int = 0) -> RolloutState:
    return RolloutState(stage=stage, status=Status.RUNNING, since=float(version), version=version)


def entry(version: int, stage: int = 0) -> Transition:
    return Transition("r", Action.ADVANCE, stage, stage, Status.RUNNING, Status.RUNNING, version,
                      float(version))  # fmt: skip


def wait_for(condition: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; return whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def refresh_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == THREAD}


@pytest.fixture(name="path")
def _path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture(name="pair")
def _pair(path: Path) -> Iterator[tuple[SQLiteStore, SQLiteStore]]:
    """Two stores on one file, as two processes of a host have."""
    a = SQLiteStore(path, refresh_interval=FAST)
    b = SQLiteStore(path, refresh_interval=FAST)
    yield a, b
    a.close()
    b.close()


class FlakyStore(SQLiteStore):
    """A SQLite store whose reads fail while ``failing`` is set (through the protocol's hook)."""

    failing = False

    def _read_many(self, names: list[str]) -> dict[str, object]:
        if self.failing:
            raise OSError("disk unplugged")
        return super()._read_many(names)


class TestRefresh:
    def test_is_a_syncing_store(self, pair: tuple[SQLiteStore, SQLiteStore]) -> None:
        """SQLiteStore satisfies the SyncingStore protocol."""
        assert isinstance(pair[0], SyncingStore)

    def test_a_listener_hears_of_another_stores_write(
        self, pair: tuple[SQLiteStore, SQLiteStore]
    ) -> None:
        """Store B's listener is told of a compare-and-set made through store A."""
        a, b = pair
        heard: list[tuple[str, int]] = []
        refreshes: list[float] = []
        b.watch(lambda name, new: heard.append((name, new.version)))
        b.on_refresh(lambda: refreshes.append(time.monotonic()))
        assert b.load("r") is None  # b refreshes "r" from now on
        assert a.compare_and_set("r", 0, state(1), entry(1))
        assert wait_for(lambda: ("r", 1) in heard)
        assert a.compare_and_set("r", 1, state(2), entry(2))
        assert wait_for(lambda: ("r", 2) in heard)
        assert heard == [("r", 1), ("r", 2)]  # each change once, in order
        assert wait_for(lambda: len(refreshes) >= 5)

    def test_a_rollouts_adopts_another_ones_freeze(self, path: Path) -> None:
        """A freeze through one Rollouts reaches another's decisions without any call on it."""
        policy = {"rollouts": {"x": {"stages": [{"name": "half", "percent": 50}]}}}
        a = SQLiteStore(path, refresh_interval=FAST)
        b = SQLiteStore(path, refresh_interval=FAST)
        try:
            first, second = Rollouts(policy, store=a), Rollouts(policy, store=b)
            assert second["x"].state.status is Status.RUNNING
            first.freeze("x", reason="bad", actor="ops")
            assert wait_for(lambda: second["x"].state.status is Status.FROZEN)
            assert second["x"].state == first["x"].state
            assert second["x"].state.reason == "bad"
        finally:
            a.close()
            b.close()

    def test_refresh_fails_counts_and_recovers(self, path: Path) -> None:
        """refresh() says False and counts while reads fail, and logs store.recovered once."""
        store = FlakyStore(path, refresh_interval=60)  # the thread stays out of the way
        writer = SQLiteStore(path, refresh_interval=60)
        heard: list[int] = []
        store.watch(lambda name, new: heard.append(new.version))
        try:
            assert store.load("r") is None
            assert store.refresh()
            store.failing = True
            with structlog.testing.capture_logs() as logs:
                assert store.refresh()  # nothing was written: the file is not even read
                assert writer.compare_and_set("r", 0, state(1), entry(1))
                assert not store.refresh()
                assert not store.refresh()
                assert store.failures.count("store.refresh_failed") == 2
                assert heard == []
                store.failing = False
                assert store.refresh()
                assert heard == [1]  # the change missed while down is told after recovery
                assert store.refresh()
            events = [log["event"] for log in logs]
            assert events.count("store.refresh_failed") == 1  # logged once, counted twice
            assert events.count("store.recovered") == 1
            assert store.failures.count("store.refresh_failed") == 2
        finally:
            store.close()
            writer.close()

    def test_the_background_thread_keeps_going_after_failures(self, path: Path) -> None:
        """While reads fail the thread keeps calling back; it delivers changes once they work."""
        store = FlakyStore(path, refresh_interval=FAST)
        writer = SQLiteStore(path, refresh_interval=60)
        heard: list[int] = []
        cycles: list[int] = []
        store.watch(lambda name, new: heard.append(new.version))
        store.on_refresh(lambda: cycles.append(1))
        try:
            assert store.load("r") is None
            store.failing = True
            assert writer.compare_and_set("r", 0, state(1), entry(1))
            assert wait_for(lambda: store.failures.count("store.refresh_failed") >= 2)
            assert heard == []
            store.failing = False
            store.wake()  # skip the back-off
            assert wait_for(lambda: heard == [1])
            seen = len(cycles)
            assert wait_for(lambda: len(cycles) > seen + 2)  # back at the interval
        finally:
            store.close()
            writer.close()


class TestThreadLifetime:
    def test_the_thread_starts_lazily_and_ends_with_its_store(self, path: Path) -> None:
        """No thread until first use; once the store is garbage, its thread ends."""
        before = refresh_threads()
        store = SQLiteStore(path, refresh_interval=FAST)
        assert refresh_threads() == before
        store.load("r")
        (thread,) = refresh_threads() - before
        assert thread.daemon
        del store
        gc.collect()
        assert wait_for(lambda: not thread.is_alive())

    def test_close_stops_the_thread_and_forgets_listeners(
        self, pair: tuple[SQLiteStore, SQLiteStore]
    ) -> None:
        """After close() the thread ends and no listener or callback is called again."""
        a, b = pair
        before = refresh_threads()
        heard: list[int] = []
        called: list[int] = []
        b.watch(lambda name, new: heard.append(new.version))
        b.on_refresh(lambda: called.append(1))
        b.load("r")
        (thread,) = refresh_threads() - before
        assert wait_for(lambda: len(called) >= 2)
        b.close()
        assert wait_for(lambda: not thread.is_alive())
        calls = len(called)
        assert a.compare_and_set("r", 0, state(1), entry(1))
        assert not b.refresh()  # a closed store reads nothing, and tells no one
        with pytest.raises(RuntimeError, match="closed"):
            b.load("r")
        b._cycle()
        assert heard == []
        assert len(called) == calls
        b.close()

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
    @pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
    def test_a_forked_child_runs_its_own_thread(self, path: Path) -> None:
        """In a forked child the thread runs again and hears of the parent's writes."""
        store = SQLiteStore(path, refresh_interval=FAST)
        heard: list[tuple[int, int]] = []
        store.watch(lambda name, new: heard.append((os.getpid(), new.version)))
        try:
            assert store.compare_and_set("r", 0, state(1), entry(1))
            assert refresh_threads()
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child, reported through the pipe
                code = 1
                try:
                    signal.alarm(10)  # a child stuck on a lock must not hang the suite
                    os.close(read)
                    me = os.getpid()
                    alive = wait_for(lambda: any(t.is_alive() for t in refresh_threads()))
                    got = wait_for(lambda: (me, 2) in heard)
                    own = store.compare_and_set("r", 2, state(3), entry(3))
                    result = {"thread": alive, "heard": got, "own_write": own}
                    os.write(write, json.dumps(result).encode())
                    code = 0
                finally:
                    os._exit(code)
            os.close(write)
            assert store.compare_and_set("r", 1, state(2), entry(2))
            with os.fdopen(read) as pipe:
                data = pipe.read()
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, "the child failed"
            assert json.loads(data) == {"thread": True, "heard": True, "own_write": True}
            assert wait_for(lambda: (os.getpid(), 3) in heard)  # the child's write, heard here
        finally:
            store.close()


POOLED_CHILD = textwrap.dedent(
    """
    import json, random, sys, time
    from pathlib import Path

    from stagedroll import Rollouts, SQLiteStore, Status

    path, prefix, seed, p_new, p_old, limit, cap, pause, out = sys.argv[1:]
    store = SQLiteStore(path, refresh_interval=0.05, timeout=5)
    rollouts = Rollouts(
        {"rollouts": {"co": {"stages": [{"name": "half", "percent": 50}],
                             "health": {"min_events": 3}}}},
        store=store,
    )
    running = lambda: rollouts["co"].state.status is Status.RUNNING
    Path(out + ".ready").touch()
    deadline = time.monotonic() + 30
    while not Path(out).parent.joinpath("go").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    rng = random.Random(int(seed))
    errors = {"t": 0, "c": 0}
    units = {"t": 0, "c": 0}
    for i in range(int(limit)):
        if errors["t"] >= int(cap) or not running():
            break
        unit = f"{prefix}-{i}"
        arm = "t" if rollouts.enabled("co", unit) else "c"
        error = rng.random() < float(p_new if arm == "t" else p_old)
        rollouts.report("co", unit, error=error, latency_s=0.01)
        units[arm] += 1
        errors[arm] += error
        time.sleep(float(pause))
    rollouts.tick()  # flush what is queued
    deadline = time.monotonic() + 15
    while errors["t"] >= int(cap) and running() and time.monotonic() < deadline:
        time.sleep(0.01)  # wait for the fleet's verdict: the others' evidence
    Path(out).write_text(json.dumps({"errors": errors, "units": units}))
    store.close()
    """
)


def run_children(
    tmp_path: Path, *, p_new: float, p_old: float, limit: int, cap: int, pause: float
) -> list[dict[str, Any]]:
    """Start three processes reporting outcomes of their own units; return what each saw.

    Each pauses ``pause`` seconds between outcomes, and stops at ``limit`` outcomes, at ``cap``
    errors on the new path (then waits for the rollout to stop running), or when it sees the
    rollout stop running.
    """
    path = tmp_path / "state.db"
    outs = [tmp_path / f"child-{i}.json" for i in range(3)]
    options = [str(p_new), str(p_old), str(limit), str(cap), str(pause)]
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                POOLED_CHILD,
                str(path),
                f"p{i}",
                str(1000 + i),
                *options,
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i, out in enumerate(outs)
    ]
    try:
        ready = [Path(f"{out}.ready") for out in outs]
        assert wait_for(lambda: all(r.exists() for r in ready), timeout=60), "children not ready"
        (tmp_path / "go").touch()
        for child in children:
            _, err = child.communicate(timeout=120)
            assert child.returncode == 0, err.decode()
    finally:
        for child in children:
            child.kill()
            child.wait()
    return [json.loads(out.read_text()) for out in outs]


def counted(counts: dict[str, int], prefix: str) -> int:
    """The events of ``prefix`` (``errors.t``, ...) in a visit's counters, at every share and
    block (named ``errors.t@0.5#3``)."""
    return sum(n for name, n in counts.items() if name.startswith(prefix + "@"))


class TestPooledEvidence:
    def test_processes_pool_their_errors_into_one_freeze(self, tmp_path: Path) -> None:
        """Errors seen by three processes freeze the rollout on evidence none had alone."""
        # A freeze needs 8 errors on the new path (E = 33 after 8, 19.9 after 7, with none on
        # the old, counted one by one; fewer flushes only lower it): more than any one child
        # reports (6 at most), so the evidence that froze it was pooled.
        seen = run_children(tmp_path, p_new=0.5, p_old=0.02, limit=3000, cap=6, pause=0.002)
        store = SQLiteStore(tmp_path / "state.db", refresh_interval=60)
        try:
            found = store.load("co")
            assert found is not None
            assert found.status in (Status.FROZEN, Status.ROLLED_BACK)
            history = store.history("co")
            automatic = [t for t in history if t.actor == "stagedroll" and t.action != "start"]
            assert len(automatic) >= 1
            step = automatic[-1]  # the first automatic step
            assert step.action in (Action.FREEZE, Action.ROLLBACK)
            assert step.from_status is Status.RUNNING
            pooled = step.evidence["error_events_treatment"]
            assert isinstance(pooled, int)
            assert pooled >= 3
            own = [child["errors"]["t"] for child in seen]
            assert max(own) <= 6
            assert pooled > max(own), (pooled, own)
            # The fleet's counters hold the children's first errors (each unit once); a
            # rollback may drop a child's last queue (that stage visit is over).
            counts = store.read_counts("co", "1.0")  # epoch 1 (the start), stage 0
            assert pooled <= counted(counts, "errors.t") <= sum(own)
        finally:
            store.close()

    def test_a_healthy_fleet_does_not_freeze(self, tmp_path: Path) -> None:
        """The same error rate on both paths, a few thousand outcomes: no automatic step."""
        seen = run_children(tmp_path, p_new=0.05, p_old=0.05, limit=1500, cap=1500, pause=0)
        store = SQLiteStore(tmp_path / "state.db", refresh_interval=60)
        try:
            found = store.load("co")
            assert found is not None
            assert found.status is Status.RUNNING
            assert [t.action for t in store.history("co")] == [Action.START]
            counts = store.read_counts("co", "1.0")  # epoch 1 (the start), stage 0
            assert counted(counts, "errors.t") == sum(child["errors"]["t"] for child in seen)
            assert counted(counts, "errors.c") == sum(child["errors"]["c"] for child in seen)
            assert sum(child["units"]["t"] + child["units"]["c"] for child in seen) == 4500
            # Every counter is at the policy's share; each child's units were new to it.
            assert all("@0.5" in name for name in counts)
            assert counts["units.t@0.5"] == sum(child["units"]["t"] for child in seen)
            assert counts["units.c@0.5"] == sum(child["units"]["c"] for child in seen)
        finally:
            store.close()


class TestBadAndLostStates:
    def test_an_unreadable_state_does_not_stop_the_others(
        self, path: Path, pair: tuple[SQLiteStore, SQLiteStore]
    ) -> None:
        """A state written by a later stagedroll that this one cannot read is skipped, counted."""
        a, b = pair
        heard: list[str] = []
        b.watch(lambda name, new: heard.append(name))
        for name in ("bad", "good"):
            assert b.load(name) is None
            assert a.compare_and_set(name, 0, state(1), entry(1))
        assert b.refresh()
        heard.clear()
        with sqlite3.connect(path) as db:  # a status this version does not know
            db.execute("""UPDATE rollouts SET version = 2, state = json_set(state, '$.status',
                          'paused', '$.version', 2) WHERE name = 'bad'""")
        assert a.compare_and_set("good", 1, state(2), entry(2))
        assert b.refresh()
        assert heard == ["good"]
        assert b.failures.count("store.decode_failed") == 1
        with pytest.raises(ValueError, match="paused"):
            b.load("bad")

    def test_a_malformed_ladder_is_no_unreadable_state(
        self, path: Path, pair: tuple[SQLiteStore, SQLiteStore]
    ) -> None:
        """A state whose stage ladder is malformed or oversized is followed, its ladder read
        as (): the ladder is informational, and must not send the rollout to the old path."""
        a, b = pair
        heard: list[RolloutState] = []
        b.watch(lambda name, new: heard.append(new))
        assert b.load("r") is None
        ladder = (("canary", 1.0), ("all", 100.0))
        first = RolloutState(0, Status.RUNNING, 1.0, 1, stages=ladder)
        assert a.compare_and_set("r", 0, first, entry(1))
        assert b.refresh()
        assert heard == [first]
        huge = json.dumps([["s", 1.0]] * 5000)
        with sqlite3.connect(path) as db:  # written behind the store's back, at the next version
            db.execute(
                "UPDATE rollouts SET version = 2, state = json_set(state, '$.version', 2, "
                "'$.status', 'frozen', '$.stages', json(?)) WHERE name = 'r'",
                (huge,),
            )
        assert b.refresh()
        assert heard[-1] == RolloutState(0, Status.FROZEN, 1.0, 2)
        assert b.failures.count("store.decode_failed") == 0
        assert b.unreadable == {}

    def test_a_lost_state_is_restored_from_what_the_process_knew(self, path: Path) -> None:
        """A rollout the store lost comes back as this process knew it: a kill survives."""
        policy = plain_policy(10, 50)
        store = SQLiteStore(path, refresh_interval=3600)
        try:
            rollouts = Rollouts(policy, store=store)
            rollouts.advance("checkout", actor="alice")
            rollouts.kill("checkout", reason="incident", actor="alice")
            with sqlite3.connect(path) as db:  # the store loses it
                db.execute("DELETE FROM rollouts")
                db.execute("DELETE FROM history")
            with structlog.testing.capture_logs() as logs:
                assert store.refresh()
            restored = store.load("checkout")
            assert restored == rollouts["checkout"].state  # written back as it was
            assert (restored.stage, restored.status, restored.version) == (1, Status.KILLED, 3)
            [entry] = store.history("checkout")
            assert (entry.action, entry.version) == (Action.START, 3)
            assert entry.reason.startswith("restored")
            assert store.failures.count("store.state_lost") == 1
            assert "store.state_lost" in {log["event"] for log in logs}
            assert not any(rollouts.enabled("checkout", f"u{i}") for i in range(200))
            other = Rollouts(policy, store=SQLiteStore(path, refresh_interval=3600))
            assert other["checkout"].state.status is Status.KILLED
            other.store.close()
        finally:
            store.close()

    def test_the_newest_known_state_wins_the_restore(self, path: Path) -> None:
        """Of two processes restoring, the one that knew the newer state wins, in any order."""
        policy = plain_policy(10, 50)
        stale_store = SQLiteStore(path, refresh_interval=3600)
        fresh_store = SQLiteStore(path, refresh_interval=3600)
        try:
            stale = Rollouts(policy, store=stale_store)
            fresh = Rollouts(policy, store=fresh_store)
            fresh.kill("checkout", reason="incident", actor="alice")  # stale has not refreshed
            with sqlite3.connect(path) as db:
                db.execute("DELETE FROM rollouts")
            assert stale_store.refresh()  # restores version 1, running: all it knew
            assert fresh_store.refresh()  # restores version 2, killed: newer, so it wins
            assert stale_store.refresh()
            for rollouts in (stale, fresh):
                assert rollouts["checkout"].state.status is Status.KILLED
        finally:
            stale_store.close()
            fresh_store.close()

    def test_a_fresh_start_in_the_empty_store_gives_way(self, path: Path) -> None:
        """A process that starts while the store is empty follows the restored state."""
        policy = plain_policy(10, 50)
        store = SQLiteStore(path, refresh_interval=3600)
        try:
            rollouts = Rollouts(policy, store=store)
            rollouts.advance("checkout", actor="alice")
            rollouts.kill("checkout", reason="incident", actor="alice")
            with sqlite3.connect(path) as db:  # every row lost, the store's marker too
                for table in ("rollouts", "history", "meta"):
                    db.execute(f"DELETE FROM {table}")
            newcomer_store = SQLiteStore(path, refresh_interval=3600)
            newcomer = Rollouts(policy, store=newcomer_store)  # starts it anew: version 1
            assert newcomer["checkout"].state.version == 1
            assert newcomer_store.failures.count("store.state_lost") == 0  # nothing to tell
            assert store.refresh()  # the store is behind what this process knew: restored
            assert newcomer_store.refresh()
            restored = newcomer["checkout"].state
            assert restored == rollouts["checkout"].state
            assert restored.status is Status.KILLED
            newcomer_store.close()
        finally:
            store.close()

    def test_a_history_that_went_further_is_followed_not_restored_over(self, path: Path) -> None:
        """After a loss, an operator's kill in the history begun anew is not undone by a
        process that knew the old history further along."""
        policy = plain_policy(10, 25, 50, 100)
        away_store = SQLiteStore(path, refresh_interval=3600)
        try:
            away = Rollouts(policy, store=away_store)
            for _ in range(3):
                away.advance("checkout", actor="alice")  # version 4, stage 3
            with sqlite3.connect(path) as db:  # every trace lost: a history begun anew
                for table in ("rollouts", "history", "meta"):
                    db.execute(f"DELETE FROM {table}")
            oncall_store = SQLiteStore(path, refresh_interval=3600)
            oncall = Rollouts(policy, store=oncall_store)  # begins anew: version 1
            oncall.kill("checkout", reason="incident", actor="oncall")  # version 2
            assert away_store.refresh()
            assert away["checkout"].state.status is Status.KILLED
            assert away_store.failures.count("store.state_lost") == 0
            assert oncall_store.refresh()
            assert oncall["checkout"].state.status is Status.KILLED
            oncall_store.close()
        finally:
            away_store.close()

    def test_a_read_on_the_callers_thread_follows_a_history_begun_anew(self, path: Path) -> None:
        """status() and tick() after a loss follow the new history's kill; tick's automatic
        step does not write over it."""
        policy = {"rollouts": {"checkout": {"stages": [{"name": n, "percent": p} for n, p in
                                                       (("a", 10), ("b", 50), ("c", 100))],
                                            "advance": "auto", "health": {}}}}  # fmt: skip
        store = SQLiteStore(path, refresh_interval=3600)
        try:
            rollouts = Rollouts(policy, store=store)
            rollouts.advance("checkout", actor="alice")  # version 2, stage 1
            with sqlite3.connect(path) as db:  # every trace lost: a history begun anew
                for table in ("rollouts", "history", "meta"):
                    db.execute(f"DELETE FROM {table}")
            oncall_store = SQLiteStore(path, refresh_interval=3600)
            Rollouts(policy, store=oncall_store).kill("checkout", actor="oncall")  # version 2
            oncall_store.close()
            assert rollouts.tick() == []
            assert rollouts.status("checkout").status is Status.KILLED
            assert store.refresh()
            assert rollouts["checkout"].state.status is Status.KILLED
            latest = store.history("checkout")[0]
            assert (latest.action, latest.actor) == (Action.KILL, "oncall")
        finally:
            store.close()
