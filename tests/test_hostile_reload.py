"""Hostile tests of hot reload: the policy file saved the ways editors and tools save it.

A non-atomic save is briefly empty or truncated; a truncated file can still be a valid policy
that lacks a rollout. Whatever the file goes through, each name keeps one handle, the guards
built on it follow its current plan and state, and a kill stops the new path for every unit.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

from servers import RedisServer, unique_prefix
from stagedroll import Reason, RedisStore, Rollouts, Status
from test_store_contract import Backend, _backend_fixture  # noqa: F401 - the fixture

INTERVAL = 0.01
UNITS = [f"user-{i}" for i in range(200)]

A_TABLE = """
[rollouts.a]
stages = [{ name = "half", percent = 50 }]
"""
B_TABLE = """
[rollouts.b]
stages = [{ name = "half", percent = 50 }, { name = "all", percent = 100 }]
"""
FULL = A_TABLE + B_TABLE


def touch_later(path: Path, before: int) -> None:
    """Make sure the modification time moved (file systems with a coarse clock)."""
    if path.stat().st_mtime_ns == before:
        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


def truncate_then_write(path: Path, text: str) -> None:
    """Save as most editors without a safe-write option do: empty the file, then fill it."""
    before = path.stat().st_mtime_ns
    with path.open("w") as file:
        file.flush()
        time.sleep(INTERVAL * 2)  # a reload lands here and sees the empty file
        half = len(text) // 2
        file.write(text[:half])  # cut mid-token: not valid TOML
        file.flush()
        time.sleep(INTERVAL * 2)
        file.write(text[half:])
    touch_later(path, before)


def write_then_rename(path: Path, text: str) -> None:
    """Save atomically: a temporary file beside it, renamed over it."""
    before = path.stat().st_mtime_ns
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
    touch_later(path, before)


def missing_last_table(path: Path, text: str) -> None:
    """A save that stops at a table boundary: valid TOML that lacks rollout ``b`` for a while."""
    before = path.stat().st_mtime_ns
    path.write_text(A_TABLE)
    touch_later(path, before)
    time.sleep(INTERVAL * 3)
    before = path.stat().st_mtime_ns
    path.write_text(text)
    touch_later(path, before)


SAVES: dict[str, Callable[[Path, str], None]] = {
    "truncate-then-write": truncate_then_write,
    "write-then-rename": write_then_rename,
    "missing-last-table": missing_last_table,
}


@pytest.fixture(name="path")
def _path(tmp_path: Path) -> Path:
    path = tmp_path / "rollouts.toml"
    path.write_text(FULL)
    return path


def settle(rollouts: Rollouts, name: str = "b") -> None:
    """Call until the last save is applied (another thread may be the one reading it)."""
    deadline = time.monotonic() + 10
    while name not in rollouts and time.monotonic() < deadline:
        rollouts.decide(name, "x")
        time.sleep(INTERVAL)
    assert name in rollouts


def guarded(rollouts: Rollouts, name: str = "b") -> Callable[[str], str]:
    @rollouts.guard(name, fallback=lambda unit: "old", unit=lambda unit: unit)
    def new(unit: str) -> str:
        return "new"

    return new


class Callers:
    """Four threads calling a guard over and over; what they saw after ``killed`` was set."""

    def __init__(self, call: Callable[[str], str]) -> None:
        self.call = call
        self.stop = threading.Event()
        self.killed = threading.Event()
        self.after: list[str] = []
        self.before: list[str] = []
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run) for _ in range(4)]

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                for unit in UNITS:
                    was_killed = self.killed.is_set()  # read before the call starts
                    answer = self.call(unit)
                    (self.after if was_killed else self.before).append(answer)
        except BaseException as exc:
            self.errors.append(exc)

    def __enter__(self) -> Callers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()
        assert self.errors == []


class TestEditorSaves:
    @pytest.mark.parametrize("save", list(SAVES))
    def test_kill_stops_every_unit_after_any_save(
        self, save: str, path: Path, backend: Backend
    ) -> None:
        """Saved by an editor while 4 threads call the guard, a kill stops the new path at once."""
        rollouts = Rollouts.from_file(path, store=backend.make(), reload_interval=INTERVAL)
        handle = rollouts["b"]
        with Callers(guarded(rollouts)) as callers:
            for _ in range(2):
                SAVES[save](path, FULL)
                time.sleep(INTERVAL * 3)
            settle(rollouts)
            assert rollouts["b"] is handle
            rollouts.kill("b", reason="incident", actor="op")
            callers.killed.set()
            for _ in range(2):  # reloads after the kill do not undo it
                SAVES[save](path, FULL)
                time.sleep(INTERVAL * 3)
            while len(callers.after) < 4 * len(UNITS):
                time.sleep(INTERVAL)
        assert "new" in callers.before  # the guard did route to the new path before
        assert set(callers.after) == {"old"}
        assert rollouts["b"] is handle
        assert rollouts.status("b").status is Status.KILLED

    def test_the_issue_reproducer(self, path: Path) -> None:
        """Empty file, then the full one: the guard's handle still obeys the kill."""
        rollouts = Rollouts.from_file(path, reload_interval=INTERVAL)
        new = guarded(rollouts)
        path.write_text("")
        time.sleep(INTERVAL * 2)
        rollouts.decide("b", "x")
        path.write_text(FULL)
        settle(rollouts)
        rollouts.kill("b", reason="incident", actor="op")
        assert {new(unit) for unit in UNITS} == {"old"}
        assert rollouts.decide("b", "x").reason is Reason.KILLED


class TestRemovedRollout:
    def removed(self, path: Path, rollouts: Rollouts) -> None:
        path.write_text(A_TABLE)
        deadline = time.monotonic() + 10  # a shared store's thread reloads: poll for it
        while rollouts.removed != ["b"] and time.monotonic() < deadline:
            time.sleep(INTERVAL)
            rollouts.decide("a", "x")
        assert rollouts.removed == ["b"]

    def test_a_removed_rollout_routes_every_call_to_the_old_path(self, path: Path) -> None:
        """Its guard answers from the fallback; the removal is logged with its guards."""
        rollouts = Rollouts.from_file(path, reload_interval=INTERVAL)
        new = guarded(rollouts)
        assert "new" in {new(unit) for unit in UNITS}
        with structlog.testing.capture_logs() as logs:
            self.removed(path, rollouts)
        assert {new(unit) for unit in UNITS} == {"old"}
        decision = rollouts.decide("b", "user-1")
        assert (decision.enabled, decision.reason) == (False, Reason.UNKNOWN_ROLLOUT)
        assert rollouts.enabled("b", "user-1") is False
        [event] = [e for e in logs if e["event"] == "policy.rollout_removed"]
        assert (event["rollout"], event["guards"], event["status"]) == ("b", 1, "running")

    def test_a_removed_rollout_can_be_killed_frozen_and_inspected(self, path: Path) -> None:
        """Transitions and status still reach its state; it comes back killed."""
        rollouts = Rollouts.from_file(path, reload_interval=INTERVAL)
        new = guarded(rollouts)
        self.removed(path, rollouts)
        rollouts.freeze("b", reason="look", actor="op")
        rollouts.kill("b", reason="incident", actor="op")
        status = rollouts.status("b")
        assert (status.status, status.in_policy) == (Status.KILLED, False)
        assert status.waiting_for is not None
        assert "no longer" in status.waiting_for
        assert [str(t.action) for t in rollouts.history("b")][:2] == ["kill", "freeze"]
        path.write_text(FULL)
        settle(rollouts)
        assert rollouts.removed == []
        assert rollouts.status("b").in_policy is True
        assert {new(unit) for unit in UNITS} == {"old"}  # still killed
        rollouts.unfreeze("b", reason="fixed", actor="op")
        assert "new" in {new(unit) for unit in UNITS}

    @pytest.mark.parametrize("backend", ["sqlite", "redis"], indirect=True)
    def test_a_kill_through_the_store_reaches_a_removed_rollout(
        self, path: Path, backend: Backend
    ) -> None:
        """Another process's kill (the CLI's) is adopted by the removed handle, and kept."""
        worker = Rollouts.from_file(
            path, store=backend.make(refresh_interval=INTERVAL), reload_interval=INTERVAL
        )
        new = guarded(worker)
        self.removed(path, worker)
        operator = Rollouts(FULL_POLICY, store=backend.make())
        operator.kill("b", reason="incident", actor="op")
        deadline = time.monotonic() + 10
        while worker["b"].state.status is not Status.KILLED and time.monotonic() < deadline:
            time.sleep(INTERVAL)
        assert worker["b"].state.status is Status.KILLED
        path.write_text(FULL)
        settle(worker)
        assert {new(unit) for unit in UNITS} == {"old"}

    def test_a_rollout_with_a_pattern_cannot_be_removed(self, tmp_path: Path) -> None:
        """Removing a shadow or migration from a running process is refused, as a change is."""
        path = tmp_path / "rollouts.toml"
        shadowed = FULL + 'pattern = "shadow"\n'
        path.write_text(shadowed)
        rollouts = Rollouts.from_file(path, reload_interval=INTERVAL)
        path.write_text(A_TABLE)
        time.sleep(INTERVAL * 2)
        assert "b" in rollouts
        assert rollouts.removed == []
        assert "cannot remove" in (rollouts.status("b").pending_policy or "")


FULL_POLICY = {
    "rollouts": {
        "a": {"stages": [{"name": "half", "percent": 50}]},
        "b": {"stages": [{"name": "half", "percent": 50}, {"name": "all", "percent": 100}]},
    }
}


class TestReloadRaces:
    def test_a_pattern_cannot_come_back_changed(self, path: Path) -> None:
        """Removed by one save, back as a shadow in the next: refused, as a direct change is."""
        rollouts = Rollouts.from_file(path, reload_interval=INTERVAL)
        guarded(rollouts)
        path.write_text(A_TABLE)
        time.sleep(INTERVAL * 2)
        rollouts.decide("a", "x")
        assert rollouts.removed == ["b"]
        path.write_text(FULL + 'pattern = "shadow"\n')
        time.sleep(INTERVAL * 2)
        rollouts.decide("a", "x")
        assert "b" not in rollouts
        assert rollouts["b"].policy.pattern is None
        assert "pattern" in (rollouts.status("a").pending_policy or "")

    def test_every_listed_rollout_has_a_handle_during_reloads(self, path: Path) -> None:
        """Threads listing the rollouts while reloads add some never meet an unknown name."""
        rollouts = Rollouts.from_file(path, reload_interval=0.001)
        stop = threading.Event()
        errors: list[BaseException] = []

        def lister() -> None:
            try:
                while not stop.is_set():
                    for name in list(rollouts):
                        rollouts[name].state  # noqa: B018 - the lookup is the test
                    rollouts.decide("a", "x")  # and reload now and then
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=lister) for _ in range(2)]
        for thread in threads:
            thread.start()
        for i in range(30):
            extra = "".join(
                f'\n[rollouts.c{i}_{j}]\nstages = [{{ name = "s", percent = 5 }}]\n'
                for j in range(5)
            )
            write_then_rename(path, FULL + extra)
            time.sleep(0.003)
        stop.set()
        for thread in threads:
            thread.join()
        assert errors == []


class TestReloadWhileTheStoreIsDown:
    def test_the_calls_reload_while_the_refresh_backs_off(
        self, path: Path, redis_server: RedisServer
    ) -> None:
        """Redis down: a service's call applies a changed file itself (the store's refresh
        backs off, up to 30 s), so editing the file still reaches this process."""
        store = RedisStore(redis_server.url, prefix=unique_prefix("down"), refresh_interval=3600)
        rollouts = Rollouts.from_file(path, store=store, reload_interval=INTERVAL)
        redis_server.stop()
        assert store.refresh() is False  # the refresh failed: the store is down
        assert store.down
        path.write_text(A_TABLE + B_TABLE.replace("percent = 50 }", "percent = 0 }", 1))
        time.sleep(1.1)  # past the reload interval, and the once-a-second gate of the calls
        rollouts.decide("b", "user-1")  # this call reloads: the store's thread would not
        assert rollouts["b"].policy.stages[0].percent == 0
        assert not any(rollouts.enabled("b", unit) for unit in UNITS)
        store.close()
