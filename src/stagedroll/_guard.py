"""Guards: route each call to the new or the old path, and record its outcome.

One routing core (:func:`_router`) serves the sync and the async wrapper, which differ only
by ``await``; the sync wrapper inlines the common case (a unit, no attributes, a rollout
only the bucket decides) because it sits on the caller's hot path. Exceptions of the user's
functions keep their type and traceback; failures of stagedroll itself send the call to the
old path.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from time import perf_counter
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast

import mmh3

from ._decision import Decision
from ._outcomes import UNTIMED, ArmCounts
from ._router import Router

__all__ = ["Tracking", "check_routing", "guard", "is_async", "router_of"]

P = ParamSpec("P")
R = TypeVar("R")
_hash = mmh3.hash


Route = Callable[[tuple[Any, ...], dict[str, Any]], tuple[ArmCounts, str | None]]
Record = Callable[..., None]


def router_of(
    router: Router,
    unit: Callable[..., object] | None,
    attributes: Callable[..., Mapping[str, object]] | None,
) -> Route:
    """Return a function mapping a call's arguments to its arm and unit (text, or ``None``).

    The function never raises: a failure sends the call to the old path.
    """
    if unit is None:

        def by_request(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[ArmCounts, None]:
            return router.sample(), None

        return by_request

    if attributes is None:

        def by_unit(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[ArmCounts, str | None]:
            try:
                return router.route(unit(*args, **kwargs))
            except Exception as exc:
                return router.routing_failed(exc), None

        return by_unit

    def by_unit_and_attributes(
        args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[ArmCounts, str | None]:
        try:
            return router.route(unit(*args, **kwargs), attributes(*args, **kwargs))
        except Exception as exc:
            return router.routing_failed(exc), None

    return by_unit_and_attributes


def is_async(fn: Callable[..., object]) -> bool:
    """Whether calling ``fn`` gives a coroutine (``async def``, or an async ``__call__``)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - the method itself is what we inspect
    )


def check_routing(unit: object, attributes: object) -> None:
    """Raise :class:`TypeError` for a ``unit`` or ``attributes`` a call cannot be routed by."""
    if unit is not None and not callable(unit):
        raise TypeError(
            f"unit must be a callable taking the function's arguments (or None for per-request "
            f"bucketing), not {type(unit).__name__}"
        )
    if unit is None and attributes is not None:
        raise TypeError(
            "attributes need a unit: per-request bucketing (unit=None) applies no targeting"
        )


def guard(  # noqa: PLR0915 - the sync wrapper is inlined on purpose: it is the hot path
    router: Router,
    *,
    fallback: Callable[P, R],
    unit: Callable[P, object] | None,
    attributes: Callable[P, Mapping[str, object]] | None = None,
    reraise: bool = False,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Build the decorator of :meth:`Rollouts.guard` over ``router``."""
    if not callable(fallback):
        raise TypeError(f"fallback must be callable, not {type(fallback).__name__}")
    check_routing(unit, attributes)
    route = router_of(router, unit, attributes)
    record, note, fold, clock, hash_ = router.record, router.note, router.fold, perf_counter, _hash

    def decorate(new: Callable[P, R]) -> Callable[P, R]:
        new_async = is_async(new)
        if new_async != is_async(fallback):
            raise TypeError(
                f"{new.__qualname__} and its fallback {getattr(fallback, '__qualname__', fallback)}"
                " must both be async or both be sync"
            )
        if new_async:
            wrapper = _async_wrapper(
                cast("Callable[..., Awaitable[Any]]", new),
                cast("Callable[..., Awaitable[Any]]", fallback),
                route=route,
                record=record,
                reraise=reraise,
            )
            return cast("Callable[P, R]", wrapper)

        inline = unit is not None and attributes is None

        @functools.wraps(new)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            if inline:
                # Router.route's fast path, inlined: this is the caller's hot path, and each
                # Python call saved is worth half the hash (tests pin it at the boundary).
                try:
                    key = unit(*args, **kwargs) if kwargs else unit(*args)  # type: ignore[misc,call-arg]
                    v = router.view
                    if v.plain and key.__class__ is str and key.isascii():
                        hashed = hash_(v.prefix + key, 0, False)
                        arm = v.treatment if hashed < v.threshold else v.control
                    else:
                        arm, key = router.route(key)
                except Exception as exc:
                    arm, key = router.routing_failed(exc), None
            else:
                arm, key = route(args, kwargs)
            # One call in 16 is timed on an arm no latency test watches (the clock costs a
            # fifth of the overhead); the others are counted, as UNTIMED.
            pending = arm.pending
            timed = arm.timed or not len(pending) & 15
            start = clock() if timed else 0.0
            if arm.enabled:
                try:
                    result = new(*args, **kwargs) if kwargs else new(*args)  # type: ignore[call-arg]
                except Exception:
                    record(arm, key, error=True, latency_s=clock() - start if timed else None,
                           fallback=not reraise)  # fmt: skip
                    if reraise:
                        raise
                    return fallback(*args, **kwargs)
            else:
                try:
                    result = fallback(*args, **kwargs) if kwargs else fallback(*args)  # type: ignore[call-arg]
                except Exception:
                    record(arm, key, error=True, latency_s=clock() - start if timed else None)
                    raise
            # Router.record's success, inlined: a lock-free append, folded in batches, unless
            # the call is slow or its unit new to the stage (the gate sees those at once).
            if timed:
                elapsed = clock() - start
                pending.append(elapsed)
                if (elapsed > arm.slow_at and key not in arm.slow_seen) or (
                    arm.counting and key not in arm.units
                ):
                    note(arm, key, elapsed)
            else:
                pending.append(UNTIMED)
                if arm.counting and key not in arm.units:
                    note(arm, key, 0.0)
            if len(pending) >= arm.fold_at:
                fold(arm)
            return result

        return call

    return decorate


def _async_wrapper(
    new: Callable[..., Awaitable[Any]],
    fallback: Callable[..., Awaitable[Any]],
    *,
    route: Route,
    record: Record,
    reraise: bool,
) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(new)
    async def call(*args: Any, **kwargs: Any) -> Any:
        arm, key = route(args, kwargs)
        start = perf_counter()
        if arm.enabled:
            try:
                result = await new(*args, **kwargs)
            except Exception:
                record(arm, key, error=True, latency_s=perf_counter() - start,
                       fallback=not reraise)  # fmt: skip
                if reraise:
                    raise
                return await fallback(*args, **kwargs)
        else:
            try:
                result = await fallback(*args, **kwargs)
            except Exception:
                record(arm, key, error=True, latency_s=perf_counter() - start)
                raise
        record(arm, key, error=False, latency_s=perf_counter() - start)
        return result

    return call


class Tracking:
    """The context manager of :meth:`Rollouts.track`: yields the decision, records the outcome.

    Use it with ``with`` or ``async with``; each block records one outcome. An ``Exception``
    leaving the block counts as an error and propagates; ``BaseException`` (cancellation,
    interrupts) is not counted.
    """

    __slots__ = ("_arm", "_key", "_record", "_start", "decision")

    def __init__(self, record: Record, decision: Decision, arm: ArmCounts, key: str | None) -> None:
        self._record = record
        self._arm = arm
        self._key = key
        self._start = 0.0
        self.decision = decision

    def __enter__(self) -> Decision:
        self._start = perf_counter()
        return self.decision

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None and not issubclass(exc_type, Exception):
            return  # cancelled or interrupted: the outcome is unknown
        latency = perf_counter() - self._start
        self._record(self._arm, self._key, error=exc_type is not None, latency_s=latency)

    async def __aenter__(self) -> Decision:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, traceback)
