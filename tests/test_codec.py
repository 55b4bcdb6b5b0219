"""The JSON form of states and transitions that the SQLite and Redis stores keep."""

from __future__ import annotations

import contextlib
import json
import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stagedroll import Action, RolloutState, Status, Transition
from stagedroll.stores._codec import (
    MAX_READ_VERSION,
    MAX_STAGE,
    MAX_VERSION,
    dump_state,
    dump_transition,
    load_state,
    load_transition,
)

finite = st.floats(allow_nan=False, allow_infinity=False)
evidence_values = st.one_of(st.none(), st.integers(), finite, st.text())

states = st.integers(min_value=1, max_value=MAX_READ_VERSION).flatmap(
    lambda version: st.builds(
        RolloutState,
        stage=st.integers(min_value=-1, max_value=MAX_STAGE),
        status=st.sampled_from(Status),
        since=finite,
        version=st.just(version),
        reason=st.text(),
        actor=st.text(),
        epoch=st.integers(min_value=0, max_value=version),
        history=st.text(max_size=64),
    )
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


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
"""Any JSON value (NaN and infinities too: Python's json writes and reads them)."""

state_fields = st.fixed_dictionaries(
    {},
    optional={
        "stage": json_values,
        "status": json_values | st.sampled_from([s.value for s in Status]),
        "since": json_values,
        "version": json_values,
        "reason": json_values,
        "actor": json_values,
        "epoch": json_values,
        "history": json_values,
    },
)
"""Objects with a state's fields, each any JSON value or missing."""


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


class TestOutOfRange:
    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"stage": -7}, "stage -7 is out of range"),
            ({"stage": -2}, "stage -2 is out of range"),
            ({"stage": 2**31}, "stage 2147483648 is out of range"),
            ({"stage": 10**400}, "an integer of 401 digits"),
            ({"stage": True}, "stage must be an integer"),
            ({"stage": 1.0}, "stage must be an integer"),
            ({"stage": "1"}, "stage must be an integer"),
            ({"version": 0}, "version 0 is out of range"),
            ({"version": -3}, "version -3 is out of range"),
            ({"version": 2**53 + 1}, "version 9007199254740993 is out of range"),
            ({"epoch": -1}, "epoch -1 is out of range"),
            ({"epoch": 8}, "epoch 8 is out of range"),
            ({"status": "paused"}, "unknown status 'paused'"),
            ({"status": ["running"]}, "status must be text"),
            ({"since": math.nan}, "since must be finite"),
            ({"since": math.inf}, "since must be finite"),
            ({"since": 10**400}, "OverflowError"),
            ({"since": False}, "since must be a number"),
            ({"reason": 5}, "reason must be text"),
            ({"actor": {"name": "x"}}, "actor must be text"),
            ({"history": "h" * 65}, "history id of 65 characters"),
        ],
    )
    def test_state_fields_out_of_range_are_refused(
        self, change: dict[str, object], message: str
    ) -> None:
        """A stored state with a field out of range or of another type raises ValueError."""
        data = json.loads(dump_state(STATE))
        data.update(change)
        with pytest.raises(ValueError, match=re.escape(message)):
            load_state(json.dumps(data))

    @pytest.mark.parametrize("stage", [-1, 0, MAX_STAGE])
    def test_legal_edges_load(self, stage: int) -> None:
        """Stage -1 (rolled back to 0 %) and a stage past any policy's last are legal."""
        state = RolloutState(stage, Status.ROLLED_BACK, 1.0, 1, epoch=1)
        assert load_state(dump_state(state)) == state

    @pytest.mark.parametrize(
        "state",
        [
            RolloutState(-7, Status.RUNNING, 1.0, 3),
            RolloutState(0, Status.RUNNING, 1.0, 0),
            RolloutState(0, Status.RUNNING, math.nan, 1),
            RolloutState(0, Status.RUNNING, 1.0, 2, epoch=3),
            RolloutState(0, "paused", 1.0, 1),  # type: ignore[arg-type]  # the test's point
        ],
    )
    def test_a_state_out_of_range_is_not_written(self, state: RolloutState) -> None:
        """dump_state refuses a state its readers would refuse, so no store holds one."""
        with pytest.raises(ValueError):  # noqa: PT011 - the message is the field's
            dump_state(state)


class TestTotal:
    @pytest.mark.parametrize("depth", [1000, 100_000])
    def test_deep_nesting_is_a_value_error(self, depth: int) -> None:
        """JSON nested deeper than the parser's recursion is refused as malformed."""
        for text in (nested(depth), '{"stage":' + nested(depth) + "}"):
            with pytest.raises(ValueError, match="malformed"):
                load_state(text)
            with pytest.raises(ValueError, match="malformed"):
                load_transition(text)

    @pytest.mark.parametrize("value", [None, 5, 1.5, ["x"], {"a": 1}, object()])
    def test_a_value_that_is_not_text(self, value: object) -> None:
        """A stored value of another type than text (a SQLite integer) is a ValueError."""
        with pytest.raises(ValueError, match="not JSON text"):
            load_state(value)

    def test_messages_quote_a_few_dozen_characters(self) -> None:
        """The message of a 1 MB malformed state quotes its start and says how long it is."""
        with pytest.raises(ValueError) as raised:  # noqa: PT011 - checked below
            load_state('["' + "x" * 1_000_000 + '"]')
        assert len(str(raised.value)) < 300
        assert "1000004 characters" in str(raised.value)

    @given(json_values)
    def test_any_json_value_as_a_state(self, value: object) -> None:
        """Any JSON value loads as a valid state or raises ValueError, nothing else."""
        try:
            state = load_state(json.dumps(value))
        except ValueError:
            return
        assert load_state(dump_state(state)) == state  # pragma: no cover - a rare draw

    @given(state_fields)
    def test_any_field_values(self, data: dict[str, object]) -> None:
        """An object with any values in a state's fields is a valid state or a ValueError."""
        try:
            state = load_state(json.dumps(data))
        except ValueError:
            return
        assert -1 <= state.stage <= MAX_STAGE
        assert 1 <= state.version <= MAX_VERSION
        assert 0 <= state.epoch <= state.version
        assert math.isfinite(state.since)
        assert load_state(dump_state(state)) == state

    @given(json_values)
    def test_any_json_value_as_a_transition(self, value: object) -> None:
        """Any JSON value loads as a transition or raises ValueError, nothing else."""
        with contextlib.suppress(ValueError):
            load_transition(json.dumps(value))

    @given(st.binary(max_size=64))
    def test_any_bytes(self, data: bytes) -> None:
        """Any bytes (Redis holds bytes) load as a state or raise ValueError, nothing else."""
        with contextlib.suppress(ValueError):
            load_state(data)


class TestVersionRoom:
    def test_a_version_with_no_room_for_a_transition_is_refused(self) -> None:
        """A version set near the top (past 2**52) is refused, not served with no room left."""
        text = json.dumps({"stage": 0, "status": "running", "since": 1.0, "version": 2**52 + 1})
        with pytest.raises(ValueError, match="no room"):
            load_state(text)
