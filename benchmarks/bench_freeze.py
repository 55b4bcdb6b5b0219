"""The auto-freeze acceptance numbers of FREEZE.md, measured through stagedroll's health code.

numpy draws the simulated traffic; every decision is the library's. Per simulated run a
fresh ``stagedroll._health.Health`` is built from a ``stagedroll.Health`` policy, and:

- **Homogeneous error streams** (request-level bucketing, every error is an event; bars
  1-3): the errors are drawn as geometric gaps in request time, each from treatment with
  probability ``rho = pi*r / (pi*r + 1 - pi)``. Since E rises only on a treatment event,
  each run of control events goes in as one ``health.errors.add(0, k)``, each treatment
  event as ``health.errors.add(1, 0)``, and ``health.verdict()`` is called after every
  treatment event: the detector is checked after every event.
- **Heterogeneous users** (bar 1, unit bucketing): 20,000 users with log-normal request
  volume (sigma = 2) and gamma error propensity, bucketed by ``stagedroll.bucket(salt,
  unit) < stagedroll.threshold(percent)`` with a fresh salt per run. Every raw error goes,
  in time order, through ``health.observe(arm, unit, error=True)`` (the library keeps
  each unit's first error, with its own ``SeenUnits``); ``verdict()`` is called when a
  treatment error is counted. For contrast, the same raw errors are also counted one by
  one against the nominal share (``health.errors.add`` per raw error).
- **Latency** (bar 4): log-normal latencies (sigma = 0.5), in the batches the library
  folds (an ``ArmCounts`` of the control arm sets the batch size, its ``fold_at``: small
  at first, doubling up to 1024 control calls). A call is slow above the
  ``health.threshold.value`` in force when it is made (the p95 learnt by the library);
  after each batch, the control latencies go through ``ArmCounts.fold()`` and
  ``health.learn()`` as the library's own fold does. Slow calls are events of
  ``health.slow`` (every slow call: request-level), fed and checked like the errors.

The bars of FREEZE.md were set for one test at the full alpha (freeze at E >= 20). With a
latency test (``latency_p95=True``) the policy splits each alpha between the error and the
latency test (``latency_share`` 0.5 by default: freeze at E >= 40), so each bar is
measured twice: with the test alone, on which acceptance is judged (errors: ``Health()``,
the default policy, no latency test; latency: ``latency_p95=True, latency_share=1``), and
with both tests and the default split (``latency_p95=True``), reported for honesty.
Medians are upper medians over all runs, a run that never froze within the horizon
counting as infinite; upper bounds are the upper ends of 95 % Wilson intervals. Each task
of runs has its own seeded generator, so the numbers depend on ``--seed`` (and the
library), not on ``--workers``.

Beside these tables, ``freeze_scenarios.py`` runs scenarios through the public API only
(``Rollouts``, ``enabled``, ``report``, ``tick``, ``status``, a ``FakeClock``, a
``SQLiteStore`` shared by four instances): late onsets, a canary then 50 %, a shared outage,
pooled processes and percent edits; its jobs share this script's pool of processes.

Modes: the full run; ``--quick`` (a few minutes on 2 cores) runs bar 1's healthy error
streams at the full size (4,000 runs per cell, so that the 5.7 % upper-bound bar can
pass), and the degraded latency cells at the full size too; its other healthy cells have
fewer runs than their bars were sized for, so their rate bars are judged by the 95 %
Wilson bound on the side of the bar (a false-freeze rate passes unless its lower bound is
above the bar: no evidence that it exceeds it), marked with a dagger. ``--smoke`` (seconds)
has too few runs to judge anything: it reports every number and judges none. ``--check``
exits with status 1 when a judged bar fails, and names each one on stderr.

    .venv/bin/python benchmarks/bench_freeze.py [--quick | --smoke] [--json] [--seed N]
        [--workers N] [--check]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import freeze_scenarios as scenarios
import numpy as np
import numpy.typing as npt
from freeze_scenarios import (
    KEYS,
    P_CONTROL,
    PROPENSITY_SCALE,
    PROPENSITY_SHAPE,
    USERS,
    VOLUME_SIGMA,
    upper_median,
    wilson,
)

import stagedroll
from stagedroll import Health as HealthPolicy
from stagedroll import bucket, threshold
from stagedroll._health import Health
from stagedroll._outcomes import ArmCounts
from stagedroll._sequential import MixtureTest

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

HORIZON = 2_000_000
"""Total requests (both arms) a stage gets at most."""
SHARES = (0.01, 0.05, 0.25)
RATIOS = (1.5, 2.0, 5.0)
MEDIAN_BARS = {  # bar 3: median total requests to freeze, at most
    (0.01, 1.5): 385_000,
    (0.01, 2.0): 95_000,
    (0.01, 5.0): 11_000,
    (0.05, 1.5): 75_000,
    (0.05, 2.0): 21_000,
    (0.05, 5.0): 2_300,
    (0.25, 1.5): 21_000,
    (0.25, 2.0): 5_500,
    (0.25, 5.0): 650,
}
FALSE_FREEZE_BAR = 0.05
FALSE_FREEZE_UPPER_BAR = 0.057
FALSE_ROLLBACK_BAR = 0.002
POWER_BAR = 0.99

HETERO_SHARES = (0.01, 0.05)
HETERO_RATIO = 2.0

LATENCY_SIGMA = 0.5
LATENCY_MEDIAN_S = 0.05
SLOWDOWN = 1.2
LATENCY_BARS = {0.01: 20_000, 0.05: 4_500, 0.25: 1_100}
LATENCY_BLOCK = 1 << 16  # calls drawn at once

# A configuration: a name and the knobs of its stagedroll.Health policy.
ERRORS_ALONE: dict[str, Any] = {}  # no latency test: the error test has all of each alpha
SPLIT: dict[str, Any] = {"latency_p95": True}  # latency_share defaults to 0.5
LATENCY_ALONE: dict[str, Any] = {"latency_p95": True, "latency_share": 1.0}
ERROR_CONFIGS = (("errors only (default)", ERRORS_ALONE), ("both tests", SPLIT))
LATENCY_CONFIGS = (("latency only", LATENCY_ALONE), ("both tests", SPLIT))
HETERO_CONFIGS = (("unit, errors only (default)", ERRORS_ALONE), ("unit, both tests", SPLIT))
RAW = "raw vs nominal share, errors only"
SINGLE = ("errors only (default)", "latency only", "unit, errors only (default)")
FIELDS = ("freeze_at", "freeze_treatment_requests", "freeze_treatment_events", "rollback_at")
KINDS = ("errors", "hetero", "latency")
SOURCES = (
    "_health.py",
    "_sequential.py",
    "_sample_ratio.py",
    "_latency.py",
    "_seen.py",
    "_outcomes.py",
    "_bucketing.py",
    # ...and the code that the public-API scenarios go through as well
    "_rollouts.py",
    "_rollout.py",
    "_gate.py",
    "_pool.py",
    "stores/_sqlite.py",
    "stores/_syncer.py",
)


@dataclass(frozen=True)
class Sizes:
    """Runs per cell of each experiment."""

    healthy: int
    degraded: int
    hetero_healthy: int
    hetero_degraded: int
    latency_healthy: dict[float, int]
    latency_degraded: int


MODES = {
    "smoke": Sizes(10, 10, 4, 4, {0.01: 1, 0.05: 1, 0.25: 1}, 5),
    "quick": Sizes(4000, 200, 300, 100, {0.01: 60, 0.05: 120, 0.25: 40}, 1000),
    "full": Sizes(4000, 1000, 4000, 500, {0.01: 1000, 0.05: 2000, 0.25: 600}, 1000),
}
CHUNK = {"errors": 50, "hetero": 50, "latency": 10}  # runs per task (fixed: reproducible)
FULL_HEALTHY = MODES["full"].healthy
JUDGING = {
    "full": "Every bar is judged on its number as measured.",
    "quick": "Quick mode: bar 1's healthy error streams and the degraded latency cells have "
    "the full mode's runs, and are judged as measured; the other healthy cells (users, "
    "latency, scenarios) have fewer runs than their bars were sized for, so their rates are "
    "judged by the 95 % Wilson bound on the side of the bar, marked \u2020 (a false-freeze "
    "rate fails only when its lower bound is above the bar). The other medians are judged "
    "as measured, on fewer runs than the full mode's.",
    "smoke": "Smoke mode: a few runs per cell, too few to judge any bar: every number is "
    "reported, none is judged (so `--check` passes unless the run breaks).",
}


@dataclass(frozen=True)
class Task:
    """Runs ``first`` to ``first + runs - 1`` of one cell."""

    kind: str
    share: float
    effect: float  # error-rate ratio r, or latency slowdown factor
    first: int
    runs: int
    seed: int

    @property
    def cell(self) -> tuple[str, float, float]:
        return (self.kind, self.share, self.effect)

    def rng(self) -> np.random.Generator:
        key = (KINDS.index(self.kind), round(self.share * 1e4), round(self.effect * 1e4))
        return np.random.default_rng(
            np.random.SeedSequence(self.seed, spawn_key=(*key, self.first))
        )

    def cost(self) -> float:
        """Rough work, to hand out the big tasks first."""
        healthy = self.effect == 1.0
        per_run = {"errors": 0.1, "hetero": 0.3, "latency": 0.5}[self.kind]
        return self.runs * per_run * (self.share * 4 + 0.1 if healthy else 0.05)


Fires = dict[str, dict[str, list[float]]]
"""Per configuration, per field of :data:`FIELDS`: one value per run (``nan``: never)."""


@dataclass
class Record:
    """The first freeze and the first rollback of one run under one configuration."""

    freeze_at: float = math.nan
    treatment_requests: float = math.nan
    treatment_events: float = math.nan
    rollback_at: float = math.nan

    @property
    def frozen(self) -> bool:
        return not math.isnan(self.freeze_at)

    def values(self) -> tuple[float, float, float, float]:
        return (self.freeze_at, self.treatment_requests, self.treatment_events, self.rollback_at)


def source_digest() -> str:
    """A digest of the library's health code, to tell which version a report measured."""
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update((Path(stagedroll.__file__).parent / name).read_bytes())
    return digest.hexdigest()[:12]


def new_health(share: float, knobs: dict[str, Any]) -> Health:
    health = Health(HealthPolicy(**knobs))
    health.set_share(share)
    return health


def feed(health: Health, test: MixtureTest, runs: list[int], frozen: bool) -> tuple[int, int, int]:
    """Add treatment events, each after its run of control events; check after each one.

    Returns the index of the event at the first freeze (-1: none, or ``frozen`` already),
    the test's treatment events then, and the index of the first rollback (-1: none).
    """
    add, verdict = test.add, health.verdict
    freeze = events = -1
    for i, k in enumerate(runs):
        if k:
            add(0, k)
        add(1, 0)
        action = verdict().action
        if action is not None:
            if not frozen and freeze < 0:
                freeze, events = i, test.events_treatment
            if action == "rollback":
                return freeze, events, i
    return freeze, events, -1


def control_runs(treatment_at: Ints) -> list[int]:
    """Control events before each treatment event (indices of treatment events given)."""
    runs = treatment_at.copy()
    runs[1:] -= treatment_at[:-1] + 1
    listed: list[int] = runs.tolist()
    return listed


# -- homogeneous error streams ----------------------------------------------------------


def error_stream(rng: np.random.Generator, share: float, ratio: float) -> tuple[Ints, Bools, Ints]:
    """Error events within the horizon: total-request position, arm, treatment requests."""
    p_t = ratio * P_CONTROL
    q = share * p_t + (1 - share) * P_CONTROL  # a request errs
    rho = share * p_t / q  # an error is the treatment's
    share_ok = share * (1 - p_t) / (1 - q)  # a request without error is the treatment's
    expected = HORIZON * q
    gaps = rng.geometric(q, int(expected + 8 * math.sqrt(expected) + 64))
    while gaps.sum() <= HORIZON:  # practically never
        gaps = np.concatenate([gaps, rng.geometric(q, 1024)])
    pos = np.cumsum(gaps)
    n = int(np.searchsorted(pos, HORIZON, side="right"))
    pos, gaps = pos[:n], gaps[:n]
    arm = rng.random(n) < rho
    treatment_requests = np.cumsum(rng.binomial(gaps - 1, share_ok) + arm)
    return pos, arm, treatment_requests


def error_runs(task: Task, rng: np.random.Generator) -> Fires:
    fires = empty_fires(name for name, _ in ERROR_CONFIGS)
    for _ in range(task.runs):
        pos, arm, nt = error_stream(rng, task.share, task.effect)
        at = np.flatnonzero(arm)
        runs = control_runs(at)
        for name, knobs in ERROR_CONFIGS:
            health = new_health(task.share, knobs)
            freeze, events, rollback = feed(health, health.errors, runs, frozen=False)
            record = Record()
            if freeze >= 0:
                i = at[freeze]
                record = Record(float(pos[i]), float(nt[i]), float(events))
            if rollback >= 0:
                record.rollback_at = float(pos[at[rollback]])
            append(fires[name], record)
    return fires


# -- heterogeneous users, unit bucketing ------------------------------------------------


def hetero_stream(
    rng: np.random.Generator, share: float, ratio: float, salt: str
) -> tuple[Floats, list[str], list[bool]]:
    """Every raw error within the horizon, in time order: time, unit, arm."""
    volume = rng.lognormal(0.0, VOLUME_SIGMA, USERS)
    volume /= volume.sum()
    propensity = rng.gamma(PROPENSITY_SHAPE, PROPENSITY_SCALE, USERS)
    cut = threshold(round(share * 100, 4))
    in_treatment = np.fromiter((bucket(salt, k) < cut for k in KEYS), dtype=bool, count=USERS)
    # Each user's errors are a Poisson process in total-request time.
    rate = volume * P_CONTROL * propensity * np.where(in_treatment, ratio, 1.0)
    users = np.repeat(np.arange(USERS), rng.poisson(HORIZON * rate))
    times = rng.random(len(users)) * HORIZON
    order = np.argsort(times, kind="stable")
    users, times = users[order], times[order]
    keys = KEYS
    arms: list[bool] = in_treatment[users].tolist()
    return times, [keys[u] for u in users.tolist()], arms


def observe_all(health: Health, units: list[str], arms: list[bool]) -> tuple[int, int, int]:
    """Every raw error through ``observe``; ``verdict`` when a treatment error is counted."""
    control = ArmCounts(enabled=False, compared=True)
    treatment = ArmCounts(enabled=True, compared=True)
    health.track(control, treatment)
    observe, verdict, test = health.observe, health.verdict, health.errors
    freeze = events = -1
    for i, (unit, treated) in enumerate(zip(units, arms, strict=True)):
        if not treated:
            observe(control, unit, error=True)
        elif observe(treatment, unit, error=True):
            action = verdict().action
            if action is not None:
                if freeze < 0:
                    freeze, events = i, test.events_treatment
                if action == "rollback":
                    return freeze, events, i
    return freeze, events, -1


def hetero_runs(task: Task, rng: np.random.Generator) -> Fires:
    fires = empty_fires([*(name for name, _ in HETERO_CONFIGS), RAW])
    for run in range(task.first, task.first + task.runs):
        salt = f"run-{task.seed}-{task.share}-{task.effect}-{run}"
        times, units, arms = hetero_stream(rng, task.share, task.effect, salt)
        results: list[tuple[str, tuple[int, int, int]]] = []
        for name, knobs in HETERO_CONFIGS:
            health = new_health(task.share, knobs)
            results.append((name, observe_all(health, units, arms)))
        at = np.flatnonzero(np.array(arms, dtype=bool))
        health = new_health(task.share, ERRORS_ALONE)
        freeze, events, rollback = feed(health, health.errors, control_runs(at), frozen=False)
        at_list: list[int] = at.tolist()
        raw = (
            at_list[freeze] if freeze >= 0 else -1,
            events,
            at_list[rollback] if rollback >= 0 else -1,
        )
        results.append((RAW, raw))
        for name, (freeze, events, rollback) in results:
            record = Record()
            if freeze >= 0:
                record = Record(float(times[freeze]), math.nan, float(events))
            if rollback >= 0:
                record.rollback_at = float(times[rollback])
            append(fires[name], record)
    return fires


# -- latency ----------------------------------------------------------------------------


@dataclass
class Calls:
    """One run's calls, drawn in blocks on demand: arm (treatment?) and latency (s)."""

    rng: np.random.Generator
    share: float
    slowdown: float
    blocks: list[tuple[Bools, Floats, Ints]] = field(default_factory=list)

    def block(self, b: int) -> tuple[Bools, Floats, Ints]:
        while len(self.blocks) <= b:
            arm = self.rng.random(LATENCY_BLOCK) < self.share
            latency = self.rng.standard_normal(LATENCY_BLOCK)
            latency *= LATENCY_SIGMA
            latency += math.log(LATENCY_MEDIAN_S)
            np.exp(latency, out=latency)
            if self.slowdown != 1.0:
                latency[arm] *= self.slowdown
            self.blocks.append((arm, latency, np.flatnonzero(~arm)))
        return self.blocks[b]

    def batch(self, start: int, controls: int) -> tuple[Bools, Floats]:
        """The calls from ``start`` on, up to and including the ``controls``-th control call."""
        b, offset = divmod(start, LATENCY_BLOCK)
        arms: list[Bools] = []
        latencies: list[Floats] = []
        while True:
            arm, latency, control_at = self.block(b)
            first = int(np.searchsorted(control_at, offset))
            if len(control_at) - first >= controls:
                end = int(control_at[first + controls - 1]) + 1
                arms.append(arm[offset:end])
                latencies.append(latency[offset:end])
                break
            arms.append(arm[offset:])
            latencies.append(latency[offset:])
            controls -= len(control_at) - first
            b, offset = b + 1, 0
        if len(arms) == 1:
            return arms[0], latencies[0]
        return np.concatenate(arms), np.concatenate(latencies)


@dataclass
class Watch:
    """One configuration's health gate following a run's calls."""

    health: Health
    control: ArmCounts = field(default_factory=lambda: ArmCounts(enabled=False, compared=True))
    treatment: ArmCounts = field(default_factory=lambda: ArmCounts(enabled=True, compared=True))
    record: Record = field(default_factory=Record)
    done: bool = False

    def __post_init__(self) -> None:
        self.health.track(self.control, self.treatment)


def latency_run(calls: Calls, healths: list[Health]) -> list[Record]:
    """Feed one run's calls to every health gate, batch by batch as the library folds them.

    The gates go in lockstep: the control arm's ``fold_at`` (the library's) sets each batch,
    which is drawn once; the gates that have the same threshold share its classification.
    """
    watches = [Watch(health) for health in healths]
    start = treated = 0
    while start < HORIZON:
        live = [w for w in watches if not w.done]
        if not live:
            break
        sizes = {w.control.fold_at for w in live}
        assert len(sizes) == 1, "the gates fold at the same control counts"
        arm, latency = calls.batch(start, sizes.pop())
        if start + len(arm) > HORIZON:
            arm, latency = arm[: HORIZON - start], latency[: HORIZON - start]
        classified: dict[float, tuple[Ints, Ints, list[int], int]] = {}
        for w in live:
            slow_at_value = w.health.threshold.value
            seen = classified.get(slow_at_value)
            if seen is None:
                slow_at = np.flatnonzero(latency > slow_at_value)
                at = np.flatnonzero(arm[slow_at])
                tail = len(slow_at) - 1 - int(at[-1]) if len(at) else len(slow_at)
                seen = classified[slow_at_value] = (slow_at, at, control_runs(at), tail)
            slow_at, at, runs, tail = seen
            slow, record = w.health.slow, w.record
            if runs:
                freeze, events, rollback = feed(w.health, slow, runs, record.frozen)
                if freeze >= 0:
                    i = int(slow_at[at[freeze]])
                    record.freeze_at = float(start + i + 1)
                    record.treatment_requests = float(treated + np.count_nonzero(arm[: i + 1]))
                    record.treatment_events = float(events)
                if rollback >= 0:
                    record.rollback_at = float(start + int(slow_at[at[rollback]]) + 1)
                    w.done = True
                    continue
            if tail:
                slow.add(0, tail)
        treated += int(np.count_nonzero(arm))
        batch = latency[~arm].tolist()
        for w in live:
            if not w.done:
                w.control.pending.extend(batch)
                w.health.learn(w.control.fold())  # what Outcomes.fold does with a control batch
        start += len(arm)
    return [w.record for w in watches]


def latency_runs(task: Task, rng: np.random.Generator) -> Fires:
    fires = empty_fires(name for name, _ in LATENCY_CONFIGS)
    for _ in range(task.runs):
        calls = Calls(rng, task.share, task.effect)
        healths = [new_health(task.share, knobs) for _, knobs in LATENCY_CONFIGS]
        for (name, _), record in zip(LATENCY_CONFIGS, latency_run(calls, healths), strict=True):
            append(fires[name], record)
    return fires


# -- tasks and results ------------------------------------------------------------------


def empty_fires(names: Iterable[str]) -> Fires:
    return {name: {f: [] for f in FIELDS} for name in names}


def append(fires: dict[str, list[float]], record: Record) -> None:
    for f, value in zip(FIELDS, record.values(), strict=True):
        fires[f].append(value)


RUNNERS: dict[str, Callable[[Task, np.random.Generator], Fires]] = {
    "errors": error_runs,
    "hetero": hetero_runs,
    "latency": latency_runs,
}


def run_task(task: Task) -> tuple[Task, Fires]:
    return task, RUNNERS[task.kind](task, task.rng())


Work = Task | scenarios.Job
Done = tuple[Task, Fires] | tuple[scenarios.Job, list[scenarios.Run]]


def run_work(work: Work) -> Done:
    """A task of this script, or a job of the public-API scenarios."""
    if isinstance(work, Task):
        return run_task(work)
    return work, scenarios.run_job(work)


def plan(sizes: Sizes, seed: int) -> list[Task]:
    cells: list[tuple[str, float, float, int]] = []
    for share in SHARES:
        cells.append(("errors", share, 1.0, sizes.healthy))
        cells.extend(("errors", share, r, sizes.degraded) for r in RATIOS)
    for share in HETERO_SHARES:
        cells.append(("hetero", share, 1.0, sizes.hetero_healthy))
        cells.append(("hetero", share, HETERO_RATIO, sizes.hetero_degraded))
    for share in SHARES:
        cells.append(("latency", share, 1.0, sizes.latency_healthy[share]))
        cells.append(("latency", share, SLOWDOWN, sizes.latency_degraded))
    return [
        Task(kind, share, effect, first, min(CHUNK[kind], runs - first), seed)
        for kind, share, effect, runs in cells
        for first in range(0, runs, CHUNK[kind])
    ]


def execute(
    work: Sequence[Work], workers: int, progress: bool
) -> tuple[dict[tuple[str, float, float], Fires], dict[scenarios.Cell, list[scenarios.Run]]]:
    """Run every task and job in one pool, the big ones first; merge the results by cell."""
    work = sorted(work, key=lambda w: w.cost(), reverse=True)
    done: list[Done] = []
    start, every = time.perf_counter(), max(1, len(work) // 25)

    def note(result: Done) -> None:
        done.append(result)
        if progress and (len(done) % every == 0 or len(done) == len(work)):
            elapsed = time.perf_counter() - start
            print(f"  {len(done)}/{len(work)} tasks, {elapsed:.0f} s", file=sys.stderr, flush=True)

    if workers <= 1:
        for one in work:
            note(run_work(one))
    else:
        with multiprocessing.get_context().Pool(workers) as pool:
            for result in pool.imap_unordered(run_work, work):
                note(result)
    cells: dict[tuple[str, float, float], Fires] = {}
    runs: dict[scenarios.Cell, list[scenarios.Run]] = {}
    tasks = [(t, f) for t, f in done if isinstance(t, Task)]
    for task, fires in sorted(tasks, key=lambda d: (d[0].cell, d[0].first)):
        assert isinstance(fires, dict)
        merged = cells.setdefault(task.cell, empty_fires(fires))
        for name, columns in fires.items():
            for f, values in columns.items():
                merged[name][f].extend(values)
    jobs = [(j, r) for j, r in done if isinstance(j, scenarios.Job)]
    for job, results in sorted(jobs, key=lambda d: (scenarios.CELLS.index(d[0].cell), d[0].first)):
        assert isinstance(results, list)
        runs.setdefault(job.cell, []).extend(results)
    return cells, runs


# -- statistics -------------------------------------------------------------------------


def wilson_upper(k: int, n: int) -> float:
    """Upper end of the 95 % Wilson score interval of a proportion ``k / n``."""
    return wilson(k, n)[1]


def summarise(columns: dict[str, list[float]]) -> dict[str, Any]:
    freeze = np.asarray(columns["freeze_at"], dtype=float)
    rollback = np.asarray(columns["rollback_at"], dtype=float)
    n = len(freeze)
    frozen, rolled = int(np.isfinite(freeze).sum()), int(np.isfinite(rollback).sum())
    return {
        "runs": n,
        "freeze_rate": frozen / n,
        "freeze_upper95": wilson_upper(frozen, n),
        "rollback_rate": rolled / n,
        "rollback_upper95": wilson_upper(rolled, n),
        "median_total": upper_median(columns["freeze_at"]),
        "p90_total": float(np.sort(np.nan_to_num(freeze, nan=math.inf))[int(n * 0.9)]),
        "median_treatment_requests": upper_median(columns["freeze_treatment_requests"]),
        "median_treatment_events": upper_median(columns["freeze_treatment_events"]),
        "median_total_rollback": upper_median(columns["rollback_at"]),
    }


@dataclass
class Check:
    """One number against its bar.

    ``rule`` says how it is judged: ``"value"``, the number itself; ``"bound"``, the 95 %
    Wilson bound of a rate on the side of the bar (lower for an upper bar, upper for a lower
    bar: the run gives no evidence that the rate is beyond it), when the cell has fewer runs
    than the bar was sized for; ``"none"``, reported only (a median of a smoke run).
    """

    bar: int
    configuration: str
    what: str
    value: float
    limit: float
    at_most: bool = True
    rule: str = "value"
    bound: float = math.nan

    @property
    def ok(self) -> bool:
        if self.rule == "none":
            return True
        value = self.bound if self.rule == "bound" else self.value
        return value <= self.limit if self.at_most else value >= self.limit

    @property
    def judged(self) -> bool:
        """Whether ``--check`` fails on it: acceptance is judged on the single tests."""
        return self.configuration in SINGLE and self.rule != "none"

    def mark(self) -> str:
        if self.rule == "none":
            return "(not judged)"
        return ("PASS" if self.ok else "FAIL") + ("\u2020" if self.rule == "bound" else "")


def full_runs(kind: str, share: float, effect: float) -> int:
    """The runs that the full mode gives a cell: what its bars were sized for."""
    full = MODES["full"]
    if kind == "errors":
        return full.healthy if effect == 1.0 else full.degraded
    if kind == "hetero":
        return full.hetero_healthy if effect == 1.0 else full.hetero_degraded
    return full.latency_healthy[share] if effect == 1.0 else full.latency_degraded


def analyse(
    cells: dict[tuple[str, float, float], Fires], mode: str
) -> tuple[dict[str, Any], list[Check]]:
    rows: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    checks: list[Check] = []
    for (kind, share, effect), fires in sorted(cells.items()):
        for name, columns in fires.items():
            row = {"share": share, "effect": effect, "config": name, **summarise(columns)}
            rows[kind].append(row)
            checks.extend(row_checks(kind, row, full_runs(kind, share, effect)))
    if mode == "smoke":
        for check in checks:
            check.rule = "none"  # a few runs per cell: nothing can be judged
    return rows, checks


def row_checks(kind: str, row: dict[str, Any], sized: int) -> list[Check]:
    """The checks of one row; ``sized``: the runs its bars were sized for."""
    share, effect, name = row["share"], row["effect"], row["config"]
    where = f"share {share:.0%}"
    runs = row["runs"]

    def rate(
        bar: int, config: str, what: str, key: str, limit: float, *, at_most: bool = True
    ) -> Check:
        if runs >= sized:
            return Check(bar, config, what, row[key], limit, at_most)
        low, high = wilson(round(row[key] * runs), runs)
        return Check(bar, config, what, row[key], limit, at_most, "bound", low if at_most else high)

    if kind == "errors" and effect == 1.0:
        return [
            rate(1, name, f"false freeze, {where}", "freeze_rate", FALSE_FREEZE_BAR),
            Check(
                1,
                name,
                f"false freeze upper bound, {where}",
                row["freeze_upper95"],
                FALSE_FREEZE_UPPER_BAR,
                rule="value" if runs >= sized else "none",
            ),
            rate(1, name, f"false rollback, {where}", "rollback_rate", FALSE_ROLLBACK_BAR),
        ]
    if kind == "errors":
        cell = f"{where}, r = {effect:g}"
        return [
            rate(2, name, f"power, {cell}", "freeze_rate", POWER_BAR, at_most=False),
            Check(
                3,
                name,
                f"median total requests, {cell}",
                row["median_total"],
                MEDIAN_BARS[(share, effect)],
            ),
        ]
    if kind == "hetero" and effect == 1.0 and name != RAW:
        config = name.removeprefix("unit, ")
        return [rate(1, config, f"false freeze, users, {where}", "freeze_rate", FALSE_FREEZE_BAR)]
    if kind == "latency" and effect == 1.0:
        return [rate(4, name, f"latency false freeze, {where}", "freeze_rate", FALSE_FREEZE_BAR)]
    if kind == "latency":
        return [
            Check(
                4,
                name,
                f"latency median total requests, {where}",
                row["median_total"],
                LATENCY_BARS[share],
            )
        ]
    return []


def failed_bars(checks: list[Check], scenario_checks: list[scenarios.Check]) -> list[str]:
    """The judged bars that fail, in words: what ``--check`` exits 1 for."""
    failed = [f"bar {c.bar}, {c.configuration}: {c.what}" for c in checks if c.judged and not c.ok]
    failed += [
        f"scenario {c.scenario}: {c.what} = {c.value:.4g} (bar <= {c.limit:g})"
        for c in scenario_checks
        if c.judged and not c.ok
    ]
    return failed


# -- output -----------------------------------------------------------------------------


def requests(x: float) -> str:
    if not math.isfinite(x):
        return "> H"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    return f"{round(x):,}"


def count(x: float) -> str:
    return f"{x:.0f}" if math.isfinite(x) else "-"


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def marked(check: Check | None, text: str) -> str:
    return text if check is None else f"{text} {check.mark()}"


def table(head: Sequence[str], body: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.extend("| " + " | ".join(row) + " |" for row in body)
    return lines


def report(
    rows: dict[str, list[dict[str, Any]]],
    checks: list[Check],
    meta: dict[str, Any],
    scenario_rows: dict[str, list[dict[str, Any]]],
    scenario_checks: list[scenarios.Check],
) -> list[str]:
    def find(config: str, what: str) -> Check | None:
        return next((c for c in checks if c.configuration == config and c.what == what), None)

    sizes = meta["runs_per_cell"]
    out = [
        "# Auto-freeze benchmark (FREEZE.md bars, through stagedroll's health code)",
        "",
        f"stagedroll {meta['stagedroll']} (health and gate code sha256 "
        f"{meta['health_source_sha256']}), "
        f"Python {meta['python']}, numpy {meta['numpy']}; "
        f"mode {meta['mode']}, seed {meta['seed']}, {meta['workers']} worker(s), "
        f"total runtime {meta['runtime_s']:.0f} s.",
        f"Horizon H = {requests(HORIZON)} total requests per run; control error rate "
        f"{P_CONTROL:.0%}; policy alpha_freeze 0.05, alpha_rollback 0.001, min_events 3.",
        f"Runs per cell: errors {sizes['healthy']} healthy / {sizes['degraded']} degraded; "
        f"users {sizes['hetero_healthy']} healthy / {sizes['hetero_degraded']} at r = "
        f"{HETERO_RATIO:g}; latency healthy "
        + ", ".join(f"{n} at {s:.0%}" for s, n in sizes["latency_healthy"].items())
        + f" / {sizes['latency_degraded']} at +{SLOWDOWN - 1:.0%}.",
        "Configurations: *errors only (default)* = `Health()`, no latency test: the error "
        "test gets all of each alpha (freeze at E >= 20, rollback at E >= 1000), as the bars "
        "assume; *latency only* = `Health(latency_p95=True, latency_share=1)`; *both tests* = "
        "`Health(latency_p95=True)`, latency_share 0.5 (E >= 40 and E >= 2000 per test). "
        "Medians are upper medians over all runs (no freeze within H = infinite); bounds "
        "are 95 % Wilson upper ends.",
        "",
        JUDGING[meta["mode"]],
        "",
        "## Bar 1: false freeze and false rollback, healthy errors (r = 1), every error an event",
        "",
    ]
    body = []
    for row in rows["errors"]:
        if row["effect"] != 1.0:
            continue
        name, where = row["config"], f"share {row['share']:.0%}"
        body.append(
            [
                f"{row['share']:.0%}",
                name,
                str(row["runs"]),
                marked(find(name, f"false freeze, {where}"), pct(row["freeze_rate"])),
                marked(
                    find(name, f"false freeze upper bound, {where}"), pct(row["freeze_upper95"])
                ),
                marked(find(name, f"false rollback, {where}"), pct(row["rollback_rate"])),
            ]
        )
    out += table(
        [
            "share",
            "configuration",
            "runs",
            "false freeze (bar <= 5.0%)",
            "upper 95% (bar <= 5.7%)",
            "false rollback (bar <= 0.2%)",
        ],
        body,
    )
    if meta["runs_per_cell"]["healthy"] < FULL_HEALTHY:
        out += [
            "",
            "The 5.7 % upper-bound bar is sized for 4,000 runs; with fewer runs it fails even "
            "when the rate is at or a little below 5 %, so it is not judged here.",
        ]
    out += ["", "## Bars 2 and 3: degraded treatment (error rate r x 1%)", ""]
    body = []
    for row in rows["errors"]:
        if row["effect"] == 1.0:
            continue
        name, cell = row["config"], f"share {row['share']:.0%}, r = {row['effect']:g}"
        body.append(
            [
                f"{row['share']:.0%}",
                f"{row['effect']:g}x",
                name,
                str(row["runs"]),
                marked(find(name, f"power, {cell}"), pct(row["freeze_rate"])),
                marked(find(name, f"median total requests, {cell}"), requests(row["median_total"])),
                requests(MEDIAN_BARS[(row["share"], row["effect"])]),
                requests(row["p90_total"]),
                requests(row["median_treatment_requests"]),
                count(row["median_treatment_events"]),
                requests(row["median_total_rollback"]),
            ]
        )
    out += table(
        [
            "share",
            "r",
            "configuration",
            "runs",
            "power in H (bar >= 99%)",
            "median total requests to freeze",
            "bar 3",
            "p90 total",
            "median treatment requests",
            "median treatment errors",
            "median total to rollback",
        ],
        body,
    )
    out += [
        "",
        f"## Bar 1, heterogeneous users: {USERS:,} users, volume LogNormal(0, {VOLUME_SIGMA:g}), "
        "error propensity Gamma(2, 1/2) x 1%, bucketed by stagedroll.bucket",
        "",
        "Unit rows: every raw error through Health.observe (first error per unit). "
        f"The raw row counts every raw error against the nominal share (no bar: FREEZE.md "
        f"says it freezes 10-25 % of healthy rollouts). Degraded rows: r = {HETERO_RATIO:g}.",
        "",
    ]
    body = []
    for row in rows["hetero"]:
        name, healthy = row["config"], row["effect"] == 1.0
        check = find(name.removeprefix("unit, "), f"false freeze, users, share {row['share']:.0%}")
        body.append(
            [
                f"{row['share']:.0%}",
                "1 (healthy)" if healthy else f"{row['effect']:g}x",
                name,
                str(row["runs"]),
                marked(check if healthy else None, pct(row["freeze_rate"])),
                pct(row["freeze_upper95"]),
                pct(row["rollback_rate"]),
                "-" if healthy else requests(row["median_total"]),
                "-" if healthy else count(row["median_treatment_events"]),
            ]
        )
    out += table(
        [
            "share",
            "r",
            "configuration",
            "runs",
            "freeze rate (healthy bar <= 5%)",
            "upper 95%",
            "rollback rate",
            "median total requests to freeze",
            "median treatment events",
        ],
        body,
    )
    out += [
        "",
        f"## Bar 4: latency, LogNormal(sigma = {LATENCY_SIGMA:g}), slow above the learnt p95 "
        "of control, every slow call an event",
        "",
    ]
    body = []
    for row in rows["latency"]:
        name, where, healthy = row["config"], f"share {row['share']:.0%}", row["effect"] == 1.0
        if healthy:
            rate = marked(find(name, f"latency false freeze, {where}"), pct(row["freeze_rate"]))
            median, bar = "-", "<= 5% false freeze"
        else:
            rate = pct(row["freeze_rate"])
            median = marked(
                find(name, f"latency median total requests, {where}"), requests(row["median_total"])
            )
            bar = requests(LATENCY_BARS[row["share"]])
        body.append(
            [
                f"{row['share']:.0%}",
                "none" if healthy else f"+{row['effect'] - 1:.0%}",
                name,
                str(row["runs"]),
                rate,
                pct(row["freeze_upper95"]),
                pct(row["rollback_rate"]),
                median,
                bar,
                "-" if healthy else requests(row["median_treatment_requests"]),
                "-" if healthy else count(row["median_treatment_events"]),
            ]
        )
    out += table(
        [
            "share",
            "slowdown",
            "configuration",
            "runs",
            "freeze rate",
            "upper 95%",
            "rollback rate",
            "median total requests to freeze",
            "bar 4",
            "median treatment requests",
            "median treatment slow calls",
        ],
        body,
    )
    out += scenarios.report(scenario_rows, scenario_checks, scenarios.MODES[meta["mode"]])
    out += [
        "",
        "## Summary (acceptance is judged on the single-test configurations and the scenarios)",
        "",
    ]
    body = []
    for number in (1, 2, 3, 4):
        for config in dict.fromkeys(c.configuration for c in checks if c.bar == number):
            mine = [c for c in checks if c.bar == number and c.configuration == config]
            mine = [c for c in mine if c.rule != "none"]
            failed = [c.what for c in mine if not c.ok]
            judged = "yes" if config in SINGLE else "no (reported)"
            body.append(
                [
                    str(number),
                    config,
                    judged if mine else "no (too few runs)",
                    f"{len(mine) - len(failed)}/{len(mine)}",
                    verdict(bool(mine), failed),
                ]
            )
    for scenario in dict.fromkeys(c.scenario for c in scenario_checks):
        judged_checks = [c for c in scenario_checks if c.scenario == scenario and c.judged]
        failed = [c.what for c in judged_checks if not c.ok]
        body.append(
            [
                "scenarios",
                scenario,
                "yes" if judged_checks else "no (too few runs)",
                f"{len(judged_checks) - len(failed)}/{len(judged_checks)}",
                verdict(bool(judged_checks), failed),
            ]
        )
    out += table(["bar", "configuration", "judged", "checks passed", "result"], body)
    return out


def verdict(judged: bool, failed: list[str]) -> str:
    if not judged:
        return "-"
    return "PASS" if not failed else "FAIL: " + "; ".join(failed)


def jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="CI-sized run (a few minutes)")
    size.add_argument("--smoke", action="store_true", help="a few runs per cell (seconds)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--seed", type=int, default=20240611, help="seed of every stream")
    parser.add_argument("--workers", type=positive, default=2, help="processes (default 2)")
    parser.add_argument(
        "--check", action="store_true", help="exit with status 1 if a judged bar fails"
    )
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    sizes, scenario_sizes = MODES[mode], scenarios.MODES[mode]

    start, source = time.perf_counter(), source_digest()
    work: list[Work] = [*plan(sizes, args.seed), *scenarios.plan(scenario_sizes, args.seed)]
    cells, runs = execute(work, args.workers, progress=not args.smoke)
    rows, checks = analyse(cells, mode)
    scenario_rows, scenario_checks = scenarios.analyse(runs, scenario_sizes)
    failed = failed_bars(checks, scenario_checks)
    meta = {
        "stagedroll": stagedroll.__version__,
        "health_source_sha256": source,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "mode": mode,
        "seed": args.seed,
        "workers": args.workers,
        "horizon": HORIZON,
        "runs_per_cell": {
            "healthy": sizes.healthy,
            "degraded": sizes.degraded,
            "hetero_healthy": sizes.hetero_healthy,
            "hetero_degraded": sizes.hetero_degraded,
            "latency_healthy": sizes.latency_healthy,
            "latency_degraded": sizes.latency_degraded,
        },
        "scenario_sizes": asdict(scenario_sizes),
        "runtime_s": time.perf_counter() - start,
    }
    if args.json:
        bars = [
            {
                "bar": c.bar,
                "configuration": c.configuration,
                "check": c.what,
                "value": c.value,
                "limit": c.limit,
                "at_most": c.at_most,
                "rule": c.rule,
                "bound": c.bound,
                "pass": c.ok,
                "judged": c.judged,
            }
            for c in checks
        ]
        scenario_rows["checks"] = [
            {"scenario": c.scenario, "check": c.what, "value": c.value, "limit": c.limit,
             "pass": c.ok, "judged": c.judged}
            for c in scenario_checks
        ]  # fmt: skip
        document = {"meta": meta, **rows, "bars": bars, "scenarios": scenario_rows}
        print(json.dumps(jsonable({**document, "failed": failed}), indent=2))
    else:
        print("\n".join(report(rows, checks, meta, scenario_rows, scenario_checks)))
    if args.check and failed:
        print(f"--check: {len(failed)} judged bar(s) failed:", file=sys.stderr)
        for what in failed:
            print(f"  {what}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
