"""The staged-rollout patterns, on top of the same bucketing, policy, health and store.

- :func:`switch`: the blue-green switch.
- :func:`shadow`: the dark launch (:class:`Shadow`).
- :func:`migration`: the expand/contract migration (:class:`Migration`, :class:`Phase`).

Each function is the :class:`~stagedroll.Rollouts` method of the same name, called with the
``Rollouts`` first: ``shadow(rollouts, "name", ...)`` is ``rollouts.shadow("name", ...)``.
"""

from .._comparison import ComparisonStats, Mismatch
from .._migration import Migration, Phase
from .._rollouts import Rollouts as _Rollouts
from .._shadow import Shadow

switch = _Rollouts.switch
shadow = _Rollouts.shadow
migration = _Rollouts.migration

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
