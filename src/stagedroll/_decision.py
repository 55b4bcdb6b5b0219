"""The result of deciding one unit: :class:`Decision` and the :class:`Reason` behind it."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Decision", "Reason"]


class Reason(str, enum.Enum):
    """Why a decision came out as it did; the step of the evaluation order that settled it."""

    ENVIRONMENT = "ENVIRONMENT"
    """The rollout is off in this environment."""
    KILLED = "KILLED"
    """The rollout was killed: the new path is off for everyone."""
    COMPLETE = "COMPLETE"
    """The rollout is complete: the new path is on for everyone."""
    NO_UNIT = "NO_UNIT"
    """No unit was given (``None``, or the ``bucket_by`` attribute is missing)."""
    DENIED = "DENIED"
    """The unit is on the rollout's deny list."""
    ALLOWED = "ALLOWED"
    """The unit is on the rollout's allow list."""
    SEGMENT = "SEGMENT"
    """The unit's attributes match a segment that the current stage includes."""
    IN_COHORT = "IN_COHORT"
    """The unit's bucket is below the stage's threshold."""
    OUT_OF_COHORT = "OUT_OF_COHORT"
    """The unit's bucket is at or above the stage's threshold."""
    OVERRIDE = "OVERRIDE"
    """Forced by :func:`stagedroll.testing.override` (tests only)."""
    UNKNOWN_ROLLOUT = "UNKNOWN_ROLLOUT"
    """The policy has no rollout of that name (it never had, or a reload removed it)."""
    ERROR = "ERROR"
    """stagedroll failed internally; the stable path is used and the failure is logged."""

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether the new path is on for one unit, and why.

    ``stage`` is the name of the stage in force (``None`` before the first stage or when the
    rollout is off in this environment; the environment's name where the environment fixes
    the percent), ``percent`` its share, and ``bucket`` the
    unit's hash when the bucket step was reached (``None`` when an earlier step decided).
    """

    rollout: str
    enabled: bool
    reason: Reason
    stage: str | None = None
    percent: float = 0.0
    bucket: int | None = None

    def __bool__(self) -> bool:
        return self.enabled
