"""When a call is slow: above the policy's latency SLO, or the running p95 of control calls.

With ``latency_p95`` the threshold is learnt from the control arm (the old path), in a histogram
of logarithmic bins :data:`BIN_RATIO` wide (about 4.4 %), from 100 nanoseconds to about 7
minutes, in a fixed 512 integers. The threshold moves as control calls come in, but only
from past calls: whether a call is slow is decided before it is compared, the same way for
both arms, which is all the test needs.
"""

from __future__ import annotations

import math

__all__ = ["BIN_RATIO", "MIN_SAMPLES", "SlowThreshold"]

BIN_RATIO = 2.0 ** (1 / 16)
"""Ratio between the edges of consecutive bins."""
MIN_SAMPLES = 32
"""Control latencies needed before a learnt threshold applies."""
_BINS = 512
_LOWEST = 1e-7
_SCALE = 16 / math.log(2)  # bins per natural-log unit
_QUANTILE = 0.95


class SlowThreshold:
    """The latency above which a call counts as slow, in seconds.

    ``value`` is the fixed SLO when one is given, else the upper edge of the bin holding the
    p95 of the control latencies seen so far, or ``inf`` before :data:`MIN_SAMPLES` of them.
    """

    __slots__ = ("_bins", "_next_update", "count", "fixed", "value")

    def __init__(self, slo_s: float | None = None) -> None:
        self.fixed = slo_s is not None
        self.value = slo_s if slo_s is not None else math.inf
        self._bins = [0] * _BINS
        self.count = 0
        self._next_update = MIN_SAMPLES

    def add(self, latency_s: float) -> None:
        """Learn from one control latency (ignored with a fixed SLO)."""
        if self.fixed:
            return
        self._bins[_bin(latency_s)] += 1
        self.count += 1
        if self.count >= self._next_update:
            self._update()

    def add_all(self, latencies: list[float]) -> None:
        """Learn from several control latencies."""
        if self.fixed or not latencies:
            return
        bins = self._bins
        for latency in latencies:
            bins[_bin(latency)] += 1
        self.count += len(latencies)
        if self.count >= self._next_update:
            self._update()

    def _update(self) -> None:
        # Recompute as the sample grows by an eighth: O(bins) work per 1/8 more samples.
        self._next_update = self.count + max(MIN_SAMPLES // 4, self.count // 8)
        rank = _QUANTILE * self.count
        seen = 0
        for index, n in enumerate(self._bins):
            seen += n
            if seen >= rank:
                self.value = _LOWEST * BIN_RATIO ** (index + 1)
                return

    def reset(self) -> None:
        """Forget the learnt latencies (a fixed SLO stays)."""
        if not self.fixed:
            self.value = math.inf
            self._bins = [0] * _BINS
            self.count = 0
            self._next_update = MIN_SAMPLES


def _bin(latency_s: float) -> int:
    if latency_s <= _LOWEST:
        return 0
    return min(_BINS - 1, int(math.log(latency_s / _LOWEST) * _SCALE))
