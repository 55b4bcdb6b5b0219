"""OpenTelemetry metrics and events of rollouts (extra ``stagedroll[otel]``: the API only).

:func:`instrument` creates observable instruments on a meter of the given (or the global)
meter provider; the SDK's reader calls them at each collection and they read
:meth:`Rollouts.snapshot <stagedroll.Rollouts.snapshot>`, so a guarded call pays nothing.
Each transition this process makes is emitted as an event (a log record with an
``event_name``) through the logs API. The instruments and attributes are listed in
``docs/observability.md``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator

from stagedroll import Rollouts, RolloutStatus, TransitionEvent, __version__
from stagedroll.exceptions import MissingExtraError

from ._samples import ARMS, OUTCOMES, STATES, Sample, Totals, evidence, skipped, thresholds

try:
    from opentelemetry import _logs as otel_logs
    from opentelemetry import metrics as otel_metrics
    from opentelemetry.metrics import CallbackOptions, Observation
except ImportError:  # pragma: no cover - the extra's absence is tested in a subprocess
    raise MissingExtraError("The OpenTelemetry exporter", "otel", "opentelemetry-api") from None

__all__ = ["TRANSITION_EVENT", "Instrumentation", "instrument"]

SCOPE = "stagedroll"
"""The instrumentation scope of the meter and the logger."""
TRANSITION_EVENT = "stagedroll.transition"
"""The ``event_name`` of the log record emitted for each transition."""
PROVIDER = "stagedroll"

_VARIANT = {"control": "old", "treatment": "new"}
_REASON = {"control": "split", "treatment": "split", "targeted": "targeting_match"}

Attributes = dict[str, str | int | float | bool]
Callback = Callable[[CallbackOptions], Iterable[Observation]]


def _flag(name: str) -> Attributes:
    return {"feature_flag.key": name, "feature_flag.provider.name": PROVIDER}


def _arm(name: str, arm: str) -> Attributes:
    attributes = {**_flag(name), "feature_flag.result.reason": _REASON[arm], "stagedroll.arm": arm}
    if arm in _VARIANT:  # targeted calls took either path: no single variant
        attributes["feature_flag.result.variant"] = _VARIANT[arm]
    return attributes


def _calls(sample: Sample) -> Iterable[Observation]:
    for rollout in sample.rollouts:
        for arm in ARMS:
            totals = rollout.arms[arm]
            for outcome in OUTCOMES:
                attributes = {**_arm(rollout.status.rollout, arm), "stagedroll.outcome": outcome}
                yield Observation(totals.outcome(outcome), attributes)


def _duration(sample: Sample) -> Iterable[Observation]:
    for rollout in sample.in_policy:
        status = rollout.status
        for arm, stats in (
            ("control", status.control),
            ("treatment", status.treatment),
            ("targeted", status.targeted),
        ):
            if stats.mean_latency_s is not None:
                yield Observation(float(stats.mean_latency_s), _arm(status.rollout, arm))


def _percent(sample: Sample) -> Iterable[Observation]:
    for rollout in sample.in_policy:
        status = rollout.status
        attributes = {
            **_flag(status.rollout),
            "stagedroll.environment": status.environment or "",
            "stagedroll.stage": status.stage_name or "",
            "stagedroll.mode": status.mode,
        }
        yield Observation(float(status.percent), attributes)


def _state(sample: Sample) -> Iterable[Observation]:
    for rollout in sample.in_policy:
        status = rollout.status
        for state in STATES:
            value = 1 if str(status.status) == state else 0
            yield Observation(value, {**_flag(status.rollout), "stagedroll.state": state})


def _gated(sample: Sample) -> Iterator[RolloutStatus]:
    """The status of each rollout the policy has whose health gate is on."""
    return (rollout.status for rollout in sample.in_policy if rollout.status.health.enabled)


def _evidence(sample: Sample) -> Iterable[Observation]:
    for status in _gated(sample):
        for test, value in evidence(status.health):
            yield Observation(float(value), {**_flag(status.rollout), "stagedroll.test": test})


def _threshold(sample: Sample) -> Iterable[Observation]:
    for status in _gated(sample):
        for test, step, value in thresholds(status.health):
            attributes = {
                **_flag(status.rollout), "stagedroll.test": test, "stagedroll.step": step
            }  # fmt: skip
            yield Observation(float(value), attributes)


def _transitions(sample: Sample) -> Iterable[Observation]:
    for (name, action, trigger), count in sorted(sample.transitions.items()):
        attributes = {**_flag(name), "stagedroll.action": action, "stagedroll.trigger": trigger}
        yield Observation(count, attributes)


def _failures(sample: Sample) -> Iterable[Observation]:
    for kind, count in sorted(sample.snapshot.failures.items()):
        yield Observation(count, {"stagedroll.failure.kind": kind})


class Instrumentation:
    """The instruments and the transition events :func:`instrument` set up; :meth:`stop` ends them.

    The OpenTelemetry API cannot remove an observable instrument: once stopped, its
    callbacks report nothing.
    """

    def __init__(
        self,
        rollouts: Rollouts,
        meter: otel_metrics.Meter,
        logger: otel_logs.Logger,
    ) -> None:
        self._totals = Totals(rollouts)
        self._logger = logger
        self._stopped = threading.Event()
        add = self._observable
        add(meter.create_observable_counter, "stagedroll.calls", _calls, "{call}",
            "Calls this process recorded, by arm and outcome.")  # fmt: skip
        add(meter.create_observable_gauge, "stagedroll.call.duration", _duration, "s",
            "Mean latency of the calls timed in the current stage visit, by arm.")  # fmt: skip
        add(meter.create_observable_gauge, "stagedroll.rollout.percent", _percent, "%",
            "The percent of units on the new path here.")  # fmt: skip
        add(meter.create_observable_gauge, "stagedroll.rollout.state", _state, "1",
            "1 for the rollout's status, 0 for the others.")  # fmt: skip
        add(meter.create_observable_gauge, "stagedroll.gate.evidence", _evidence, "1",
            "The health gate's e-value per test.")  # fmt: skip
        add(meter.create_observable_gauge, "stagedroll.gate.threshold", _threshold, "1",
            "The e-value at which a test makes the gate freeze or roll back.")  # fmt: skip
        add(meter.create_observable_counter, "stagedroll.transitions", _transitions,
            "{transition}", "Transitions this process made, by action and trigger.")  # fmt: skip
        add(meter.create_observable_counter, "stagedroll.internal_failures", _failures,
            "{failure}", "Failures inside stagedroll in this process, by kind.")  # fmt: skip
        rollouts.on_transition(self._emit)

    @property
    def rollouts(self) -> Rollouts:
        """The rollouts it reads."""
        return self._totals.rollouts

    def _observable(
        self,
        create: Callable[..., object],
        name: str,
        read: Callable[[Sample], Iterable[Observation]],
        unit: str,
        description: str,
    ) -> None:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            if self._stopped.is_set():
                return []
            try:
                return list(read(self._totals.read("otel")))
            except Exception as exc:  # never raise into a collection
                skipped("otel", None, exc)
                return []

        create(name, callbacks=[callback], unit=unit, description=description)

    def _emit(self, event: TransitionEvent) -> None:
        """Emit ``event`` as a log record named :data:`TRANSITION_EVENT`."""
        if self._stopped.is_set():
            return
        attributes: Attributes = {
            **_flag(event.rollout),
            "stagedroll.action": str(event.action),
            "stagedroll.trigger": "health_gate" if event.automatic else "operator",
            "stagedroll.from_stage": event.from_stage,
            "stagedroll.to_stage": event.to_stage,
            "stagedroll.to_status": str(event.to_status),
            "stagedroll.actor": event.actor,
            "stagedroll.reason": event.reason[:1000],
            "stagedroll.version": event.version,
        }
        if event.from_status is not None:
            attributes["stagedroll.from_status"] = str(event.from_status)
        if event.from_stage_name is not None:
            attributes["stagedroll.from_stage_name"] = event.from_stage_name
        if event.to_stage_name is not None:
            attributes["stagedroll.to_stage_name"] = event.to_stage_name
        for key, value in event.evidence.items():
            if isinstance(value, str | int | float) and not isinstance(value, bool):
                attributes[f"stagedroll.evidence.{key}"] = value
        warn = str(event.action) in ("freeze", "rollback", "kill")
        severity = otel_logs.SeverityNumber.WARN if warn else otel_logs.SeverityNumber.INFO
        body = f"{event.rollout}: {event.action.verb} ({event.reason or 'no reason'})"[:1000]
        at = int(event.at * 1e9)
        try:  # opentelemetry-api 1.35 and later: an event is a log record with an event_name
            record = otel_logs.LogRecord(
                timestamp=at, severity_number=severity, body=body, attributes=attributes,
                event_name=TRANSITION_EVENT,
            )  # fmt: skip
        except TypeError:  # earlier: the event.name attribute
            attributes["event.name"] = TRANSITION_EVENT
            record = otel_logs.LogRecord(
                timestamp=at, severity_number=severity, body=body, attributes=attributes
            )
        self._logger.emit(record)

    def stop(self) -> None:
        """Report nothing more: the instruments' callbacks go empty, no event is emitted."""
        self._stopped.set()
        self._totals.stop()
        with contextlib.suppress(ValueError):  # removed already
            self.rollouts.hooks.remove(self._emit)

    def __repr__(self) -> str:
        state = "stopped" if self._stopped.is_set() else "running"
        return f"<Instrumentation {sorted(self.rollouts)} {state}>"


def instrument(
    rollouts: Rollouts,
    meter_provider: otel_metrics.MeterProvider | None = None,
    *,
    logger_provider: otel_logs.LoggerProvider | None = None,
) -> Instrumentation:
    """Report the metrics of ``rollouts`` through OpenTelemetry, and its transitions as events.

    ``meter_provider`` and ``logger_provider`` default to the global ones (the API's no-op
    providers until an SDK sets them). Returns the :class:`Instrumentation`; call
    :meth:`Instrumentation.stop` to end it.
    """
    meter = otel_metrics.get_meter(SCOPE, __version__, meter_provider=meter_provider)
    logger = otel_logs.get_logger(SCOPE, __version__, logger_provider=logger_provider)
    return Instrumentation(rollouts, meter, logger)
