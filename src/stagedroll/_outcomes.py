"""Outcome accounting: what each arm of each stage did (calls, errors, latency).

Every guarded call, ``track`` block and ``report`` ends here, through one sink per rollout.
The counters are per stage, so a new stage starts from zero and the old ones stay readable.

The common outcome, a success with a latency, is recorded without a lock: its latency is
appended to the arm's ``pending`` list (an atomic operation) and folded into the counters
under the lock, in batches of :data:`FOLD_AT` or when the counters are read. Errors, which
are rare and carry more, take the lock at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import NamedTuple

from ._forksafe import register

__all__ = ["FOLD_AT", "ArmCounts", "ArmStats", "Arms", "Outcomes"]

FOLD_AT = 1024
"""Pending latencies an arm holds at most before they are folded into its counters."""


class ArmCounts:
    """Counters of one arm of one stage.

    ``enabled`` says which path the arm's calls take; ``compared`` whether the arm is part
    of the comparison (bucketed units), or was routed by targeting, status or environment.
    ``pending`` holds latencies of successful calls not yet folded into the counters.
    """

    __slots__ = (
        "calls",
        "compared",
        "enabled",
        "errors",
        "fallbacks",
        "latency_n",
        "latency_s",
        "pending",
    )

    def __init__(self, *, enabled: bool, compared: bool) -> None:
        self.enabled = enabled
        self.compared = compared
        self.calls = 0
        self.errors = 0
        self.fallbacks = 0
        self.latency_n = 0
        self.latency_s = 0.0
        self.pending: list[float] = []

    def fold(self) -> None:
        """Move pending latencies into the counters; call with the rollout's lock held."""
        pending = self.pending
        n = len(pending)
        if n:
            total = sum(pending[:n])
            # Deleting the first n leaves whatever other threads appended meanwhile.
            del pending[:n]
            self.calls += n
            self.latency_n += n
            self.latency_s += total

    def reset(self) -> None:
        """Forget every count (in a forked child: they were the parent's)."""
        self.calls = self.errors = self.fallbacks = self.latency_n = 0
        self.latency_s = 0.0
        self.pending.clear()

    def stats(self) -> ArmStats:
        """A frozen copy for reading (pending latencies included)."""
        pending = self.pending[:]
        latency_n = self.latency_n + len(pending)
        latency_s = self.latency_s + sum(pending)
        return ArmStats(
            calls=self.calls + len(pending),
            errors=self.errors,
            fallbacks=self.fallbacks,
            mean_latency_s=latency_s / latency_n if latency_n else None,
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

    __slots__ = ("__weakref__", "_arms", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._arms: dict[int, Arms] = {}
        register(self)

    def _after_fork(self) -> None:
        """In a forked child: a fresh lock, and counts of this process only."""
        self.lock = threading.Lock()
        for arms in self._arms.values():
            for counts in arms:
                counts.reset()

    def arms(self, stage: int) -> Arms:
        """The counters of ``stage``, created on first use."""
        arms = self._arms.get(stage)
        if arms is None:
            with self.lock:
                arms = self._arms.setdefault(stage, _new_arms())
        return arms

    def enter(self, stage: int) -> Arms:
        """Start fresh counters for a new visit of ``stage`` (after a stage change)."""
        with self.lock:
            arms = self._arms[stage] = _new_arms()
        return arms

    def success(self, counts: ArmCounts, latency_s: float) -> None:
        """Record a successful call: lock-free, folded in batches."""
        pending = counts.pending
        pending.append(latency_s)
        if len(pending) >= FOLD_AT:
            self.fold(counts)

    def fold(self, counts: ArmCounts) -> None:
        """Fold ``counts``'s pending latencies into its counters."""
        with self.lock:
            counts.fold()

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
            for counts in arms:
                counts.fold()
            off, on = arms.targeted_off, arms.targeted_on
            timed = off.latency_n + on.latency_n
            targeted = ArmStats(
                calls=off.calls + on.calls,
                errors=off.errors + on.errors,
                fallbacks=off.fallbacks + on.fallbacks,
                mean_latency_s=(off.latency_s + on.latency_s) / timed if timed else None,
            )
            return arms.control.stats(), arms.treatment.stats(), targeted
