"""The cost of a decision, against the floor of one inline hash and one comparison.

Every candidate runs in this one process, interleaved with the floor, repeated; the best
(minimum) of the repeats is taken, so a noisy neighbour only ever makes a number worse.

    .venv/bin/python benchmarks/bench_decide.py [--quick] [--json] [--check]
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import mmh3
import structlog

import stagedroll
from stagedroll import BucketingScheme, Rollouts, threshold

NAME = "new-checkout"
TARGETED = "new-checkout-targeted"
UNTESTED = "new-checkout-no-health"
UNITS = [f"user-{i}" for i in range(1000)]
ATTRIBUTES: dict[str, object] = {"plan": "free", "country": "DE"}  # matches no segment
# The latency test on: the recorded outcomes' slow calls take the locked path.
QUARTER: dict[str, Any] = {
    "stages": [{"name": "quarter", "percent": 25}],
    "health": {"latency_p95": True},
}
# NAME's rollout bucketed as another flag system does, NAME being the flag's key: the cost
# of each scheme on the decision path, beside the default scheme's in the same rounds.
SCHEMES: dict[str, dict[str, Any]] = {
    "unleash": {"scheme": "unleash", "group_id": NAME},
    "growthbook v2": {"scheme": "growthbook", "seed": NAME, "hash_version": 2},
    "flagd": {"scheme": "flagd", "flag_key": NAME},
    "launchdarkly": {"scheme": "launchdarkly", "flag_key": NAME, "salt": "salt"},
}


def schemed(label: str) -> str:
    """The name of NAME's twin rollout bucketed by scheme ``label``."""
    return f"{NAME}.{SCHEMES[label]['scheme']}"


POLICY: dict[str, Any] = {
    "segments": {"beta": {"rules": [{"attribute": "plan", "op": "eq", "value": "beta"}]}},
    "rollouts": {
        NAME: QUARTER,
        **{schemed(label): {**QUARTER, "bucketing": b} for label, b in SCHEMES.items()},
        UNTESTED: {
            "salt": NAME,
            "stages": [{"name": "quarter", "percent": 25}],
            "health": {"enabled": False},
        },
        TARGETED: {
            "salt": NAME,
            "stages": [{"name": "quarter", "percent": 25, "segments": ["beta"]}],
            "targeting": {"allow": ["user-vip"], "deny": ["user-banned"]},
        },
    },
}
# The name of a measured candidate, and the most it may cost (as a multiple of the floor).
TARGETS = {
    "Rollout.enabled": 1.5,
    "Rollouts.enabled": 2.0,
    "Rollouts.decide (3 rules)": 8.0,
    "record an outcome": 3.0,
    "guard overhead, health on": 4.5,
    "guard overhead, health off": 4.0,
    # The same guard as "health on", of a Rollouts with both exporters registered: they read
    # the counters at scrape time, so the target is the one of the guard without them.
    "guard overhead, exporters on": 4.5,
}
# Candidates also compared with another candidate of the same run (for information): the
# decision path of a rollout of another scheme, against the default scheme's same call.
BASELINES = {f"Rollouts.enabled, {label}": "Rollouts.enabled" for label in SCHEMES}
# Latencies of the recorded outcomes: log-normal around 1 ms, so about 5 % are slow calls.
LATENCIES = [0.001 * math.exp(0.5 * random.Random(i).gauss(0.0, 1.0)) for i in range(len(UNITS))]

Bench = Callable[[int], int]  # runs `loops` passes over UNITS; returns the elapsed ns


def noop_new(u: str) -> str:
    return u


def noop_old(u: str) -> str:
    return u


def exported() -> Rollouts:
    """A ``Rollouts`` of the same policy with the Prometheus and OpenTelemetry exporters
    registered (a registry and an SDK meter provider of their own), scraped once."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from prometheus_client import CollectorRegistry, generate_latest

    from stagedroll.exporters import otel, prometheus

    rollouts = Rollouts(POLICY, environment=None)
    registry, reader = CollectorRegistry(), InMemoryMetricReader()
    prometheus.register(rollouts, registry)
    otel.instrument(rollouts, MeterProvider(metric_readers=[reader]))
    generate_latest(registry)
    reader.get_metrics_data()
    return rollouts


def bucket_step(scheme: BucketingScheme) -> Bench:
    """The bucket step of another system's scheme alone, for information."""
    units, position, cut = UNITS, scheme.position, scheme.cut(25)

    def run(loops: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(loops):
            for u in units:
                position(u) < cut  # noqa: B015 - the comparison is the work
        return time.perf_counter_ns() - start

    return run


def enabled_by_name(rollouts: Rollouts, name: str) -> Bench:
    """``rollouts.enabled(name, u)``: the loop of ``Rollouts.enabled``, for rollout ``name``."""
    units, rollouts_enabled = UNITS, rollouts.enabled

    def run(loops: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(loops):
            for u in units:
                rollouts_enabled(name, u)
        return time.perf_counter_ns() - start

    return run


def candidates(rollouts: Rollouts, watched: Rollouts) -> dict[str, Bench]:
    """One timing loop per candidate; each loop body is the call under test, nothing else.

    ``watched`` is a ``Rollouts`` of the same policy with both exporters registered.
    """
    units, salt, prefix, t, hash_ = UNITS, NAME, NAME + ":", threshold(25), mmh3.hash
    rollout_enabled = rollouts[NAME].enabled
    rollouts_enabled, rollouts_decide = rollouts.enabled, rollouts.decide
    guarded = rollouts.guard(NAME, fallback=noop_old, unit=lambda u: u)(noop_new)
    untested = rollouts.guard(UNTESTED, fallback=noop_old, unit=lambda u: u)(noop_new)
    exported_guard = watched.guard(NAME, fallback=noop_old, unit=lambda u: u)(noop_new)
    bare, attributes = noop_new, ATTRIBUTES
    # What the guards, track and report call to record one successful outcome.
    router = rollouts[NAME]._router
    record_outcome, view = router.record, router.view
    outcomes = [
        (view.treatment if rollouts.enabled(NAME, u) else view.control, latency, u)
        for u, latency in zip(UNITS, LATENCIES, strict=True)
    ]

    def floor(loops: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(loops):
            for u in units:
                hash_(salt + ":" + u, 0, False) < t  # noqa: B015 - the comparison is the work
        return time.perf_counter_ns() - start

    def floor_prefix(loops: int) -> int:  # for information: the library pre-joins "salt:"
        start = time.perf_counter_ns()
        for _ in range(loops):
            for u in units:
                hash_(prefix + u, 0, False) < t  # noqa: B015
        return time.perf_counter_ns() - start

    def handle(loops: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(loops):
            for u in units:
                rollout_enabled(u)
        return time.perf_counter_ns() - start

    def by_name(loops: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(loops):
            for u in units:
                rollouts_enabled(NAME, u)
        return time.perf_counter_ns() - start

    def decide(loops: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(loops):
            for u in units:
                rollouts_decide(TARGETED, u, attributes)
        return time.perf_counter_ns() - start

    def bare_call(loops: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(loops):
            for u in units:
                bare(u)
        return time.perf_counter_ns() - start

    def guarded_call(loops: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(loops):
            for u in units:
                guarded(u)
        return time.perf_counter_ns() - start

    def untested_call(loops: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(loops):
            for u in units:
                untested(u)
        return time.perf_counter_ns() - start

    def exported_call(loops: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(loops):
            for u in units:
                exported_guard(u)
        return time.perf_counter_ns() - start

    def record(loops: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(loops):
            for arm, latency, u in outcomes:
                record_outcome(arm, u, error=False, latency_s=latency)
        return time.perf_counter_ns() - start

    policy = rollouts.policy.rollouts
    return {
        "floor": floor,
        "floor, prefix pre-joined": floor_prefix,
        **{
            f"bucket step, {label}": bucket_step(policy[schemed(label)].scheme(schemed(label)))
            for label in SCHEMES
        },
        "Rollout.enabled": handle,
        "Rollouts.enabled": by_name,
        **{
            f"Rollouts.enabled, {label}": enabled_by_name(rollouts, schemed(label))
            for label in SCHEMES
        },
        "Rollouts.decide (3 rules)": decide,
        "record an outcome": record,
        "bare noop call": bare_call,
        "guarded call, health on": guarded_call,
        "guarded call, health off": untested_call,
        "guarded call, exporters on": exported_call,
    }


def measure(
    benches: dict[str, Bench], loops: int, repeats: int, per_loop: int = len(UNITS)
) -> dict[str, list[float]]:
    """Ns per call of every bench (``per_loop`` calls a loop), ``repeats`` times, interleaved."""
    samples: dict[str, list[float]] = {name: [] for name in benches}
    for bench in benches.values():
        bench(max(1, loops // 10))  # warm up
    gc.disable()
    try:
        for _ in range(repeats):
            for name, bench in benches.items():
                samples[name].append(bench(loops) / (loops * per_loop))
    finally:
        gc.enable()
    return samples


def sanity_check(rollouts: Rollouts) -> None:
    """The library must agree with the floor's formula, or the comparison means nothing."""
    t, rollout = threshold(25), rollouts[NAME]
    for u in UNITS:
        expected = mmh3.hash(f"{NAME}:{u}", 0, False) < t
        if rollout.enabled(u) != expected or rollouts.enabled(NAME, u) != expected:
            sys.exit(f"bench_decide: the decision for {u!r} disagrees with the floor's formula")
        if rollouts.decide(TARGETED, u, ATTRIBUTES).enabled != expected:
            sys.exit(f"bench_decide: decide({TARGETED!r}, {u!r}) disagrees with the floor")
    for label in SCHEMES:
        # Each twin must bucket by its own scheme (not the default's), or it measures nothing.
        name = schemed(label)
        scheme = rollouts.policy.rollouts[name].scheme(name)
        cut, default = scheme.cut(25), [rollout.enabled(u) for u in UNITS]
        ours = [rollouts.enabled(name, u) for u in UNITS]
        if ours != [scheme.position(u) < cut for u in UNITS] or ours == default:
            sys.exit(f"bench_decide: {name!r} does not decide by {scheme.describe()}")


def summarize(samples: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """Best and median ns per call of each candidate, its ratio to the floor, its verdict."""
    bare = samples["bare noop call"]
    overheads = {
        "guard overhead, health on": "guarded call, health on",
        "guard overhead, health off": "guarded call, health off",
        "guard overhead, exporters on": "guarded call, exporters on",
    }
    for overhead, call in overheads.items():
        samples = {**samples, overhead: [g - b for g, b in zip(samples[call], bare, strict=True)]}
    best = {name: min(s) for name, s in samples.items()}
    for overhead, call in overheads.items():
        # An overhead's best is the difference of the bests, not the luckiest difference.
        best[overhead] = best[call] - best["bare noop call"]
    results: dict[str, dict[str, Any]] = {}
    for name, ns in best.items():
        ratio, target, baseline = ns / best["floor"], TARGETS.get(name), BASELINES.get(name)
        results[name] = {
            "ns": round(ns, 1),
            "median_ns": round(statistics.median(samples[name]), 1),
            "ratio": round(ratio, 2),
            "target": target,
            "pass": None if target is None else ratio <= target,
            "baseline": baseline,
            "baseline_ratio": None if baseline is None else round(ns / best[baseline], 2),
        }
    return results


def print_table(results: dict[str, dict[str, Any]], loops: int, repeats: int) -> None:
    python = platform.python_version()
    print(f"stagedroll {stagedroll.__version__}, Python {python}")
    print(f"{len(UNITS)} units x {loops} loops per round, best of {repeats} interleaved rounds\n")
    print(f"{'candidate':<32} {'best ns':>8} {'median':>8} {'x floor':>8}  target")
    for name, r in results.items():
        verdict = ""
        if r["target"] is not None:
            verdict = f"<= {r['target']:.1f}x  {'PASS' if r['pass'] else 'FAIL'}"
        print(f"{name:<32} {r['ns']:8.1f} {r['median_ns']:8.1f} {r['ratio']:7.2f}x  {verdict}")
    compared = {name: r for name, r in results.items() if r["baseline"] is not None}
    if compared:
        print("\nother systems' bucketing, against the default's in the same rounds:")
    for name, r in compared.items():
        print(f"{name:<32} {r['baseline_ratio']:5.2f}x {r['baseline']}")


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer loops and repeats (smoke)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target fails")
    parser.add_argument("--repeats", type=positive, help="rounds (default 9; quick: 3)")
    parser.add_argument("--loops", type=positive, help="passes over the units (default 200)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 9)
    loops = args.loops or (20 if args.quick else 200)

    # Rollouts logs its start through structlog; keep stdout for the results.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    rollouts = Rollouts(POLICY, environment=None)
    sanity_check(rollouts)
    results = summarize(measure(candidates(rollouts, exported()), loops, repeats))
    failed = [name for name, r in results.items() if r["pass"] is False]

    if args.json:
        meta = {"python": platform.python_version(), "stagedroll": stagedroll.__version__,
                "units": len(UNITS), "loops": loops, "repeats": repeats}  # fmt: skip
        print(json.dumps({"meta": meta, "results": results, "ok": not failed}, indent=2))
    else:
        print_table(results, loops, repeats)
        print("\nFAILED: " + ", ".join(failed) if failed else "\nall targets met")
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
