"""``Runtime``: what the rollouts of one :class:`~stagedroll.Rollouts` share.

The handles (:class:`~._rollout.Rollout`) and the routing entries under them receive this
small context, never the ``Rollouts`` facade: the store, the clock, the failure counter,
the hooks, whether the evidence is shared by processes, the policy file, and two chores
that only the facade can do (reload the policy; check the store's thread). A module that
needs fewer things receives only those (the evidence exchange takes the store and the
failure counter).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ._failures import Failures
from ._hooks import Hooks
from ._reload import PolicyFile
from ._state import RolloutState
from .stores import Store

__all__ = ["Runtime"]


def _nothing() -> None:
    """A chore with nothing to do."""


def _unwatched(name: str, state: RolloutState) -> None:
    """Nobody listens to changes of state."""


@dataclass(slots=True, eq=False)
class Runtime:
    """The shared context of the rollouts of one ``Rollouts``; one per instance."""

    store: Store
    clock: Callable[[], float]
    failures: Failures
    hooks: Hooks
    """The transition hooks, fired after each transition this process makes."""
    environment: str | None = None
    context: Mapping[str, object] = field(default_factory=dict)
    """Attributes of every decision (the call's own attributes win)."""
    shared: bool = False
    """Whether the evidence is pooled through a store shared by processes (whose refresh
    thread then takes the automatic steps, not the callers' calls)."""
    file: PolicyFile | None = None
    """The policy file watched for changes, if any."""
    chores: bool = False
    """Whether :attr:`tend` has anything to do (a policy file, or a store's thread)."""
    tend: Callable[[], None] = _nothing
    """The chores a caller's call does now and then (never raises)."""
    reload: Callable[[], None] = _nothing
    """Apply the policy file if it changed (``status`` and ``tick``; never raises)."""
    changed: Callable[[str, RolloutState], None] = _unwatched
    """Told ``(name, state)`` of every state that comes into force (never raises)."""
    raises: bool = False
    """Whether a guard re-raises the new path's exceptions (``on_error = "raise"`` in force),
    unless the guard says otherwise or a test session overrides it."""
