"""Shared fixtures: small policies most tests start from, and a wait for what runs behind."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import settings

from servers import (
    DEFAULT_POSTGRES_URL,
    DEFAULT_REDIS_URL,
    PostgresServer,
    RedisServer,
    drop_schema,
    postgres_reachable,
    postgres_unavailable,
    reachable,
    redis_unavailable,
    unique_prefix,
    unique_schema,
)
from stagedroll import Health as HealthPolicy
from stagedroll import HealthReport, MemoryStore, Rollouts, StoreError
from stagedroll._failures import Failures
from stagedroll._health import Health
from stagedroll._hooks import Hooks
from stagedroll._outcomes import ArmCounts, Arms, Outcomes
from stagedroll._pool import Outbox
from stagedroll._router import Router
from stagedroll._runtime import Runtime
from stagedroll.stores._redis import _redact

pytest_plugins = ["pytester"]

# No timing thresholds in tests: hypothesis's per-example deadline is one, on shared machines.
settings.register_profile("stagedroll", deadline=None)
settings.load_profile("stagedroll")


EVIDENCE_KEYS = frozenset(
    {
        "share",
        "e_errors",
        "e_latency",
        "e_sample_ratio",
        "r_errors",
        "r_latency",
        "error_events_treatment",
        "error_events_control",
        "slow_events_treatment",
        "slow_events_control",
        "units_treatment",
        "units_control",
        "slow_threshold_s",
    }
)
"""The keys of the health evidence in every transition's history entry."""


def plain_policy(*percents: float, name: str = "checkout") -> dict[str, Any]:
    """A policy with one rollout whose stages have the given percents."""
    stages = [{"name": f"s{i}", "percent": p} for i, p in enumerate(percents)]
    return {"rollouts": {name: {"stages": stages}}}


def staged_policy() -> dict[str, Any]:
    """One rollout without a health gate, at 10, 50 then 100 %: it moves only when told."""
    policy = plain_policy(10, 50, 100, name="co")
    policy["rollouts"]["co"]["health"] = {"enabled": False}
    return policy


def wait_until(
    condition: Callable[[], object], what: str, *, store: Any = None, deadline_s: float = 30.0
) -> None:
    """Wait until ``condition()`` holds, failing the test after ``deadline_s`` (generous: noisy
    machines); wake ``store``'s background refresh meanwhile, when given."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {deadline_s} s: {what}")
        if store is not None:
            store.wake()
        time.sleep(0.01)


def assert_serving_while_down(
    rollouts: Rollouts, name: str, units: list[str], before: list[bool],
    guarded: Callable[[str], str],
) -> None:  # fmt: skip
    """With the store down: decisions and guarded calls go on as ``before``, reports are
    taken, and a transition raises :class:`StoreError` (nothing half-done)."""
    assert [rollouts.enabled(name, unit) for unit in units] == before
    assert [rollouts.decide(name, unit).enabled for unit in units] == before
    for unit in units[:100]:
        rollouts.report(name, unit, error=True, latency_s=0.01)
    assert [guarded(unit) == "new" for unit in units] == before
    with pytest.raises(StoreError):
        rollouts.freeze(name, reason="incident", actor="alice")


@pytest.fixture(name="policy")
def _policy() -> dict[str, Any]:
    return {
        "environments": ["dev", "staging", "prod"],
        "segments": {
            "employees": {"rules": [{"attribute": "email", "op": "suffix", "value": "@corp.test"}]}
        },
        "rollouts": {
            "checkout": {
                "stages": [
                    {"name": "employees", "percent": 0, "segments": ["employees"]},
                    {"name": "canary", "percent": 1, "bake": "30m"},
                    {"name": "half", "percent": 50},
                    {"name": "all", "percent": 100},
                ],
                "environments": {"dev": 100, "staging": "stages", "prod": "stages"},
                "targeting": {"allow": ["vip"], "deny": ["banned"]},
            },
            "search": {"stages": [{"name": "quarter", "percent": 25}]},
            "orgs": {"bucket_by": "org", "stages": [{"name": "half", "percent": 50}]},
        },
    }


@pytest.fixture(name="redis_url", scope="session")
def _redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a Redis for the tests: ``$REDIS_URL``, else a private ``redis-server``."""
    url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    if reachable(url):
        yield url
        return
    try:
        server = RedisServer(tmp_path_factory.mktemp("redis"))
        server.start()
    except RuntimeError as exc:
        redis_unavailable(f"no Redis at {url} ($REDIS_URL), and no private one: {exc}")
        return
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(name="redis_prefix")
def _redis_prefix(request: pytest.FixtureRequest, redis_url: str) -> Iterator[str]:
    """A key prefix for this test alone; its keys are deleted afterwards."""
    prefix = unique_prefix(re.sub(r"[^\w-]", "-", request.node.name)[:40])  # no glob characters
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(name="redis_server")
def _redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private, running ``redis-server`` on a free port, which the test may stop and start."""
    try:
        server = RedisServer(tmp_path)
    except RuntimeError as exc:
        redis_unavailable(str(exc))
        raise
    with server:
        yield server


@pytest.fixture(name="postgres_url", scope="session")
def _postgres_url() -> Iterator[str]:
    """The URL of a PostgreSQL for the tests: ``$POSTGRES_URL``, else a private server."""
    url = os.environ.get("POSTGRES_URL", DEFAULT_POSTGRES_URL)
    if postgres_reachable(url):
        yield url
        return
    shown = _redact(url)
    try:
        server = PostgresServer()
    except RuntimeError as exc:
        postgres_unavailable(f"no PostgreSQL at {shown} ($POSTGRES_URL), and no private one: {exc}")
        return
    try:
        server.start()
    except RuntimeError as exc:
        server.remove()
        postgres_unavailable(f"no PostgreSQL at {shown} ($POSTGRES_URL), and no private one: {exc}")
        return
    try:
        yield server.url
    finally:
        server.remove()


@pytest.fixture(name="postgres_schema")
def _postgres_schema(request: pytest.FixtureRequest, postgres_url: str) -> Iterator[str]:
    """A schema for this test alone (not created: the store creates it), dropped afterwards."""
    schema = unique_schema(request.node.name)
    yield schema
    drop_schema(postgres_url, schema)


@pytest.fixture(name="postgres_server")
def _postgres_server() -> Iterator[PostgresServer]:
    """A private, running PostgreSQL on a free port, which the test may stop and start."""
    try:
        server = PostgresServer()
    except RuntimeError as exc:
        postgres_unavailable(str(exc))
        raise
    with server:
        yield server


class Gate:
    """A health gate with the arms of one stage visit, at a share, as a rollout sets it up.

    The counters and the gate are wired as a rollout's handle wires them, on a router with
    no ``Rollouts``: the router records into the counters and feeds the gate.
    """

    def __init__(
        self,
        share: float = 0.5,
        *,
        paired: bool = False,
        outbox: Outbox | None = None,
        **knobs: Any,
    ) -> None:
        failures = Failures()
        runtime = Runtime(MemoryStore(), lambda: 0.0, failures, Hooks(failures))
        self.router = Router("r", runtime)
        self.health = Health(HealthPolicy(**knobs), paired=paired)
        self.health.outbox = outbox
        self.router.health = self.health
        self.outcomes = self.router.outcomes = Outcomes(
            lock=self.router.lock, on_visit=self.health.track
        )
        self.steps = 0
        self.router.step = self._due
        self.arms: Arms = self.outcomes.arms(0)
        self.share = share
        self.health.set_share(share)

    def _due(self) -> None:
        self.steps += 1

    def record(
        self,
        arm: ArmCounts,
        error: bool,
        latency_s: float | None,
        *,
        key: str | None,
        event: bool = True,
    ) -> bool:
        """Record one outcome through the router; return whether a step became due."""
        before = self.steps
        self.router.record(arm, key, error=error, latency_s=latency_s, event=event)
        return self.steps > before

    def error(self, unit: str | None, *, treatment: bool) -> bool:
        """Record a failed call of ``unit`` in an arm; return whether a step may be due."""
        arm = self.arms.treatment if treatment else self.arms.control
        return self.record(arm, True, None, key=unit)

    def ok(self, unit: str | None, *, treatment: bool, latency_s: float | None = None) -> bool:
        """Record a successful call of ``unit`` in an arm; return whether a step may be due."""
        arm = self.arms.treatment if treatment else self.arms.control
        return self.record(arm, False, latency_s, key=unit)

    def report(self) -> HealthReport:
        """The report of the gate now."""
        with self.outcomes.lock:
            for counts in self.arms:
                counts.fold()
            return self.health.report(self.arms.control, self.arms.treatment, self.share)
