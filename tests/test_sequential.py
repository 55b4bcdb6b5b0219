"""Tests of the sequential test: the conditional-binomial e-process of the health gate.

The reference below computes ``E`` the long way, from the module's documentation: a plain
sum over start points of their weight times the mean over the alternatives of the product
of the likelihood ratios of every event from that start point on, plus the budget not bet.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from stagedroll._sequential import (
    BLOCKS,
    BLOCKS_PART,
    BLOCKS_PER_DOUBLING,
    GRID,
    ORIGIN,
    START_PART,
    MixtureTest,
    block_of,
    event_share,
)

# The grid of FREEZE.md, written out again rather than imported: the test checks the module.
ALTERNATIVES = (1.25, 1.5, 2.0, 3.0, 5.0, 10.0)

Batch = tuple[int, int, float]
"""Events ``(from treatment, from control, at share)``; a share of ``-1`` starts a visit."""
VISIT: Batch = (0, 0, -1.0)


def rho(ratio: float, share: float) -> float:
    """The chance that an event came from treatment, by the formula of FREEZE.md."""
    return share * ratio / (share * ratio + 1 - share)


def bound(block: int) -> int:
    """The first event (counted from 0 in its visit) of ``block``, from the documentation."""
    return math.ceil(ORIGIN * (2 ** (block / BLOCKS_PER_DOUBLING) - 1))


@dataclass
class Reference:
    """``E`` by the definition: every start point kept apart, every factor multiplied out."""

    r0: float = 1.0
    cash: float = 1.0
    starts: list[tuple[float, list[float]]] = field(default_factory=list)
    """Per start point: its weight and its product of likelihood ratios per alternative."""
    pending: bool = True
    visit_cash: float = 1.0
    events: int = 0
    blocks: int = 0  # blocks of the visit whose start point is set (block 0 included)

    def visit(self) -> None:
        self.pending = True

    def _bet(self, weight: float) -> None:
        self.cash -= weight
        self.starts.append((weight, [1.0] * len(ALTERNATIVES)))

    def _place(self) -> None:
        """Set the start points of the visit up to the block of the next event."""
        if self.pending:
            self.pending, self.visit_cash, self.events, self.blocks = False, self.cash, 0, 1
            self._bet(self.visit_cash * START_PART)
        while self.blocks <= BLOCKS and bound(self.blocks) <= self.events:
            self._bet(self.visit_cash * BLOCKS_PART / BLOCKS)
            self.blocks += 1

    def _factor(self, treatment: bool, share: float, k: int) -> float:
        rho0, rho_k = rho(self.r0, share), rho(self.r0 * ALTERNATIVES[k], share)
        return rho_k / rho0 if treatment else (1 - rho_k) / (1 - rho0)

    def add(self, treatment: int, control: int, share: float) -> None:
        if not 0 < share < 1 or not (treatment or control):
            return
        if treatment and control:  # a mixed batch: whole, in the block of its first event
            self._place()
            for _, products in self.starts:
                for k in range(len(products)):
                    products[k] *= self._factor(True, share, k) ** treatment
                    products[k] *= self._factor(False, share, k) ** control
            self.events += treatment + control
            return
        for _ in range(treatment + control):
            self._place()
            for _, products in self.starts:
                for k in range(len(products)):
                    products[k] *= self._factor(bool(treatment), share, k)
            self.events += 1

    def e_value(self) -> float:
        bets = sum(w * sum(products) / len(products) for w, products in self.starts)
        return self.cash + bets


def fed(batches: list[Batch], *, r0: float = 1.0) -> MixtureTest:
    """A test given ``batches`` in order, each at its share (``VISIT``: a new visit)."""
    test = MixtureTest(r0=r0)
    for treatment, control, share in batches:
        if share < 0:
            test.visit()
            continue
        test.set_share(share)
        test.add(treatment, control)
    return test


def reference(batches: list[Batch], *, r0: float = 1.0) -> float:
    """The reference's ``log E`` for ``batches``."""
    ref = Reference(r0=r0)
    for treatment, control, share in batches:
        if share < 0:
            ref.visit()
        else:
            ref.add(treatment, control, share)
    return math.log(ref.e_value())


SHARES = st.floats(min_value=0.001, max_value=0.999)
BATCH = st.one_of(
    st.tuples(st.integers(0, 12), st.integers(0, 12), SHARES),
    st.tuples(st.integers(0, 30), st.just(0), SHARES),
    st.tuples(st.just(0), st.integers(0, 60), SHARES),
    st.just(VISIT),
)
BATCHES = st.lists(BATCH, min_size=0, max_size=8)


class TestEventShare:
    def test_formula(self) -> None:
        """``event_share`` is ``pi r / (pi r + 1 - pi)``: the share itself at ``r = 1``."""
        assert event_share(1.0, 0.05) == pytest.approx(0.05)
        assert event_share(2.0, 0.5) == pytest.approx(2 / 3)
        assert event_share(10.0, 0.1) == pytest.approx(1 / 1.9)

    def test_grid(self) -> None:
        """The grid is FREEZE.md's: 1.25, 1.5, 2, 3, 5 and 10."""
        assert GRID == ALTERNATIVES


class TestBlocks:
    def test_the_first_event_is_in_block_zero(self) -> None:
        """The visit's first event is its block 0: the visit's own start point."""
        assert block_of(0) == 0

    @given(events=st.integers(0, 10**7))
    def test_the_block_is_the_last_whose_bound_is_reached(self, events: int) -> None:
        """``block_of(n)`` is the largest block whose first event is at or before ``n``."""
        block = block_of(events)
        assert block <= BLOCKS
        assert bound(block) <= events
        if block < BLOCKS:
            assert bound(block + 1) > events

    @pytest.mark.parametrize("block", [1, 2, 31, 32, 100, 200, BLOCKS])
    def test_boundaries(self, block: int) -> None:
        """Pinned at each bound: the event before it is in an earlier block, it is not."""
        first = bound(block)
        assert block_of(first) >= block
        assert block_of(first - 1) < block

    def test_blocks_per_doubling(self) -> None:
        """From 1,000 to 2,000 events a visit passes about 32 start points."""
        assert block_of(2000) - block_of(1000) == pytest.approx(BLOCKS_PER_DOUBLING, abs=1)


class TestHandComputed:
    def test_one_treatment_event_at_half(self) -> None:
        """One treatment event at share 1/2: half the budget bet, ``mean(2r / (r + 1))`` won."""
        test = fed([(1, 0, 0.5)])
        mixture = sum(2 * r / (r + 1) for r in ALTERNATIVES) / 6
        assert test.e_value == pytest.approx(START_PART * mixture + 1 - START_PART, rel=1e-12)

    @pytest.mark.parametrize(
        ("treatment", "control", "share"),
        [(3, 5, 0.1), (0, 40, 0.05), (7, 0, 0.01), (12, 30, 0.25), (20, 20, 0.5)],
    )
    def test_one_share(self, treatment: int, control: int, share: float) -> None:
        """``log E`` matches the reference for counts at one share."""
        batches: list[Batch] = [(treatment, 0, share), (0, control, share)]
        test = fed(batches)
        assert test.log_e() == pytest.approx(reference(batches), rel=1e-12, abs=1e-12)
        assert (test.events_treatment, test.events_control) == (treatment, control)

    def test_evidence_is_carried_across_shares_and_visits(self) -> None:
        """Events at 1 %, then a new visit at 5 %: each at its share, the earlier starts kept."""
        batches: list[Batch] = [(2, 0, 0.01), (0, 30, 0.01), VISIT, (4, 0, 0.05), (0, 11, 0.05)]
        test = fed(batches)
        assert test.log_e() == pytest.approx(reference(batches), rel=1e-12)
        assert (test.events_treatment, test.events_control) == (6, 41)

    def test_r0_scales_the_null_and_the_grid(self) -> None:
        """With ``r0 = 2`` healthy means up to twice the control's rate; the grid is ``2 r_k``."""
        batches: list[Batch] = [(5, 0, 0.1), (0, 20, 0.1)]
        test = fed(batches, r0=2.0)
        assert test.ratios == tuple(2.0 * r for r in ALTERNATIVES)
        assert test.log_e() == pytest.approx(reference(batches, r0=2.0), rel=1e-12)
        assert test.log_e() < fed(batches).log_e()

    @given(batches=BATCHES)
    def test_matches_the_reference(self, batches: list[Batch]) -> None:
        """For any events at any shares and visits, ``log E`` is the reference's."""
        test = fed(batches)
        assert test.log_e() == pytest.approx(reference(batches), rel=1e-9, abs=1e-9)


class TestMartingale:
    @given(batches=BATCHES, share=SHARES)
    def test_the_next_event_keeps_e_in_expectation(
        self, batches: list[Batch], share: float
    ) -> None:
        """Healthy, the next event is from treatment w.p. the share: ``E`` is unchanged on average.

        ``share * E(treatment) + (1 - share) * E(control) = E``: a martingale under ``r = 1``
        (a supermartingale below), whatever came before and whichever block it falls in.
        """
        test = fed(batches)
        test.set_share(share)
        after_t, after_c = copy.deepcopy(test), copy.deepcopy(test)
        after_t.add(1, 0)
        after_c.add(0, 1)
        mean = share * after_t.e_value + (1 - share) * after_c.e_value
        assume(math.isfinite(mean))
        assert mean == pytest.approx(test.e_value, rel=1e-9)

    @given(batches=BATCHES)
    def test_e_is_at_least_the_budget_not_bet(self, batches: list[Batch]) -> None:
        """``E`` never falls below what is not bet yet: a fresh regression always has a start."""
        test = fed(batches)
        assert test.e_value >= test._cash * (1 - 1e-12)
        assert test._cash >= (1 - START_PART - BLOCKS_PART) ** (batches.count(VISIT) + 1) - 1e-12


class TestPooled:
    @given(batches=BATCHES)
    def test_counts_rebuild_the_same_e(self, batches: list[Batch]) -> None:
        """Counts per (visit, block, share) give the ``E`` of the events added one arm at a time."""
        visits: list[dict[tuple[float, int], list[int]]] = [{}]
        test = MixtureTest()
        for treatment, control, share in batches:
            if share < 0:
                test.visit()
                visits.append({})
                continue
            test.set_share(share)
            for arm, n in ((0, treatment), (1, control)):
                for _ in range(n):  # one event at a time: its block is known
                    block = block_of(test.visit_events)
                    if test.add(1 - arm, arm):
                        visits[-1].setdefault((share, block), [0, 0])[arm] += 1
        pooled = MixtureTest()
        pooled.set_counts([(s, b, t, c) for (s, b), (t, c) in visit.items()] for visit in visits)
        assert pooled.log_e() == pytest.approx(test.log_e(), rel=1e-9, abs=1e-9)
        assert (pooled.events_treatment, pooled.events_control) == (
            test.events_treatment,
            test.events_control,
        )

    def test_order_within_a_block_does_not_matter(self) -> None:
        """The counts say nothing of the order of events within a block: neither does ``E``."""
        one, two = MixtureTest(), MixtureTest()
        one.set_counts([[(0.05, 40, 3, 9), (0.05, 41, 1, 0)]])
        two.set_counts([[(0.05, 41, 1, 0), (0.05, 40, 3, 9)]])
        assert one.log_e() == two.log_e()

    def test_empty_visits_are_no_visits(self) -> None:
        """A visit without events sets no start point: it is as if it never was."""
        one, two = MixtureTest(), MixtureTest()
        one.set_counts([[(0.05, 0, 2, 10)], [], [(0.25, 0, 3, 1)]])
        two.set_counts([[(0.05, 0, 2, 10)], [(0.25, 0, 3, 1)]])
        assert one.log_e() == two.log_e()

    def test_entries_that_say_nothing_are_ignored(self) -> None:
        """Entries at a share of 0 or 1, or with a negative count, change nothing."""
        test = MixtureTest()
        test.set_counts([[(0.0, 0, 5, 0), (1.0, 3, 5, 5), (0.5, 2, -3, 4)]])
        assert test.e_value == 1.0
        assert (test.events_treatment, test.events_control) == (0, 0)

    def test_the_ratio_estimate_is_of_the_last_visit_at_the_share(self) -> None:
        """``r-hat`` comes from the last visit's events at the share in force."""
        test = MixtureTest()
        test.set_share(0.2)
        test.set_counts([[(0.2, 0, 50, 50)], [(0.2, 0, 6, 30), (0.5, 3, 9, 1)]])
        assert test.ratio_estimate() == pytest.approx((6 / 30) * 0.8 / 0.2)


class TestLateOnset:
    def test_a_late_regression_is_seen_sooner_than_from_the_start_alone(self) -> None:
        """After 3,000 healthy events, start points near the onset see it far sooner.

        The same seeded stream at 5 %: 3,000 events from healthy arms, then events of a
        new path three times worse. ``E`` is compared with a single start point at the
        first event (the test before restarts, at the full budget).
        """
        rng = random.Random(11)
        share = 0.05
        test, single = MixtureTest(), Reference()
        test.set_share(share)
        single.starts.append((1.0, [1.0] * 6))
        single.cash, single.pending = 0.0, False
        single.blocks = BLOCKS + 1  # no other start point
        for _ in range(3000):
            treated = rng.random() < share
            test.add(int(treated), int(not treated))
            single.add(int(treated), int(not treated), share)
        caught: dict[str, int] = {}
        for n in range(1, 5000):
            treated = rng.random() < rho(3.0, share)
            test.add(int(treated), int(not treated))
            single.add(int(treated), int(not treated), share)
            if test.e_value >= 20:
                caught.setdefault("restarts", n)
            if single.e_value() >= 20:
                caught.setdefault("single", n)
            if len(caught) == 2:
                break
        assert caught["restarts"] * 2 < caught.get("single", 5000)


class TestNoEvidence:
    def test_e_is_one_before_any_event(self) -> None:
        """A new test has ``E = 1`` at any share."""
        test = MixtureTest()
        assert test.e_value == 1.0
        assert test.log_e() == 0.0
        test.set_share(0.3)
        assert test.e_value == 1.0

    @pytest.mark.parametrize("share", [0.0, 1.0])
    def test_events_at_share_zero_or_one_are_ignored(self, share: float) -> None:
        """At 0 % or 100 % an event says nothing about the ratio: not counted."""
        test = MixtureTest()
        test.set_share(share)
        assert test.add(4, 7) is False
        assert (test.events_treatment, test.events_control) == (0, 0)
        assert test.e_value == 1.0
        assert test.ratio_estimate() is None

    def test_events_before_a_share_is_set_are_ignored(self) -> None:
        """A new test starts at share 0: events are ignored until a share is set."""
        test = MixtureTest()
        assert test.add(1, 0) is False
        test.set_share(0.5)
        assert test.add(1, 0) is True
        assert test.events_treatment == 1

    def test_negative_counts_are_refused(self) -> None:
        """A negative count is no event."""
        test = MixtureTest()
        test.set_share(0.5)
        assert test.add(-1, 0) is False
        assert test.e_value == 1.0

    def test_ignored_events_do_not_disturb_earlier_evidence(self) -> None:
        """A stretch at 100 % between two stretches at 30 % adds nothing."""
        with_gap = fed([(3, 0, 0.3), (0, 2, 0.3), (9, 9, 1.0), (1, 0, 0.3), (0, 4, 0.3)])
        without = fed([(3, 0, 0.3), (0, 2, 0.3), (1, 0, 0.3), (0, 4, 0.3)])
        assert with_gap.log_e() == pytest.approx(without.log_e(), rel=1e-12)

    def test_e_value_overflows_to_inf(self) -> None:
        """Past a float's range ``e_value`` is ``inf`` while ``log_e`` stays finite."""
        test = fed([(2000, 0, 0.5)])
        assert math.isfinite(test.log_e())
        assert test.log_e() > 709
        assert test.e_value == math.inf


class TestReaches:
    @given(batches=BATCHES, threshold=st.floats(min_value=-50, max_value=50))
    def test_agrees_with_log_e(self, batches: list[Batch], threshold: float) -> None:
        """``reaches(t)`` is ``log_e() >= t``, its shortcut notwithstanding.

        Excluded: ``E = 1`` exactly (no event at all) against ``t = 0``, i.e. ``alpha = 1``,
        which no policy can ask for.
        """
        test = fed(batches)
        assume(threshold != 0 or test.events_treatment or test.events_control)
        assert test.reaches(threshold) is (test.log_e() >= threshold)

    def test_infinite_threshold_is_never_reached(self) -> None:
        """A test given no part of alpha (threshold ``inf``) never fires."""
        assert fed([(5000, 0, 0.5)]).reaches(math.inf) is False


class TestMonotonicity:
    @given(batches=BATCHES, share=SHARES)
    def test_a_treatment_event_raises_e(self, batches: list[Batch], share: float) -> None:
        """One more event from treatment makes ``E`` larger."""
        test = fed(batches)
        test.set_share(share)
        before = test.log_e()
        test.add(1, 0)
        assert test.log_e() > before

    @given(batches=BATCHES, share=SHARES)
    def test_a_control_event_lowers_e(self, batches: list[Batch], share: float) -> None:
        """One more event from control makes ``E`` smaller (or keeps it, all bets at zero)."""
        test = fed(batches)
        test.set_share(share)
        before = test.log_e()
        test.add(0, 1)
        assert test.log_e() <= before

    @given(treatment=st.integers(1, 50), low=st.floats(0.01, 0.5), high=st.floats(0.5, 0.99))
    def test_the_same_counts_weigh_less_at_a_larger_share(
        self, treatment: int, low: float, high: float
    ) -> None:
        """The same treatment-only events are weaker evidence when treatment gets more traffic."""
        assume(high - low > 1e-9)  # shares a float apart: rounding decides
        assert fed([(treatment, 0, low)]).log_e() > fed([(treatment, 0, high)]).log_e()


class TestReset:
    def test_reset_forgets_every_event(self) -> None:
        """After ``reset`` E is 1 and the counters are 0; the share stays in force."""
        test = fed([(10, 0, 0.1), (0, 2, 0.1), (30, 0, 0.2), (0, 1, 0.2)])
        assert test.e_value > 1000
        test.reset()
        assert test.e_value == 1.0
        assert (test.events_treatment, test.events_control) == (0, 0)
        assert test.ratio_estimate() is None
        assert test.share == 0.2
        assert test.add(1, 0) is True
        assert test.log_e() == pytest.approx(reference([(1, 0, 0.2)]), rel=1e-12)


class TestRatioEstimate:
    def test_estimate(self) -> None:
        """``r-hat = (x_T / x_C) (1 - pi) / pi`` over the events at this share."""
        test = fed([(6, 30, 0.2)])
        assert test.ratio_estimate() == pytest.approx((6 / 30) * 0.8 / 0.2)

    def test_none_without_control_events(self) -> None:
        """With no control event yet there is no estimate (it would be infinite)."""
        assert fed([(6, 0, 0.2)]).ratio_estimate() is None

    def test_only_the_current_share_counts(self) -> None:
        """After a share change the estimate restarts from the events at the new share."""
        test = fed([(6, 30, 0.2)])
        test.set_share(0.5)
        assert test.ratio_estimate() is None
        test.add(3, 1)
        assert test.ratio_estimate() == pytest.approx(3.0)

    def test_a_new_visit_restarts_it(self) -> None:
        """A new stage visit estimates from its own events."""
        test = fed([(6, 30, 0.2), VISIT])
        assert test.ratio_estimate() is None


class TestValidation:
    @pytest.mark.parametrize("r0", [0.5, 0.0, -1.0, math.nan, math.inf])
    def test_r0_must_be_finite_and_at_least_one(self, r0: float) -> None:
        """An ``r0`` below 1 or not finite is a ValueError naming it."""
        with pytest.raises(ValueError, match="r0 must be a finite number >= 1"):
            MixtureTest(r0=r0)

    def test_r0_of_one_is_the_default(self) -> None:
        """``r0 = 1`` (healthy means no worse) is accepted and is the default."""
        assert MixtureTest().r0 == 1.0
        assert MixtureTest(r0=1.0).ratios == ALTERNATIVES


class TestVille:
    STREAMS = 400
    EVENTS = 2000
    SHARE = 0.05
    ALPHA = 0.05

    def _crosses(self, rng: random.Random) -> bool:
        """Whether one healthy stream's ``E`` ever reaches ``1 / alpha``, checked at every event.

        ``E`` only rises at a treatment event, so checking after each of those is the same as
        checking after every event; control events in between are added as one batch.
        """
        test = MixtureTest()
        test.set_share(self.SHARE)
        log_threshold = -math.log(self.ALPHA)
        control = 0
        for _ in range(self.EVENTS):
            if rng.random() < self.SHARE:  # healthy: an event is from treatment w.p. the share
                test.add(0, control)
                control = 0
                test.add(1, 0)
                if test.reaches(log_threshold):
                    return True
            else:
                control += 1
        return False

    def test_healthy_streams_rarely_cross(self) -> None:
        """Of 400 healthy streams checked after every event, about alpha or fewer reach 1/alpha.

        Ville's inequality bounds the chance by alpha = 5 %, i.e. 20 streams on average; 40
        is more than four standard deviations above that. The streams are seeded.
        """
        rng = random.Random(20240601)
        crossed = sum(self._crosses(rng) for _ in range(self.STREAMS))
        assert crossed <= 40

    def test_degraded_streams_cross(self) -> None:
        """The same check has power: streams at 3 times the control's rate almost all cross."""
        rng = random.Random(7)
        rho_3 = rho(3.0, self.SHARE)
        crossed = 0
        for _ in range(50):
            test = MixtureTest()
            test.set_share(self.SHARE)
            for _ in range(self.EVENTS):
                treatment = rng.random() < rho_3
                test.add(int(treatment), int(not treatment))
                if treatment and test.reaches(-math.log(self.ALPHA)):
                    crossed += 1
                    break
        assert crossed >= 45
