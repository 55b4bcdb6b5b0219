"""A rollout's state as the store keeps it, and the transitions that change it."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "AUTOMATIC",
    "MAX_ERROR_MESSAGE",
    "MAX_ERROR_TYPE",
    "NO_EVIDENCE",
    "Action",
    "RecentError",
    "RolloutState",
    "Status",
    "Transition",
    "newer",
    "restorable",
]

Evidence = Mapping[str, float | int | str | None]
NO_EVIDENCE: Evidence = MappingProxyType({})

AUTOMATIC = "stagedroll"
"""The actor of the transitions that stagedroll makes itself: a rollout's start, the health
gate's steps, a state restored from its history."""


class Status(str, enum.Enum):
    """Where a rollout stands."""

    RUNNING = "running"
    """Serving its stage; may advance."""
    FROZEN = "frozen"
    """Serving its stage; does not advance until unfrozen."""
    ROLLED_BACK = "rolled_back"
    """Moved back (to the previous stage, or one chosen; stage ``-1`` is 0 %); held there: it
    does not advance by itself."""
    KILLED = "killed"
    """The new path is off for everyone."""
    COMPLETE = "complete"
    """The new path is on for everyone, for good."""

    def __str__(self) -> str:
        return self.value


class Action(str, enum.Enum):
    """What a transition did."""

    START = "start"
    ADVANCE = "advance"
    FREEZE = "freeze"
    UNFREEZE = "unfreeze"
    ROLLBACK = "rollback"
    KILL = "kill"
    COMPLETE = "complete"

    def __str__(self) -> str:
        return self.value

    @property
    def verb(self) -> str:
        """The action as a verb in a sentence (``roll back``, not ``rollback``)."""
        return "roll back" if self is Action.ROLLBACK else self.value


@dataclass(frozen=True, slots=True)
class RolloutState:
    """The stored state of one rollout.

    ``stage`` indexes the policy's stages; ``-1`` means before the first stage (0 %),
    where a rollback from the first stage lands. ``version`` rises by one with every
    transition and is what compare-and-set compares. ``since`` is the clock's time
    (seconds since the epoch with the default clock) when this state began. ``epoch`` is
    the version of the transition that began the current epoch of health evidence (the
    start, a rollback, or a resume after a freeze, rollback or kill): every process that
    reads the state agrees on it, so outcome counts pooled in the store are keyed by it.
    ``history`` is a random id given at the start and kept by every transition: after a
    store lost its data, it tells the old history from one begun anew.
    """

    stage: int
    status: Status
    since: float
    version: int
    reason: str = ""
    actor: str = ""
    epoch: int = 0
    history: str = ""
    stages: tuple[tuple[str, float], ...] = ()
    """The stage ladder (name, percent) of the policy that wrote this state, so that an
    operator can steer the rollout from the store alone; ``()`` in states from before it."""


def _same_history(a: RolloutState, b: RolloutState) -> bool:
    return a.history == b.history or not a.history or not b.history


def newer(state: RolloutState, current: RolloutState) -> bool:
    """Whether ``state``, read from the store, replaces ``current``, the state in force.

    In one history, the higher version (a state delivered late has a lower one). Across
    histories (a store lost its data and a process began the rollout anew there), the
    store's: unless it is a bare start (version 1) and ``current`` went further, which the
    process then restores (:func:`restorable`).
    """
    if _same_history(state, current):
        if state.version != current.version:
            return state.version > current.version
        return state.since > current.since
    return not (state.version <= 1 < current.version)


def restorable(known: RolloutState, stored: RolloutState | None) -> bool:
    """Whether a process that knew ``known`` writes it back over ``stored``: the store lost it.

    Missing, an older version of the same history (a replica that lags, a backup), or a
    bare start of another history (a process began it anew in the empty store).
    """
    if known.version < 1:
        return False
    if stored is None:
        return True
    if _same_history(known, stored):
        return stored.version < known.version
    return stored.version <= 1 < known.version


@dataclass(frozen=True, slots=True)
class Transition:
    """One entry of a rollout's history: a change of state, who made it and why."""

    rollout: str
    action: Action
    from_stage: int
    to_stage: int
    from_status: Status | None
    to_status: Status
    version: int
    at: float
    reason: str = ""
    actor: str = ""
    evidence: Evidence = field(default_factory=lambda: NO_EVIDENCE)


MAX_ERROR_TYPE = 128
"""The longest exception type name kept in a :class:`RecentError` (longer ones are cut)."""
MAX_ERROR_MESSAGE = 200
"""The longest exception message kept in a :class:`RecentError` (longer ones are cut)."""


@dataclass(frozen=True, slots=True)
class RecentError:
    """One distinct exception of a rollout's path, as ``status`` reports the last few.

    Distinct by ``(arm, type, message)``; ``count`` is how often it was raised between
    ``first_seen`` and ``last_seen`` (clock times). ``arm`` is ``"treatment"`` (the new
    path) or ``"control"`` (the old one). ``type`` is the exception's qualified class name
    and ``message`` its text, cut to :data:`MAX_ERROR_TYPE` and :data:`MAX_ERROR_MESSAGE`
    characters.
    """

    arm: str
    type: str
    message: str
    first_seen: float
    last_seen: float
    count: int = 1
