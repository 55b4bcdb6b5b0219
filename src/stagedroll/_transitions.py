"""The transition rules: which action applies to which state, and the state it leads to.

Functions over :class:`RolloutState` (pure but for the random history id that a state from
before histories is given); the store's compare-and-set makes them safe between processes.
"""

from __future__ import annotations

import uuid

from ._state import Action, RolloutState, Status
from .exceptions import TransitionError

__all__ = ["EVENTS", "initial_state", "next_state", "unknown_state"]

EVENTS: dict[Action, str] = {
    Action.START: "rollout.started",
    Action.ADVANCE: "rollout.advanced",
    Action.FREEZE: "rollout.frozen",
    Action.UNFREEZE: "rollout.unfrozen",
    Action.ROLLBACK: "rollout.rolled_back",
    Action.KILL: "rollout.killed",
    Action.COMPLETE: "rollout.completed",
}
"""The structlog event name of each action."""

_ALLOWED_FROM: dict[Action, frozenset[Status]] = {
    Action.ADVANCE: frozenset({Status.RUNNING, Status.ROLLED_BACK}),
    Action.FREEZE: frozenset({Status.RUNNING, Status.ROLLED_BACK}),
    Action.UNFREEZE: frozenset({Status.FROZEN, Status.ROLLED_BACK, Status.KILLED}),
    Action.ROLLBACK: frozenset(
        {Status.RUNNING, Status.FROZEN, Status.ROLLED_BACK, Status.COMPLETE}
    ),
    Action.KILL: frozenset({Status.RUNNING, Status.FROZEN, Status.ROLLED_BACK, Status.COMPLETE}),
    Action.COMPLETE: frozenset({Status.RUNNING, Status.FROZEN, Status.ROLLED_BACK, Status.KILLED}),
}


_LEADS_TO: dict[Action, Status] = {
    Action.FREEZE: Status.FROZEN,
    Action.KILL: Status.KILLED,
    Action.COMPLETE: Status.COMPLETE,
}

_WHY_NOT: dict[Status, str] = {
    Status.RUNNING: "it is running",
    Status.FROZEN: "it is frozen (unfreeze it first)",
    Status.ROLLED_BACK: "it was rolled back",
    Status.KILLED: "it was killed (unfreeze it to resume)",
    Status.COMPLETE: "it is complete",
}


def next_state(
    name: str,
    action: Action,
    state: RolloutState,
    *,
    last_stage: int,
    now: float,
    reason: str,
    actor: str,
) -> RolloutState:
    """Return the state that ``action`` leads to from ``state``.

    Raises :class:`TransitionError` when the action does not apply, saying why:

    - ``advance``: to the next stage, from ``running`` or ``rolled_back``;
    - ``freeze``: stay at this stage and stop advancing;
    - ``unfreeze``: resume (``running``) at the current stage after a freeze, rollback or kill;
    - ``rollback``: to the previous stage, or to 0 % (stage ``-1``) from the first;
    - ``kill``: 0 % now; ``complete``: 100 % for good.

    A rollback, and a transition that resumes the rollout (to ``running`` from another
    status), begin a new epoch of health evidence: the new state's ``epoch`` is its version.
    Within an epoch the stage only moves forward, so ``(epoch, stage)`` names a stage visit.
    """
    if action is Action.START:
        raise TransitionError("a rollout is started by the store, not by a transition")
    if state.status not in _ALLOWED_FROM[action]:
        if _LEADS_TO.get(action) is state.status:  # doing it twice: say so, not "unfreeze it"
            raise TransitionError(f"cannot {action.verb} {name!r}: it is already {state.status}")
        raise TransitionError(f"cannot {action.verb} {name!r}: {_WHY_NOT[state.status]}")
    stage, status = state.stage, Status.RUNNING
    if action is Action.ADVANCE:
        if stage >= last_stage:
            raise TransitionError(
                f"cannot advance {name!r}: it is at its last stage (complete it instead)"
            )
        stage += 1
    elif action is Action.FREEZE:
        status = Status.FROZEN
    elif action is Action.ROLLBACK:
        if stage < 0:
            raise TransitionError(f"cannot roll back {name!r}: it is already at 0 %")
        stage, status = min(stage, last_stage) - 1, Status.ROLLED_BACK
    elif action is Action.KILL:
        status = Status.KILLED
    elif action is Action.COMPLETE:
        stage, status = last_stage, Status.COMPLETE
    version = state.version + 1
    resumed = status is Status.RUNNING and state.status is not Status.RUNNING
    return RolloutState(
        stage=stage,
        status=status,
        since=now,
        version=version,
        reason=reason,
        actor=actor,
        epoch=version if resumed or action is Action.ROLLBACK else state.epoch,
        history=state.history or uuid.uuid4().hex,  # a state from before histories gets one
    )


def initial_state(now: float) -> RolloutState:
    """The state of a rollout the store has never seen: first stage, running, version 0."""
    return RolloutState(stage=0, status=Status.RUNNING, since=now, version=0)


def unknown_state(now: float, reason: str = "state unknown: store unreachable") -> RolloutState:
    """The state served while the store cannot be read and none is known: 0 %, version 0.

    Every call takes the stable path until the store answers; any state read from it then
    (version 1 or more) replaces this one.
    """
    return RolloutState(
        stage=-1,
        status=Status.RUNNING,
        since=now,
        version=0,
        reason=reason,
    )
