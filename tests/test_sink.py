"""Tests of stagedroll.testing.RecordingSink: every outcome and transition, while attached."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stagedroll import Action, Rollouts
from stagedroll.testing import Outcome, RecordingSink, override

POLICY: dict[str, Any] = {
    "rollouts": {
        "checkout": {"stages": [{"name": "half", "percent": 50}], "health": {"min_events": 3}},
        "search": {"stages": [{"name": "all", "percent": 100}]},
    }
}
UNITS = [f"user-{i}" for i in range(40)]


@pytest.fixture(name="rollouts")
def _rollouts() -> Rollouts:
    return Rollouts(POLICY)


class TestRecordingSink:
    def test_records_each_guarded_call_with_its_path(self, rollouts: Rollouts) -> None:
        """Every call, repeated ones too, is an outcome on the path it took."""

        @rollouts.guard("checkout", fallback=lambda unit: "old", unit=lambda unit: unit)
        def new(unit: str) -> str:
            return "new"

        with RecordingSink(rollouts) as sink:
            answers = {unit: new(unit) for unit in UNITS}
            new(UNITS[0])
        assert len(sink.of("checkout")) == len(UNITS) + 1
        on_new = {unit for unit, answer in answers.items() if answer == "new"}
        assert sink.units("checkout", enabled=True) == on_new
        assert sink.units("checkout", enabled=False) == set(UNITS) - on_new
        assert all(o.compared and not o.error for o in sink.outcomes)

    def test_errors_and_fallbacks(self, rollouts: Rollouts) -> None:
        """A failing new path is an error answered by the fallback; report's errors too."""

        @rollouts.guard("checkout", fallback=lambda unit: "old", unit=lambda unit: unit)
        def new(unit: str) -> str:
            raise ValueError(unit)

        with RecordingSink(rollouts) as sink, override(rollouts, "checkout", units=["vip"]):
            assert new("vip") == "old"
            rollouts.report("checkout", "user-1", error=True)
        first, second = sink.errors("checkout")
        assert (first.unit, first.enabled, first.fallback, first.compared) == ("vip", True, True,
                                                                              False)  # fmt: skip
        assert second == Outcome("checkout", "user-1", rollouts.enabled("checkout", "user-1"),
                                 True, False, None, True)  # fmt: skip

    def test_async_guard_and_track(self, rollouts: Rollouts) -> None:
        """Async guards and track blocks are recorded too."""

        async def old(unit: str) -> str:
            return "old"

        @rollouts.guard("search", fallback=old, unit=lambda unit: unit)
        async def new(unit: str) -> str:
            return "new"

        with RecordingSink(rollouts) as sink:
            assert asyncio.run(new("user-1")) == "new"
            with rollouts.track("search", "user-2"):
                pass
        assert sink.units("search", enabled=True) == {"user-1", "user-2"}

    def test_transitions(self, rollouts: Rollouts) -> None:
        """Transitions made through the Rollouts are recorded."""
        with RecordingSink(rollouts) as sink:
            rollouts.freeze("checkout", actor="alice")
        assert [event.action for event in sink.transitions] == [Action.FREEZE]

    def test_detach_and_counts_stay_right(self, rollouts: Rollouts) -> None:
        """After detach nothing more is recorded, the fast path is back, and the rollout's
        own counters saw every call once."""

        @rollouts.guard("checkout", fallback=lambda unit: "old", unit=lambda unit: unit)
        def new(unit: str) -> str:
            return "new"

        sink = RecordingSink(rollouts, names=["checkout"])
        for unit in UNITS:
            new(unit)
        sink.detach()
        new(UNITS[0])
        assert len(sink.outcomes) == len(UNITS)
        assert rollouts["checkout"]._router.view.plain
        status = rollouts.status("checkout")
        assert status.treatment.calls + status.control.calls == len(UNITS) + 1
        assert status.treatment.units + status.control.units == len(UNITS)
        sink.clear()
        assert sink.outcomes == []
        assert "0 outcomes" in repr(sink)

    def test_calls_that_fail_to_route_are_recorded(self, rollouts: Rollouts) -> None:
        """A unit callable that raises sends the call to the old path, and the sink sees it."""

        @rollouts.guard("checkout", fallback=lambda user: "old", unit=lambda user: user["id"])
        def new(user: dict[str, str]) -> str:
            return "new"

        with RecordingSink(rollouts) as sink:
            assert new({}) == "old"
        [outcome] = sink.outcomes
        assert (outcome.enabled, outcome.compared, outcome.error) == (False, False, False)
