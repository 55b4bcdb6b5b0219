"""Tests of the sequential test: the conditional-binomial mixture e-process of the health gate."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from stagedroll._sequential import GRID, MixtureTest, event_share

# The grid of FREEZE.md, written out again rather than imported: the test checks the module.
ALTERNATIVES = (1.25, 1.5, 2.0, 3.0, 5.0, 10.0)

Batch = tuple[int, int, float]
"""Events ``(from treatment, from control, at share)``."""


def rho(ratio: float, share: float) -> float:
    """The chance that an event came from treatment, by the formula of FREEZE.md."""
    return share * ratio / (share * ratio + 1 - share)


def reference_log_e(
    batches: list[Batch], *, r0: float = 1.0, grid: tuple[float, ...] = ALTERNATIVES
) -> float:
    """``log E`` computed directly: a plain sum over the events and a plain mean of the ``L_k``."""
    likelihoods = []
    for r in grid:
        log_l = 0.0
        for treatment, control, share in batches:
            rho0, rho_k = rho(r0, share), rho(r0 * r, share)
            log_l += treatment * math.log(rho_k / rho0)
            log_l += control * math.log((1 - rho_k) / (1 - rho0))
        likelihoods.append(math.exp(log_l))
    return math.log(sum(likelihoods) / len(grid))


def fed(batches: list[Batch], *, r0: float = 1.0, two_sided: bool = False) -> MixtureTest:
    """A test given ``batches`` in order, each at its share."""
    test = MixtureTest(r0=r0, two_sided=two_sided)
    for treatment, control, share in batches:
        test.set_share(share)
        test.add(treatment, control)
    return test


SHARES = st.floats(min_value=0.001, max_value=0.999)
BATCHES = st.lists(
    st.tuples(st.integers(0, 30), st.integers(0, 30), SHARES), min_size=0, max_size=5
)


class TestEventShare:
    def test_formula(self) -> None:
        """``event_share`` is ``pi r / (pi r + 1 - pi)``: the share itself at ``r = 1``."""
        assert event_share(1.0, 0.05) == pytest.approx(0.05)
        assert event_share(2.0, 0.5) == pytest.approx(2 / 3)
        assert event_share(10.0, 0.1) == pytest.approx(1 / 1.9)

    def test_grid(self) -> None:
        """The grid is FREEZE.md's: 1.25, 1.5, 2, 3, 5 and 10."""
        assert GRID == ALTERNATIVES


class TestHandComputed:
    def test_one_treatment_event_at_half(self) -> None:
        """At share 1/2, one treatment event gives ``E = mean(2r / (r + 1))``."""
        test = fed([(1, 0, 0.5)])
        expected = sum(2 * r / (r + 1) for r in ALTERNATIVES) / 6
        assert expected == pytest.approx(1.4382154882)
        assert test.e_value == pytest.approx(expected, rel=1e-12)

    def test_one_control_event_at_half(self) -> None:
        """At share 1/2, one control event gives ``E = mean(2 / (r + 1))``."""
        test = fed([(0, 1, 0.5)])
        expected = sum(2 / (r + 1) for r in ALTERNATIVES) / 6
        assert expected == pytest.approx(0.5617845118)
        assert test.e_value == pytest.approx(expected, rel=1e-12)

    @pytest.mark.parametrize(
        ("treatment", "control", "share"),
        [(3, 5, 0.1), (0, 40, 0.05), (7, 0, 0.01), (12, 30, 0.25), (20, 20, 0.5)],
    )
    def test_one_share(self, treatment: int, control: int, share: float) -> None:
        """``log E`` matches the formula for counts at one share."""
        test = fed([(treatment, control, share)])
        expected = reference_log_e([(treatment, control, share)])
        assert test.log_e() == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert (test.events_treatment, test.events_control) == (treatment, control)

    def test_evidence_is_carried_across_shares(self) -> None:
        """Events at 1 % then at 5 % each use the share in force when they happened."""
        batches: list[Batch] = [(2, 30, 0.01), (4, 11, 0.05)]
        test = fed(batches)
        assert test.log_e() == pytest.approx(reference_log_e(batches), rel=1e-12)
        # Not the same as all the events at the last share, nor at the first.
        assert test.log_e() != pytest.approx(reference_log_e([(6, 41, 0.05)]))
        assert test.log_e() != pytest.approx(reference_log_e([(6, 41, 0.01)]))
        assert (test.events_treatment, test.events_control) == (6, 41)

    def test_events_before_and_after_a_return_to_a_share(self) -> None:
        """Going back to an earlier share adds to its evidence like any other share change."""
        batches: list[Batch] = [(1, 9, 0.1), (3, 3, 0.5), (2, 1, 0.1)]
        assert fed(batches).log_e() == pytest.approx(reference_log_e(batches), rel=1e-12)

    def test_setting_the_same_share_changes_nothing(self) -> None:
        """``set_share`` with the share in force keeps the pending counts as they are."""
        test = fed([(2, 3, 0.2)])
        before = test.log_e()
        test.set_share(0.2)
        test.add(1, 1)
        assert test.log_e() == pytest.approx(reference_log_e([(3, 4, 0.2)]), rel=1e-12)
        assert test.log_e() != before

    def test_r0_scales_the_null_and_the_grid(self) -> None:
        """With ``r0 = 2`` healthy means up to twice the control's rate; the grid is ``2 r_k``."""
        test = fed([(5, 20, 0.1)], r0=2.0)
        assert test.ratios == tuple(2.0 * r for r in ALTERNATIVES)
        assert test.log_e() == pytest.approx(reference_log_e([(5, 20, 0.1)], r0=2.0), rel=1e-12)
        assert test.log_e() < fed([(5, 20, 0.1)]).log_e()

    @given(batches=BATCHES)
    def test_matches_the_formula(self, batches: list[Batch]) -> None:
        """For any events at any shares, ``log E`` is the formula's."""
        test = fed(batches)
        assert test.log_e() == pytest.approx(reference_log_e(batches), rel=1e-9, abs=1e-9)


class TestNoEvidence:
    def test_e_is_one_before_any_event(self) -> None:
        """A new test, one-sided or two-sided, has ``E = 1`` at any share."""
        for two_sided in (False, True):
            test = MixtureTest(two_sided=two_sided)
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

    def test_ignored_events_do_not_disturb_earlier_evidence(self) -> None:
        """A stretch at 100 % between two shares keeps the evidence gathered before it."""
        test = fed([(3, 2, 0.3), (9, 9, 1.0), (1, 4, 0.3)])
        assert test.log_e() == pytest.approx(reference_log_e([(4, 6, 0.3)]), rel=1e-12)

    def test_e_value_overflows_to_inf(self) -> None:
        """Past a float's range ``e_value`` is ``inf`` while ``log_e`` stays finite."""
        test = fed([(2000, 0, 0.5)])
        assert math.isfinite(test.log_e())
        assert test.log_e() > 709
        assert test.e_value == math.inf


class TestReaches:
    @given(batches=BATCHES, threshold=st.floats(min_value=-50, max_value=50))
    def test_agrees_with_log_e(self, batches: list[Batch], threshold: float) -> None:
        """``reaches(t)`` is ``log_e() >= t``, its shortcuts notwithstanding.

        Excluded: ``E = 1`` exactly (no event at all) against ``t = 0``, i.e. ``alpha = 1``,
        which no policy can ask for.
        """
        test = fed(batches)
        assume(threshold != 0 or test.events_treatment or test.events_control)
        assert test.reaches(threshold) is (test.log_e() >= threshold)

    @given(batches=BATCHES)
    def test_reaches_its_own_log_e(self, batches: list[Batch]) -> None:
        """At the boundary ``t = log_e()`` the answer is yes (once there is an event)."""
        test = fed(batches)
        assume(test.events_treatment or test.events_control)
        assert test.reaches(test.log_e()) is True

    def test_infinite_threshold_is_never_reached(self) -> None:
        """A test given no part of alpha (threshold ``inf``) never fires."""
        assert fed([(5000, 0, 0.5)]).reaches(math.inf) is False

    def test_two_sided_reaches_a_deficit_of_treatment_events(self) -> None:
        """A two-sided test with control events only reaches a threshold its ``E`` is above."""
        test = fed([(0, 400, 0.25)], two_sided=True)
        assert test.e_value > 1e40
        assert test.reaches(math.log(1000)) is True


class TestMonotonicity:
    @given(batches=BATCHES, share=SHARES)
    def test_a_treatment_event_raises_e(self, batches: list[Batch], share: float) -> None:
        """One more event from treatment makes the one-sided ``E`` larger."""
        test = fed(batches)
        test.set_share(share)
        before = test.log_e()
        test.add(1, 0)
        assert test.log_e() > before

    @given(batches=BATCHES, share=SHARES)
    def test_a_control_event_lowers_e(self, batches: list[Batch], share: float) -> None:
        """One more event from control makes the one-sided ``E`` smaller."""
        test = fed(batches)
        test.set_share(share)
        before = test.log_e()
        test.add(0, 1)
        assert test.log_e() < before

    @given(
        treatment=st.integers(0, 50),
        control=st.integers(0, 50),
        low=st.floats(0.01, 0.5),
        high=st.floats(0.5, 0.99),
    )
    def test_the_same_counts_weigh_less_at_a_larger_share(
        self, treatment: int, control: int, low: float, high: float
    ) -> None:
        """The same treatment-only events are weaker evidence when treatment gets more traffic."""
        assume(treatment > 0 and high - low > 1e-9)  # shares a float apart: rounding decides
        assert fed([(treatment, 0, low)]).log_e() > fed([(treatment, 0, high)]).log_e()


class TestReset:
    def test_reset_forgets_every_event(self) -> None:
        """After ``reset`` E is 1 and the counters are 0; the share stays in force."""
        test = fed([(10, 2, 0.1), (30, 1, 0.2)])
        assert test.e_value > 1000
        test.reset()
        assert test.e_value == 1.0
        assert (test.events_treatment, test.events_control) == (0, 0)
        assert test.ratio_estimate() is None
        assert test.share == 0.2
        assert test.add(1, 3) is True
        assert test.log_e() == pytest.approx(reference_log_e([(1, 3, 0.2)]), rel=1e-12)


class TestRatioEstimate:
    def test_estimate(self) -> None:
        """``r-hat = (x_T / x_C) (1 - pi) / pi`` over the events at this share."""
        test = fed([(6, 30, 0.2)])
        assert test.ratio_estimate() == pytest.approx((6 / 30) * 0.8 / 0.2)

    def test_none_without_control_events(self) -> None:
        """With no control event yet there is no estimate (it would be infinite)."""
        test = fed([(6, 0, 0.2)])
        assert test.ratio_estimate() is None

    def test_only_the_current_share_counts(self) -> None:
        """After a share change the estimate restarts from the events at the new share."""
        test = fed([(6, 30, 0.2)])
        test.set_share(0.5)
        assert test.ratio_estimate() is None
        test.add(3, 1)
        assert test.ratio_estimate() == pytest.approx(3.0)


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


class TestTwoSided:
    def test_grid_holds_each_alternative_and_its_inverse(self) -> None:
        """The two-sided grid has 12 alternatives: ``r_k`` and ``1 / r_k``."""
        test = MixtureTest(two_sided=True)
        assert len(test.ratios) == 12
        assert sorted(test.ratios) == sorted([*ALTERNATIVES, *(1 / r for r in ALTERNATIVES)])

    def test_matches_the_formula(self) -> None:
        """Its ``log E`` is the formula's over the 12 alternatives."""
        grid = ALTERNATIVES + tuple(1 / r for r in ALTERNATIVES)
        batches: list[Batch] = [(40, 60, 0.3)]
        test = fed(batches, two_sided=True)
        assert test.log_e() == pytest.approx(reference_log_e(batches, grid=grid), rel=1e-12)

    @pytest.mark.parametrize(
        ("treatment", "control"),
        [(200, 200), (10, 390)],
        ids=["treatment-excess", "treatment-deficit"],
    )
    def test_responds_to_a_mismatch_in_either_direction(self, treatment: int, control: int) -> None:
        """Units at 25 %: 50/50 or 2.5/97.5 both give overwhelming evidence."""
        test = fed([(treatment, control, 0.25)], two_sided=True)
        assert test.e_value > 1e6

    def test_quiet_when_the_ratio_is_right(self) -> None:
        """Units split as the share says give no evidence of a mismatch."""
        test = fed([(100, 300, 0.25)], two_sided=True)
        assert test.e_value < 1

    def test_one_sided_ignores_a_deficit(self) -> None:
        """The one-sided test sees fewer treatment events as good news, never as a breach."""
        assert fed([(10, 390, 0.25)]).e_value < 1e-6


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
