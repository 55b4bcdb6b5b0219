"""Tests of the evidence exchange with a store shared by processes, built without ``Rollouts``:
a store, a failure counter, a gate with its queue, and a lock are all it takes."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Collection, Sequence
from threading import Lock

from stagedroll import Health as HealthPolicy
from stagedroll import MemoryStore, RecentError, RolloutState, Status
from stagedroll._errors import Errors
from stagedroll._exchange import Member, exchange
from stagedroll._failures import Failures
from stagedroll._health import Health
from stagedroll._pool import Outbox, apply
from stagedroll.stores._batch import Flush, Flushed

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


def send(
    store: MemoryStore, failures: Failures, health: Health, state: RolloutState, lock: Lock
) -> None:
    """One rollout's exchange (as ``tick`` makes it)."""
    exchange(store, failures, [Member("r", state, health, lock, None)])


class TestExchange:
    def test_two_processes_judge_on_the_pooled_counts(self) -> None:
        """Each process's first errors land in the store once, and both gates read the sum."""
        store, failures, lock = MemoryStore(), Failures(), threading.Lock()
        web, worker = gate(), gate()
        for health, unit in ((web, "u1"), (worker, "u2"), (worker, "u1")):
            assert health.outbox is not None
            health.outbox.event("errors", True, unit, 0.05)
        send(store, failures, web, STATE, lock)
        send(store, failures, worker, STATE, lock)
        send(store, failures, web, STATE, lock)  # takes the worker's events too
        assert web.errors.events_treatment == worker.errors.events_treatment == 2
        assert failures.counts() == {}

    def test_a_store_that_is_down_keeps_the_events_for_later(self) -> None:
        """A failed flush is counted, and its events wait in the queue for the next one."""
        store, failures, lock = DownStore(), Failures(), threading.Lock()
        health = gate()
        assert health.outbox is not None
        health.outbox.event("errors", True, "u1", 0.05)
        store.down = True
        send(store, failures, health, STATE, lock)
        assert failures.count("store.flush_failed") == 1
        assert health.errors.events_treatment == 0
        store.down = False
        send(store, failures, health, STATE, lock)
        assert health.errors.events_treatment == 1

    def test_nothing_is_sent_without_a_state(self) -> None:
        """An unknown state (version 0) has no history to key the units by: nothing is sent."""
        store, failures, lock = MemoryStore(), Failures(), threading.Lock()
        health = gate()
        assert health.outbox is not None
        health.outbox.event("errors", True, "u1", 0.05)
        unknown = RolloutState(-1, Status.RUNNING, 0.0, 0)
        send(store, failures, health, unknown, lock)
        assert store.read_counts("r", "1.0") == {}
        send(store, failures, health, STATE, lock)
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
        exchange(store, failures, [Member("r", STATE, None, threading.Lock(), errors)])
        assert failures.count("store.errors_failed") == 1
        assert store.read_errors("r") == []
        errors.note("treatment", IndexError("tier"))
        store.down = False
        exchange(store, failures, [Member("r", STATE, None, threading.Lock(), errors)])
        exchange(
            store, failures, [Member("r", STATE, None, threading.Lock(), errors)]
        )  # nothing new: no write
        assert store.read_errors("r") == [
            RecentError("treatment", "IndexError", "tier", 5.0, 5.0, 2)
        ]


class BatchingStore(MemoryStore):
    """A real MemoryStore that takes every flush of an exchange in one call (``flush_many``),
    applied through its own operations; ``fail`` names rollouts whose flush fails alone,
    ``down`` fails the whole call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.fail: set[str] = set()
        self.down = False

    def flush_many(self, flushes: Sequence[Flush]) -> list[Flushed | Exception]:
        self.calls += 1
        if self.down:
            raise ConnectionError("down")
        return [
            RuntimeError("refused") if f.rollout in self.fail else apply(self, f)[0]
            for f in flushes
        ]


def queued(*units: str) -> Health:
    """A gate with a first error on the new path for each of ``units`` (and each unit seen)."""
    health = gate()
    assert health.outbox is not None
    for unit in units:
        health.outbox.event("errors", True, unit, 0.05)
        health.outbox.unit(True, unit, 0.05)
    return health


def member(name: str, health: Health | None, errors: Errors | None = None) -> Member:
    return Member(name, STATE, health, threading.Lock(), errors)


class TestBatching:
    def test_every_rollout_goes_in_one_call(self) -> None:
        """Three rollouts, one round trip; each gate takes its own fleet totals."""
        store, failures = BatchingStore(), Failures()
        gates = {name: queued(*units) for name, units in
                 (("a", ["u1"]), ("b", ["u1", "u2"]), ("c", []))}  # fmt: skip
        exchange(store, failures, [member(name, g) for name, g in gates.items()])
        assert store.calls == 1
        assert [g.errors.events_treatment for g in gates.values()] == [1, 2, 0]
        assert [store.count_distinct(name, "1.0@0.05/t", []) for name in gates] == [1, 2, 0]
        assert failures.counts() == {}

    def test_nothing_to_send_sends_nothing(self) -> None:
        store, failures = BatchingStore(), Failures()
        exchange(
            store,
            failures,
            [member("a", None), member("b", None, Errors("b", time.time, lambda: 0.0))],
        )
        assert store.calls == 0

    def test_one_refused_flush_fails_alone_and_is_sent_again(self) -> None:
        """The refused rollout's events wait for the next exchange; the others land."""
        store, failures = BatchingStore(), Failures()
        a, b = queued("u1"), queued("u2")
        store.fail = {"b"}
        exchange(store, failures, [member("a", a), member("b", b)])
        assert (a.errors.events_treatment, b.errors.events_treatment) == (1, 0)
        assert failures.count("store.flush_failed") == 1
        store.fail = set()
        exchange(store, failures, [member("a", a), member("b", b)])
        assert (a.errors.events_treatment, b.errors.events_treatment) == (1, 1)

    def test_a_call_that_failed_whole_drops_events_that_may_have_counted(self) -> None:
        """Down mid-call: a flush that added counters is unsure, its events are not sent
        again (they might count twice), its units are; one without counters goes back whole."""
        store, failures = BatchingStore(), Failures()
        counted = gate()
        assert counted.outbox is not None
        counted.outbox.event("errors", True, None, 0.05)  # a call without a unit: a counter
        counted.outbox.unit(True, "u1", 0.05)
        marked = gate()
        assert marked.outbox is not None
        marked.outbox.event("errors", True, "u2", 0.05)  # deduplicated by the store's set
        store.down = True
        exchange(store, failures, [member("a", counted), member("b", marked)])
        assert failures.count("store.flush_failed") == 2
        store.down = False
        exchange(store, failures, [member("a", counted), member("b", marked)])
        assert counted.errors.events_treatment == 0  # dropped, never twice
        assert store.count_distinct("a", "1.0@0.05/t", []) == 1  # units go back (idempotent)
        assert marked.errors.events_treatment == 1

    def test_errors_ride_along_and_go_back_when_they_fail(self) -> None:
        """Recent errors go in the same call; refused with their flush, they wait."""
        store, failures = BatchingStore(), Failures()
        errors = Errors("a", lambda: 5.0, lambda: 0.0)
        errors.note("treatment", IndexError("tier"))
        store.fail = {"a"}
        exchange(store, failures, [member("a", None, errors)])
        assert store.read_errors("a") == []
        assert failures.count("store.errors_failed") == 1
        store.fail = set()
        exchange(store, failures, [member("a", None, errors)])
        assert store.calls == 2
        assert store.read_errors("a") == [RecentError("treatment", "IndexError", "tier", 5.0, 5.0)]

    def test_an_error_no_store_can_keep_does_not_blind_the_evidence(self) -> None:
        """A custom clock's NaN time: that error is dropped and counted, the events land."""
        store, failures = BatchingStore(), Failures()
        errors = Errors("a", lambda: math.nan, lambda: 0.0)
        errors.note("treatment", IndexError("tier"))
        health = queued("u1")
        exchange(store, failures, [member("a", health, errors)])
        assert health.errors.events_treatment == 1
        assert failures.count("store.errors_refused") == 1
        assert store.read_errors("a") == []
