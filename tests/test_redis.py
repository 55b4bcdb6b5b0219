from __future__ import annotations

import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import structlog

from conftest import assert_serving_while_down, staged_policy
from servers import RedisServer, closing_factory, unique_prefix
from stagedroll import (
    Action,
    RecentError,
    Rollouts,
    RolloutState,
    Status,
    StoreError,
    Transition,
)
from stagedroll.stores import RedisStore, store_from_url
from stagedroll.stores._batch import Flush, Flushed, Unsure
from stagedroll.stores._codec import dump_error, dump_state
from stagedroll.stores._digest import digest, member, rollout_key, token

DEADLINE_S = 10.0
"""How long a test waits for the background refresh to do something (generous: noisy CI)."""

StoreFactory = Callable[..., RedisStore]


def state(version: int, stage: int = 0) -> RolloutState:
    return RolloutState(stage=stage, status=Status.RUNNING, since=float(version), version=version)


def entry(version: int, stage: int = 0) -> Transition:
    return Transition("r", Action.ADVANCE, stage, stage, Status.RUNNING, Status.RUNNING, version,
                      float(version))  # fmt: skip


def gated_policy() -> dict[str, Any]:
    """One health-gated rollout at 50 %: automatic freeze on errors, manual advance."""
    stages = [{"name": "half", "percent": 50}]
    return {"rollouts": {"co": {"stages": stages, "health": {"min_events": 3}}}}


def wait_until(
    condition: Callable[[], object], *, store: RedisStore | None = None, what: str = ""
) -> None:
    """Wait (up to DEADLINE_S) until ``condition()`` is true; wake ``store``'s refresh meanwhile.

    Waking only cuts short the backoff of the refresh; it is the store's thread that acts.
    """
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {DEADLINE_S} s: {what or condition}")
        if store is not None:
            store.wake()
        time.sleep(0.01)


def units(n: int = 1000) -> list[str]:
    return [f"user-{i}" for i in range(n)]


@pytest.fixture(name="make_store")
def _make_store() -> Iterator[StoreFactory]:
    """Make RedisStores that refresh fast and fail fast; all are closed after the test.

    Without push unless asked: these tests drive the refreshes (tests/test_push.py tests it).
    """
    with closing_factory(RedisStore, refresh_interval=0.05, timeout=0.25, push=False) as make:
        yield make


@pytest.fixture(name="client")
def _client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


class TestKeyLayout:
    def test_state_is_a_hash_and_history_a_capped_list(
        self, make_store: StoreFactory, redis_url: str, redis_prefix: str, client: redis.Redis
    ) -> None:
        """The state hash holds the version and the JSON state; the history list is newest first,
        capped at max_history, and neither expires."""
        store = make_store(redis_url, prefix=redis_prefix, max_history=3)
        for v in range(1, 6):
            assert store.compare_and_set("r", v - 1, state(v, stage=v), entry(v, stage=v))
        state_key, history_key = f"{redis_prefix}:{{r}}:state", f"{redis_prefix}:{{r}}:history"
        assert client.type(state_key) == "hash"
        fields = client.hgetall(state_key)
        assert set(fields) == {"v", "s"}
        assert fields["v"] == "5"
        assert json.loads(fields["s"])["version"] == 5
        assert json.loads(fields["s"])["stage"] == 5
        assert client.type(history_key) == "list"
        raw = client.lrange(history_key, 0, -1)
        assert [json.loads(text)["version"] for text in raw] == [5, 4, 3]
        assert [t.version for t in store.history("r")] == [5, 4, 3]
        assert client.ttl(state_key) == client.ttl(history_key) == -1  # -1: no expiry

    def test_counters_and_unit_sets_expire(
        self, make_store: StoreFactory, redis_url: str, redis_prefix: str, client: redis.Redis
    ) -> None:
        """Counts are a hash, first units a set of 64-bit digests, distinct units a HyperLogLog;
        each has a TTL."""
        store = make_store(redis_url, prefix=redis_prefix, ttl=3600)
        assert store.add_counts("r", "1.0", {"errors.t": 2, "errors.c": 1}) == {
            "errors.t": 2,
            "errors.c": 1,
        }
        assert store.add_units("r", "1/errors", ["a", "b", "a"]) == [True, True, False]
        assert store.count_distinct("r", "1.0/t", ["a", "b", "c"]) == 3
        counts = f"{redis_prefix}:{{r}}:counts:1.0"
        first = f"{redis_prefix}:{{r}}:seen:1/errors"
        distinct = f"{redis_prefix}:{{r}}:units:1.0/t"
        assert client.type(counts) == "hash"
        assert client.hgetall(counts) == {"errors.t": "2", "errors.c": "1"}
        assert client.type(first) == "set"
        assert client.smembers(first) == {str(member("a")), str(member("b"))}
        assert client.pfcount(distinct) == 3  # a HyperLogLog (a string to TYPE)
        for key in (counts, first, distinct):
            assert 0 < client.ttl(key) <= 3600, key

    def test_two_prefixes_on_one_redis_are_independent(
        self, make_store: StoreFactory, redis_url: str, redis_prefix: str, client: redis.Redis
    ) -> None:
        """Two applications with their own prefixes share no state, history, count or unit."""
        other_prefix = unique_prefix("other")
        try:
            one = make_store(redis_url, prefix=redis_prefix)
            two = make_store(redis_url, prefix=other_prefix)
            assert one.compare_and_set("r", 0, state(1), entry(1))
            one.add_counts("r", "1.0", {"errors.t": 5})
            assert one.add_units("r", "1/errors", ["a"]) == [True]
            one.count_distinct("r", "1.0/t", ["a", "b"])
            assert two.load("r") is None
            assert two.history("r") == []
            assert two.read_counts("r", "1.0") == {}
            assert two.add_units("r", "1/errors", ["a"]) == [True]
            assert two.count_distinct("r", "1.0/t", []) == 0
            assert two.compare_and_set("r", 0, state(1, stage=2), entry(1, stage=2))
            assert one.load("r") == state(1)
            assert one.read_counts("r", "1.0") == {"errors.t": 5}
        finally:
            keys = list(client.scan_iter(match=f"{other_prefix}:*"))
            if keys:
                client.delete(*keys)

    @pytest.mark.parametrize(
        "url",
        [
            "redis://:secret@redis.internal:6379/0",
            "redis://app:secret@redis.internal:6379/0",
            "rediss://app:secret@redis.internal/2",
        ],
    )
    def test_the_password_is_redacted_in_repr(self, url: str) -> None:
        """The repr (which the failure logs carry) never shows the password."""
        store = RedisStore(url, prefix="p")
        try:
            assert "secret" not in repr(store)
            assert "redis.internal" in repr(store)
            assert "secret" not in repr(store_from_url(url + "?prefix=p"))
        finally:
            store.close()

    def test_missing_redis_py_names_the_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without redis-py, constructing a RedisStore says which extra to install."""
        monkeypatch.setitem(sys.modules, "redis", None)
        with pytest.raises(ImportError, match=re.escape("pip install 'stagedroll[redis]'")):
            RedisStore("redis://127.0.0.1:6379/0")


class TestOutage:
    def test_redis_down_at_start_up(
        self, make_store: StoreFactory, redis_server: RedisServer
    ) -> None:
        """With Redis down at start-up the rollout serves 0 % and decides; once Redis is back
        the background refresh starts it, with no call on the Rollouts."""
        redis_server.stop()
        store = make_store(redis_server.url)
        rollouts = Rollouts(gated_policy(), store=store)
        assert not any(rollouts.enabled("co", unit) for unit in units())
        decision = rollouts.decide("co", "user-1")
        assert decision.enabled is False
        assert rollouts["co"].state.version == 0
        assert rollouts.failures.count("store.load_failed") > 0
        redis_server.start()
        wait_until(lambda: rollouts["co"].state.version >= 1, store=store, what="started")
        started = rollouts["co"].state
        assert (started.stage, started.status) == (0, Status.RUNNING)
        assert 0 < sum(rollouts.enabled("co", unit) for unit in units()) < 1000
        assert [t.action for t in rollouts.history("co")] == [Action.START]

    def test_redis_going_away_and_coming_back(
        self, make_store: StoreFactory, redis_server: RedisServer
    ) -> None:
        """While Redis is down, decisions follow the last known state and nothing raises but
        transitions; it recovers by itself and follows transitions made on the new server."""
        store = make_store(redis_server.url)
        rollouts = Rollouts(staged_policy(), store=store)
        rollouts.advance("co", actor="alice")
        before = [rollouts.enabled("co", unit) for unit in units()]
        assert 0 < sum(before) < 1000

        @rollouts.guard("co", fallback=lambda unit: "old", unit=lambda unit: unit)
        def new_path(unit: str) -> str:
            return "new"

        redis_server.stop()
        failed = store.failures.count("store.refresh_failed")
        assert_serving_while_down(rollouts, "co", units(), before, new_path)
        wait_until(
            lambda: store.failures.count("store.refresh_failed") > failed,
            what="store.refresh_failed",
        )
        assert [rollouts.enabled("co", unit) for unit in units()] == before

        with structlog.testing.capture_logs() as logs:
            redis_server.start()  # empty: Redis lost its data
            wait_until(
                lambda: any(log["event"] == "store.recovered" for log in logs),
                store=store,
                what="store.recovered",
            )
        assert store.refresh() is True
        # This process restored what it knew into the empty Redis; another process finds
        # it there, and moves the rollout on.
        other = Rollouts(staged_policy(), store=make_store(redis_server.url))
        assert other["co"].state == rollouts["co"].state
        other.advance("co", actor="bob")
        other.freeze("co", reason="after the outage", actor="bob")
        assert other["co"].state.version == 4
        wait_until(lambda: rollouts["co"].state.version == 4, store=store, what="adopted")
        assert rollouts["co"].state.status is Status.FROZEN
        assert rollouts["co"].state.actor == "bob"

    def test_a_kill_after_redis_lost_its_data(
        self, make_store: StoreFactory, redis_server: RedisServer
    ) -> None:
        """A kill made on a Redis that came back empty reaches a process that knew a later
        version."""
        store = make_store(redis_server.url)
        rollouts = Rollouts(staged_policy(), store=store)
        rollouts.advance("co")  # version 2
        redis_server.stop()
        redis_server.start()  # empty
        other = Rollouts(staged_policy(), store=make_store(redis_server.url))  # version 1
        other.kill("co", reason="incident", actor="bob")  # version 2
        assert store.refresh() is True
        assert rollouts["co"].state.status is Status.KILLED
        assert not any(rollouts.enabled("co", unit) for unit in units())

    def test_a_kill_survives_redis_losing_its_data(
        self, make_store: StoreFactory, redis_server: RedisServer
    ) -> None:
        """Redis restarted empty after a kill: the process that knew it restores it, and a new
        process starts killed, not at the first stage."""
        store = make_store(redis_server.url)
        rollouts = Rollouts(staged_policy(), store=store)
        rollouts.advance("co")
        rollouts.kill("co", reason="incident", actor="alice")
        redis_server.stop()
        redis_server.start()  # empty
        assert store.refresh() is True
        assert store.failures.count("store.state_lost") == 1
        newcomer = Rollouts(staged_policy(), store=make_store(redis_server.url))
        assert newcomer["co"].state.status is Status.KILLED
        assert newcomer["co"].state.stage == 1
        assert rollouts["co"].state == newcomer["co"].state  # the restored history, adopted
        assert not any(newcomer.enabled("co", unit) for unit in units())

    def test_a_slow_redis_fails_fast_and_decisions_do_not_wait(
        self, make_store: StoreFactory, redis_server: RedisServer
    ) -> None:
        """Redis paused for a second: a store call times out after ``timeout``, decisions made
        meanwhile do not wait for Redis, and the store works again after the pause."""
        store = make_store(redis_server.url)
        rollouts = Rollouts(gated_policy(), store=store)
        before = [rollouts.enabled("co", unit) for unit in units()]
        pauser = redis.Redis.from_url(redis_server.url)
        try:
            pauser.client_pause(1000, all=True)
            paused_at = time.monotonic()
            with pytest.raises(redis.TimeoutError):
                store.load("co")
            # Not a performance threshold: the timeout (0.25 s) must end the call, not the pause.
            assert time.monotonic() - paused_at < 0.9
            answers = [rollouts.enabled("co", unit) for unit in units()]
            for unit in units(100):
                rollouts.report("co", unit, error=False, latency_s=0.01)
            still_paused = time.monotonic() - paused_at < 1.0
            assert answers == before
            assert still_paused, "the decisions waited for the pause to end"
        finally:
            pauser.close()
        wait_until(
            lambda: store.refresh() and store.load("co") is not None, what="Redis answers again"
        )
        assert store.load("co") == rollouts["co"].state

    def test_outcomes_reported_while_redis_is_down_reach_it_later(
        self, make_store: StoreFactory, redis_server: RedisServer
    ) -> None:
        """Outcomes reported while Redis is down stay queued (the flush fails, counted) and are
        pooled once it is back."""
        store = make_store(redis_server.url)
        rollouts = Rollouts(gated_policy(), store=store)
        started = rollouts["co"].state
        segment = f"{started.epoch}.{started.stage}"
        redis_server.stop()
        failing = [f"user-{i}" for i in range(10)]
        for unit in failing:
            rollouts.report("co", unit, error=True, latency_s=0.01)
        for unit in units(200):
            rollouts.report("co", unit, error=False, latency_s=0.01)
        flush_failed = rollouts.failures.count("store.flush_failed")
        wait_until(
            lambda: rollouts.failures.count("store.flush_failed") > flush_failed,
            store=store,
            what="store.flush_failed",
        )
        redis_server.start()
        reader = make_store(redis_server.url)

        def pooled() -> bool:
            counts = reader.read_counts("co", segment)
            return sum(n for name, n in counts.items() if name.startswith("errors.")) == len(
                failing
            )

        wait_until(pooled, store=store, what="the queued errors pooled in Redis")
        treated = sum(rollouts.enabled("co", unit) for unit in failing)
        treated_units = sum(rollouts.enabled("co", unit) for unit in units(200))
        # One batch, at the policy's share, in the visit's first block; no slow call counted.
        expected = {
            "errors.t@0.5#0": treated,
            "errors.c@0.5#0": len(failing) - treated,
            "units.t@0.5": treated_units,
            "units.c@0.5": 200 - treated_units,
        }
        assert reader.read_counts("co", segment) == {k: n for k, n in expected.items() if n}
        health = rollouts.status("co").health
        assert health.error_events_treatment == treated
        assert health.error_events_control == len(failing) - treated
        # Distinct units are a HyperLogLog's estimate (about 0.8 % off).
        assert health.units_treatment + health.units_control == pytest.approx(200, abs=6)


class TestPooledEvidence:
    def test_two_rollouts_pool_their_evidence(
        self, make_store: StoreFactory, redis_url: str, redis_prefix: str
    ) -> None:
        """Two Rollouts on two RedisStores: the automatic freeze counts both sides' errors, and a
        unit failing on both counts once."""
        one = Rollouts(gated_policy(), store=make_store(redis_url, prefix=redis_prefix))
        two = Rollouts(gated_policy(), store=make_store(redis_url, prefix=redis_prefix))
        treated = [unit for unit in units() if one.enabled("co", unit)][:12]
        assert [two.enabled("co", unit) for unit in treated] == [True] * 12
        # At 50 % and no control errors, the gate freezes at the 8th treatment error event at
        # the soonest (E = 19.9 after 7, 33.3 after 8, counted one by one; fewer flushes only
        # lower it) and rolls back past 14 (E at most 291 after 12, however flushed):
        # neither side alone, with 7 each, reaches it; together, with 12, they freeze.
        seen_by_one, seen_by_two = treated[:7], treated[5:]
        for unit in seen_by_one:
            one.report("co", unit, error=True, latency_s=0.01)
        wait_until(lambda: one.status("co").health.error_events_treatment == 7, what="pooled")
        assert one["co"].state.status is Status.RUNNING
        for unit in seen_by_two:
            two.report("co", unit, error=True, latency_s=0.01)

        def frozen() -> bool:
            return one["co"].state.status is two["co"].state.status is Status.FROZEN

        wait_until(frozen, what="the automatic freeze, seen by both")
        freeze = one.history("co")[0]
        assert (freeze.action, freeze.actor) == (Action.FREEZE, "stagedroll")
        events = freeze.evidence["error_events_treatment"]
        assert isinstance(events, int)
        assert max(len(seen_by_one), len(seen_by_two)) < events <= len(set(treated))
        # Reported 7 + 7 times, by 12 distinct units: each counts once, fleet-wide.

        def all_pooled() -> bool:
            return all(
                r.status("co").health.error_events_treatment == len(treated) for r in (one, two)
            )

        wait_until(all_pooled, what="all the errors pooled, on both sides")
        state = one["co"].state
        counts = one.store.read_counts("co", f"{state.epoch}.{state.stage}")
        assert sum(n for name, n in counts.items() if name.startswith("errors.t@0.5#")) == len(
            treated
        )
        assert not [name for name in counts if name.startswith("errors.c")]
        assert state.status is Status.FROZEN  # 12 events: not enough to roll back


class TestUpgrade:
    def test_a_set_of_unit_texts_becomes_digests(
        self, make_store: StoreFactory, redis_url: str, redis_prefix: str, client: redis.Redis
    ) -> None:
        """A set of first errors kept as text (by an earlier version) is turned into digests
        at its first write: a unit counted before is not new after, and the texts go.

        The earlier version's counter (``errors.t``, without a share and a block) is no
        evidence of this one: only the new unit's first error counts.
        """
        store = make_store(redis_url, prefix=redis_prefix, refresh_interval=3600)
        rollouts = Rollouts(gated_policy(), store=store)
        treated = [u for u in units(200) if rollouts.enabled("co", u)][:2]
        epoch = rollouts["co"].state.epoch
        legacy = f"{redis_prefix}:{{co}}:first:{epoch}/errors"
        client.sadd(legacy, treated[0], "someone-else@example.com")
        client.hset(f"{redis_prefix}:{{co}}:counts:{epoch}.0", "errors.t", 1)
        for unit in treated:
            rollouts.report("co", unit, error=True)
        rollouts.tick()
        assert rollouts.status("co").health.error_events_treatment == 1  # treated[1] alone
        assert client.hgetall(f"{redis_prefix}:{{co}}:counts:{epoch}.0") == {
            "errors.t": "1",  # the earlier version's, left as it was
            "errors.t@0.5#0": "1",
            "units.t@0.5": "2",
        }
        assert client.exists(legacy) == 0
        seen = client.smembers(f"{redis_prefix}:{{co}}:seen:{epoch}/errors")
        assert len(seen) == 3
        keys = list(client.scan_iter(match=f"{redis_prefix}:*"))
        held = " ".join(keys + [str(client.dump(key)) for key in keys])
        assert not any(unit in held for unit in (*treated, "someone-else@example.com"))

    def test_distinct_units_of_an_earlier_version_are_not_counted_twice(
        self, make_store: StoreFactory, redis_url: str, redis_prefix: str, client: redis.Redis
    ) -> None:
        """Units an earlier version counted as distinct (a HyperLogLog of their texts) do not
        add to the digests counted after the upgrade: 5 old and 6 overlapping new units are 6."""
        first = Rollouts(gated_policy(), store=make_store(redis_url, prefix=redis_prefix))
        treated = [u for u in units(400) if first.enabled("co", u)][:6]
        started = first["co"].state
        legacy = f"{redis_prefix}:{{co}}:distinct:{started.epoch}.{started.stage}/t"
        client.pfadd(legacy, *treated[:5])  # as the earlier version wrote it: the texts
        client.expire(legacy, 3600)
        rollouts = Rollouts(gated_policy(), store=make_store(redis_url, prefix=redis_prefix))
        for unit in treated:
            rollouts.report("co", unit, error=False)
        rollouts.tick()
        assert rollouts.status("co").health.units_treatment == len(treated)
        assert client.exists(legacy) == 0

    def test_unit_texts_of_an_earlier_version_go_at_the_first_load(
        self, make_store: StoreFactory, redis_url: str, redis_prefix: str, client: redis.Redis
    ) -> None:
        """At a rollout's first load, with no event reported, its sets of unit texts become
        digests and its HyperLogLogs of unit texts are deleted; another rollout's stay."""
        started = Rollouts(gated_policy(), store=make_store(redis_url, prefix=redis_prefix))
        epoch, history = started["co"].state.epoch, started["co"].state.history
        emails = ["alice@corp.example", "bob@corp.example", "carol@corp.example"]

        def key(kind: str) -> str:
            return f"{redis_prefix}:{{co}}:{kind}"

        legacy = {key(f"first:{epoch}/errors"): emails[:2], key(f"first:{epoch}/slow"): emails[2:]}
        legacy |= {key(f"distinct:{epoch}.0/t"): emails[:2], key(f"distinct:{epoch}.0/c"): emails}
        for name, texts in legacy.items():
            (client.sadd if ":first:" in name else client.pfadd)(name, *texts)
            client.expire(name, 3600)
        elsewhere = f"{redis_prefix}:{{search}}:first:1/errors"
        client.sadd(elsewhere, "dave@corp.example")
        store = make_store(redis_url, prefix=redis_prefix)
        Rollouts(gated_policy(), store=store)
        assert client.exists(*legacy) == 0
        rollout = rollout_key("co", history)
        for scope, texts in ((f"{epoch}/errors", emails[:2]), (f"{epoch}/slow", emails[2:])):
            seen = key(f"seen:{scope}")
            assert client.smembers(seen) == {str(member(digest(rollout, token(t)))) for t in texts}
            assert 0 < client.ttl(seen) <= 30 * 86400
        assert client.smembers(elsewhere) == {"dave@corp.example"}
        assert store.failures.count("store.upgrade_failed") == 0
        keys = list(client.scan_iter(match=key("*")))
        held = " ".join(keys + [str(client.dump(name)) for name in keys])
        assert not any(email in held for email in emails)

    @pytest.mark.parametrize("lost", ["state", "everything"])
    def test_the_legacy_keys_go_when_the_state_is_restored_or_started(
        self,
        make_store: StoreFactory,
        redis_url: str,
        redis_prefix: str,
        client: redis.Redis,
        lost: str,
    ) -> None:
        """A state restored from its history, or started afresh, also drops the raw ids
        an earlier version kept of the rollout."""
        started = Rollouts(gated_policy(), store=make_store(redis_url, prefix=redis_prefix))
        epoch = started["co"].state.epoch
        client.delete(f"{redis_prefix}:{{co}}:state")
        if lost == "everything":
            client.delete(f"{redis_prefix}:{{co}}:history", f"{redis_prefix}:meta")
        legacy = [
            f"{redis_prefix}:{{co}}:first:{epoch}/errors",
            f"{redis_prefix}:{{co}}:distinct:1.0/t",
        ]
        client.sadd(legacy[0], "alice@corp.example")
        client.pfadd(legacy[1], "alice@corp.example")
        Rollouts(gated_policy(), store=make_store(redis_url, prefix=redis_prefix))
        assert client.exists(*legacy) == 0
        keys = list(client.scan_iter(match=f"{redis_prefix}:*"))
        assert not any("alice@corp.example" in str(client.dump(name)) for name in keys)

    def test_the_legacy_keys_are_found_under_a_prefix_with_glob_characters(
        self, make_store: StoreFactory, redis_url: str, redis_prefix: str, client: redis.Redis
    ) -> None:
        """A prefix with glob characters is read literally: its rollout's legacy keys are
        deleted, not those of a prefix that the same text read as a glob would match."""
        prefix, lookalike = f"{redis_prefix}:[a*]?", f"{redis_prefix}:ab"
        Rollouts(gated_policy(), store=make_store(redis_url, prefix=prefix))
        ours, theirs = (f"{p}:{{co}}:distinct:1.0/t" for p in (prefix, lookalike))
        client.pfadd(ours, "alice@corp.example")
        client.pfadd(theirs, "alice@corp.example")
        Rollouts(gated_policy(), store=make_store(redis_url, prefix=prefix))
        assert client.exists(ours) == 0
        assert client.exists(theirs) == 1

    def test_a_legacy_key_that_cannot_be_converted_does_not_fail_the_load(
        self, make_store: StoreFactory, redis_url: str, redis_prefix: str, client: redis.Redis
    ) -> None:
        """A legacy key of another type: the load succeeds, the failure is logged and counted
        (store.upgrade_failed), and the rollout's other legacy keys still go."""
        started = Rollouts(gated_policy(), store=make_store(redis_url, prefix=redis_prefix))
        broken = f"{redis_prefix}:{{co}}:first:1/errors"
        legacy = f"{redis_prefix}:{{co}}:first:1/slow"
        client.set(broken, "not a set")
        client.sadd(legacy, "erin@corp.example")
        store = make_store(redis_url, prefix=redis_prefix)
        with structlog.testing.capture_logs() as logs:
            rollouts = Rollouts(gated_policy(), store=store)
        assert rollouts["co"].state == started["co"].state
        assert rollouts.failures.count("store.load_failed") == 0
        assert store.failures.count("store.upgrade_failed") == 1
        failed = [log for log in logs if log["event"] == "store.upgrade_failed"]
        assert [log["key"] for log in failed] == [broken]
        assert client.exists(legacy) == 0
        assert client.get(broken) == "not a set"


class TestWrongTypes:
    def test_a_state_key_of_another_type_is_one_corrupt_state(
        self, make_store: StoreFactory, redis_url: str, redis_prefix: str, client: redis.Redis
    ) -> None:
        """A state key that is a list fails its own rollout's read (WRONGTYPE), counted,
        while the other rollouts still refresh."""
        store = make_store(redis_url, prefix=redis_prefix, refresh_interval=3600)
        assert store.compare_and_set("a", 0, state(1), entry(1))
        assert store.compare_and_set("b", 0, state(1), entry(1))
        heard: list[tuple[str, int]] = []
        store.watch(lambda name, new: heard.append((name, new.version)))
        client.delete(f"{redis_prefix}:{{a}}:state")
        client.rpush(f"{redis_prefix}:{{a}}:state", "x")
        other = make_store(redis_url, prefix=redis_prefix, refresh_interval=3600)
        assert other.compare_and_set("b", 1, state(2), entry(2))
        assert store.refresh()
        assert heard == [("b", 2)]
        assert store.failures.count("store.decode_failed") == 1
        with pytest.raises(ValueError, match="WRONGTYPE"):
            store.load("a")

    @pytest.mark.parametrize("kind", ["string", "hash", "set"])
    def test_a_history_key_of_another_type_fails_the_whole_transition(
        self,
        make_store: StoreFactory,
        redis_url: str,
        redis_prefix: str,
        client: redis.Redis,
        kind: str,
    ) -> None:
        """A history key that is not a list: the kill raises StoreError naming the key, and the
        stored state, which the workers follow, is unchanged."""
        rollouts = Rollouts(staged_policy(), store=make_store(redis_url, prefix=redis_prefix))
        state_key, history = (f"{redis_prefix}:{{co}}:{kind}" for kind in ("state", "history"))
        before = client.hgetall(state_key)
        client.delete(history)
        if kind == "string":
            client.set(history, "x")
        elif kind == "hash":
            client.hset(history, "x", "x")
        else:
            client.sadd(history, "x")
        with pytest.raises(StoreError) as raised:
            rollouts.kill("co", reason="incident", actor="oncall")
        assert client.hgetall(state_key) == before
        assert history in str(raised.value)
        assert client.type(history) == kind
        assert rollouts["co"].state.status is Status.RUNNING
        worker = Rollouts(staged_policy(), store=make_store(redis_url, prefix=redis_prefix))
        assert worker["co"].state.status is Status.RUNNING

    def test_a_restore_with_a_history_key_of_another_type_writes_nothing(
        self, make_store: StoreFactory, redis_url: str, redis_prefix: str, client: redis.Redis
    ) -> None:
        """A lost state whose history key is not a list: the restore fails (logged and
        counted), and no state is written without its history entry."""
        store = make_store(redis_url, prefix=redis_prefix, refresh_interval=3600)
        assert store.compare_and_set("r", 0, state(1), entry(1))
        state_key, history = f"{redis_prefix}:{{r}}:state", f"{redis_prefix}:{{r}}:history"
        client.delete(state_key, history)
        client.set(history, "x")
        assert store.refresh()
        assert store.failures.count("store.restore_failed") == 1
        assert client.exists(state_key) == 0
        assert client.get(history) == "x"


def write_state_behind(client: redis.Redis, prefix: str, name: str) -> None:
    """Write a state as a version from before the registry did: no entry in meta."""
    client.hset(f"{prefix}:{{{name}}}:state", mapping={"v": "1", "s": dump_state(state(1))})


class TestNames:
    def test_the_registry_is_read_not_the_keyspace(
        self, make_store: StoreFactory, redis_url: str, redis_prefix: str, client: redis.Redis
    ) -> None:
        """With a registry in meta, names() lists what it registers (a state written behind
        it is not found until a process loads it, which registers it)."""
        store = make_store(redis_url, prefix=redis_prefix)
        assert store.compare_and_set("a", 0, state(1), entry(1))
        write_state_behind(client, redis_prefix, "behind")
        assert store.names() == ["a"]
        assert store.load("behind") == state(1)
        assert client.hexists(f"{redis_prefix}:meta", "rollout:behind")
        assert store.names() == ["a", "behind"]

    def test_without_a_registry_the_prefix_is_scanned(
        self, make_store: StoreFactory, redis_url: str, redis_prefix: str, client: redis.Redis
    ) -> None:
        """A store written only by versions from before the registry is scanned for state
        keys under its prefix, glob characters read literally; other keys are not rollouts."""
        prefix, lookalike = f"{redis_prefix}:[a*]?", f"{redis_prefix}:ab"
        for name in ("old", "x}:{y", "*"):
            write_state_behind(client, prefix, name)
        write_state_behind(client, lookalike, "theirs")
        client.hset(f"{prefix}:{{counted}}:counts:1.0", "calls", 1)
        store = make_store(redis_url, prefix=prefix)
        assert store.names() == ["*", "old", "x}:{y"]
        assert not client.exists(f"{prefix}:meta")  # a read: nothing written

    def test_a_registered_rollout_without_a_state_is_not_listed(
        self, make_store: StoreFactory, redis_url: str, redis_prefix: str, client: redis.Redis
    ) -> None:
        """A rollout whose state key was deleted (a lost state) is no longer listed."""
        store = make_store(redis_url, prefix=redis_prefix)
        assert store.compare_and_set("a", 0, state(1), entry(1))
        assert store.compare_and_set("b", 0, state(1), entry(1))
        client.delete(f"{redis_prefix}:{{a}}:state")
        assert store.names() == ["b"]

    def test_a_state_key_of_another_type_is_listed(
        self, make_store: StoreFactory, redis_url: str, redis_prefix: str, client: redis.Redis
    ) -> None:
        """A corrupt state (a key of another type) is still a rollout the store holds."""
        store = make_store(redis_url, prefix=redis_prefix)
        assert store.compare_and_set("a", 0, state(1), entry(1))
        client.delete(f"{redis_prefix}:{{a}}:state")
        client.rpush(f"{redis_prefix}:{{a}}:state", "x")
        assert store.names() == ["a"]

    def test_a_registered_name_that_is_not_utf8_is_skipped(
        self, make_store: StoreFactory, redis_url: str, redis_prefix: str, client: redis.Redis
    ) -> None:
        """A field of meta that is not UTF-8 (written behind the store's back) is no rollout."""
        store = make_store(redis_url, prefix=redis_prefix)
        assert store.compare_and_set("a", 0, state(1), entry(1))
        client.hset(f"{redis_prefix}:meta", b"rollout:\xff\xfe", "h")
        client.hset(f"{redis_prefix}:{{\xff\xfe}}:state".encode("latin-1"), "s", "x")
        assert store.names() == ["a"]

    def test_a_meta_key_of_another_type_falls_back_to_the_scan(
        self, make_store: StoreFactory, redis_url: str, redis_prefix: str, client: redis.Redis
    ) -> None:
        """A meta key that is not a hash does not fail names(): the prefix is scanned."""
        write_state_behind(client, redis_prefix, "a")
        client.set(f"{redis_prefix}:meta", "x")
        assert make_store(redis_url, prefix=redis_prefix).names() == ["a"]


ERROR = RecentError("treatment", "IndexError", "discount tier out of range", 1.0, 2.0, 3)


class TestRecentErrors:
    def test_a_hash_that_expires(
        self, make_store: StoreFactory, redis_url: str, redis_prefix: str, client: redis.Redis
    ) -> None:
        """The errors are a hash of JSON entries in the rollout's slot, with a TTL."""
        store = make_store(redis_url, prefix=redis_prefix, ttl=3600)
        store.add_errors("r", [ERROR])
        key = f"{redis_prefix}:{{r}}:errors"
        assert client.type(key) == "hash"
        assert list(client.hgetall(key).values()) == [dump_error(ERROR)]
        assert 0 < client.ttl(key) <= 3600

    def test_malformed_entries_are_skipped_then_dropped(
        self, make_store: StoreFactory, redis_url: str, redis_prefix: str, client: redis.Redis
    ) -> None:
        """Entries that cannot be read are skipped by read_errors, and the next add drops them."""
        store = make_store(redis_url, prefix=redis_prefix)
        store.add_errors("r", [ERROR])
        key = f"{redis_prefix}:{{r}}:errors"
        negative = json.dumps({**json.loads(dump_error(ERROR)), "count": -1})
        junk: list[tuple[str, str | bytes]] = [
            ("a", "not json"), ("b", "[1, 2]"), ("c", '{"arm": "treatment"}'),
            ("d", b"\xff" * 10), ("e", negative),
        ]  # fmt: skip
        for field, value in junk:
            client.hset(key, field, value)
        assert store.read_errors("r") == [ERROR]
        store.add_errors("r", [ERROR])
        assert store.read_errors("r") == [RecentError(
            "treatment", "IndexError", "discount tier out of range", 1.0, 2.0, 6)]  # fmt: skip
        assert client.hlen(key) == 1

    def test_a_key_of_another_type_reads_none_and_is_replaced(
        self, make_store: StoreFactory, redis_url: str, redis_prefix: str, client: redis.Redis
    ) -> None:
        """An errors key that is not a hash reads as no errors; the next add replaces it."""
        store = make_store(redis_url, prefix=redis_prefix)
        key = f"{redis_prefix}:{{r}}:errors"
        client.rpush(key, "x")
        assert store.read_errors("r") == []
        store.add_errors("r", [ERROR])
        assert store.read_errors("r") == [ERROR]
        assert client.type(key) == "hash"


def flush_of(rollout: str, people: list[str], *, counts: dict[str, int] | None = None,
             errors: list[RecentError] | None = None, history: str = "h1") -> Flush:  # fmt: skip
    """A flush of ``rollout``: each unit's first error (new ones add 1), its distinct units, and
    the units counted, at segment 3.1 with 3.0 as the earlier visit."""
    key = rollout_key(rollout, history)
    ids = [digest(key, token(unit)) for unit in people]
    added = {"units.t@0.05": len(people)} if counts is None else counts
    return Flush(rollout, "3.1", added, [("3/errors", [("errors.t@0.05#0", ids)])],
                 [("3.1@0.05/t", ids)], ["3.0"], errors or [])  # fmt: skip


def landed(n: int) -> Flushed:
    """What a first flush of ``flush_of`` with ``n`` units answers."""
    counters = {"units.t@0.05": n, "errors.t@0.05#0": n}
    return Flushed(counters, {"errors.t@0.05#0": n}, [n], [{}])


def evalsha_calls(client: redis.Redis) -> int:
    """How many EVALSHA the server ran (its command statistics)."""
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


@pytest.fixture(name="private")
def _private(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of a private Redis: its command statistics count this test's commands only."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


class TestFlushMany:
    def test_one_evalsha_per_exchange_whatever_the_number_of_flushes(
        self, make_store: StoreFactory, redis_server: RedisServer, private: redis.Redis
    ) -> None:
        """A batch of 1, 10 or 300 rollouts' flushes is one EVALSHA, and each flush lands."""
        store = make_store(redis_server.url, prefix=unique_prefix("batch"))
        store.flush_many([flush_of("warm", ["a"])])  # the script is loaded (SCRIPT LOAD)
        for n in (1, 10, 300):
            before = evalsha_calls(private)
            answers = store.flush_many([flush_of(f"r{n}-{i}", ["a", "b"]) for i in range(n)])
            assert evalsha_calls(private) - before == 1
            assert answers == [landed(2)] * n

    @pytest.mark.parametrize(
        ("kind", "spoil"),
        [
            ("seen:3/errors", lambda client, key: client.set(key, "a string")),
            ("counts:3.1", lambda client, key: client.rpush(key, "a list")),
            ("counts:3.1", lambda client, key: client.hset(key, "errors.t@0.05#0", "1.5")),
            ("units:3.1@0.05/t", lambda client, key: client.set(key, "not a HyperLogLog")),
            ("counts:3.0", lambda client, key: client.sadd(key, "an earlier visit")),
        ],
        ids=["seen-set", "counters", "counter-field", "distinct-units", "earlier-counters"],
    )
    def test_a_key_of_another_type_fails_its_flush_alone(
        self,
        make_store: StoreFactory,
        redis_url: str,
        redis_prefix: str,
        kind: str,
        spoil: Callable[[redis.Redis, str], object],
    ) -> None:
        """A key of the wrong type (or a counter that is not an integer) in one rollout's flush
        fails that flush with a plain exception, nothing of it written; the others land."""
        raw = redis.Redis.from_url(redis_url)
        try:
            store = make_store(redis_url, prefix=redis_prefix)
            broken = f"{redis_prefix}:{{b}}:{kind}"
            spoil(raw, broken)
            before = raw.dump(broken)
            error = RecentError("treatment", "KeyError", "'k'", 1.0, 2.0)
            answers = store.flush_many([flush_of(name, ["x", "y", "z"], errors=[error])
                                        for name in ("a", "b", "c")])  # fmt: skip
            assert answers[0] == answers[2] == landed(3)
            assert isinstance(answers[1], redis.ResponseError)
            assert not isinstance(answers[1], Unsure)
            assert list(raw.scan_iter(match=f"{redis_prefix}:{{b}}:*")) == [broken.encode()]
            assert raw.dump(broken) == before
            assert store.read_errors("a") == store.read_errors("c") == [error]
        finally:
            raw.close()

    def test_a_counter_near_the_end_of_its_range_is_refused_before_any_write(
        self, make_store: StoreFactory, redis_url: str, redis_prefix: str, client: redis.Redis
    ) -> None:
        """A counter an addition could push past 64 bits fails its flush before anything of
        it is written (no unit marked: sent again, it counts), and the other flushes land."""
        store = make_store(redis_url, prefix=redis_prefix)
        client.hset(f"{redis_prefix}:{{b}}:counts:3.1", "units.t@0.05", str(2**63 - 1))
        answers = store.flush_many([flush_of(name, ["x", "y"]) for name in ("a", "b", "c")])
        assert answers[0] == answers[2] == landed(2)
        assert isinstance(answers[1], redis.exceptions.ResponseError)
        assert not isinstance(answers[1], Unsure)
        assert client.scard(f"{redis_prefix}:{{b}}:seen:3/errors") == 0

    def test_a_set_of_unit_texts_is_converted_and_counted_once(
        self, make_store: StoreFactory, redis_server: RedisServer, private: redis.Redis
    ) -> None:
        """A flush that meets an earlier version's set of unit texts writes nothing, the set
        becomes digests and the flush is sent again (a second EVALSHA, once): a unit of the
        set is not new, and neither that flush nor the others count twice."""
        prefix = unique_prefix("legacy")
        store = make_store(redis_server.url, prefix=prefix)
        store.flush_many([flush_of("warm", ["a"])])
        legacy = f"{prefix}:{{co}}:first:3/errors"
        private.sadd(legacy, "alice", "bob")
        batch = [flush_of("co", ["alice", "carol"], history=""), flush_of("other", ["x", "y"])]
        before = evalsha_calls(private)
        answers = store.flush_many(batch)
        assert evalsha_calls(private) - before == 2
        assert answers[1] == landed(2)
        counters = {"units.t@0.05": 2, "errors.t@0.05#0": 1}
        assert answers[0] == Flushed(counters, {"errors.t@0.05#0": 1}, [2], [{}])
        assert private.exists(legacy) == 0
        key = rollout_key("co", "")  # no stored state: the history id is ""
        assert private.smembers(f"{prefix}:{{co}}:seen:3/errors") == {
            str(member(digest(key, token(unit)))) for unit in ("alice", "bob", "carol")
        }
        before = evalsha_calls(private)
        again = store.flush_many([flush_of("co", ["alice", "carol"], counts={}, history="")])
        assert evalsha_calls(private) - before == 1
        assert again == [Flushed(counters, {}, [2], [{}])]
        assert store.read_counts("other", "3.1") == landed(2).counters

    def test_errors_merge_as_add_errors_merges_them(
        self, make_store: StoreFactory, redis_url: str, redis_prefix: str
    ) -> None:
        """Batched errors end as add_errors leaves them: counts added (up to 2**53), first and
        last seen kept exactly (17 digits), the 20 most recent kept in the same order (ties
        by arm, type and message, compared by code point), entries that cannot be read
        dropped, and the same fields; a malformed error fails its flush alone."""
        twin = make_store(redis_url, prefix=redis_prefix + ":twin")
        store = make_store(redis_url, prefix=redis_prefix)
        raw = redis.Redis.from_url(redis_url)
        t = 1_765_000_000.123456
        tied = ["Z", "a", "é", "\udcff", "\U0001f600", "a/b", 'q"uote', "\\", "z", "Zz"]
        newer = [RecentError("treatment", "E", f"newer {i}{tied[i % 5]}", t + i / 10,
                             t + 100 + i / 7, i + 1) for i in range(12)]  # fmt: skip
        # 20 errors seen at the same times: the 8 of them kept are the first by code point.
        ties = [RecentError(arm, "E", m, t, t + 1, 1) for m in tied for arm in ("treatment", "c")]
        again = RecentError("treatment", "E", "newer 3\udcff", 0.1 + 0.2, 5.0, 2**53 - 2)
        later = RecentError("treatment", "E", "newer 3\udcff", 7.0, 8.0, 5)  # 0.1 + 0.2 stays
        latest = RecentError("treatment", "E", "newer 11a", t, t + 10**6, 1)
        rounds = [newer + ties, [again, RecentError("c", "E", "é", t + 50, t + 60, 2)],
                  [later, latest]]  # fmt: skip
        for i, errors in enumerate(rounds):
            if i == 1:  # written behind the stores' backs: unreadable, and too long (cut)
                for prefix in (redis_prefix, redis_prefix + ":twin"):
                    long = {"arm": "c", "type": "T", "message": "m\u00e9" * 150,
                            "first_seen": t + 90, "last_seen": t + 200, "count": 1}  # fmt: skip
                    raw.hset(f"{prefix}:{{r}}:errors",
                             mapping={"junk": "not json", "long": json.dumps(long)})  # fmt: skip
            twin.add_errors("r", errors)
            flush = flush_of("r", [], errors=errors) if i != 1 else Flush("r", None, errors=errors)
            assert not isinstance(store.flush_many([flush])[0], Exception)
            assert store.read_errors("r") == twin.read_errors("r")
            ours, theirs = (raw.hgetall(f"{p}:{{r}}:errors")
                            for p in (redis_prefix, redis_prefix + ":twin"))  # fmt: skip
            assert {f: json.loads(v) for f, v in ours.items()} == {
                f: json.loads(v) for f, v in theirs.items()}  # fmt: skip
        kept = store.read_errors("r")
        assert len(kept) == 20
        assert kept[0] == RecentError("treatment", "E", "newer 11a", t, t + 10**6, 13)
        merged = RecentError("treatment", "E", again.message, 0.1 + 0.2, t + 100 + 3 / 7, 2**53)
        assert merged in kept  # the stored 0.1 + 0.2 kept exactly, the count at its cap
        bad = RecentError("treatment", "E", "m", math.nan, 1.0, 1)
        answers = store.flush_many([flush_of("s", ["x"], errors=[bad]), flush_of("u", ["x"])])
        assert isinstance(answers[0], ValueError)
        assert answers[1] == landed(1)
        assert list(raw.scan_iter(match=f"{redis_prefix}:{{s}}:*")) == []
        raw.close()

    def test_a_large_batch_is_split_and_answers_in_order(
        self, make_store: StoreFactory, redis_server: RedisServer, private: redis.Redis
    ) -> None:
        """Flushes of 7,000 digests (twice: events and distinct units) go two by two, and one of
        25,000 alone: 3 EVALSHA, each flush answered in its place."""
        store = make_store(redis_server.url, prefix=unique_prefix("split"))
        store.flush_many([flush_of("warm", ["a"])])
        sizes = [3500, 3500, 3500, 3500, 12500]
        batch = [flush_of(f"r{i}", [f"u{j}" for j in range(n)], counts={"calls": i})
                 for i, n in enumerate(sizes)]  # fmt: skip
        before = evalsha_calls(private)
        answers = store.flush_many(batch)
        assert evalsha_calls(private) - before == 3
        assert [a.added if isinstance(a, Flushed) else a for a in answers] == [
            {"errors.t@0.05#0": n} for n in sizes
        ]
        assert [a.counters["calls"] for a in answers if isinstance(a, Flushed)] == [0, 1, 2, 3, 4]

    @pytest.mark.parametrize("marker", ["a list", "text"])
    def test_a_marker_that_is_no_counter_is_noted_as_none(
        self, make_store: StoreFactory, redis_url: str, redis_prefix: str, client: redis.Redis,
        marker: str,
    ) -> None:  # fmt: skip
        """The marker read on the way is what _generation reads: None for a key of another type
        or text that is no counter, counted as store.generation_unreadable; the flushes land."""
        store = make_store(redis_url, prefix=redis_prefix)
        key = f"{redis_prefix}:generation"
        client.rpush(key, "x") if marker == "a list" else client.set(key, "12ab")
        assert store.flush_many([flush_of("r", ["a"])]) == [landed(1)]
        assert store._noted is not None
        assert store._noted[0] is None is store._generation()
        assert store.failures.count("store.generation_unreadable") == 2

    def test_unreachable_each_flush_fails_and_none_landed(
        self, make_store: StoreFactory, redis_server: RedisServer
    ) -> None:
        """With Redis down, nothing is sent: each flush answers the ConnectionError, not
        Unsure (its events may be sent again), and no marker is noted."""
        store = make_store(redis_server.url, prefix=unique_prefix("down"))
        assert store.flush_many([flush_of("r", ["a"])]) == [landed(1)]
        store._noted = None
        redis_server.stop()
        answers = store.flush_many([flush_of("r", ["b"]), flush_of("s", ["b"])])
        assert [type(answer) for answer in answers] == [redis.ConnectionError] * 2
        assert store._noted is None
