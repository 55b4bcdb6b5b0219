"""``Rollouts``: a policy bound to a state store and the process's environment.

The decision path (``enabled``, ``decide``) reads a precomputed :class:`~._plan.View` and
never touches the store; transitions go to the store by compare-and-set and replace the
view of every ``Rollouts`` watching that store. With a store shared by processes
(:class:`~.stores.SyncingStore`), the store's refresh thread also brings other processes'
transitions, and runs :meth:`Rollouts._sync`: the pooled evidence and the automatic steps.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import getpass
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import mmh3

from . import _gate as gate
from ._decision import Decision, Reason
from ._failures import Failures, log
from ._health import HealthReport
from ._hooks import Hook, Hooks, TransitionEvent
from ._plan import Plan, compile_policy
from ._policy import Policy, load_policy
from ._pool import exchange
from ._reload import PolicyFile, apply_changes, kill_list
from ._rollout import Rollout
from ._state import (
    NO_EVIDENCE,
    Action,
    Evidence,
    RolloutState,
    RolloutStatus,
    Transition,
)
from ._transitions import EVENTS, initial_state, next_state, unknown_state, verb
from .exceptions import StoreError, TransitionError, UnknownRolloutError
from .patterns import Migration, Mismatch, Phase, Shadow, migration, shadow, switch
from .stores import MemoryStore, Store, SyncingStore, store_from_url

if TYPE_CHECKING:
    from ._guard import Tracking

__all__ = ["Rollouts"]

P = ParamSpec("P")
R = TypeVar("R")
RP = ParamSpec("RP")
RR = TypeVar("RR")
WP = ParamSpec("WP")
WR = TypeVar("WR")

_hash = mmh3.hash
_MAX_UNKNOWN_NAMES = 1024
_SUPERVISE_EVERY_S = 1.0  # how often callers' calls check that the store's thread runs


def default_actor() -> str:
    """The operating-system user: the actor of a transition when none is named."""
    try:
        return getpass.getuser()
    except Exception:  # no user database entry (containers): still say something
        return "unknown"


class Rollouts:
    """A policy's rollouts, bound to a state store and the process's environment.

    Each instance is independent: no global state. ``policy`` is a :class:`Policy`, a
    mapping in the policy file's shape, or a path to a TOML, JSON or YAML file.
    ``environment`` defaults to ``$STAGEDROLL_ENV``; ``store`` to a new :class:`MemoryStore`
    (or a store URL such as ``memory://``); ``clock`` (seconds, default :func:`time.time`)
    stamps transitions and measures bake times. ``on_transition`` is a hook (or several)
    called with a :class:`TransitionEvent` after each transition this instance makes.
    ``reload_interval`` (seconds; only with a path) reads the policy file again when it
    changed, checked at most that often by the calls that come; see :meth:`from_file`.
    ``context`` gives attributes to every decision (a canary by host: ``bucket_by =
    "host"`` in the policy, ``context={"host": socket.gethostname()}`` here).
    Rollouts named in ``$STAGEDROLL_KILL`` (comma-separated) are off in this process.
    """

    def __init__(
        self,
        policy: Policy | Mapping[str, Any] | str | os.PathLike[str],
        *,
        store: Store | str | None = None,
        environment: str | None = None,
        clock: Callable[[], float] | None = None,
        on_transition: Hook | Iterable[Hook] | None = None,
        reload_interval: float | None = None,
        context: Mapping[str, object] | None = None,
    ) -> None:
        self.context: Mapping[str, object] = MappingProxyType(dict(context or {}))
        """Attributes of every decision made here (the call's own attributes win), such as
        ``{"host": socket.gethostname()}`` for a rollout that buckets on the host."""
        self.failures = Failures()
        self._file: PolicyFile | None = None
        if reload_interval is not None:
            if not isinstance(policy, str | os.PathLike):
                raise TypeError("reload_interval needs a policy file (a path), not a mapping")
            self._file = PolicyFile(policy, reload_interval, self.failures)
        self.policy: Policy = self._file.policy if self._file is not None else load_policy(policy)
        if environment is None:
            environment = os.environ.get("STAGEDROLL_ENV")
        environment = environment or None  # an empty name names no environment
        self.policy.check_environment(environment)
        self.environment = environment
        self.clock: Callable[[], float] = clock if clock is not None else time.time
        self._owns_store = store is None or isinstance(store, str)
        if store is None:
            store = MemoryStore()
        elif isinstance(store, str):
            store = store_from_url(store)
        self.store: Store = store
        self.hooks = Hooks(self.failures)
        """The transition hooks; see :meth:`on_transition`."""
        if on_transition is not None:
            for hook in [on_transition] if callable(on_transition) else on_transition:
                self.hooks.add(hook)
        self._unknown: set[str] = set()
        self._unstarted: set[str] = set()  # rollouts whose state the store could not give
        self._unreadable: set[str] = set()  # serving the old path: their stored state is corrupt
        self._pooled = isinstance(store, SyncingStore)
        self._chores = self._pooled or self._file is not None  # see _tend
        self._supervise_at = 0.0
        self.removed: list[str] = []
        """Rollouts that a reloaded policy no longer has: their handles (and the guards built
        on them) take the old path for every call, and their stored state stays."""
        self._rollouts: dict[str, Rollout] = {}  # one handle per name, for life
        self._rollouts = {
            name: Rollout(self, plan, self._start(name))
            for name, plan in self._compile(self.policy).items()
        }
        self.store.watch(self._on_state)
        if isinstance(store, SyncingStore):
            store.on_refresh(self._sync)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        store: Store | str | None = None,
        environment: str | None = None,
        clock: Callable[[], float] | None = None,
        on_transition: Hook | Iterable[Hook] | None = None,
        reload_interval: float | None = None,
        context: Mapping[str, object] | None = None,
    ) -> Rollouts:
        """Load the policy at ``path`` (TOML, JSON or YAML) and bind it.

        With ``reload_interval`` (seconds), a change of the file is noticed by the calls
        that come (``decide``, ``track``, ``report``, guarded calls now and then,
        ``status``, ``tick``), at most that often, with no thread, and the new policy is
        swapped in whole. With a SQLite or Redis store, the store's refresh thread looks
        instead of the service's calls (and ``status`` and ``tick``), so no call waits on a
        reload. A file that does not validate is not applied: the last good policy keeps
        serving, the problems are logged once, and ``status()`` shows them
        (``pending_policy``). The stored state (stage, freeze) is kept; a rollout whose
        policy changed starts its outcome counters afresh. One the file no longer has is
        listed in :attr:`removed` and logged: its guards send every call to the old path,
        its state is kept, and ``kill``, ``freeze`` and ``status`` still work on it. A file
        with no ``rollouts`` table is refused (a save caught half-written); save the file
        atomically all the same (write a temporary file, then rename it).
        """
        return cls(Path(path), store=store, environment=environment, clock=clock,
                   on_transition=on_transition, reload_interval=reload_interval,
                   context=context)  # fmt: skip

    def _compile(self, policy: Policy) -> dict[str, Plan]:
        """``policy``'s plans for this environment, with ``$STAGEDROLL_KILL`` applied."""
        plans = compile_policy(policy, self.environment)
        killed = kill_list()
        for name in killed:
            if name in plans:
                plans[name].killed = True
            elif name not in self._rollouts:  # a rollout a reload removed is no typo
                log("warning", "rollout.unknown", rollout=name, source="STAGEDROLL_KILL")
        return plans

    def _reload(self) -> None:
        """Apply the policy file if it changed and validates; never raises."""
        if self._file is not None and self._file.due():
            apply_changes(self, self._file)

    def _tend(self) -> None:
        """The chores that a caller's call does now and then; never raises.

        Without a store thread, reload the policy file when due. With one, its refresh
        reloads instead (no call of the service waits while a policy is read, validated
        and compiled), and the call checks at most once a second that the thread runs (it
        restarts a thread that died: ``store.thread_died``), so that a process whose calls
        never reach the store still sees kills. While the store is down, its refresh backs
        off: the call then reloads the file itself (the operator's lever in an outage).
        """
        if not self._pooled:
            self._reload()
            return
        now = time.monotonic()
        if now < self._supervise_at:
            return
        self._supervise_at = now + _SUPERVISE_EVERY_S
        supervise = getattr(self.store, "supervise", None)
        if supervise is not None:
            try:
                supervise()
            except Exception as exc:  # pragma: no cover - supervise never raises
                self.failures.record("store.supervise_failed", exc)
        if getattr(self.store, "down", False):
            self._reload()

    def close(self) -> None:
        """Close the store if this instance made it (from a URL, or the default one).

        A store passed in as an object belongs to the caller, who closes it. Decisions keep
        working after ``close`` (on the last known state); nothing is refreshed any more.
        """
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> Rollouts:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def on_transition(self, hook: Hook) -> Hook:
        """Call ``hook`` with a :class:`TransitionEvent` after each transition made here.

        Usable as a decorator. Hooks run in the order they were added, after the transition
        is stored; one that raises is logged and counted (``hook.failed``) and changes
        nothing. ``async`` hooks become tasks of the running event loop.
        """
        return self.hooks.add(hook)

    def __repr__(self) -> str:
        return f"<Rollouts {sorted(self)} environment={self.environment!r}>"

    def _start(self, name: str, policy: Policy | None = None) -> RolloutState:
        """Load a rollout's state; record its start if the store has never seen it.

        When the store fails, the rollout serves 0 % (the stable path) until the store
        answers: the store's background refresh, ``tick``, ``status`` or a transition tries
        again. ``policy`` is the one a reload is applying (it names the first stage in the
        log), by default the one in force.
        """
        try:
            state = self.store.load(name)
            if state is None:
                first = initial_state(self.clock())
                started = RolloutState(stage=0, status=first.status, since=first.since,
                                       version=1, actor="stagedroll", epoch=1,
                                       history=uuid.uuid4().hex)  # fmt: skip
                entry = Transition(name, Action.START, 0, 0, None, started.status, 1,
                                   started.since, actor="stagedroll")  # fmt: skip
                if self.store.compare_and_set(name, 0, started, entry):
                    known = (policy or self.policy).rollouts.get(name)  # None: removed
                    stage = known.stages[0].name if known is not None else None
                    log("info", EVENTS[Action.START], rollout=name, stage=stage)
                    state = started
                else:
                    state = self.store.load(name)  # another process started it first
            if state is None:
                raise RuntimeError("the state vanished from the store after it was written")
        except Exception as exc:
            # Serve the stable path until the store answers; never fail the host.
            corrupt = isinstance(exc, ValueError)  # the store answered, with a state it refuses
            self.failures.record("store.state_unreadable" if corrupt else "store.load_failed",
                                 exc, rollout=name)  # fmt: skip
            self._unstarted.add(name)
            return unknown_state(self.clock())
        self._unstarted.discard(name)
        return state

    def _sync(self) -> None:
        """The store's background refresh: start, pool the evidence, take the steps due.

        Runs on the store's thread (stores shared by processes), never on a caller's.
        """
        self._reload()
        unreadable: Mapping[str, str] = getattr(self.store, "unreadable", {})
        for rollout in list(self._rollouts.values()):
            if getattr(self.store, "closed", False):
                return  # closed meanwhile (by a hook, or another thread)
            try:
                self._follow_unreadable(rollout, unreadable.get(rollout.name))
                self._restart(rollout)
                self._pool(rollout)
                self._auto_step(rollout)
            except Exception as exc:  # pragma: no cover - each step catches what it expects
                self.failures.record("store.sync_failed", exc, rollout=rollout.name)

    def _follow_unreadable(self, rollout: Rollout, why: str | None) -> None:
        """Serve the old path for ``rollout`` while its stored state is corrupt; never raises.

        ``why`` is the store's reason when its last refresh could not read the state (see
        ``SharedStore.unreadable``), ``None`` when it could. The last good state is not
        served: whoever wrote the store behind stagedroll's back may have meant a kill. Once
        the state reads again (repaired, or restored from its history), it is loaded.
        """
        name = rollout.name
        if why is not None and name not in self._unreadable:
            self._unreadable.add(name)
            rollout._suspend(unknown_state(self.clock(), reason="state unreadable: " + why))
            log("error", "rollout.state_unreadable", rollout=name, error=why,
                serving="the old path until the stored state is repaired")  # fmt: skip
        elif why is None and name in self._unreadable:
            self._unreadable.discard(name)
            with contextlib.suppress(StoreError):
                self._load(name)
            log("info", "rollout.state_readable", rollout=name, stage=rollout._view.stage_name)

    def _restart(self, rollout: Rollout) -> None:
        """Start ``rollout`` if the store could not give its state before; never raises."""
        if rollout.name in self._unstarted and not rollout._plan.removed:
            state = self._start(rollout.name)
            if state.version:
                rollout._adopt(state)

    def _pool(self, rollout: Rollout) -> None:
        """Flush ``rollout``'s queued events to the store, and take the fleet's totals."""
        exchange(self, rollout)

    def _on_state(self, name: str, state: RolloutState) -> None:
        rollout = self._rollouts.get(name)
        if rollout is not None:
            rollout._adopt(state)

    # -- lookup ------------------------------------------------------------------------------------

    def __getitem__(self, name: str) -> Rollout:
        """Return the handle of rollout ``name``; raise :class:`UnknownRolloutError` if none.

        A rollout that a reload removed keeps its handle (listed in :attr:`removed`): its
        calls take the old path, and it can still be killed, frozen and inspected.
        """
        try:
            return self._rollouts[name]
        except KeyError:
            raise UnknownRolloutError(name, list(self)) from None

    def __contains__(self, name: object) -> bool:
        """Whether the policy in force has rollout ``name``."""
        return name in self.policy.rollouts

    def __iter__(self) -> Iterator[str]:
        """The names of the rollouts of the policy in force."""
        return iter(self.policy.rollouts)

    def __len__(self) -> int:
        return len(self.policy.rollouts)

    def _missing(self, name: str) -> None:
        if name not in self._unknown and len(self._unknown) < _MAX_UNKNOWN_NAMES:
            self._unknown.add(name)
            log("warning", "rollout.unknown", rollout=name, known=sorted(self))

    # -- decisions ---------------------------------------------------------------------------------

    def enabled(
        self, name: str, unit: object, attributes: Mapping[str, object] | None = None
    ) -> bool:
        """Return whether the new path of rollout ``name`` is on for ``unit``.

        An unknown name gives ``False`` and is logged once.
        """
        rollout = self._rollouts.get(name)
        if rollout is None:
            self._missing(name)
            return False
        # Rollout.enabled's fast path, inlined: this is the hottest call of the library.
        v = rollout._view
        if v.plain and unit.__class__ is str and unit.isascii():
            return _hash(v.prefix + unit, 0, False) < v.threshold
        return rollout.enabled(unit, attributes)

    def decide(
        self, name: str, unit: object, attributes: Mapping[str, object] | None = None
    ) -> Decision:
        """Return the decision of rollout ``name`` for ``unit``; see :meth:`Rollout.decide`.

        An unknown name gives ``enabled=False`` with reason ``UNKNOWN_ROLLOUT``, logged once.
        """
        if self._chores:
            self._tend()
        rollout = self._rollouts.get(name)
        if rollout is None:
            self._missing(name)
            return Decision(name, False, Reason.UNKNOWN_ROLLOUT)
        return rollout.decide(unit, attributes)

    def guard(
        self,
        name: str,
        *,
        fallback: Callable[P, R],
        unit: Callable[P, object] | None,
        attributes: Callable[P, Mapping[str, object]] | None = None,
        reraise: bool = False,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorate the new path of rollout ``name``, with ``fallback`` as the old one.

        ``unit`` takes the function's arguments and returns the unit to bucket on (``None``
        buckets each call afresh: per-request rollouts). ``attributes`` likewise returns the
        attributes that segments match. Each call runs the new function in treatment and
        ``fallback`` in control, and records its outcome. When the new function raises an
        ``Exception``, the error is recorded and ``fallback`` answers instead, unless
        ``reraise=True``. Works on ``async def`` functions too (both sides async). Raises
        :class:`UnknownRolloutError` at once for an unknown name.
        """
        return self[name].guard(fallback=fallback, unit=unit, attributes=attributes,
                                reraise=reraise)  # fmt: skip

    def switch(
        self,
        name: str,
        *,
        blue: Callable[P, R],
        green: Callable[P, R],
        unit: Callable[P, object] | None,
        attributes: Callable[P, Mapping[str, object]] | None = None,
        reraise: bool = False,
    ) -> Callable[P, R]:
        """A blue-green switch over rollout ``name``; see :func:`stagedroll.patterns.switch`."""
        return switch(self, name, blue=blue, green=green, unit=unit, attributes=attributes,
                      reraise=reraise)  # fmt: skip

    def shadow(
        self,
        name: str,
        *,
        candidate: Callable[P, R],
        unit: Callable[P, object] | None,
        attributes: Callable[P, Mapping[str, object]] | None = None,
        compare: Callable[[Any, Any], object] | None = None,
        ignore: Callable[[Any, Any], object] | None = None,
        redact: Callable[[Any], object] | None = None,
        samples: int = 100,
        on_mismatch: Callable[[Mismatch], object] | None = None,
        executor: concurrent.futures.Executor | None = None,
        max_pending: int = 64,
        timeout: float | None = None,
    ) -> Shadow[P, R]:
        """A dark launch of ``candidate`` over rollout ``name``, to decorate the old path with.

        See :func:`stagedroll.patterns.shadow`.
        """
        return shadow(self, name, candidate=candidate, unit=unit, attributes=attributes,
                      compare=compare, ignore=ignore, redact=redact, samples=samples,
                      on_mismatch=on_mismatch, executor=executor, max_pending=max_pending,
                      timeout=timeout)  # fmt: skip

    def migration(
        self,
        name: str,
        *,
        old_read: Callable[RP, RR],
        new_read: Callable[RP, RR],
        old_write: Callable[WP, WR],
        new_write: Callable[WP, WR],
        compare: Callable[[Any, Any], object] | None = None,
        ignore: Callable[[Any, Any], object] | None = None,
        redact: Callable[[Any], object] | None = None,
        samples: int = 100,
        on_mismatch: Callable[[Mismatch], object] | None = None,
        default: Phase | str = Phase.OFF,
    ) -> Migration[RP, RR, WP, WR]:
        """An expand/contract migration over rollout ``name``, whose stages are its phases.

        See :func:`stagedroll.patterns.migration`.
        """
        return migration(self, name, old_read=old_read, new_read=new_read,
                         old_write=old_write, new_write=new_write, compare=compare,
                         ignore=ignore, redact=redact, samples=samples,
                         on_mismatch=on_mismatch, default=default)  # fmt: skip

    def track(
        self, name: str, unit: object, attributes: Mapping[str, object] | None = None
    ) -> Tracking:
        """Decide for ``unit`` and record the outcome of the ``with`` (or ``async with``) block.

        The block receives the :class:`Decision`; an exception leaving it counts as an error
        (and propagates). Raises :class:`UnknownRolloutError` for an unknown name.
        """
        if self._chores:
            self._tend()
        return self[name].track(unit, attributes)

    def report(
        self,
        name: str,
        unit: object,
        *,
        error: bool,
        latency_s: float | None = None,
        attributes: Mapping[str, object] | None = None,
    ) -> Decision:
        """Record an outcome observed outside a guard (the manual error hook).

        The outcome goes to the arm ``unit`` is decided into; that decision is returned. An
        unknown name records nothing and returns an ``UNKNOWN_ROLLOUT`` decision.
        """
        if self._chores:
            self._tend()
        rollout = self._rollouts.get(name)
        if rollout is None:
            self._missing(name)
            return Decision(name, False, Reason.UNKNOWN_ROLLOUT)
        return rollout.report(unit, error=error, latency_s=latency_s, attributes=attributes)

    # -- operations ------------------------------------------------------------------------------

    def advance(self, name: str, *, reason: str = "", actor: str | None = None) -> Transition:
        """Move rollout ``name`` to its next stage."""
        return self._transition(name, Action.ADVANCE, reason, actor)

    def freeze(self, name: str, *, reason: str = "", actor: str | None = None) -> Transition:
        """Hold rollout ``name`` at its stage: it keeps serving it, and does not advance."""
        return self._transition(name, Action.FREEZE, reason, actor)

    def unfreeze(self, name: str, *, reason: str = "", actor: str | None = None) -> Transition:
        """Resume rollout ``name`` at its stage after a freeze, rollback or kill."""
        return self._transition(name, Action.UNFREEZE, reason, actor)

    def rollback(self, name: str, *, reason: str = "", actor: str | None = None) -> Transition:
        """Move rollout ``name`` back one stage (to 0 % from the first stage)."""
        return self._transition(name, Action.ROLLBACK, reason, actor)

    def kill(self, name: str, *, reason: str = "", actor: str | None = None) -> Transition:
        """Turn the new path of rollout ``name`` off for everyone, now (the kill switch)."""
        return self._transition(name, Action.KILL, reason, actor)

    def complete(self, name: str, *, reason: str = "", actor: str | None = None) -> Transition:
        """Turn the new path of rollout ``name`` on for everyone, for good."""
        return self._transition(name, Action.COMPLETE, reason, actor)

    def _transition(
        self,
        name: str,
        action: Action,
        reason: str,
        actor: str | None,
        *,
        expected: RolloutState | None = None,
        evidence: Evidence | None = None,
    ) -> Transition:
        """Apply ``action`` to the state in the store (or to ``expected``), by compare-and-set.

        Raises :class:`TransitionError` when the action does not apply to that state, or when
        another writer changed it between our read and our write (the action is then not
        retried: ``advance`` twice would skip a stage), and :class:`StoreError` when the store
        fails. The history entry carries the health evidence of the moment.
        """
        rollout = self[name]
        who = actor if actor is not None else default_actor()
        current = expected if expected is not None else self._load(name)
        if current is None:  # never started: the store was down when this process started
            current = self._start(name)
            if not current.version:
                raise StoreError(f"the store failed to start {name!r}; see store.load_failed")
            rollout._adopt(current)
        if evidence is None:
            evidence = self._health(rollout).evidence() if rollout.health else NO_EVIDENCE
        now = self.clock()
        new = next_state(name, action, current, last_stage=rollout._plan.last_stage,
                         now=now, reason=reason, actor=who)  # fmt: skip
        entry = Transition(
            rollout=name,
            action=action,
            from_stage=current.stage,
            to_stage=new.stage,
            from_status=current.status,
            to_status=new.status,
            version=new.version,
            at=now,
            reason=reason,
            actor=who,
            evidence=evidence,
        )
        try:
            committed = self.store.compare_and_set(name, current.version, new, entry)
        except Exception as exc:
            raise StoreError(f"the store failed to {verb(action)} {name!r}: {exc}") from exc
        if not committed:
            latest = self._load(name) or current
            raise TransitionError(
                f"cannot {verb(action)} {name!r}: it changed meanwhile (now stage {latest.stage}, "
                f"{latest.status}, by {latest.actor or 'unknown'}); not applied"
            )
        rollout._adopt(new)  # the store's listeners did it too, unless it has none
        log("info", EVENTS[action], rollout=name, stage=rollout._view.stage_name,
            from_stage=current.stage, to_stage=new.stage, status=str(new.status),
            reason=reason, actor=who, evidence=dict(evidence))  # fmt: skip
        if len(self.hooks):
            names = (self._stage_name(rollout, current.stage),
                     self._stage_name(rollout, new.stage))  # fmt: skip
            self.hooks.fire(TransitionEvent.of(entry, names))
        return entry

    @staticmethod
    def _stage_name(rollout: Rollout, stage: int) -> str | None:
        stages = rollout._plan.stages
        return stages[min(stage, len(stages) - 1)].name if stage >= 0 else None

    # -- the health gate ---------------------------------------------------------------------------

    def _health(self, rollout: Rollout) -> HealthReport:
        """The health evidence of ``rollout`` in its current stage visit."""
        return gate.report(self, rollout)

    def _auto_step(self, rollout: Rollout) -> Transition | None:
        """Take the automatic step that is due for ``rollout``, if any; never raises."""
        return gate.step(self, rollout)

    def tick(self) -> list[Transition]:
        """Take every automatic step that is due now; return the transitions made.

        Steps are otherwise taken as outcomes arrive; ``tick`` is for a process that may be
        idle when a bake time ends (call it from a scheduler or a health-check endpoint).
        """
        self._reload()
        made = []
        for rollout in list(self._rollouts.values()):
            self._restart(rollout)
            with contextlib.suppress(StoreError):
                self._load(rollout.name)
            self._pool(rollout)
            transition = self._auto_step(rollout)
            if transition is not None:
                made.append(transition)
        return made

    def _load(self, name: str) -> RolloutState | None:
        try:
            state = self.store.load(name)
        except ValueError as exc:  # the store answered with a state it cannot read
            raise StoreError(
                f"{exc}; {name!r} serves the old path until it is repaired (delete the stored "
                "state to restore it from its history)"
            ) from exc
        except Exception as exc:
            raise StoreError(f"the store failed to load {name!r}: {exc}") from exc
        rollout = self._rollouts.get(name)  # a reload may have removed it meanwhile
        if state is not None and rollout is not None:
            rollout._adopt(state)
        return state

    def status(self, name: str) -> RolloutStatus:
        """Where rollout ``name`` stands, read afresh from the store, with its evidence."""
        self._reload()
        rollout = self[name]
        self._restart(rollout)
        self._load(name)
        self._pool(rollout)
        view = rollout._view
        state = view.state
        control, treatment, targeted = rollout.outcomes.stats(view.stage)
        health = self._health(rollout)
        last = rollout._plan.last_stage
        following = rollout._plan.stages[view.stage + 1].name if view.stage < last else None
        return RolloutStatus(
            rollout=name,
            environment=self.environment,
            mode=rollout._plan.mode,
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
            next_stage=following,
            internal_errors=self.failures.count(),
            health=health,
            waiting_for=gate.waiting_for(self, rollout, health),
            pending_policy=self._file.error if self._file is not None else None,
            in_policy=not rollout._plan.removed,
        )

    def history(self, name: str, limit: int | None = None) -> list[Transition]:
        """The transitions of rollout ``name``, newest first (at most ``limit``)."""
        self[name]
        try:
            return self.store.history(name, limit)
        except Exception as exc:
            raise StoreError(f"the store failed to read the history of {name!r}: {exc}") from exc
