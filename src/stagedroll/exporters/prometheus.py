"""Prometheus metrics of rollouts (extra ``stagedroll[prometheus]``).

:func:`register` adds a :class:`StagedrollCollector` to a registry: at each scrape it reads
:meth:`Rollouts.snapshot <stagedroll.Rollouts.snapshot>` (no store I/O) and turns it into
the families listed in ``docs/observability.md``. A guarded call pays nothing for it: the
collector reads the counters the calls keep anyway, and never watches outcomes.
:func:`serve` starts an HTTP server of its own for a service with no ``/metrics``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator
from typing import cast
from wsgiref.simple_server import WSGIServer

from stagedroll import Rollouts
from stagedroll.exceptions import MissingExtraError

from ._samples import (
    ARMS,
    OUTCOMES,
    STATES,
    RolloutSample,
    Sample,
    Totals,
    evidence,
    skipped,
    thresholds,
)

try:
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        InfoMetricFamily,
        SummaryMetricFamily,
    )
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector
except ImportError:  # pragma: no cover - the extra's absence is tested in a subprocess
    raise MissingExtraError("The Prometheus exporter", "prometheus", "prometheus_client") from None

__all__ = ["MetricsServer", "StagedrollCollector", "register", "serve"]

_Family = CounterMetricFamily | GaugeMetricFamily | InfoMetricFamily | SummaryMetricFamily


def _families() -> dict[str, _Family]:
    """Every family the collector exports, empty, by name (as ``describe`` shows them)."""
    gauge, counter = GaugeMetricFamily, CounterMetricFamily
    r = ["rollout"]
    return {
        "info": InfoMetricFamily(
            "stagedroll_rollout",
            "Where a rollout stands: environment, stage name and mode (value 1).",
            labels=["rollout"],
        ),
        "percent": gauge(
            "stagedroll_rollout_percent", "The percent of units on the new path here.", labels=r
        ),
        "stage": gauge(
            "stagedroll_rollout_stage",
            "The index of the current stage in the ladder (-1: before the first).",
            labels=r,
        ),
        "state": gauge(
            "stagedroll_rollout_state",
            "1 for the rollout's status (running, frozen, rolled_back, killed, complete), else 0.",
            labels=[*r, "state"],
        ),
        "since": gauge(
            "stagedroll_rollout_since_seconds",
            "When the current state began (status.since, seconds since the epoch).",
            labels=r,
        ),
        "age": gauge(
            "stagedroll_rollout_state_age_seconds",
            "Seconds since the current state began, at the scrape.",
            labels=r,
        ),
        "calls": counter(
            "stagedroll_calls",
            "Calls this process recorded, by arm and outcome (error: reached the caller; "
            "fallback: the new path failed and the old one answered).",
            labels=[*r, "arm", "outcome"],
        ),
        "duration": SummaryMetricFamily(
            "stagedroll_call_duration_seconds",
            "Latency of the calls this process timed (every call on an arm a latency test "
            "watches, else one in 16), by arm.",
            labels=[*r, "arm"],
        ),
        "evidence": gauge(
            "stagedroll_gate_evidence",
            "The health gate's e-value per test (errors, latency, sample_ratio); 1 at start.",
            labels=[*r, "test"],
        ),
        "threshold": gauge(
            "stagedroll_gate_threshold",
            "The e-value at which a test makes the gate step (freeze, rollback).",
            labels=[*r, "test", "step"],
        ),
        "ratio": gauge(
            "stagedroll_gate_ratio",
            "The estimated ratio of the new path's error or slow-call rate to the old one's.",
            labels=[*r, "test"],
        ),
        "units": gauge(
            "stagedroll_gate_units",
            "Distinct units the gate counted in the evidence epoch, pooled, per compared arm.",
            labels=[*r, "arm"],
        ),
        "events": gauge(
            "stagedroll_gate_events",
            "First error or slow-call events per unit in the evidence epoch, pooled, per arm.",
            labels=[*r, "arm", "kind"],
        ),
        "sample_ratio_ok": gauge(
            "stagedroll_gate_sample_ratio_ok",
            "0 once the sample-ratio test fired in this stage visit (advances stop), else 1.",
            labels=r,
        ),
        "transitions": counter(
            "stagedroll_transitions",
            "Transitions this process made, by action and trigger (operator, health_gate).",
            labels=[*r, "action", "trigger"],
        ),
        "failures": counter(
            "stagedroll_internal_failures",
            "Failures inside stagedroll in this process, by kind (docs/failure-modes.md).",
            labels=["kind"],
        ),
    }


class _Rows:
    """The samples of one rollout, built whole before any is added to a family."""

    __slots__ = ("durations", "info", "values")

    def __init__(self) -> None:
        self.values: list[tuple[str, list[str], float]] = []
        self.info: list[tuple[list[str], dict[str, str]]] = []
        self.durations: list[tuple[list[str], int, float]] = []


def _rows(sample: RolloutSample, at: float) -> _Rows:
    """The rollout's samples: its counters, and its gauges if the policy has it."""
    s, rows = sample.status, _Rows()
    name, add = s.rollout, rows.values.append
    for arm in ARMS:
        totals = sample.arms[arm]
        for outcome in OUTCOMES:
            add(("calls", [name, arm, outcome], float(totals.outcome(outcome))))
        rows.durations.append(([name, arm], totals.timed, totals.latency_s))
    if not sample.in_policy:  # removed by a reloaded policy: no state to alert on
        return rows
    info = {"environment": s.environment or "", "stage": s.stage_name or "", "mode": s.mode}
    rows.info.append(([name], info))
    add(("percent", [name], float(s.percent)))
    add(("stage", [name], float(s.stage)))
    add(("since", [name], float(s.since)))
    add(("age", [name], max(0.0, float(at - s.since))))
    for state in STATES:
        add(("state", [name, state], 1.0 if str(s.status) == state else 0.0))
    h = s.health
    if not h.enabled:
        return rows
    for test, e in evidence(h):
        add(("evidence", [name, test], float(e)))
    add(("sample_ratio_ok", [name], 1.0 if h.sample_ratio_ok else 0.0))
    add(("units", [name, "control"], float(h.units_control)))
    add(("units", [name, "treatment"], float(h.units_treatment)))
    add(("events", [name, "control", "error"], float(h.error_events_control)))
    add(("events", [name, "treatment", "error"], float(h.error_events_treatment)))
    add(("events", [name, "control", "slow"], float(h.slow_events_control)))
    add(("events", [name, "treatment", "slow"], float(h.slow_events_treatment)))
    for test, step, limit in thresholds(h):
        add(("threshold", [name, test, step], float(limit)))
    for test, ratio in (("errors", h.r_errors), ("latency", h.r_latency)):
        if ratio is not None and math.isfinite(ratio):
            add(("ratio", [name, test], float(ratio)))
    return rows


def _fill(families: dict[str, _Family], sample: Sample) -> None:
    # Each key holds the family _families made for it.
    info = cast(InfoMetricFamily, families["info"])
    duration = cast(SummaryMetricFamily, families["duration"])
    for rollout in sample.rollouts:
        try:
            rows = _rows(rollout, sample.snapshot.at)
        except Exception as exc:  # a failing read: log, and leave that rollout out
            skipped("prometheus", rollout.status.rollout, exc)
            continue
        for labels, values in rows.info:
            info.add_metric(labels, values)
        for labels, count, total in rows.durations:
            duration.add_metric(labels, count_value=count, sum_value=total)
        for key, labels, value in rows.values:
            cast(GaugeMetricFamily, families[key]).add_metric(labels, value)
    transitions = cast(CounterMetricFamily, families["transitions"])
    failures = cast(CounterMetricFamily, families["failures"])
    for (name, action, trigger), count in sorted(sample.transitions.items()):
        transitions.add_metric([name, action, trigger], float(count))
    for kind, n in sorted(sample.snapshot.failures.items()):
        failures.add_metric([kind], float(n))


class StagedrollCollector(Collector):
    """Reads a :class:`~stagedroll.Rollouts`' snapshot at each scrape (see :func:`register`).

    Thread-safe; a scrape never raises because of stagedroll (a rollout that fails to read
    is logged, ``exporter.read_failed``, and left out of that scrape). The counters are
    monotonic across stage visits: see ``docs/observability.md``.
    """

    def __init__(self, rollouts: Rollouts) -> None:
        self._totals = Totals(rollouts)

    @property
    def rollouts(self) -> Rollouts:
        """The rollouts it reads."""
        return self._totals.rollouts

    def describe(self) -> Iterable[Metric]:
        """The families, without samples (a registry checks their names against others')."""
        return list(_families().values())

    def collect(self) -> Iterator[Metric]:
        """Every family, read from the snapshot now."""
        families = _families()
        try:
            _fill(families, self._totals.read("prometheus"))
        except Exception as exc:  # never raise into a scrape
            skipped("prometheus", None, exc)
            families = _families()
        yield from families.values()

    def close(self) -> None:
        """Stop counting transitions (the registry still holds the collector: unregister it)."""
        self._totals.stop()

    def __repr__(self) -> str:
        return f"<StagedrollCollector {sorted(self.rollouts)}>"


def register(rollouts: Rollouts, registry: CollectorRegistry | None = None) -> StagedrollCollector:
    """Add a collector of ``rollouts`` to ``registry`` (the default registry: ``None``).

    Returns the collector (``registry.unregister(collector)`` removes it). Raises
    prometheus_client's ``DuplicateTimeseries`` (a :class:`ValueError`) if a collector of
    stagedroll's families is already in ``registry`` (registering twice on one registry),
    and :class:`~stagedroll.exceptions.MissingExtraError` (when this module is imported)
    without ``prometheus-client``.
    """
    collector = StagedrollCollector(rollouts)
    try:
        (REGISTRY if registry is None else registry).register(collector)
    except BaseException:
        collector.close()
        raise
    return collector


class MetricsServer:
    """The HTTP server :func:`serve` started: its address, and :meth:`close`."""

    def __init__(
        self,
        server: WSGIServer,
        thread: threading.Thread,
        registry: CollectorRegistry,
        collector: StagedrollCollector,
    ) -> None:
        self.server, self.thread, self.registry = server, thread, registry
        self.collector = collector

    @property
    def port(self) -> int:
        """The port it listens on (the one chosen when ``serve`` was given 0)."""
        return int(self.server.server_port)

    @property
    def url(self) -> str:
        """The URL of its metrics."""
        host = str(self.server.server_address[0])
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and free the port."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
        self.collector.close()

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url}>"


def serve(rollouts: Rollouts, port: int = 9464, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve the metrics of ``rollouts`` (and only those) on ``http://addr:port/metrics``.

    For a service without a ``/metrics`` of its own; the server runs on a daemon thread.
    Binds to ``127.0.0.1`` unless told otherwise (``addr="0.0.0.0"`` for a scraper on
    another host); ``port=0`` picks a free port (:attr:`MetricsServer.port`).
    """
    registry = CollectorRegistry(auto_describe=True)
    collector = register(rollouts, registry)
    try:
        server, thread = start_http_server(port, addr=addr, registry=registry)
    except BaseException:
        collector.close()
        raise
    return MetricsServer(server, thread, registry, collector)
