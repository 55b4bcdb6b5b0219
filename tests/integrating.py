"""A rollout at half, units on either side of a cohort, and a function guarded by the bound
unit, shared by the tests of ``bind``, the integrations and the OpenFeature provider."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from typing import Any

import stagedroll
from stagedroll import Rollouts

POLICY: dict[str, Any] = {
    "rollouts": {"new-pricing": {"stages": [{"name": "half", "percent": 50}]}},
}
"""One rollout, ``new-pricing``, at one stage of 50 % (``half``)."""

IN, OUT = "user-3", "user-1"
"""Two units on either side of :data:`POLICY`'s 50 % (checked by each module's
``test_the_two_units_straddle_half``)."""


def unit_in(rollouts: Rollouts, name: str, *, enabled: bool) -> str:
    """A unit the bucket step puts on the new path (``enabled``) or the old one."""
    for i in range(10_000):
        unit = f"user-{i}"
        decision = rollouts.decide(name, unit)
        if decision.enabled is enabled and decision.bucket is not None:
            return unit
    raise AssertionError("no such unit")


def old() -> str:
    """The old path of the tests' guarded function."""
    return "old"


def guarded_price(rollouts: Rollouts) -> Callable[[], str]:
    """A function guarded by ``new-pricing`` for the bound unit: ``"new"``, or :func:`old`."""

    @rollouts.guard("new-pricing", fallback=old, unit=stagedroll.current_unit)
    def price() -> str:
        return "new"

    return price


def in_thread(target: Callable[[], object]) -> object:
    """Run ``target`` in a new thread and return what it returned."""
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(target()))
    thread.start()
    thread.join()
    return result[0]


def seen_by_a_thread_and_a_task() -> list[object]:
    """The units that a thread given this context and an asyncio task started here see."""
    context = contextvars.copy_context()
    seen = [in_thread(lambda: context.run(stagedroll.current_unit))]

    async def task() -> object:
        return await asyncio.create_task(asyncio.sleep(0, stagedroll.current_unit()))

    seen.append(asyncio.run(task()))
    return seen
