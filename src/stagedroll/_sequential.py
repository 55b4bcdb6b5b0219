"""The sequential test of the health gate: a conditional-binomial mixture e-process.

Given that an event (an error, a slow call, a new unit) happened, it came from the
treatment arm with probability ``rho(r, share) = share * r / (share * r + 1 - share)``, where
``r`` is the ratio of the treatment's event rate to the control's. Healthy means
``r <= r0``. Against a grid of alternatives ``r0 * r_k``, each with weight ``1/len(grid)``,

    log L_k += A * log(rho_k / rho0) + (1 - A) * log((1 - rho_k) / (1 - rho0))
    E = sum_k w_k * exp(log L_k)

for each event (``A = 1`` when it came from treatment), with the share in force at that
event. ``E`` is a nonnegative supermartingale under every healthy ``r``, so by Ville's
inequality ``P(E ever >= 1/alpha) <= alpha``, however often it is looked at. Events at one
share only add to two counters; the log-likelihoods are folded when the share changes.
"""

from __future__ import annotations

import math

__all__ = ["GRID", "MixtureTest", "event_share"]

GRID: tuple[float, ...] = (1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
"""The alternatives of the mixture, as multiples of ``r0``."""


def event_share(ratio: float, share: float) -> float:
    """The probability that an event came from treatment, given the rate ``ratio`` and share."""
    return share * ratio / (share * ratio + 1.0 - share)


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(math.fsum(math.exp(v - top) for v in values))


class MixtureTest:
    """The mixture e-process over the events of one rollout, across the shares it goes through.

    One-sided (the default): evidence that the treatment's rate is above ``r0`` times the
    control's. With ``two_sided=True`` the grid holds each alternative and its inverse,
    which is the sample-ratio check (``r0 = 1``: the arms get units in proportion to the
    share). Events at a share of 0 or 1 carry no information and are ignored.
    """

    __slots__ = (
        "_a",
        "_b",
        "_base",
        "_log_w",
        "_two_sided",
        "_x_c",
        "_x_t",
        "events_control",
        "events_treatment",
        "r0",
        "ratios",
        "share",
    )

    def __init__(self, *, r0: float = 1.0, two_sided: bool = False) -> None:
        if not (math.isfinite(r0) and r0 >= 1.0):
            raise ValueError(f"r0 must be a finite number >= 1, not {r0!r}")
        grid = GRID + tuple(1.0 / r for r in GRID) if two_sided else GRID
        self.r0 = r0
        self._two_sided = two_sided
        self.ratios = tuple(r0 * r for r in grid)
        self._log_w = -math.log(len(self.ratios))
        self._base = [0.0] * len(self.ratios)
        self._a: tuple[float, ...] = ()
        self._b: tuple[float, ...] = ()
        self._x_t = self._x_c = 0
        self.events_treatment = self.events_control = 0
        self.share = 0.0

    def set_share(self, share: float) -> None:
        """Take the following events at ``share`` (the treatment's fraction, 0 to 1)."""
        if share == self.share:
            return
        self._fold()
        self.share = share
        if 0.0 < share < 1.0:
            rho0 = event_share(self.r0, share)
            rhos = [event_share(r, share) for r in self.ratios]
            self._a = tuple(math.log(rho / rho0) for rho in rhos)
            self._b = tuple(math.log((1.0 - rho) / (1.0 - rho0)) for rho in rhos)
        else:
            self._a = self._b = ()

    def _fold(self) -> None:
        if self._x_t or self._x_c:
            x_t, x_c = self._x_t, self._x_c
            self._base = [
                base + x_t * a + x_c * b
                for base, a, b in zip(self._base, self._a, self._b, strict=True)
            ]
            self._x_t = self._x_c = 0

    @property
    def active(self) -> bool:
        """Whether events count at the current share (strictly between 0 and 1)."""
        return bool(self._a)

    def add(self, treatment: int = 0, control: int = 0) -> bool:
        """Count events from each arm at the current share; return whether they counted."""
        if not self._a:
            return False
        self._x_t += treatment
        self._x_c += control
        self.events_treatment += treatment
        self.events_control += control
        return True

    def set_current(self, treatment: int, control: int) -> None:
        """Make the events at the current share these totals (pooled from every process).

        Totals only grow within a share, so a total older than the one in force (two flushes
        that crossed) is ignored.
        """
        if not self._a:
            return
        treatment, control = max(treatment, self._x_t), max(control, self._x_c)
        self.events_treatment += treatment - self._x_t
        self.events_control += control - self._x_c
        self._x_t, self._x_c = treatment, control

    def _logs(self) -> list[float]:
        x_t, x_c = self._x_t, self._x_c
        if not (x_t or x_c):
            return self._base
        return [
            base + x_t * a + x_c * b
            for base, a, b in zip(self._base, self._a, self._b, strict=True)
        ]

    def log_e(self) -> float:
        """The natural logarithm of the e-value ``E``."""
        return self._log_w + _logsumexp(self._logs())

    @property
    def e_value(self) -> float:
        """The e-value ``E`` (``1`` before any event; ``inf`` past a float's range)."""
        log_e = self.log_e()
        return math.exp(log_e) if log_e < 709.0 else math.inf

    def reaches(self, log_threshold: float) -> bool:
        """Whether ``log E >= log_threshold``; cheap when far below it (``E <= max_k L_k``)."""
        if not self.events_treatment and log_threshold > 0 and not self._two_sided:
            return False  # one-sided, without a treatment event: every L_k <= 0
        logs = self._logs()
        if max(logs) < log_threshold:
            return False
        return self._log_w + _logsumexp(logs) >= log_threshold

    def reset(self) -> None:
        """Forget every event: a new epoch of evidence (after an operator resumed the rollout)."""
        self._base = [0.0] * len(self.ratios)
        self._x_t = self._x_c = 0
        self.events_treatment = self.events_control = 0

    def ratio_estimate(self) -> float | None:
        """``r-hat``: the treatment's event rate over the control's, from the events at this share.

        ``(x_T / x_C) * (1 - share) / share``; ``None`` when no event at this share has come
        from control yet, or the share is 0 or 1.
        """
        if not self._a or not self._x_c:
            return None
        return (self._x_t / self._x_c) * (1.0 - self.share) / self.share
