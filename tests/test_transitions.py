from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import plain_policy
from stagedroll import (
    Action,
    MemoryStore,
    RedisStore,
    Rollouts,
    RolloutState,
    SQLiteStore,
    Status,
    Store,
    Transition,
    TransitionError,
)
from stagedroll._transitions import (
    EVENTS,
    Ladder,
    initial_state,
    next_state,
    stage_index,
    unknown_state,
    where,
)
from stagedroll.testing import FakeClock


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
            (Action.ROLLBACK, Status.KILLED),
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


LADDER = (("canary", 1.0), ("early", 5.0), ("half", 50.0), ("all", 100.0))
"""A ladder for ``last_stage=3``, as a policy's stages stamp it on a state."""


def aim(
    action: Action, current: RolloutState, to: int | None, stages: Ladder | None = LADDER
) -> RolloutState:
    return next_state(
        "r", action, current, last_stage=3, now=10.0, reason="why", actor="alice", to=to,
        stages=stages,
    )  # fmt: skip


class TestTargets:
    def test_rollback_from_killed_goes_back_a_stage(self) -> None:
        """A killed rollout rolls back to the previous stage, held, in a new epoch."""
        new = aim(Action.ROLLBACK, state(2, Status.KILLED, version=6), None)
        assert new == RolloutState(
            1, Status.ROLLED_BACK, 10.0, 7, "why", "alice", epoch=7, history="h", stages=LADDER
        )
        assert aim(Action.ROLLBACK, state(0, Status.KILLED), None).stage == -1

    @pytest.mark.parametrize("to", [-1, 0, 1, 2])
    def test_rollback_from_killed_to_any_stage_up_to_the_killed_one(self, to: int) -> None:
        """From killed, a rollback goes to any stage from 0 % to the killed stage itself."""
        new = aim(Action.ROLLBACK, state(2, Status.KILLED), to)
        assert (new.stage, new.status) == (to, Status.ROLLED_BACK)

    def test_rollback_goes_only_down(self) -> None:
        """Elsewhere a rollback goes to an earlier stage: not in place, never up."""
        assert aim(Action.ROLLBACK, state(3), 1).stage == 1
        with pytest.raises(TransitionError, match=r"to 'early' \(5 %\): it is already there"):
            aim(Action.ROLLBACK, state(1, Status.FROZEN), 1)
        with pytest.raises(TransitionError, match="going up is an advance"):
            aim(Action.ROLLBACK, state(1, Status.KILLED), 2)
        with pytest.raises(TransitionError, match="already at 0 %"):
            aim(Action.ROLLBACK, state(-1, Status.KILLED), None)

    @pytest.mark.parametrize("status", [Status.FROZEN, Status.ROLLED_BACK, Status.KILLED])
    @pytest.mark.parametrize("to", [-1, 0, 2])
    def test_unfreeze_to_this_stage_or_an_earlier_one(self, status: Status, to: int) -> None:
        """Unfreeze with a target resumes there, in a new epoch, from any stopped status."""
        new = aim(Action.UNFREEZE, state(2, status, version=4), to)
        assert (new.stage, new.status, new.epoch) == (to, Status.RUNNING, 5)

    def test_unfreeze_to_a_later_stage_is_an_advance(self) -> None:
        """Unfreeze never goes up: the error names both stages and says what to do."""
        with pytest.raises(TransitionError) as caught:
            aim(Action.UNFREEZE, state(1, Status.KILLED), 3)
        assert str(caught.value) == (
            "cannot unfreeze 'r' to 'all' (100 %): it is at 'early' (5 %), and going up is an "
            "advance"
        )

    @pytest.mark.parametrize(
        "action", [Action.ADVANCE, Action.FREEZE, Action.KILL, Action.COMPLETE]
    )
    def test_only_rollback_and_unfreeze_take_a_target(self, action: Action) -> None:
        """Any other action with a target stage is refused, saying which take one."""
        with pytest.raises(TransitionError, match="only rollback and unfreeze take one"):
            aim(action, state(1), 0)

    @pytest.mark.parametrize("to", [-2, 4, -(2**20000), 2**20000], ids=["-2", "4", "-huge", "huge"])
    def test_a_stage_out_of_range(self, to: int) -> None:
        """A target below 0 % or past the last stage is refused, in a short message."""
        with pytest.raises(TransitionError, match=r"there is none \(the stages go from -1") as e:
            aim(Action.ROLLBACK, state(3, Status.KILLED), to)
        assert len(str(e.value)) < 200

    @pytest.mark.parametrize("to", [True, 1.0, "1"])
    def test_a_target_that_is_no_index(self, to: object) -> None:
        """``next_state`` takes an index: a bool, a float or text is a bug at the call site."""
        with pytest.raises(TypeError, match="to: a stage index"):
            aim(Action.ROLLBACK, state(3, Status.KILLED), to)  # type: ignore[arg-type]

    def test_errors_name_stages_from_the_ladder(self) -> None:
        """Without a ladder (a state from before them) the error says ``stage N``."""
        with pytest.raises(TransitionError, match="to stage 2: it is at stage 1,"):
            aim(Action.UNFREEZE, state(1, Status.FROZEN), 2, stages=None)

    def test_killed_says_how_to_resume(self) -> None:
        """A killed rollout refuses an advance and names both ways out."""
        with pytest.raises(TransitionError) as caught:
            step(Action.ADVANCE, state(1, Status.KILLED))
        assert str(caught.value) == (
            "cannot advance 'r': it was killed (roll it back, or unfreeze it, to resume)"
        )

    def test_a_shrunk_policy_counts_from_its_last_stage(self) -> None:
        """A state past the policy's last stage (fewer stages now) is at its last stage."""
        assert aim(Action.ROLLBACK, state(7, Status.KILLED), 3).stage == 3
        assert aim(Action.ROLLBACK, state(7, Status.KILLED), None).stage == 2


class TestLadder:
    def test_stamped_on_the_new_state(self) -> None:
        """The ladder given is stamped on the new state; without one, the old state's stays."""
        old = RolloutState(1, Status.RUNNING, 0.0, 3, history="h", stages=(("a", 1.0),))
        assert aim(Action.FREEZE, old, None).stages == LADDER
        assert aim(Action.FREEZE, old, None, stages=None).stages == (("a", 1.0),)

    @pytest.mark.parametrize(
        ("stage", "words"),
        [(-1, "0 %"), (0, "'canary' (1 %)"), (3, "'all' (100 %)"), (4, "stage 4")],
    )
    def test_where_in_words(self, stage: int, words: str) -> None:
        """A stage reads as its name and percent, 0 % at -1, its index past the ladder."""
        assert where(stage, LADDER) == words

    def test_where_escapes_a_stored_name(self) -> None:
        """A name read from a store is quoted with its control characters escaped, and cut."""
        label = where(0, (("\x1b[2J" + "x" * 500, 1.0),))
        assert "\x1b" not in label
        assert len(label) < 150


class TestStageIndex:
    @pytest.mark.parametrize(
        ("to", "index"),
        [(None, None), ("canary", 0), ("all", 3), ("0%", -1), ("0 %", -1), (-1, -1), (2, 2)],
    )
    def test_names_and_indexes(self, to: str | int | None, index: int | None) -> None:
        """A stage name gives its index; an int is an index; ``0%`` is stage -1."""
        assert stage_index("r", Action.ROLLBACK, to, LADDER) == index

    def test_an_unknown_name_lists_the_stages(self) -> None:
        """A typo is refused with the stage names, before anything is read or written."""
        with pytest.raises(TransitionError) as caught:
            stage_index("r", Action.ROLLBACK, "canry", LADDER)
        assert str(caught.value) == (
            "cannot roll back 'r' to 'canry': it has no such stage (its stages: 'canary', "
            "'early', 'half', 'all'; '0%' or -1 is 0 %)"
        )

    @pytest.mark.parametrize("to", ["", "\ud800", "\x00", "'; DROP TABLE stages", "*:*"])
    def test_odd_text_is_no_stage(self, to: str) -> None:
        """Empty text, a lone surrogate, a NUL, SQL or key syntax: no such stage, said safely."""
        with pytest.raises(TransitionError, match="it has no such stage") as caught:
            stage_index("r", Action.ROLLBACK, to, LADDER)
        assert str(caught.value).isprintable()

    def test_a_hostile_name_is_cut_and_escaped(self) -> None:
        """A long name with control characters is quoted, escaped and cut in the error."""
        many = tuple((f"s{i}", 1.0) for i in range(500))
        with pytest.raises(TransitionError) as caught:
            stage_index("r", Action.UNFREEZE, "\x1b[2J\r" + "y" * 10**6, many)
        text = str(caught.value)
        assert "\x1b" not in text
        assert "\r" not in text
        assert "and 480 more" in text
        assert len(text) < 1000

    @pytest.mark.parametrize("to", [True, 1.5, b"canary", object()])
    def test_neither_text_nor_an_int(self, to: object) -> None:
        """A ``to`` of another type (a bool included) is a ``TypeError`` naming the field."""
        with pytest.raises(TypeError, match=r"to: a stage name \(str\) or index \(int\)"):
            stage_index("r", Action.ROLLBACK, to, LADDER)  # type: ignore[arg-type]


PERCENTS = (1.0, 5.0, 50.0, 100.0)
NAMES = {"s0": 0, "s1": 1, "s2": 2, "s3": 3, "0%": -1}


def served(stage: int) -> float:
    """The percent that stage ``stage`` of ``plain_policy(*PERCENTS)`` serves (0 at -1)."""
    return PERCENTS[stage] if stage >= 0 else 0.0


class TestFromAnyState:
    @given(
        status=st.sampled_from(list(Status)),
        stage=st.integers(-1, 3),
        action=st.sampled_from([a for a in Action if a is not Action.START]),
        to=st.none() | st.integers(-3, 5) | st.sampled_from([*NAMES, "s9"]),
    )
    def test_never_more_than_asked_and_refusals_write_nothing(
        self, status: Status, stage: int, action: Action, to: str | int | None
    ) -> None:
        """From killed, an allowed transition serves no more than the stage it targets (and a
        rollback or unfreeze at or below the killed stage is allowed); from any state, a
        targeted one lands on its target, and a refused one raises and writes nothing."""
        store = MemoryStore()
        rollouts = Rollouts(plain_policy(*PERCENTS), store=store, clock=lambda: 2000.0)
        ladder = tuple(zip(NAMES, PERCENTS, strict=False))
        forged = RolloutState(stage, status, 1000.0, 2, epoch=1, history="h", stages=ladder)
        entry = Transition("checkout", Action.FREEZE, 0, stage, Status.RUNNING, status, 2, 1000.0)
        assert store.compare_and_set("checkout", 1, forged, entry)
        index = NAMES.get(to) if isinstance(to, str) else to
        targeted = action in (Action.ROLLBACK, Action.UNFREEZE)
        try:
            if targeted:
                method = rollouts.rollback if action is Action.ROLLBACK else rollouts.unfreeze
                method("checkout", to=to, actor="op")
            else:
                rollouts["checkout"]._transition(action, "", "op", to=to)
        except TransitionError:
            assert store.load("checkout") == forged
            assert len(store.history("checkout")) == 2
            reachable = index is not None and -1 <= index <= stage
            assert not (status is Status.KILLED and targeted and reachable)
            return
        new = store.load("checkout")
        assert new is not None
        assert (new.version, new.stages) == (3, ladder)
        if targeted and index is not None:
            assert new.stage == index
        if status is Status.KILLED:
            target = {
                Action.ROLLBACK: stage - 1 if index is None else index,
                Action.UNFREEZE: stage if index is None else index,
                Action.COMPLETE: 3,
            }[action]
            assert rollouts.status("checkout").percent <= served(target)


LADDER3 = (("canary", 1.0), ("half", 50.0), ("all", 100.0))


def ladder_policy(**rollout: Any) -> dict[str, Any]:
    """Rollout ``checkout`` through canary (1 %), half (50 %) and all, an hour each."""
    stages = [{"name": n, "percent": p, "bake": "1h"} for n, p in LADDER3]
    return {"rollouts": {"checkout": {"stages": stages, **rollout}}}


@pytest.fixture(name="store", params=["memory", "sqlite", "redis"])
def _store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store of each kind (Redis under a prefix of the test's own)."""
    store: Store
    if request.param == "memory":
        store = MemoryStore()
    elif request.param == "sqlite":
        store = SQLiteStore(tmp_path / "state.db")
    else:
        url: str = request.getfixturevalue("redis_url")
        store = RedisStore(url, prefix=request.getfixturevalue("redis_prefix"))
    try:
        yield store
    finally:
        store.close()


class TestTheWayOutOfAKill:
    UNITS = tuple(f"user-{i}" for i in range(2000))

    def on(self, rollouts: Rollouts) -> set[str]:
        return {u for u in self.UNITS if rollouts.enabled("checkout", u)}

    def test_kill_rollback_unfreeze_never_serves_the_killed_stage(self, store: Store) -> None:
        """Killed at half, rolled back to the canary, unfrozen: only the canary's units ever
        see the new path again, on every store, and another instance agrees."""
        rollouts = Rollouts(ladder_policy(), store=store, clock=FakeClock())
        canary = self.on(rollouts)
        assert 0 < len(canary) < 100
        rollouts.advance("checkout", actor="alice")
        assert canary < self.on(rollouts)
        rollouts.kill("checkout", reason="incident 4711", actor="bob")
        assert self.on(rollouts) == set()
        back = rollouts.rollback("checkout", to="canary", reason="hold", actor="bob")
        assert (back.from_status, back.to_status, back.to_stage) == (
            Status.KILLED,
            Status.ROLLED_BACK,
            0,
        )
        assert self.on(rollouts) == canary
        rollouts.unfreeze("checkout", actor="bob")
        assert self.on(rollouts) == canary
        other = Rollouts(ladder_policy(), store=store, clock=FakeClock())
        status = other.status("checkout")
        assert (status.stage_name, str(status.status)) == ("canary", "running")
        assert [t.action for t in other.history("checkout")] == [
            Action.UNFREEZE, Action.ROLLBACK, Action.KILL, Action.ADVANCE, Action.START,
        ]  # fmt: skip
        stored = store.load("checkout")
        assert stored is not None
        assert stored.stages == LADDER3

    def test_kill_rollback_to_zero_then_unfreeze_waits_for_an_operator(self, store: Store) -> None:
        """Rolled back to 0 % from a kill and unfrozen, the rollout stays at 0 % (no unit on)
        until an operator advances it, even with ``advance = "auto"``."""
        clock = FakeClock()
        rollouts = Rollouts(ladder_policy(advance="auto"), store=store, clock=clock)
        rollouts.kill("checkout", actor="bob")
        rollouts.rollback("checkout", to="0%", actor="bob")
        assert self.on(rollouts) == set()
        rollouts.unfreeze("checkout", actor="bob")
        clock.advance("2h")
        assert rollouts.tick() == []
        assert self.on(rollouts) == set()
        status = rollouts.status("checkout")
        assert (status.stage, str(status.status)) == (-1, "running")
        assert status.waiting_for == (
            "an operator: at 0 % (advance to start the first stage, canary)"
        )

    def test_a_typo_changes_nothing(self, store: Store) -> None:
        """An unknown stage name is refused with the stage names, and nothing is written."""
        rollouts = Rollouts(ladder_policy(), store=store, clock=FakeClock())
        rollouts.kill("checkout", actor="bob")
        before = store.load("checkout")
        with pytest.raises(TransitionError, match="its stages: 'canary', 'half', 'all'"):
            rollouts.rollback("checkout", to="canry", actor="bob")
        assert store.load("checkout") == before


class TestStampedLadder:
    def test_on_the_start_and_on_each_transition(self, store: Store) -> None:
        """The start and every transition carry the ladder of the policy that wrote them."""
        Rollouts(ladder_policy(), store=store, clock=FakeClock())
        started = store.load("checkout")
        assert started is not None
        assert started.stages == LADDER3
        edited = ladder_policy()
        edited["rollouts"]["checkout"]["stages"][1]["percent"] = 20
        Rollouts(edited, store=store, clock=FakeClock()).freeze("checkout", actor="alice")
        frozen = store.load("checkout")
        assert frozen is not None
        assert frozen.stages == (("canary", 1.0), ("half", 20.0), ("all", 100.0))
