"""The contract every store keeps: one suite, run against memory, SQLite, Redis and PostgreSQL.

The real backends run: SQLite files under ``tmp_path``, the machine's (or a private) Redis
under a key prefix of the test's own, and the machine's (or a private) PostgreSQL in a schema
of the test's own. The multi-process tests build their stores in the children from a URL, as
a worker process of a service would.
"""

from __future__ import annotations

import gc
import multiprocessing
import queue
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import pytest
import redis
import structlog

from stagedroll import (
    Action,
    MemoryStore,
    PostgresStore,
    RecentError,
    RedisStore,
    RolloutState,
    SQLiteStore,
    Status,
    Store,
    SyncingStore,
    Transition,
)
from stagedroll.stores import store_from_url

if TYPE_CHECKING:
    from multiprocessing.context import ForkContext, SpawnContext

# Generous timeouts: the machines that run the suite are shared and noisy, and a command
# that times out would fail a test about correctness, not speed.
SQLITE_TIMEOUT_S = 10.0
REDIS_TIMEOUT_S = 5.0
POSTGRES_TIMEOUT_S = 10.0
DEADLINE_S = 60.0
"""How long a test waits for its threads and processes before it calls them stuck."""


def state(version: int, stage: int = 0, status: Status = Status.RUNNING) -> RolloutState:
    return RolloutState(stage=stage, status=status, since=1000.0 + version, version=version)


def entry(version: int, stage: int = 0, rollout: str = "r") -> Transition:
    return Transition(
        rollout, Action.ADVANCE, stage - 1, stage, Status.RUNNING, Status.RUNNING, version,
        2000.0 + version,
    )  # fmt: skip


# -- the backends -------------------------------------------------------------------------------


@dataclass
class Backend:
    """Makes stores of one kind that share their data (same file, same prefix)."""

    kind: str
    url: str
    """The URL a child process builds its store from (``memory://`` shares nothing)."""
    build: Callable[..., Store]
    made: list[Store] = field(default_factory=list)
    cleanup: Callable[[], None] | None = None

    def make(self, **options: Any) -> Store:
        """A new store object on the backend's data; closed at the test's end."""
        store = self.build(**options)
        self.made.append(store)
        return store

    def make_shared(self, **options: Any) -> SQLiteStore | RedisStore:
        """A new SQLite or Redis store object (the shared kinds the importing modules test)."""
        store = self.make(**options)
        assert isinstance(store, SQLiteStore | RedisStore)
        return store

    def close(self) -> None:
        for store in self.made:
            store.close()
        if self.cleanup is not None:
            self.cleanup()


def _redis_options(request: pytest.FixtureRequest) -> tuple[str, str]:
    url: str = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("redis_prefix")
    return url, prefix


def _delete_keys(url: str, prefix: str) -> None:
    """Delete the keys under ``prefix``, its glob characters escaped.

    The test's name, and so ``redis_prefix``, holds ``[redis]``: as a SCAN pattern that is a
    character class, which would leave the test's keys behind.
    """
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + ":*"
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _with_query(url: str, **options: object) -> str:
    return url + ("&" if "?" in url else "?") + urlencode(options)


def _backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if kind == "memory":
        shared = MemoryStore()

        def memory(**options: Any) -> Store:
            # One MemoryStore is one store: a second object would share nothing with it.
            return MemoryStore(**options) if options else shared

        return Backend(kind, "memory://", memory)
    if kind == "sqlite":
        path = tmp_path / "store.db"

        def sqlite(**options: Any) -> Store:
            return SQLiteStore(path, **{"timeout": SQLITE_TIMEOUT_S, **options})

        return Backend(kind, _with_query(f"sqlite:///{path}", timeout=SQLITE_TIMEOUT_S), sqlite)
    if kind == "postgres":
        return _postgres_backend(request)
    url, prefix = _redis_options(request)

    def redis_store(**options: Any) -> Store:
        # Without push unless asked: the suite drives the refreshes (tests/test_push.py).
        options = {"prefix": prefix, "timeout": REDIS_TIMEOUT_S, "push": False, **options}
        return RedisStore(url, **options)

    return Backend(
        kind,
        _with_query(url, prefix=prefix, timeout=REDIS_TIMEOUT_S),
        redis_store,
        cleanup=lambda: _delete_keys(url, prefix),
    )


def _postgres_backend(request: pytest.FixtureRequest) -> Backend:
    url: str = request.getfixturevalue("postgres_url")
    schema: str = request.getfixturevalue("postgres_schema")  # dropped after the test

    def postgres(**options: Any) -> Store:
        # Without push, unless asked: a test with a long refresh_interval decides when a
        # store object reads what another one wrote. The children of the multi-process
        # tests, built from the URL, listen.
        options = {"schema": schema, "timeout": POSTGRES_TIMEOUT_S, "push": False, **options}
        return PostgresStore(url, **options)

    return Backend("postgres", _with_query(url, schema=schema, timeout=POSTGRES_TIMEOUT_S),
                   postgres)  # fmt: skip


BACKENDS = ["memory", "sqlite", "redis", "postgres"]
SHARED = ["sqlite", "redis", "postgres"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run this module's tests on every backend, PostgreSQL included.

    The fixtures' own params stay as they were for the modules that import them (written
    for SQLite and Redis); a parametrize mark here takes precedence over them.
    """
    for name, kinds in (("backend", BACKENDS), ("shared", SHARED)):
        if name in metafunc.fixturenames:
            metafunc.definition.add_marker(pytest.mark.parametrize(name, kinds, indirect=True))


@pytest.fixture(name="backend", params=["memory", "sqlite", "redis"])
def _backend_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    backend = _backend(request.param, request, tmp_path)
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture(name="store")
def _store(backend: Backend) -> Store:
    return backend.make()


@pytest.fixture(name="shared", params=["sqlite", "redis"])
def _shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A backend that processes share (memory is per process)."""
    backend = _backend(request.param, request, tmp_path)
    try:
        yield backend
    finally:
        backend.close()


def run_threads(count: int, work: Callable[[int], None]) -> None:
    """Run ``work(i)`` on ``count`` threads at once; re-raise the first error."""
    errors: list[BaseException] = []

    def target(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S)
        assert not t.is_alive(), "a thread is stuck"
    if errors:
        raise errors[0]


# -- states and compare-and-set -----------------------------------------------------------------


class TestCompareAndSet:
    def test_unknown_rollout_loads_as_none(self, store: Store) -> None:
        """A rollout the store never saw loads as None and has no history."""
        assert store.load("never") is None
        assert store.history("never") == []

    def test_create_expects_version_zero(self, store: Store) -> None:
        """An absent rollout has version 0: only a write expecting 0 creates it."""
        assert not store.compare_and_set("r", 1, state(2), entry(2))
        assert store.load("r") is None
        assert store.compare_and_set("r", 0, state(1), entry(1))
        assert store.load("r") == state(1)
        assert store.history("r") == [entry(1)]

    def test_stale_version_is_refused_and_changes_nothing(self, store: Store) -> None:
        """A write expecting another version than the stored one leaves state and history."""
        assert store.compare_and_set("r", 0, state(1), entry(1))
        assert store.compare_and_set("r", 1, state(2, stage=1), entry(2, stage=1))
        assert not store.compare_and_set("r", 1, state(2, stage=5), entry(2, stage=5))
        assert not store.compare_and_set("r", 0, state(1, stage=6), entry(1, stage=6))
        assert not store.compare_and_set("r", 7, state(8, stage=7), entry(8, stage=7))
        assert store.load("r") == state(2, stage=1)
        assert store.history("r") == [entry(2, stage=1), entry(1)]

    @pytest.mark.parametrize(("expected", "version"), [(0, 0), (0, 2), (3, 3), (3, 5), (1, 0)])
    def test_version_must_rise_by_one(self, store: Store, expected: int, version: int) -> None:
        """A new state whose version is not expected + 1 is refused with ValueError."""
        with pytest.raises(ValueError, match=f"version must be {expected + 1}"):
            store.compare_and_set("r", expected, state(version), entry(version))
        assert store.load("r") is None
        assert store.history("r") == []

    def test_state_round_trips_exactly(self, store: Store) -> None:
        """Every field of a state comes back as written: epoch, unicode reason, float since."""
        first = RolloutState(
            stage=-1,
            status=Status.ROLLED_BACK,
            since=1712345678.123456789,
            version=1,
            reason="erreurs ↑ 5 % — « rollback » 🚨",
            actor="ops@example.com",
            epoch=1,
            stages=(("canary", 0.5), ("moitié ✓", 50.0), ("all", 100.0)),
        )
        assert store.compare_and_set("r", 0, first, entry(1))
        loaded = store.load("r")
        assert loaded == first
        assert loaded is not None
        assert isinstance(loaded.since, float)
        assert isinstance(loaded.status, Status)
        for version, status in enumerate(Status, start=2):
            new = RolloutState(3, status, 0.1 + version, version, "", "", epoch=version - 1)
            assert store.compare_and_set("r", version - 1, new, entry(version))
            assert store.load("r") == new

    def test_rollouts_are_kept_apart(self, store: Store) -> None:
        """One rollout's state and history do not touch another's."""
        assert store.compare_and_set("a", 0, state(1, stage=1), entry(1, 1, rollout="a"))
        assert store.compare_and_set("b", 0, state(1, stage=2), entry(1, 2, rollout="b"))
        assert store.compare_and_set("a", 1, state(2, stage=3), entry(2, 3, rollout="a"))
        assert store.load("a") == state(2, stage=3)
        assert store.load("b") == state(1, stage=2)
        assert store.history("a") == [entry(2, 3, rollout="a"), entry(1, 1, rollout="a")]
        assert store.history("b") == [entry(1, 2, rollout="b")]

    def test_racing_threads_have_exactly_one_winner(self, store: Store) -> None:
        """Of 8 threads writing over the same version at once, exactly one succeeds."""
        barrier = threading.Barrier(8)
        wins: list[int] = []

        def race(i: int) -> None:
            barrier.wait(DEADLINE_S)
            if store.compare_and_set("r", 0, state(1, stage=i), entry(1, stage=i)):
                wins.append(i)

        run_threads(8, race)
        assert len(wins) == 1
        assert store.load("r") == state(1, stage=wins[0])
        assert store.history("r") == [entry(1, stage=wins[0])]


# -- history ------------------------------------------------------------------------------------


class TestHistory:
    def test_newest_first_with_limit(self, store: Store) -> None:
        """History reads newest first; limit keeps the newest; limit 0 or less reads none."""
        for v in range(1, 6):
            assert store.compare_and_set("r", v - 1, state(v), entry(v))
        assert [t.version for t in store.history("r")] == [5, 4, 3, 2, 1]
        assert [t.version for t in store.history("r", limit=2)] == [5, 4]
        assert [t.version for t in store.history("r", limit=1)] == [5]
        assert [t.version for t in store.history("r", limit=99)] == [5, 4, 3, 2, 1]
        assert store.history("r", limit=0) == []
        assert store.history("r", limit=-1) == []

    def test_bounded_by_max_history(self, backend: Backend) -> None:
        """A store keeps the newest max_history entries of each rollout."""
        store = backend.make(max_history=3)
        for v in range(1, 8):
            assert store.compare_and_set("r", v - 1, state(v), entry(v))
        assert store.compare_and_set("other", 0, state(1), entry(1, rollout="other"))
        assert [t.version for t in store.history("r")] == [7, 6, 5]
        assert [t.version for t in store.history("r", limit=2)] == [7, 6]
        assert [t.version for t in store.history("other")] == [1]
        assert store.load("r") == state(7)

    def test_max_history_below_one_is_refused(self, backend: Backend) -> None:
        """max_history must be at least 1."""
        with pytest.raises(ValueError, match="max_history"):
            backend.make(max_history=0)

    def test_entry_round_trips_with_evidence(self, store: Store) -> None:
        """A history entry comes back as written, its evidence's floats, ints, text and None."""
        evidence: dict[str, float | int | str | None] = {
            "share": 0.5,
            "e_errors": 123.456789012345,
            "tiny": 5e-324,
            "units_treatment": 1234,
            "negative": -7,
            "note": "taux d'erreur ↑ — ✓",
            "missing": None,
        }
        first = Transition(
            "r", Action.START, -1, 0, None, Status.RUNNING, 1, 1712345678.25,
            reason="démarrage ✓", actor="cli", evidence=evidence,
        )  # fmt: skip
        second = Transition(
            "r", Action.FREEZE, 0, 0, Status.RUNNING, Status.FROZEN, 2, 1712345679.5,
            reason="auto-freeze", actor="health", evidence={"r_errors": 3.0, "count": 0},
        )  # fmt: skip
        assert store.compare_and_set("r", 0, state(1), first)
        assert store.compare_and_set("r", 1, state(2, status=Status.FROZEN), second)
        newest, oldest = store.history("r")
        assert newest == second
        assert oldest == first
        assert dict(oldest.evidence) == evidence
        assert {k: type(v) for k, v in oldest.evidence.items()} == {
            k: type(v) for k, v in evidence.items()
        }
        assert type(newest.evidence["r_errors"]) is float
        assert type(newest.evidence["count"]) is int
        assert oldest.from_status is None
        assert isinstance(oldest.action, Action)


# -- pooled counts and unit sets ----------------------------------------------------------------


class TestCounts:
    def test_add_counts_adds_and_returns_every_counter(self, store: Store) -> None:
        """add_counts adds to the counters and returns all of the segment's counters."""
        assert store.read_counts("r", "1.0") == {}
        assert store.add_counts("r", "1.0", {"calls": 3, "errors": 1}) == {"calls": 3, "errors": 1}
        assert store.add_counts("r", "1.0", {"calls": 2, "slow": 4}) == {
            "calls": 5,
            "errors": 1,
            "slow": 4,
        }
        assert store.add_counts("r", "1.0", {"calls": 0}) == {"calls": 5, "errors": 1, "slow": 4}
        assert store.read_counts("r", "1.0") == {"calls": 5, "errors": 1, "slow": 4}

    def test_segments_and_rollouts_are_apart(self, store: Store) -> None:
        """Counters of other segments and other rollouts are separate."""
        store.add_counts("r", "1.0", {"calls": 1})
        store.add_counts("r", "1.1", {"calls": 10})
        store.add_counts("q", "1.0", {"calls": 100})
        assert store.read_counts("r", "1.0") == {"calls": 1}
        assert store.read_counts("r", "1.1") == {"calls": 10}
        assert store.read_counts("q", "1.0") == {"calls": 100}
        assert store.read_counts("q", "1.1") == {}

    def test_racing_threads_lose_no_increment(self, store: Store) -> None:
        """Counts added by 4 threads at once sum exactly."""
        barrier = threading.Barrier(4)

        def add(_: int) -> None:
            barrier.wait(DEADLINE_S)
            for _ in range(25):
                store.add_counts("r", "s", {"calls": 1, "errors": 2})

        run_threads(4, add)
        assert store.read_counts("r", "s") == {"calls": 100, "errors": 200}


class TestUnits:
    def test_new_exactly_once(self, store: Store) -> None:
        """add_units says a unit is new the first time only."""
        assert store.add_units("r", "e", ["a", "b"]) == [True, True]
        assert store.add_units("r", "e", ["b", "c", "a"]) == [False, True, False]
        assert store.add_units("r", "e", []) == []
        assert store.add_units("r", "e", ["c"]) == [False]

    def test_duplicates_within_one_call(self, store: Store) -> None:
        """A unit repeated in one call is new at its first place only."""
        assert store.add_units("r", "e", ["x", "x", "y", "x", "y"]) == [
            True,
            False,
            True,
            False,
            False,
        ]

    def test_scopes_and_rollouts_are_apart(self, store: Store) -> None:
        """A unit is new again in another scope or another rollout."""
        assert store.add_units("r", "1.0", ["u"]) == [True]
        assert store.add_units("r", "1.1", ["u"]) == [True]
        assert store.add_units("q", "1.0", ["u"]) == [True]
        assert store.add_units("r", "1.0", ["u"]) == [False]

    def test_racing_threads_hear_new_once(self, store: Store) -> None:
        """Of 4 threads adding overlapping units at once, each unit is new exactly once."""
        barrier = threading.Barrier(4)
        heard: list[Counter[str]] = [Counter() for _ in range(4)]

        def add(i: int) -> None:
            barrier.wait(DEADLINE_S)
            units = [f"u{n}" for n in range(i * 10, i * 10 + 40)]
            for start in range(0, 40, 8):
                chunk = units[start : start + 8]
                for unit, new in zip(chunk, store.add_units("r", "e", chunk), strict=True):
                    heard[i][unit] += new

        run_threads(4, add)
        total = sum(heard, Counter[str]())
        assert total == Counter({f"u{n}": 1 for n in range(70)})

    def test_any_text_is_a_unit(self, store: Store) -> None:
        """Lone surrogates, NUL, control characters and long text are units like any other."""
        odd = ["\ud800", "\udfff\ud800", "nul\x00", "\x1b[2J\r", "x" * 100_000, "", "*:{}"]
        assert store.add_units("r", "e", odd) == [True] * len(odd)
        assert store.add_units("r", "e", odd) == [False] * len(odd)
        assert store.count_distinct("r", "d", odd) == len(odd)


class TestCountDistinct:
    def test_counts_distinct_units(self, backend: Backend, store: Store) -> None:
        """count_distinct returns how many distinct units it saw: exact, or within 2 % (Redis)."""
        assert store.count_distinct("r", "arm", []) == 0
        assert store.count_distinct("r", "arm", ["a", "b", "a"]) == 2
        assert store.count_distinct("r", "arm", ["b", "c"]) == 3
        total = 0
        for start in range(0, 5000, 1000):
            # Each chunk repeats half the previous one: 5,000 distinct units in all.
            chunk = [f"unit-{n}" for n in range(max(start - 500, 0), start + 1000)]
            total = store.count_distinct("r", "many", chunk)
        if backend.kind == "redis":
            assert abs(total - 5000) <= 100
        else:
            assert total == 5000

    def test_scopes_and_rollouts_are_apart(self, store: Store) -> None:
        """Distinct counts of other scopes and other rollouts are separate."""
        assert store.count_distinct("r", "treatment", ["a", "b"]) == 2
        assert store.count_distinct("r", "control", ["a"]) == 1
        assert store.count_distinct("q", "treatment", ["c"]) == 1
        assert store.count_distinct("r", "treatment", []) == 2


# -- the rollouts a store holds ----------------------------------------------------------------

ODD_NAMES = [
    "\x1b[2J",
    "<script>",
    "'; DROP TABLE rollouts; --",
    "*",
    "a:b",
    "{x}",
    "é ✓",
    "x" * 1000,
]
"""Rollout names with control characters, HTML, SQL, Redis key and glob syntax, unicode,
and length (a lone surrogate is no name: neither SQLite nor Redis keys hold one)."""


class TestNames:
    def test_an_empty_store_holds_none(self, store: Store) -> None:
        """A store that never held a state lists no rollout."""
        assert store.names() == []

    def test_every_rollout_with_a_state_sorted(self, store: Store) -> None:
        """names() lists each rollout that has a state once, sorted, odd names included."""
        for name in ["zeta", "alpha", *ODD_NAMES]:
            assert store.compare_and_set(name, 0, state(1), entry(1, rollout=name))
        assert store.compare_and_set("zeta", 1, state(2), entry(2, rollout="zeta"))
        assert store.names() == sorted(["zeta", "alpha", *ODD_NAMES])

    def test_counters_units_and_errors_alone_are_not_a_rollout(self, store: Store) -> None:
        """A rollout of which the store keeps only counters, units or errors is not listed."""
        store.add_counts("counted", "1.0", {"calls": 1})
        store.add_units("units", "e", ["u"])
        store.count_distinct("distinct", "t", ["u"])
        store.add_errors("failing", [RecentError("treatment", "E", "m", 1.0, 1.0)])
        assert store.names() == []
        assert store.compare_and_set("real", 0, state(1), entry(1, rollout="real"))
        assert store.names() == ["real"]

    def test_another_object_lists_what_one_wrote(self, shared: Backend) -> None:
        """A store object of another process lists the rollouts written through the first."""
        writer, reader = shared.make(), shared.make()
        assert writer.compare_and_set("b", 0, state(1), entry(1, rollout="b"))
        assert writer.compare_and_set("a", 0, state(1), entry(1, rollout="a"))
        assert reader.names() == ["a", "b"]


# -- recent errors ------------------------------------------------------------------------------


def error(
    kind: str = "IndexError", at: float = 10.0, count: int = 1, arm: str = "treatment"
) -> RecentError:
    return RecentError(arm, kind, "discount tier out of range", at, at, count)


class TestRecentErrors:
    def test_none_until_added(self, store: Store) -> None:
        """A rollout without errors reads []; adding none writes nothing."""
        assert store.read_errors("r") == []
        store.add_errors("r", [])
        assert store.read_errors("r") == []

    def test_the_same_error_merges(self, store: Store) -> None:
        """One (arm, type, message): counts add, first_seen the earliest, last_seen the latest."""
        store.add_errors("r", [error(at=10.0, count=2)])
        store.add_errors("r", [error(at=5.0), error(at=20.0, count=3)])
        assert store.read_errors("r") == [
            RecentError("treatment", "IndexError", "discount tier out of range", 5.0, 20.0, 6)
        ]

    def test_distinct_errors_newest_first(self, store: Store) -> None:
        """Another arm, type or message is another entry; read newest last_seen first."""
        store.add_errors("r", [error("KeyError", at=1.0), error(at=3.0, arm="control")])
        store.add_errors("r", [error(at=2.0), error("KeyError", at=0.5)])
        assert [(e.arm, e.type, e.count) for e in store.read_errors("r")] == [
            ("control", "IndexError", 1),
            ("treatment", "IndexError", 1),
            ("treatment", "KeyError", 2),
        ]

    def test_at_most_twenty_the_most_recently_seen(self, store: Store) -> None:
        """Past 20 distinct errors, the least recently seen are evicted."""
        for i in range(25):
            store.add_errors("r", [error(f"E{i}", at=float(i))])
        store.add_errors("r", [error("E5", at=100.0)])  # seen again: the newest now
        kept = store.read_errors("r")
        assert len(kept) == 20
        assert [e.type for e in kept] == ["E5", *[f"E{i}" for i in range(24, 5, -1)]]

    def test_type_and_message_are_cut(self, store: Store) -> None:
        """A long type and message are kept cut to 128 and 200 characters, and still merge."""
        long = RecentError("treatment", "T" * 1000, "m" * 5000, 1.0, 2.0)
        store.add_errors("r", [long])
        store.add_errors("r", [long])
        (kept,) = store.read_errors("r")
        assert (kept.type, kept.message, kept.count) == ("T" * 128, "m" * 200, 2)

    def test_hostile_text_round_trips(self, store: Store) -> None:
        """Control characters, NUL, lone surrogates, HTML and SQL in a message come back."""
        odd = ["\x1b[2J\r", "nul\x00", "\ud800", "<script>", "'; DROP TABLE errors; --"]
        store.add_errors("r", [RecentError("treatment", m, m, 1.0, 1.0) for m in odd])
        assert sorted(e.message for e in store.read_errors("r")) == sorted(odd)

    @pytest.mark.parametrize(
        "bad",
        [
            RecentError("treatment", "E", "m", 1.0, 1.0, 0),
            RecentError("treatment", "E", "m", float("nan"), 1.0),
            RecentError("treatment", "E", "m", 1.0, float("inf")),
            RecentError("", "E", "m", 1.0, 1.0),
            RecentError("treatment", "E", "m", 1.0, 1.0, True),
        ],
    )
    def test_a_malformed_error_writes_nothing(self, store: Store, bad: RecentError) -> None:
        """A batch with a malformed error raises ValueError and leaves the errors as they were."""
        store.add_errors("r", [error(at=1.0)])
        with pytest.raises(ValueError):  # noqa: PT011 - the message names the field
            store.add_errors("r", [error(at=2.0), bad])
        assert store.read_errors("r") == [error(at=1.0)]

    def test_rollouts_are_kept_apart(self, store: Store) -> None:
        """One rollout's errors do not touch another's."""
        store.add_errors("a", [error(at=1.0)])
        store.add_errors("b", [error(at=2.0, count=5)])
        assert store.read_errors("a") == [error(at=1.0)]
        assert store.read_errors("b") == [error(at=2.0, count=5)]

    def test_racing_threads_lose_no_count(self, store: Store) -> None:
        """Errors added by 4 threads at once sum exactly."""
        barrier = threading.Barrier(4)

        def add(i: int) -> None:
            barrier.wait(DEADLINE_S)
            for n in range(20):
                store.add_errors("r", [error(at=float(n)), error(f"E{i}", at=float(n))])

        run_threads(4, add)
        counts = {e.type: e.count for e in store.read_errors("r")}
        assert counts == {"IndexError": 80, "E0": 20, "E1": 20, "E2": 20, "E3": 20}

    def test_another_object_reads_them(self, shared: Backend) -> None:
        """Errors added through one store object are read through another (another process)."""
        writer, reader = shared.make(), shared.make()
        writer.add_errors("r", [error(at=1.0)])
        reader.add_errors("r", [error(at=2.0)])
        assert writer.read_errors("r") == [RecentError(
            "treatment", "IndexError", "discount tier out of range", 1.0, 2.0, 2)]  # fmt: skip


# -- listeners ----------------------------------------------------------------------------------


class Watcher:
    """Owns a bound method to watch a store with."""

    def __init__(self, heard: list[tuple[str, RolloutState]]) -> None:
        self.heard = heard

    def on_state(self, name: str, new: RolloutState) -> None:
        self.heard.append((name, new))


class TestWatch:
    def test_bound_method_hears_writes_and_is_held_weakly(self, store: Store) -> None:
        """A bound-method listener hears each write through the store, until its owner is gone."""
        heard: list[tuple[str, RolloutState]] = []
        watcher = Watcher(heard)
        store.watch(watcher.on_state)
        assert store.compare_and_set("r", 0, state(1), entry(1))
        assert not store.compare_and_set("r", 0, state(1, stage=2), entry(1, stage=2))
        assert heard == [("r", state(1))]
        del watcher
        gc.collect()
        assert store.compare_and_set("r", 1, state(2), entry(2))
        assert heard == [("r", state(1))]

    def test_raising_listener_is_logged_and_the_write_stands(self, store: Store) -> None:
        """A listener that raises is logged as store.listener_failed; the write is kept."""
        heard: list[int] = []

        def broken(name: str, new: RolloutState) -> None:
            raise RuntimeError("listener bug")

        store.watch(broken)
        store.watch(lambda name, new: heard.append(new.version))
        with structlog.testing.capture_logs() as logs:
            assert store.compare_and_set("r", 0, state(1), entry(1))
        assert heard == [1]
        assert store.load("r") == state(1)
        assert store.history("r") == [entry(1)]
        failed = [log for log in logs if log["event"] == "store.listener_failed"]
        assert len(failed) == 1
        assert failed[0]["rollout"] == "r"
        assert failed[0]["log_level"] == "error"


# -- stores that processes share ----------------------------------------------------------------


class TestSyncing:
    def test_is_a_syncing_store(self, shared: Backend) -> None:
        """SQLiteStore and RedisStore are stores that processes share."""
        store = shared.make()
        assert isinstance(store, Store)
        assert isinstance(store, SyncingStore)
        assert not isinstance(MemoryStore(), SyncingStore)

    def test_refresh_tells_listeners_of_writes_by_another_object(self, shared: Backend) -> None:
        """A write through one object is heard by another's listener at its next refresh."""
        # A long interval: the background thread never refreshes during the test.
        writer = shared.make(refresh_interval=3600)
        reader = shared.make(refresh_interval=3600)
        assert isinstance(reader, SQLiteStore | RedisStore | PostgresStore)
        heard: list[tuple[str, RolloutState]] = []
        watcher = Watcher(heard)
        reader.watch(watcher.on_state)
        assert reader.load("r") is None
        assert reader.refresh()
        assert heard == []
        assert writer.compare_and_set("r", 0, state(1), entry(1))
        assert heard == []
        assert reader.refresh()
        assert heard == [("r", state(1))]
        assert reader.refresh()
        assert heard == [("r", state(1))]
        assert writer.compare_and_set("r", 1, state(2, stage=1), entry(2, stage=1))
        assert reader.refresh()
        assert heard == [("r", state(1)), ("r", state(2, stage=1))]

    @pytest.mark.parametrize(
        "bad",
        [
            RolloutState(-7, Status.RUNNING, 1.0, 1),
            RolloutState(0, Status.RUNNING, float("nan"), 1),
            RolloutState(0, Status.RUNNING, 1.0, 1, epoch=2),
            RolloutState(0, Status.RUNNING, 1.0, 1, stages=(("s", 101.0),)),
            RolloutState(0, Status.RUNNING, 1.0, 1, stages=(("", 1.0),)),
            RolloutState(0, Status.RUNNING, 1.0, 1, stages=(("s", 1.0),) * 1001),
        ],
    )
    def test_a_state_out_of_range_is_not_written(self, shared: Backend, bad: RolloutState) -> None:
        """A state its readers would refuse is refused with ValueError, and nothing changes."""
        store = shared.make()
        with pytest.raises(ValueError):  # noqa: PT011 - the message names the field
            store.compare_and_set("r", 0, bad, entry(1))
        assert store.load("r") is None
        assert store.history("r") == []

    def test_load_reads_another_objects_write_at_once(self, shared: Backend) -> None:
        """load on another object returns a write at once, without waiting for a refresh."""
        writer = shared.make(refresh_interval=3600)
        reader = shared.make(refresh_interval=3600)
        assert reader.load("r") is None
        assert writer.compare_and_set("r", 0, state(1), entry(1))
        assert reader.load("r") == state(1)
        assert writer.compare_and_set("r", 1, state(2, stage=1), entry(2, stage=1))
        assert reader.load("r") == state(2, stage=1)
        assert reader.history("r") == [entry(2, stage=1), entry(1)]
        assert not reader.compare_and_set("r", 1, state(2, stage=9), entry(2, stage=9))
        assert reader.compare_and_set("r", 2, state(3), entry(3))
        assert writer.load("r") == state(3)


# -- many processes -----------------------------------------------------------------------------
# The workers are module-level functions taking the store's URL, so that they run under
# "spawn" too. They report through a queue: (index, result) or (index, "error: ...").


def _report(results: Any, index: int, work: Callable[[], Any]) -> None:
    try:
        results.put((index, work()))
    except BaseException as exc:  # pragma: no cover - reported to the parent
        results.put((index, f"error: {exc!r}"))


def cas_worker(url: str, index: int, barrier: Any, results: Any) -> None:
    """Build the store from ``url``; at the barrier, write version 1 over version 0."""

    def work() -> bool:
        store = store_from_url(url)
        try:
            store.load("r")  # connected before the race
            barrier.wait(DEADLINE_S)
            return store.compare_and_set("r", 0, state(1, stage=index), entry(1, stage=index))
        finally:
            store.close()

    _report(results, index, work)


def units_worker(url: str, index: int, barrier: Any, results: Any) -> None:
    """Add overlapping units (and repeats) in chunks; report each unit's "new" answers."""

    def work() -> dict[str, int]:
        store = store_from_url(url)
        try:
            units = [f"u{n}" for n in range(index * 20, index * 20 + 60)]
            units += units[::3]  # each process repeats some of its own units too
            heard: Counter[str] = Counter()
            barrier.wait(DEADLINE_S)
            for start in range(0, len(units), 10):
                chunk = units[start : start + 10]
                for unit, new in zip(chunk, store.add_units("r", "first", chunk), strict=True):
                    heard[unit] += new
            return dict(heard)
        finally:
            store.close()

    _report(results, index, work)


def counts_worker(url: str, index: int, barrier: Any, results: Any) -> None:
    """Add 1 call and 2 errors to one segment 50 times; report the largest total seen."""

    def work() -> int:
        store = store_from_url(url)
        try:
            barrier.wait(DEADLINE_S)
            largest = 0
            for _ in range(50):
                totals = store.add_counts("r", "1.0", {"calls": 1, "errors": 2})
                largest = max(largest, totals["calls"])
            return largest
        finally:
            store.close()

    _report(results, index, work)


def errors_worker(url: str, index: int, barrier: Any, results: Any) -> None:
    """Add one shared error and one of its own 25 times; report how many adds it made."""

    def work() -> int:
        store = store_from_url(url)
        try:
            barrier.wait(DEADLINE_S)
            for n in range(25):
                store.add_errors(
                    "r",
                    [
                        RecentError("treatment", "Shared", "m", float(n), float(n)),
                        RecentError("control", f"Own{index}", "m", float(n), float(n), 2),
                    ],
                )
            return 25
        finally:
            store.close()

    _report(results, index, work)


def run_processes(
    url: str, count: int, worker: Callable[[str, int, Any, Any], None]
) -> dict[int, Any]:
    """Run ``worker(url, i, barrier, results)`` in ``count`` processes; return their results."""
    # fork is quick; spawn (where fork is missing) works too: the workers are importable.
    if "fork" in multiprocessing.get_all_start_methods():
        context: ForkContext | SpawnContext = multiprocessing.get_context("fork")
    else:  # pragma: no cover - Windows
        context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(count)
    results = context.Queue()
    processes = [
        context.Process(target=worker, args=(url, i, barrier, results), daemon=True)
        for i in range(count)
    ]
    for process in processes:
        process.start()
    try:
        found: dict[int, Any] = {}
        for _ in range(count):
            index, result = results.get(timeout=DEADLINE_S)
            assert not (isinstance(result, str) and result.startswith("error")), result
            found[index] = result
        for process in processes:
            process.join(DEADLINE_S)
            assert process.exitcode == 0
        return found
    except queue.Empty:  # pragma: no cover - a stuck child
        pytest.fail("a worker process did not report in time")
    finally:
        for process in processes:
            if process.is_alive():  # pragma: no cover - a stuck child
                process.kill()
                process.join(DEADLINE_S)
        results.close()
        results.join_thread()


@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
class TestManyProcesses:
    def test_racing_processes_have_exactly_one_winner(self, shared: Backend) -> None:
        """Of 6 processes writing over the same version, one succeeds; history has one entry."""
        store = shared.make()
        assert store.load("r") is None  # the file or connection exists before the race
        wins = run_processes(shared.url, 6, cas_worker)
        winners = [i for i, won in wins.items() if won]
        assert len(winners) == 1, wins
        assert store.load("r") == state(1, stage=winners[0])
        assert store.history("r") == [entry(1, stage=winners[0])]

    def test_each_unit_is_new_once_across_processes(self, shared: Backend) -> None:
        """Of 4 processes adding overlapping units, exactly one hears each unit is new."""
        store = shared.make()
        store.load("r")
        heard = run_processes(shared.url, 4, units_worker)
        total: Counter[str] = Counter()
        for counts in heard.values():
            total.update(counts)
        assert total == Counter({f"u{n}": 1 for n in range(120)})
        assert store.add_units("r", "first", ["u0", "u119", "u120"]) == [False, False, True]

    def test_counts_from_processes_sum_exactly(self, shared: Backend) -> None:
        """4 processes adding 50 increments each lose none of them."""
        store = shared.make()
        store.load("r")
        largest = run_processes(shared.url, 4, counts_worker)
        assert store.read_counts("r", "1.0") == {"calls": 200, "errors": 400}
        assert max(largest.values()) == 200

    def test_errors_from_processes_sum_exactly(self, shared: Backend) -> None:
        """4 processes adding the same error 25 times each lose no count."""
        store = shared.make()
        run_processes(shared.url, 4, errors_worker)
        counts = {(e.arm, e.type): e.count for e in store.read_errors("r")}
        assert counts == {
            ("treatment", "Shared"): 100,
            **{("control", f"Own{i}"): 50 for i in range(4)},
        }
        (shared_error,) = [e for e in store.read_errors("r") if e.type == "Shared"]
        assert (shared_error.first_seen, shared_error.last_seen) == (0.0, 24.0)
