from __future__ import annotations

import structlog

from stagedroll._failures import Failures


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TestFailures:
    def test_counts_every_failure_and_logs_once_per_interval(self) -> None:
        """A failure repeated within the interval is counted but not logged again."""
        clock = FakeMonotonic()
        failures = Failures(interval_s=60, clock=clock)
        with structlog.testing.capture_logs() as logs:
            for _ in range(100):
                failures.record("store.load_failed", RuntimeError("down"), rollout="r")
            clock.now = 61
            failures.record("store.load_failed", RuntimeError("down"), rollout="r")
        assert failures.count("store.load_failed") == 101
        assert [entry["event"] for entry in logs] == ["store.load_failed"] * 2
        assert logs[1]["suppressed"] == 99
        assert logs[1]["total"] == 101
        assert logs[0]["log_level"] == "error"

    def test_kinds_are_limited_separately(self) -> None:
        """Each event name has its own interval and count."""
        failures = Failures(clock=FakeMonotonic())
        with structlog.testing.capture_logs() as logs:
            failures.record("a")
            failures.record("b")
            failures.record("a")
        assert len(logs) == 2
        assert failures.counts() == {"a": 2, "b": 1}
        assert failures.count() == 3
        assert failures.count("c") == 0
