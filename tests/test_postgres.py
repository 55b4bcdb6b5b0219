"""PostgresStore on a real PostgreSQL: its schema, its URL, push, fork, crashes and outages.

The contract every store keeps runs in ``test_store_contract.py``; this module tests what is
PostgreSQL's own. Each test works in a schema of its own (``postgres_schema``, dropped after
it); the outage tests stop and start a private server (``postgres_server``), never the
machine's.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
import random
import signal
import struct
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
from servers import PostgresServer, closing_factory, drop_schema, free_port, unique_schema
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
from stagedroll.stores._batch import Flush, Flushed
from stagedroll.stores._codec import dump_state, dump_transition
from stagedroll.stores._digest import member
from stagedroll.stores._postgres import _STEPS, OLDEST_READER, SCHEMA_VERSION, channel_of
from test_store_contract import entry, run_processes, state

DEADLINE_S = 30.0
"""How long a test waits for something the store does in the background (generous)."""
QUIET_S = 0.3
"""How long a test listens for a notification that must not come."""
CLOSE_DEADLINE_S = 15.0
"""close() waits up to 5 s for each of its two threads, then closes its connections."""
TABLES = {"meta", "states", "history", "counts", "digests", "touched", "errors", "sizes"}

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

    def test_a_later_version_that_older_code_cannot_use_is_refused(
        self, make_store: StoreFactory, admin: psycopg.Connection[Any], postgres_schema: str
    ) -> None:
        """A schema written by a later stagedroll that says it needs that release is
        refused, naming both versions."""
        make_store().load("r")
        update = "UPDATE {}.meta SET value = %s WHERE key = %s"
        for key, value in (("schema_version", "99"), ("oldest_reader", "99")):
            admin.execute(sql.SQL(update).format(sql.Identifier(postgres_schema)), (value, key))
        with pytest.raises(RuntimeError, match=f"version 99; .* reads up to {SCHEMA_VERSION}"):
            make_store().load("r")

    def test_a_later_version_that_older_code_can_use_is_used(
        self, make_store: StoreFactory, admin: psycopg.Connection[Any], postgres_schema: str
    ) -> None:
        """A rolling upgrade: the first new process migrated, saying that this release
        can still use the tables; this one keeps working, and migrates nothing back."""
        make_store().load("r")
        update = "UPDATE {}.meta SET value = %s WHERE key = %s"
        admin.execute(sql.SQL(update).format(sql.Identifier(postgres_schema)),
                      ("99", "schema_version"))  # fmt: skip
        assert meta(admin, postgres_schema, "oldest_reader") == str(OLDEST_READER)
        store = make_store()
        assert store.load("r") is None
        assert store.add_counts("r", "1", {"n": 1}) == {"n": 1}
        assert meta(admin, postgres_schema, "schema_version") == "99"

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

    def test_outcomes_reported_while_down_reach_it_later(
        self, make_store: StoreFactory, postgres_server: PostgresServer
    ) -> None:
        """Outcomes reported while the server is down stay queued (the exchange cannot be
        sent: nothing landed, nothing is dropped) and are pooled once it is back."""
        store = make_store(postgres_server.url, refresh_interval=0.05, timeout=1)
        policy = {"rollouts": {"co": {"stages": [{"name": "half", "percent": 50}],
                                      "health": {"min_events": 3}}}}  # fmt: skip
        rollouts = Rollouts(policy, store=store)
        started = rollouts["co"].state
        segment = f"{started.epoch}.{started.stage}"
        postgres_server.stop()
        failing = [f"user-{i}" for i in range(10)]
        for unit in failing:
            rollouts.report("co", unit, error=True, latency_s=0.01)
        failed = rollouts.failures.count("store.flush_failed")
        wait_until(lambda: rollouts.failures.count("store.flush_failed") > failed,
                   "an exchange failed", store=store)  # fmt: skip
        postgres_server.start()
        reader = make_store(postgres_server.url)

        def pooled() -> int:
            counts = reader.read_counts("co", segment)
            return sum(n for name, n in counts.items() if name.startswith("errors."))

        wait_until(lambda: pooled() == len(failing), "the queued errors pooled", store=store)
        assert rollouts.failures.count("store.outcomes_dropped") == 0

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


# -- the batched exchange -------------------------------------------------------------------------

TRICKY_TEXTS = [
    "plain",
    'a "quote" and a \\ backslash',
    "tab\tnew line\ncontrol\x01\x1f del\x7f",
    "café, Grüße, ñ",
    "an emoji 😀 and \u2028",
    "a lone \ud800 surrogate",
    "a low \udc80 alone",
    "two halves \ud83d\ude00 that JSON joins",
    "a slash / here",
    "x" * 300,  # cut to MAX_ERROR_MESSAGE
    "é" * 250,
    "😀" * 210,
]
"""Messages and types that JSON escapes, PostgreSQL cannot hold, or the caps cut."""
TRICKY_TIMES = [1_765_000_000.123456, 1e16, 1e15 + 0.5, 123456789012345.6, 5e-324, 0.1 + 0.2,
                -0.0, 0.0, 1e-5, 0.0001, 2, 1.7976931348623157e308, 1e22, 9.5e15]  # fmt: skip
"""Times whose text differs between Python's repr and PostgreSQL's float8 output."""

STORED_ERRORS = [
    # readable, in forms dump_error does not write: merged and rewritten as add_errors does
    '{"arm": "treatment", "type": "E", "message": "m", "first_seen": 1, "last_seen": 2, '
    '"count": 3}',
    '{"count":1,"last_seen":5.0,"first_seen":4.50,"message":"caf\\u00E9 \\/ x","type":"E",'
    '"arm":"control","extra":{"nested":[1,{"a":"\\"}"}]}}',
    '{"arm":"control","type":"E","message":"café 😀","first_seen":1e0,"last_seen":1E1,"count":2}',
    '{"arm":"nobody","arm":"control","type":"dup","message":"m","first_seen":1.0,'
    '"last_seen":1.0,"count":1}',
    '{"arm":"control","type":"long","message":"' + "y" * 300 + '","first_seen":1.0,'
    '"last_seen":3.0,"count":1}',
    # unreadable: dropped by the rewrite
    "not json",
    "[]",
    '{"arm":"treatment"}',
    '{"arm":"t","type":"E","message":"m","first_seen":1.0,"last_seen":2.0,"count":1.0}',
    '{"arm":"t","type":"E","message":"m","first_seen":1.0,"last_seen":2.0,"count":true}',
    '{"arm":"t","type":"E","message":"m","first_seen":1.0,"last_seen":2.0,"count":0}',
    '{"arm":"t","type":"E","message":"m","first_seen":1.0,"last_seen":2.0,"count":9007199254740993}',
    '{"arm":"","type":"E","message":"m","first_seen":1.0,"last_seen":2.0,"count":1}',
    '{"arm":"'
    + "a" * 33
    + '","type":"E","message":"m","first_seen":1.0,"last_seen":2.0,"count":1}',
    '{"arm":"t","type":"E","message":"m","first_seen":"1","last_seen":2.0,"count":1}',
    '{"arm":"t","type":null,"message":"m","first_seen":1.0,"last_seen":2.0,"count":1}',
    '{"arm":"t","type":"E","message":"m","first_seen":1e400,"last_seen":2.0,"count":1}',
]
"""Rows written behind the store's back (or by another version of stagedroll)."""


@pytest.fixture(name="twin")
def _twin(
    make_store: StoreFactory, postgres_url: str, postgres_schema: str
) -> Iterator[PostgresStore]:
    """A store in a schema of its own, sent each operation apart (dropped after the test)."""
    try:
        yield make_store(schema=postgres_schema + "_twin")
    finally:
        drop_schema(postgres_url, postgres_schema + "_twin")


def stored_entries(conn: psycopg.Connection[Any], schema: str, rollout: str) -> list[str]:
    query = sql.SQL("SELECT entry FROM {}.errors WHERE rollout = %s ORDER BY id")
    rows = conn.execute(query.format(sql.Identifier(schema)), (rollout,)).fetchall()
    return [entry for (entry,) in rows]


def tricky_errors(rng: random.Random, n: int) -> list[RecentError]:
    """``n`` errors of few distinct times (ties the arm, type and message order), some near the
    count's cap."""
    made = []
    for _ in range(n):
        first, last = rng.choice(TRICKY_TIMES), rng.choice(TRICKY_TIMES)
        count = rng.choice([1, 2, 7, 2**53 - 1, 2**53])
        made.append(RecentError(rng.choice(["treatment", "control", "é", "😀"]),
                                rng.choice(TRICKY_TEXTS[:6]), rng.choice(TRICKY_TEXTS),
                                first, last, count))  # fmt: skip
    return made


def flush_of(rollout: str, units: list[str], *, counts: dict[str, int] | None = None,
             errors: list[RecentError] | None = None) -> Flush:  # fmt: skip
    """A flush of ``units``' first errors and distinct units (in segment "1")."""
    half = len(units) // 2
    events = [("e", [("e.t", units[:half]), ("e.c", units[half:])])]
    return Flush(rollout, "1", counts or {}, events, [("u", units)], ["0"], errors or [])


def schema_at(admin: psycopg.Connection[Any], schema: str, version: int) -> sql.Identifier:
    """``schema`` made as a release of schema ``version`` made it (its first steps)."""
    s = sql.Identifier(schema)
    admin.execute(sql.SQL("CREATE SCHEMA {}").format(s))
    for step in _STEPS[:version]:
        for statement in step:
            admin.execute(sql.SQL(statement).format(s=s))
    admin.execute(sql.SQL("INSERT INTO {s}.meta VALUES ('schema_version', %s)").format(s=s),
                  (str(version),))  # fmt: skip
    return s


class TestFlushMany:
    def test_each_flush_commits_alone(
        self, make_store: StoreFactory, postgres_url: str, postgres_schema: str
    ) -> None:
        """A flush waiting on a lock holds none of the flushes before it: their counters are
        committed, and seen by others, while it waits (processes that flush the same
        rollouts do not queue behind each other's whole exchanges)."""
        store = make_store()
        store.add_counts("b", "1", {"n": 1})  # the row the other session locks
        answers: list[Any] = []
        with (
            psycopg.connect(postgres_url) as other,
            psycopg.connect(postgres_url, autocommit=True) as look,
        ):
            s = sql.Identifier(postgres_schema)
            other.execute(sql.SQL("SELECT 1 FROM {s}.counts WHERE rollout = 'b' FOR UPDATE")
                          .format(s=s))  # fmt: skip
            batch = [flush_of("a", [], counts={"n": 1}), flush_of("b", [], counts={"n": 1})]
            sender = threading.Thread(target=lambda: answers.extend(store.flush_many(batch)))
            sender.start()
            query = sql.SQL("SELECT value FROM {s}.counts WHERE rollout = 'a'").format(s=s)
            wait_until(lambda: look.execute(query).fetchone() == (1,),
                       "the first flush committed while the second waits")  # fmt: skip
            assert sender.is_alive()  # still waiting on "b"
            other.rollback()
            sender.join(10)
        assert [a.counters for a in answers] == [{"n": 1}, {"n": 2}]

    def test_a_version_2_schema_is_migrated(
        self, make_store: StoreFactory, admin: psycopg.Connection[Any], postgres_schema: str
    ) -> None:
        """A schema of version 2 (the first two steps) gets the procedure of step 3 and the
        sizes of step 4 when opened, keeps its data, and batches."""
        s = schema_at(admin, postgres_schema, 2)
        admin.execute(sql.SQL("INSERT INTO {s}.counts VALUES ('r', '1', 'e.t', 5, %s)").format(s=s),
                      (time.time(),))  # fmt: skip
        function = f'"{postgres_schema}".flush_many(jsonb,jsonb)'
        assert admin.execute("SELECT to_regprocedure(%s)", (function,)).fetchone() == (None,)
        with structlog.testing.capture_logs() as logs:
            store = make_store()
            answers = store.flush_many([flush_of("r", ["a", "b"])])
        migrated = [(log["old"], log["new"]) for log in logs if log["event"] == "store.migrated"]
        assert migrated == [(2, SCHEMA_VERSION)]
        assert meta(admin, postgres_schema, "schema_version") == str(SCHEMA_VERSION)
        assert admin.execute("SELECT to_regprocedure(%s)", (function,)).fetchone() != (None,)
        assert answers == [Flushed({"e.t": 6, "e.c": 1}, {"e.t": 1, "e.c": 1}, [2], [{}])]

    def test_a_version_3_schema_gets_the_sizes_of_its_sets(
        self, make_store: StoreFactory, admin: psycopg.Connection[Any], postgres_schema: str
    ) -> None:
        """Migrated to 4, a schema's sets of distinct units get their sizes (counted once,
        from what is there), which the exchange then reads and keeps."""
        s = schema_at(admin, postgres_schema, 3)
        insert = "INSERT INTO {s}.digests VALUES ('r', %s, %s)"
        for scope, digest in (("distinct:u", 1), ("distinct:u", 2), ("first:e", 1)):
            admin.execute(sql.SQL(insert).format(s=s), (scope, digest))
        store = make_store()
        assert store.count_distinct("r", "u", []) == 2
        (answer,) = store.flush_many([Flush("r", "1", {}, [], [("u", ["x", "y"])])])
        assert isinstance(answer, Flushed)
        assert answer.distinct == [4]
        sizes = admin.execute(sql.SQL("SELECT scope, n FROM {s}.sizes").format(s=s)).fetchall()
        assert sizes == [("distinct:u", 4)]  # only sets of distinct units have one

    def test_sizes_follow_every_write_and_the_expiry(
        self, make_store: StoreFactory, admin: psycopg.Connection[Any], postgres_schema: str
    ) -> None:
        """Two store objects adding overlapping units, by both paths: each set's size is its
        number of digests; the expiry takes the size with the set."""
        one, two = make_store(), make_store()
        units = [f"u{i}" for i in range(300)]
        threads = [
            threading.Thread(target=lambda: one.count_distinct("r", "1@0.5/t", units[:200])),
            threading.Thread(target=lambda: two.flush_many(
                [Flush("r", "1", {}, [], [("1@0.5/t", units[100:])])])),
        ]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        s = sql.Identifier(postgres_schema)
        counted = admin.execute(sql.SQL("SELECT count(*) FROM {s}.digests WHERE scope = "
                                        "'distinct:1@0.5/t'").format(s=s)).fetchone()  # fmt: skip
        assert counted == (300,)
        assert one.count_distinct("r", "1@0.5/t", []) == 300
        assert one.expire(now=time.time() + 10 * 365 * 86400) > 0
        assert one.count_distinct("r", "1@0.5/t", []) == 0
        assert admin.execute(sql.SQL("SELECT count(*) FROM {s}.sizes").format(s=s)).fetchone() == (
            0,
        )

    @pytest.mark.skipif(sys.platform != "linux", reason="libpq tracing: psycopg on Linux only")
    def test_one_statement_per_exchange_whatever_the_number_of_flushes(
        self, make_store: StoreFactory, postgres_url: str, postgres_schema: str, tmp_path: Any
    ) -> None:
        """Each exchange is one round trip (no BEGIN, no COMMIT), one call of the schema's
        procedure, for 1 flush or 60; beyond 20,000 digests it takes a round trip more."""
        options = "options=-c%20track_functions%3Dpl"  # counts the calls of plpgsql functions
        url = postgres_url + ("&" if "?" in postgres_url else "?") + options
        store = make_store(url)
        store.read_counts("r", "0")  # connected, the schema made
        trace = tmp_path / "libpq.trace"

        def sent(exchange: Callable[[], list[Flushed | Exception]]) -> tuple[list[str], Any]:
            """The messages the store sent to the server during ``exchange``; its answers."""
            with trace.open("wb") as out:
                with store._session() as conn:
                    conn.pgconn.trace(out.fileno())
                    conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
                try:
                    answers = exchange()
                finally:
                    with store._session() as conn:
                        conn.pgconn.untrace()
            lines = [line.split("\t") for line in trace.read_text().splitlines()]
            return [line[2].split()[0] for line in lines if line[0] == "F"], answers

        for n in (1, 60):
            batch = [flush_of(f"r{i}", units(10)) for i in range(n)]
            messages, answers = sent(functools.partial(store.flush_many, batch))
            assert messages == ["Parse", "Bind", "Describe", "Execute", "Sync"]  # one statement
            assert len(answers) == n
            assert all(isinstance(a, Flushed) for a in answers)
        large = [flush_of(f"big{i}", [f"u{i}-{j}" for j in range(4000)]) for i in range(3)]
        messages, answers = sent(lambda: store.flush_many(large))  # 8,000 digests each
        assert messages.count("Sync") == 2  # two flushes, then the third
        assert [a.distinct for a in answers if isinstance(a, Flushed)] == [[4000]] * 3
        store.close()  # the backend ends and hands in its function statistics
        query = ("SELECT calls FROM pg_stat_user_functions WHERE schemaname = %s "
                 "AND funcname = 'flush_many'")  # fmt: skip
        with psycopg.connect(postgres_url, autocommit=True) as conn:

            def calls() -> object:
                conn.execute("SELECT pg_stat_clear_snapshot()")
                return conn.execute(query, (postgres_schema,)).fetchone()

            wait_until(lambda: calls() == (4,), "four calls of flush_many counted")

    def test_a_failing_flush_fails_alone_and_writes_nothing(
        self, make_store: StoreFactory, admin: psycopg.Connection[Any], postgres_schema: str
    ) -> None:
        """A flush the database refuses (a counter past bigint) answers a ValueError and left
        nothing (units, distinct units, counters, errors); the flushes around it land; a
        malformed error or a NUL is refused before it is sent."""
        store = make_store()
        big = 2**63 - 1
        assert isinstance(store.flush_many([flush_of("b", [], counts={"n": big})])[0], Flushed)
        error = RecentError("treatment", "E", "m", 1.5, 2.5)
        batch = [
            flush_of("a", ["x", "y"], errors=[error]),
            flush_of("b", ["x", "y"], counts={"n": big}, errors=[error]),
            flush_of("c", ["x", "y"], errors=[error]),
            flush_of("d", ["x"], errors=[RecentError("", "E", "m", 1.0, 1.0)]),
            flush_of("e\x00", ["x"]),
        ]
        a, b, c, d, e = store.flush_many(batch)
        assert isinstance(b, ValueError), b
        assert "22003" in str(b)  # numeric value out of range
        assert isinstance(d, ValueError)
        assert isinstance(e, ValueError)
        touched = sql.SQL("SELECT count(*) FROM {}.touched WHERE rollout IN ('b', 'd')")
        assert admin.execute(touched.format(sql.Identifier(postgres_schema))).fetchone() == (0,)
        landed = Flushed({"e.t": 1, "e.c": 1}, {"e.t": 1, "e.c": 1}, [2], [{}])
        assert a == c == landed
        assert store.read_errors("a") == store.read_errors("c") == [error]
        assert store.read_counts("b", "1") == {"n": big}
        assert store.add_units("b", "e", ["x", "y"]) == [True, True]
        assert store.count_distinct("b", "u", []) == 0
        assert store.read_errors("b") == []
        assert store.read_counts("d", "1") == {}

    @pytest.mark.parametrize("seed", range(3))
    def test_errors_merge_as_add_errors_merges_them(
        self, make_store: StoreFactory, twin: PostgresStore, admin: psycopg.Connection[Any],
        postgres_schema: str, seed: int,
    ) -> None:  # fmt: skip
        """Merged in SQL, a rollout's errors are what add_errors keeps (the 20 most recent,
        ties in code point order, counts capped, types and messages cut), written in the
        same text, times in Python's repr; rows it cannot read are dropped alike."""
        store, rng = make_store(), random.Random(seed)
        store.read_counts("r", "0")  # the schemas made
        twin.read_counts("r", "0")
        for schema in (postgres_schema, twin.schema):
            query = sql.SQL("INSERT INTO {}.errors (rollout, entry) VALUES ('r', %s)")
            for text in STORED_ERRORS:
                admin.execute(query.format(sql.Identifier(schema)), (text,))
        for round_ in range(6):
            errors = tricky_errors(rng, rng.randrange(1, 30))
            if round_ == 0:  # meets the rows stored in other forms
                errors.append(RecentError("control", "E", "café 😀", 0.5, 20.0, 1))
            twin.add_errors("r", errors)
            segment = None if round_ % 2 else "1"
            (answer,) = store.flush_many([Flush("r", segment, errors=errors)])
            assert isinstance(answer, Flushed), answer
            assert answer.errors_failed is None
            assert store.read_errors("r") == twin.read_errors("r")
            ours = stored_entries(admin, postgres_schema, "r")
            assert ours == stored_entries(admin, twin.schema, "r")
            assert 0 < len(ours) <= 20
        assert len(stored_entries(admin, postgres_schema, "r")) == 20
        assert any(e.count == 2**53 for e in store.read_errors("r"))

    def test_times_are_written_as_python_writes_them(
        self, make_store: StoreFactory, admin: psycopg.Connection[Any], postgres_schema: str
    ) -> None:
        """The schema's py_float writes any finite double as repr() does (and reads back the
        same double)."""
        make_store().read_counts("r", "0")
        rng = random.Random(7)
        doubles = [*TRICKY_TIMES, 1e15, 1e16 - 1, 9999999999999998.0, 0.00011, 1e-4, 1e-310]
        doubles += [struct.unpack("<d", rng.randbytes(8))[0] for _ in range(3000)]
        doubles += [rng.uniform(-1, 1) * 10 ** rng.randrange(-8, 20) for _ in range(3000)]
        doubles = [float(x) for x in doubles if math.isfinite(x)]
        query = sql.SQL(
            "SELECT {}.py_float(x) FROM unnest(%s::float8[]) WITH ORDINALITY AS u(x, i) ORDER BY i"
        ).format(sql.Identifier(postgres_schema))
        written = [text for (text,) in admin.execute(query, (doubles,)).fetchall()]
        assert written == [repr(x) for x in doubles]

    def test_concurrent_exchanges_neither_deadlock_nor_count_twice(
        self, make_store: StoreFactory
    ) -> None:
        """Two store objects (two connections) flushing the same rollouts at once, every set
        touched each time: no flush fails (a deadlock would fail one), and each unit's first
        error counts once in all."""
        stores = [make_store(timeout=10.0) for _ in range(2)]
        for store in stores:
            store._touch_every = 0.0  # every flush writes its sets' touched rows
        rollouts = [f"r{i}" for i in range(6)]
        rounds = 15
        barrier = threading.Barrier(2)
        answers: list[list[Flushed | Exception]] = [[], []]
        failed: list[BaseException] = []

        def exchange(index: int) -> None:
            rng = random.Random(index)
            try:
                for _ in range(rounds):
                    batch = []
                    for rollout in rng.sample(rollouts, len(rollouts)):  # any order
                        mine = rng.sample(units(60), 30)
                        events = [(scope, [("e.t", mine)]) for scope in rng.sample(["a", "b"], 2)]
                        error = RecentError("treatment", "E", f"m{rng.randrange(3)}", 1.0, 2.0)
                        batch.append(Flush(rollout, "1", {"calls": 1}, events,
                                           [("u", mine), ("v", mine)], [], [error]))  # fmt: skip
                    barrier.wait(DEADLINE_S)
                    answers[index] += stores[index].flush_many(batch)
            except BaseException as exc:  # pragma: no cover - reported below
                failed.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=exchange, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(4 * DEADLINE_S)
        assert not failed
        assert not any(thread.is_alive() for thread in threads)
        flat = answers[0] + answers[1]
        assert not [a for a in flat if isinstance(a, Exception)]
        assert len(flat) == 2 * rounds * len(rollouts)
        added = sum(a.added.get("e.t", 0) for a in flat if isinstance(a, Flushed))
        seen = sum(stores[0].count_distinct(r, "u", []) for r in rollouts)
        assert added == 2 * seen  # each unit first in two scopes, "a" and "b"
        for rollout in rollouts:
            counters = stores[0].read_counts(rollout, "1")
            assert counters["calls"] == 2 * rounds
            assert counters["e.t"] == 2 * stores[0].count_distinct(rollout, "v", [])
            errors = stores[1].read_errors(rollout)  # their writers took turns: none lost
            assert sum(error.count for error in errors) == 2 * rounds
