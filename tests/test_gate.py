"""Tests for the health gate's steps: their reasons in words (the steps themselves are
tested through ``Rollouts`` in ``test_rollouts.py``)."""

from __future__ import annotations

import pytest

from conftest import plain_policy
from stagedroll import Rollouts
from stagedroll._gate import AUTOMATIC, _breach, _duration


class TestDuration:
    @pytest.mark.parametrize(
        ("seconds", "text"),
        [
            (0, "0s"),
            (0.4, "0s"),
            (45, "45s"),
            (60, "1m"),
            (3599.6, "1h"),
            (5400, "1h30m"),
            (90061, "1d1h1m1s"),
        ],
    )
    def test_in_the_policys_words(self, seconds: float, text: str) -> None:
        """A number of seconds reads like a policy's duration."""
        assert _duration(seconds) == text

    def test_never_negative(self) -> None:
        """A bake time already over reads as no time left."""
        assert _duration(-5) == "0s"


class TestBreach:
    def test_names_the_test_its_bar_and_the_events(self) -> None:
        """The reason of a freeze or rollback says which test fired, at what bar, on what."""
        rollouts = Rollouts(plain_policy(10))
        for i in range(40):
            rollouts.report("checkout", f"user-{i}", error=True)
        report = rollouts.status("checkout").health
        events = report.error_events_control
        assert events > 0
        assert report.r_errors is not None
        assert _breach("errors", report, freeze=True) == (
            f"errors: E {report.e_errors:.3g} >= 20 ({report.error_events_treatment} events on "
            f"the new path, {events} on the old, r-hat {report.r_errors:.2f})"
        )
        assert " >= 1e+03 (" in _breach("errors", report, freeze=False)

    def test_latency_bars_with_the_split(self) -> None:
        """With a latency test each test has its part of alpha: bars of 40 and 2,000."""
        policy = plain_policy(10)
        policy["rollouts"]["checkout"]["health"] = {"latency_p95": True}
        report = Rollouts(policy).status("checkout").health
        assert _breach("latency", report, freeze=True).startswith("slow calls: E 1 >= 40 (")
        assert " >= 2e+03 (" in _breach("latency", report, freeze=False)

    def test_the_automatic_actor(self) -> None:
        """Automatic steps are made by the actor ``stagedroll``."""
        assert AUTOMATIC == "stagedroll"
