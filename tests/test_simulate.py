"""Tests for ``stagedroll.testing.simulate``: cohorts agree with ``decide``, stage by stage."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mmh3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagedroll import Policy, PolicyError, RolloutPolicy, Rollouts, Stage, load_policy
from stagedroll._bucketing import unit_key
from stagedroll.testing import RolloutSimulation, Simulation, StageCohort, simulate

ENVIRONMENTS = [None, "staging", "prod", "dev", "qa"]
POLICY: dict[str, Any] = {
    "environments": ["dev", "qa", "staging", "prod"],
    "segments": {
        "staff": {"rules": [{"attribute": "email", "op": "suffix", "value": "@corp.test"}]},
        "beta": {"rules": [{"attribute": "plan", "op": "eq", "value": "beta"}]},
    },
    "rollouts": {
        "checkout": {
            "stages": [
                {"name": "staff", "percent": 0, "segments": ["staff"]},
                {"name": "canary", "percent": 1},
                {"name": "beta", "percent": 10, "segments": ["beta"]},
                {"name": "half", "percent": 50},
                {"name": "all", "percent": 100},
            ],
            "environments": {"dev": 100, "qa": 30, "staging": "stages", "prod": "stages"},
            "targeting": {
                "allow": ["user-7", 43, "ユーザー-5"],
                "deny": ["user-3", "user-8", "00000000-0000-0000-0000-00000000000b"],
            },
        },
        "search": {
            "stages": [{"name": "quarter", "percent": 25}, {"name": "most", "percent": 75.5}],
            "environments": {"qa": "off", "staging": "stages", "prod": 12.5},
        },
        "orgs": {
            "bucket_by": "org",
            "stages": [
                {"name": "beta-orgs", "percent": 5, "segments": ["beta"]},
                {"name": "half", "percent": 50},
                {"name": "all", "percent": 100},
            ],
            "targeting": {"allow": ["org-1"], "deny": ["org-2", "7"]},
        },
        "salted": {
            "salt": "sälz-🧂",
            "stages": [{"name": "tenth", "percent": 10}, {"name": "third", "percent": 33.3333}],
        },
    },
}


def mixed_units(n: int) -> list[str | int | uuid.UUID]:
    """``n`` distinct units: ASCII and non-ASCII text, lone surrogates, ints and UUIDs."""
    units: list[str | int | uuid.UUID] = []
    for i in range(n):
        kind = i % 6
        if kind == 0:
            units.append(f"user-{i}")
        elif kind == 1:
            units.append(i)
        elif kind == 2:
            units.append(uuid.UUID(int=i))
        elif kind == 3:
            units.append(f"ユーザー-{i}")
        elif kind == 4:
            units.append(f"café-\ud800-{i}")  # a lone surrogate: hashed as surrogatepass UTF-8
        else:
            units.append(f"user-{i}")
    # The units that the targeting lists name, so that every list is exercised.
    units += ["user-3", "user-7", "user-8", "ユーザー-5", uuid.UUID(int=11)]
    return units


def attributes_of(unit: object) -> Mapping[str, object] | None:
    """Attributes that depend on the unit alone: some staff, some beta, orgs of every kind."""
    spread = mmh3.hash(unit_key(unit).encode("utf-8", "surrogatepass"), 7, False)
    if spread % 13 == 0:
        return None
    org: object = f"org-{spread % 40}"
    if spread % 11 == 0:
        org = None  # no org: no unit for a bucket_by rollout
    elif spread % 17 == 0:
        org = 2.5  # an org of the wrong type: no unit either
    elif spread % 19 == 0:
        org = spread % 9  # an int org: bucketed on its digits ("7" is denied)
    return {
        "email": "ada@corp.test" if spread % 10 == 0 else "ada@example.com",
        "plan": "beta" if spread % 7 == 0 else "free",
        "org": org,
    }


def decided(
    rollouts: Rollouts,
    name: str,
    units: Sequence[object],
    attributes: Any = None,
) -> list[object]:
    """The units that ``decide`` puts on the new path of ``name`` now."""
    return [
        u
        for u in units
        if rollouts.decide(name, u, attributes(u) if attributes is not None else None).enabled
    ]


def assert_agrees(
    simulation: Simulation,
    policy: Any,
    units: Sequence[object],
    *,
    environment: str | None,
    attributes: Any = None,
) -> None:
    """Every cohort of ``simulation`` is what ``decide`` answers, advancing stage by stage."""
    with Rollouts(policy, environment=environment) as rollouts:
        assert list(simulation) == list(rollouts)
        for name in rollouts:
            result = simulation[name]
            if result.mode != "stages":  # the environment settles it: one cohort, any stage
                [cohort] = result.stages
                assert cohort.name == environment
                assert result.members(0) == decided(rollouts, name, units, attributes)
                continue
            for index, cohort in enumerate(result.stages):
                if index:
                    rollouts.advance(name, reason="simulate test", actor="test")
                assert rollouts.decide(name, "anyone").stage == cohort.name
                expected = decided(rollouts, name, units, attributes)
                assert result.members(index) == expected, (name, cohort.name)
                assert result.members(cohort.name) == expected
                assert cohort.count == len(expected)


@pytest.fixture(name="units")
def _units() -> list[str | int | uuid.UUID]:
    return mixed_units(3000)


class TestAgreementWithDecide:
    @pytest.mark.parametrize("environment", ENVIRONMENTS)
    def test_every_stage_with_attributes(
        self, units: list[str | int | uuid.UUID], environment: str | None
    ) -> None:
        """With attributes, each stage's cohort is the units decide enables at that stage."""
        simulation = simulate(POLICY, units, environment=environment, attributes=attributes_of)
        assert_agrees(simulation, POLICY, units, environment=environment, attributes=attributes_of)

    @pytest.mark.parametrize("environment", ENVIRONMENTS)
    def test_every_stage_without_attributes(
        self, units: list[str | int | uuid.UUID], environment: str | None
    ) -> None:
        """Without attributes no segment matches and a bucket_by rollout takes nobody."""
        simulation = simulate(POLICY, units, environment=environment)
        assert_agrees(simulation, POLICY, units, environment=environment)
        if environment != "qa":
            assert all(cohort.count == 0 for cohort in simulation["orgs"].stages)

    def test_targeted_cohorts_are_exercised(self, units: list[str | int | uuid.UUID]) -> None:
        """The agreement above covers every step of the order: the fixture is not vacuous."""
        simulation = simulate(POLICY, units, attributes=attributes_of)
        checkout, orgs = simulation["checkout"], simulation["orgs"]
        staff = [u for u in units if (attributes_of(u) or {}).get("email") == "ada@corp.test"]
        allowed = {"user-7", 43, "ユーザー-5"}
        denied = {"user-3", "user-8", uuid.UUID(int=11)}
        assert len(staff) > 100
        assert set(checkout.members("staff")) == (set(staff) | allowed) - denied
        assert checkout.contains("user-7", "staff")  # allowed
        assert checkout.contains(43, "staff")  # allowed as "43"
        assert not checkout.contains("user-3", "all")  # denied, even at 100 %
        assert not checkout.contains(uuid.UUID(int=11), "all")  # denied by its text
        assert 0 < orgs.stages[0].count < orgs.stages[1].count < orgs.stages[2].count < len(units)

    def test_plain_policy_fast_path(self, units: list[str | int | uuid.UUID]) -> None:
        """A rollout that only the bucket decides agrees too, non-ASCII units included."""
        policy = {
            "rollouts": {
                "plain": {
                    "stages": [
                        {"name": "one", "percent": 1},
                        {"name": "five", "percent": 5},
                        {"name": "quarter", "percent": 25},
                        {"name": "all", "percent": 100},
                    ]
                }
            }
        }
        assert_agrees(simulate(policy, units), policy, units, environment=None)

    def test_bucket_contract(self) -> None:
        """Membership follows hash(salt:unit) < threshold(percent), computed independently."""
        units = [f"user-{i}" for i in range(5000)]
        simulation = simulate(
            {"rollouts": {"c": {"stages": [{"name": "s", "percent": 20}]}}}, units
        )
        limit = 20 * 2**32 // 100
        assert simulation["c"].members("s") == [
            u for u in units if mmh3.hash(f"c:{u}", 0, False) < limit
        ]

    @pytest.mark.parametrize("count", [8, 9, 64, 65])
    def test_many_stages(self, count: int) -> None:
        """Rollouts with more stages than a byte holds agree with decide too."""
        stages = [
            {"name": f"s{i}", "percent": round((i + 1) * 100 / count, 4)} for i in range(count)
        ]
        stages[0]["segments"] = ["beta"]
        policy = {
            "segments": POLICY["segments"],
            "rollouts": {"many": {"stages": stages, "targeting": {"deny": ["user-0"]}}},
        }
        units = mixed_units(300)
        simulation = simulate(policy, units, attributes=attributes_of)
        assert simulation["many"].nested
        assert simulation["many"].stages[-1].count == len(units) - 1
        assert_agrees(simulation, policy, units, environment=None, attributes=attributes_of)

    def test_rollouts_environment_is_used(self, units: list[str | int | uuid.UUID]) -> None:
        """A Rollouts brings its environment; an explicit environment takes precedence."""
        with Rollouts(POLICY, environment="dev") as rollouts:
            from_rollouts = simulate(rollouts, units)
            overridden = simulate(rollouts, units, environment="staging")
        assert from_rollouts.environment == "dev"
        assert from_rollouts["checkout"].mode == "fixed"
        assert [c.name for c in from_rollouts["checkout"].stages] == ["dev"]
        assert overridden.environment == "staging"
        assert overridden["checkout"].mode == "stages"

    def test_state_of_rollouts_is_ignored(self, units: list[str | int | uuid.UUID]) -> None:
        """A killed rollout is still simulated as running at each of its stages."""
        with Rollouts(POLICY) as rollouts:
            rollouts.kill("search", reason="test", actor="test")
            simulation = simulate(rollouts, units)
        assert simulation["search"].stages[0].count > 0


class TestEnvironments:
    def test_off_is_one_empty_cohort(self, units: list[str | int | uuid.UUID]) -> None:
        """An environment that turns the rollout off gives one empty cohort named after it."""
        search = simulate(POLICY, units, environment="qa")["search"]
        assert search.mode == "off"
        assert search.stages == (StageCohort("qa", 0.0, 0, 0.0, 0.0),)
        assert search.members("qa") == []
        assert search.nested

    def test_unlisted_environment_is_off(self, units: list[str | int | uuid.UUID]) -> None:
        """An environment that a rollout's table leaves out turns that rollout off."""
        assert simulate(POLICY, units, environment="dev")["search"].mode == "off"

    def test_fixed_percent(self, units: list[str | int | uuid.UUID]) -> None:
        """An environment with a fixed percent gives one cohort with that percent."""
        search = simulate(POLICY, units, environment="prod")["search"]
        [cohort] = search.stages
        assert (search.mode, cohort.name, cohort.percent, cohort.expected) == (
            "fixed",
            "prod",
            12.5,
            0.125,
        )

    def test_unknown_environment(self, units: list[str | int | uuid.UUID]) -> None:
        """An environment the policy does not know is a PolicyError, as for Rollouts."""
        with pytest.raises(PolicyError, match="unknown environment 'prd'"):
            simulate(POLICY, units, environment="prd")

    def test_empty_environment_names_none(self, units: list[str | int | uuid.UUID]) -> None:
        """An empty environment name means no environment, as for Rollouts."""
        simulation = simulate(POLICY, units, environment="")
        assert simulation.environment is None
        assert simulation["checkout"].mode == "stages"


def nested_percents() -> st.SearchStrategy[list[float]]:
    """One to six increasing percents with at most four decimals."""
    steps = st.lists(st.integers(0, 1_000_000), min_size=1, max_size=6, unique=True)
    return steps.map(lambda s: [step / 10_000 for step in sorted(s)])


class TestProperties:
    @settings(max_examples=40)
    @given(percents=nested_percents(), seed=st.integers(0, 2**32), salt=st.text(min_size=1))
    def test_nested_and_close_to_percent(self, percents: list[float], seed: int, salt: str) -> None:
        """Cohorts are nested, and each count within 5 standard deviations of its expectation."""
        n = 20_000
        stages = [{"name": f"s{i}", "percent": p} for i, p in enumerate(percents)]
        policy = {"rollouts": {"r": {"salt": salt, "stages": stages}}}
        result = simulate(policy, (f"unit-{seed}-{i}" for i in range(n)))["r"]
        assert result.nested
        result.check()
        previous: set[object] = set()
        for cohort in result.stages:
            p = cohort.expected
            # Five standard deviations of the binomial count, and at least five units: the
            # normal approximation fails where fewer than one unit is expected.
            assert abs(cohort.count - n * p) <= 5 * max(math.sqrt(n * p * (1 - p)), 1.0)
            assert abs(cohort.fraction - cohort.count / n) < 1e-12
            if p in (0.0, 1.0):
                assert cohort.count == n * p
            members = set(result.members(cohort.name))
            assert previous <= members
            previous = members

    @settings(max_examples=25)
    @given(percents=nested_percents(), units=st.lists(st.text() | st.integers(), max_size=50))
    def test_counts_match_members(self, percents: list[float], units: list[str | int]) -> None:
        """Each count is the number of members, and each fraction the count over the units."""
        stages = [{"name": f"s{i}", "percent": p} for i, p in enumerate(percents)]
        simulation = simulate({"rollouts": {"r": {"stages": stages}}}, units)
        assert simulation.units == len(units)
        for cohort in simulation["r"].stages:
            members = simulation["r"].members(cohort.name)
            assert cohort.count == len(members)
            assert cohort.fraction == (len(members) / len(units) if units else 0.0)


def shrinking_policy() -> Policy:
    """A policy built without validation, whose second stage has a lower percent."""
    stages = (
        Stage.model_construct(name="wide", percent=50.0),
        Stage.model_construct(name="narrow", percent=10.0),
    )
    rollout = RolloutPolicy.model_construct(stages=stages)
    steady = RolloutPolicy.model_construct(stages=(Stage.model_construct(name="all", percent=100),))
    return Policy.model_construct(rollouts={"shrink": rollout, "steady": steady})


class TestNesting:
    def test_targeted_policy_is_nested(self, units: list[str | int | uuid.UUID]) -> None:
        """Allow, deny and segments never make a later cohort lose a unit."""
        simulation = simulate(POLICY, units, attributes=attributes_of)
        assert all(rollout.nested for rollout in simulation.values())
        simulation.check()
        simulation["checkout"].check()

    def test_shrinking_stages_fail_the_check(self) -> None:
        """A later stage with a lower percent leaves units out, and check() names it."""
        units = [f"user-{i}" for i in range(1000)]
        simulation = simulate(shrinking_policy(), units)
        shrink = simulation["shrink"]
        assert not shrink.nested
        assert simulation["steady"].nested
        left_out = set(shrink.members("wide")) - set(shrink.members("narrow"))
        assert len(left_out) == shrink.stages[0].count - shrink.stages[1].count > 0
        message = (
            f"rollout 'shrink': stage 'narrow' (10 %) does not contain the cohort of stage "
            f"'wide' (50 %): {len(left_out)} of its units are left out (e.g. "
        )
        with pytest.raises(AssertionError) as raised:
            simulation.check()
        assert str(raised.value).startswith(message)
        assert "steady" not in str(raised.value)
        with pytest.raises(AssertionError, match="rollout 'shrink': stage 'narrow'"):
            shrink.check()
        simulation["steady"].check()
        assert simulation.table().splitlines()[3].split()[-1] == "no"

    def test_shrinking_stages_agree_with_decide(self) -> None:
        """Even an unvalidated shrinking policy is simulated as decide answers it."""
        units = [f"user-{i}" for i in range(1000)]
        policy = shrinking_policy()
        assert_agrees(simulate(policy, units), policy, units, environment=None)


class TestMembers:
    @pytest.fixture(name="checkout")
    def _checkout(self, units: list[str | int | uuid.UUID]) -> RolloutSimulation:
        return simulate(POLICY, units, attributes=attributes_of)["checkout"]

    def test_by_name_and_index(self, checkout: RolloutSimulation) -> None:
        """A stage is named, or indexed from either end."""
        assert checkout.members("half") == checkout.members(3) == checkout.members(-2)

    def test_original_objects(self, units: list[str | int | uuid.UUID]) -> None:
        """Members are the units given, in their order and type."""
        members = simulate(POLICY, units)["checkout"].members("all")
        assert {type(u) for u in members} == {str, int, uuid.UUID}
        assert members == [u for u in units if u in set(members)]

    def test_unknown_stage(self, checkout: RolloutSimulation) -> None:
        """An unknown stage name is a KeyError listing the known ones."""
        with pytest.raises(KeyError, match=r"no stage 'hafl' \(known: staff, canary, beta, half"):
            checkout.members("hafl")
        with pytest.raises(KeyError, match="no stage"):
            checkout.contains("user-7", "hafl")

    def test_index_out_of_range(self, checkout: RolloutSimulation) -> None:
        """An index beyond the stages is an IndexError."""
        with pytest.raises(IndexError, match="has 5 stages, no \\[5\\]"):
            checkout.members(5)
        with pytest.raises(IndexError):
            checkout.members(-6)

    def test_stage_of_wrong_type(self, checkout: RolloutSimulation) -> None:
        """A stage that is neither a name nor an index is a TypeError."""
        with pytest.raises(TypeError, match="not bool"):
            checkout.members(True)
        with pytest.raises(TypeError, match="not float"):
            checkout.members(1.0)  # type: ignore[arg-type]

    def test_contains_matches_members(
        self, checkout: RolloutSimulation, units: list[str | int | uuid.UUID]
    ) -> None:
        """contains() says what members() lists, for every unit and stage."""
        for stage in range(len(checkout.stages)):
            members = set(checkout.members(stage))
            assert [u for u in units if checkout.contains(u, stage)] == [
                u for u in units if u in members
            ]

    def test_contains_by_key_text(self, checkout: RolloutSimulation) -> None:
        """A unit is found by its key text: 43 and "43" are one unit."""
        assert checkout.contains("43", "staff") is checkout.contains(43, "staff") is True
        assert checkout.contains("00000000-0000-0000-0000-00000000000b", "all") is False

    def test_contains_unknown_unit(self, checkout: RolloutSimulation) -> None:
        """A unit that was not simulated is a KeyError, not a quiet False."""
        with pytest.raises(KeyError, match="'user-typo' is not one of the simulated units"):
            checkout.contains("user-typo", "all")
        with pytest.raises(TypeError, match="not float"):
            checkout.contains(1.5, "all")  # type: ignore[arg-type]

    def test_duplicate_units(self) -> None:
        """A unit given twice counts twice and is listed twice."""
        simulation = simulate({"rollouts": {"r": {"stages": [{"name": "all", "percent": 100}]}}},
                              ["a", "b", "a"])  # fmt: skip
        assert simulation["r"].members("all") == ["a", "b", "a"]
        assert simulation["r"].stages[0].count == 3
        assert simulation["r"].contains("a", "all")


class TestInputs:
    def test_policy_forms(self, tmp_path: Path) -> None:
        """A mapping, a Policy, a TOML or JSON path and a Rollouts give the same result."""
        policy = {"rollouts": {"r": {"stages": [{"name": "a", "percent": 30}]}}}
        toml = tmp_path / "policy.toml"
        toml.write_text('[[rollouts.r.stages]]\nname = "a"\npercent = 30\n')
        document = tmp_path / "policy.json"
        document.write_text(json.dumps(policy))
        units = [f"user-{i}" for i in range(500)]
        with Rollouts(policy) as rollouts:
            sources: list[Any] = [policy, load_policy(policy), toml, str(document), rollouts]
            results = [simulate(source, units)["r"] for source in sources]
        assert len({tuple(r.members("a")) for r in results}) == 1
        assert len({r.stages for r in results}) == 1

    def test_invalid_policy(self) -> None:
        """An invalid policy is a PolicyError, as for Rollouts."""
        with pytest.raises(PolicyError, match=r"stages\[0\]\.percent"):
            simulate({"rollouts": {"r": {"stages": [{"name": "a", "percent": 101}]}}}, ["u"])

    @pytest.mark.parametrize(
        ("bad", "kind"), [(1.5, "float"), (None, "NoneType"), (b"u", "bytes"), (True, "bool")]
    )
    def test_bad_unit(self, bad: object, kind: str) -> None:
        """A unit that is not str, int or UUID is a TypeError naming its type and position."""
        with pytest.raises(TypeError, match=rf"^units\[2\]: .* not {kind};"):
            simulate(POLICY, ["a", 1, bad])  # type: ignore[list-item]

    def test_any_iterable(self) -> None:
        """Units may come from a generator, read once."""
        simulation = simulate(POLICY, (f"user-{i}" for i in range(100)))
        assert simulation.units == 100
        assert simulation["checkout"].stages[-1].count == 98  # user-3 and user-8 denied

    def test_no_units(self) -> None:
        """No units: every count is 0 and every fraction 0.0."""
        simulation = simulate(POLICY, [], attributes=attributes_of)
        assert simulation.units == 0
        assert all(
            c.count == 0 and c.fraction == 0.0 for r in simulation.values() for c in r.stages
        )

    def test_attributes_called_once_per_unit(self) -> None:
        """attributes is called once per unit whatever the rollouts, and not for plain ones."""
        calls: list[object] = []

        def record(unit: object) -> Mapping[str, object] | None:
            calls.append(unit)
            return attributes_of(unit)

        simulate(POLICY, ["a", "b"], attributes=record)
        assert calls == ["a", "b"]
        calls.clear()
        simulate({"rollouts": {"r": {"stages": [{"name": "a", "percent": 1}]}}}, ["a"],
                 attributes=record)  # fmt: skip
        assert calls == []

    def test_attributes_of_wrong_type(self) -> None:
        """Attributes that are not a mapping are a TypeError naming the unit."""
        with pytest.raises(TypeError, match=r"attributes\('b'\) must return a mapping or None"):
            simulate(POLICY, ["a", "b"], attributes=lambda u: None if u == "a" else ["x"])  # type: ignore[arg-type, return-value]


class TestReport:
    @pytest.fixture(name="simulation")
    def _simulation(self, units: list[str | int | uuid.UUID]) -> Simulation:
        return simulate(POLICY, units, environment="staging", attributes=attributes_of)

    def test_mapping(self, simulation: Simulation) -> None:
        """A Simulation maps rollout names to their simulations, in the policy's order."""
        assert list(simulation) == ["checkout", "search", "orgs", "salted"]
        assert list(simulation.rollouts) == list(simulation)
        assert len(simulation) == 4
        assert "search" in simulation
        assert "nope" not in simulation
        assert simulation.get("nope") is None
        assert simulation["search"] is simulation.rollouts["search"]
        assert simulation["search"].name == "search"
        with pytest.raises(KeyError, match=r"unknown rollout 'nope' \(known: checkout, search"):
            simulation["nope"]

    def test_cohort_fields(self, simulation: Simulation) -> None:
        """Each cohort has its stage's name and percent, its count, fraction and expectation."""
        beta = simulation["checkout"].stages[2]
        assert (beta.name, beta.percent, beta.expected) == ("beta", 10.0, 0.1)
        assert beta.fraction == beta.count / simulation.units == beta.count / 3005

    def test_table(self, simulation: Simulation) -> None:
        """The table has a header line and one row per stage, with nesting."""
        lines = simulation.table().splitlines()
        assert lines[0] == "3005 units, environment 'staging'"
        assert lines[1].split() == ["rollout", "stage", "percent", "count", "fraction", "nested"]
        rows = [line.split() for line in lines[2:]]
        assert len(rows) == 5 + 2 + 3 + 2
        half = simulation["checkout"].stages[3]
        assert ["checkout", "half", "50%", str(half.count), f"{half.fraction:.4%}", "yes"] in rows
        assert rows[0][-1] == "-"
        assert str(simulation) == simulation.table()

    def test_repr(self, simulation: Simulation) -> None:
        """The reprs say how many units, which rollouts and stages, and whether nested."""
        assert repr(simulation) == (
            "<Simulation of 3005 units environment='staging': 'checkout' (5 stages, nested), "
            "'search' (2 stages, nested), 'orgs' (3 stages, nested), "
            "'salted' (2 stages, nested)>"
        )
        search = simulation["search"]
        first, second = search.stages
        assert repr(search) == (
            f"<RolloutSimulation 'search' quarter 25%: {first.count}, "
            f"most 75.5%: {second.count} (nested)>"
        )


BUCKETINGS: dict[str, dict[str, Any]] = {
    "stagedroll": {"scheme": "stagedroll"},
    "unleash": {"scheme": "unleash", "group_id": "gr1"},
    "growthbook": {"scheme": "growthbook"},
    "growthbook-v1": {"scheme": "growthbook", "seed": "s", "hash_version": 1},
    "flagd": {"scheme": "flagd", "flag_key": "f"},
    "launchdarkly": {"scheme": "launchdarkly", "salt": "saltyA"},
    "launchdarkly-seed": {"scheme": "launchdarkly", "seed": 61},
}


def bucketed_policy(bucketing: Mapping[str, Any]) -> dict[str, Any]:
    """Rollouts with ``bucketing``: one only the bucket decides, one targeted (lists and
    segments), one bucketed on an attribute, and one whose percent an environment fixes."""
    stages = [{"name": f"at-{p}", "percent": p} for p in (0, 1, 25, 50, 99, 100)]
    return {
        "environments": ["qa", "prod"],
        "segments": POLICY["segments"],
        "rollouts": {
            "plain": {"stages": stages, "bucketing": bucketing},
            "targeted": {
                "stages": [
                    {"name": "staff", "percent": 0, "segments": ["staff"]},
                    {"name": "beta", "percent": 10, "segments": ["beta"]},
                    {"name": "half", "percent": 50},
                    {"name": "all", "percent": 100},
                ],
                "targeting": {"allow": ["user-7", 43], "deny": ["user-3", "user-8"]},
                "bucketing": bucketing,
            },
            "orgs": {
                "bucket_by": "org",
                "stages": [{"name": "third", "percent": 33}, {"name": "all", "percent": 100}],
                "targeting": {"deny": ["org-2"]},
                "bucketing": bucketing,
            },
            "fixed": {
                "stages": [{"name": "none", "percent": 0}],
                "environments": {"qa": 30, "prod": "stages"},
                "bucketing": bucketing,
            },
        },
    }


class TestBucketingSchemes:
    @pytest.mark.parametrize("scheme", list(BUCKETINGS))
    @pytest.mark.parametrize("environment", [None, "qa"])
    def test_every_scheme_agrees_with_decide(self, scheme: str, environment: str | None) -> None:
        """Each scheme, on the fast path (only the bucket decides) and the targeted one (allow
        and deny lists, segments, ``bucket_by``), stage by stage: ``decide``'s cohorts."""
        policy = bucketed_policy(BUCKETINGS[scheme])
        units = mixed_units(300)
        simulation = simulate(policy, units, environment=environment, attributes=attributes_of)
        assert_agrees(simulation, policy, units, environment=environment, attributes=attributes_of)
        plain = simulation["plain"]
        if environment is None:
            counts = [cohort.count for cohort in plain.stages]
            assert counts[0] == 0 < counts[1] < counts[2] < counts[3] < counts[4] <= len(units)
            assert simulation["targeted"].contains("user-7", "staff")  # allowed
            assert not simulation["targeted"].contains("user-3", "all")  # denied
        else:
            assert 0 < simulation["fixed"].stages[0].count < len(units)

    @pytest.mark.parametrize("scheme", [s for s in BUCKETINGS if s != "stagedroll"])
    def test_each_scheme_has_its_own_cohort(self, scheme: str) -> None:
        """A scheme's cohort is its own: not the one stagedroll's hash would give."""
        units = [f"user-{i}" for i in range(300)]
        ours = simulate(bucketed_policy(BUCKETINGS["stagedroll"]), units)["plain"].members(3)
        theirs = simulate(bucketed_policy(BUCKETINGS[scheme]), units)["plain"]
        placed = load_policy(bucketed_policy(BUCKETINGS[scheme])).rollouts["plain"].scheme("plain")
        assert theirs.members(3) == [u for u in units if placed.position(u) < placed.cut(50)]
        assert theirs.members(3) != ours
