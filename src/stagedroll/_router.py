"""``Router``: the one routing entry of a rollout, which guards, shadows and migrations share.

A router holds the :class:`~._plan.View` in force (its handle replaces it whole on every
transition or reload) and does the per-call work: decide a unit, route a call to the arm
whose counters record it, record the outcome, and feed the health gate the events it must
see. Recording and judging are apart: the counters (:class:`~._outcomes.Outcomes`) only
count, and return what the gate must see; the router feeds :class:`~._health.Health` under
the rollout's lock, and asks its handle for an automatic step when one may be due.

The common case, a plain view (only the bucket decides) and a text unit, is one hash and
one comparison. Four places repeat that test for speed, each pinned at the threshold's
boundary by the tests: :meth:`Rollout.enabled <stagedroll.Rollout.enabled>`,
:meth:`Router.route`, and the sync wrappers of a guard and of a shadow (a Python call
costs as much as half the hash).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import mmh3

from . import _override as override
from ._bucketing import unit_key
from ._decision import Decision, Reason
from ._errors import Errors
from ._failures import contained
from ._forksafe import register
from ._health import Health
from ._outcomes import ArmCounts, ObservedArm, Outcome, Outcomes, Sink
from ._plan import View
from ._runtime import Runtime

__all__ = ["Router"]

_hash = mmh3.hash
_CHECK_EVERY = 64  # outcomes recorded under the lock between two looks at the clock


def _is_latency(value: object) -> bool:
    if value.__class__ is float:  # the common case, a perf_counter difference
        return 0.0 <= value < math.inf  # NaN fails both comparisons
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value) and value >= 0
    except Exception:  # an int past float's range, a subclass whose comparisons raise
        return False


def _shown(value: object) -> str:
    """A bad latency, for the log: no user ``__repr__`` runs, and no huge number is printed."""
    if value.__class__ is float or value.__class__ is bool:
        return repr(value)
    if value.__class__ is int:
        bits = int.bit_length(value)
        return repr(value) if bits <= 64 else f"<int of {bits} bits>"
    return f"<{type(value).__name__}>"


def unit_text(unit: object, attributes: object) -> str | None:
    """Check a call's arguments; return the unit as text. Wrong types raise TypeError."""
    if (
        attributes is not None
        and attributes.__class__ is not dict
        and not isinstance(attributes, Mapping)
    ):
        raise TypeError(f"attributes must be a mapping, not {type(attributes).__name__}")
    return unit if unit is None or unit.__class__ is str else unit_key(unit)


class Router:
    """Decide, route and record the calls of one rollout; feed its health gate.

    :attr:`view` is the view in force; :attr:`outcomes` and :attr:`health` the counters
    and the gate of the current plan. :attr:`step` is called when an automatic step may
    be due (``None`` where the store's thread takes the steps). ``forced`` counts the
    test overrides active anywhere and ``sinks`` the outcome listeners: either takes the
    rollout off the fast path (the handle rebuilds the view).
    """

    __slots__ = (
        "__weakref__",
        "errors",
        "forced",
        "handle",
        "health",
        "lock",
        "name",
        "outcomes",
        "plain",
        "runtime",
        "sinks",
        "step",
        "view",
    )

    def __init__(self, name: str, runtime: Runtime) -> None:
        self.name = name
        self.runtime = runtime
        self.lock = threading.Lock()
        """The rollout's counting lock: the counters and the gate change under it."""
        self.outcomes = Outcomes(lock=self.lock)
        self.errors = Errors(name, runtime.clock, time.monotonic)
        """The recent exceptions of both paths (``status`` shows them; the new path's logged)."""
        self.health: Health | None = None
        """The health gate, or ``None`` (disabled, or the environment does not follow stages)."""
        self.step: Callable[[], None] | None = None
        self.forced = 0
        self.plain = not runtime.context
        """Whether a decision needs neither the context's attributes nor an override."""
        self.handle: object = self
        """The handle this router serves: what a test override of one ``Rollouts`` names."""
        self.sinks: tuple[Sink, ...] = ()
        self.view: View  # set by the handle before the first call
        register(self)

    def _after_fork(self) -> None:
        self.lock = threading.Lock()
        self.outcomes.lock = self.lock
        if self.health is not None:
            self.health.after_fork()

    # -- decisions -------------------------------------------------------------------------------

    def attributes(self, attributes: object) -> Any:
        """The call's attributes over the ``Rollouts``' context (the call's win).

        Typed loosely on purpose: a caller may pass anything, which ``unit_text`` refuses.
        """
        context = self.runtime.context
        if not context:
            return attributes
        if attributes is None:
            return context
        if not isinstance(attributes, Mapping):
            return attributes  # unit_text refuses it, with its own message
        return {**context, **attributes}

    def failed(self, exc: Exception) -> None:
        self.runtime.failures.record("decision.failed", exc, rollout=self.name)

    def enabled(self, unit: object, attributes: Mapping[str, object] | None) -> bool:
        """Whether the new path is on for ``unit``, off the fast path."""
        attributes = self.attributes(attributes)
        key = unit_text(unit, attributes)
        if self.forced:
            enabled = override.forced(self.handle, self.name, key)
            if enabled is not None:
                return enabled
        try:
            return self.view.enabled(key, attributes)
        except Exception as exc:
            self.failed(exc)
            return False

    def decide(self, v: View, unit: object, attributes: Mapping[str, object] | None) -> Decision:
        """The decision of view ``v`` for ``unit``; wrong argument types raise TypeError."""
        if self.runtime.context:
            attributes = self.attributes(attributes)
        if unit.__class__ is str and (attributes is None or attributes.__class__ is dict):
            key: str | None = unit  # checked by the class test
        else:
            key = unit_text(unit, attributes)
        if self.forced:
            enabled = override.forced(self.handle, self.name, key)
            if enabled is not None:
                return Decision(self.name, enabled, Reason.OVERRIDE, v.stage_name, v.percent)
        try:
            return v.evaluate(key, attributes)
        except Exception as exc:
            self.failed(exc)
            return Decision(self.name, False, Reason.ERROR)

    def key_of(self, v: View, unit: object, attributes: Mapping[str, object] | None) -> str | None:
        """The text that ``unit`` is bucketed on under ``v`` (``None``: none)."""
        return v.key_of(unit, self.attributes(attributes))

    # -- routing ---------------------------------------------------------------------------------

    def route(
        self, unit: object, attributes: Mapping[str, object] | None = None
    ) -> tuple[ArmCounts, str | None]:
        """Return the counters of the arm that ``unit`` takes, and its bucketing key.

        ``arm.enabled`` says whether that is the new path; the key is ``None`` for a unit
        routed by targeting (not compared). Wrong argument types raise TypeError.
        """
        v = self.view
        if v.plain and unit.__class__ is str and unit.isascii():
            arm = v.treatment if _hash(v.prefix + unit, 0, False) < v.threshold else v.control
            return arm, unit
        attributes = self.attributes(attributes)
        key = unit_text(unit, attributes)
        if self.forced:
            enabled = override.forced(self.handle, self.name, key)
            if enabled is not None:  # like an allow or deny list: not compared
                arm = v.arms.targeted_on if enabled else v.arms.targeted_off
                return (self.observed(arm), key) if self.sinks else (arm, None)
        try:
            arm, bucketed = v.route(key, attributes)
        except Exception as exc:
            self.failed(exc)
            return self.observed(v.arms.targeted_off), key if self.sinks else None
        if self.sinks:  # a sink is told of the unit of a targeted call too
            return self.observed(arm), bucketed if bucketed is not None else key
        return arm, bucketed

    def sample(self) -> ArmCounts:
        """Route one call without a unit (per-request bucketing)."""
        v = self.view
        if not (self.forced or self.sinks):
            return v.sample()
        if self.forced:
            enabled = override.forced(self.handle, self.name, None)
            if enabled is not None:
                return self.observed(v.arms.targeted_on if enabled else v.arms.targeted_off)
        return self.observed(v.sample())

    def reraises(self) -> bool:
        """Whether a guard that leaves it to the policy re-raises the new path's exception."""
        forced = override.on_error()
        return self.runtime.raises if forced is None else forced == "raise"

    def routing_failed(self, exc: Exception) -> ArmCounts:
        """Count and log a failure to route a call; send the call to the old path."""
        self.runtime.failures.record("guard.routing_failed", exc, rollout=self.name)
        return self.observed(self.view.arms.targeted_off)

    def control_of(self, arm: ArmCounts) -> ArmCounts | None:
        """The old-path arm paired with ``arm`` (a shadow's cohort call), or ``None``.

        ``None`` when ``arm`` is not on the new path, or is no arm of the view in force (a
        transition came between).
        """
        if not arm.enabled:
            return None
        real = arm.real if isinstance(arm, ObservedArm) else arm
        arms = self.view.arms
        if real is arms.treatment:
            return self.observed(arms.control)
        if real is arms.targeted_on:
            return self.observed(arms.targeted_off)
        return None

    def observed(self, arm: ArmCounts) -> ArmCounts:
        """``arm``, or its stand-in that reports every outcome when sinks watch."""
        return ObservedArm(arm) if self.sinks else arm

    def tend(self) -> None:
        """The chores that a call does now and then (the policy file, the store's thread)."""
        runtime = self.runtime
        if runtime.chores:
            runtime.tend()

    # -- recording -------------------------------------------------------------------------------

    def record(
        self,
        arm: ArmCounts,
        key: str | None,
        *,
        error: bool,
        latency_s: float | None,
        fallback: bool = False,
        event: bool = True,
        exc: BaseException | None = None,
    ) -> None:
        """Add one outcome of unit ``key`` to ``arm``; never raises (failures are logged).

        ``exc`` is the exception of a failed call, kept among the rollout's recent errors
        (and logged, for the new path).

        A latency that is not a finite, non-negative number of seconds is dropped, counted
        and logged (``outcome.bad_latency``); the outcome itself is kept. ``event=False``
        counts an error without showing it to the gate as an event (a paired call whose two
        sides both failed tells nothing about which is worse).
        """
        if latency_s is not None and not _is_latency(latency_s):
            self.runtime.failures.record("outcome.bad_latency", rollout=self.name,
                                         latency=_shown(latency_s))  # fmt: skip
            latency_s = None
        if exc is not None:
            path = arm.real if arm.__class__ is ObservedArm else arm
            self.errors.note("treatment" if path.enabled else "control", exc, key)
        if arm.__class__ is ObservedArm:
            observed = arm
            self._tell(observed, key, error, latency_s, fallback)
            arm = observed.real
            key = key if arm.compared else None
        if not (error or fallback or latency_s is None):
            # The guards' inlined success: a lock-free append, folded in batches, unless the
            # call is slow or its unit new to the stage (the gate sees those at once).
            pending = arm.pending
            pending.append(latency_s)
            if (latency_s > arm.slow_at and key not in arm.slow_seen) or (
                arm.counting and key not in arm.units
            ):
                self.note(arm, key, latency_s)
            if len(pending) >= arm.fold_at:
                self.fold(arm)
            return
        due = False
        try:
            outcomes = self.outcomes
            with outcomes.lock:
                outcomes.add(arm, error, latency_s, fallback)
                health = self.health
                if health is not None and arm.compared:
                    due = health.observe(arm, key, error=error and event)
                    if arm.calls % _CHECK_EVERY == 0:  # no fold on this path: the clock
                        due = due or health.timed
        except Exception as failure:  # pragma: no cover - defensive: counting must not break
            self.runtime.failures.record("outcome.failed", failure, rollout=self.name)
        if due:
            self._due()

    def note(self, arm: ArmCounts, key: str | None, latency_s: float) -> None:
        """Show the gate a successful call (already counted) that may be an event."""
        if arm.__class__ is ObservedArm:  # every success of a watched rollout comes here
            observed = arm
            self._tell(observed, key, False, latency_s)
            arm = observed.real
            key = key if arm.compared else None
        due = False
        try:
            with self.outcomes.lock:
                health = self.health
                if health is not None and arm.compared:
                    due = health.note(arm, key, latency_s)
        except Exception as exc:  # pragma: no cover - defensive
            self.runtime.failures.record("outcome.failed", exc, rollout=self.name)
        if due:
            self._due()

    def fold(self, arm: ArmCounts) -> None:
        """Fold ``arm``'s pending latencies (its batch is full); check the automatic steps."""
        if arm.__class__ is ObservedArm:
            arm = arm.real
        if self.runtime.chores:  # a guarded call's batch: the policy file, the store's thread
            self.runtime.tend()
        due = False
        try:
            with self.outcomes.lock:
                due = self.fold_locked(arm)
        except Exception as exc:  # pragma: no cover - defensive
            self.runtime.failures.record("outcome.failed", exc, rollout=self.name)
        if due:
            self._due()

    def fold_locked(self, arm: ArmCounts) -> bool:
        """Fold ``arm``'s pending latencies (hold the lock); return whether a step may be due.

        The folded latencies of the control arm teach the gate its slow-call threshold.
        """
        batch = arm.fold()
        health = self.health
        if health is None or not arm.compared:
            return False
        if batch and not arm.enabled and arm.timed:  # an untimed arm teaches nothing
            health.learn(batch)
        return health.timed  # only the clock can have made a step due meanwhile

    def fold_all(self, v: View) -> None:
        """Fold every arm of ``v`` (hold the lock): the gate then sees every latency."""
        for arm in v.arms:
            self.fold_locked(arm)

    def _due(self) -> None:
        step = self.step
        if step is not None:
            try:
                step()
            except Exception as exc:  # pragma: no cover - the step catches what it expects
                self.runtime.failures.record("health.step_failed", exc, rollout=self.name)

    def _tell(
        self,
        arm: ObservedArm,
        key: str | None,
        error: bool,
        latency_s: float | None,
        fallback: bool = False,
    ) -> None:
        outcome = Outcome(self.name, key, arm.enabled, error, fallback, latency_s, arm.compared)
        for sink in self.sinks:
            self._tell_one(sink, outcome)

    def _tell_one(self, sink: Sink, outcome: Outcome) -> None:
        """Tell one outcome listener; what it raises is logged and counted, not raised."""
        try:
            sink(outcome)
        except BaseException as exc:
            if not contained(exc):
                raise
            self.runtime.failures.record("hook.failed", exc, rollout=self.name, hook="on_outcome")
