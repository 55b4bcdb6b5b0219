"""The Unleash importer: the policy made of a realistic export decides as Unleash's own SDK did,
unit for unit (``tests/data/imports/unleash/``), reports every part that does not map, refuses a
document of the wrong shape naming where, and survives hostile input."""

from __future__ import annotations

import ast
import copy
import json
import sys
from pathlib import Path
from typing import Any, ClassVar

import mmh3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stagedroll import PolicyError, Rollouts, load_policy
from stagedroll.cli import main
from stagedroll.importers import Imported, from_unleash, import_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # the backport, a dependency on Python 3.10
    import tomli as tomllib

DATA = Path(__file__).parent / "data" / "imports" / "unleash"
EXPORT = DATA / "export.json"
ADMIN = DATA / "admin-export.json"

# The flags of export.json that map whole: their rollouts decide as the SDK, unit for unit.
# checkout-copy's variants are reported, but variants do not change who has the flag.
MAPPED = {
    "checkout-v2", "new-search", "pricing-page", "dark-mode", "beta-banner", "senior-discount",
    "checkout-copy", "legacy-reports", "maintenance-banner",
    "_internal~tools", "promo~banner", "promo-banner", "session-survey",
}  # fmt: skip


def unleash_on(group: str, unit: str, percent: int) -> bool:
    """Unleash's flexibleRollout, as its SDKs compute it."""
    return mmh3.hash(f"{group}:{unit}", 0, signed=False) % 100 + 1 <= percent


def flexible(percent: object, group: object = None, stickiness: object = "default") -> Any:
    parameters = {"rollout": percent, "stickiness": stickiness}
    if group is not None:
        parameters["groupId"] = group
    return {"name": "flexibleRollout", "parameters": parameters, "constraints": []}


def client(*features: object, **extra: Any) -> dict[str, Any]:
    """Client API features holding ``features``."""
    return {"version": 2, "features": list(features), **extra}


def flag(name: str, *strategies: Any, enabled: bool = True, **extra: Any) -> dict[str, Any]:
    return {"name": name, "enabled": enabled, "strategies": list(strategies), **extra}


def keys(imported: Imported) -> dict[str, str]:
    """Each Unleash flag's rollout name (the rollouts' descriptions name their flag)."""
    return {
        ast.literal_eval(r["description"].removeprefix("Unleash flag ")): name
        for name, r in imported.document["rollouts"].items()
    }


def problems(data: object, **kwargs: Any) -> list[tuple[str, str]]:
    with pytest.raises(PolicyError) as caught:
        from_unleash(data, **kwargs)
    return [(p.path, p.message) for p in caught.value.problems]


@pytest.fixture(name="imported", scope="module")
def _imported() -> Imported:
    return import_file("unleash", EXPORT)


@pytest.fixture(name="expected", scope="module")
def _expected() -> dict[str, Any]:
    found: dict[str, Any] = json.loads((DATA / "expected.json").read_text(encoding="utf-8"))
    return found


@pytest.fixture(name="decisions", scope="module")
def _decisions(imported: Imported, expected: dict[str, Any]) -> dict[str, str]:
    """stagedroll's decisions for every flag the SDK decided, in expected.json's form."""
    rollouts, names = Rollouts(imported.policy), keys(imported)
    units = list(zip(expected["units"], expected["attributes"], strict=True))
    return {
        key: "".join("1" if rollouts.enabled(names[key], u, {"userId": u, **a}) else "0"
                     for u, a in units)
        for key in expected["flags"]
    }  # fmt: skip


class TestAgainstTheSdk:
    def test_the_expected_decisions_are_the_sdks(self, expected: dict[str, Any]) -> None:
        """expected.json was written by UnleashClient from the export itself."""
        assert (expected["sdk"], expected["export"]) == ("UnleashClient", "export.json")
        assert expected["version"]
        assert expected["engine"]
        assert len(expected["units"]) == len(expected["attributes"]) > 2000
        flags = {f["name"] for f in json.loads(EXPORT.read_text(encoding="utf-8"))["features"]}
        assert set(expected["flags"]) | set(expected["random"]) == flags

    def test_the_policy_validates(self, imported: Imported) -> None:
        """Every flag of the export is a rollout of a valid policy."""
        assert len(imported.policy.rollouts) == 20
        assert imported.vendor == "unleash"

    def test_mapped_flags_decide_as_the_sdk(
        self, imported: Imported, expected: dict[str, Any], decisions: dict[str, str]
    ) -> None:
        """A flag with nothing unmapped but variants decides as the SDK, for every unit."""
        reported = {u.flag for u in imported.unmapped if not u.part.endswith(".variants")}
        assert set(expected["flags"]) - reported == MAPPED
        for key in MAPPED:
            assert decisions[key] == expected["flags"][key], key

    def test_unmapped_parts_let_no_unit_in_that_unleash_keeps_out(
        self, expected: dict[str, Any], decisions: dict[str, str]
    ) -> None:
        """Where a part does not map, the rollout lets in a subset of the SDK's units."""
        for key, sdk in expected["flags"].items():
            ours = decisions[key]
            assert not any(o == "1" and s == "0" for o, s in zip(ours, sdk, strict=True)), key
        differ = {k for k in expected["flags"] if decisions[k] != expected["flags"][k]}
        assert differ == set(expected["flags"]) - MAPPED  # each unmapped part mattered here

    def test_the_cohorts_are_real(self, expected: dict[str, Any]) -> None:
        """The cases are not trivial: each percentage flag lets in some units, not all."""
        for key in ("checkout-v2", "new-search", "legacy-reports", "session-survey"):
            assert 0.1 < expected["flags"][key].count("1") / len(expected["units"]) < 0.6

    def test_each_rollout_keeps_the_vendors_bucketing(self, imported: Imported) -> None:
        """Stage 0 is the percent the flag runs at; the group is written out, key or groupId."""
        rollouts, names = imported.document["rollouts"], keys(imported)
        found = {
            key: (rollouts[names[key]]["stages"][0]["percent"],
                  rollouts[names[key]]["bucketing"]["group_id"],
                  rollouts[names[key]].get("bucket_by"))
            for key in ("checkout-v2", "new-search", "pricing-page", "dark-mode",
                        "account-billing", "legacy-reports", "_internal~tools",
                        "session-survey", "search-ranking")
        }  # fmt: skip
        assert found == {
            "checkout-v2": (25, "checkout-v2", None),
            "new-search": (50, "search-2025", None),
            "pricing-page": (0, "pricing-page", None),
            "dark-mode": (0, "dark-mode", None),  # disabled: at 0 %, bucketed for its 40 %
            "account-billing": (30, "account-billing", "accountId"),
            "legacy-reports": (15, "legacy", None),
            "_internal~tools": (60, "_internal~tools", None),  # no groupId: the flag's name
            "session-survey": (45, "survey", "sessionId"),
            "search-ranking": (20, "ranking-b", None),
        }
        dark = [s["percent"] for s in rollouts["dark-mode"]["stages"]]
        assert dark == [0, 1, 5, 25, 40, 50, 100]  # advancing to 40 gives Unleash's cohort

    def test_targeting_maps_to_allow_lists_and_segments(self, imported: Imported) -> None:
        """userWithId is an allow list; constraints are segments included at stage 0."""
        rollouts, segments = imported.document["rollouts"], imported.document["segments"]
        assert rollouts["new-search"]["targeting"] == {"allow": ["qa-alice", "qa-bob", "user-7"]}
        assert rollouts["office-network"]["targeting"] == {"allow": ["ops-1"]}
        banner = rollouts["beta-banner"]["stages"][0]["segments"]
        assert [(segments[s]["match"], segments[s]["rules"]) for s in banner] == [
            ("all", [{"attribute": "country", "op": "in", "value": ["DE", "AT"]},
                     {"attribute": "plan", "op": "in", "value": ["pro"]}]),
            ("any", [{"attribute": "email", "op": "suffix", "value": "@example.com"},
                     {"attribute": "email", "op": "suffix", "value": "@example.org"}]),
            ("all", [{"attribute": "team", "op": "in", "value": ["qa"]}]),  # Unleash segment 1
        ]  # fmt: skip
        senior = segments[rollouts["senior-discount"]["stages"][0]["segments"][0]]["rules"]
        assert senior == [{"attribute": "age", "op": "ge", "value": 65},
                          {"attribute": "country", "op": "in", "value": ["US"]}]  # fmt: skip


class TestAgainstTheSdkAtRandom:
    """A seeded random export of 250 flags (fuzz.json), every strategy and constraint mixed."""

    def test_whole_flags_are_equal_and_the_others_subsets(self) -> None:
        """The importer's two claims, checked on flags nobody chose to make them hold."""
        fuzz = json.loads((DATA / "fuzz.json").read_text(encoding="utf-8"))
        imported = from_unleash(fuzz["export"])
        rollouts = Rollouts(imported.policy)
        reported = {u.flag for u in imported.unmapped if not u.part.endswith(".variants")}
        units = list(zip(fuzz["units"], fuzz["attributes"], strict=True))
        equal = subset = mixed = 0
        for key, sdk in fuzz["flags"].items():
            ours = "".join("1" if rollouts.enabled(key, u, {"userId": u, **a}) else "0"
                           for u, a in units)  # fmt: skip
            if key in reported:
                assert not any(o == "1" and s == "0" for o, s in zip(ours, sdk, strict=True))
                subset += 1
            else:
                assert ours == sdk, key
                equal += 1
                mixed += "0" in sdk and "1" in sdk
        assert (equal, subset) == (105, 145)
        assert mixed > 10  # some that map whole let some units in and keep others out


class TestReport:
    # (flag, part, words the reason must hold): each says what Unleash did and what instead.
    REPORTED: ClassVar[list[tuple[str, str, list[str]]]] = [
        ("account-billing", "features[5].strategies[0].parameters.stickiness",
         ["'accountId'", "without", "users"]),
        ("mobile-upsell", "features[7].strategies[0]",
         ["20 %", "match its constraints", "leaves this strategy out"]),
        ("mobile-upsell", "features[7].strategies[1].constraints[0]",
         ["SEMVER_GT", "Unleash refuses", "leaves this strategy out"]),
        ("mobile-upsell", "features[7].strategies[2].constraints[0]",
         ["NOT_IN", "without 'country'", "missing attribute"]),
        ("office-network", "features[8].strategies[0]", ["remoteAddress", "IP address"]),
        ("random-banner", "features[9].strategies[0]", ["'random'", "sticky"]),
        ("random-banner", "features[9].strategies[1]", ["gradualRolloutRandom", "random"]),
        ("checkout-copy", "features[10].strategies[0].variants", ["2 variant(s)", "is_enabled"]),
        ("checkout-copy", "features[10].variants", ["1 variant(s)", "not which variant"]),
        ("express-shipping", "features[11].dependencies",
         ["parent flags", "prerequisites", "0 %"]),
        ("search-ranking", "features[13].strategies[0]",
         ["10 %", "'ranking-a'", "20 %", "'ranking-b'", "one bucketing"]),
        ("welcome-email", "features[15].strategies[1].constraints[0]",
         ["caseInsensitive", "compare case"]),
        ("welcome-email", "features[15].strategies[2].constraints[0]",
         ["DATE_BEFORE", "no date rule"]),
    ]  # fmt: skip

    def test_every_unmappable_part_is_reported_with_its_reason(self, imported: Imported) -> None:
        """Each part that did not map is reported once, in the export's order, with why."""
        found = [(u.flag, u.part, u.reason) for u in imported.unmapped]
        assert [(f, p) for f, p, _ in found] == [(f, p) for f, p, _ in self.REPORTED]
        for (_, _, reason), (flag_, part, words) in zip(found, self.REPORTED, strict=True):
            for word in words:
                assert word in reason, (flag_, part, word)

    def test_str_of_an_unmapped_part_names_flag_and_part(self, imported: Imported) -> None:
        """The report's lines read 'flag: part: reason'."""
        first = str(imported.unmapped[0])
        assert first.startswith("account-billing: features[5].strategies[0].parameters.stick")

    def test_a_constraint_of_an_unleash_segment_names_the_strategy(self) -> None:
        """An unmappable constraint of a segment is reported at the strategy that names it."""
        segments = [{"id": 7, "constraints": [{"contextName": "v", "operator": "SEMVER_EQ",
                                               "value": "1.0.0"}]}]  # fmt: skip
        data = client(flag("f", {"name": "default", "segments": [7]}), segments=segments)
        (item,) = from_unleash(data).unmapped
        assert item.part == "features[0].strategies[0].segments[0]"
        assert "segment 7's segments[0].constraints[0]: SEMVER_EQ" in item.reason

    def test_a_missing_segment_turns_the_flag_off(self) -> None:
        """The SDK turns a flag off whose strategy names an unknown segment: so does the import."""
        users = {"name": "userWithId", "parameters": {"userIds": "u1"}}
        data = client(flag("f", users, {"name": "default", "segments": [9]}))
        imported = from_unleash(data)
        (item,) = imported.unmapped
        assert item.part == "features[0].strategies[1].segments[0]"
        assert "turns the whole flag off" in item.reason
        assert "targeting" not in imported.document["rollouts"]["f"]
        assert not Rollouts(imported.policy).enabled("f", "u1")

    def test_a_disabled_flag_reports_only_targeting_it_drops(self) -> None:
        """A disabled flag with users or constraints says they are left out; a plain one not."""
        users = {"name": "userWithId", "parameters": {"userIds": "u1"}}
        imported = from_unleash(client(flag("a", users, enabled=False),
                                       flag("b", flexible("30"), enabled=False)))  # fmt: skip
        assert [(u.flag, u.part) for u in imported.unmapped] == [("a", "features[0]")]
        assert "off" in imported.unmapped[0].reason
        assert all(r["stages"][0]["percent"] == 0 for r in imported.document["rollouts"].values())

    def test_duplicate_flags_keep_the_later_as_the_sdk(self) -> None:
        """Unleash's SDK keeps the later of two flags of one name; so does the import."""
        imported = from_unleash(client(flag("f", flexible("10")), flag("f", flexible("90"))))
        assert list(imported.document["rollouts"]) == ["f"]
        assert imported.document["rollouts"]["f"]["stages"][0]["percent"] == 90
        assert imported.unmapped[0].part == "features[0]"
        assert "features[1] has the same name" in imported.unmapped[0].reason

    @pytest.mark.parametrize(
        ("strategy", "words"),
        [
            (flexible("25", stickiness=None), "at random"),
            (flexible("25", stickiness=""), "buckets on no field"),
            (flexible("25.5"), "not a whole percent"),
            (flexible("101"), "not a whole percent"),
            (flexible("9" * 5000), "not a whole percent"),
            ({"name": "gradualRolloutUserId", "parameters": {"percentage": "5"}}, "no groupId"),
            ({"name": "applicationHostname", "parameters": {"hostNames": "a"}}, "host name"),
            ({"name": "myCustomStrategy", "parameters": {}}, "custom strategy"),
            ({"name": "default", "disabled": True}, "marked disabled"),
        ],
    )
    def test_strategies_that_do_not_map(self, strategy: Any, words: str) -> None:
        """Each is left out and reported; the flag still imports."""
        if strategy["name"] == "flexibleRollout" and strategy["parameters"]["stickiness"] is None:
            del strategy["parameters"]["stickiness"]
        imported = from_unleash(client(flag("f", strategy)))
        (item,) = imported.unmapped
        assert (item.flag, item.part) == ("f", "features[0].strategies[0]")
        assert words in item.reason
        assert "leaves this strategy out" in item.reason
        assert imported.policy.rollouts["f"].stages[0].percent == 0

    @pytest.mark.parametrize(
        ("constraint", "words"),
        [
            ({"operator": "IN", "values": ["a"], "inverted": True}, "inverted IN"),
            ({"operator": "NOT_IN", "values": ["a"]}, "NOT_IN holds"),
            ({"operator": "STR_CONTAINS", "values": ["a"], "inverted": True}, "inverted"),
            ({"operator": "NUM_GT", "value": "1", "inverted": True}, "inverted NUM_GT"),
            ({"operator": "NUM_GT", "value": "1e999"}, "an infinite number"),
            ({"operator": "IN", "values": []}, "lists no value"),
            ({"operator": "SEMVER_LT", "value": "2.0.0"}, "versions"),
            ({"operator": "DATE_AFTER", "value": "2024-01-01T00:00:00Z"}, "no date rule"),
            ({"operator": "REGEX", "values": ["a.*"]}, "'REGEX'"),
        ],
    )
    def test_constraints_that_do_not_map(self, constraint: dict[str, Any], words: str) -> None:
        """A constraint with no exactly equivalent rule leaves its strategy out."""
        strategy = {"name": "default", "constraints": [{"contextName": "x", **constraint}]}
        (item,) = from_unleash(client(flag("f", strategy))).unmapped
        assert item.part == "features[0].strategies[0].constraints[0]"
        assert words in item.reason

    @pytest.mark.parametrize(
        ("constraint", "words"),
        [
            ({"operator": "STR_CONTAINS", "values": []}, "STR_CONTAINS lists no value"),
            ({"operator": "STR_ENDS_WITH"}, "STR_ENDS_WITH lists no value"),
            ({"operator": "NUM_GT", "value": "ten"}, "'ten', not a value such as 12.5"),
            ({"operator": "NUM_LT"}, "'', not a value such as 12.5"),
            ({"operator": "NUM_EQ", "value": ".5"}, "'.5'"),
            ({"operator": "SEMVER_EQ", "value": "abc"}, "not a value such as 1.2.3"),
            ({"operator": "DATE_AFTER", "value": "2024-01-01"}, "'2024-01-01'"),
            ({"operator": "DATE_AFTER", "value": "2024-13-01T00:00:00Z"}, "such as 2024"),
        ],
    )
    def test_a_constraint_the_sdk_cannot_read_turns_the_flag_off(
        self, constraint: dict[str, Any], words: str
    ) -> None:
        """Unleash's SDK turns the whole flag off, its other strategies too: so does the import."""
        strategy = {"name": "default", "constraints": [{"contextName": "x", **constraint}]}
        users = {"name": "userWithId", "parameters": {"userIds": "u1"}}
        imported = from_unleash(client(flag("f", users, strategy)))
        (item,) = imported.unmapped
        assert item.part == "features[0].strategies[1].constraints[0]"
        assert words in item.reason
        assert "turns the whole flag off" in item.reason
        assert not Rollouts(imported.policy).enabled("f", "u1")

    @pytest.mark.parametrize("value", ["12.5", " 5", "5.", "+5", "-3", "1e2"])
    def test_numbers_the_sdk_reads_map(self, value: str) -> None:
        """A NUM_ value the SDK reads (spaces, a sign, an exponent) is the rule's number."""
        strategy = {"name": "default", "constraints": [
            {"contextName": "age", "operator": "NUM_GTE", "value": value}]}  # fmt: skip
        imported = from_unleash(client(flag("f", strategy)))
        assert not imported.unmapped
        (rule,) = next(iter(imported.document["segments"].values()))["rules"]
        assert rule["value"] == float(value)

    def test_many_combinations_are_refused(self) -> None:
        """OR'ed values combine into segments, up to 16 per strategy."""
        values = [f"v{i}" for i in range(5)]
        constraints = [{"contextName": f"c{i}", "operator": "STR_CONTAINS", "values": values}
                       for i in range(2)]  # fmt: skip
        imported = from_unleash(client(flag("f", {"name": "default", "constraints": constraints})))
        assert "combine into more than 16 segments" in imported.unmapped[0].reason
        constraints[1]["values"] = values[:3]
        imported = from_unleash(client(flag("f", {"name": "default", "constraints": constraints})))
        assert not imported.unmapped
        assert len(imported.document["segments"]) == 15


class TestRules:
    """The constraints that map decide as Unleash, attribute by attribute."""

    def decide(self, constraint: dict[str, Any], attributes: dict[str, object]) -> bool:
        strategy = {"name": "default", "constraints": [{"contextName": "x", **constraint}]}
        imported = from_unleash(client(flag("f", strategy)))
        assert not imported.unmapped
        return Rollouts(imported.policy).enabled("f", "u", attributes)

    def test_in_and_inverted_not_in(self) -> None:
        """IN, and NOT_IN inverted, hold for a listed text, case and all; never when missing."""
        for constraint in (
            {"operator": "IN", "values": ["DE", "AT"]},
            {"operator": "NOT_IN", "values": ["DE", "AT"], "inverted": True},
            {"operator": "IN", "values": ["DE", "AT"], "caseInsensitive": True},
        ):
            assert self.decide(constraint, {"x": "AT"})
            assert not self.decide(constraint, {"x": "at"})  # IN ignores caseInsensitive
            assert not self.decide(constraint, {})  # fmt: skip

    def test_numbers(self) -> None:
        """NUM_ rules compare numbers, and never hold for a missing attribute."""
        assert self.decide({"operator": "NUM_GTE", "value": "65"}, {"x": 65})
        assert not self.decide({"operator": "NUM_LT", "value": "2.5"}, {"x": 2.5})
        assert self.decide({"operator": "NUM_EQ", "value": "+30.0"}, {"x": 30})
        assert not self.decide({"operator": "NUM_GT", "value": "1"}, {})

    def test_text(self) -> None:
        """STR_ rules with several values hold for any of them, case-sensitively."""
        rule = {"operator": "STR_STARTS_WITH", "values": ["adm", "ops"]}
        assert self.decide(rule, {"x": "ops-1"})
        assert not self.decide(rule, {"x": "Admin"})
        assert self.decide({"operator": "STR_CONTAINS", "values": [""]}, {"x": ""})

    def test_constrained_users_become_a_segment(self) -> None:
        """userWithId with a constraint needs both: a segment on userId and the constraint."""
        strategy = {
            "name": "userWithId",
            "parameters": {"userIds": "u1, u2"},
            "constraints": [{"contextName": "plan", "operator": "IN", "values": ["pro"]}],
        }
        rollouts = Rollouts(from_unleash(client(flag("f", strategy))).policy)  # fmt: skip
        assert rollouts.enabled("f", "u1", {"userId": "u1", "plan": "pro"})
        assert not rollouts.enabled("f", "u1", {"userId": "u1", "plan": "free"})
        assert not rollouts.enabled("f", "u3", {"userId": "u3", "plan": "pro"})

    def test_a_full_rollout_of_a_group_is_a_segment(self) -> None:
        """flexibleRollout at 100 % of matching units is every matching unit: a segment."""
        strategy = flexible("100", stickiness="accountId")
        strategy["constraints"] = [{"contextName": "plan", "operator": "IN", "values": ["pro"]}]
        imported = from_unleash(client(flag("f", strategy)))
        rollouts = Rollouts(imported.policy)
        assert rollouts.enabled("f", "u", {"plan": "pro", "accountId": "a"})
        assert not rollouts.enabled("f", "u", {"plan": "pro"})  # Unleash needs the field too


class TestShape:
    @pytest.mark.parametrize(
        ("data", "path", "words"),
        [
            ([], "", "a JSON object, not list"),
            (None, "", "not nothing"),
            ({}, "features", "is required"),
            ({"features": None}, "features", "is required"),
            ({"features": "x"}, "features", "must be a list"),
            (client(5), "features[0]", "must be an object (got a number)"),
            (client({"enabled": True}), "features[0].name", "non-empty text (got nothing)"),
            (client({"name": "", "enabled": True}), "features[0].name", "non-empty text"),
            (client({"name": ["f"], "enabled": True}), "features[0].name", "(got a list)"),
            (client({"name": "f"}), "features[0].enabled", "true or false"),
            (client({"name": "f", "enabled": "yes"}), "features[0].enabled", "text 'yes'"),
            (client(flag("f", 7)), "features[0].strategies[0]", "must be an object"),
            (client({"name": "f", "enabled": True, "strategies": {}}), "features[0].strategies",
             "must be a list"),
            (client(flag("f", {"parameters": {}})), "features[0].strategies[0].name",
             "non-empty text"),
            (client(flag("f", flexible(25))), "features[0].strategies[0].parameters.rollout",
             "must be text"),
            (client(flag("f", {"name": "default", "parameters": []})),
             "features[0].strategies[0].parameters", "must be an object"),
            (client(flag("f", {"name": "default", "segments": ["1"]})),
             "features[0].strategies[0].segments[0]", "segment id"),
            (client(flag("f", {"name": "default", "segments": [True]})),
             "features[0].strategies[0].segments[0]", "segment id"),
            (client(flag("f", {"name": "default", "constraints": [[]]})),
             "features[0].strategies[0].constraints[0]", "must be an object"),
            (client(flag("f", {"name": "default", "constraints": [{"operator": "IN"}]})),
             "features[0].strategies[0].constraints[0].contextName", "non-empty text"),
            (client(flag("f", {"name": "default", "constraints": [
                {"contextName": "a", "operator": "IN", "values": [1]}]})),
             "features[0].strategies[0].constraints[0].values[0]", "must be text"),
            (client(flag("f", {"name": "default", "constraints": [
                {"contextName": "a", "operator": "IN", "inverted": "no"}]})),
             "features[0].strategies[0].constraints[0].inverted", "true or false"),
            (client(segments=[{"constraints": []}]), "segments[0].id", "segment id"),
            (client(segments={}), "segments", "must be a list"),
            ({"features": [], "featureStrategies": 3}, "featureStrategies", "must be a list"),
            ({"featureStrategies": []}, "features", "is required"),
            ({"features": [{"name": "f"}, {"name": "f"}], "featureStrategies": []},
             "features[1].name", "already has"),
        ],
    )  # fmt: skip
    def test_a_wrong_shape_is_refused_naming_where(
        self, data: object, path: str, words: str
    ) -> None:
        """The refusal names the path of each problem in the export."""
        found = problems(data)
        assert any(p == path and words in m for p, m in found), found

    def test_every_problem_is_reported_at_once(self) -> None:
        """The refusal lists every problem, not the first only."""
        data = client({"name": 1, "enabled": True}, {"name": "g", "enabled": 2})
        assert [p for p, _ in problems(data)] == ["features[0].name", "features[1].enabled"]

    def test_the_source_is_named(self) -> None:
        """The refusal names the file it is about."""
        with pytest.raises(PolicyError, match=r"export\.json"):
            from_unleash({}, source="export.json")

    def test_the_client_api_features_take_no_environment(self) -> None:
        """They hold the API token's environment only."""
        ((path, message),) = problems(client(), environment="production")
        assert path == ""
        assert "admin export only" in message

    def test_unknown_fields_are_ignored(self) -> None:
        """Fields Unleash adds that do not change who gets the flag change nothing."""
        plain = client(flag("f", flexible("30")))
        extra = copy.deepcopy(plain)
        extra["meta"] = {"etag": "x", "deep": [[[{"a": None}]]]}
        extra["features"][0].update(stale=True, impressionData=True, createdAt="2024-01-01",
                                    lastSeenAt=None, project="p", tags=[{"x": 1}])  # fmt: skip
        extra["features"][0]["strategies"][0].update(sortOrder=3, title="t", id="abc")
        assert from_unleash(extra).document == from_unleash(plain).document


class TestAdminExport:
    def test_it_imports_as_the_client_api_features(self, imported: Imported) -> None:
        """The same flags, from the admin export, make the same rollouts as the SDK-checked ones."""
        admin = import_file("unleash", ADMIN)
        for name in ("checkout-v2", "new-search", "dark-mode"):
            assert admin.document["rollouts"][name] == imported.document["rollouts"][name]
        admin.policy  # noqa: B018 - validates

    def test_what_it_reports(self) -> None:
        """A segment without constraints, disabled strategies, a parent flag, an archived flag."""
        admin = import_file("unleash", ADMIN)
        assert [(u.flag, u.part) for u in admin.unmapped] == [
            ("beta-banner", "featureStrategies[4].segments[0]"),
            ("legacy-banner", "features[5]"),
            ("express-shipping", "dependencies[0]"),
            ("old-onboarding", "features[7]"),
        ]
        reasons = [u.reason for u in admin.unmapped]
        assert "'qa-team'" in reasons[0]
        assert "client API features carry them" in reasons[0]
        assert "every strategy of the flag is disabled" in reasons[1]
        assert "archived" in reasons[3]
        assert "old-onboarding" not in admin.document["rollouts"]

    def test_a_disabled_strategy_is_not_served(self) -> None:
        """A disabled strategy is left out silently, as the server leaves it out."""
        admin = import_file("unleash", ADMIN)
        assert admin.document["rollouts"]["pricing-page"]["stages"][0]["percent"] == 10

    def environments(self) -> dict[str, Any]:
        def strategy(environment: str, rollout: str) -> dict[str, Any]:
            return {
                "name": "flexibleRollout",
                "featureName": "f",
                "environment": environment,
                "parameters": {"rollout": rollout, "stickiness": "default"},
            }

        return {
            "features": [{"name": "f"}],
            "featureStrategies": [strategy("dev", "20"), strategy("prod", "5")],
            "featureEnvironments": [
                {"featureName": "f", "environment": "dev", "enabled": True},
                {"featureName": "f", "environment": "prod", "enabled": True},
            ],
        }  # fmt: skip

    def test_several_environments_need_one_picked(self) -> None:
        """An export of several environments needs one named, among those it holds."""
        ((path, message),) = problems(self.environments())
        assert path == "featureEnvironments"
        assert "'dev', 'prod'" in message
        assert "pick one" in message
        ((path, message),) = problems(self.environments(), environment="staging")
        assert "no environment 'staging'" in message
        assert "'dev', 'prod'" in message

    def test_the_environment_picked_is_imported(self) -> None:
        """The strategies and state of the environment named are the ones imported."""
        for environment, percent in (("dev", 20), ("prod", 5)):
            imported = from_unleash(self.environments(), environment=environment)
            assert imported.document["rollouts"]["f"]["stages"][0]["percent"] == percent

    def test_a_flag_without_state_runs_at_zero(self) -> None:
        """A flag without a state in the environment runs at 0 %, reported."""
        data = self.environments()
        data["featureEnvironments"] = data["featureEnvironments"][:1]
        imported = from_unleash(data, environment="prod")
        assert imported.document["rollouts"]["f"]["stages"][0]["percent"] == 0
        assert "no state of the flag in 'prod'" in imported.unmapped[0].reason

    def test_the_old_state_export_links_segments_and_names_strategies(self) -> None:
        """strategyName, and segments linked by featureStrategySegments, with constraints."""
        data = {
            "features": [{"name": "f"}],
            "featureStrategies": [{"id": "s1", "featureName": "f", "strategyName": "default",
                                   "parameters": {}, "constraints": []}],
            "featureEnvironments": [{"featureName": "f", "enabled": True}],
            "segments": [{"id": 4, "name": "pro", "constraints": [
                {"contextName": "plan", "operator": "IN", "values": ["pro"]}]}],
            "featureStrategySegments": [{"featureStrategyId": "s1", "segmentId": 4}],
        }  # fmt: skip
        imported = from_unleash(data)
        assert not imported.unmapped
        rollouts = Rollouts(imported.policy)
        assert rollouts.enabled("f", "u", {"plan": "pro"})
        assert not rollouts.enabled("f", "u", {"plan": "free"})


class TestHostile:
    def test_keys_that_are_not_rollout_names(self) -> None:
        """A key is renamed for the policy; its bucketing keeps the key, so the cohort holds.

        A valid key keeps its name, even where a renamed key that comes first would take it.
        """
        names = ["a b", "a-b", "ü/ß", ".hidden", "x" * 300]
        imported = from_unleash(client(*(flag(n, flexible("50")) for n in names)))
        assert list(keys(imported)) == names
        assert list(keys(imported).values()) == ["a-b-2", "a-b", "flag", "hidden", "x" * 128]
        rollouts, units = Rollouts(imported.policy), [f"user-{i}" for i in range(300)]
        for key, name in keys(imported).items():
            assert [rollouts.enabled(name, u) for u in units] == [
                unleash_on(key, u, 50) for u in units
            ]

    def test_odd_texts_do_not_break_the_policy(self) -> None:
        """Control characters, quotes and newlines survive to TOML and back."""
        group = 'g"\n\x1b[2J\\'
        imported = from_unleash(client(flag("f", flexible("40", group))))
        text = imported.to_toml()
        assert tomllib.loads(text) == imported.document
        assert imported.policy.rollouts["f"].bucketing.group_id == group  # type: ignore[union-attr]

    def test_text_that_a_file_cannot_hold_leaves_the_flag_out(self) -> None:
        """A lone surrogate (valid in JSON, not in UTF-8) is reported, not written."""
        imported = from_unleash(client(flag("f", flexible("40", "\ud800")), flag("g")))
        assert list(imported.document["rollouts"]) == ["g"]
        assert "lone surrogate" in imported.unmapped[0].reason
        imported.to_toml().encode("utf-8")

    def test_a_key_that_is_not_unicode_is_reported_as_text_that_encodes(self) -> None:
        """A flag key with a lone surrogate leaves its flag out; the report still encodes."""
        imported = from_unleash(client(flag("f\ud800", flexible("40")), flag("g")))
        assert list(imported.document["rollouts"]) == ["g"]
        (item,) = imported.unmapped
        assert (item.flag, item.part) == ("f\\ud800", "features[0]")
        assert "lone surrogate" in item.reason
        imported.to_toml().encode("utf-8")

    def test_a_group_too_long_for_a_policy_leaves_the_flag_out(self) -> None:
        """A groupId longer than a policy holds leaves the flag out, reported."""
        imported = from_unleash(client(flag("f", flexible("40", "g" * 5000))))
        assert not imported.document["rollouts"]
        assert "not a valid stagedroll rollout" in imported.unmapped[0].reason
        assert "group_id: must be at most" in imported.unmapped[0].reason

    def test_a_huge_export_stays_within_the_policys_limit(self) -> None:
        """Flags past the policy's 50,000 values are left out, reported; the rest validates."""
        ids = ",".join(f"user-{i}" for i in range(60_000))
        users = {"name": "userWithId", "parameters": {"userIds": ids}}
        imported = from_unleash(client(flag("big", users), flag("small", flexible("5"))))
        assert list(imported.document["rollouts"]) == ["small"]
        assert "more than 50,000 values" in imported.unmapped[0].reason
        imported.policy  # noqa: B018 - validates

    def test_a_large_shared_segment_is_worked_out_once(self) -> None:
        """Flags naming one large segment share its rules; those past the limit are reported."""
        values = [f"v{i}" for i in range(30_000)]
        segments = [{"id": 1, "constraints": [{"contextName": "x", "operator": "IN",
                                               "values": values}]}]  # fmt: skip
        features = [flag(f"f{i}", {"name": "default", "segments": [1]}) for i in range(3000)]
        imported = from_unleash(client(*features, segments=segments))
        assert list(imported.document["rollouts"]) == ["f0"]
        assert len(imported.unmapped) == 2999
        assert Rollouts(imported.policy).enabled("f0", "u", {"x": "v29999"})

    def test_deep_and_huge_values_are_not_walked(self) -> None:
        """The importer reads fixed paths: a deep or huge value elsewhere costs nothing."""
        deep: object = []
        for _ in range(100_000):
            deep = [deep]
        data = client(flag("f", flexible("30"), meta=deep), query={"n": 10**5000})
        data["features"][0]["strategies"][0]["parameters"]["x"] = "y" * 1_000_000
        assert from_unleash(data).document["rollouts"]["f"]["stages"][0]["percent"] == 30
        found = problems(client(flag("f", {"name": "default", "segments": [deep]})))
        assert found == [("features[0].strategies[0].segments[0]",
                          "must be a segment id (got a list)")]  # fmt: skip
        found = problems(client({"name": 10**5000, "enabled": True}))
        assert found == [("features[0].name", "must be a non-empty text (got a number)")]

    def test_many_problems_are_bounded(self) -> None:
        """A thousand problems are kept, and the message shows a few."""
        with pytest.raises(PolicyError) as caught:
            from_unleash(client(*[5] * 5000))
        assert len(caught.value.problems) == 1000
        assert len(str(caught.value).splitlines()) < 60

    @given(st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
            st.sampled_from(["name", "enabled", "strategies", "parameters", "rollout",
                             "constraints", "segments", "id", "values", "operator",
                             "contextName", "groupId", "stickiness", "userIds", "features"]),
            inner, max_size=4),
        max_leaves=12))  # fmt: skip
    def test_any_value_imports_or_is_refused(self, value: object) -> None:
        """Wherever an odd value sits, the import gives a valid policy or a PolicyError."""
        for data in (value, client(value), client(flag("f", value)),
                     client(flag("f", {"name": "flexibleRollout", "parameters": value})),
                     client(flag("f", {"name": "default", "constraints": [value]}))):  # fmt: skip
            try:
                imported = from_unleash(data)
            except PolicyError:
                continue
            assert tomllib.loads(imported.to_toml()) == imported.document
            load_policy(imported.document)


class TestLaws:
    @given(percent=st.integers(0, 100), group=st.text(st.characters(codec="utf-8"), max_size=20))
    def test_a_flexible_rollout_keeps_unleashs_cohort(self, percent: int, group: str) -> None:
        """For any percent and group, the rollout's cohort is Unleash's formula's."""
        imported = from_unleash(client(flag("f", flexible(str(percent), group))))
        rollouts, units = Rollouts(imported.policy), [f"u{i}" for i in range(200)]
        assert [rollouts.enabled("f", u) for u in units] == [
            unleash_on(group, u, percent) for u in units
        ]

    @given(st.lists(st.integers(0, 100), min_size=1, max_size=4))
    def test_percentages_of_one_group_are_their_maximum(self, percents: list[int]) -> None:
        """Strategies are OR'ed: cohorts of one group nest, so their union is the largest."""
        imported = from_unleash(client(flag("f", *(flexible(str(p), "g") for p in percents))))
        assert not imported.unmapped
        assert imported.document["rollouts"]["f"]["stages"][0]["percent"] == max(percents)


class TestToml:
    @pytest.mark.parametrize("path", [EXPORT, ADMIN], ids=["client", "admin"])
    def test_to_toml_round_trips(self, path: Path) -> None:
        """The TOML text reads back as the same document, and the same policy."""
        imported = import_file("unleash", path)
        text = imported.to_toml()
        assert tomllib.loads(text) == imported.document
        assert load_policy(tomllib.loads(text)) == imported.policy
        assert json.loads(imported.to_json()) == imported.document
        head = text.split("\n\n", 1)[0]
        assert all(str(u).split(":")[0] in head for u in imported.unmapped)


class TestCli:
    def run(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["import", "unleash", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    def test_prints_the_policy_and_the_report(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The policy on stdout validates; the report is on stderr."""
        code, out, err = self.run(capsys, str(EXPORT))
        assert code == 0
        load_policy(tomllib.loads(out))
        lines = err.splitlines()
        assert lines[0].startswith("stagedroll: not mapped: account-billing: features[5]")
        assert lines[-1] == "stagedroll: 20 rollouts imported from unleash, 13 part(s) not mapped"

    def test_out_writes_a_new_file(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        """--out writes the policy to a new file, and never overwrites one."""
        target = tmp_path / "rollouts.toml"
        code, out, _ = self.run(capsys, str(ADMIN), "--source-env", "production",
                                "--out", str(target))  # fmt: skip
        assert (code, out) == (0, "")
        assert load_policy(target) == import_file("unleash", ADMIN).policy
        code, _, err = self.run(capsys, str(ADMIN), "--out", str(target))
        assert code == 2
        assert "exists" in err

    def test_json(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--json gives the policy and the report as one document."""
        code, out, _ = self.run(capsys, str(EXPORT), "--json")
        report = json.loads(out)
        assert code == 0
        assert report["vendor"] == "unleash"
        assert report["policy"] == import_file("unleash", EXPORT).document
        assert report["unmapped"][0] == {
            "flag": "account-billing",
            "part": "features[5].strategies[0].parameters.stickiness",
            "reason": import_file("unleash", EXPORT).unmapped[0].reason,
        }

    def test_strict_fails_when_something_did_not_map(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        """--strict exits 1 when a part did not map, 0 when all did."""
        assert self.run(capsys, str(EXPORT), "--strict")[0] == 1
        clean = tmp_path / "clean.json"
        clean.write_text(json.dumps(client(flag("f", flexible("30")))), encoding="utf-8")
        assert self.run(capsys, str(clean), "--strict")[0] == 0

    def test_a_wrong_shape_is_a_usage_error(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        """A document of the wrong shape fails, naming the path."""
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(client(flag("f", flexible(25)))), encoding="utf-8")
        code, out, err = self.run(capsys, str(bad))
        assert code != 0
        assert out == ""
        assert "features[0].strategies[0].parameters.rollout" in err

    def test_the_environment_is_required_when_several(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        """--source-env picks one of several environments."""
        both = tmp_path / "both.json"
        both.write_text(json.dumps(TestAdminExport().environments()), encoding="utf-8")
        code, _, err = self.run(capsys, str(both))
        assert code != 0
        assert "pick one" in err
        assert self.run(capsys, str(both), "--source-env", "prod")[0] == 0


def test_the_sdk_is_not_needed() -> None:
    """The tests read the data files only: Unleash's SDK is no dependency of stagedroll."""
    assert "UnleashClient" not in sys.modules
