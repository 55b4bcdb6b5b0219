"""Outcome accounting: what each arm of each stage did (calls, errors, latency, units).

Every guarded call, ``track`` block and ``report`` ends here, through the rollout's router.
The counters are per stage visit, so a new stage starts from zero.

The common outcome, a fast success of a unit already seen in this stage, is recorded
without a lock: its latency is appended to the arm's ``pending`` list (an atomic operation)
and folded into the counters under the lock, in batches (at most :data:`FOLD_AT`). The
counters know nothing of the health gate: an arm only carries the marks the gate set on it
(``slow_at``, ``slow_seen``, ``counting`` and ``units``) so that the hot path can tell,
without a lock, that a call is one the gate must see; the rollout's router then shows it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from ._forksafe import register
from ._policy import UNIT_CAP

__all__ = [
    "FOLD_AT",
    "UNIT_CAP",
    "ArmCounts",
    "ArmStats",
    "ArmTriple",
    "Arms",
    "ObservedArm",
    "Outcome",
    "Outcomes",
    "Sink",
]

FOLD_AT = 1024
"""Pending latencies an arm holds at most before they are folded into its counters."""
_FIRST_FOLD = 16  # the first batches are small, so the latency threshold is learnt early
UNTIMED = -1.0
"""A pending entry of a successful call that was counted but not timed (no latency < 0)."""
TIME_EVERY = 16
"""An arm no latency test watches has one guarded call in this many timed (the clock costs
a guard a third of its overhead); its mean latency is estimated from those."""

_NOTHING: frozenset[object] = frozenset()


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
        "timed",
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
        """Latencies of successful calls not folded yet; :data:`UNTIMED` for a call counted
        but not timed."""
        self.fold_at = _FIRST_FOLD
        self.timed = False
        """Whether a guard times every call (a latency test watches the arm); else one call
        in :data:`TIME_EVERY`, which the mean latency is estimated from."""
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
        untimed = batch.count(UNTIMED)
        self.calls += n
        self.latency_n += n - untimed
        self.latency_s += sum(batch) - untimed * UNTIMED
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
        untimed = pending.count(UNTIMED)
        latency_n = self.latency_n + len(pending) - untimed
        latency_s = self.latency_s + sum(pending) - untimed * UNTIMED
        return ArmStats(
            calls=self.calls + len(pending),
            errors=self.errors,
            fallbacks=self.fallbacks,
            mean_latency_s=latency_s / latency_n if latency_n else None,
            units=self.units_seen(),
            timed=latency_n,
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
    """What a rollout tells of every outcome while it is watched (see ``Rollout.on_outcome``)."""

    def __call__(self, outcome: Outcome, /) -> object: ...


class ObservedArm(ArmCounts):
    """A stand-in for an arm whose rollout a recording sink watches (tests only).

    It shares the arm's pending latencies, and makes every successful guarded call look
    slow, so that each one reaches :meth:`~._router.Router.note`, which tells the sinks
    and passes the call on to :attr:`real`. The health test is not fooled: it judges on its
    own threshold.
    """

    __slots__ = ("real",)

    def __init__(self, real: ArmCounts) -> None:
        self.real = real
        self.enabled = real.enabled
        self.compared = real.compared
        self.slow_at = -math.inf
        self.timed = True
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
    timed: int = field(default=0, compare=False)
    """Calls whose latency was measured, which ``mean_latency_s`` is the mean of: every
    call on an arm a latency test watches, else one sync guarded call in 16 (and every
    call of async guards, ``track``, ``report``, shadows and migrations)."""

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


def _sum(a: ArmStats, b: ArmStats) -> ArmStats:
    """The stats of two arms together (the targeted calls of both paths)."""
    timed = a.timed + b.timed
    total = (a.mean_latency_s or 0.0) * a.timed + (b.mean_latency_s or 0.0) * b.timed
    return ArmStats(
        calls=a.calls + b.calls,
        errors=a.errors + b.errors,
        fallbacks=a.fallbacks + b.fallbacks,
        mean_latency_s=total / timed if timed else None,
        timed=timed,
    )


ArmTriple = tuple[ArmStats, ArmStats, ArmStats]
"""Control, treatment, and the targeted calls of both paths."""
_NONE: ArmTriple = (ArmStats(), ArmStats(), ArmStats())


def _triple(arms: Arms) -> ArmTriple:
    off, on = arms.targeted_off.stats(), arms.targeted_on.stats()
    return arms.control.stats(), arms.treatment.stats(), _sum(off, on)


def _add(a: ArmTriple, b: ArmTriple) -> ArmTriple:
    return _sum(a[0], b[0]), _sum(a[1], b[1]), _sum(a[2], b[2])


class Outcomes:
    """The outcome counters of one rollout: per stage, its :class:`Arms`.

    ``lock`` guards the counters (the rollout's router passes its own, which the gate shares);
    ``on_visit`` is told of the compared arms of every new stage visit (the gate marks them).
    """

    __slots__ = ("__weakref__", "_arms", "_own_lock", "lock", "on_visit", "retired")

    def __init__(
        self,
        *,
        lock: threading.Lock | None = None,
        on_visit: Callable[[ArmCounts, ArmCounts], None] | None = None,
        retired: ArmTriple | None = None,
    ) -> None:
        self._own_lock = lock is None
        self.lock = threading.Lock() if lock is None else lock
        self._arms: dict[int, Arms] = {}
        self.on_visit = on_visit
        self.retired: ArmTriple = retired if retired is not None else _NONE
        """The counts of the visits whose counters are gone (a stage visited again, or the
        counters this one replaced after a reload): part of :meth:`totals`."""
        register(self)

    def _after_fork(self) -> None:
        """In a forked child: counts of this process only (and a fresh lock if its own)."""
        if self._own_lock:
            self.lock = threading.Lock()
        self.retired = _NONE
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
            replaced = self._arms.get(stage)
            if replaced is not None:  # its counts go on in the totals
                self.retired = _add(self.retired, _triple(replaced))
            arms = self._arms[stage] = self._new_arms()
        return arms

    def totals(self) -> ArmTriple:
        """Control, treatment and targeted: every call counted, across every stage visit.

        Hold :attr:`lock`. With the visits these counters replaced (:attr:`retired`).
        """
        total = self.retired
        for arms in self._arms.values():
            total = _add(total, _triple(arms))
        return total

    def _new_arms(self) -> Arms:
        arms = _new_arms()
        if self.on_visit is not None:
            self.on_visit(arms.control, arms.treatment)
        return arms

    def add(
        self, counts: ArmCounts, error: bool, latency_s: float | None, fallback: bool = False
    ) -> None:
        """Count one call's outcome in ``counts``; hold :attr:`lock`."""
        counts.calls += 1
        if error:
            counts.errors += 1
        if fallback:
            counts.fallbacks += 1
        if latency_s is not None:
            counts.latency_n += 1
            counts.latency_s += latency_s

    def record(
        self, counts: ArmCounts, error: bool, latency_s: float | None, fallback: bool = False
    ) -> None:
        """:meth:`add`, under the lock."""
        with self.lock:
            self.add(counts, error, latency_s, fallback)

    def stats(self, stage: int) -> tuple[ArmStats, ArmStats, ArmStats]:
        """Frozen stats of ``stage``: control, treatment, and the targeted calls of both paths.

        Pending latencies are included, not folded (the gate learns from the folds).
        """
        arms = self.arms(stage)
        with self.lock:
            return _triple(arms)
