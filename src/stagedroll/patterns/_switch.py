"""The blue-green switch: each unit goes to blue (the old) or green (the new) by the stage."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, ParamSpec, TypeVar

if TYPE_CHECKING:
    from .._rollouts import Rollouts

__all__ = ["switch"]

P = ParamSpec("P")
R = TypeVar("R")


def switch(
    rollouts: Rollouts,
    name: str,
    *,
    blue: Callable[P, R],
    green: Callable[P, R],
    unit: Callable[P, object] | None,
    attributes: Callable[P, Mapping[str, object]] | None = None,
    reraise: bool = False,
) -> Callable[P, R]:
    """A callable that sends each call to ``green`` or ``blue`` by rollout ``name``'s stage.

    Stages such as 0 → 10 → 50 → 100 % move units from blue to green, a unit that is on
    green stays there as the share grows, and ``rollback`` or ``kill`` cuts back at once:
    the next call of every unit the stage no longer covers goes to blue. Each call's outcome
    is recorded on its arm, so the health gate compares green with blue. When green raises,
    blue answers (the error is recorded), unless ``reraise=True``. ``unit`` and
    ``attributes`` take the call's arguments, as for a guard; ``unit=None`` buckets each
    call afresh. Sync and ``async def`` (both alike). Raises
    :class:`~stagedroll.UnknownRolloutError` for an unknown name.

    It is a guard with green as the new path and blue as its fallback
    (:meth:`Rollouts.guard <stagedroll.Rollouts.guard>`), named for the pattern.
    """
    routed = rollouts.guard(name, fallback=blue, unit=unit, attributes=attributes,
                            reraise=reraise)  # fmt: skip
    return routed(green)
