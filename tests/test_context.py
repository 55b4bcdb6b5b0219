"""Tests of the current unit: ``bind``, ``current_unit`` and what contexts see of it."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

import stagedroll
from integrating import IN, OUT, POLICY, guarded_price, in_thread, old
from stagedroll import Reason, Rollouts
from stagedroll.testing import RecordingSink


@pytest.fixture(name="rollouts")
def _rollouts() -> Rollouts:
    return Rollouts(POLICY)


class TestBind:
    def test_nothing_is_bound_at_first(self) -> None:
        """With no binding, the unit is None and the attributes are empty."""
        assert stagedroll.current_unit() is None
        assert dict(stagedroll.current_attributes()) == {}

    def test_a_with_block_binds_and_unbinds(self) -> None:
        """The unit and the attributes are bound inside the block, gone after it."""
        with stagedroll.bind("u1", {"plan": "pro"}) as bound:
            assert stagedroll.current_unit() == "u1"
            assert stagedroll.current_attributes() == {"plan": "pro"}
            assert bound.unit == "u1"
        assert stagedroll.current_unit() is None

    def test_the_readers_ignore_their_arguments(self) -> None:
        """``current_unit`` takes any arguments, so that it fits a guard of any signature."""
        with stagedroll.bind("u1", {"a": 1}):
            assert stagedroll.current_unit(1, "x", key=2) == "u1"
            assert stagedroll.current_attributes(1, key=2) == {"a": 1}

    def test_the_block_unbinds_on_an_exception(self) -> None:
        """An exception out of the block still unbinds."""
        with pytest.raises(RuntimeError), stagedroll.bind("u1"):
            raise RuntimeError("boom")
        assert stagedroll.current_unit() is None

    def test_the_attributes_are_a_read_only_copy(self) -> None:
        """Changing the mapping given changes nothing bound, and the bound one is read-only."""
        given_attributes = {"plan": "pro"}
        with stagedroll.bind("u1", given_attributes):
            given_attributes["plan"] = "free"
            attributes = stagedroll.current_attributes()
            assert attributes == {"plan": "pro"}
            with pytest.raises(TypeError):
                attributes["plan"] = "free"  # type: ignore[index]  # read-only on purpose

    def test_attributes_not_a_mapping_are_refused(self) -> None:
        """Attributes that are not a mapping raise TypeError naming what they are."""
        with pytest.raises(TypeError, match="attributes must be a mapping, not list"):
            stagedroll.bind("u1", [("a", 1)])  # type: ignore[arg-type]  # the wrong type

    def test_reset_twice_does_nothing_the_second_time(self) -> None:
        """A second ``reset`` leaves an outer binding made since in place."""
        bound = stagedroll.bind("u1")
        bound.reset()
        with stagedroll.bind("u2"):
            bound.reset()
            assert stagedroll.current_unit() == "u2"

    def test_async_with_binds_and_unbinds(self) -> None:
        """``async with`` binds for the block, like ``with``."""

        async def main() -> tuple[object, object]:
            async with stagedroll.bind("u1"):
                inside = stagedroll.current_unit()
            return inside, stagedroll.current_unit()

        assert asyncio.run(main()) == ("u1", None)

    @given(st.lists(st.one_of(st.text(max_size=8), st.integers(), st.none()), max_size=6))
    def test_nested_bindings_unwind_in_order(self, units: list[object]) -> None:
        """Nested bindings each restore the one outside them, whatever the units."""
        bounds = [stagedroll.bind(unit) for unit in units]
        for depth in range(len(units) - 1, -1, -1):
            assert stagedroll.current_unit() == units[depth]
            bounds[depth].reset()
        assert stagedroll.current_unit() is None


class TestContexts:
    def test_a_new_thread_starts_without_the_unit(self) -> None:
        """A plain thread runs in a fresh context: it does not see the caller's unit."""
        with stagedroll.bind("u1"):
            assert in_thread(stagedroll.current_unit) is None

    def test_a_thread_given_the_context_sees_the_unit(self) -> None:
        """A thread that runs in a copy of the caller's context sees the caller's unit."""
        with stagedroll.bind("u1"):
            context = contextvars.copy_context()
            assert in_thread(lambda: context.run(stagedroll.current_unit)) == "u1"

    def test_threads_bind_each_their_own(self) -> None:
        """Two threads binding at once each see their own unit."""
        barrier = threading.Barrier(2)
        seen: dict[str, object] = {}

        def work(unit: str) -> None:
            with stagedroll.bind(unit):
                barrier.wait()
                seen[unit] = stagedroll.current_unit()

        threads = [threading.Thread(target=work, args=(u,)) for u in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert seen == {"a": "a", "b": "b"}

    def test_tasks_and_to_thread_inherit_the_unit(self) -> None:
        """``create_task`` and ``asyncio.to_thread`` copy the context: both see the unit."""

        async def main() -> tuple[object, object]:
            with stagedroll.bind("u1"):
                task = asyncio.create_task(asyncio.sleep(0, stagedroll.current_unit()))
                in_thread = await asyncio.to_thread(stagedroll.current_unit)
            return await task, in_thread

        assert asyncio.run(main()) == ("u1", "u1")

    def test_a_task_binding_does_not_leak_to_its_parent(self) -> None:
        """A task that binds its own unit changes nothing the task that made it sees."""

        async def child() -> object:
            stagedroll.bind("child")  # never reset: the task's context ends with it
            return stagedroll.current_unit()

        async def main() -> tuple[object, object]:
            with stagedroll.bind("parent"):
                seen = await asyncio.create_task(child())
                return seen, stagedroll.current_unit()

        assert asyncio.run(main()) == ("child", "parent")

    def test_concurrent_tasks_see_each_their_own(self) -> None:
        """Tasks interleaving at an await each keep their own unit."""

        async def request(unit: str) -> object:
            with stagedroll.bind(unit):
                await asyncio.sleep(0)
                return stagedroll.current_unit()

        async def main() -> list[object]:
            return list(await asyncio.gather(*(request(f"u{i}") for i in range(5))))

        assert asyncio.run(main()) == [f"u{i}" for i in range(5)]

    def test_reset_from_another_context_clears_it_there_only(self) -> None:
        """A reset where the binding was not made clears the unit there, not where it was."""
        bound = stagedroll.bind("u1")
        try:
            context = contextvars.copy_context()
            context.run(bound.reset)
            assert context.run(stagedroll.current_unit) is None
            assert stagedroll.current_unit() == "u1"
        finally:
            stagedroll.bind(None)  # the binding's own reset may be spent (next test)

    def test_the_binding_context_still_unbinds_after_a_foreign_reset(self) -> None:
        """After a reset from another context, the block's end still unbinds where it bound."""
        try:
            with stagedroll.bind("u1") as bound:
                contextvars.copy_context().run(bound.reset)
            assert stagedroll.current_unit() is None
        finally:
            stagedroll.bind(None)


class TestGuards:
    def test_the_two_units_straddle_half(self, rollouts: Rollouts) -> None:
        """The units the tests use are in and out of the rollout at 50 %."""
        assert rollouts.decide("new-pricing", IN).enabled
        assert not rollouts.decide("new-pricing", OUT).enabled

    def test_a_guard_reads_the_bound_unit(self, rollouts: Rollouts) -> None:
        """``unit=stagedroll.current_unit`` routes and counts each call by the bound unit."""
        price = guarded_price(rollouts)
        with RecordingSink(rollouts) as sink:
            with stagedroll.bind(IN):
                assert price() == "new"
            with stagedroll.bind(OUT):
                assert price() == "old"
        assert sink.units("new-pricing", enabled=True) == {IN}
        assert sink.units("new-pricing", enabled=False) == {OUT}

    def test_no_unit_bound_takes_the_no_unit_path(self, rollouts: Rollouts) -> None:
        """With nothing bound, ``current_unit`` gives None: the old path, reason NO_UNIT."""
        assert rollouts.decide("new-pricing", stagedroll.current_unit()).reason is Reason.NO_UNIT
        price = guarded_price(rollouts)
        assert price() == "old"

    def test_an_explicit_unit_wins(self, rollouts: Rollouts) -> None:
        """A guard given its own unit callable reads it, not the bound unit."""

        def old_price(user: str) -> str:
            return "old"

        @rollouts.guard("new-pricing", fallback=old_price, unit=lambda user: user)
        def price(user: str) -> str:
            return "new"

        with stagedroll.bind(IN):
            assert price(OUT) == "old"

    def test_the_attributes_reach_targeting(self) -> None:
        """``attributes=stagedroll.current_attributes`` gives segments the bound attributes."""
        policy = {
            "segments": {"pro": {"rules": [{"attribute": "plan", "op": "eq", "value": "pro"}]}},
            "rollouts": {
                "new-pricing": {"stages": [{"name": "pro", "percent": 0, "segments": ["pro"]}]}
            },
        }
        rollouts = Rollouts(policy)

        @rollouts.guard(
            "new-pricing",
            fallback=old,
            unit=stagedroll.current_unit,
            attributes=stagedroll.current_attributes,
        )
        def price() -> str:
            return "new"

        with stagedroll.bind(OUT, {"plan": "pro"}):
            assert price() == "new"
        with stagedroll.bind(OUT, {"plan": "free"}):
            assert price() == "old"
