"""Forced decisions: the machinery behind :func:`stagedroll.testing.override`.

This module holds all of stagedroll's process-global test state, and nothing else does:
the overrides active in each context, the handles that may be forced, and the count of
overrides of every ``Rollouts`` per rollout name.

An override forces the decisions of one rollout (of one :class:`~stagedroll.Rollouts`, or
of every one) for all units or for given units, in the current context only: the active
overrides live in a :class:`~contextvars.ContextVar`, so each thread and each asyncio task
sees its own (a task inherits those of the code that created it). The decision path pays
nothing while no override is active: a rollout with one active anywhere leaves its fast
path (``View.plain`` is off) and asks :func:`forced` on the slow one.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "Force",
    "Forceable",
    "activate",
    "deactivate",
    "forced",
    "on_error",
    "set_on_error",
    "track",
]


class Forceable(Protocol):
    """A rollout's handle, as overrides see it: its name, and a way off the fast path."""

    @property
    def name(self) -> str: ...

    def _force(self, step: int) -> None: ...


@dataclass(frozen=True, slots=True, eq=False)
class Force:
    """One active override: rollout ``name`` of handle ``target`` (``None``: of every one)."""

    target: Forceable | None
    """The handle forced (one ``Rollouts``' rollout), or ``None`` for every handle named
    ``name``."""
    name: str
    enabled: bool
    units: frozenset[str] | None
    """The units it applies to, as text; ``None`` for all units (calls without one too)."""


_ACTIVE: ContextVar[tuple[Force, ...]] = ContextVar("stagedroll_overrides", default=())
_lock = threading.Lock()
_handles: weakref.WeakSet[Forceable] = weakref.WeakSet()


def _renew_lock() -> None:  # in a forked child: the parent's threads are gone
    global _lock  # noqa: PLW0603 - the module's one lock, replaced after fork
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # pragma: no branch - absent on Windows only
    os.register_at_fork(after_in_child=_renew_lock)
_everywhere: Counter[str] = Counter()  # active overrides of every Rollouts, by rollout name


def track(handle: Forceable) -> bool:
    """Know ``handle`` from now on; say whether an override of every ``Rollouts`` applies."""
    with _lock:
        _handles.add(handle)
        return _everywhere[handle.name] > 0


def forced(handle: object, name: str, key: str | None) -> bool | None:
    """The decision forced for unit ``key`` of rollout ``name`` of ``handle``, or ``None``.

    In this context; the innermost override that matches wins.
    """
    for force in reversed(_ACTIVE.get()):
        if (
            force.name == name
            and (force.target is None or force.target is handle)
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
        if force.target is None:
            _everywhere[force.name] += step
            targets = [h for h in _handles if h.name == force.name]
        else:
            targets = [force.target]
    for handle in targets:
        handle._force(step)


_on_error: str | None = None
_MODES = (None, "raise", "fallback", "policy")


def set_on_error(mode: str | None) -> str | None:
    """Set this process's test-session ``on_error``; return the one it replaces.

    ``"raise"`` or ``"fallback"`` decide for every guard over the policy; ``"policy"`` gives
    the decision back to the policy (over the pytest plugin's default); ``None`` unsets it.
    """
    global _on_error
    if mode not in _MODES:
        raise ValueError(f'on_error must be "raise", "fallback" or "policy", not {mode!r}')
    previous, _on_error = _on_error, mode
    return previous


def on_error() -> str | None:
    """The test session's ``"raise"`` or ``"fallback"``, or ``None`` when the policy decides.

    :func:`set_on_error`'s, else the pytest plugin's (its ``stagedroll_on_error`` option,
    ``"raise"`` by default). The plugin imports nothing of stagedroll, so this reads its
    module, which pytest imported, when a guard's new path raised (never on a success).
    """
    mode = _on_error
    if mode is None:
        plugin = sys.modules.get("pytest_stagedroll")
        mode = getattr(plugin, "on_error", None) if plugin is not None else None
    return mode if mode in ("raise", "fallback") else None
