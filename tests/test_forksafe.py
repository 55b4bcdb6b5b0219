from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Iterator

import pytest

from conftest import plain_policy
from stagedroll import Rollouts

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
