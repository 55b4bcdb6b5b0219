"""The batched evidence exchange (``stores._batch``): each batching store answers as the
store's own operations do (``_pool.apply``), flush for flush, and stores the same."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from psycopg import sql

from conftest import wait_until
from servers import RedisServer
from stagedroll import Action, RecentError, RolloutState, Status, Transition
from stagedroll._errors import Errors
from stagedroll._exchange import Member, exchange
from stagedroll._failures import Failures
from stagedroll._pool import apply
from stagedroll.stores import PostgresStore, RedisStore, Store
from stagedroll.stores._batch import BatchStore, Flush, Flushed, Unsure
from stagedroll.stores._codec import dump_error
from stagedroll.stores._digest import digest, rollout_key, token
from stagedroll.stores._redis import _error_field
from test_exchange import STATE, gate


def digests(rollout: str, units: list[str]) -> list[str]:
    key = rollout_key(rollout, "h1")
    return [digest(key, token(unit)) for unit in units]


def error(
    arm: str, kind: str, message: str, seen: tuple[float, float], count: int = 1
) -> RecentError:
    return RecentError(arm, kind, message, *seen, count)


def flushes(seed: int) -> list[Flush]:
    """Flushes of a few rollouts: repeated units, two kinds, earlier visits, errors."""
    rng = random.Random(seed)
    made = []
    for rollout in ("checkout", "search", "cache"):
        units = [f"user-{rng.randrange(40)}" for _ in range(rng.randrange(0, 30))]
        half = len(units) // 2
        events = [
            ("3/errors", [("errors.c@0.05#0", digests(rollout, units[:half])),
                          ("errors.t@0.05#0", digests(rollout, units[half:]))]),
            ("3/slow", [("slow.t@0.05#1", digests(rollout, units[: half // 2] * 2))]),
        ]  # fmt: skip
        distinct = [("3.1@0.05/t", digests(rollout, units[half:])),
                    ("3.1@0.05/c", digests(rollout, units[:half]))]  # fmt: skip
        errors = [error("treatment", "KeyError", f"'k{rng.randrange(3)}'",
                        (1_765_000_000.123456 + i, 1_765_000_100.654321 + i), rng.randrange(1, 5))
                  for i in range(rng.randrange(0, 4))]  # fmt: skip
        counts = {"errors.t@0.05#0": rng.randrange(3), "units.t@0.05": len(units) - half}
        made.append(Flush(rollout, "3.1", {k: v for k, v in counts.items() if v}, events,
                          distinct, ["3.0"], errors))  # fmt: skip
    made.append(
        Flush("errors-only", None, errors=[error("control", "OSError", "disk", (1.5, 2.5))])
    )
    return made


def answered(store: Store, batch: list[Flush]) -> list[Flushed]:
    if isinstance(store, BatchStore):
        answers = store.flush_many(batch)
    else:
        answers = [apply(store, flush)[0] for flush in batch]
    assert not [a for a in answers if isinstance(a, Exception)], answers
    return [a for a in answers if isinstance(a, Flushed)]


def stored(store: Store, batch: list[Flush]) -> dict[str, Any]:
    return {f.rollout: (store.read_errors(f.rollout),
                        store.read_counts(f.rollout, f.segment) if f.segment else None)
            for f in batch}  # fmt: skip


@pytest.fixture(name="stores")
def _stores(request: pytest.FixtureRequest) -> Iterator[tuple[Store, Store]]:
    """A batching store and a twin of it, empty, that is sent each flush apart."""
    kind = request.param
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")
        batching: Any = RedisStore(url, prefix=prefix + ":a", push=False)
        apart: Any = RedisStore(url, prefix=prefix + ":b", push=False)
    else:
        url = request.getfixturevalue("postgres_url")
        schema = request.getfixturevalue("postgres_schema")
        batching = PostgresStore(url, schema=schema, push=False)
        apart = PostgresStore(url, schema=schema + "_b", push=False)
    apart.__class__ = type("Apart", (type(apart),), {"flush_many": None})  # no BatchStore
    try:
        yield batching, apart
    finally:
        batching.close()
        apart.close()
        if kind == "postgres":
            from servers import drop_schema

            drop_schema(url, schema + "_b")


BATCHING = pytest.mark.parametrize("stores", ["redis", "postgres"], indirect=True)


@BATCHING
def test_a_batch_answers_and_stores_as_the_store_operations_do(stores: tuple[Store, Store]) -> None:
    batching, apart = stores
    for seed in range(4):  # later batches meet the units, counters and errors of earlier ones
        batch = flushes(seed)
        assert answered(batching, batch) == answered(apart, batch)
        assert stored(batching, batch) == stored(apart, batch)


@BATCHING
def test_a_batch_tells_the_refresh_the_stores_marker(stores: tuple[Store, Store]) -> None:
    batching: Any = stores[0]
    batching.flush_many(flushes(0))
    noted = batching._noted
    assert noted is not None
    assert noted[0] == batching._generation()


@BATCHING
def test_an_empty_batch_sends_nothing(stores: tuple[Store, Store]) -> None:
    batching: Any = stores[0]
    assert batching.flush_many([]) == []


def counting(store: Any) -> Any:
    """``store``, counting its reads of the marker of change (``steps``: "read" at each)."""

    class Counting(type(store)):  # type: ignore[misc]
        reads = 0
        steps: list[str] | None = None

        def _generation(self) -> object:
            self.reads += 1
            if self.steps is not None:
                self.steps.append("read")
            return super()._generation()

    store.__class__ = Counting
    return store


@pytest.fixture(name="shared")
def _shared(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A batching store whose refresh thread waits an hour (the test runs the cycles)."""
    if request.param == "redis":
        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        store: Any = RedisStore(url, prefix=prefix, push=False, refresh_interval=3600)
    else:
        url = request.getfixturevalue("postgres_url")
        schema = request.getfixturevalue("postgres_schema")
        store = PostgresStore(url, schema=schema, push=False, refresh_interval=3600)
    counting(store)
    try:
        yield store
    finally:
        store.close()


def started(store: Store, name: str = "checkout") -> RolloutState:
    state = RolloutState(0, Status.RUNNING, 1.0, version=1, epoch=1, history="h1")
    transition = Transition(name, Action.START, 0, 0, None, Status.RUNNING, 1, 1.0, "", "t")
    assert store.compare_and_set(name, 0, state, transition)
    return state


SHARED = pytest.mark.parametrize("shared", ["redis", "postgres"], indirect=True)


class TestMarkerOfTheExchange:
    """A refresh whose cycle began with a batched exchange takes the marker it read."""

    @SHARED
    def test_a_cycle_with_an_exchange_reads_no_marker_of_its_own(self, shared: Any) -> None:
        started(shared)
        shared.before_refresh(lambda: shared.flush_many(flushes(0)))
        shared.reads = 0
        assert shared._cycle()
        assert shared.reads == 0
        shared._cycle()
        assert shared.reads == 0

    @SHARED
    def test_the_marker_an_exchange_read_shows_a_change(
        self, shared: Any, request: pytest.FixtureRequest
    ) -> None:
        """Another process's write between two cycles: the marker the exchange read moved,
        the state is read and told (no change is lost for want of a read of its own)."""
        seen: list[int] = []
        state = started(shared)
        shared.watch(lambda _name, new: seen.append(new.version))
        shared.before_refresh(lambda: shared.flush_many(flushes(0)))
        shared._cycle()
        if isinstance(shared, RedisStore):
            other: Any = RedisStore(shared.url, prefix=shared.prefix, push=False)
        else:
            other = PostgresStore(shared.url, schema=shared.schema, push=False)
        try:
            frozen = replace(state, status=Status.FROZEN, version=2)
            entry = Transition("checkout", Action.FREEZE, 0, 0, Status.RUNNING, Status.FROZEN,
                               2, 2.0, "", "t")  # fmt: skip
            assert other.compare_and_set("checkout", 1, frozen, entry)
        finally:
            other.close()
        shared.reads = 0
        shared._cycle()
        assert seen[-1] == 2
        assert shared.reads == 0

    @SHARED
    def test_a_marker_noted_before_the_cycle_is_not_taken(self, shared: Any) -> None:
        """Noted by a caller's ``status()`` before the cycle began: too old, read again."""
        started(shared)
        shared.flush_many(flushes(0))
        shared.reads = 0
        shared._cycle()
        assert shared.reads == 1

    @SHARED
    def test_a_cycle_woken_by_a_change_reads_before_it_exchanges(self, shared: Any) -> None:
        """A kill pushed (or a ``wake()``) is read at once: the exchange waits until after."""
        steps: list[str] = []
        started(shared)  # the thread runs, and waits an hour
        shared.before_refresh(lambda: steps.append("exchange"))
        shared.on_refresh(lambda: steps.append("steps"))
        shared.steps = steps
        shared.wake()
        wait_until(lambda: "steps" in steps, "a woken cycle")
        assert steps == ["read", "exchange", "steps"]
        steps.clear()
        shared._cycle()  # a cycle of the clock: the exchange first
        assert steps == ["exchange", "read", "steps"]


def noted(rollout: str, *messages: str) -> Errors:
    """The recent errors of ``rollout``: one treatment ``ValueError`` per message."""
    errors = Errors(rollout, lambda: 1_765_000_000.0, time.monotonic)
    for message in messages:
        errors.note("treatment", ValueError(message))
    return errors


def first_error(rollout: str, unit: str) -> Flush:
    """A flush of one first error of ``unit`` on the new path (visit 1.0, share 5 %)."""
    unit_digest = digest(rollout_key(rollout, "h1"), token(unit))
    return Flush(rollout, "1.0", {}, [("1/errors", [("errors.t@0.05#0", [unit_digest])])],
                 [("1.0@0.05/t", [unit_digest]), ("1.0@0.05/c", [])])  # fmt: skip


# -- what review found: an exchange under attack or outage ---------------------------------------


def test_postgres_errors_of_a_cancelled_exchange_are_not_merged_twice(
    postgres_url: str, postgres_schema: str
) -> None:
    """An exchange cancelled once some flushes were committed (PostgreSQL's statement_timeout,
    while the last flush waits on a row lock): its recent errors may have landed, so they are
    not given back (merged twice, their counts would double)."""
    store = PostgresStore(postgres_url, schema=postgres_schema, push=False, timeout=1.0)
    holder = psycopg.connect(postgres_url, autocommit=False)
    try:
        assert store.read_errors("a") == []  # the schema is made
        failures = Failures()
        first = [Member(name, STATE, None, threading.Lock(), noted(name, "boom", "boom", "boom"))
                 for name in ("a", "b", "c", "d")]  # fmt: skip
        last = Member("z", STATE, None, threading.Lock(), noted("z", "boom"))
        # Another writer holds the row that z's merge takes first (its touched row), for
        # longer than the store's timeout: the statement is cancelled while z waits,
        # after a, b, c and d were committed.
        holder.execute(
            sql.SQL(
                "INSERT INTO {}.touched (rollout, key, at) VALUES ('z', 'errors', 0) "
                "ON CONFLICT (rollout, key) DO UPDATE SET at = 0"
            ).format(sql.Identifier(postgres_schema))
        )
        exchange(store, failures, [*first, last])
        assert failures.count("store.errors_failed") == 5  # the call failed as a whole
        holder.rollback()
        exchange(store, failures, [*first, last])  # what was given back goes again
        assert [e.count for e in store.read_errors("a")] == [3]  # noted three times
    finally:
        holder.close()
        store.close()


def test_redis_a_counter_past_its_range_is_refused_and_its_event_counts_later(
    redis_url: str, redis_prefix: str
) -> None:
    """A counter near the top of its range (written behind the store's back) is refused before
    the flush writes anything: once repaired, the flush sent again counts its event."""
    store = RedisStore(redis_url, prefix=redis_prefix, push=False)
    try:
        counters = f"{redis_prefix}:{{co}}:counts:1.0"
        store.client.hset(counters, "errors.t@0.05#0", str(2**63 - 1))
        (answer,) = store.flush_many([first_error("co", "u1")])
        assert isinstance(answer, Exception)
        refused = not isinstance(answer, Unsure)
        store.client.hset(counters, "errors.t@0.05#0", "0")  # repaired by the operator
        (again,) = store.flush_many([first_error("co", "u1")])  # sent again, as documented
        assert isinstance(again, Flushed)
        assert (refused, again.added) == (True, {"errors.t@0.05#0": 1})
    finally:
        store.close()


OUTAGE_ROLLOUTS = 1500
"""Rollouts of one process that all see errors (a shared dependency is down)."""
MESSAGE = ("Verbindung zum Bestelldienst fehlgeschlagen: Zeitüberschreitung beim Lesen der "
           "Antwort; später erneut versuchen. ") * 3  # fmt: skip


def test_redis_an_outage_across_many_rollouts_does_not_fail_the_exchange(
    redis_server: RedisServer,
) -> None:
    """An outage that gives 1,500 rollouts recent errors: their merges are weighed, so no round
    trip outlasts the store's timeout, and the gate still takes the fleet's totals."""
    store = RedisStore(redis_server.url, prefix="fleet", push=False)  # the default timeout
    try:
        names = [f"r{i:04d}" for i in range(OUTAGE_ROLLOUTS)]
        pipe = store.client.pipeline(transaction=False)
        for name in names:  # the 20 errors each rollout keeps, as earlier exchanges left them
            kept = [RecentError("treatment", "ConnectionError", MESSAGE[:199] + chr(97 + j),
                                1_765_000_000.0 + j, 1_765_000_100.0 + j, 3)
                    for j in range(20)]  # fmt: skip
            pipe.hset(f"fleet:{{{name}}}:errors",
                      mapping={_error_field(e): dump_error(e) for e in kept})  # fmt: skip
        pipe.execute()
        failures = Failures()
        members = [Member(name, STATE, None, threading.Lock(), noted(name, MESSAGE[:120]))
                   for name in names]  # fmt: skip
        health = gate()
        assert health.outbox is not None
        health.outbox.event("errors", True, "u1", 0.05)
        health.outbox.unit(True, "u1", 0.05)
        members.append(Member("gated", STATE, health, threading.Lock(), None))
        exchange(store, failures, members)
        assert failures.counts() == {}
        assert health.errors.events_treatment == 1  # the gate took the fleet's totals
    finally:
        store.close()


def test_redis_refresh_sees_a_change_made_after_a_callers_exchange(
    redis_url: str, redis_prefix: str
) -> None:
    """A marker a caller's exchange noted (``status()``) is never taken by a refresh: a freeze
    made after that exchange is read."""
    store = RedisStore(redis_url, prefix=redis_prefix, push=False, refresh_interval=3600)
    other = RedisStore(redis_url, prefix=redis_prefix, push=False)
    try:
        state = RolloutState(0, Status.RUNNING, 1.0, version=1, epoch=1, history="h1")
        start = Transition("co", Action.START, 0, 0, None, Status.RUNNING, 1, 1.0, "", "t")
        assert store.compare_and_set("co", 0, state, start)
        seen: list[int] = []
        store.watch(lambda _name, new: seen.append(new.version))
        cycled = threading.Event()
        store.on_refresh(cycled.set)
        store.wake()  # one cycle of the thread, which then waits an hour
        assert cycled.wait(30)
        assert isinstance(store.flush_many([first_error("co", "u1")])[0], Flushed)  # status()
        frozen = replace(state, status=Status.FROZEN, version=2)
        freeze = Transition("co", Action.FREEZE, 0, 0, Status.RUNNING, Status.FROZEN, 2, 2.0,
                            "", "t")  # fmt: skip
        assert other.compare_and_set("co", 1, frozen, freeze)  # another process
        assert store.refresh()
        assert seen[-1:] == [2]
    finally:
        other.close()
        store.close()
