"""Shared fixtures: small policies most tests start from."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import settings

from servers import DEFAULT_REDIS_URL, RedisServer, reachable, redis_unavailable, unique_prefix

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
