"""Outcome accounting: what each arm of each stage did (calls, errors, latency, units).

Every guarded call, ``track`` block and ``report`` ends here, through one sink per rollout.
The counters are per stage visit, so a new stage starts from zero.

The common outcome, a fast success of a unit already seen in this stage, is recorded
without a lock: its latency is appended to the arm's ``pending`` list (an atomic operation)
and folded into the counters under the lock, in batches (at most :data:`FOLD_AT`) or when
the counters are read. Everything the health test needs to see at once (errors, slow calls,
a unit's first call in the stage) takes the lock and goes through :class:`~._health.Health`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Container
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

from ._forksafe import register

if TYPE_CHECKING:
    from ._health import Health

__all__ = [
    "FOLD_AT",
    "UNIT_CAP",
    "ArmCounts",
    "ArmStats",
    "Arms",
    "ObservedArm",
    "Outcome",
    "Outcomes",
    "Sink",
]

FOLD_AT = 1024
"""Pending latencies an arm holds at most before they are folded into its counters."""
_FIRST_FOLD = 16  # the first batches are small, so the latency threshold is learnt early
_CHECK_EVERY = 64  # outcomes recorded under the lock between two looks at the clock

_NOTHING: frozenset[object] = frozenset()

UNIT_CAP = 50_000
"""Distinct units an arm remembers per stage visit (for ``min_units`` and the sample ratio)."""


class ArmCounts:
    """Counters of one arm of one stage.

    ``enabled`` says which path the arm's calls take; ``compared`` whether the arm is part
    of the comparison (bucketed units), or was routed by targeting, status or environment.
    ``pending`` holds latencies of successful calls not yet folded into the counters.
    The hot path reads ``slow_at`` (a slower call goes to the health test at once),
    ``counting`` and ``units`` (a unit's first call in the stage does too).
    """

    __slots__ = (
        "calls",
        "compared",
        "counting",
        "enabled",
        "errors",
        "fallbacks",
        "fold_at",
        "latency_n",
        "latency_s",
        "pending",
        "pooled_units",
        "slow_at",
        "slow_seen",
        "tracked",
        "unit_count",
        "units",
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
        self.fold_at = _FIRST_FOLD
        self.slow_at = math.inf
        """Latency (s) above which a call is slow; ``inf`` when the arm is not tested."""
        self.slow_seen: Container[object] = _NOTHING
        """The units whose first slow call the latency test has already counted."""
        self.counting = False
        """Whether the arm still remembers new units (compared arms, up to the cap)."""
        self.tracked = False
        """Whether the arm counts its units at all (the compared arms of a tested rollout)."""
        self.units: set[str | None] = set()
        self.unit_count = 0
        """Distinct units seen; see :meth:`units_seen`."""
        self.pooled_units = 0
        """Distinct units every process saw, as the store last counted them (pooled stores)."""

    def fold(self) -> list[float]:
        """Move pending latencies into the counters and return them; hold the rollout's lock."""
        pending = self.pending
        n = len(pending)
        if not n:
            return []
        batch = pending[:n]
        # Deleting the first n leaves whatever other threads appended meanwhile.
        del pending[:n]
        self.calls += n
        self.latency_n += n
        self.latency_s += sum(batch)
        if self.fold_at < FOLD_AT:
            self.fold_at = min(FOLD_AT, self.fold_at * 2)
        return batch

    def reset(self) -> None:
        """Forget every count (in a forked child: they were the parent's)."""
        self.calls = self.errors = self.fallbacks = self.latency_n = 0
        self.latency_s = 0.0
        self.pending.clear()
        self.units = {None} if self.counting else set()
        self.unit_count = self.pooled_units = 0
        self.fold_at = _FIRST_FOLD

    def count_units(self) -> None:
        """Start remembering the arm's distinct units (a compared arm of a tested rollout).

        ``None`` (a call without a unit) is in the set from the start, so that the hot path
        never stops for such calls: :meth:`units_seen` counts them from the calls instead.
        """
        self.counting = self.tracked = True
        self.units = {None}

    def stop_counting(self) -> None:
        """Remember no more units (the cap is reached, or the stage visit is over)."""
        self.counting = False
        self.units = set()  # the memory goes; the count stays

    def units_seen(self) -> int:
        """Distinct units seen; when none had an id (per-request bucketing), the calls.

        With a store shared by processes, the fleet's count when it is the larger. 0 for an
        arm that does not count units (no health gate).
        """
        if not self.tracked:
            return 0
        return max(self.unit_count or self.calls + len(self.pending), self.pooled_units)

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
            units=self.units_seen(),
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """One recorded call, as :class:`stagedroll.testing.RecordingSink` sees it."""

    rollout: str
    unit: str | None
    """The call's unit as text (``None``: none given, per-request bucketing)."""
    enabled: bool
    """Whether the call was routed to the new path."""
    error: bool
    """Whether it failed (the new path raised, or the old one did)."""
    fallback: bool
    """Whether the old path answered after the new one raised."""
    latency_s: float | None
    compared: bool
    """Whether the call was bucketed (compared by the health gate), not routed by targeting
    or an override."""


class Sink(Protocol):
    """What a rollout tells of every outcome while it is watched."""

    def add(self, outcome: Outcome) -> None: ...


class ObservedArm(ArmCounts):
    """A stand-in for an arm whose rollout a recording sink watches (tests only).

    It shares the arm's pending latencies, and makes every successful guarded call look
    slow, so that each one reaches :meth:`~._rollout.Rollout._note`, which tells the sinks
    and passes the call on to :attr:`real`. The health test is not fooled: it judges on its
    own threshold.
    """

    __slots__ = ("real",)

    def __init__(self, real: ArmCounts) -> None:
        self.real = real
        self.enabled = real.enabled
        self.compared = real.compared
        self.slow_at = -math.inf
        self.slow_seen = _NOTHING
        self.counting = False
        self.units = set()

    @property
    def pending(self) -> list[float]:  # type: ignore[override]  # the real arm's, shared
        """The real arm's pending latencies."""
        return self.real.pending

    @property
    def fold_at(self) -> int:  # type: ignore[override]  # the real arm's
        """The real arm's batch size."""
        return self.real.fold_at


@dataclass(frozen=True, slots=True)
class ArmStats:
    """What one arm did during one stage."""

    calls: int = 0
    errors: int = 0
    fallbacks: int = 0
    """Treatment calls whose failure was answered by the fallback (stable path)."""
    mean_latency_s: float | None = None
    units: int = 0
    """Distinct units seen, up to :data:`UNIT_CAP` (when no call had a unit: the calls).

    Counted on the compared arms of a rollout with a health gate only (else 0).
    """

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

    __slots__ = ("__weakref__", "_arms", "health", "lock")

    def __init__(self, health: Health | None = None) -> None:
        self.lock = threading.Lock()
        self._arms: dict[int, Arms] = {}
        self.health = health
        """The health test fed by the compared arms, or ``None`` (counting only)."""
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
                arms = self._arms.get(stage)
                if arms is None:
                    arms = self._arms[stage] = self._new_arms()
        return arms

    def enter(self, stage: int, leaving: int | None = None) -> Arms:
        """Start fresh counters for a new visit of ``stage``, leaving stage ``leaving``.

        The visits that end stop remembering units: their sets are no longer needed.
        """
        with self.lock:
            for ended in (stage, leaving):
                old = self._arms.get(ended) if ended is not None else None
                if old is not None:
                    for counts in old:
                        counts.stop_counting()
            arms = self._arms[stage] = self._new_arms()
        return arms

    def _new_arms(self) -> Arms:
        arms = _new_arms()
        if self.health is not None:
            arms.control.count_units()
            arms.treatment.count_units()
            self.health.track(arms.control, arms.treatment)
        return arms

    def success(self, counts: ArmCounts, latency_s: float, key: str | None = None) -> bool:
        """Record a successful call; return whether an automatic step may be due.

        The latency is appended without a lock and folded in batches. A call that may be an
        event of the health test (the first slow call of its unit, the unit's first call in
        the stage) also goes to :meth:`note`. The guards inline this method.
        """
        pending = counts.pending
        pending.append(latency_s)
        due = False
        if (latency_s > counts.slow_at and key not in counts.slow_seen) or (
            counts.counting and key not in counts.units
        ):
            due = self.note(counts, key, latency_s)
        if len(pending) >= counts.fold_at:
            due = self.fold(counts) or due
        return due

    def note(self, counts: ArmCounts, key: str | None, latency_s: float) -> bool:
        """Show a successful call (already counted) to the health test; see :meth:`success`."""
        with self.lock:
            health = self.health
            if health is None or not counts.compared:
                return False
            return health.note(counts, key, latency_s)

    def fold(self, counts: ArmCounts) -> bool:
        """Fold ``counts``'s pending latencies; return whether a step may be due."""
        with self.lock:
            return self.fold_locked(counts)

    def fold_locked(self, counts: ArmCounts) -> bool:
        """:meth:`fold`, with the lock already held; every fold goes through here.

        The folded latencies of the control arm teach the slow-call threshold.
        """
        batch = counts.fold()
        health = self.health
        if health is None or not counts.compared:
            return False
        if batch and not counts.enabled:
            health.learn(batch)
        return health.timed  # only the clock can have made a step due meanwhile

    def record(
        self,
        counts: ArmCounts,
        error: bool,
        latency_s: float | None,
        fallback: bool = False,
        key: str | None = None,
        *,
        event: bool = True,
    ) -> bool:
        """Add one call's outcome to ``counts``; return whether an automatic step may be due.

        ``key`` is the call's unit as text (``None`` for a call without one, bucketed per
        request), which the health test needs for first events and new units. An error with
        ``event=False`` is counted, not shown to the test as an event.
        """
        with self.lock:
            counts.calls += 1
            if error:
                counts.errors += 1
            if fallback:
                counts.fallbacks += 1
            if latency_s is not None:
                counts.latency_n += 1
                counts.latency_s += latency_s
            health = self.health
            if health is None or not counts.compared:
                return False
            due = health.observe(counts, key, error=error and event)
            if counts.calls % _CHECK_EVERY == 0:  # no fold on this path: look at the clock
                due = due or health.timed
            return due

    def stats(self, stage: int) -> tuple[ArmStats, ArmStats, ArmStats]:
        """Frozen stats of ``stage``: control, treatment, and the targeted calls of both paths."""
        arms = self.arms(stage)
        with self.lock:
            for counts in arms:
                self.fold_locked(counts)
            off, on = arms.targeted_off, arms.targeted_on
            timed = off.latency_n + on.latency_n
            targeted = ArmStats(
                calls=off.calls + on.calls,
                errors=off.errors + on.errors,
                fallbacks=off.fallbacks + on.fallbacks,
                mean_latency_s=(off.latency_s + on.latency_s) / timed if timed else None,
            )
            return arms.control.stats(), arms.treatment.stats(), targeted
