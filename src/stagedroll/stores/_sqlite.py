"""The SQLite store: one file shared by the worker processes of a host.

WAL mode lets readers and one writer work at once; every write is one ``BEGIN IMMEDIATE``
transaction, so a process killed at any moment leaves the file as it was before or after
the write, never between. The schema's version is ``PRAGMA user_version``: a file made by
a later, incompatible version is refused rather than misread.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from .._state import RolloutState, Transition, restorable
from ._codec import dump_state, dump_transition, load_state, load_transition
from ._memory import check_version
from ._syncer import SharedStore

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

SCHEMA_VERSION = 1
"""The version of the tables this module writes (``PRAGMA user_version``)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout TEXT NOT NULL,
    version INTEGER NOT NULL,
    entry TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_by_rollout ON history (rollout, id);
CREATE TABLE IF NOT EXISTS counts (
    rollout TEXT NOT NULL,
    segment TEXT NOT NULL,
    name TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (rollout, segment, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS units (
    rollout TEXT NOT NULL,
    scope TEXT NOT NULL,
    unit TEXT NOT NULL,
    PRIMARY KEY (rollout, scope, unit)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS touched (
    rollout TEXT NOT NULL,
    key TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (rollout, key)
) WITHOUT ROWID;
"""

_EXPIRE = (
    "DELETE FROM units WHERE EXISTS (SELECT 1 FROM touched AS t "
    "WHERE t.rollout = units.rollout AND t.key = units.scope AND t.at < ?)",
    "DELETE FROM counts WHERE EXISTS (SELECT 1 FROM touched AS t "
    "WHERE t.rollout = counts.rollout AND t.key = 'counts:' || counts.segment AND t.at < ?)",
    "DELETE FROM touched WHERE at < ?",
)
_EXPIRE_EVERY_S = 3600.0


def _busy(exc: sqlite3.DatabaseError) -> bool:
    """Whether ``exc`` says another connection holds a lock (the connection itself is fine)."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


# Connections abandoned in a forked child: SQLite forbids using them across fork, and
# closing them there could release the parent's locks, so they are kept, never touched.
_abandoned: list[sqlite3.Connection] = []


class SQLiteStore(SharedStore):
    """Keeps state, history and outcome counts in one SQLite file, for one host's processes.

    ``path`` is created if missing (its directory must exist). ``timeout`` is how long a
    write waits for another process's write to end (SQLite's busy timeout) before failing.
    ``refresh_interval`` is how often, in seconds, changes made by other processes are read
    (in a background thread). ``max_history`` bounds the history kept per rollout. Outcome
    counters and unit sets not written for ``ttl`` seconds are deleted (checked hourly by
    the background thread, or by :meth:`expire`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        refresh_interval: float = 1.0,
        timeout: float = 0.5,
        max_history: int = 1000,
        ttl: float = 30 * 86400,
    ) -> None:
        if max_history < 1:
            raise ValueError("max_history must be at least 1")
        if not ttl > 0:
            raise ValueError(f"ttl must be positive, not {ttl!r}")
        super().__init__(refresh_interval=refresh_interval, thread_name="stagedroll-sqlite")
        self._ttl = ttl
        self._expired_at = 0.0  # time.monotonic() of the last expiry by the thread
        self.path = Path(os.path.abspath(path))  # the same file after a chdir
        self._timeout = timeout
        self._max_history = max_history
        self._lock = threading.Lock()  # one connection per store, used by one thread at a time
        self._db: sqlite3.Connection | None = None
        # (connection, PRAGMA data_version) at the last refresh that read the states.
        self._data_version: tuple[int, int] | None = None
        self._opened = 0  # connections opened so far: names the one in use
        self._forking = threading.local()  # .held: whether this thread's fork holds the lock

    def _before_fork(self) -> None:
        """Close the connection, so that none crosses ``fork`` (SQLite forbids it).

        The lock is held across the fork, so no other thread opens one meanwhile; the parent
        reopens lazily. If the lock cannot be had soon (a write under way), the child
        abandons the parent's connection instead.
        """
        self._forking.held = self._lock.acquire(timeout=1.0)
        if self._forking.held:
            db, self._db = self._db, None
            self._data_version = None
            if db is not None:
                db.close()

    def _after_fork_in_parent(self) -> None:
        if getattr(self._forking, "held", False):  # the same thread as _before_fork
            self._forking.held = False
            self._lock.release()

    def _after_fork(self) -> None:
        super()._after_fork()
        self._lock = threading.Lock()
        self._forking = threading.local()
        if self._db is not None:
            _abandoned.append(self._db)
        self._db = None
        self._data_version = None

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    # -- the connection -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
        try:
            self._set_up(db)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has stagedroll schema version {version}; this version of "
                    f"stagedroll reads up to {SCHEMA_VERSION} (upgrade stagedroll)"
                )
            if version < SCHEMA_VERSION:
                self._migrate(db, version)
        except BaseException:
            db.close()
            raise
        self._opened += 1
        return db

    def _set_up(self, db: sqlite3.Connection) -> None:
        """WAL mode, and ``synchronous=NORMAL`` (with WAL: durable across process crashes).

        Switching a new file to WAL takes an exclusive lock, and SQLite does not wait for it
        with the busy handler: when several processes open a new file at once, the switch
        is tried again (within ``timeout``).
        """
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.005)
        db.execute("PRAGMA synchronous=NORMAL")

    @staticmethod
    def _migrate(db: sqlite3.Connection, version: int) -> None:
        """Bring the schema from ``version`` to :data:`SCHEMA_VERSION`, in one transaction."""
        db.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated it meanwhile, perhaps a later stagedroll.
            if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._db is None:
                self._check_open()
                self._db = self._connect()
            try:
                yield self._db
            except sqlite3.DatabaseError as exc:
                if not _busy(exc):
                    # A broken connection (file gone, I/O error) is opened afresh next time;
                    # its data_version means nothing to the next one.
                    db, self._db = self._db, None
                    self._data_version = None
                    if db is not None:
                        db.close()  # rolls back a transaction left open
                raise

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: taken at once (``BEGIN IMMEDIATE``), committed or undone."""
        with self._conn() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):  # _conn closes a broken one
                        db.execute("ROLLBACK")
                raise

    # -- the Store protocol ---------------------------------------------------------------------

    def _read_many(self, names: list[str]) -> dict[str, str | bytes | None]:
        found: dict[str, str | bytes | None] = dict.fromkeys(names)
        with self._conn() as db:
            for start in range(0, len(names), 500):
                chunk = names[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    f"SELECT name, state FROM rollouts WHERE name IN ({marks})",
                    chunk,
                ).fetchall()
                found.update(rows)
        return found

    def refresh(self) -> bool:
        """Read the states if another process wrote to the file; see :meth:`SharedStore.refresh`."""
        if self._closed:
            return False
        try:
            with self._conn() as db:  # data_version means something on this connection only
                seen = (self._opened, db.execute("PRAGMA data_version").fetchone()[0])
        except Exception:
            return super().refresh()  # which logs and counts the failure
        if seen == self._data_version:
            return True  # nothing committed by another connection since the last look
        ok = super().refresh()
        if ok:
            self._data_version = seen
        return ok

    def _cycle(self) -> bool:
        ok = super()._cycle()
        if ok and time.monotonic() - self._expired_at >= _EXPIRE_EVERY_S:
            self._expired_at = time.monotonic()
            try:
                self.expire()
            except Exception as exc:
                self.failures.record("store.expire_failed", exc, store=repr(self))
        return ok

    def expire(self, now: float | None = None) -> int:
        """Delete the counters and unit sets not written for ``ttl`` seconds; say how many rows.

        ``now`` defaults to :func:`time.time`. A stage visit that ended long ago leaves
        nothing behind; one that still receives outcomes keeps all of its units.
        """
        cutoff = (time.time() if now is None else now) - self._ttl
        deleted = 0
        with self._write() as db:
            for statement in _EXPIRE:
                deleted += db.execute(statement, (cutoff,)).rowcount
        return deleted

    @staticmethod
    def _touch(db: sqlite3.Connection, rollout: str, key: str) -> None:
        db.execute(
            "INSERT INTO touched (rollout, key, at) VALUES (?, ?, ?) "
            "ON CONFLICT DO UPDATE SET at = excluded.at",
            (rollout, key, time.time()),
        )

    def compare_and_set(
        self, rollout: str, expected_version: int, state: RolloutState, transition: Transition
    ) -> bool:
        """Replace the state if its version is ``expected_version``; see :class:`Store`."""
        check_version(expected_version, state)
        with self._write() as db:
            row = db.execute("SELECT version FROM rollouts WHERE name = ?", (rollout,)).fetchone()
            if (row[0] if row is not None else 0) != expected_version:
                return False
            self._put(db, rollout, state, transition)
        self._changed(rollout, state)
        return True

    def _put_if_lost(self, rollout: str, state: RolloutState, transition: Transition) -> bool:
        with self._write() as db:
            row = db.execute("SELECT state FROM rollouts WHERE name = ?", (rollout,)).fetchone()
            try:
                stored = load_state(row[0]) if row is not None else None
            except ValueError:
                return False  # a state this version cannot read is not overwritten
            if not restorable(state, stored):
                return False
            self._put(db, rollout, state, transition)
        self._changed(rollout, state)
        return True

    def _put(
        self, db: sqlite3.Connection, rollout: str, state: RolloutState, transition: Transition
    ) -> None:
        """Write the state and its history entry (in the caller's transaction)."""
        db.execute(
            "INSERT INTO rollouts (name, version, state) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET version = excluded.version, state = excluded.state",
            (rollout, state.version, dump_state(state)),
        )
        db.execute(
            "INSERT INTO history (rollout, version, entry) VALUES (?, ?, ?)",
            (rollout, transition.version, dump_transition(transition)),
        )
        db.execute(
            "DELETE FROM history WHERE rollout = ? AND id <= ("
            "SELECT id FROM history WHERE rollout = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (rollout, rollout, self._max_history),
        )

    def history(self, rollout: str, limit: int | None = None) -> list[Transition]:
        """Return the rollout's transitions, newest first."""
        count = -1 if limit is None else max(limit, 0)
        with self._conn() as db:
            rows = db.execute(
                "SELECT entry FROM history WHERE rollout = ? ORDER BY id DESC LIMIT ?",
                (rollout, count),
            ).fetchall()
        return [load_transition(text) for (text,) in rows]

    def add_counts(self, rollout: str, segment: str, counts: Mapping[str, int]) -> dict[str, int]:
        """Add ``counts`` to the segment's counters in one transaction; return them all."""
        with self._write() as db:
            db.executemany(
                "INSERT INTO counts (rollout, segment, name, value) VALUES (?, ?, ?, ?) "
                "ON CONFLICT DO UPDATE SET value = value + excluded.value",
                [(rollout, segment, name, n) for name, n in counts.items()],
            )
            self._touch(db, rollout, "counts:" + segment)
            return self._counts(db, rollout, segment)

    def read_counts(self, rollout: str, segment: str) -> dict[str, int]:
        """Return the segment's counters."""
        with self._conn() as db:
            return self._counts(db, rollout, segment)

    @staticmethod
    def _counts(db: sqlite3.Connection, rollout: str, segment: str) -> dict[str, int]:
        rows = db.execute(
            "SELECT name, value FROM counts WHERE rollout = ? AND segment = ?", (rollout, segment)
        ).fetchall()
        return dict(rows)

    def add_units(self, rollout: str, scope: str, units: Collection[str]) -> list[bool]:
        """Remember ``units`` in the scope's set; say of each whether it was new (exact)."""
        new = []
        key = "first:" + scope
        with self._write() as db:
            for unit in units:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO units (rollout, scope, unit) VALUES (?, ?, ?)",
                    (rollout, key, unit),
                )
                new.append(cursor.rowcount == 1)
            self._touch(db, rollout, key)
        return new

    def count_distinct(self, rollout: str, scope: str, units: Collection[str]) -> int:
        """Add ``units`` to the scope's distinct units; return how many there are (exact)."""
        key = "distinct:" + scope
        query = "SELECT count(*) FROM units WHERE rollout = ? AND scope = ?"
        if not units:  # a read: no write transaction, no commit for the others to notice
            with self._conn() as db:
                return int(db.execute(query, (rollout, key)).fetchone()[0])
        with self._write() as db:
            db.executemany(
                "INSERT OR IGNORE INTO units (rollout, scope, unit) VALUES (?, ?, ?)",
                [(rollout, key, unit) for unit in units],
            )
            self._touch(db, rollout, key)
            return int(db.execute(query, (rollout, key)).fetchone()[0])

    def close(self) -> None:
        """Stop the refresh and close the file."""
        self._stop()
        with self._lock:
            db, self._db = self._db, None
        if db is not None:
            db.close()
