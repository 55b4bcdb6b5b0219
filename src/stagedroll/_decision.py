"""The result of deciding one unit: :class:`Decision` and the :class:`Reason` behind it."""

from __future__ import annotations

import enum
from dataclasses import FrozenInstanceError
from typing import NamedTuple

__all__ = ["Decision", "Reason", "decision"]


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


class Decision(NamedTuple):
    """Whether the new path is on for one unit, and why.

    ``stage`` is the name of the stage in force (``None`` before the first stage or when the
    rollout is off in this environment; the environment's name where the environment fixes
    the percent), ``percent`` its share, and ``bucket`` the unit's position when the bucket
    step was reached (``None`` when an earlier step decided): its hash in ``[0, 2**32)``, or
    its place in the space of the rollout's ``bucketing`` scheme (0 to 99 for Unleash).
    An immutable named tuple, true exactly when the new path is on.
    """

    rollout: str
    enabled: bool
    reason: Reason
    stage: str | None = None
    percent: float = 0.0
    bucket: int | None = None

    def __bool__(self) -> bool:
        return self.enabled

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}: a Decision is immutable")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}: a Decision is immutable")


def decision(fields: tuple[str, bool, Reason, str | None, float, int | None]) -> Decision:
    """A :class:`Decision` of its six fields in order, built in one C call (the hot path).

    A named tuple's own ``__new__`` is a Python function that checks its arguments.
    """
    return _tuple_new(Decision, fields)


_tuple_new = tuple.__new__
