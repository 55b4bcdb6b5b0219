"""``Rollout``: the handle of one rollout, and the fast path of every decision."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import mmh3

from . import _override as override
from ._bucketing import unit_key
from ._decision import Decision, Reason
from ._forksafe import register
from ._guard import Tracking, guard
from ._health import Health
from ._outcomes import ArmCounts, ObservedArm, Outcome, Outcomes, Sink
from ._plan import Plan, View
from ._policy import RolloutPolicy
from ._pool import Outbox
from ._state import RolloutState, RolloutStatus, Transition, newer

if TYPE_CHECKING:
    from ._rollouts import Rollouts

__all__ = ["Rollout"]

P = ParamSpec("P")
R = TypeVar("R")

_hash = mmh3.hash


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


def _key(unit: object, attributes: object) -> str | None:
    """Check a call's arguments; return the unit as text. Wrong types raise TypeError."""
    if (
        attributes is not None
        and attributes.__class__ is not dict
        and not isinstance(attributes, Mapping)
    ):
        raise TypeError(f"attributes must be a mapping, not {type(attributes).__name__}")
    return unit if unit is None or unit.__class__ is str else unit_key(unit)


class Rollout:
    """One rollout of a :class:`Rollouts`: the fast handle for decisions, guards and transitions.

    Get one with ``rollouts["name"]``. There is one handle per name for the life of its
    :class:`Rollouts`: it stays valid across transitions and reloads, and the guards,
    shadows and migrations built on it always follow the current plan and state of the name
    (a reload that drops the rollout turns every call to the old path, one that brings it
    back turns them on again).
    """

    __slots__ = (
        "__weakref__",
        "_bound",
        "_forced",
        "_inline",
        "_lock",
        "_owner",
        "_plan",
        "_retry_at",
        "_sinks",
        "_view",
        "health",
        "name",
        "outcomes",
    )

    def __init__(self, owner: Rollouts, plan: Plan, state: RolloutState) -> None:
        self._owner = owner
        self._plan = plan
        self.name = plan.name
        self.health: Health | None = None
        """The health gate, or ``None`` (disabled, or the environment does not follow stages)."""
        self.outcomes = Outcomes()
        self._configure(plan, state)
        self._inline = not owner._pooled
        """Whether automatic steps are taken on the caller's thread (else the store's)."""
        self._lock = threading.Lock()  # serializes view changes; decisions never take it
        self._retry_at = 0.0  # after a failed automatic step, not before this clock time
        self._forced = 0  # overrides active anywhere (stagedroll.testing): off the fast path
        self._sinks: tuple[Sink, ...] = ()  # recording sinks (stagedroll.testing): likewise
        self._bound = 0  # guards, shadows and migrations built on this handle
        self._view: View = plan.view(state, self.outcomes)
        if override.track(self):
            self._force(+1)
        self._set_share(self._view)
        register(self)

    def _configure(self, plan: Plan, state: RolloutState, old: Plan | None = None) -> None:
        """The health gate and the outcome counters of ``plan``, new.

        With ``old`` (a reload), the evidence of the epoch carries over when the health
        settings and the pattern did not change (a percent edit, a new bake time).
        """
        tested = plan.mode == "stages" and plan.policy.health.enabled and not plan.removed
        paired = plan.policy.pattern is not None  # a shadow, a migration: both arms per call
        before = self.health
        self.health = Health(plan.policy.health, paired=paired) if tested else None
        if self.health is not None:
            self.health.timed = plan.policy.advance == "auto"
            if self._owner._pooled:
                self.health.outbox = Outbox()
                self.health.outbox.visit(state.epoch, min(state.stage, plan.last_stage))
            if (
                before is not None
                and old is not None
                and before.paired == paired
                and old.policy.health == plan.policy.health
            ):
                with self.outcomes.lock:  # the old counters' lock: no event half-counted
                    self.health.inherit(before)
        self.outcomes = Outcomes(self.health)

    def _replan(self, plan: Plan) -> None:
        """Follow a reloaded policy: the state stays; a changed rollout counts afresh."""
        with self._lock:
            old, self._plan = self._plan, plan
            if (
                plan.policy != old.policy
                or plan.killed != old.killed
                or plan.mode != old.mode
                or plan.removed != old.removed
            ):
                self._configure(plan, self._view.state, old)
            self._view = self._make_view(self._view.state)
            self._set_share(self._view)

    def _force(self, step: int) -> None:
        """One more (``+1``) or one fewer (``-1``) override is active: leave the fast path."""
        with self._lock:
            self._forced += step
            self._view = self._make_view(self._view.state)

    def _make_view(self, state: RolloutState) -> View:
        view = self._plan.view(state, self.outcomes)
        if self._forced or self._sinks:
            view.plain = False  # the slow path asks for overrides, and feeds the sinks
        return view

    def _watch(self, sink: Sink, *, stop: bool = False) -> None:
        """Tell ``sink`` of every outcome from now on (``stop``: no more)."""
        with self._lock:
            sinks = [s for s in self._sinks if s is not sink]
            self._sinks = tuple(sinks if stop else [*sinks, sink])
            self._view = self._make_view(self._view.state)

    def _observed(self, arm: ArmCounts) -> ArmCounts:
        """``arm``, or its stand-in that reports every outcome when sinks watch."""
        return ObservedArm(arm) if self._sinks else arm

    def _tell(
        self,
        arm: ObservedArm,
        key: str | None,
        error: bool,
        latency_s: float | None,
        fallback: bool = False,
    ) -> None:
        outcome = Outcome(self.name, key, arm.enabled, error, fallback, latency_s, arm.compared)
        for sink in self._sinks:
            sink.add(outcome)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        if self.health is not None:
            self.health.after_fork()

    def __repr__(self) -> str:
        v = self._view
        return f"<Rollout {self.name!r} stage={v.stage_name!r} {v.percent:g}% {v.state.status}>"

    @property
    def policy(self) -> RolloutPolicy:
        """The part of the policy that describes this rollout."""
        return self._plan.policy

    @property
    def state(self) -> RolloutState:
        """The state the decisions currently follow."""
        return self._view.state

    # -- decisions ---------------------------------------------------------------------------

    def enabled(self, unit: object, attributes: Mapping[str, object] | None = None) -> bool:
        """Return whether the new path is on for ``unit``; see :meth:`decide`."""
        v = self._view
        if v.plain and unit.__class__ is str and unit.isascii():
            return _hash(v.prefix + unit, 0, False) < v.threshold
        attributes = self._attributes(attributes)
        key = _key(unit, attributes)
        if self._forced:
            enabled = override.forced(self, key)
            if enabled is not None:
                return enabled
        try:
            return v.enabled(key, attributes)
        except Exception as exc:
            self._failed(exc)
            return False

    def decide(self, unit: object, attributes: Mapping[str, object] | None = None) -> Decision:
        """Return the decision for ``unit`` (``str``, ``int``, ``UUID`` or ``None``) and why.

        Order: environment, status (killed: off, complete: on), no unit, deny, allow, stage
        segments (matched on ``attributes``), bucket. Raises :class:`TypeError` for a unit
        or ``attributes`` of the wrong type (a bug at the call site); any failure inside
        stagedroll gives ``enabled=False`` with reason ``ERROR`` instead of raising.
        """
        return self._decide(self._view, unit, attributes)

    def _decide(self, v: View, unit: object, attributes: Mapping[str, object] | None) -> Decision:
        attributes = self._attributes(attributes)
        key = _key(unit, attributes)
        if self._forced:
            enabled = override.forced(self, key)
            if enabled is not None:
                return Decision(self.name, enabled, Reason.OVERRIDE, v.stage_name, v.percent)
        try:
            return v.evaluate(key, attributes)
        except Exception as exc:
            self._failed(exc)
            return Decision(self.name, False, Reason.ERROR)

    def _route(
        self, unit: object, attributes: Mapping[str, object] | None = None
    ) -> tuple[ArmCounts, str | None]:
        """Return the counters of the arm that ``unit`` takes, and its bucketing key.

        ``arm.enabled`` says whether that is the new path; the key is ``None`` for a unit
        routed by targeting (not compared).
        """
        v = self._view
        if v.plain and unit.__class__ is str and unit.isascii():
            arm = v.treatment if _hash(v.prefix + unit, 0, False) < v.threshold else v.control
            return arm, unit
        attributes = self._attributes(attributes)
        key = _key(unit, attributes)
        if self._forced:
            enabled = override.forced(self, key)
            if enabled is not None:  # like an allow or deny list: not compared
                arm = v.arms.targeted_on if enabled else v.arms.targeted_off
                return (self._observed(arm), key) if self._sinks else (arm, None)
        try:
            arm, bucketed = v.route(key, attributes)
        except Exception as exc:
            self._failed(exc)
            return self._observed(v.arms.targeted_off), key if self._sinks else None
        if self._sinks:  # a sink is told of the unit of a targeted call too
            return self._observed(arm), bucketed if bucketed is not None else key
        return arm, bucketed

    def _sample(self) -> ArmCounts:
        """Route one call without a unit (per-request bucketing)."""
        v = self._view
        if not (self._forced or self._sinks):
            return v.sample()
        if self._forced:
            enabled = override.forced(self, None)
            if enabled is not None:
                return self._observed(v.arms.targeted_on if enabled else v.arms.targeted_off)
        return self._observed(v.sample())

    def _attributes(self, attributes: object) -> Any:
        """The call's attributes over the ``Rollouts``' context (the call's win).

        Typed loosely on purpose: a caller may pass anything, which ``_key`` then refuses.
        """
        context = self._owner.context
        if not context:
            return attributes
        if attributes is None:
            return context
        if not isinstance(attributes, Mapping):
            return attributes  # _key refuses it, with its own message
        return {**context, **attributes}

    def _failed(self, exc: Exception) -> None:
        self._owner.failures.record("decision.failed", exc, rollout=self.name)

    # -- guards and outcomes -------------------------------------------------------------------

    def guard(
        self,
        *,
        fallback: Callable[P, R],
        unit: Callable[P, object] | None,
        attributes: Callable[P, Mapping[str, object]] | None = None,
        reraise: bool = False,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorate the new path; see :meth:`Rollouts.guard`."""
        return guard(self, fallback=fallback, unit=unit, attributes=attributes, reraise=reraise)

    def track(self, unit: object, attributes: Mapping[str, object] | None = None) -> Tracking:
        """Decide for ``unit``, record the outcome of the block; see :meth:`Rollouts.track`."""
        v = self._view  # decide and record on one view, even if a transition comes between
        decision = self._decide(v, unit, attributes)
        key = v.key_of(unit, self._attributes(attributes))
        return Tracking(self, decision, self._observed(v.arm(decision)), key)

    def report(
        self,
        unit: object,
        *,
        error: bool,
        latency_s: float | None = None,
        attributes: Mapping[str, object] | None = None,
    ) -> Decision:
        """Record one outcome for ``unit`` on the arm it is decided into; return that decision."""
        v = self._view
        decision = self._decide(v, unit, attributes)
        arm = self._observed(v.arm(decision))
        key = v.key_of(unit, self._attributes(attributes))
        self._record(arm, key, error=error, latency_s=latency_s)
        return decision

    def _record(
        self,
        arm: ArmCounts,
        key: str | None,
        *,
        error: bool,
        latency_s: float | None,
        fallback: bool = False,
        event: bool = True,
    ) -> None:
        """Add one outcome of unit ``key`` to ``arm``; never raises (failures are logged).

        A latency that is not a finite, non-negative number of seconds is dropped, counted
        and logged (``outcome.bad_latency``); the outcome itself is kept. When the outcome
        may make an automatic step due (a treatment event, a new unit), the step is checked.
        ``event=False`` counts an error without showing it to the test as an event (a
        paired call whose two sides both failed tells nothing about which is worse).
        """
        if latency_s is not None and not _is_latency(latency_s):
            self._owner.failures.record("outcome.bad_latency", rollout=self.name,
                                        latency=_shown(latency_s))  # fmt: skip
            latency_s = None
        if arm.__class__ is ObservedArm:
            observed = arm
            self._tell(observed, key, error, latency_s, fallback)
            arm = observed.real
            key = key if arm.compared else None
        if error or fallback or latency_s is None:
            self._count(self.outcomes.record, arm, error, latency_s, fallback, key, event=event)
        else:
            self._count(self.outcomes.success, arm, latency_s, key)

    def _note(self, arm: ArmCounts, key: str | None, latency_s: float) -> None:
        """Show the health test a successful guarded call that may be an event; never raises."""
        if arm.__class__ is ObservedArm:  # every success of a watched rollout comes here
            observed = arm
            self._tell(observed, key, False, latency_s)
            arm = observed.real
            key = key if arm.compared else None
        self._count(self.outcomes.note, arm, key, latency_s)

    def _fold(self, arm: ArmCounts) -> None:
        """Fold ``arm``'s pending latencies (the guard's batch is full); check automatic steps."""
        if arm.__class__ is ObservedArm:
            arm = arm.real
        owner = self._owner
        if owner._chores:  # a guarded call's batch: the policy file, the store's thread
            owner._tend()
        self._count(self.outcomes.fold, arm)

    def _count(self, count: Callable[..., bool], *args: Any, **kwargs: Any) -> None:
        """Call ``count(...)``, an :class:`Outcomes` method; take the step it makes due."""
        try:
            due = count(*args, **kwargs)
        except Exception as exc:  # pragma: no cover - defensive: counting must not break calls
            self._owner.failures.record("outcome.failed", exc, rollout=self.name)
            return
        if due and self._inline:
            self._step()

    def _step(self) -> None:
        """Take the automatic step that is due, if any; never raises."""
        try:
            self._owner._auto_step(self)
        except Exception as exc:  # pragma: no cover - _auto_step catches what it expects
            self._owner.failures.record("health.step_failed", exc, rollout=self.name)

    # -- operations ------------------------------------------------------------------------------

    def status(self) -> RolloutStatus:
        """Where the rollout stands; see :meth:`Rollouts.status`."""
        return self._owner.status(self.name)

    def history(self, limit: int | None = None) -> list[Transition]:
        """The rollout's transitions, newest first."""
        return self._owner.history(self.name, limit=limit)

    def _suspend(self, state: RolloutState) -> None:
        """Serve ``state`` (version 0: the old path) whatever the state in force.

        For a stored state that cannot be read: any state read from the store afterwards
        (version 1 or more) replaces it, through :meth:`_adopt`.
        """
        with self._lock:
            view = self._make_view(state)
            self._set_share(view)
            self._view = view

    def _adopt(self, state: RolloutState) -> None:
        """Follow ``state`` if it is newer than the one in force.

        Newer: see :func:`~._state.newer`. Moving to another stage starts that stage's
        counters afresh: a stage visited again (after a rollback) is judged on its new
        traffic only.
        """
        with self._lock:  # two adopters must not let an older state overwrite a newer one
            current = self._view.state
            if newer(state, current):
                if state.stage != current.stage:
                    last = self._plan.last_stage
                    self.outcomes.enter(min(state.stage, last), leaving=self._view.stage)
                view = self._make_view(state)
                if self.health is not None:
                    with self.outcomes.lock:
                        if state.epoch != current.epoch:
                            self.health.reset()  # a new epoch of evidence
                        elif state.stage != current.stage:
                            self.health.visit()  # a new stage visit: new start points
                        if self.health.outbox is not None:
                            stage = min(state.stage, self._plan.last_stage)
                            self.health.outbox.visit(state.epoch, stage)
                self._set_share(view)
                self._view = view

    def _set_share(self, view: View) -> None:
        """Give the health test the treatment's share under ``view``."""
        if self.health is not None:
            share = self._share(view)
            with self.outcomes.lock:
                self.health.set_share(share)

    def _share(self, view: View) -> float:
        """The treatment's share of the compared exposure under ``view``.

        The stage's percent / 100; one half for a paired pattern (a shadow, a migration:
        every compared call records both sides, the old one on control and the new one on
        treatment); 0 where the environment or the status fixes the decision.
        """
        if view.constant is not None:
            return 0.0
        return 0.5 if self._plan.policy.pattern is not None else view.percent / 100

    def _serves(self, pattern: str | None, use: str) -> None:
        """Raise :class:`ValueError` unless the policy says the rollout serves ``pattern``.

        ``use`` names the API being set up, for the message.
        """
        declared = self._plan.policy.pattern
        if declared == pattern:
            self._bound += 1
            return
        if declared is None:
            raise ValueError(
                f'rollout {self.name!r} is not a {pattern}: add pattern = "{pattern}" to its '
                f"policy to use {use} (both sides of each call are then recorded)"
            )
        raise ValueError(
            f'rollout {self.name!r} serves a {declared} (pattern = "{declared}" in its '
            f"policy): use rollouts.{declared}(...), not {use}"
        )
