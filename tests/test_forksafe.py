from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import plain_policy
from stagedroll import RedisStore, Rollouts, SQLiteStore, Status

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def in_child(work: str, rollouts: Rollouts) -> dict[str, object]:
    """Fork; in the child run ``work`` (a small program) and send back its JSON result."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, reported through the pipe
        signal.alarm(10)  # a child stuck on a lock must not hang the suite
        try:
            namespace: dict[str, object] = {"rollouts": rollouts}
            exec(work, namespace)
            os.write(write, json.dumps(namespace["result"]).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child died (stuck on a lock?)"
    result: dict[str, object] = json.loads(data)
    return result


@pytest.fixture(name="rollouts")
def _rollouts() -> Iterator[Rollouts]:
    rollouts = Rollouts(plain_policy(100))
    for i in range(10):
        rollouts.report("checkout", f"user-{i}", error=True, latency_s=0.01)
    yield rollouts
    sys.stdout.flush()


class TestAfterFork:
    def test_the_child_counts_its_own_outcomes(self, rollouts: Rollouts) -> None:
        """Outcomes recorded by the parent before the fork are not the child's."""
        result = in_child(
            "rollouts.report('checkout', 'u', error=False, latency_s=0.5)\n"
            "s = rollouts.status('checkout')\n"
            "result = {'calls': s.treatment.calls, 'errors': s.treatment.errors}",
            rollouts,
        )
        assert result == {"calls": 1, "errors": 0}
        assert rollouts.status("checkout").treatment.errors == 10

    @pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
    def test_a_lock_held_at_fork_time_does_not_hang_the_child(self, rollouts: Rollouts) -> None:
        """A lock that a thread of the parent held when forking is renewed in the child."""
        outcomes = rollouts["checkout"].outcomes
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            with outcomes.lock, rollouts.failures._lock:
                held.set()
                release.wait(5)

        holder = threading.Thread(target=hold)
        holder.start()
        held.wait(5)
        try:
            result = in_child(
                "rollouts.report('checkout', 'u', error=True)\n"
                "rollouts.freeze('checkout')\n"
                "result = {'errors': rollouts.status('checkout').treatment.errors}",
                rollouts,
            )
        finally:
            release.set()
            holder.join()
        assert result == {"errors": 1}


# -- Rollouts on a store shared by processes, used across a fork -------------------------------

FORK_WARNING = "ignore:This process .* is multi-threaded:DeprecationWarning"
"""Python 3.12+ warns about forking a process with threads (the stores' refresh threads)."""

UNITS = [f"user-{i}" for i in range(1000)]


def shared_policy() -> dict[str, Any]:
    """Stages at 10, 50 and 100 %, no health gate: the rollout moves only when told."""
    policy = plain_policy(10, 50, 100, name="co")
    policy["rollouts"]["co"]["health"] = {"enabled": False}
    return policy


def wait_for(condition: Callable[[], bool], timeout: float = 8.0) -> bool:
    """Whether ``condition()`` becomes true within ``timeout`` seconds (a generous deadline)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def follow_freeze_then_move_on(rollouts: Rollouts) -> dict[str, object]:
    """In a child: wait for the parent's freeze, with no call on ``rollouts``; then move it on."""
    if not wait_for(lambda: rollouts["co"].state.status is Status.FROZEN):
        return {"error": f"the freeze was not seen: {rollouts['co'].state}"}
    seen = rollouts["co"].state
    rollouts.unfreeze("co", reason="child", actor="child")
    rollouts.advance("co", reason="child", actor="child")
    return {"frozen_by": seen.actor, "version": rollouts["co"].state.version}


_POOL: dict[str, Rollouts] = {}
"""The Rollouts that the pool's workers inherit by fork."""


def _pool_decide(units: list[str]) -> list[bool]:
    rollouts = _POOL["rollouts"]
    return [rollouts.enabled("co", unit) for unit in units]


def _pool_follow(_: object) -> dict[str, object]:
    return follow_freeze_then_move_on(_POOL["rollouts"])


@pytest.fixture(name="shared_store", params=["sqlite", "redis"])
def _shared_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[SQLiteStore | RedisStore]:
    """A store shared by processes, refreshing every 50 ms."""
    store: SQLiteStore | RedisStore
    if request.param == "sqlite":
        store = SQLiteStore(tmp_path / "state.db", refresh_interval=0.05)
    else:
        url = request.getfixturevalue("redis_url")
        store = RedisStore(url, prefix=request.getfixturevalue("redis_prefix"),
                           refresh_interval=0.05)  # fmt: skip
    yield store
    store.close()
    sys.stdout.flush()


@pytest.mark.filterwarnings(FORK_WARNING)
class TestForkWithSharedStores:
    def test_a_forked_child_follows_and_writes_the_shared_state(
        self, shared_store: SQLiteStore | RedisStore
    ) -> None:
        """A Rollouts built before fork decides in the child, sees the parent's freeze through
        its own refresh thread, and writes through its own connection, which the parent sees."""
        rollouts = Rollouts(shared_policy(), store=shared_store)
        rollouts.advance("co", actor="parent")
        answers = [rollouts.enabled("co", unit) for unit in UNITS]
        read, write = os.pipe()
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, reported through the pipe
            signal.alarm(20)  # a child stuck on a lock must not hang the suite
            try:
                os.close(read)
                decided = [rollouts.enabled("co", unit) for unit in UNITS]
                os.write(write, (json.dumps({"answers": decided}) + "\n").encode())
                result = follow_freeze_then_move_on(rollouts)
            except BaseException as exc:
                result = {"error": repr(exc)}
            finally:
                os.write(write, (json.dumps(result) + "\n").encode())
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            first = json.loads(pipe.readline() or "{}")
            assert first.get("answers") == answers, first
            rollouts.freeze("co", reason="parent", actor="parent")
            done = json.loads(pipe.readline() or "{}")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the child died (stuck on a lock?)"
        assert done == {"frozen_by": "parent", "version": 5}
        # No call on the parent's Rollouts: its refresh thread reads the child's writes.
        assert wait_for(lambda: rollouts["co"].state.version == 5), rollouts["co"].state
        state = rollouts["co"].state
        assert (state.stage, state.status, state.actor) == (2, Status.RUNNING, "child")
        assert [t.actor for t in rollouts.history("co")] == [
            "child",
            "child",
            "parent",
            "parent",
            "stagedroll",
        ]

    def test_fork_pool_workers(self, shared_store: SQLiteStore | RedisStore) -> None:
        """multiprocessing's fork workers inherit a working Rollouts: they decide, follow the
        parent's freeze, and write transitions the parent sees."""
        rollouts = Rollouts(shared_policy(), store=shared_store)
        rollouts.advance("co", actor="parent")
        answers = [rollouts.enabled("co", unit) for unit in UNITS]
        _POOL["rollouts"] = rollouts
        context = multiprocessing.get_context("fork")
        sys.stdout.flush()
        try:
            with context.Pool(2) as pool:
                halves = pool.map(_pool_decide, [UNITS[:500], UNITS[500:]], chunksize=1)
                assert halves[0] + halves[1] == answers
                rollouts.freeze("co", reason="parent", actor="parent")
                done = pool.apply_async(_pool_follow, (None,)).get(timeout=30)
        finally:
            _POOL.clear()
        assert done == {"frozen_by": "parent", "version": 5}
        assert wait_for(lambda: rollouts["co"].state.version == 5), rollouts["co"].state
        assert rollouts["co"].state.actor == "child"
