"""Forced decisions: the machinery behind :func:`stagedroll.testing.override`.

An override forces the decisions of one rollout (of one :class:`~stagedroll.Rollouts`, or
of every one) for all units or for given units, in the current context only: the active
overrides live in a :class:`~contextvars.ContextVar`, so each thread and each asyncio task
sees its own (a task inherits those of the code that created it). The decision path pays
nothing while no override is active: a rollout with one active anywhere leaves its fast
path (``View.plain`` is off) and asks :func:`forced` on the slow one.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._rollout import Rollout
    from ._rollouts import Rollouts

__all__ = ["Force", "activate", "deactivate", "forced", "track"]


@dataclass(frozen=True, slots=True, eq=False)
class Force:
    """One active override: rollout ``name`` of ``owner`` (``None``: of every ``Rollouts``)."""

    owner: Rollouts | None
    name: str
    enabled: bool
    units: frozenset[str] | None
    """The units it applies to, as text; ``None`` for all units (calls without one too)."""


_ACTIVE: ContextVar[tuple[Force, ...]] = ContextVar("stagedroll_overrides", default=())
_lock = threading.Lock()
_rollouts: weakref.WeakSet[Rollout] = weakref.WeakSet()


def _renew_lock() -> None:  # in a forked child: the parent's threads are gone
    global _lock  # noqa: PLW0603 - the module's one lock, replaced after fork
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # pragma: no branch - absent on Windows only
    os.register_at_fork(after_in_child=_renew_lock)
_everywhere: Counter[str] = Counter()  # active overrides of every Rollouts, by rollout name


def track(rollout: Rollout) -> bool:
    """Know ``rollout`` from now on; say whether an override of every ``Rollouts`` applies."""
    with _lock:
        _rollouts.add(rollout)
        return _everywhere[rollout.name] > 0


def forced(rollout: Rollout, key: str | None) -> bool | None:
    """The decision forced for unit ``key`` of ``rollout`` in this context, or ``None``.

    The innermost override that matches wins.
    """
    for force in reversed(_ACTIVE.get()):
        if (
            force.name == rollout.name
            and (force.owner is None or force.owner is rollout._owner)
            and (force.units is None or key in force.units)
        ):
            return force.enabled
    return None


def activate(force: Force) -> None:
    """Make ``force`` active in this context (on top of those already active)."""
    _ACTIVE.set((*_ACTIVE.get(), force))
    _count(force, +1)


def deactivate(force: Force) -> None:
    """End the latest activation of ``force``; never raises.

    It is removed from this context's overrides wherever it stands (blocks left out of
    order end the right one), and the count of active overrides always goes down, even
    when it ends in another context than it began (it is then not found here).
    """
    try:
        active = _ACTIVE.get()
        for i in range(len(active) - 1, -1, -1):
            if active[i] is force:
                _ACTIVE.set(active[:i] + active[i + 1 :])
                break
    finally:
        _count(force, -1)


def _count(force: Force, step: int) -> None:
    """Tell the rollouts concerned that one more (or one fewer) override is active."""
    with _lock:
        if force.owner is None:
            _everywhere[force.name] += step
            targets = [r for r in _rollouts if r.name == force.name]
        else:
            target = force.owner._rollouts.get(force.name)
            targets = [target] if target is not None else []
    for rollout in targets:
        rollout._force(step)
