"""Shared fixtures: small policies most tests start from."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings

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
