"""The PostgreSQL store: one state for a fleet that already runs PostgreSQL (extra ``postgres``).

Everything lives in a schema of its own (``stagedroll`` by default), created and migrated by
the store: the version of its tables is ``schema_version`` in the table ``meta``, and the
migrations are a list of steps (:data:`SCHEMA_VERSION` is their number), applied in one
transaction under ``pg_advisory_xact_lock``, so that many processes starting at once on a
new database serialize. Tables:

- ``states``: one row per rollout, its ``version`` (what compare-and-set compares) and the
  state as JSON text;
- ``history``: the transitions as JSON text, ``id`` a ``bigserial``, trimmed to
  ``max_history`` per rollout in the transaction that appends;
- ``counts``: pooled outcome counters per rollout and segment, each with when it was last
  written (``touched``);
- ``digests``: the unit sets of ``add_units`` (scope ``first:…``) and ``count_distinct``
  (``distinct:…``), as 64-bit digests (``_digest``), never a unit's text;
- ``touched``: when each unit set and error list was last written, for the expiry;
- ``errors``: each rollout's recent errors, one JSON object per row (at most 20);
- ``meta``: ``schema_version``, the store's marker (``created``), the history id of each
  rollout it has held (``rollout:{name}``), and ``generation``, a counter that every write
  of a state raises, so that a refresh that finds it unchanged reads nothing else.

The batched exchange (:meth:`PostgresStore.flush_many`) is one statement per round trip,
``CALL {schema}.flush_many(…)``: a plpgsql procedure of the schema (made by migration step
3) applies each rollout's flush in a subtransaction of its own, committed on its own, with
the locks, writes and answers of the operations one by one (``add_units``, ``add_counts``,
``count_distinct``, ``add_errors``), and reads ``generation``. The procedure's plpgsql and
the pure functions of the exchange are in ``_postgres_flush``.

Each write of a state is one transaction that also appends the history entry, raises
``generation`` and sends ``NOTIFY`` on the store's channel (:func:`channel_of`) with the
rollout's name: PostgreSQL delivers it at the commit, never for a write rolled back. With
``push`` (the default), a connection of its own listens there (``LISTEN``) and wakes the refresh;
the refresh every ``refresh_interval`` stays as the backstop.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import socket
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

from .._failures import log
from .._state import (
    RecentError,
    RolloutState,
    Transition,
    restorable,
)
from ..exceptions import MissingExtraError, NoStoreError
from ._batch import Flush, Flushed, rounds
from ._codec import (
    dump_error,
    dump_state,
    dump_transition,
    load_error,
    load_state,
    merge_errors,
)
from ._digest import member
from ._memory import check_version
from ._postgres_flush import (
    _ADD_SET,
    _ERRORS_READ,
    _FLUSH_MANY,
    _LEXEME,
    _MERGE_ERRORS,
    _PY_FLOAT,
    _READ_ERROR,
    _answer,
    _braced,
    _marker,
    _payload_of,
)
from ._redis import _redact
from ._syncer import EMPTY, SharedStore

if TYPE_CHECKING:
    import psycopg

__all__ = ["DEFAULT_URL", "OLDEST_READER", "SCHEMA_VERSION", "PostgresStore", "channel_of"]

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

_CHUNK = 5000  # names, digests or counters per statement: no statement grows with a batch
_EXPIRE_BATCH = 500  # unit sets, error lists or segments expired per statement
_TOUCH_EVERY_S = 60.0  # how often a store object writes a unit set's touched time
_TOUCHED_KEPT = 10_000  # the sets whose touched time a store object remembers


# The migrations: step n brings the tables from version n - 1 to n. "{s}" is the schema.
# The size of each set of distinct units (scopes "distinct:…"), kept up to date by the
# statements that add to or delete from the digests, whoever runs them, in their own
# transaction: counting a set is then one row's read, however large the set grew.
_SIZES_ADDED = """CREATE OR REPLACE FUNCTION {s}.sizes_added() RETURNS trigger
    LANGUAGE plpgsql AS $body$
BEGIN
  INSERT INTO {s}.sizes (rollout, scope, n)
    SELECT a.rollout, a.scope, count(*) FROM added AS a WHERE a.scope LIKE 'distinct:%'
    GROUP BY a.rollout, a.scope ORDER BY a.rollout, a.scope
    ON CONFLICT (rollout, scope) DO UPDATE SET n = {s}.sizes.n + excluded.n;
  RETURN NULL;
END
$body$"""
_SIZES_REMOVED = """CREATE OR REPLACE FUNCTION {s}.sizes_removed() RETURNS trigger
    LANGUAGE plpgsql AS $body$
BEGIN
  UPDATE {s}.sizes AS z SET n = z.n - r.k FROM (
    SELECT o.rollout, o.scope, count(*) AS k FROM removed AS o
    WHERE o.scope LIKE 'distinct:%' GROUP BY o.rollout, o.scope
  ) AS r WHERE z.rollout = r.rollout AND z.scope = r.scope;
  DELETE FROM {s}.sizes AS z WHERE z.n <= 0 AND (z.rollout, z.scope) IN (
    SELECT o.rollout, o.scope FROM removed AS o);
  RETURN NULL;
END
$body$"""

_STEPS: tuple[tuple[str, ...], ...] = (
    (  # 1: states, history, counters, unit sets, and the store's meta
        "CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value text NOT NULL)",
        "CREATE TABLE IF NOT EXISTS {s}.states (name text PRIMARY KEY, "
        "version bigint NOT NULL, state text NOT NULL)",
        "CREATE TABLE IF NOT EXISTS {s}.history (id bigserial PRIMARY KEY, "
        "rollout text NOT NULL, version bigint NOT NULL, entry text NOT NULL)",
        "CREATE INDEX IF NOT EXISTS history_by_rollout ON {s}.history (rollout, id)",
        "CREATE TABLE IF NOT EXISTS {s}.counts (rollout text, segment text, name text, "
        "value bigint NOT NULL, touched double precision NOT NULL, "
        "PRIMARY KEY (rollout, segment, name))",
        "CREATE TABLE IF NOT EXISTS {s}.digests (rollout text, scope text, digest bigint, "
        "PRIMARY KEY (rollout, scope, digest))",
        "CREATE TABLE IF NOT EXISTS {s}.touched (rollout text, key text, "
        "at double precision NOT NULL, PRIMARY KEY (rollout, key))",
        "INSERT INTO {s}.meta (key, value) VALUES ('generation', '0') ON CONFLICT DO NOTHING",
    ),
    (  # 2: recent errors, and indexes for the hourly expiry
        "CREATE TABLE IF NOT EXISTS {s}.errors (id bigserial PRIMARY KEY, "
        "rollout text NOT NULL, entry text NOT NULL)",
        "CREATE INDEX IF NOT EXISTS errors_by_rollout ON {s}.errors (rollout, id)",
        "CREATE INDEX IF NOT EXISTS touched_by_at ON {s}.touched (at)",
        "CREATE INDEX IF NOT EXISTS counts_by_touched ON {s}.counts (touched)",
    ),
    (  # 3: the batched exchange (flush_many) and the functions it calls
        *(
            _braced(text)
            for text in (_LEXEME, _PY_FLOAT, _READ_ERROR, _MERGE_ERRORS, _ADD_SET, _FLUSH_MANY)
        ),
    ),
    (  # 4: the size of each set of distinct units, kept by triggers (no count(*) per flush)
        "CREATE TABLE IF NOT EXISTS {s}.sizes (rollout text, scope text, n bigint NOT NULL, "
        "PRIMARY KEY (rollout, scope))",
        _SIZES_ADDED,
        _SIZES_REMOVED,
        # The triggers first: from then on no write to the digests goes uncounted (they
        # lock the table against writers until this migration commits), then the sizes of
        # what is there.
        "DROP TRIGGER IF EXISTS digests_added ON {s}.digests",
        "CREATE TRIGGER digests_added AFTER INSERT ON {s}.digests REFERENCING NEW TABLE AS "
        "added FOR EACH STATEMENT EXECUTE FUNCTION {s}.sizes_added()",
        "DROP TRIGGER IF EXISTS digests_removed ON {s}.digests",
        "CREATE TRIGGER digests_removed AFTER DELETE ON {s}.digests REFERENCING OLD TABLE AS "
        "removed FOR EACH STATEMENT EXECUTE FUNCTION {s}.sizes_removed()",
        "INSERT INTO {s}.sizes (rollout, scope, n) SELECT rollout, scope, count(*) FROM "
        "{s}.digests WHERE scope LIKE 'distinct:%' GROUP BY rollout, scope "
        "ON CONFLICT (rollout, scope) DO UPDATE SET n = excluded.n",
        _braced(_FLUSH_MANY),  # which reads the sizes
    ),
)
SCHEMA_VERSION = len(_STEPS)
"""The version of the tables this module writes (``schema_version`` in ``meta``).

A schema of an earlier version is migrated when first opened (the steps it lacks, in one
transaction); one of a later version is used as it is when it says that this version's
code can still use it (``oldest_reader`` in ``meta``, see :data:`OLDEST_READER`), and is
refused with a ``RuntimeError`` otherwise.
"""
OLDEST_READER = 3
"""The oldest ``SCHEMA_VERSION`` whose code can use tables of this version (written as
``oldest_reader`` in ``meta``), so that the processes of a rolling upgrade that still run
the older release keep working once the first new one has migrated. Raise it with a step
that older code cannot live with (a table or a procedure's arguments changed, not only
added); version 3 is the first that reads it."""

_QUERIES = {
    "version": "SELECT value FROM {s}.meta WHERE key = 'schema_version'",
    "set_version": "INSERT INTO {s}.meta (key, value) VALUES ('schema_version', %s) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    "reader": "SELECT value FROM {s}.meta WHERE key = 'oldest_reader'",
    "set_reader": "INSERT INTO {s}.meta (key, value) VALUES ('oldest_reader', %s) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    "generation": "SELECT value FROM {s}.meta WHERE key = 'generation'",
    "bump": "INSERT INTO {s}.meta (key, value) VALUES ('generation', '1') ON CONFLICT (key) "
    "DO UPDATE SET value = CASE WHEN {s}.meta.value ~ '^[0-9]{{1,18}}$' "
    "THEN ({s}.meta.value::bigint + 1)::text ELSE '1' END",
    "notify": "SELECT pg_notify(%s, %s)",
    "read": "SELECT name, state, version FROM {s}.states WHERE name = ANY(%s)",
    "insert_state": "INSERT INTO {s}.states (name, version, state) VALUES (%s, %s, %s) "
    "ON CONFLICT (name) DO NOTHING",
    "update_state": "UPDATE {s}.states SET version = %s, state = %s "
    "WHERE name = %s AND version = %s",
    "set_state": "UPDATE {s}.states SET version = %s, state = %s WHERE name = %s",
    "lock_state": "SELECT state FROM {s}.states WHERE name = %s FOR UPDATE",
    "names": "SELECT name FROM {s}.states",
    "history_add": "INSERT INTO {s}.history (rollout, version, entry) VALUES (%s, %s, %s)",
    "history_trim": "DELETE FROM {s}.history WHERE rollout = %s AND id <= (SELECT id FROM "
    "{s}.history WHERE rollout = %s ORDER BY id DESC OFFSET %s LIMIT 1)",
    "history": "SELECT entry FROM {s}.history WHERE rollout = %s ORDER BY id DESC LIMIT %s",
    "register": "INSERT INTO {s}.meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE "
    "SET value = excluded.value WHERE {s}.meta.value IS DISTINCT FROM excluded.value",
    "mark": "INSERT INTO {s}.meta (key, value) VALUES ('created', %s) ON CONFLICT DO NOTHING",
    "registered": "SELECT value FROM {s}.meta WHERE key = %s",
    "newest": "SELECT entry FROM {s}.history WHERE rollout = %s ORDER BY id DESC LIMIT 1",
    "share_set": "SELECT pg_advisory_xact_lock_shared(hashtext(%s))",
    "own_set": "SELECT pg_advisory_xact_lock(hashtext(%s))",
    "touch_if_missing": "INSERT INTO {s}.touched (rollout, key, at) SELECT r, k, a FROM "
    "(VALUES (%s, %s, %s::double precision)) AS v(r, k, a) WHERE NOT EXISTS (SELECT 1 FROM "
    "{s}.touched WHERE rollout = v.r AND key = v.k) ON CONFLICT DO NOTHING",
    "touch": "INSERT INTO {s}.touched (rollout, key, at) VALUES (%s, %s, %s) "
    "ON CONFLICT (rollout, key) DO UPDATE SET at = excluded.at",
    "add_digests": "INSERT INTO {s}.digests (rollout, scope, digest) SELECT %s, %s, d "
    "FROM unnest(%s::bigint[]) AS d ORDER BY d ON CONFLICT DO NOTHING RETURNING digest",
    "count_digests": "SELECT coalesce((SELECT n FROM {s}.sizes WHERE rollout = %s "
    "AND scope = %s), 0)",
    "add_counts": "INSERT INTO {s}.counts (rollout, segment, name, value, touched) "
    "SELECT %s, %s, n, v, %s FROM unnest(%s::text[], %s::bigint[]) AS u(n, v) ORDER BY n "
    "ON CONFLICT (rollout, segment, name) DO UPDATE "
    "SET value = {s}.counts.value + excluded.value, touched = excluded.touched",
    "counts": "SELECT name, value FROM {s}.counts WHERE rollout = %s AND segment = %s",
    "errors": "SELECT entry FROM {s}.errors WHERE rollout = %s ORDER BY id DESC LIMIT %s",
    "drop_errors": "DELETE FROM {s}.errors WHERE rollout = %s",
    "add_errors": "INSERT INTO {s}.errors (rollout, entry) "
    "SELECT %s, e FROM unnest(%s::text[]) WITH ORDINALITY AS u(e, i) ORDER BY i",
    "flush_many": "CALL {s}.flush_many(%s::jsonb)",
    "expired": "SELECT rollout, key FROM {s}.touched WHERE at < %s ORDER BY at LIMIT %s",
    "lock_expired": "SELECT 1 FROM {s}.touched WHERE rollout = %s AND key = %s AND at < %s "
    "FOR UPDATE",
    "expire_digests": "DELETE FROM {s}.digests WHERE rollout = %s AND scope = %s",
    "expire_touched": "DELETE FROM {s}.touched WHERE rollout = %s AND key = %s",
    "expire_counts": "DELETE FROM {s}.counts AS c USING (SELECT rollout, segment FROM "
    "{s}.counts GROUP BY rollout, segment HAVING max(touched) < %s LIMIT %s) AS old "
    "WHERE c.rollout = old.rollout AND c.segment = old.segment",
}

_MAX_PAYLOAD = 7999  # bytes of a NOTIFY payload (PostgreSQL refuses 8000 and more)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_UNENCODED = (
    "percent-encode any '/', '?', '#' or '@' in its user name and password, and any '@' "
    "in a query argument (%40): an '@' after them reads as the end of a password"
)
_SECRET_ARGUMENT = re.compile(r"pass|secret|token|auth|cred", re.IGNORECASE)
# Connections abandoned in a forked child: closing one there would send Terminate on the
# parent's socket and end the parent's session; kept, never touched.
_DRAIN = 1000  # notifications the listener takes at once before it wakes the refresh
_abandoned: list[Any] = []


def _import_psycopg() -> Any:
    try:
        import psycopg  # noqa: PLC0415 - an optional extra, imported when first used
        import psycopg.sql  # noqa: PLC0415
    except ImportError:
        raise MissingExtraError("PostgresStore", "postgres", "psycopg") from None
    return psycopg


def channel_of(schema: str) -> str:
    """The ``NOTIFY`` channel of a store's schema: ``stagedroll.{schema}``.

    When that is longer than PostgreSQL's 63 bytes (a schema name of more than 52
    characters): ``stagedroll.`` and the first 16 hex digits of the schema's MD5
    (``left(md5(schema), 16)`` in SQL).
    """
    name = f"stagedroll.{schema}"
    if len(name.encode()) <= 63:
        return name
    return "stagedroll." + hashlib.md5(schema.encode(), usedforsecurity=False).hexdigest()[:16]


class PostgresStore(SharedStore):
    """Keeps state, history and pooled outcome counts in PostgreSQL, for a fleet of hosts.

    ``url`` is a libpq URL (``postgresql://user:password@host:5432/dbname``, with libpq's
    query arguments such as ``sslmode``). Everything lives in ``schema``, which the store
    creates and migrates, unless ``create`` is false: then a schema without stagedroll's
    tables raises :class:`~stagedroll.NoStoreError` at the first use, naming the URL (without
    its credentials) and the schema, and nothing is created. ``timeout`` bounds connecting,
    each statement and each lock wait, in seconds; TCP keepalives notice a server that
    vanished within a few seconds more. ``refresh_interval`` is how often changes made
    elsewhere are read; with ``push``, a connection that listens (``LISTEN``) brings them
    at once. ``max_history`` caps each rollout's history; ``ttl`` is how long outcome
    counters, unit sets and recent errors live after their last write.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        schema: str = "stagedroll",
        refresh_interval: float = 1.0,
        timeout: float = 2.0,
        max_history: int = 1000,
        ttl: float = 30 * 86400,
        push: bool = True,
        create: bool = True,
    ) -> None:
        if max_history < 1:
            raise ValueError("max_history must be at least 1")
        if not timeout > 0 or not math.isfinite(timeout):
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        if not ttl > 0:
            raise ValueError(f"ttl must be positive, not {ttl!r}")
        if not isinstance(schema, str) or not _IDENTIFIER.fullmatch(schema):
            raise ValueError(
                f"schema must be an identifier (letters, digits and _, at most 63, not "
                f"starting with a digit), not {schema!r}"
            )
        if schema.lower().startswith("pg_"):
            raise ValueError(f"schema {schema!r}: names starting with pg_ are PostgreSQL's")
        self._psycopg = _import_psycopg()
        super().__init__(refresh_interval=refresh_interval, thread_name="stagedroll-postgres",
                         push=push)  # fmt: skip
        self.url = url
        self.schema = schema
        self.channel = channel_of(schema)
        """The ``NOTIFY`` channel of the store (see :func:`channel_of`)."""
        self._creates = create
        self._timeout = timeout
        self._max_history = max_history
        self._ttl = ttl
        self._touch_every = min(_TOUCH_EVERY_S, ttl / 10)
        self._touched: dict[tuple[str, str], float] = {}  # (rollout, set): when touched here
        self._lock_key = int.from_bytes(
            hashlib.blake2b(f"stagedroll:{schema}".encode(), digest_size=8).digest(),
            "big", signed=True,
        )  # fmt: skip
        pgsql = self._psycopg.sql
        ident = pgsql.Identifier(schema)
        self._q: dict[str, psycopg.sql.Composed] = {
            name: pgsql.SQL(text).format(s=ident) for name, text in _QUERIES.items()
        }
        self._steps: list[list[psycopg.sql.Composed]] = [
            [pgsql.SQL(text).format(s=ident) for text in step] for step in _STEPS
        ]
        self._lock = threading.Lock()  # one command connection, used by one thread at a time
        self._conn: psycopg.Connection[Any] | None = None
        self._own_backend = 0  # the server's pid of the command connection
        self._listened = False  # whether the listener listened before (then failed)
        self._listen_lock = threading.Lock()  # who takes the listening connection closes it
        self._listening_conn: psycopg.Connection[Any] | None = None
        # The process that made each connection: a thread started again in a forked child
        # may run before _after_fork, and must not touch the parent's.
        self._conn_pid = self._listening_pid = 0

    def _after_fork(self) -> None:
        """In a forked child: abandon the parent's connections; new ones are made on use.

        Only the parent's: the listener thread, started again in the child, may have made
        its own connection already (and wait on it).
        """
        super()._after_fork()
        self._lock = threading.Lock()
        self._listen_lock = threading.Lock()
        self._listened = True  # the child's first LISTEN may have missed changes since the fork
        pid = os.getpid()
        if self._conn is not None and self._conn_pid != pid:
            _abandoned.append(self._conn)
            self._conn = None
        if self._listening_conn is not None and self._listening_pid != pid:
            _abandoned.append(self._listening_conn)
            self._listening_conn = None

    def __repr__(self) -> str:
        return f"PostgresStore({_redact(self.url)!r}, schema={self.schema!r})"

    # -- connections --------------------------------------------------------------------------

    def _open(self) -> psycopg.Connection[Any]:
        """A new autocommit connection, every wait on it bounded by ``timeout``.

        Errors name the URL without its credentials, never quote it: a URL libpq would read
        otherwise than its last ``@`` (an unencoded ``/``, ``?``, ``#`` or ``@`` in the
        password) is refused before libpq sees it, and libpq's message is scrubbed of the
        URL's passwords.
        """
        pg = self._psycopg
        shown = _redact(self.url)
        if _ambiguous(self.url):
            raise pg.OperationalError(f"cannot use the PostgreSQL URL {shown!r}: {_UNENCODED}")
        ms = math.ceil(self._timeout * 1000)
        ours = (f"-c statement_timeout={ms} -c lock_timeout={ms} "
                f"-c idle_in_transaction_session_timeout={5 * ms}")  # fmt: skip
        message = None
        try:
            given = pg.conninfo.conninfo_to_dict(self.url)
            settings: dict[str, object] = {
                "connect_timeout": max(2, math.ceil(self._timeout)),
                "keepalives": 1,
                "keepalives_idle": max(1, math.ceil(self._timeout)),
                "keepalives_interval": 1,
                "keepalives_count": 3,
                "tcp_user_timeout": ms + 3000,
                "application_name": "stagedroll",
            }
            settings = {k: v for k, v in settings.items() if k not in given}  # the URL's win
            # Options given in the URL come last, so that theirs win there too.
            settings["options"] = f"{ours} {given.get('options') or ''}".strip()
            return pg.connect(self.url, autocommit=True, **settings)  # type: ignore[no-any-return]
        except pg.Error as exc:
            message = _scrub(str(exc), _secrets(self.url)).strip()
        # Raised here, out of the except clause: the error has no context that quotes the URL.
        raise pg.OperationalError(f"cannot connect to PostgreSQL at {shown!r}: {message}")

    def _connect(self) -> psycopg.Connection[Any]:
        """The command connection: opened, its schema created or brought up to date."""
        conn = self._open()
        try:
            found = self._schema_version(conn)
            if found != SCHEMA_VERSION:
                self._migrate(conn, found)
        except BaseException:
            conn.close()
            raise
        return conn

    def _schema_version(self, conn: psycopg.Connection[Any]) -> int | None:
        """The version of the schema's tables; ``None`` when it has none of stagedroll's."""
        row = conn.execute("SELECT to_regclass(%s)", (f'"{self.schema}".meta',)).fetchone()
        if row is None or row[0] is None:
            return None
        row = conn.execute(self._q["version"]).fetchone()
        if row is None:
            return None
        text = str(row[0])
        if not (text.isascii() and text.isdigit() and len(text) <= 9):
            raise RuntimeError(f"{self!r}: unreadable schema_version {text[:40]!r}")
        return int(text)

    def _missing(self) -> NoStoreError:
        return NoStoreError(
            f"no stagedroll store in schema {self.schema!r} of {_redact(self.url)} (no "
            "stagedroll tables there); expected the schema of an existing store: check the URL "
            "and the schema, or create the store"
        )

    def _migrate(self, conn: psycopg.Connection[Any], found: int | None) -> None:
        """Create the schema, or bring it to :data:`SCHEMA_VERSION`, in one transaction.

        Under ``pg_advisory_xact_lock``: of many processes starting at once, one migrates
        and the others then find the tables made. A later version is refused.
        """
        if found is None and not self._creates:
            raise self._missing()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
            made = conn.execute("SELECT to_regnamespace(%s)", (f'"{self.schema}"',)).fetchone()
            if made is None or made[0] is None:
                if not self._creates:
                    raise self._missing()
                pgsql = self._psycopg.sql
                conn.execute(pgsql.SQL("CREATE SCHEMA {}").format(pgsql.Identifier(self.schema)))
            version = self._schema_version(conn)  # another process may have migrated
            if version is None and not self._creates:
                raise self._missing()
            version = version or 0
            if version > SCHEMA_VERSION:
                if self._readable(conn):
                    return  # a newer release migrated it, and said that we can use it
                raise RuntimeError(
                    f"{self!r} has stagedroll schema version {version}; this version of "
                    f"stagedroll reads up to {SCHEMA_VERSION} (upgrade stagedroll)"
                )
            for step in self._steps[version:]:
                for statement in step:
                    conn.execute(statement)
            if version < SCHEMA_VERSION:
                conn.execute(self._q["set_version"], (str(SCHEMA_VERSION),))
                conn.execute(self._q["set_reader"], (str(OLDEST_READER),))
        if 0 < version < SCHEMA_VERSION:
            log("info", "store.migrated", store=repr(self), old=version, new=SCHEMA_VERSION)

    def _readable(self, conn: psycopg.Connection[Any]) -> bool:
        """Whether tables of a later version say that this version's code can use them."""
        row = conn.execute(self._q["reader"]).fetchone()
        text = str(row[0]) if row is not None else ""
        return text.isascii() and text.isdigit() and len(text) <= 9 and int(text) <= SCHEMA_VERSION

    @contextmanager
    def _session(self) -> Iterator[psycopg.Connection[Any]]:
        """The command connection, for one thread at a time; made on first use.

        A connection that broke (the server restarted, went away, or ended the session) is
        dropped, and so is one whose tables are gone (the schema was dropped): the next use
        makes a new one, which checks the schema again (and makes it, with ``create``). The
        first refresh on a new connection reads every state.
        """
        with self._lock:
            conn = self._conn
            if conn is not None and self._conn_pid != os.getpid():
                _abandoned.append(conn)  # the parent's (see _after_fork)
                conn = None
            if conn is None or conn.closed:
                self._check_open()
                conn = self._conn = self._connect()
                self._conn_pid = os.getpid()
                self._own_backend = conn.info.backend_pid  # its notifications are ours
                self._generation_seen = None  # what changed meanwhile is read whole
            try:
                yield conn
            except BaseException as exc:
                errors = self._psycopg.errors
                gone = (errors.OperationalError, errors.UndefinedTable, errors.InvalidSchemaName)
                if conn.closed or isinstance(exc, gone) or not isinstance(exc, Exception):
                    self._conn = None
                    with contextlib.suppress(Exception):
                        conn.close()
                raise

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """One transaction on the command connection: committed, or rolled back on error."""
        with self._session() as conn, conn.transaction():
            yield conn

    # -- listening ------------------------------------------------------------------------------

    def _listen(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for a notification; see :meth:`SharedStore._listen`.

        On a dedicated connection: the first call connects and listens (``LISTEN``); the
        first after a failure too, and returns ``True`` (what was sent meanwhile is lost).
        A notification sent by this object's own command connection (its backend's pid) is
        no news to it. A connection that fails is dropped, and the error raised.
        """
        with self._listen_lock:
            conn = self._listening_conn
            if conn is not None and self._listening_pid != os.getpid():
                _abandoned.append(conn)  # the parent's (see _after_fork)
                conn = self._listening_conn = None
        if conn is None:
            listening = self._start_listening()
            again, self._listened = self._listened, self._listened or listening
            if listening and again:  # back after a failure: the command connection may
                self._drop_session()  # have died too, unknown to psycopg until used
            return listening and again
        try:
            came = list(conn.notifies(timeout=timeout, stop_after=1))
            more = list(conn.notifies(timeout=0, stop_after=_DRAIN)) if came else []
            own = self._own_backend  # the others that came (bounded): one refresh reads all
            pushed = len(more) == _DRAIN or any(n.pid != own for n in came + more)
        except Exception:
            self._drop_listening(conn)
            if self._closed:
                return False  # ended by close()
            raise
        return pushed

    def _start_listening(self) -> bool:
        if self._closed:
            return False
        conn = self._open()
        try:
            pgsql = self._psycopg.sql
            conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(self.channel)))
        except BaseException:
            conn.close()
            raise
        with self._listen_lock:
            kept = not self._closed
            if kept:
                self._listening_conn, self._listening_pid = conn, os.getpid()
        if not kept:  # closed meanwhile
            conn.close()
        return kept

    def _drop_listening(self, conn: psycopg.Connection[Any]) -> None:
        with self._listen_lock:
            if self._listening_conn is not conn:
                return  # taken (and closed) by _stop_listening
            self._listening_conn = None
        with contextlib.suppress(Exception):
            conn.close()

    def _stop_listening(self) -> None:
        """Close the listening connection; a wait under way on it ends at once."""
        with self._listen_lock:
            conn, self._listening_conn = self._listening_conn, None
        if conn is None:
            return
        if self._listening_pid != os.getpid():  # the parent's: its socket is not ours to end
            _abandoned.append(conn)
            return
        _shut_down(conn)  # the listener's wait wakes up, fails, and lets go of the connection
        if conn.lock.acquire(timeout=self._timeout):
            try:
                with contextlib.suppress(Exception):
                    conn.close()
            finally:
                conn.lock.release()
        else:  # pragma: no cover - a wait that did not end: never closed under it
            _abandoned.append(conn)

    # -- the Store protocol ---------------------------------------------------------------------

    def _generation(self) -> object:
        with self._session() as conn:
            row = conn.execute(self._q["generation"]).fetchone()
        return _marker(str(row[0]) if row is not None else "")

    def _read_many(self, names: list[str]) -> dict[str, object]:
        found: dict[str, object] = dict.fromkeys(names)
        with self._session() as conn:
            for start in range(0, len(names), _CHUNK):
                rows = conn.execute(self._q["read"], (names[start : start + _CHUNK],))
                # The version column is what compare-and-set compares: it must agree.
                found.update((name, (state, version)) for name, state, version in rows)
        return found

    def _traces(self, rollout: str) -> tuple[str | None, object]:
        with self._session() as conn:
            registered = conn.execute(self._q["registered"], ("rollout:" + rollout,)).fetchone()
            newest = conn.execute(self._q["newest"], (rollout,)).fetchone()
        return (
            str(registered[0]) if registered is not None else None,
            newest[0] if newest is not None else None,
        )

    def compare_and_set(
        self, rollout: str, expected_version: int, state: RolloutState, transition: Transition
    ) -> bool:
        """Replace the state if its version is ``expected_version``; see :class:`Store`.

        One transaction: the state, its history entry, ``generation`` raised, and ``NOTIFY``.
        """
        check_version(expected_version, state)
        text, entry = dump_state(state), dump_transition(transition)
        with self._transaction() as conn:
            if expected_version == 0:
                cursor = conn.execute(self._q["insert_state"], (rollout, state.version, text))
            else:
                cursor = conn.execute(self._q["update_state"],
                                      (state.version, text, rollout, expected_version))  # fmt: skip
            if cursor.rowcount != 1:
                return False
            created = self._put(conn, rollout, state, transition.version, entry)
        self._changed(rollout, state)
        if created:
            self._initialized(rollout)
        return True

    def _put_if_lost(self, rollout: str, state: RolloutState, transition: Transition) -> bool:
        text, entry = dump_state(state), dump_transition(transition)
        with self._transaction() as conn:
            row = conn.execute(self._q["lock_state"], (rollout,)).fetchone()
            if row is None and restorable(state, None):
                inserted = conn.execute(self._q["insert_state"], (rollout, state.version, text))
                if inserted.rowcount != 1:  # another process wrote it meanwhile
                    row = conn.execute(self._q["lock_state"], (rollout,)).fetchone()
            elif row is None:
                return False
            if row is not None:
                try:
                    stored = load_state(row[0])
                except ValueError:
                    return False  # a state this version cannot read is not overwritten
                if not restorable(state, stored):
                    return False
                conn.execute(self._q["set_state"], (state.version, text, rollout))
            created = self._put(conn, rollout, state, transition.version, entry)
        self._changed(rollout, state)
        if created:
            self._initialized(rollout)
        return True

    def _put(self, conn: psycopg.Connection[Any], rollout: str, state: RolloutState,
             version: int, entry: str) -> bool:  # fmt: skip
        """Append the history entry of a state just written, in the caller's transaction.

        Trims the history, registers the rollout, raises ``generation`` and notifies;
        returns whether the store's marker was missing (and is written now).
        """
        q = self._q
        conn.execute(q["history_add"], (rollout, version, entry))
        conn.execute(q["history_trim"], (rollout, rollout, self._max_history))
        conn.execute(q["register"], ("rollout:" + rollout, state.history))
        created = conn.execute(q["mark"], (repr(time.time()),)).rowcount == 1
        payload = rollout if len(rollout.encode()) <= _MAX_PAYLOAD else ""
        conn.execute(q["notify"], (self.channel, payload))  # sent at the commit, if any
        conn.execute(q["bump"])
        return created

    def _initialized(self, rollout: str) -> None:
        log("warning", "store.initialized", store=repr(self), rollout=rollout, note=EMPTY)

    def history(self, rollout: str, limit: int | None = None) -> list[Transition]:
        """Return the rollout's transitions, newest first."""
        if limit is not None and limit <= 0:
            return []
        with self._session() as conn:
            rows = conn.execute(self._q["history"], (rollout, limit)).fetchall()
        return self._entries(rollout, (text for (text,) in rows))

    def names(self) -> list[str]:
        """Return the names of the rollouts that have a stored state, sorted."""
        with self._session() as conn:
            rows = conn.execute(self._q["names"]).fetchall()
        return sorted(name for (name,) in rows)

    def add_counts(self, rollout: str, segment: str, counts: Mapping[str, int]) -> dict[str, int]:
        """Add ``counts`` to the segment's counters in one transaction; return them all."""
        items = sorted(counts.items())  # one order for every writer: no deadlock
        with self._transaction() as conn:
            for start in range(0, len(items), _CHUNK):
                chunk = items[start : start + _CHUNK]
                conn.execute(self._q["add_counts"], (rollout, segment, time.time(),
                             [n for n, _ in chunk], [v for _, v in chunk]))  # fmt: skip
            rows = conn.execute(self._q["counts"], (rollout, segment)).fetchall()
        return dict(rows)

    def read_counts(self, rollout: str, segment: str) -> dict[str, int]:
        """Return the segment's counters."""
        with self._session() as conn:
            return dict(conn.execute(self._q["counts"], (rollout, segment)).fetchall())

    def _add_digests(self, rollout: str, key: str, digests: list[int]) -> set[int]:
        """Add ``digests`` to the set ``key`` in one transaction; return those that were new.

        Writers of one set share a lock that its expiry takes alone (an advisory lock on the
        set's name), so they never wait on each other, and the expiry never deletes a set
        under a write. The set's ``touched`` time is written at most every
        ``_TOUCH_EVERY_S`` by each store object (a tenth of ``ttl`` if less): a row that
        every process updated at each flush would make them take turns; between two, it is
        only created when missing (the set expired meanwhile), a read that waits on no one.
        """
        order = sorted(set(digests))  # one order for every writer: no deadlock
        new: set[int] = set()
        now = time.time()
        touch = now - self._touched.get((rollout, key), -math.inf) >= self._touch_every
        with self._transaction() as conn:
            conn.execute(self._q["share_set"], (self._set_lock(rollout, key),))
            # Not due: written only when missing (a set expired meanwhile), never waiting.
            conn.execute(self._q["touch" if touch else "touch_if_missing"], (rollout, key, now))
            for start in range(0, len(order), _CHUNK):
                rows = conn.execute(self._q["add_digests"],
                                    (rollout, key, order[start : start + _CHUNK]))  # fmt: skip
                new.update(digest for (digest,) in rows)
        if touch:
            if len(self._touched) >= _TOUCHED_KEPT:
                self._touched.clear()  # bounded: forgetting only costs a write
            self._touched[rollout, key] = now
        return new

    def _set_lock(self, rollout: str, key: str) -> str:
        """The name of a unit set's advisory lock (hashed by the server)."""
        return f"{self.schema}\x1f{rollout}\x1f{key}"

    def add_units(self, rollout: str, scope: str, units: Collection[str]) -> list[bool]:
        """Remember ``units`` in the scope's set; say of each whether it was new (exact).

        ``INSERT … ON CONFLICT DO NOTHING RETURNING`` tells the new ones; the set keeps a
        64-bit digest of each unit's text, never the text.
        """
        if not units:
            return []
        digests = [member(unit) for unit in units]
        added = self._add_digests(rollout, "first:" + scope, digests)
        new = []
        for digest in digests:  # a unit repeated in the batch is new at its first place only
            new.append(digest in added)
            added.discard(digest)
        return new

    def count_distinct(self, rollout: str, scope: str, units: Collection[str]) -> int:
        """Add ``units`` to the scope's distinct units; return how many there are (exact).

        Exact up to collisions of the 64-bit digests kept (see ``_digest``).
        """
        key = "distinct:" + scope
        if units:
            self._add_digests(rollout, key, [member(unit) for unit in units])
        with self._session() as conn:
            row = conn.execute(self._q["count_digests"], (rollout, key)).fetchone()
        return int(row[0]) if row is not None else 0

    def add_errors(self, rollout: str, errors: Sequence[RecentError]) -> None:
        """Merge ``errors`` into the rollout's recent errors in one transaction.

        See :class:`Store`; writers of one rollout's errors take turns (its ``touched`` row
        is written first), and the entries that cannot be read are dropped by the rewrite.
        """
        if not errors:
            return
        with self._transaction() as conn:
            conn.execute(self._q["touch"], (rollout, "errors", time.time()))
            merged = merge_errors(self._errors(conn, rollout), errors)
            conn.execute(self._q["drop_errors"], (rollout,))
            texts = [dump_error(error) for error in reversed(merged)]
            conn.execute(self._q["add_errors"], (rollout, texts))

    def read_errors(self, rollout: str) -> list[RecentError]:
        """Return the rollout's recent errors, the most recently seen first."""
        with self._session() as conn:
            return merge_errors(self._errors(conn, rollout), ())

    def _errors(self, conn: psycopg.Connection[Any], rollout: str) -> list[RecentError]:
        """The rollout's stored errors that can be read (the others are skipped)."""
        found = []
        for (text,) in conn.execute(self._q["errors"], (rollout, _ERRORS_READ)):
            with contextlib.suppress(ValueError):
                found.append(load_error(text))
        return found

    # -- the batched exchange ------------------------------------------------------------------

    def flush_many(self, flushes: Sequence[Flush]) -> list[Flushed | Exception]:
        """Apply ``flushes`` in one statement per round trip; see :class:`~._batch.BatchStore`.

        The statement calls the schema's ``flush_many`` function, which applies each flush
        in a subtransaction of its own (one that fails leaves nothing, and answers a
        ``ValueError`` for data the database refused, else a ``RuntimeError``) and reads the
        store's ``generation``, noted for the refresh. The flushes go in the order of their
        rollouts (one lock order for every process), their unit sets in the order of their
        names; a flush whose text PostgreSQL cannot hold, or whose errors are malformed,
        answers a ``ValueError`` and is not sent. At most ``MAX_WEIGHT`` (see ``weight``)
        goes in one statement: more make several. When the server cannot be reached (no
        connection to send on), each flush answers that error: none landed. Raises when a
        statement fails once sent (some of its flushes may have been committed).
        """
        answers: list[Flushed | Exception | None] = [None] * len(flushes)
        order = sorted(range(len(flushes)), key=lambda i: flushes[i].rollout)
        for part in rounds(flushes, order):
            self._flush_part(flushes, part, answers)
        return [answer for answer in answers if answer is not None]

    def _flush_part(self, flushes: Sequence[Flush], part: list[int],
                    answers: list[Flushed | Exception | None]) -> None:  # fmt: skip
        """Send the flushes ``part`` (indexes) in one statement; fill in their answers."""
        now = time.time()
        due: set[tuple[str, str]] = set()  # the sets this statement touches
        sent: list[tuple[int, dict[str, Any], list[tuple[str, str]], list[int]]] = []
        for i in part:
            try:
                payload, touched, places = self._payload(flushes[i], now, due)
            except Exception as exc:  # the flush's answer: it is not sent
                answers[i] = exc
                continue
            sent.append((i, payload, touched, places))
        if not sent:
            return
        batch = json.dumps({"now": now, "flushes": [payload for _, payload, _, _ in sent]},
                           separators=(",", ":"), allow_nan=False)  # fmt: skip
        try:
            with self._session():
                pass  # connected now if it had to be: nothing of the exchange is sent yet
        except Exception as exc:  # the server cannot be reached: no flush landed
            for i, _, _, _ in sent:
                answers[i] = exc
            return
        with self._session() as conn:  # a failure from here on may follow some commits
            row = conn.execute(self._q["flush_many"], (batch,)).fetchone()
        result: dict[str, Any] = row[0] if row is not None else {}
        replies = result.get("answers") or []
        if len(replies) != len(sent):
            raise RuntimeError(f"flush_many answered {len(replies)} of {len(sent)} flushes")
        for (i, _, touched, places), reply in zip(sent, replies, strict=True):
            answers[i] = answer = _answer(reply, places)
            if isinstance(answer, Flushed):
                for key in touched:
                    if len(self._touched) >= _TOUCHED_KEPT:
                        self._touched.clear()  # bounded: forgetting only costs a write
                    self._touched[key] = now
        generation = result.get("generation")
        text = str(generation) if generation is not None else ""
        self._note_generation(_marker(text))

    def _payload(self, flush: Flush, now: float, due: set[tuple[str, str]]
                 ) -> tuple[dict[str, Any], list[tuple[str, str]], list[int]]:  # fmt: skip
        """What the function receives of ``flush``; the sets it touches; its scopes' order.

        See ``_payload_of``: this store's part is each unit set's lock and whether its
        touched time is due (``due``: the sets this statement touches already).
        """
        touched: list[tuple[str, str]] = []

        def unit_set(rollout: str, key: str) -> dict[str, Any]:
            # Not due: written only when missing (a set expired meanwhile), never waiting.
            at = self._touched.get((rollout, key), -math.inf)
            touch = (rollout, key) not in due and now - at >= self._touch_every
            if touch:
                due.add((rollout, key))
                touched.append((rollout, key))
            return {"key": key, "lock": self._set_lock(rollout, key), "touch": touch}

        payload, places = _payload_of(flush, unit_set)
        return payload, touched, places

    # -- expiry and closing ---------------------------------------------------------------------

    def _expire(self) -> None:
        self.expire()

    def expire(self, now: float | None = None) -> int:
        """Delete the counters, unit sets and errors not written for ``ttl`` seconds.

        Returns how many rows went. ``now`` defaults to :func:`time.time`. Each unit set or
        error list goes in a transaction of its own, unless it was written meanwhile; a
        segment's counters go together, once none was written for ``ttl``.
        """
        cutoff = (time.time() if now is None else now) - self._ttl
        q, deleted = self._q, 0
        while True:
            with self._session() as conn:
                keys = conn.execute(q["expired"], (cutoff, _EXPIRE_BATCH)).fetchall()
            for rollout, key in keys:
                with self._transaction() as conn:
                    if key != "errors":  # no writer of the set meanwhile (they share it)
                        conn.execute(q["own_set"], (self._set_lock(rollout, key),))
                    if not conn.execute(q["lock_expired"], (rollout, key, cutoff)).fetchone():
                        continue  # written meanwhile: it lives on
                    if key == "errors":
                        deleted += conn.execute(q["drop_errors"], (rollout,)).rowcount
                    else:
                        deleted += conn.execute(q["expire_digests"], (rollout, key)).rowcount
                    deleted += conn.execute(q["expire_touched"], (rollout, key)).rowcount
            if len(keys) < _EXPIRE_BATCH:
                break
        while True:
            with self._transaction() as conn:
                gone = conn.execute(q["expire_counts"], (cutoff, _EXPIRE_BATCH)).rowcount
            deleted += gone
            if gone == 0:
                return deleted

    def _drop_session(self) -> None:
        """Close the command connection (the next use makes a new one); never raises."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None and self._conn_pid == os.getpid():
            with contextlib.suppress(Exception):
                conn.close()
        elif conn is not None:
            _abandoned.append(conn)  # the parent's (see _after_fork)

    def close(self) -> None:
        """Stop the refresh and the listener, and close the connections.

        A statement under way on a server that stopped answering (paused, or a network
        that drops packets without a reset, where no timeout of the server or of TCP fires)
        is ended: after ``timeout`` + 1 s, the command connection's socket is shut down,
        so ``close`` returns in seconds whatever the server does.
        """
        self._closed = True  # nothing new starts; the threads end at their next look
        held = self._lock.acquire(timeout=self._timeout + 1.0)
        if not held:  # a statement hangs on the server: end it
            stuck = self._conn
            if stuck is not None and self._conn_pid == os.getpid():
                _shut_down(stuck)
            held = self._lock.acquire(timeout=5.0)
        try:
            conn, self._conn = self._conn, None
        finally:
            if held:
                self._lock.release()
        self._stop()
        if conn is not None and (self._conn_pid != os.getpid() or not held):
            _abandoned.append(conn)  # the parent's (see _after_fork), or still in use
        elif conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


def _shut_down(conn: psycopg.Connection[Any]) -> None:
    """Shut the connection's socket down, without closing its descriptor; never raises.

    A wait on it in another thread then sees the end of the stream at once. The descriptor
    stays the connection's (closing it could hand its number to another socket under the
    wait).
    """
    try:
        dup = socket.socket(fileno=os.dup(conn.pgconn.socket))
    except Exception:  # closed already, or no socket
        return
    with dup, contextlib.suppress(OSError):
        dup.shutdown(socket.SHUT_RDWR)


def _ambiguous(url: str) -> bool:
    """Whether libpq could read part of the password in ``url`` as something else.

    libpq ends the user information at the first ``@`` before any ``/``, urllib (and
    ``_redact``) at the last ``@``: a ``/``, ``?``, ``#`` or ``@`` unencoded in the part
    before the last ``@`` could make libpq take a piece of the password for a host, a port
    or a database, and quote it in an error.
    """
    rest = url.partition("://")[2]
    return "@" in rest and any(c in rest[: rest.rindex("@")] for c in "/?#@")


def _secrets(url: str) -> list[str]:
    """The passwords ``url`` holds (its user information's, a ``password=`` argument's)."""
    rest = url.partition("://")[2]
    found = []
    if "@" in rest:
        userinfo, rest = rest.rsplit("@", 1)
        if ":" in userinfo:  # a user name alone is no secret (and may be "postgres")
            found.append(userinfo.partition(":")[2])
    query = rest.partition("?")[2].partition("#")[0]
    found += [v for k, v in parse_qsl(query) if _SECRET_ARGUMENT.search(k)]
    return [s for s in {*found, *map(unquote, found)} if s]


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
