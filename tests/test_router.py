"""Tests of the routing entry: the ``hash < threshold`` rule copied for speed, pinned at its
boundary on every path that copies it (``Rollout.enabled``, ``Router.route``, the guard's and
the shadow's sync wrappers) and on those that do not (``decide``, ``Rollouts.enabled``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from stagedroll import Rollouts, bucket, threshold

SALT = "boundary"
# Units whose bucket under SALT is exactly at a percent's threshold (out of the cohort), or
# one below it (in): found by search, checked below.
AT = ("u8534", 92.5556)
BELOW = ("u523", 72.2213)


def rollouts_at(percent: float, pattern: str | None = None) -> Rollouts:
    rollout: dict[str, Any] = {
        "salt": SALT,
        "stages": [{"name": "only", "percent": percent}],
        "health": {"enabled": False},
    }
    if pattern is not None:
        rollout["pattern"] = pattern
    return Rollouts({"rollouts": {"b": rollout}})


def by_enabled(rollouts: Rollouts, unit: str) -> bool:
    return rollouts["b"].enabled(unit)


def by_name(rollouts: Rollouts, unit: str) -> bool:
    return rollouts.enabled("b", unit)


def by_decide(rollouts: Rollouts, unit: str) -> bool:
    return rollouts.decide("b", unit).enabled


def by_route(rollouts: Rollouts, unit: str) -> bool:
    arm, _ = rollouts["b"]._router.route(unit)
    return arm.enabled


def by_guard(rollouts: Rollouts, unit: str) -> bool:
    guarded = rollouts.guard("b", fallback=lambda u: False, unit=lambda u: u)(lambda u: True)
    return guarded(unit)


PATHS: list[Callable[[Rollouts, str], bool]] = [
    by_enabled,
    by_name,
    by_decide,
    by_route,
    by_guard,
]


class TestBoundary:
    def test_the_units_sit_where_they_are_said_to(self) -> None:
        """The data: one bucket equals its percent's threshold, the other is one below."""
        assert bucket(SALT, AT[0]) == threshold(AT[1])
        assert bucket(SALT, BELOW[0]) == threshold(BELOW[1]) - 1

    @pytest.mark.parametrize("path", PATHS, ids=lambda p: p.__name__)
    def test_at_the_threshold_is_out_one_below_is_in(
        self, path: Callable[[Rollouts, str], bool]
    ) -> None:
        """Every path applies ``hash < threshold``: equal is out, one below is in."""
        assert path(rollouts_at(AT[1]), AT[0]) is False
        assert path(rollouts_at(BELOW[1]), BELOW[0]) is True

    def test_the_shadow_runs_its_candidate_below_the_threshold_only(self) -> None:
        """A shadow's cohort test is the same rule: the candidate runs for the unit one below
        the threshold, not for the unit at it."""
        for (unit, percent), runs in ((AT, 0), (BELOW, 1)):
            ran: list[str] = []
            rollouts = rollouts_at(percent, pattern="shadow")
            shadow = rollouts.shadow("b", candidate=ran.append, unit=lambda u: u)
            shadow(lambda u: None)(unit)
            assert len(ran) == runs
