"""Outcome accounting: what each arm of each stage did (calls, errors, latency).

Every guarded call, ``track`` block and ``report`` ends here, through one sink per rollout.
The counters are per stage, so a new stage starts from zero and the old ones stay readable.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["ArmCounts", "ArmStats", "Arms", "Outcomes"]


class ArmCounts:
    """Mutable counters of one arm of one stage; updated under the rollout's lock.

    ``enabled`` says which path the arm's calls take; ``compared`` whether the arm is part
    of the comparison (bucketed units), or was routed by targeting, status or environment.
    """

    __slots__ = ("calls", "compared", "enabled", "errors", "fallbacks", "latency_n", "latency_s")

    def __init__(self, *, enabled: bool, compared: bool) -> None:
        self.enabled = enabled
        self.compared = compared
        self.calls = 0
        self.errors = 0
        self.fallbacks = 0
        self.latency_n = 0
        self.latency_s = 0.0

    def stats(self) -> ArmStats:
        """A frozen copy for reading."""
        return ArmStats(
            calls=self.calls,
            errors=self.errors,
            fallbacks=self.fallbacks,
            mean_latency_s=self.latency_s / self.latency_n if self.latency_n else None,
        )


@dataclass(frozen=True, slots=True)
class ArmStats:
    """What one arm did during one stage."""

    calls: int = 0
    errors: int = 0
    fallbacks: int = 0
    """Treatment calls whose failure was answered by the fallback (stable path)."""
    mean_latency_s: float | None = None

    @property
    def error_rate(self) -> float | None:
        """Errors per call, ``None`` before the first call."""
        return self.errors / self.calls if self.calls else None


class Arms(NamedTuple):
    """The counters of one stage: the two compared arms, and the calls routed by targeting."""

    control: ArmCounts
    treatment: ArmCounts
    targeted_off: ArmCounts
    targeted_on: ArmCounts


def _new_arms() -> Arms:
    return Arms(
        ArmCounts(enabled=False, compared=True),
        ArmCounts(enabled=True, compared=True),
        ArmCounts(enabled=False, compared=False),
        ArmCounts(enabled=True, compared=False),
    )


class Outcomes:
    """The outcome sink of one rollout: per stage, its :class:`Arms`."""

    __slots__ = ("_arms", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._arms: dict[int, Arms] = {}

    def arms(self, stage: int) -> Arms:
        """The counters of ``stage``, created on first use."""
        arms = self._arms.get(stage)
        if arms is None:
            with self.lock:
                arms = self._arms.setdefault(stage, _new_arms())
        return arms

    def record(
        self, counts: ArmCounts, error: bool, latency_s: float | None, fallback: bool = False
    ) -> None:
        """Add one call's outcome to ``counts`` (one arm of one stage)."""
        with self.lock:
            counts.calls += 1
            if error:
                counts.errors += 1
            if fallback:
                counts.fallbacks += 1
            if latency_s is not None:
                counts.latency_n += 1
                counts.latency_s += latency_s

    def stats(self, stage: int) -> tuple[ArmStats, ArmStats, ArmStats]:
        """Frozen stats of ``stage``: control, treatment, and the targeted calls of both paths."""
        arms = self.arms(stage)
        with self.lock:
            off, on = arms.targeted_off, arms.targeted_on
            targeted = ArmStats(
                calls=off.calls + on.calls,
                errors=off.errors + on.errors,
                fallbacks=off.fallbacks + on.fallbacks,
                mean_latency_s=(off.latency_s + on.latency_s) / (off.latency_n + on.latency_n)
                if off.latency_n + on.latency_n
                else None,
            )
            return arms.control.stats(), arms.treatment.stats(), targeted
