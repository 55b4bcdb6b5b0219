"""A fleet on a shared store: how fast a kill reaches other processes, and the store's load.

Part 1, kill propagation. For SQLite, Redis and PostgreSQL, with push off and on: observer
processes (multiprocessing spawn, 8 by default; ``bench_stores``'s approach and its
``Observers``) each build their own ``Rollouts`` from the store URL (see :func:`open_store`)
and poll ``rollouts["x"].state`` every millisecond, reporting the ``time.time()`` at which
they first see each new version. The main process,
through its own ``Rollouts``, kills ``x``, waits until every observer saw it, unfreezes it
and waits again, with a random pause within ``refresh_interval`` (1 s, the default) before
each transition, so that its phase against the refresh threads varies; it notes
``time.time()`` just before each call. Push off is ``?push=0`` (SQLite's default); push on
is ``?push=1`` (the default of Redis and PostgreSQL: ``PUBLISH`` and ``NOTIFY``; for SQLite,
opt-in, a thread that polls the file's generation every 25 ms). Targets (issue 19): push on,
Redis and PostgreSQL, median <= 100 ms and p99 <= 250 ms; push off, every store, the slowest
observer within ``refresh_interval`` + 0.5 s. SQLite with push is measured, not judged.

Part 2, the store's load at steady state, read from the server's own counters: Redis
``INFO commandstats`` (commands run by scripts included, as Redis counts them) and
``total_commands_processed``; PostgreSQL ``pg_stat_statements`` (every top-level statement,
``BEGIN`` and ``COMMIT`` included), or the transactions of ``pg_stat_database`` when the
extension cannot be loaded. Each server is a private one on a free port (a
``redis-server``, and a PostgreSQL started with ``shared_preload_libraries =
pg_stat_statements``, ``fsync`` on), so nothing else counts. For each cell of processes x
rollouts x guarded calls per second per process, worker processes (spawn) each build a
``Rollouts`` from the store URL at its defaults (``refresh_interval`` 1 s, push on) and
call guarded functions at the rate, paced (a batch, then a sleep) and spread across their
rollouts: a unit each (drawn from a million), 1 % of calls failing on both paths alike (so
that first errors reach the store as well as distinct units). The health gate runs, with
``alpha_freeze`` and ``alpha_rollback`` of 1e-9 so that no chance freeze of these healthy
rollouts adds transitions to a window (the evidence it flushes is the same). After a
warm-up the counters are read at the start and the end of the window (30 s: every
periodic task of the refresh, such as its full read every 30 refreshes, falls in it once
per process); the load is per process per second. The figure is valid only if each process
achieved its call rate (95 %) and ran its background refreshes (80 % of one per
``refresh_interval``: on a machine with few cores, processes starved of CPU flush less
often, and their load is then a lower bound); both are checked. Target: <= 2 commands (or
statements) per second per process, whatever the rate and the number of rollouts. SQLite
has no server to count: it has no rows here.

Without ``redis-server`` or PostgreSQL's binaries, their rows say skipped.

    .venv/bin/python benchmarks/bench_fleet.py [--quick | --smoke] [--json] [--check]
        [--save report.json] [--stores sqlite,redis,postgresql] [--part propagation|load]

``--check`` exits 1 when a judged target is missed (never in ``--smoke`` mode, which only
exercises the code).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import multiprocessing
import os
import platform
import queue
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import structlog
from bench_stores import (
    OBSERVE_S,
    POLL_S,
    PROPAGATED,
    PROPAGATION_POLICY,
    Observers,
    close,
    forget,
    positive,
    quantile,
    quiet_logs,
)
from structlog.typing import EventDict, WrappedLogger

import stagedroll
from stagedroll import RedisStore, Rollouts, Store, SyncingStore

TESTS = Path(__file__).resolve().parent.parent / "tests"  # servers.py: private servers

KINDS = ("sqlite", "redis", "postgresql")
SERVED = ("redis", "postgresql")  # the stores whose load a server counts
PUSH_TARGETS = {"median_s": 0.100, "p99_s": 0.250}
"""Push on, Redis and PostgreSQL: a kill's delay to the observers, at most."""
PUSH_OFF_SLACK_S = 0.5
"""Push off: every observer sees a kill within ``refresh_interval`` plus this."""
LOAD_TARGET = 2.0
"""Commands (Redis) or statements (PostgreSQL) per second per process, at most."""
RATE_SHARE = 0.95
"""The slowest process must achieve this share of the call rate, or the cell is not valid."""
REFRESH_SHARE = 0.8
"""The slowest process must run this share of its refreshes (one per ``refresh_interval``):
a process starved of CPU refreshes and flushes less often, and its load is a lower bound."""
SETTLE_S = 1.0
"""A pause after the observers are ready: their listeners connect (push) meanwhile."""
READY_DEADLINE_S = 300.0
TICK_S = 0.01
"""A worker makes the calls that are due, then sleeps this long."""
UNITS = 1_000_000
ERROR_SHARE = 0.01
BENCH_DB = "bench"
SCHEMA_IN_TEXT = re.compile(r"\bfleet_\w+")


@dataclass(frozen=True)
class Cell:
    processes: int
    rollouts: int
    rate: float  # guarded calls per second per process


@dataclass(frozen=True)
class Mode:
    kills: int
    observers: int
    refresh_interval: float
    warmup_s: float
    window_s: float
    cells: tuple[Cell, ...]


FULL_MATRIX = tuple(Cell(p, r, c) for p in (1, 32) for r in (1, 50) for c in (10, 1000))
MODES = {
    "smoke": Mode(kills=1, observers=2, refresh_interval=0.1, warmup_s=0.5, window_s=1.0,
                  cells=(Cell(2, 2, 20),)),
    "quick": Mode(kills=8, observers=8, refresh_interval=1.0, warmup_s=3.0, window_s=10.0,
                  cells=(Cell(1, 1, 10), Cell(1, 50, 1000), Cell(32, 50, 1000))),
    "full": Mode(kills=20, observers=8, refresh_interval=1.0, warmup_s=5.0, window_s=30.0,
                 cells=FULL_MATRIX),
}  # fmt: skip


def rollout_names(count: int) -> list[str]:
    return [f"r{i:02d}" for i in range(count)]


def fleet_policy(count: int) -> dict[str, Any]:
    """``count`` rollouts at 50 %, the health gate on, a chance freeze all but impossible."""
    rollout = {
        "stages": [{"name": "half", "percent": 50}],
        "health": {"alpha_freeze": 1e-9, "alpha_rollback": 1e-9},
    }
    return {"rollouts": dict.fromkeys(rollout_names(count), rollout)}


# -- the servers ----------------------------------------------------------------------------


@dataclass
class Backend:
    """Where one kind of store lives in this run; ``status`` "skipped" says why not."""

    kind: str
    status: str = "ok"
    reason: str | None = None
    base: str = ""  # a directory (SQLite) or a URL without options
    admin: str = ""  # PostgreSQL: the URL of the database the counters are read from
    statements: bool = False  # PostgreSQL: pg_stat_statements is there
    data: Path | None = None  # PostgreSQL: the data directory (postmaster.pid names the server)
    info: dict[str, Any] = field(default_factory=dict)

    def url(self, label: str, *, push: bool | None, refresh_interval: float) -> str:
        """The store URL of ``label`` (a store of its own: a file, prefix or schema)."""
        options = f"refresh_interval={refresh_interval:g}"
        if push is not None:
            options += f"&push={int(push)}"
        if self.kind == "sqlite":
            return f"sqlite:///{self.base}/{label}.db?{options}"
        if self.kind == "redis":
            return f"{self.base}?prefix=fleet:{label}&{options}"
        return f"{self.base}?schema=fleet_{label}&{options}"


@contextmanager
def backends(kinds: list[str], directory: Path) -> Iterator[dict[str, Backend]]:
    """SQLite files in ``directory``; a private ``redis-server`` and PostgreSQL, if installed."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    import servers  # the tests' helpers: private servers on free ports

    with ExitStack() as stack:
        found: dict[str, Backend] = {}
        for kind in kinds:
            backend = found[kind] = Backend(kind)
            try:
                if kind == "sqlite":
                    backend.base = str(directory)
                elif kind == "redis":
                    (directory / "redis").mkdir()
                    redis_server = servers.RedisServer(directory / "redis")
                    redis_server.start()
                    stack.callback(redis_server.stop)
                    backend.base = redis_server.url
                    backend.info = redis_info(redis_server.url)
                    probe = f"{redis_server.url}?prefix=fleet:probe&push=0"
                    backend.info["url_push_option"] = (
                        "works" if url_push_works(probe) else "broken, worked around"
                    )
                else:
                    start_postgres(stack, servers.PostgresServer, backend)
            except RuntimeError as exc:
                backend.status, backend.reason = "skipped", str(exc)
        yield found


def redis_info(url: str) -> dict[str, Any]:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        server = client.info("server")
        return {"server": f"redis-server {server['redis_version']}", "private": True,
                "port": server["tcp_port"]}  # fmt: skip
    finally:
        client.close()


def start_postgres(stack: ExitStack, server_class: Any, backend: Backend) -> None:
    """A private PostgreSQL with pg_stat_statements preloaded (when installed), fsync on."""
    import psycopg

    probe = server_class()  # initdb; raises RuntimeError without the binaries
    stack.callback(probe.remove)
    preload = probe.has_library("pg_stat_statements")
    settings = {"fsync": "on", "max_connections": "300"}
    if preload:
        settings |= {"shared_preload_libraries": "pg_stat_statements",
                     "pg_stat_statements.max": "10000"}  # fmt: skip
    probe.settings = settings
    probe.start()
    admin = probe.url  # the database "postgres": the counters are read from there
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {BENCH_DB}")
        version = conn.execute("SHOW server_version").fetchone()
        fsync = conn.execute("SHOW fsync").fetchone()
        statements = False
        if preload:
            try:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                statements = True
            except psycopg.Error as exc:
                backend.info["pg_stat_statements_error"] = str(exc).strip()
    backend.base = admin.rsplit("/", 1)[0] + f"/{BENCH_DB}"
    backend.admin = admin
    backend.data = probe.data
    backend.statements = statements
    backend.info |= {
        "server": f"PostgreSQL {version[0] if version else '?'}",
        "private": True,
        "port": probe.port,
        "fsync": fsync[0] if fsync else None,
        "counted_by": "pg_stat_statements" if statements else "pg_stat_database transactions",
    }


# -- the server's counters ------------------------------------------------------------------


class Counters:
    """Reads a server's counters of the work done for the stores under test."""

    def __init__(self, backend: Backend) -> None:
        self.kind = backend.kind
        self.statements = backend.statements
        self.data = backend.data
        self.base = backend.base
        if self.kind == "redis":
            import redis

            self.client: Any = redis.Redis.from_url(backend.base, socket_timeout=10)
        else:
            import psycopg

            self.client = psycopg.connect(backend.admin, autocommit=True)

    def read(self) -> dict[str, int]:
        """Cumulative counts by command (or statement); keys in parentheses are totals."""
        if self.kind == "redis":
            stats = self.client.info("commandstats")
            counts = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
            processed = self.client.info("stats")["total_commands_processed"]
            counts["(total_commands_processed)"] = int(processed)
            cpu = self.client.info("cpu")
            counts["(server_cpu_us)"] = int(1e6 * (cpu["used_cpu_user"] + cpu["used_cpu_sys"]))
            return counts
        counts = {}
        if self.statements:
            rows = self.client.execute(
                "SELECT query, calls FROM pg_stat_statements "
                "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = %s)",
                (BENCH_DB,),
            )
            for query, calls in rows:
                text = SCHEMA_IN_TEXT.sub("{schema}", " ".join(str(query).split()))
                counts[text] = counts.get(text, 0) + int(calls)
        row = self.client.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            (BENCH_DB,),
        ).fetchone()
        counts["(transactions)"] = int(row[0]) if row else 0
        counts["(server_cpu_us)"] = postgres_cpu_us(self.data)
        return counts

    def load(self, before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
        """The work between two reads: the judged total, and each command's count."""
        delta = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
        if self.kind == "redis":
            ours = delta.pop("info", 0)  # the reads of the counters: workers send no INFO
            processed = delta.pop("(total_commands_processed)", 0) - ours
            cpu = delta.pop("(server_cpu_us)", 0)
            return {"total": None, "by_command": delta, "unit": "requests",
                    "total_commands_processed": processed, "server_cpu_us": cpu}  # fmt: skip
        cpu = delta.pop("(server_cpu_us)", 0)
        transactions = delta.pop("(transactions)", 0)
        if self.statements:
            return {"total": sum(delta.values()), "by_command": delta, "server_cpu_us": cpu,
                    "transactions": transactions, "unit": "statements"}  # fmt: skip
        return {"total": transactions, "by_command": {}, "transactions": transactions,
                "unit": "transactions", "server_cpu_us": cpu}  # fmt: skip

    def requests(self, seconds: float) -> int:
        """Redis: the commands clients send over ``seconds``, from its feed (``MONITOR``).

        Counted in a window of its own, after the main one: the feed costs Redis CPU time,
        which the main window's figures leave out.
        """
        monitor = Monitor(self.base)
        try:
            time.sleep(1.0)  # redis-cli connected and the feed flowing
            begin = time.time()
            time.sleep(seconds)
            end = time.time()
            time.sleep(0.5)  # the feed of the window written out
        finally:
            monitor.stop()
        try:
            return monitor.requests(begin, end)
        finally:
            monitor.path.unlink(missing_ok=True)

    def close(self) -> None:
        self.client.close()


def postgres_cpu_us(data: Path | None) -> int:
    """The CPU time (user and system, in µs) of a PostgreSQL's server processes so far.

    From ``/proc``: the postmaster (its pid in ``postmaster.pid``) and its children, the
    backends (those that ended took their time with them: the stores' connections last).
    """
    if data is None or not Path("/proc").is_dir():
        return 0
    try:
        postmaster = int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(entry.name) == postmaster or int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total * 1_000_000 // tick


class Monitor:
    """Counts the commands that clients send a Redis, from its own feed (``MONITOR``).

    ``redis-cli monitor`` writes the feed to a file (line by line: no Python thread has to
    keep up with it), which is read once the window is over. A script's own commands are
    in the feed too, marked as the script's (``[0 lua]``): they are not requests. The
    reads of the counters (``INFO``) are left out.
    """

    def __init__(self, url: str) -> None:
        self.path = Path(tempfile.mkstemp(prefix="monitor-", suffix=".log")[1])
        self._out = self.path.open("wb")
        command = ["redis-cli", "-u", url, "monitor"]
        if shutil.which("stdbuf"):
            command = ["stdbuf", "-oL", *command]
        self._process = subprocess.Popen(command, stdout=self._out, stderr=subprocess.DEVNULL)

    def requests(self, begin: float, end: float) -> int:
        """The commands clients sent between two clock times (``time.time()``)."""
        count = 0
        with self.path.open("rb") as feed:
            for line in feed:
                at, _, rest = line.partition(b" ")
                try:
                    when = float(at)
                except ValueError:
                    continue  # "OK", the answer to MONITOR
                if begin <= when < end and b" lua] " not in rest[:40]:
                    count += not rest.partition(b"] ")[2].startswith(b'"INFO"')
        return count

    def stop(self) -> None:
        self._process.terminate()
        with suppress(subprocess.TimeoutExpired):
            self._process.wait(5)
        self._out.close()


# -- part 1: kill propagation ---------------------------------------------------------------


def open_store(url: str) -> Store:
    """The store a URL names, as ``store_from_url`` opens it; but see below for Redis.

    ``store_from_url`` passes a Redis URL's ``push`` option on to redis-py, whose connections
    then fail (``unexpected keyword argument 'push'``): ``stores._redis.split_options`` does
    not take it off. Until it does, a Redis URL with ``push`` is opened here with the
    constructor's ``push`` instead (:func:`url_push_works` tells which case holds).
    """
    if url.startswith("redis://"):
        base, _, query = url.partition("?")
        options = dict(parse_qsl(query))
        if "push" in options:
            return RedisStore(base, prefix=options["prefix"], push=options["push"] == "1",
                              refresh_interval=float(options["refresh_interval"]))  # fmt: skip
    return stagedroll.stores.store_from_url(url)


def url_push_works(url: str) -> bool:
    """Whether ``store_from_url`` opens a store that works from a URL with ``push``."""
    store = stagedroll.stores.store_from_url(url)
    try:
        store.names()
    except TypeError:
        return False
    finally:
        store.close()
    return True


def observe(index: int, url: str, stop: Any, seen: Any) -> None:
    """``bench_stores.observe``, with its store opened by :func:`open_store`."""
    quiet_logs()
    rollouts = Rollouts(PROPAGATION_POLICY, store=open_store(url), environment=None)
    state = rollouts[PROPAGATED].state
    seen.put((index, state.version, str(state.status), time.time()))  # ready
    while not stop.is_set():
        current = rollouts[PROPAGATED].state
        if current.version != state.version:
            seen.put((index, current.version, str(current.status), time.time()))
            state = current
        time.sleep(POLL_S)
    store = rollouts.store
    del rollouts
    gc.collect()
    close(store)


class FleetObservers(Observers):
    """``bench_stores.Observers`` running :func:`observe`."""

    def __init__(self, url: str, count: int) -> None:
        super().__init__(url, count)
        context = multiprocessing.get_context("spawn")
        self.processes = [
            context.Process(target=observe, args=(i, url, self.stop, self.seen), daemon=True)
            for i in range(count)
        ]


def propagate(
    backend: Backend, push: bool, *, mode: Mode, kills: int, observers: int, rng: random.Random
) -> dict[str, Any]:
    """Kill and unfreeze ``x`` ``kills`` times; when each observer saw each transition."""
    interval = mode.refresh_interval
    url = backend.url(f"kill_{'on' if push else 'off'}", push=push, refresh_interval=interval)
    mine = {"main": Rollouts(PROPAGATION_POLICY, store=open_store(url), environment=None)}
    store = mine["main"].store
    watchers = FleetObservers(url, observers)
    delays: dict[str, list[float]] = {"kill": [], "unfreeze": []}
    calls: list[float] = []
    try:
        watchers.start()
        time.sleep(min(SETTLE_S, 2 * interval))
        for _ in range(kills):
            for action in ("kill", "unfreeze"):
                time.sleep(rng.uniform(0.0, interval))  # a random phase against the refreshes
                at = time.time()
                entry = getattr(mine["main"], action)(PROPAGATED, reason="bench_fleet",
                                                      actor="bench")  # fmt: skip
                calls.append(time.time() - at)
                first = watchers.first_seen(entry.version, time.monotonic() + interval + OBSERVE_S)
                delays[action].extend(first[i] - at if i in first else math.inf
                                      for i in range(observers))  # fmt: skip
    finally:
        watchers.close()
        forget(mine)
        close(store)
    row = summarize(delays["kill"], delays["unfreeze"], calls)
    row |= {"store": backend.kind, "push": push, "refresh_interval_s": interval,
            "observers": observers, "kills": kills}  # fmt: skip
    row["targets"] = targets(backend.kind, push, interval)
    return row


def summarize(kill: list[float], unfreeze: list[float], calls: list[float]) -> dict[str, Any]:
    """The kill delays' figures (a missed observation is infinite), the unfreezes' apart."""
    return {
        "status": "ok",
        "samples": len(kill),
        "missed": sum(1 for d in kill if not math.isfinite(d)),
        **stats(kill),
        "unfreeze": stats(unfreeze),
        "call_median_s": statistics.median(calls) if calls else None,
        "delays_s": [finite(d) for d in kill],
    }


def targets(kind: str, push: bool, interval: float) -> dict[str, float]:
    """The limits a row is judged by: none for SQLite's opt-in polling (measured only)."""
    if not push:
        return {"max_s": interval + PUSH_OFF_SLACK_S}
    return dict(PUSH_TARGETS) if kind in SERVED else {}


def stats(values: list[float]) -> dict[str, float | None]:
    """Median, p90, p99 and max; a missed observation counts as infinite (shown as None)."""
    if not values:
        return {"median_s": None, "p90_s": None, "p99_s": None, "max_s": None}
    return {
        "median_s": finite(statistics.median(values)),
        "p90_s": finite(quantile(values, 0.90)),
        "p99_s": finite(quantile(values, 0.99)),
        "max_s": finite(max(values)),
    }


def finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


# -- part 2: the load at steady state -------------------------------------------------------


class Failure(Exception):
    """The simulated failure of a call, on either path."""


def new_path(unit: str, fail: bool) -> str:
    if fail:
        raise Failure(unit)
    return unit


def old_path(unit: str, fail: bool) -> str:
    if fail:
        raise Failure(unit)
    return unit


def unit_of(unit: str, fail: bool) -> str:
    return unit


def drop_expected(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
    """A structlog processor: the new path's (simulated) errors are expected, not news."""
    if event.get("event") == "rollout.new_path_error":
        raise structlog.DropEvent
    return event


def work(
    index: int, url: str, *, count: int, rate: float, progress: Any, ready: Any, stop: Any,
    seed: int,
) -> None:  # fmt: skip
    """A worker: guarded calls at ``rate`` per second across ``count`` rollouts until stopped.

    The calls made so far go to ``progress[2 * index]`` after each batch, and the store's
    background refreshes (each with its flushes) to ``progress[2 * index + 1]``.
    """
    quiet_logs()
    structlog.configure(processors=[drop_expected, *structlog.get_config()["processors"]])
    rollouts = Rollouts(fleet_policy(count), store=url, environment=None)

    def refreshed() -> None:  # after the flushes of the refresh (registered before it)
        progress[2 * index + 1] += 1

    if isinstance(rollouts.store, SyncingStore):
        rollouts.store.on_refresh(refreshed)  # a plain function: held strongly
    guarded = [
        rollouts.guard(name, fallback=old_path, unit=unit_of, reraise=False)(new_path)
        for name in rollout_names(count)
    ]
    ready.put((index, os.getpid()))
    rng = random.Random(seed)
    draw, chance, stopped, now = rng.randrange, rng.random, stop.is_set, time.monotonic
    start, done, n = now(), 0, len(guarded)
    while not stopped():
        for _ in range(int(rate * (now() - start)) - done):
            with suppress(Failure):  # the old path failed too: the caller's own error
                guarded[done % n](f"user-{draw(UNITS)}", chance() < ERROR_SHARE)
            done += 1
        progress[2 * index] = done
        time.sleep(TICK_S)
    store = rollouts.store
    del rollouts, guarded
    gc.collect()
    close(store)


def prepare(url: str, count: int) -> None:
    """Start the rollouts in the store, so that the workers only load them."""
    mine = {"main": Rollouts(fleet_policy(count), store=url, environment=None)}
    store = mine["main"].store
    forget(mine)
    close(store)


def versions(url: str, count: int) -> list[int]:
    """The stored version of each rollout (1: no transition since the start)."""
    store = stagedroll.stores.store_from_url(url)
    try:
        states = [store.load(name) for name in rollout_names(count)]
    finally:
        store.close()
    return [state.version if state is not None else 0 for state in states]


def measure_load(
    backend: Backend, cell: Cell, mode: Mode, window_s: float, seed: int
) -> dict[str, Any]:
    """One cell: start the workers, warm up, read the counters around the window."""
    label = f"load_{cell.processes}p_{cell.rollouts}r_{cell.rate:g}c"
    url = backend.url(label, push=None, refresh_interval=mode.refresh_interval)
    prepare(url, cell.rollouts)
    context = multiprocessing.get_context("spawn")
    progress = context.Array("q", 2 * cell.processes, lock=False)
    ready, stop = context.Queue(), context.Event()
    workers = [
        context.Process(
            target=work,
            args=(i, url),
            kwargs={
                "count": cell.rollouts,
                "rate": cell.rate,
                "progress": progress,
                "ready": ready,
                "stop": stop,
                "seed": seed + i,
            },
            daemon=True,
        )
        for i in range(cell.processes)
    ]
    counters = Counters(backend)
    try:
        for process in workers:
            process.start()
        wait_ready(workers, ready)
        time.sleep(mode.warmup_s)
        before, counts_before, t0 = list(progress), counters.read(), time.monotonic()
        cpu_before = cpu_times()
        time.sleep(window_s)
        after, counts_after, t1 = list(progress), counters.read(), time.monotonic()
        busy = cpu_busy(cpu_before, cpu_times())
        requests_window = window_s / 2
        requests = counters.requests(requests_window) if backend.kind == "redis" else None
        dead = [p.exitcode for p in workers if p.exitcode is not None]
    finally:
        stop.set()
        for process in workers:
            process.join(60)
            if process.is_alive():
                process.terminate()
                process.join(10)
        counters.close()
    moved = [v for v in versions(url, cell.rollouts) if v != 1]
    elapsed = t1 - t0
    load = counters.load(counts_before, counts_after)
    per_process = cell.processes * elapsed
    rates = [(b - a) / elapsed for a, b in zip(before, after, strict=True)]
    achieved, refreshes = rates[0::2], rates[1::2]
    if requests is not None:
        load["total"] = requests * elapsed / requests_window  # as if over the main window
    value = load["total"] / per_process
    ranked = sorted(load["by_command"].items(), key=lambda kv: -kv[1])
    by_command = {k: round(v / per_process, 3) for k, v in ranked}
    row: dict[str, Any] = {
        "status": "ok" if not dead else "failed",
        "store": backend.kind,
        "processes": cell.processes,
        "rollouts": cell.rollouts,
        "rate": cell.rate,
        "refresh_interval_s": mode.refresh_interval,
        "window_s": round(elapsed, 2),
        "achieved_mean": round(statistics.fmean(achieved), 1),
        "achieved_min": round(min(achieved), 1),
        "refreshes_mean": round(statistics.fmean(refreshes), 2),
        "refreshes_min": round(min(refreshes), 2),
        "cpu_busy": busy,
        "unit": load["unit"],
        "per_process_s": round(value, 3),
        "total_per_s": round(load["total"] / elapsed, 2),
        "by_command": by_command,
        "transitions": len(moved),
        "target": LOAD_TARGET,
        "pass": value <= LOAD_TARGET,
        "rate_pass": min(achieved) >= RATE_SHARE * cell.rate,
        "refresh_pass": min(refreshes) >= REFRESH_SHARE / mode.refresh_interval,
    }
    if dead:
        row["reason"] = f"workers exited during the window: {dead}"
    for extra in ("total_commands_processed", "transactions"):
        if extra in load:
            row[f"{extra}_per_process_s"] = round(load[extra] / per_process, 3)
    # The server's CPU time per process per second: how many such processes one core serves.
    row["server_cpu_ms_per_process_s"] = round(load["server_cpu_us"] / 1000 / per_process, 3)
    return row


def cpu_times() -> tuple[float, float] | None:
    """The machine's CPU time so far, all and idle (Linux ``/proc/stat``; else ``None``)."""
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return sum(fields), fields[3] + fields[4]  # idle and iowait


def cpu_busy(before: tuple[float, float] | None, after: tuple[float, float] | None) -> float | None:
    """The share of the machine's CPU time that was busy between two :func:`cpu_times`."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    return round(1 - (after[1] - before[1]) / (after[0] - before[0]), 3)


def wait_ready(workers: list[Any], ready: Any) -> None:
    seen: set[int] = set()
    deadline = time.monotonic() + READY_DEADLINE_S
    while len(seen) < len(workers):
        dead = [p.exitcode for p in workers if p.exitcode is not None]
        if dead or time.monotonic() > deadline:
            raise RuntimeError(f"workers ready: {len(seen)} of {len(workers)}; exit codes: {dead}")
        with suppress(queue.Empty):
            seen.add(ready.get(timeout=0.1)[0])


# -- the report -----------------------------------------------------------------------------


def checks(report: dict[str, Any], *, judged: bool) -> list[dict[str, Any]]:
    """Every target with its value and verdict (``judged``: whether it counts)."""
    out: list[dict[str, Any]] = []
    for row in report["propagation"]:
        if row["status"] != "ok":
            continue
        for name, limit in row["targets"].items():
            value = row[name]
            out.append(
                {
                    "what": f"kill propagation {name.removesuffix('_s')}",
                    "store": row["store"],
                    "push": row["push"],
                    "value": value,
                    "limit": limit,
                    "unit": "s",
                    "judged": judged,
                    "pass": value is not None and value <= limit,
                }
            )
    for row in report["load"]:
        if row["status"] == "skipped":
            continue
        ok = row["status"] == "ok"
        cell = f"{row['processes']} processes, {row['rollouts']} rollouts, {row['rate']:g} calls/s"
        out.append(
            {
                "what": f"load per process ({cell})",
                "store": row["store"],
                "value": row["per_process_s"],
                "limit": row["target"],
                "unit": f"{row['unit']}/s",
                "judged": judged,
                "pass": ok and row["pass"],
            }
        )
        out.append(
            {
                "what": f"achieved call rate, slowest process ({cell})",
                "store": row["store"],
                "value": row["achieved_min"],
                "limit": RATE_SHARE * row["rate"],
                "unit": "calls/s (at least)",
                "judged": judged,
                "pass": ok and row["rate_pass"],
            }
        )
        out.append(
            {
                "what": f"refreshes per second, slowest process ({cell})",
                "store": row["store"],
                "value": row["refreshes_min"],
                "limit": REFRESH_SHARE / row["refresh_interval_s"],
                "unit": "per s (at least)",
                "judged": judged,
                "pass": ok and row["refresh_pass"],
            }
        )
    return out


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def ms(value: float | None) -> str:
    return "missed" if value is None else f"{value * 1000:.1f}"


def print_report(report: dict[str, Any]) -> None:
    meta = report["meta"]
    print("# Fleet benchmark\n")
    print(f"stagedroll {meta['stagedroll']}, Python {meta['python']}, mode {meta['mode']}, "
          f"{meta['cpus']} CPUs, load average {meta['loadavg_start']} at the start, "
          f"{meta['loadavg_end']} at the end, {meta['runtime_s']:.0f} s.\n")  # fmt: skip
    for kind, backend in report["stores"].items():
        if backend["status"] != "ok":
            print(f"- {kind}: skipped: {backend['reason']}")
        elif backend["info"]:
            info = dict(backend["info"])
            details = [f"private, port {info.pop('port')}", *(f"{k}: {v}" for k, v in
                       info.items() if k not in ("server", "private"))]  # fmt: skip
            print(f"- {kind}: {info['server']} ({'; '.join(details)})")
        else:
            print(f"- {kind}: files in a temporary directory")
    if report["propagation"]:
        print_propagation(report)
    if report["load"]:
        print_load(report)
    print_summary(report)


def print_propagation(report: dict[str, Any]) -> None:
    meta = report["meta"]
    print(f"\n## Kill propagation\n\n{meta['observers']} observer processes (spawn) polling "
          f"every {POLL_S * 1000:g} ms; {meta['kills']} kills, each followed by an unfreeze, "
          f"after a random pause within refresh_interval {meta['refresh_interval_s']:g} s. "
          "Delays in ms, from just before the call to each observer's first sight.\n")  # fmt: skip
    print(
        "| store | push | samples | missed | median | p90 | p99 | max | unfreeze median "
        "| unfreeze p99 | call median | target | verdict |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for row in report["propagation"]:
        push = "on" if row["push"] else "off"
        if row["status"] != "ok":
            print(f"| {row['store']} | {push} | skipped: {row['reason']} |" + " |" * 10)
            continue
        targets = row["targets"]
        target = ", ".join(f"{k.removesuffix('_s')} <= {v * 1000:g}" for k, v in targets.items())
        verdicts = [row[k] is not None and row[k] <= v for k, v in targets.items()]
        verdict = ("PASS" if all(verdicts) else "FAIL") if targets else "not judged"
        print(f"| {row['store']} | {push} | {row['samples']} | {row['missed']} | "
              f"{ms(row['median_s'])} | {ms(row['p90_s'])} | {ms(row['p99_s'])} | "
              f"{ms(row['max_s'])} | {ms(row['unfreeze']['median_s'])} | "
              f"{ms(row['unfreeze']['p99_s'])} | {ms(row['call_median_s'])} | "
              f"{target or '-'} | {verdict} |")  # fmt: skip


def print_load(report: dict[str, Any]) -> None:
    meta = report["meta"]
    print(f"\n## Store load at steady state\n\nPer process per second, over a window of "
          f"{meta['window_s']:g} s after a warm-up of {meta['warmup_s']:g} s; push on (the "
          f"default) and refresh_interval {meta['refresh_interval_s']:g} s. Redis: the "
          "commands clients send, from the server's own feed (MONITOR, in a window of its "
          "own after the main one; the commands a script runs are listed by command, from "
          "commandstats, and in total_commands_processed); PostgreSQL: pg_stat_statements "
          "(or transactions). Server CPU: Redis's (INFO cpu) or the PostgreSQL server "
          "processes' (/proc) CPU time per process per second of the main window. Target: "
          "at most "
          f"{LOAD_TARGET:g} per process per second, with every process at "
          f"least {RATE_SHARE:.0%} of its call rate and {REFRESH_SHARE:.0%} of its refreshes "
          "(else the figure is not valid).\n")  # fmt: skip
    print(f"Refreshes/s: the background refresh cycles (each with its flushes) per second of "
          f"each process, mean and min: below 1 / refresh_interval the processes are starved "
          f"(CPU), and their load is a lower bound. CPU: the share of the machine's CPU time "
          f"({meta['cpus']} CPUs) that was busy during the window.\n")  # fmt: skip
    print("| store | processes | rollouts | calls/s target | achieved mean | achieved min "
          "| refreshes/s mean | min | CPU | per process/s | server total/s | server CPU "
          "ms per process/s | transitions | verdict |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in report["load"]:
        if row["status"] == "skipped":
            print(f"| {row['store']} | skipped: {row['reason']} |" + " |" * 12)
            continue
        verdict = "PASS" if row["pass"] else "FAIL"
        if not row["rate_pass"]:
            verdict += ", rate not achieved"
        if not row["refresh_pass"]:
            verdict += ", refreshes starved (a lower bound)"
        if row["status"] != "ok":
            verdict = f"FAILED: {row['reason']}"
        print(f"| {row['store']} | {row['processes']} | {row['rollouts']} | {row['rate']:g} | "
              f"{row['achieved_mean']:g} | {row['achieved_min']:g} | "
              f"{row['refreshes_mean']:.2f} | {row['refreshes_min']:.2f} | "
              f"{percent(row['cpu_busy'])} | {row['per_process_s']:.3f} {row['unit']} | "
              f"{row['total_per_s']:g} | {row['server_cpu_ms_per_process_s']:.3f} | "
              f"{row['transitions']} | {verdict} |")  # fmt: skip
    measured = [row for row in report["load"] if row["status"] != "skipped"]
    if measured:
        print("\n### By command, per process per second\n")
        print("| store | processes | rollouts | calls/s | command | per process/s |")
        print("|---|---:|---:|---:|---|---:|")
        for row in measured:
            cell = f"| {row['store']} | {row['processes']} | {row['rollouts']} | {row['rate']:g}"
            for command, value in row["by_command"].items():
                text = command if len(command) <= 90 else command[:87] + "..."
                print(f"{cell} | `{text.replace('|', '/')}` | {value:.3f} |")
            for extra in ("total_commands_processed", "transactions"):
                if f"{extra}_per_process_s" in row:
                    print(f"{cell} | ({extra}) | {row[f'{extra}_per_process_s']:.3f} |")


def print_summary(report: dict[str, Any]) -> None:
    failed = [c for c in report["targets"] if not c["pass"]]
    judged = any(c["judged"] for c in report["targets"])
    print("\n## Summary\n")
    if not judged:
        print("No target is judged in this mode.")
    elif not failed:
        print("All judged targets met.")
    for check in failed:
        push = "" if "push" not in check else f", push {'on' if check['push'] else 'off'}"
        print(f"- {'MISSED' if judged else 'missed (not judged)'}: {check['what']} "
              f"({check['store']}{push}): {check['value']} {check['unit']}, "
              f"limit {check['limit']:g}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer kills, shorter windows, "
                      "3 cells of the matrix")  # fmt: skip
    size.add_argument("--smoke", action="store_true", help="tiny everything (for tests)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--save", type=Path, help="also write the JSON report to this file")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--kills", type=positive, help="kills per store and push (default 20)")
    parser.add_argument("--observers", type=positive, help="observer processes (default 8)")
    parser.add_argument("--window", type=float, help="seconds of each load window (default 30)")
    parser.add_argument("--stores", default=",".join(KINDS), help="a subset of "
                        f"{','.join(KINDS)}")  # fmt: skip
    parser.add_argument("--part", choices=("all", "propagation", "load"), default="all")
    parser.add_argument("--seed", type=int, default=20240611, help="seed of pauses and units")
    args = parser.parse_args(argv)
    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    mode = MODES[mode_name]
    kills, observers = args.kills or mode.kills, args.observers or mode.observers
    window_s = args.window or mode.window_s
    kinds = [k for k in KINDS if k in args.stores.split(",")]

    quiet_logs()
    start, loadavg_start = time.perf_counter(), os.getloadavg()
    rng = random.Random(args.seed)
    propagation: list[dict[str, Any]] = []
    load: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as directory, \
            backends(kinds, Path(directory)) as found:  # fmt: skip
        for kind, backend in found.items():
            if args.part == "load":
                break
            for push in (False, True):
                if backend.status != "ok":
                    propagation.append({"status": "skipped", "store": kind, "push": push,
                                        "reason": backend.reason})  # fmt: skip
                else:
                    propagation.append(
                        propagate(
                            backend, push, mode=mode, kills=kills, observers=observers, rng=rng
                        )
                    )
        for kind, backend in found.items():
            if args.part == "propagation" or kind not in SERVED:
                continue
            for cell in mode.cells:
                if backend.status != "ok":
                    load.append({"status": "skipped", "store": kind, "reason": backend.reason,
                                 "processes": cell.processes, "rollouts": cell.rollouts,
                                 "rate": cell.rate})  # fmt: skip
                else:
                    load.append(measure_load(backend, cell, mode, window_s, args.seed))
        stores = {kind: {"status": b.status, "reason": b.reason, "info": b.info}
                  for kind, b in found.items()}  # fmt: skip
    meta = {
        "python": platform.python_version(),
        "stagedroll": stagedroll.__version__,
        "mode": mode_name,
        "cpus": os.cpu_count(),
        "kills": kills,
        "observers": observers,
        "poll_s": POLL_S,
        "refresh_interval_s": mode.refresh_interval,
        "warmup_s": mode.warmup_s,
        "window_s": window_s,
        "seed": args.seed,
        "loadavg_start": " ".join(f"{x:.2f}" for x in loadavg_start),
        "loadavg_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "runtime_s": round(time.perf_counter() - start, 1),
        "command": " ".join(["benchmarks/bench_fleet.py", *(argv or sys.argv[1:])]),
        "git": git_head(),
    }
    report: dict[str, Any] = {"meta": meta, "stores": stores, "propagation": propagation,
                              "load": load}  # fmt: skip
    report["targets"] = checks(report, judged=mode_name != "smoke")
    failed = [c for c in report["targets"] if c["judged"] and not c["pass"]]
    report["ok"] = not failed
    if args.save is not None:
        args.save.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 1 if args.check and failed else 0


def git_head() -> str | None:
    """The commit measured, and whether the tree had changes (``+dirty``)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = git(root, "rev-parse", "--short", "HEAD")
        dirty = git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True,
                          timeout=10)  # fmt: skip
    return done.stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
