"""Tests of the OpenTelemetry exporter, against the SDK's in-memory reader and log exporter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from exporting import PolicyFile, import_without, race, scripted
from stagedroll import Rollouts, RolloutStatus, Status
from stagedroll.exporters.otel import TRANSITION_EVENT, Instrumentation, instrument
from stagedroll.testing import FakeClock

NAME = "checkout"
ARMS = ("control", "treatment", "targeted")
OUTCOMES = ("success", "error", "fallback")

Points = dict[str, list[tuple[dict[str, Any], float]]]


def policy(*, health: bool = True) -> dict[str, Any]:
    return {
        "rollouts": {
            NAME: {
                "stages": [{"name": "half", "percent": 50}, {"name": "all", "percent": 100}],
                "health": {"enabled": health},
            }
        }
    }


class Otel:
    """An SDK meter provider with an in-memory reader, and a logger provider to memory."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.meters = MeterProvider(metric_readers=[self.reader])
        self.logs = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]  # untyped upstream
        self.loggers = LoggerProvider()
        self.loggers.add_log_record_processor(SimpleLogRecordProcessor(self.logs))

    def collect(self) -> Points:
        points: Points = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    points[metric.name] = [
                        (dict(p.attributes or {}), p.value)  # type: ignore[union-attr]
                        for p in metric.data.data_points
                    ]
        return points

    def close(self) -> None:
        self.meters.shutdown()
        self.loggers.shutdown()


def point(points: Points, name: str, **attributes: Any) -> float | None:
    found = [v for a, v in points.get(name, []) if attributes.items() <= a.items()]
    assert len(found) <= 1, found
    return found[0] if found else None


def total_calls(points: Points) -> float:
    return sum(v for _, v in points.get("stagedroll.calls", []))


@pytest.fixture(name="otel")
def _otel() -> Iterator[Otel]:
    otel = Otel()
    yield otel
    otel.close()


class TestAfterAScriptedRollout:
    @pytest.fixture(name="read")
    def _read(self, otel: Otel) -> tuple[Rollouts, RolloutStatus, Points]:
        rollouts = Rollouts(policy(), clock=FakeClock(1000.0))
        instrument(rollouts, otel.meters, logger_provider=otel.loggers)
        scripted(rollouts, NAME)
        return rollouts, rollouts.status(NAME), otel.collect()

    def test_calls_equal_the_status(self, read: tuple[Rollouts, RolloutStatus, Points]) -> None:
        """``stagedroll.calls`` per arm and outcome adds up to what ``status()`` says."""
        _, status, points = read
        assert status.status is Status.FROZEN
        for arm in ARMS:
            stats = getattr(status, arm)
            got = {o: point(points, "stagedroll.calls", **{"stagedroll.arm": arm,
                   "stagedroll.outcome": o}) or 0 for o in OUTCOMES}  # fmt: skip
            assert sum(got.values()) == stats.calls
            assert got["error"] + got["fallback"] == stats.errors
            assert got["fallback"] == stats.fallbacks
        assert status.treatment.fallbacks
        assert status.control.errors

    def test_feature_flag_attributes(self, read: tuple[Rollouts, RolloutStatus, Points]) -> None:
        """The calls carry the feature-flag semantic conventions: key, provider, variant
        (``new``/``old`` for the compared arms) and reason."""
        _, _, points = read
        attributes = [a for a, _ in points["stagedroll.calls"]]
        assert {a["feature_flag.key"] for a in attributes} == {NAME}
        assert {a["feature_flag.provider.name"] for a in attributes} == {"stagedroll"}
        variants = {a["stagedroll.arm"]: a.get("feature_flag.result.variant") for a in attributes}
        assert variants == {"control": "old", "treatment": "new", "targeted": None}
        reasons = {a["stagedroll.arm"]: a["feature_flag.result.reason"] for a in attributes}
        assert reasons == {"control": "split", "treatment": "split", "targeted": "targeting_match"}

    def test_gauges_equal_the_status(self, read: tuple[Rollouts, RolloutStatus, Points]) -> None:
        """Percent, state, e-values, thresholds and mean durations are the status's."""
        _, status, points = read
        assert point(points, "stagedroll.rollout.percent") == status.percent
        for state in Status:
            expected = 1 if state is status.status else 0
            assert point(
                points, "stagedroll.rollout.state", **{"stagedroll.state": str(state)}
            ) == (expected)
        h = status.health
        evidence = "stagedroll.gate.evidence"
        assert point(points, evidence, **{"stagedroll.test": "errors"}) == h.e_errors
        assert point(points, evidence, **{"stagedroll.test": "sample_ratio"}) == h.e_sample_ratio
        assert point(
            points, "stagedroll.gate.threshold", **{"stagedroll.test": "errors",
            "stagedroll.step": "freeze"},
        ) == h.freeze_at_errors  # fmt: skip
        duration = point(points, "stagedroll.call.duration", **{"stagedroll.arm": "treatment"})
        assert duration == status.treatment.mean_latency_s

    def test_the_freeze_is_an_event(
        self, otel: Otel, read: tuple[Rollouts, RolloutStatus, Points]
    ) -> None:
        """The gate's freeze is emitted as a ``stagedroll.transition`` event, and counted."""
        _, _, points = read
        records = [r.log_record for r in otel.logs.get_finished_logs()]
        assert [r.event_name for r in records] == [TRANSITION_EVENT]
        attributes = dict(records[0].attributes or {})
        assert attributes["stagedroll.action"] == "freeze"
        assert attributes["stagedroll.trigger"] == "health_gate"
        assert attributes["feature_flag.key"] == NAME
        assert float(attributes["stagedroll.evidence.e_errors"]) > 1  # type: ignore[arg-type]
        transitions = point(points, "stagedroll.transitions", **{"stagedroll.action": "freeze"})
        assert transitions == 1


class TestMonotonic:
    def test_a_counter_survives_an_advance(self, otel: Otel) -> None:
        """``stagedroll.calls`` goes on across an advance, as the stage's counters restart."""
        rollouts = Rollouts(policy(health=False))
        instrument(rollouts, otel.meters)
        for i in range(40):
            rollouts.report(NAME, f"user-{i}", error=False)
        assert total_calls(otel.collect()) == 40
        rollouts.advance(NAME, actor="alice")
        for i in range(5):
            rollouts.report(NAME, f"user-{i}", error=False)
        assert total_calls(otel.collect()) == 45


COUNTERS = {"stagedroll.calls", "stagedroll.transitions"}


def reported(points: Points, rollout: str) -> set[str]:
    """The instruments with a point for ``rollout``."""
    return {
        name
        for name, found in points.items()
        if any(a.get("feature_flag.key") == rollout for a, _ in found)
    }


def calls_of(points: Points, rollout: str) -> float:
    found = points.get("stagedroll.calls", [])
    return sum(v for a, v in found if a.get("feature_flag.key") == rollout)


class TestRemovedByAReload:
    def test_its_gauges_go_its_counters_stay_and_it_comes_back(
        self, otel: Otel, tmp_path: Path
    ) -> None:
        """A rollout frozen, then removed from the policy file: no state, percent, evidence
        or duration; its counters stay. Back in the file, its gauges are back."""
        file = PolicyFile(tmp_path / "rollouts.toml", NAME, "other")
        rollouts = file.load()
        instrument(rollouts, otel.meters, logger_provider=otel.loggers)
        scripted(rollouts, NAME)
        points = otel.collect()
        frozen = {"feature_flag.key": NAME, "stagedroll.state": "frozen"}
        assert point(points, "stagedroll.rollout.state", **frozen) == 1
        assert reported(points, NAME) > COUNTERS | {"stagedroll.gate.evidence"}
        before = calls_of(points, NAME)
        assert before > 0

        file.keep(rollouts, "other")
        points = otel.collect()
        assert reported(points, NAME) == COUNTERS
        assert point(points, "stagedroll.rollout.state", **frozen) is None
        assert calls_of(points, NAME) == before
        running = {"feature_flag.key": "other", "stagedroll.state": "running"}
        assert point(points, "stagedroll.rollout.state", **running) == 1

        file.keep(rollouts, NAME, "other")
        points = otel.collect()
        assert {"stagedroll.rollout.state", "stagedroll.gate.evidence"} <= reported(points, NAME)
        state = str(rollouts.status(NAME).status)
        again = {"feature_flag.key": NAME, "stagedroll.state": state}
        assert point(points, "stagedroll.rollout.state", **again) == 1
        assert calls_of(points, NAME) >= before


class TestLifecycle:
    def test_stop_reports_nothing_more(self, otel: Otel) -> None:
        """After ``stop`` the instruments report no points and no event is emitted."""
        rollouts = Rollouts(policy(health=False))
        handle = instrument(rollouts, otel.meters, logger_provider=otel.loggers)
        assert isinstance(handle, Instrumentation)
        rollouts.freeze(NAME, actor="alice")
        assert point(otel.collect(), "stagedroll.rollout.percent") == 50
        handle.stop()
        rollouts.unfreeze(NAME, actor="alice")
        assert otel.collect().get("stagedroll.rollout.percent", []) == []
        assert len(otel.logs.get_finished_logs()) == 1
        handle.stop()  # twice is harmless

    def test_without_an_sdk_nothing_happens(self) -> None:
        """With the API's no-op providers (no SDK configured), calls and transitions work."""
        rollouts = Rollouts(policy(health=False))
        handle = instrument(rollouts)
        rollouts.report(NAME, "user-1", error=False)
        rollouts.freeze(NAME, actor="alice")
        handle.stop()

    def test_a_hostile_reason_is_bounded(self, otel: Otel) -> None:
        """A reason of a megabyte with control characters reaches the event cut to 1,000."""
        rollouts = Rollouts(policy(health=False))
        instrument(rollouts, otel.meters, logger_provider=otel.loggers)
        rollouts.freeze(NAME, reason="\x1b[2J<script>" * 100_000, actor="alice")
        (record,) = [r.log_record for r in otel.logs.get_finished_logs()]
        assert len(str((record.attributes or {})["stagedroll.reason"])) == 1000
        assert len(str(record.body)) <= 1000

    def test_the_extra_missing_gives_an_install_hint(self, tmp_path: Path) -> None:
        """Without opentelemetry-api, importing the exporter says which extra to install."""
        out = import_without("opentelemetry", "stagedroll.exporters.otel", tmp_path)
        assert "pip install 'stagedroll[otel]'" in out


class TestConcurrency:
    def test_collections_racing_calls_never_raise(self, otel: Otel) -> None:
        """Four threads of guarded calls and one of transitions while the main thread
        collects: every collection succeeds and ``stagedroll.calls`` never goes down."""
        rollouts = Rollouts(policy(health=False))
        instrument(rollouts, otel.meters, logger_provider=otel.loggers)
        race(rollouts, NAME, lambda: total_calls(otel.collect()), rounds=20)
