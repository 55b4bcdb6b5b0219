"""Tests of the evidence exchange with a store shared by processes, built without ``Rollouts``:
a store, a failure counter, a gate with its queue, and a lock are all it takes."""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence

from stagedroll import Health as HealthPolicy
from stagedroll import MemoryStore, RecentError, RolloutState, Status
from stagedroll._errors import Errors
from stagedroll._exchange import exchange, share_errors
from stagedroll._failures import Failures
from stagedroll._health import Health
from stagedroll._pool import Outbox

STATE = RolloutState(0, Status.RUNNING, 0.0, version=1, epoch=1, history="h1")


class DownStore(MemoryStore):
    """A real MemoryStore whose evidence calls fail while ``down`` is set."""

    down = False

    def read_counts(self, rollout: str, segment: str) -> dict[str, int]:
        if self.down:
            raise ConnectionError("down")
        return super().read_counts(rollout, segment)

    def add_units(self, rollout: str, scope: str, units: Collection[str]) -> list[bool]:
        if self.down:
            raise ConnectionError("down")
        return super().add_units(rollout, scope, units)


def gate(share: float = 0.05) -> Health:
    """A gate whose events are queued for the store (a process of a fleet)."""
    health = Health(HealthPolicy(min_events=1))
    health.outbox = Outbox()
    health.outbox.visit(STATE.epoch, STATE.stage)
    health.set_share(share)
    return health


class TestExchange:
    def test_two_processes_judge_on_the_pooled_counts(self) -> None:
        """Each process's first errors land in the store once, and both gates read the sum."""
        store, failures, lock = MemoryStore(), Failures(), threading.Lock()
        web, worker = gate(), gate()
        for health, unit in ((web, "u1"), (worker, "u2"), (worker, "u1")):
            assert health.outbox is not None
            health.outbox.event("errors", True, unit, 0.05)
        exchange(store, failures, rollout="r", state=STATE, health=web, lock=lock)
        exchange(store, failures, rollout="r", state=STATE, health=worker, lock=lock)
        exchange(
            store, failures, rollout="r", state=STATE, health=web, lock=lock
        )  # takes the worker's events too
        assert web.errors.events_treatment == worker.errors.events_treatment == 2
        assert failures.counts() == {}

    def test_a_store_that_is_down_keeps_the_events_for_later(self) -> None:
        """A failed flush is counted, and its events wait in the queue for the next one."""
        store, failures, lock = DownStore(), Failures(), threading.Lock()
        health = gate()
        assert health.outbox is not None
        health.outbox.event("errors", True, "u1", 0.05)
        store.down = True
        exchange(store, failures, rollout="r", state=STATE, health=health, lock=lock)
        assert failures.count("store.flush_failed") == 1
        assert health.errors.events_treatment == 0
        store.down = False
        exchange(store, failures, rollout="r", state=STATE, health=health, lock=lock)
        assert health.errors.events_treatment == 1

    def test_nothing_is_sent_without_a_state(self) -> None:
        """An unknown state (version 0) has no history to key the units by: nothing is sent."""
        store, failures, lock = MemoryStore(), Failures(), threading.Lock()
        health = gate()
        assert health.outbox is not None
        health.outbox.event("errors", True, "u1", 0.05)
        unknown = RolloutState(-1, Status.RUNNING, 0.0, 0)
        exchange(store, failures, rollout="r", state=unknown, health=health, lock=lock)
        assert store.read_counts("r", "1.0") == {}
        exchange(store, failures, rollout="r", state=STATE, health=health, lock=lock)
        assert health.errors.events_treatment == 1


class ErrorsDownStore(MemoryStore):
    """A real MemoryStore whose error writes fail while ``down`` is set."""

    down = False

    def add_errors(self, rollout: str, errors: Sequence[RecentError]) -> None:
        if self.down:
            raise ConnectionError("down")
        super().add_errors(rollout, errors)


class TestShareErrors:
    def test_errors_reach_the_store_once_and_survive_a_failed_write(self) -> None:
        """A failed write is counted and queued again; the next one adds everything, once."""
        store, failures = ErrorsDownStore(), Failures()
        errors = Errors("r", lambda: 5.0, lambda: 0.0)
        errors.note("treatment", IndexError("tier"))
        store.down = True
        share_errors(store, failures, rollout="r", errors=errors)
        assert failures.count("store.errors_failed") == 1
        assert store.read_errors("r") == []
        errors.note("treatment", IndexError("tier"))
        store.down = False
        share_errors(store, failures, rollout="r", errors=errors)
        share_errors(store, failures, rollout="r", errors=errors)  # nothing new: no write
        assert store.read_errors("r") == [
            RecentError("treatment", "IndexError", "tier", 5.0, 5.0, 2)
        ]
