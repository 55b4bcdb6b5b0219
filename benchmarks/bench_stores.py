"""Shared stores against MemoryStore: decision and outcome cost, and freeze propagation.

Part 1, the hot path. One ``Rollouts`` per store (``MemoryStore``, ``SQLiteStore`` on a temp
file, ``RedisStore`` on ``$REDIS_URL`` under a unique prefix), the same policy, the stores'
background refresh running (every ``refresh_interval``, 1 s by default) all along: that is
the point, the store must stay off the hot path. Every candidate call is timed on every
store, interleaved (the order of the stores rotates each round), repeated; the best
(minimum) of the repeats is compared with MemoryStore's, measured in the same rounds.

Part 2, freeze propagation. For SQLite and Redis: observer processes (multiprocessing
spawn) each build their own ``Rollouts`` on the same store URL and poll
``rollouts["x"].state.status`` every millisecond; the main process freezes and unfreezes
``x`` through its own ``Rollouts``, after a random pause within the refresh interval (so
the phase against the refresh threads varies), and notes ``time.time()`` just before each
call. Each observer reports the ``time.time()`` at which it first saw the new status; the
difference is the propagation delay (same machine, same clock).

Without a reachable Redis the Redis rows say "skipped: no Redis"; that fails nothing.

    .venv/bin/python benchmarks/bench_stores.py [--quick | --smoke] [--json]

Exits 1 when a judged target is missed (never in ``--smoke`` mode, which only exercises
the code).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import multiprocessing
import os
import platform
import queue
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import structlog

import stagedroll
from stagedroll import MemoryStore, RedisStore, Rollouts, SQLiteStore, Status, Store, SyncingStore

PLAIN = "plain"
TARGETED = "targeted"
GATED = "gated"
PROPAGATED = "x"
UNITS = [f"user-{i}" for i in range(1000)]
ATTRIBUTES: dict[str, object] = {"plan": "free", "country": "DE"}  # matches no segment
POLICY: dict[str, Any] = {
    "segments": {"beta": {"rules": [{"attribute": "plan", "op": "eq", "value": "beta"}]}},
    "rollouts": {
        PLAIN: {"stages": [{"name": "quarter", "percent": 25}]},
        TARGETED: {
            "stages": [{"name": "quarter", "percent": 25, "segments": ["beta"]}],
            "targeting": {"allow": ["user-vip"], "deny": ["user-banned"]},
        },
        GATED: {"stages": [{"name": "half", "percent": 50}], "health": {"min_events": 3}},
    },
}
PROPAGATION_POLICY: dict[str, Any] = {
    "rollouts": {PROPAGATED: {"stages": [{"name": "half", "percent": 50}]}}
}
# Latencies of the recorded outcomes: log-normal around 1 ms.
LATENCIES = [0.001 * math.exp(0.5 * random.Random(i).gauss(0.0, 1.0)) for i in range(len(UNITS))]

STORES = ("memory", "sqlite", "redis")
SHARED = ("sqlite", "redis")
DECISIONS = (
    "Rollouts.enabled, plain 25 %",
    "Rollouts.decide, plain 25 %",
    "Rollouts.enabled, targeting",
    "Rollouts.decide, targeting",
)
RECORDING = ("Rollouts.report, health-gated", "guarded call, health-gated")
COST_TARGET = 1.2
"""A shared store's best ns per call, at most this multiple of MemoryStore's."""
RECORDING_JUDGED = True
"""Whether the outcome-recording ratios count towards the exit code (else informational)."""
PROPAGATION_SLACK_S = 0.5
"""A change reaches every observer within ``refresh_interval`` plus this, at most."""
POLL_S = 0.001
OBSERVE_S = 15.0
"""How long past ``refresh_interval`` a round waits for its observers (then: missed)."""
READY_DEADLINE_S = 120.0


@dataclass(frozen=True)
class Mode:
    loops: int
    repeats: int
    rounds: int
    refresh_interval: float


MODES = {
    "smoke": Mode(loops=1, repeats=1, rounds=1, refresh_interval=0.05),
    "quick": Mode(loops=20, repeats=3, rounds=3, refresh_interval=1.0),
    "full": Mode(loops=100, repeats=9, rounds=10, refresh_interval=1.0),
}

Bench = Callable[[int], int]  # runs `loops` passes over UNITS; returns the elapsed ns


def quiet_logs() -> None:
    """Only warnings, and on stderr: stdout is for the results."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def noop_new(u: str) -> str:
    return u


def noop_old(u: str) -> str:
    return u


# -- the stores -------------------------------------------------------------------------


def redis_url() -> str:
    return os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def reachable(url: str) -> bool:
    """Whether a Redis answers PING at ``url`` within a second."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


def delete_keys(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@dataclass
class Backends:
    """Where the shared stores live in this run; ``redis_prefix`` is None without Redis."""

    directory: Path
    redis_url: str
    redis_prefix: str | None
    refresh_interval: float

    def store(self, kind: str, label: str) -> Store:
        if kind == "memory":
            return MemoryStore()
        if kind == "sqlite":
            return SQLiteStore(
                self.directory / f"{label}.db", refresh_interval=self.refresh_interval
            )
        assert self.redis_prefix is not None
        return RedisStore(
            self.redis_url,
            prefix=f"{self.redis_prefix}:{label}",
            refresh_interval=self.refresh_interval,
        )

    def url(self, kind: str, label: str) -> str:
        """The store URL of ``kind`` that observer processes open."""
        if kind == "sqlite":
            path = self.directory / f"{label}.db"
            return f"sqlite:///{path}?refresh_interval={self.refresh_interval}"
        assert self.redis_prefix is not None
        sep = "&" if "?" in self.redis_url else "?"
        return (
            f"{self.redis_url}{sep}prefix={self.redis_prefix}:{label}"
            f"&refresh_interval={self.refresh_interval}"
        )


@contextmanager
def backends(refresh_interval: float, use_redis: bool) -> Iterator[Backends]:
    url = redis_url()
    prefix = f"stagedroll-bench:{uuid.uuid4().hex[:12]}" if use_redis else None
    with tempfile.TemporaryDirectory(prefix="bench-stores-") as directory:
        try:
            yield Backends(Path(directory), url, prefix, refresh_interval)
        finally:
            if prefix is not None:
                delete_keys(url, prefix)


# -- part 1: the cost of a call ---------------------------------------------------------


def candidates(rollouts: Rollouts) -> dict[str, Bench]:
    """One timing loop per candidate; each loop body is the call under test, nothing else."""
    units, attributes = UNITS, ATTRIBUTES
    enabled, decide, report = rollouts.enabled, rollouts.decide, rollouts.report
    guarded = rollouts.guard(GATED, fallback=noop_old, unit=lambda u: u)(noop_new)
    outcomes = list(zip(UNITS, LATENCIES, strict=True))

    def enabled_plain(loops: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(loops):
            for u in units:
                enabled(PLAIN, u)
        return time.perf_counter_ns() - start

    def decide_plain(loops: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(loops):
            for u in units:
                decide(PLAIN, u)
        return time.perf_counter_ns() - start

    def enabled_targeted(loops: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(loops):
            for u in units:
                enabled(TARGETED, u, attributes)
        return time.perf_counter_ns() - start

    def decide_targeted(loops: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(loops):
            for u in units:
                decide(TARGETED, u, attributes)
        return time.perf_counter_ns() - start

    def report_gated(loops: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(loops):
            for u, latency in outcomes:
                report(GATED, u, error=False, latency_s=latency)
        return time.perf_counter_ns() - start

    def guarded_call(loops: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(loops):
            for u in units:
                guarded(u)
        return time.perf_counter_ns() - start

    timed: list[Bench] = [enabled_plain, decide_plain, enabled_targeted, decide_targeted,
                          report_gated, guarded_call]  # fmt: skip
    return dict(zip((*DECISIONS, *RECORDING), timed, strict=True))


def sanity_check(rollouts: dict[str, Rollouts]) -> None:
    """Every store's rollouts must be started and decide alike, or the comparison means nothing."""
    memory = rollouts["memory"]
    for kind, other in rollouts.items():
        for name in POLICY["rollouts"]:
            state = other[name].state
            if state.version < 1 or state.status is not Status.RUNNING:
                sys.exit(f"bench_stores: {name!r} on {kind} is not running: {state}")
        for u in UNITS:
            if other.enabled(PLAIN, u) != memory.enabled(PLAIN, u) or other.decide(
                TARGETED, u, ATTRIBUTES
            ) != memory.decide(TARGETED, u, ATTRIBUTES):
                sys.exit(f"bench_stores: {kind} decides {u!r} unlike memory")


def measure(
    benches: dict[str, dict[str, Bench]], loops: int, repeats: int
) -> dict[str, dict[str, list[float]]]:
    """Ns per call of every candidate on every store, ``repeats`` times, interleaved.

    ``benches`` is by store, then candidate. Within a round each candidate runs on every
    store back to back, the stores in an order that rotates from round to round.
    """
    kinds = list(benches)
    names = list(next(iter(benches.values())))
    samples: dict[str, dict[str, list[float]]] = {n: {k: [] for k in kinds} for n in names}
    for by_name in benches.values():
        for bench in by_name.values():
            bench(max(1, loops // 10))  # warm up (and queue the units: see the outbox)
    gc.disable()
    try:
        for r in range(repeats):
            order = kinds[r % len(kinds) :] + kinds[: r % len(kinds)]
            for name in names:
                for kind in order:
                    samples[name][kind].append(benches[kind][name](loops) / (loops * len(UNITS)))
    finally:
        gc.enable()
    return samples


def summarize_cost(samples: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, Any]]:
    """Per candidate and store: best and median ns per call, ratios to MemoryStore, verdict."""
    results: dict[str, dict[str, Any]] = {}
    for name, by_kind in samples.items():
        best_memory = min(by_kind["memory"])
        median_memory = statistics.median(by_kind["memory"])
        judged = name in DECISIONS or RECORDING_JUDGED
        rows: dict[str, Any] = {}
        for kind, ns in by_kind.items():
            ratio = min(ns) / best_memory
            target = None if kind == "memory" else COST_TARGET
            rows[kind] = {
                "ns": round(min(ns), 1),
                "median_ns": round(statistics.median(ns), 1),
                "ratio": round(ratio, 3),
                "median_ratio": round(statistics.median(ns) / median_memory, 3),
                "samples_ns": [round(x, 1) for x in ns],
                "target": target,
                "judged": target is not None and judged,
                "pass": None if target is None else ratio <= target,
            }
        results[name] = rows
    return results


def run_cost(
    back: Backends, kinds: list[str], loops: int, repeats: int
) -> tuple[dict[str, Any], dict[str, int]]:
    """The cost table, and how many background refreshes each shared store ran meanwhile."""
    refreshes: dict[str, int] = {}
    with ExitStack() as stack:
        rollouts: dict[str, Rollouts] = {}
        for kind in kinds:
            store = back.store(kind, "cost")
            stack.callback(close, store)
            rollouts[kind] = Rollouts(POLICY, store=store, environment=None)
            if isinstance(store, SyncingStore):
                store.on_refresh(counter(refreshes, kind))
        sanity_check(rollouts)
        benches = {kind: candidates(r) for kind, r in rollouts.items()}
        refreshes.clear()
        samples = measure(benches, loops, repeats)
        counted = dict(refreshes)
        del benches
        forget(rollouts)
    return summarize_cost(samples), {k: counted.get(k, 0) for k in kinds if k != "memory"}


def counter(counts: dict[str, int], key: str) -> Callable[[], None]:
    """A callback that counts its calls in ``counts[key]``."""

    def count() -> None:
        counts[key] = counts.get(key, 0) + 1

    return count


def close(store: Store) -> None:
    """Close ``store`` just after one of its background refreshes, not during one.

    ``close()`` while the refresh thread runs a cycle makes that cycle fail and log an
    error (``store.refresh_failed`` or ``store.flush_failed``); right after a cycle the
    thread waits a whole ``refresh_interval``.
    """
    if isinstance(store, SyncingStore):
        done = threading.Event()

        def refreshed() -> None:
            done.set()

        store.on_refresh(refreshed)  # a plain function: held strongly, called last
        done.wait(store.refresh_interval + 5.0)
    store.close()


def forget(rollouts: dict[str, Rollouts]) -> None:
    """Drop the ``Rollouts`` before their stores close: no refresh flushes for them then.

    A store holds a ``Rollouts``'s refresh callback (a bound method) weakly.
    """
    rollouts.clear()
    gc.collect()


# -- part 2: freeze propagation ---------------------------------------------------------


def observe(index: int, url: str, stop: Any, seen: Any) -> None:
    """An observer process: report each status of ``x`` it sees, with its version and time."""
    quiet_logs()
    rollouts = Rollouts(PROPAGATION_POLICY, store=url, environment=None)
    state = rollouts[PROPAGATED].state
    seen.put((index, state.version, str(state.status), time.time()))  # ready
    sleep, now, stopped = time.sleep, time.time, stop.is_set
    while not stopped():
        current = rollouts[PROPAGATED].state
        if current.version != state.version:
            seen.put((index, current.version, str(current.status), now()))
            state = current
        sleep(POLL_S)
    store = rollouts.store
    del rollouts
    gc.collect()
    close(store)


class Observers:
    """Observer processes (spawned) watching rollout ``x`` through the store at ``url``."""

    def __init__(self, url: str, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.count = count
        self.stop, self.seen = context.Event(), context.Queue()
        self.processes = [
            context.Process(target=observe, args=(i, url, self.stop, self.seen), daemon=True)
            for i in range(count)
        ]

    def start(self) -> None:
        """Start them and wait until each has its own ``Rollouts`` and polls."""
        for process in self.processes:
            process.start()
        ready: set[int] = set()
        deadline = time.monotonic() + READY_DEADLINE_S
        while len(ready) < self.count:
            dead = [p.exitcode for p in self.processes if p.exitcode is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"observers ready: {len(ready)}; exit codes: {dead}")
            with contextlib.suppress(queue.Empty):
                ready.add(self.seen.get(timeout=0.1)[0])

    def first_seen(self, version: int, deadline: float) -> dict[int, float]:
        """When each observer first saw ``version`` (or later), until ``deadline`` (monotonic)."""
        first: dict[int, float] = {}
        while len(first) < self.count and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                index, seen, _status, at = self.seen.get(timeout=0.05)
                if seen >= version and index not in first:
                    first[index] = at
        return first

    def close(self) -> None:
        self.stop.set()
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.terminate()
                process.join(10)


def propagate(
    back: Backends, kind: str, observers: int, rounds: int, rng: random.Random
) -> dict[str, Any]:
    """Freeze and unfreeze ``x`` ``rounds`` times; the delays until each observer saw it."""
    interval = back.refresh_interval
    store = back.store(kind, "propagation")
    mine = {kind: Rollouts(PROPAGATION_POLICY, store=store, environment=None)}
    watchers = Observers(back.url(kind, "propagation"), observers)
    delays: list[float | None] = []
    transitions: list[dict[str, Any]] = []
    try:
        watchers.start()
        for r in range(rounds):
            time.sleep(rng.uniform(0.0, interval))  # a random phase against the refreshes
            at = time.time()
            if r % 2:
                entry = mine[kind].unfreeze(PROPAGATED, reason="bench_stores", actor="bench")
            else:
                entry = mine[kind].freeze(PROPAGATED, reason="bench_stores", actor="bench")
            returned = time.time()
            first = watchers.first_seen(entry.version, time.monotonic() + interval + OBSERVE_S)
            round_delays = [first[i] - at if i in first else None for i in range(observers)]
            delays.extend(round_delays)
            transitions.append({"to": str(entry.to_status), "call_s": returned - at,
                                "delays_s": round_delays})  # fmt: skip
    finally:
        watchers.close()
        forget(mine)
        close(store)
    return summarize_propagation(delays, transitions, interval, observers, rounds)


def summarize_propagation(
    delays: list[float | None],
    transitions: list[dict[str, Any]],
    interval: float,
    observers: int,
    rounds: int,
) -> dict[str, Any]:
    seen = [d for d in delays if d is not None]
    target = interval + PROPAGATION_SLACK_S
    worst = max(seen) if seen and len(seen) == len(delays) else math.inf  # a miss: infinite
    return {
        "status": "ok",
        "refresh_interval_s": interval,
        "observers": observers,
        "rounds": rounds,
        "samples": len(delays),
        "missed": len(delays) - len(seen),
        "median_s": statistics.median(seen) if seen else None,
        "p90_s": quantile(seen, 0.9),
        "max_s": worst if math.isfinite(worst) else None,
        "target_s": target,
        "judged": True,
        "pass": worst <= target,
        "transitions": transitions,
    }


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


# -- output -----------------------------------------------------------------------------


def checks(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target with its value: the cost ratios, then the propagation delays."""
    out = []
    for name, rows in report["cost"].items():
        for kind, row in rows.items():
            if row["target"] is not None:
                out.append({"what": name, "store": kind, "value": row["ratio"],
                            "limit": row["target"], "unit": "x memory",
                            "judged": row["judged"], "pass": row["pass"]})  # fmt: skip
    for kind, row in report["propagation"].items():
        if row["status"] == "ok":
            out.append({"what": "max propagation delay", "store": kind, "value": row["max_s"],
                        "limit": row["target_s"], "unit": "s", "judged": row["judged"],
                        "pass": row["pass"]})  # fmt: skip
    return out


def print_table(report: dict[str, Any]) -> None:
    meta = report["meta"]
    print(f"stagedroll {meta['stagedroll']}, Python {meta['python']}, mode {meta['mode']}")
    for kind, row in report["stores"].items():
        if row["status"] != "ok":
            print(f"{kind}: skipped: {row['reason']}")
    print(
        f"\nCost of a call: {meta['units']} units x {meta['loops']} loops per round, "
        f"best of {meta['repeats']} interleaved rounds; background refresh every "
        f"{meta['refresh_interval_s']:g} s running ("
        + ", ".join(f"{k}: {n}" for k, n in meta["refreshes_while_timing"].items())
        + " refreshes while timing)\n"
    )
    print(f"{'candidate':<32} {'store':<7} {'best ns':>8} {'median':>8} {'x memory':>9}  target")
    for name, rows in report["cost"].items():
        for i, (kind, r) in enumerate(rows.items()):
            verdict = ""
            if r["target"] is not None:
                mark = "PASS" if r["pass"] else "FAIL"
                verdict = f"<= {r['target']:.1f}x  {mark}" + ("" if r["judged"] else " (info)")
            label = name if i == 0 else ""
            print(f"{label:<32} {kind:<7} {r['ns']:8.1f} {r['median_ns']:8.1f} "
                  f"{r['ratio']:8.2f}x  {verdict}")  # fmt: skip
    print(
        f"\nFreeze propagation: {meta['observers']} observer processes (spawn) polling every "
        f"{POLL_S * 1000:g} ms, {meta['rounds']} transitions alternating freeze/unfreeze, "
        f"refresh_interval {meta['refresh_interval_s']:g} s\n"
    )
    print(
        f"{'store':<7} {'samples':>7} {'missed':>6} {'median s':>9} {'p90 s':>7} {'max s':>7}"
        "  target"
    )
    for kind, row in report["propagation"].items():
        if row["status"] != "ok":
            print(f"{kind:<7} skipped: {row['reason']}")
            continue
        print(f"{kind:<7} {row['samples']:7d} {row['missed']:6d} {seconds(row['median_s']):>9} "
              f"{seconds(row['p90_s']):>7} {seconds(row['max_s']):>7}  "
              f"<= {row['target_s']:.2f} s  {'PASS' if row['pass'] else 'FAIL'}")  # fmt: skip


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer loops, repeats and rounds")
    size.add_argument("--smoke", action="store_true", help="tiny everything (seconds; for tests)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--loops", type=positive, help="passes over the units (default 100)")
    parser.add_argument("--repeats", type=positive, help="interleaved rounds (default 9)")
    parser.add_argument("--rounds", type=positive, help="freeze/unfreeze transitions (default 10)")
    parser.add_argument("--observers", type=positive, default=4, help="processes (default 4)")
    parser.add_argument("--seed", type=int, default=20240611, help="seed of the random pauses")
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    sizes = MODES[mode]
    loops, repeats = args.loops or sizes.loops, args.repeats or sizes.repeats
    rounds = args.rounds or sizes.rounds

    quiet_logs()
    start = time.perf_counter()
    url = redis_url()
    has_redis = reachable(url)
    stores: dict[str, dict[str, Any]] = {kind: {"status": "ok"} for kind in STORES}
    if not has_redis:
        stores["redis"] = {"status": "skipped", "reason": "no Redis"}
    kinds = [kind for kind in STORES if stores[kind]["status"] == "ok"]
    with backends(sizes.refresh_interval, has_redis) as back:
        cost, refreshes = run_cost(back, kinds, loops, repeats)
        rng = random.Random(args.seed)
        propagation = {
            kind: propagate(back, kind, args.observers, rounds, rng)
            if stores[kind]["status"] == "ok"
            else dict(stores[kind])
            for kind in SHARED
        }
    meta = {
        "python": platform.python_version(),
        "stagedroll": stagedroll.__version__,
        "mode": mode,
        "units": len(UNITS),
        "loops": loops,
        "repeats": repeats,
        "rounds": rounds,
        "observers": args.observers,
        "poll_s": POLL_S,
        "refresh_interval_s": sizes.refresh_interval,
        "seed": args.seed,
        "cpus": os.cpu_count(),
        "refreshes_while_timing": refreshes,
        "runtime_s": round(time.perf_counter() - start, 1),
    }
    report: dict[str, Any] = {"meta": meta, "stores": stores, "cost": cost,
                              "propagation": propagation}  # fmt: skip
    report["targets"] = checks(report)
    failed = [c for c in report["targets"] if c["judged"] and not c["pass"]]
    report["ok"] = not failed
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
        if failed:
            names = ", ".join(f"{c['what']} ({c['store']})" for c in failed)
            print(f"\nFAILED: {names}")
        else:
            print("\nall targets met")
    return 1 if failed and mode != "smoke" else 0


if __name__ == "__main__":
    sys.exit(main())
