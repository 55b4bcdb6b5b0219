"""Tests of stagedroll.testing.override: forced decisions, isolated per thread and task."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import plain_policy
from stagedroll import Reason, Rollouts, UnknownRolloutError
from stagedroll.testing import override

UNITS = [f"user-{i}" for i in range(200)]


@pytest.fixture(name="rollouts")
def _rollouts() -> Rollouts:
    return Rollouts(plain_policy(0, 50))  # at 0 %: nobody is in without an override


def in_cohort(rollouts: Rollouts) -> list[bool]:
    return [rollouts.enabled("checkout", unit) for unit in UNITS]


class TestOverride:
    def test_forces_every_unit_and_restores(self, rollouts: Rollouts) -> None:
        """Inside the block every unit is in, with reason OVERRIDE; after it, none is."""
        with override(rollouts, "checkout"):
            assert all(in_cohort(rollouts))
            decision = rollouts.decide("checkout", "user-1")
            assert (decision.enabled, decision.reason) == (True, Reason.OVERRIDE)
            assert rollouts.decide("checkout", None).reason is Reason.OVERRIDE
        assert not any(in_cohort(rollouts))
        assert rollouts["checkout"]._router.view.plain  # the fast path is back

    def test_off_for_given_units(self) -> None:
        """Forced off for some units; the others keep their bucket's answer."""
        rollouts = Rollouts(plain_policy(100))
        with override(rollouts, "checkout", False, units=["user-1", 7, uuid.UUID(int=3)]):
            assert not rollouts.enabled("checkout", "user-1")
            assert not rollouts.enabled("checkout", 7)
            assert not rollouts.enabled("checkout", uuid.UUID(int=3))
            assert rollouts.enabled("checkout", "user-2")
            assert rollouts.decide("checkout", "user-2").reason is Reason.IN_COHORT

    def test_nesting_innermost_wins(self, rollouts: Rollouts) -> None:
        """A nested override takes precedence for its units and ends with its block."""
        with override(rollouts, "checkout"):
            with override(rollouts, "checkout", False, units=["user-1"]):
                assert not rollouts.enabled("checkout", "user-1")
                assert rollouts.enabled("checkout", "user-2")
            assert rollouts.enabled("checkout", "user-1")

    def test_decorator_sync_and_async(self, rollouts: Rollouts) -> None:
        """Decorated functions run under the override, each call afresh."""

        @override(rollouts, "checkout")
        def sync_probe() -> bool:
            return rollouts.enabled("checkout", "user-1")

        @override(rollouts, "checkout")
        async def async_probe() -> bool:
            await asyncio.sleep(0)
            return rollouts.enabled("checkout", "user-1")

        assert sync_probe()
        assert asyncio.run(async_probe())
        assert not rollouts.enabled("checkout", "user-1")

    def test_other_threads_do_not_see_it(self, rollouts: Rollouts) -> None:
        """An override in one thread leaves decisions in another untouched."""
        seen: list[bool] = []
        inside = threading.Event()
        done = threading.Event()

        def other() -> None:
            inside.wait()
            seen.append(rollouts.enabled("checkout", "user-1"))
            done.set()

        thread = threading.Thread(target=other)
        thread.start()
        with override(rollouts, "checkout"):
            inside.set()
            done.wait(10)
            assert rollouts.enabled("checkout", "user-1")
        thread.join()
        assert seen == [False]

    def test_tasks_are_isolated(self, rollouts: Rollouts) -> None:
        """Concurrent asyncio tasks each see their own override, or none."""

        async def probe(force: bool | None) -> bool:
            if force is None:
                await asyncio.sleep(0.01)
                return rollouts.enabled("checkout", "user-1")
            async with override(rollouts, "checkout", force):
                await asyncio.sleep(0.01)
                return rollouts.enabled("checkout", "user-1")

        async def main() -> list[bool]:
            return list(await asyncio.gather(probe(True), probe(None), probe(False)))

        assert asyncio.run(main()) == [True, False, False]

    def test_every_rollouts_with_none(self) -> None:
        """rollouts=None forces the rollout in every Rollouts, even one made inside."""
        before = Rollouts(plain_policy(0))
        with override(None, "checkout"):
            after = Rollouts(plain_policy(0))
            assert before.enabled("checkout", "user-1")
            assert after.enabled("checkout", "user-1")
        assert not before.enabled("checkout", "user-1")
        assert not after.enabled("checkout", "user-1")
        assert after["checkout"]._router.view.plain

    def test_one_rollouts_only(self, rollouts: Rollouts) -> None:
        """An override of one Rollouts leaves another with the same policy alone."""
        other = Rollouts(plain_policy(0, 50))
        with override(rollouts, "checkout"):
            assert not other.enabled("checkout", "user-1")

    def test_guards_follow_it_and_record_as_targeted(self, rollouts: Rollouts) -> None:
        """A guard sends forced calls to the forced path; they are not compared."""

        @rollouts.guard("checkout", fallback=lambda unit: "old", unit=lambda unit: unit)
        def new(unit: str) -> str:
            return "new"

        @rollouts.guard("checkout", fallback=lambda: "old", unit=None)
        def per_request() -> str:
            return "new"

        with override(rollouts, "checkout"):
            assert {new(unit) for unit in UNITS} == {"new"}
            assert per_request() == "new"
        status = rollouts.status("checkout")
        assert status.targeted.calls == len(UNITS) + 1
        assert status.treatment.calls == 0

    def test_track_and_report_under_it(self, rollouts: Rollouts) -> None:
        """track and report take the forced decision."""
        with override(rollouts, "checkout"):
            with rollouts.track("checkout", "user-1") as decision:
                assert decision.reason is Reason.OVERRIDE
            assert rollouts.report("checkout", "user-2", error=False).enabled

    def test_unknown_name_and_bad_unit(self, rollouts: Rollouts) -> None:
        """An unknown rollout or a unit of the wrong type is refused at once."""
        with pytest.raises(UnknownRolloutError):
            override(rollouts, "nope")
        bad: list[Any] = [1.5]
        with pytest.raises(TypeError):
            override(rollouts, "checkout", units=bad)

    def test_repr(self, rollouts: Rollouts) -> None:
        """The repr says what is forced, and where."""
        assert "'checkout' off for 1 units" in repr(override(rollouts, "checkout", False,
                                                              units=["u"]))  # fmt: skip
        assert "every Rollouts" in repr(override(None, "checkout"))

    def test_exit_in_another_task_restores_the_fast_path(self, rollouts: Rollouts) -> None:
        """Entered in one task and left in another (async fixtures), nothing raises or leaks."""
        forcing = override(rollouts, "checkout")

        async def main() -> None:
            await asyncio.create_task(forcing.__aenter__())
            await asyncio.create_task(forcing.__aexit__(None, None, None))

        asyncio.run(main())
        assert rollouts["checkout"]._router.view.plain
        assert not rollouts.enabled("checkout", "user-1")

    def test_blocks_left_out_of_order(self, rollouts: Rollouts) -> None:
        """Leaving the outer block first ends the outer override, not the inner one."""
        outer = override(rollouts, "checkout", units=["user-1"])
        inner = override(rollouts, "checkout", units=["user-2"])
        outer.__enter__()
        inner.__enter__()
        outer.__exit__(None, None, None)
        assert not rollouts.enabled("checkout", "user-1")
        assert rollouts.enabled("checkout", "user-2")
        inner.__exit__(None, None, None)
        assert not rollouts.enabled("checkout", "user-2")
        assert rollouts["checkout"]._router.view.plain

    def test_generator_functions_are_refused(self, rollouts: Rollouts) -> None:
        """A decorated generator would run after the override ended: refused."""

        def fixture() -> Iterator[None]:
            yield

        with pytest.raises(TypeError, match="generator function"):
            override(rollouts, "checkout")(fixture)
