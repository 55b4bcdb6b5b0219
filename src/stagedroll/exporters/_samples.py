"""What both exporters read: the snapshot, with its counters made monotonic.

A rollout's :class:`~stagedroll.ArmStats` count the current stage visit only, and start
again at zero when the stage changes (or a reloaded policy changes the rollout, or the
process forks). A metrics counter must never go down, so :class:`Totals` keeps, per
rollout, what the visits that ended had counted when they were last read, and adds the
current visit's counts to it.

A visit ends when the stage changes. :class:`Totals` sees it three ways: the stage in the
snapshot differs from the stage at the previous read; its ``on_change`` listener saw the
stage change (a visit left and came back between two reads); or a count went down (any
other restart). The calls a visit counted after the last read before it ended are lost to
the counters (at most a scrape interval's worth); the counters stay monotonic.

Everything here reads public names only, under one lock (a scrape runs on the metrics
server's thread, the listeners on the store's or the caller's).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import structlog

from stagedroll import (
    ArmStats,
    HealthReport,
    Rollouts,
    RolloutState,
    RolloutStatus,
    Snapshot,
    TransitionEvent,
)

__all__ = [
    "ARMS",
    "OUTCOMES",
    "STATES",
    "ArmTotals",
    "RolloutSample",
    "Sample",
    "Totals",
    "evidence",
    "skipped",
    "thresholds",
]

ARMS = ("control", "treatment", "targeted")
"""The arms of a rollout's counters: the compared ones, and calls routed by targeting."""
OUTCOMES = ("success", "error", "fallback")
"""How a call ended: it succeeded; it failed and the failure reached the caller (an old
path's error, or a new path's re-raised); the new path failed and the fallback answered."""
STATES = ("running", "frozen", "rolled_back", "killed", "complete")
"""Every :class:`~stagedroll.Status`, as its value."""
MAX_ROLLOUTS = 10_000
"""Rollouts whose totals are remembered at most (the rest are exported as read)."""

_log = structlog.get_logger("stagedroll")


def evidence(health: HealthReport) -> tuple[tuple[str, float], ...]:
    """The health gate's e-value per test: errors, latency, sample_ratio."""
    return (
        ("errors", health.e_errors),
        ("latency", health.e_latency),
        ("sample_ratio", health.e_sample_ratio),
    )


def thresholds(health: HealthReport) -> list[tuple[str, str, float]]:
    """The e-value per test and step (freeze, rollback) at which the gate steps.

    An infinite one is left out: that test is off.
    """
    limits = (
        ("errors", "freeze", health.freeze_at_errors),
        ("errors", "rollback", health.rollback_at_errors),
        ("latency", "freeze", health.freeze_at_latency),
        ("latency", "rollback", health.rollback_at_latency),
    )
    return [(test, step, limit) for test, step, limit in limits if math.isfinite(limit)]


def skipped(exporter: str, rollout: str | None, exc: BaseException) -> None:
    """Log that a rollout (or, with ``None``, a whole read) was left out of a collection."""
    with contextlib.suppress(Exception):  # a broken logging setup must not break a scrape
        _log.warning(
            "exporter.read_failed",
            logger="stagedroll",
            exporter=exporter,
            rollout=rollout,
            error_type=type(exc).__name__,
            error=str(exc)[:200],
        )


@dataclass(frozen=True, slots=True)
class ArmTotals:
    """One arm's calls since the exporter started, across stage visits."""

    success: int = 0
    error: int = 0
    """Failures that reached the caller (``errors - fallbacks`` of :class:`ArmStats`)."""
    fallback: int = 0
    timed: int = 0
    """Calls whose latency was measured (``ArmStats.timed``)."""
    latency_s: float = 0.0
    """The sum of the measured latencies (``mean_latency_s * timed``)."""

    @property
    def calls(self) -> int:
        """Every call, whatever its outcome."""
        return self.success + self.error + self.fallback

    def outcome(self, name: str) -> int:
        """The count of outcome ``name`` (one of :data:`OUTCOMES`)."""
        return {"success": self.success, "error": self.error, "fallback": self.fallback}[name]


@dataclass(frozen=True, slots=True)
class RolloutSample:
    """One rollout as read: its status, and each arm's totals across visits."""

    status: RolloutStatus
    arms: Mapping[str, ArmTotals]

    @property
    def in_policy(self) -> bool:
        """Whether the policy in force has the rollout (``False`` once a reload removed it).

        Only such a rollout's gauges are exported; its counters always are.
        """
        return self.status.in_policy


@dataclass(frozen=True, slots=True)
class Sample:
    """One read of every rollout, with this process's transitions and internal failures."""

    snapshot: Snapshot
    rollouts: tuple[RolloutSample, ...]
    transitions: Mapping[tuple[str, str, str], int]
    """Transitions this process made since the exporter started, by (rollout, action,
    trigger); the trigger is ``health_gate`` for an automatic step, else ``operator``."""

    @property
    def in_policy(self) -> tuple[RolloutSample, ...]:
        """The rollouts the policy in force has: those whose gauges are exported.

        A rollout a reloaded policy removed stays in the snapshot (its stored state stays),
        frozen in its last state; exporting its state, stage or evidence would keep an
        alert on it firing forever. Its counters stay (a counter never goes away), and its
        gauges come back if a later policy has it again.
        """
        return tuple(rollout for rollout in self.rollouts if rollout.in_policy)


def _raw(stats: ArmStats) -> tuple[int, int, int, int, float]:
    """success, error, fallback, timed, latency sum of one visit's stats."""
    fallback = max(0, min(stats.fallbacks, stats.errors))
    error = max(0, stats.errors - fallback)
    success = max(0, stats.calls - stats.errors)
    timed = max(0, stats.timed)
    mean = stats.mean_latency_s
    latency = mean * timed if mean is not None and math.isfinite(mean) and mean >= 0 else 0.0
    return success, error, fallback, timed, latency


class _Visits:
    """What :class:`Totals` remembers of one rollout between two reads."""

    __slots__ = ("base", "changes", "last", "pending", "reported", "stage")

    def __init__(self, stage: int, changes: int) -> None:
        self.stage = stage
        self.changes = changes
        self.pending: int | None = None
        """A stage the snapshot showed before the listener told of it."""
        self.last: dict[str, tuple[int, int, int, int, float]] = {}
        self.base: dict[str, tuple[int, int, int, int, float]] = {}
        self.reported: dict[str, ArmTotals] = {}


class Totals:
    """Reads a :class:`~stagedroll.Rollouts`' snapshot, with counters monotonic across visits.

    Subscribes to ``on_transition`` (to count this process's transitions) and ``on_change``
    (to see stage changes between two reads); :meth:`stop` ends both.
    """

    def __init__(self, rollouts: Rollouts) -> None:
        if not isinstance(rollouts, Rollouts):
            raise TypeError(f"rollouts: expected a stagedroll.Rollouts, not {type(rollouts)!r}")
        self.rollouts = rollouts
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._stopped = False
        self._transitions: Counter[tuple[str, str, str]] = Counter()
        self._stages: dict[str, tuple[int, int]] = {}
        """Per rollout, the stage changes the listener saw, and the last stage it saw."""
        self._visits: dict[str, _Visits] = {}
        for name, status in rollouts.snapshot().rollouts.items():
            self._stages[name] = (0, status.stage)
        rollouts.on_transition(self._on_transition)
        rollouts.on_change(self._on_change)

    def stop(self) -> None:
        """Stop counting transitions and stage changes (the listeners stay, idle)."""
        with self._lock:
            self._stopped = True
        with contextlib.suppress(ValueError):  # removed already
            self.rollouts.hooks.remove(self._on_transition)

    def _on_transition(self, event: TransitionEvent) -> None:
        trigger = "health_gate" if event.automatic else "operator"
        with self._lock:
            if not self._stopped and len(self._transitions) < MAX_ROLLOUTS * 8:
                self._transitions[(event.rollout, str(event.action), trigger)] += 1

    def _on_change(self, name: str, state: RolloutState) -> None:
        with self._lock:
            if self._stopped:
                return
            changes, stage = self._stages.get(name, (0, state.stage))
            if state.stage != stage:
                changes += 1
            if name in self._stages or len(self._stages) < MAX_ROLLOUTS:
                self._stages[name] = (changes, state.stage)

    def read(self, exporter: str) -> Sample:
        """A snapshot, and each rollout's totals; a rollout that fails to read is left out."""
        snapshot = self.rollouts.snapshot()
        samples: list[RolloutSample] = []
        with self._lock:
            if os.getpid() != self._pid:  # a forked child: the counts were the parent's
                self._pid = os.getpid()
                self._transitions.clear()
                self._visits.clear()
            for name, status in snapshot.rollouts.items():
                sample = self._sample(exporter, name, status)
                if sample is not None:
                    samples.append(sample)
            transitions = MappingProxyType(dict(self._transitions))
        return Sample(snapshot, tuple(samples), transitions)

    def _sample(self, exporter: str, name: str, status: RolloutStatus) -> RolloutSample | None:
        """``name``'s sample, or ``None`` (logged) if it fails to read; hold the lock."""
        try:
            return RolloutSample(status, self._totals(name, status))
        except Exception as exc:  # one rollout's failure must not fail the scrape
            skipped(exporter, name, exc)
            return None

    def _totals(self, name: str, status: RolloutStatus) -> Mapping[str, ArmTotals]:
        """The totals of ``name``'s arms, with ``status`` read now; hold the lock."""
        changes, seen = self._stages.get(name, (0, status.stage))
        visits = self._visits.get(name)
        if visits is None:
            visits = _Visits(status.stage, changes)
            if len(self._visits) < MAX_ROLLOUTS:
                self._visits[name] = visits
        raw = {
            "control": _raw(status.control),
            "treatment": _raw(status.treatment),
            "targeted": _raw(status.targeted),
        }
        if status.stage != visits.stage:
            ended = True
            visits.pending = status.stage if seen != status.stage else None
        elif changes != visits.changes:
            told = visits.pending is not None and changes == visits.changes + 1
            ended = not (told and seen == visits.pending)
            visits.pending = None
        else:
            ended = any(raw[arm][i] < visits.last[arm][i] for arm in visits.last for i in range(4))
        visits.stage, visits.changes = status.stage, changes
        result: dict[str, ArmTotals] = {}
        for arm, now in raw.items():
            base = visits.base.get(arm, (0, 0, 0, 0, 0.0))
            if ended:
                last = visits.last.get(arm, (0, 0, 0, 0, 0.0))
                base = tuple(b + v for b, v in zip(base, last, strict=True))  # type: ignore[assignment]
                visits.base[arm] = base
            visits.last[arm] = now
            total = [b + v for b, v in zip(base, now, strict=True)]
            before = visits.reported.get(arm)
            if before is not None:  # never down, whatever a float sum or a race does
                previous = (before.success, before.error, before.fallback, before.timed,
                            before.latency_s)  # fmt: skip
                total = [max(t, b) for t, b in zip(total, previous, strict=True)]
            totals = ArmTotals(
                int(total[0]), int(total[1]), int(total[2]), int(total[3]), float(total[4])
            )
            visits.reported[arm] = totals
            result[arm] = totals
        return MappingProxyType(result)
