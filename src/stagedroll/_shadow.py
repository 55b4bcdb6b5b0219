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
from typing import Any, Generic, NamedTuple, ParamSpec, TypeVar, cast

import mmh3

from ._comparison import NOT_RUN, Compared, Comparison
from ._forksafe import register
from ._guard import check_routing, is_async
from ._outcomes import ArmCounts
from ._rollout import Rollout

__all__ = ["Shadow"]

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


class Shadow(Compared, Generic[P, R]):
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
        self._async = is_async(candidate)
        if self._async and executor is not None:
            raise TypeError("executor is for sync code: an async candidate runs as a task")
        if not self._async and timeout is not None:
            raise TypeError("timeout is for async code: a sync candidate cannot be stopped")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a number of seconds > 0, not {timeout!r}")
        self._router = rollout._serves("shadow", "rollouts.shadow(...)")
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

    def _failure(self, event: str, exc: BaseException | None = None, **fields: object) -> None:
        """Count and log a failure of the shadow itself (never the caller's)."""
        self._router.runtime.failures.record(event, exc, **fields)

    # -- what it found ---------------------------------------------------------------------------

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
        if is_async(primary) != self._async:
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
        router, unit, route, run = self._router, self._unit, self._route, self._run
        runtime, inline, hash_ = (
            router.runtime,
            unit is not None and self._attributes is None,
            _hash,
        )

        @functools.wraps(primary)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            pair: Pair | None
            v = router.view
            if inline and v.plain:
                # Router.route's fast path, inlined as in a guard: a unit outside the cohort
                # pays one hash and runs the old path, nothing more.
                try:
                    key = unit(*args, **kwargs) if kwargs else unit(*args)  # type: ignore[misc,call-arg]
                    if key.__class__ is str and key.isascii():
                        inside = hash_(v.prefix + key, 0, False) < v.threshold
                        pair = (v.control, v.treatment, key) if inside else None
                    else:
                        pair = self._pair(*router.route(key))
                except Exception as exc:
                    pair = self._pair(router.routing_failed(exc), None)
            else:
                pair = route(args, kwargs)
            if pair is None:  # outside the cohort: the old path, nothing recorded
                if runtime.chores:  # now and then: the policy file, the store's thread
                    runtime.tend()
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
        route, spawn, tend = self._route, self._spawn, self._router.tend

        @functools.wraps(primary)
        async def call(*args: Any, **kwargs: Any) -> Any:
            pair = route(args, kwargs)
            if pair is None:
                tend()
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
        router, unit, attributes = self._router, self._unit, self._attributes
        try:
            if unit is None:
                arm, key = router.sample(), None
            elif attributes is None:
                arm, key = router.route(unit(*args, **kwargs))
            else:
                arm, key = router.route(unit(*args, **kwargs), attributes(*args, **kwargs))
        except Exception as exc:
            arm, key = router.routing_failed(exc), None
        return self._pair(arm, key)

    def _pair(self, arm: ArmCounts, key: str | None) -> Pair | None:
        """The arms of a cohort call routed to ``arm``, or ``None`` (not on the new path)."""
        control = self._router.control_of(arm)
        return None if control is None else (control, arm, key)

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
            self._failure("shadow.failed", exc, rollout=self.rollout.name)

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
            self._failure("shadow.failed", exc, rollout=self.rollout.name)

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
            self._failure("shadow.failed", exc, rollout=self.rollout.name)

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
            self._failure("shadow.snapshot_failed", exc,
                                                rollout=self.rollout.name)  # fmt: skip
            return call

    def _unawaited(self, awaitable: object) -> None:
        """A sync candidate returned an awaitable: close it, record neither side."""
        close = getattr(awaitable, "close", None)
        if callable(close):
            close()  # no "never awaited" warning
        self._comparison.skip()
        self._failure(
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
        self._router.tend()  # now and then: the policy file, the store's thread
        record, comparison = self._router.record, self._comparison
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
            self._failure("shadow.failed", exc, rollout=self.rollout.name)

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
            self._failure("shadow.failed", failure,
                                                rollout=self.rollout.name)  # fmt: skip

    def _task_done(self, task: asyncio.Task[None]) -> None:
        with self._lock:
            if task not in self._tasks:
                return  # its place was freed already (its loop had been closed)
            self._tasks.discard(task)
            self._pending -= 1
        if not task.cancelled():
            task.exception()  # retrieved: _atry catches what the candidate raises
