"""Tests for ``stagedroll.testing.strategies``: what they draw is what the library accepts."""

from __future__ import annotations

import copy
import importlib
import json
import sys
import uuid
from typing import Any

import pytest
from hypothesis import Phase, example, find, given, settings
from hypothesis import strategies as st

import stagedroll
from stagedroll import Decision, PolicyError, Reason, Rollouts, load_policy
from stagedroll._bucketing import percent_error, unit_key
from stagedroll.testing import strategies
from stagedroll.testing.strategies import percents, policies, stages, unit_ids

HALF = {"rollouts": {"half": {"stages": [{"name": "half", "percent": 50}]}}}
SEARCH = settings(phases=[Phase.generate], derandomize=True, database=None, max_examples=1000)
"""For find(): the first example that fits, not shrunk (shrinking whole policies is slow)."""


def one_rollout(*stage_list: dict[str, Any], **document: Any) -> dict[str, Any]:
    """A policy document with one rollout, ``r``, of the given stages."""
    return {**document, "rollouts": {"r": {"stages": list(stage_list)}}}


def known_environments(policy: stagedroll.Policy) -> list[str]:
    """The environments a process may name for ``policy`` (empty: any, or none)."""
    if policy.environments is not None:
        return list(policy.environments)
    return sorted({env for rollout in policy.rollouts.values() for env in rollout.environments})


class TestUnitIds:
    @given(unit=unit_ids())
    @example(unit="")
    @example(unit="\ud800")  # a lone surrogate
    @example(unit="üñí©ødé")
    @example(unit=-(2**200))
    @example(unit=uuid.UUID(int=0))
    def test_every_unit_is_decided(self, unit: str | int | uuid.UUID) -> None:
        """Every drawn unit is bucketed, as the bucketing contract says, without raising."""
        rollouts = Rollouts(HALF)
        decision = rollouts.decide("half", unit)
        assert decision.reason in (Reason.IN_COHORT, Reason.OUT_OF_COHORT)
        assert decision.bucket == stagedroll.bucket("half", unit)
        assert isinstance(unit_key(unit), str)

    @pytest.mark.parametrize("kind", [str, int, uuid.UUID])
    def test_draws_each_type(self, kind: type) -> None:
        """Strings, integers and UUIDs are all drawn."""
        assert isinstance(
            find(unit_ids(), lambda unit: isinstance(unit, kind), settings=SEARCH), kind
        )

    def test_draws_non_ascii_text(self) -> None:
        """Strings beyond ASCII are drawn."""
        found = find(
            unit_ids(), lambda unit: isinstance(unit, str) and not unit.isascii(), settings=SEARCH
        )
        assert isinstance(found, str)
        assert not found.isascii()

    def test_draws_no_bools(self) -> None:
        """No bool is drawn: the library refuses it as a unit."""

        @given(unit=unit_ids())
        def check(unit: object) -> None:
            assert not isinstance(unit, bool)

        check()


class TestPercents:
    @given(percent=percents())
    def test_loads_as_a_stage_percent(self, percent: float) -> None:
        """Every drawn percent is accepted as a stage's percent, and kept as is."""
        policy = load_policy(one_rollout({"name": "s", "percent": percent}))
        assert policy.rollouts["r"].stages[0].percent == percent
        assert percent_error(percent) is None
        assert 0 <= stagedroll.threshold(percent) <= 2**32

    @pytest.mark.parametrize("edge", [0, 0.0001, 99.9999, 100])
    def test_draws_the_edges(self, edge: float) -> None:
        """The smallest steps at both ends of the range are drawn."""
        assert find(percents(), lambda percent: percent == edge, settings=SEARCH) == edge

    def test_draws_fractions(self) -> None:
        """Percents with four decimals are drawn."""
        found = find(percents(), lambda percent: round(percent, 3) != percent, settings=SEARCH)
        assert percent_error(found) is None


class TestStages:
    @given(drawn=stages())
    def test_accepted(self, drawn: list[dict[str, Any]]) -> None:
        """Every drawn list of stages is accepted by a rollout."""
        policy = load_policy(one_rollout(*drawn))
        loaded = policy.rollouts["r"].stages
        assert [stage.name for stage in loaded] == [stage["name"] for stage in drawn]
        assert 1 <= len(loaded) <= 6

    @given(drawn=stages(min_size=3, max_size=4))
    def test_sizes(self, drawn: list[dict[str, Any]]) -> None:
        """The number of stages is within the bounds asked for."""
        assert 3 <= len(drawn) <= 4

    @given(drawn=stages(segments=["staff", "beta"]))
    def test_segments(self, drawn: list[dict[str, Any]]) -> None:
        """Stages refer only to the segments given, and a policy defining them accepts them."""
        rule = {"attribute": "plan", "op": "eq", "value": "beta"}
        segments = {"staff": {"rules": [rule]}, "beta": {"rules": [rule]}}
        load_policy(one_rollout(*drawn, segments=segments))
        for stage in drawn:
            assert set(stage.get("segments", [])) <= {"staff", "beta"}

    def test_draws_every_optional_field(self) -> None:
        """Some drawn stages bake, wait for units and include segments."""
        fields = {"bake", "min_units", "segments"}
        found = find(
            stages(segments=["beta"]),
            lambda drawn: fields <= {field for stage in drawn for field in stage},
            settings=SEARCH,
        )
        assert len(found) >= 1

    @pytest.mark.parametrize(("min_size", "max_size"), [(0, 3), (-1, 3), (4, 3)])
    def test_bad_sizes(self, min_size: int, max_size: int) -> None:
        """A rollout has at least one stage, and max_size must not be below min_size."""
        with pytest.raises(ValueError, match="min_size"):
            stages(min_size, max_size)


class TestValidPolicies:
    @settings(max_examples=50)
    @given(doc=policies(), units=st.lists(unit_ids(), max_size=5), data=st.data())
    def test_loads_and_decides(
        self, doc: dict[str, Any], units: list[Any], data: st.DataObject
    ) -> None:
        """Every drawn policy loads, binds in each known environment, and decides every unit."""
        policy = load_policy(doc)
        # "" names no environment (None would read $STAGEDROLL_ENV).
        environments = known_environments(policy)
        environment = data.draw(st.sampled_from(["", *environments]), label="environment")
        rollouts = Rollouts(doc, environment=environment)
        try:
            for name, rollout in policy.rollouts.items():
                for unit in units:
                    attributes = {} if rollout.bucket_by is None else {rollout.bucket_by: unit}
                    decision = rollouts.decide(name, unit, attributes)
                    assert isinstance(decision, Decision)
                    assert decision.rollout == name
                    assert rollouts.enabled(name, unit, attributes) is decision.enabled
        finally:
            rollouts.close()

    @settings(max_examples=50)
    @given(doc=policies())
    def test_json_round_trip(self, doc: dict[str, Any]) -> None:
        """A drawn policy survives being written out as JSON."""
        assert load_policy(json.loads(json.dumps(doc))) == load_policy(doc)

    @given(doc=policies(max_rollouts=1))
    def test_max_rollouts(self, doc: dict[str, Any]) -> None:
        """The number of rollouts is within the bound asked for."""
        assert len(doc["rollouts"]) == 1

    @pytest.mark.parametrize(
        "feature",
        [
            pytest.param(lambda doc: "environments" in doc, id="declared environments"),
            pytest.param(
                lambda doc: any(
                    stage.get("segments")
                    for rollout in doc["rollouts"].values()
                    for stage in rollout["stages"]
                ),
                id="stage segments",
            ),
            pytest.param(
                lambda doc: any(r.get("advance") == "auto" for r in doc["rollouts"].values()),
                id="auto advance",
            ),
            pytest.param(
                lambda doc: any(
                    r.get("targeting", {}).get("allow") and r["targeting"].get("deny")
                    for r in doc["rollouts"].values()
                ),
                id="allow and deny",
            ),
            pytest.param(lambda doc: any("salt" in r for r in doc["rollouts"].values()), id="salt"),
            pytest.param(
                lambda doc: any(
                    "latency_slo_ms" in r.get("health", {}) for r in doc["rollouts"].values()
                ),
                id="latency test",
            ),
        ],
    )
    def test_draws_each_feature(self, feature: Any) -> None:
        """Each feature of a policy occurs in some drawn policy."""
        assert feature(find(policies(), feature, settings=SEARCH))

    def test_bad_max_rollouts(self) -> None:
        """A policy drawn for testing has at least one rollout."""
        with pytest.raises(ValueError, match="max_rollouts"):
            policies(max_rollouts=0)


class TestInvalidPolicies:
    @given(pair=policies(valid=False))
    def test_invalid_in_exactly_the_expected_place(self, pair: tuple[dict[str, Any], str]) -> None:
        """Every drawn broken policy raises PolicyError with its problems at the expected path."""
        doc, path = pair
        with pytest.raises(PolicyError) as info:
            load_policy(doc)
        assert {problem.path for problem in info.value.problems} == {path}

    @pytest.mark.parametrize(
        ("applies", "mutate"),
        strategies._MUTATIONS,
        ids=[mutate.__name__.strip("_") for _, mutate in strategies._MUTATIONS],
    )
    @settings(max_examples=30)
    @given(data=st.data())
    def test_each_kind_of_problem(self, applies: Any, mutate: Any, data: st.DataObject) -> None:
        """Each kind of problem, drawn on its own, is reported at the path it names."""
        doc = copy.deepcopy(data.draw(policies().filter(applies), label="valid policy"))
        path = mutate(data.draw, doc)
        with pytest.raises(PolicyError) as info:
            load_policy(doc)
        assert {problem.path for problem in info.value.problems} == {path}


class TestWithoutHypothesis:
    def test_import_error_names_the_install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without hypothesis, importing the module says what to install."""
        monkeypatch.delitem(sys.modules, "stagedroll.testing.strategies")
        monkeypatch.setitem(sys.modules, "hypothesis", None)
        with pytest.raises(ImportError, match=r"pip install 'stagedroll\[testing\]'"):
            importlib.import_module("stagedroll.testing.strategies")


class TestBounds:
    def test_the_strategies_bounds_are_the_librarys(self) -> None:
        """The toolkit keeps its own copy of the policy's limits (it imports public names
        only): they are the library's."""
        from stagedroll._bucketing import MAX_PERCENT_DECIMALS
        from stagedroll._policy import UNIT_CAP
        from stagedroll.testing import strategies

        assert strategies._MAX_PERCENT_DECIMALS == MAX_PERCENT_DECIMALS
        assert strategies._UNIT_CAP == UNIT_CAP
