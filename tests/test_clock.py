"""Tests for ``stagedroll.testing.FakeClock``."""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stagedroll import Action, Rollouts
from stagedroll.testing import FakeClock

START = 1_700_000_000.0


@pytest.fixture(name="clock")
def _clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(name="auto_policy")
def _auto_policy() -> dict[str, Any]:
    return {
        "rollouts": {
            "search": {
                "advance": "auto",
                "stages": [
                    {"name": "canary", "percent": 5, "bake": "30m"},
                    {"name": "half", "percent": 50, "bake": "1h"},
                    {"name": "all", "percent": 100},
                ],
            }
        }
    }


class TestFakeClock:
    def test_starts_at_a_fixed_moment(self, clock: FakeClock) -> None:
        """By default the clock starts at 1,700,000,000 seconds, and calling it reads it."""
        assert clock() == clock.now == START

    def test_start(self) -> None:
        """The start is configurable, and an int start reads as a float."""
        clock = FakeClock(start=5)
        assert clock() == 5.0
        assert isinstance(clock(), float)

    def test_does_not_move_by_itself(self, clock: FakeClock) -> None:
        """Reading the clock does not move it."""
        assert [clock() for _ in range(3)] == [START] * 3

    def test_advance_seconds(self, clock: FakeClock) -> None:
        """advance() adds seconds and returns the new time."""
        assert clock.advance(90) == START + 90
        assert clock.advance(0.5) == START + 90.5
        assert clock() == START + 90.5

    def test_advance_zero(self, clock: FakeClock) -> None:
        """Advancing by zero seconds leaves the clock where it is."""
        assert clock.advance(0) == START

    @pytest.mark.parametrize(
        ("duration", "seconds"),
        [("30m", 1800.0), ("1h30m", 5400.0), ("500ms", 0.5), ("2d", 172800.0)],
    )
    def test_advance_duration(self, clock: FakeClock, duration: str, seconds: float) -> None:
        """A duration string is read as stagedroll.parse_duration reads it."""
        assert clock.advance(duration) == START + seconds

    @pytest.mark.parametrize("seconds", [-1, -0.001, math.nan, math.inf, -math.inf, 10**400])
    def test_advance_refuses_bad_numbers(self, clock: FakeClock, seconds: float) -> None:
        """A negative or non-finite step raises ValueError and leaves the clock alone."""
        with pytest.raises(ValueError, match=r"only moves forward|finite"):
            clock.advance(seconds)
        assert clock() == START

    @pytest.mark.parametrize("duration", ["soon", "-5m", "0s", ""])
    def test_advance_refuses_bad_durations(self, clock: FakeClock, duration: str) -> None:
        """Text that is not a positive duration raises ValueError."""
        with pytest.raises(ValueError, match="duration"):
            clock.advance(duration)
        assert clock() == START

    @pytest.mark.parametrize("seconds", [True, None, b"5"])
    def test_advance_refuses_other_types(self, clock: FakeClock, seconds: Any) -> None:
        """A step that is neither a number nor text raises TypeError."""
        with pytest.raises(TypeError, match="must be a number"):
            clock.advance(seconds)

    def test_advance_beyond_any_time(self) -> None:
        """A step that overflows to infinity is refused."""
        clock = FakeClock(start=1e308)
        with pytest.raises(ValueError, match="beyond any time"):
            clock.advance(1e308)
        assert clock() == 1e308

    def test_set(self, clock: FakeClock) -> None:
        """set() moves the clock to a later moment and returns it."""
        assert clock.set(START + 60) == START + 60
        assert clock() == START + 60

    def test_set_same_moment(self, clock: FakeClock) -> None:
        """Setting the current time again is allowed."""
        assert clock.set(START) == START

    def test_set_backwards(self, clock: FakeClock) -> None:
        """Going back in time raises ValueError and leaves the clock alone."""
        clock.advance(10)
        with pytest.raises(ValueError, match="only moves forward"):
            clock.set(START)
        assert clock() == START + 10

    @pytest.mark.parametrize("when", [math.nan, math.inf])
    def test_set_refuses_non_finite(self, clock: FakeClock, when: float) -> None:
        """A moment must be a finite number."""
        with pytest.raises(ValueError, match="finite"):
            clock.set(when)

    @pytest.mark.parametrize("start", [math.nan, -math.inf])
    def test_start_refuses_non_finite(self, start: float) -> None:
        """The start must be a finite number."""
        with pytest.raises(ValueError, match="finite"):
            FakeClock(start)

    def test_repr(self, clock: FakeClock) -> None:
        """The repr shows the current time."""
        clock.advance(1)
        assert repr(clock) == "FakeClock(now=1700000001.0)"

    def test_thread_safe(self, clock: FakeClock) -> None:
        """Advances from several threads all count."""

        def work() -> None:
            for _ in range(1000):
                clock.advance(1)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert clock() == START + 4000

    @given(steps=st.lists(st.integers(0, 10**6)))
    def test_sum_of_steps(self, steps: list[int]) -> None:
        """The clock never goes back, and ends at the start plus the sum of its steps."""
        clock = FakeClock()
        seen = [clock()]
        seen.extend(clock.advance(step) for step in steps)
        assert seen == sorted(seen)
        assert clock() == START + sum(steps)


class TestWithRollouts:
    def test_tick_waits_for_the_bake_time(
        self, clock: FakeClock, auto_policy: dict[str, Any]
    ) -> None:
        """tick() advances nothing before the bake ends, and advances once the clock passes it."""
        rollouts = Rollouts(auto_policy, clock=clock)
        assert rollouts.tick() == []
        assert rollouts.status("search").waiting_for == "bake time: 30m left"

        clock.advance("29m")
        assert rollouts.tick() == []
        assert rollouts["search"].state.stage == 0

        clock.advance("1m")
        [advance] = rollouts.tick()
        assert (advance.action, advance.from_stage, advance.to_stage) == (Action.ADVANCE, 0, 1)
        assert rollouts.tick() == []  # the next stage bakes for an hour from now

        clock.advance("1h")
        [advance] = rollouts.tick()
        assert advance.to_stage == 2

    def test_history_uses_the_clock(self, clock: FakeClock, auto_policy: dict[str, Any]) -> None:
        """Transitions are stamped with the fake clock's time."""
        rollouts = Rollouts(auto_policy, clock=clock)
        clock.advance("30m")
        rollouts.tick()
        clock.advance(5)
        rollouts.freeze("search", reason="looking", actor="alice")
        history = rollouts.history("search")
        assert [(t.action, t.at) for t in history] == [
            (Action.FREEZE, START + 1805),
            (Action.ADVANCE, START + 1800),
            (Action.START, START),
        ]
        assert rollouts.status("search").since == START + 1805

    def test_bake_counts_from_the_last_transition(
        self, clock: FakeClock, auto_policy: dict[str, Any]
    ) -> None:
        """After an unfreeze, the bake time counts again from the fake clock's now."""
        rollouts = Rollouts(auto_policy, clock=clock)
        clock.advance("20m")
        rollouts.freeze("search", actor="alice")
        clock.advance("20m")
        rollouts.unfreeze("search", actor="alice")
        assert rollouts.tick() == []
        assert rollouts.status("search").waiting_for == "bake time: 30m left"
        clock.advance("30m")
        assert [t.to_stage for t in rollouts.tick()] == [1]
