"""The staged-rollout patterns, on top of the same bucketing, policy, health and store.

- :func:`switch`: the blue-green switch.
- :func:`shadow`: the dark launch (:class:`Shadow`).
- :func:`migration`: the expand/contract migration (:class:`Migration`, :class:`Phase`).

Each is also a method of :class:`~stagedroll.Rollouts` (``rollouts.shadow(...)``).
"""

from ._comparison import ComparisonStats, Mismatch
from ._migration import Migration, Phase, migration
from ._shadow import Shadow, shadow
from ._switch import switch

__all__ = [
    "ComparisonStats",
    "Migration",
    "Mismatch",
    "Phase",
    "Shadow",
    "migration",
    "shadow",
    "switch",
]
