"""``Steering``: operate rollouts from the store alone, with no policy.

At 3 a.m. the policy file may be missing, or broken for another rollout; a kill must still
take effect. Every stored state carries the stage ladder of the policy that wrote it
(:attr:`RolloutState.stages <stagedroll.RolloutState.stages>`), which is all that ``kill``,
``freeze``, ``unfreeze``, ``rollback`` (and ``advance`` and ``complete``) need. The commit
of a transition (compare-and-set with its history entry, and the log line) is shared with
the handles of a :class:`~stagedroll.Rollouts` (:func:`commit`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ._failures import log
from ._state import NO_EVIDENCE, Action, Evidence, RecentError, RolloutState, Transition
from ._transitions import EVENTS, next_state, stage_index
from .exceptions import CorruptStateError, StoreError, TransitionError, UnknownRolloutError
from .stores import Store

__all__ = ["Steering", "commit", "corrupt", "default_actor", "log_transition"]


def default_actor() -> str:
    """The operating-system user: the actor of a transition when none is named."""
    import getpass  # noqa: PLC0415 - only transitions without an actor need it

    try:
        return getpass.getuser()
    except Exception:  # no user database entry (containers): still say something
        return "unknown"


def corrupt(name: str, exc: ValueError) -> CorruptStateError:
    """The error of an operator's read of a stored state that cannot be read."""
    return CorruptStateError(
        f"{exc}; {name!r} serves the old path in every process, as if killed, until it is "
        "repaired (delete the stored state to restore it from its history)"
    )


def commit(
    store: Store,
    name: str,
    action: Action,
    current: RolloutState,
    new: RolloutState,
    *,
    evidence: Evidence,
    latest: Callable[[], RolloutState | None],
) -> Transition:
    """Write ``new`` over ``current`` by compare-and-set, with its history entry; return it.

    Raises :class:`StoreError` when the store fails, and :class:`TransitionError` when
    another writer changed the state since ``current`` was read, saying what it is now
    (``latest`` reads it). Not retried: ``advance`` twice would skip a stage.
    """
    entry = Transition(
        rollout=name,
        action=action,
        from_stage=current.stage,
        to_stage=new.stage,
        from_status=current.status,
        to_status=new.status,
        version=new.version,
        at=new.since,
        reason=new.reason,
        actor=new.actor,
        evidence=evidence,
    )
    try:
        committed = store.compare_and_set(name, current.version, new, entry)
    except Exception as exc:
        raise StoreError(f"the store failed to {action.verb} {name!r}: {exc}") from exc
    if not committed:
        now = latest() or current
        raise TransitionError(
            f"cannot {action.verb} {name!r}: it changed meanwhile (now stage {now.stage}, "
            f"{now.status}, by {now.actor or 'unknown'}); not applied"
        )
    return entry


def log_transition(entry: Transition, stage: str | None) -> None:
    """Log a committed transition (``stage``: the name of the stage now in force)."""
    log("info", EVENTS[entry.action], rollout=entry.rollout, stage=stage,
        from_stage=entry.from_stage, to_stage=entry.to_stage, status=str(entry.to_status),
        reason=entry.reason, actor=entry.actor, evidence=dict(entry.evidence))  # fmt: skip


class Steering:
    """The operator's controls over the rollouts a store holds, without their policy.

    ``store`` is any :class:`~stagedroll.stores.Store` (or a URL for
    :func:`~stagedroll.stores.store_from_url`; the store is then closed by :meth:`close`).
    Reads and transitions go straight to the store and may raise :class:`StoreError`.
    A transition follows the same rules as :meth:`Rollouts.kill <stagedroll.Rollouts.kill>`
    and the others, on the stage ladder stored with the state; its history entry carries
    no evidence (no process's counters are at hand). A state written before ladders were
    stored can still be killed, frozen, unfrozen and rolled back by index, but not advanced
    or completed (its last stage is unknown).
    """

    def __init__(self, store: Store | str, *, clock: Callable[[], float] = time.time) -> None:
        if isinstance(store, str):
            from .stores import store_from_url  # noqa: PLC0415 - as Rollouts does

            store = store_from_url(store)
            self._owned = True
        else:
            self._owned = False
        self.store: Store = store
        self.clock = clock

    def __repr__(self) -> str:
        return f"Steering({self.store!r})"

    def close(self) -> None:
        """Close the store if this object opened it from a URL."""
        if self._owned:
            self.store.close()

    def __enter__(self) -> Steering:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def names(self) -> list[str]:
        """Every rollout with a stored state, sorted."""
        try:
            return sorted(self.store.names())
        except Exception as exc:
            raise StoreError(f"the store failed to list its rollouts: {exc}") from exc

    def load(self, name: str) -> RolloutState | None:
        """The stored state of ``name``, or ``None`` when the store has none.

        Raises :class:`CorruptStateError` for a state that cannot be read (every process
        serves the old path for it meanwhile), :class:`StoreError` when the store fails.
        """
        try:
            return self.store.load(name)
        except ValueError as exc:  # the stores' word for a corrupt state
            raise corrupt(name, exc) from exc
        except Exception as exc:
            raise StoreError(f"the store failed to read {name!r}: {exc}") from exc

    def history(self, name: str, limit: int | None = None) -> list[Transition]:
        """The transitions of ``name``, newest first (at most ``limit``)."""
        try:
            return self.store.history(name, limit)
        except Exception as exc:
            raise StoreError(f"the store failed to read the history of {name!r}: {exc}") from exc

    def errors(self, name: str) -> list[RecentError]:
        """The recent exceptions of ``name``'s paths that the processes shared, newest first."""
        try:
            return self.store.read_errors(name)
        except Exception as exc:
            raise StoreError(f"the store failed to read the errors of {name!r}: {exc}") from exc

    def apply(
        self,
        name: str,
        action: Action,
        *,
        to: str | int | None = None,
        reason: str = "",
        actor: str | None = None,
    ) -> Transition:
        """Apply ``action`` to the stored state of ``name``; return the history entry.

        ``to`` is the target stage of ``rollback`` and ``unfreeze`` (a stage name, or an
        index; ``-1`` or ``"0%"`` is 0 %). Raises :class:`UnknownRolloutError` when the store has no
        state for ``name``, :class:`TransitionError` when the action does not apply (or
        the state changed meanwhile), :class:`StoreError` when the store fails.
        """
        action = Action(action)
        ladder: tuple[tuple[str, float], ...] = ()
        current = self.load(name)
        if current is None:
            raise UnknownRolloutError(name, self.names())
        ladder = current.stages
        target = stage_index(name, action, to, ladder)
        if not ladder and action in (Action.ADVANCE, Action.COMPLETE):
            raise TransitionError(
                f"cannot {action.verb} {name!r} from the store alone: its state was written "
                "before states carried their stages (use the policy)"
            )
        last = len(ladder) - 1 if ladder else max(current.stage, 0)
        new = next_state(name, action, current, last_stage=last, now=self.clock(),
                         reason=reason, actor=actor if actor is not None else default_actor(),
                         to=target)  # fmt: skip
        entry = commit(self.store, name, action, current, new, evidence=NO_EVIDENCE,
                       latest=lambda: self.load(name))  # fmt: skip
        shown = min(new.stage, last)
        log_transition(entry, ladder[shown][0] if 0 <= shown < len(ladder) else None)
        return entry
