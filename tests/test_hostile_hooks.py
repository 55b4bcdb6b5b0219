"""Hostile tests of transition hooks: hooks that exit, raise ``BaseException`` or interrupt.

A hook runs where the transition is made: on the caller's thread for an automatic step with
a MemoryStore (inside a guarded call), on the store's refresh thread with SQLite or Redis.
Neither may end because of a hook, and a later kill must still take effect.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import pytest
import structlog

from conftest import plain_policy
from stagedroll import Rollouts, Status, TransitionEvent
from stagedroll._failures import Failures
from stagedroll._hooks import Hooks
from test_store_contract import Backend, _backend_fixture  # noqa: F401 - the fixture

UNITS = [f"user-{i}" for i in range(4000)]


class CustomBase(BaseException):
    """A ``BaseException`` of the user's own."""


def exits(event: TransitionEvent) -> None:
    sys.exit(3)


def raises_custom(event: TransitionEvent) -> None:
    raise CustomBase(event.rollout)


def raises_generator_exit(event: TransitionEvent) -> None:
    raise GeneratorExit


async def exits_async(event: TransitionEvent) -> None:
    sys.exit(4)


HOSTILE: dict[str, Callable[[TransitionEvent], None]] = {
    "sys.exit": exits,
    "custom BaseException": raises_custom,
    "GeneratorExit": raises_generator_exit,
}


def policy() -> dict[str, object]:
    two = plain_policy(10, 50, name="checkout")
    two["rollouts"]["search"] = plain_policy(50, name="search")["rollouts"]["search"]
    return two


def wait_for(condition: Callable[[], bool]) -> bool:
    """Poll ``condition`` for up to 10 s (a liveness bound, not a timing assertion)."""
    deadline = time.monotonic() + 10
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class TestHostileHooks:
    @pytest.mark.parametrize("hook", list(HOSTILE))
    def test_a_hook_never_stops_calls_steps_or_kills(self, hook: str, backend: Backend) -> None:
        """A guarded call that triggers the gate survives the hook; a later kill is seen."""
        store = backend.make(refresh_interval=0.02) if backend.kind != "memory" else backend.make()
        worker = Rollouts(policy(), store=store, on_transition=HOSTILE[hook])

        @worker.guard("checkout", fallback=lambda unit: "old", unit=lambda unit: unit)
        def new(unit: str) -> str:
            raise RuntimeError("a bug in the new path")

        answers = {new(unit) for unit in UNITS}  # the gate freezes, then rolls back
        assert answers == {"old"}
        assert wait_for(lambda: worker.failures.count("hook.failed") >= 1)
        assert worker["checkout"].state.status in (Status.FROZEN, Status.ROLLED_BACK)
        operator = worker if backend.kind == "memory" else Rollouts(policy(), store=backend.make())
        operator.kill("search", reason="incident", actor="op")
        assert wait_for(lambda: worker["search"].state.status is Status.KILLED)
        assert not any(worker.enabled("search", unit) for unit in UNITS[:200])

    def test_an_async_hook_that_exits(self) -> None:
        """An async hook's ``SystemExit`` is counted, on a loop and without one."""
        worker = Rollouts(plain_policy(10, 50), on_transition=exits_async)
        worker.freeze("checkout", actor="op")  # no loop: run to completion here

        async def on_a_loop() -> None:
            worker.unfreeze("checkout", actor="op")
            await asyncio.sleep(0.01)

        asyncio.run(on_a_loop())
        assert worker.failures.count("hook.failed") == 2


class TestKeyboardInterrupt:
    def test_passes_on_the_main_thread(self) -> None:
        """Ctrl-C while a hook runs on the main thread is not swallowed."""

        def interrupted(event: TransitionEvent) -> None:
            raise KeyboardInterrupt

        hooks = Hooks(Failures())
        hooks.add(interrupted)
        event = TransitionEvent.of(Rollouts(plain_policy(10)).freeze("checkout"), ("s0", "s0"))
        with pytest.raises(KeyboardInterrupt):
            hooks.fire(event)

    def test_is_contained_on_another_thread(self) -> None:
        """Elsewhere (a store's thread) a ``KeyboardInterrupt`` from a hook is counted."""

        def interrupted(event: TransitionEvent) -> None:
            raise KeyboardInterrupt

        failures = Failures()
        hooks = Hooks(failures)
        hooks.add(interrupted)
        event = TransitionEvent.of(Rollouts(plain_policy(10)).freeze("checkout"), ("s0", "s0"))
        thread = threading.Thread(target=hooks.fire, args=(event,))
        thread.start()
        thread.join()
        assert failures.count("hook.failed") == 1


class TestHostileProcessors:
    def test_a_processor_interrupting_a_worker_thread_is_contained(self) -> None:
        """A structlog processor raising ``KeyboardInterrupt`` off the main thread is contained."""

        def interrupting(logger: object, method: str, event: MutableMapping[str, Any]) -> str:
            raise KeyboardInterrupt

        worker = Rollouts(plain_policy(10, 50))

        @worker.guard("checkout", fallback=lambda unit: "old", unit=lambda unit: unit)
        def new(unit: str) -> str:
            raise RuntimeError("a bug in the new path")

        answers: list[str] = []
        errors: list[BaseException] = []

        def call_all() -> None:
            try:
                answers.extend(new(unit) for unit in UNITS)
            except BaseException as exc:
                errors.append(exc)

        structlog.configure(processors=[interrupting])
        try:
            thread = threading.Thread(target=call_all)
            thread.start()
            thread.join()
        finally:
            structlog.reset_defaults()
        assert errors == []
        assert set(answers) == {"old"}
        assert worker["checkout"].state.status is Status.ROLLED_BACK

    def test_an_async_hook_interrupting_is_counted(self) -> None:
        """An async hook's own ``KeyboardInterrupt`` is its failure: the loop goes on."""

        async def interrupting(event: TransitionEvent) -> None:
            raise KeyboardInterrupt

        seen: list[TransitionEvent] = []

        async def later(event: TransitionEvent) -> None:
            seen.append(event)

        worker = Rollouts(plain_policy(10, 50), on_transition=[interrupting, later])

        async def on_a_loop() -> None:
            worker.freeze("checkout", actor="op")
            worker.unfreeze("checkout", actor="op")
            await asyncio.sleep(0.01)

        asyncio.run(on_a_loop())
        assert worker.failures.count("hook.failed") == 2
        assert len(seen) == 2
