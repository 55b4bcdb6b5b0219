"""A rollout's state as the store keeps it, and the transitions that change it."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from ._outcomes import ArmStats

if TYPE_CHECKING:
    from ._health import HealthReport

__all__ = [
    "NO_EVIDENCE",
    "Action",
    "RolloutState",
    "RolloutStatus",
    "Status",
    "Transition",
    "newer",
    "restorable",
]

Evidence = Mapping[str, float | int | str | None]
NO_EVIDENCE: Evidence = MappingProxyType({})


class Status(str, enum.Enum):
    """Where a rollout stands."""

    RUNNING = "running"
    """Serving its stage; may advance."""
    FROZEN = "frozen"
    """Serving its stage; does not advance until unfrozen."""
    ROLLED_BACK = "rolled_back"
    """Moved back a stage (stage ``-1`` is 0 %); does not advance by itself."""
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


@dataclass(frozen=True, slots=True)
class RolloutStatus:
    """Where a rollout stands, as :meth:`Rollouts.status` reports it.

    ``percent`` is the share in force in this process's environment (``mode`` says whether
    it follows the stages, is fixed by the environment, or is off there). ``control`` and
    ``treatment`` count the outcomes this process recorded during the current stage.
    """

    rollout: str
    environment: str | None
    mode: str
    stage: int
    stage_name: str | None
    percent: float
    status: Status
    since: float
    version: int
    reason: str
    actor: str
    control: ArmStats
    treatment: ArmStats
    targeted: ArmStats
    """Calls routed by targeting, status or environment rather than the bucket (not compared)."""
    next_stage: str | None
    """The name of the stage that ``advance`` leads to, ``None`` at the last stage."""
    internal_errors: int
    """Failures inside stagedroll in this process so far, all rollouts (``Rollouts.failures``)."""
    health: HealthReport
    """The evidence of the health gate: e-values, ratio estimates, events, units."""
    waiting_for: str | None
    """What the next automatic step waits for, in words; ``None`` when none can come."""
    pending_policy: str | None = None
    """Why the changed policy file is not applied (it does not validate); ``None`` when the
    file in force is the newest (or the policy does not come from a reloaded file)."""
    in_policy: bool = True
    """``False`` for a rollout that a reloaded policy no longer has: every call takes the old
    path, and its stored state stays (see :attr:`Rollouts.removed`)."""
