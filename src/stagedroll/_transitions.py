"""The transition rules: which action applies to which state, and the state it leads to.

Functions over :class:`RolloutState` (pure but for the random history id that a state from
before histories is given); the store's compare-and-set makes them safe between processes.
"""

from __future__ import annotations

import uuid

from ._state import Action, RolloutState, Status
from .exceptions import TransitionError

__all__ = [
    "EVENTS",
    "ZERO",
    "Ladder",
    "initial_state",
    "next_state",
    "stage_index",
    "unknown_state",
    "where",
]

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
        {Status.RUNNING, Status.FROZEN, Status.ROLLED_BACK, Status.KILLED, Status.COMPLETE}
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
    Status.KILLED: "it was killed (roll it back, or unfreeze it, to resume)",
    Status.COMPLETE: "it is complete",
}

_TARGETED = frozenset({Action.ROLLBACK, Action.UNFREEZE})  # the actions that take ``to``
_SHOWN_NAME = 128  # characters of a stage name quoted in an error message

Ladder = tuple[tuple[str, float], ...]
"""A policy's stages as ``(name, percent)`` pairs, in order."""


def where(stage: int, ladder: Ladder) -> str:
    """Stage ``stage`` in an operator's words: ``'half' (50 %)``, ``0 %`` at ``-1``.

    ``stage N`` when ``ladder`` does not have it (a state from before ladders).
    """
    if stage < 0:
        return "0 %"
    if stage < len(ladder):
        name, percent = ladder[stage]
        return f"{name[:_SHOWN_NAME]!r} ({percent:g} %)"
    return f"stage {stage}"


ZERO = ("0%", "0 %")
"""The names of stage ``-1`` (0 %) that :func:`stage_index` accepts beside ``-1``."""
_SHOWN_STAGES = 20  # stage names listed in an error message


def stage_index(name: str, action: Action, to: str | int | None, ladder: Ladder) -> int | None:
    """The stage index that ``to`` names: a stage name of ``ladder``, or an index.

    ``-1``, ``"0%"`` and ``"0 %"`` are 0 %. Raises :class:`TransitionError` for a name that
    ``ladder`` does not have (listing those it has), and :class:`TypeError` for a ``to``
    that is neither text nor an integer (a ``bool`` is neither).
    """
    if to is None or type(to) is int:
        return to
    if not isinstance(to, str):
        raise TypeError(f"to: a stage name (str) or index (int), not {type(to).__name__}")
    if to in ZERO:
        return -1
    names = [stage for stage, _ in ladder]
    if to in names:
        return names.index(to)
    shown = ", ".join(repr(n[:_SHOWN_NAME]) for n in names[:_SHOWN_STAGES])
    if len(names) > _SHOWN_STAGES:
        shown += f" and {len(names) - _SHOWN_STAGES} more"
    raise TransitionError(
        f"cannot {action.verb} {name!r} to {to[:_SHOWN_NAME]!r}: it has no such stage "
        f"(its stages: {shown or 'none'}; '0%' or -1 is 0 %)"
    )


def next_state(
    name: str,
    action: Action,
    state: RolloutState,
    *,
    last_stage: int,
    now: float,
    reason: str,
    actor: str,
    to: int | None = None,
    stages: Ladder | None = None,
) -> RolloutState:
    """Return the state that ``action`` leads to from ``state``.

    Raises :class:`TransitionError` when the action does not apply, saying why:

    - ``advance``: to the next stage, from ``running`` or ``rolled_back``;
    - ``freeze``: stay at this stage and stop advancing;
    - ``unfreeze``: resume (``running``) at the current stage after a freeze, rollback or
      kill; with ``to``, at stage ``to`` instead, from ``-1`` (0 %) up to the current stage
      (a higher one is an ``advance``);
    - ``rollback``: to the previous stage, or to 0 % (stage ``-1``) from the first; with
      ``to``, to any earlier stage down to ``-1``. From ``killed`` too, where ``to`` may
      also be the killed stage itself (served again, but held). It does not advance by
      itself (status ``rolled_back``), and never serves more than the stage it names;
    - ``kill``: 0 % now; ``complete``: 100 % for good.

    ``to`` is a stage index (``-1`` is 0 %), for ``rollback`` and ``unfreeze`` only.
    ``stages`` is the ladder of the policy in force, stamped on the new state (``None``
    keeps ``state.stages``); the errors name stages from it.

    A rollback, and a transition that resumes the rollout (to ``running`` from another
    status), begin a new epoch of health evidence: the new state's ``epoch`` is its version.
    Within an epoch the stage only moves forward, so ``(epoch, stage)`` names a stage visit.
    """
    if action is Action.START:
        raise TransitionError("a rollout is started by the store, not by a transition")
    ladder = stages if stages is not None else state.stages
    if to is not None and action not in _TARGETED:
        raise TransitionError(
            f"cannot {action.verb} {name!r} to a chosen stage: only rollback and unfreeze take one"
        )
    if state.status not in _ALLOWED_FROM[action]:
        if _LEADS_TO.get(action) is state.status:  # doing it twice: say so, not "unfreeze it"
            raise TransitionError(f"cannot {action.verb} {name!r}: it is already {state.status}")
        raise TransitionError(f"cannot {action.verb} {name!r}: {_WHY_NOT[state.status]}")
    stage, status = min(state.stage, last_stage), Status.RUNNING  # a shrunk policy: its last
    if to is not None:
        _check_target(name, action, status=state.status, stage=stage, to=to,
                      last_stage=last_stage, ladder=ladder)  # fmt: skip
    if action is Action.ADVANCE:
        if stage >= last_stage:
            raise TransitionError(
                f"cannot advance {name!r}: it is at its last stage (complete it instead)"
            )
        stage += 1
    elif action is Action.FREEZE:
        status, stage = Status.FROZEN, state.stage
    elif action is Action.UNFREEZE:
        stage = to if to is not None else state.stage
    elif action is Action.ROLLBACK:
        if to is None and stage < 0:
            raise TransitionError(f"cannot roll back {name!r}: it is already at 0 %")
        stage, status = (to if to is not None else stage - 1), Status.ROLLED_BACK
    elif action is Action.KILL:
        status, stage = Status.KILLED, state.stage
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
        stages=ladder,
    )


def _check_target(
    name: str,
    action: Action,
    *,
    status: Status,
    stage: int,
    to: int,
    last_stage: int,
    ladder: Ladder,
) -> None:
    """Raise :class:`TransitionError` unless ``action`` may take the rollout to stage ``to``.

    ``stage`` is the stage served now (at most ``last_stage``). A rollback goes to an
    earlier stage, or, from ``killed``, to the killed stage itself; an unfreeze resumes at
    this stage or an earlier one. Neither goes further: that is an ``advance``.
    """
    if type(to) is not int:  # a bool is no stage
        raise TypeError(f"to: a stage index (int), not {type(to).__name__}")
    verb = action.verb
    if not -1 <= to <= last_stage:
        shown = str(to) if abs(to) < 10**9 else "beyond any stage"  # str() of 2**20000 raises
        raise TransitionError(
            f"cannot {verb} {name!r} to stage {shown}: there is none (the stages go from -1, "
            f"0 %, to {last_stage})"
        )
    here = where(stage, ladder)
    if to > stage:
        raise TransitionError(
            f"cannot {verb} {name!r} to {where(to, ladder)}: it is at {here}, and going up "
            "is an advance"
        )
    if action is Action.ROLLBACK and to == stage and status is not Status.KILLED:
        raise TransitionError(
            f"cannot roll back {name!r} to {here}: it is already there (freeze it to hold it)"
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
