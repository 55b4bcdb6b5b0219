"""Auto-freeze scenarios driven through stagedroll's public API only, for bench_freeze.py.

bench_freeze.py feeds event streams to the private ``Health`` class. The scenarios here
measure what a service gets instead: each run builds ``stagedroll.Rollouts(policy,
store=..., clock=stagedroll.testing.FakeClock())``, routes every simulated request with
``rollouts.enabled``, records it with ``rollouts.report(name, unit, error=...)``, takes the
automatic steps with ``rollouts.tick()`` where the library needs a tick, and reads what
happened from ``rollouts[name].state`` (its status and actor), ``rollouts.status`` and
``rollouts.history``. No private module of stagedroll is imported.

**Traffic.** bench_freeze's heterogeneous users: 20,000 users, request volume
LogNormal(0, 2), error propensity Gamma(2, 1/2) x 1 % (the old path's error rate of each
user), both drawn afresh for each run, with a fresh salt in the policy (so a fresh cohort).
A user on the new path fails ``r`` times as often as on the old one while the regression is
on (capped at 1). One simulated request picks a user in proportion to volume, decides with
``rollouts.enabled``, draws the error, and reports it. During a shared outage every request
fails, on both paths.

**What goes through ``report``, and what need not.** The health gate learns from errors
(a unit's first error in the epoch is an event) and from each unit's first call in a
stage visit (new units count for ``min_units`` and the sample-ratio check). A successful
call of a unit already seen in the same stage visit changes nothing the gate judges: it
adds to the call counters, and, with ``advance = "auto"``, every 64th recorded call looks at
the clock for a due advance (the periodic ``tick()`` below looks instead). So the driver
draws requests in blocks with numpy, counts every request, and calls ``report`` only for
the errors and for each unit's first call in the current stage visit of the instance that
serves it; the other successes are counted without calling the library. Likewise
``enabled`` is a function of the state in force: the driver asks it for all 20,000 users
once per state (at the start and after each transition it sees) and looks the answers up
per request. After each ``report`` the driver compares ``rollouts[name].state`` with the
state it knew; when a transition happened, the rest of the block is drawn again under the
new state. A stage change starts a new visit (every unit's next call is a first one again).

**Clock.** A ``FakeClock`` set to 10 ms per request (100 requests/s) before each block;
blocks end at every tick, onset, outage end and deploy, and hold at most 8,192 requests.
The canary scenario calls ``tick()`` every 1,000 requests (10 s of clock), so an advance
that the bake time makes due is taken within 1,000 requests of it.

**Pooled (4 processes).** Four ``Rollouts``, each with its own ``SQLiteStore`` object on
one SQLite file of a temporary directory (``/dev/shm`` when there is one), stand for four
worker processes; each request goes to one of them at random. With a shared store the
health gate counts nothing in the caller's thread: each instance queues its events and
new units, and the store's background refresh thread flushes them every
``refresh_interval`` (real seconds), sets the instance's tests to the fleet's totals, and
takes the automatic steps (``Rollouts._sync``). ``tick()`` does the same at once (flush,
then step), and ``status()`` flushes without stepping. To keep the simulation
deterministic the thread is put to sleep with ``SQLiteStore(path, refresh_interval=1e6)``
(its first cycle would come after 11 days: it waits a full interval before each cycle, and
nothing in a run wakes it), and the driver calls ``tick()`` on the instances in turn, one
every 1,000 requests, so that each instance flushes every 4,000 requests of the fleet (with
the default ``refresh_interval`` of 1 s: a fleet serving 4,000 requests a second). An
instance learns of another's transition at its own next tick, as a process does at its
next refresh. An instance replaced by a deploy is ticked once (a last flush) before its
store is closed.

**Scenarios** (``r``: the new path's error rate over the old one's, per user):

1. *Late onset*, shares 5 % and 25 %, r = 2 and 5: the regression from the first request
   (*fresh*) or after 30,000 healthy requests (*late*).
2. *Canary then 50 %*: stages 5 % (bake 3,000 s = 300,000 requests, ``min_units`` 500)
   and 50 %, ``advance = "auto"``; a 2x regression from the advance on (*late*), against
   a rollout whose first stage is 50 % with the regression from the start (*fresh*).
3. *Shared outage*: 5 %; 10,000 requests that all fail on both paths, healthy traffic up
   to request 30,000, then a 2x regression; against scenario 1's fresh 5 %, r = 2.
4. *Healthy* (r = 1), each shape above: 30,000 requests then the horizon at 5 % and 25 %;
   the canary and the horizon at 50 %; the outage and the horizon. Also 5 and 6 below.
5. *Pooled*, 5 %, 4 instances: healthy, and a 2x regression from the start.
6. *Percent edit*, pooled, healthy: the policy's only stage at 20 % is edited to 5 % (and
   5 % to 20 %), deployed by replacing the instances one by one (a new ``Rollouts`` with
   the edited policy on the same file: a new process) at requests 20,000, 25,000, 30,000
   and 35,000.

A delay is the number of requests from the regression's onset to the first automatic
freeze or rollback (a state whose status is frozen or rolled back, with the actor
``"stagedroll"``), as the instance that made it sees it. Runs stopped before the onset (a
false freeze in the healthy prefix, or a canary that never advanced) are counted apart and
left out of the delays. A median is an upper median over the other runs, a run not
stopped within the horizon (2,000,000 requests after the onset) counting as infinite. A
healthy run counts a false freeze (any automatic freeze or rollback) and a false rollback
from its first request to the end of its horizon after the onset (300,000 requests). At
the end of every run ``status()`` is read once on the first instance, as an operator
would (it runs the sample-ratio check), and the failures that each instance counted
(``rollouts.failures``) are reported.

Each job of runs has its own seeded generator, so the numbers depend on ``--seed`` only
(and the library); the rollouts' history ids are random, but they only key the 64-bit
digests of units in the SQLite store. See :class:`Sizes` for the runs of each mode, and
bench_freeze.py for the command line.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from stagedroll import Rollout, Rollouts, RolloutState, SQLiteStore, Status
from stagedroll.testing import FakeClock

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

NAME = "checkout"
AUTOMATIC = "stagedroll"  # the actor of the health gate's transitions

USERS = 20_000
VOLUME_SIGMA = 2.0
PROPENSITY_SHAPE, PROPENSITY_SCALE = 2.0, 0.5  # gamma, mean 1
P_CONTROL = 0.01
KEYS = [f"user-{j}" for j in range(USERS)]

START = 1_700_000_000.0
SECONDS_PER_REQUEST = 0.01
BLOCK = 8192  # requests drawn at once, at most
TICK_EVERY = 1_000  # the canary's ticks
ONSET = 30_000  # the late regressions start here
OUTAGE = 10_000  # requests that fail on both paths, from the first
CANARY_PERCENT = 5.0
MIN_UNITS = 500
INSTANCES = 4
FLUSH_EVERY = 4_000  # requests of the fleet between two ticks of one instance
REFRESH_OFF = 1e6  # seconds: the store's background thread sleeps through every run
DEPLOY_AT, DEPLOY_EVERY = 20_000, 5_000

LATE_SHARES = (0.05, 0.25)
LATE_RATIOS = (2.0, 5.0)
RATIO_BAR = 1.5
FREEZE_BAR = 0.05  # alpha_freeze
ROLLBACK_BAR = 0.002  # reported, not judged
Z95 = 1.959963984540054
SEED_KEY = 1000  # spawn keys apart from bench_freeze's tasks

STOPS = (Status.FROZEN, Status.ROLLED_BACK)


@dataclass(frozen=True)
class Sizes:
    """Runs per cell and horizons of one mode.

    The full mode's 2,000 runs per healthy cell put the upper 95 % Wilson bound of a true
    false-freeze rate of 4 % at 4.96 % (of 3.5 %: 4.41 %), so the bar of 5 % can pass. Quick
    mode's 200 (60 pooled) cannot: it judges the lower bound instead (no evidence that the
    rate exceeds alpha_freeze). Smoke mode judges nothing, and its canary bakes 150,000
    requests and its healthy horizon is 40,000 (past the percent edit's deploys).
    """

    delay: int
    healthy: int
    pooled_healthy: int
    delay_horizon: int
    healthy_horizon: int
    canary: int  # requests the canary bakes
    rule: str  # how a healthy cell's false-freeze bar is judged: "upper", "lower", "none"

    @property
    def judged(self) -> bool:
        """Whether any bar is judged (smoke: too few runs for any)."""
        return self.rule != "none"


MODES = {
    "smoke": Sizes(2, 2, 1, 200_000, 40_000, 150_000, "none"),
    "quick": Sizes(100, 200, 60, 2_000_000, 300_000, 300_000, "lower"),
    "full": Sizes(500, 2000, 2000, 2_000_000, 300_000, 300_000, "upper"),
}


@dataclass(frozen=True)
class Cell:
    """One scenario variant: its runs are independent repetitions of it."""

    scenario: str  # "late onset", "canary", "outage", "pooled", "percent edit"
    variant: str  # "fresh", "late", "healthy"
    share: float  # the stage under test (percent edit: the share before the edit)
    ratio: float  # r; 1 for healthy cells
    edit_to: float = 0.0  # percent edit: the share after the edit

    @property
    def pooled(self) -> bool:
        return self.scenario in ("pooled", "percent edit")

    @property
    def label(self) -> str:
        if self.scenario == "percent edit":
            return f"percent edit {self.share:.0%} -> {self.edit_to:.0%}, pooled x{INSTANCES}"
        if self.scenario == "canary":
            return f"canary {CANARY_PERCENT:g}% then 50%" if self.variant != "fresh" else "50%"
        if self.scenario == "outage":
            return f"outage then regression, {self.share:.0%}"
        if self.scenario == "pooled":
            return f"pooled x{INSTANCES}, {self.share:.0%}"
        return f"{self.share:.0%}"


def cells() -> list[Cell]:
    """Every cell, in a fixed order (a cell's index keys its random streams)."""
    found = [
        Cell("late onset", variant, share, r)
        for share in LATE_SHARES
        for r in LATE_RATIOS
        for variant in ("fresh", "late")
    ]
    found += [
        Cell("canary", "fresh", 0.5, 2.0),
        Cell("canary", "late", 0.5, 2.0),
        Cell("outage", "late", 0.05, 2.0),
        Cell("pooled", "fresh", 0.05, 2.0),
        Cell("late onset", "healthy", 0.05, 1.0),
        Cell("late onset", "healthy", 0.25, 1.0),
        Cell("canary", "healthy", 0.5, 1.0),
        Cell("outage", "healthy", 0.05, 1.0),
        Cell("pooled", "healthy", 0.05, 1.0),
        Cell("percent edit", "healthy", 0.20, 1.0, 0.05),
        Cell("percent edit", "healthy", 0.05, 1.0, 0.20),
    ]
    return found


CELLS = cells()
CHUNK = {"late onset": 20, "canary": 10, "outage": 10, "pooled": 4, "percent edit": 4}


@dataclass(frozen=True)
class Job:
    """Runs ``first`` to ``first + runs - 1`` of one cell."""

    cell: Cell
    first: int
    runs: int
    seed: int
    sizes: Sizes

    def rng(self) -> np.random.Generator:
        key = (SEED_KEY, CELLS.index(self.cell), self.first)
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=key))

    def cost(self) -> float:
        """Rough work, in bench_freeze's task units (about a third of a second each)."""
        cell, sizes = self.cell, self.sizes
        canary = sizes.canary if cell.scenario == "canary" and cell.variant != "fresh" else 0
        if cell.variant == "healthy":
            requests = sizes.healthy_horizon + canary
        elif cell.scenario == "outage":
            requests = sizes.delay_horizon // 2  # a quarter of the runs reach the horizon
        else:
            requests = 100_000 + canary
        per_request = 2e-6 if cell.pooled else 3e-7
        return self.runs * (0.05 + requests * per_request) / 0.33


def plan(sizes: Sizes, seed: int) -> list[Job]:
    jobs = []
    for cell in CELLS:
        if cell.variant != "healthy":
            runs = sizes.delay
        else:
            runs = sizes.pooled_healthy if cell.pooled else sizes.healthy
        chunk = CHUNK[cell.scenario]
        jobs += [
            Job(cell, first, min(chunk, runs - first), seed, sizes)
            for first in range(0, runs, chunk)
        ]
    return jobs


@dataclass
class Run:
    """What one run saw, in requests counted from the first (``nan``: never)."""

    onset: float = math.nan
    stop: float = math.nan  # the first automatic freeze or rollback
    rollback: float = math.nan  # the first automatic rollback
    e_onset: float = math.nan  # the error test's E when the regression began (one process)
    events_onset: float = math.nan  # the new path's error events then
    events_stop: float = math.nan  # the new path's error events in the stop's evidence
    requests: int = 0
    reports: int = 0
    internal_errors: dict[str, int] = field(default_factory=dict)


# -- one run -----------------------------------------------------------------------------


def stages_of(cell: Cell, sizes: Sizes, *, edited: bool = False) -> list[dict[str, Any]]:
    """The policy's stages for ``cell`` (``edited``: after a percent edit)."""
    if cell.scenario == "canary" and cell.variant != "fresh":
        bake = sizes.canary * SECONDS_PER_REQUEST
        return [
            {"name": "canary", "percent": CANARY_PERCENT, "bake": bake, "min_units": MIN_UNITS},
            {"name": "half", "percent": 50.0},
        ]
    share = cell.edit_to if edited else cell.share
    return [{"name": "canary", "percent": round(share * 100, 4)}]


def policy_of(cell: Cell, sizes: Sizes, salt: str, *, edited: bool = False) -> dict[str, Any]:
    rollout: dict[str, Any] = {"salt": salt, "stages": stages_of(cell, sizes, edited=edited)}
    if cell.scenario == "canary" and cell.variant != "fresh":
        rollout["advance"] = "auto"
    return {"rollouts": {NAME: rollout}}


@dataclass
class Users:
    """One run's users: the cumulative volume (to pick by) and each one's error rate."""

    cdf: Floats
    p_error: Floats

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Users:
        volume = rng.lognormal(0.0, VOLUME_SIGMA, USERS)
        cdf = np.cumsum(volume)
        cdf /= cdf[-1]
        propensity = rng.gamma(PROPENSITY_SHAPE, PROPENSITY_SCALE, USERS)
        return cls(cdf, np.minimum(P_CONTROL * propensity, 1.0))

    def pick(self, rng: np.random.Generator, n: int) -> Ints:
        users: Ints = np.searchsorted(self.cdf, rng.random(n), side="right")
        return np.minimum(users, USERS - 1)


@dataclass
class Fleet:
    """The ``Rollouts`` instances of one run (one, or one per simulated process)."""

    clock: FakeClock
    path: Path | None  # the shared SQLite file; None: one instance, in memory
    members: list[Rollouts] = field(default_factory=list)
    handles: list[Rollout] = field(default_factory=list)
    states: list[RolloutState] = field(default_factory=list)
    member: Bools = field(default_factory=lambda: np.zeros(0, dtype=bool))
    seen: Bools = field(default_factory=lambda: np.zeros(0, dtype=bool))
    internal_errors: dict[str, int] = field(default_factory=dict)

    def start(self, policy: dict[str, Any], instances: int) -> None:
        self.member = np.zeros((instances, USERS), dtype=bool)
        self.seen = np.zeros((instances, USERS), dtype=bool)
        for k in range(instances):
            rollouts = self.new(policy)
            self.members.append(rollouts)
            self.handles.append(rollouts[NAME])
            self.states.append(rollouts[NAME].state)
            self.decide_all(k)

    def new(self, policy: dict[str, Any]) -> Rollouts:
        if self.path is None:
            return Rollouts(policy, environment="", clock=self.clock)
        store = SQLiteStore(self.path, refresh_interval=REFRESH_OFF)
        return Rollouts(policy, store=store, environment="", clock=self.clock)

    def decide_all(self, k: int) -> None:
        """Ask instance ``k`` for every user's path under the state it now follows."""
        enabled = self.members[k].enabled
        self.member[k] = np.fromiter((enabled(NAME, key) for key in KEYS), bool, USERS)

    def replace(self, k: int, policy: dict[str, Any]) -> None:
        """A new process with ``policy`` takes instance ``k``'s place (a rolling deploy)."""
        old = self.members[k]
        self.count_failures(old)
        old.store.close()
        rollouts = self.new(policy)
        self.members[k], self.handles[k] = rollouts, rollouts[NAME]
        self.states[k] = rollouts[NAME].state
        self.seen[k] = False
        self.decide_all(k)

    def count_failures(self, rollouts: Rollouts) -> None:
        for kind, n in rollouts.failures.counts().items():
            self.internal_errors[kind] = self.internal_errors.get(kind, 0) + n

    def close(self) -> None:
        """Read the status once, as an operator would (it runs the sample-ratio check)."""
        self.members[0].status(NAME)
        for rollouts in self.members:
            self.count_failures(rollouts)
            if self.path is not None:
                rollouts.store.close()


class Simulation:
    """One run of one cell: the traffic, the schedule, and what the fleet did."""

    def __init__(
        self, cell: Cell, sizes: Sizes, rng: np.random.Generator, salt: str, directory: Path
    ) -> None:
        self.cell, self.sizes, self.rng = cell, sizes, rng
        self.healthy = cell.variant == "healthy"
        self.horizon = sizes.healthy_horizon if self.healthy else sizes.delay_horizon
        self.edited = policy_of(cell, sizes, salt, edited=True)
        self.users = Users.draw(rng)
        path = directory / f"{salt}.db" if cell.pooled else None
        self.fleet = Fleet(FakeClock(START), path)
        self.fleet.start(policy_of(cell, sizes, salt), INSTANCES if cell.pooled else 1)
        self.run = Run()
        self.onset: int | None = None
        if cell.variant == "fresh" or cell.pooled:
            self.onset = 0
        elif cell.scenario in ("late onset", "outage"):
            self.onset = ONSET
        # The canary's onset is its advance: until then, the run may last twice the bake.
        self.end = self.onset + self.horizon if self.onset is not None else 2 * sizes.canary
        self.deploys = (
            [DEPLOY_AT + k * DEPLOY_EVERY for k in range(INSTANCES)]
            if cell.scenario == "percent edit"
            else []
        )
        if cell.pooled:
            self.tick_every = FLUSH_EVERY // INSTANCES
        elif cell.scenario == "canary" and cell.variant != "fresh":
            self.tick_every = TICK_EVERY
        else:
            self.tick_every = 0
        self.ticks = 0

    def done(self) -> bool:
        run = self.run
        if not math.isnan(run.rollback):
            return True  # nothing automatic follows a rollback
        if self.healthy:
            return False
        return not math.isnan(run.stop)  # a delay run ends at its first stop

    def boundary(self, pos: int) -> int:
        """The next request at which something other than traffic happens."""
        nxt = min(self.end, pos + BLOCK)
        if self.tick_every:
            nxt = min(nxt, (pos // self.tick_every + 1) * self.tick_every)
        for at in (self.onset, OUTAGE if self.cell.scenario == "outage" else None):
            if at is not None and pos < at:
                nxt = min(nxt, at)
        for at in self.deploys:
            if pos < at:
                nxt = min(nxt, at)
                break
        return nxt

    def simulate(self) -> Run:
        pos = 0
        try:
            while pos < self.end:
                pos = self.block(pos, self.boundary(pos))
                if self.done():
                    break
                self.between(pos)
        finally:
            self.fleet.close()
        self.run.requests = pos
        self.run.internal_errors = self.fleet.internal_errors
        return self.run

    def block(self, pos: int, nxt: int) -> int:
        """Serve requests ``pos`` to ``nxt - 1``; return where the block ended."""
        fleet, rng, cell = self.fleet, self.rng, self.cell
        fleet.clock.set(START + pos * SECONDS_PER_REQUEST)
        n = nxt - pos
        users = self.users.pick(rng, n)
        instances = len(fleet.members)
        inst: Ints | None = rng.integers(0, instances, n) if instances > 1 else None
        pair = users if inst is None else inst * USERS + users
        member_flat, seen_flat = fleet.member.reshape(-1), fleet.seen.reshape(-1)
        treated = member_flat[pair]
        if cell.scenario == "outage" and pos < OUTAGE:
            err = np.ones(n, dtype=bool)
        else:
            p = self.users.p_error[users]
            if cell.ratio != 1.0 and self.onset is not None and pos >= self.onset:
                p = np.where(treated, np.minimum(p * cell.ratio, 1.0), p)
            err = rng.random(n) < p
        mask = err.copy()
        fresh = np.flatnonzero(~seen_flat[pair])
        if fresh.size:
            _, first = np.unique(pair[fresh], return_index=True)
            mask[fresh[first]] = True
        at = np.flatnonzero(mask)
        units: list[int] = users[at].tolist()
        errors: list[bool] = err[at].tolist()
        where: list[int] = inst[at].tolist() if inst is not None else [0] * len(at)
        handles, states = fleet.handles, fleet.states
        reports = [m.report for m in fleet.members]
        cut, changed = n, -1
        for j, unit, error, k in zip(at.tolist(), units, errors, where, strict=True):
            reports[k](NAME, KEYS[unit], error=error)
            self.run.reports += 1
            if handles[k].state is not states[k]:
                cut, changed = j + 1, k
                break
        seen_flat[pair[:cut]] = True
        if changed >= 0:
            self.follow(changed, pos + cut)
        return pos + cut

    def between(self, pos: int) -> None:
        """At a boundary: the onset's evidence, a deploy, a tick."""
        fleet = self.fleet
        if pos == self.onset and pos and len(fleet.members) == 1:
            self.note_onset()
        if pos in self.deploys:
            k = self.deploys.index(pos)
            fleet.members[k].tick()  # the old process's last flush (and step, if one is due)
            self.follow(k, pos)
            fleet.replace(k, self.edited)
        if self.tick_every and pos % self.tick_every == 0:
            k = self.ticks % len(fleet.members)
            self.ticks += 1
            fleet.members[k].tick()
            self.follow(k, pos)

    def note_onset(self) -> None:
        health = self.fleet.members[0].status(NAME).health
        self.run.e_onset = health.e_errors
        self.run.events_onset = health.error_events_treatment

    def follow(self, k: int, pos: int) -> None:
        """Instance ``k`` may follow a new state: note what happened, decide afresh."""
        fleet, run = self.fleet, self.run
        state = fleet.handles[k].state
        old, fleet.states[k] = fleet.states[k], state
        if state is old:
            return
        if state.stage != old.stage:
            fleet.seen[k] = False  # a new stage visit
        fleet.decide_all(k)
        if state.actor != AUTOMATIC:
            return
        if state.status in STOPS and math.isnan(run.stop):
            run.stop = pos
            [entry] = fleet.members[k].history(NAME, limit=1)
            run.events_stop = float(entry.evidence.get("error_events_treatment") or 0)
        if state.status is Status.ROLLED_BACK and math.isnan(run.rollback):
            run.rollback = pos
        if (
            self.onset is None
            and state.stage == 1
            and state.status is Status.RUNNING
            and self.cell.scenario == "canary"
        ):
            self.onset = pos
            self.end = pos + self.horizon
            self.note_onset()

    @property
    def onset_at(self) -> float:
        return math.nan if self.onset is None else float(self.onset)


def run_job(job: Job) -> list[Run]:
    """The runs of ``job``, in order; quiet, in a temporary directory of their own."""
    rng = job.rng()
    runs = []
    with quiet(), scratch() as directory:
        for index in range(job.first, job.first + job.runs):
            salt = f"{job.seed}-{CELLS.index(job.cell)}-{index}"
            simulation = Simulation(job.cell, job.sizes, rng, salt, directory)
            run = simulation.simulate()
            run.onset = simulation.onset_at
            runs.append(run)
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(OSError):
                    (directory / f"{salt}.db{suffix}").unlink()
    return runs


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Log nothing below critical (failures are counted per run instead); restore afterwards."""
    saved = structlog.get_config()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    try:
        yield
    finally:
        structlog.configure(**saved)


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A temporary directory, in memory when the system has ``/dev/shm``."""
    shm = Path("/dev/shm")
    where = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="freeze-scenarios-", dir=where) as name:
        yield Path(name)


# -- statistics ---------------------------------------------------------------------------


def wilson(k: int, n: int) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion ``k / n``."""
    if n == 0:
        return 0.0, 1.0
    p, z2 = k / n, Z95 * Z95
    centre = p + z2 / (2 * n)
    spread = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z2 / n)), min(1.0, (centre + spread) / (1 + z2 / n))


def upper_median(values: list[float]) -> float:
    """The upper median, a missing value (nan: never happened) counting as infinite."""
    if not values:
        return math.nan
    ordered = np.sort(np.nan_to_num(np.asarray(values, dtype=float), nan=math.inf))
    return float(ordered[len(ordered) // 2])


def quantile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = np.sort(np.nan_to_num(np.asarray(values, dtype=float), nan=math.inf))
    return float(ordered[min(len(ordered) - 1, int(len(ordered) * q))])


def finite_median(values: list[float]) -> float:
    """The median of the values that are not ``nan`` (``nan`` when none is)."""
    kept = [v for v in values if not math.isnan(v)]
    return float(np.median(kept)) if kept else math.nan


def merged(counts: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for one in counts:
        for kind, n in one.items():
            total[kind] = total.get(kind, 0) + n
    return dict(sorted(total.items()))


def summarise(cell: Cell, runs: list[Run], sizes: Sizes) -> dict[str, Any]:
    row: dict[str, Any] = {
        "scenario": cell.scenario,
        "variant": cell.variant,
        "shape": cell.label,
        "share": cell.share,
        "edit_to": cell.edit_to or None,
        "r": cell.ratio,
        "runs": len(runs),
        "mean_requests": float(np.mean([r.requests for r in runs])) if runs else 0.0,
        "mean_reports": float(np.mean([r.reports for r in runs])) if runs else 0.0,
        "internal_errors": merged([r.internal_errors for r in runs]),
    }
    if cell.variant == "healthy":
        frozen = sum(not math.isnan(r.stop) for r in runs)
        rolled = sum(not math.isnan(r.rollback) for r in runs)
        freeze_low, freeze_up = wilson(frozen, len(runs))
        _, rollback_up = wilson(rolled, len(runs))
        row.update(
            horizon=sizes.healthy_horizon,
            freezes=frozen,
            freeze_rate=frozen / len(runs) if runs else math.nan,
            freeze_lower95=freeze_low,
            freeze_upper95=freeze_up,
            rollbacks=rolled,
            rollback_rate=rolled / len(runs) if runs else math.nan,
            rollback_upper95=rollback_up,
            median_stop_at=finite_median([r.stop for r in runs]),
        )
        return row
    reached = [r for r in runs if not math.isnan(r.onset) and not (r.stop <= r.onset)]
    delays = [r.stop - r.onset for r in reached]  # nan: not stopped within the horizon
    caught = sum(not math.isnan(d) for d in delays)
    row.update(
        horizon=sizes.delay_horizon,
        stopped_before_onset=len(runs) - len(reached),
        reached=len(reached),
        caught=caught,
        caught_rate=caught / len(reached) if reached else math.nan,
        median_delay=upper_median(delays),
        p90_delay=quantile(delays, 0.9),
        median_events_at_stop=finite_median([r.events_stop for r in reached]),
        median_e_at_onset=finite_median([r.e_onset for r in reached]),
        median_events_at_onset=finite_median([r.events_onset for r in reached]),
    )
    return row


@dataclass
class Check:
    """One scenario number against its bar; ``judged`` False: reported only."""

    scenario: str
    what: str
    value: float
    limit: float
    judged: bool = True
    shape: str = ""  # the healthy cell's shape, for its table

    @property
    def ok(self) -> bool:
        return self.value <= self.limit  # nan (no median) fails

    def mark(self) -> str:
        if not self.judged:
            return "(not judged)"
        return "PASS" if self.ok else "FAIL"


def analyse(
    results: dict[Cell, list[Run]], sizes: Sizes
) -> tuple[dict[str, list[dict[str, Any]]], list[Check]]:
    """Rows per cell, the comparisons of late and fresh delays, and the checks."""
    rows = {cell: summarise(cell, runs, sizes) for cell, runs in results.items()}
    checks: list[Check] = []
    comparisons: list[dict[str, Any]] = []

    def compare(scenario: str, what: str, late: Cell, fresh: Cell, checked: bool) -> None:
        if late not in rows or fresh not in rows:
            return
        a, b = rows[late]["median_delay"], rows[fresh]["median_delay"]
        ratio = a / b if b > 0 and not (math.isinf(a) and math.isinf(b)) else math.nan
        comparison = {"scenario": scenario, "what": what, "late": rows[late]["shape"],
                      "late_median": a, "fresh": rows[fresh]["shape"], "fresh_median": b,
                      "ratio": ratio, "bar": RATIO_BAR if checked else None}  # fmt: skip
        comparisons.append(comparison)
        if checked:
            checks.append(Check(scenario, f"late/fresh median delay, {what}", ratio, RATIO_BAR,
                                sizes.judged))  # fmt: skip

    for share in LATE_SHARES:
        for r in LATE_RATIOS:
            compare(
                "late onset",
                f"share {share:.0%}, r = {r:g}",
                Cell("late onset", "late", share, r),
                Cell("late onset", "fresh", share, r),
                checked=True,
            )
    compare(
        "canary",
        "canary 5% then 50%, r = 2",
        Cell("canary", "late", 0.5, 2.0),
        Cell("canary", "fresh", 0.5, 2.0),
        checked=True,
    )
    compare(
        "outage",
        "outage, share 5%, r = 2",
        Cell("outage", "late", 0.05, 2.0),
        Cell("late onset", "fresh", 0.05, 2.0),
        checked=True,
    )
    compare(
        "pooled",
        "pooled x4 vs one process, share 5%, r = 2",
        Cell("pooled", "fresh", 0.05, 2.0),
        Cell("late onset", "fresh", 0.05, 2.0),
        checked=False,
    )
    for cell, row in rows.items():
        if cell.variant != "healthy":
            continue
        if sizes.rule == "upper":
            what, value = "false freeze, upper 95% bound", row["freeze_upper95"]
        else:
            what, value = "false freeze, lower 95% bound", row["freeze_lower95"]
        checks.append(Check("healthy", f"{what}, {cell.label}", value, FREEZE_BAR, sizes.judged,
                            cell.label))  # fmt: skip
    ordered = [rows[cell] for cell in CELLS if cell in rows]
    return {"cells": ordered, "comparisons": comparisons}, checks


# -- output -------------------------------------------------------------------------------


def requests(x: float) -> str:
    if math.isnan(x):
        return "-"
    if not math.isfinite(x):
        return "> H"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    return f"{round(x):,}"


def pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.2f}%"


def number(x: float, digits: int = 3) -> str:
    return "-" if math.isnan(x) else f"{x:.{digits}g}"


def table(head: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.extend("| " + " | ".join(row) + " |" for row in body)
    return lines


def report(
    results: dict[str, list[dict[str, Any]]], checks: list[Check], sizes: Sizes
) -> list[str]:
    """The scenarios' markdown section."""
    cells = results["cells"]
    rule = {
        "upper": "the upper 95 % Wilson bound of the false-freeze rate must be <= 5 %",
        "lower": "the lower 95 % Wilson bound must be <= 5 % (no evidence that the rate "
        "exceeds alpha_freeze: too few runs here for the upper bound to pass at a true rate of "
        "4 %; the full mode judges the upper bound)",
        "none": "the false-freeze rate's 95 % Wilson bounds are reported",
    }[sizes.rule]
    out = [
        "",
        "## Scenarios through the public API (benchmarks/freeze_scenarios.py)",
        "",
        f"`Rollouts`, `enabled`, `report`, `tick`, `status`, `history`, `FakeClock`, "
        f"`SQLiteStore` only. {USERS:,} users, volume LogNormal(0, {VOLUME_SIGMA:g}), error "
        f"propensity Gamma(2, 1/2) x {P_CONTROL:.0%}, fresh users and salt per run; the "
        f"default health policy (alpha_freeze 0.05, errors only). Delay = requests from the "
        f"regression's onset to the first automatic freeze or rollback; horizon "
        f"{requests(sizes.delay_horizon)} requests after the onset (a run not stopped: "
        f"infinite, `> H`); medians are upper medians over the runs that reached the onset. "
        f"Healthy runs: {requests(sizes.healthy_horizon)} requests after the onset point, "
        f"prefix included. Pooled: {INSTANCES} `Rollouts`, each with its own `SQLiteStore` on "
        f"one file, the refresh thread asleep (`refresh_interval={REFRESH_OFF:g}`), one "
        f"`tick()` every {FLUSH_EVERY // INSTANCES:,} requests in turn (each instance flushes "
        f"every {FLUSH_EVERY:,} requests). Canary: bake {sizes.canary:,} requests at "
        f"{SECONDS_PER_REQUEST * 1000:g} ms each, min_units {MIN_UNITS}, `tick()` every "
        f"{TICK_EVERY:,} requests.",
        f"Shapes: *late* = the regression after {ONSET:,} healthy requests, *fresh* = from the "
        f"first; canary = {CANARY_PERCENT:g}% until the automatic advance, then 50% with the "
        f"regression (*fresh*: a first stage of 50%); outage = {OUTAGE:,} requests failing on "
        f"both paths, healthy traffic to request {ONSET:,}, then the regression (against the "
        f"fresh 5%, r = 2); percent edit = the one stage's percent edited, the instances "
        f"replaced by processes with the edited policy at requests "
        + ", ".join(f"{DEPLOY_AT + k * DEPLOY_EVERY:,}" for k in range(INSTANCES))
        + ". E and events at onset: one process's `status()` (not pooled).",
        f"Bars: late/fresh median delay <= {RATIO_BAR:g}; healthy: {rule}. The false-rollback "
        f"rate (bar {ROLLBACK_BAR:.1%} elsewhere) is reported."
        + ("" if sizes.judged else " Smoke mode: too few runs to judge any bar."),
        "",
        "### Delays (scenarios 1, 2, 3 and 5)",
        "",
    ]
    body = []
    for row in cells:
        if row["variant"] == "healthy":
            continue
        body.append(
            [
                row["scenario"],
                row["shape"],
                f"{row['r']:g}x",
                row["variant"],
                str(row["runs"]),
                str(row["stopped_before_onset"]),
                pct(row["caught_rate"]),
                requests(row["median_delay"]),
                requests(row["p90_delay"]),
                number(row["median_events_at_stop"]),
                number(row["median_e_at_onset"]),
                number(row["median_events_at_onset"]),
            ]
        )
    out += table(
        [
            "scenario",
            "shape",
            "r",
            "onset",
            "runs",
            "stopped before onset",
            "caught in H",
            "median delay",
            "p90 delay",
            "median new-path events at stop",
            "median E at onset",
            "median new-path events at onset",
        ],
        body,
    )
    out += ["", "### Late onset against a fresh start", ""]
    by_what = {c.what: c for c in checks}
    body = []
    for comparison in results["comparisons"]:
        check = by_what.get(f"late/fresh median delay, {comparison['what']}")
        ratio = number(comparison["ratio"], 3)
        body.append(
            [
                comparison["scenario"],
                comparison["what"],
                requests(comparison["late_median"]),
                requests(comparison["fresh_median"]),
                ratio if check is None else f"{ratio} {check.mark()}",
                f"<= {RATIO_BAR:g}" if check is not None else "(reported)",
            ]
        )
    out += table(
        ["scenario", "comparison", "median delay", "reference median delay", "ratio", "bar"],
        body,
    )
    out += ["", "### Healthy rollouts (r = 1): false freezes and rollbacks (scenarios 4, 5, 6)", ""]
    body = []
    for row in cells:
        if row["variant"] != "healthy":
            continue
        check = next((c for c in checks if c.shape == row["shape"]), None)
        body.append(
            [
                row["shape"],
                f"{row['r']:g}",
                str(row["runs"]),
                requests(row["mean_requests"]),
                pct(row["freeze_rate"]),
                pct(row["freeze_lower95"]),
                pct(row["freeze_upper95"]),
                "-" if check is None else check.mark(),
                pct(row["rollback_rate"]),
                pct(row["rollback_upper95"]),
                requests(row["median_stop_at"]),
                "; ".join(f"{k} {n}" for k, n in row["internal_errors"].items()) or "0",
            ]
        )
    out += table(
        [
            "shape",
            "r",
            "runs",
            "mean requests per run",
            "false freeze",
            "lower 95%",
            "upper 95%",
            "bar <= 5%",
            "false rollback",
            "rollback upper 95%",
            "median request of the stop",
            "internal errors",
        ],
        body,
    )
    failed = [c.what for c in checks if c.judged and not c.ok]
    judged = [c for c in checks if c.judged]
    out += [
        "",
        f"Scenario checks: {len(judged) - len(failed)}/{len(judged)} judged checks pass"
        + ("." if not failed else "; FAIL: " + "; ".join(failed) + "."),
    ]
    return out
