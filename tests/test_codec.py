"""The JSON form of states and transitions that the SQLite and Redis stores keep."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stagedroll import Action, RolloutState, Status, Transition
from stagedroll.stores._codec import dump_state, dump_transition, load_state, load_transition

finite = st.floats(allow_nan=False, allow_infinity=False)
evidence_values = st.one_of(st.none(), st.integers(), finite, st.text())

states = st.builds(
    RolloutState,
    stage=st.integers(min_value=-1, max_value=10**6),
    status=st.sampled_from(Status),
    since=finite,
    version=st.integers(min_value=0, max_value=2**53),
    reason=st.text(),
    actor=st.text(),
    epoch=st.integers(min_value=0, max_value=2**53),
)

transitions = st.builds(
    Transition,
    rollout=st.text(),
    action=st.sampled_from(Action),
    from_stage=st.integers(min_value=-1, max_value=10**6),
    to_stage=st.integers(min_value=-1, max_value=10**6),
    from_status=st.none() | st.sampled_from(Status),
    to_status=st.sampled_from(Status),
    version=st.integers(min_value=1, max_value=2**53),
    at=finite,
    reason=st.text(),
    actor=st.text(),
    evidence=st.dictionaries(st.text(), evidence_values, max_size=8),
)

STATE = RolloutState(stage=2, status=Status.FROZEN, since=12.5, version=7, reason="r", epoch=3)
ENTRY = Transition("co", Action.FREEZE, 2, 2, Status.RUNNING, Status.FROZEN, 7, 13.25, "why")


class TestRoundTrips:
    @given(states)
    def test_state(self, state: RolloutState) -> None:
        """A state loads back equal to what was dumped, its types included."""
        loaded = load_state(dump_state(state))
        assert loaded == state
        assert type(loaded.since) is float
        assert type(loaded.status) is Status

    @given(transitions)
    def test_transition(self, entry: Transition) -> None:
        """A transition loads back equal to what was dumped, its evidence included."""
        loaded = load_transition(dump_transition(entry))
        assert loaded == entry
        assert type(loaded.at) is float
        assert {k: type(v) for k, v in loaded.evidence.items()} == {
            k: type(v) for k, v in entry.evidence.items()
        }

    def test_bytes_load_too(self) -> None:
        """Text read from a store as bytes (Redis) loads like str."""
        assert load_state(dump_state(STATE).encode()) == STATE
        assert load_transition(dump_transition(ENTRY).encode()) == ENTRY

    def test_dump_is_compact_json(self) -> None:
        """The dumped text is compact JSON with the status and action as their values."""
        text = dump_state(STATE)
        assert " " not in text
        assert json.loads(text)["status"] == "frozen"
        assert json.loads(dump_transition(ENTRY))["action"] == "freeze"


class TestEvidence:
    @pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
    def test_non_finite_floats_become_none(self, value: float) -> None:
        """NaN and infinities, which JSON cannot hold, are stored as None."""
        entry = Transition(
            "co", Action.FREEZE, 0, 0, Status.RUNNING, Status.FROZEN, 2, 1.0,
            evidence={"e_errors": value, "share": 0.5},
        )  # fmt: skip
        text = dump_transition(entry)
        assert "NaN" not in text
        assert "Infinity" not in text
        assert load_transition(text).evidence == {"e_errors": None, "share": 0.5}

    def test_other_values_become_text(self) -> None:
        """An evidence value of another type is stored as its text."""
        entry = Transition(
            "co", Action.FREEZE, 0, 0, Status.RUNNING, Status.FROZEN, 2, 1.0,
            evidence={"status": Status.FROZEN, "flag": True, "n": 3},
        )  # fmt: skip
        evidence = load_transition(dump_transition(entry)).evidence
        assert evidence["status"] == "frozen"
        assert evidence["n"] == 3


class TestCompatibility:
    def test_unknown_fields_are_ignored(self) -> None:
        """Fields written by a later version are ignored."""
        state = json.loads(dump_state(STATE))
        state["owner"] = "team-a"
        assert load_state(json.dumps(state)) == STATE
        entry = json.loads(dump_transition(ENTRY))
        entry["trace_id"] = "abc"
        assert load_transition(json.dumps(entry)) == ENTRY

    def test_missing_optional_fields_default(self) -> None:
        """reason, actor, epoch, from_status and evidence may be missing."""
        state = {"stage": 1, "status": "running", "since": 5, "version": 2}
        assert load_state(json.dumps(state)) == RolloutState(1, Status.RUNNING, 5.0, 2)
        entry = {
            "rollout": "co",
            "action": "start",
            "from_stage": -1,
            "to_stage": 0,
            "to_status": "running",
            "version": 1,
            "at": 3,
        }
        loaded = load_transition(json.dumps(entry))
        assert loaded == Transition("co", Action.START, -1, 0, None, Status.RUNNING, 1, 3.0)
        assert type(loaded.at) is float
        assert load_transition(json.dumps({**entry, "evidence": None})).evidence == {}


class TestMalformed:
    @pytest.mark.parametrize(
        "text",
        [
            "",
            "not json",
            "{",
            b"\xff\xfe",
            "[]",
            "null",
            '"text"',
            "5",
            "{}",
            '{"stage": 1, "status": "running", "since": 5}',
            '{"stage": 1, "status": "paused", "since": 5, "version": 1}',
            '{"stage": "one", "status": "running", "since": 5, "version": 1}',
            '{"stage": null, "status": "running", "since": 5, "version": 1}',
            '{"stage": 1, "status": "running", "since": [5], "version": 1}',
        ],
    )
    def test_state(self, text: str | bytes) -> None:
        """Text that is not a state raises ValueError."""
        with pytest.raises(ValueError):  # noqa: PT011 - the message is the input's
            load_state(text)

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "{",
            "[1]",
            '"text"',
            '{"rollout": "co"}',
            '{"rollout": "co", "action": "jump", "from_stage": 0, "to_stage": 1,'
            ' "to_status": "running", "version": 1, "at": 1}',
            '{"rollout": "co", "action": "start", "from_stage": 0, "to_stage": 1,'
            ' "from_status": "lost", "to_status": "running", "version": 1, "at": 1}',
            '{"rollout": "co", "action": "start", "from_stage": 0, "to_stage": 1,'
            ' "to_status": "running", "version": 1, "at": "later"}',
            '{"rollout": "co", "action": "start", "from_stage": 0, "to_stage": 1,'
            ' "to_status": "running", "version": 1, "at": 1, "evidence": [1, 2]}',
        ],
    )
    def test_transition(self, text: str) -> None:
        """Text that is not a transition raises ValueError."""
        with pytest.raises(ValueError):  # noqa: PT011 - the message is the input's
            load_transition(text)

    def test_json_errors_are_value_errors(self) -> None:
        """A JSON syntax error is a ValueError too."""
        with pytest.raises(ValueError, match="Expecting"):
            load_state("{")
