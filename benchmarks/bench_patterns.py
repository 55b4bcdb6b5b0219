"""The cost of the patterns on the caller's path, against a guard's, side by side.

The target: a unit outside a shadow's cohort costs no more than a guarded call does (both
as the overhead over calling the old path bare). Every candidate runs in this one process,
interleaved, repeated; the best of the repeats is taken. The other rows are for
information: a cohort unit's shadowed call (the candidate inline, compared, both sides
recorded), and a migration's read and write in ``off`` (one store) and ``shadow_read``
(both stores, compared, recorded).

    .venv/bin/python benchmarks/bench_patterns.py [--quick] [--json] [--check]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import structlog
from bench_decide import measure, positive

import stagedroll
from stagedroll import Rollouts

PERCENT = 25
PHASES = ["off", "dual_write", "shadow_read", "live", "rampdown", "complete"]
POLICY: dict[str, Any] = {
    "rollouts": {
        "guarded": {"stages": [{"name": "quarter", "percent": PERCENT}]},
        "shadowed": {"pattern": "shadow", "stages": [{"name": "quarter", "percent": PERCENT}]},
        "migrating": {
            "pattern": "migration",
            "stages": [
                {"name": name, "percent": p}
                for name, p in zip(PHASES, [0, 20, 40, 60, 80, 100], strict=True)
            ],
        },
        "migrating-off": {
            "pattern": "migration",
            "stages": [
                {"name": name, "percent": p}
                for name, p in zip(PHASES, [0, 20, 40, 60, 80, 100], strict=True)
            ],
        },
    }
}
TARGETS = {"shadow overhead outside / guard overhead": 1.0}
UNITS_PER_LOOP = 1000

Bench = Callable[[int], int]  # runs `loops` passes; returns the elapsed ns


def old(u: str) -> str:
    return u


def new(u: str) -> str:
    return u


def units(rollouts: Rollouts, *, inside: bool) -> list[str]:
    """Units in (or out of) the 25 % cohort, the same for the guard and the shadow."""
    found = [
        f"user-{i}"
        for i in range(100_000)
        if rollouts.enabled("guarded", f"user-{i}") == inside
        and rollouts.enabled("shadowed", f"user-{i}") == inside
    ]
    return found[:UNITS_PER_LOOP]


def loop(fn: Callable[[str], object], batch: list[str]) -> Bench:
    def bench(loops: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(loops):
            for u in batch:
                fn(u)
        return time.perf_counter_ns() - start

    return bench


def candidates(rollouts: Rollouts) -> dict[str, Bench]:
    """One timing loop per candidate; each loop body is the call under test, nothing else."""
    outside, inside = units(rollouts, inside=False), units(rollouts, inside=True)
    guarded = rollouts.guard("guarded", fallback=old, unit=lambda u: u)(new)
    shadowed = rollouts.shadow("shadowed", candidate=new, unit=lambda u: u)(old)
    table: dict[str, str] = {}
    write_table = table.__setitem__
    shadow_read = rollouts.migration("migrating", old_read=table.get, new_read=table.get,
                                     old_write=write_table, new_write=write_table)  # fmt: skip
    off = rollouts.migration("migrating-off", old_read=table.get, new_read=table.get,
                             old_write=write_table, new_write=write_table)  # fmt: skip
    rollouts.advance("migrating", actor="bench")
    rollouts.advance("migrating", actor="bench")  # shadow_read
    return {
        "bare old call": loop(old, outside),
        "guarded call, outside": loop(guarded, outside),
        "shadowed call, outside": loop(shadowed, outside),
        "shadowed call, inside": loop(shadowed, inside),
        "migration read, off": loop(lambda u: off.read(u, u), outside),
        "migration write, off": loop(lambda u: off.write(u, u, u), outside),
        "migration read, shadow_read": loop(lambda u: shadow_read.read(u, u), outside),
        "migration write, shadow_read": loop(lambda u: shadow_read.write(u, u, u), outside),
    }


def summarize(samples: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """Best and median ns per call; the overheads over the bare call; the target's ratio."""
    best = {name: min(s) for name, s in samples.items()}
    bare = best["bare old call"]
    results: dict[str, dict[str, Any]] = {
        name: {"ns": round(ns, 1), "median_ns": round(statistics.median(samples[name]), 1),
               "overhead_ns": round(ns - bare, 1)}
        for name, ns in best.items()
    }  # fmt: skip
    guard, shadow = best["guarded call, outside"] - bare, best["shadowed call, outside"] - bare
    ratio = shadow / guard if guard > 0 else float("inf")
    name = "shadow overhead outside / guard overhead"
    target = TARGETS[name]
    results[name] = {"ratio": round(ratio, 2), "target": target, "pass": ratio <= target}
    return results


def print_table(results: dict[str, dict[str, Any]], loops: int, repeats: int) -> None:
    print(f"stagedroll {stagedroll.__version__}, Python {platform.python_version()}")
    print(f"{UNITS_PER_LOOP} units x {loops} loops per round, best of {repeats} rounds\n")
    print(f"{'candidate':<32} {'best ns':>8} {'median':>8} {'overhead':>9}")
    for name, r in results.items():
        if "ratio" in r:
            verdict = "PASS" if r["pass"] else "FAIL"
            print(f"\n{name}: {r['ratio']:.2f} (target <= {r['target']:.1f})  {verdict}")
        else:
            print(f"{name:<32} {r['ns']:8.1f} {r['median_ns']:8.1f} {r['overhead_ns']:9.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer loops and repeats (smoke)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 if the target fails")
    parser.add_argument("--repeats", type=positive, help="rounds (default 9; quick: 3)")
    parser.add_argument("--loops", type=positive, help="passes over the units (default 100)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 9)
    loops = args.loops or (10 if args.quick else 100)

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    rollouts = Rollouts(POLICY, environment=None)
    results = summarize(measure(candidates(rollouts), loops, repeats, UNITS_PER_LOOP))
    failed = [name for name, r in results.items() if r.get("pass") is False]
    if args.json:
        meta = {"python": platform.python_version(), "stagedroll": stagedroll.__version__,
                "units": UNITS_PER_LOOP, "loops": loops, "repeats": repeats}  # fmt: skip
        print(json.dumps({"meta": meta, "results": results, "ok": not failed}, indent=2))
    else:
        print_table(results, loops, repeats)
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
