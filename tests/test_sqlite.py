from __future__ import annotations

import dataclasses
import os
import random
import re
import sqlite3
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import plain_policy
from crashing import kill_mid_flight, writer_script
from stagedroll import (
    Action,
    NoStoreError,
    RecentError,
    Rollouts,
    RolloutState,
    SQLiteStore,
    Status,
    StoreError,
    Transition,
)
from stagedroll.stores import store_from_url
from stagedroll.stores._codec import dump_error
from stagedroll.stores._digest import digest, rollout_key, token
from stagedroll.stores._sqlite import SCHEMA_VERSION

POLICY = plain_policy(50, 100, name="x")
TABLES = {"rollouts", "history", "counts", "digests", "touched", "meta", "errors"}


def state(version: int, stage: int = 0) -> RolloutState:
    return RolloutState(stage=stage, status=Status.RUNNING, since=float(version), version=version)


def entry(version: int, stage: int = 0, rollout: str = "r") -> Transition:
    return Transition(rollout, Action.ADVANCE, stage, stage, Status.RUNNING, Status.RUNNING,
                      version, float(version))  # fmt: skip


def plain(path: Path) -> sqlite3.Connection:
    """A connection of our own to the file, as another process (or sqlite3's shell) has."""
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


def pragma(path: Path, name: str) -> object:
    db = plain(path)
    try:
        return db.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        db.close()


def tables(path: Path) -> set[str]:
    db = plain(path)
    try:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    finally:
        db.close()
    return {name for (name,) in rows}


def serves_nothing(rollouts: Rollouts, name: str = "x") -> bool:
    """Whether every unit of a sample takes the old path (the rollout serves 0 %)."""
    return not any(rollouts.enabled(name, f"user-{i}") for i in range(200))


@pytest.fixture(name="path")
def _path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture(name="store")
def _store(path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(path)
    yield store
    store.close()


class TestFile:
    def test_is_wal_with_the_schema_version_and_tables(
        self, store: SQLiteStore, path: Path
    ) -> None:
        """The store's first use makes a WAL file with user_version and its tables."""
        assert store.load("r") is None
        assert pragma(path, "journal_mode") == "wal"
        assert pragma(path, "user_version") == SCHEMA_VERSION
        assert tables(path) >= TABLES

    def test_a_file_from_a_later_version_is_refused(self, path: Path) -> None:
        """A higher user_version raises RuntimeError naming both versions; data is untouched."""
        db = plain(path)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db.close()
        store = SQLiteStore(path)
        try:
            with pytest.raises(RuntimeError) as raised:
                store.load("r")
            message = str(raised.value)
            assert f"version {SCHEMA_VERSION + 1}" in message
            assert f"up to {SCHEMA_VERSION}" in message
            with pytest.raises(RuntimeError, match="schema version"):
                store.compare_and_set("r", 0, state(1), entry(1))
        finally:
            store.close()
        assert pragma(path, "user_version") == SCHEMA_VERSION + 1
        assert not tables(path) & TABLES

    def test_rollouts_on_a_refused_file_serve_nothing(self, path: Path) -> None:
        """Rollouts on a file from a later version start anyway, at 0 %, counting the failure."""
        db = plain(path)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db.close()
        store = SQLiteStore(path)
        try:
            rollouts = Rollouts(POLICY, store=store)
            assert rollouts.failures.count("store.load_failed") > 0
            assert rollouts["x"].state.version == 0
            assert serves_nothing(rollouts)
            assert not rollouts.decide("x", "user-1").enabled
            with pytest.raises(StoreError):
                rollouts.freeze("x")
        finally:
            store.close()

    def test_an_older_file_is_migrated_on_open(self, path: Path) -> None:
        """A file at user_version 0 without stagedroll's tables gets them; other tables stay."""
        db = plain(path)
        db.execute("CREATE TABLE mine (a INTEGER)")
        db.execute("INSERT INTO mine VALUES (7)")
        db.close()
        assert pragma(path, "user_version") == 0
        store = SQLiteStore(path)
        try:
            assert store.load("r") is None
            assert store.compare_and_set("r", 0, state(1), entry(1))
            assert store.load("r") == state(1)
        finally:
            store.close()
        assert pragma(path, "user_version") == SCHEMA_VERSION
        assert tables(path) >= {*TABLES, "mine"}
        db = plain(path)
        assert db.execute("SELECT a FROM mine").fetchall() == [(7,)]
        db.close()

    def test_two_stores_opening_a_new_file_at_once_both_work(self, path: Path) -> None:
        """Concurrent first opens (both migrating) leave one schema and both stores working."""
        stores = [SQLiteStore(path, timeout=5) for _ in range(4)]
        barrier = threading.Barrier(len(stores))
        errors: list[BaseException] = []

        def open_and_load(store: SQLiteStore) -> None:
            barrier.wait()
            try:
                store.load("r")
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=open_and_load, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            assert errors == []
            assert pragma(path, "user_version") == SCHEMA_VERSION
            assert stores[0].compare_and_set("r", 0, state(1), entry(1))
            assert all(s.load("r") == state(1) for s in stores)
        finally:
            for s in stores:
                s.close()


class TestBusy:
    def test_a_write_waits_for_the_busy_timeout_then_fails(self, path: Path) -> None:
        """While another connection holds the write lock, a write fails after the timeout."""
        store = SQLiteStore(path, timeout=0.2)
        holder = plain(path)
        try:
            assert store.load("r") is None  # the schema exists before the lock is taken
            holder.execute("BEGIN IMMEDIATE")
            started = time.monotonic()
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                store.compare_and_set("r", 0, state(1), entry(1))
            assert time.monotonic() - started >= 0.1  # it waited (a lower bound only)
            assert store.load("r") is None  # reads go on under WAL
            holder.execute("ROLLBACK")
            assert store.compare_and_set("r", 0, state(1), entry(1))
            assert store.load("r") == state(1)
        finally:
            holder.close()
            store.close()

    def test_rollouts_keep_deciding_while_the_file_is_locked(self, path: Path) -> None:
        """Decisions go on under a held lock; freeze raises StoreError, then works once freed."""
        store = SQLiteStore(path, timeout=0.2)
        holder = plain(path)
        try:
            rollouts = Rollouts(POLICY, store=store)
            before = [rollouts.enabled("x", f"user-{i}") for i in range(200)]
            assert any(before)
            holder.execute("BEGIN IMMEDIATE")
            try:
                assert [rollouts.enabled("x", f"user-{i}") for i in range(200)] == before
                assert rollouts.decide("x", "user-1").enabled == before[1]
                with pytest.raises(StoreError, match="freeze"):
                    rollouts.freeze("x", reason="locked", actor="test")
                assert rollouts["x"].state.status is Status.RUNNING
            finally:
                holder.execute("ROLLBACK")
            transition = rollouts.freeze("x", reason="free", actor="test")
            assert transition.to_status is Status.FROZEN
            frozen = rollouts["x"].state
            assert frozen.status is Status.FROZEN
            assert store.load("x") == frozen
            assert [rollouts.enabled("x", f"user-{i}") for i in range(200)] == before
        finally:
            holder.close()
            store.close()

    def test_a_write_waits_for_a_lock_released_within_the_timeout(self, path: Path) -> None:
        """With a 5 s busy timeout, a lock released after ~0.1 s lets the write through."""
        store = SQLiteStore(path, timeout=5)
        holder = plain(path)
        try:
            assert store.load("r") is None
            holder.execute("BEGIN IMMEDIATE")
            holder.execute("CREATE TABLE held (a INTEGER)")  # a real write in the way
            releaser = threading.Timer(0.1, holder.execute, args=("COMMIT",))
            releaser.start()
            assert store.compare_and_set("r", 0, state(1), entry(1))
            releaser.join()
            assert store.load("r") == state(1)
            assert "held" in tables(path)
        finally:
            holder.close()
            store.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
class TestUnwritable:
    def test_a_read_only_file_refuses_transitions_until_writable(self, tmp_path: Path) -> None:
        """On a read-only file and directory, transitions raise StoreError and decisions go on."""
        directory = tmp_path / "ro"
        directory.mkdir()
        path = directory / "state.db"
        first = SQLiteStore(path)
        Rollouts(POLICY, store=first)  # starts "x" in the file
        first.close()
        # Another worker keeps the file open (so its -wal and -shm files stay).
        keeper = plain(path)
        (stored,) = keeper.execute("SELECT version FROM rollouts WHERE name = 'x'").fetchone()
        path.chmod(stat.S_IRUSR)
        directory.chmod(stat.S_IRUSR | stat.S_IXUSR)
        store = SQLiteStore(path, refresh_interval=60)
        try:
            rollouts = Rollouts(POLICY, store=store)
            assert rollouts["x"].state.version == stored  # reading still works
            served = [rollouts.enabled("x", f"user-{i}") for i in range(200)]
            assert any(served)
            for _ in range(2):
                with pytest.raises(StoreError, match="readonly"):
                    rollouts.freeze("x", actor="test")
            assert [rollouts.enabled("x", f"user-{i}") for i in range(200)] == served
            assert rollouts.decide("x", "user-1").enabled == served[1]
            assert rollouts["x"].state.status is Status.RUNNING
        finally:
            directory.chmod(stat.S_IRWXU)
            path.chmod(stat.S_IRUSR | stat.S_IWUSR)
            keeper.close()
        try:
            # The store recovers without a restart. Not at once: the connection that the
            # last read reopened is read-only (SQLite falls back to that silently), and a
            # fresh connection's first write after a read-only one fails once more (SQLite).
            failed = 0
            while True:
                try:
                    transition = rollouts.freeze("x", actor="test")
                    break
                except StoreError:
                    failed += 1
                    assert failed < 3, "the store did not recover"
            assert transition.version == stored + 1
            frozen = rollouts["x"].state
            assert frozen.status is Status.FROZEN
            assert [rollouts.enabled("x", f"user-{i}") for i in range(200)] == served
        finally:
            store.close()


class TestMissingDirectory:
    def test_rollouts_start_at_zero(self, tmp_path: Path) -> None:
        """A file whose directory does not exist: Rollouts start at 0 %, counting the failure."""
        directory = tmp_path / "missing"
        store = SQLiteStore(directory / "state.db", refresh_interval=60)
        try:
            rollouts = Rollouts(POLICY, store=store)
            assert rollouts.failures.count("store.load_failed") > 0
            assert rollouts["x"].state.version == 0
            assert serves_nothing(rollouts)
            with pytest.raises(StoreError):
                rollouts.freeze("x")
            directory.mkdir()  # the store answers now: the next transition starts the rollout
            assert rollouts.status("x").version == 1
            assert rollouts.freeze("x", actor="test").version == 2
        finally:
            store.close()


class TestHistoryAndRestart:
    def test_history_is_trimmed_to_max_history(self, path: Path) -> None:
        """Of many transitions the newest max_history stay, in the file too."""
        store = SQLiteStore(path, max_history=5)
        try:
            for v in range(1, 41):
                assert store.compare_and_set("r", v - 1, state(v), entry(v))
            assert store.compare_and_set("other", 0, state(1), entry(1, rollout="other"))
            assert [t.version for t in store.history("r")] == [40, 39, 38, 37, 36]
            assert [t.version for t in store.history("r", limit=2)] == [40, 39]
            assert store.history("r", limit=0) == []
            assert [t.version for t in store.history("other")] == [1]
        finally:
            store.close()
        db = plain(path)
        rows = db.execute("SELECT rollout, count(*) FROM history GROUP BY rollout").fetchall()
        db.close()
        assert dict(rows) == {"r": 5, "other": 1}

    def test_state_and_history_survive_a_restart(self, path: Path) -> None:
        """A new store and Rollouts on the same file continue from the stored stage."""
        store = SQLiteStore(path, max_history=10)
        rollouts = Rollouts(POLICY, store=store)
        rollouts.advance("x", actor="test")
        for _ in range(8):
            rollouts.freeze("x", actor="test")
            rollouts.unfreeze("x", actor="test")
        rollouts.freeze("x", reason="before restart", actor="test")
        before = rollouts["x"].state
        history = store.history("x")
        store.close()
        del rollouts

        again = SQLiteStore(path, max_history=10)
        try:
            restarted = Rollouts(POLICY, store=again)
            assert restarted["x"].state == before
            assert before.stage == 1
            assert before.status is Status.FROZEN
            assert before.reason == "before restart"
            assert again.history("x") == history
            assert len(history) == 10
            assert [t.version for t in history] == list(
                range(before.version, before.version - 10, -1)
            )
            assert all(restarted.enabled("x", f"user-{i}") for i in range(100))  # stage 1: 100 %
            transition = restarted.unfreeze("x", actor="test")
            assert transition.version == before.version + 1
            assert transition.to_stage == 1
        finally:
            again.close()


CHILD = writer_script(
    """
    import sys
    from stagedroll import Rollouts, SQLiteStore, TransitionError

    path = sys.argv[1]
    store = SQLiteStore(path, max_history={max_history}, timeout=5, refresh_interval=0.05)
    """
)


class TestCrashSafety:
    def test_sigkill_at_random_moments_leaves_a_consistent_file(self, path: Path) -> None:
        """20 writers killed mid-flight: the file stays sound and the next write succeeds."""
        max_history = 8
        script = CHILD.format(max_history=max_history, policy=POLICY)
        rng = random.Random(20240601)
        kills = 0
        for _ in range(20):
            command = [sys.executable, "-c", script, str(path)]
            kill_mid_flight(command, lambda: self._version(path), rng, deadline_s=20)
            kills += 1
            self._check(path, max_history)
        assert kills == 20

    @staticmethod
    def _version(path: Path) -> int:
        """The stored version of "x" read through our own connection (0 before the file)."""
        if not path.exists():
            return 0
        db = sqlite3.connect(path, timeout=5)
        try:
            row = db.execute("SELECT version FROM rollouts WHERE name = 'x'").fetchone()
        except sqlite3.OperationalError:  # the child is still making the tables
            return 0
        finally:
            db.close()
        return 0 if row is None else int(row[0])

    @staticmethod
    def _check(path: Path, max_history: int) -> None:
        db = sqlite3.connect(path, timeout=5)
        try:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            (calls,) = db.execute(
                "SELECT value FROM counts WHERE rollout = 'x' AND segment = 's' AND name = 'calls'"
            ).fetchone()
            assert calls > 0
        finally:
            db.close()
        store = SQLiteStore(path, max_history=max_history, timeout=5, refresh_interval=60)
        try:
            found = store.load("x")
            assert found is not None
            history = store.history("x")
            versions = [t.version for t in history]
            assert versions[0] == found.version
            assert versions == list(range(found.version, found.version - len(versions), -1))
            assert len(versions) == min(found.version, max_history)
            assert history[0].to_status is found.status
            following = dataclasses.replace(found, version=found.version + 1)
            move = dataclasses.replace(history[0], version=found.version + 1, actor="parent")
            assert store.compare_and_set("x", found.version, following, move)
            assert store.load("x") == following
            assert store.add_units("x", "u", ["unit-1"]) == [False]
        finally:
            store.close()


class TestExpiry:
    def test_old_counters_and_units_go_recent_ones_stay(self, tmp_path: Path) -> None:
        """Counters and unit sets not written for ttl seconds are deleted; live ones are kept."""
        path = tmp_path / "state.db"
        store = SQLiteStore(path, ttl=100)
        try:
            store.add_counts("r", "1.0", {"errors.t": 2})
            store.add_units("r", "1/errors", ["u1", "u2"])
            store.count_distinct("r", "1.0/t", ["u1"])
            store.add_counts("r", "5.0", {"errors.t": 1})
            assert store.expire() == 0  # all written just now
            with sqlite3.connect(path) as db:  # the first visit was last written long ago
                db.execute("UPDATE touched SET at = at - 1000 WHERE key NOT LIKE '%5.0%'")
            assert store.expire() == 3 + 1 + 3  # unit rows, counter rows, touched rows
            assert store.read_counts("r", "1.0") == {}
            assert store.add_units("r", "1/errors", ["u1"]) == [True]
            assert store.count_distinct("r", "1.0/t", []) == 0
            assert store.read_counts("r", "5.0") == {"errors.t": 1}
        finally:
            store.close()

    def test_a_set_still_written_is_kept_whole(self, tmp_path: Path) -> None:
        """A unit set written within ttl keeps its old units: a unit never counts twice."""
        store = SQLiteStore(tmp_path / "state.db", ttl=100)
        try:
            store.add_units("r", "1/errors", ["old"])
            store.add_units("r", "1/errors", ["new"])
            assert store.expire(now=time.time() + 99) == 0
            assert store.add_units("r", "1/errors", ["old"]) == [False]
        finally:
            store.close()

    def test_ttl_must_be_positive(self, tmp_path: Path) -> None:
        """A ttl of zero or less is refused."""
        with pytest.raises(ValueError, match="ttl"):
            SQLiteStore(tmp_path / "state.db", ttl=0)


def connection(store: SQLiteStore) -> sqlite3.Connection | None:
    """The store's connection now (a function, so that type checkers do not narrow it)."""
    return store._db


class TestRefreshAfterErrors:
    def test_a_busy_write_keeps_the_connection_and_the_refresh(self, tmp_path: Path) -> None:
        """A write refused for a lock keeps the connection; later changes are still read."""
        path = tmp_path / "state.db"
        policy = plain_policy(10, 50)
        mine = SQLiteStore(path, refresh_interval=3600, timeout=0.1)
        theirs = SQLiteStore(path, refresh_interval=3600)
        try:
            rollouts = Rollouts(policy, store=mine)
            other = Rollouts(policy, store=theirs)
            assert mine.refresh()
            before = connection(mine)
            locker = sqlite3.connect(path, isolation_level=None)
            locker.execute("BEGIN IMMEDIATE")
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                mine.add_counts("checkout", "1.0", {"errors.t": 1})
            locker.execute("ROLLBACK")
            locker.close()
            assert connection(mine) is before
            other.freeze("checkout", actor="bob")
            assert mine.refresh()
            assert rollouts["checkout"].state.status is Status.FROZEN
        finally:
            mine.close()
            theirs.close()

    def test_a_new_connection_reads_afresh(self, tmp_path: Path) -> None:
        """After the connection is replaced, the next refresh reads the states whatever
        the new connection's data_version says."""
        path = tmp_path / "state.db"
        policy = plain_policy(10, 50)
        mine = SQLiteStore(path, refresh_interval=3600)
        theirs = SQLiteStore(path, refresh_interval=3600)
        try:
            rollouts = Rollouts(policy, store=mine)
            other = Rollouts(policy, store=theirs)
            assert mine.refresh()
            broken = connection(mine)
            assert broken is not None
            broken.close()  # the next use fails, and drops it
            with pytest.raises(sqlite3.ProgrammingError):
                mine.read_counts("checkout", "1.0")
            assert connection(mine) is None
            other.freeze("checkout", actor="bob")
            assert mine.refresh()
            assert rollouts["checkout"].state.status is Status.FROZEN
        finally:
            mine.close()
            theirs.close()


class TestForkClosesTheConnection:
    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
    @pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
    def test_no_connection_crosses_a_fork(self, tmp_path: Path) -> None:
        """The parent's connection is closed before fork and reopened on its next use."""
        store = SQLiteStore(tmp_path / "state.db", refresh_interval=3600)
        try:
            assert store.load("r") is None
            assert connection(store) is not None
            pid = os.fork()
            if pid == 0:  # the child: no connection inherited; one of its own works
                code = 0 if connection(store) is None and store.load("r") is None else 1
                os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            assert connection(store) is None
            assert store.load("r") is None
        finally:
            store.close()


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def files(path: Path) -> list[Path]:
    """The database file and its -wal and -shm files."""
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


class TestPermissions:
    def test_a_new_file_and_its_companions_are_the_owners_only(self, path: Path) -> None:
        """A file the store creates, and its -wal and -shm files, are 0600."""
        store = SQLiteStore(path)
        try:
            Rollouts(POLICY, store=store).advance("x", actor="alice")
            assert [mode_of(p) for p in files(path)] == [0o600] * 3
        finally:
            store.close()

    @pytest.mark.parametrize("how", ["keyword", "url 0640", "url 0o640", "url 640"])
    def test_mode_by_keyword_or_url(self, path: Path, how: str) -> None:
        """mode= (or ?mode= in octal) sets the permissions of a new file and its companions."""
        if how == "keyword":
            store = SQLiteStore(path, mode=0o640)
        else:
            created = store_from_url(f"sqlite:///{path}?mode={how.split()[1]}")
            assert isinstance(created, SQLiteStore)
            store = created
        try:
            Rollouts(POLICY, store=store).advance("x", actor="alice")
            assert [mode_of(p) for p in files(path)] == [0o640] * 3
        finally:
            store.close()

    def test_the_umask_neither_adds_nor_takes(self, path: Path) -> None:
        """The mode asked for is the mode on disk, whatever the process's umask."""
        old = os.umask(0o077)
        try:
            store = SQLiteStore(path, mode=0o664)
            try:
                Rollouts(POLICY, store=store)
                assert [mode_of(p) for p in files(path)] == [0o664] * 3
            finally:
                store.close()
        finally:
            os.umask(old)

    def test_an_existing_file_keeps_its_mode(self, path: Path) -> None:
        """A file that exists already keeps the permissions it has."""
        plain(path).close()
        path.chmod(0o644)
        store = SQLiteStore(path)
        try:
            Rollouts(POLICY, store=store)
            assert mode_of(path) == 0o644
        finally:
            store.close()

    @pytest.mark.parametrize("mode", [-1, 0o1000, 0o4755, True])
    def test_a_mode_out_of_range_is_refused(self, path: Path, mode: int) -> None:
        """mode takes permission bits only (no setuid, sticky or out-of-range values)."""
        with pytest.raises(ValueError, match="mode"):
            SQLiteStore(path, mode=mode)

    def test_a_malformed_mode_in_a_url_is_refused(self, path: Path) -> None:
        """?mode= must be octal."""
        with pytest.raises(ValueError, match="mode must be octal"):
            store_from_url(f"sqlite:///{path}?mode=rw-r--r--")


def kill_in_new_file(path: Path, reason: str) -> None:
    """What the operator's CLI does: open the file at the path, kill x, close it."""
    cli = SQLiteStore(path, refresh_interval=3600)
    try:
        Rollouts(POLICY, store=cli).kill("x", reason=reason, actor="oncall")
    finally:
        cli.close()


class TestReplacedFile:
    def test_a_deleted_file_is_followed_to_the_new_one(self, path: Path) -> None:
        """The file and its companions are deleted under a worker; the CLI's kill creates a
        new file; the worker notices at its next refresh, reopens it, and is killed."""
        worker_store = SQLiteStore(path, refresh_interval=3600)
        try:
            worker = Rollouts(POLICY, store=worker_store)
            worker.advance("x", actor="alice")
            for file in files(path):
                file.unlink()
            kill_in_new_file(path, "incident")
            assert worker_store.refresh()
            assert worker["x"].state.status is Status.KILLED
            assert serves_nothing(worker)
            assert worker_store.failures.count("store.file_replaced") == 1
        finally:
            worker_store.close()

    def test_a_file_renamed_over_is_followed(self, path: Path, tmp_path: Path) -> None:
        """Another file renamed over the path (its -wal and -shm are the old file's): the
        worker drops the old companions, reads the new file and follows its kill."""
        worker_store = SQLiteStore(path, refresh_interval=3600)
        try:
            worker = Rollouts(POLICY, store=worker_store)
            worker.advance("x", actor="alice")
            prepared = tmp_path / "prepared.db"
            kill_in_new_file(prepared, "restored from a backup")
            os.replace(prepared, path)
            assert worker_store.refresh()
            assert worker["x"].state.status is Status.KILLED
            assert worker["x"].state.reason == "restored from a backup"
            assert worker_store.failures.count("store.file_replaced") == 1
            with sqlite3.connect(path) as db:  # the new file is whole
                assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        finally:
            worker_store.close()

    def test_a_deleted_file_gets_back_what_the_worker_knew(self, path: Path) -> None:
        """Only the main file deleted, and no CLI: the worker reopens a new file at the path
        and writes back the state it knew, which a new process then finds."""
        worker_store = SQLiteStore(path, refresh_interval=3600)
        try:
            worker = Rollouts(POLICY, store=worker_store)
            worker.kill("x", reason="incident", actor="alice")
            path.unlink()
            assert worker_store.refresh()
            assert worker_store.failures.count("store.file_replaced") == 1
            assert worker_store.failures.count("store.state_lost") == 1
            newcomer_store = SQLiteStore(path, refresh_interval=3600)
            try:
                assert Rollouts(POLICY, store=newcomer_store)["x"].state.status is Status.KILLED
            finally:
                newcomer_store.close()
        finally:
            worker_store.close()

    @pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
    def test_a_path_that_is_not_a_file_is_a_store_down(self, path: Path, kind: str) -> None:
        """The path replaced by a directory, a FIFO or a link to /dev/zero: the store is
        down (refreshes fail, decisions keep the last state), nothing blocks or reads
        without end, and a regular file back at the path is followed."""
        worker_store = SQLiteStore(path, refresh_interval=3600)
        try:
            worker = Rollouts(POLICY, store=worker_store)
            worker.advance("x", actor="alice")
            for file in files(path):
                file.unlink()
            if kind == "directory":
                path.mkdir()
            elif kind == "fifo":
                os.mkfifo(path)
            else:
                path.symlink_to("/dev/zero")
            assert not worker_store.refresh()
            assert worker["x"].state.stage == 1
            with pytest.raises(StoreError):
                worker.freeze("x", actor="alice")
            if kind == "directory":
                path.rmdir()
            else:
                path.unlink()
            kill_in_new_file(path, "incident")
            assert worker_store.refresh()
            assert worker["x"].state.status is Status.KILLED
        finally:
            worker_store.close()


SCHEMA_1 = """
CREATE TABLE rollouts (name TEXT PRIMARY KEY, version INTEGER NOT NULL, state TEXT NOT NULL);
CREATE TABLE history (id INTEGER PRIMARY KEY AUTOINCREMENT, rollout TEXT NOT NULL,
                      version INTEGER NOT NULL, entry TEXT NOT NULL);
CREATE INDEX history_by_rollout ON history (rollout, id);
CREATE TABLE counts (rollout TEXT NOT NULL, segment TEXT NOT NULL, name TEXT NOT NULL,
                     value INTEGER NOT NULL, PRIMARY KEY (rollout, segment, name)) WITHOUT ROWID;
CREATE TABLE units (rollout TEXT NOT NULL, scope TEXT NOT NULL, unit TEXT NOT NULL,
                    PRIMARY KEY (rollout, scope, unit)) WITHOUT ROWID;
CREATE TABLE touched (rollout TEXT NOT NULL, key TEXT NOT NULL, at REAL NOT NULL,
                      PRIMARY KEY (rollout, key)) WITHOUT ROWID;
PRAGMA user_version = 1;
"""
"""The tables of schema 1, which kept units as text."""


class TestSchema1:
    def test_units_kept_as_text_become_digests(self, path: Path) -> None:
        """A file of schema 1 is migrated: each unit becomes its digest (a unit counted
        before is not new after), and no unit's text is left in the file.

        The earlier version's counter (``errors.t``, without a share and a block) is no
        evidence of this one, nor are its distinct units (a scope without a share): only the
        new unit's first error counts, and the units reported since.
        """
        gated = {"rollouts": {"x": {"stages": [{"name": "half", "percent": 50}],
                                    "health": {"min_events": 3}}}}  # fmt: skip
        probe = Rollouts(gated)  # which units are treated (the bucket does not need a store)
        treated = [u for u in (f"person-{i}@example.com" for i in range(100))
                   if probe.enabled("x", u)][:3]  # fmt: skip
        db = plain(path)
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA_1)
        state = '{"stage":0,"status":"running","since":1.0,"version":1,"epoch":1,"history":"h1"}'
        db.execute("INSERT INTO rollouts VALUES ('x', 1, ?)", (state,))
        db.execute("INSERT INTO history (rollout, version, entry) VALUES ('x', 1, ?)",
                   ('{"rollout":"x","action":"start","from_stage":0,"to_stage":0,'
                    '"to_status":"running","version":1,"at":1.0}',))  # fmt: skip
        db.execute("INSERT INTO counts VALUES ('x', '1.0', 'errors.t', 1)")
        db.execute("INSERT INTO units VALUES ('x', 'first:1/errors', ?)", (treated[0],))
        for unit in treated:
            db.execute("INSERT INTO units VALUES ('x', 'distinct:1.0/t', ?)", (unit,))
        db.execute("INSERT INTO touched VALUES ('x', 'first:1/errors', ?)", (time.time(),))
        db.close()
        store = SQLiteStore(path, refresh_interval=3600)
        try:
            rollouts = Rollouts(gated, store=store)
            assert pragma(path, "user_version") == SCHEMA_VERSION
            assert "units" not in tables(path)
            rollouts.report("x", treated[0], error=True)  # counted before the upgrade
            rollouts.report("x", treated[1], error=True)  # a new one
            rollouts.tick()
            health = rollouts.status("x").health
            assert health.error_events_treatment == 1  # treated[1] alone
            counts = store.read_counts("x", "1.0")
            assert {k: n for k, n in counts.items() if k.startswith("errors.")} == {
                "errors.t": 1,
                "errors.t@0.5#0": 1,
            }
            assert health.units_treatment == 2
            # The earlier version's distinct units became the same digests as this one's.
            key = rollout_key("x", "h1")
            digests = [digest(key, token(unit)) for unit in treated]
            assert store.count_distinct("x", "1.0/t", []) == 3
            assert store.count_distinct("x", "1.0/t", digests) == 3
        finally:
            store.close()
        held = b"".join(p.read_bytes() for p in files(path) if p.exists())
        assert not any(unit.encode() in held for unit in treated)


class TestModeMustLetTheOwnerWrite:
    @pytest.mark.parametrize("mode", [0o000, 0o400, 0o200, 0o044])
    def test_refused(self, tmp_path: Path, mode: int) -> None:
        """A mode without owner read and write is refused (SQLite would give its -wal and
        -shm files its default mode instead)."""
        with pytest.raises(ValueError, match="owner read and write"):
            SQLiteStore(tmp_path / "state.db", mode=mode)


SCHEMA_2 = """
CREATE TABLE rollouts (name TEXT PRIMARY KEY, version INTEGER NOT NULL, state TEXT NOT NULL);
CREATE TABLE history (id INTEGER PRIMARY KEY AUTOINCREMENT, rollout TEXT NOT NULL,
                      version INTEGER NOT NULL, entry TEXT NOT NULL);
CREATE INDEX history_by_rollout ON history (rollout, id);
CREATE TABLE counts (rollout TEXT NOT NULL, segment TEXT NOT NULL, name TEXT NOT NULL,
                     value INTEGER NOT NULL, PRIMARY KEY (rollout, segment, name)) WITHOUT ROWID;
CREATE TABLE digests (rollout TEXT NOT NULL, scope TEXT NOT NULL, digest INTEGER NOT NULL,
                      PRIMARY KEY (rollout, scope, digest)) WITHOUT ROWID;
CREATE TABLE touched (rollout TEXT NOT NULL, key TEXT NOT NULL, at REAL NOT NULL,
                      PRIMARY KEY (rollout, key)) WITHOUT ROWID;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
PRAGMA user_version = 2;
"""
"""The tables of schema 2, without the recent errors."""

STATE_2 = '{"stage":1,"status":"frozen","since":1.0,"version":2,"epoch":1,"history":"h1"}'
"""A state as schema 2's stagedroll wrote it: without its stage ladder."""


def schema_2_file(path: Path) -> None:
    """A file as the previous version left it: a frozen rollout, its history, its evidence."""
    db = plain(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA_2)
    db.execute("INSERT INTO rollouts VALUES ('x', 2, ?)", (STATE_2,))
    for version in (1, 2):
        db.execute("INSERT INTO history (rollout, version, entry) VALUES ('x', ?, ?)",
                   (version, f'{{"rollout":"x","action":"start","from_stage":0,"to_stage":1,'
                             f'"to_status":"frozen","version":{version},"at":1.0}}'))  # fmt: skip
    db.execute("INSERT INTO counts VALUES ('x', '1.0', 'errors.t@0.5#0', 4)")
    db.execute("INSERT INTO digests VALUES ('x', 'first:1/errors', 12345)")
    db.execute("INSERT INTO touched VALUES ('x', 'counts:1.0', ?)", (time.time(),))
    db.execute("INSERT INTO meta VALUES ('created', '1.0'), ('rollout:x', 'h1')")
    db.close()


class TestSchema2:
    def test_upgraded_in_place_without_losing_data(self, path: Path) -> None:
        """A file of schema 2 without the errors table gets it; its state, history,
        counters, unit digests and registry are kept, and its state loads with no ladder.
        Its version stays 2, so processes of the previous release still open it."""
        schema_2_file(path)
        store = SQLiteStore(path, refresh_interval=3600)
        try:
            assert store.names() == ["x"]
            assert pragma(path, "user_version") == SCHEMA_VERSION == 2
            assert tables(path) >= TABLES
            loaded = store.load("x")
            assert loaded == RolloutState(1, Status.FROZEN, 1.0, 2, epoch=1, history="h1")
            assert loaded is not None
            assert loaded.stages == ()
            assert [t.version for t in store.history("x")] == [2, 1]
            assert store.read_counts("x", "1.0") == {"errors.t@0.5#0": 4}
            db = plain(path)
            assert db.execute("SELECT digest FROM digests").fetchall() == [(12345,)]
            assert db.execute("SELECT value FROM meta WHERE key = 'rollout:x'").fetchone() == (
                "h1",
            )
            db.close()
            assert store.read_errors("x") == []
            error = RecentError("treatment", "KeyError", "'tier'", 5.0, 6.0, 2)
            store.add_errors("x", [error])
            assert store.read_errors("x") == [error]
            with Rollouts(POLICY, store=store) as rollouts:
                assert rollouts["x"].state.status is Status.FROZEN
        finally:
            store.close()

    def test_two_stores_migrating_at_once_both_work(self, path: Path) -> None:
        """Two store objects opening a schema 2 file at once migrate it once; both read it."""
        schema_2_file(path)
        stores = [SQLiteStore(path, timeout=10.0, refresh_interval=3600) for _ in range(2)]
        barrier = threading.Barrier(2)
        found: list[list[str]] = []

        def open_it(store: SQLiteStore) -> None:
            barrier.wait(10)
            found.append(store.names())

        threads = [threading.Thread(target=open_it, args=(s,)) for s in stores]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert found == [["x"], ["x"]]
            assert pragma(path, "user_version") == SCHEMA_VERSION
        finally:
            for store in stores:
                store.close()


ERROR = RecentError("treatment", "IndexError", "discount tier out of range", 1.0, 2.0, 3)


class TestRecentErrors:
    def test_malformed_rows_are_skipped_then_dropped(self, path: Path) -> None:
        """Rows that cannot be read are skipped by read_errors, and the next add drops them."""
        store = SQLiteStore(path, refresh_interval=3600)
        try:
            store.add_errors("r", [ERROR])
            db = plain(path)
            for junk in ("not json", "[1]", '{"arm": "treatment"}', 7, b"\xff\xfe", None):
                db.execute("INSERT INTO errors (rollout, entry) VALUES ('r', ?)",
                           (junk if junk is not None else "null",))  # fmt: skip
            db.close()
            assert store.read_errors("r") == [ERROR]
            store.add_errors("r", [ERROR])
            assert store.read_errors("r") == [dataclasses.replace(ERROR, count=6)]
            db = plain(path)
            assert db.execute("SELECT entry FROM errors").fetchall() == [
                (dump_error(dataclasses.replace(ERROR, count=6)),)
            ]
            db.close()
        finally:
            store.close()

    def test_errors_expire_with_the_counters(self, path: Path) -> None:
        """A rollout's errors not written for ttl seconds are deleted by expire()."""
        store = SQLiteStore(path, ttl=100, refresh_interval=3600)
        try:
            store.add_errors("old", [ERROR])
            store.add_errors("new", [ERROR])
            assert store.expire(now=time.time() + 50) == 0
            with sqlite3.connect(path) as db:
                db.execute("UPDATE touched SET at = at - 1000 WHERE rollout = 'old'")
            assert store.expire() == 1 + 1  # the error row, the touched row
            assert store.read_errors("old") == []
            assert store.read_errors("new") == [ERROR]
        finally:
            store.close()


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


class TestNames:
    def test_names_that_are_not_utf8_text_are_left_out(self, path: Path) -> None:
        """A row whose name is not UTF-8 text (invalid bytes as text, a blob) is left out."""
        store = SQLiteStore(path, refresh_interval=3600)
        try:
            assert store.compare_and_set("a", 0, state(1), entry(1, rollout="a"))
            db = plain(path)
            db.execute("INSERT INTO rollouts VALUES (CAST(X'FFFE' AS TEXT), 1, 'x')")
            db.execute("INSERT INTO rollouts VALUES (X'FFFD', 1, 'x')")
            db.close()
            assert store.names() == ["a"]
        finally:
            store.close()


class TestNoSilentCreation:
    def test_a_missing_file_is_refused_and_nothing_is_made(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """create=False: a misspelt relative path raises StoreError naming the resolved
        absolute path and what was expected; no file, -wal, -shm or journal appears."""
        monkeypatch.chdir(tmp_path)
        makers: list[Callable[[], object]] = [
            lambda: SQLiteStore("rolouts.db", create=False),
            lambda: store_from_url("sqlite:///rolouts.db", create=False),
        ]
        for make in makers:
            with pytest.raises(NoStoreError) as raised:
                make()
            message = str(raised.value)
            assert message.startswith(f"no stagedroll store at {tmp_path / 'rolouts.db'} ")
            assert "(the file does not exist)" in message
            assert "expected" in message
        assert listing(tmp_path) == []

    def test_an_existing_store_opens(self, path: Path) -> None:
        """create=False opens a store that exists, and works as usual."""
        with Rollouts(POLICY, store=SQLiteStore(path)) as made:
            made.freeze("x", actor="alice")
        store = SQLiteStore(path, create=False, refresh_interval=3600)
        try:
            assert store.names() == ["x"]
            with Rollouts(POLICY, store=store) as rollouts:
                assert rollouts["x"].state.status is Status.FROZEN
                rollouts.unfreeze("x", actor="alice")
        finally:
            store.close()

    @pytest.mark.parametrize("kind", ["empty", "another application's"])
    def test_a_file_without_stagedroll_tables_is_refused_untouched(
        self, path: Path, kind: str
    ) -> None:
        """create=False: an empty file, or another application's database, is not made a
        store: StoreError naming the path, and the file is left as it was."""
        if kind == "empty":
            path.touch()
        else:
            db = plain(path)
            db.execute("CREATE TABLE mine (a INTEGER)")
            db.close()
        before = path.read_bytes()
        store = SQLiteStore(path, create=False)
        try:
            with pytest.raises(StoreError, match=re.escape(f"no stagedroll store at {path} ")):
                store.names()
        finally:
            store.close()
        assert path.read_bytes() == before
        assert listing(path.parent) == [path.name]

    def test_a_file_deleted_under_the_store_is_not_made_again(self, path: Path) -> None:
        """create=False: the file deleted under a running store is refused at the next use,
        and the refresh fails (logged and counted) without making a new one."""
        made = SQLiteStore(path)
        made.names()  # the file, with its tables
        made.close()
        store = SQLiteStore(path, create=False, refresh_interval=3600)
        try:
            assert store.load("x") is None
            for file in files(path):
                file.unlink(missing_ok=True)
            with pytest.raises(StoreError, match="the file does not exist"):
                store.names()
            assert not store.refresh()
            assert store.failures.count("store.refresh_failed") == 1
            assert listing(path.parent) == []
        finally:
            store.close()

    def test_create_is_the_default(self, path: Path) -> None:
        """Without create=False a missing file is created, as before."""
        store = store_from_url(f"sqlite:///{path}")
        try:
            assert store.names() == []
        finally:
            store.close()
        assert path.exists()


class TestUnableToOpen:
    def test_a_missing_directory_names_the_path(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A file whose directory is missing: StoreError naming the resolved path and why."""
        monkeypatch.chdir(tmp_path)
        store = SQLiteStore("missing/state.db")
        try:
            with pytest.raises(StoreError) as raised:
                store.names()
        finally:
            store.close()
        assert str(raised.value) == (
            f"cannot open the stagedroll store at {tmp_path / 'missing' / 'state.db'}: "
            f"its directory {tmp_path / 'missing'} does not exist"
        )

    @pytest.mark.parametrize("create", [True, False])
    def test_sqlites_unable_to_open_names_the_path(self, tmp_path: Path, create: bool) -> None:
        """SQLite's "unable to open database file" (here: a path past its 512 bytes) is a
        StoreError naming the resolved path."""
        directory = tmp_path
        for _ in range(3):
            directory = directory / ("d" * 200)
            directory.mkdir()
        path = directory / "state.db"
        if not create:
            path.touch()
        store = SQLiteStore(path, create=create)
        try:
            with pytest.raises(StoreError) as raised:
                store.names()
        finally:
            store.close()
        message = str(raised.value)
        assert message.startswith(f"cannot open the stagedroll store at {path}: ")
        assert "unable to open database file" in message

    def test_a_file_that_is_not_a_database_names_the_path(self, path: Path) -> None:
        """A file at the path that is not SQLite: NoStoreError naming the path, file untouched."""
        path.write_text("rollouts: yes\n" * 100)
        store = SQLiteStore(path)
        try:
            with pytest.raises(
                NoStoreError, match=re.escape(f"at {path}: the file is not a SQLite")
            ):
                store.names()
        finally:
            store.close()
        assert path.read_text() == "rollouts: yes\n" * 100

    @pytest.mark.parametrize("kind", ["directory", "fifo"])
    def test_a_path_that_is_not_a_regular_file_is_no_store(self, path: Path, kind: str) -> None:
        """A directory or a FIFO at the path: NoStoreError that creating cannot fix."""
        if kind == "directory":
            path.mkdir()
        else:
            os.mkfifo(path)
        with pytest.raises(NoStoreError, match="not a regular file") as raised:
            SQLiteStore(path, create=False).names()
        assert not raised.value.creatable
