"""Push, the generation check, and how they fail: SQLite (``push=True``), Redis, PostgreSQL.

Each law common to the three shared stores runs on each of them, on the real backends: a
SQLite file under ``tmp_path``, the machine's (or a private) Redis under a key prefix of the
test's own, the machine's (or a private) PostgreSQL in a schema of the test's own. The
outage tests stop and start private servers (``redis_server``, ``postgres_server``), and the
tests that read Redis's command counters, or change its users, a private one too.

A store made here refreshes every hour unless told otherwise (``HOUR``), so never by itself
within a test: whatever reaches it came by push (or by an explicit ``refresh()``). Deadlines are
"eventually" (generous, for noisy machines), never a measure of speed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from psycopg import sql

from conftest import staged_policy, wait_until
from servers import PostgresServer, RedisServer, unique_prefix
from stagedroll import (
    PostgresStore,
    RedisStore,
    Rollouts,
    RolloutState,
    SQLiteStore,
    Status,
)
from stagedroll.stores._codec import dump_state
from test_store_contract import entry, state

Shared = SQLiteStore | RedisStore | PostgresStore

DEADLINE_S = 30.0
"""How long a test waits for what the stores do in the background (generous: noisy CI)."""
QUIET_S = 0.5
"""How long a test watches for something that must not happen (a wake, a refresh)."""
OUTAGE_DEADLINE_S = 10.0
"""After an outage: well below the 30 s back-off that a refresh failing meanwhile would add."""
HOUR = 3600.0
"""A refresh interval no test outlives: what reaches such a store came by push."""


def killed(rollouts: Rollouts) -> bool:
    return rollouts["co"].state.status is Status.KILLED


# -- the backends ----------------------------------------------------------------------------------


def redis_subscribers(url: str, channel: str) -> int:
    """How many connections the Redis at ``url`` has subscribed to ``channel`` (``NUMSUB``)."""
    client = redis.Redis.from_url(url)
    try:
        [(_, count)] = client.pubsub_numsub(channel)
        return int(count)
    finally:
        client.close()


@dataclass
class Backend:
    """Makes store objects of one kind on the same data (one file, prefix or schema)."""

    kind: str
    build: Callable[..., Shared]
    url: str = ""
    """The server's URL (Redis, PostgreSQL); empty for SQLite."""
    prefix: str = ""
    """Redis: the key prefix of the test. PostgreSQL: the schema."""
    made: list[Shared] = field(default_factory=list)

    def make(self, **options: Any) -> Shared:
        """A new store object, with push and an hour between refreshes unless told otherwise;
        closed after the test."""
        store = self.build(**options)
        self.made.append(store)
        return store

    def listening(self, store: Shared, subscribers: int = 1) -> bool:
        """Whether ``store``'s listener, in this process, hears what is sent from now on.

        SQLite: it has looked at the file's generation once. Redis: it subscribed, and the
        server counts ``subscribers`` on the channel. PostgreSQL: its ``LISTEN`` returned.
        """
        if isinstance(store, SQLiteStore):
            return store._polled is not None
        if isinstance(store, RedisStore):
            channel = f"{store.prefix}:changes"
            return store._pubsub is not None and redis_subscribers(self.url, channel) >= subscribers
        return store._listening_conn is not None and store._listening_pid == os.getpid()

    # What an operator, a script or a bug does to the data behind the stores' backs.

    def write_raw(self, rollout: str, text: str, version: int) -> None:
        """Overwrite a stored state (its text and compared version), raising no generation."""
        if self.kind == "redis":
            client = redis.Redis.from_url(self.url)
            try:
                key = f"{self.prefix}:{{{rollout}}}:state"
                client.hset(key, mapping={"s": text, "v": str(version)})
            finally:
                client.close()
            return
        assert self.kind == "postgres"
        with psycopg.connect(self.url, autocommit=True) as conn:
            query = sql.SQL("UPDATE {}.states SET version = %s, state = %s WHERE name = %s")
            conn.execute(query.format(sql.Identifier(self.prefix)), (version, text, rollout))

    def generation(self) -> str | None:
        """The store's marker of change as stored (``None``: absent)."""
        if self.kind == "redis":
            client = redis.Redis.from_url(self.url, decode_responses=True)
            try:
                value = client.get(f"{self.prefix}:generation")
                return None if value is None else str(value)
            finally:
                client.close()
        assert self.kind == "postgres"
        with psycopg.connect(self.url, autocommit=True) as conn:
            query = sql.SQL("SELECT value FROM {}.meta WHERE key = 'generation'")
            row = conn.execute(query.format(sql.Identifier(self.prefix))).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        for store in self.made:
            store.close()


def pushing(kind: Callable[..., Shared], *args: Any, **defaults: Any) -> Callable[..., Shared]:
    """Build stores of ``kind`` with push on and an hour between refreshes, and ``defaults``;
    the keywords of a call win."""
    return functools.partial(kind, *args, push=True, refresh_interval=HOUR, **defaults)


@pytest.fixture(name="backend", params=["sqlite", "redis", "postgres"])
def _backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A shared store of each kind; the servers are asked for only by the tests that use them."""
    backend: Backend
    if request.param == "sqlite":
        backend = Backend("sqlite", pushing(SQLiteStore, tmp_path / "store.db", timeout=10.0))
    elif request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        prefix: str = request.getfixturevalue("redis_prefix")
        build = pushing(RedisStore, url, prefix=prefix, timeout=5.0)
        backend = Backend("redis", build, url, prefix)
    else:
        url = request.getfixturevalue("postgres_url")
        schema: str = request.getfixturevalue("postgres_schema")
        build = pushing(PostgresStore, url, schema=schema, timeout=10.0)
        backend = Backend("postgres", build, url, schema)
    try:
        yield backend
    finally:
        backend.close()


MARKED = ["redis", "postgres"]
"""The stores that keep a marker of change (SQLite compares ``PRAGMA data_version``)."""


# -- 1. push brings what polling would not, yet ----------------------------------------------------


class TestPush:
    def test_a_kill_arrives_by_push_alone(self, backend: Backend) -> None:
        """With push on and an hour between refreshes, a kill made through another store
        object reaches a Rollouts: only push can have brought it."""
        store = backend.make(refresh_interval=HOUR)
        service = Rollouts(staged_policy(), store=store)
        wait_until(lambda: backend.listening(store), "listening")
        operator = Rollouts(staged_policy(), store=backend.make(push=False))
        operator.kill("co", reason="incident", actor="alice")
        wait_until(lambda: killed(service), "the kill pushed")
        assert service["co"].state == operator["co"].state
        assert store.failures.count("store.listen_failed") == 0

    def test_without_push_it_waits_for_a_refresh(self, backend: Backend) -> None:
        """With push off, a kill made elsewhere does not arrive by itself before the next
        refresh; an explicit refresh brings it."""
        store = backend.make(refresh_interval=HOUR, push=False)
        service = Rollouts(staged_policy(), store=store)
        operator = Rollouts(staged_policy(), store=backend.make(push=False))
        operator.kill("co", reason="incident", actor="alice")
        time.sleep(QUIET_S)
        assert service["co"].state.status is Status.RUNNING
        assert store._listener._thread is None  # no listener was started
        assert store.refresh()
        assert killed(service)
        assert service["co"].state == operator["co"].state


# -- 2. a store's own writes are no news to it -----------------------------------------------------


class TestOwnWrites:
    def test_its_own_transition_does_not_wake_its_refresh(self, backend: Backend) -> None:
        """A store's own transition wakes no refresh of its own (its listeners were told at
        the commit); another store object's transition does."""
        store = backend.make(refresh_interval=HOUR)
        other = backend.make(push=False)
        refreshes: list[bool] = []
        heard: list[RolloutState] = []
        store.on_refresh(lambda: refreshes.append(True))
        store.watch(lambda name, new: heard.append(new))
        assert store.load("r") is None  # refreshed, and listened for, from now on
        wait_until(lambda: backend.listening(store), "listening")
        assert store.compare_and_set("r", 0, state(1), entry(1))
        time.sleep(QUIET_S)
        assert refreshes == []
        assert heard == [state(1)]
        assert other.compare_and_set("r", 1, state(2), entry(2))
        wait_until(lambda: heard == [state(1), state(2)], "the other's transition pushed")
        assert refreshes  # it came through a refresh, which the push woke
        assert store.failures.count("store.listen_failed") == 0

    @pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
    def test_a_rolled_back_write_is_not_its_own(self, backend: Backend) -> None:
        """Only a committed write is a store's own: after one of its writes is rolled back, a
        kill committed by another process is pushed to it."""
        store = backend.make()
        assert isinstance(store, SQLiteStore)
        service = Rollouts(staged_policy(), store=store)
        wait_until(lambda: backend.listening(store), "listening")
        # Behind the stores' backs, a trigger refuses writes of rollout "victim" at their
        # last statement (as a full disk would at COMMIT): rolled back.
        with contextlib.closing(sqlite3.connect(store.path)) as raw:
            raw.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON meta WHEN NEW.key = 'created' AND "
                "EXISTS (SELECT 1 FROM rollouts WHERE name = 'victim') "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
            raw.commit()
        with pytest.raises(sqlite3.IntegrityError):
            store.compare_and_set("victim", 0, state(1), entry(1))
        with contextlib.closing(sqlite3.connect(store.path)) as raw:
            (committed,) = raw.execute(
                "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'generation'"
            ).fetchone()
        wait_until(lambda: store._polled == committed, "the listener looked since")
        operator = Rollouts(staged_policy(), store=backend.make(push=False))
        operator.kill("co", reason="incident", actor="alice")
        wait_until(lambda: killed(service), "the kill pushed")


# -- 3. notifications lost while disconnected ------------------------------------------------------


def kill_unheard(operator: Rollouts, service: Rollouts, store: RedisStore | PostgresStore) -> None:
    """Kill "co" through ``operator`` while ``store``'s listener is away, and wait until
    ``service`` reads the kill: a wake cuts the listener's back-off short (30 s:
    min(refresh_interval, 30 s)), as ``store.wake()`` does the refresh's; it is the listener
    that listens again, and the refresh that it wakes that reads the kill."""
    operator.kill("co", reason="incident", actor="alice")
    store._listener.wake()
    wait_until(lambda: killed(service), "the kill read after listening again",
               deadline_s=OUTAGE_DEADLINE_S)  # fmt: skip


@contextlib.contextmanager
def postgres_outage(
    server: PostgresServer,
) -> Iterator[tuple[PostgresStore, Rollouts, PostgresStore]]:
    """A store that listens on ``server``, its ``Rollouts`` and an operator's store (push off);
    the server stopped until the store's listener failed. The stores are closed afterwards."""
    store = PostgresStore(server.url, schema="lost", refresh_interval=HOUR, timeout=1.0)
    operator_store = PostgresStore(server.url, schema="lost", refresh_interval=HOUR, timeout=1.0,
                                   push=False)  # fmt: skip
    try:
        service = Rollouts(staged_policy(), store=store)
        wait_until(lambda: store._listening_conn is not None, "listening")
        server.stop()
        wait_until(lambda: store.failures.count("store.listen_failed") > 0, "listener failed")
        yield store, service, operator_store
    finally:
        store.close()
        operator_store.close()


class TestLostNotifications:
    """Redis and PostgreSQL; SQLite has no notification to lose (its listener reads the file)."""

    def test_redis_a_change_published_while_unsubscribed_is_read(
        self, redis_server: RedisServer
    ) -> None:
        """A kill published while the subscriber was away (the server down, then back with its
        data) is read once it subscribes again: the new subscription counts as "may have
        missed", and wakes a full read; the refresh interval is an hour."""
        url, prefix = redis_server.url, unique_prefix("lost")
        store = RedisStore(url, prefix=prefix, refresh_interval=HOUR, timeout=1.0)
        operator_store = RedisStore(url, prefix=prefix, refresh_interval=HOUR, timeout=1.0,
                                    push=False)  # fmt: skip
        admin = redis.Redis.from_url(url)
        try:
            service = Rollouts(staged_policy(), store=store)
            channel = f"{prefix}:changes"
            wait_until(lambda: redis_subscribers(url, channel) == 1, "subscribed")
            admin.save()  # a snapshot, which the server loads when it starts again
            redis_server.stop()
            wait_until(lambda: store.failures.count("store.listen_failed") > 0, "listener failed")
            redis_server.start()
            operator = Rollouts(staged_policy(), store=operator_store)
            assert operator["co"].state == service["co"].state  # back with its data
            assert redis_subscribers(url, channel) == 0  # the listener waits out its back-off
            kill_unheard(operator, service, store)  # published to no one
            assert service["co"].state == operator["co"].state
        finally:
            admin.close()
            store.close()
            operator_store.close()

    def test_postgres_a_change_notified_while_not_listening_is_read(
        self, postgres_server: PostgresServer
    ) -> None:
        """A kill notified while the listener was disconnected (the server stopped, then started
        with its data) is read once it listens again: LISTEN made again counts as "may have
        missed", and wakes a full read; the refresh interval is an hour.

        A refresh during the outage (as the refresh thread makes at a short interval) has
        dropped the command connection that ended with the server.
        """
        with postgres_outage(postgres_server) as (store, service, operator_store):
            assert store.refresh() is False  # down: the dead command connection is dropped
            postgres_server.start()
            operator = Rollouts(staged_policy(), store=operator_store)
            assert operator["co"].state == service["co"].state  # back with its data
            assert store._listening_conn is None  # the listener waits out its back-off
            kill_unheard(operator, service, store)  # notified to no one
            assert service["co"].state == operator["co"].state

    def test_postgres_a_change_notified_while_not_listening_is_read_at_once(
        self, postgres_server: PostgresServer
    ) -> None:
        """As above, with nothing touching the store during the outage: the refresh that the
        listener wakes after the outage reads the kill, without a back-off of its own."""
        with postgres_outage(postgres_server) as (store, service, operator_store):
            postgres_server.start()
            operator = Rollouts(staged_policy(), store=operator_store)
            kill_unheard(operator, service, store)  # notified to no one


# -- 4. the generation check -----------------------------------------------------------------------

IDLE_REFRESHES = 5


class TestGeneration:
    def test_redis_an_idle_refresh_sends_one_get(self, redis_server: RedisServer) -> None:
        """On a private Redis (its own counters): N refreshes with nothing changed send N GETs
        of the marker and read no state (no HMGET), for two rollouts; a change is read."""
        url, prefix = redis_server.url, unique_prefix("idle")
        store = RedisStore(url, prefix=prefix, refresh_interval=HOUR, push=False)
        writer = RedisStore(url, prefix=prefix, refresh_interval=HOUR, push=False)
        admin = redis.Redis.from_url(url)

        def calls(command: str) -> int:
            stats = admin.info("commandstats")
            return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))

        try:
            for name in ("r", "q"):
                assert writer.compare_and_set(name, 0, state(1), entry(1))
                assert store.load(name) == state(1)
            assert store.refresh()  # the first: a full read
            admin.config_resetstat()
            for _ in range(IDLE_REFRESHES):
                assert store.refresh()
            assert (calls("get"), calls("hmget")) == (IDLE_REFRESHES, 0)
            assert writer.compare_and_set("r", 1, state(2), entry(2))
            admin.config_resetstat()
            assert store.refresh()
            assert (calls("get"), calls("hmget")) == (1, 2)  # the marker moved: both read
            assert store.load("r") == state(2)
        finally:
            admin.close()
            store.close()
            writer.close()

    @pytest.mark.parametrize("backend", ["postgres"], indirect=True)
    def test_postgres_an_idle_refresh_scans_no_state(
        self, backend: Backend, admin: psycopg.Connection[Any]
    ) -> None:
        """The states table is scanned (pg_stat_user_tables: seq_scan + idx_scan) as often by
        a store that refreshed N more times with nothing changed as by one that did not.

        A session's table counters reach the view when it flushes them, at the latest when
        it ends: each store is closed, and its session seen gone, before they are read.
        """
        writer = backend.make(push=False)
        assert writer.compare_and_set("r", 0, state(1), entry(1))
        assert writer.compare_and_set("q", 0, state(1), entry(1))
        closed_and_flushed(writer, admin)

        def scans(idle: int) -> int:
            """The scans by a new store object that loads both, refreshes, then ``idle`` more."""
            before = state_scans(admin, backend.prefix)
            reader = backend.make(push=False, refresh_interval=HOUR)
            assert reader.load("r") == state(1)
            assert reader.load("q") == state(1)
            assert reader.refresh()  # the first: a full read
            for _ in range(idle):
                assert reader.refresh()
            closed_and_flushed(reader, admin)
            return state_scans(admin, backend.prefix) - before

        once = scans(0)
        assert once > 0  # the counters see the loads and the full read
        assert scans(IDLE_REFRESHES) == once  # and nothing more: the idle refreshes read none

    @pytest.mark.parametrize("backend", MARKED, indirect=True)
    def test_a_state_written_behind_its_back_is_read_at_a_full_read(self, backend: Backend) -> None:
        """A state written without raising the generation is still read: every
        FULL_READ_EVERY refresh intervals a refresh reads every state."""
        writer = backend.make(push=False)
        store = backend.make(push=False, refresh_interval=0.05)  # a full read every 3 s
        heard: list[RolloutState] = []
        refreshes: list[bool] = []
        store.watch(lambda name, new: heard.append(new))
        store.on_refresh(lambda: refreshes.append(True))
        assert writer.compare_and_set("r", 0, state(1), entry(1))
        assert store.load("r") == state(1)
        wait_until(lambda: refreshes, "the first refresh, a full read: the marker seen")
        marker = backend.generation()
        backend.write_raw("r", dump_state(state(2)), 2)
        wait_until(lambda: heard == [state(2)], "the state written behind its back")
        assert backend.generation() == marker  # nothing raised it: a full read found it

    @pytest.mark.parametrize("backend", MARKED, indirect=True)
    def test_an_unreadable_state_is_read_again_at_every_refresh(self, backend: Backend) -> None:
        """A corrupt state is read again at each refresh though the generation stands (the
        other states are not), and its repair, written by hand, is seen at the next one."""
        writer = backend.make(push=False)
        store = backend.make(push=False, refresh_interval=HOUR)
        heard: list[tuple[str, RolloutState]] = []
        store.watch(lambda name, new: heard.append((name, new)))
        assert writer.compare_and_set("r", 0, state(1), entry(1))
        assert writer.compare_and_set("q", 0, state(1), entry(1))
        assert store.load("q") == state(1)
        backend.write_raw("r", "{not json", 1)
        with pytest.raises(ValueError, match="corrupt"):
            store.load("r")
        marker = backend.generation()
        assert store.refresh()  # the first: a full read
        backend.write_raw("q", dump_state(state(2)), 2)  # behind its back: not read now
        for refreshes in range(1, IDLE_REFRESHES + 1):
            assert store.refresh()
            assert store.failures.count("store.decode_failed") == 1 + refreshes
            assert "r" in store.unreadable
        backend.write_raw("r", dump_state(state(2, stage=1)), 2)  # repaired by hand
        assert store.refresh()
        assert heard == [("r", state(2, stage=1))]  # and not q: the generation stood
        assert store.unreadable == {}
        assert backend.generation() == marker


@pytest.fixture(name="admin")
def _admin(postgres_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection of our own (autocommit), as psql has."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        yield conn


def state_scans(conn: psycopg.Connection[Any], schema: str) -> int:
    """How often the schema's states table was scanned, as the statistics say now."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables "
        "WHERE schemaname = %s AND relname = 'states'",
        (schema,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def closed_and_flushed(store: Shared, conn: psycopg.Connection[Any]) -> None:
    """Close ``store`` and wait until its server session has ended, its statistics flushed.

    A backend flushes its statistics before it leaves ``pg_stat_activity``.
    """
    assert isinstance(store, PostgresStore)
    session = store._conn
    assert session is not None
    pid = session.info.backend_pid
    store.close()
    query = "SELECT count(*) FROM pg_stat_activity WHERE pid = %s"
    wait_until(lambda: conn.execute(query, (pid,)).fetchone() == (0,), "its session gone")


# -- 5. a failed announce --------------------------------------------------------------------------


def refuse_announces(admin: redis.Redis, server: RedisServer) -> str:
    """The URL of a user ``writer`` of ``server`` who may do all but raise a counter: a store
    logged in as it writes, and its announces fail (``allow_announces`` lifts that)."""
    # Redis-py's incr sends INCRBY: both are refused (ACL SETUSER writer … -incr -incrby).
    admin.acl_setuser(
        "writer",
        enabled=True,
        passwords=["+secret"],
        keys=["*"],
        channels=["*"],
        categories=["+@all"],
        commands=["-incr", "-incrby"],
    )
    return f"redis://writer:secret@127.0.0.1:{server.port}/0"


def allow_announces(admin: redis.Redis) -> None:
    admin.acl_setuser("writer", enabled=True, commands=["+incr", "+incrby"])


@contextlib.contextmanager
def refused_writer(
    server: RedisServer,
) -> Iterator[tuple[redis.Redis, RedisStore, RedisStore, list[RolloutState]]]:
    """A writer that may not raise the generation, a reader on the same prefix, and what the
    reader heard; all closed afterwards."""
    admin = redis.Redis.from_url(server.url)
    writer_url = refuse_announces(admin, server)
    prefix = unique_prefix("announce")
    writer = RedisStore(writer_url, prefix=prefix, refresh_interval=HOUR, push=False)
    reader = RedisStore(server.url, prefix=prefix, refresh_interval=HOUR, push=False)
    heard: list[RolloutState] = []
    reader.watch(lambda name, new: heard.append(new))
    try:
        yield admin, writer, reader, heard
    finally:
        admin.close()
        writer.close()
        reader.close()


class TestFailedAnnounce:
    def test_a_refused_announce_is_counted_and_sent_again(self, redis_server: RedisServer) -> None:
        """A writer that may not raise the generation (INCRBY refused by an ACL) counts
        store.announce_failed; its write stands, unseen by idle refreshes elsewhere, and is
        announced at its next refresh once it may."""
        with refused_writer(redis_server) as (admin, writer, reader, heard):
            assert reader.load("r") is None
            assert reader.refresh()  # the first: a full read; the marker is 0 (absent)
            assert writer.compare_and_set("r", 0, state(1), entry(1))  # the write stands
            assert writer.failures.count("store.announce_failed") == 1
            assert writer.load("r") == state(1)
            assert reader.refresh()
            assert heard == []  # unannounced: the marker stood, no state was read
            allow_announces(admin)
            assert writer.refresh()  # announces what failed before
            assert writer.failures.count("store.announce_failed") == 1
            assert reader.refresh()
            assert heard == [state(1)]

    @pytest.mark.parametrize("backend", ["redis"], indirect=True)
    def test_an_unreadable_marker_is_counted_and_every_state_read(self, backend: Backend) -> None:
        """A generation key of another type (a list): each write's announce fails
        (store.announce_failed) but the write stands, and a refresh, which cannot read the
        marker (store.generation_unreadable), reads every state."""
        writer = backend.make(push=False, refresh_interval=HOUR)
        reader = backend.make(push=False, refresh_interval=HOUR)
        heard: list[RolloutState] = []
        reader.watch(lambda name, new: heard.append(new))
        assert writer.compare_and_set("r", 0, state(1), entry(1))
        assert reader.load("r") == state(1)
        assert reader.refresh()
        client = redis.Redis.from_url(backend.url)
        try:
            key = f"{backend.prefix}:generation"
            client.delete(key)
            client.rpush(key, "not", "a", "counter")
            for version in (2, 3):
                assert writer.compare_and_set("r", version - 1, state(version), entry(version))
                assert writer.failures.count("store.announce_failed") == version - 1
                assert reader.refresh()
                assert heard[-1] == state(version)
                assert reader.failures.count("store.generation_unreadable") == version - 1
            assert writer.load("r") == state(3)
            client.delete(key)  # repaired: the writer's next refresh announces again
            assert writer.refresh()
            assert client.get(key) == b"1"
            assert reader.refresh()
            assert reader.failures.count("store.generation_unreadable") == 2
        finally:
            client.close()

    def test_close_announces_what_is_left(self, redis_server: RedisServer) -> None:
        """A writer whose announce failed, then closed as the CLI closes its store after a
        kill, announces its write as it closes: a reader's next refresh reads it."""
        with refused_writer(redis_server) as (admin, writer, reader, heard):
            assert reader.load("r") is None
            assert reader.refresh()
            assert writer.compare_and_set("r", 0, state(1), entry(1))
            assert writer.failures.count("store.announce_failed") == 1
            allow_announces(admin)
            writer.close()  # the operator's command ends
            assert reader.refresh()
            assert heard == [state(1)]

    @pytest.mark.parametrize("backend", ["redis"], indirect=True)
    def test_a_marker_that_is_not_a_counter_hides_no_change(self, backend: Backend) -> None:
        """A generation key holding text that is not an integer (every announce fails): a
        change written elsewhere is read at the next refresh, not at the next full read."""
        writer = backend.make(push=False)
        reader = backend.make(push=False)
        heard: list[RolloutState] = []
        reader.watch(lambda name, new: heard.append(new))
        assert writer.compare_and_set("r", 0, state(1), entry(1))
        assert reader.load("r") == state(1)
        client = redis.Redis.from_url(backend.url)
        try:
            client.set(f"{backend.prefix}:generation", "not a counter")
            assert reader.refresh()  # a full read: the marker moved
            assert writer.compare_and_set("r", 1, state(2), entry(2))
            for _ in range(3):
                assert reader.refresh()
            assert heard == [state(2)]
        finally:
            client.close()


# -- 6. fork ---------------------------------------------------------------------------------------


class TestFork:
    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
    @pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
    def test_a_forked_child_listens_and_the_parent_still_does(self, backend: Backend) -> None:
        """In a forked child the store's listener starts again, and a kill made by another
        process reaches it by push (the refresh interval is an hour); the parent's listener
        still brings it to the parent."""
        store = backend.make(refresh_interval=HOUR)
        service = Rollouts(staged_policy(), store=store)
        wait_until(lambda: backend.listening(store), "the parent listening")
        ready, said = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: its own listener, then the kill
            code = 3  # not listening
            try:
                os.close(ready)
                deadline = time.monotonic() + DEADLINE_S
                while not backend.listening(store, subscribers=2):
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.01)
                else:
                    os.write(said, b"listening")
                    code = 2  # the kill did not arrive
                    while time.monotonic() < deadline:
                        if killed(service):
                            code = 0
                            break
                        time.sleep(0.01)
            finally:
                os._exit(code)
        os.close(said)
        try:
            assert os.read(ready, 16) == b"listening", "the child's listener did not start"
            operator = Rollouts(staged_policy(), store=backend.make(push=False))
            operator.kill("co", reason="incident", actor="alice")
        finally:
            os.close(ready)
            _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0  # 2: the kill never reached the child
        wait_until(lambda: killed(service), "the kill pushed to the parent")
        assert store.failures.count("store.listen_failed") == 0


# -- 7. close --------------------------------------------------------------------------------------


class TestClose:
    def test_close_ends_the_listener(self, backend: Backend) -> None:
        """close() ends the listener thread, which was waiting (up to an hour) for news, and
        the refresh thread."""
        store = backend.make(refresh_interval=HOUR)
        assert store.load("r") is None
        wait_until(lambda: backend.listening(store), "listening")
        listener, refresher = store._listener._thread, store._thread._thread
        assert listener is not None
        assert listener.is_alive()
        assert refresher is not None
        assert refresher.is_alive()
        store.close()
        wait_until(lambda: not listener.is_alive(), "the listener thread gone")
        assert not refresher.is_alive()
        if isinstance(store, RedisStore):  # nor any subscription left on the server
            channel = f"{store.prefix}:changes"
            wait_until(lambda: redis_subscribers(backend.url, channel) == 0, "unsubscribed")
        if isinstance(store, PostgresStore):
            assert store._listening_conn is None

    def test_the_listener_does_not_spin_while_close_waits(self, tmp_path: Path) -> None:
        """While close() waits for a refresh cycle still running (a slow callback), the
        listener thread, which runs back to back, does not loop without waiting: it stops."""

        class Counting(SQLiteStore):
            listenings = 0

            def _listening(self) -> bool:
                self.listenings += 1
                return super()._listening()

        store = Counting(tmp_path / "store.db", push=True, refresh_interval=0.05, timeout=10.0)
        closing, entered, release = threading.Event(), threading.Event(), threading.Event()

        def slow_callback() -> None:
            if closing.is_set():
                entered.set()
                release.wait(DEADLINE_S)

        store.on_refresh(slow_callback)
        assert store.load("r") is None
        wait_until(lambda: store._polled is not None, "listening")
        closing.set()
        wait_until(entered.is_set, "a refresh cycle under way")
        closer = threading.Thread(target=store.close)
        closer.start()
        try:
            wait_until(lambda: store.closed, "closing")
            time.sleep(QUIET_S)  # the listener's wait under way ends (0.05 s), then?
            before = store.listenings
            time.sleep(QUIET_S)
            spun = store.listenings - before
        finally:
            release.set()
            closer.join(DEADLINE_S)
        assert spun <= 2, f"the listener ran {spun} times in {QUIET_S} s while closing"
