"""The dark launch: run the old path, and for the stage's cohort the candidate beside it.

The caller always gets the old path's result (or its exception). For a unit in the
rollout's cohort, the candidate also runs with the same arguments: inline after the old
path (sync, by default), on a bounded executor (sync), or as a task (async), and its result
is compared with the old one. Both sides of such a call are recorded on the rollout's two
arms, the old path's on control and the candidate's on treatment (a mismatch counts as an
error), so the health test compares the candidate with the old path on the same calls and
freezes the stage when it is worse. A unit outside the cohort runs the old path only, and
records nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable, Mapping
from time import perf_counter
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, ParamSpec, TypeVar, cast

import mmh3

from .._forksafe import register
from .._guard import _is_async, _routing_failed, check_routing
from .._outcomes import ArmCounts, ObservedArm
from ._comparison import NOT_RUN, Comparison, ComparisonStats, Mismatch

if TYPE_CHECKING:
    from .._rollout import Rollout
    from .._rollouts import Rollouts

__all__ = ["Shadow", "shadow"]

P = ParamSpec("P")
R = TypeVar("R")
_hash = mmh3.hash

Pair = tuple[ArmCounts, ArmCounts, str | None]
"""The arms of the old and the new side of a cohort call, and its unit as text."""


class _Cohort(NamedTuple):
    """A cohort call whose old path ran: what recording it and its candidate run need."""

    control: ArmCounts
    treatment: ArmCounts
    key: str | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    old: object
    """The old path's result, or its exception (``ok`` false)."""
    old_s: float
    ok: bool


class Shadow(Generic[P, R]):
    """A dark launch over one rollout: a decorator of the old path, and what it found.

    Made by :meth:`Rollouts.shadow <stagedroll.Rollouts.shadow>`; decorate the old path with
    it (``@rollouts.shadow(...)``), or keep it to read :attr:`stats` and :attr:`mismatches`.
    One ``Shadow`` may decorate several functions; their records add up.
    """

    def __init__(
        self,
        rollout: Rollout,
        *,
        candidate: Callable[P, R],
        unit: Callable[P, object] | None,
        attributes: Callable[P, Mapping[str, object]] | None,
        comparison: Comparison,
        executor: concurrent.futures.Executor | None,
        max_pending: int,
        timeout: float | None,
    ) -> None:
        if not callable(candidate):
            raise TypeError(f"candidate must be callable, not {type(candidate).__name__}")
        check_routing(unit, attributes)
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ValueError(f"max_pending must be a whole number >= 1, not {max_pending!r}")
        self._async = _is_async(candidate)
        if self._async and executor is not None:
            raise TypeError("executor is for sync code: an async candidate runs as a task")
        if not self._async and timeout is not None:
            raise TypeError("timeout is for async code: a sync candidate cannot be stopped")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a number of seconds > 0, not {timeout!r}")
        rollout._serves("shadow", "rollouts.shadow(...)")
        self.rollout = rollout
        self.candidate = candidate
        self._unit = unit
        self._attributes = attributes
        self._comparison = comparison
        self._executor = executor
        self._max_pending = max_pending
        self._timeout = timeout
        self._lock = threading.Lock()
        self._pending = 0
        self._futures: set[concurrent.futures.Future[None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        register(self)

    def _after_fork(self) -> None:
        """In a forked child: the parent's candidate runs are not this process's."""
        self._lock = threading.Lock()
        self._pending = 0
        self._futures = set()
        self._tasks = set()

    def __repr__(self) -> str:
        return f"<Shadow {self.rollout.name!r} candidate={self.candidate!r}>"

    # -- what it found ---------------------------------------------------------------------------

    @property
    def stats(self) -> ComparisonStats:
        """The counters: compared, matched, mismatched, candidate errors, skipped runs."""
        return self._comparison.stats()

    @property
    def mismatches(self) -> list[Mismatch]:
        """The latest mismatches and candidate errors (at most ``samples``), oldest first."""
        return self._comparison.samples()

    def clear(self) -> None:
        """Forget the counters and the samples (the rollout's health evidence stays)."""
        self._comparison.clear()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the candidate runs submitted to the executor; return whether all ended."""
        pending = list(self._futures)
        if not pending:
            return True
        _, not_done = concurrent.futures.wait(pending, timeout)
        return not not_done

    async def wait_async(self, timeout: float | None = None) -> bool:
        """Wait for the candidate tasks of the running loop; return whether all ended."""
        loop = asyncio.get_running_loop()
        pending = [task for task in list(self._tasks) if task.get_loop() is loop]
        if not pending:
            return True
        _, not_done = await asyncio.wait(pending, timeout=timeout)
        return not not_done

    # -- the decorator ---------------------------------------------------------------------------

    def __call__(self, primary: Callable[P, R]) -> Callable[P, R]:
        """Shadow ``primary``, the old path: the caller keeps getting its results."""
        if _is_async(primary) != self._async:
            raise TypeError(
                f"{getattr(primary, '__qualname__', primary)} and its candidate "
                f"{getattr(self.candidate, '__qualname__', self.candidate)} must both be async "
                "or both be sync"
            )
        if self._async:
            wrapper = self._async_wrapper(cast("Callable[..., Awaitable[Any]]", primary))
            return cast("Callable[P, R]", wrapper)
        return self._sync_wrapper(primary)

    def _sync_wrapper(self, primary: Callable[P, R]) -> Callable[P, R]:
        rollout, unit, route = self.rollout, self._unit, self._route
        inline = unit is not None and self._attributes is None
        run, owner = self._run, rollout._owner

        @functools.wraps(primary)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            pair: Pair | None = None
            if inline:
                # The fast path of the cohort test, inlined as in a guard: a unit outside
                # the cohort pays one hash and runs the old path, nothing more.
                try:
                    key = unit(*args, **kwargs)  # type: ignore[misc]  # not None when inline
                    v = rollout._view
                    if v.plain and key.__class__ is str and key.isascii():
                        if _hash(v.prefix + key, 0, False) < v.threshold:
                            pair = v.control, v.treatment, key
                    else:
                        pair = self._pair(*rollout._route(key))
                except Exception as exc:
                    pair = self._pair(_routing_failed(rollout, exc), None)
            else:
                pair = route(args, kwargs)
            if pair is None:
                if owner._chores:  # now and then: the policy file, the store's thread
                    owner._tend()
                return primary(*args, **kwargs)
            start = perf_counter()
            try:
                result = primary(*args, **kwargs)
            except Exception as exc:
                run(_Cohort(*pair, args, kwargs, exc, perf_counter() - start, ok=False))
                raise
            run(_Cohort(*pair, args, kwargs, result, perf_counter() - start, ok=True))
            return result

        return call

    def _async_wrapper(
        self, primary: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        route, spawn, owner = self._route, self._spawn, self.rollout._owner

        @functools.wraps(primary)
        async def call(*args: Any, **kwargs: Any) -> Any:
            pair = route(args, kwargs)
            if pair is None:
                if owner._chores:
                    owner._tend()
                return await primary(*args, **kwargs)
            start = perf_counter()
            try:
                result = await primary(*args, **kwargs)
            except Exception as exc:
                spawn(_Cohort(*pair, args, kwargs, exc, perf_counter() - start, ok=False))
                raise
            spawn(_Cohort(*pair, args, kwargs, result, perf_counter() - start, ok=True))
            return result

        return call

    # -- routing ---------------------------------------------------------------------------------

    def _route(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Pair | None:
        """The arms of a call whose unit is in the cohort, or ``None``; never raises."""
        rollout, unit, attributes = self.rollout, self._unit, self._attributes
        try:
            if unit is None:
                return self._pair(rollout._sample(), None)
            if attributes is None:
                return self._pair(*rollout._route(unit(*args, **kwargs)))
            return self._pair(*rollout._route(unit(*args, **kwargs), attributes(*args, **kwargs)))
        except Exception as exc:
            return self._pair(_routing_failed(rollout, exc), None)

    def _pair(self, arm: ArmCounts, key: str | None) -> Pair | None:
        """The control arm that goes with ``arm``, when ``arm`` is on the new path."""
        if not arm.enabled:
            return None
        rollout = self.rollout
        real = arm.real if isinstance(arm, ObservedArm) else arm
        arms = rollout._view.arms
        if real is arms.treatment:
            control = arms.control
        elif real is arms.targeted_on:
            control = arms.targeted_off
        else:
            return None  # a transition came between: this call is not shadowed
        return rollout._observed(control), arm, key

    # -- the candidate -----------------------------------------------------------------------------

    def _run(self, call: _Cohort) -> None:
        """Run the candidate now, or submit it to the executor; never raises."""
        try:
            if self._executor is None:
                self._try(call)
            elif self._reserve():
                call = self._snapshot(call)
                try:
                    future = self._executor.submit(self._try, call)
                except Exception:  # a shut-down executor: the candidate does not run
                    self._release()
                    self._comparison.skip()
                    raise
                self._futures.add(future)
                future.add_done_callback(self._future_done)
        except Exception as exc:
            self.rollout._owner.failures.record("shadow.failed", exc, rollout=self.rollout.name)

    def _try(self, call: _Cohort) -> None:
        """Run the candidate and record the call; never raises."""
        try:
            start = perf_counter()
            try:
                new = self.candidate(*call.args, **call.kwargs)
            except BaseException as exc:  # SystemExit too: the candidate never ends the call
                if isinstance(exc, KeyboardInterrupt):
                    raise
                self._settle(call, exc, perf_counter() - start, failed=True)
                return
            if inspect.isawaitable(new):  # an async candidate behind a sync callable
                self._unawaited(new)
                return
            self._settle(call, new, perf_counter() - start, failed=False)
        except Exception as exc:  # pragma: no cover - recording never raises
            self.rollout._owner.failures.record("shadow.failed", exc, rollout=self.rollout.name)

    async def _atry(self, call: _Cohort) -> None:
        """:meth:`_try` for an async candidate; a cancelled run records nothing."""
        try:
            start = perf_counter()
            try:
                run = cast("Awaitable[Any]", self.candidate(*call.args, **call.kwargs))
                new = await (run if self._timeout is None else asyncio.wait_for(run, self._timeout))
            except BaseException as exc:  # TimeoutError too: slower than the timeout
                if isinstance(exc, KeyboardInterrupt | asyncio.CancelledError | GeneratorExit):
                    raise  # interrupted, cancelled, or closed with its abandoned loop
                self._settle(call, exc, perf_counter() - start, failed=True)
                return
            self._settle(call, new, perf_counter() - start, failed=False)
        except Exception as exc:  # pragma: no cover - recording never raises
            self.rollout._owner.failures.record("shadow.failed", exc, rollout=self.rollout.name)

    def _snapshot(self, call: _Cohort) -> _Cohort:
        """``call`` with a deep copy of the old result, for a comparison made later.

        The caller gets the result now and may change it (add a field, sort it) before the
        candidate ends. A result that cannot be copied is compared as it is then
        (``shadow.snapshot_failed``). The arguments are not copied: the candidate gets the
        caller's own objects, as the old path did.
        """
        if not call.ok:
            return call
        try:
            return call._replace(old=copy.deepcopy(call.old))
        except Exception as exc:
            self.rollout._owner.failures.record("shadow.snapshot_failed", exc,
                                                rollout=self.rollout.name)  # fmt: skip
            return call

    def _unawaited(self, awaitable: object) -> None:
        """A sync candidate returned an awaitable: close it, record neither side."""
        close = getattr(awaitable, "close", None)
        if callable(close):
            close()  # no "never awaited" warning
        self._comparison.skip()
        self.rollout._owner.failures.record(
            "shadow.candidate_awaitable", rollout=self.rollout.name,
            hint="the candidate returned an awaitable: make both functions async def",
        )  # fmt: skip

    def _settle(self, call: _Cohort, new: Any, new_s: float, *, failed: bool) -> None:
        """Record both sides of a call whose candidate ran (so that the arms pair up).

        The old path's outcome goes to control; the candidate's to treatment: an error when
        it raised, or when its result disagrees with the old path's. When both sides
        failed, both errors are counted but neither is an event of the health test: such a
        call says nothing about which side is worse.
        """
        owner = self.rollout._owner
        if owner._chores:  # now and then: the policy file, the store's thread
            owner._tend()
        record, comparison = self.rollout._record, self._comparison
        # With a timeout, the old path is held to it too, for the test: a fair pair.
        old_failed = not call.ok or (self._timeout is not None and call.old_s > self._timeout)
        if failed:
            new_failed = True
            comparison.failed(call.key, new, old=call.old if call.ok else NOT_RUN)
        else:
            new_failed = call.ok and comparison.judge(call.key, call.old, new, new_s - call.old_s)
        if not call.ok:
            comparison.old_failed()
        event = not (old_failed and new_failed)  # both failed: it tells nothing of either
        record(call.control, call.key, error=old_failed, latency_s=call.old_s, event=event)
        record(call.treatment, call.key, error=new_failed, latency_s=new_s, event=event)

    def _spawn(self, call: _Cohort) -> None:
        """Start the candidate as a task of the running loop; never raises."""
        try:
            if not self._reserve():
                return
            call = self._snapshot(call)
            try:
                task = asyncio.get_running_loop().create_task(self._atry(call))
            except Exception:
                self._release()
                self._comparison.skip()
                raise
            with self._lock:
                self._tasks.add(task)
            task.add_done_callback(self._task_done)
        except Exception as exc:
            self.rollout._owner.failures.record("shadow.failed", exc, rollout=self.rollout.name)

    def _reserve(self) -> bool:
        """Take one of the ``max_pending`` places of a candidate run; count a skip if none."""
        with self._lock:
            if self._pending >= self._max_pending:
                self._forget_closed_loops()
            if self._pending < self._max_pending:
                self._pending += 1
                return True
        self._comparison.skip()
        return False

    def _forget_closed_loops(self) -> None:
        """Free the places of tasks whose event loop was closed under them (hold the lock).

        Such a task never runs again, nor its done-callback: its place would be lost.
        """
        for task in list(self._tasks):
            if task.get_loop().is_closed():  # done or not, its callbacks will never run
                self._tasks.discard(task)
                self._pending -= 1

    def _release(self) -> None:
        with self._lock:
            self._pending -= 1

    def _future_done(self, future: concurrent.futures.Future[None]) -> None:
        self._futures.discard(future)
        self._release()
        # A run that never ran (cancelled, or an executor that could not take it, such as
        # a process pool that cannot pickle it): skipped, and said so.
        failure = None if future.cancelled() else future.exception()
        if future.cancelled() or failure is not None:
            self._comparison.skip()
            self.rollout._owner.failures.record("shadow.failed", failure,
                                                rollout=self.rollout.name)  # fmt: skip

    def _task_done(self, task: asyncio.Task[None]) -> None:
        with self._lock:
            if task not in self._tasks:
                return  # its place was freed already (its loop had been closed)
            self._tasks.discard(task)
            self._pending -= 1
        if not task.cancelled():
            task.exception()  # retrieved: _atry catches what the candidate raises


def shadow(
    rollouts: Rollouts,
    name: str,
    *,
    candidate: Callable[P, R],
    unit: Callable[P, object] | None,
    attributes: Callable[P, Mapping[str, object]] | None = None,
    compare: Callable[[Any, Any], object] | None = None,
    ignore: Callable[[Any, Any], object] | None = None,
    redact: Callable[[Any], object] | None = None,
    samples: int = 100,
    on_mismatch: Callable[[Mismatch], object] | None = None,
    executor: concurrent.futures.Executor | None = None,
    max_pending: int = 64,
    timeout: float | None = None,
) -> Shadow[P, R]:
    """A dark launch of ``candidate`` over rollout ``name``: a decorator of the old path.

    The decorated function (the old path) runs on every call and its result, or its
    exception, is what the caller gets. For a unit in the rollout's cohort the candidate
    also runs, with the same arguments, and its result is compared with the old one:
    ``compare(old, new)`` (default ``==``) says whether they match, and ``ignore(old, new)``
    accepts a known difference. The candidate can never change the caller's result, and
    never raises into the caller.

    Where the candidate runs: sync code runs it inline after the old path (the caller
    waits for it), or on ``executor`` (a :class:`concurrent.futures.Executor` that the
    caller owns); async code runs it as a task of the running loop, stopped after
    ``timeout`` seconds when given (the health test then holds the old path to the same
    timeout, so that the pair stays fair). At most ``max_pending`` runs are in flight;
    beyond, the candidate is skipped (counted). The old path's outcome is recorded on the control
    arm and the candidate's on treatment, a mismatch counting as an error, so the health
    gate freezes (or rolls back) the stage when the candidate errs or disagrees more than
    the old path errs. Mismatches and candidate errors are kept (the latest ``samples``,
    each result passed through ``redact``, by default a short ``repr``) and passed to
    ``on_mismatch``. ``unit`` and ``attributes`` take the function's arguments, as for a
    guard. The rollout's policy says ``pattern = "shadow"``. Raises
    :class:`~stagedroll.UnknownRolloutError` for an unknown name, and :class:`ValueError`
    for a rollout whose policy does not say ``pattern = "shadow"``.
    """
    rollout = rollouts[name]
    comparison = Comparison("shadow", name, rollouts.failures, compare=compare, ignore=ignore,
                            redact=redact, samples=samples, on_mismatch=on_mismatch,
                            clock=rollouts.clock)  # fmt: skip
    return Shadow(rollout, candidate=candidate, unit=unit, attributes=attributes,
                  comparison=comparison, executor=executor, max_pending=max_pending,
                  timeout=timeout)  # fmt: skip
