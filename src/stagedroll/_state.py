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
    """

    stage: int
    status: Status
    since: float
    version: int
    reason: str = ""
    actor: str = ""
    epoch: int = 0


def newer(state: RolloutState, current: RolloutState) -> bool:
    """Whether ``state`` replaces ``current``: a higher version, or the same one begun later.

    Versions order the states of one history, and a state delivered late (two notices that
    crossed) has a lower one. Two states with the same version differ only when a store
    lost its data and a process began a new history there before the others restored the
    old one; the one that began later wins (the clocks of two hosts matter only then).
    """
    if state.version != current.version:
        return state.version > current.version
    return state.since > current.since


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
