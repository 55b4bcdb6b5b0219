"""Tests of guards, ``track`` and ``report``: routing, fallbacks and the outcomes they record."""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import pytest
import structlog.testing

from stagedroll import (
    Action,
    ArmStats,
    Decision,
    MemoryStore,
    Reason,
    Rollouts,
    RolloutState,
    Status,
    Transition,
    UnknownRolloutError,
)

POLICY: dict[str, Any] = {
    "segments": {
        "staff": {"rules": [{"attribute": "email", "op": "suffix", "value": "@example.com"}]},
    },
    "rollouts": {
        # Stage 0 sends nobody to the new path, stage 1 everybody.
        "checkout": {
            "stages": [{"name": "dark", "percent": 0}, {"name": "full", "percent": 100}],
        },
        # Half of the units: tests pick theirs with ``decide``.
        "search": {"stages": [{"name": "half", "percent": 50}]},
        # Nobody by bucket; units reach the new path only through targeting.
        "billing": {
            "targeting": {"allow": ["alice"], "deny": ["mallory"]},
            "stages": [
                {"name": "staff", "percent": 0, "segments": ["staff"]},
                {"name": "full", "percent": 100},
            ],
        },
    },
}


@pytest.fixture(name="rollouts")
def _rollouts() -> Rollouts:
    """Rollouts of :data:`POLICY` over a fresh memory store, every rollout at its first stage."""
    return Rollouts(POLICY, store=MemoryStore())


@pytest.fixture(name="full")
def _full(rollouts: Rollouts) -> Rollouts:
    """The same rollouts with ``checkout`` advanced to its 100 % stage."""
    rollouts.advance("checkout")
    return rollouts


def _units(rollouts: Rollouts, name: str, *, enabled: bool, count: int) -> list[str]:
    """The first ``count`` units whose decision under rollout ``name`` is ``enabled``."""
    found: list[str] = []
    i = 0
    while len(found) < count:
        unit = f"user-{i}"
        if rollouts.decide(name, unit).enabled is enabled:
            found.append(unit)
        i += 1
    return found


def _frames(tb: TracebackType | None) -> list[str]:
    """The names of the functions a traceback passes through, outermost first."""
    names: list[str] = []
    while tb is not None:
        names.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return names


class _Boom(Exception):
    """An error raised by the functions under guard."""


class TestRouting:
    def test_control_runs_the_fallback(self, rollouts: Rollouts) -> None:
        """At 0 % the fallback answers and the new function is not called."""
        ran: list[str] = []

        def old(user: str) -> str:
            ran.append("old")
            return f"old:{user}"

        @rollouts.guard("checkout", fallback=old, unit=lambda user: user)
        def new(user: str) -> str:
            ran.append("new")
            return f"new:{user}"

        assert new("u1") == "old:u1"
        assert ran == ["old"]

    def test_treatment_runs_the_new_function(self, full: Rollouts) -> None:
        """At 100 % the new function answers and the fallback is not called."""
        ran: list[str] = []

        def old(user: str) -> str:
            ran.append("old")
            return f"old:{user}"

        @full.guard("checkout", fallback=old, unit=lambda user: user)
        def new(user: str) -> str:
            ran.append("new")
            return f"new:{user}"

        assert new("u1") == "new:u1"
        assert ran == ["new"]

    def test_each_unit_takes_its_decided_path(self, rollouts: Rollouts) -> None:
        """At 50 % each unit runs the path that ``decide`` gives it."""

        def old(user: str) -> str:
            return "old"

        @rollouts.guard("search", fallback=old, unit=lambda user: user)
        def new(user: str) -> str:
            return "new"

        on = _units(rollouts, "search", enabled=True, count=5)
        off = _units(rollouts, "search", enabled=False, count=5)
        assert [new(u) for u in on] == ["new"] * 5
        assert [new(u) for u in off] == ["old"] * 5
        status = rollouts.status("search")
        assert (status.treatment.calls, status.control.calls) == (5, 5)

    def test_arguments_reach_both_paths(self, rollouts: Rollouts) -> None:
        """Positional and keyword arguments are passed through to either function."""

        def old(user: str, amount: int, *, currency: str = "EUR") -> str:
            return f"old {user} {amount} {currency}"

        @rollouts.guard("search", fallback=old, unit=lambda user, amount, *, currency="EUR": user)
        def new(user: str, amount: int, *, currency: str = "EUR") -> str:
            return f"new {user} {amount} {currency}"

        [on] = _units(rollouts, "search", enabled=True, count=1)
        [off] = _units(rollouts, "search", enabled=False, count=1)
        assert new(on, 3, currency="USD") == f"new {on} 3 USD"
        assert new(off, amount=4) == f"old {off} 4 EUR"

    def test_the_unit_extractor_sees_the_call_arguments(self, rollouts: Rollouts) -> None:
        """The unit is taken from the arguments as the extractor says, here a keyword argument."""

        def old(order: int, *, user: str) -> str:
            return "old"

        @rollouts.guard("search", fallback=old, unit=lambda order, *, user: user)
        def new(order: int, *, user: str) -> str:
            return "new"

        [on] = _units(rollouts, "search", enabled=True, count=1)
        [off] = _units(rollouts, "search", enabled=False, count=1)
        assert new(1, user=on) == "new"
        assert new(1, user=off) == "old"

    def test_integer_units_are_bucketed(self, rollouts: Rollouts) -> None:
        """An ``int`` unit is routed like its decision says."""

        def old(user_id: int) -> str:
            return "old"

        @rollouts.guard("search", fallback=old, unit=lambda user_id: user_id)
        def new(user_id: int) -> str:
            return "new"

        for user_id in range(20):
            expected = "new" if rollouts.decide("search", user_id).enabled else "old"
            assert new(user_id) == expected

    def test_transitions_after_decoration_apply(self, rollouts: Rollouts) -> None:
        """A guard follows the rollout's state at call time, not at decoration time."""

        def old() -> str:
            return "old"

        @rollouts.guard("checkout", fallback=old, unit=lambda: "u1")
        def new() -> str:
            return "new"

        assert new() == "old"
        rollouts.advance("checkout")
        assert new() == "new"
        rollouts.kill("checkout")
        assert new() == "old"
        rollouts.complete("checkout")
        assert new() == "new"

    def test_killed_rollout_serves_the_fallback(self, full: Rollouts) -> None:
        """After a kill, the fallback answers even at 100 %."""

        def old(user: str) -> str:
            return "old"

        @full.guard("checkout", fallback=old, unit=lambda user: user)
        def new(user: str) -> str:
            return "new"

        full.kill("checkout")
        assert [new(f"u{i}") for i in range(10)] == ["old"] * 10

    def test_no_unit_serves_the_fallback(self, full: Rollouts) -> None:
        """An extractor returning ``None`` (no unit) gets the fallback, as ``decide`` says."""

        def old(user: str | None) -> str:
            return "old"

        @full.guard("checkout", fallback=old, unit=lambda user: user)
        def new(user: str | None) -> str:
            return "new"

        assert new(None) == "old"
        assert full.failures.count() == 0
        assert full.status("checkout").targeted.calls == 1


class TestPerRequest:
    def test_nothing_goes_to_treatment_at_zero_percent(self, rollouts: Rollouts) -> None:
        """With ``unit=None`` at 0 %, every call takes the fallback, recorded in control."""

        def old() -> str:
            return "old"

        @rollouts.guard("checkout", fallback=old, unit=None)
        def new() -> str:
            return "new"

        assert {new() for _ in range(200)} == {"old"}
        status = rollouts.status("checkout")
        assert (status.control.calls, status.treatment.calls) == (200, 0)

    def test_everything_goes_to_treatment_at_a_full_stage(self, full: Rollouts) -> None:
        """With ``unit=None`` at a 100 % stage, every call runs the new function, in treatment."""

        def old() -> str:
            return "old"

        @full.guard("checkout", fallback=old, unit=None)
        def new() -> str:
            return "new"

        assert {new() for _ in range(200)} == {"new"}
        status = full.status("checkout")
        assert (status.control.calls, status.treatment.calls) == (0, 200)

    def test_each_call_is_bucketed_afresh(self, rollouts: Rollouts) -> None:
        """At 50 % per-request calls split between both paths, and every call is counted."""

        def old() -> str:
            return "old"

        @rollouts.guard("search", fallback=old, unit=None)
        def new() -> str:
            return "new"

        answers = [new() for _ in range(400)]
        status = rollouts.status("search")
        assert status.treatment.calls == answers.count("new")
        assert status.control.calls == answers.count("old")
        # The chance that 400 fair draws all land on one side is 2**-399.
        assert 0 < answers.count("new") < 400

    def test_complete_and_killed_are_targeted(self, rollouts: Rollouts) -> None:
        """Per-request calls of a complete or killed rollout follow its status, not a bucket."""

        def old() -> str:
            return "old"

        @rollouts.guard("search", fallback=old, unit=None)
        def new() -> str:
            return "new"

        rollouts.complete("search")
        assert {new() for _ in range(20)} == {"new"}
        rollouts.kill("search")
        assert {new() for _ in range(20)} == {"old"}
        status = rollouts.status("search")
        assert status.targeted.calls == 40
        assert (status.control.calls, status.treatment.calls) == (0, 0)


class TestNewFunctionFails:
    def test_fallback_answers_and_the_error_is_recorded(self, full: Rollouts) -> None:
        """A failing new function is answered by the fallback, counted as error and fallback."""
        ran: list[str] = []

        def old(user: str) -> str:
            ran.append("old")
            return "old"

        @full.guard("checkout", fallback=old, unit=lambda user: user)
        def new(user: str) -> str:
            ran.append("new")
            raise _Boom(user)

        assert new("u1") == "old"
        assert ran == ["new", "old"]
        treatment = full.status("checkout").treatment
        assert (treatment.calls, treatment.errors, treatment.fallbacks) == (1, 1, 1)
        assert treatment.error_rate == 1.0

    def test_reraise_propagates_the_original_exception(self, full: Rollouts) -> None:
        """With ``reraise=True`` the new function's exception propagates and no fallback runs."""
        ran: list[str] = []
        boom = _Boom("declined")

        def old(user: str) -> str:
            ran.append("old")
            return "old"

        @full.guard("checkout", fallback=old, unit=lambda user: user, reraise=True)
        def new(user: str) -> str:
            return _charge_that_fails(boom)

        with pytest.raises(_Boom) as excinfo:
            new("u1")
        assert excinfo.value is boom
        assert ran == []
        assert _frames(excinfo.value.__traceback__)[-2:] == ["new", "_charge_that_fails"]
        treatment = full.status("checkout").treatment
        assert (treatment.calls, treatment.errors, treatment.fallbacks) == (1, 1, 0)

    def test_successes_and_failures_add_up(self, full: Rollouts) -> None:
        """Mixed outcomes give the exact error count and rate."""

        def old(n: int) -> int:
            return -n

        @full.guard("checkout", fallback=old, unit=lambda n: f"u{n}")
        def new(n: int) -> int:
            if n % 4 == 0:
                raise ValueError(n)
            return n

        assert [new(n) for n in range(8)] == [0, 1, 2, 3, -4, 5, 6, 7]
        treatment = full.status("checkout").treatment
        assert (treatment.calls, treatment.errors, treatment.fallbacks) == (8, 2, 2)
        assert treatment.error_rate == 0.25

    def test_base_exception_propagates_unrecorded(self, full: Rollouts) -> None:
        """A ``KeyboardInterrupt`` from the new function propagates; no error, no fallback."""
        ran: list[str] = []

        def old(user: str) -> str:
            ran.append("old")
            return "old"

        @full.guard("checkout", fallback=old, unit=lambda user: user)
        def new(user: str) -> str:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            new("u1")
        assert ran == []
        treatment = full.status("checkout").treatment
        assert (treatment.errors, treatment.fallbacks) == (0, 0)


def _charge_that_fails(exc: Exception) -> str:
    """Raise ``exc``: a frame of the new path that the traceback must keep."""
    raise exc


class TestFallbackFails:
    def test_control_exception_propagates_unchanged(self, rollouts: Rollouts) -> None:
        """The fallback's exception in control propagates as is, and counts as a control error."""
        boom = _Boom("legacy down")

        def old(user: str) -> str:
            raise boom

        @rollouts.guard("checkout", fallback=old, unit=lambda user: user)
        def new(user: str) -> str:
            return "new"

        with pytest.raises(_Boom) as excinfo:
            new("u1")
        assert excinfo.value is boom
        assert type(excinfo.value) is _Boom
        control = rollouts.status("checkout").control
        assert (control.calls, control.errors, control.fallbacks) == (1, 1, 0)

    def test_reraise_does_not_change_control(self, rollouts: Rollouts) -> None:
        """With ``reraise=True`` the fallback's exception in control still propagates."""
        boom = _Boom("legacy down")

        def old(user: str) -> str:
            raise boom

        @rollouts.guard("checkout", fallback=old, unit=lambda user: user, reraise=True)
        def new(user: str) -> str:
            return "new"

        with pytest.raises(_Boom) as excinfo:
            new("u1")
        assert excinfo.value is boom
        assert rollouts.status("checkout").control.errors == 1


class TestAsync:
    def test_objects_with_an_async_call_are_async(self, full: Rollouts) -> None:
        """A callable object whose __call__ is async is guarded as async, fallback and all."""

        class Old:
            async def __call__(self, user: str) -> str:
                return "old"

        class New:
            async def __call__(self, user: str) -> str:
                raise ConnectionError("new path down")

        guarded = full.guard("checkout", fallback=Old(), unit=lambda user: user)(New())
        assert asyncio.run(guarded("u1")) == "old"
        assert full.status("checkout").treatment.fallbacks == 1

    def test_both_arms_are_awaited(self, rollouts: Rollouts) -> None:
        """An async guard awaits the new function in treatment and the fallback in control."""

        async def old(user: str) -> str:
            await asyncio.sleep(0)
            return "old"

        @rollouts.guard("search", fallback=old, unit=lambda user: user)
        async def new(user: str) -> str:
            await asyncio.sleep(0)
            return "new"

        on = _units(rollouts, "search", enabled=True, count=3)
        off = _units(rollouts, "search", enabled=False, count=3)

        async def scenario() -> list[str]:
            return [await new(u) for u in on + off]

        assert asyncio.run(scenario()) == ["new"] * 3 + ["old"] * 3
        status = rollouts.status("search")
        assert (status.treatment.calls, status.control.calls) == (3, 3)
        assert status.treatment.mean_latency_s is not None
        assert status.control.mean_latency_s is not None

    def test_failure_falls_back(self, full: Rollouts) -> None:
        """A failing async new function is answered by the awaited fallback and recorded."""

        async def old(user: str) -> str:
            return "old"

        @full.guard("checkout", fallback=old, unit=lambda user: user)
        async def new(user: str) -> str:
            raise _Boom(user)

        assert asyncio.run(new("u1")) == "old"
        treatment = full.status("checkout").treatment
        assert (treatment.calls, treatment.errors, treatment.fallbacks) == (1, 1, 1)

    def test_reraise_keeps_type_and_traceback(self, full: Rollouts) -> None:
        """With ``reraise=True`` an async failure propagates with the new path's frames."""
        boom = _Boom("declined")
        ran: list[str] = []

        async def old(user: str) -> str:
            ran.append("old")
            return "old"

        @full.guard("checkout", fallback=old, unit=lambda user: user, reraise=True)
        async def new(user: str) -> str:
            return _charge_that_fails(boom)

        with pytest.raises(_Boom) as excinfo:
            asyncio.run(new("u1"))
        assert excinfo.value is boom
        assert ran == []
        assert _frames(excinfo.value.__traceback__)[-2:] == ["new", "_charge_that_fails"]
        treatment = full.status("checkout").treatment
        assert (treatment.errors, treatment.fallbacks) == (1, 0)

    def test_control_exception_propagates_unchanged(self, rollouts: Rollouts) -> None:
        """The async fallback's exception in control propagates as is and counts as an error."""
        boom = _Boom("legacy down")

        async def old(user: str) -> str:
            raise boom

        @rollouts.guard("checkout", fallback=old, unit=lambda user: user)
        async def new(user: str) -> str:
            return "new"

        with pytest.raises(_Boom) as excinfo:
            asyncio.run(new("u1"))
        assert excinfo.value is boom
        assert rollouts.status("checkout").control.errors == 1

    def test_cancellation_propagates_unrecorded(self, full: Rollouts) -> None:
        """Cancelling a guarded call propagates ``CancelledError``; no error, no fallback."""
        ran: list[str] = []

        async def old(user: str) -> str:
            ran.append("old")
            return "old"

        async def scenario() -> None:
            started = asyncio.Event()

            @full.guard("checkout", fallback=old, unit=lambda user: user)
            async def new(user: str) -> str:
                started.set()
                await asyncio.Event().wait()
                return "new"

            task = asyncio.create_task(new("u1"))
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(scenario())
        assert ran == []
        treatment = full.status("checkout").treatment
        assert (treatment.errors, treatment.fallbacks) == (0, 0)

    def test_routing_failure_awaits_the_fallback(self, full: Rollouts) -> None:
        """An async guard whose unit extractor fails awaits the fallback."""

        async def old(user: object) -> str:
            return "old"

        @full.guard("checkout", fallback=old, unit=lambda user: user)
        async def new(user: object) -> str:
            return "new"

        assert asyncio.run(new(1.5)) == "old"
        assert full.failures.count("guard.routing_failed") == 1

    def test_async_new_with_sync_fallback_is_refused(self, rollouts: Rollouts) -> None:
        """Decorating an async function with a sync fallback raises ``TypeError`` at once."""

        def old(user: str) -> str:
            return "old"

        fallback: Callable[..., Any] = old
        decorate = rollouts.guard("checkout", fallback=fallback, unit=None)

        async def new(user: str) -> str:
            return "new"

        with pytest.raises(TypeError, match="both be async or both be sync"):
            decorate(new)

    def test_sync_new_with_async_fallback_is_refused(self, rollouts: Rollouts) -> None:
        """Decorating a sync function with an async fallback raises ``TypeError`` at once."""

        async def old(user: str) -> str:
            return "old"

        fallback: Callable[..., Any] = old
        decorate = rollouts.guard("checkout", fallback=fallback, unit=None)

        def new(user: str) -> str:
            return "new"

        with pytest.raises(TypeError, match="both be async or both be sync"):
            decorate(new)


class TestWrapping:
    def test_sync_wrapper_keeps_metadata(self, rollouts: Rollouts) -> None:
        """A sync guard keeps the new function's name, docstring and ``__wrapped__``."""

        def old(user: str) -> str:
            return "old"

        def checkout(user: str) -> str:
            """Check out with the new flow."""
            return "new"

        wrapped = rollouts.guard("checkout", fallback=old, unit=lambda user: user)(checkout)
        assert wrapped.__name__ == "checkout"
        assert wrapped.__doc__ == "Check out with the new flow."
        assert getattr(wrapped, "__wrapped__", None) is checkout
        assert not inspect.iscoroutinefunction(wrapped)
        assert inspect.signature(wrapped) == inspect.signature(checkout)

    def test_async_wrapper_keeps_metadata(self, rollouts: Rollouts) -> None:
        """An async guard keeps the metadata and is itself a coroutine function."""

        async def old(user: str) -> str:
            return "old"

        async def checkout(user: str) -> str:
            """Check out with the new flow."""
            return "new"

        wrapped = rollouts.guard("checkout", fallback=old, unit=lambda user: user)(checkout)
        assert wrapped.__name__ == "checkout"
        assert wrapped.__doc__ == "Check out with the new flow."
        assert getattr(wrapped, "__wrapped__", None) is checkout
        assert inspect.iscoroutinefunction(wrapped)

    def test_guarded_methods_receive_self(self, rollouts: Rollouts) -> None:
        """A guarded method binds like a plain one; the extractor receives ``self`` too."""

        class Service:
            def __init__(self, prefix: str) -> None:
                self.prefix = prefix

            def old(self, user: str) -> str:
                return f"{self.prefix} old"

            @rollouts.guard("search", fallback=old, unit=lambda self, user: user)
            def new(self, user: str) -> str:
                return f"{self.prefix} new"

        service = Service("svc")
        [on] = _units(rollouts, "search", enabled=True, count=1)
        [off] = _units(rollouts, "search", enabled=False, count=1)
        assert service.new(on) == "svc new"
        assert service.new(off) == "svc old"

    def test_functools_partial_fallback(self, rollouts: Rollouts) -> None:
        """Any callable serves as fallback, e.g. a ``functools.partial``."""

        def legacy(user: str, flavour: str) -> str:
            return f"{flavour}:{user}"

        def unit(user: str) -> str:
            return user

        @rollouts.guard("checkout", fallback=functools.partial(legacy, flavour="old"), unit=unit)
        def new(user: str) -> str:
            return f"new:{user}"

        assert new("u1") == "old:u1"


class TestDecorationErrors:
    def test_unknown_rollout_fails_at_decoration(self, rollouts: Rollouts) -> None:
        """A misspelt rollout name raises ``UnknownRolloutError`` before any call."""

        def old() -> str:
            return "old"

        with pytest.raises(UnknownRolloutError, match="checkuot") as excinfo:
            rollouts.guard("checkuot", fallback=old, unit=None)
        assert excinfo.value.name == "checkuot"
        assert isinstance(excinfo.value, LookupError)

    def test_fallback_must_be_callable(self, rollouts: Rollouts) -> None:
        """A fallback that is not callable raises ``TypeError``."""
        not_callable: Any = "old"
        with pytest.raises(TypeError, match="fallback must be callable"):
            rollouts.guard("checkout", fallback=not_callable, unit=None)

    def test_unit_must_be_callable_or_none(self, rollouts: Rollouts) -> None:
        """A unit given as a value rather than an extractor raises ``TypeError``."""

        def old(user: str) -> str:
            return "old"

        not_callable: Any = "user"
        with pytest.raises(TypeError, match="unit must be a callable"):
            rollouts.guard("checkout", fallback=old, unit=not_callable)


class TestRoutingFailures:
    @pytest.mark.parametrize(
        "bad_unit",
        [1.5, object(), True, b"user", ("a", "b")],
        ids=["float", "object", "bool", "bytes", "tuple"],
    )
    def test_bad_unit_type_serves_the_fallback(self, full: Rollouts, bad_unit: object) -> None:
        """A unit of a type that cannot be bucketed sends the call to the fallback, counted."""
        ran: list[str] = []

        def old(user: object) -> str:
            ran.append("old")
            return "old"

        @full.guard("checkout", fallback=old, unit=lambda user: user)
        def new(user: object) -> str:
            ran.append("new")
            return "new"

        assert new(bad_unit) == "old"
        assert ran == ["old"]
        assert full.failures.count("guard.routing_failed") == 1
        status = full.status("checkout")
        assert status.internal_errors == 1
        assert (status.control.calls, status.treatment.calls) == (0, 0)
        assert status.targeted.calls == 1

    def test_raising_extractor_serves_the_fallback(self, full: Rollouts) -> None:
        """A unit extractor that raises sends the call to the fallback without raising."""

        def old(user: dict[str, str]) -> str:
            return "old"

        @full.guard("checkout", fallback=old, unit=lambda user: user["id"])
        def new(user: dict[str, str]) -> str:
            return "new"

        assert new({"name": "no id"}) == "old"
        assert new({"id": "u1"}) == "new"
        assert full.failures.count("guard.routing_failed") == 1

    def test_a_failing_extractor_runs_once_per_call(self, full: Rollouts) -> None:
        """The unit extractor is called once per call, also when it fails."""
        calls: list[str] = []

        def unit(user: str) -> str:
            calls.append(user)
            raise KeyError("id")

        def old(user: str) -> str:
            return "old"

        @full.guard("checkout", fallback=old, unit=unit)
        def new(user: str) -> str:
            return "new"

        assert new("u1") == "old"
        assert calls == ["u1"]

    def test_attributes_without_a_unit_are_refused(self, full: Rollouts) -> None:
        """Per-request bucketing applies no targeting, so attributes with unit=None are refused."""
        with pytest.raises(TypeError, match="attributes need a unit"):
            full.guard("checkout", fallback=str, unit=None, attributes=dict)

    def test_raising_attributes_extractor_serves_the_fallback(self, full: Rollouts) -> None:
        """An attributes extractor that raises sends the call to the fallback, counted."""

        def old(user: str) -> str:
            return "old"

        def attributes(user: str) -> dict[str, object]:
            raise RuntimeError("profile service down")

        @full.guard("checkout", fallback=old, unit=lambda user: user, attributes=attributes)
        def new(user: str) -> str:
            return "new"

        assert new("u1") == "old"
        assert full.failures.count("guard.routing_failed") == 1

    def test_bad_attributes_type_serves_the_fallback(self, rollouts: Rollouts) -> None:
        """Attributes that are not a mapping, where segments need them, give the fallback."""
        rollouts.advance("billing")

        def old(user: str) -> str:
            return "old"

        def attributes(user: str) -> Any:
            return ["email", user]

        @rollouts.guard("billing", fallback=old, unit=lambda user: user, attributes=attributes)
        def new(user: str) -> str:
            return "new"

        assert new("u1") == "old"
        assert rollouts.failures.count("guard.routing_failed") == 1

    def test_many_failures_log_once(self, full: Rollouts) -> None:
        """Repeated routing failures are all counted but logged once (rate limited)."""

        def old(user: object) -> str:
            return "old"

        @full.guard("checkout", fallback=old, unit=lambda user: user)
        def new(user: object) -> str:
            return "new"

        with structlog.testing.capture_logs() as logs:
            answers = [new(float(i)) for i in range(50)]
        assert answers == ["old"] * 50
        assert full.failures.count("guard.routing_failed") == 50
        entries = [e for e in logs if e["event"] == "guard.routing_failed"]
        assert len(entries) == 1
        assert entries[0]["log_level"] == "error"
        assert entries[0]["rollout"] == "checkout"

    def test_failures_do_not_reach_the_fallback_errors(self, full: Rollouts) -> None:
        """A routing failure is an internal failure, not an error of either path."""

        def old(user: object) -> str:
            return "old"

        @full.guard("checkout", fallback=old, unit=lambda user: user)
        def new(user: object) -> str:
            return "new"

        new(object())
        status = full.status("checkout")
        assert status.targeted.errors == 0
        assert status.treatment == ArmStats()


class TestTargeting:
    def test_allowed_unit_is_targeted(self, rollouts: Rollouts) -> None:
        """An allowed unit runs the new function at 0 % and is counted in ``targeted``."""

        def old(user: str) -> str:
            return "old"

        @rollouts.guard("billing", fallback=old, unit=lambda user: user)
        def new(user: str) -> str:
            return "new"

        assert rollouts.decide("billing", "alice").reason is Reason.ALLOWED
        assert new("alice") == "new"
        status = rollouts.status("billing")
        assert status.targeted.calls == 1
        assert (status.control.calls, status.treatment.calls) == (0, 0)

    def test_denied_unit_is_targeted(self, rollouts: Rollouts) -> None:
        """A denied unit runs the fallback at 100 % and is counted in ``targeted``."""
        rollouts.advance("billing")

        def old(user: str) -> str:
            return "old"

        @rollouts.guard("billing", fallback=old, unit=lambda user: user)
        def new(user: str) -> str:
            return "new"

        assert rollouts.decide("billing", "mallory").reason is Reason.DENIED
        assert new("mallory") == "old"
        assert new("bob") == "new"
        status = rollouts.status("billing")
        assert status.targeted.calls == 1
        assert (status.control.calls, status.treatment.calls) == (0, 1)

    def test_segment_unit_is_targeted(self, rollouts: Rollouts) -> None:
        """A unit matching a segment of the stage runs the new function, counted as targeted."""

        def old(user: str, email: str) -> str:
            return "old"

        @rollouts.guard(
            "billing",
            fallback=old,
            unit=lambda user, email: user,
            attributes=lambda user, email: {"email": email},
        )
        def new(user: str, email: str) -> str:
            return "new"

        assert new("carol", "carol@example.com") == "new"
        assert new("dave", "dave@elsewhere.org") == "old"
        status = rollouts.status("billing")
        assert status.targeted.calls == 1
        assert status.control.calls == 1
        assert status.treatment.calls == 0

    def test_targeted_failure_falls_back(self, rollouts: Rollouts) -> None:
        """A failing new function of an allowed unit falls back, counted in ``targeted``."""

        def old(user: str) -> str:
            return "old"

        @rollouts.guard("billing", fallback=old, unit=lambda user: user)
        def new(user: str) -> str:
            raise _Boom(user)

        assert new("alice") == "old"
        targeted = rollouts.status("billing").targeted
        assert (targeted.calls, targeted.errors, targeted.fallbacks) == (1, 1, 1)


class TestOutcomesPerStage:
    def test_advance_starts_from_zero(self, rollouts: Rollouts) -> None:
        """After an advance the status counts only the new stage's calls."""

        def old(user: str) -> str:
            return "old"

        @rollouts.guard("checkout", fallback=old, unit=lambda user: user)
        def new(user: str) -> str:
            return "new"

        for i in range(3):
            new(f"u{i}")
        assert rollouts.status("checkout").control.calls == 3
        rollouts.advance("checkout")
        status = rollouts.status("checkout")
        assert status.control == ArmStats()
        assert status.treatment == ArmStats()
        new("u0")
        assert rollouts.status("checkout").treatment.calls == 1

    def test_earlier_stages_stay_readable(self, rollouts: Rollouts) -> None:
        """The counts of a stage left behind are kept on the rollout's outcomes."""

        def old(user: str) -> str:
            return "old"

        @rollouts.guard("checkout", fallback=old, unit=lambda user: user)
        def new(user: str) -> str:
            return "new"

        new("u1")
        rollouts.advance("checkout")
        new("u1")
        new("u2")
        outcomes = rollouts["checkout"].outcomes
        assert outcomes.stats(0)[0].calls == 1
        assert outcomes.stats(1)[1].calls == 2

    def test_a_stage_visited_again_starts_from_zero(self, rollouts: Rollouts) -> None:
        """After a rollback and a new advance, the stage counts only its new traffic."""

        def old(user: str) -> str:
            return "old"

        @rollouts.guard("checkout", fallback=old, unit=lambda user: user)
        def new(user: str) -> str:
            return "new"

        rollouts.advance("checkout")
        for i in range(5):
            new(f"u{i}")
        rollouts.rollback("checkout")
        assert rollouts.status("checkout").control == ArmStats()
        rollouts.advance("checkout")
        assert rollouts.status("checkout").treatment == ArmStats()
        rollouts.freeze("checkout")
        new("u1")
        rollouts.unfreeze("checkout")
        assert rollouts.status("checkout").treatment.calls == 1

    def test_state_from_another_rollouts_moves_the_counts(self) -> None:
        """A transition made through another ``Rollouts`` on the same store switches stages."""
        store = MemoryStore()
        serving = Rollouts(POLICY, store=store)
        operator = Rollouts(POLICY, store=store)

        def old(user: str) -> str:
            return "old"

        @serving.guard("checkout", fallback=old, unit=lambda user: user)
        def new(user: str) -> str:
            return "new"

        assert new("u1") == "old"
        operator.advance("checkout")
        assert new("u1") == "new"
        status = serving.status("checkout")
        assert (status.stage, status.treatment.calls, status.control.calls) == (1, 1, 0)

    def test_counts_of_a_stage_past_the_policy_end(self) -> None:
        """A stored stage past the policy's last one still shows this process's calls."""
        store = MemoryStore()
        state = RolloutState(stage=3, status=Status.RUNNING, since=0.0, version=1)
        entry = Transition("checkout", Action.START, 0, 3, None, Status.RUNNING, 1, 0.0)
        assert store.compare_and_set("checkout", 0, state, entry)
        rollouts = Rollouts(POLICY, store=store)

        def old(user: str) -> str:
            return "old"

        @rollouts.guard("checkout", fallback=old, unit=lambda user: user)
        def new(user: str) -> str:
            return "new"

        assert new("u1") == "new"  # held at the last stage, 100 %
        status = rollouts.status("checkout")
        assert status.stage == 1
        assert status.treatment.calls == 1


class TestTrack:
    def test_block_receives_the_decision(self, rollouts: Rollouts) -> None:
        """The ``with`` block gets the same decision that ``decide`` gives."""
        [on] = _units(rollouts, "search", enabled=True, count=1)
        with rollouts.track("search", on) as decision:
            assert isinstance(decision, Decision)
            assert decision == rollouts.decide("search", on)
            assert decision.enabled
        treatment = rollouts.status("search").treatment
        assert (treatment.calls, treatment.errors) == (1, 0)
        assert treatment.mean_latency_s is not None
        assert treatment.mean_latency_s >= 0

    def test_control_unit_is_recorded_in_control(self, rollouts: Rollouts) -> None:
        """A unit out of the cohort is recorded in control."""
        [off] = _units(rollouts, "search", enabled=False, count=1)
        with rollouts.track("search", off) as decision:
            assert not decision.enabled
        status = rollouts.status("search")
        assert (status.control.calls, status.treatment.calls) == (1, 0)
        assert status.control.mean_latency_s is not None

    def test_exception_is_recorded_and_propagates(self, full: Rollouts) -> None:
        """An exception leaving the block counts as an error and propagates unchanged."""
        boom = _Boom("failed")
        with pytest.raises(_Boom) as excinfo, full.track("checkout", "u1"):
            raise boom
        assert excinfo.value is boom
        treatment = full.status("checkout").treatment
        assert (treatment.calls, treatment.errors) == (1, 1)
        assert treatment.mean_latency_s is not None

    def test_base_exception_is_not_recorded(self, full: Rollouts) -> None:
        """A ``KeyboardInterrupt`` leaving the block propagates and is not counted."""
        with pytest.raises(KeyboardInterrupt), full.track("checkout", "u1"):
            raise KeyboardInterrupt
        assert full.status("checkout").treatment == ArmStats()

    def test_async_with(self, full: Rollouts) -> None:
        """``async with`` yields the decision and records the outcome."""

        async def scenario() -> Decision:
            async with full.track("checkout", "u1") as decision:
                await asyncio.sleep(0)
            return decision

        decision = asyncio.run(scenario())
        assert decision.enabled
        assert decision.reason is Reason.IN_COHORT
        treatment = full.status("checkout").treatment
        assert (treatment.calls, treatment.errors) == (1, 0)
        assert treatment.mean_latency_s is not None

    def test_async_with_exception(self, full: Rollouts) -> None:
        """An exception leaving an ``async with`` block counts as an error and propagates."""
        boom = _Boom("failed")

        async def scenario() -> None:
            async with full.track("checkout", "u1"):
                raise boom

        with pytest.raises(_Boom) as excinfo:
            asyncio.run(scenario())
        assert excinfo.value is boom
        assert full.status("checkout").treatment.errors == 1

    def test_async_cancellation_is_not_recorded(self, full: Rollouts) -> None:
        """A cancelled ``async with`` block propagates ``CancelledError`` and is not counted."""

        async def scenario() -> None:
            started = asyncio.Event()

            async def work() -> None:
                async with full.track("checkout", "u1"):
                    started.set()
                    await asyncio.Event().wait()

            task = asyncio.create_task(work())
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(scenario())
        assert full.status("checkout").treatment == ArmStats()

    def test_unknown_rollout_raises(self, rollouts: Rollouts) -> None:
        """``track`` with an unknown name raises ``UnknownRolloutError``."""
        with pytest.raises(UnknownRolloutError, match="nope"):
            rollouts.track("nope", "u1")

    def test_targeted_unit_is_recorded_in_targeted(self, rollouts: Rollouts) -> None:
        """A tracked allowed unit is counted in ``targeted``."""
        with rollouts.track("billing", "alice") as decision:
            assert decision.reason is Reason.ALLOWED
        status = rollouts.status("billing")
        assert status.targeted.calls == 1
        assert (status.control.calls, status.treatment.calls) == (0, 0)

    def test_segment_attributes_are_used(self, rollouts: Rollouts) -> None:
        """``track`` passes the attributes to the decision, so segments apply."""
        with rollouts.track("billing", "carol", {"email": "carol@example.com"}) as decision:
            assert decision.reason is Reason.SEGMENT
        assert rollouts.status("billing").targeted.calls == 1


class HostileFloat(float):
    """A latency whose comparisons raise."""

    def __ge__(self, other: object) -> bool:
        raise RuntimeError("no comparing me")


class TestReport:
    @pytest.mark.parametrize(
        "latency",
        [
            "0.12",
            float("nan"),
            -1.0,
            float("inf"),
            True,
            2**2000,
            -(2**2000),
            10**5000,
            object(),
            HostileFloat(0.1),
        ],
        ids=[
            "str",
            "nan",
            "negative",
            "inf",
            "bool",
            "2**2000",
            "-2**2000",
            "10**5000",
            "object",
            "hostile float",
        ],
    )
    def test_a_bad_latency_is_dropped_not_kept(self, full: Rollouts, latency: object) -> None:
        """A latency that is no finite, non-negative number is dropped and counted."""
        full.report("checkout", "u1", error=False, latency_s=latency)  # type: ignore[arg-type]
        assert full.failures.count("outcome.bad_latency") == 1

        def old(user: str) -> str:
            return "old"

        @full.guard("checkout", fallback=old, unit=lambda user: user)
        def new(user: str) -> str:
            return "new"

        for i in range(2100):  # past two batch folds of the lock-free path
            assert new(f"u{i}") == "new"
        stats = full.status("checkout").treatment
        assert stats.calls == 2101
        assert stats.mean_latency_s is not None
        assert stats.mean_latency_s >= 0

    def test_returns_the_decision_and_records(self, rollouts: Rollouts) -> None:
        """``report`` returns the unit's decision and counts the outcome in its arm."""
        [on] = _units(rollouts, "search", enabled=True, count=1)
        [off] = _units(rollouts, "search", enabled=False, count=1)
        assert rollouts.report("search", on, error=True, latency_s=0.5) == rollouts.decide(
            "search", on
        )
        assert not rollouts.report("search", off, error=False, latency_s=0.25).enabled
        status = rollouts.status("search")
        assert status.treatment == ArmStats(calls=1, errors=1, mean_latency_s=0.5, units=1)
        assert status.control == ArmStats(calls=1, errors=0, mean_latency_s=0.25, units=1)

    def test_without_latency(self, full: Rollouts) -> None:
        """An outcome reported without latency counts the call but not the mean latency."""
        full.report("checkout", "u1", error=False)
        full.report("checkout", "u2", error=False, latency_s=1.0)
        treatment = full.status("checkout").treatment
        assert treatment.calls == 2
        assert treatment.mean_latency_s == 1.0

    def test_unknown_rollout(self, rollouts: Rollouts) -> None:
        """An unknown name records nothing and returns an ``UNKNOWN_ROLLOUT`` decision."""
        decision = rollouts.report("nope", "u1", error=True)
        assert decision == Decision("nope", False, Reason.UNKNOWN_ROLLOUT)
        assert rollouts.failures.count() == 0

    def test_targeted_units(self, rollouts: Rollouts) -> None:
        """Allowed, denied and segment units are reported in ``targeted``."""
        rollouts.advance("billing")
        assert rollouts.report("billing", "alice", error=False).reason is Reason.ALLOWED
        assert rollouts.report("billing", "mallory", error=True).reason is Reason.DENIED
        status = rollouts.status("billing")
        assert status.targeted == ArmStats(calls=2, errors=1)
        assert status.targeted.error_rate == 0.5
        assert (status.control.calls, status.treatment.calls) == (0, 0)


class TestThreads:
    THREADS = 8
    CALLS = 500

    def _hammer(self, target: Callable[[int, int], object]) -> None:
        """Run ``target(thread, call)`` CALLS times in each of THREADS threads; re-raise errors."""
        errors: list[BaseException] = []
        barrier = threading.Barrier(self.THREADS)

        def work(t: int) -> None:
            try:
                barrier.wait()
                for i in range(self.CALLS):
                    target(t, i)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(self.THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []

    def test_counts_are_exact(self) -> None:
        """Concurrent guarded calls are all counted, errors and fallbacks included.

        Only the new path fails, which the health gate would rightly roll back mid-test (the
        counts would then move to another stage): it is disabled here.
        """
        policy = copy.deepcopy(POLICY)
        policy["rollouts"]["search"]["health"] = {"enabled": False}
        rollouts = Rollouts(policy, store=MemoryStore())

        def old(user: str, fail: bool) -> str:
            return "old"

        @rollouts.guard("search", fallback=old, unit=lambda user, fail: user)
        def new(user: str, fail: bool) -> str:
            if fail:
                raise _Boom(user)
            return "new"

        answers: dict[str, int] = {"new": 0, "old": 0}
        lock = threading.Lock()

        def call(t: int, i: int) -> None:
            answer = new(f"user-{t}-{i}", i % 10 == 0)
            with lock:
                answers[answer] += 1

        self._hammer(call)
        status = rollouts.status("search")
        total = self.THREADS * self.CALLS
        assert status.control.calls + status.treatment.calls == total
        assert status.targeted.calls == 0
        assert status.control.errors == 0
        assert status.treatment.errors == status.treatment.fallbacks
        assert answers["new"] == status.treatment.calls - status.treatment.errors
        assert answers["old"] == status.control.calls + status.treatment.fallbacks

    def test_per_request_counts_are_exact(self, rollouts: Rollouts) -> None:
        """Concurrent per-request calls are all counted."""

        def old() -> str:
            return "old"

        @rollouts.guard("search", fallback=old, unit=None)
        def new() -> str:
            return "new"

        self._hammer(lambda t, i: new())
        status = rollouts.status("search")
        assert status.control.calls + status.treatment.calls == self.THREADS * self.CALLS

    def test_counts_are_exact_across_an_advance(self, rollouts: Rollouts) -> None:
        """Calls made while another thread advances are each counted in exactly one stage."""

        def old(user: str) -> str:
            return "old"

        @rollouts.guard("checkout", fallback=old, unit=lambda user: user)
        def new(user: str) -> str:
            return "new"

        def call(t: int, i: int) -> None:
            if t == 0 and i == self.CALLS // 2:
                rollouts.advance("checkout")
            new(f"user-{t}-{i}")

        self._hammer(call)
        outcomes = rollouts["checkout"].outcomes
        counted = sum(arm.calls for stage in (0, 1) for arm in outcomes.stats(stage))
        assert counted == self.THREADS * self.CALLS

    def test_tracked_counts_are_exact(self, rollouts: Rollouts) -> None:
        """Concurrent ``track`` blocks and ``report`` calls are all counted."""

        def call(t: int, i: int) -> None:
            if i % 2:
                rollouts.report("search", f"user-{t}-{i}", error=False)
            else:
                with rollouts.track("search", f"user-{t}-{i}"):
                    pass

        self._hammer(call)
        status = rollouts.status("search")
        assert status.control.calls + status.treatment.calls == self.THREADS * self.CALLS

    def test_routing_failures_are_counted_exactly(self, full: Rollouts) -> None:
        """Concurrent routing failures are all counted, and all answered by the fallback."""

        def old(user: object) -> str:
            return "old"

        @full.guard("checkout", fallback=old, unit=lambda user: user)
        def new(user: object) -> str:
            return "new"

        def call(t: int, i: int) -> None:
            assert new(float(i)) == "old"

        with structlog.testing.capture_logs() as logs:
            self._hammer(call)
        total = self.THREADS * self.CALLS
        assert full.failures.count("guard.routing_failed") == total
        assert full.status("checkout").targeted.calls == total
        assert len([e for e in logs if e["event"] == "guard.routing_failed"]) == 1


class TestOneFunctionOnBothSides:
    def test_the_new_paths_error_falls_back_even_to_itself(self) -> None:
        """With one function as the new path and the fallback, a new-path error is still
        answered by the fallback (it is the arm that says which path ran, not the function)."""
        rollouts = Rollouts({"rollouts": {"r": {"stages": [{"name": "all", "percent": 100}]}}})
        calls: list[str] = []

        def flaky(unit: str) -> str:
            calls.append(unit)
            if len(calls) == 1:
                raise ValueError("first call fails")
            return "ok"

        guarded = rollouts.guard("r", fallback=flaky, unit=lambda unit: unit)(flaky)
        assert guarded("u1") == "ok"
        assert calls == ["u1", "u1"]
        assert rollouts.status("r").treatment.fallbacks == 1


def _everyone() -> Rollouts:
    return Rollouts({"rollouts": {"r": {"stages": [{"name": "all", "percent": 100}]}}})


class TestCompiledWrapper:
    """The sync wrapper is compiled with the guarded function's own parameters when they are
    plain; every other signature takes ``*args, **kwargs``. Either way, calls behave alike."""

    def test_parameters_named_like_the_wrappers_own_names(self) -> None:
        """Parameters called ``key``, ``arm``, ``len``, ``str``, ``args`` shadow nothing."""
        rollouts: Any = _everyone()  # the calls below are dynamic on purpose

        def new(key: str, arm: int, len: int, str: int, args: int) -> tuple[Any, ...]:
            return ("new", key, arm, len, str, args)

        def old(key: str, arm: int, len: int, str: int, args: int) -> tuple[Any, ...]:
            return ("old", key, arm, len, str, args)

        guarded = rollouts.guard("r", fallback=old, unit=lambda key, *rest: key)(new)
        assert guarded("u1", 1, 2, 3, 4) == ("new", "u1", 1, 2, 3, 4)
        assert guarded(key="u1", arm=1, len=2, str=3, args=4) == ("new", "u1", 1, 2, 3, 4)

    @pytest.mark.parametrize("shape", ["positional-only", "default", "star-args", "keyword-only"])
    def test_every_signature_forwards_what_the_caller_passed(self, shape: str) -> None:
        """Positional-only parameters, defaults, ``*args`` and keyword-only parameters reach
        the unit callable and both paths as the caller passed them."""
        rollouts: Any = _everyone()  # the calls below are dynamic on purpose
        seen: list[tuple[Any, ...]] = []
        if shape == "positional-only":

            def new(a: str, b: int, /) -> Any:
                return ("new", a, b)

            call: Callable[[], Any] = lambda: guarded("u1", 2)  # noqa: E731
            expected: Any = ("new", "u1", 2)
        elif shape == "default":

            def new(a: str, b: int = 7) -> Any:  # type: ignore[misc]
                return ("new", a, b)

            call = lambda: guarded("u1")  # noqa: E731
            expected = ("new", "u1", 7)
        elif shape == "star-args":

            def new(a: str, *more: int) -> Any:  # type: ignore[misc]
                return ("new", a, more)

            call = lambda: guarded("u1", 2, 3)  # noqa: E731
            expected = ("new", "u1", (2, 3))
        else:

            def new(a: str, *, b: int) -> Any:  # type: ignore[misc]
                return ("new", a, b)

            call = lambda: guarded("u1", b=2)  # noqa: E731
            expected = ("new", "u1", 2)

        def unit(*args: Any, **kwargs: Any) -> object:
            seen.append((args, kwargs))
            return args[0]

        guarded = rollouts.guard("r", fallback=new, unit=unit)(new)
        assert call() == expected
        assert seen[0][0][0] == "u1"
        with pytest.raises(TypeError):
            guarded()  # a call the function refuses is refused by the guard too

    def test_a_unit_callable_that_takes_keywords_only(self) -> None:
        """A unit callable that cannot take the arguments positionally keeps them as passed."""
        rollouts: Any = _everyone()  # the calls below are dynamic on purpose
        guarded = rollouts.guard("r", fallback=lambda order: "old", unit=lambda *, order: order)(
            lambda order: "new"
        )
        assert guarded(order="u1") == "new"

    def test_a_method_and_the_wrapped_functions_identity(self) -> None:
        """A method is guarded like a function, and the wrapper looks like what it wraps."""
        rollouts: Any = _everyone()  # the calls below are dynamic on purpose

        class Checkout:
            def total(self, user: str) -> str:
                """The new total."""
                return "new " + user

            def old_total(self, user: str) -> str:
                return "old " + user

            guarded = rollouts.guard("r", fallback=old_total, unit=lambda self, user: user)(total)

        assert Checkout().guarded("u1") == "new u1"
        assert Checkout.guarded.__name__ == "total"
        assert Checkout.guarded.__doc__ == "The new total."
        assert inspect.signature(Checkout.guarded) == inspect.signature(Checkout.total)
