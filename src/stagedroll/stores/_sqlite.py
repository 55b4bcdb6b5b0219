"""The SQLite store: one file shared by the worker processes of a host.

WAL mode lets readers and one writer work at once; every write is one ``BEGIN IMMEDIATE``
transaction, so a process killed at any moment leaves the file as it was before or after
the write, never between. The schema's version is ``PRAGMA user_version``: a file made by
a later, incompatible version is refused rather than misread.

A store made with ``create=False`` never creates the file: a missing file, or one that holds
no stagedroll tables, raises :class:`~stagedroll.NoStoreError` naming the resolved path.

The file is created with mode ``0600`` unless told otherwise (SQLite gives its ``-wal`` and
``-shm`` files the mode of the database). It holds no unit's text: the unit sets keep
64-bit digests (``_digest``). A file deleted or replaced under a running process is noticed
at the next use (its device and inode differ from the opened file's) and opened afresh at
the path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from .._failures import log
from .._state import RecentError, RolloutState, Transition, restorable
from ..exceptions import NoStoreError, StoreError
from ._codec import (
    MAX_ERRORS,
    dump_error,
    dump_state,
    dump_transition,
    load_error,
    load_state,
    merge_errors,
)
from ._digest import digest, member, rollout_key, token
from ._memory import check_version
from ._syncer import EMPTY, SharedStore

__all__ = ["DEFAULT_MODE", "SCHEMA_VERSION", "SQLiteStore"]

SCHEMA_VERSION = 2
"""The version of the tables this module writes (``PRAGMA user_version``).

1: the first; 2: unit sets keep digests (table ``digests``, not ``units``) and ``meta``
holds the store's marker and the rollouts it has held. The version rises only for a change
that earlier versions would misread: the table ``errors`` (each rollout's recent errors)
was added to version 2 in place, since processes that do not know it leave it alone; so a
file stays open to the processes of the previous release that share it (a newer CLI run on
a host does not lock the workers out).
"""
DEFAULT_MODE = 0o600
"""The permissions of a new file (and of its ``-wal`` and ``-shm`` files): the owner's."""

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
CREATE TABLE IF NOT EXISTS digests (
    rollout TEXT NOT NULL,
    scope TEXT NOT NULL,
    digest INTEGER NOT NULL,
    PRIMARY KEY (rollout, scope, digest)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS touched (
    rollout TEXT NOT NULL,
    key TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (rollout, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS errors (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout TEXT NOT NULL,
    entry TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS errors_by_rollout ON errors (rollout, id);
"""

_EXPIRE = (
    "DELETE FROM digests WHERE EXISTS (SELECT 1 FROM touched AS t "
    "WHERE t.rollout = digests.rollout AND t.key = digests.scope AND t.at < ?)",
    "DELETE FROM counts WHERE EXISTS (SELECT 1 FROM touched AS t "
    "WHERE t.rollout = counts.rollout AND t.key = 'counts:' || counts.segment AND t.at < ?)",
    "DELETE FROM errors WHERE EXISTS (SELECT 1 FROM touched AS t "
    "WHERE t.rollout = errors.rollout AND t.key = 'errors' AND t.at < ?)",
    "DELETE FROM touched WHERE at < ?",
)
_ERRORS_READ = 10 * MAX_ERRORS  # rows read per rollout: stagedroll writes at most MAX_ERRORS
_POLL_S = 0.025  # how often the listener of push looks at the generation


def _count(value: object) -> int:
    """A counter kept as text in ``meta``; 0 when it is not one (written behind our back)."""
    try:
        return int(str(value))
    except ValueError:
        return 0


_COMPANIONS = ("-wal", "-shm")


_NOT_REGULAR = "not a regular file (a directory, a FIFO, a device?)"


class NotARegularFile(OSError):
    """The path names a directory, a FIFO or a device, which SQLite must not open."""


def _busy(exc: sqlite3.DatabaseError) -> bool:
    """Whether ``exc`` says another connection holds a lock (the connection itself is fine)."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def _identity(path: Path) -> tuple[int, int] | None:
    """The file at ``path`` as ``(st_dev, st_ino)``; ``None`` when there is none."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _utf8(text: str) -> bool:
    """Whether ``text`` read from the file was UTF-8 (no byte kept as a lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(data: bytes) -> str:
    """TEXT read from the file: bytes that are not UTF-8 do not fail the whole read."""
    return data.decode("utf-8", "surrogateescape")


# Connections abandoned in a forked child: SQLite forbids using them across fork, and
# closing them there could release the parent's locks, so they are kept, never touched.
_abandoned: list[sqlite3.Connection] = []


class SQLiteStore(SharedStore):
    """Keeps state, history and outcome counts in one SQLite file, for one host's processes.

    ``path`` is created if missing (its directory must exist), unless ``create`` is false:
    then a missing file, or one without stagedroll's tables, raises
    :class:`~stagedroll.NoStoreError` (a :class:`~stagedroll.StoreError`) naming the
    resolved path, at construction and at each later attempt to open it, and nothing is
    created. ``timeout`` is how long a write waits for another process's write to end
    (SQLite's busy timeout) before failing.
    ``refresh_interval`` is how often, in seconds, changes made by other processes are read
    (in a background thread). ``max_history`` bounds the history kept per rollout. Outcome
    counters and unit sets not written for ``ttl`` seconds are deleted (checked hourly by
    the background thread, or by :meth:`expire`). A file that does not exist is created
    with permissions ``mode`` exactly (default ``0o600``, whatever the umask); an existing
    file keeps its own. ``push=True`` adds a thread that looks at the file's change counter
    every 25 ms and wakes the refresh when a state changed: other processes' transitions
    then arrive in milliseconds rather than within ``refresh_interval``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        refresh_interval: float = 1.0,
        timeout: float = 0.5,
        max_history: int = 1000,
        ttl: float = 30 * 86400,
        mode: int = DEFAULT_MODE,
        create: bool = True,
        push: bool = False,
    ) -> None:
        if max_history < 1:
            raise ValueError("max_history must be at least 1")
        if not ttl > 0:
            raise ValueError(f"ttl must be positive, not {ttl!r}")
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
            raise ValueError(f"mode must be permission bits from 0o000 to 0o777, not {mode!r}")
        if mode & 0o600 != 0o600:  # SQLite then gives the -wal and -shm files its default
            raise ValueError(f"mode must let the owner read and write (0o600), not {mode:#o}")
        self._mode = mode
        super().__init__(refresh_interval=refresh_interval, thread_name="stagedroll-sqlite",
                         push=push)  # fmt: skip
        self._polled: int | None = None  # the generation the listener saw last
        self._wrote = 0  # the generation of this object's last committed write
        self._writing = 0  # the generation of the write under way (not committed yet)
        self._quiet = threading.Event()  # set: the listener stops waiting (closing)
        self._ttl = ttl
        self.path = Path(os.path.abspath(path))  # the same file after a chdir
        self._creates = create  # False: a missing file is refused, never made
        if not create and _identity(self.path) is None:
            raise self._missing()
        self._timeout = timeout
        self._max_history = max_history
        self._lock = threading.Lock()  # one connection per store, used by one thread at a time
        self._db: sqlite3.Connection | None = None
        # (connection, PRAGMA data_version) at the last refresh that read the states.
        self._data_version: tuple[int, int] | None = None
        self._opened = 0  # connections opened so far: names the one in use
        self._file: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened
        # The -wal and -shm files of the file opened, as (st_dev, st_ino): they stay while a
        # connection is open, and must not outlive the file if it is replaced.
        self._companions: tuple[tuple[int, int] | None, ...] = ()
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
        self._quiet = threading.Event()
        self._polled = None
        self._lock = threading.Lock()
        self._forking = threading.local()
        if self._db is not None:
            _abandoned.append(self._db)
        self._db = None
        self._data_version = None
        self._file = None

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    # -- the connection -------------------------------------------------------------------------

    def _create(self) -> tuple[int, int]:
        """Create the file with ``mode`` if it is missing; return the identity of the file.

        Raises ``OSError`` when the path is not a regular file (a directory, a FIFO, a
        device): SQLite could block reading a FIFO, or read a device without end.
        """
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags, self._mode)
        except FileExistsError:
            pass
        else:
            try:
                if hasattr(os, "fchmod"):  # pragma: no branch - absent on Windows only
                    os.fchmod(fd, self._mode)  # exactly mode: the umask neither adds nor takes
            finally:
                os.close(fd)
        info = os.stat(self.path)
        if not stat.S_ISREG(info.st_mode):
            raise NotARegularFile(errno.EINVAL, _NOT_REGULAR)
        return info.st_dev, info.st_ino

    def _missing(self) -> NoStoreError:
        return NoStoreError(
            f"no stagedroll store at {self.path} (the file does not exist); expected the "
            "SQLite file of an existing store: check the path, or create the store"
        )

    def _existing(self) -> tuple[int, int]:
        """The identity of the file at the path, which must exist (``create=False``)."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            raise self._missing() from None
        if not stat.S_ISREG(info.st_mode):
            raise NotARegularFile(errno.EINVAL, _NOT_REGULAR)
        return info.st_dev, info.st_ino

    def _connect(self) -> sqlite3.Connection:
        """A connection to the file, its schema brought up to date.

        Whatever keeps the file from opening (a missing directory, no permission, SQLite's
        "unable to open database file", a file that is not a database) is raised as a
        :class:`~stagedroll.StoreError` naming the resolved path.
        """
        try:
            return self._open()
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc):  # a misconfiguration, not an outage
                raise NoStoreError(
                    f"no stagedroll store at {self.path}: the file is not a SQLite database",
                    creatable=False,
                ) from exc
            if "unable to open" not in str(exc):
                raise
            raise StoreError(f"cannot open the stagedroll store at {self.path}: {exc}") from exc
        except NotARegularFile as exc:
            raise NoStoreError(
                f"no stagedroll store at {self.path}: {exc.strerror}", creatable=False
            ) from exc
        except (FileNotFoundError, PermissionError) as exc:
            why = exc.strerror or str(exc)
            if isinstance(exc, FileNotFoundError) and not self.path.parent.is_dir():
                why = f"its directory {self.path.parent} does not exist"
            raise StoreError(f"cannot open the stagedroll store at {self.path}: {why}") from exc

    def _open(self) -> sqlite3.Connection:
        for attempt in range(3):  # the path may be replaced between the check and the open
            if self._creates:
                identity = self._create()
                db = sqlite3.connect(
                    self.path, timeout=self._timeout, isolation_level=None,
                    check_same_thread=False,
                )  # fmt: skip
            else:  # mode=rw: SQLite creates no file either
                identity = self._existing()
                db = sqlite3.connect(
                    self.path.as_uri() + "?mode=rw", timeout=self._timeout,
                    isolation_level=None, check_same_thread=False, uri=True,
                )  # fmt: skip
            if _identity(self.path) == identity or attempt == 2:
                break
            db.close()
        db.text_factory = _text
        try:
            if not self._creates and db.execute("PRAGMA user_version").fetchone()[0] == 0:
                raise NoStoreError(
                    f"no stagedroll store at {self.path} (the file holds no stagedroll "
                    "tables); expected the SQLite file of an existing store: check the path, "
                    "or create the store"
                )
            self._set_up(db)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has stagedroll schema version {version}; this version of "
                    f"stagedroll reads up to {SCHEMA_VERSION} (upgrade stagedroll)"
                )
            if version < SCHEMA_VERSION or not _has_table(db, "errors"):
                self._migrate(db, version)
        except BaseException:
            db.close()
            raise
        self._opened += 1
        self._file = identity
        self._companions = tuple(_identity(self._companion(suffix)) for suffix in _COMPANIONS)
        return db

    def _companion(self, suffix: str) -> Path:
        return self.path.with_name(self.path.name + suffix)

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
        """Bring the schema from ``version`` to :data:`SCHEMA_VERSION`, in one transaction.

        From 1: the units kept as text become digests, and their table is dropped with
        ``secure_delete`` on (its pages are overwritten, not only freed), then the WAL is
        checkpointed into the file; the states already held are registered in ``meta``.
        At 2, the tables added since (``errors``) are created if missing; nothing else
        changes.
        """
        db.execute("PRAGMA secure_delete = ON")
        db.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated it meanwhile, perhaps a later stagedroll.
            current = db.execute("PRAGMA user_version").fetchone()[0]
            if current <= SCHEMA_VERSION:  # IF NOT EXISTS: also the tables added to 2 since
                _create_tables(db)
            if current < SCHEMA_VERSION:
                if current == 1:
                    _digest_units(db)
                _register_all(db)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.execute("PRAGMA secure_delete = OFF")
        if current == 1:  # the old pages, zeroed in the WAL, now in the file too (if it can)
            with contextlib.suppress(sqlite3.Error):
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _check_file(self) -> None:
        """Open the file afresh if the path no longer names the one opened (deleted, replaced).

        The old connection is closed: SQLite then neither checkpoints nor deletes the WAL
        (the file moved). The old file's ``-wal`` and ``-shm`` files, if still at their
        names, are deleted: SQLite would take them for the new file's and replay the old
        file's pages into it. Those of another file (one that was made after all three were
        deleted) are left alone. Logged and counted as ``store.file_replaced``; the next
        read finds what the new file holds (a process that knew states the new file lacks
        writes them back).
        """
        with self._lock:
            db = self._db
            if db is None or self._file is None:
                return
            found = _identity(self.path)
            if found == self._file:
                return
            self._db, self._data_version, self._file = None, None, None
            db.close()
            for suffix, opened in zip(_COMPANIONS, self._companions, strict=False):
                companion = self._companion(suffix)
                if opened is not None and _identity(companion) == opened:
                    with contextlib.suppress(OSError):
                        companion.unlink()
            self._companions = ()
        self.failures.record("store.file_replaced", store=repr(self),
                             deleted=found is None)  # fmt: skip

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        self._check_file()
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
                    self._file = None
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

    def _read_many(self, names: list[str]) -> dict[str, object]:
        found: dict[str, object] = dict.fromkeys(names)
        with self._conn() as db:
            for start in range(0, len(names), 500):
                chunk = names[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    f"SELECT name, state, version FROM rollouts WHERE name IN ({marks})",
                    chunk,
                ).fetchall()
                # The version column is what compare-and-set compares: it must agree.
                found.update((name, (state, version)) for name, state, version in rows)
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

    def _listen(self, timeout: float) -> bool:
        """Look at the file's ``generation`` every 25 ms for up to ``timeout`` seconds.

        SQLite has no notifications: this is the short poll of one host, a read of one row
        of a local file (about 40 a second, each a few microseconds). True when it changed
        since the last look.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._conn() as db:
                row = db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
            generation = _count(row[0]) if row is not None else 0
            polled, self._polled = self._polled, generation
            # News, unless it is the first look or the one write since was this object's.
            if polled is not None and generation != polled:
                own = generation == self._wrote == polled + 1  # the one write since was ours
                if not own:
                    return True
            left = deadline - time.monotonic()
            if left <= 0 or self._quiet.wait(min(_POLL_S, left)):
                return False

    def _stop_listening(self) -> None:
        self._quiet.set()

    def _expire(self) -> None:
        self.expire()

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
            created = self._put(db, rollout, state, transition)
        self._wrote = self._writing  # committed: the generation it made is this object's
        self._changed(rollout, state)
        if created:
            self._initialized(rollout)
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
            created = self._put(db, rollout, state, transition)
        self._wrote = self._writing
        self._changed(rollout, state)
        if created:
            self._initialized(rollout)
        return True

    def _initialized(self, rollout: str) -> None:
        log("warning", "store.initialized", store=repr(self), rollout=rollout, note=EMPTY)

    def _traces(self, rollout: str) -> tuple[str | None, object]:
        with self._conn() as db:
            registered = db.execute(
                "SELECT value FROM meta WHERE key = ?", ("rollout:" + rollout,)
            ).fetchone()
            newest = db.execute(
                "SELECT entry FROM history WHERE rollout = ? ORDER BY id DESC LIMIT 1", (rollout,)
            ).fetchone()
        return (
            str(registered[0]) if registered is not None else None,
            newest[0] if newest is not None else None,
        )

    def _put(
        self, db: sqlite3.Connection, rollout: str, state: RolloutState, transition: Transition
    ) -> bool:
        """Write the state and its history entry (in the caller's transaction).

        The rollout is registered in ``meta`` with its history id; returns whether the
        store's marker was missing (and is written now).
        """
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
        db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
            "SET value = excluded.value WHERE value IS NOT excluded.value",
            ("rollout:" + rollout, state.history),
        )
        (generation,) = db.execute(  # the store's marker of change, polled with push
            "INSERT INTO meta (key, value) VALUES ('generation', '1') ON CONFLICT (key) "
            "DO UPDATE SET value = CAST(value AS INTEGER) + 1 RETURNING value"
        ).fetchone()
        self._writing = _count(generation)  # this object's, once the transaction commits
        marked = db.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('created', ?)", (repr(time.time()),)
        )
        return marked.rowcount == 1

    def history(self, rollout: str, limit: int | None = None) -> list[Transition]:
        """Return the rollout's transitions, newest first."""
        count = -1 if limit is None else max(limit, 0)
        with self._conn() as db:
            rows = db.execute(
                "SELECT entry FROM history WHERE rollout = ? ORDER BY id DESC LIMIT ?",
                (rollout, count),
            ).fetchall()
        return self._entries(rollout, (text for (text,) in rows))

    def names(self) -> list[str]:
        """Return the names of the rollouts that have a stored state, sorted.

        A name that is not UTF-8 text (written behind the store's back) names no rollout
        this store could read or write: it is left out.
        """
        with self._conn() as db:
            rows = db.execute("SELECT name FROM rollouts").fetchall()
        return sorted(name for (name,) in rows if isinstance(name, str) and _utf8(name))

    def add_errors(self, rollout: str, errors: Sequence[RecentError]) -> None:
        """Merge ``errors`` into the rollout's recent errors in one transaction.

        See :class:`Store`; the entries that cannot be read are dropped by the rewrite.
        """
        if not errors:
            return
        with self._write() as db:
            merged = merge_errors(self._errors(db, rollout), errors)
            db.execute("DELETE FROM errors WHERE rollout = ?", (rollout,))
            db.executemany(
                "INSERT INTO errors (rollout, entry) VALUES (?, ?)",
                [(rollout, dump_error(error)) for error in reversed(merged)],
            )
            self._touch(db, rollout, "errors")

    def read_errors(self, rollout: str) -> list[RecentError]:
        """Return the rollout's recent errors, the most recently seen first."""
        with self._conn() as db:
            return merge_errors(self._errors(db, rollout), ())

    @staticmethod
    def _errors(db: sqlite3.Connection, rollout: str) -> list[RecentError]:
        """The rollout's stored errors that can be read (the others are skipped)."""
        rows = db.execute(
            "SELECT entry FROM errors WHERE rollout = ? ORDER BY id DESC LIMIT ?",
            (rollout, _ERRORS_READ),
        ).fetchall()
        found = []
        for (text,) in rows:
            with contextlib.suppress(ValueError):
                found.append(load_error(text))
        return found

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
        return {name: value for name, value in rows if type(value) is int}  # not a stray value

    def add_units(self, rollout: str, scope: str, units: Collection[str]) -> list[bool]:
        """Remember ``units`` in the scope's set; say of each whether it was new (exact).

        The set keeps a 64-bit digest of each unit's text, never the text.
        """
        new = []
        key = "first:" + scope
        with self._write() as db:
            for unit in units:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO digests (rollout, scope, digest) VALUES (?, ?, ?)",
                    (rollout, key, member(unit)),
                )
                new.append(cursor.rowcount == 1)
            self._touch(db, rollout, key)
        return new

    def count_distinct(self, rollout: str, scope: str, units: Collection[str]) -> int:
        """Add ``units`` to the scope's distinct units; return how many there are (exact).

        Exact up to collisions of the 64-bit digests kept (see ``_digest``).
        """
        key = "distinct:" + scope
        query = "SELECT count(*) FROM digests WHERE rollout = ? AND scope = ?"
        if not units:  # a read: no write transaction, no commit for the others to notice
            with self._conn() as db:
                return int(db.execute(query, (rollout, key)).fetchone()[0])
        with self._write() as db:
            db.executemany(
                "INSERT OR IGNORE INTO digests (rollout, scope, digest) VALUES (?, ?, ?)",
                [(rollout, key, member(unit)) for unit in units],
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


def _create_tables(db: sqlite3.Connection) -> None:
    """Create the tables and indexes that are missing (in the caller's transaction)."""
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    return db.execute(query, (name,)).fetchone() is not None


def _digest_units(db: sqlite3.Connection) -> None:
    """Schema 1 to 2: the units kept as text become the digests that stagedroll now sends.

    Each unit gets the digest of its rollout's key (the history id of its stored state), as
    the processes of schema 2 compute it, so that a unit counted before the upgrade is not
    new after it. The table of texts is then dropped.
    """
    keys: dict[str, bytes] = {}
    for name, text in db.execute("SELECT name, state FROM rollouts").fetchall():
        try:
            history = load_state(text).history
        except ValueError:
            history = ""
        keys[str(name)] = rollout_key(str(name), history)
    rows = db.execute("SELECT rollout, scope, unit FROM units").fetchall()
    db.executemany(
        "INSERT OR IGNORE INTO digests (rollout, scope, digest) VALUES (?, ?, ?)",
        [
            (rollout, scope, member(digest(keys.get(str(rollout)) or rollout_key(str(rollout), ""),
                                           token(str(unit)))))
            for rollout, scope, unit in rows
        ],
    )  # fmt: skip
    db.execute("DROP TABLE units")


def _register_all(db: sqlite3.Connection) -> None:
    """Register the states the file holds in ``meta``, with the marker if there are any."""
    rows = db.execute("SELECT name, state FROM rollouts").fetchall()
    for name, text in rows:
        try:
            history = load_state(text).history
        except ValueError:
            history = ""
        db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                   ("rollout:" + str(name), history))  # fmt: skip
    if rows:  # a file in use: marked now, quietly (it was not created now)
        db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('created', ?)",
                   (repr(time.time()),))  # fmt: skip
