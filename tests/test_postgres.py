"""PostgresStore on a real PostgreSQL: its schema, its URL, push, fork, crashes and outages.

The contract every store keeps runs in ``test_store_contract.py``; this module tests what is
PostgreSQL's own. Each test works in a schema of its own (``postgres_schema``, dropped after
it); the outage tests stop and start a private server (``postgres_server``), never the
machine's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import structlog
from psycopg import sql

from conftest import assert_serving_while_down, plain_policy, staged_policy, wait_until
from crashing import kill_mid_flight, writer_script
from servers import PostgresServer, closing_factory, free_port, unique_schema
from stagedroll import (
    Action,
    NoStoreError,
    PostgresStore,
    RecentError,
    Rollouts,
    RolloutState,
    Status,
)
from stagedroll.cli import main
from stagedroll.stores import store_from_url
from stagedroll.stores._codec import dump_state, dump_transition
from stagedroll.stores._digest import member
from stagedroll.stores._postgres import SCHEMA_VERSION, channel_of
from test_store_contract import entry, run_processes, state

DEADLINE_S = 30.0
"""How long a test waits for something the store does in the background (generous)."""
QUIET_S = 0.3
"""How long a test listens for a notification that must not come."""
CLOSE_DEADLINE_S = 15.0
"""close() waits up to 5 s for each of its two threads, then closes its connections."""
TABLES = {"meta", "states", "history", "counts", "digests", "touched", "errors"}

StoreFactory = Callable[..., PostgresStore]


def units(n: int = 500) -> list[str]:
    return [f"user-{i}" for i in range(n)]


def with_schema(url: str, schema: str) -> str:
    return url + ("&" if "?" in url else "?") + f"schema={schema}"


@pytest.fixture(name="make_store")
def _make_store(postgres_url: str, postgres_schema: str) -> Iterator[StoreFactory]:
    """Make PostgresStores in the test's schema (by default); all are closed afterwards."""
    defaults = {"schema": postgres_schema, "timeout": 5.0, "push": False}
    with closing_factory(PostgresStore, postgres_url, **defaults) as make:
        yield make


@pytest.fixture(name="admin")
def _admin(postgres_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection of our own (autocommit), as psql or another process has."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        yield conn


def tables(conn: psycopg.Connection[Any], schema: str) -> set[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
    ).fetchall()
    return {name for (name,) in rows}


def meta(conn: psycopg.Connection[Any], schema: str, key: str) -> str | None:
    query = sql.SQL("SELECT value FROM {}.meta WHERE key = %s").format(sql.Identifier(schema))
    row = conn.execute(query, (key,)).fetchone()
    return None if row is None else str(row[0])


def schema_exists(conn: psycopg.Connection[Any], schema: str) -> bool:
    row = conn.execute("SELECT to_regnamespace(%s)", (f'"{schema}"',)).fetchone()
    return row is not None and row[0] is not None


# -- the schema -----------------------------------------------------------------------------------

VERSION_1 = """
CREATE SCHEMA {s};
CREATE TABLE {s}.meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE {s}.states (name text PRIMARY KEY, version bigint NOT NULL, state text NOT NULL);
CREATE TABLE {s}.history (id bigserial PRIMARY KEY, rollout text NOT NULL,
                          version bigint NOT NULL, entry text NOT NULL);
CREATE INDEX history_by_rollout ON {s}.history (rollout, id);
CREATE TABLE {s}.counts (rollout text, segment text, name text, value bigint NOT NULL,
                         touched double precision NOT NULL,
                         PRIMARY KEY (rollout, segment, name));
CREATE TABLE {s}.digests (rollout text, scope text, digest bigint,
                          PRIMARY KEY (rollout, scope, digest));
CREATE TABLE {s}.touched (rollout text, key text, at double precision NOT NULL,
                          PRIMARY KEY (rollout, key))
"""
"""The tables of schema version 1, written out by hand (as a store of that version left them)."""


def first_start_worker(url: str, index: int, barrier: Any, results: Any) -> None:
    """At the barrier, open the store from ``url`` (a schema not made yet) and write."""
    try:
        barrier.wait(DEADLINE_S)
        store = store_from_url(url)
        try:
            store.load("r")
            won = store.compare_and_set("r", 0, state(1, stage=index), entry(1, stage=index))
            results.put((index, won))
        finally:
            store.close()
    except BaseException as exc:  # pragma: no cover - reported to the parent
        results.put((index, f"error: {exc!r}"))


class TestSchema:
    def test_a_new_schema_gets_its_tables_and_version(
        self, make_store: StoreFactory, admin: psycopg.Connection[Any], postgres_schema: str
    ) -> None:
        """The first use creates the schema, every table, the version and the generation."""
        assert not schema_exists(admin, postgres_schema)
        store = make_store()
        assert store.load("r") is None
        assert tables(admin, postgres_schema) == TABLES
        assert meta(admin, postgres_schema, "schema_version") == str(SCHEMA_VERSION)
        assert meta(admin, postgres_schema, "generation") == "0"
        assert meta(admin, postgres_schema, "created") is None  # written with the first state
        assert store.compare_and_set("r", 0, state(1), entry(1))
        assert meta(admin, postgres_schema, "created") is not None
        assert meta(admin, postgres_schema, "rollout:r") == ""

    def test_an_older_schema_is_migrated_and_keeps_its_data(
        self, make_store: StoreFactory, admin: psycopg.Connection[Any], postgres_schema: str
    ) -> None:
        """A schema of version 1 gets the tables of the later steps; its data stay as they were."""
        s = sql.Identifier(postgres_schema)
        for statement in filter(str.strip, VERSION_1.split(";")):
            admin.execute(sql.SQL(statement).format(s=s))
        old = state(3, stage=1)
        rows = [
            ("INSERT INTO {s}.meta VALUES ('schema_version', '1'), ('generation', '3'), "
             "('rollout:r', ''), ('created', '1.0')", ()),
            ("INSERT INTO {s}.states VALUES ('r', 3, %s)", (dump_state(old),)),
            ("INSERT INTO {s}.history (rollout, version, entry) VALUES ('r', 3, %s)",
             (dump_transition(entry(3, stage=1)),)),
            ("INSERT INTO {s}.counts VALUES ('r', '1.1', 'errors.t', 5, %s)", (time.time(),)),
            ("INSERT INTO {s}.digests VALUES ('r', 'first:e', %s)", (member("unit-1"),)),
        ]  # fmt: skip
        for statement, params in rows:
            admin.execute(sql.SQL(statement).format(s=s), params)
        with structlog.testing.capture_logs() as logs:
            store = make_store()
            assert store.load("r") == old
        assert [(log["old"], log["new"]) for log in logs if log["event"] == "store.migrated"] == [
            (1, SCHEMA_VERSION)
        ]
        assert meta(admin, postgres_schema, "schema_version") == str(SCHEMA_VERSION)
        assert tables(admin, postgres_schema) == TABLES
        assert meta(admin, postgres_schema, "generation") == "3"
        assert store.history("r") == [entry(3, stage=1)]
        assert store.read_counts("r", "1.1") == {"errors.t": 5}
        assert store.add_units("r", "e", ["unit-1", "unit-2"]) == [False, True]
        store.add_errors("r", [RecentError("treatment", "E", "m", 1.0, 2.0)])
        assert [e.type for e in store.read_errors("r")] == ["E"]
        assert store.compare_and_set("r", 3, state(4, stage=1), entry(4, stage=1))
        assert meta(admin, postgres_schema, "generation") == "4"

    def test_a_later_version_is_refused(
        self, make_store: StoreFactory, admin: psycopg.Connection[Any], postgres_schema: str
    ) -> None:
        """A schema written by a later stagedroll is refused, naming both versions."""
        make_store().load("r")
        admin.execute(
            sql.SQL("UPDATE {}.meta SET value = '99' WHERE key = 'schema_version'").format(
                sql.Identifier(postgres_schema)
            )
        )
        with pytest.raises(RuntimeError, match=f"version 99; .* reads up to {SCHEMA_VERSION}"):
            make_store().load("r")

    @pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
    def test_many_processes_starting_at_once_make_one_schema(
        self, postgres_url: str, postgres_schema: str, admin: psycopg.Connection[Any]
    ) -> None:
        """6 processes open a new schema at once: one makes it, all work, one write wins."""
        url = with_schema(postgres_url, postgres_schema) + "&timeout=10"
        found = run_processes(url, 6, first_start_worker)
        assert sorted(found.values()) == [False] * 5 + [True]
        assert tables(admin, postgres_schema) == TABLES
        assert meta(admin, postgres_schema, "schema_version") == str(SCHEMA_VERSION)
        assert meta(admin, postgres_schema, "generation") == "1"


class TestNoSilentCreation:
    def test_a_missing_schema_is_refused_and_nothing_is_made(
        self, postgres_url: str, postgres_schema: str, admin: psycopg.Connection[Any]
    ) -> None:
        """create=False: no schema raises NoStoreError naming it and the URL (no password)."""
        host = postgres_url.split("@", 1)[1] if "@" in postgres_url else "127.0.0.1:5432/test"
        url = f"postgresql://postgres:hunter2@{host}"  # trust authentication: any password
        for store in (
            PostgresStore(url, schema=postgres_schema, create=False, push=False),
            store_from_url(with_schema(url, postgres_schema) + "&push=0", create=False),
        ):
            try:
                with pytest.raises(NoStoreError) as raised:
                    store.names()
                with pytest.raises(NoStoreError):
                    store.load("r")
            finally:
                store.close()
            message = str(raised.value)
            assert f"no stagedroll store in schema {postgres_schema!r}" in message
            assert "postgresql://***@" in message
            assert "hunter2" not in message
        assert not schema_exists(admin, postgres_schema)

    def test_a_schema_without_stagedroll_tables_is_left_untouched(
        self, make_store: StoreFactory, admin: psycopg.Connection[Any], postgres_schema: str
    ) -> None:
        """create=False: a schema of another application is refused, and not written to."""
        s = sql.Identifier(postgres_schema)
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(s))
        admin.execute(sql.SQL("CREATE TABLE {}.mine (a int)").format(s))
        with pytest.raises(NoStoreError, match="no stagedroll tables"):
            make_store(create=False).names()
        assert tables(admin, postgres_schema) == {"mine"}

    def test_an_existing_store_opens(self, make_store: StoreFactory) -> None:
        """create=False opens a schema that a store made."""
        assert make_store().compare_and_set("r", 0, state(1), entry(1))
        assert make_store(create=False).load("r") == state(1)

    def test_the_cli_says_no_store_and_exits_4(
        self,
        postgres_url: str,
        postgres_schema: str,
        admin: psycopg.Connection[Any],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """The command line refuses a schema that holds no store (exit 4), creating nothing."""
        url = with_schema(postgres_url, postgres_schema)
        assert main(["status", "--store", url]) == 4
        err = capsys.readouterr().err
        assert f"no stagedroll store in schema {postgres_schema!r}" in err
        assert "--create" in err
        assert not schema_exists(admin, postgres_schema)


# -- the URL ------------------------------------------------------------------------------------


class TestUrl:
    def test_options_are_stagedrolls_and_the_rest_libpqs(self) -> None:
        """stagedroll's options configure the store; other arguments stay in the URL."""
        store = store_from_url(
            "postgresql://app@db.internal:5433/orders?schema=shop&refresh_interval=0.5&timeout=3"
            "&max_history=7&ttl=60&push=0&sslmode=prefer&application_name=orders"
        )
        try:
            assert isinstance(store, PostgresStore)
            assert (store.schema, store.refresh_interval, store.push) == ("shop", 0.5, False)
            assert store.url == (
                "postgresql://app@db.internal:5433/orders?sslmode=prefer&application_name=orders"
            )
            assert store.channel == "stagedroll.shop"
        finally:
            store.close()  # it never connected
        default = store_from_url("postgres://127.0.0.1/test")
        try:
            assert isinstance(default, PostgresStore)
            assert (default.schema, default.push, default.refresh_interval) == (
                "stagedroll",
                True,
                1.0,
            )
        finally:
            default.close()

    @pytest.mark.parametrize(
        ("query", "match"),
        [
            ("prefix=x", "unknown option 'prefix'"),
            ("mode=600", "unknown option 'mode'"),
            ("push=maybe", "push must be"),
            ("timeout=soon", "timeout must be float"),
            ("schema=1st", "schema must be an identifier"),
            ("schema=pg_mine", "PostgreSQL's"),
        ],
    )
    def test_a_bad_option_is_refused(self, query: str, match: str) -> None:
        """A stagedroll option the store does not take, or a malformed one, is a ValueError."""
        with pytest.raises(ValueError, match=match):
            store_from_url(f"postgresql://app:hunter2@db.internal/orders?{query}")

    def test_libpq_arguments_reach_the_server(
        self, make_store: StoreFactory, postgres_url: str, admin: psycopg.Connection[Any]
    ) -> None:
        """A query argument that is not stagedroll's is libpq's (here application_name)."""
        name = unique_schema("app")
        store = make_store(postgres_url + ("&" if "?" in postgres_url else "?") +
                           f"application_name={name}")  # fmt: skip
        store.load("r")
        query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        assert admin.execute(query, (name,)).fetchone() == (1,)

    @pytest.mark.parametrize(
        "url",
        [
            "postgresql://app:hunter2@127.0.0.1:{port}/orders",
            "postgresql://app@127.0.0.1:{port}/orders?password=hunter2",
            "postgresql://app:hun/ter2@127.0.0.1:{port}/orders",  # unencoded: libpq misreads
            "postgresql://app:hun@ter2@127.0.0.1:{port}/orders",
            "postgresql://app:hun%2Fter2@127.0.0.1:{port}/orders",
        ],
    )
    def test_credentials_never_show(self, url: str) -> None:
        """Neither repr, nor the error of a failed connection, nor its log shows the password."""
        url = url.format(port=free_port())  # nothing listens there
        store = PostgresStore(url, timeout=1, push=False)
        try:
            assert "hunter2" not in repr(store)
            assert "ter2" not in repr(store)
            assert "127.0.0.1" in repr(store)
            with structlog.testing.capture_logs() as logs:
                with pytest.raises(psycopg.OperationalError) as raised:
                    store.load("r")
                Rollouts(staged_policy(), store=store)  # logs store.load_failed
            shown = str(raised.value) + repr(logs)
            assert "ter2" not in shown
            assert raised.value.__context__ is None
            assert raised.value.__cause__ is None
            assert "***" in shown
        finally:
            store.close()

    def test_an_ambiguous_password_says_what_to_encode(self) -> None:
        """A password that libpq would read otherwise is refused before libpq sees it."""
        store = PostgresStore("postgresql://app:a/b?c@127.0.0.1/orders", push=False)
        try:
            with pytest.raises(psycopg.OperationalError, match="percent-encode"):
                store.load("r")
        finally:
            store.close()

    def test_an_at_sign_in_a_query_argument_must_be_encoded(
        self, make_store: StoreFactory, postgres_url: str, admin: psycopg.Connection[Any]
    ) -> None:
        """An '@' in a libpq argument could end a password: it is refused, the error naming
        its encoding (%40); encoded, the same URL connects and libpq passes on the '@'."""
        name = unique_schema("app")
        url = postgres_url + ("&" if "?" in postgres_url else "?") + f"application_name={name}"
        refused = make_store(url + "@corp")
        with pytest.raises(psycopg.OperationalError, match="%40"):
            refused.names()
        store = make_store(url + "%40corp")
        assert store.names() == []
        query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        assert admin.execute(query, (f"{name}@corp",)).fetchone() == (1,)

    def test_missing_psycopg_names_the_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without psycopg, constructing a PostgresStore says which extra to install."""
        monkeypatch.setitem(sys.modules, "psycopg", None)
        with pytest.raises(ImportError, match=r"pip install 'stagedroll\[postgres\]'"):
            PostgresStore()

    @pytest.mark.parametrize("schema", ["", "1st", "a-b", "a b", 'x"; DROP', "a" * 64, "pg_x"])
    def test_a_schema_must_be_an_identifier(self, schema: str) -> None:
        """A schema name that is not a plain identifier (or is PostgreSQL's) is refused."""
        with pytest.raises(ValueError, match="schema"):
            PostgresStore(schema=schema)

    def test_the_channel_is_named_after_the_schema(self, admin: psycopg.Connection[Any]) -> None:
        """stagedroll.{schema}; past 63 bytes, the first 16 hex digits of its MD5 instead."""
        assert channel_of("shop") == "stagedroll.shop"
        long = "s" * 60
        hashed = admin.execute("SELECT left(md5(%s), 16)", (long,)).fetchone()
        assert hashed is not None
        assert channel_of(long) == f"stagedroll.{hashed[0]}"
        assert hashed[0] == hashlib.md5(long.encode()).hexdigest()[:16]


# -- generation and NOTIFY ----------------------------------------------------------------------


class TestGeneration:
    def test_each_write_of_a_state_raises_it(self, make_store: StoreFactory) -> None:
        """Each compare-and-set raises the generation by one; a refused one, or counts, do not."""
        store = make_store()
        assert store._generation() == 0
        assert store.compare_and_set("r", 0, state(1), entry(1))
        assert store._generation() == 1
        assert not store.compare_and_set("r", 0, state(1), entry(1))
        assert not store.compare_and_set("r", 5, state(6), entry(6))
        assert store._generation() == 1
        store.add_counts("r", "1.0", {"calls": 1})
        store.add_units("r", "e", ["u"])
        store.add_errors("r", [RecentError("treatment", "E", "m", 1.0, 1.0)])
        assert store._generation() == 1
        assert store.compare_and_set("q", 0, state(1), entry(1))
        assert store._generation() == 2

    def test_a_refresh_reads_no_state_while_it_stands(
        self, make_store: StoreFactory, admin: psycopg.Connection[Any], postgres_schema: str
    ) -> None:
        """A state changed behind the store's back, generation kept, is read at a full read."""
        writer, reader = make_store(), make_store(refresh_interval=3600)
        heard: list[RolloutState] = []
        reader.watch(lambda name, new: heard.append(new))
        assert writer.compare_and_set("r", 0, state(1), entry(1))
        assert reader.load("r") == state(1)
        assert reader.refresh()
        admin.execute(
            sql.SQL("UPDATE {}.states SET version = 2, state = %s").format(
                sql.Identifier(postgres_schema)
            ),
            (dump_state(state(2)),),
        )
        assert reader.refresh()
        assert heard == []  # the generation stood: no state was read
        assert writer.compare_and_set("r", 2, state(3), entry(3))
        assert reader.refresh()
        assert heard == [state(3)]


class TestNotify:
    def test_a_commit_notifies_another_store_object(
        self, make_store: StoreFactory, admin: psycopg.Connection[Any]
    ) -> None:
        """A compare-and-set sends the rollout's name on the channel; _listen hears it."""
        writer, listener = make_store(), make_store()
        admin.execute(sql.SQL("LISTEN {}").format(sql.Identifier(writer.channel)))
        assert listener._listen(DEADLINE_S) is False  # connected: nothing was missed yet
        assert listener._listen(QUIET_S) is False
        assert writer.compare_and_set("r", 0, state(1), entry(1))
        assert listener._listen(DEADLINE_S) is True
        [heard] = admin.notifies(timeout=DEADLINE_S, stop_after=1)
        assert (heard.channel, heard.payload) == (writer.channel, "r")
        assert not writer.compare_and_set("r", 0, state(1), entry(1))
        assert listener._listen(QUIET_S) is False  # a refused write sends nothing

    def test_its_own_write_is_no_news_to_a_store(self, make_store: StoreFactory) -> None:
        """A store's listener skips what its own command connection sent (the backend's pid):
        its own transition does not wake its refresh; another object's does."""
        store, other = make_store(), make_store()
        assert store._listen(DEADLINE_S) is False  # connected
        assert store.compare_and_set("r", 0, state(1), entry(1))
        assert store._listen(QUIET_S) is False  # its own
        assert other.compare_and_set("r", 1, state(2), entry(2))
        assert store._listen(DEADLINE_S) is True

    def test_only_at_the_commit_never_for_a_rollback(
        self,
        make_store: StoreFactory,
        postgres_url: str,
        postgres_schema: str,
        admin: psycopg.Connection[Any],
    ) -> None:
        """A write held before its commit has notified no one; rolled back, it never does."""
        listener = make_store()
        listener.load("r")
        assert listener._listen(DEADLINE_S) is False  # connected
        lock = sql.SQL("SELECT 1 FROM {}.meta WHERE key = 'generation' FOR UPDATE").format(
            sql.Identifier(postgres_schema)
        )
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        for commits, expected in ((True, 0), (False, 1)):
            # Another session holds the generation's row: the write waits there, after its
            # state, its history entry and its NOTIFY.
            writer = make_store(timeout=DEADLINE_S if commits else 0.5)
            writer.load("r")
            with psycopg.connect(postgres_url) as blocker:
                blocker.execute(lock)
                done: list[object] = []
                thread = threading.Thread(target=_write, args=(writer, expected, done))
                thread.start()
                if commits:
                    wait_until(lambda: admin.execute(waiting).fetchone() == (1,), "waiting")
                    assert listener._listen(QUIET_S) is False  # not committed yet
                else:  # the write gives up waiting for the lock (0.5 s), and rolls back
                    thread.join(DEADLINE_S)
                blocker.rollback()
            thread.join(DEADLINE_S)
            assert not thread.is_alive()
            if commits:
                assert done == [True]
                assert listener._listen(DEADLINE_S) is True
            else:
                assert len(done) == 1
                assert isinstance(done[0], psycopg.OperationalError)  # lock or statement timeout
                assert listener._listen(QUIET_S) is False
        assert listener.load("r") == state(1)

    def test_push_brings_a_kill_without_polling(self, make_store: StoreFactory) -> None:
        """With push, a kill made elsewhere arrives though the refresh interval is an hour."""
        store = make_store(push=True, refresh_interval=3600)
        service = Rollouts(staged_policy(), store=store)
        operator = Rollouts(staged_policy(), store=make_store())
        operator.kill("co", reason="incident", actor="alice")
        wait_until(lambda: service["co"].state.status is Status.KILLED, "the kill pushed")
        assert not any(service.enabled("co", unit) for unit in units())
        assert store.failures.count("store.listen_failed") == 0

    def test_close_ends_a_wait_under_way(self, make_store: StoreFactory) -> None:
        """close() ends the listener's wait on the server: its thread is gone afterwards."""
        store = make_store(push=True, refresh_interval=3600)
        store.load("r")
        wait_until(lambda: store._listening_conn is not None, "listening")
        thread = store._listener._thread
        assert thread is not None
        assert thread.is_alive()
        store.close()
        assert not thread.is_alive()
        assert store._listening_conn is None


def _write(store: PostgresStore, expected: int, done: list[object]) -> None:
    """Write over version ``expected``; append what it returned, or raised, to ``done``."""
    try:
        done.append(store.compare_and_set("r", expected, state(expected + 1), entry(expected + 1)))
    except Exception as exc:  # reported to the test
        done.append(exc)


# -- restores, expiry -----------------------------------------------------------------------------


class TestRestore:
    def test_a_deleted_state_is_written_back(
        self, make_store: StoreFactory, admin: psycopg.Connection[Any], postgres_schema: str
    ) -> None:
        """A state row deleted by hand is restored by the process that knew it, atomically."""
        store = make_store(refresh_interval=3600)
        assert store.compare_and_set("r", 0, state(1), entry(1))
        assert store.compare_and_set("r", 1, state(2, stage=1), entry(2, stage=1))
        admin.execute(sql.SQL("DELETE FROM {}.states").format(sql.Identifier(postgres_schema)))
        assert store.refresh()
        assert store.failures.count("store.state_lost") == 1
        assert make_store().load("r") == state(2, stage=1)
        assert [t.action for t in store.history("r")] == [Action.START, Action.ADVANCE,
                                                           Action.ADVANCE]  # fmt: skip
        assert store._generation() == 3


class TestDroppedSchema:
    def test_a_dropped_schema_is_made_again_and_restored(
        self, make_store: StoreFactory, admin: psycopg.Connection[Any], postgres_schema: str
    ) -> None:
        """A schema dropped under a running store: one refresh fails, the next makes the
        schema again and writes back what the process knew."""
        store = make_store(refresh_interval=3600)
        assert store.compare_and_set("r", 0, state(1), entry(1))
        assert store.compare_and_set("r", 1, state(2, stage=1), entry(2, stage=1))
        assert store.refresh()
        admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(postgres_schema)))
        assert store.refresh() is False
        assert store.failures.count("store.refresh_failed") == 1
        assert store.refresh() is True
        assert store.failures.count("store.state_lost") == 1
        assert make_store().load("r") == state(2, stage=1)

    def test_without_create_it_stays_refused(
        self, make_store: StoreFactory, admin: psycopg.Connection[Any], postgres_schema: str
    ) -> None:
        """create=False: a schema dropped under the store is not made again; refreshes fail."""
        assert make_store().compare_and_set("r", 0, state(1), entry(1))
        store = make_store(create=False, refresh_interval=3600)
        assert store.load("r") == state(1)
        admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(postgres_schema)))
        assert store.refresh() is False
        assert store.refresh() is False
        with pytest.raises(NoStoreError):
            store.load("r")
        assert not schema_exists(admin, postgres_schema)


class TestExpiry:
    def test_old_counters_units_and_errors_go_recent_ones_stay(
        self, make_store: StoreFactory
    ) -> None:
        """Whatever was not written for ttl seconds is deleted; what was, stays."""
        store = make_store(ttl=3600)
        store.add_counts("r", "old", {"calls": 1})
        store.add_units("r", "old", ["a", "b"])
        store.count_distinct("r", "old", ["a"])
        store.add_errors("r", [RecentError("treatment", "E", "m", 1.0, 1.0)])
        assert store.expire(now=time.time() + 60) == 0
        deleted = store.expire(now=time.time() + 7200)
        assert deleted == 1 + 2 + 1 + 1 + 3  # counters, units, distinct, error, touched rows
        assert store.read_counts("r", "old") == {}
        assert store.add_units("r", "old", ["a"]) == [True]
        assert store.count_distinct("r", "old", []) == 0
        assert store.read_errors("r") == []

    def test_writers_of_a_unit_set_do_not_take_turns(
        self, make_store: StoreFactory, admin: psycopg.Connection[Any], postgres_schema: str
    ) -> None:
        """A unit set's writers never wait on each other's ``touched`` row: a transaction
        holding that row (another process's flush) does not block a flush of the same set,
        which would otherwise wait for it and fail at its lock timeout."""
        store = make_store(timeout=1.0)
        assert store.add_units("r", "1/errors", ["a"]) == [True]  # touched now
        with admin.transaction():
            admin.execute(
                sql.SQL("UPDATE {}.touched SET at = at WHERE rollout = 'r'").format(
                    sql.Identifier(postgres_schema)
                )
            )  # the row is locked until this transaction ends
            assert store.add_units("r", "1/errors", ["a", "b"]) == [False, True]

    def test_a_set_written_after_its_expiry_is_touched_again(
        self, make_store: StoreFactory
    ) -> None:
        """A set expired and written again at once still gets its ``touched`` row (so it
        expires in its turn), even when the writer touched it moments before."""
        store = make_store(ttl=3600)
        store.add_units("r", "s", ["a"])
        assert store.expire(now=time.time() + 7200) == 2  # the digest and its touched row
        store.add_units("r", "s", ["b"])  # touched here a moment ago: not due, yet missing
        assert store.expire(now=time.time() + 7200) == 2


# -- fork -----------------------------------------------------------------------------------------


class TestFork:
    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
    @pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
    def test_a_child_uses_connections_of_its_own(self, make_store: StoreFactory) -> None:
        """A forked child makes its own connections; the parent's sessions go on unharmed."""
        store = make_store(push=True, refresh_interval=3600)
        assert store.load("r") is None
        wait_until(lambda: store._listening_conn is not None, "listening")
        sessions = backend_pids(store)
        assert None not in sessions
        pid = os.fork()
        if pid == 0:  # the child: none of the parent's sessions, and new ones that work
            code = 1
            try:
                if backend_pids(store)[0] is None and store.load("r") is None:
                    deadline = time.monotonic() + DEADLINE_S  # its listener, started again
                    while backend_pids(store)[1] is None and time.monotonic() < deadline:
                        time.sleep(0.01)
                    own = backend_pids(store)
                    code = 0 if None not in own and not set(own) & set(sessions) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert store.load("r") is None  # the parent's session still answers
        heard: list[RolloutState] = []
        store.watch(lambda name, new: heard.append(new))
        assert make_store().compare_and_set("r", 0, state(1), entry(1))
        wait_until(lambda: heard == [state(1)], "pushed to the parent's listener")
        assert backend_pids(store) == sessions

    def test_the_reset_after_fork_keeps_what_this_process_made(
        self, make_store: StoreFactory
    ) -> None:
        """In a child, the listener may start (and connect) before the store's own reset runs:
        that reset drops only connections another process made, so push goes on."""
        store = make_store(push=True, refresh_interval=3600)
        store.load("r")
        wait_until(lambda: store._listening_conn is not None, "listening")
        sessions = backend_pids(store)
        store._after_fork()  # as _forksafe may call it after the listener started again
        assert backend_pids(store) == sessions
        heard: list[RolloutState] = []
        store.watch(lambda name, new: heard.append(new))
        assert make_store().compare_and_set("r", 0, state(1), entry(1))
        wait_until(lambda: heard == [state(1)], "pushed")


def backend_pids(store: PostgresStore) -> tuple[int | None, int | None]:
    """The server's process ids of the store's command and listening sessions (None: none)."""
    command, listening = store._conn, store._listening_conn
    return (
        None if command is None else command.info.backend_pid,
        None if listening is None else listening.info.backend_pid,
    )


# -- crashes --------------------------------------------------------------------------------------

CHILD = writer_script(
    """
    import sys
    from stagedroll import PostgresStore, Rollouts, TransitionError

    store = PostgresStore(sys.argv[1], schema=sys.argv[2], max_history={max_history},
                          timeout=10, refresh_interval=0.05)
    """
)


class TestCrashSafety:
    def test_sigkill_at_random_moments_leaves_a_consistent_store(
        self, postgres_url: str, postgres_schema: str, make_store: StoreFactory
    ) -> None:
        """10 writers killed mid-flight: each write is whole, and the next one succeeds."""
        max_history = 8
        script = CHILD.format(max_history=max_history, policy=plain_policy(50, 100, name="x"))
        reader = make_store(refresh_interval=3600)
        rng = random.Random(20240601)
        for _ in range(10):
            command = [sys.executable, "-c", script, postgres_url, postgres_schema]
            kill_mid_flight(command, lambda: self._version(reader), rng, deadline_s=DEADLINE_S)
            self._check(make_store(max_history=max_history, refresh_interval=3600), max_history)

    @staticmethod
    def _version(store: PostgresStore) -> int:
        """The stored version of "x" (0 before the child made the schema)."""
        try:
            found = store.load("x")
        except (NoStoreError, psycopg.Error):
            return 0
        return 0 if found is None else found.version

    @staticmethod
    def _check(store: PostgresStore, max_history: int) -> None:
        found = store.load("x")
        assert found is not None
        history = store.history("x")
        versions = [t.version for t in history]
        assert versions == list(range(found.version, found.version - len(versions), -1))
        assert len(versions) == min(found.version, max_history)
        assert history[0].to_status is found.status
        assert store._generation() == found.version  # raised with each write, never apart
        assert store.read_counts("x", "s")["calls"] > 0
        following = dataclasses.replace(found, version=found.version + 1)
        move = dataclasses.replace(history[0], version=found.version + 1, actor="parent")
        assert store.compare_and_set("x", found.version, following, move)
        assert store.load("x") == following
        store.close()


# -- outages (a private server) -----------------------------------------------------------------


def cli_kill(url: str) -> subprocess.CompletedProcess[str]:
    """``stagedroll kill co`` in a process of its own, as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGEDROLL_")}
    return subprocess.run(
        [sys.executable, "-m", "stagedroll", "kill", "co", "--reason", "incident",
         "--actor", "bob", "--store", url],
        env=env, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip


class TestOutage:
    def test_down_at_start_up(
        self, make_store: StoreFactory, postgres_server: PostgresServer
    ) -> None:
        """Down at start-up: the rollout serves 0 %; once the server is up, it starts by itself."""
        postgres_server.stop()
        store = make_store(postgres_server.url, refresh_interval=0.05, timeout=1)
        rollouts = Rollouts(staged_policy(), store=store)
        assert not any(rollouts.enabled("co", unit) for unit in units())
        assert rollouts.failures.count("store.load_failed") > 0
        postgres_server.start()
        wait_until(lambda: rollouts["co"].state.version >= 1, "started", store=store)
        assert [t.action for t in rollouts.history("co")] == [Action.START]

    def test_the_server_going_away_and_coming_back(
        self, make_store: StoreFactory, postgres_server: PostgresServer
    ) -> None:
        """Stopped: decisions keep the last state and nothing raises into callers but
        transitions. Started again: the store recovers without a restart, takes in a kill made
        then by the command line, and its listener listens again."""
        url = postgres_server.url
        store = make_store(url, refresh_interval=0.05, timeout=1, push=True)
        probe = make_store(url, timeout=1)  # its _listen, called by hand
        rollouts = Rollouts(staged_policy(), store=store)
        rollouts.advance("co", actor="alice")
        before = [rollouts.enabled("co", unit) for unit in units()]
        assert 0 < sum(before) < len(before)

        @rollouts.guard("co", fallback=lambda unit: "old", unit=lambda unit: unit)
        def new_path(unit: str) -> str:
            return "new"

        assert probe._listen(DEADLINE_S) is False  # connected (the first time: nothing missed)
        wait_until(lambda: store._listening_conn is not None, "listening")
        postgres_server.stop()
        failed = store.failures.count("store.refresh_failed")
        assert_serving_while_down(rollouts, "co", units(), before, new_path)
        wait_until(lambda: store.failures.count("store.refresh_failed") > failed, "refresh failed")
        assert store.down
        assert [rollouts.enabled("co", unit) for unit in units()] == before
        with pytest.raises(psycopg.OperationalError):
            probe._listen(DEADLINE_S)  # the session ended with the server
        wait_until(lambda: store.failures.count("store.listen_failed") > 0, "listener failed")

        postgres_server.start()  # the same data
        wait_until(lambda: not store.down, "recovered", store=store)
        assert probe._listen(DEADLINE_S) is True  # connected again: what came meanwhile is lost
        killed = cli_kill(with_schema(url, store.schema))
        assert killed.returncode == 0, killed.stderr
        assert probe._listen(DEADLINE_S) is True  # the kill's NOTIFY
        wait_until(lambda: rollouts["co"].state.status is Status.KILLED, "the kill arrived")
        assert not any(rollouts.enabled("co", unit) for unit in units())
        assert rollouts["co"].state.actor == "bob"
        with psycopg.connect(url, autocommit=True) as conn:
            query = (
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'stagedroll' "
                "AND query = %s"
            )
            listen = f'LISTEN "{store.channel}"'
            wait_until(
                lambda: conn.execute(query, (listen,)).fetchone() == (2,),  # store and probe
                "the store's listener listening again",
            )

    def test_close_returns_while_the_server_is_paused(
        self, make_store: StoreFactory, postgres_server: PostgresServer
    ) -> None:
        """close() returns (within seconds) while a refresh waits on a server that neither
        answers nor drops the connection (its backend stopped: the kernel still acknowledges)."""
        store = make_store(postgres_server.url, refresh_interval=3600, timeout=1.0)
        assert store.load("r") is None
        session = store._conn
        assert session is not None
        backend = session.info.backend_pid
        os.kill(backend, signal.SIGSTOP)
        try:
            refresher = threading.Thread(target=store.refresh, daemon=True)
            refresher.start()
            wait_until(store._lock.locked, "the refresh waiting on the server")
            closer = threading.Thread(target=store.close, daemon=True)
            closer.start()
            closer.join(CLOSE_DEADLINE_S)
            assert not closer.is_alive(), "close() still waits on the paused server"
        finally:
            os.kill(backend, signal.SIGCONT)
