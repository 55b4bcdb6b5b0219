"""Tests of the blue-green switch (stagedroll.patterns.switch, Rollouts.switch)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stagedroll import Rollouts, UnknownRolloutError
from stagedroll.patterns import switch
from stagedroll.testing import RecordingSink

POLICY: dict[str, Any] = {
    "rollouts": {
        "green": {
            "stages": [{"name": f"green-{p}", "percent": p} for p in (0, 10, 50, 100)],
            "health": {"min_events": 3},
        }
    }
}
USERS = [f"user-{i}" for i in range(1000)]


@pytest.fixture(name="rollouts")
def _rollouts() -> Rollouts:
    return Rollouts(POLICY)


def blue(user: str) -> str:
    return "blue"


def green(user: str) -> str:
    return "green"


def unit_of(user: str) -> str:
    return user


def host_policy(percent: float) -> dict[str, Any]:
    stages = [{"name": "canary", "percent": percent}]
    return {"rollouts": {"canary": {"bucket_by": "host", "stages": stages}}}


class TestSwitch:
    def test_stages_move_units_to_green_and_keep_them(self, rollouts: Rollouts) -> None:
        """Each stage sends its share to green; a unit on green stays there as it grows."""
        call = rollouts.switch("green", blue=blue, green=green, unit=lambda user: user)
        seen: list[set[str]] = []
        for stage in range(4):
            if stage:
                rollouts.advance("green", actor="alice")
            seen.append({u for u in USERS if call(u) == "green"})
        assert seen[0] == set()
        assert seen[0] <= seen[1] <= seen[2] <= seen[3] == set(USERS)
        assert 0.05 < len(seen[1]) / len(USERS) < 0.15
        assert 0.45 < len(seen[2]) / len(USERS) < 0.55

    def test_rollback_and_kill_cut_back_at_once(self, rollouts: Rollouts) -> None:
        """Mid-traffic, a rollback sends the next calls back to blue; a kill sends all."""
        call = switch(rollouts, "green", blue=blue, green=green, unit=lambda user: user)
        rollouts.advance("green", actor="alice")
        rollouts.advance("green", actor="alice")  # 50 %
        before = {u for u in USERS if call(u) == "green"}
        rollouts.rollback("green", actor="bob")  # 10 %
        after = {u for u in USERS if call(u) == "green"}
        assert after < before
        rollouts.kill("green", actor="bob")
        assert {call(u) for u in USERS} == {"blue"}

    def test_both_arms_are_recorded(self, rollouts: Rollouts) -> None:
        """Calls on blue and on green are outcomes of their arms."""
        call = rollouts.switch("green", blue=blue, green=green, unit=lambda user: user)
        rollouts.advance("green", actor="alice")
        with RecordingSink(rollouts) as sink:
            answers = {u: call(u) for u in USERS[:200]}
        on_green = {u for u, answer in answers.items() if answer == "green"}
        assert sink.units("green", enabled=True) == on_green
        status = rollouts.status("green")
        assert status.treatment.calls + status.control.calls == 200

    def test_green_failing_is_answered_by_blue(self, rollouts: Rollouts) -> None:
        """When green raises, blue answers and the error is recorded; reraise=True raises."""

        def broken(user: str) -> str:
            raise ConnectionError("green is down")

        rollouts.advance("green", actor="alice")
        rollouts.advance("green", actor="alice")
        rollouts.advance("green", actor="alice")  # 100 %
        call = rollouts.switch("green", blue=blue, green=broken, unit=lambda user: user)
        assert call("user-1") == "blue"
        assert rollouts.status("green").treatment.errors == 1
        strict = rollouts.switch("green", blue=blue, green=broken, unit=unit_of, reraise=True)
        with pytest.raises(ConnectionError):
            strict("user-1")

    def test_async(self, rollouts: Rollouts) -> None:
        """Async blue and green work alike."""

        async def async_blue(user: str) -> str:
            return "blue"

        async def async_green(user: str) -> str:
            return "green"

        call = rollouts.switch("green", blue=async_blue, green=async_green, unit=unit_of)
        rollouts.advance("green", actor="alice")
        rollouts.advance("green", actor="alice")

        async def main() -> set[str]:
            return set(await asyncio.gather(*(call(u) for u in USERS[:100])))

        assert asyncio.run(main()) == {"blue", "green"}

    def test_unknown_rollout(self, rollouts: Rollouts) -> None:
        """An unknown name is refused when the switch is made."""
        with pytest.raises(UnknownRolloutError):
            rollouts.switch("nope", blue=blue, green=green, unit=lambda user: user)


class TestCanaryByHost:
    def test_one_host_runs_the_new_path_for_all_its_traffic(self) -> None:
        """bucket_by = "host" and the context's host: every user of a host gets its answer."""
        policy = host_policy(5)
        answers = {}
        for i in range(40):
            host = f"web-{i:02d}"
            rollouts = Rollouts(policy, context={"host": host})
            on = {rollouts.enabled("canary", u) for u in USERS[:50]}
            assert len(on) == 1  # the same answer for every user of this host
            answers[host] = on.pop()
        assert 0 < sum(answers.values()) < 10

    def test_the_call_attributes_win_over_the_context(self) -> None:
        """An attribute given with the call replaces the context's."""
        policy = host_policy(50)
        rollouts = Rollouts(policy, context={"host": "web-01"})
        hosts = [f"web-{i:02d}" for i in range(40)]
        mine = rollouts.enabled("canary", "user-1")
        theirs = {rollouts.enabled("canary", "user-1", {"host": h}) for h in hosts}
        assert theirs == {True, False}
        assert rollouts.decide("canary", "user-1").enabled is mine
        assert dict(rollouts.context) == {"host": "web-01"}
