"""``Rollout``: the handle of one rollout: its decisions, its state and its transitions.

A handle owns a :class:`~._router.Router` (the per-call work that guards, shadows and
migrations share) and everything that changes what the router serves: the plan (a reload
replaces it), the state (adopted from the store, or written by a compare-and-set
transition), and the health gate's automatic steps (:func:`~._gate.step` says which; the
handle applies it). It receives the small :class:`~._runtime.Runtime` context, never the
``Rollouts`` facade.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import ParamSpec, TypeVar

import mmh3

from . import _gate as gate
from . import _override as override
from ._decision import Decision, Reason
from ._errors import merge
from ._exchange import Member, exchange
from ._failures import log
from ._forksafe import register
from ._guard import Tracking, guard
from ._health import DISABLED, Health, HealthReport
from ._hooks import TransitionEvent
from ._outcomes import Outcome, Outcomes
from ._plan import Plan, View
from ._policy import RolloutPolicy
from ._pool import Outbox
from ._router import Router
from ._runtime import Runtime
from ._state import (
    AUTOMATIC,
    NO_EVIDENCE,
    Action,
    Evidence,
    RecentError,
    RolloutState,
    Transition,
    newer,
)
from ._status import RolloutStatus, StageInfo
from ._steering import commit, corrupt, default_actor, log_transition
from ._transitions import EVENTS, initial_state, next_state, stage_index, unknown_state
from .exceptions import StoreError, TransitionError

__all__ = ["Rollout", "default_actor"]

P = ParamSpec("P")
R = TypeVar("R")

_hash = mmh3.hash
_RETRY_AFTER_S = 1.0  # after a failed automatic step, wait this long before the next try
_IDLE_POOL_EVERY = 30  # an idle rollout whose freeze was held judges again every 30 refreshes


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
        "_idle_pools",
        "_lock",
        "_mine",
        "_plan",
        "_retry_at",
        "_router",
        "_runtime",
        "_started",
        "_unreadable",
        "name",
    )

    def __init__(self, runtime: Runtime, plan: Plan, *, start: bool = True) -> None:
        """Bind ``plan``, and load its state from the store.

        With ``start=False``, later (:meth:`_restart`), serving the old path meanwhile.
        """
        self._runtime = runtime
        self._plan = plan
        self.name = plan.name
        self._lock = threading.Lock()  # serializes view changes; decisions never take it
        self._retry_at = 0.0  # after a failed automatic step, not before this clock time
        self._idle_pools = 0  # background refreshes since the last idle pool (see _pool_due)
        self._bound = 0  # guards, shadows and migrations built on this handle
        self._started = False
        self._mine: RolloutState | None = None  # the state this handle is committing
        self._unreadable = False  # serving the old path: the stored state is corrupt
        router = self._router = Router(plan.name, runtime)
        router.handle = self
        if not runtime.shared:
            router.step = self._step
        state = self._start() if start else unknown_state(runtime.clock())
        self._configure(plan, state)
        router.view = self._make_view(state)
        if override.track(self):
            self._force(+1)
        self._set_share(router.view)
        register(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        v = self._router.view
        return f"<Rollout {self.name!r} stage={v.stage_name!r} {v.percent:g}% {v.state.status}>"

    # -- what it is ----------------------------------------------------------------------------

    @property
    def policy(self) -> RolloutPolicy:
        """The part of the policy that describes this rollout."""
        return self._plan.policy

    @property
    def state(self) -> RolloutState:
        """The state the decisions currently follow."""
        return self._router.view.state

    @property
    def health(self) -> Health | None:
        """The health gate, or ``None`` (disabled, or the environment does not follow stages)."""
        return self._router.health

    @property
    def outcomes(self) -> Outcomes:
        """The outcome counters of the current plan, per stage visit."""
        return self._router.outcomes

    @property
    def in_policy(self) -> bool:
        """Whether the policy in force has this rollout (``False``: a reload removed it)."""
        return not self._plan.removed

    # -- decisions -----------------------------------------------------------------------------

    def enabled(self, unit: object, attributes: Mapping[str, object] | None = None) -> bool:
        """Return whether the new path is on for ``unit``; see :meth:`decide`."""
        v = self._router.view
        if v.plain and unit.__class__ is str and unit.isascii():
            return _hash(v.prefix + unit, 0, False) < v.threshold
        if v.direct is not None and unit.__class__ is str:  # another system's bucketing
            try:
                return v.direct(unit) < v.threshold
            except Exception:  # the slow path below answers, and counts the failure
                pass
        return self._router.enabled(unit, attributes)

    def decide(self, unit: object, attributes: Mapping[str, object] | None = None) -> Decision:
        """Return the decision for ``unit`` (``str``, ``int``, ``UUID`` or ``None``) and why.

        Order: environment, status (killed: off, complete: on), no unit, deny, allow, stage
        segments (matched on ``attributes``), bucket. Raises :class:`TypeError` for a unit
        or ``attributes`` of the wrong type (a bug at the call site); any failure inside
        stagedroll gives ``enabled=False`` with reason ``ERROR`` instead of raising.
        """
        router = self._router
        v = router.view
        if unit.__class__ is str and attributes.__class__ is dict and router.plain:
            # Router.decide's common case (a text unit, attributes as a dict), one call less.
            try:
                return v.evaluate(unit, attributes)
            except Exception as exc:
                router.failed(exc)
                return Decision(self.name, False, Reason.ERROR)
        return router.decide(v, unit, attributes)

    # -- guards and outcomes -------------------------------------------------------------------

    def guard(
        self,
        *,
        fallback: Callable[P, R],
        unit: Callable[P, object] | None,
        attributes: Callable[P, Mapping[str, object]] | None = None,
        reraise: bool | None = None,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorate the new path; see :meth:`Rollouts.guard`."""
        decorate = guard(self._router, fallback=fallback, unit=unit, attributes=attributes,
                         reraise=reraise)  # fmt: skip  # checks the arguments first
        self._serves(None, "a guard")
        return decorate

    def track(self, unit: object, attributes: Mapping[str, object] | None = None) -> Tracking:
        """Decide for ``unit``, record the outcome of the block; see :meth:`Rollouts.track`."""
        router = self._router
        v = router.view  # decide and record on one view, even if a transition comes between
        decision = router.decide(v, unit, attributes)
        key = router.key_of(v, unit, attributes)
        return Tracking(router.record, decision, router.observed(v.arm(decision)), key)

    def report(
        self,
        unit: object,
        *,
        error: bool,
        latency_s: float | None = None,
        attributes: Mapping[str, object] | None = None,
    ) -> Decision:
        """Record one outcome for ``unit`` on the arm it is decided into; return that decision."""
        router = self._router
        v = router.view
        decision = router.decide(v, unit, attributes)
        arm = router.observed(v.arm(decision))
        router.record(arm, router.key_of(v, unit, attributes), error=error, latency_s=latency_s)
        return decision

    def on_outcome(self, listener: Callable[[Outcome], object]) -> Callable[[], None]:
        """Call ``listener`` with every :class:`Outcome` recorded from now on; return a stop.

        For tests and tools that must see each call (``stagedroll.testing.RecordingSink``):
        a watched rollout leaves the decision fast path. A metrics exporter reads the
        counters of :meth:`status` instead, which cost the calls nothing. The listener runs
        on the caller's thread; one that raises is logged and counted (``hook.failed``), and
        the call goes on.
        """
        if not callable(listener):
            raise TypeError(f"an outcome listener must be callable, not {type(listener).__name__}")
        router = self._router
        with self._lock:
            router.sinks = (*router.sinks, listener)
            router.view = self._make_view(router.view.state)

        def stop() -> None:
            with self._lock:
                sinks = list(router.sinks)
                if listener in sinks:
                    sinks.remove(listener)
                router.sinks = tuple(sinks)
                router.view = self._make_view(router.view.state)

        return stop

    # -- operations ----------------------------------------------------------------------------

    def _transition(
        self,
        action: Action,
        reason: str,
        actor: str | None,
        *,
        expected: RolloutState | None = None,
        evidence: Evidence | None = None,
        to: str | int | None = None,
    ) -> Transition:
        """Apply ``action`` to the state in the store (or to ``expected``), by compare-and-set.

        ``to`` (``rollback`` and ``unfreeze`` only) is the stage to go to: a stage name of
        the plan, or an index (``-1``, or ``"0%"``, is 0 %). The new state carries the plan's
        stage ladder. Raises :class:`TransitionError` when the action does not apply to that
        state (or ``to`` names no stage), or when another writer changed it between our read
        and our write (the action is then not retried: ``advance`` twice would skip a stage),
        and :class:`StoreError` when the store fails. The history entry carries the health
        evidence of the moment.
        """
        runtime, name, plan = self._runtime, self.name, self._plan  # one plan, even mid-reload
        ladder = plan.ladder
        target = stage_index(name, action, to, ladder)  # a typo fails before any store I/O
        who = actor if actor is not None else default_actor()
        current = expected if expected is not None else self._load()
        if current is None:  # never started: the store was down when this process started
            current = self._start()
            if not current.version:
                raise StoreError(f"the store failed to start {name!r}; see store.load_failed")
            self._adopt(current)
        if evidence is None:
            evidence = self._report().evidence() if self.health is not None else NO_EVIDENCE
        now = runtime.clock()
        new = next_state(name, action, current, last_stage=plan.last_stage, now=now,
                         reason=reason, actor=who, to=target, stages=ladder)  # fmt: skip
        self._mine = new  # adopted as ours, not logged as another writer's (rollout.changed)
        entry = commit(runtime.store, name, action, current, new, evidence=evidence,
                       latest=lambda: self._load() or current)  # fmt: skip
        self._adopt(new)  # the store's listeners did it too, unless it has none
        log_transition(entry, self._router.view.stage_name)
        if len(runtime.hooks):
            names = (self._plan.stage_name(current.stage), self._plan.stage_name(new.stage))
            runtime.hooks.fire(TransitionEvent.of(entry, names))
        return entry

    def history(self, limit: int | None = None) -> list[Transition]:
        """The rollout's transitions, newest first (at most ``limit``)."""
        try:
            return self._runtime.store.history(self.name, limit)
        except Exception as exc:
            raise StoreError(
                f"the store failed to read the history of {self.name!r}: {exc}"
            ) from exc

    # -- what it does and waits for ------------------------------------------------------------

    def status(self, *, fresh: bool = True) -> RolloutStatus:
        """Where the rollout stands, with its stages, counters and gate evidence.

        ``fresh`` (the default) reads the state from the store first and pools the
        evidence (a store shared by processes), and may raise :class:`StoreError`; with
        ``fresh=False`` nothing is read or written: it is what this process serves now
        (kept current by the store's refresh thread), cheap enough for a metrics scrape,
        and it never raises.
        """
        runtime = self._runtime
        if fresh:
            runtime.reload()
            self._restart()
            self._load()
            self._pool()
        router, plan = self._router, self._plan
        view = router.view
        state = view.state
        control, treatment, targeted = router.outcomes.stats(view.stage)
        with router.lock:
            totals = router.outcomes.totals()
        health = self._report()
        last = plan.last_stage
        return RolloutStatus(
            rollout=self.name,
            environment=runtime.environment,
            mode=plan.mode,
            stage=view.stage,
            stage_name=view.stage_name,
            percent=view.constant.percent if view.constant is not None else view.percent,
            status=state.status,
            since=state.since,
            version=state.version,
            reason=state.reason,
            actor=state.actor,
            control=control,
            treatment=treatment,
            targeted=targeted,
            next_stage=plan.stages[view.stage + 1].name if view.stage < last else None,
            internal_errors=runtime.failures.count(),
            health=health,
            waiting_for=gate.waiting_for(plan, view, health, runtime.clock()),
            pending_policy=runtime.file.error if runtime.file is not None else None,
            in_policy=not plan.removed,
            stages=tuple(
                StageInfo(s.name, s.percent, s.bake, s.min_units, tuple(s.segments))
                for s in plan.policy.stages
            ),
            killed_here=plan.killed,
            errors=self._errors(fresh),
            totals=totals,
        )

    def _errors(self, fresh: bool) -> tuple[RecentError, ...]:
        """The recent errors: the fleet's (a shared store, read ``fresh``), else this process's."""
        runtime, local = self._runtime, self._router.errors.recent()
        if not (fresh and runtime.shared):
            return local
        try:
            stored = runtime.store.read_errors(self.name)
        except Exception as exc:
            runtime.failures.record("store.errors_failed", exc, rollout=self.name)
            return local
        return merge([*stored, *self._router.errors.pending()]) if stored else local

    def _report(self) -> HealthReport:
        """The gate's evidence in the current stage visit (every latency folded first)."""
        router = self._router
        health = router.health
        if health is None:
            return DISABLED
        view = router.view
        share = self._share(view)
        with router.lock:
            router.fold_all(view)
            fired = health.sample_ratio_fired
            found = health.report(view.control, view.treatment, share)
        if not found.sample_ratio_ok and not fired:
            self._runtime.failures.record("health.sample_ratio_mismatch", rollout=self.name,
                                          stage=view.stage_name, share=share,
                                          units_treatment=found.units_treatment,
                                          units_control=found.units_control)  # fmt: skip
        return found

    # -- the store -----------------------------------------------------------------------------

    def _start(self) -> RolloutState:
        """Load the state; record the rollout's start if the store has never seen it.

        When the store fails, the rollout serves 0 % (the stable path) until the store
        answers: the store's background refresh, ``tick``, ``status`` or a transition tries
        again.
        """
        runtime, name = self._runtime, self.name
        try:
            state = runtime.store.load(name)
            if state is None:
                first = initial_state(runtime.clock())
                started = RolloutState(stage=0, status=first.status, since=first.since,
                                       version=1, actor=AUTOMATIC, epoch=1,
                                       history=uuid.uuid4().hex,
                                       stages=self._plan.ladder)  # fmt: skip
                entry = Transition(name, Action.START, 0, 0, None, started.status, 1,
                                   started.since, actor=AUTOMATIC)  # fmt: skip
                if runtime.store.compare_and_set(name, 0, started, entry):
                    log("info", EVENTS[Action.START], rollout=name, stage=self._plan.stage_name(0))
                    state = started
                else:
                    state = runtime.store.load(name)  # another process started it first
            if state is None:
                raise RuntimeError("the state vanished from the store after it was written")
        except Exception as exc:
            # Serve the stable path until the store answers; never fail the host.
            corrupt = isinstance(exc, ValueError)  # the store answered, with a state it refuses
            runtime.failures.record("store.state_unreadable" if corrupt else "store.load_failed",
                                    exc, rollout=name)  # fmt: skip
            self._started = False
            return unknown_state(runtime.clock())
        self._started = True
        return state

    def _restart(self) -> None:
        """Start the rollout if the store could not give its state before; never raises."""
        if not self._started and not self._plan.removed:
            state = self._start()
            if state.version:
                self._adopt(state)

    def _load(self) -> RolloutState | None:
        """Read the state from the store and follow it.

        Raises :class:`CorruptStateError` for a state that cannot be read, and
        :class:`StoreError` when the store fails.
        """
        name = self.name
        try:
            state = self._runtime.store.load(name)
        except ValueError as exc:  # the store answered with a state it cannot read
            raise corrupt(name, exc) from exc
        except Exception as exc:
            raise StoreError(f"the store failed to load {name!r}: {exc}") from exc
        if state is not None:
            self._adopt(state)
        return state

    def _pool(self) -> None:
        """Flush the queued events to the store, and take the fleet's totals; never raises."""
        member = self._member()
        if member is not None:
            exchange(self._runtime.store, self._runtime.failures, [member])

    def _member(self) -> Member | None:
        """The rollout's part in an evidence exchange (``None``: it has nothing to send)."""
        router, runtime = self._router, self._runtime
        if router.health is None and not runtime.shared:
            return None
        return Member(self.name, self.state, router.health, router.lock,
                      router.errors if runtime.shared else None)  # fmt: skip

    def _follow_unreadable(self, why: str | None) -> None:
        """Serve the old path while the stored state is corrupt; never raises.

        ``why`` is the store's reason when its last refresh could not read the state (see
        ``SharedStore.unreadable``), ``None`` when it could. The last good state is not
        served: whoever wrote the store behind stagedroll's back may have meant a kill. Once
        the state reads again (repaired, or restored from its history), it is loaded.
        """
        name = self.name
        if why is not None and not self._unreadable:
            self._unreadable = True
            state = unknown_state(self._runtime.clock(), reason="state unreadable: " + why)
            with self._lock:
                view = self._make_view(state)
                self._set_share(view)
                self._router.view = view
            log("error", "rollout.state_unreadable", rollout=name, error=why,
                serving="the old path until the stored state is repaired")  # fmt: skip
        elif why is None and self._unreadable:
            self._unreadable = False
            with contextlib.suppress(StoreError):
                self._load()
            log("info", "rollout.state_readable", rollout=name,
                stage=self._router.view.stage_name)  # fmt: skip

    def _tick(self, *, background: bool = False) -> Transition | None:
        """Start if need be, pool the evidence, and take the automatic step due; never raises.

        ``background``: the store's refresh, which pooled the evidence of every rollout
        due (:meth:`_pool_due`) in one exchange before it read the states; ``tick`` and
        ``status`` always pool.
        """
        self._restart()
        if not background:
            self._pool()
        return self._auto_step()

    def _pool_due(self) -> bool:
        """Whether the background refresh should pool this rollout's evidence now.

        When this process queued events, units or errors: yes (the fleet's totals come back
        with the flush, and the gate judges them at once). When an automatic advance is due
        by the clock: yes, every time, so that no advance is ever taken on old totals (the
        fleet may hold it: a failing arm, a sample-ratio mismatch, processes that disagree
        on the share). When the gate calls for a freeze or a rollback that it could not take
        (processes disagreed on the share): every ``_IDLE_POOL_EVERY`` refreshes, to judge
        again once they agree. Otherwise this process has nothing new to judge: the
        processes that serve the rollout's traffic flush and judge, and an idle one costs
        the store nothing.
        """
        router = self._router
        health = router.health
        outbox = health.outbox if health is not None else None
        if health is None or outbox is None:
            return True  # not pooled: nothing to spare
        queued = outbox.batch
        if queued.size() or queued.calls or router.errors.pending():
            return True
        if gate.advance_due(self._plan, router.view, self._runtime.clock()) is None:
            return True
        with router.lock:  # a step held back while processes disagree on the share
            held = bool(health.others) or health.verdict().action is not None
        if not held:
            self._idle_pools = 0
            return False
        self._idle_pools = (self._idle_pools + 1) % _IDLE_POOL_EVERY
        return self._idle_pools == 1

    # -- the health gate's steps ---------------------------------------------------------------

    def _step(self) -> None:
        """Take the automatic step an outcome may have made due (on the caller's thread)."""
        self._auto_step()

    def _auto_step(self) -> Transition | None:
        """Take the automatic step that the gate calls for, if any; never raises.

        The transition is a compare-and-set against the state that was judged, so two
        processes never both take it. A lost race is no error, and a failing store is
        logged, counted and retried a second later.
        """
        router = self._router
        health = router.health
        if health is None:
            return None
        view = router.view
        now = self._runtime.clock()
        if now < self._retry_at:
            return None
        with router.lock:
            verdict = health.verdict()
        step = gate.step(self._plan, view, verdict, now, self._report)
        if step is None:
            return None
        try:
            return self._transition(step.action, step.reason, AUTOMATIC, expected=view.state,
                                    evidence=step.evidence)  # fmt: skip
        except TransitionError:
            # Another process or thread moved first (the compare-and-set refused ours), or
            # the state no longer allows the step: follow the store, do nothing more.
            with contextlib.suppress(Exception):
                self._load()
            return None
        except Exception as exc:
            self._retry_at = now + _RETRY_AFTER_S
            self._runtime.failures.record("health.transition_failed", exc, rollout=self.name,
                                          action=str(step.action))  # fmt: skip
            return None

    # -- following plans and states ------------------------------------------------------------

    def _configure(self, plan: Plan, state: RolloutState, old: Plan | None = None) -> None:
        """The health gate and the outcome counters of ``plan``, new.

        With ``old`` (a reload), the evidence of the epoch carries over when the health
        settings and the pattern did not change (a percent edit, a new bake time).
        """
        router = self._router
        tested = plan.mode == "stages" and plan.policy.health.enabled and not plan.removed
        paired = plan.policy.pattern is not None  # a shadow, a migration: both arms per call
        before = router.health
        health = Health(plan.policy.health, paired=paired) if tested else None
        if health is not None:
            health.timed = plan.policy.advance == "auto"
            if self._runtime.shared:
                health.outbox = Outbox()
                health.outbox.visit(state.epoch, min(state.stage, plan.last_stage))
        with router.lock:  # no event half-counted across the swap
            if (
                health is not None
                and before is not None
                and old is not None
                and before.paired == paired
                and old.policy.health == plan.policy.health
            ):
                health.inherit(before)
            router.health = health
            on_visit = health.track if health is not None else None
            carried = router.outcomes.totals()  # the calls counted so far stay in the totals
            router.outcomes = Outcomes(lock=router.lock, on_visit=on_visit, retired=carried)

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
                self._configure(plan, self._router.view.state, old)
            view = self._make_view(self._router.view.state)
            self._set_share(view)
            self._router.view = view

    def _retire(self) -> None:
        """The policy no longer has this rollout: every call takes the old path."""
        self._replan(self._plan.retired())

    def _force(self, step: int) -> None:
        """One more (``+1``) or one fewer (``-1``) override is active: leave the fast path."""
        router = self._router
        with self._lock:
            router.forced += step
            router.plain = not router.forced and not self._runtime.context
            router.view = self._make_view(router.view.state)

    def _make_view(self, state: RolloutState) -> View:
        router = self._router
        view = self._plan.view(state, router.outcomes)
        if router.forced or router.sinks:
            view.plain = False  # the slow path asks for overrides, and feeds the sinks
            view.direct = None
        return view

    def _adopt(self, state: RolloutState) -> None:
        """Follow ``state`` if it is newer than the one in force; then tell ``Runtime.changed``.

        Newer: see :func:`~._state.newer`. Every state that comes into force comes through
        here (a transition, a store's listener or refresh, a read by ``status`` or ``tick``),
        so each is told once, outside the locks.
        """
        previous = self._router.view.state
        if not self._follow(state):
            return
        if previous.version and state != self._mine:  # another process's (or Steering's)
            stage = self._plan.stage_name(state.stage)
            log("info", "rollout.changed", rollout=self.name, stage=stage,
                status=str(state.status), version=state.version, actor=state.actor,
                reason=state.reason, was=str(previous.status), from_stage=previous.stage,
                to_stage=state.stage)  # fmt: skip
        self._runtime.changed(self.name, state)

    def _follow(self, state: RolloutState) -> bool:
        """Serve ``state`` if it is newer; return whether it is now in force.

        Moving to another stage starts that stage's counters afresh: a stage visited again
        (after a rollback) is judged on its new traffic only.
        """
        router = self._router
        with self._lock:  # two adopters must not let an older state overwrite a newer one
            current = router.view.state
            if not newer(state, current):
                return False
            if state.stage != current.stage:
                last = self._plan.last_stage
                router.outcomes.enter(min(state.stage, last), leaving=router.view.stage)
            view = self._make_view(state)
            health = router.health
            if health is not None:
                with router.lock:
                    if state.epoch != current.epoch:
                        health.reset()  # a new epoch of evidence
                    elif state.stage != current.stage:
                        health.visit()  # a new stage visit: new start points
                    if health.outbox is not None:
                        health.outbox.visit(state.epoch, min(state.stage, self._plan.last_stage))
            self._set_share(view)
            router.view = view
        return True

    def _set_share(self, view: View) -> None:
        """Give the health test the treatment's share under ``view``."""
        router = self._router
        if router.health is not None:
            share = self._share(view)
            with router.lock:
                router.health.set_share(share)

    def _share(self, view: View) -> float:
        """The treatment's share of the compared exposure under ``view``.

        The stage's percent / 100; one half for a paired pattern (a shadow, a migration:
        every compared call records both sides, the old one on control and the new one on
        treatment); 0 where the environment or the status fixes the decision.
        """
        if view.constant is not None:
            return 0.0
        return 0.5 if self._plan.policy.pattern is not None else view.percent / 100

    def _serves(self, pattern: str | None, use: str) -> Router:
        """Return the router, for a guard, a shadow or a migration of ``pattern``.

        Raises :class:`ValueError` unless the policy says the rollout serves ``pattern``;
        ``use`` names the API being set up, for the message.
        """
        declared = self._plan.policy.pattern
        if declared == pattern:
            self._bound += 1
            return self._router
        if declared is None:
            raise ValueError(
                f'rollout {self.name!r} is not a {pattern}: add pattern = "{pattern}" to its '
                f"policy to use {use} (both sides of each call are then recorded)"
            )
        raise ValueError(
            f'rollout {self.name!r} serves a {declared} (pattern = "{declared}" in its '
            f"policy): use rollouts.{declared}(...), not {use}"
        )
