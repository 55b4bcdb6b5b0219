"""Tests of the sample-ratio check: the Beta-binomial mixture e-process of the health gate."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stagedroll._sample_ratio import CONCENTRATIONS, sample_ratio_log_e

# The concentrations written out again rather than imported: the tests check the module.
GRID = (10**1.5, 1e2, 10**2.5, 1e3, 10**3.5, 1e4, 10**4.5, 1e5)

LOG_BAR = math.log(1000.0)
"""The bar of the health gate at the default ``alpha_sample_ratio`` of 0.001."""

Z_BAR = 3.2905267314919255
"""The two-sided bar of a fixed z (chi-square) test at ``p < 0.001``."""

shares = st.floats(min_value=1e-6, max_value=1.0 - 1e-6)
counts = st.integers(min_value=0, max_value=10**9)
moderate_counts = st.integers(min_value=0, max_value=10**6)

Flags = Callable[[int, int, float], bool]


def reference_log_e(arrivals: Sequence[bool], share: float) -> float:
    """``log E`` by its definition: per concentration, the product of the one-step factors
    along the arrivals (``True``: a treatment unit), then the plain mean over the grid."""
    q = 1.0 - share
    logs = []
    for c in GRID:
        x_t = x_c = 0
        terms = []
        for to_treatment in arrivals:
            n = x_t + x_c
            if to_treatment:
                terms.append(math.log((share * c + x_t) / ((c + n) * share)))
                x_t += 1
            else:
                terms.append(math.log((q * c + x_c) / ((c + n) * q)))
                x_c += 1
        logs.append(math.fsum(terms))
    top = max(logs)
    return top + math.log(math.fsum(math.exp(v - top) for v in logs) / len(GRID))


def log_mean_step(x_t: int, x_c: int, share: float) -> float:
    """``log(share * E(x_t + 1, x_c) + (1 - share) * E(x_t, x_c + 1))``, without overflow."""
    up = math.log(share) + sample_ratio_log_e(x_t + 1, x_c, share)
    down = math.log1p(-share) + sample_ratio_log_e(x_t, x_c + 1, share)
    top = max(up, down)
    return top + math.log(math.exp(up - top) + math.exp(down - top))


def close(got: float, expected: float, rel: float = 1e-9) -> bool:
    """Whether two values of ``log E`` agree to ``rel``, relative once above 1 in size."""
    return abs(got - expected) <= rel * max(1.0, abs(expected))


def flags(x_t: int, x_c: int, share: float) -> bool:
    """Whether the new test reaches the health gate's bar."""
    return sample_ratio_log_e(x_t, x_c, share) >= LOG_BAR


def z_flags(x_t: int, x_c: int, share: float) -> bool:
    """Whether a fixed two-sided z test (the chi-square test of one degree) rejects at 0.001."""
    n = x_t + x_c
    return abs(x_t - share * n) / math.sqrt(n * share * (1.0 - share)) >= Z_BAR


def first_flagged_excess(test: Flags, control: int, share: float) -> int:
    """The fewest treatment units above the expected number that the test flags."""
    low = int(share / (1.0 - share) * control)  # at or below the expected count: not flagged
    high = 2 * low + 10
    while not test(high, control, share):
        high *= 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if test(middle, control, share) else (middle, high)
    return high


def last_flagged_deficit(test: Flags, control: int, share: float) -> int:
    """The most treatment units below the expected number that the test flags."""
    low, high = 0, int(share / (1.0 - share) * control) + 1
    assert test(low, control, share)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if test(middle, control, share) else (low, middle)
    return low


class TestGrid:
    def test_concentrations(self) -> None:
        """The mixture is over eight concentrations half a decade apart, 10**1.5 to 10**5."""
        assert pytest.approx(GRID, rel=1e-12) == CONCENTRATIONS


class TestMartingale:
    @given(shares)
    def test_starts_at_one(self, share: float) -> None:
        """Before any unit the e-value is exactly 1."""
        assert sample_ratio_log_e(0, 0, share) == 0.0

    @given(st.floats(min_value=1e-300, max_value=1.0, exclude_max=True))
    def test_the_first_unit_carries_no_evidence(self, share: float) -> None:
        """One unit on either arm leaves the e-value at 1: every prior has mean ``share``."""
        assert abs(sample_ratio_log_e(1, 0, share)) <= 1e-12
        assert abs(sample_ratio_log_e(0, 1, share)) <= 1e-12

    @given(counts, counts, shares)
    def test_the_next_unit_leaves_the_expectation_unchanged(
        self, x_t: int, x_c: int, share: float
    ) -> None:
        """``share * E(x_T + 1, x_C) + (1 - share) * E(x_T, x_C + 1) == E(x_T, x_C)``."""
        assert close(log_mean_step(x_t, x_c, share), sample_ratio_log_e(x_t, x_c, share))

    @given(st.integers(min_value=1, max_value=300), shares)
    def test_its_expectation_under_the_null_is_one(self, n: int, share: float) -> None:
        """Over the binomial law of ``n`` units at ``share``, the e-value averages exactly 1."""
        log_q = math.log1p(-share)
        terms = [
            math.exp(
                math.lgamma(n + 1)
                - math.lgamma(x_t + 1)
                - math.lgamma(n - x_t + 1)
                + x_t * math.log(share)
                + (n - x_t) * log_q
                + sample_ratio_log_e(x_t, n - x_t, share)
            )
            for x_t in range(n + 1)
        ]
        assert math.fsum(terms) == pytest.approx(1.0, rel=1e-9)

    @given(st.lists(st.booleans(), max_size=300), shares)
    def test_equals_the_product_of_its_steps_in_any_order(
        self, arrivals: list[bool], share: float
    ) -> None:
        """The closed form equals the product of the one-step factors along any arrival order."""
        x_t = sum(arrivals)
        got = sample_ratio_log_e(x_t, len(arrivals) - x_t, share)
        assert close(got, reference_log_e(arrivals, share), rel=1e-10)


class TestShape:
    @given(counts, counts, st.integers(min_value=1, max_value=1023))
    def test_symmetric_in_the_arms(self, x_t: int, x_c: int, k: int) -> None:
        """Swapping the arms and the share (``share -> 1 - share``) leaves the e-value unchanged."""
        share = k / 1024  # so that 1 - share is exact
        swapped = sample_ratio_log_e(x_c, x_t, 1.0 - share)
        assert close(sample_ratio_log_e(x_t, x_c, share), swapped)

    @given(moderate_counts, moderate_counts, shares)
    def test_a_unit_on_the_over_represented_arm_raises_it(
        self, x_t: int, x_c: int, share: float
    ) -> None:
        """A unit on the arm above its share raises ``E``, one on the arm below it lowers ``E``.

        Each component's step factor for a treatment unit is ``1 + (q x_T - p x_C) / ((c + n) p)``,
        so the sign of the step is the sign of the imbalance ``q x_T - p x_C`` for every ``c``.
        """
        imbalance = (1.0 - share) * x_t - share * x_c
        here = sample_ratio_log_e(x_t, x_c, share)
        up = sample_ratio_log_e(x_t + 1, x_c, share) - here
        down = sample_ratio_log_e(x_t, x_c + 1, share) - here
        sign = math.copysign(1.0, imbalance)
        assert sign * up >= -1e-9
        assert sign * down <= 1e-9
        if abs(imbalance) >= 0.5:
            assert sign * up > 0 > sign * down

    @given(moderate_counts, moderate_counts, shares)
    def test_at_a_fixed_total_it_grows_away_from_the_expected_split(
        self, x_t: int, extra: int, share: float
    ) -> None:
        """With ``n`` units in all, moving one to treatment raises ``E`` iff ``x_T > p (n - 1)``.

        The step factor is ``(p c + x_T) q / (((1 - p) c + n - x_T - 1) p)`` for every ``c``: the
        e-value is smallest at the expected split and grows as ``x_T`` leaves it either way.
        """
        n = x_t + extra + 1
        offset = x_t - share * (n - 1)
        step = sample_ratio_log_e(x_t + 1, n - x_t - 1, share) - sample_ratio_log_e(
            x_t, n - x_t, share
        )
        sign = math.copysign(1.0, offset)
        assert sign * step >= -1e-9
        if abs(offset) >= 0.5:
            assert sign * step > 0

    @given(st.integers(min_value=1, max_value=10**7), st.integers(min_value=2, max_value=1000))
    def test_the_expected_split_is_no_evidence(self, k: int, m: int) -> None:
        """At exactly the expected counts (``k`` treatment, ``k (m - 1)`` control at share ``1/m``)
        the e-value is below 1."""
        assert sample_ratio_log_e(k, k * (m - 1), 1.0 / m) < 0.0


class TestSensitivity:
    """Deterministic counts against the bar ``E >= 1000``, and a fixed z test at ``p < 0.001``.

    With 50,000 control units, a fixed test flags a treatment rate 1.021x or 0.979x the
    expected at a 50% share (1.066x or 0.934x at 5%); the previous grid test needed 1.120x
    (1.137x). This one flags 1.028x or 0.972x (1.090x or 0.913x).
    """

    @pytest.mark.parametrize(
        ("share", "excess", "deficit"),
        [(0.5, 51_401, 48_618), (0.25, 17_329, 16_016), (0.05, 2_868, 2_403), (0.01, 609, 409)],
    )
    def test_flags_at_fifty_thousand_units_per_arm(
        self, share: float, excess: int, deficit: int
    ) -> None:
        """With 50,000 control units: the fewest excess, most deficient treatment counts flagged."""
        control = 50_000
        assert flags(excess, control, share)
        assert not flags(excess - 1, control, share)
        assert flags(deficit, control, share)
        assert not flags(deficit + 1, control, share)

    def test_the_pinned_counts_as_rates(self) -> None:
        """At a 50% share that is 1.028x and 0.972x the expected rate; at 5%, 1.090x and 0.913x."""
        expected_5 = 0.05 / 0.95 * 50_000
        assert abs(51_401 / 50_000 - 1.028) < 5e-4
        assert abs(48_618 / 50_000 - 0.972) < 5e-4
        assert abs(2_868 / expected_5 - 1.090) < 5e-4
        assert abs(2_403 / expected_5 - 0.913) < 5e-4

    @pytest.mark.parametrize("share", [0.05, 0.25, 0.5])
    @pytest.mark.parametrize("control", [10_000, 50_000, 200_000, 1_000_000])
    def test_within_a_small_factor_of_the_fixed_test(self, share: float, control: int) -> None:
        """From 10,000 to 1,000,000 units per arm it flags within 1.4x the fixed test's margin."""
        expected = share / (1.0 - share) * control
        for first in (first_flagged_excess, last_flagged_deficit):
            new = abs(first(flags, control, share) / expected - 1.0)
            fixed = abs(first(z_flags, control, share) / expected - 1.0)
            assert fixed < new <= 1.4 * fixed

    @pytest.mark.parametrize("share", [0.05, 0.25, 0.5])
    def test_within_a_small_factor_at_a_thousand_units(self, share: float) -> None:
        """At 1,000 units per arm the flagged imbalance is within 1.55x a fixed test's."""
        expected = share / (1.0 - share) * 1_000
        new = first_flagged_excess(flags, 1_000, share) / expected - 1.0
        fixed = first_flagged_excess(z_flags, 1_000, share) / expected - 1.0
        assert fixed < new <= 1.55 * fixed


class TestDegenerate:
    @pytest.mark.parametrize("share", [0.0, 1.0, -0.5, 1.5, math.nan, math.inf, -math.inf])
    def test_no_evidence_outside_the_open_unit_interval(self, share: float) -> None:
        """A share of 0 or 1 (or out of range) gives every unit a known arm: ``log E == 0``."""
        assert sample_ratio_log_e(10, 0, share) == 0.0
        assert sample_ratio_log_e(0, 10, share) == 0.0

    def test_negative_counts_count_as_zero(self) -> None:
        """A negative count is taken as no units on that arm."""
        assert sample_ratio_log_e(-5, -5, 0.5) == 0.0
        assert sample_ratio_log_e(-5, 40, 0.5) == sample_ratio_log_e(0, 40, 0.5)

    @given(
        st.integers(min_value=0, max_value=10**12),
        st.integers(min_value=0, max_value=10**12),
        st.floats(min_value=0.0, max_value=1.0),
    )
    def test_finite_everywhere(self, x_t: int, x_c: int, share: float) -> None:
        """Any counts up to 10**12 at any share, subnormal ones included, give a finite value."""
        assert math.isfinite(sample_ratio_log_e(x_t, x_c, share))

    @pytest.mark.parametrize(
        ("x_t", "x_c", "share"),
        [
            (10**9, 0, 1e-6),
            (0, 10**9, 1.0 - 1e-6),
            (10**9, 10**9, 5e-324),
            (5, 0, 5e-324),
            (0, 5, 1.0 - 2**-53),
            (10**9, 3, 0.5),
        ],
    )
    def test_extreme_imbalance_is_huge_evidence(self, x_t: int, x_c: int, share: float) -> None:
        """Counts far from a tiny or near-1 share give a finite ``log E`` far above the bar."""
        value = sample_ratio_log_e(x_t, x_c, share)
        assert math.isfinite(value)
        assert value > 10 * LOG_BAR

    @pytest.mark.parametrize(
        ("x_t", "x_c", "share"),
        [(10**9, 10**9, 0.5), (10**3, 10**9 - 10**3, 1e-6), (10**9 - 10**3, 10**3, 1.0 - 1e-6)],
    )
    def test_huge_balanced_counts_are_no_evidence(self, x_t: int, x_c: int, share: float) -> None:
        """A billion units split as expected give ``E < 1``, computed without loss."""
        value = sample_ratio_log_e(x_t, x_c, share)
        assert math.isfinite(value)
        assert value < 0.0
