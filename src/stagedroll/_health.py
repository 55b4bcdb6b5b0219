"""The health gate of one rollout: events, the sequential tests, and the verdict.

Outcomes of the compared arms (bucketed units in control or treatment) reach
:meth:`Health.observe` under the rollout's lock. They become events of three tests:

- **errors**: the first error of each unit in the rollout (every error of a call without
  a unit), one-sided mixture test of ``r <= r0``;
- **latency** (when the policy asks for it): likewise the first slow call of each unit, a
  call being slow above the policy's SLO or the running p95 of control calls;
- **sample ratio**: the distinct units of each arm in the stage visit, two-sided, ``r = 1``.

With a latency test, each alpha of the policy is split between the two tests by
``latency_share`` (default 0.5); without one, the error test has all of it. The verdict:
roll back when a test reaches ``1/alpha_rollback`` (its part), freeze when it reaches
``1/alpha_freeze`` (its part) with ``min_events`` treatment events.

With a store shared by processes the events are not counted here but queued in an
:class:`~._pool.Outbox`, and the tests take the fleet's pooled totals (:meth:`Health.absorb`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ._latency import SlowThreshold
from ._outcomes import UNIT_CAP, ArmCounts
from ._policy import Health as HealthPolicy
from ._pool import Outbox, Totals
from ._seen import SeenUnits
from ._sequential import MixtureTest
from ._state import Action

__all__ = ["Health", "HealthReport", "Verdict"]

_STRIDE = 32  # of a folded batch of control latencies, every 32nd teaches the threshold...
_FULL_SAMPLE = 4096  # ...once this many have


def _log_threshold(alpha: float, share: float) -> float:
    """``log(1 / (alpha * share))``; ``inf`` when the test gets no part of alpha."""
    # The sum of logs: alpha * share may underflow to 0.0 (alpha 1e-12, share 5e-324).
    return -(math.log(alpha) + math.log(share)) if share > 0 else math.inf


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the tests say: freeze, roll back (an :class:`Action`), or nothing (``None``)."""

    action: Action | None
    test: str | None = None
    """The test that fired: ``"errors"`` or ``"latency"``."""


_HEALTHY = Verdict(None)


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The evidence of a rollout's health gate, as ``status()`` and the history show it.

    ``e_errors`` and ``e_latency`` are the e-values of the two tests (1 before any event;
    a freeze at ``1/alpha`` of each test's part), ``r_errors`` and ``r_latency`` the
    estimated ratios of the new path's rate to the old one's at the current share.
    ``*_events`` count first events per unit in the current evidence epoch.
    """

    enabled: bool
    share: float
    """The treatment's share of bucketed units in force (0 to 1)."""
    e_errors: float
    e_latency: float
    e_sample_ratio: float
    r_errors: float | None
    r_latency: float | None
    error_events_treatment: int
    error_events_control: int
    slow_events_treatment: int
    slow_events_control: int
    units_treatment: int
    units_control: int
    slow_threshold_s: float | None
    """The latency above which a call counts as slow, ``None`` until it is known."""
    freeze_at_errors: float
    """The e-value at which the error test freezes: ``1 / (alpha_freeze * its part)``."""
    freeze_at_latency: float
    rollback_at_errors: float
    """The e-value at which the error test rolls back: ``1 / (alpha_rollback * its part)``."""
    rollback_at_latency: float
    sample_ratio_ok: bool
    """``False`` once the sample-ratio test has fired in this stage visit (it is checked when
    the status is read and before an automatic advance): automatic advances stop until the
    stage changes or an operator resumes the rollout."""

    def evidence(self) -> Mapping[str, float | int | str | None]:
        """The report as a flat mapping, for the history entry and the structlog event."""
        return MappingProxyType(
            {
                "share": self.share,
                "e_errors": _round(self.e_errors),
                "e_latency": _round(self.e_latency),
                "e_sample_ratio": _round(self.e_sample_ratio),
                "r_errors": _round(self.r_errors),
                "r_latency": _round(self.r_latency),
                "error_events_treatment": self.error_events_treatment,
                "error_events_control": self.error_events_control,
                "slow_events_treatment": self.slow_events_treatment,
                "slow_events_control": self.slow_events_control,
                "units_treatment": self.units_treatment,
                "units_control": self.units_control,
                "slow_threshold_s": _round(self.slow_threshold_s),
            }
        )


def _exp(log_value: float) -> float:
    return math.exp(log_value) if log_value < 709.0 else math.inf


def _round(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(f"{value:.6g}")


class _ArmView:
    """The units one arm of a paired rollout has had a first event of (keys ``prefix + unit``)."""

    __slots__ = ("prefix", "seen")

    def __init__(self, seen: SeenUnits, prefix: str) -> None:
        self.seen = seen
        self.prefix = prefix

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.prefix + key in self.seen


class Health:
    """The health gate of one rollout; call its methods with the rollout's lock held."""

    __slots__ = (
        "_arms",
        "_frozen_units",
        "error_units",
        "errors",
        "log_freeze",
        "log_rollback",
        "log_sample_ratio",
        "min_events",
        "outbox",
        "paired",
        "sample_ratio_fired",
        "slow",
        "slow_units",
        "threshold",
        "timed",
    )

    def __init__(self, policy: HealthPolicy, *, paired: bool = False) -> None:
        self.errors = MixtureTest(r0=policy.r0)
        self.slow = MixtureTest(r0=policy.r0)
        self.error_units = SeenUnits()
        self.slow_units = SeenUnits()
        if policy.latency_slo_ms is not None:
            self.threshold = SlowThreshold(policy.latency_slo_ms / 1000)
        elif policy.latency_p95:
            self.threshold = SlowThreshold()  # learnt from the old path's calls
        else:
            self.threshold = SlowThreshold(math.inf)  # latency is not tested: nothing is slow
        parts = (1.0 - policy.latency_part, policy.latency_part)
        self.log_freeze = tuple(_log_threshold(policy.alpha_freeze, p) for p in parts)
        self.log_rollback = tuple(_log_threshold(policy.alpha_rollback, p) for p in parts)
        self.log_sample_ratio = -math.log(policy.alpha_sample_ratio)
        self.min_events = policy.min_events
        self.paired = paired
        """Whether each compared call has both arms (a shadow, a migration): a unit's first
        event is then counted per arm."""
        self.timed = False
        """Whether steps also wait on the clock (automatic advances): checked at each fold."""
        self._arms: tuple[ArmCounts, ...] = ()
        self._frozen_units: tuple[int, int] | None = None
        self.sample_ratio_fired = False
        """Whether the sample-ratio test fired in this stage visit (it stays fired)."""
        self.outbox: Outbox | None = None
        """With a store shared by processes: the events and units waiting to be pooled.

        The tests then count only the pooled totals (see :meth:`absorb`), never a local
        event on its own, and no event makes a step due on the caller's thread.
        """

    def track(self, control: ArmCounts, treatment: ArmCounts) -> None:
        """Make ``control`` and ``treatment`` the arms of the stage visit now in force."""
        self._arms = (control, treatment)
        self._frozen_units = None
        self.sample_ratio_fired = False
        control.slow_at = treatment.slow_at = self.threshold.value
        if self.paired:  # one unit on both arms: each arm sees its own first events
            control.slow_seen = _ArmView(self.slow_units, "c:")
            treatment.slow_seen = _ArmView(self.slow_units, "t:")
        else:
            control.slow_seen = treatment.slow_seen = self.slow_units

    def set_share(self, share: float) -> None:
        """Take the following events at ``share`` (the stage's percent / 100)."""
        self.errors.set_share(share)
        self.slow.set_share(share)

    def reset(self) -> None:
        """Start a new epoch of evidence (an operator resumed the rollout)."""
        self.errors.reset()
        self.slow.reset()
        self.error_units.clear()
        self.slow_units.clear()
        self.sample_ratio_fired = False

    def after_fork(self) -> None:
        """In a forked child: the evidence, the units and the latencies were the parent's."""
        self.reset()
        if self.outbox is not None:
            self.outbox.renew()  # the parent flushes its own queue
        self.threshold.reset()
        self._frozen_units = None
        for counts in self._arms:
            counts.reset()
            counts.count_units()  # again, even if the parent's arm had reached the cap
            counts.slow_at = self.threshold.value

    def learn(self, latencies: list[float]) -> None:
        """Learn the slow-call threshold from a folded batch of control latencies."""
        before = self.threshold.value
        # Every latency until the threshold has a good sample, then every 32nd (cheaper).
        step = 1 if self.threshold.count < _FULL_SAMPLE else _STRIDE
        self.threshold.add_all(latencies[::step])
        if self.threshold.value != before:
            self._spread()

    def _spread(self) -> None:
        for counts in self._arms:
            counts.slow_at = self.threshold.value

    def _unit(self, counts: ArmCounts, key: str | None) -> bool:
        """Count ``key`` as a unit of ``counts`` if it is new; return whether it was."""
        if not counts.counting or key in counts.units:  # None is always in: see count_units
            return False
        if len(counts.units) <= UNIT_CAP:
            counts.units.add(key)
            counts.unit_count += 1
            if self.outbox is not None:
                if key is not None and self._current(counts):
                    self.outbox.unit(counts.enabled, key)
                return False
            # A new unit of the new path can make min_units, hence an advance, due.
            return self.timed and counts.enabled
        counts.stop_counting()
        if self._frozen_units is None and counts in self._arms:
            # One arm is full: the sample-ratio test keeps the counts of this moment.
            control, treatment = self._arms
            self._frozen_units = (treatment.units_seen(), control.units_seen())
        return False

    def _event(self, test: MixtureTest, seen: SeenUnits, key: str | None, treatment: bool) -> bool:
        """Count the first event of unit ``key``; return whether it may fire a treatment step."""
        if not test.active:
            return False  # no comparison at this share: the unit's first event is still to come
        if key is not None and self.paired:
            key = ("t:" if treatment else "c:") + key  # one unit, on both arms
        if key is not None and not seen.add(key):
            return False
        if self.outbox is not None:
            self.outbox.event("errors" if test is self.errors else "slow", treatment, key)
            return False
        if treatment:
            test.add(1, 0)
        else:
            test.add(0, 1)
        return treatment

    def note(self, counts: ArmCounts, key: str | None, latency_s: float) -> bool:
        """Take a successful call (new unit or slow); return whether a step may be due."""
        due = self._unit(counts, key)
        if latency_s > self.threshold.value and self._current(counts):
            due = self._event(self.slow, self.slow_units, key, counts.enabled) or due
        return due

    def observe(self, counts: ArmCounts, key: str | None, *, error: bool) -> bool:
        """Take a failed call, or one without a latency; return whether a step may be due."""
        due = self._unit(counts, key)
        if error and self._current(counts):
            due = self._event(self.errors, self.error_units, key, counts.enabled) or due
        return due

    def absorb(self, totals: Totals, shares: list[float]) -> None:
        """Set the tests to the fleet's pooled counts of the epoch; ``shares`` by stage.

        The tests are rebuilt from the counters of every stage visit of the epoch, each at
        its stage's share, so every process evaluates the same e-process. Totals of another
        visit are ignored (flushes of one rollout are serialized, so they come in order).
        """
        outbox = self.outbox
        if outbox is None or (totals.epoch, totals.stage) != (outbox.batch.epoch,
                                                               outbox.batch.stage):  # fmt: skip
            return
        for test, kind in ((self.errors, "errors"), (self.slow, "slow")):
            test.reset()
            for stage, events in totals.visits:
                test.set_share(shares[stage] if 0 <= stage < len(shares) else 0.0)
                test.set_current(events.get(f"{kind}.t", 0), events.get(f"{kind}.c", 0))
        if self._arms:
            control, treatment = self._arms
            control.pooled_units = max(control.pooled_units, totals.units_control)
            treatment.pooled_units = max(treatment.pooled_units, totals.units_treatment)

    def _current(self, counts: ArmCounts) -> bool:
        """Whether ``counts`` belongs to the stage visit in force.

        A call decided before a stage change can end after it; its event belongs to the old
        share, which the tests have left behind, so it is not counted (whatever its arm).
        """
        arms = self._arms
        return not arms or counts is arms[0] or counts is arms[1]

    def verdict(self) -> Verdict:
        """Roll back, freeze, or nothing, from the evidence so far."""
        tests = (("errors", self.errors), ("latency", self.slow))
        for (name, test), log_rollback in zip(tests, self.log_rollback, strict=True):
            if test.reaches(log_rollback):
                return Verdict(Action.ROLLBACK, name)
        for (name, test), log_freeze in zip(tests, self.log_freeze, strict=True):
            if test.events_treatment >= self.min_events and test.reaches(log_freeze):
                return Verdict(Action.FREEZE, name)
        return _HEALTHY

    def sample_ratio_log_e(self, control: ArmCounts, treatment: ArmCounts, share: float) -> float:
        """The log e-value of the sample-ratio test on the stage visit's distinct units."""
        test = MixtureTest(two_sided=True)
        test.set_share(share)
        units = self._frozen_units
        if units is None or self._arms != (control, treatment):
            units = (treatment.units_seen(), control.units_seen())
        test.add(*units)
        return test.log_e()

    def report(self, control: ArmCounts, treatment: ArmCounts, share: float) -> HealthReport:
        """The evidence now; hold the rollout's lock."""
        srm = self.sample_ratio_log_e(control, treatment, share)
        if srm >= self.log_sample_ratio and self._arms == (control, treatment):
            self.sample_ratio_fired = True
        threshold = self.threshold.value
        return HealthReport(
            enabled=True,
            share=share,
            e_errors=self.errors.e_value,
            e_latency=self.slow.e_value,
            e_sample_ratio=_exp(srm),
            r_errors=self.errors.ratio_estimate(),
            r_latency=self.slow.ratio_estimate(),
            error_events_treatment=self.errors.events_treatment,
            error_events_control=self.errors.events_control,
            slow_events_treatment=self.slow.events_treatment,
            slow_events_control=self.slow.events_control,
            units_treatment=treatment.units_seen(),
            units_control=control.units_seen(),
            slow_threshold_s=threshold if math.isfinite(threshold) else None,
            freeze_at_errors=_exp(self.log_freeze[0]),
            freeze_at_latency=_exp(self.log_freeze[1]),
            rollback_at_errors=_exp(self.log_rollback[0]),
            rollback_at_latency=_exp(self.log_rollback[1]),
            sample_ratio_ok=not self.sample_ratio_fired,
        )


DISABLED = HealthReport(
    enabled=False,
    share=0.0,
    e_errors=1.0,
    e_latency=1.0,
    e_sample_ratio=1.0,
    r_errors=None,
    r_latency=None,
    error_events_treatment=0,
    error_events_control=0,
    slow_events_treatment=0,
    slow_events_control=0,
    units_treatment=0,
    units_control=0,
    slow_threshold_s=None,
    freeze_at_errors=math.inf,
    freeze_at_latency=math.inf,
    rollback_at_errors=math.inf,
    rollback_at_latency=math.inf,
    sample_ratio_ok=True,
)
"""The report of a rollout without a health gate (disabled, or not following stages)."""
