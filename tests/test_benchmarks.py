"""The benchmarks are not timed here; they are run once, tiny, so that they cannot rot."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import structlog

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


@pytest.fixture(name="bench_decide")
def _bench_decide(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    yield importlib.import_module("bench_decide")
    sys.modules.pop("bench_decide", None)
    structlog.reset_defaults()  # the benchmark quiets structlog for its own output


class TestBenchDecide:
    def test_runs_and_reports_every_candidate(
        self, bench_decide: ModuleType, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A one-loop run prints a JSON report with a ratio for every candidate and target."""
        assert bench_decide.main(["--json", "--loops", "1", "--repeats", "1"]) == 0
        report = json.loads(capsys.readouterr().out)
        results = report["results"]
        assert set(results) >= {"floor", "Rollout.enabled", "Rollouts.enabled", "guard overhead"}
        assert results["floor"]["ratio"] == 1.0
        assert all(r["ns"] > 0 for name, r in results.items() if name != "guard overhead")
        assert {name for name, r in results.items() if r["target"]} == {
            "Rollout.enabled",
            "Rollouts.enabled",
            "guard overhead",
        }
