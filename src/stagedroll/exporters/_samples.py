"""What both exporters read: the snapshot, its counters per arm and outcome.

A rollout's :class:`~stagedroll.ArmStats` for ``control``, ``treatment`` and ``targeted``
count the current stage visit only; ``RolloutStatus.totals`` counts every call this process
recorded since it started, across visits and reloads: the counters read those. A count
that would go down (a forked child starts from zero) is held at its highest, so the
counters stay monotonic.

Everything here reads public names only, under one lock (a scrape runs on the metrics
server's thread, the transition hooks on the store's or the caller's).
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


class Totals:
    """Reads a :class:`~stagedroll.Rollouts`' snapshot, with counters monotonic across visits.

    Subscribes to ``on_transition`` (to count this process's transitions); :meth:`stop`
    ends it.
    """

    def __init__(self, rollouts: Rollouts) -> None:
        if not isinstance(rollouts, Rollouts):
            raise TypeError(f"rollouts: expected a stagedroll.Rollouts, not {type(rollouts)!r}")
        self.rollouts = rollouts
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._stopped = False
        self._transitions: Counter[tuple[str, str, str]] = Counter()
        self._reported: dict[str, dict[str, ArmTotals]] = {}
        """Per rollout and arm, the totals last reported (a counter never goes down)."""
        rollouts.on_transition(self._on_transition)

    def stop(self) -> None:
        """Stop counting transitions."""
        with self._lock:
            self._stopped = True
        with contextlib.suppress(ValueError):  # removed already
            self.rollouts.hooks.remove(self._on_transition)

    def _on_transition(self, event: TransitionEvent) -> None:
        trigger = "health_gate" if event.automatic else "operator"
        with self._lock:
            if not self._stopped and len(self._transitions) < MAX_ROLLOUTS * 8:
                self._transitions[(event.rollout, str(event.action), trigger)] += 1

    def read(self, exporter: str) -> Sample:
        """A snapshot, and each rollout's totals; a rollout that fails to read is left out."""
        snapshot = self.rollouts.snapshot()
        samples: list[RolloutSample] = []
        with self._lock:
            if os.getpid() != self._pid:  # a forked child: the counts were the parent's
                self._pid = os.getpid()
                self._transitions.clear()
                self._reported.clear()
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
        """The totals of ``name``'s arms, from ``status`` read now; hold the lock."""
        reported = self._reported.get(name)
        if reported is None:
            reported = {}
            if len(self._reported) < MAX_ROLLOUTS:
                self._reported[name] = reported
        result: dict[str, ArmTotals] = {}
        for arm, stats in zip(ARMS, status.totals, strict=True):
            total = _raw(stats)
            before = reported.get(arm)
            if before is not None:  # never down, whatever a float sum or a fork does
                previous = (before.success, before.error, before.fallback, before.timed,
                            before.latency_s)  # fmt: skip
                total = tuple(max(t, b) for t, b in zip(total, previous, strict=True))  # type: ignore[assignment]
            totals = ArmTotals(int(total[0]), int(total[1]), int(total[2]), int(total[3]),
                               float(total[4]))  # fmt: skip
            reported[arm] = totals
            result[arm] = totals
        return MappingProxyType(result)
