"""Tests for stagedroll._policy: the policy models and loading them from files and mappings."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from stagedroll import (
    Bucketing,
    BucketingScheme,
    Health,
    Policy,
    PolicyError,
    RolloutPolicy,
    Rule,
    Segment,
    Stage,
    Targeting,
    load_policy,
    parse_duration,
    parse_policy,
)
from stagedroll.exceptions import PolicyProblem, StagedrollError

EXAMPLE_TOML = """\
environments = ["dev", "staging", "prod"]
[rollouts.new-checkout]
description = "New checkout flow"
salt = "new-checkout"
bucket_by = "user_id"
advance = "auto"
stages = [
  { name = "employees", percent = 0, segments = ["employees"] },
  { name = "canary",    percent = 1,   bake = "30m", min_units = 500 },
  { name = "early",     percent = 5,   bake = "2h" },
  { name = "half",      percent = 50,  bake = "1d" },
  { name = "all",       percent = 100 },
]
[rollouts.new-checkout.environments]
dev = 100
staging = "stages"
prod = "stages"
[rollouts.new-checkout.targeting]
allow = ["user-1", "user-2"]
deny = ["user-666"]
[rollouts.new-checkout.health]
alpha_freeze = 0.05
alpha_rollback = 0.001
latency_slo_ms = 250
[segments.employees]
rules = [{ attribute = "email", op = "suffix", value = "@example.com" }]
"""

EXAMPLE_JSON = """\
{
  "environments": ["dev", "staging", "prod"],
  "rollouts": {
    "new-checkout": {
      "description": "New checkout flow",
      "salt": "new-checkout",
      "bucket_by": "user_id",
      "advance": "auto",
      "stages": [
        {"name": "employees", "percent": 0, "segments": ["employees"]},
        {"name": "canary", "percent": 1, "bake": "30m", "min_units": 500},
        {"name": "early", "percent": 5, "bake": "2h"},
        {"name": "half", "percent": 50, "bake": "1d"},
        {"name": "all", "percent": 100}
      ],
      "environments": {"dev": 100, "staging": "stages", "prod": "stages"},
      "targeting": {"allow": ["user-1", "user-2"], "deny": ["user-666"]},
      "health": {"alpha_freeze": 0.05, "alpha_rollback": 0.001, "latency_slo_ms": 250}
    }
  },
  "segments": {
    "employees": {
      "rules": [{"attribute": "email", "op": "suffix", "value": "@example.com"}]
    }
  }
}
"""

EXAMPLE_YAML = """\
environments: [dev, staging, prod]
rollouts:
  new-checkout:
    description: New checkout flow
    salt: new-checkout
    bucket_by: user_id
    advance: auto
    stages:
      - {name: employees, percent: 0, segments: [employees]}
      - {name: canary, percent: 1, bake: 30m, min_units: 500}
      - {name: early, percent: 5, bake: 2h}
      - {name: half, percent: 50, bake: 1d}
      - {name: all, percent: 100}
    environments:
      dev: 100
      staging: stages
      prod: stages
    targeting:
      allow: [user-1, user-2]
      deny: [user-666]
    health:
      alpha_freeze: 0.05
      alpha_rollback: 0.001
      latency_slo_ms: 250
segments:
  employees:
    rules:
      - {attribute: email, op: suffix, value: "@example.com"}
"""

BAD_NAME = "must be a name of letters, digits, '-', '_' or '.', starting with a letter or digit"
BAD_OPERATOR = (
    "must be 'eq', 'ne', 'in', 'not_in', 'lt', 'le', 'gt', 'ge', 'prefix', 'suffix', "
    "'contains', 'semver_eq', 'semver_lt', 'semver_le', 'semver_gt' or 'semver_ge'"
)
UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_SECONDS = 366 * 86400

FIELD_NAMES = sorted(
    {
        name
        for model in (Rule, Segment, Stage, Targeting, Health, RolloutPolicy, Policy)
        for name in model.model_fields
    }
)

SCALARS: st.SearchStrategy[object] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from(
        [
            *("stages", "off", "auto", "manual", "all", "any", "30m", "1h30m", "0m", "soon"),
            *("1.2.3", "eq", "in", "semver_lt", "dev", "prod", "user-1", "a", "b"),
        ]
    ),
)
KEYS: st.SearchStrategy[object] = st.one_of(
    st.sampled_from(FIELD_NAMES), st.text(max_size=8), st.integers(-2, 2)
)
JUNK: st.SearchStrategy[object] = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(KEYS, children, max_size=4)
    ),
    max_leaves=20,
)
NAMES = st.sampled_from(["r", "s", "dev", "new-checkout", "bad name", ""])


def _fields_of(model: type[Any]) -> st.SearchStrategy[dict[str, object]]:
    """Mappings with some of ``model``'s fields (and a stray key now and then), valued with junk."""
    return st.dictionaries(st.sampled_from([*model.model_fields, "extra"]), JUNK, max_size=6)


SHAPED: st.SearchStrategy[dict[str, object]] = st.fixed_dictionaries(
    {
        "rollouts": st.dictionaries(
            NAMES,
            st.fixed_dictionaries(
                {"stages": st.lists(_fields_of(Stage), max_size=4)},
                optional={
                    "environments": st.dictionaries(NAMES, JUNK, max_size=3),
                    "targeting": _fields_of(Targeting),
                    "health": _fields_of(Health),
                    "advance": JUNK,
                    "salt": JUNK,
                },
            ),
            max_size=3,
        )
    },
    optional={
        "environments": st.one_of(st.lists(NAMES, max_size=3), JUNK),
        "segments": st.dictionaries(
            NAMES,
            st.fixed_dictionaries(
                {"rules": st.lists(_fields_of(Rule), max_size=3)},
                optional={"match": JUNK},
            ),
            max_size=3,
        ),
    },
)


def _doc(**rollout: Any) -> dict[str, Any]:
    """A policy with one rollout ``r``: one valid stage unless ``stages`` is given."""
    rollout.setdefault("stages", [{"name": "a", "percent": 1}])
    return {"rollouts": {"r": rollout}}


def _stages(*percents: object) -> dict[str, Any]:
    """A policy with one rollout ``r`` whose stages ``s0``, ``s1``... have these percents."""
    return _doc(stages=[{"name": f"s{i}", "percent": p} for i, p in enumerate(percents)])


def _segment(*rules: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    """A policy with one segment ``s`` made of these rules, and no rollouts."""
    return {"segments": {"s": {"rules": list(rules), **fields}}, "rollouts": {}}


def _problems(source: Mapping[str, Any] | Path) -> list[str]:
    """The problems, as text, of the PolicyError that loading ``source`` raises."""
    with pytest.raises(PolicyError) as info:
        load_policy(source)
    return [str(problem) for problem in info.value.problems]


def _type_problem(source: Mapping[str, Any], path: str, given: str) -> None:
    """Assert that loading ``source`` names only ``path``, as a type error showing ``given``."""
    [problem] = _problems(source)
    assert problem.startswith(f"{path}: must be ")
    assert problem.endswith(f" (got {given})")


def _problems_or_none(document: Mapping[str, Any]) -> tuple[PolicyProblem, ...] | None:
    """None if ``document`` loads, else its problems; any exception but PolicyError escapes."""
    try:
        load_policy(document)
    except PolicyError as error:
        return error.problems
    return None


@pytest.fixture(name="example_files")
def _example_files(tmp_path: Path) -> dict[str, Path]:
    """The example policy written as TOML, JSON and YAML files."""
    files = {
        "toml": tmp_path / "policy.toml",
        "json": tmp_path / "policy.json",
        "yaml": tmp_path / "policy.yaml",
    }
    files["toml"].write_text(EXAMPLE_TOML, encoding="utf-8")
    files["json"].write_text(EXAMPLE_JSON, encoding="utf-8")
    files["yaml"].write_text(EXAMPLE_YAML, encoding="utf-8")
    return files


@pytest.fixture(name="example")
def _example() -> Policy:
    """The example policy, parsed from TOML."""
    return parse_policy(EXAMPLE_TOML, format="toml")


class TestLoading:
    def test_formats_load_equal_policies(self, example_files: dict[str, Path]) -> None:
        """The example loads from TOML, JSON and YAML files into equal policies."""
        toml, json_, yaml = (load_policy(example_files[f]) for f in ("toml", "json", "yaml"))
        assert toml == json_ == yaml

    def test_example_values(self, example: Policy) -> None:
        """Every field of the example is read, durations in seconds and percents as floats."""
        assert example.environments == ("dev", "staging", "prod")
        rollout = example.rollouts["new-checkout"]
        assert rollout.description == "New checkout flow"
        assert rollout.salt == "new-checkout"
        assert rollout.bucket_by == "user_id"
        assert rollout.advance == "auto"
        assert [s.name for s in rollout.stages] == ["employees", "canary", "early", "half", "all"]
        assert [s.percent for s in rollout.stages] == [0.0, 1.0, 5.0, 50.0, 100.0]
        assert [s.bake for s in rollout.stages] == [None, 1800.0, 7200.0, 86400.0, None]
        assert [s.min_units for s in rollout.stages] == [0, 500, 0, 0, 0]
        assert rollout.stages[0].segments == ("employees",)
        assert rollout.environments == {"dev": 100.0, "staging": "stages", "prod": "stages"}
        assert rollout.targeting == Targeting(allow=("user-1", "user-2"), deny=("user-666",))
        assert rollout.health.alpha_freeze == 0.05
        assert rollout.health.alpha_rollback == 0.001
        assert rollout.health.latency_slo_ms == 250.0
        rule = Rule(attribute="email", op="suffix", value="@example.com")
        assert example.segments == {"employees": Segment(rules=(rule,))}

    def test_defaults(self) -> None:
        """A rollout given only its stages gets the documented defaults."""
        rollout = load_policy(_doc()).rollouts["r"]
        assert rollout.description == ""
        assert rollout.salt is None
        assert rollout.bucket_by is None
        assert rollout.advance == "manual"
        assert rollout.environments == {}
        assert rollout.targeting == Targeting()
        assert rollout.health == Health()
        assert rollout.stages[0].bake is None
        assert rollout.stages[0].min_units == 0
        assert rollout.stages[0].segments == ()

    def test_salt_defaults_to_the_rollout_name(self) -> None:
        """salt_or gives the pinned salt, else the rollout's name."""
        stages = [{"name": "a", "percent": 1}]
        policy = load_policy(
            {"rollouts": {"r": {"stages": stages}, "p": {"salt": "x", "stages": stages}}}
        )
        assert policy.rollouts["r"].salt_or("r") == "r"
        assert policy.rollouts["p"].salt_or("p") == "x"

    @pytest.mark.parametrize("name", ["policy.yml", "POLICY.YAML", "Policy.Json"])
    def test_suffix_variants(self, tmp_path: Path, example: Policy, name: str) -> None:
        """The .yml suffix is YAML too, and suffixes are read without regard to case."""
        path = tmp_path / name
        path.write_text(
            EXAMPLE_JSON if name.lower().endswith(".json") else EXAMPLE_YAML, encoding="utf-8"
        )
        assert load_policy(path) == example

    def test_path_given_as_str(self, example_files: dict[str, Path], example: Policy) -> None:
        """A path may be given as a str."""
        assert load_policy(str(example_files["json"])) == example

    def test_mapping_and_policy(self, example: Policy) -> None:
        """A mapping is validated like a parsed file, and a Policy is returned as is."""
        assert load_policy(json.loads(EXAMPLE_JSON)) == example
        assert load_policy(example) is example

    def test_parse_policy_formats(self, example: Policy) -> None:
        """parse_policy reads each format from text."""
        assert parse_policy(EXAMPLE_JSON, format="json") == example
        assert parse_policy(EXAMPLE_YAML, format="yaml") == example

    def test_an_empty_rollouts_table_is_a_policy_without_rollouts(self) -> None:
        """``rollouts = {}`` says "no rollouts" on purpose, in each format."""
        assert parse_policy("rollouts = {}", format="toml") == Policy()
        assert parse_policy('{"rollouts": {}}', format="json") == Policy()
        assert parse_policy("rollouts: {}", format="yaml") == Policy()

    def test_allow_and_deny_ints_become_strings(self) -> None:
        """Integer unit ids in allow and deny lists are read as strings."""
        policy = load_policy(_doc(targeting={"allow": [1, "user-2"], "deny": [666]}))
        assert policy.rollouts["r"].targeting == Targeting(allow=("1", "user-2"), deny=("666",))

    def test_models_are_frozen(self, example: Policy) -> None:
        """Models cannot be changed once loaded."""
        with pytest.raises(ValidationError):
            example.rollouts["new-checkout"].advance = "manual"

    def test_fixed_percent_environment(self) -> None:
        """An environment setting is "stages", "off" or a percent, read as a float."""
        environments = {"a": "stages", "b": "off", "c": 0, "d": 12.5, "e": 100}
        rollout = load_policy(_doc(environments=environments)).rollouts["r"]
        assert rollout.environments == {"a": "stages", "b": "off", "c": 0.0, "d": 12.5, "e": 100.0}


class TestParseDuration:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [
            ("30m", 1800.0),
            ("2h", 7200.0),
            ("1d", 86400.0),
            ("1h30m", 5400.0),
            ("500ms", 0.5),
            ("1.5s", 1.5),
            ("2w", 1209600.0),
            (" 1h 30m ", 5400.0),
            (90, 90.0),
            (0.25, 0.25),
        ],
    )
    def test_valid(self, text: object, seconds: float) -> None:
        """Durations are read to seconds; a bare number is seconds."""
        assert parse_duration(text) == seconds

    @pytest.mark.parametrize(
        "text",
        [
            *("0m", "-1h", "soon", "", "90", "1H", "h", "1h30"),
            *(True, False, None, [], 0, -5, float("nan"), float("inf")),
        ],
    )
    def test_invalid(self, text: object) -> None:
        """Anything but a positive duration is a ValueError."""
        with pytest.raises(ValueError, match="duration"):
            parse_duration(text)

    @given(st.sampled_from(sorted(UNIT_SECONDS)), st.data())
    def test_units(self, unit: str, data: st.DataObject) -> None:
        """N of a unit is N times the seconds in the unit, up to 366 days."""
        count = data.draw(st.integers(1, int(MAX_SECONDS // UNIT_SECONDS[unit])))
        assert parse_duration(f"{count}{unit}") == count * UNIT_SECONDS[unit]

    @given(
        st.integers(1, 26),
        st.sampled_from(sorted(UNIT_SECONDS)),
        st.integers(1, 26),
        st.sampled_from(sorted(UNIT_SECONDS)),
    )
    def test_parts_add_up(self, a: int, unit_a: str, b: int, unit_b: str) -> None:
        """A duration of two parts is the sum of the parts."""
        whole = parse_duration(f"{a}{unit_a}{b}{unit_b}")
        assert whole == parse_duration(f"{a}{unit_a}") + parse_duration(f"{b}{unit_b}")

    def test_huge_integer_is_a_value_error(self) -> None:
        """An integer too large for a float is a ValueError, like any other bad duration."""
        with pytest.raises(ValueError, match="duration"):
            parse_duration(10**400)


class TestPatternProblems:
    def test_a_migration_needs_its_six_phases_and_manual_steps(self) -> None:
        """The stages are named for the phases, in order; advance is manual."""
        stages = [{"name": n, "percent": p} for n, p in (("off", 0), ("live", 50))]
        with pytest.raises(PolicyError) as info:
            load_policy({"rollouts": {"m": {"pattern": "migration", "advance": "auto",
                                            "stages": stages}}})  # fmt: skip
        assert [p.path for p in info.value.problems] == ["rollouts.m.stages", "rollouts.m.advance"]
        assert "off, dual_write, shadow_read, live, rampdown, complete (found: off, live)" in str(
            info.value
        )

    def test_a_bare_yaml_off_gets_a_hint(self) -> None:
        """YAML 1.1 reads off as false: the problem says to quote it."""
        text = "rollouts:\n  m:\n    pattern: migration\n    stages:\n" + "".join(
            f"      - {{name: {n}, percent: {20 * i}}}\n"
            for i, n in enumerate(
                ["off", "dual_write", "shadow_read", "live", "rampdown", "complete"]
            )
        )
        with pytest.raises(PolicyError, match='YAML reads a bare off as false: write "off"'):
            parse_policy(text, format="yaml")

    def test_a_shadow_takes_any_stages(self) -> None:
        """``pattern = "shadow"`` adds no rule; an unknown pattern is refused."""
        stages = [{"name": "a", "percent": 5}]
        assert load_policy({"rollouts": {"s": {"pattern": "shadow", "stages": stages}}})
        with pytest.raises(PolicyError, match=r"rollouts\.s\.pattern"):
            load_policy({"rollouts": {"s": {"pattern": "canary", "stages": stages}}})


class TestStageProblems:
    def test_decreasing_percent(self) -> None:
        """A stage below the one before it is named, with the previous percent."""
        with pytest.raises(PolicyError) as info:
            load_policy({"rollouts": {"new-checkout": _stages(1, 25, 10)["rollouts"]["r"]}})
        assert [str(p) for p in info.value.problems] == [
            "rollouts.new-checkout.stages[2].percent: must be greater than the previous stage (25)"
        ]
        assert info.value.problems == (
            PolicyProblem(
                "rollouts.new-checkout.stages[2].percent",
                "must be greater than the previous stage (25)",
            ),
        )

    def test_equal_percent(self) -> None:
        """A stage no higher than the one before it is refused."""
        assert _problems(_stages(12.5, 12.5)) == [
            "rollouts.r.stages[1].percent: must be greater than the previous stage (12.5)"
        ]

    @given(st.lists(st.integers(0, 1_000_000), min_size=1, max_size=8, unique=True))
    def test_increasing_percents_load(self, steps: list[int]) -> None:
        """Any strictly increasing list of percents with four decimals at most is valid."""
        percents = [step / 10_000 for step in sorted(steps)]
        stages = load_policy(_stages(*percents)).rollouts["r"].stages
        assert [stage.percent for stage in stages] == percents

    @given(st.lists(st.integers(0, 100), min_size=2, max_size=8, unique=True))
    def test_decreasing_percents_are_each_named(self, percents: list[int]) -> None:
        """In a strictly decreasing list, every stage after the first is named."""
        ordered = sorted(percents, reverse=True)
        assert _problems(_stages(*ordered)) == [
            f"rollouts.r.stages[{i}].percent: must be greater than the previous stage ({before})"
            for i, before in enumerate(ordered[:-1], start=1)
        ]

    def test_duplicate_names(self) -> None:
        """A stage reusing a name is named, with the stage it duplicates."""
        stages = [{"name": "a", "percent": 1}, {"name": "b", "percent": 2}]
        stages.append({"name": "a", "percent": 3})
        assert _problems(_doc(stages=stages)) == [
            "rollouts.r.stages[2].name: duplicates the name of stages[0]"
        ]

    @pytest.mark.parametrize(
        ("percent", "message"),
        [
            (101, "must be between 0 and 100"),
            (100.0001, "must be between 0 and 100"),
            (-1, "must be between 0 and 100"),
            (1.00001, "must have at most 4 decimals"),
            (True, "must be a number"),
            ("5", "must be a number"),
            (None, "must be a number"),
            (float("nan"), "must be a finite number"),
            (float("inf"), "must be a finite number"),
        ],
    )
    def test_bad_percent(self, percent: object, message: str) -> None:
        """A percent outside [0, 100], too precise, or not a number is named."""
        assert _problems(_stages(percent)) == [f"rollouts.r.stages[0].percent: {message}"]

    def test_percent_is_required(self) -> None:
        """A stage without a percent is named."""
        assert _problems(_doc(stages=[{"name": "a"}])) == [
            "rollouts.r.stages[0].percent: is required"
        ]

    def test_missing_stages(self) -> None:
        """A rollout without stages is named."""
        assert _problems({"rollouts": {"r": {}}}) == ["rollouts.r.stages: is required"]

    def test_empty_stages(self) -> None:
        """A rollout with an empty list of stages is named."""
        assert _problems(_doc(stages=[])) == ["rollouts.r.stages: must not be empty"]

    def test_stages_not_a_list(self) -> None:
        """Stages given as a string are named, with what was given."""
        _type_problem(_doc(stages="all"), "rollouts.r.stages", "'all'")

    @pytest.mark.parametrize(
        ("bake", "message"),
        [
            ("0m", "must be a positive duration"),
            (0, "must be a positive duration"),
            ("-1h", "must be a duration such as '30m', '2h' or '1d', not '-1h'"),
            ("soon", "must be a duration such as '30m', '2h' or '1d', not 'soon'"),
            (True, "must be a duration such as '30m', '2h' or '1d'"),
            ([1], "must be a duration such as '30m', '2h' or '1d'"),
        ],
    )
    def test_bad_bake(self, bake: object, message: str) -> None:
        """A bake that is not a positive duration is named."""
        stages = [{"name": "a", "percent": 1, "bake": bake}]
        assert _problems(_doc(stages=stages)) == [f"rollouts.r.stages[0].bake: {message}"]

    def test_negative_min_units(self) -> None:
        """A negative min_units is named."""
        stages = [{"name": "a", "percent": 1, "min_units": -1}]
        assert _problems(_doc(stages=stages)) == [
            "rollouts.r.stages[0].min_units: must be greater than or equal to 0"
        ]

    def test_min_units_cap(self) -> None:
        """``min_units`` is at most 50,000: the units an arm remembers per stage."""
        at_cap = [{"name": "a", "percent": 1, "min_units": 50_000}]
        assert load_policy(_doc(stages=at_cap)).rollouts["r"].stages[0].min_units == 50_000
        above = [{"name": "a", "percent": 1, "min_units": 50_001}]
        assert _problems(_doc(stages=above)) == [
            "rollouts.r.stages[0].min_units: must be less than or equal to 50000"
        ]

    def test_min_units_needs_a_percent(self) -> None:
        """``min_units`` above 0 at 0 % can never be met: named, for each such stage."""
        stages = [
            {"name": "staff", "percent": 0, "min_units": 0},
            {"name": "a", "percent": 1, "min_units": 10},
        ]
        assert load_policy(_doc(stages=stages)).rollouts["r"].stages[1].min_units == 10
        stages[0]["min_units"] = 5
        assert _problems(_doc(stages=stages)) == [
            "rollouts.r.stages[0].min_units: needs a percent above 0: only bucketed units count"
        ]

    def test_min_units_needs_a_percent_without_load_policy(self) -> None:
        """A Policy built directly checks ``min_units`` against the percent too."""
        with pytest.raises(ValidationError, match=r"stages\[0\]\.min_units: needs a percent"):
            Policy.model_validate(_doc(stages=[{"name": "a", "percent": 0, "min_units": 5}]))

    def test_bad_stage_name(self) -> None:
        """A stage name with a space is named."""
        stages = [{"name": "first stage", "percent": 1}]
        assert _problems(_doc(stages=stages)) == [f"rollouts.r.stages[0].name: {BAD_NAME}"]

    def test_unknown_segment(self) -> None:
        """A stage naming a segment the policy lacks is named, with a hint for a near miss."""
        document = _segment({"attribute": "email", "op": "suffix", "value": "@example.com"})
        document["segments"] = {"employees": document.pop("segments")["s"]}
        document.update(_doc(stages=[{"name": "a", "percent": 0, "segments": ["employes"]}]))
        assert _problems(document) == [
            "rollouts.r.stages[0].segments[0]: unknown segment 'employes'; "
            "did you mean 'employees'?"
        ]

    def test_unknown_segment_without_segments(self) -> None:
        """A stage naming a segment in a policy with no segments is named, without a hint."""
        stages = [{"name": "a", "percent": 0, "segments": ["employees"]}]
        assert _problems(_doc(stages=stages)) == [
            "rollouts.r.stages[0].segments[0]: unknown segment 'employees'"
        ]


class TestFieldProblems:
    def test_unknown_field_with_hint(self) -> None:
        """An unknown field close to a known one is named with a hint."""
        assert _problems(_doc(advanc="auto")) == [
            "rollouts.r.advanc: unknown field; did you mean 'advance'?"
        ]

    def test_unknown_field_without_hint(self) -> None:
        """An unknown field like no known one is named without a hint."""
        assert _problems(_doc(zzzzqqq=1)) == ["rollouts.r.zzzzqqq: unknown field"]

    def test_unknown_top_level_field(self) -> None:
        """An unknown top-level field is named with a hint."""
        assert _problems({"rollout": {}, "rollouts": {}}) == [
            "rollout: unknown field; did you mean 'rollouts'?"
        ]

    def test_unknown_stage_field(self) -> None:
        """An unknown field of a stage is named at its path."""
        stages = [{"name": "a", "percent": 1, "bak": "1h"}]
        assert _problems(_doc(stages=stages)) == [
            "rollouts.r.stages[0].bak: unknown field; did you mean 'bake'?"
        ]

    def test_bad_literal(self) -> None:
        """A value outside a field's choices is named, with the choices and what was given."""
        assert _problems(_doc(advance="sometimes")) == [
            "rollouts.r.advance: must be 'auto' or 'manual' (got 'sometimes')"
        ]

    @pytest.mark.parametrize(
        ("fields", "path", "given"),
        [
            ({"description": 5}, "description", "5"),
            ({"bucket_by": ["user_id"]}, "bucket_by", "['user_id']"),
            ({"targeting": []}, "targeting", "[]"),
            ({"targeting": {"allow": "user-1"}}, "targeting.allow", "'user-1'"),
            ({"environments": ["dev"]}, "environments", "['dev']"),
            ({"health": {"min_events": 1.5}}, "health.min_events", "1.5"),
            ({"health": {"alpha_freeze": "0.5"}}, "health.alpha_freeze", "'0.5'"),
        ],
    )
    def test_wrong_types(self, fields: dict[str, Any], path: str, given: str) -> None:
        """A field of the wrong type is named, with what was given."""
        _type_problem(_doc(**fields), f"rollouts.r.{path}", given)

    def test_invalid_rollout_name(self) -> None:
        """A rollout name with a space is named."""
        assert _problems({"rollouts": {"bad name": _doc()["rollouts"]["r"]}}) == [
            "rollouts.bad name: invalid name: must be a name of letters, digits, '-', '_' or '.', "
            "starting with a letter or digit"
        ]

    def test_invalid_segment_name(self) -> None:
        """A segment name starting with a dash is named."""
        rules = [{"attribute": "a", "op": "eq", "value": 1}]
        assert _problems({"segments": {"-s": {"rules": rules}}, "rollouts": {}}) == [
            f"segments.-s: invalid name: {BAD_NAME}"
        ]

    def test_rollouts_must_be_a_table(self) -> None:
        """Rollouts given as a list are named."""
        _type_problem({"rollouts": []}, "rollouts", "[]")

    def test_empty_salt(self) -> None:
        """An empty salt is refused."""
        assert _problems(_doc(salt="")) == ["rollouts.r.salt: must not be empty"]


class TestEnvironmentProblems:
    def test_unknown_environment(self) -> None:
        """A rollout environment missing from the declared list is named, with the list."""
        document = _doc(environments={"dev": 100, "prd": "stages"})
        document["environments"] = ["dev", "prod"]
        assert _problems(document) == [
            "rollouts.r.environments.prd: unknown environment (declared: dev, prod)"
        ]

    def test_any_environment_without_a_declared_list(self) -> None:
        """Without a declared list, a rollout may name any environment."""
        policy = load_policy(_doc(environments={"anything": "off"}))
        assert policy.rollouts["r"].environments == {"anything": "off"}

    @pytest.mark.parametrize("setting", ["on", True, 101, -1, None, [50]])
    def test_bad_setting(self, setting: object) -> None:
        """An environment setting other than "stages", "off" or a percent is named, with it."""
        assert _problems(_doc(environments={"dev": setting})) == [
            'rollouts.r.environments.dev: must be "stages", "off" or a percent between 0 and 100'
            f" (got {setting!r})"
        ]

    def test_yaml_off_read_as_false(self) -> None:
        """A bare YAML `off`, read as false, gets a hint to quote it."""
        assert _problems(_doc(environments={"dev": False})) == [
            'rollouts.r.environments.dev: must be "stages", "off" or a percent '
            '(got false: quote "off" in YAML)'
        ]

    def test_duplicate_declared_environment(self) -> None:
        """A declared list naming an environment twice is refused."""
        assert _problems({"environments": ["dev", "prod", "dev"], "rollouts": {}}) == [
            "environments: lists an environment twice"
        ]

    def test_bad_declared_environment_name(self) -> None:
        """A declared environment that is not a name is named at its index."""
        assert _problems({"environments": ["dev", "pre prod"], "rollouts": {}}) == [
            f"environments[1]: {BAD_NAME}"
        ]


class TestTargetingAndHealthProblems:
    def test_allow_deny_overlap(self) -> None:
        """Units both allowed and denied are listed, sorted."""
        targeting = {"allow": ["b", "a", "c"], "deny": ["a", "b", "d"]}
        assert _problems(_doc(targeting=targeting)) == [
            "rollouts.r.targeting.deny: units also in targeting.allow: a, b"
        ]

    def test_overlap_across_int_and_str(self) -> None:
        """An int unit id overlaps its string form, since ints are read as strings."""
        assert _problems(_doc(targeting={"allow": [7], "deny": ["7"]})) == [
            "rollouts.r.targeting.deny: units also in targeting.allow: 7"
        ]

    def test_float_unit_id(self) -> None:
        """A float unit id is refused, not turned into text."""
        assert _problems(_doc(targeting={"allow": [1.5]})) == [
            "rollouts.r.targeting.allow[0]: must be a valid string (got 1.5)"
        ]

    def test_rollback_above_freeze(self) -> None:
        """alpha_rollback above alpha_freeze is named, with alpha_freeze."""
        health = {"alpha_freeze": 0.01, "alpha_rollback": 0.05}
        assert _problems(_doc(health=health)) == [
            "rollouts.r.health.alpha_rollback: must not exceed alpha_freeze (0.01)"
        ]

    def test_rollback_equal_to_freeze(self) -> None:
        """alpha_rollback may equal alpha_freeze."""
        health = load_policy(_doc(health={"alpha_freeze": 0.1, "alpha_rollback": 0.1}))
        assert health.rollouts["r"].health.alpha_rollback == 0.1

    @pytest.mark.parametrize(
        ("health", "problem"),
        [
            ({"alpha_freeze": 1}, "alpha_freeze: must be less than 1"),
            ({"alpha_rollback": 0}, "alpha_rollback: must be greater than or equal to 1e-12"),
            ({"alpha_freeze": 5e-324}, "alpha_freeze: must be greater than or equal to 1e-12"),
            ({"alpha_freeze": float("nan")}, "alpha_freeze: must be a finite number"),
            ({"r0": 1e300}, "r0: must be less than or equal to 100"),
            ({"r0": float("inf")}, "r0: must be a finite number"),
            ({"latency_slo_ms": float("inf")}, "latency_slo_ms: must be a finite number"),
            ({"latency_slo_ms": 0}, "latency_slo_ms: must be greater than 0"),
            ({"min_events": 0}, "min_events: must be greater than or equal to 1"),
            ({"r0": 0.5}, "r0: must be greater than or equal to 1"),
            ({"latency_share": -0.1}, "latency_share: must be greater than or equal to 0"),
            ({"latency_share": 1.5}, "latency_share: must be less than or equal to 1"),
            (
                {"alpha_sample_ratio": 0},
                "alpha_sample_ratio: must be greater than or equal to 1e-12",
            ),
            ({"alpha_sample_ratio": 1}, "alpha_sample_ratio: must be less than 1"),
        ],
    )
    def test_out_of_range(self, health: dict[str, object], problem: str) -> None:
        """A health knob out of its range is named."""
        assert _problems(_doc(health=health)) == [f"rollouts.r.health.{problem}"]

    def test_health_defaults(self) -> None:
        """The health gate is on by default, with FREEZE.md's numbers."""
        health = load_policy(_doc()).rollouts["r"].health
        assert health == Health()
        assert (health.enabled, health.alpha_freeze, health.alpha_rollback) == (True, 0.05, 0.001)
        assert (health.alpha_sample_ratio, health.r0, health.min_events) == (0.001, 1.0, 3)
        assert (health.latency_slo_ms, health.latency_p95, health.latency_share) == (
            None,
            False,
            None,
        )
        assert health.latency_part == 0.0  # latency is not tested: errors get all of alpha

    @pytest.mark.parametrize("share", [0, 0.25, 1])
    @pytest.mark.parametrize("latency", [{"latency_p95": True}, {"latency_slo_ms": 250}])
    def test_latency_share_bounds_are_allowed(
        self, share: float, latency: dict[str, object]
    ) -> None:
        """``latency_share`` may be 0 (errors only), 1 (latency only) or anything between."""
        policy = load_policy(_doc(health={**latency, "latency_share": share}))
        assert policy.rollouts["r"].health.latency_share == share
        assert policy.rollouts["r"].health.latency_part == share

    @pytest.mark.parametrize(
        ("health", "part"),
        [
            pytest.param({}, 0.0, id="no-latency-test"),
            pytest.param({"latency_p95": False}, 0.0, id="p95-off"),
            pytest.param({"latency_p95": True}, 0.5, id="p95-default-share"),
            pytest.param({"latency_slo_ms": 250}, 0.5, id="slo-default-share"),
            pytest.param({"latency_p95": True, "latency_share": 0.2}, 0.2, id="p95-given-share"),
            pytest.param({"latency_slo_ms": 250, "latency_share": 0.7}, 0.7, id="slo-given-share"),
        ],
    )
    def test_latency_part(self, health: dict[str, object], part: float) -> None:
        """The part of each alpha in force for latency: 0 without a latency test, else the
        given ``latency_share``, 0.5 by default."""
        assert load_policy(_doc(health=health)).rollouts["r"].health.latency_part == part
        assert Health(**health).latency_part == part  # type: ignore[arg-type]

    def test_p95_and_an_slo_conflict(self) -> None:
        """``latency_p95`` and ``latency_slo_ms`` are two definitions of slow: one at a time."""
        health = {"latency_p95": True, "latency_slo_ms": 250}
        assert _problems(_doc(health=health)) == [
            "rollouts.r.health.latency_p95: "
            "conflicts with latency_slo_ms: choose one definition of slow"
        ]

    def test_p95_off_with_an_slo_is_no_conflict(self) -> None:
        """``latency_p95 = false`` beside an SLO is the default, not a second definition."""
        health = load_policy(_doc(health={"latency_p95": False, "latency_slo_ms": 250}))
        assert health.rollouts["r"].health.latency_part == 0.5

    @pytest.mark.parametrize("share", [0, 0.5, 1])
    @pytest.mark.parametrize("health", [{}, {"latency_p95": False}])
    def test_latency_share_needs_a_latency_test(
        self, share: float, health: dict[str, object]
    ) -> None:
        """A share for a latency test that is not there is refused, saying how to add one."""
        assert _problems(_doc(health={**health, "latency_share": share})) == [
            "rollouts.r.health.latency_share: "
            "needs a latency test: set latency_slo_ms, or latency_p95 = true"
        ]

    def test_latency_problems_from_toml_and_the_model(self) -> None:
        """The same problems reach a TOML file and ``Health(...)`` built directly."""
        with pytest.raises(PolicyError) as info:
            parse_policy(
                '[rollouts.r]\nstages = [{ name = "a", percent = 1 }]\n'
                "[rollouts.r.health]\nlatency_p95 = true\nlatency_slo_ms = 200\n",
                format="toml",
            )
        assert [p.path for p in info.value.problems] == ["rollouts.r.health.latency_p95"]
        with pytest.raises(ValidationError, match="needs a latency test"):
            Health(latency_share=0.5)

    @pytest.mark.parametrize(
        ("knob", "value", "given"),
        [
            ("enabled", "yes", "'yes'"),
            ("enabled", "false", "'false'"),
            ("enabled", 1, "1"),
            ("alpha_sample_ratio", "0.01", "'0.01'"),
            ("latency_share", True, "True"),
            ("latency_p95", "true", "'true'"),
            ("latency_p95", 1, "1"),
        ],
    )
    def test_knobs_are_strict(self, knob: str, value: object, given: str) -> None:
        """Health knobs take their own type only: no text for numbers, no 1 for true."""
        _type_problem(_doc(health={knob: value}), f"rollouts.r.health.{knob}", given)

    def test_disabled(self) -> None:
        """``enabled = false`` loads from TOML."""
        policy = parse_policy(
            '[rollouts.r]\nstages = [{ name = "a", percent = 1 }]\n'
            "[rollouts.r.health]\nenabled = false\n",
            format="toml",
        )
        assert policy.rollouts["r"].health.enabled is False


class TestRuleProblems:
    def test_bad_operator(self) -> None:
        """An unknown operator is named, with the known ones."""
        assert _problems(_segment({"attribute": "a", "op": "regex", "value": "x"})) == [
            f"segments.s.rules[0].op: {BAD_OPERATOR} (got 'regex')"
        ]

    @pytest.mark.parametrize(
        ("op", "value", "message"),
        [
            ("in", "x", "must be a non-empty list for operator 'in'"),
            ("not_in", [], "must be a non-empty list for operator 'not_in'"),
            ("in", [{"a": 1}], "must list strings, numbers or booleans for operator 'in'"),
            ("eq", [1], "must be a string, a number or a boolean for operator 'eq'"),
            ("ne", None, "must be a string, a number or a boolean for operator 'ne'"),
            ("lt", True, "must be a number or a string for operator 'lt'"),
            ("ge", [1], "must be a number or a string for operator 'ge'"),
            ("prefix", 5, "must be a string for operator 'prefix'"),
            ("contains", None, "must be a string for operator 'contains'"),
            ("semver_ge", "latest", "must be a version such as '1.4.0' for operator 'semver_ge'"),
            ("semver_eq", 1, "must be a version such as '1.4.0' for operator 'semver_eq'"),
        ],
    )
    def test_value_must_fit_operator(self, op: str, value: object, message: str) -> None:
        """A rule value that does not fit its operator is named."""
        rule = {"attribute": "a", "op": op, "value": value}
        assert _problems(_segment(rule)) == [f"segments.s.rules[0].value: {message}"]

    def test_rule_fields_required(self) -> None:
        """A rule without attribute and value is named for each."""
        assert sorted(_problems(_segment({"op": "eq"}))) == [
            "segments.s.rules[0].attribute: is required",
            "segments.s.rules[0].value: is required",
        ]

    def test_empty_rules(self) -> None:
        """A segment without rules is refused."""
        assert _problems(_segment()) == ["segments.s.rules: must not be empty"]

    def test_bad_match(self) -> None:
        """A match other than all or any is named."""
        rule = {"attribute": "a", "op": "eq", "value": 1}
        assert _problems(_segment(rule, match="most")) == [
            "segments.s.match: must be 'all' or 'any' (got 'most')"
        ]


class TestManyProblems:
    def test_all_reported_at_once(self) -> None:
        """Problems in several parts of a document are all reported in one error."""
        document = {
            "environments": ["dev", "prod"],
            "segments": {"s": {"rules": [{"attribute": "a", "op": "regex", "value": 1}]}},
            "rollouts": {
                "r": {
                    "advanc": "auto",
                    "stages": [
                        {"name": "a", "percent": 10, "bake": "soon"},
                        {"name": "a", "percent": 5, "segments": ["nope"]},
                    ],
                    "environments": {"qa": "stages"},
                    "targeting": {"allow": [1], "deny": ["1"]},
                    "health": {"alpha_freeze": 0.01, "alpha_rollback": 0.02},
                },
                "bad name": {"stages": [{"name": "a", "percent": 101}]},
            },
        }
        with pytest.raises(PolicyError) as info:
            load_policy(document)
        assert sorted(str(problem) for problem in info.value.problems) == sorted(
            [
                f"segments.s.rules[0].op: {BAD_OPERATOR} (got 'regex')",
                "rollouts.r.advanc: unknown field; did you mean 'advance'?",
                "rollouts.r.stages[0].bake: "
                "must be a duration such as '30m', '2h' or '1d', not 'soon'",
                "rollouts.r.stages[1].name: duplicates the name of stages[0]",
                "rollouts.r.stages[1].percent: must be greater than the previous stage (10)",
                "rollouts.r.stages[1].segments[0]: unknown segment 'nope'",
                "rollouts.r.environments.qa: unknown environment (declared: dev, prod)",
                "rollouts.r.targeting.deny: units also in targeting.allow: 1",
                "rollouts.r.health.alpha_rollback: must not exceed alpha_freeze (0.01)",
                f"rollouts.bad name: invalid name: {BAD_NAME}",
                "rollouts.bad name.stages[0].percent: must be between 0 and 100",
            ]
        )
        lines = str(info.value).splitlines()
        assert lines[0] == "11 problems:"
        assert lines[1:] == [f"  {problem}" for problem in info.value.problems]

    @pytest.mark.parametrize(
        ("rollout", "expected"),
        [
            pytest.param(
                {
                    "stages": [
                        {"name": "a", "percent": 10, "bake": "soon"},
                        {"name": "b", "percent": 5},
                    ]
                },
                [
                    "rollouts.r.stages[0].bake: "
                    "must be a duration such as '30m', '2h' or '1d', not 'soon'",
                    "rollouts.r.stages[1].percent: must be greater than the previous stage (10)",
                ],
                id="bad-bake-and-decreasing-percent",
            ),
            pytest.param(
                {
                    "advanc": "auto",
                    "stages": [{"name": "a", "percent": 1}],
                    "targeting": {"allow": ["u"], "deny": ["u"]},
                },
                [
                    "rollouts.r.advanc: unknown field; did you mean 'advance'?",
                    "rollouts.r.targeting.deny: units also in targeting.allow: u",
                ],
                id="unknown-field-and-allow-deny-overlap",
            ),
            pytest.param(
                {
                    "stages": [
                        {"name": "first stage", "percent": 1},
                        {"name": "b", "percent": 2, "segments": ["nope"]},
                    ],
                    "environments": {"dev": "on", "qa": 5},
                },
                [
                    f"rollouts.r.stages[0].name: {BAD_NAME}",
                    "rollouts.r.stages[1].segments[0]: unknown segment 'nope'",
                    'rollouts.r.environments.dev: must be "stages", "off" '
                    "or a percent between 0 and 100 (got 'on')",
                    "rollouts.r.environments.qa: unknown environment (declared: dev, prod)",
                ],
                id="bad-name-and-unknown-segment-and-environment",
            ),
        ],
    )
    def test_checks_across_fields_despite_a_bad_field(
        self, rollout: dict[str, Any], expected: list[str]
    ) -> None:
        """A bad field in a rollout does not hide the rollout's checks across valid fields."""
        document = {"environments": ["dev", "prod"], "rollouts": {"r": rollout}}
        assert sorted(_problems(document)) == sorted(expected)

    def test_error_text(self) -> None:
        """The message gives the count and source, then one problem per line."""
        error = PolicyError(
            [PolicyProblem("a.b", "is bad"), PolicyProblem("", "whole")], source="p.toml"
        )
        assert str(error) == "2 problems in p.toml:\n  a.b: is bad\n  whole"
        assert str(PolicyError([PolicyProblem("x", "y")])) == "1 problem:\n  x: y"


class TestDocumentProblems:
    def test_policy_error_is_a_value_error(self) -> None:
        """PolicyError is a ValueError and a StagedrollError."""
        assert issubclass(PolicyError, ValueError)
        assert issubclass(PolicyError, StagedrollError)

    def test_yaml_python_tag_never_runs(self, tmp_path: Path) -> None:
        """A python tag in YAML is invalid YAML, and its command never runs."""
        marker = tmp_path / "ran"
        path = tmp_path / "policy.yaml"
        path.write_text(
            f'rollouts: !!python/object/apply:os.system ["touch {marker}"]\n', encoding="utf-8"
        )
        with pytest.raises(PolicyError) as info:
            load_policy(path)
        assert [p.path for p in info.value.problems] == [""]
        assert info.value.problems[0].message.startswith("invalid YAML: ")
        assert "python/object/apply:os.system" in info.value.problems[0].message
        assert info.value.source == str(path)
        assert not marker.exists()

    @pytest.mark.parametrize(
        ("name", "text", "start", "line"),
        [
            ("p.toml", "a = 1\nb = = 2\nc = 3\n", "invalid TOML: ", "line 2"),
            ("p.json", '{"a": 1,\n\n "b": }\n', "invalid JSON: ", "line 3"),
            ("p.yaml", "a: [1\nb: 2\n", "invalid YAML: ", "line 2"),
        ],
        ids=["toml", "json", "yaml"],
    )
    def test_syntax_error_gives_the_line(
        self, tmp_path: Path, name: str, text: str, start: str, line: str
    ) -> None:
        """A syntax error is a PolicyError naming the format and the line."""
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        with pytest.raises(PolicyError) as info:
            load_policy(path)
        [problem] = info.value.problems
        assert problem.path == ""
        assert problem.message.startswith(start)
        assert line in problem.message
        assert str(info.value).startswith(f"1 problem in {path}:")

    @pytest.mark.parametrize("name", ["policy.ini", "policy.toml.bak", "policy"])
    def test_unknown_suffix(self, tmp_path: Path, name: str) -> None:
        """A file whose suffix names no known format is refused before it is read (or found)."""
        path = tmp_path / name
        with pytest.raises(PolicyError) as info:
            load_policy(path)
        [problem] = info.value.problems
        assert problem.message.startswith("cannot tell the format from ")
        assert problem.message.endswith("(known: .toml, .json, .yaml, .yml)")

    def test_unknown_format(self) -> None:
        """parse_policy refuses a format it does not know."""
        with pytest.raises(PolicyError, match="unknown policy format 'ini'"):
            parse_policy("", format="ini")  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("name", "text"), [("p.json", "[1, 2]"), ("p.yaml", "- 1\n- 2\n"), ("p.json", '"x"')]
    )
    def test_document_not_a_table(self, tmp_path: Path, name: str, text: str) -> None:
        """A document that is not a table is a PolicyError."""
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        with pytest.raises(PolicyError) as info:
            load_policy(path)
        [problem] = info.value.problems
        assert problem.message.startswith("the document must be a table of rollouts, not ")

    def test_rollouts_are_required_and_reported_with_the_rest(self) -> None:
        """A document without rollouts says so, after its other problems."""
        assert _problems({"environments": ["dev", "dev"]}) == [
            "environments: lists an environment twice",
            "rollouts: is required: a policy with no rollouts says so with an empty table "
            "(rollouts = {}); a file without one is empty, truncated, or not a policy",
        ]

    def test_a_bake_past_366_days_names_its_field(self) -> None:
        """The issue's bake of "99999999999999999999999w" is a problem at its path."""
        stages = [{"name": "a", "percent": 1, "bake": "99999999999999999999999w"}]
        assert _problems(_doc(stages=stages)) == [
            "rollouts.r.stages[0].bake: must be a duration of at most 366 days"
        ]

    def test_mapping_not_a_table(self) -> None:
        """A list given in place of a mapping is a PolicyError."""
        with pytest.raises(PolicyError) as info:
            load_policy([{"rollouts": {}}])  # type: ignore[arg-type]
        assert [str(p) for p in info.value.problems] == [
            "the document must be a table of rollouts, not list"
        ]

    def test_missing_file_is_an_os_error(self, tmp_path: Path) -> None:
        """A file that cannot be read raises OSError."""
        with pytest.raises(FileNotFoundError):
            load_policy(tmp_path / "missing.toml")

    def test_not_utf8(self, tmp_path: Path) -> None:
        """A file that is not UTF-8 is a PolicyError, not a decoding error."""
        path = tmp_path / "policy.toml"
        path.write_bytes(b"[rollouts.caf\xe9]\nstages = []\n")
        with pytest.raises(PolicyError) as info:
            load_policy(path)
        [problem] = info.value.problems
        assert problem.path == ""
        assert "UTF-8" in problem.message

    def test_huge_integer_duration(self, tmp_path: Path) -> None:
        """A bake too large for a float is named, not an OverflowError."""
        path = tmp_path / "policy.json"
        stages = [{"name": "a", "percent": 1, "bake": 10**400}]
        path.write_text(json.dumps({"rollouts": {"r": {"stages": stages}}}), encoding="utf-8")
        with pytest.raises(PolicyError) as info:
            load_policy(path)
        assert [p.path for p in info.value.problems] == ["rollouts.r.stages[0].bake"]

    @pytest.mark.parametrize(
        ("name", "template"),
        [
            ("p.json", '{"rollouts": {"r": {"stages": [{"name": "a", "percent": %s}]}}}'),
            ("p.yaml", "rollouts: {r: {stages: [{name: a, percent: %s}]}}"),
            ("p.toml", '[rollouts.r]\nstages = [{ name = "a", percent = %s }]\n'),
        ],
        ids=["json", "yaml", "toml"],
    )
    def test_integer_too_long_to_read(self, tmp_path: Path, name: str, template: str) -> None:
        """A number with more digits than Python will convert is a PolicyError, not a ValueError."""
        path = tmp_path / name
        path.write_text(template.replace("%s", "1" * 5000), encoding="utf-8")
        with pytest.raises(PolicyError):
            load_policy(path)


class TestPolicyModel:
    def test_references_are_checked_without_load_policy(self) -> None:
        """A Policy built directly still refuses a stage naming an unknown segment."""
        document: dict[str, Any] = {
            "segments": {"staff": {"rules": [{"attribute": "a", "op": "eq", "value": 1}]}},
            "rollouts": {"r": {"stages": [{"name": "a", "percent": 1, "segments": ["staf"]}]}},
        }
        with pytest.raises(ValidationError, match=r"rollouts\.r\.stages\[0\]\.segments\[0\]"):
            Policy.model_validate(document)


class TestNothingElseRaises:
    @given(st.dictionaries(KEYS.filter(lambda k: isinstance(k, str)), JUNK, max_size=5))
    def test_junk(self, document: dict[str, object]) -> None:
        """Any nested junk either loads or raises PolicyError with problems."""
        problems = _problems_or_none(document)
        assert problems is None or (problems and all(p.message for p in problems))

    @given(SHAPED)
    def test_junk_in_the_right_places(self, document: dict[str, object]) -> None:
        """Junk at the fields of a well-shaped document either loads or raises PolicyError."""
        problems = _problems_or_none(document)
        assert problems is None or (problems and all(p.message for p in problems))


class TestCheckEnvironment:
    def test_none_accepted(self, example: Policy) -> None:
        """No environment named is always accepted."""
        example.check_environment(None)

    def test_declared_environment_accepted(self, example: Policy) -> None:
        """A declared environment is accepted."""
        for environment in ("dev", "staging", "prod"):
            example.check_environment(environment)

    def test_unknown_environment_refused_with_hint(self, example: Policy) -> None:
        """An environment outside the declared list is refused, with a hint for a near miss."""
        with pytest.raises(PolicyError) as info:
            example.check_environment("prd")
        assert info.value.problems == (
            PolicyProblem(
                "environment",
                "unknown environment 'prd' (known: dev, staging, prod); did you mean 'prod'?",
            ),
        )

    def test_declared_list_wins_over_rollouts(self) -> None:
        """With a declared list, only its names are known, even if unused by rollouts."""
        policy = load_policy({"environments": ["dev", "qa"], **_doc(environments={"dev": 1})})
        policy.check_environment("qa")
        with pytest.raises(PolicyError, match=r"unknown environment 'prod' \(known: dev, qa\)"):
            policy.check_environment("prod")

    def test_rollout_environments_are_known_without_a_list(self) -> None:
        """Without a declared list, the environments the rollouts name are the known set."""
        rollout_a = _doc(environments={"dev": 100, "staging": "stages"})["rollouts"]["r"]
        rollout_b = _doc(environments={"prod": "stages"})["rollouts"]["r"]
        policy = load_policy({"rollouts": {"a": rollout_a, "b": rollout_b}})
        for environment in ("dev", "staging", "prod"):
            policy.check_environment(environment)
        with pytest.raises(PolicyError) as info:
            policy.check_environment("qa")
        assert [str(p) for p in info.value.problems] == [
            "environment: unknown environment 'qa' (known: dev, prod, staging)"
        ]

    def test_anything_accepted_without_environments(self) -> None:
        """With no environments anywhere, any environment is accepted."""
        policy = load_policy(_doc())
        policy.check_environment("anything")
        Policy().check_environment("else")


def _bucketed(bucketing: object, *percents: object, **rollout: Any) -> dict[str, Any]:
    """A policy with rollout ``r``: this ``bucketing``, stages ``s0``... at these percents."""
    stages = [{"name": f"s{i}", "percent": p} for i, p in enumerate(percents or (1,))]
    return _doc(stages=stages, bucketing=bucketing, **rollout)


BUCKETING_TOML = """\
[rollouts.checkout]
bucketing = { scheme = "unleash", group_id = "gr1" }
stages = [{ name = "quarter", percent = 25 }, { name = "all", percent = 100 }]
environments = { dev = 50 }

[rollouts.search]
stages = [{ name = "tiny", percent = 0.125 }]

[rollouts.search.bucketing]
scheme = "launchdarkly"
flag_key = "search-flag"
salt = "5f8b2c1e"
"""
BUCKETING_JSON = """\
{"rollouts": {
  "checkout": {
    "bucketing": {"scheme": "unleash", "group_id": "gr1"},
    "stages": [{"name": "quarter", "percent": 25}, {"name": "all", "percent": 100}],
    "environments": {"dev": 50}
  },
  "search": {
    "stages": [{"name": "tiny", "percent": 0.125}],
    "bucketing": {"scheme": "launchdarkly", "flag_key": "search-flag", "salt": "5f8b2c1e"}
  }
}}
"""
BUCKETING_YAML = """\
rollouts:
  checkout:
    bucketing: {scheme: unleash, group_id: gr1}
    stages:
      - {name: quarter, percent: 25}
      - {name: all, percent: 100}
    environments: {dev: 50}
  search:
    stages: [{name: tiny, percent: 0.125}]
    bucketing:
      scheme: launchdarkly
      flag_key: search-flag
      salt: "5f8b2c1e"
"""


class TestBucketing:
    """A rollout's ``bucketing``: its schemes' parameters, defaults, steps, and files."""

    @pytest.mark.parametrize(
        ("scheme", "field", "value", "owners"),
        [
            ("stagedroll", "group_id", "g", "unleash"),
            ("stagedroll", "salt", "s", "launchdarkly"),
            ("unleash", "seed", "s", "growthbook and launchdarkly"),
            ("unleash", "flag_key", "f", "flagd and launchdarkly"),
            ("unleash", "hash_version", 2, "growthbook"),
            ("unleash", "salt", "s", "launchdarkly"),
            ("growthbook", "group_id", "g", "unleash"),
            ("growthbook", "flag_key", "f", "flagd and launchdarkly"),
            ("growthbook", "salt", "s", "launchdarkly"),
            ("flagd", "group_id", "g", "unleash"),
            ("flagd", "seed", "s", "growthbook and launchdarkly"),
            ("flagd", "hash_version", 1, "growthbook"),
            ("flagd", "salt", "s", "launchdarkly"),
            ("launchdarkly", "group_id", "g", "unleash"),
            ("launchdarkly", "hash_version", 2, "growthbook"),
        ],
    )
    def test_a_parameter_of_another_scheme_is_named(
        self, scheme: str, field: str, value: object, owners: str
    ) -> None:
        """A parameter belongs to its schemes: elsewhere it is named, with its owners."""
        bucketing = {"scheme": scheme, field: value}
        if scheme == "launchdarkly":
            bucketing["seed"] = 7
        assert _problems(_bucketed(bucketing)) == [
            f"rollouts.r.bucketing.{field}: is a parameter of {owners} bucketing, not {scheme}"
        ]

    def test_every_misplaced_parameter_is_named_at_once(self) -> None:
        """Four parameters Unleash does not take: four problems."""
        bucketing = {"scheme": "unleash", "group_id": "g", "seed": "s", "hash_version": 2,
                     "flag_key": "f", "salt": "s"}  # fmt: skip
        assert sorted(_problems(_bucketed(bucketing))) == [
            "rollouts.r.bucketing.flag_key: is a parameter of flagd and launchdarkly bucketing,"
            " not unleash",
            "rollouts.r.bucketing.hash_version: is a parameter of growthbook bucketing,"
            " not unleash",
            "rollouts.r.bucketing.salt: is a parameter of launchdarkly bucketing, not unleash",
            "rollouts.r.bucketing.seed: is a parameter of growthbook and launchdarkly bucketing,"
            " not unleash",
        ]

    def test_launchdarkly_needs_a_salt_or_a_seed(self) -> None:
        """Without the flag's salt (or a rollout seed) LaunchDarkly's cohort is unknown."""
        assert _problems(_bucketed({"scheme": "launchdarkly", "flag_key": "f"})) == [
            "rollouts.r.bucketing.salt: is required for launchdarkly bucketing: the flag's salt,"
            " from its JSON (or give the rollout's seed)"
        ]
        for enough in ({"salt": "s"}, {"salt": ""}, {"seed": 61}, {"seed": 0}):
            load_policy(_bucketed({"scheme": "launchdarkly", **enough}))

    def test_launchdarkly_seed_is_an_integer_and_growthbook_seed_text(self) -> None:
        """Each vendor's seed has its vendor's type."""
        assert _problems(_bucketed({"scheme": "launchdarkly", "seed": "61"})) == [
            "rollouts.r.bucketing.seed: must be an integer for launchdarkly bucketing (got '61')"
        ]
        assert _problems(_bucketed({"scheme": "growthbook", "seed": 61})) == [
            "rollouts.r.bucketing.seed: must be text for growthbook bucketing (got 61)"
        ]

    @pytest.mark.parametrize("seed", [True, 1.5, ["s"]], ids=["bool", "float", "list"])
    def test_a_seed_of_neither_type_is_one_problem_at_its_path(self, seed: object) -> None:
        """A seed that is neither text nor an integer: one problem, at ``bucketing.seed``."""
        [problem] = _problems(_bucketed({"scheme": "launchdarkly", "seed": seed}))
        assert problem.startswith("rollouts.r.bucketing.seed: must be text (growthbook's seed) or")

    def test_a_flagd_template_holds_the_unit_once(self) -> None:
        """flagd's ``template``: ``{unit}`` once, not with ``flag_key``, flagd's only."""
        template = {"scheme": "flagd", "template": "campaign-7:{unit}"}
        scheme = load_policy(_bucketed(template)).rollouts["r"].scheme("r")
        assert scheme.describe() == "flagd, template 'campaign-7:{unit}'"
        message = "must hold {unit} once, where the unit's key goes"
        for bad in ("campaign-7", "{unit}:{unit}", ""):
            assert _problems(_bucketed({"scheme": "flagd", "template": bad})) == [
                f"rollouts.r.bucketing.template: {message}"
            ]
        assert _problems(_bucketed({**template, "flag_key": "k"})) == [
            "rollouts.r.bucketing.flag_key: is not used with a template: write the flag's key "
            "into the template where the expression has it"
        ]
        assert _problems(_bucketed({"scheme": "unleash", "template": "{unit}"})) == [
            "rollouts.r.bucketing.template: is a parameter of flagd bucketing, not unleash"
        ]

    def test_a_rollout_salt_is_refused_with_another_scheme(self) -> None:
        """``salt`` salts stagedroll's own hash: with another scheme it would do nothing."""
        for scheme in ("unleash", "growthbook", "flagd"):
            assert _problems(_bucketed({"scheme": scheme}, salt="pinned")) == [
                f"rollouts.r.salt: salts stagedroll's own bucketing, not {scheme}'s: give the "
                "scheme's parameters in bucketing"
            ]
        load_policy(_bucketed({"scheme": "stagedroll"}, salt="pinned"))

    @pytest.mark.parametrize(
        ("bucketing", "fine", "coarse", "step"),
        [
            ({"scheme": "unleash"}, 2.5, 3, "1"),
            ({"scheme": "flagd"}, 0.5, 1, "1"),
            ({"scheme": "growthbook"}, 0.05, 0.1, "0.1"),
            ({"scheme": "growthbook", "hash_version": 2}, 12.345, 12.34, "0.01"),
            ({"scheme": "growthbook", "hash_version": 1}, 0.05, 0.1, "0.1"),
            ({"scheme": "launchdarkly", "salt": "s"}, 0.0005, 0.001, "0.001"),
            ({"scheme": "launchdarkly", "seed": 1}, 33.3333, 33.333, "0.001"),
        ],
        ids=[
            "unleash",
            "flagd",
            "growthbook",
            "growthbook-v2",
            "growthbook-v1",
            "launchdarkly",
            "launchdarkly-seed",
        ],
    )
    def test_a_percent_finer_than_the_scheme_is_named(
        self, bucketing: dict[str, Any], fine: float, coarse: float, step: str
    ) -> None:
        """A stage's percent or an environment's, finer than the scheme's step: named, with
        the scheme and its step; the coarser percent loads."""
        scheme = bucketing["scheme"]
        message = f"{fine!r} is finer than {scheme} bucketing can express (steps of {step} %)"
        assert _problems(_bucketed(bucketing, 0, fine, 100)) == [
            f"rollouts.r.stages[1].percent: {message}"
        ]
        environments = {"dev": fine, "qa": coarse, "prod": "stages", "ci": "off"}
        assert _problems(_bucketed(bucketing, coarse, environments=environments)) == [
            f"rollouts.r.environments.dev: {message}"
        ]
        load_policy(_bucketed(bucketing, 0, coarse, 100, environments={"dev": coarse}))

    def test_stagedroll_takes_any_valid_percent(self) -> None:
        """Its own scheme, named or not, takes percents to four decimals as before."""
        for bucketing in (None, {"scheme": "stagedroll"}):
            load_policy(_bucketed(bucketing, 0.0001, 33.3333, environments={"dev": 0.0005}))

    def test_every_problem_of_a_rollout_is_named_at_once(self) -> None:
        """The salt, each stage and each environment, with a bad bucketing field beside."""
        document = _bucketed({"scheme": "growthbook", "hash_version": 1, "sed": "x"}, 0.05, 2.55,
                             salt="x", environments={"prod": 0.25})  # fmt: skip
        step = "is finer than growthbook bucketing can express (steps of 0.1 %)"
        assert sorted(_problems(document)) == sorted([
            "rollouts.r.bucketing.sed: unknown field; did you mean 'seed'?",
            "rollouts.r.salt: salts stagedroll's own bucketing, not growthbook's: give the "
            "scheme's parameters in bucketing",
            f"rollouts.r.stages[0].percent: 0.05 {step}",
            f"rollouts.r.stages[1].percent: 2.55 {step}",
            f"rollouts.r.environments.prod: 0.25 {step}",
        ])  # fmt: skip

    def test_the_paths_of_a_policy_built_in_code(self) -> None:
        """``Policy.model_validate`` names the same paths as ``load_policy``."""
        document = {
            "rollouts": {"new-checkout": _bucketed({"scheme": "unleash"}, 2.5)["rollouts"]["r"]}
        }
        with pytest.raises(
            ValidationError, match=r"rollouts\.new-checkout\n.*stages\[0\]\.percent"
        ):
            Policy.model_validate(document)
        assert _problems(document) == [
            "rollouts.new-checkout.stages[0].percent: 2.5 is finer than unleash bucketing can "
            "express (steps of 1 %)"
        ]

    @pytest.mark.parametrize(
        ("bucketing", "problem"),
        [
            (
                {"scheme": "unleesh"},
                "bucketing.scheme: must be 'stagedroll', 'unleash', "
                "'growthbook', 'flagd' or 'launchdarkly' (got 'unleesh')",
            ),
            ({"group_id": "g"}, "bucketing.scheme: is required"),
            (
                {"scheme": "unleash", "group": "g"},
                "bucketing.group: unknown field; did you mean 'group_id'?",
            ),
            (
                {"scheme": "launchdarkly", "sallt": "s", "seed": 1},
                "bucketing.sallt: unknown field; did you mean 'salt'?",
            ),
            ({"scheme": "unleash", "zzzz": 1}, "bucketing.zzzz: unknown field"),
            (
                {"scheme": "growthbook", "hash_version": 3},
                "bucketing.hash_version: must be 1 or 2 (got 3)",
            ),
            (
                {"scheme": "unleash", "group_id": 5},
                "bucketing.group_id: must be a valid string (got 5)",
            ),
            ("unleash", "bucketing: must be a table (got 'unleash')"),
        ],
        ids=[
            "scheme",
            "no-scheme",
            "hint",
            "hint-salt",
            "unknown",
            "hash-version",
            "type",
            "not-a-table",
        ],
    )
    def test_field_problems(self, bucketing: object, problem: str) -> None:
        """A bad scheme, a missing one, an unknown field (with a hint), a bad value."""
        assert _problems(_bucketed(bucketing)) == [f"rollouts.r.{problem}"]

    @pytest.mark.parametrize("version", [True, 1.0, 2.0], ids=["true", "1.0", "2.0"])
    def test_hash_version_is_strict(self, version: object) -> None:
        """As every integer of a policy: no ``true`` for 1, no float."""
        assert _problems(_bucketed({"scheme": "growthbook", "hash_version": version})) == [
            f"rollouts.r.bucketing.hash_version: must be 1 or 2 (got {version!r})"
        ]

    def test_a_parameter_past_1024_characters_is_named(self) -> None:
        """A group id, seed, salt or flag key is at most 1,024 characters."""
        load_policy(_bucketed({"scheme": "unleash", "group_id": "g" * 1024}))
        [problem] = _problems(_bucketed({"scheme": "unleash", "group_id": "g" * 1025}))
        assert problem == "rollouts.r.bucketing.group_id: must be at most 1024 characters"

    @pytest.mark.parametrize(
        ("bucketing", "described"),
        [
            (None, "stagedroll, salt 'checkout'"),
            ({"scheme": "stagedroll"}, "stagedroll, salt 'checkout'"),
            ({"scheme": "unleash"}, "unleash, group_id 'checkout'"),
            ({"scheme": "growthbook"}, "growthbook, seed 'checkout', hash_version 1"),
            (
                {"scheme": "growthbook", "hash_version": 1},
                "growthbook, seed 'checkout', hash_version 1",
            ),
            ({"scheme": "flagd"}, "flagd, flag_key 'checkout'"),
            (
                {"scheme": "launchdarkly", "salt": "s"},
                "launchdarkly, flag_key 'checkout', salt 's'",
            ),
            ({"scheme": "launchdarkly", "seed": 61}, "launchdarkly, seed 61"),
        ],
    )
    def test_defaults_are_the_rollouts_name(
        self, bucketing: dict[str, Any] | None, described: str
    ) -> None:
        """A group id, seed or flag key left out is the rollout's name; GrowthBook's hash
        version is 1; the scheme places units as the one with the name given explicitly."""
        policy = load_policy({"rollouts": {"checkout": _bucketed(bucketing)["rollouts"]["r"]}})
        rollout = policy.rollouts["checkout"]
        scheme = rollout.scheme("checkout")
        assert scheme.describe() == described
        explicit: dict[str, Any] = dict(bucketing or {"scheme": "stagedroll"})
        field = {"unleash": "group_id", "growthbook": "seed", "flagd": "flag_key",
                 "launchdarkly": "flag_key"}.get(explicit["scheme"])  # fmt: skip
        if field is None:
            fields: dict[str, Any] = {"salt": "checkout"}
        else:
            fields = {"bucketing": {**explicit, field: "checkout"}}
        if explicit["scheme"] == "growthbook":
            fields["bucketing"].setdefault("hash_version", 1)
        named = RolloutPolicy.model_validate(
            {"stages": [{"name": "a", "percent": 1}], **fields}
        ).scheme("another-name")
        units = [f"user-{i}" for i in range(200)]
        positions = [scheme.position(u) for u in units]
        assert positions == [named.position(u) for u in units]
        elsewhere = [rollout.scheme("another-name").position(u) for u in units]
        assert (positions == elsewhere) is (explicit.get("seed") == 61)  # a seed ignores names

    def test_the_scheme_belongs_to_the_rollout_named(self) -> None:
        """``scheme(name)`` fills the defaults from the name it is given."""
        rollout = RolloutPolicy.model_validate(
            {"stages": [{"name": "a", "percent": 1}], "bucketing": {"scheme": "flagd"}}
        )
        assert rollout.scheme("one").describe() == "flagd, flag_key 'one'"
        assert rollout.scheme("two").describe() == "flagd, flag_key 'two'"
        assert isinstance(rollout.scheme("one"), BucketingScheme)
        assert rollout.bucketing == Bucketing(scheme="flagd")

    def test_the_bucketing_model_checks_its_parameters(self) -> None:
        """``Bucketing`` built in code refuses a parameter of another scheme."""
        with pytest.raises(ValidationError, match="is a parameter of unleash bucketing"):
            Bucketing(scheme="flagd", group_id="g")
        with pytest.raises(ValidationError, match="is required for launchdarkly"):
            Bucketing(scheme="launchdarkly")

    def test_toml_json_and_yaml_files(self, tmp_path: Path) -> None:
        """An inline table, a table, a JSON object and a YAML mapping give one policy."""
        paths = []
        for suffix, text in (("toml", BUCKETING_TOML), ("json", BUCKETING_JSON),
                             ("yaml", BUCKETING_YAML)):  # fmt: skip
            path = tmp_path / f"rollouts.{suffix}"
            path.write_text(text, encoding="utf-8")
            paths.append(path)
        toml, json_, yaml = (load_policy(path) for path in paths)
        assert toml == json_ == yaml
        assert toml.rollouts["checkout"].scheme("checkout").describe() == "unleash, group_id 'gr1'"
        assert toml.rollouts["search"].scheme("search").describe() == (
            "launchdarkly, flag_key 'search-flag', salt '5f8b2c1e'"
        )
        assert toml.rollouts["checkout"].bucketing == Bucketing(scheme="unleash", group_id="gr1")

    @pytest.mark.parametrize("suffix", ["toml", "json", "yaml"])
    def test_a_file_names_the_path_of_a_fine_percent(self, tmp_path: Path, suffix: str) -> None:
        """In a file, the percent Unleash cannot express is named at its path."""
        text = {"toml": BUCKETING_TOML, "json": BUCKETING_JSON, "yaml": BUCKETING_YAML}[suffix]
        path = tmp_path / f"rollouts.{suffix}"
        path.write_text(re.sub(r"(percent\W+)25\b", r"\g<1>25.5", text), encoding="utf-8")
        with pytest.raises(PolicyError) as info:
            load_policy(path)
        [problem] = info.value.problems
        assert problem.path == "rollouts.checkout.stages[0].percent"
        assert problem.message == (
            "25.5 is finer than unleash bucketing can express (steps of 1 %)"
        )

    def test_the_schema_has_bucketing(self) -> None:
        """The JSON Schema of a policy file describes ``bucketing`` and its schemes."""
        schema = Policy.model_json_schema()
        rollout = schema["$defs"]["RolloutPolicy"]["properties"]
        assert {"$ref": "#/$defs/Bucketing"} in rollout["bucketing"]["anyOf"]
        bucketing = schema["$defs"]["Bucketing"]
        assert bucketing["required"] == ["scheme"]
        assert bucketing["properties"]["scheme"]["enum"] == [
            "stagedroll", "unleash", "growthbook", "flagd", "launchdarkly"
        ]  # fmt: skip
        assert set(bucketing["properties"]) == {
            "scheme", "group_id", "seed", "hash_version", "flag_key", "salt", "template"
        }  # fmt: skip
        assert bucketing["additionalProperties"] is False

    @given(
        st.fixed_dictionaries(
            {"scheme": st.one_of(st.sampled_from(["unleash", "growthbook", "flagd",
                                                  "launchdarkly", "stagedroll"]), JUNK)},
            optional=dict.fromkeys(
                ("group_id", "seed", "hash_version", "flag_key", "salt", "extra"), JUNK
            ),
        ),
        st.lists(st.one_of(JUNK, st.floats(0, 100)), min_size=1, max_size=3),
        st.dictionaries(NAMES, JUNK, max_size=2),
        JUNK,
    )  # fmt: skip
    def test_junk_loads_or_is_a_policy_error(
        self, bucketing: dict[str, object], percents: list[object],
        environments: dict[str, object], salt: object,
    ) -> None:  # fmt: skip
        """Junk in ``bucketing``, the percents, environments and salt: a policy or a
        PolicyError, whose every problem has a message."""
        document = _bucketed(bucketing, *percents, environments=environments, salt=salt)
        problems = _problems_or_none(document)
        assert problems is None or (problems and all(p.message for p in problems))
