"""``override``: force the decisions of a rollout in a test, for all units or some."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast

from .. import Rollouts, unit_key
from .._override import Force, activate, deactivate, set_on_error

__all__ = ["Override", "on_error", "override"]

P = ParamSpec("P")
R = TypeVar("R")


class Override:
    """An active override while a ``with`` (or ``async with``) block runs, or a decorated call.

    Made by :func:`override`. Entering it again while it is active (nesting, recursion) is
    allowed; each exit ends its latest entry in the current context.
    """

    __slots__ = ("_force",)

    def __init__(self, force: Force) -> None:
        self._force = force

    def __repr__(self) -> str:
        f = self._force
        units = "all units" if f.units is None else f"{len(f.units)} units"
        where = "every Rollouts" if f.target is None else repr(f.target)
        return f"<override {f.name!r} {'on' if f.enabled else 'off'} for {units} of {where}>"

    def __enter__(self) -> Override:
        activate(self._force)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        deactivate(self._force)

    async def __aenter__(self) -> Override:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, traceback)

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate ``fn`` (sync or ``async def``): each call runs under the override.

        Generator functions are refused (:class:`TypeError`): the override would end before
        their body runs. Use ``with`` inside them.
        """
        force = self._force
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(
                f"override cannot decorate the generator function {fn.__qualname__}: "
                "use it as a context manager inside"
            )
        if inspect.iscoroutinefunction(fn):
            async_fn = cast("Callable[..., Awaitable[Any]]", fn)

            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                async with Override(force):
                    return await async_fn(*args, **kwargs)

            return cast("Callable[P, R]", run_async)

        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            with Override(force):
                return fn(*args, **kwargs)

        return run


def override(
    rollouts: Rollouts | None,
    name: str,
    enabled: bool = True,
    *,
    units: Iterable[object] | None = None,
) -> Override:
    """Force the decisions of rollout ``name``: the new path on (``enabled=True``) or off.

    For all units (calls without a unit too), or only for ``units`` (``str``, ``int`` or
    ``UUID``, as given to ``enabled``, ``decide`` or a guard's ``unit``). ``rollouts`` is the
    :class:`~stagedroll.Rollouts` whose rollout is forced, or ``None`` for that rollout of
    every ``Rollouts`` (the application's own, say).

    Use it as a context manager (``with`` or ``async with``) or as a decorator. Decisions
    made under it have the reason ``OVERRIDE``, and their outcomes are recorded like those
    of an allow or deny list (not compared by the health gate). It holds in the current
    thread or asyncio task (and in the tasks it creates) only; nested overrides are allowed,
    the innermost that matches a unit wins, and leaving restores what was there before.

    Raises :class:`~stagedroll.UnknownRolloutError` for a name that ``rollouts`` does not
    have, and :class:`TypeError` for a unit of the wrong type.
    """
    # An unknown name raises UnknownRolloutError now, not in the test.
    target = rollouts[name] if rollouts is not None else None
    keys = None if units is None else frozenset(unit_key(unit) for unit in units)
    return Override(Force(target, name, bool(enabled), keys))


@contextlib.contextmanager
def on_error(mode: str) -> Iterator[None]:
    """In the block, every guard of the process raises (or falls back on) a new path's exception.

    ``mode`` is ``"raise"`` or ``"fallback"``, over the policy's ``on_error`` and the pytest
    plugin's default; ``"policy"`` lets the policy decide. A guard's own ``reraise=True``
    or ``False`` still wins. Process-wide: not for tests that run concurrently in threads.
    """
    previous = set_on_error(mode)
    try:
        yield
    finally:
        set_on_error(previous)
