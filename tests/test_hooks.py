"""Tests of transition hooks: the events they receive, their order, and their failures."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from conftest import plain_policy
from stagedroll import Action, MemoryStore, Rollouts, Status, TransitionEvent
from stagedroll._failures import Failures
from stagedroll._hooks import Hooks
from stagedroll.testing import FakeClock


class Recorder:
    """A hook that keeps the events it receives."""

    def __init__(self) -> None:
        self.events: list[TransitionEvent] = []

    def __call__(self, event: TransitionEvent) -> None:
        self.events.append(event)


class _HookFailed(Exception):
    """Raised by the hooks that fail on purpose."""


def _raise(event: TransitionEvent) -> None:
    raise _HookFailed(event.rollout)


@pytest.fixture(name="recorder")
def _recorder() -> Recorder:
    return Recorder()


@pytest.fixture(name="rollouts")
def _rollouts(recorder: Recorder) -> Rollouts:
    """Rollout ``checkout`` at 10, 50 and 100 %, with ``recorder`` as its only hook."""
    return Rollouts(plain_policy(10, 50, 100), clock=FakeClock(1000.0), on_transition=recorder)


def degrade(rollouts: Rollouts, name: str = "checkout", calls: int = 4000) -> None:
    """Report a stream where each new-path unit fails and no old-path unit does."""
    for i in range(calls):
        unit = f"user-{i}"
        rollouts.report(name, unit, error=rollouts.enabled(name, unit))


class TestTransitionEvent:
    def test_a_manual_transition(self, rollouts: Rollouts, recorder: Recorder) -> None:
        """An operator's advance: stages, names, statuses, reason, actor, time and evidence."""
        transition = rollouts.advance("checkout", reason="looks good", actor="alice")
        (event,) = recorder.events
        assert event == TransitionEvent(
            rollout="checkout",
            action=Action.ADVANCE,
            from_stage=0,
            to_stage=1,
            from_stage_name="s0",
            to_stage_name="s1",
            from_status=Status.RUNNING,
            to_status=Status.RUNNING,
            reason="looks good",
            actor="alice",
            at=1000.0,
            version=2,
            evidence=transition.evidence,
        )
        assert event.automatic is False
        assert event.evidence["e_errors"] == 1.0
        assert event.evidence["share"] == 0.1

    def test_a_rollback_to_zero_names_no_stage(
        self, rollouts: Rollouts, recorder: Recorder
    ) -> None:
        """Stage -1 (0 %) has no name: ``to_stage_name`` is ``None``."""
        rollouts.rollback("checkout", actor="bob")
        (event,) = recorder.events
        assert (event.from_stage, event.to_stage) == (0, -1)
        assert (event.from_stage_name, event.to_stage_name) == ("s0", None)
        assert (event.from_status, event.to_status) == (Status.RUNNING, Status.ROLLED_BACK)

    def test_an_automatic_transition(self, rollouts: Rollouts, recorder: Recorder) -> None:
        """The health gate's freeze and rollback: actor ``stagedroll``, with their evidence."""
        degrade(rollouts)
        freeze, rollback = recorder.events
        assert (freeze.action, rollback.action) == (Action.FREEZE, Action.ROLLBACK)
        for event in (freeze, rollback):
            assert event.automatic is True
            assert event.actor == "stagedroll"
            assert event.reason.startswith("errors: the new path failed for ")
        e_freeze, e_rollback = freeze.evidence["e_errors"], rollback.evidence["e_errors"]
        assert isinstance(e_freeze, float)
        assert isinstance(e_rollback, float)
        assert 20 <= e_freeze < 1000 <= e_rollback  # the error test's bars: no latency test
        assert rollback.evidence["error_events_control"] == 0

    def test_without_a_health_gate_the_evidence_is_empty(self, recorder: Recorder) -> None:
        """A rollout whose health gate is off hands hooks an empty evidence mapping."""
        policy = plain_policy(10, 50)
        policy["rollouts"]["checkout"]["health"] = {"enabled": False}
        Rollouts(policy, on_transition=recorder).freeze("checkout")
        (event,) = recorder.events
        assert dict(event.evidence) == {}

    def test_the_event_is_frozen(self, rollouts: Rollouts, recorder: Recorder) -> None:
        """Hooks cannot change the event that the next hook receives."""
        rollouts.freeze("checkout")
        with pytest.raises(AttributeError):
            recorder.events[0].actor = "mallory"  # type: ignore[misc]


class TestCalls:
    def test_hooks_run_in_the_order_added(self) -> None:
        """The constructor's hooks first, in order, then those added with ``on_transition``."""
        calls: list[str] = []
        rollouts = Rollouts(
            plain_policy(10, 50),
            on_transition=[lambda e: calls.append("first"), lambda e: calls.append("second")],
        )

        @rollouts.on_transition
        def third(event: TransitionEvent) -> None:
            calls.append("third")

        rollouts.advance("checkout")
        assert calls == ["first", "second", "third"]
        assert len(rollouts.hooks) == 3

    def test_off_transition_removes_one_registration(self, recorder: Recorder) -> None:
        """A hook removed is not called again; removing one never added says so (False)."""
        rollouts = Rollouts(plain_policy(10, 50, 100), on_transition=[recorder, recorder])
        assert rollouts.off_transition(recorder) is True
        rollouts.advance("checkout")
        assert len(recorder.events) == 1  # added twice, removed once: called once
        assert rollouts.off_transition(recorder) is True
        assert rollouts.off_transition(recorder) is False
        rollouts.advance("checkout")
        assert len(recorder.events) == 1

    def test_a_hook_may_remove_itself(self, recorder: Recorder) -> None:
        """Removing a hook while the hooks are being called is safe: the others still run."""
        rollouts = Rollouts(plain_policy(10, 50, 100))

        def once(event: TransitionEvent) -> None:
            rollouts.off_transition(once)

        rollouts.on_transition(once)
        rollouts.on_transition(recorder)
        rollouts.advance("checkout")
        rollouts.advance("checkout")
        assert len(recorder.events) == 2
        assert len(rollouts.hooks) == 1

    def test_from_file_takes_hooks(self, tmp_path: Path, recorder: Recorder) -> None:
        """``Rollouts.from_file`` passes its hooks on."""
        path = tmp_path / "rollouts.toml"
        path.write_text('[rollouts.a]\nstages = [{ name = "x", percent = 10 }]\n')
        Rollouts.from_file(path, on_transition=recorder).kill("a")
        assert [e.action for e in recorder.events] == [Action.KILL]

    def test_one_call_per_transition(self, rollouts: Rollouts, recorder: Recorder) -> None:
        """Each transition reaches each hook once; a refused one reaches none."""
        rollouts.freeze("checkout")
        rollouts.unfreeze("checkout")
        rollouts.kill("checkout")
        with pytest.raises(Exception, match="cannot freeze"):
            rollouts.freeze("checkout")
        assert [e.action for e in recorder.events] == [Action.FREEZE, Action.UNFREEZE, Action.KILL]
        assert [e.version for e in recorder.events] == [2, 3, 4]

    def test_a_hook_sees_the_stored_state(self, rollouts: Rollouts) -> None:
        """Hooks run after the transition is stored: a hook reading the status sees it."""
        seen: list[Status] = []
        rollouts.on_transition(lambda event: seen.append(rollouts.status(event.rollout).status))
        rollouts.freeze("checkout")
        assert seen == [Status.FROZEN]

    def test_only_this_instances_transitions(self, recorder: Recorder) -> None:
        """Another Rollouts on the same store does not call this one's hooks."""
        store = MemoryStore()
        Rollouts(plain_policy(10, 50), store=store, on_transition=recorder)
        Rollouts(plain_policy(10, 50), store=store).freeze("checkout")
        assert recorder.events == []

    def test_remove(self, rollouts: Rollouts, recorder: Recorder) -> None:
        """A removed hook is no longer called; removing it twice is a ValueError."""
        rollouts.hooks.remove(recorder)
        rollouts.freeze("checkout")
        assert recorder.events == []
        assert len(rollouts.hooks) == 0
        with pytest.raises(ValueError, match="not in list"):
            rollouts.hooks.remove(recorder)

    @pytest.mark.parametrize("hook", [5, "print", None])
    def test_a_hook_must_be_callable(self, hook: Any) -> None:
        """A hook that cannot be called is a TypeError at once, not a failure later."""
        rollouts = Rollouts(plain_policy(10))
        with pytest.raises(TypeError, match="must be callable"):
            rollouts.on_transition(hook)
        with pytest.raises(TypeError, match="must be callable"):
            Rollouts(plain_policy(10), on_transition=[print, hook])


class TestFailingHooks:
    def test_a_raising_hook_changes_nothing(self, recorder: Recorder) -> None:
        """The transition is made and returned, later hooks run, the failure is counted, logged."""
        rollouts = Rollouts(plain_policy(10, 50), on_transition=[_raise, recorder])
        with structlog.testing.capture_logs() as logs:
            transition = rollouts.advance("checkout", actor="alice")
        assert transition.to_stage == 1
        assert rollouts.status("checkout").stage == 1
        assert [e.action for e in recorder.events] == [Action.ADVANCE]
        assert rollouts.failures.count("hook.failed") == 1
        failed = [entry for entry in logs if entry["event"] == "hook.failed"]
        assert [(e["rollout"], e["action"]) for e in failed] == [("checkout", "advance")]

    def test_a_raising_hook_during_an_automatic_step(self, recorder: Recorder) -> None:
        """A hook failing on the gate's freeze and rollback breaks neither nor the reports."""
        rollouts = Rollouts(plain_policy(10, 50), on_transition=[_raise, recorder])
        degrade(rollouts)
        assert [e.action for e in recorder.events] == [Action.FREEZE, Action.ROLLBACK]
        assert rollouts.failures.count("hook.failed") == 2
        assert rollouts.status("checkout").status is Status.ROLLED_BACK

    def test_hooks_directly(self) -> None:
        """``Hooks.fire`` never raises and counts each failing hook."""
        failures = Failures()
        hooks = Hooks(failures)
        recorder = Recorder()
        hooks.add(_raise)
        hooks.add(recorder)
        rollouts = Rollouts(plain_policy(10))
        event = TransitionEvent.of(rollouts.freeze("checkout"), ("s0", "s0"))
        hooks.fire(event)
        assert recorder.events == [event]
        assert failures.count("hook.failed") == 1


class TestAsyncHooks:
    def test_scheduled_on_the_running_loop(self) -> None:
        """On a running loop an async hook becomes a task: the transition returns before it ends."""

        async def main() -> list[str]:
            release = asyncio.Event()
            steps: list[str] = []

            async def hook(event: TransitionEvent) -> None:
                steps.append("hook started")
                await release.wait()
                steps.append(f"hook saw {event.action}")

            rollouts = Rollouts(plain_policy(10), on_transition=hook)
            rollouts.freeze("checkout")
            steps.append("freeze returned")
            await asyncio.sleep(0)
            release.set()
            for _ in range(5):
                await asyncio.sleep(0)
            return steps

        assert asyncio.run(main()) == ["freeze returned", "hook started", "hook saw freeze"]

    def test_run_to_completion_without_a_loop(self) -> None:
        """With no running loop an async hook has run by the time the transition returns."""
        steps: list[str] = []

        async def hook(event: TransitionEvent) -> None:
            await asyncio.sleep(0)
            steps.append(f"hook saw {event.action}")

        rollouts = Rollouts(plain_policy(10), on_transition=hook)
        rollouts.freeze("checkout")
        assert steps == ["hook saw freeze"]

    def test_from_a_worker_thread_to_the_app_loop(self) -> None:
        """A transition made in a worker thread of an async app (a sync call run in an
        executor) sends an async hook to the app's loop, where its loop-bound objects live,
        and the worker does not wait for it."""

        async def main() -> tuple[list[str], bool]:
            loop = asyncio.get_running_loop()
            done = asyncio.Event()  # bound to this loop: the hook must run on it
            steps: list[str] = []

            async def hook(event: TransitionEvent) -> None:
                steps.append(f"hook on the app loop: {asyncio.get_running_loop() is loop}")
                done.set()

            rollouts = Rollouts(plain_policy(10), on_transition=hook)  # added on the loop

            def worker() -> None:
                rollouts.freeze("checkout")
                steps.append("freeze returned in the worker")

            await loop.run_in_executor(None, worker)
            await asyncio.wait_for(done.wait(), timeout=60)
            return steps, rollouts.failures.count("hook.failed") == 0

        steps, clean = asyncio.run(main())  # the two threads may finish in either order
        assert sorted(steps) == ["freeze returned in the worker", "hook on the app loop: True"]
        assert clean

    def test_a_failing_async_hook_without_a_loop(self) -> None:
        """An async hook that raises is counted, without a loop."""

        async def hook(event: TransitionEvent) -> None:
            raise _HookFailed(event.rollout)

        rollouts = Rollouts(plain_policy(10), on_transition=hook)
        assert rollouts.freeze("checkout").to_status is Status.FROZEN
        assert rollouts.failures.count("hook.failed") == 1

    def test_a_failing_async_hook_on_a_loop(self) -> None:
        """An async hook that raises in its task is counted once the task has run."""

        async def main() -> int:
            async def hook(event: TransitionEvent) -> None:
                raise _HookFailed(event.rollout)

            rollouts = Rollouts(plain_policy(10), on_transition=hook)
            rollouts.freeze("checkout")
            assert rollouts.failures.count("hook.failed") == 0
            for _ in range(5):
                await asyncio.sleep(0)
            return rollouts.failures.count("hook.failed")

        assert asyncio.run(main()) == 1

    def test_an_async_callable_object(self) -> None:
        """An object with an ``async __call__`` is an async hook too."""

        class Hook:
            def __init__(self) -> None:
                self.events: list[TransitionEvent] = []

            async def __call__(self, event: TransitionEvent) -> None:
                self.events.append(event)

        hook = Hook()
        rollouts = Rollouts(plain_policy(10), on_transition=hook)
        rollouts.freeze("checkout")
        assert [e.action for e in hook.events] == [Action.FREEZE]
