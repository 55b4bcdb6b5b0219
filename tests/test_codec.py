"""The JSON form of states and transitions that the SQLite and Redis stores keep."""

from __future__ import annotations

import contextlib
import json
import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stagedroll import Action, RecentError, RolloutState, Status, Transition
from stagedroll._state import MAX_ERROR_MESSAGE, MAX_ERROR_TYPE
from stagedroll.stores._codec import (
    MAX_ARM,
    MAX_COUNT,
    MAX_ERRORS,
    MAX_READ_VERSION,
    MAX_STAGE,
    MAX_STAGE_NAME,
    MAX_STAGES,
    MAX_VERSION,
    dump_error,
    dump_state,
    dump_transition,
    load_error,
    load_state,
    load_transition,
    merge_errors,
)

finite = st.floats(allow_nan=False, allow_infinity=False)
evidence_values = st.one_of(st.none(), st.integers(), finite, st.text())
ladders = st.lists(
    st.tuples(
        st.text(min_size=1, max_size=MAX_STAGE_NAME),
        st.floats(min_value=0, max_value=100) | st.integers(min_value=0, max_value=100),
    ),
    max_size=6,
).map(tuple)
"""Stage ladders a state may carry: any text as names, any percent from 0 to 100."""

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
        stages=ladders,
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
        "stages": json_values,
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


# -- the stage ladder ----------------------------------------------------------------------------

LADDER = (("canary", 1.0), ("half", 50.0), ("all", 100.0))
LADDERED = RolloutState(1, Status.RUNNING, 12.5, 3, epoch=1, history="h", stages=LADDER)


def with_stages(stages: object) -> str:
    """A stored state of ``LADDERED``'s fields whose ``stages`` field is ``stages`` as JSON."""
    data = json.loads(dump_state(LADDERED))
    data["stages"] = stages
    return json.dumps(data)


class TestStages:
    def test_round_trip(self) -> None:
        """A ladder is stored as a JSON list of [name, percent] and loads back as tuples."""
        text = dump_state(LADDERED)
        assert json.loads(text)["stages"] == [["canary", 1.0], ["half", 50.0], ["all", 100.0]]
        loaded = load_state(text)
        assert loaded == LADDERED
        assert all(type(p) is float for _, p in loaded.stages)

    def test_a_state_from_before_the_ladder_loads_with_none(self) -> None:
        """A stored state without the field (written by an earlier version) has stages ()."""
        data = json.loads(dump_state(LADDERED))
        del data["stages"]
        assert load_state(json.dumps(data)).stages == ()
        assert load_state(json.dumps({**data, "stages": None})).stages == ()

    def test_the_largest_ladder_round_trips(self) -> None:
        """1000 stages of 128-character names, percents 0 and 100 included, are legal."""
        names = [f"{i:04d}" + "é" * (MAX_STAGE_NAME - 4) for i in range(MAX_STAGES)]
        ladder = tuple((n, 100 * i / (MAX_STAGES - 1)) for i, n in enumerate(names))
        state = RolloutState(0, Status.RUNNING, 1.0, 1, stages=ladder)
        assert load_state(dump_state(state)) == state

    @pytest.mark.parametrize(
        "stages",
        [
            "canary",
            {"canary": 1},
            5,
            True,
            [["canary"]],
            [["canary", 1, 2]],
            ["canary", 1],
            [[1, 1]],
            [["", 1]],
            [["x" * (MAX_STAGE_NAME + 1), 1]],
            [[None, 1]],
            [["canary", -0.5]],
            [["canary", 100.5]],
            [["canary", "1"]],
            [["canary", True]],
            [["canary", None]],
            [["canary", 10**400]],
            [["canary", 1], ["half", "NaN"]],
            [["s", 1]] * (MAX_STAGES + 1),
            json.loads(nested(500)),
        ],
    )
    def test_a_malformed_ladder_loads_as_none(self, stages: object) -> None:
        """A ladder malformed, out of range or too long loads as (): the state stays readable."""
        loaded = load_state(with_stages(stages))
        assert loaded.stages == ()
        assert loaded == RolloutState(1, Status.RUNNING, 12.5, 3, epoch=1, history="h")

    @pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
    def test_a_non_finite_percent_loads_as_none(self, bad: float) -> None:
        """NaN and infinities (which Python's json writes and reads) make the ladder ()."""
        assert load_state(with_stages([["canary", bad]])).stages == ()

    @pytest.mark.parametrize(
        ("stages", "message"),
        [
            ((("s", 1.0),) * (MAX_STAGES + 1), "1001 stages (at most 1000)"),
            ((("", 1.0),), "stages[0] name must be text of 1 to 128 characters"),
            ((("x" * 129, 1.0),), "stages[0] name must be text of 1 to 128"),
            (((5, 1.0),), "stages[0] name must be text"),
            ((("s", -0.1),), "stages[0] percent must be a finite number from 0 to 100"),
            ((("s", 1.0), ("t", 100.5)), "stages[1] percent"),
            ((("s", math.nan),), "stages[0] percent"),
            ((("s", math.inf),), "stages[0] percent"),
            ((("s", True),), "stages[0] percent"),
            ((("s", "50"),), "stages[0] percent"),
            ((("s", 10**400),), "stages[0] percent"),
            ((("s", 1.0, 2),), "stages[0] must be a pair"),
            ((["s", 1.0],), "stages[0] must be a pair"),
            ([("s", 1.0)], "stages must be a tuple"),
        ],
    )
    def test_a_ladder_out_of_range_is_not_written(self, stages: object, message: str) -> None:
        """dump_state refuses a ladder out of bounds with a ValueError naming the field."""
        state = RolloutState(0, Status.RUNNING, 1.0, 1, stages=stages)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=re.escape(message)):
            dump_state(state)

    def test_hostile_names_round_trip(self) -> None:
        """Control characters, lone surrogates, HTML, SQL and key syntax are names like any."""
        names = ["\x1b[2J", "\r\n", "\ud800", "<script>", "'; DROP TABLE x", "*:{}", "nul\x00"]
        state = RolloutState(0, Status.RUNNING, 1.0, 1, stages=tuple((n, 1.0) for n in names))
        text = dump_state(state)
        assert text.isascii()
        assert load_state(text) == state


# -- recent errors -------------------------------------------------------------------------------

errors = st.builds(
    RecentError,
    arm=st.text(min_size=1, max_size=MAX_ARM),
    type=st.text(max_size=MAX_ERROR_TYPE + 20),
    message=st.text(max_size=MAX_ERROR_MESSAGE + 20),
    first_seen=finite,
    last_seen=finite,
    count=st.integers(min_value=1, max_value=MAX_COUNT),
)

ERROR = RecentError("treatment", "IndexError", "discount tier out of range", 10.0, 12.5, 3)


def cut(error: RecentError) -> RecentError:
    """``error`` as stores keep it: type and message cut to their caps."""
    return RecentError(
        error.arm,
        error.type[:MAX_ERROR_TYPE],
        error.message[:MAX_ERROR_MESSAGE],
        error.first_seen,
        error.last_seen,
        error.count,
    )


class TestErrorCodec:
    @given(errors)
    def test_round_trip(self, error: RecentError) -> None:
        """An error loads back as dumped, its type and message cut to their caps."""
        loaded = load_error(dump_error(error))
        assert loaded == cut(error)
        assert type(loaded.first_seen) is float
        assert type(loaded.last_seen) is float

    def test_bytes_load_too(self) -> None:
        """An error read as bytes (Redis) loads like text."""
        assert load_error(dump_error(ERROR).encode()) == ERROR

    def test_long_type_and_message_are_cut_on_dump_and_on_load(self) -> None:
        """A type or message past its cap is cut when written, and when read."""
        long = RecentError("treatment", "T" * 1000, "m" * 10_000, 1.0, 2.0)
        stored = json.loads(dump_error(long))
        assert len(stored["type"]) == MAX_ERROR_TYPE
        assert len(stored["message"]) == MAX_ERROR_MESSAGE
        written_elsewhere = json.dumps({**stored, "type": "T" * 1000, "message": "m" * 10_000})
        loaded = load_error(written_elsewhere)
        assert (len(loaded.type), len(loaded.message)) == (MAX_ERROR_TYPE, MAX_ERROR_MESSAGE)

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"count": 0}, "count must be an integer from 1 to 2**53"),
            ({"count": MAX_COUNT + 1}, "count must be an integer"),
            ({"count": True}, "count must be an integer"),
            ({"count": 1.0}, "count must be an integer"),
            ({"first_seen": math.nan}, "first_seen must be a finite number"),
            ({"last_seen": math.inf}, "last_seen must be a finite number"),
            ({"last_seen": 10**400}, "last_seen must be a finite number"),
            ({"first_seen": False}, "first_seen must be a finite number"),
            ({"arm": ""}, "arm must be text of 1 to 32 characters"),
            ({"arm": "a" * 33}, "arm must be text"),
            ({"type": 5}, "type must be text"),
            ({"message": None}, "message must be text"),
        ],
    )
    def test_an_error_out_of_range_is_refused(
        self, change: dict[str, object], message: str
    ) -> None:
        """dump_error refuses, and load_error rejects, an error with a field out of range."""
        fields = {
            "arm": ERROR.arm,
            "type": ERROR.type,
            "message": ERROR.message,
            "first_seen": ERROR.first_seen,
            "last_seen": ERROR.last_seen,
            "count": ERROR.count,
            **change,
        }
        with pytest.raises(ValueError, match=re.escape(message)):
            dump_error(RecentError(**fields))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=re.escape(message)):
            load_error(json.dumps(fields))

    @pytest.mark.parametrize(
        "text",
        ["", "{", "[]", "null", '"x"', "{}", '{"arm": "treatment"}', nested(100_000), b"\xff"],
    )
    def test_malformed_text_is_a_value_error(self, text: str | bytes) -> None:
        """Text that is not a recent error raises ValueError."""
        with pytest.raises(ValueError):  # noqa: PT011 - the message is the input's
            load_error(text)

    @given(json_values)
    def test_any_json_value(self, value: object) -> None:
        """Any JSON value loads as a recent error or raises ValueError, nothing else."""
        with contextlib.suppress(ValueError):
            load_error(json.dumps(value))

    @given(
        st.fixed_dictionaries(
            {},
            optional=dict.fromkeys(
                ("arm", "type", "message", "first_seen", "last_seen", "count"), json_values
            ),
        )
    )
    def test_any_field_values(self, data: dict[str, object]) -> None:
        """An object with any values in an error's fields is a valid error or a ValueError."""
        try:
            error = load_error(json.dumps(data))
        except ValueError:
            return
        assert load_error(dump_error(error)) == error

    def test_not_a_recent_error(self) -> None:
        """dump_error of another object raises ValueError."""
        with pytest.raises(ValueError, match="must be a RecentError"):
            dump_error("IndexError")  # type: ignore[arg-type]


def seen(arm: str, kind: str, at: float, count: int = 1, message: str = "m") -> RecentError:
    return RecentError(arm, kind, message, at, at, count)


class TestMergeErrors:
    def test_same_error_merges(self) -> None:
        """One (arm, type, message): counts add, first_seen the earliest, last_seen the latest."""
        merged = merge_errors([seen("treatment", "E", 10.0, 2)], [seen("treatment", "E", 5.0)])
        assert merged == [RecentError("treatment", "E", "m", 5.0, 10.0, 3)]

    def test_distinct_by_arm_type_and_message(self) -> None:
        """Another arm, type or message is another entry; newest last_seen first."""
        merged = merge_errors(
            [],
            [
                seen("treatment", "E", 1.0),
                seen("control", "E", 2.0),
                seen("treatment", "F", 3.0),
                seen("treatment", "E", 4.0, message="other"),
            ],
        )
        assert [e.last_seen for e in merged] == [4.0, 3.0, 2.0, 1.0]

    def test_keeps_the_most_recently_seen(self) -> None:
        """Of more than MAX_ERRORS distinct errors, the least recently seen are dropped."""
        merged = merge_errors([], [seen("treatment", f"E{i}", float(i)) for i in range(25)])
        assert len(merged) == MAX_ERRORS
        assert [e.type for e in merged] == [f"E{i}" for i in range(24, 4, -1)]

    def test_counts_stop_at_the_cap(self) -> None:
        """Counts that would pass 2**53 stay at it, so the entry stays readable."""
        merged = merge_errors(
            [seen("treatment", "E", 1.0, MAX_COUNT)], [seen("treatment", "E", 2.0)]
        )
        assert merged[0].count == MAX_COUNT
        assert load_error(dump_error(merged[0])) == merged[0]

    def test_cut_errors_merge_with_what_is_stored(self) -> None:
        """A long message merges with the stored entry it was cut to."""
        long = seen("treatment", "E", 2.0, message="m" * 500)
        stored = merge_errors([], [long])
        assert merge_errors(stored, [long])[0].count == 2

    def test_a_malformed_error_merges_nothing(self) -> None:
        """A malformed new error raises ValueError before anything is merged."""
        with pytest.raises(ValueError, match="count"):
            merge_errors([], [seen("treatment", "E", 1.0), seen("treatment", "F", 1.0, 0)])

    @given(st.lists(errors, max_size=10), st.lists(errors, max_size=10))
    def test_order_does_not_matter_within_the_cap(
        self, first: list[RecentError], second: list[RecentError]
    ) -> None:
        """Within MAX_ERRORS distinct errors, adding in two batches or one, in any order, agrees,
        and no count is lost."""
        one = merge_errors([], first + second)
        assert merge_errors(merge_errors([], first), second) == one
        assert merge_errors(merge_errors([], second), first) == one
        total = sum(e.count for e in first + second)
        assert sum(e.count for e in one) == total or any(e.count == MAX_COUNT for e in one)
