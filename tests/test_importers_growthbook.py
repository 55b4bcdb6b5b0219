"""The GrowthBook importer: an SDK features payload made a policy that keeps every cohort.

The decisions on the imported policy are compared, unit for unit, with what GrowthBook's own
SDK serves for the same export (``tests/data/imports/growthbook/expected.json``, written by
``generate_growthbook.py`` beside it); every part that does not map is reported, with its reason.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stagedroll import PolicyError, Rollouts, load_policy
from stagedroll.cli import main
from stagedroll.importers import Imported, from_growthbook, import_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # the backport, a dependency on Python 3.10
    import tomli as tomllib

DATA = Path(__file__).parent / "data" / "imports" / "growthbook"
EXPORT = DATA / "export.json"
EXPECTED = json.loads((DATA / "expected.json").read_text(encoding="utf-8"))

# The rollout of each feature, and the value that is its new path (True: a boolean feature).
ROLLOUTS = {
    "checkout-v2": "checkout-v2",
    "new-search": "new-search",
    "dark-mode": "dark-mode",
    "team-dashboard": "team-dashboard",
    "pricing-page": "pricing-page",
    "legacy-banner": "legacy-banner",
    "search-suggestions": "search-suggestions",
    "onboarding-tour": "onboarding-tour",
    "price-alerts": "price-alerts",
    "promo:spring|2025": "promo-spring-2025",
    "recommendations": "recommendations",
    "beta-editor": "beta-editor",
    "homepage-hero": "homepage-hero",
    "checkout-upsell": "checkout-upsell",
}
NEW_VALUE: dict[str, Any] = {"pricing-page": "modern", "homepage-hero": "v2"}
LEFT_OUT = ("button-color", "sticky-notes", "search-ranking")
FEATURES = {entry["feature"]: entry for entry in EXPECTED["features"]}


def attributes(index: int) -> dict[str, Any]:
    """What GrowthBook's SDK was given for unit ``index``: its id and the attributes it has."""
    unit = EXPECTED["units"][index]
    found = {k: column[index] for k, column in EXPECTED["attributes"].items()}
    return {"id": unit, **{k: v for k, v in found.items() if v is not None}}


def served_on(feature: str) -> list[bool]:
    """Whether the SDK served each unit the new value (with the unmapped parts taken out)."""
    entry = FEATURES[feature]
    served = entry.get("served_without_removed", entry["served"])
    new = NEW_VALUE.get(feature, True)
    return [entry["values"][int(c)] == new and type(entry["values"][int(c)]) is type(new)
            for c in served]  # fmt: skip


def payload(*rules: object, default: Any = False, **more: Any) -> dict[str, Any]:
    """An SDK payload with one feature, ``f``, whose rules are ``rules`` (any JSON data)."""
    return {"features": {"f": {"defaultValue": default, "rules": list(rules)}}, **more}


def parts(imported: Imported, feature: str = "f") -> dict[str, str]:
    return {u.part: u.reason for u in imported.unmapped if u.flag == feature}


def gbhash(seed: str, unit: str, version: int) -> float:
    """GrowthBook's hash as its SDK spec writes it (FNV-1a 32 over UTF-16 code units)."""

    def fnv(text: str) -> int:
        h = 0x811C9DC5
        data = text.encode("utf-16-le", "surrogatepass")
        for i in range(0, len(data), 2):
            h = ((h ^ int.from_bytes(data[i : i + 2], "little")) * 0x01000193) & 0xFFFFFFFF
        return h

    if version == 2:
        return fnv(str(fnv(seed + unit))) % 10_000 / 10_000
    return fnv(unit + seed) % 1_000 / 1_000


@pytest.fixture(name="imported", scope="module")
def _imported() -> Imported:
    return import_file("growthbook", EXPORT)


@pytest.fixture(name="rollouts", scope="module")
def _rollouts(imported: Imported) -> Rollouts:
    return Rollouts(imported.policy)


class TestExport:
    def test_expected_is_of_this_export(self) -> None:
        """expected.json was written from export.json as it is (else: run its generator)."""
        assert hashlib.sha256(EXPORT.read_bytes()).hexdigest() == EXPECTED["export_sha256"]
        assert EXPECTED["sdk"] == "growthbook"
        assert EXPECTED["version"]
        assert len(EXPECTED["units"]) > 2000

    def test_policy_validates(self, imported: Imported) -> None:
        """The import is a valid policy with a rollout for each feature that maps."""
        assert set(imported.policy.rollouts) == set(ROLLOUTS.values())
        assert imported.vendor == "growthbook"

    @pytest.mark.parametrize("feature", ROLLOUTS)
    def test_decisions_equal_the_sdk(self, rollouts: Rollouts, feature: str) -> None:
        """For every stored unit, the rollout serves the new path iff GrowthBook's SDK served
        the new value (for a feature mapped in part: once the parts reported are out)."""
        name = ROLLOUTS[feature]
        expected = served_on(feature)
        decided = [rollouts.enabled(name, unit, attributes(i))
                   for i, unit in enumerate(EXPECTED["units"])]  # fmt: skip
        wrong = [u for u, d, e in zip(EXPECTED["units"], decided, expected, strict=True) if d != e]
        assert wrong == []

    def test_the_cohorts_are_not_trivial(self) -> None:
        """The data can fail a test: the percentage rollouts split the units both ways."""
        for feature in ("checkout-v2", "new-search", "team-dashboard", "pricing-page"):
            on = sum(served_on(feature))
            assert 0.04 * len(EXPECTED["units"]) < on < 0.6 * len(EXPECTED["units"])

    @pytest.mark.parametrize("feature", [f for f in FEATURES if "removed" in FEATURES[f]])
    def test_partial_features_report_exactly_what_they_leave_out(
        self, imported: Imported, feature: str
    ) -> None:
        """The parts reported for a feature are the parts whose removal gives its decisions."""
        at = "features." + feature
        reported = {p for p in parts(imported, feature) if p != at}
        assert reported == {f"{at}.{part}" for part in FEATURES[feature]["removed"]}
        assert FEATURES[feature]["served"] != FEATURES[feature]["served_without_removed"]

    def test_fully_mapped_features_report_nothing(self, imported: Imported) -> None:
        """A feature that maps whole has no entry in the report."""
        partial = {f for f in FEATURES if "removed" in FEATURES[f]}
        for feature in set(ROLLOUTS) - partial - {"homepage-hero"}:
            assert parts(imported, feature) == {}, feature

    @pytest.mark.parametrize("feature", LEFT_OUT)
    def test_features_that_are_no_rollout_are_left_out(
        self, imported: Imported, feature: str
    ) -> None:
        """An experiment, or a slice of the hash space, is no rollout: left out and said so."""
        assert feature not in imported.document["rollouts"]
        reported = parts(imported, feature)
        assert reported[f"features.{feature}"].startswith("left out")
        assert reported[f"features.{feature}.rules[0]"]

    @pytest.mark.parametrize(
        ("feature", "part", "words"),
        [
            ("recommendations", "rules[0]", ["50 %", "condition", "percentage to a group"]),
            ("recommendations", "rules[1]", ["$vgte", "versions"]),
            ("recommendations", "rules[2]", ["$ne", "without the attribute"]),
            ("recommendations", "rules[3]", ["old value", "group", "targeting.deny"]),
            (
                "recommendations",
                "rules[4].fallbackAttribute",
                ["deviceId", "out of the percentage"],
            ),
            ("beta-editor", "rules[0]", ["parentConditions", "prerequisites"]),
            ("beta-editor", "rules[3]", ["second percentage", "editor-wide"]),
            ("homepage-hero", "rules[0]", ['"v3"', "neither the new value nor the default"]),
            ("checkout-upsell", "rules[0].tracks", ["exposure events"]),
            ("checkout-upsell", "rules[1]", ["filters"]),
            ("button-color", "rules[0]", ["experiment", "3 variations"]),
            ("search-ranking", "rules[0]", ["[0.5, 0.8)", "start at 0"]),
        ],
    )
    def test_reasons_say_why(
        self, imported: Imported, feature: str, part: str, words: list[str]
    ) -> None:
        """Each reason says what GrowthBook does that stagedroll cannot."""
        reason = parts(imported, feature)[f"features.{feature}.{part}"]
        assert all(word in reason for word in words), reason

    def test_ambiguous_new_value_is_reported(self, imported: Imported) -> None:
        """A feature that serves two values besides its default says which is the new path."""
        reason = parts(imported, "homepage-hero")["features.homepage-hero"]
        assert '"v2"' in reason
        assert "2 values" in reason

    def test_bucketing_is_written_out(self, imported: Imported) -> None:
        """Seed and hash version are explicit: a renamed rollout keeps the feature's key."""
        rollouts = imported.document["rollouts"]
        assert rollouts["promo-spring-2025"]["bucketing"] == {
            "scheme": "growthbook", "seed": "promo:spring|2025", "hash_version": 1}  # fmt: skip
        assert rollouts["checkout-v2"]["bucketing"]["hash_version"] == 1  # no hashVersion: v1
        assert rollouts["new-search"]["bucketing"]["seed"] == "search-relaunch"
        assert rollouts["team-dashboard"]["bucket_by"] == "company"
        assert rollouts["pricing-page"]["stages"][0]["percent"] == 12.34
        assert rollouts["price-alerts"]["stages"][0]["percent"] == 0
        assert "bucketing" not in rollouts["search-suggestions"]  # on for all: no cohort

    def test_targeting(self, imported: Imported) -> None:
        """Ids become allow and deny lists; attribute rules, segments included at stage 0."""
        policy = imported.policy
        assert policy.rollouts["new-search"].targeting.allow == ("qa-1", "qa-2", "user-7")
        assert policy.rollouts["dark-mode"].targeting.deny == ("user-3", "user-9")
        assert policy.rollouts["beta-editor"].targeting.allow == ("user-11", "user-12", "qa-2")
        team = policy.rollouts["team-dashboard"].targeting
        assert (team.allow, team.deny) == (("company-1", "company-2"), ("company-5",))
        stage = policy.rollouts["dark-mode"].stages[0]
        assert len(stage.segments) == 2
        first = policy.segments[stage.segments[0]]
        assert first.match == "all"
        assert [(r.attribute, r.op, r.value) for r in first.rules] == [
            ("country", "in", ["NZ", "AU"]), ("plan", "eq", "pro")]  # fmt: skip

    def test_later_stages_keep_the_cohort(self, imported: Imported) -> None:
        """Widening the imported rollout keeps every unit that was in (monotone)."""
        rollouts = Rollouts(imported.policy)
        units = EXPECTED["units"]
        before = [rollouts.enabled("checkout-v2", u) for u in units]
        rollouts.advance("checkout-v2", reason="widen")
        after = [rollouts.enabled("checkout-v2", u) for u in units]
        assert all(a for b, a in zip(before, after, strict=True) if b)
        assert sum(after) > sum(before)


class TestRollout:
    """How one rule maps, on payloads written for the case."""

    @given(
        st.floats(min_value=0, max_value=1, allow_nan=False),
        st.sampled_from([1, 2]),
    )
    def test_any_coverage_keeps_its_cohort(self, coverage: float, version: int) -> None:
        """Whatever the coverage, the imported percent includes exactly the positions that
        GrowthBook's ``n < coverage`` includes."""
        rule = {"force": True, "coverage": coverage, "hashVersion": version}
        policy = from_growthbook(payload(rule)).policy
        percent = policy.rollouts["f"].stages[0].percent
        scheme = policy.rollouts["f"].scheme("f")
        modulus = 10_000 if version == 2 else 1_000
        assert scheme.cut(percent) == sum(1 for k in range(modulus) if k / modulus < coverage)

    @given(
        st.text(max_size=12),
        st.lists(st.text(max_size=12), min_size=1, max_size=30),
        st.integers(min_value=0, max_value=1000),
        st.sampled_from([1, 2]),
    )
    def test_decisions_follow_growthbooks_formula(
        self, seed: str, units: list[str], permille: int, version: int
    ) -> None:
        """A unit is on iff its hash, as GrowthBook's spec computes it, is below the coverage."""
        coverage = permille / 1000
        rule = {"force": True, "coverage": coverage, "hashVersion": version, "seed": seed}
        rollouts = Rollouts(from_growthbook(payload(rule)).policy)
        for unit in units:
            expected = unit != "" and gbhash(seed or "f", unit, version) < coverage
            assert rollouts.enabled("f", unit) == expected

    def test_range_from_zero_is_a_coverage(self) -> None:
        rule = {"force": True, "range": [0, 0.4], "hashVersion": 2}
        assert from_growthbook(payload(rule)).document["rollouts"]["f"]["stages"][0][
            "percent"] == 40  # fmt: skip

    def test_unknown_hash_version_is_reported(self) -> None:
        imported = from_growthbook(payload({"force": True, "coverage": 0.5, "hashVersion": 3}))
        assert "version 3" in parts(imported)["features.f.rules[0]"]

    def test_same_bucketing_twice_is_the_wider(self) -> None:
        """Two percentages on one seed are the wider one: their cohorts nest."""
        rules = [{"force": True, "coverage": 0.1}, {"force": True, "coverage": 0.3}]
        imported = from_growthbook(payload(*rules))
        assert imported.document["rollouts"]["f"]["stages"][0]["percent"] == 30
        assert imported.unmapped == ()

    def test_everyone_on_ends_the_rules(self) -> None:
        """A rule that serves everyone makes it 100 %, and nothing after it is reported."""
        rules = [{"force": True}, {"force": True, "variations": [1, 2]}, {"force": False}]
        imported = from_growthbook(payload(*rules))
        assert imported.document["rollouts"]["f"]["stages"] == [
            {"name": "imported", "percent": 100}]  # fmt: skip
        assert imported.unmapped == ()

    def test_default_on_with_deny(self) -> None:
        rules = [{"condition": {"id": {"$in": ["u1", "u2"]}}, "force": False}]
        rollout = from_growthbook(payload(*rules, default=True)).document["rollouts"]["f"]
        assert rollout["targeting"] == {"deny": ["u1", "u2"]}
        assert rollout["stages"][0]["percent"] == 100

    def test_first_rule_wins_for_ids(self) -> None:
        """An id named by an allow rule then a deny rule is allowed, and the other way."""
        rules = [
            {"condition": {"id": "a"}, "force": True},
            {"condition": {"id": {"$in": ["a", "b"]}}, "force": False},
            {"condition": {"id": {"$eq": "b"}}, "force": True},
            {"force": True, "coverage": 0.5},
        ]
        targeting = from_growthbook(payload(*rules)).document["rollouts"]["f"]["targeting"]
        assert targeting == {"allow": ["a"], "deny": ["b"]}

    def test_deny_after_a_group_is_reported(self) -> None:
        """Ids turned off after a segment: a deny list would win over it, so not mapped."""
        rules = [
            {"condition": {"plan": "pro"}, "force": True},
            {"condition": {"id": "a"}, "force": False},
            {"force": True, "coverage": 0.5},
        ]
        imported = from_growthbook(payload(*rules))
        assert "deny list would win" in parts(imported)["features.f.rules[1]"]
        assert "targeting" not in imported.document["rollouts"]["f"]

    def test_old_value_that_changes_nothing_is_dropped(self) -> None:
        """An old value served when nothing later serves the new one changes nobody's answer."""
        rules = [
            {"force": True, "coverage": 0.5},
            {"condition": {"plan": "pro"}, "force": False},
            {"force": False, "coverage": 0.7},
            {"condition": {"id": "a"}, "force": False},
        ]
        imported = from_growthbook(payload(*rules))
        assert imported.unmapped == ()
        assert "targeting" not in imported.document["rollouts"]["f"]

    def test_old_value_to_a_percentage_is_reported(self) -> None:
        rules = [{"force": False, "coverage": 0.3}, {"force": True}]
        imported = from_growthbook(payload(*rules))
        assert "old value to a percentage" in parts(imported)["features.f.rules[0]"]
        assert imported.document["rollouts"]["f"]["stages"][0]["percent"] == 100

    def test_bucket_attribute_lists_and_segments(self) -> None:
        """With a hash attribute, its values are the lists, and a segment notes the units
        without it (stagedroll turns them off first)."""
        rules = [
            {"condition": {"org": {"$in": ["o1"]}}, "force": True},
            {"condition": {"plan": "pro"}, "force": True},
            {"force": True, "coverage": 0.2, "hashAttribute": "org"},
        ]
        imported = from_growthbook(payload(*rules))
        rollout = imported.document["rollouts"]["f"]
        assert (rollout["bucket_by"], rollout["targeting"]) == ("org", {"allow": ["o1"]})
        assert 'without "org"' in parts(imported)["features.f.rules[1].condition"]

    def test_fallback_attribute_without_sticky_bucketing_is_not_used(self) -> None:
        rule = {"force": True, "coverage": 0.2, "fallbackAttribute": "d",
                "disableStickyBucketing": True}  # fmt: skip
        assert from_growthbook(payload(rule)).unmapped == ()

    def test_string_feature_without_a_second_value_is_left_out(self) -> None:
        imported = from_growthbook(payload({"force": "a", "coverage": 0.5}, default="a"))
        assert imported.document["rollouts"] == {}
        assert "one value" in parts(imported)["features.f"]

    def test_new_value_is_that_of_a_mapped_percentage_rule(self) -> None:
        """A percentage of a group does not map, so the new path is the rollout rule's value."""
        rules = [{"condition": {"plan": "pro"}, "force": "b", "coverage": 0.5},
                 {"force": "c", "coverage": 0.3}]  # fmt: skip
        imported = from_growthbook(payload(*rules, default="a"))
        rollout = imported.document["rollouts"]["f"]
        assert 'serves "c"' in rollout["description"]
        assert rollout["stages"][0]["percent"] == 30
        assert set(parts(imported)) == {"features.f", "features.f.rules[0]"}

    def test_json_values_compare_as_json(self) -> None:
        """The new path of an object feature is the value its percentage rule forces."""
        rules = [{"force": {"size": 2}, "coverage": 0.5}, {"force": {"size": 1}}]
        imported = from_growthbook(payload(*rules, default={"size": 1}))
        assert imported.unmapped == ()
        assert imported.document["rollouts"]["f"]["stages"][0]["percent"] == 50

    def test_auto_experiments_are_reported(self) -> None:
        imported = from_growthbook(payload(experiments=[{"key": "e", "variations": [0, 1]}]))
        assert [u.part for u in imported.unmapped] == ["experiments"]

    def test_environment_is_refused(self) -> None:
        with pytest.raises(PolicyError, match="one environment"):
            from_growthbook(payload(), environment="production")


CONDITIONS: list[tuple[dict[str, Any], list[dict[str, Any]]]] = [
    ({"country": "NZ"}, [{"match": "any", "rules": [["country", "eq", "NZ"]]}]),
    ({"age": {"$gt": 17, "$lte": 65}},
     [{"match": "all", "rules": [["age", "gt", 17], ["age", "le", 65]]}]),
    ({"beta": {"$eq": True}}, [{"match": "any", "rules": [["beta", "eq", True]]}]),
    ({"email": {"$regex": "^admin@"}},
     [{"match": "any", "rules": [["email", "prefix", "admin@"]]}]),
    ({"email": {"$regex": "@x\\.io$"}},
     [{"match": "any", "rules": [["email", "suffix", "@x.io"]]}]),
    ({"email": {"$regex": "^a\\+b$"}}, [{"match": "any", "rules": [["email", "eq", "a+b"]]}]),
    ({"email": {"$regex": "gmail"}},
     [{"match": "any", "rules": [["email", "contains", "gmail"]]}]),
    ({"email": {"$regex": "cost\\$"}},
     [{"match": "any", "rules": [["email", "contains", "cost$"]]}]),
    ({"$or": [{"a": 1}, {"b": {"$in": ["x", "y"]}}]},
     [{"match": "any", "rules": [["a", "eq", 1], ["b", "in", ["x", "y"]]]}]),
    ({"plan": "pro", "$or": [{"a": 1}, {"b": 2}]},
     [{"match": "all", "rules": [["plan", "eq", "pro"], ["a", "eq", 1]]},
      {"match": "all", "rules": [["plan", "eq", "pro"], ["b", "eq", 2]]}]),
    ({"$and": [{"a": 1}, {"b": 2}], "c": {"$gte": "m"}},
     [{"match": "all", "rules": [["c", "ge", "m"], ["a", "eq", 1], ["b", "eq", 2]]}]),
    ({"org": {"$inGroup": "g"}}, [{"match": "any", "rules": [["org", "in", ["o1", "o2"]]]}]),
]  # fmt: skip

NOT_MAPPED: list[tuple[dict[str, Any], str]] = [
    ({"plan": {"$ne": "free"}}, "$ne"),
    ({"plan": {"$nin": ["free"]}}, "$nin"),
    ({"plan": {"$exists": True}}, "$exists"),
    ({"plan": {"$not": {"$eq": "free"}}}, "$not"),
    ({"$not": {"plan": "free"}}, "$not"),
    ({"$nor": [{"plan": "free"}]}, "$nor"),
    ({"email": {"$regexi": "x"}}, "$regexi"),
    ({"email": {"$regex": "a.*b"}}, "regular expression"),
    ({"email": {"$regex": "\\d+"}}, "regular expression"),
    ({"v": {"$vgt": "1.2.0"}}, "$vgt"),
    ({"tags": {"$elemMatch": {"$eq": "x"}}}, "$elemMatch"),
    ({"tags": {"$all": ["x"]}}, "$all"),
    ({"plan": {"$in": []}}, "$in"),
    ({"plan": None}, "null"),
    ({"plan": ["a"]}, "a list"),
    ({"plan": {"tier": 1}}, "object"),
    ({"account.plan": "pro"}, "nested"),
    ({"org": {"$inGroup": "missing"}}, "saved group"),
    ({"org": {"$notInGroup": "g"}}, "$notInGroup"),
    ({"org": {"$inGroup": "empty"}}, "whose values"),
    ({"plan": {"$gt": True}}, "$gt"),
    ({"plan": {"$foo": 1}}, "does not know"),
    ({"$savedGroup": {"id": "g"}}, "$savedGroup"),
]


class TestConditions:
    @pytest.mark.parametrize(("condition", "expected"), CONDITIONS)
    def test_condition_maps_to_segments(
        self, condition: dict[str, Any], expected: list[dict[str, Any]]
    ) -> None:
        """A condition with an exact equivalent becomes the segments included at stage 0."""
        groups = {"g": {"type": "list", "values": ["o1", "o2"]}}
        rules = [{"condition": condition, "force": True}, {"force": True, "coverage": 0.1}]
        imported = from_growthbook(payload(*rules, savedGroups=groups))
        assert imported.unmapped == ()
        document = imported.document
        names = document["rollouts"]["f"]["stages"][0]["segments"]
        found = [document["segments"][n] for n in names]
        assert [{"match": s["match"],
                 "rules": [[r["attribute"], r["op"], r["value"]] for r in s["rules"]]}
                for s in found] == expected  # fmt: skip
        imported.policy  # noqa: B018 - validates

    @pytest.mark.parametrize(("condition", "word"), NOT_MAPPED)
    def test_condition_without_equivalent_is_reported(
        self, condition: dict[str, Any], word: str
    ) -> None:
        """A condition with no exact equivalent leaves its rule out, and says which part."""
        rules = [{"condition": condition, "force": True}, {"force": True, "coverage": 0.1}]
        imported = from_growthbook(payload(*rules, savedGroups={"g": ["o1"], "empty": []}))
        reason = parts(imported)["features.f.rules[0]"]
        assert word in reason
        assert "features.f.rules[0].condition" in reason
        assert "segments" not in imported.document

    def test_legacy_saved_group_lists_ids(self) -> None:
        """$inGroup on the id with a saved group (a plain list) is an allow list."""
        rules = [{"condition": {"id": {"$inGroup": "g"}}, "force": True}]
        imported = from_growthbook(payload(*rules, savedGroups={"g": ["u1", "u2"]}))
        assert imported.document["rollouts"]["f"]["targeting"] == {"allow": ["u1", "u2"]}

    def test_an_empty_condition_serves_everyone(self) -> None:
        imported = from_growthbook(payload({"condition": {"$or": []}, "force": True}))
        assert imported.document["rollouts"]["f"]["stages"][0]["percent"] == 100


REFUSED: list[tuple[object, str, str]] = [
    ([], "", "SDK payload"),
    ({"encryptedFeatures": "x"}, "encryptedFeatures", "encrypted"),
    ({"features": {}, "encryptedSavedGroups": "x"}, "encryptedSavedGroups", "encrypted"),
    ({"status": 200}, "features", "required"),
    ({"features": []}, "features", "object"),
    ({"features": {"f": {}}, "savedGroups": []}, "savedGroups", "object"),
    ({"features": {"f": 3}}, "features.f", "object"),
    ({"features": {"a b": 3}}, 'features["a b"]', "object"),
    ({"features": {"f": {"rules": {}}}}, "features.f.rules", "list"),
    ({"features": {"f": {"rules": [{}, 3]}}}, "features.f.rules[1]", "object"),
    (payload({"force": True, "coverage": "0.5"}), "features.f.rules[0].coverage", "number"),
    (payload({"force": True, "coverage": True}), "features.f.rules[0].coverage", "number"),
    (payload({"force": True, "coverage": float("nan")}), "features.f.rules[0].coverage", "number"),
    (payload({"force": True, "coverage": 0.5, "hashVersion": "2"}),
     "features.f.rules[0].hashVersion", "1 or 2"),
    (payload({"force": True, "range": [0]}), "features.f.rules[0].range", "two numbers"),
    (payload({"force": True, "coverage": 0.5, "seed": 5}), "features.f.rules[0].seed", "text"),
    (payload({"force": True, "condition": [1]}), "features.f.rules[0].condition", "object"),
    (payload({"force": {1, 2}}), "features.f.rules[0].force", "JSON value"),
    ({"features": {1: {}}}, "features", "not text"),
]  # fmt: skip


class TestShape:
    @pytest.mark.parametrize(("data", "path", "word"), REFUSED)
    def test_wrong_shape_is_refused_naming_where(self, data: object, path: str, word: str) -> None:
        with pytest.raises(PolicyError) as caught:
            from_growthbook(data, source="export.json")
        assert caught.value.source == "export.json"
        found = {p.path: p.message for p in caught.value.problems}
        assert path in found, found
        assert word in found[path]

    def test_every_problem_at_once(self) -> None:
        data = {"features": {"a": 1, "b": {"rules": [{"force": True, "coverage": "x"}]}}}
        with pytest.raises(PolicyError) as caught:
            from_growthbook(data)
        assert [p.path for p in caught.value.problems] == [
            "features.a", "features.b.rules[0].coverage"]  # fmt: skip

    def test_duplicate_keys_are_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "export.json"
        path.write_text('{"features": {"f": {"defaultValue": false}, "f": {"defaultValue": true}}}')
        with pytest.raises(PolicyError, match="2 times"):
            import_file("growthbook", path)

    def test_unknown_fields_are_ignored(self) -> None:
        rule = {"force": True, "coverage": 0.5, "id": "fr_1", "meta": [1], "future": {"x": 1}}
        imported = from_growthbook(payload(rule, dateUpdated="2025", status=200))
        assert imported.unmapped == ()


class TestHostile:
    def test_keys_that_are_no_rollout_names(self) -> None:
        """Keys become valid names, each once; the seed stays the feature's key."""
        keys = ["a b", "a-b", "ü/x", "", "-", "x" * 300, "a\nb\x00"]
        data = {"features": {k: {"defaultValue": False, "rules": [{"force": True,
                "coverage": 0.5}]} for k in keys}}  # fmt: skip
        imported = from_growthbook(data)
        rollouts = imported.document["rollouts"]
        assert len(rollouts) == len(keys)
        assert [r["bucketing"]["seed"] for r in rollouts.values()] == keys
        assert {"a-b", "a-b-2"} <= set(rollouts)
        assert rollouts["a-b"]["bucketing"]["seed"] == "a-b"  # a valid key keeps its name
        policy = imported.policy
        assert all(len(name) <= 128 for name in policy.rollouts)

    def test_renamed_rollout_buckets_on_the_key(self) -> None:
        data = {"features": {"promo:spring": {"rules": [{"force": True, "coverage": 0.5}]}}}
        rollouts = Rollouts(from_growthbook(data).policy)
        for i in range(200):
            unit = f"user-{i}"
            assert rollouts.enabled("promo-spring", unit) == (
                gbhash("promo:spring", unit, 1) < 0.5)  # fmt: skip

    def test_seed_too_long_for_a_policy_leaves_the_feature_out(self) -> None:
        imported = from_growthbook(payload({"force": True, "coverage": 0.5, "seed": "s" * 5000}))
        assert imported.document["rollouts"] == {}
        reason = parts(imported)["features.f"]
        assert "not a valid stagedroll rollout" in reason
        assert "bucketing.seed" in reason

    def test_deep_condition(self) -> None:
        """A condition nested far deeper than Python recurses is reported, not a crash."""
        condition: dict[str, Any] = {"a": 1}
        for _ in range(5000):
            condition = {"$and": [condition]}
        imported = from_growthbook(payload({"condition": condition, "force": True}))
        assert "nests deeper" in parts(imported)["features.f.rules[0]"]

    def test_deep_and_self_containing_values_are_refused(self) -> None:
        deep: list[Any] = []
        for _ in range(10_000):
            deep = [deep]
        loop: list[Any] = []
        loop.append(loop)
        for value, word in ((deep, "deeper"), (loop, "itself")):
            with pytest.raises(PolicyError, match=word):
                from_growthbook(payload({"force": value, "coverage": 0.5}, default=[]))

    def test_wide_alternatives_are_reported(self) -> None:
        condition = {"$and": [{"$or": [{"a": i}, {"b": i}]} for i in range(10)]}
        imported = from_growthbook(payload({"condition": condition, "force": True}))
        assert "alternatives" in parts(imported)["features.f.rules[0]"]

    def test_odd_numbers(self) -> None:
        """A coverage past 1 is everyone with an id; a huge forced number is a value."""
        imported = from_growthbook(payload({"force": True, "coverage": 10**400}))
        assert imported.document["rollouts"]["f"]["stages"][0]["percent"] == 100
        imported = from_growthbook(payload({"force": 10**5000, "coverage": 0.5}, default=0))
        assert "a large number" in imported.document["rollouts"]["f"]["description"]

    def test_many_features_and_ids(self) -> None:
        """A large export maps in one pass: the features past a policy's size are reported."""
        rule = {"condition": {"id": {"$in": ["a", "b"]}}, "force": True}
        data = {"features": {f"f{i}": {"rules": [rule]} for i in range(2000)}}
        ids = [f"u{i}" for i in range(20_000)]
        data["features"]["f7"] = {"rules": [{"condition": {"id": {"$in": ids}}, "force": True}]}
        imported = from_growthbook(data)
        rollouts = imported.document["rollouts"]
        assert rollouts["f7"]["targeting"]["allow"] == ids
        left = [u.flag for u in imported.unmapped if "more than 50,000 values" in u.reason]
        assert left == [f"f{i}" for i in range(len(rollouts), 2000)]  # past a policy's size

    def test_a_list_too_large_for_a_policy_leaves_the_feature_out(self) -> None:
        ids = [f"u{i}" for i in range(60_000)]
        imported = from_growthbook(payload({"condition": {"id": {"$in": ids}}, "force": True}))
        assert imported.document["rollouts"] == {}
        assert "more than 50,000 values" in parts(imported)["features.f"]

    def test_the_policy_stays_within_its_size(self) -> None:
        """Features that fit one by one but not all together: the ones past the size of a
        policy are left out and reported, and the rest is a valid policy."""
        ids = [f"u{i}" for i in range(1000)]
        rule = {"condition": {"id": {"$in": ids}}, "force": True}
        data = {"features": {f"f{i}": {"rules": [rule]} for i in range(60)}}
        imported = from_growthbook(data)
        kept = imported.document["rollouts"]
        assert 40 < len(kept) < 60
        assert list(kept) == [f"f{i}" for i in range(len(kept))]
        left = [u for u in imported.unmapped if "50,000 values" in u.reason]
        assert [u.flag for u in left] == [f"f{i}" for i in range(len(kept), 60)]
        assert set(imported.policy.rollouts) == set(kept)

    def test_text_that_is_not_unicode_is_left_out(self) -> None:
        """A key with a lone surrogate (valid JSON, no UTF-8) leaves its feature out, reported
        in text that encodes; the rest of the import writes as TOML."""
        rule = {"force": True, "coverage": 0.5}
        data = {"features": {"ok": {"rules": [rule]}, "bad\ud800": {"rules": [rule]}}}
        imported = from_growthbook(data)
        assert list(imported.document["rollouts"]) == ["ok"]
        (report,) = imported.unmapped
        assert "not Unicode" in report.reason
        str(report).encode("utf-8")
        assert tomllib.loads(imported.to_toml()) == imported.document

    def test_the_input_is_not_changed(self) -> None:
        data = json.loads(EXPORT.read_text(encoding="utf-8"))
        before = copy.deepcopy(data)
        from_growthbook(data)
        assert data == before


class TestToml:
    def test_round_trip(self, imported: Imported, tmp_path: Path) -> None:
        """The TOML text reads back as the same document, and loads as a policy file."""
        text = imported.to_toml()
        assert tomllib.loads(text) == imported.document
        assert text.startswith("# Imported from growthbook")
        path = tmp_path / "rollouts.toml"
        path.write_text(text, encoding="utf-8")
        assert load_policy(path) == imported.policy
        assert json.loads(imported.to_json()) == imported.document

    def test_round_trip_of_odd_text(self) -> None:
        keys = ['quo"te', "back\\slash", "tab\tnew\nline", "ctrl\x01\x7f", "ü🙂"]
        data = {"features": {k: {"rules": [{"force": True, "coverage": 0.5, "seed": k},
                                           {"condition": {k: k}, "force": True}]}
                             for k in keys}}  # fmt: skip
        imported = from_growthbook(data)
        assert tomllib.loads(imported.to_toml()) == imported.document
        imported.policy  # noqa: B018 - validates


class TestCli:
    def run(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["import", "growthbook", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    def test_policy_on_stdout_report_on_stderr(
        self, capsys: pytest.CaptureFixture[str], imported: Imported
    ) -> None:
        code, out, err = self.run(capsys, str(EXPORT))
        assert code == 0
        assert tomllib.loads(out) == imported.document
        assert "not mapped: recommendations: features.recommendations.rules[0]" in err
        assert f"14 rollouts imported from growthbook, {len(imported.unmapped)} part(s)" in err

    def test_out(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        path = tmp_path / "rollouts.toml"
        code, out, _ = self.run(capsys, str(EXPORT), "--out", str(path))
        assert (code, out) == (0, "")
        assert set(load_policy(path).rollouts) == set(ROLLOUTS.values())
        code, _, err = self.run(capsys, str(EXPORT), "--out", str(path))
        assert code == 2
        assert "exists" in err

    def test_json(self, capsys: pytest.CaptureFixture[str], imported: Imported) -> None:
        capsys.readouterr()
        assert main(["--json", "import", "growthbook", str(EXPORT)]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["vendor"] == "growthbook"
        assert report["policy"] == imported.document
        assert [u["part"] for u in report["unmapped"]] == [u.part for u in imported.unmapped]

    def test_strict(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        assert self.run(capsys, str(EXPORT), "--strict")[0] == 1
        clean = tmp_path / "clean.json"
        clean.write_text(json.dumps(payload({"force": True, "coverage": 0.5})))
        assert self.run(capsys, str(clean), "--strict")[0] == 0

    def test_wrong_shape_names_the_path(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        path = tmp_path / "export.json"
        path.write_text(json.dumps(payload({"force": True, "coverage": "half"})))
        code, out, err = self.run(capsys, str(path))
        assert (code, out) == (1, "")
        assert "features.f.rules[0].coverage: must be a number" in err

    def test_source_env_is_refused(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, _, err = self.run(capsys, str(EXPORT), "--source-env", "production")
        assert code == 1
        assert "one environment" in err
