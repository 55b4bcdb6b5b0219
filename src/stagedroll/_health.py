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
:class:`~._pool.Outbox`, and the tests take the fleet's pooled totals (:meth:`Health.absorb`),
each event at the share it was observed at. While processes report events or units at
another share in the same stage visit (a percent edit rolling out), the gate does not act:
:attr:`Health.others` names their shares until they have been quiet for a few flushes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ._latency import SlowThreshold
from ._outcomes import UNIT_CAP, ArmCounts
from ._policy import Health as HealthPolicy
from ._pool import Outbox, Totals, share_text
from ._sample_ratio import sample_ratio_log_e
from ._seen import SeenUnits
from ._sequential import BLOCKS, MixtureTest, block_of
from ._state import Action

__all__ = ["Health", "HealthReport", "Verdict"]

AGREE_AFTER = 3
"""Flushes without growth at another share after which the processes are taken to agree."""
_SHARE_MIN = 1e-7
MAX_SHARES = 64
"""Shares of one visit's counters judged at most (those with the most events); a store
holds what it is given, and this bounds the work of a flush."""
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
    shares_elsewhere: tuple[float, ...] = ()
    """Shares other than this process's at which processes sharing the store recently counted
    events or units of this stage visit (they run another version of the policy): while it
    is not empty, the gate takes no automatic step."""

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


class _Agreement:
    """Whether the processes pooling a stage visit count at one share (see Health.absorb)."""

    __slots__ = ("activity", "others", "recent", "told")

    def __init__(self) -> None:
        self.others: tuple[float, ...] = ()
        """Shares at which other processes count in this stage visit."""
        self.activity: dict[str, int] | None = None
        """Per share, the sum of the visit's counters at the last flush (``None``: none yet)."""
        self.recent: dict[str, int] = {}
        """Per share other than this process's: flushes since its counters last grew."""
        self.told = False
        """Whether the disagreement in force was returned to be logged."""

    def forget(self) -> None:
        """A new stage visit or epoch: compare afresh."""
        self.others, self.activity, self.recent, self.told = (), None, {}, False


class Health:
    """The health gate of one rollout; call its methods with the rollout's lock held."""

    __slots__ = (
        "_agreement",
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
        "tests_latency",
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
        self.tests_latency = policy.latency_slo_ms is not None or policy.latency_p95
        """Whether a latency test watches the compared arms (their every call is timed)."""
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
        self._agreement = _Agreement()

    @property
    def others(self) -> tuple[float, ...]:
        """Shares at which other processes count in this stage visit (see :meth:`absorb`)."""
        return self._agreement.others

    def inherit(self, old: Health) -> None:
        """Keep ``old``'s evidence: the policy changed, but not its health settings.

        The tests, the units that had an event, the learnt latency threshold and the queued
        events carry over, so a percent edit neither loses the evidence of the epoch nor
        re-scores it: each event keeps the share it was observed at.
        """
        self.errors, self.slow = old.errors, old.slow
        self.error_units, self.slow_units = old.error_units, old.slow_units
        self.threshold = old.threshold
        if self.outbox is not None and old.outbox is not None:
            self.outbox = old.outbox
            self._agreement = old._agreement  # shared: a flush in flight updates it too

    def track(self, control: ArmCounts, treatment: ArmCounts) -> None:
        """Make ``control`` and ``treatment`` the arms of the stage visit now in force.

        They count their distinct units from now on, and carry the marks the hot path
        reads to tell a call the gate must see (the slow-call threshold, the units seen).
        """
        control.count_units()
        treatment.count_units()
        control.timed = treatment.timed = self.tests_latency
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

    def visit(self) -> None:
        """A new stage visit begins: the tests get its start points."""
        self.errors.visit()
        self.slow.visit()
        self._forget_shares()

    def _forget_shares(self) -> None:
        self._agreement.forget()

    def reset(self) -> None:
        """Start a new epoch of evidence (an operator resumed the rollout)."""
        self.errors.reset()
        self.slow.reset()
        self.error_units.clear()
        self.slow_units.clear()
        self.sample_ratio_fired = False
        self._forget_shares()

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
                    self.outbox.unit(counts.enabled, key, self.errors.share)
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
            kind = "errors" if test is self.errors else "slow"
            self.outbox.event(kind, treatment, key, test.share)
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

    def absorb(self, totals: Totals) -> tuple[float, ...]:
        """Set the tests to the fleet's pooled counts of the epoch; return new disagreement.

        The tests are rebuilt from the counters of every stage visit of the epoch, each
        event at the share and in the block it was counted with, so every process evaluates
        the same e-process whatever policy it runs. Totals of another visit are ignored
        (flushes of one rollout are serialized, so they come in order). Returns the shares
        of other processes when they newly disagree with this one (to be logged), else ``()``.
        """
        outbox = self.outbox
        if outbox is None or (totals.epoch, totals.stage) != (outbox.batch.epoch,
                                                               outbox.batch.stage):  # fmt: skip
            return ()
        counters = [events for _, events in totals.visits]
        for test, kind in ((self.errors, "errors"), (self.slow, "slow")):
            visits = [_entries(events, kind) for events in counters]
            test.set_counts(visits)
            current = visits[-1] if visits else []
            outbox.blocks[kind] = block_of(sum(t + c for _, _, t, c in current))
        if self._arms:
            control, treatment = self._arms
            control.pooled_units = max(control.pooled_units, totals.units_control)
            treatment.pooled_units = max(treatment.pooled_units, totals.units_treatment)
        return self._compare(counters[-1] if counters else {}, totals.own)

    def _compare(self, counters: Mapping[str, int], own: Mapping[str, int]) -> tuple[float, ...]:
        """Note the shares other than this process's whose counters grew since the last flush.

        Growth is what the counters gained beyond what this flush added (``own``): events
        this process queued before a reload changed its share are its own. At the first
        flush of a visit there is nothing to compare with: every other share that has
        counters is taken to be in use, until it stays still for :data:`AGREE_AFTER`
        flushes. Returns the other shares when they are newly seen to grow (to be logged).
        """
        activity: dict[str, int] = {}
        for name, n in counters.items():
            share = name.partition("@")[2].partition("#")[0]
            if _share_of(share) is not None:
                activity[share] = activity.get(share, 0) + n
        mine = share_text(self.errors.share)
        state = self._agreement
        before = state.activity
        state.activity = activity
        recent = {share: n + 1 for share, n in state.recent.items() if n + 1 < AGREE_AFTER}
        grew = []
        for share, n in activity.items():
            if share == mine or n <= 0:
                continue
            if before is None:
                recent[share] = 0  # no baseline: in use until shown otherwise (not logged)
            elif n > before.get(share, 0) + own.get(share, 0):
                recent[share] = 0
                grew.append(share)
        recent.pop(mine, None)
        state.recent = recent
        state.others = tuple(sorted(float(share) for share in recent))
        if not state.others:
            state.told = False
        elif grew and not state.told:
            state.told = True
            return state.others
        return ()

    def _current(self, counts: ArmCounts) -> bool:
        """Whether ``counts`` belongs to the stage visit in force.

        A call decided before a stage change can end after it; its event belongs to the old
        share, which the tests have left behind, so it is not counted (whatever its arm).
        """
        arms = self._arms
        return not arms or counts is arms[0] or counts is arms[1]

    def verdict(self) -> Verdict:
        """Roll back, freeze, or nothing, from the evidence so far.

        Nothing while processes count at other shares in this visit (:attr:`others`).
        """
        if self.others:
            return _HEALTHY
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
        units = self._frozen_units
        if units is None or self._arms != (control, treatment):
            units = (treatment.units_seen(), control.units_seen())
        return sample_ratio_log_e(*units, share)

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
            shares_elsewhere=self.others,
        )


def _share_of(text: str) -> float | None:
    """The share a counter name spells, if it is one a policy can give.

    A policy's percents have at most four decimals, so its shares lie within
    [1e-6, 1 - 1e-6]; a name outside was written behind stagedroll's back, and nearer 0 or 1
    a float could not tell the alternatives from the share anyway.
    """
    try:
        share = float(text)
    except ValueError:
        return None
    return share if _SHARE_MIN <= share <= 1.0 - _SHARE_MIN else None


def _entries(counters: Mapping[str, int], kind: str) -> list[tuple[float, int, int, int]]:
    """The events of ``kind`` in a visit's counters: ``(share, block, treatment, control)``.

    Counter names are ``{kind}.{t|c}@{share}#{block}`` (see :mod:`~._pool`); a name that is
    not (written by another version, or behind the store's back) is left out.
    """
    cells: dict[tuple[float, int], list[int]] = {}
    for name, n in counters.items():
        head, _, rest = name.partition("@")
        text, _, number = rest.partition("#")
        digits = number.isascii() and number.isdigit()
        if head not in (f"{kind}.t", f"{kind}.c") or not digits or n <= 0:
            continue
        share = _share_of(text)
        if share is None:
            continue
        block = min(int(number), BLOCKS + 1) if len(number) < 6 else BLOCKS + 1
        cell = cells.setdefault((share, block), [0, 0])
        cell[0 if head.endswith(".t") else 1] += n
    events: dict[float, int] = {}
    for (share, _), (t, c) in cells.items():
        events[share] = events.get(share, 0) + t + c
    if len(events) > MAX_SHARES:  # only a store written behind stagedroll's back gets here
        kept = set(sorted(events, key=lambda share: (-events[share], share))[:MAX_SHARES])
        cells = {cell: n for cell, n in cells.items() if cell[0] in kept}
    return [(share, block, t, c) for (share, block), (t, c) in cells.items()]


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
