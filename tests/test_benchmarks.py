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
        targeted = {
            "Rollout.enabled",
            "Rollouts.enabled",
            "record an outcome",
            "guarded call, health on",
            "guard overhead, health off",
        }
        assert set(results) >= {"floor", "guard overhead, health on", *targeted}
        assert results["floor"]["ratio"] == 1.0
        assert all(r["ns"] > 0 for name, r in results.items() if "overhead" not in name)
        assert {name for name, r in results.items() if r["target"]} == targeted


@pytest.fixture(name="bench_freeze")
def _bench_freeze(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    # numpy is a development dependency: no skip, a missing install must fail here.
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    yield importlib.import_module("bench_freeze")
    sys.modules.pop("bench_freeze", None)


class TestBenchFreeze:
    def test_smoke_run_reports_every_experiment(
        self, bench_freeze: ModuleType, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A smoke run prints a JSON report with rows for every experiment and every bar."""
        assert bench_freeze.main(["--smoke", "--json", "--workers", "1"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert set(report) == {"meta", "errors", "hetero", "latency", "bars"}
        assert report["meta"]["mode"] == "smoke"
        for kind in ("errors", "hetero", "latency"):
            assert report[kind]
            assert all({"share", "effect", "config", "runs", "freeze_rate"} <= set(row)
                       for row in report[kind])  # fmt: skip
        assert {check["bar"] for check in report["bars"]} == {1, 2, 3, 4}
        assert {"errors only (default)", "both tests", "latency only"} <= {
            check["configuration"] for check in report["bars"]
        }

    def test_smoke_run_prints_markdown_tables(
        self, bench_freeze: ModuleType, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert bench_freeze.main(["--smoke", "--workers", "1"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("# Auto-freeze benchmark")
        for title in ("## Bar 1", "## Bars 2 and 3", "## Bar 4", "## Summary"):
            assert title in out
        assert "|---|" in out
