"""The benchmarks are not timed here; they are run once, tiny, so that they cannot rot."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import structlog

from servers import reachable

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
            "Rollouts.decide (3 rules)",
            "record an outcome",
            "guard overhead, health on",
            "guard overhead, health off",
            "guard overhead, exporters on",
        }
        assert set(results) >= {"floor", "guard overhead, health on", *targeted}
        assert results["floor"]["ratio"] == 1.0
        assert all(r["ns"] > 0 for name, r in results.items() if "overhead" not in name)
        assert {name for name, r in results.items() if r["target"]} == targeted
        schemes = ("unleash", "growthbook v2", "flagd", "launchdarkly")
        assert {f"Rollouts.enabled, {s}" for s in schemes} <= set(results)
        assert {f"bucket step, {s}" for s in schemes} <= set(results)


@pytest.fixture(name="bench_freeze")
def _bench_freeze(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    # numpy is a development dependency: no skip, a missing install must fail here.
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    yield importlib.import_module("bench_freeze")
    sys.modules.pop("bench_freeze", None)
    sys.modules.pop("freeze_scenarios", None)


class TestBenchFreeze:
    def test_smoke_run_reports_every_experiment(
        self, bench_freeze: ModuleType, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A smoke run prints a JSON report with rows for every experiment, bar and scenario."""
        assert bench_freeze.main(["--smoke", "--json", "--workers", "1", "--check"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert set(report) == {"meta", "errors", "hetero", "latency", "bars", "scenarios", "failed"}
        assert report["meta"]["mode"] == "smoke"
        for kind in ("errors", "hetero", "latency"):
            assert report[kind]
            assert all({"share", "effect", "config", "runs", "freeze_rate"} <= set(row)
                       for row in report[kind])  # fmt: skip
        assert {check["bar"] for check in report["bars"]} == {1, 2, 3, 4}
        assert {"errors only (default)", "both tests", "latency only"} <= {
            check["configuration"] for check in report["bars"]
        }
        # A smoke run has too few runs to judge a bar: --check passes.
        assert not any(check["judged"] for check in report["bars"])
        assert report["failed"] == []
        # The public-API scenarios: a row per cell, with runs, and their checks.
        scenarios = report["scenarios"]
        cells = scenarios["cells"]
        assert {row["scenario"] for row in cells} == {
            "late onset", "canary", "outage", "pooled", "percent edit"
        }  # fmt: skip
        assert all(row["runs"] > 0 and row["mean_reports"] > 0 for row in cells)
        healthy = [row for row in cells if row["variant"] == "healthy"]
        assert len(healthy) == 7
        assert all({"freeze_rate", "freeze_upper95", "rollback_rate"} <= set(row)
                   for row in healthy)  # fmt: skip
        assert {c["scenario"] for c in scenarios["checks"]} == {
            "late onset", "canary", "outage", "healthy"
        }  # fmt: skip
        assert len(scenarios["comparisons"]) == 7
        assert not any(check["judged"] for check in scenarios["checks"])

    def test_smoke_run_prints_markdown_tables(
        self,
        bench_freeze: ModuleType,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The tables; ``--check`` exits 1 and names the judged bars that fail."""
        monkeypatch.setattr(bench_freeze, "failed_bars", lambda *_: ["bar 9, made up: a bar"])
        assert bench_freeze.main(["--smoke", "--workers", "1", "--check"]) == 1
        captured = capsys.readouterr()
        out = captured.out
        assert out.startswith("# Auto-freeze benchmark")
        for title in ("## Bar 1", "## Bars 2 and 3", "## Bar 4", "## Scenarios", "## Summary"):
            assert title in out
        assert "|---|" in out
        assert "bar 9, made up: a bar" in captured.err


@pytest.fixture(name="bench_stores")
def _bench_stores(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    # The observers are spawned: they import bench_stores from the path given here.
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    yield importlib.import_module("bench_stores")
    sys.modules.pop("bench_stores", None)
    structlog.reset_defaults()  # the benchmark quiets structlog for its own output


class TestBenchStores:
    def test_smoke_run_reports_every_store(
        self, bench_stores: ModuleType, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A smoke run prints a JSON report with every store's ratios and propagation delays."""
        assert bench_stores.main(["--smoke", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert set(report) >= {"meta", "stores", "cost", "propagation", "targets", "ok"}
        assert report["meta"]["mode"] == "smoke"
        stores = report["stores"]
        assert set(stores) == {"memory", "sqlite", "redis"}
        assert stores["memory"]["status"] == stores["sqlite"]["status"] == "ok"
        redis_ok = reachable(bench_stores.redis_url())
        assert stores["redis"] == (
            {"status": "ok"} if redis_ok else {"status": "skipped", "reason": "no Redis"}
        )
        measured = {kind for kind, row in stores.items() if row["status"] == "ok"}
        assert set(report["meta"]["refreshes_while_timing"]) == measured - {"memory"}
        assert set(report["cost"]) == {*bench_stores.DECISIONS, *bench_stores.RECORDING}
        for rows in report["cost"].values():
            assert set(rows) == measured
            assert rows["memory"]["ratio"] == 1.0
            assert rows["memory"]["target"] is None
            for kind in measured - {"memory"}:
                row = rows[kind]
                assert row["ns"] > 0
                assert row["ratio"] > 0
                assert row["median_ratio"] > 0
                assert row["target"] == 1.2
                assert isinstance(row["pass"], bool)

    def test_smoke_run_reports_propagation(
        self, bench_stores: ModuleType, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Every observer of every shared store reports seeing the freeze, with the target."""
        assert bench_stores.main(["--smoke", "--json", "--observers", "2"]) == 0
        report = json.loads(capsys.readouterr().out)
        propagation = report["propagation"]
        assert set(propagation) == {"sqlite", "redis"}
        if not reachable(bench_stores.redis_url()):
            assert propagation["redis"] == {"status": "skipped", "reason": "no Redis"}
            del propagation["redis"]
        for row in propagation.values():
            assert row["status"] == "ok"
            assert row["observers"] == 2
            assert row["rounds"] == 1
            assert row["samples"] == 2
            assert row["missed"] == 0
            assert row["refresh_interval_s"] == 0.05
            assert row["target_s"] == pytest.approx(0.55)
            assert {"median_s", "p90_s", "max_s", "pass"} <= set(row)
            assert row["max_s"] is not None
            [transition] = row["transitions"]
            assert transition["to"] == "frozen"
            assert all(isinstance(d, float) for d in transition["delays_s"])
        assert {(t["what"], t["store"]) for t in report["targets"]} >= {
            ("max propagation delay", kind) for kind in propagation
        }


@pytest.fixture(name="bench_fleet")
def _bench_fleet(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    # The observers and workers are spawned: they import bench_fleet from the path given here.
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    yield importlib.import_module("bench_fleet")
    sys.modules.pop("bench_fleet", None)
    sys.modules.pop("bench_stores", None)
    structlog.reset_defaults()  # the benchmark quiets structlog for its own output


def installed(kind: str) -> bool:
    """Whether the benchmark can start a private server of ``kind`` (or must skip its rows)."""
    if kind == "redis":
        return shutil.which("redis-server") is not None
    found = any(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")) or shutil.which("pg_ctl")
    return bool(found) and (os.geteuid() != 0 or shutil.which("runuser") is not None)


class TestBenchFleet:
    def test_smoke_run_reports_propagation_and_load(
        self, bench_fleet: ModuleType, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A smoke run reports every store's kill delays and the servers' counted load."""
        assert bench_fleet.main(["--smoke", "--json", "--check"]) == 0  # nothing judged
        report = json.loads(capsys.readouterr().out)
        assert set(report) == {"meta", "stores", "propagation", "load", "targets", "ok"}
        assert report["meta"]["mode"] == "smoke"
        stores = report["stores"]
        assert list(stores) == ["sqlite", "redis", "postgresql"]
        assert stores["sqlite"]["status"] == "ok"
        for kind in ("redis", "postgresql"):
            must = installed(kind) or os.environ.get("CI", "").lower() == "true"
            assert stores[kind]["status"] == ("ok" if must else "skipped"), stores[kind]
        measured = {kind for kind, row in stores.items() if row["status"] == "ok"}

        rows = report["propagation"]
        assert [(r["store"], r["push"]) for r in rows] == [
            (kind, push) for kind in stores for push in (False, True)
        ]
        for row in rows:
            if row["store"] not in measured:
                assert row["status"] == "skipped"
                assert row["reason"]
                continue
            assert row["status"] == "ok"
            assert (row["observers"], row["kills"], row["samples"], row["missed"]) == (2, 1, 2, 0)
            assert all(isinstance(d, float) and d > 0 for d in row["delays_s"])
            assert row["median_s"] <= row["p99_s"] <= row["max_s"]
            assert row["unfreeze"]["max_s"] is not None
            expected = (
                {"max_s": pytest.approx(0.6)}
                if not row["push"]
                else {}
                if row["store"] == "sqlite"
                else {"median_s": 0.1, "p99_s": 0.25}
            )
            assert row["targets"] == expected

        load = report["load"]
        assert [row["store"] for row in load] == ["redis", "postgresql"]
        for row in load:
            assert (row["processes"], row["rollouts"], row["rate"]) == (2, 2, 20)
            if row["store"] not in measured:
                assert row["status"] == "skipped"
                continue
            assert row["status"] == "ok"
            assert row["achieved_mean"] > 0
            assert row["refreshes_mean"] > 0
            assert row["per_process_s"] > 0
            assert row["by_command"]
            assert row["transitions"] == 0
            assert row["target"] == 2.0
        units = {row["store"]: row.get("unit") for row in load if row["store"] in measured}
        assert units.get("redis", "requests") == "requests"  # from the server's feed
        assert units.get("postgresql", "statements") in {"statements", "transactions"}
        for row in load:
            if row["store"] in measured:
                assert row["server_cpu_ms_per_process_s"] >= 0
        if "redis" in measured:
            [redis_row] = [row for row in load if row["store"] == "redis"]
            assert "evalsha" in redis_row["by_command"]  # the batched exchange
            assert "get" in redis_row["by_command"]  # the look at the generation

        assert report["targets"]
        assert not any(check["judged"] for check in report["targets"])
        assert report["ok"] is True

    def test_prints_markdown_tables(
        self, bench_fleet: ModuleType, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without --json, markdown tables and a summary that says nothing is judged."""
        argv = ["--smoke", "--stores", "sqlite", "--part", "propagation"]
        assert bench_fleet.main(argv) == 0
        out = capsys.readouterr().out
        assert out.startswith("# Fleet benchmark")
        assert "## Kill propagation" in out
        assert "| sqlite | off | 2 | 0 |" in out
        assert "|---|" in out
        assert "No target is judged in this mode." in out

    def test_checks_judge_each_target(self, bench_fleet: ModuleType) -> None:
        """A p99 over its limit, or a process short of its call rate, fails its check."""
        push = {"status": "ok", "store": "redis", "push": True, "median_s": 0.004,
                "p99_s": 0.3, "targets": {"median_s": 0.1, "p99_s": 0.25}}  # fmt: skip
        load = {"status": "ok", "store": "postgresql", "processes": 32, "rollouts": 50,
                "rate": 1000.0, "per_process_s": 1.5, "unit": "statements", "target": 2.0,
                "pass": True, "achieved_min": 900.0, "rate_pass": False,
                "refresh_interval_s": 1.0, "refreshes_min": 0.97, "refresh_pass": True}  # fmt: skip
        report = {"propagation": [push], "load": [load]}
        verdicts = {c["what"]: c["pass"] for c in bench_fleet.checks(report, judged=True)}
        cell = "32 processes, 50 rollouts, 1000 calls/s"
        assert verdicts == {
            "kill propagation median": True,
            "kill propagation p99": False,
            f"load per process ({cell})": True,
            f"achieved call rate, slowest process ({cell})": False,
            f"refreshes per second, slowest process ({cell})": True,
        }


@pytest.fixture(name="bench_simulate")
def _bench_simulate(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    yield importlib.import_module("bench_simulate")
    sys.modules.pop("bench_simulate", None)


class TestBenchSimulate:
    def test_small_run_reports_every_stage(
        self, bench_simulate: ModuleType, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A run over 1000 units prints a JSON report with the timing and every stage's cohort."""
        bench_simulate.main(["--units", "1000", "--repeats", "1", "--json"])
        report = json.loads(capsys.readouterr().out)
        assert set(report) == {"meta", "timing", "stages", "ok"}
        assert report["meta"]["units"] == 1000
        assert {"best_s", "runs_s", "target_s", "pass"} <= set(report["timing"])
        assert [row["percent"] for row in report["stages"]] == [1.0, 5.0, 25.0, 100.0]
        assert report["stages"][-1]["count"] == 1000
        assert all(row["expected"] == row["percent"] / 100 for row in report["stages"])

    def test_small_run_prints_a_table(
        self, bench_simulate: ModuleType, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without --json the run prints the stages and the best time against the target."""
        bench_simulate.main(["--units", "1000", "--repeats", "1"])
        out = capsys.readouterr().out
        assert "simulate(): 1000 units, 4 stages" in out
        assert "target <= 3.000 s" in out


@pytest.fixture(name="bench_patterns")
def _bench_patterns(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    yield importlib.import_module("bench_patterns")
    sys.modules.pop("bench_patterns", None)
    structlog.reset_defaults()


class TestBenchPatterns:
    def test_runs_and_reports_the_shadow_against_the_guard(
        self, bench_patterns: ModuleType, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A one-loop run reports every candidate and the shadow/guard overhead ratio."""
        assert bench_patterns.main(["--json", "--loops", "1", "--repeats", "1"]) == 0
        results = json.loads(capsys.readouterr().out)["results"]
        ratio = results.pop("shadow overhead outside / guard overhead")
        assert ratio["target"] == 1.0
        assert isinstance(ratio["pass"], bool)
        assert {"bare old call", "guarded call, outside", "shadowed call, outside"} <= set(results)
        assert all(r["ns"] > 0 for r in results.values())

    def test_prints_a_table(
        self, bench_patterns: ModuleType, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without --json, a table and the verdict."""
        assert bench_patterns.main(["--loops", "1", "--repeats", "1"]) == 0
        out = capsys.readouterr().out
        assert "shadowed call, inside" in out
        assert "shadow overhead outside / guard overhead:" in out
