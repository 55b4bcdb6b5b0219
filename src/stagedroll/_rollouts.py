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
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, ParamSpec, TypeVar, cast

from ._comparison import Comparison, Mismatch
from ._decision import Decision, Reason
from ._exchange import exchange
from ._failures import Failures, contained, log
from ._guard import Tracking
from ._hooks import Hook, Hooks
from ._migration import Migration, Phase
from ._plan import Plan, compile_policy
from ._policy import OnError, Policy, RolloutPolicy, load_policy
from ._reload import PolicyFile, kill_list
from ._rollout import Rollout
from ._runtime import Runtime
from ._shadow import Shadow
from ._state import Action, RolloutState, Transition
from ._status import RolloutStatus, Snapshot
from ._steering import default_actor
from .exceptions import StoreError, UnknownRolloutError
from .stores import MemoryStore, Store, SyncingStore, store_from_url

__all__ = ["Rollouts", "default_actor"]

P = ParamSpec("P")
R = TypeVar("R")
RP = ParamSpec("RP")
RR = TypeVar("RR")
WP = ParamSpec("WP")
WR = TypeVar("WR")

ChangeListener = Callable[[str, RolloutState], object]
"""Told of every new state of a rollout this process follows: its name, and the state."""

_MAX_UNKNOWN_NAMES = 1024
_SUPERVISE_EVERY_S = 1.0  # how often callers' calls check that the store's thread runs


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
    ``on_error`` (``"fallback"`` or ``"raise"``) says what a guard does with an exception
    of the new path, over the policy's ``on_error`` for the environment (default
    ``"fallback"``); see :meth:`guard`. :meth:`from_env` reads what the CLI reads.
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
        on_error: OnError | None = None,
    ) -> None:
        if on_error not in (None, "fallback", "raise"):
            raise ValueError(f'on_error must be "fallback" or "raise", not {on_error!r}')
        self._on_error = on_error
        self.context: Mapping[str, object] = MappingProxyType(dict(context or {}))
        """Attributes of every decision made here (the call's own attributes win), such as
        ``{"host": socket.gethostname()}`` for a rollout that buckets on the host."""
        self.failures = Failures()
        file: PolicyFile | None = None
        if reload_interval is not None:
            if not isinstance(policy, str | os.PathLike):
                raise TypeError("reload_interval needs a policy file (a path), not a mapping")
            file = PolicyFile(policy, reload_interval, self.failures)
        self.policy: Policy = file.policy if file is not None else load_policy(policy)
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
        _check_store(store)
        self.store: Store = store
        self.hooks = Hooks(self.failures)
        """The transition hooks; see :meth:`on_transition`."""
        if on_transition is not None:
            for hook in [on_transition] if callable(on_transition) else on_transition:
                self.hooks.add(hook)
        self._unknown: set[str] = set()
        self._changes: list[ChangeListener] = []
        shared = isinstance(store, SyncingStore)
        self._runtime = Runtime(
            store=store,
            clock=self.clock,
            failures=self.failures,
            hooks=self.hooks,
            environment=environment,
            context=self.context,
            shared=shared,
            file=file,
            chores=shared or file is not None,
            tend=self._tend,
            reload=self._reload,
            changed=self._changed,
            raises=self._raises(self.policy),
        )
        self._supervise_at = 0.0
        self.removed: list[str] = []
        """Rollouts that a reloaded policy no longer has: their handles (and the guards built
        on them) take the old path for every call, and their stored state stays."""
        self._rollouts: dict[str, Rollout] = {}  # one handle per name, for life
        self._rollouts = {
            name: Rollout(self._runtime, plan) for name, plan in self._compile(self.policy).items()
        }
        self.store.watch(self._on_state)
        if isinstance(store, SyncingStore):
            store.before_refresh(self._exchange)
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
        on_error: OnError | None = None,
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
                   context=context, on_error=on_error)  # fmt: skip

    @classmethod
    def from_env(
        cls,
        *,
        policy: Policy | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        store: Store | str | None = None,
        environment: str | None = None,
        clock: Callable[[], float] | None = None,
        on_transition: Hook | Iterable[Hook] | None = None,
        reload_interval: float | None = None,
        context: Mapping[str, object] | None = None,
        on_error: OnError | None = None,
    ) -> Rollouts:
        """Bind the policy and store that the ``stagedroll`` command would use.

        The variables the CLI reads, read the same way: ``$STAGEDROLL_POLICY`` (the policy
        file), ``$STAGEDROLL_STORE`` (the store URL; unset: an in-process ``memory://``
        store) and ``$STAGEDROLL_ENV`` (the environment). An argument given here wins over
        its variable. Raises :class:`ValueError` when neither names a policy.
        """
        if policy is None:
            path = os.environ.get("STAGEDROLL_POLICY")
            if not path:
                raise ValueError("no policy: pass policy=... or set STAGEDROLL_POLICY")
            policy = Path(path)
        if store is None:
            store = os.environ.get("STAGEDROLL_STORE") or None
        return cls(policy, store=store, environment=environment, clock=clock,
                   on_transition=on_transition, reload_interval=reload_interval,
                   context=context, on_error=on_error)  # fmt: skip

    def _raises(self, policy: Policy) -> bool:
        """Whether guards re-raise the new path's exceptions under ``policy``."""
        if self._on_error is not None:
            return self._on_error == "raise"
        return policy.raises_in(self.environment)

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
        file = self._runtime.file
        if file is not None and file.due():
            file.check(self._apply)

    def _apply(self, policy: Policy) -> None:
        """Swap in ``policy`` (the file changed, and validates); never raises.

        Every name keeps one handle for the life of this instance, so the guards, shadows
        and migrations built on it follow whatever a reload does. Rollouts that stay are
        re-planned in place. Those the file no longer has keep their handle with a retired
        plan (every call takes the old path; transitions and ``status`` still reach the
        store); they are listed in :attr:`removed` and logged with what was built on them and
        their state. A rollout that comes back is re-planned on its old handle. New ones
        start now with an in-process store; with a store shared by processes they serve 0 %
        until the store's refresh starts them (a caller's call does no store I/O).
        """
        file = self._runtime.file
        assert file is not None
        try:
            policy.check_environment(self.environment)
            _check_patterns(self._rollouts, policy)
            plans = self._compile(policy)
        except Exception as exc:
            file.applied(str(exc))
            return
        handles = dict(self._rollouts)
        for name, plan in plans.items():
            current = handles.get(name)
            if current is not None:
                self._rebucketed(name, current, plan.policy, str(file.path))
                current._replan(plan)
                if name in self.removed:
                    self.removed.remove(name)
                    log("info", "policy.rollout_restored", rollout=name, path=str(file.path))
            else:
                handles[name] = Rollout(self._runtime, plan, start=not self._runtime.shared)
        # The handles first, then the policy (which names the rollouts): a reader that lists
        # the rollouts of either policy finds a handle for each name.
        self._rollouts = handles
        self.policy = policy
        self._runtime.raises = self._raises(policy)
        log("info", "policy.reloaded", path=str(file.path), rollouts=sorted(policy.rollouts))
        for name, handle in handles.items():
            if name in plans or not handle.in_policy:
                continue
            handle._retire()
            self.removed.append(name)
            state = handle.state
            log("warning", "policy.rollout_removed", rollout=name, path=str(file.path),
                guards=handle._bound, stage=state.stage, status=str(state.status),
                version=state.version, serving="the old path for every call; the stored "
                "state stays, and kill, freeze and status still reach it")  # fmt: skip

    @staticmethod
    def _rebucketed(name: str, handle: Rollout, policy: RolloutPolicy, path: str) -> None:
        """Warn when a reload changes how a live rollout buckets: its units change cohorts."""
        was, now = handle.policy.scheme(name).describe(), policy.scheme(name).describe()
        state = handle.state
        if was == now or not handle.in_policy or state.stage < 0:
            return
        log("warning", "policy.rebucketed", rollout=name, path=path, was=was, now=now,
            stage=state.stage, status=str(state.status), note="units move between cohorts "
            "at the same percent; set the bucketing back to keep them")  # fmt: skip

    def _tend(self) -> None:
        """The chores that a caller's call does now and then; never raises.

        Without a store thread, reload the policy file when due. With one, its refresh
        reloads instead (no call of the service waits while a policy is read, validated
        and compiled), and the call checks at most once a second that the thread runs (it
        restarts a thread that died: ``store.thread_died``), so that a process whose calls
        never reach the store still sees kills. While the store is down, its refresh backs
        off: the call then reloads the file itself (the operator's lever in an outage).
        """
        if not self._runtime.shared:
            self._reload()
            return
        now = time.monotonic()
        if now < self._supervise_at:
            return
        self._supervise_at = now + _SUPERVISE_EVERY_S
        store = cast(SyncingStore, self.store)  # shared: the store is a SyncingStore
        try:
            store.supervise()
            down = store.down
        except Exception as exc:  # a custom store's supervise that raises: counted, not raised
            self.failures.record("store.supervise_failed", exc)
            return
        if down:
            self._reload()

    def close(self) -> None:
        """Flush what is queued for a shared store; close the store if this instance made it.

        With a store shared by processes, the evidence and the recent errors queued since
        the last refresh are written first (a short job's failures reach ``status``
        elsewhere); that never raises. A store passed in as an object belongs to the
        caller, who closes it. Decisions keep working after ``close`` (on the last known
        state); nothing is refreshed any more.
        """
        if self._runtime.shared and not getattr(self.store, "closed", False):
            self._pool(list(self._rollouts.values()))
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
        nothing. ``async`` hooks become tasks of the running event loop. :meth:`off_transition`
        removes it.
        """
        return self.hooks.add(hook)

    def off_transition(self, hook: Hook) -> bool:
        """Stop calling ``hook`` (added by :meth:`on_transition`); whether it was there.

        Removes one registration: a hook added twice is called once after one removal.
        """
        try:
            self.hooks.remove(hook)
        except ValueError:
            return False
        return True

    def __repr__(self) -> str:
        return f"<Rollouts {sorted(self)} environment={self.environment!r}>"

    def on_change(self, listener: ChangeListener) -> ChangeListener:
        """Call ``listener(name, state)`` whenever a rollout of this instance takes a new state.

        From any process, once per state: a transition made here, or one another process
        made, at the first read that sees it (the store's refresh, ``status``, ``tick``).
        Usable as a decorator.
        The listener runs on the thread that saw the change (the caller's, or the store's
        refresh thread), after the change is in force; one that raises is logged and counted
        (``hook.failed``) and changes nothing. :meth:`off_change` removes it.
        """
        if not callable(listener):
            raise TypeError(f"a change listener must be callable, not {type(listener).__name__}")
        self._changes = [*self._changes, listener]
        return listener

    def off_change(self, listener: ChangeListener) -> bool:
        """Stop calling ``listener`` (added by :meth:`on_change`); whether it was there.

        Removes one registration: a listener added twice is called once after one removal.
        A change being told while it is removed may still reach it that once.
        """
        changes = list(self._changes)
        try:
            changes.remove(listener)
        except ValueError:
            return False
        self._changes = changes
        return True

    def _pool(self, rollouts: list[Rollout]) -> None:
        """Pool the evidence of ``rollouts`` in one exchange with the store; never raises."""
        members = [member for rollout in rollouts if (member := rollout._member()) is not None]
        if members:
            exchange(self.store, self.failures, members)

    def _exchange(self) -> None:
        """The start of the store's background refresh: pool what is due, in one exchange.

        Every rollout whose evidence needs the store (see ``Rollout._pool_due``) goes in
        one round trip, before the refresh reads the states (a batching store tells it the
        store's marker of change on the way, see ``SharedStore``); the steps come after it.
        Runs on the store's thread, never on a caller's.
        """
        try:
            due = [rollout for rollout in list(self._rollouts.values()) if rollout._pool_due()]
            self._pool(due)
        except Exception as exc:  # pragma: no cover - each step catches what it expects
            self.failures.record("store.sync_failed", exc)

    def _sync(self) -> None:
        """The store's background refresh, once it read the states: start, take the steps due.

        Runs on the store's thread (stores shared by processes), never on a caller's.
        """
        self._reload()
        unreadable: Mapping[str, str] = getattr(self.store, "unreadable", {})
        for rollout in list(self._rollouts.values()):
            if getattr(self.store, "closed", False):
                return  # closed meanwhile (by a hook, or another thread)
            try:
                rollout._follow_unreadable(unreadable.get(rollout.name))
                rollout._tick(background=True)
            except Exception as exc:  # pragma: no cover - each step catches what it expects
                self.failures.record("store.sync_failed", exc, rollout=rollout.name)

    def _on_state(self, name: str, state: RolloutState) -> None:
        rollout = self._rollouts.get(name)
        if rollout is not None:
            rollout._adopt(state)

    def _changed(self, name: str, state: RolloutState) -> None:
        """A rollout's new state is in force: tell the change listeners; never raises."""
        for listener in self._changes:  # a list replaced, never mutated: safe to iterate
            self._tell_change(listener, name, state)

    def _tell_change(self, listener: ChangeListener, name: str, state: RolloutState) -> None:
        """Call one change listener; what it raises is logged and counted, not raised."""
        try:
            listener(name, state)
        except BaseException as exc:
            if not contained(exc):
                raise
            self.failures.record("hook.failed", exc, rollout=name, hook="on_change")

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
        return rollout.enabled(unit, attributes)

    def decide(
        self, name: str, unit: object, attributes: Mapping[str, object] | None = None
    ) -> Decision:
        """Return the decision of rollout ``name`` for ``unit``; see :meth:`Rollout.decide`.

        An unknown name gives ``enabled=False`` with reason ``UNKNOWN_ROLLOUT``, logged once.
        """
        if self._runtime.chores:
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
        reraise: bool | None = None,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorate the new path of rollout ``name``, with ``fallback`` as the old one.

        ``unit`` takes the function's arguments and returns the unit to bucket on (``None``
        buckets each call afresh: per-request rollouts). ``attributes`` likewise returns the
        attributes that segments match. Each call runs the new function in treatment and
        ``fallback`` in control, and records its outcome. When the new function raises an
        ``Exception``, the error is recorded (``status(...).errors``, and the log event
        ``rollout.new_path_error``) and ``fallback`` answers instead; ``reraise=True`` raises
        it instead, ``reraise=False`` never does, and ``None`` (the default) follows
        ``on_error`` (``Rollouts(on_error=...)``, else the policy's ``on_error`` for the
        environment, else ``"fallback"``; the pytest plugin makes it ``"raise"``). Works on
        ``async def`` functions too (both sides async). Raises :class:`UnknownRolloutError`
        at once for an unknown name.
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
        reraise: bool | None = None,
    ) -> Callable[P, R]:
        """A callable that sends each call to ``green`` or ``blue`` by rollout ``name``'s stage.

        Stages such as 0 → 10 → 50 → 100 % move units from blue to green, a unit that is on
        green stays there as the share grows, and ``rollback`` or ``kill`` cuts back at once:
        the next call of every unit the stage no longer covers goes to blue. Each call's
        outcome is recorded on its arm, so the health gate compares green with blue. When
        green raises, blue answers (the error is recorded), unless ``reraise`` (or
        ``on_error``, as for :meth:`guard`) says to raise it.
        ``unit`` and ``attributes`` take the call's arguments, as for a guard; ``unit=None``
        buckets each call afresh. Sync and ``async def`` (both alike). Raises
        :class:`UnknownRolloutError` for an unknown name.

        It is a guard with green as the new path and blue as its fallback (:meth:`guard`),
        named for the pattern; also :func:`stagedroll.patterns.switch`.
        """
        return self.guard(name, fallback=blue, unit=unit, attributes=attributes,
                          reraise=reraise)(green)  # fmt: skip

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
        """A dark launch of ``candidate`` over rollout ``name``: a decorator of the old path.

        The decorated function (the old path) runs on every call and its result, or its
        exception, is what the caller gets. For a unit in the rollout's cohort the candidate
        also runs, with the same arguments, and its result is compared with the old one:
        ``compare(old, new)`` (default ``==``) says whether they match, and
        ``ignore(old, new)`` accepts a known difference. The candidate can never change the
        caller's result, and never raises into the caller.

        Where the candidate runs: sync code runs it inline after the old path (the caller
        waits for it), or on ``executor`` (a :class:`concurrent.futures.Executor` that the
        caller owns); async code runs it as a task of the running loop, stopped after
        ``timeout`` seconds when given (the health test then holds the old path to the same
        timeout, so that the pair stays fair). At most ``max_pending`` runs are in flight;
        beyond, the candidate is skipped (counted). The old path's outcome is recorded on
        the control arm and the candidate's on treatment, a mismatch counting as an error, so
        the health gate freezes (or rolls back) the stage when the candidate errs or
        disagrees more than the old path errs. Mismatches and candidate errors are kept (the
        latest ``samples``, each result passed through ``redact``, by default a short
        ``repr``) and passed to ``on_mismatch``. ``unit`` and ``attributes`` take the
        function's arguments, as for a guard. The rollout's policy says
        ``pattern = "shadow"``. Raises :class:`UnknownRolloutError` for an unknown name, and
        :class:`ValueError` for a rollout whose policy does not say ``pattern = "shadow"``.
        Also :func:`stagedroll.patterns.shadow`.
        """
        rollout = self[name]
        comparison = self._comparison("shadow", name=name, compare=compare, ignore=ignore,
                                      redact=redact, samples=samples,
                                      on_mismatch=on_mismatch)  # fmt: skip
        return Shadow(rollout, candidate=candidate, unit=unit, attributes=attributes,
                      comparison=comparison, executor=executor, max_pending=max_pending,
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
        """An expand/contract migration over rollout ``name``, whose stages are the six phases.

        The rollout's policy says ``pattern = "migration"``, which makes its stages ``off``,
        ``dual_write``, ``shadow_read``, ``live``, ``rampdown`` and ``complete``, in this
        order (their percents do not split the units: each phase applies to every unit),
        advanced by hand. ``compare(old, new)`` (default ``==``) judges the compared reads,
        ``ignore(old, new)`` accepts a known difference; mismatches and the new store's
        errors are kept (the latest ``samples``, results passed through ``redact``) and
        passed to ``on_mismatch``. ``default`` is the phase served while the rollout's state
        is unknown (the store unreachable since the process started): set it to the phase
        the migration has reached. The two reads must be both sync or both async, and
        likewise the two writes. Raises :class:`UnknownRolloutError` for an unknown name and
        :class:`ValueError` for a rollout whose policy does not say
        ``pattern = "migration"``. Also :func:`stagedroll.patterns.migration`.
        """
        rollout = self[name]
        comparison = self._comparison("migration", name=name, compare=compare, ignore=ignore,
                                      redact=redact, samples=samples,
                                      on_mismatch=on_mismatch)  # fmt: skip
        return Migration(rollout, old_read=old_read, new_read=new_read, old_write=old_write,
                         new_write=new_write, comparison=comparison, default=default)  # fmt: skip

    def _comparison(
        self,
        pattern: str,
        *,
        name: str,
        compare: Callable[[Any, Any], object] | None,
        ignore: Callable[[Any, Any], object] | None,
        redact: Callable[[Any], object] | None,
        samples: int,
        on_mismatch: Callable[[Mismatch], object] | None,
    ) -> Comparison:
        """The judge of a shadow's or a migration's two sides (the options they share)."""
        return Comparison(pattern, name, self.failures, compare=compare, ignore=ignore,
                          redact=redact, samples=samples, on_mismatch=on_mismatch,
                          clock=self.clock)  # fmt: skip

    def track(
        self, name: str, unit: object, attributes: Mapping[str, object] | None = None
    ) -> Tracking:
        """Decide for ``unit`` and record the outcome of the ``with`` (or ``async with``) block.

        The block receives the :class:`Decision`; an exception leaving it counts as an error
        (and propagates). Raises :class:`UnknownRolloutError` for an unknown name.
        """
        if self._runtime.chores:
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
        if self._runtime.chores:
            self._tend()
        rollout = self._rollouts.get(name)
        if rollout is None:
            self._missing(name)
            return Decision(name, False, Reason.UNKNOWN_ROLLOUT)
        return rollout.report(unit, error=error, latency_s=latency_s, attributes=attributes)

    # -- operations ------------------------------------------------------------------------------

    def advance(self, name: str, *, reason: str = "", actor: str | None = None) -> Transition:
        """Move rollout ``name`` to its next stage."""
        return self[name]._transition(Action.ADVANCE, reason, actor)

    def freeze(self, name: str, *, reason: str = "", actor: str | None = None) -> Transition:
        """Hold rollout ``name`` at its stage: it keeps serving it, and does not advance."""
        return self[name]._transition(Action.FREEZE, reason, actor)

    def unfreeze(
        self,
        name: str,
        *,
        to: str | int | None = None,
        reason: str = "",
        actor: str | None = None,
    ) -> Transition:
        """Resume rollout ``name`` (``running``) after a freeze, rollback or kill.

        At its stage, or with ``to`` at that stage or an earlier one: a stage name, or an
        index (``-1``, or ``"0%"``, is 0 %). A later stage is refused (that is
        :meth:`advance`). From 0 % the rollout stays there until an operator advances it.
        Raises :class:`TransitionError` when the rollout is not stopped, or ``to`` names no
        stage or one past the current.
        """
        return self[name]._transition(Action.UNFREEZE, reason, actor, to=to)

    def rollback(
        self,
        name: str,
        *,
        to: str | int | None = None,
        reason: str = "",
        actor: str | None = None,
    ) -> Transition:
        """Move rollout ``name`` back, held there (``rolled_back``): it does not advance by itself.

        One stage back by default (to 0 % from the first stage); with ``to``, to an earlier
        stage: a stage name, or an index (``-1``, or ``"0%"``, is 0 %). A killed rollout can
        be rolled back too, to an earlier stage or to the killed stage itself, without the
        new path ever serving more than the stage named. Resume it with :meth:`unfreeze` or
        :meth:`advance`. Raises :class:`TransitionError` when there is no such stage, or it is
        not below the current one (a killed rollout's own stage excepted).
        """
        return self[name]._transition(Action.ROLLBACK, reason, actor, to=to)

    def kill(self, name: str, *, reason: str = "", actor: str | None = None) -> Transition:
        """Turn the new path of rollout ``name`` off for everyone, now (the kill switch)."""
        return self[name]._transition(Action.KILL, reason, actor)

    def complete(self, name: str, *, reason: str = "", actor: str | None = None) -> Transition:
        """Turn the new path of rollout ``name`` on for everyone, for good."""
        return self[name]._transition(Action.COMPLETE, reason, actor)

    def tick(self) -> list[Transition]:
        """Take every automatic step that is due now; return the transitions made.

        Steps are otherwise taken as outcomes arrive; ``tick`` is for a process that may be
        idle when a bake time ends (call it from a scheduler or a health-check endpoint).
        """
        self._reload()
        made = []
        for rollout in list(self._rollouts.values()):
            rollout._restart()
            with contextlib.suppress(StoreError):
                rollout._load()
            transition = rollout._tick()
            if transition is not None:
                made.append(transition)
        return made

    # -- the read model --------------------------------------------------------------------------

    def status(self, name: str) -> RolloutStatus:
        """Where rollout ``name`` stands, read afresh from the store, with its evidence.

        See :meth:`Rollout.status`; raises :class:`StoreError` when the store fails.
        """
        self._reload()
        return self[name].status()

    def snapshot(self) -> Snapshot:
        """Every rollout as this process serves it now, with no I/O; never raises.

        One :class:`RolloutStatus` per rollout (those a reload removed included), the
        internal failures by kind, and a policy file that does not validate. With a store
        shared by processes, its refresh thread keeps the states and the pooled evidence
        current, so a metrics exporter or a dashboard can read this at every scrape.
        """
        rollouts = {name: rollout.status(fresh=False) for name, rollout in self._rollouts.items()}
        file = self._runtime.file
        return Snapshot(
            environment=self.environment,
            at=self.clock(),
            rollouts=MappingProxyType(rollouts),
            failures=MappingProxyType(self.failures.counts()),
            pending_policy=file.error if file is not None else None,
        )

    def history(self, name: str, limit: int | None = None) -> list[Transition]:
        """The transitions of rollout ``name``, newest first (at most ``limit``)."""
        return self[name].history(limit)


def _check_patterns(handles: Mapping[str, Rollout], new: Policy) -> None:
    """Refuse a policy that changes the ``pattern`` of a rollout this process serves.

    The code built on a rollout (a shadow, a migration, a guard) records its calls for
    that pattern: another one would judge them at the wrong share. Removing such a rollout
    is refused too: a migration that lost its plan would fall back to its old store, which
    has missed the writes since ``live``. The handles are compared, not the last policy: a
    rollout that a reload removed and the next one brings back is the same handle.
    """
    for name, handle in handles.items():
        before = handle.policy
        after = new.rollouts.get(name)
        if after is None and before.pattern is not None and handle.in_policy:
            raise ValueError(
                f"rollouts.{name}: cannot remove a rollout with pattern = {before.pattern!r} "
                "from a running process (restart it with the new policy)"
            )
        if after is not None and before.pattern != after.pattern:
            raise ValueError(
                f"rollouts.{name}.pattern: cannot change from {before.pattern!r} to "
                f"{after.pattern!r} in a running process (restart it with the new policy)"
            )


def _check_store(store: object) -> None:
    """Raise :class:`TypeError` for a store that lacks methods of the ``Store`` protocol.

    A store written for an earlier protocol would otherwise fail later, or lose its pooling
    in silence (``SyncingStore`` would not match it).
    """
    required = [
        name for name, value in vars(Store).items() if callable(value) and not name.startswith("_")
    ]
    if hasattr(store, "on_refresh"):  # meant to be shared by processes
        required += ["before_refresh", "down", "on_refresh", "refresh_interval", "supervise"]
    missing = [name for name in required if not hasattr(store, name)]
    if missing:
        raise TypeError(
            f"{type(store).__name__} is not a stagedroll store: it lacks {', '.join(missing)} "
            "(see the Store protocol in docs/stores.md)"
        )
