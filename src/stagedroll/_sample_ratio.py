"""The sample-ratio check of the health gate: a Beta-binomial mixture e-process.

When bucketing and reporting are sound, each new distinct unit of a stage lands in
treatment with probability ``p`` (the treatment's share), independently of the others.
For a prior ``theta ~ Beta(p * c, (1 - p) * c)`` (mean ``p``, concentration ``c``), the
likelihood ratio of the mixture against ``theta = p`` after ``x_T`` treatment and ``x_C``
control units is

    E_c = B(p*c + x_T, (1 - p)*c + x_C) / B(p*c, (1 - p)*c) / (p**x_T * (1 - p)**x_C)

It is ``1`` before any unit and a martingale under the null: the next unit multiplies it by
``(p*c + x_T) / ((c + n) * p)`` with probability ``p`` and by ``((1 - p)*c + x_C) /
((c + n) * (1 - p))`` otherwise, which average to ``1``. The e-value is the mean of ``E_c``
over the concentrations of :data:`CONCENTRATIONS`, so it is a nonnegative martingale with
initial value ``1`` too, and by Ville's inequality ``P(E ever >= 1/alpha) <= alpha`` under
the null, however often it is read. It depends on the counts alone, not on their order, so
every process that reads the pooled counts computes the same e-process.

A component is sharpest at about ``n = 14 c`` units, and close to that over about two
decades of ``n``. With concentrations half a decade apart from ``10**1.5`` to ``10**5``,
the mixture flags an imbalance (in either direction: too few treatment units count as much
as too many) at 1.34 to 1.39 times the smallest excess rate a fixed two-sided z test at the
same level flags on the same counts, from ten thousand to a million units per arm at shares
from 5% to 50% (1.4 to 1.5 times at a thousand, about 1.5 at a hundred million). No test
that may be read at every count can match a fixed-size test at every count at once; the
factor is the price of reading it at any time.

The logarithm is computed in the form of Loader's binomial density (deviances with a
cancellation-free series near the mean, plus Stirling-series remainders), so it keeps an
absolute precision of about ``1e-11`` (relative ``1e-15`` when large) for counts up to
``10**9``, at any share strictly between 0 and 1, down to the smallest float.
"""

from __future__ import annotations

import math

__all__ = ["CONCENTRATIONS", "sample_ratio_log_e"]

CONCENTRATIONS: tuple[float, ...] = tuple(10.0 ** (1.5 + 0.5 * k) for k in range(8))
"""The prior concentrations ``c`` of the mixture, each with weight ``1/8``: 31.6 to 100,000."""

_LOG_WEIGHT = -math.log(len(CONCENTRATIONS))
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _stirling_remainder(z: float) -> float:
    """``lgamma(z) - ((z - 1/2) log z - z + log(2 pi) / 2)``, for ``z > 0``."""
    if z >= 15.0:
        # The Stirling series; its first omitted term is about 2e-16 at z = 15, less above.
        w = 1.0 / (z * z)
        return (
            1.0 / 12.0 - w * (1.0 / 360.0 - w * (1.0 / 1260.0 - w * (1.0 / 1680.0 - w / 1188.0)))
        ) / z
    return math.lgamma(z) - ((z - 0.5) * math.log(z) - z + _HALF_LOG_2PI)


def _deviance(x: float, m: float, d: float) -> float:
    """``x log(x / m) + m - x`` (``>= 0``), for ``x, m > 0`` and ``d = x - m``."""
    if abs(d) < 0.1 * (x + m):
        # x log(x/m) + m - x = d v + 2 x (v^3/3 + v^5/5 + ...), v = d / (x + m): no cancellation.
        v = d / (x + m)
        v2 = v * v
        total = d * v
        term = 2.0 * x * v
        j = 3.0
        while True:
            term *= v2
            new = total + term / j
            if new == total:
                return total
            total = new
            j += 2.0
    return x * _log_ratio(x, m) + m - x


def _log_ratio(x: float, y: float) -> float:
    """``log(x / y)`` for ``x, y > 0``, also where ``x / y`` would overflow or underflow."""
    ratio = x / y
    if 2.3e-308 < ratio < math.inf:
        return math.log(ratio)
    return math.log(x) - math.log(y)


def _component_log_e(x_t: float, x_c: float, p: float, q: float, c: float) -> float:
    """``log E_c`` for the concentration ``c``, the share ``p`` and ``q = 1 - p``.

    With ``a = p c``, ``b = q c``, ``A = a + x_T``, ``B = b + x_C`` and ``N = A + B``, Stirling's
    formula ``lgamma(z) = (z - 1/2) log z - z + log(2 pi) / 2 + r(z)`` turns ``log E_c`` into

        dev(A, N p) + dev(B, N q) + (log(N / (A B)) + log(a b / c)) / 2
            + r(A) + r(B) - r(N) - r(a) - r(b) + r(c)

    where ``dev(x, m) = x log(x / m) + m - x``: no term grows with the counts faster than
    ``log E_c`` does, so no precision is lost to cancellation at large counts.
    """
    a, b = p * c, q * c
    big_a, big_b, big_n = a + x_t, b + x_c, c + x_t + x_c
    # big_a - big_n * p, that is x_t - p * (x_t + x_c), without a large cancellation.
    d = q * x_t - p * x_c
    value = _deviance(big_a, big_n * p, d) + _deviance(big_b, big_n * q, -d)
    value += 0.5 * (_log_ratio(a, big_a) + _log_ratio(b, big_b) + _log_ratio(big_n, c))
    value += _stirling_remainder(big_a) + _stirling_remainder(big_b) - _stirling_remainder(big_n)
    value += _stirling_remainder(c) - _stirling_remainder(a) - _stirling_remainder(b)
    return value


def sample_ratio_log_e(treatment: int, control: int, share: float) -> float:
    """The natural log of the e-value against "each unit is in treatment with probability share".

    ``treatment`` and ``control`` are the distinct units seen on each arm (cumulative, pooled
    from every process); the alternative is two-sided. The e-value is the mean over
    :data:`CONCENTRATIONS` of the Beta-binomial mixture martingales: ``1`` (so ``0.0`` here)
    before any unit, and a function of the two counts alone. Returns ``0.0`` when the share
    is not strictly between 0 and 1 (every unit then has a known arm: no evidence) or there
    are no units; a negative count counts as 0. Finite for counts up to ``10**9`` and more,
    and for any share.
    """
    if not 0.0 < share < 1.0:
        return 0.0
    x_t, x_c = float(max(treatment, 0)), float(max(control, 0))
    if x_t + x_c == 0.0:
        return 0.0
    p = share
    q = 1.0 - p
    logs = [_component_log_e(x_t, x_c, p, q, c) for c in CONCENTRATIONS]
    top = max(logs)
    return top + _LOG_WEIGHT + math.log(math.fsum(math.exp(v - top) for v in logs))
