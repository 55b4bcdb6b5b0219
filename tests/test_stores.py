from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stagedroll import (
    Action,
    MemoryStore,
    RecentError,
    RedisStore,
    RolloutState,
    SQLiteStore,
    Status,
    Store,
    StoreError,
    Transition,
)
from stagedroll.stores import store_from_url


def state(version: int, stage: int = 0) -> RolloutState:
    return RolloutState(stage=stage, status=Status.RUNNING, since=float(version), version=version)


def entry(version: int, stage: int = 0) -> Transition:
    return Transition("r", Action.ADVANCE, stage, stage, Status.RUNNING, Status.RUNNING, version,
                      float(version))  # fmt: skip


@pytest.fixture(name="store")
def _store() -> MemoryStore:
    return MemoryStore()


class TestMemoryStore:
    def test_is_a_store(self, store: MemoryStore) -> None:
        """MemoryStore satisfies the Store protocol."""
        assert isinstance(store, Store)

    def test_compare_and_set_creates_then_refuses_stale_versions(self, store: MemoryStore) -> None:
        """The first write expects version 0; a write with a stale version changes nothing."""
        assert store.load("r") is None
        assert store.compare_and_set("r", 0, state(1), entry(1))
        assert store.load("r") == state(1)
        assert not store.compare_and_set("r", 0, state(1, stage=3), entry(1, stage=3))
        assert store.load("r") == state(1)
        assert store.history("r") == [entry(1)]

    def test_version_must_rise_by_one(self, store: MemoryStore) -> None:
        """A new state whose version is not expected + 1 is a programming error."""
        with pytest.raises(ValueError, match="version must be 1"):
            store.compare_and_set("r", 0, state(2), entry(2))

    def test_history_is_newest_first_and_bounded(self) -> None:
        """History reads newest first, honours limit, and keeps at most max_history entries."""
        store = MemoryStore(max_history=3)
        for v in range(1, 6):
            assert store.compare_and_set("r", v - 1, state(v), entry(v))
        assert [t.version for t in store.history("r")] == [5, 4, 3]
        assert [t.version for t in store.history("r", limit=2)] == [5, 4]
        assert store.history("other") == []
        with pytest.raises(ValueError, match="max_history"):
            MemoryStore(max_history=0)

    def test_racing_threads_have_exactly_one_winner(self, store: MemoryStore) -> None:
        """Of many threads writing the same version, one succeeds."""
        barrier = threading.Barrier(8)
        wins: list[bool] = []

        def race(stage: int) -> None:
            barrier.wait()
            wins.append(store.compare_and_set("r", 0, state(1, stage), entry(1, stage)))

        threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert wins.count(True) == 1
        assert len(store.history("r")) == 1

    def test_watchers_hear_of_changes_and_are_held_weakly(self, store: MemoryStore) -> None:
        """A bound-method listener is called after a write and dropped once its owner is gone."""
        heard: list[tuple[str, int]] = []

        class Watcher:
            def on_state(self, name: str, new: RolloutState) -> None:
                heard.append((name, new.version))

        watcher = Watcher()
        store.watch(watcher.on_state)
        store.compare_and_set("r", 0, state(1), entry(1))
        del watcher
        gc.collect()
        store.compare_and_set("r", 1, state(2), entry(2))
        assert heard == [("r", 1)]

    def test_a_failing_listener_does_not_undo_the_write(self, store: MemoryStore) -> None:
        """A listener that raises is logged; the write stands and later listeners still run."""
        heard: list[int] = []

        def broken(name: str, new: RolloutState) -> None:
            raise RuntimeError("listener bug")

        store.watch(broken)
        store.watch(lambda name, new: heard.append(new.version))
        assert store.compare_and_set("r", 0, state(1), entry(1))
        assert heard == [1]
        store.close()
        store.compare_and_set("r", 1, state(2), entry(2))
        assert heard == [1]


@pytest.fixture(name="from_url")
def _from_url() -> Iterator[list[Store]]:
    """Stores made from URLs by the test, closed after it."""
    made: list[Store] = []
    yield made
    for store in made:
        store.close()


class TestMemoryStoreNamesAndErrors:
    def test_names_are_a_copy(self, store: MemoryStore) -> None:
        """names() returns a new list: changing it changes nothing in the store."""
        assert store.compare_and_set("r", 0, state(1), entry(1))
        names = store.names()
        names.append("other")
        assert store.names() == ["r"]

    def test_errors_are_a_copy(self, store: MemoryStore) -> None:
        """read_errors() returns a new list: changing it changes nothing in the store."""
        error = RecentError("treatment", "E", "m", 1.0, 1.0)
        store.add_errors("r", [error])
        store.read_errors("r").clear()
        assert store.read_errors("r") == [error]


class TestStoreFromUrl:
    @pytest.mark.parametrize(
        "url",
        [
            "memory://?refresh_interval=1",
            "sqlite:///state.db?refresh_intervall=1",
            "sqlite:///state.db?prefix=app",
        ],
    )
    def test_unknown_option_is_refused(self, url: str) -> None:
        """A misspelt or misplaced option raises rather than passing unnoticed."""
        with pytest.raises(ValueError, match="unknown option"):
            store_from_url(url)

    @pytest.mark.parametrize(
        "url", ["sqlite:stat.db", "sqlite:/stat.db", "sqlite://", "sqlite:///"]
    )
    def test_a_sqlite_url_without_a_path_is_refused(self, url: str) -> None:
        """A SQLite URL not of the form sqlite:///path is a ValueError naming the forms."""
        with pytest.raises(ValueError, match=r"expected sqlite:///relative/path\.db"):
            store_from_url(url)

    def test_an_empty_redis_prefix_is_refused(self) -> None:
        """``prefix=`` would mix applications on one Redis: refused, before any connection."""
        with pytest.raises(ValueError, match="prefix must be non-empty"):
            store_from_url("redis://127.0.0.1:1/0?prefix=")

    def test_memory(self) -> None:
        """memory:// is a fresh MemoryStore."""
        assert isinstance(store_from_url("memory://"), MemoryStore)

    def test_memory_max_history(self) -> None:
        """memory:// takes max_history."""
        store = store_from_url("memory://?max_history=2")
        for v in range(1, 5):
            assert store.compare_and_set("r", v - 1, state(v), entry(v))
        assert [t.version for t in store.history("r")] == [4, 3]

    def test_unknown_scheme(self) -> None:
        """An unknown scheme is refused with the known ones listed."""
        with pytest.raises(ValueError, match="known schemes are memory://") as info:
            store_from_url("mysql://localhost/db")
        message = str(info.value)
        assert "mysql://localhost/db" in message
        for scheme in ("memory://", "sqlite://", "redis://", "rediss://", "postgresql://"):
            assert scheme in message

    def test_sqlite_relative_path(self, from_url: list[Store]) -> None:
        """sqlite:///name.db names a file relative to the working directory (made absolute)."""
        store = store_from_url("sqlite:///data/rollouts.db")
        from_url.append(store)
        assert isinstance(store, SQLiteStore)
        assert store.path == Path.cwd() / "data" / "rollouts.db"

    def test_sqlite_absolute_path(self, tmp_path: Path, from_url: list[Store]) -> None:
        """sqlite:////abs/path.db names an absolute path, and the store works on that file."""
        path = tmp_path / "state.db"
        store = store_from_url(f"sqlite:///{path}")
        from_url.append(store)
        assert isinstance(store, SQLiteStore)
        assert store.path == path
        assert store.compare_and_set("r", 0, state(1), entry(1))
        assert path.exists()
        other = SQLiteStore(path)
        from_url.append(other)
        assert other.load("r") == state(1)

    def test_sqlite_path_is_percent_decoded(self, tmp_path: Path, from_url: list[Store]) -> None:
        """A path's percent escapes are decoded."""
        store = store_from_url(f"sqlite:///{tmp_path}/my%20state.db")
        from_url.append(store)
        assert isinstance(store, SQLiteStore)
        assert store.path == tmp_path / "my state.db"

    def test_sqlite_options(self, tmp_path: Path, from_url: list[Store]) -> None:
        """refresh_interval, timeout and max_history are read from the query."""
        url = f"sqlite:///{tmp_path}/s.db?refresh_interval=2.5&timeout=3&max_history=2"
        store = store_from_url(url)
        from_url.append(store)
        assert isinstance(store, SQLiteStore)
        assert store.path == tmp_path / "s.db"
        assert store.refresh_interval == 2.5
        assert store._timeout == 3.0  # SQLite's busy timeout: no public attribute
        for v in range(1, 5):
            assert store.compare_and_set("r", v - 1, state(v), entry(v))
        assert [t.version for t in store.history("r")] == [4, 3]

    @pytest.mark.parametrize(
        ("query", "option"),
        [
            ("refresh_interval=often", "refresh_interval"),
            ("timeout=", "timeout"),
            ("max_history=1.5", "max_history"),
            ("max_history=many", "max_history"),
        ],
    )
    def test_sqlite_malformed_option(self, tmp_path: Path, query: str, option: str) -> None:
        """A malformed option is refused with ValueError naming it."""
        with pytest.raises(ValueError, match=option):
            store_from_url(f"sqlite:///{tmp_path}/s.db?{query}")

    @pytest.mark.parametrize(
        "url", ["sqlite://", "sqlite:///", "sqlite://?timeout=1", "sqlite://host/s.db"]
    )
    def test_sqlite_without_path(self, url: str) -> None:
        """A sqlite URL without a path is refused, showing the expected forms."""
        with pytest.raises(ValueError, match=r"sqlite:///relative/path\.db"):
            store_from_url(url)

    def test_redis_options(self, from_url: list[Store]) -> None:
        """prefix and refresh_interval are taken off a redis URL; the rest stays for redis-py."""
        store = store_from_url(
            "redis://127.0.0.1:6379/2?prefix=shop&refresh_interval=0.5&socket_keepalive=true"
        )
        from_url.append(store)
        assert isinstance(store, RedisStore)
        assert store.prefix == "shop"
        assert store.refresh_interval == 0.5
        assert store.url == "redis://127.0.0.1:6379/2?socket_keepalive=true"

    @pytest.mark.parametrize(
        ("url", "push"),
        [
            ("redis://127.0.0.1:6379/0?push=0&db=0", False),
            ("redis://127.0.0.1:6379/0?push=off&db=0", False),
            ("redis://127.0.0.1:6379/0?push=TRUE&db=0", True),
            ("sqlite:///{tmp}/push.db?push=1", True),
            ("sqlite:///{tmp}/no-push.db", False),
        ],
    )
    def test_push_option(self, url: str, push: bool, tmp_path: Path, from_url: list[Store]) -> None:
        """``push`` is stagedroll's option on every shared store's URL, never redis-py's."""
        store = store_from_url(url.format(tmp=tmp_path))
        from_url.append(store)
        assert isinstance(store, RedisStore | SQLiteStore)
        assert store.push is push
        if isinstance(store, RedisStore):
            assert store.url == "redis://127.0.0.1:6379/0?db=0"

    def test_push_option_malformed(self) -> None:
        """A push that is not a switch is refused, naming the option and what it takes."""
        with pytest.raises(ValueError, match=r"push must be 1 or 0 \(true or false\)"):
            store_from_url("sqlite:///x.db?push=maybe")

    def test_redis_defaults(self, from_url: list[Store]) -> None:
        """A redis URL without options keeps the store's defaults and the URL as written."""
        store = store_from_url("redis://127.0.0.1:6379/0")
        from_url.append(store)
        assert isinstance(store, RedisStore)
        assert store.prefix == "stagedroll"
        assert store.refresh_interval == 1.0
        assert store.url == "redis://127.0.0.1:6379/0"

    def test_rediss(self, from_url: list[Store]) -> None:
        """rediss:// (TLS) is a RedisStore too, with its options stripped from the URL."""
        store = store_from_url("rediss://:secret@cache.internal:6380/0?prefix=a:b&timeout=1.5")
        from_url.append(store)
        assert isinstance(store, RedisStore)
        assert store.prefix == "a:b"
        assert store.url == "rediss://:secret@cache.internal:6380/0"
        assert "secret" not in repr(store)

    def test_redis_store_works(
        self, redis_url: str, redis_prefix: str, from_url: list[Store]
    ) -> None:
        """A store made from a redis URL with a prefix writes under that prefix."""
        sep = "&" if "?" in redis_url else "?"
        store = store_from_url(f"{redis_url}{sep}prefix={redis_prefix}&timeout=5")
        from_url.append(store)
        assert store.compare_and_set("r", 0, state(1), entry(1))
        other = RedisStore(redis_url, prefix=redis_prefix)
        from_url.append(other)
        assert other.load("r") == state(1)
        elsewhere = RedisStore(redis_url, prefix=redis_prefix + "-other")
        from_url.append(elsewhere)
        assert elsewhere.load("r") is None

    def test_create_false_refuses_a_missing_sqlite_file(self, tmp_path: Path) -> None:
        """create=False reaches SQLite: a missing file raises StoreError, and is not made."""
        with pytest.raises(StoreError, match="the file does not exist"):
            store_from_url(f"sqlite:///{tmp_path}/typo.db?timeout=1", create=False)
        assert list(tmp_path.iterdir()) == []

    def test_create_false_is_ignored_by_memory_and_redis(
        self, redis_url: str, redis_prefix: str, from_url: list[Store]
    ) -> None:
        """Memory and Redis stores are made with create=False; names() says they are empty."""
        sep = "&" if "?" in redis_url else "?"
        for url in ("memory://", f"{redis_url}{sep}prefix={redis_prefix}"):
            store = store_from_url(url, create=False)
            from_url.append(store)
            assert store.names() == []

    @pytest.mark.parametrize(
        ("query", "option"),
        [
            ("refresh_interval=soon", "refresh_interval"),
            ("timeout=fast", "timeout"),
            ("max_history=all", "max_history"),
            ("ttl=1d", "ttl"),
        ],
    )
    def test_redis_malformed_option(self, query: str, option: str) -> None:
        """A malformed option of a redis URL is refused with ValueError naming it."""
        with pytest.raises(ValueError, match=option):
            store_from_url(f"redis://127.0.0.1:6379/0?{query}")
