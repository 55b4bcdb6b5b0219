from __future__ import annotations

import pytest

from stagedroll import Action, RolloutState, Status, TransitionError
from stagedroll._transitions import EVENTS, initial_state, next_state, unknown_state


def state(stage: int = 0, status: Status = Status.RUNNING, version: int = 1) -> RolloutState:
    return RolloutState(stage=stage, status=status, since=0.0, version=version, history="h")


def step(action: Action, current: RolloutState, last_stage: int = 3) -> RolloutState:
    return next_state(
        "r", action, current, last_stage=last_stage, now=10.0, reason="why", actor="alice"
    )


class TestNextState:
    def test_advance_moves_to_the_next_stage(self) -> None:
        """Advance raises the stage by one, stamps time, reason and actor, and bumps the version."""
        new = step(Action.ADVANCE, state(1, version=4))
        assert new == RolloutState(2, Status.RUNNING, 10.0, 5, "why", "alice", history="h")

    def test_advance_at_the_last_stage_is_refused(self) -> None:
        """The last stage has no next one: complete it instead."""
        with pytest.raises(TransitionError, match="last stage"):
            step(Action.ADVANCE, state(3))

    @pytest.mark.parametrize("status", [Status.FROZEN, Status.KILLED, Status.COMPLETE])
    def test_advance_is_refused_unless_running(self, status: Status) -> None:
        """A frozen, killed or complete rollout does not advance."""
        with pytest.raises(TransitionError, match=f"cannot advance 'r': it .*{status.value}"):
            step(Action.ADVANCE, state(1, status))

    def test_advance_resumes_after_a_rollback(self) -> None:
        """An operator may advance a rolled-back rollout, which runs again."""
        assert step(Action.ADVANCE, state(-1, Status.ROLLED_BACK)).stage == 0

    def test_rollback_goes_back_one_stage_and_to_zero_from_the_first(self) -> None:
        """Rollback steps back (a new epoch); from the first stage it lands on stage -1 (0 %)."""
        assert step(Action.ROLLBACK, state(2)) == RolloutState(
            1, Status.ROLLED_BACK, 10.0, 2, "why", "alice", epoch=2, history="h"
        )
        assert step(Action.ROLLBACK, state(0)).stage == -1
        with pytest.raises(TransitionError, match="already at 0 %"):
            step(Action.ROLLBACK, state(-1, Status.ROLLED_BACK))

    def test_freeze_and_unfreeze(self) -> None:
        """Freeze holds the stage; unfreeze resumes it; neither applies twice."""
        frozen = step(Action.FREEZE, state(2))
        assert (frozen.stage, frozen.status) == (2, Status.FROZEN)
        with pytest.raises(TransitionError, match="frozen"):
            step(Action.FREEZE, frozen)
        resumed = step(Action.UNFREEZE, frozen)
        assert (resumed.stage, resumed.status) == (2, Status.RUNNING)
        with pytest.raises(TransitionError, match="running"):
            step(Action.UNFREEZE, resumed)

    def test_kill_keeps_the_stage_and_unfreeze_revives(self) -> None:
        """Kill turns the rollout off at its stage; unfreeze resumes it there."""
        killed = step(Action.KILL, state(2))
        assert (killed.stage, killed.status) == (2, Status.KILLED)
        with pytest.raises(TransitionError, match="killed"):
            step(Action.KILL, killed)
        assert step(Action.UNFREEZE, killed).status is Status.RUNNING

    def test_complete_jumps_to_the_last_stage(self) -> None:
        """Complete is the last stage, for good, from any other status."""
        for status in (Status.RUNNING, Status.FROZEN, Status.ROLLED_BACK, Status.KILLED):
            done = step(Action.COMPLETE, state(0, status))
            assert (done.stage, done.status) == (3, Status.COMPLETE)
        with pytest.raises(TransitionError, match="complete"):
            step(Action.COMPLETE, state(3, Status.COMPLETE))

    def test_rollback_from_complete_leaves_the_last_stage(self) -> None:
        """Rolling back a complete rollout returns it to the stage before the last."""
        assert step(Action.ROLLBACK, state(3, Status.COMPLETE)).stage == 2

    def test_start_is_not_an_operator_action(self) -> None:
        """A rollout is started by the first load, never by next_state."""
        with pytest.raises(TransitionError):
            step(Action.START, state())

    def test_every_action_has_an_event_name(self) -> None:
        """Each action logs under a noun.verb event name."""
        assert set(EVENTS) == set(Action)
        assert all(name.startswith("rollout.") for name in EVENTS.values())

    def test_initial_state(self) -> None:
        """A new rollout starts at its first stage, running, version 0."""
        assert initial_state(5.0) == RolloutState(0, Status.RUNNING, 5.0, 0)

    def test_unknown_state_is_the_stable_path(self) -> None:
        """While the store cannot be read: 0 % (stage -1), version 0, and a reason that says so."""
        unknown = unknown_state(5.0)
        assert (unknown.stage, unknown.status, unknown.version) == (-1, Status.RUNNING, 0)
        assert "unreachable" in unknown.reason


class TestEpoch:
    @pytest.mark.parametrize(
        ("action", "status"),
        [
            (Action.ADVANCE, Status.RUNNING),
            (Action.FREEZE, Status.RUNNING),
            (Action.KILL, Status.RUNNING),
            (Action.COMPLETE, Status.RUNNING),
            (Action.FREEZE, Status.ROLLED_BACK),
        ],
    )
    def test_carried_unless_the_rollout_resumes(self, action: Action, status: Status) -> None:
        """Steps that keep running, or stop without going back, keep the epoch."""
        current = RolloutState(1, status, 0.0, version=7, epoch=3)
        assert step(action, current).epoch == 3

    @pytest.mark.parametrize(
        ("action", "status"),
        [
            (Action.UNFREEZE, Status.FROZEN),
            (Action.UNFREEZE, Status.KILLED),
            (Action.UNFREEZE, Status.ROLLED_BACK),
            (Action.ADVANCE, Status.ROLLED_BACK),
            (Action.ROLLBACK, Status.RUNNING),
            (Action.ROLLBACK, Status.FROZEN),
        ],
    )
    def test_a_resume_or_rollback_begins_a_new_epoch(self, action: Action, status: Status) -> None:
        """Back to running from a stop, or back a stage: the epoch is the new state's version."""
        new = step(action, RolloutState(1, status, 0.0, version=7, epoch=3))
        assert new.epoch == 8


class TestHistory:
    def test_kept_by_every_transition(self) -> None:
        """A transition keeps the history id of the state it starts from."""
        assert step(Action.FREEZE, state()).history == "h"

    def test_a_state_from_before_histories_gets_one(self) -> None:
        """A stored state without a history id (an older stagedroll) gets a random one."""
        old = RolloutState(stage=0, status=Status.RUNNING, since=0.0, version=3)
        first, second = step(Action.ADVANCE, old), step(Action.ADVANCE, old)
        assert len(first.history) == 32
        assert first.history != second.history

    @pytest.mark.parametrize(
        ("action", "status"),
        [
            (Action.FREEZE, Status.FROZEN),
            (Action.KILL, Status.KILLED),
            (Action.COMPLETE, Status.COMPLETE),
        ],
    )
    def test_twice_says_already(self, action: Action, status: Status) -> None:
        """Freezing a frozen rollout (killing a killed one...) says it already is."""
        with pytest.raises(TransitionError, match=f"it is already {status}"):
            step(action, state(1, status))
