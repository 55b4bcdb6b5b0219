"""Tests of the Prometheus exporter, against a real ``prometheus_client`` registry."""

from __future__ import annotations

import dataclasses
import os
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from exporting import PolicyFile, import_without, race, scripted
from stagedroll import (
    Rollouts,
    RolloutStatus,
    Snapshot,
    SQLiteStore,
    Status,
    TransitionError,
    TransitionEvent,
)
from stagedroll.exporters.prometheus import StagedrollCollector, register, serve
from stagedroll.testing import FakeClock

NAME = "checkout"
ARMS = ("control", "treatment", "targeted")


def policy(*, health: bool = True) -> dict[str, Any]:
    return {
        "rollouts": {
            NAME: {
                "stages": [
                    {"name": "half", "percent": 50},
                    {"name": "most", "percent": 80},
                    {"name": "all", "percent": 100},
                ],
                "health": {"enabled": health},
            }
        }
    }


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def calls(registry: CollectorRegistry, arm: str, outcome: str) -> float:
    found = value(registry, "stagedroll_calls_total", rollout=NAME, arm=arm, outcome=outcome)
    assert found is not None
    return found


def total_calls(registry: CollectorRegistry) -> float:
    return sum(calls(registry, arm, o) for arm in ARMS for o in ("success", "error", "fallback"))


@pytest.fixture(name="registry")
def _registry() -> CollectorRegistry:
    return CollectorRegistry()


class TestAfterAScriptedRollout:
    @pytest.fixture(name="scraped")
    def _scraped(self, registry: CollectorRegistry) -> tuple[Rollouts, RolloutStatus, Snapshot]:
        rollouts = Rollouts(policy(), clock=FakeClock(1000.0))

        def broken(event: TransitionEvent) -> None:
            raise RuntimeError("a broken hook")  # counted as an internal failure

        rollouts.on_transition(broken)
        register(rollouts, registry)
        scripted(rollouts, NAME)
        generate_latest(registry)  # a scrape, as Prometheus makes them
        return rollouts, rollouts.status(NAME), rollouts.snapshot()

    def test_the_rollout_was_frozen_by_the_gate(
        self, scraped: tuple[Rollouts, RolloutStatus, Snapshot]
    ) -> None:
        """The script exercises both arms, both paths' errors, and the gate's freeze."""
        _, status, snapshot = scraped
        assert status.status is Status.FROZEN
        assert status.control.calls
        assert status.control.errors
        assert status.treatment.fallbacks
        assert status.treatment.calls > status.treatment.errors
        assert snapshot.failures["hook.failed"] == 1

    def test_calls_equal_the_status(
        self, scraped: tuple[Rollouts, RolloutStatus, Snapshot], registry: CollectorRegistry
    ) -> None:
        """Each arm's success, error and fallback counters add up to what ``status()`` says."""
        _, status, _ = scraped
        for arm in ARMS:
            stats = getattr(status, arm)
            success, error = calls(registry, arm, "success"), calls(registry, arm, "error")
            fallback = calls(registry, arm, "fallback")
            assert success + error + fallback == stats.calls
            assert error + fallback == stats.errors
            assert fallback == stats.fallbacks

    def test_durations_equal_the_timed_calls(
        self, scraped: tuple[Rollouts, RolloutStatus, Snapshot], registry: CollectorRegistry
    ) -> None:
        """The latency summary counts the timed calls, and sums to their mean times the count."""
        _, status, _ = scraped
        for arm in ARMS:
            stats = getattr(status, arm)
            labels = {"rollout": NAME, "arm": arm}
            count = registry.get_sample_value("stagedroll_call_duration_seconds_count", labels)
            total = registry.get_sample_value("stagedroll_call_duration_seconds_sum", labels)
            assert count == stats.timed
            assert total == pytest.approx((stats.mean_latency_s or 0.0) * stats.timed)

    def test_state_stage_and_percent_equal_the_status(
        self, scraped: tuple[Rollouts, RolloutStatus, Snapshot], registry: CollectorRegistry
    ) -> None:
        """The state set has 1 for the status only; percent, stage and info are the status's."""
        _, status, _snapshot = scraped
        for state in Status:
            expected = 1.0 if state is status.status else 0.0
            assert value(registry, "stagedroll_rollout_state", rollout=NAME, state=str(state)) == (
                expected
            )
        assert value(registry, "stagedroll_rollout_percent", rollout=NAME) == status.percent
        assert value(registry, "stagedroll_rollout_stage", rollout=NAME) == status.stage
        info = {"rollout": NAME, "environment": "", "stage": "half", "mode": "stages"}
        assert registry.get_sample_value("stagedroll_rollout_info", info) == 1.0
        assert value(registry, "stagedroll_rollout_since_seconds", rollout=NAME) == status.since

    def test_gate_evidence_and_thresholds_equal_the_health_report(
        self, scraped: tuple[Rollouts, RolloutStatus, Snapshot], registry: CollectorRegistry
    ) -> None:
        """The e-values, thresholds, units and events are the health report's."""
        _, status, _ = scraped
        h = status.health
        for test, e in (
            ("errors", h.e_errors),
            ("latency", h.e_latency),
            ("sample_ratio", h.e_sample_ratio),
        ):
            assert value(registry, "stagedroll_gate_evidence", rollout=NAME, test=test) == e
        threshold = "stagedroll_gate_threshold"
        assert value(registry, threshold, rollout=NAME, test="errors", step="freeze") == (
            h.freeze_at_errors
        )
        assert value(registry, threshold, rollout=NAME, test="errors", step="rollback") == (
            h.rollback_at_errors
        )
        # The latency test is off: its thresholds are infinite, and not exported.
        assert value(registry, threshold, rollout=NAME, test="latency", step="freeze") is None
        units = "stagedroll_gate_units"
        assert value(registry, units, rollout=NAME, arm="treatment") == h.units_treatment
        assert value(registry, units, rollout=NAME, arm="control") == h.units_control
        events = "stagedroll_gate_events"
        assert value(registry, events, rollout=NAME, arm="treatment", kind="error") == (
            h.error_events_treatment
        )

    def test_transitions_and_failures_are_counted(
        self, scraped: tuple[Rollouts, RolloutStatus, Snapshot], registry: CollectorRegistry
    ) -> None:
        """The gate's freeze is one transition by ``health_gate``; the broken hook a failure."""
        rollouts, _, snapshot = scraped
        assert value(
            registry, "stagedroll_transitions_total", rollout=NAME, action="freeze",
            trigger="health_gate",
        ) == 1.0  # fmt: skip
        rollouts.unfreeze(NAME, actor="alice")
        assert value(
            registry, "stagedroll_transitions_total", rollout=NAME, action="unfreeze",
            trigger="operator",
        ) == 1.0  # fmt: skip
        for kind, count in rollouts.snapshot().failures.items():
            assert value(registry, "stagedroll_internal_failures_total", kind=kind) == count
        assert snapshot.failures


class TestMonotonic:
    def test_a_counter_survives_an_advance(self, registry: CollectorRegistry) -> None:
        """The stage's counters start again after an advance; the exported ones go on."""
        rollouts = Rollouts(policy(health=False))
        register(rollouts, registry)
        for i in range(100):
            rollouts.report(NAME, f"user-{i}", error=i % 10 == 0, latency_s=0.001)
        before = total_calls(registry)
        assert before == 100
        rollouts.advance(NAME, actor="alice")
        assert rollouts.status(NAME).control.calls == 0  # the new visit counts from zero
        assert total_calls(registry) == before
        for i in range(10):
            rollouts.report(NAME, f"user-{i}", error=False, latency_s=0.001)
        assert total_calls(registry) == before + 10

    def test_a_visit_left_and_back_between_two_scrapes(self, registry: CollectorRegistry) -> None:
        """An advance and a rollback between two scrapes, with more calls than before: the
        stage is the same, the counters are not mistaken for the old visit's."""
        rollouts = Rollouts(policy(health=False))
        register(rollouts, registry)
        for i in range(20):
            rollouts.report(NAME, f"user-{i}", error=False)
        assert total_calls(registry) == 20
        rollouts.advance(NAME, actor="alice")
        rollouts.rollback(NAME, actor="alice")
        for i in range(50):
            rollouts.report(NAME, f"user-{i}", error=False)
        assert total_calls(registry) == 70

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.lists(
            st.one_of(
                st.tuples(st.just("calls"), st.integers(0, 30)),
                st.sampled_from([("scrape", 0), ("advance", 0), ("rollback", 0)]),
            ),
            max_size=25,
        )
    )
    def test_counters_never_go_down(self, ops: list[tuple[str, int]]) -> None:
        """Whatever the calls, stage changes and scrapes, each exported counter never goes
        down, and every scrape counts every call, however many visits ended since the last
        (``RolloutStatus.totals``)."""
        rollouts = Rollouts(policy(health=False))
        registry = CollectorRegistry()
        register(rollouts, registry)
        made, last = 0, 0.0
        for op, n in ops:
            if op == "calls":
                for i in range(n):
                    rollouts.report(NAME, f"user-{made + i}", error=i % 3 == 0, latency_s=0.01)
                made += n
                continue
            if op == "scrape":
                now = total_calls(registry)
                assert now >= last
                assert now == made
                last = now
                continue
            try:
                if op == "advance":
                    rollouts.advance(NAME, actor="hypothesis")
                elif op == "rollback":
                    rollouts.rollback(NAME, actor="hypothesis")
            except TransitionError:
                pass
        assert total_calls(registry) == made


COUNTERS = {"stagedroll_calls_total", "stagedroll_call_duration_seconds_count",
            "stagedroll_call_duration_seconds_sum", "stagedroll_transitions_total"}  # fmt: skip


def exported(registry: CollectorRegistry, rollout: str) -> set[str]:
    """The names of the samples ``registry`` exports for ``rollout``."""
    return {
        sample.name
        for family in registry.collect()
        for sample in family.samples
        if sample.labels.get("rollout") == rollout and not sample.name.endswith("_created")
    }


class TestRemovedByAReload:
    def test_its_gauges_go_its_counters_stay_and_it_comes_back(
        self, registry: CollectorRegistry, tmp_path: Path
    ) -> None:
        """A rollout frozen, then removed from the policy file: no state (the alert on a
        frozen rollout would page forever), no age, no evidence; its counters stay. Back in
        the file, its gauges are back."""
        file = PolicyFile(tmp_path / "rollouts.toml", NAME, "other")
        rollouts = file.load()
        register(rollouts, registry)
        scripted(rollouts, NAME)  # calls on both arms, until the gate freezes it
        frozen = {"rollout": NAME, "state": "frozen"}
        assert value(registry, "stagedroll_rollout_state", **frozen) == 1.0
        assert exported(registry, NAME) > COUNTERS | {"stagedroll_gate_evidence"}
        before = total_calls(registry)
        assert before > 0

        file.keep(rollouts, "other")
        assert NAME in rollouts.snapshot().rollouts  # still in the snapshot, out of the policy
        assert not rollouts.snapshot().rollouts[NAME].in_policy
        assert exported(registry, NAME) == COUNTERS
        assert value(registry, "stagedroll_rollout_state", **frozen) is None
        assert total_calls(registry) == before
        assert value(
            registry, "stagedroll_transitions_total", rollout=NAME, action="freeze",
            trigger="health_gate",
        ) == 1.0  # fmt: skip
        assert value(registry, "stagedroll_rollout_state", rollout="other", state="running") == 1

        file.keep(rollouts, NAME, "other")
        assert rollouts.snapshot().rollouts[NAME].in_policy
        assert "stagedroll_rollout_state" in exported(registry, NAME)
        assert "stagedroll_gate_evidence" in exported(registry, NAME)
        state = rollouts.status(NAME).status
        assert value(registry, "stagedroll_rollout_state", rollout=NAME, state=str(state)) == 1
        assert total_calls(registry) >= before


class TestConcurrency:
    def test_scrapes_racing_calls_and_transitions_never_raise(
        self, registry: CollectorRegistry
    ) -> None:
        """Four threads of guarded calls and one of transitions, while the main thread
        scrapes: every scrape succeeds and no counter goes down."""
        rollouts = Rollouts(policy(health=False))
        register(rollouts, registry)

        def scrape() -> float:
            text = generate_latest(registry)
            assert b"stagedroll_calls_total" in text
            return total_calls(registry)

        race(rollouts, NAME, scrape, rounds=30)
        assert total_calls(registry) <= 4 * 3000

    def test_a_rollout_that_fails_to_read_is_left_out(
        self, registry: CollectorRegistry, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A rollout whose status cannot be read is logged and skipped; the scrape succeeds
        with the others."""

        class Broken(Rollouts):
            def snapshot(self) -> Snapshot:
                snapshot = super().snapshot()
                rollouts = dict(snapshot.rollouts)
                rollouts["bad"] = dataclasses.replace(
                    rollouts[NAME],
                    rollout="bad",
                    totals=None,  # type: ignore[arg-type]
                )
                return dataclasses.replace(snapshot, rollouts=rollouts)

        rollouts = Broken(policy())
        register(rollouts, registry)
        text = generate_latest(registry).decode()
        assert f'rollout="{NAME}"' in text
        assert 'rollout="bad"' not in text
        assert "exporter.read_failed" in capsys.readouterr().out


class TestRegistering:
    def test_twice_in_one_registry_is_refused(self, registry: CollectorRegistry) -> None:
        """A second collector of the same families in one registry is prometheus_client's
        ``DuplicateTimeseries``, a ``ValueError`` (as docs/observability.md says)."""
        rollouts = Rollouts(policy())
        collector = register(rollouts, registry)
        assert isinstance(collector, StagedrollCollector)
        with pytest.raises(ValueError, match="Duplicated timeseries"):
            register(rollouts, registry)
        registry.unregister(collector)
        register(rollouts, registry)

    def test_serve_on_a_free_port(self) -> None:
        """``serve`` binds 127.0.0.1 by default, serves the families, and closes."""
        rollouts = Rollouts(policy())
        server = serve(rollouts, port=0)
        try:
            assert server.url == f"http://127.0.0.1:{server.port}/metrics"
            with urllib.request.urlopen(server.url, timeout=10) as response:
                text = response.read().decode()
            assert f'stagedroll_rollout_percent{{rollout="{NAME}"}} 50.0' in text
        finally:
            server.close()

    def test_the_extra_missing_gives_an_install_hint(self, tmp_path: Path) -> None:
        """Without prometheus-client, importing the exporter says which extra to install."""
        out = import_without("prometheus_client", "stagedroll.exporters.prometheus", tmp_path)
        assert "pip install 'stagedroll[prometheus]'" in out


class TestMultiprocess:
    def test_workers_sharing_a_store(self, tmp_path: Path) -> None:
        """Two workers on one SQLite store: the fleet-wide gauges (state, percent) are the
        same in both; each counts its own calls, and the sum over workers is every call."""
        store_path = tmp_path / "state.db"
        workers = [Rollouts(policy(), store=SQLiteStore(store_path)) for _ in range(2)]
        registries = [CollectorRegistry() for _ in workers]
        for worker, registry in zip(workers, registries, strict=True):
            register(worker, registry)
        try:
            for k, worker in enumerate(workers):
                for i in range(30 * (k + 1)):
                    worker.report(NAME, f"user-{k}-{i}", error=False)
            workers[0].freeze(NAME, actor="alice")
            for worker in workers:
                worker.status(NAME)  # each reads the store (its refresh thread would, too)
            for registry in registries:
                frozen = value(registry, "stagedroll_rollout_state", rollout=NAME, state="frozen")
                assert frozen == 1.0
                assert value(registry, "stagedroll_rollout_percent", rollout=NAME) == 50.0
            assert [total_calls(r) for r in registries] == [30, 60]
            assert sum(total_calls(r) for r in registries) == 90
            workers[0].status(NAME)  # the first worker reads the second one's evidence too
            units = [
                value(r, "stagedroll_gate_units", rollout=NAME, arm="treatment") for r in registries
            ]
            assert units[0] == units[1] == workers[1].status(NAME).health.units_treatment
        finally:
            for worker in workers:
                worker.store.close()

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
    def test_a_collector_made_before_a_fork_counts_the_child_alone(
        self, registry: CollectorRegistry
    ) -> None:
        """Registered in the parent (gunicorn ``--preload``), a child's counters start from
        zero: the parent's calls are not counted again by every worker."""
        rollouts = Rollouts(policy(health=False))
        register(rollouts, registry)
        for i in range(25):
            rollouts.report(NAME, f"user-{i}", error=False)
        assert total_calls(registry) == 25
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report what it scrapes, and leave at once
            try:
                before = total_calls(registry)
                for i in range(3):
                    rollouts.report(NAME, f"user-{i}", error=False)
                os.write(write, f"{before} {total_calls(registry)}".encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            got = pipe.read()
        os.waitpid(pid, 0)
        assert got == "0.0 3.0"
        assert total_calls(registry) == 25  # the parent's own, unchanged
