"""Tests of SlowThreshold: a fixed latency SLO, or the running p95 of control latencies."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stagedroll._latency import BIN_RATIO, MIN_SAMPLES, SlowThreshold

LATENCIES = st.lists(
    st.floats(min_value=0.0, max_value=1000.0, allow_nan=False, allow_infinity=False),
    max_size=300,
)


def p95(sample: list[float]) -> float:
    """The empirical 95th percentile: the smallest value with at least 95 % of the sample <= it."""
    ordered = sorted(sample)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]


def within_a_bin(value: float, quantile: float) -> bool:
    """Whether a bin's upper edge ``value`` is the edge of the bin holding ``quantile``."""
    return quantile * (1 - 1e-9) <= value <= quantile * BIN_RATIO * (1 + 1e-9)


class TestFixed:
    def test_the_slo_is_the_threshold(self) -> None:
        """With an SLO the threshold is the SLO, from the start."""
        threshold = SlowThreshold(0.25)
        assert threshold.fixed is True
        assert threshold.value == 0.25

    def test_latencies_teach_nothing(self) -> None:
        """A fixed SLO ignores the control latencies it is given."""
        threshold = SlowThreshold(0.25)
        threshold.add(3.0)
        threshold.add_all([5.0] * 1000)
        assert threshold.value == 0.25
        assert threshold.count == 0

    def test_reset_keeps_the_slo(self) -> None:
        """``reset`` forgets learnt latencies, never the SLO."""
        threshold = SlowThreshold(0.25)
        threshold.reset()
        assert (threshold.value, threshold.fixed) == (0.25, True)


class TestLearnt:
    def test_unknown_before_min_samples(self) -> None:
        """Without an SLO nothing is slow (``inf``) until ``MIN_SAMPLES`` control latencies."""
        threshold = SlowThreshold()
        assert threshold.fixed is False
        assert threshold.value == math.inf
        for _ in range(MIN_SAMPLES - 1):
            threshold.add(0.01)
        assert threshold.value == math.inf
        threshold.add(0.01)
        assert within_a_bin(threshold.value, 0.01)

    def test_add_all_below_min_samples(self) -> None:
        """A batch short of ``MIN_SAMPLES`` teaches no threshold either; an empty one nothing."""
        threshold = SlowThreshold()
        threshold.add_all([])
        threshold.add_all([0.01] * (MIN_SAMPLES - 1))
        assert threshold.value == math.inf
        assert threshold.count == MIN_SAMPLES - 1

    def test_p95_of_a_lognormal_sample(self) -> None:
        """The threshold is the p95 of a seeded log-normal sample, within one bin (about 4.4 %)."""
        rng = random.Random(95)
        sample = [rng.lognormvariate(math.log(0.05), 0.5) for _ in range(20_000)]
        threshold = SlowThreshold()
        threshold.add_all(sample)
        assert within_a_bin(threshold.value, p95(sample))
        # The log-normal's own p95 is exp(mu + 1.645 sigma); the sample is close to it.
        assert threshold.value == pytest.approx(0.05 * math.exp(1.645 * 0.5), rel=0.06)

    def test_p95_of_a_uniform_sample(self) -> None:
        """For uniform latencies on 0 to 200 ms the threshold is near 190 ms."""
        rng = random.Random(5)
        sample = [rng.uniform(0.0, 0.2) for _ in range(10_000)]
        threshold = SlowThreshold()
        for latency in sample:
            threshold.add(latency)
        threshold.add_all([])  # no new latency: no recomputation
        # Recomputed as the sample grew; the last update saw at least 8/9 of the sample.
        assert threshold.value == pytest.approx(0.19, rel=BIN_RATIO - 1 + 0.01)

    def test_the_threshold_follows_the_sample(self) -> None:
        """When control latencies grow tenfold, so does the learnt threshold, in time."""
        threshold = SlowThreshold()
        threshold.add_all([0.01] * 1000)
        low = threshold.value
        for _ in range(20):
            threshold.add_all([0.1] * 1000)
        assert within_a_bin(low, 0.01)
        assert within_a_bin(threshold.value, 0.1)

    @pytest.mark.parametrize("latency", [0.0, 1e-9, 1e-7])
    def test_tiny_latencies_land_in_the_first_bin(self, latency: float) -> None:
        """Latencies at or below 100 ns share the first bin; the threshold is its upper edge."""
        threshold = SlowThreshold()
        threshold.add_all([latency] * MIN_SAMPLES)
        assert threshold.value == pytest.approx(1e-7 * BIN_RATIO)

    def test_huge_latencies_land_in_the_last_bin(self) -> None:
        """Latencies past the last bin (hours) are counted in it, not dropped."""
        threshold = SlowThreshold()
        threshold.add_all([1e6] * MIN_SAMPLES)
        assert math.isfinite(threshold.value)
        assert threshold.value > 300
        assert threshold.count == MIN_SAMPLES

    def test_reset_forgets_the_sample(self) -> None:
        """``reset`` of a learnt threshold goes back to ``inf`` and an empty sample."""
        threshold = SlowThreshold()
        threshold.add_all([0.01] * 100)
        threshold.reset()
        assert (threshold.value, threshold.count) == (math.inf, 0)
        threshold.add_all([0.5] * MIN_SAMPLES)
        assert within_a_bin(threshold.value, 0.5)


class TestAddAll:
    @given(latencies=LATENCIES)
    def test_add_all_counts_like_repeated_add(self, latencies: list[float]) -> None:
        """``add_all`` fills the same histogram as ``add`` on each latency."""
        one_by_one, batched = SlowThreshold(), SlowThreshold()
        for latency in latencies:
            one_by_one.add(latency)
        batched.add_all(latencies)
        assert batched.count == one_by_one.count == len(latencies)
        assert batched._bins == one_by_one._bins

    @given(latencies=st.lists(st.floats(1e-6, 10.0), min_size=MIN_SAMPLES, max_size=MIN_SAMPLES))
    def test_same_threshold_at_an_update(self, latencies: list[float]) -> None:
        """At ``MIN_SAMPLES`` latencies, where both recompute, they give the same threshold."""
        one_by_one, batched = SlowThreshold(), SlowThreshold()
        for latency in latencies:
            one_by_one.add(latency)
        batched.add_all(latencies)
        assert batched.value == one_by_one.value
        assert within_a_bin(batched.value, p95(latencies))
