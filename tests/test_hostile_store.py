"""Hostile tests of the shared stores: what a caller passes and what a store holds.

Each class of input runs through the public API (``Rollouts`` with a store, ``report``,
``status``, transitions) on SQLite and on a real Redis: odd units never hold the evidence
back nor reach the store as text, a corrupt state blinds only its own rollout, user code
cannot end the refresh thread, credentials never show, and a state lost with no process to
restore it is restored from what the store still holds, or said to be lost.
"""

from __future__ import annotations

import ctypes
import json
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import wait_until
from servers import RedisServer, free_port, unique_prefix
from stagedroll import (
    Action,
    Rollouts,
    RolloutState,
    SQLiteStore,
    Status,
    StoreError,
    Transition,
    TransitionEvent,
)
from stagedroll.stores import RedisStore, store_from_url
from stagedroll.stores._codec import dump_state
from stagedroll.stores._digest import digest, rollout_key, token
from test_store_contract import Backend, _shared  # noqa: F401 - _shared: the fixture

FAST = 0.02
"""The refresh interval of the stores whose background thread a test watches."""

GATED = {"rollouts": {"co": {"stages": [{"name": "half", "percent": 50}],
                             "health": {"min_events": 3}}}}  # fmt: skip
"""One health-gated rollout at 50 %: frozen (or rolled back) when the new path fails."""
PAIR = {"rollouts": {name: {"stages": [{"name": "a", "percent": 10}, {"name": "b", "percent": 50}],
                            "health": {"enabled": False}} for name in ("bad", "good")}}  # fmt: skip
"""Two rollouts: one whose state a test corrupts, one an operator kills meanwhile."""
STAGED = {"rollouts": {"co": {"stages": [{"name": n, "percent": p} for n, p in
                                         (("a", 10), ("b", 50), ("c", 100))],
                              "health": {"enabled": False}}}}  # fmt: skip
"""One rollout of three stages without a health gate: it moves only when told."""

PADDING = [f"padding-{i}" for i in range(300)]
"""Ordinary units, enough for a rollout failing on every treated unit to be frozen."""
HOSTILE_UNITS: list[str | int] = [
    "\ud800",
    "lone \udfff surrogate",
    "nul\x00byte",
    "\x1b[2J\r",
    "'; DROP TABLE digests; --",
    "key*{with}:redis:syntax",
    "x" * 100_000,
    "",
    -(2**63),
    10**100,
]


def stored_bytes(backend: Backend, tmp_path: Path) -> bytes:
    """Everything the backend holds: the SQLite file and its companions, or every Redis key
    under the test's prefix with its value (serialized by DUMP, whatever its type)."""
    if backend.kind == "sqlite":
        return b"".join(p.read_bytes() for p in sorted(tmp_path.glob("store.db*")))
    store = backend.make_shared()
    assert isinstance(store, RedisStore)
    return redis_bytes(store)


def redis_bytes(store: RedisStore) -> bytes:
    """Every key under ``store``'s prefix, and its value as DUMP serializes it."""
    client: Any = store.client
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", store.prefix) + ":*"
    keys = list(client.scan_iter(match=pattern))
    return b"\x00".join([*keys, *(client.dump(key) or b"" for key in keys)])


def as_text(unit: str | int) -> bytes:
    """The bytes a store would hold if it kept ``unit`` as text."""
    return (unit if isinstance(unit, str) else str(unit)).encode("utf-8", "surrogatepass")


def fail_every_treated_unit(rollouts: Rollouts, units: Sequence[str | int]) -> int:
    """Report an error for each unit on the new path, a success for the others; return how
    many were on the new path."""
    treated = 0
    for unit in units:
        enabled = rollouts.enabled("co", unit)
        treated += enabled
        rollouts.report("co", unit, error=enabled)
    return treated


# -- units ----------------------------------------------------------------------------------------


class TestUnits:
    def test_hostile_units_cannot_hold_back_the_evidence(
        self, shared: Backend, tmp_path: Path
    ) -> None:
        """Lone surrogates, NUL, 100 KB and huge ints among the units: the evidence lands,
        the failing rollout freezes, and the store holds none of them as text."""
        store = shared.make_shared(refresh_interval=3600)
        rollouts = Rollouts(GATED, store=store)
        marker = f"user-{uuid.uuid4().hex}@example.com"  # a unit that is easy to look for
        units = [*HOSTILE_UNITS, marker, *PADDING]
        assert fail_every_treated_unit(rollouts, units) > 20
        made = rollouts.tick()
        assert [t.action for t in made] in ([Action.FREEZE], [Action.ROLLBACK])
        assert rollouts.failures.count("store.flush_failed") == 0
        assert rollouts.failures.count("store.units_refused") == 0
        held = stored_bytes(shared, tmp_path)
        looked_for: list[str | int] = [marker, "lone \udfff surrogate", "x" * 100_000, 10**100]
        for unit in [*looked_for, *PADDING[:20]]:
            assert as_text(unit) not in held, unit

    @settings(max_examples=12, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        texts=st.lists(st.text(), max_size=20),
        numbers=st.lists(st.integers(min_value=-(10**50), max_value=10**50), max_size=10),
    )
    def test_arbitrary_units_freeze_a_failing_rollout(
        self, shared: Backend, tmp_path: Path, texts: list[str], numbers: list[int]
    ) -> None:
        """Any text and any integers as units, with a lone surrogate: a new path failing for
        every treated unit is frozen, and no unit is stored as text."""
        tag = uuid.uuid4().hex  # each example on fresh data: a file, or a prefix, of its own
        if shared.kind == "sqlite":
            store: SQLiteStore | RedisStore = SQLiteStore(tmp_path / f"{tag}.db",
                                                          refresh_interval=3600)  # fmt: skip
        else:
            url = shared.url.split("?", 1)[0]
            store = RedisStore(url, prefix=unique_prefix(tag), refresh_interval=3600, timeout=5,
                               push=False)  # fmt: skip
        try:
            rollouts = Rollouts(GATED, store=store)
            marked = [f"{text}\x1f{tag}-{i}" for i, text in enumerate(texts)]
            big = [n * 10**60 + 10**55 for n in numbers]  # long enough to look for
            units: list[str | int] = ["\ud800", *texts, *marked, *numbers, *big, *PADDING]
            fail_every_treated_unit(rollouts, units)
            assert [t.action for t in rollouts.tick()] in ([Action.FREEZE], [Action.ROLLBACK])
            assert rollouts.failures.count("store.flush_failed") == 0
            if isinstance(store, SQLiteStore):
                held = b"".join(p.read_bytes() for p in tmp_path.glob(f"{tag}.db*"))
            else:
                held = redis_bytes(store)
            looked_for: list[str | int] = [*marked, *big]
            for unit in looked_for:
                assert as_text(unit) not in held
        finally:
            if isinstance(store, RedisStore):
                client = store.client
                keys = list(client.scan_iter(match=f"{store.prefix}:*"))
                if keys:
                    client.delete(*keys)
            store.close()


class RefusingSQLiteStore(SQLiteStore):
    """A store of someone else's making: it refuses, as a data error, one unit's digest."""

    refused: set[str] = set()  # noqa: RUF012 - set per test
    calls = 0

    def add_units(self, rollout: str, scope: str, units: Any) -> list[bool]:
        self.calls += 1
        if self.refused & set(units):
            raise UnicodeEncodeError("utf-8", "x", 0, 1, "refused by this store")
        return super().add_units(rollout, scope, units)


class DownSQLiteStore(SQLiteStore):
    """A store whose writes of units fail as a store that is down does."""

    calls = 0

    def add_units(self, rollout: str, scope: str, units: Any) -> list[bool]:
        self.calls += 1
        raise ConnectionError("the store is down")


class TestSplitting:
    def test_one_refused_unit_does_not_hold_back_the_others(self, tmp_path: Path) -> None:
        """A store that refuses one element of a batch: the batch is split, the refused one
        dropped and counted, the others land, and the rollout freezes."""
        store = RefusingSQLiteStore(tmp_path / "store.db", refresh_interval=3600)
        try:
            rollouts = Rollouts(GATED, store=store)
            treated = next(u for u in PADDING if rollouts.enabled("co", u))
            key = rollout_key("co", rollouts["co"].state.history)
            store.refused = {digest(key, token(treated))}
            fail_every_treated_unit(rollouts, PADDING)
            assert [t.action for t in rollouts.tick()] in ([Action.FREEZE], [Action.ROLLBACK])
            assert rollouts.failures.count("store.units_refused") == 1
            assert rollouts.failures.count("store.flush_failed") == 0
        finally:
            store.close()

    def test_a_store_that_is_down_is_called_once_per_flush(self, tmp_path: Path) -> None:
        """Only data errors split a batch: a down store fails the flush once, and the
        events stay queued for the next one."""
        store = DownSQLiteStore(tmp_path / "store.db", refresh_interval=3600)
        try:
            rollouts = Rollouts(GATED, store=store)
            fail_every_treated_unit(rollouts, PADDING)
            rollouts.tick()
            assert store.calls == 1
            assert rollouts.failures.count("store.flush_failed") == 1
            rollouts.tick()
            assert store.calls == 2
        finally:
            store.close()


# -- corrupt states ------------------------------------------------------------------------------


def write_raw_state(backend: Backend, name: str, text: str | None, *, kind: str = "") -> None:
    """Write ``text`` as ``name``'s stored state behind the store's back (a list in Redis
    when ``kind`` is ``"list"``)."""
    store = backend.make_shared()
    if isinstance(store, SQLiteStore):
        import sqlite3

        with sqlite3.connect(store.path) as db:
            db.execute("UPDATE rollouts SET state = ? WHERE name = ?", (text, name))
        return
    key = f"{store.prefix}:{{{name}}}:state"
    client = store.client
    if kind == "list":
        client.delete(key)
        client.rpush(key, "not", "a", "hash")
    else:
        client.hset(key, "s", text or "")


def state_text(**fields: object) -> str:
    return json.dumps({"stage": 0, "status": "running", "since": 1.0, "version": 9, **fields})


CORRUPT: dict[str, str] = {
    "stage -7": state_text(stage=-7, epoch=1),
    "negative version": state_text(version=-4),
    "unknown status": state_text(status="paused"),
    "huge int": state_text(stage=int("9" * 4000)),
    "NaN": state_text(since=float("nan")),
    "deep nesting": "[" * 100_000 + "]" * 100_000,
    "not JSON": "\x00\xff not json",
}
"""Stored states a store may hold: out of range, of another type, not JSON at all."""


FIELDS = ["stage", "status", "since", "version", "epoch", "reason", "history", "x"]
"""Keys of the JSON objects drawn as stored states: a state's fields, and one more."""


class TestCorruptStates:
    @pytest.mark.parametrize("case", [*CORRUPT, "wrong Redis type"])
    def test_a_corrupt_state_blinds_only_its_own_rollout(self, shared: Backend, case: str) -> None:
        """One rollout's stored state is corrupt: it is refused and counted, a new process
        serves the old path for it, and an operator's kill of the other rollout still
        reaches a running process within its refresh."""
        if case == "wrong Redis type" and shared.kind != "redis":
            pytest.skip("a Redis key of another type")
        worker_store = shared.make_shared(refresh_interval=FAST)
        worker = Rollouts(PAIR, store=worker_store)
        operator = Rollouts(PAIR, store=shared.make_shared(refresh_interval=3600))
        if case == "wrong Redis type":
            write_raw_state(shared, "bad", None, kind="list")
        else:
            write_raw_state(shared, "bad", CORRUPT[case])
        operator.kill("good", reason="incident", actor="oncall")
        wait_until(lambda: worker["good"].state.status is Status.KILLED, "the kill of good")
        wait_until(lambda: worker_store.failures.count("store.decode_failed") > 0,
                   "store.decode_failed")  # fmt: skip
        assert set(worker_store.unreadable) == {"bad"}
        # The running worker leaves its last good state for the old path, not the corrupt one.
        wait_until(lambda: worker["bad"].state.version == 0, "the old path for bad")
        assert worker["bad"].state.reason.startswith("state unreadable: ")
        assert not any(worker.enabled("bad", u) for u in PADDING)
        with pytest.raises(ValueError, match="'bad'"):
            worker_store.load("bad")
        with pytest.raises(StoreError):
            worker.advance("bad", actor="alice")  # nothing written over the corrupt state
        newcomer = Rollouts(PAIR, store=shared.make_shared(refresh_interval=3600))
        assert newcomer["bad"].state.version == 0  # the safe default: the old path
        assert not any(newcomer.enabled("bad", u) for u in PADDING)
        assert newcomer["good"].state.status is Status.KILLED

    @pytest.mark.parametrize(
        "field", [7, 0, "garbage", None], ids=["other", "zero", "text", "gone"]
    )
    def test_a_version_field_that_disagrees_is_corrupt(
        self, shared: Backend, field: object
    ) -> None:
        """The version the store compares, changed behind its back, is a corrupt state: the
        worker serves the old path for it (every transition would fail) and the other
        rollout's kill still arrives."""
        worker_store = shared.make_shared(refresh_interval=FAST)
        worker = Rollouts(PAIR, store=worker_store)
        store = shared.make_shared()
        if isinstance(store, SQLiteStore):
            import sqlite3

            if field is None:
                pytest.skip("the SQLite column is NOT NULL")
            with sqlite3.connect(store.path) as db:
                db.execute("UPDATE rollouts SET version = ? WHERE name = 'bad'", (field,))
        else:
            key = f"{store.prefix}:{{bad}}:state"
            if field is None:
                store.client.hdel(key, "v")
            else:
                store.client.hset(key, "v", str(field))
        wait_until(lambda: worker["bad"].state.version == 0, "the old path for bad")
        assert "version field" in worker_store.unreadable["bad"]
        with pytest.raises(StoreError, match="version field"):
            worker.kill("bad", actor="op")
        Rollouts(PAIR, store=store).kill("good", reason="incident", actor="op")
        wait_until(lambda: worker["good"].state.status is Status.KILLED, "the kill of good")

    def test_nothing_is_pooled_while_suspended(self, shared: Backend) -> None:
        """Outcomes reported while the state is unreadable are not pooled under a key of no
        history: after the repair, a unit's first error counts once."""
        policy = {"rollouts": {"a": {"stages": [{"name": "half", "percent": 50}],
                                     "health": {"min_events": 1000}}}}  # fmt: skip
        worker = Rollouts(policy, store=shared.make_shared(refresh_interval=FAST))
        control = [u for u in PADDING if not worker.enabled("a", u)][:3]
        good = shared.make_shared().load("a")
        assert good is not None
        write_raw_state(shared, "a", CORRUPT["stage -7"])
        wait_until(lambda: worker["a"].state.version == 0, "the old path for a")
        for unit in control:
            worker.report("a", unit, error=True)
        time.sleep(FAST * 10)  # flushes while suspended, if any were made
        write_raw_state(shared, "a", dump_state(good))
        wait_until(lambda: worker["a"].state == good, "the repaired state")
        for unit in control:
            worker.report("a", unit, error=True)
        reader = shared.make_shared(refresh_interval=3600)

        def control_errors() -> int:
            counts = reader.read_counts("a", "1.0")
            return sum(n for name, n in counts.items() if name.startswith("errors.c@"))

        wait_until(lambda: control_errors() == 3, "3 events")
        time.sleep(FAST * 5)  # a few more flushes: nothing more lands
        assert control_errors() == 3
        names = {name for name in reader.read_counts("a", "1.0") if name.startswith("errors.")}
        assert all(name.startswith("errors.c@0.5#") for name in names)  # at the policy's share

    def test_a_running_worker_follows_the_repair(self, shared: Backend) -> None:
        """A worker serves the old path while the state is corrupt, and the repaired state
        (the old one written back) as soon as its refresh reads it."""
        worker_store = shared.make_shared(refresh_interval=FAST)
        worker = Rollouts(PAIR, store=worker_store)
        worker.advance("bad", actor="alice")
        good = shared.make_shared().load("bad")
        assert good is not None
        write_raw_state(shared, "bad", CORRUPT["NaN"])
        wait_until(lambda: worker["bad"].state.version == 0, "the old path for bad")
        with pytest.raises(
            StoreError,
            match="serves the old path in every process, as if killed, until it is repaired",
        ):
            worker.status("bad")
        write_raw_state(shared, "bad", dump_state(good))
        wait_until(lambda: worker["bad"].state == good, "the repaired state")
        assert worker.status("bad").stage == 1

    def test_deleting_a_corrupt_state_repairs_it(self, shared: Backend) -> None:
        """An operator deletes the corrupt state: the next start restores it from the
        history, as it was before, and it is readable again."""
        first = Rollouts(PAIR, store=shared.make_shared(refresh_interval=3600))
        first.advance("bad", actor="alice")
        write_raw_state(shared, "bad", CORRUPT["stage -7"])
        store = shared.make_shared(refresh_interval=3600)
        with pytest.raises(ValueError, match="stage -7"):
            store.load("bad")
        assert "bad" in store.unreadable
        drop_state(shared, "bad")
        repaired = Rollouts(PAIR, store=store)
        assert (repaired["bad"].state.stage, repaired["bad"].state.status) == (1, Status.RUNNING)
        assert store.unreadable == {}

    @settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        value=st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
            lambda children: (
                st.lists(children, max_size=3)
                | st.dictionaries(st.sampled_from(FIELDS), children, max_size=8)
            ),
            max_leaves=12,
        )
    )
    def test_any_json_value_as_a_stored_state(self, shared: Backend, value: object) -> None:
        """Whatever JSON a state holds, loading it gives a valid state or ValueError, and a
        refresh still brings in a kill of the other rollout."""
        while len(shared.made) < 2:  # two store objects for every example: reader, operator
            shared.make_shared(refresh_interval=3600)
        store, operator = shared.made[:2]
        assert isinstance(store, SQLiteStore | RedisStore)
        bad, good = (f"{kind}-{uuid.uuid4().hex[:8]}" for kind in ("bad", "good"))
        for name in (bad, good):
            start = RolloutState(0, Status.RUNNING, 1.0, 1, epoch=1)
            entry = Transition(name, Action.START, 0, 0, None, Status.RUNNING, 1, 1.0)
            assert store.compare_and_set(name, 0, start, entry)
        write_raw_state(shared, bad, json.dumps(value))
        try:
            loaded = store.load(bad)
        except ValueError:
            loaded = None
        if loaded is not None:  # pragma: no cover - a draw that is a valid state
            assert loaded.stage >= -1
            assert loaded.version >= 1
        killed = RolloutState(0, Status.KILLED, 2.0, 2, epoch=1)
        kill = Transition(good, Action.KILL, 0, 0, Status.RUNNING, Status.KILLED, 2, 2.0)
        assert operator.compare_and_set(good, 1, killed, kill)
        heard: list[tuple[str, RolloutState]] = []
        store.watch(lambda name, state: heard.append((name, state)))
        assert store.refresh()
        assert (good, killed) in heard


class TestStrayCounters:
    def test_a_counter_that_is_not_an_integer_is_left_out(self, shared: Backend) -> None:
        """A counter written behind the store's back with text in it does not fail the
        flushes: the rollout still freezes on its evidence."""
        store = shared.make_shared(refresh_interval=3600)
        rollouts = Rollouts(GATED, store=store)
        segment = f"{rollouts['co'].state.epoch}.0"
        if isinstance(store, SQLiteStore):
            import sqlite3

            with sqlite3.connect(store.path) as db:
                db.execute("INSERT INTO counts VALUES ('co', ?, 'note', 'abc')", (segment,))
        else:
            assert isinstance(store, RedisStore)
            store.client.hset(f"{store.prefix}:{{co}}:counts:{segment}", "note", "abc")
        assert store.read_counts("co", segment) == {}
        fail_every_treated_unit(rollouts, PADDING)
        assert [t.action for t in rollouts.tick()] in ([Action.FREEZE], [Action.ROLLBACK])
        assert rollouts.failures.count("store.flush_failed") == 0


# -- user code on the refresh thread ------------------------------------------------------------


class CustomBase(BaseException):
    """A ``BaseException`` of the user's own."""


def exits(*args: object) -> None:
    sys.exit(3)


def raises_custom(*args: object) -> None:
    raise CustomBase("user code")


def refresh_thread(store: SQLiteStore | RedisStore) -> threading.Thread:
    """The store's background thread (the one of its name started last)."""
    name = "stagedroll-sqlite" if isinstance(store, SQLiteStore) else "stagedroll-redis"
    before = {t for t in threading.enumerate() if t.name == name}
    store.wake()
    threads = [t for t in threading.enumerate() if t.name == name]
    assert threads
    mine = [t for t in threads if t not in before] or threads
    return mine[-1]


def raise_in(ident: int, exc: type[BaseException]) -> None:
    """Have ``exc`` raised in the thread ``ident`` at its next Python instruction."""
    set_async_exc: Any = ctypes.pythonapi.PyThreadState_SetAsyncExc
    set_async_exc(ctypes.c_ulong(ident), ctypes.py_object(exc))


class TestRefreshThread:
    def test_listeners_and_callbacks_that_exit_are_contained(self, shared: Backend) -> None:
        """A listener calling sys.exit() and a callback raising a custom BaseException, at
        every refresh: the thread goes on, and a later kill by another instance is seen."""
        store = shared.make_shared(refresh_interval=FAST)
        rollouts = Rollouts(PAIR, store=store)
        store.watch(exits)
        store.on_refresh(raises_custom)
        wait_until(lambda: store.failures.count("store.callback_failed") >= 3, "callbacks ran")
        other = Rollouts(PAIR, store=shared.make_shared(refresh_interval=3600))
        other.freeze("good", actor="alice")
        wait_until(lambda: rollouts["good"].state.status is Status.FROZEN, "the freeze")
        assert store.failures.count("store.listener_failed") >= 1
        other.kill("bad", actor="alice")
        wait_until(lambda: rollouts["bad"].state.status is Status.KILLED, "the kill")
        assert store.failures.count("store.thread_died") == 0

    def test_hooks_that_exit_on_the_refresh_thread(self, shared: Backend) -> None:
        """Transition hooks calling sys.exit() and raising a custom BaseException run on the
        store's thread for an automatic freeze: a later kill is still seen."""
        store = shared.make_shared(refresh_interval=FAST)
        rollouts = Rollouts(GATED | {"rollouts": {**GATED["rollouts"], **PAIR["rollouts"]}},
                            store=store)  # fmt: skip
        hooked: list[str] = []

        def exiting_hook(event: TransitionEvent) -> None:
            hooked.append(event.rollout)
            sys.exit(3)

        def custom_hook(event: TransitionEvent) -> None:
            raise CustomBase(event.rollout)

        rollouts.on_transition(exiting_hook)
        rollouts.on_transition(custom_hook)
        fail_every_treated_unit(rollouts, PADDING)  # the thread freezes it, running the hooks
        wait_until(lambda: "co" in hooked, "the automatic freeze")
        other = Rollouts(PAIR, store=shared.make_shared(refresh_interval=3600))
        other.kill("good", reason="incident", actor="oncall")
        wait_until(lambda: rollouts["good"].state.status is Status.KILLED, "the kill")
        assert store.failures.count("store.thread_died") == 0

    @pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
    def test_a_thread_that_died_is_started_again(self, shared: Backend) -> None:
        """The refresh thread ended by an exception raised into it from outside: the next
        call that reaches the store starts it again, counted, and a kill is then seen."""
        store = shared.make_shared(refresh_interval=3600)
        rollouts = Rollouts(PAIR, store=store)
        thread = refresh_thread(store)
        assert thread.ident is not None
        while thread.is_alive():  # delivered when it runs Python code: wake it until it ends
            raise_in(thread.ident, SystemExit)
            store.wake()
            thread.join(0.05)
        other = Rollouts(PAIR, store=shared.make_shared(refresh_interval=3600))
        other.kill("good", reason="incident", actor="oncall")
        assert rollouts.status("good").status is Status.KILLED  # reaches the store...
        assert store.failures.count("store.thread_died") == 1  # ...which starts it again
        restarted = refresh_thread(store)
        assert restarted is not thread
        assert restarted.is_alive()
        other.kill("bad", reason="incident", actor="oncall")
        wait_until(lambda: rollouts["bad"].state.status is Status.KILLED, "the kill", store=store)

    @pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
    def test_a_process_that_only_serves_starts_it_again(self, shared: Backend) -> None:
        """A worker whose calls never reach the store (decide, report, guarded calls) gets
        its dead refresh thread back within a second, and then sees a kill."""
        store = shared.make_shared(refresh_interval=3600)
        rollouts = Rollouts(PAIR, store=store)
        thread = refresh_thread(store)
        assert thread.ident is not None
        while thread.is_alive():  # delivered when it runs Python code: wake it, bypassing
            raise_in(thread.ident, SystemExit)  # store.wake(), which would restart it
            store._thread._wake.set()
            thread.join(0.05)
        store._thread.interval = FAST  # the thread started again refreshes quickly
        Rollouts(PAIR, store=shared.make_shared()).kill("good", reason="incident", actor="op")

        def served_and_killed() -> bool:
            for unit in PADDING[:50]:
                rollouts.decide("good", unit)
                rollouts.report("bad", unit, error=False)
            return rollouts["good"].state.status is Status.KILLED

        wait_until(served_and_killed, "the kill, seen by a restarted thread")
        assert store.failures.count("store.thread_died") == 1


# -- credentials ----------------------------------------------------------------------------------

SECRET = "pw-7Hq2zX"
"""A password no log line, repr or message may show."""
USER = "svc-user-Kp3"


def credential_urls(host: str) -> list[str]:
    """Every URL form that carries a Redis credential."""
    return [
        f"redis://{USER}:{SECRET}@{host}/0",
        f"redis://:{SECRET}@{host}/0",
        f"redis://{host}/0?password={SECRET}",
        f"redis://{host}/0?username={USER}&password={SECRET}",
        f"rediss://{USER}:{SECRET}@{host}/0",
        f"redis://{USER}:{SECRET.replace('-', '%2D')}@{host}/0",
        f"unix://:{SECRET}@/tmp/no-such-redis.sock?db=0",
        f"unix:///tmp/no-such-redis.sock?password={SECRET}",
    ]


def shown(logs: Sequence[Mapping[str, Any]], errors: Sequence[BaseException]) -> str:
    """Every log field (and its exception's traceback) and every error's chain, as text."""
    parts = []
    for log in logs:
        for value in log.values():
            parts.append(repr(value))
            if isinstance(value, BaseException):
                parts += traceback.format_exception(value)
    for error in errors:
        parts += traceback.format_exception(error)
    return "\n".join(parts)


class TestCredentials:
    @pytest.mark.parametrize("url", credential_urls(f"127.0.0.1:{free_port()}"))
    def test_never_in_repr_logs_or_errors(self, url: str) -> None:
        """With Redis unreachable, the password and the username are in no repr, log line,
        traceback or exception message, in every URL form."""
        errors: list[BaseException] = []
        with structlog.testing.capture_logs() as logs:
            store = RedisStore(url, prefix=unique_prefix("creds"), refresh_interval=FAST,
                               timeout=0.05)  # fmt: skip
            try:
                rollouts = Rollouts(PAIR, store=store)
                with pytest.raises(StoreError) as killing:
                    rollouts.kill("good", actor="a")
                with pytest.raises(StoreError) as reading:
                    rollouts.status("good")
                errors += [killing.value, reading.value]
                wait_until(lambda: store.failures.count("store.refresh_failed") > 0,
                           "a failed refresh")  # fmt: skip
                text = repr(store) + repr(rollouts)
            finally:
                store.close()
            try:
                store.load("good")
            except RuntimeError as exc:  # closed: the message names the store
                errors.append(exc)
        assert errors
        everything = text + shown(logs, errors)
        assert SECRET not in everything
        assert SECRET.replace("-", "%2D") not in everything
        assert USER not in everything
        assert "load_failed" in everything or "refresh_failed" in everything

    @pytest.mark.parametrize(
        "url",
        [
            *credential_urls("127.0.0.1:6379"),
            f"redis://:{SECRET}@[broken",
            f"redis+sentinel://:{SECRET}@host/0",
        ],
    )
    def test_never_in_url_errors(self, url: str) -> None:
        """store_from_url's errors (a malformed option, a scheme it does not know, a URL it
        cannot parse) show the URL without its credentials."""
        with pytest.raises(ValueError) as raised:  # noqa: PT011 - checked below
            store_from_url(url + ("&" if "?" in url else "?") + "timeout=soon")
        assert SECRET not in str(raised.value)
        assert USER not in str(raised.value)

    def test_a_bad_option_in_a_password_is_not_quoted(self) -> None:
        """A password with an unencoded '?' puts its tail in the query: a bad option there
        is named, never quoted."""
        with pytest.raises(ValueError, match="timeout must be float") as raised:
            store_from_url(f"redis://:ab?timeout={SECRET}@127.0.0.1/0")
        assert SECRET not in str(raised.value)

    def test_never_in_logs_of_a_refused_login(self, redis_url: str) -> None:
        """A reachable Redis that refuses the credentials: the logs do not show them."""
        host = redis_url.split("://", 1)[1].split("/", 1)[0].rpartition("@")[2]
        with structlog.testing.capture_logs() as logs:
            store = RedisStore(f"redis://{USER}:{SECRET}@{host}/0", prefix=unique_prefix("creds"))
            try:
                Rollouts(PAIR, store=store)
            finally:
                store.close()
        assert any(log["event"] == "store.load_failed" for log in logs)
        assert SECRET not in shown(logs, [])
        assert USER not in shown(logs, [])

    HEAD, TAIL = "pwHead7Q", "pwTail9Z"
    """The two halves of a password around an unencoded delimiter: neither may show."""

    @staticmethod
    def chained(errors: Sequence[BaseException]) -> str:
        """Each error and every error in its chain (``__cause__`` and ``__context__``, shown
        or suppressed): message, repr, arguments and traceback."""
        parts: list[str] = []
        pending, done = list(errors), set()
        while pending:
            error = pending.pop()
            if id(error) in done:
                continue
            done.add(id(error))
            parts += [str(error), repr(error), repr(error.args)]
            parts += traceback.format_exception(error)
            pending += [e for e in (error.__cause__, error.__context__) if e is not None]
        return "\n".join(parts)

    @pytest.mark.parametrize("delimiter", ["/", "?", "#", "@", ":", "/?#@:"])
    @pytest.mark.parametrize(
        "form",
        [
            "redis://{user}:{password}@{host}/0",
            "redis://:{password}@{host}/0",
            "redis://:{password}@{host}/0?username={user}",
            "rediss://{user}:{password}@{host}/0",
            "unix://:{password}@/tmp/no-such-redis.sock?db=0",
            "redis://{host}/0?password={password}",
            "redis://{host}/0?username={user}&password={password}",
        ],
    )
    def test_a_password_with_unencoded_delimiters_never_shows(
        self, form: str, delimiter: str
    ) -> None:
        """A password with an unencoded '/', '?', '#', '@' or ':' shows in no repr, log line or
        error chain, whether the store is made directly or by store_from_url."""
        password = self.HEAD + delimiter + self.TAIL
        url = form.format(user=USER, password=password, host=f"127.0.0.1:{free_port()}")
        errors: list[BaseException] = []
        made: list[object] = []

        def attempt(make: Callable[[], object]) -> None:
            try:
                made.append(make())
            except Exception as exc:
                errors.append(exc)

        with structlog.testing.capture_logs() as logs:
            store = RedisStore(url, prefix=unique_prefix("creds"), refresh_interval=FAST,
                               timeout=0.05)  # fmt: skip
            try:
                rollouts = Rollouts(PAIR, store=store)
                attempt(lambda: rollouts.kill("good", actor="a"))
                attempt(lambda: store.load("good"))
                wait_until(lambda: store.failures.count("store.refresh_failed") > 0,
                           "a failed refresh")  # fmt: skip
                made += [store, rollouts]
            finally:
                store.close()
            joiner = "&" if "?" in url else "?"
            attempt(lambda: store_from_url(url + joiner + "prefix=p"))
            attempt(lambda: store_from_url(url + joiner + "timeout=soon"))
        assert len(errors) >= 2
        assert any(log["event"] == "store.refresh_failed" for log in logs)
        everything = " ".join(map(repr, made)) + shown(logs, []) + self.chained(errors)
        for other in made:
            if isinstance(other, RedisStore):
                other.close()
        for part in (self.HEAD, self.TAIL, USER):
            assert part not in everything

    def test_what_redis_py_says_of_a_url_is_replaced(self) -> None:
        """redis-py's error about a URL it cannot parse quotes the password's start; the error
        raised names the URL without credentials, and has no cause or context to show it."""
        url = f"redis://:{self.HEAD}?x=1@127.0.0.1:{free_port()}/0"  # a port of letters
        store = RedisStore(url, prefix=unique_prefix("creds"), refresh_interval=3600)
        try:
            with pytest.raises(Exception, match=re.escape("redis://***@127.0.0.1")) as raised:
                store.load("good")
        finally:
            store.close()
        assert raised.value.__cause__ is None
        assert raised.value.__context__ is None
        assert self.HEAD not in self.chained([raised.value])
        assert "percent-encode" in str(raised.value)


# -- a state lost with no process to restore it --------------------------------------------------


def drop_state(backend: Backend, name: str, *, history: bool = False) -> None:
    """Delete ``name``'s stored state (and its history) behind every process's back."""
    store = backend.make_shared()
    if isinstance(store, SQLiteStore):
        import sqlite3

        with sqlite3.connect(store.path) as db:
            db.execute("DELETE FROM rollouts WHERE name = ?", (name,))
            if history:
                db.execute("DELETE FROM history WHERE rollout = ?", (name,))
        return
    assert isinstance(store, RedisStore)
    store.client.delete(f"{store.prefix}:{{{name}}}:state")
    if history:
        store.client.delete(f"{store.prefix}:{{{name}}}:history")


class TestLostWithNoLiveProcess:
    @pytest.mark.parametrize("last", ["complete", "kill"])
    def test_a_lost_state_is_restored_from_the_history(self, shared: Backend, last: str) -> None:
        """A completed (or killed) rollout whose state row or key is lost while no process
        runs comes back as it was, from its history, not at its first stage."""
        first = Rollouts(STAGED, store=shared.make_shared(refresh_interval=3600))
        first.advance("co", actor="alice")
        getattr(first, last)("co", actor="alice")
        before = first["co"].state
        first.store.close()
        drop_state(shared, "co")
        store = shared.make_shared(refresh_interval=3600)
        with structlog.testing.capture_logs() as logs:
            later = Rollouts(STAGED, store=store)
        state = later["co"].state
        assert (state.stage, state.status) == (before.stage, before.status)
        assert state.version == before.version + 1
        assert state.history == before.history
        assert store.failures.count("store.state_lost") == 1
        assert any(log["event"] == "store.state_lost" for log in logs)
        newest = later.history("co")[0]
        assert (newest.action, newest.actor) == (Action.START, "stagedroll")
        assert "restored from the history" in newest.reason
        if last == "complete":
            assert all(later.enabled("co", u) for u in PADDING)
        else:
            assert not any(later.enabled("co", u) for u in PADDING)

    def test_an_unreadable_newest_entry_serves_the_old_path(self, shared: Backend) -> None:
        """A lost state whose newest history entry cannot be read (it may be a kill) is not
        guessed from an older entry: the rollout serves the old path until it is repaired."""
        first = Rollouts(STAGED, store=shared.make_shared(refresh_interval=3600))
        first.complete("co", actor="alice")
        first.store.close()
        drop_state(shared, "co")
        store = shared.make_shared()
        if isinstance(store, SQLiteStore):
            import sqlite3

            with sqlite3.connect(store.path) as db:
                db.execute(
                    "UPDATE history SET entry = '{broken' WHERE rollout = 'co' AND id = "
                    "(SELECT MAX(id) FROM history WHERE rollout = 'co')"
                )
        else:
            store.client.lset(f"{store.prefix}:{{co}}:history", 0, "{broken")
        later = Rollouts(STAGED, store=store)
        assert later["co"].state.version == 0
        assert not any(later.enabled("co", u) for u in PADDING)
        assert "newest history entry" in store.unreadable["co"]

    def test_a_registered_rollout_without_state_or_history_is_said_lost(
        self, shared: Backend
    ) -> None:
        """State and history both gone, the store's registration left: it starts again at
        its first stage, and the loss is logged and counted."""
        first = Rollouts(STAGED, store=shared.make_shared(refresh_interval=3600))
        first.complete("co", actor="alice")
        first.store.close()
        drop_state(shared, "co", history=True)
        store = shared.make_shared(refresh_interval=3600)
        later = Rollouts(STAGED, store=store)
        assert (later["co"].state.stage, later["co"].state.version) == (0, 1)
        assert store.failures.count("store.state_lost") == 1

    def test_a_new_rollout_is_not_a_loss(self, shared: Backend) -> None:
        """A rollout the store never held starts without a word of loss."""
        store = shared.make_shared(refresh_interval=3600)
        Rollouts(PAIR, store=store)
        later = shared.make_shared(refresh_interval=3600)
        Rollouts(STAGED, store=later)
        assert store.failures.count("store.state_lost") == 0
        assert later.failures.count("store.state_lost") == 0

    def test_redis_restarted_empty_says_it_is_initialized(self, redis_server: RedisServer) -> None:
        """A Redis that lost everything cannot tell a loss from a new store; the first
        start in it is logged as store.initialized, once per store."""
        with structlog.testing.capture_logs() as logs:
            store = RedisStore(redis_server.url, prefix="app")
            Rollouts(STAGED, store=store).complete("co", actor="alice")
            store.close()
            redis_server.stop()
            redis_server.start()  # empty, no process alive to restore
            store = RedisStore(redis_server.url, prefix="app")
            restarted = Rollouts(STAGED, store=store)
            Rollouts(STAGED, store=store)
            store.close()
        assert restarted["co"].state.stage == 0  # undetectable: documented
        initialized = [log for log in logs if log["event"] == "store.initialized"]
        assert len(initialized) == 2
        assert all(log["log_level"] == "warning" for log in initialized)

    def test_a_sqlite_file_emptied_says_it_is_initialized(self, tmp_path: Path) -> None:
        """A SQLite file created again from nothing logs store.initialized at its first start."""
        path = tmp_path / "store.db"
        with structlog.testing.capture_logs() as logs:
            store = SQLiteStore(path)
            Rollouts(STAGED, store=store).complete("co", actor="alice")
            store.close()
            for companion in tmp_path.glob("store.db*"):
                companion.unlink()
            store = SQLiteStore(path)
            Rollouts(STAGED, store=store)
            store.close()
        assert sum(log["event"] == "store.initialized" for log in logs) == 2
