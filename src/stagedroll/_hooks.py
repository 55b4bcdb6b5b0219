"""Transition hooks: user callables told of every transition this process makes.

A hook receives a frozen :class:`TransitionEvent`. A hook that raises is logged and counted;
it never blocks the transition, the other hooks, or the call that caused the transition.
That holds for ``BaseException`` too (``sys.exit()`` in a hook, a custom ``BaseException``):
a guarded call that triggered an automatic step, or a store's refresh thread, must not end
because of it. The one exception that passes is ``KeyboardInterrupt`` on the main thread,
which is the user pressing Ctrl-C while the hook ran, not the hook's failure: swallowing it
would make a process impossible to interrupt.
An ``async`` hook is scheduled as a task on the running event loop (it never blocks the
caller's loop). From a thread with no running loop (a sync call in a worker thread of an
async server), it goes to the loop on which the hooks last ran, if that loop still runs;
else it is run to completion on a fresh loop.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from ._failures import Failures, contained
from ._forksafe import register
from ._state import AUTOMATIC, Action, Status, Transition

__all__ = ["Hook", "Hooks", "TransitionEvent"]


@dataclass(frozen=True, slots=True)
class TransitionEvent:
    """A transition made by this process, as hooks receive it."""

    rollout: str
    action: Action
    from_stage: int
    to_stage: int
    from_stage_name: str | None
    to_stage_name: str | None
    """The stages' names (``None`` for stage ``-1``, 0 %)."""
    from_status: Status | None
    to_status: Status
    reason: str
    actor: str
    """Who made it: an operator's name, or ``"stagedroll"`` for an automatic step."""
    at: float
    version: int
    evidence: Mapping[str, float | int | str | None]
    """The health evidence when it was made (e-values, events, units); see ``HealthReport``."""

    @property
    def automatic(self) -> bool:
        """Whether the health gate made it (rather than an operator)."""
        return self.actor == AUTOMATIC

    @classmethod
    def of(cls, transition: Transition, names: tuple[str | None, str | None]) -> TransitionEvent:
        """The event of ``transition``, with the names of its stages."""
        return cls(
            rollout=transition.rollout,
            action=transition.action,
            from_stage=transition.from_stage,
            to_stage=transition.to_stage,
            from_stage_name=names[0],
            to_stage_name=names[1],
            from_status=transition.from_status,
            to_status=transition.to_status,
            reason=transition.reason,
            actor=transition.actor,
            at=transition.at,
            version=transition.version,
            evidence=transition.evidence,
        )


Hook: TypeAlias = Callable[[TransitionEvent], "Awaitable[None] | None"]


class Hooks:
    """The hooks of one :class:`Rollouts`, called in the order they were added."""

    __slots__ = ("__weakref__", "_failures", "_hooks", "_loop", "_tasks")

    def __init__(self, failures: Failures) -> None:
        self._failures = failures
        self._hooks: list[Hook] = []
        self._tasks: set[asyncio.Task[Any]] = set()  # strong references until done
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop async hooks go to
        register(self)

    def _after_fork(self) -> None:
        self._loop = None  # the parent's loop does not run in the child
        self._tasks = set()

    def add(self, hook: Hook) -> Hook:
        """Call ``hook`` on every transition; return it (usable as a decorator)."""
        if not callable(hook):
            raise TypeError(f"a transition hook must be callable, not {type(hook).__name__}")
        self._hooks.append(hook)
        self._remember_loop()
        return hook

    def _remember_loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop running in this thread, if any, remembered for async hooks."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        self._loop = loop
        return loop

    def remove(self, hook: Hook) -> None:
        """Stop calling ``hook``; raise :class:`ValueError` if it was not added."""
        self._hooks.remove(hook)

    def __len__(self) -> int:
        return len(self._hooks)

    def fire(self, event: TransitionEvent) -> None:
        """Call every hook with ``event``; never raises."""
        for hook in tuple(self._hooks):
            self._call(hook, event)

    def _call(self, hook: Hook, event: TransitionEvent) -> None:
        try:
            result = hook(event)
            if inspect.isawaitable(result):
                self._schedule(result, event)
        except BaseException as exc:
            if not contained(exc):
                raise
            self._failed(exc, event)

    def _schedule(self, awaitable: Awaitable[None], event: TransitionEvent) -> None:
        async def run() -> None:
            try:
                await awaitable
            except asyncio.CancelledError:
                raise  # the task itself was cancelled (its loop is closing): let it end
            except BaseException as exc:  # Ctrl-C reaches a loop as a cancellation: this is
                self._failed(exc, event)  # the hook's own raise, even on the main thread

        loop = self._remember_loop()
        if loop is not None:
            task = loop.create_task(run())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        home = self._loop
        if home is not None and home.is_running() and not home.is_closed():
            asyncio.run_coroutine_threadsafe(run(), home)  # a worker thread of an async app
            return
        asyncio.run(run())  # no loop anywhere: nothing to block but this caller

    def _failed(self, exc: BaseException, event: TransitionEvent) -> None:
        self._failures.record("hook.failed", exc, rollout=event.rollout, action=str(event.action))
