"""Guards: route each call to the new or the old path, and record its outcome.

A router (:class:`~._router.Router`, through :func:`router_of`) routes the calls of the
async wrapper. The sync wrapper sits on the caller's hot path: it inlines the common case
(a unit, no attributes, a rollout only the bucket decides) and the recording of a success,
and it is compiled for each guarded function with that function's own parameters when they
are plain (see :data:`_SYNC`), since forwarding ``*args, **kwargs`` costs more than a third
of a guard's overhead. Exceptions of the user's functions keep their type and traceback;
failures of stagedroll itself send the call to the old path.
"""

from __future__ import annotations

import functools
import inspect
import linecache
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


def guard(
    router: Router,
    *,
    fallback: Callable[P, R],
    unit: Callable[P, object] | None,
    attributes: Callable[P, Mapping[str, object]] | None = None,
    reraise: bool | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Build the decorator of :meth:`Rollouts.guard` over ``router``.

    ``reraise``: whether the new path's exception propagates (after it is recorded) instead
    of being answered by the fallback; ``None`` follows ``on_error`` (the policy's setting
    for the environment, or a test session's).
    """
    if reraise is not None and not isinstance(reraise, bool):
        raise TypeError(f"reraise must be True, False or None, not {type(reraise).__name__}")
    if not callable(fallback):
        raise TypeError(f"fallback must be callable, not {type(fallback).__name__}")
    check_routing(unit, attributes)
    route = router_of(router, unit, attributes)
    record = router.record

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
                reraises=router.reraises,
            )
            return cast("Callable[P, R]", wrapper)

        wrapper = _sync_wrapper(router, new, fallback, unit if attributes is None else None,
                                route=route, reraise=reraise)  # fmt: skip
        return cast("Callable[P, R]", functools.wraps(new)(wrapper))

    return decorate


# The sync wrapper, the caller's hot path. It is compiled for each guarded function with
# that function's own parameters when they are plain (positional, no defaults): forwarding
# ``*args, **kwargs`` costs a guard more than a third of its overhead. {route} is the
# inlined fast path of Router.route when a unit callable alone routes, else the router.
# Every name it uses but the parameters starts with ``_sd_`` (a parameter that does is left
# to the generic wrapper), so no parameter can shadow one.
_SYNC = """
def _sd_call({params}):
    {route}
    _sd_pending = _sd_arm.pending
    # One call in 16 is timed on an arm no latency test watches (the clock costs a third
    # of the overhead); the others are counted, as UNTIMED.
    _sd_timed = _sd_arm.timed or not _sd_len(_sd_pending) & 15
    _sd_treated = _sd_arm.enabled
    _sd_start = _sd_clock() if _sd_timed else 0.0
    try:
        _sd_result = _sd_new({args}) if _sd_treated else _sd_fallback({args})
    except _sd_Exception as _sd_error:
        _sd_latency = _sd_clock() - _sd_start if _sd_timed else None
        if not _sd_treated:  # the old path's own error: the caller's to see
            _sd_record(_sd_arm, _sd_key, error=True, latency_s=_sd_latency, exc=_sd_error)
            raise
        _sd_raise = _sd_router.reraises() if _sd_reraise is None else _sd_reraise
        _sd_record(_sd_arm, _sd_key, error=True, latency_s=_sd_latency, fallback=not _sd_raise,
                   exc=_sd_error)
        if _sd_raise:
            raise
        del _sd_error  # no reference cycle through the frame while the fallback runs
        return _sd_fallback({args})
    # Router.record's success, inlined: a lock-free append, folded in batches, unless the
    # call is slow or its unit new to the stage (the gate sees those at once).
    if _sd_timed:
        _sd_elapsed = _sd_clock() - _sd_start
        _sd_pending.append(_sd_elapsed)
        if (_sd_elapsed > _sd_arm.slow_at and _sd_key not in _sd_arm.slow_seen) or (
            _sd_arm.counting and _sd_key not in _sd_arm.units
        ):
            _sd_note(_sd_arm, _sd_key, _sd_elapsed)
    else:
        _sd_pending.append(_sd_UNTIMED)
        if _sd_arm.counting and _sd_key not in _sd_arm.units:
            _sd_note(_sd_arm, _sd_key, 0.0)
    if _sd_len(_sd_pending) >= _sd_arm.fold_at:
        _sd_fold(_sd_arm)
    return _sd_result
"""
_BY_UNIT = """try:
        _sd_key = _sd_unit({args})
        _sd_v = _sd_router.view
        if _sd_v.plain and _sd_key.__class__ is _sd_str and _sd_key.isascii():
            _sd_hashed = _sd_hash(_sd_v.prefix + _sd_key, 0, False)
            _sd_arm = _sd_v.treatment if _sd_hashed < _sd_v.threshold else _sd_v.control
        else:
            _sd_arm, _sd_key = _sd_router.route(_sd_key)
    except _sd_Exception as _sd_exc:
        _sd_arm, _sd_key = _sd_router.routing_failed(_sd_exc), None"""
_BY_ROUTER = "_sd_arm, _sd_key = _sd_route(args, kwargs)"
_GENERIC = "*args, **kwargs"


def _plain_parameters(fn: Callable[..., object], *others: Callable[..., object]) -> str | None:
    """``fn``'s parameters as source, when they are plain; else ``None``.

    Plain: positional, without defaults, and every one of ``others`` takes them positionally.
    """
    try:
        parameters = list(inspect.signature(fn).parameters.values())
        for other in others:
            inspect.signature(other).bind(*parameters)
    except (TypeError, ValueError):  # no signature (some builtins), or not bindable
        return None
    plain = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(
        p.kind not in plain or p.default is not p.empty or p.name.startswith("_sd_")
        for p in parameters
    ):
        return None
    names = [p.name for p in parameters]
    only = sum(p.kind is inspect.Parameter.POSITIONAL_ONLY for p in parameters)
    return ", ".join([*names[:only], *(["/"] if only else []), *names[only:]])


def _sync_wrapper(
    router: Router,
    new: Callable[..., Any],
    fallback: Callable[..., Any],
    unit: Callable[..., object] | None,
    *,
    route: Route,
    reraise: bool | None,
) -> Callable[..., Any]:
    """The sync wrapper of ``new`` (see :data:`_SYNC`); ``unit`` routes alone when given."""
    params = _plain_parameters(new, fallback, unit) if unit is not None else None
    params = params or _GENERIC
    args = params.replace("/", "").replace(", ,", ",").strip(", ") if params != _GENERIC else params
    routing = _BY_UNIT.format(args=args) if unit is not None else _BY_ROUTER
    namespace: dict[str, Any] = {
        "_sd_router": router,
        "_sd_unit": unit,
        "_sd_new": new,
        "_sd_fallback": fallback,
        "_sd_route": route,
        "_sd_record": router.record,
        "_sd_note": router.note,
        "_sd_fold": router.fold,
        "_sd_clock": perf_counter,
        "_sd_hash": _hash,
        "_sd_reraise": reraise,
        "_sd_UNTIMED": UNTIMED,
        "_sd_len": len,
        "_sd_str": str,
        "_sd_Exception": Exception,
    }
    source = _SYNC.format(params=params, args=args, route=routing)
    filename = f"<stagedroll guard of {router.name}>"
    # The source, for the tracebacks that pass through the wrapper (the user's own do).
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)
    wrapper: Callable[..., Any] = namespace["_sd_call"]
    return wrapper


def _async_wrapper(
    new: Callable[..., Awaitable[Any]],
    fallback: Callable[..., Awaitable[Any]],
    *,
    route: Route,
    record: Record,
    reraise: bool | None,
    reraises: Callable[[], bool],
) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(new)
    async def call(*args: Any, **kwargs: Any) -> Any:
        arm, key = route(args, kwargs)
        start = perf_counter()
        if arm.enabled:
            try:
                result = await new(*args, **kwargs)
            except Exception as exc:
                raises = reraises() if reraise is None else reraise
                record(arm, key, error=True, latency_s=perf_counter() - start,
                       fallback=not raises, exc=exc)  # fmt: skip
                if raises:
                    raise
                del exc
                return await fallback(*args, **kwargs)
        else:
            try:
                result = await fallback(*args, **kwargs)
            except Exception as exc:
                record(arm, key, error=True, latency_s=perf_counter() - start, exc=exc)
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
        self._record(self._arm, self._key, error=exc_type is not None, latency_s=latency, exc=exc)

    async def __aenter__(self) -> Decision:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, traceback)
