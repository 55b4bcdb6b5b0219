"""The sequential test of the health gate: a conditional-binomial e-process that restarts.

Given that an event (an error, a slow call) happened, it came from the treatment arm with
probability ``rho(r, share) = share * r / (share * r + 1 - share)``, where ``r`` is the
ratio of the treatment's event rate to the control's. Healthy means ``r <= r0``. Against
an alternative ``r0 * r_k``, an event multiplies a likelihood ratio by

    rho_k / rho0            (from treatment)    or    (1 - rho_k) / (1 - rho0)    (from control)

with the share in force at that event; under every healthy ``r`` its expectation is at most
1. A product of such factors from any start point on is a nonnegative supermartingale.

**Start points.** Healthy events push the alternatives' products down for good: an
e-process begun at the start of the epoch is slow to see a regression that begins late,
after a long healthy stretch or a shared incident. So the e-value ``E`` is a mixture over
the alternatives ``r_k`` of :data:`GRID` (equal weights) and over start points, each
start point getting a fixed part of a budget of 1 before any of its events is seen:

- the start of each stage visit of the epoch: when a visit begins (at its first event),
  :data:`START_PART` of the budget still unspent is bet from there;
- blocks of the visit's events: :data:`BLOCKS_PART` of the budget unspent at the visit's
  start is spread evenly over :data:`BLOCKS` blocks whose bounds grow geometrically with
  the number of events in the visit (:data:`BLOCKS_PER_DOUBLING` per doubling, from
  :data:`ORIGIN` events), so a regression that begins after ``n`` healthy events has a
  start point within about ``n / 46`` events of it;
- the rest is kept for the later visits; weight not bet yet counts in ``E`` as it is.

Which block an event falls in depends only on how many events came before it, never on
their arms, so every start point is a stopping time of the events' arrival. ``E`` is then a
nonnegative supermartingale under every healthy ``r``, starting at 1, and by Ville's
inequality ``P(E ever >= 1/alpha) <= alpha``, however often it is looked at. The price: a
regression from the start needs ``E`` about 1.1 times as high from its first start point
(90 % of the budget), hardly an event more; in exchange, one after ``n`` healthy events is
not held back by what those events said.

Events only add to running sums per start point, which every process can rebuild from
counts per (visit, block, share) (:meth:`MixtureTest.set_counts`): the order of events
within a block does not matter.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable

__all__ = [
    "BLOCKS",
    "BLOCKS_PART",
    "BLOCKS_PER_DOUBLING",
    "GRID",
    "ORIGIN",
    "START_PART",
    "MixtureTest",
    "block_of",
    "event_share",
]

GRID: tuple[float, ...] = (1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
"""The alternatives of the mixture, as multiples of ``r0``."""

START_PART = 0.9
"""Of the budget unspent when a stage visit begins, the part bet from its first event."""
BLOCKS_PART = 0.08
"""Of the budget unspent when a stage visit begins, the part spread over its blocks."""
BLOCKS_PER_DOUBLING = 32
"""Start points per doubling of a visit's events."""
ORIGIN = 4
"""The scale of the blocks: block ``b`` begins at ``ORIGIN * (2 ** (b / 32) - 1)`` events."""
BLOCKS = 16 * BLOCKS_PER_DOUBLING
"""Blocks with a start point: up to about 260,000 events into a visit."""

# The first event (0-based count within the visit) of each block; block 0 begins at 0.
_BOUNDS: tuple[int, ...] = tuple(
    math.ceil(ORIGIN * (2.0 ** (b / BLOCKS_PER_DOUBLING) - 1.0)) for b in range(BLOCKS + 1)
)


def event_share(ratio: float, share: float) -> float:
    """The probability that an event came from treatment, given the rate ``ratio`` and share."""
    return share * ratio / (share * ratio + 1.0 - share)


def block_of(events: int) -> int:
    """The block of a visit's event that has ``events`` events of the visit before it."""
    return bisect.bisect_right(_BOUNDS, events) - 1


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(math.fsum(math.exp(v - top) for v in values))


def _log(value: float) -> float:
    return math.log(value) if value > 0.0 else -math.inf


class MixtureTest:
    """The e-process over the events of one rollout's epoch; see the module's documentation.

    One-sided: evidence that the treatment's rate is above ``r0`` times the control's.
    Events at a share of 0 or 1 carry no information and are ignored. Feed it either event
    by event (:meth:`add`, in arrival order) or from pooled counts (:meth:`set_counts`).
    """

    __slots__ = (
        "_a",
        "_b",
        "_block",
        "_cash",
        "_log_sr",
        "_log_w",
        "_n",
        "_pending",
        "_visit_cash",
        "_x_c",
        "_x_t",
        "events_control",
        "events_treatment",
        "r0",
        "ratios",
        "share",
    )

    def __init__(self, *, r0: float = 1.0) -> None:
        if not (math.isfinite(r0) and r0 >= 1.0):
            raise ValueError(f"r0 must be a finite number >= 1, not {r0!r}")
        self.r0 = r0
        self.ratios = tuple(r0 * r for r in GRID)
        self._log_w = -math.log(len(self.ratios))
        self._a: tuple[float, ...] = ()
        self._b: tuple[float, ...] = ()
        self.share = 0.0
        self._log_sr: list[float] = []
        """Per alternative, ``log`` of the sum over start points of weight times likelihood."""
        self._cash = 1.0  # the budget not bet on any start point yet
        self._visit_cash = 1.0  # the budget unspent when the current visit began
        self._pending = True  # the current visit has had no event yet
        self._block = self._n = self._x_t = self._x_c = 0
        self.events_treatment = self.events_control = 0
        self.reset()

    # -- shares and visits -----------------------------------------------------------------

    def set_share(self, share: float) -> None:
        """Take the following events at ``share`` (the treatment's fraction, 0 to 1)."""
        if share == self.share:
            return
        self.share = share
        self._a, self._b = self._factors(share)
        self._x_t = self._x_c = 0

    def _factors(self, share: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The log-likelihood ratios of a treatment and of a control event at ``share``.

        None (events ignored) at a share of 0 or 1, or so close to either that a float
        cannot tell the alternatives apart from it (no policy's percent comes that close).
        """
        if not 0.0 < share < 1.0:
            return (), ()
        rho0 = event_share(self.r0, share)
        rhos = [event_share(r, share) for r in self.ratios]
        if not 0.0 < rho0 < 1.0 or not all(0.0 < rho < 1.0 for rho in rhos):
            return (), ()
        return (
            tuple(math.log(rho / rho0) for rho in rhos),
            tuple(math.log((1.0 - rho) / (1.0 - rho0)) for rho in rhos),
        )

    def visit(self) -> None:
        """A new stage visit begins: its start point is set at its first event."""
        self._pending = True
        self._x_t = self._x_c = 0

    def _begin(self) -> None:
        """The first event of a visit: bet :data:`START_PART` of the unspent budget from here."""
        self._pending = False
        self._visit_cash = self._cash
        self._block = 0
        self._n = 0
        self._invest(self._visit_cash * START_PART)

    def _invest(self, weight: float) -> None:
        """Bet ``weight`` of the unspent budget on a start point here (before its events)."""
        if weight <= 0.0:
            return
        self._cash = max(0.0, self._cash - weight)
        log_w = math.log(weight)
        self._log_sr = [
            s + math.log1p(math.exp(log_w - s)) if s >= log_w
            else log_w + math.log1p(math.exp(s - log_w))
            for s in self._log_sr
        ]  # fmt: skip

    def _enter(self, block: int) -> None:
        """Move to ``block`` of the visit, betting on the start points of the blocks passed."""
        if block <= self._block:
            return
        passed = min(block, BLOCKS) - min(self._block, BLOCKS)
        self._block = block
        if passed > 0:
            self._invest(self._visit_cash * BLOCKS_PART * passed / BLOCKS)

    def _gain(
        self, treatment: int, control: int, a: tuple[float, ...], b: tuple[float, ...]
    ) -> None:
        self._log_sr = [
            s + treatment * ak + control * bk for s, ak, bk in zip(self._log_sr, a, b, strict=True)
        ]

    # -- events ------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether events count at the current share (strictly between 0 and 1)."""
        return bool(self._a)

    def add(self, treatment: int = 0, control: int = 0) -> bool:
        """Count events from each arm at the current share; return whether they counted.

        Events of one arm are placed one by one in their blocks. A batch with events of
        both arms goes whole into the block of its first event (its order is not known).
        """
        if not self._a or treatment < 0 or control < 0 or not (treatment or control):
            return False
        if self._pending:
            self._begin()
        self.events_treatment += treatment
        self.events_control += control
        self._x_t += treatment
        self._x_c += control
        if treatment and control:
            self._enter(block_of(self._n))
            self._gain(treatment, control, self._a, self._b)
            self._n += treatment + control
            return True
        left = treatment + control
        while left:
            block = block_of(self._n)
            self._enter(block)
            upto = _BOUNDS[block + 1] if block < BLOCKS else self._n + left
            step = min(left, upto - self._n)
            self._gain(step if treatment else 0, 0 if treatment else step, self._a, self._b)
            self._n += step
            left -= step
        return True

    def set_counts(self, visits: Iterable[Iterable[tuple[float, int, int, int]]]) -> None:
        """Make the epoch's events these counts: per visit in order, ``(share, block, t, c)``.

        The pooled form: every process that reads the same counts gets the same ``E``. A
        visit without events is no visit (its start point is its first event's); entries
        at a share of 0 or 1, or with a negative count, are ignored.
        """
        share = self.share
        self.reset()
        factors: dict[float, tuple[tuple[float, ...], tuple[float, ...]]] = {}
        for visit in visits:
            entries = sorted(
                (block, s, t, c) for s, block, t, c in visit if t >= 0 and c >= 0 and (t or c)
            )
            x_t = x_c = 0
            begun = False
            for block, s, t, c in entries:
                ab = factors.get(s)
                if ab is None:
                    ab = factors[s] = self._factors(s)
                if not ab[0]:
                    continue
                if not begun:
                    self._pending = True
                    self._begin()
                    begun = True
                self._enter(block)
                self._gain(t, c, *ab)
                self._n += t + c
                self.events_treatment += t
                self.events_control += c
                if s == share:
                    x_t, x_c = x_t + t, x_c + c
            self._x_t, self._x_c = x_t, x_c
        self._pending = True  # the caller's visit: see Health.absorb for the block of the next

    def log_e(self) -> float:
        """The natural logarithm of the e-value ``E``."""
        bet = self._log_w + _logsumexp(self._log_sr)
        cash = _log(self._cash)
        top = max(bet, cash)
        if top == -math.inf:
            return top
        return top + math.log(math.exp(bet - top) + math.exp(cash - top))

    @property
    def e_value(self) -> float:
        """The e-value ``E`` (``1`` before any event; ``inf`` past a float's range)."""
        log_e = self.log_e()
        return math.exp(log_e) if log_e < 709.0 else math.inf

    def reaches(self, log_threshold: float) -> bool:
        """Whether ``log E >= log_threshold``; cheap when no treatment event came yet."""
        if not self.events_treatment and log_threshold > 0:
            return False  # without a treatment event every factor is <= 1: E <= 1
        return self.log_e() >= log_threshold

    def reset(self) -> None:
        """Forget every event: a new epoch of evidence (after an operator resumed the rollout)."""
        self._log_sr = [-math.inf] * len(self.ratios)
        self._cash = 1.0
        self._visit_cash = 1.0
        self._pending = True
        self._block = 0
        self._n = 0
        self._x_t = self._x_c = 0
        self.events_treatment = self.events_control = 0

    @property
    def visit_events(self) -> int:
        """Events counted in the current stage visit (0 before its first)."""
        return 0 if self._pending else self._n

    def ratio_estimate(self) -> float | None:
        """``r-hat``: the treatment's event rate over the control's, at this share in this visit.

        ``(x_T / x_C) * (1 - share) / share``; ``None`` when no event at this share has come
        from control yet, or the share is 0 or 1.
        """
        if not self._a or not self._x_c:
            return None
        return (self._x_t / self._x_c) * (1.0 - self.share) / self.share
