"""The LaunchDarkly importer: a realistic export, imported, decides as LaunchDarkly's own SDK
did for it (``tests/data/imports/launchdarkly/expected.json``, unit for unit), reports what
did not map, refuses what is not LaunchDarkly's shape, and survives hostile input."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagedroll import PolicyError, Rollouts, load_policy
from stagedroll.cli import main
from stagedroll.importers import Imported, from_launchdarkly, import_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # the backport, a dependency on Python 3.10
    import tomli as tomllib

DATA = Path(__file__).parent / "data" / "imports" / "launchdarkly"
EXPORT = DATA / "export.json"
REST = DATA / "rest.json"
LONG_SCALE = 0xFFFFFFFFFFFFFFF

# The new path's variation of each flag that is not boolean (the importer's choice, pinned).
NEW_VARIATION = {"api-v3": 1, "theme": 1}


@pytest.fixture(name="export", scope="module")
def _export() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(EXPORT.read_text(encoding="utf-8"))
    return data


@pytest.fixture(name="expected", scope="module")
def _expected() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / "expected.json").read_text(encoding="utf-8"))
    return data


@pytest.fixture(name="imported", scope="module")
def _imported() -> Imported:
    return import_file("launchdarkly", EXPORT)


def flag_of(key: str, **settings: Any) -> dict[str, Any]:
    """A boolean flag in the SDK's shape: on, salt ``salt-KEY``, serving false by default."""
    flag: dict[str, Any] = {"key": key, "version": 1, "on": True, "salt": f"salt-{key}",
                            "variations": [True, False], "offVariation": 1,
                            "fallthrough": {"variation": 1}}  # fmt: skip
    flag.update(settings)
    return flag


def rollout(weight: int, **more: Any) -> dict[str, Any]:
    """A fallthrough that serves true to ``weight`` thousandths of a percent."""
    weights = [{"variation": 0, "weight": weight}, {"variation": 1, "weight": 100_000 - weight}]
    return {"rollout": {"variations": weights, **more}}


def sdk_data(*flags: dict[str, Any]) -> dict[str, Any]:
    return {"flags": {flag["key"]: flag for flag in flags}, "segments": {}}


def ld_in(key: str, salt: str, unit: str, weight: int, seed: int | None = None) -> bool:
    """LaunchDarkly's formula for the first variation of a rollout, computed here."""
    prefix = f"{seed}" if seed is not None else f"{key}.{salt}"
    digest = hashlib.sha1(f"{prefix}.{unit}".encode()).hexdigest()
    return int(digest[:15], 16) / float(LONG_SCALE) < weight / 100_000


def attributes_of(expected: dict[str, Any], index: int) -> dict[str, Any]:
    columns = expected["attributes"]
    return {name: values[index] for name, values in columns.items() if values[index] is not None}


def unmapped_parts(imported: Imported, key: str) -> list[str]:
    return [u.part for u in imported.unmapped if u.flag == key]


class TestExport:
    """The realistic export: the imported policy decides as LaunchDarkly's SDK did."""

    def test_policy_validates(self, imported: Imported) -> None:
        """The document is a valid policy; every flag that maps is a rollout."""
        policy = imported.policy
        assert set(policy.rollouts) == {
            "checkout-v2", "search-ranking", "pricing-page", "dark-mode", "new-onboarding",
            "legacy-export", "recommendations", "api-v3", "mobile-sync", "zero-rollout",
            "search-v2", "payments-retry", "theme",
        }  # fmt: skip
        assert imported.vendor == "launchdarkly"

    @pytest.mark.parametrize("key", ["checkout-v2", "search-ranking", "pricing-page", "dark-mode",
                                     "new-onboarding", "legacy-export", "recommendations",
                                     "api-v3", "mobile-sync", "zero-rollout", "search-v2",
                                     "payments-retry", "theme"])  # fmt: skip
    def test_decisions_equal_the_sdk(
        self, key: str, imported: Imported, export: dict[str, Any], expected: dict[str, Any]
    ) -> None:
        """Every unit the SDK decided by a part that mapped gets the same answer, unit for unit.

        A unit the SDK decided by a part reported as not mapped (a rule, a target, a
        prerequisite) is counted apart: only those may differ.
        """
        rollouts = Rollouts(imported.policy)
        flag = export["flags"][key]
        new = NEW_VARIATION.get(key, flag["variations"].index(True) if True in flag["variations"]
                                else None)  # fmt: skip
        parts = unmapped_parts(imported, key)
        rules = {int(m[1]) for p in parts if (m := re.search(r"\.rules\[(\d+)\]", p))}
        targeted: set[str] = set()
        for part in parts:
            if m := re.fullmatch(r"flags\.[\w-]+\.(targets|contextTargets)\[(\d+)\]", part):
                targeted |= set(flag[m[1]][int(m[2])]["values"])
        served, reasons = expected["flags"][key]["served"], expected["flags"][key]["reasons"]
        compared = explained = 0
        for i, unit in enumerate(expected["units"]):
            reason = reasons[i]
            prerequisite = reason == "P" and any(".prerequisites[" in p for p in parts)
            if (
                (reason.isdigit() and int(reason) in rules)
                or (reason == "T" and unit in targeted)
                or prerequisite
            ):
                explained += 1
                continue
            sdk = served[i] == str(new)
            assert rollouts.enabled(key, unit, attributes_of(expected, i)) == sdk, (unit, reason)
            compared += 1
        assert compared > 1_000
        if not parts:
            assert explained == 0

    def test_fully_mapped_flags_explain_nothing(self, imported: Imported) -> None:
        """The flags with nothing reported are compared on every unit (above)."""
        reported = {u.flag for u in imported.unmapped}
        assert {"checkout-v2", "search-ranking", "legacy-export", "api-v3", "zero-rollout",
                "search-v2", "new-onboarding"}.isdisjoint(reported)  # fmt: skip

    def test_rollouts_keep_key_salt_seed_and_percent(self, imported: Imported) -> None:
        """Stage 0 runs the flag's percent; the bucketing names the flag's own key and salt."""
        rollouts = imported.document["rollouts"]
        checkout = rollouts["checkout-v2"]
        assert checkout["bucketing"] == {"scheme": "launchdarkly", "flag_key": "checkout-v2",
                                         "salt": "6d3a4b1c2f9e48a7b0c5d8e1f2a3b4c5"}  # fmt: skip
        assert [s["percent"] for s in checkout["stages"]] == [25, 50, 100]
        assert checkout["targeting"] == {"allow": ["vip-1", "vip-2", "user-11"],
                                         "deny": ["user-7", "user-19"]}  # fmt: skip
        assert rollouts["search-ranking"]["bucketing"]["seed"] == 61
        assert rollouts["pricing-page"]["bucket_by"] == "accountId"
        assert rollouts["pricing-page"]["stages"][0]["percent"] == 12.345
        assert rollouts["search-v2"]["bucketing"]["salt"] == ""  # the SDK's default
        assert rollouts["dark-mode"]["stages"][0]["percent"] == 0  # off
        assert rollouts["zero-rollout"]["stages"][0]["percent"] == 0
        assert rollouts["new-onboarding"]["stages"] == [{"name": "imported", "percent": 100}]
        assert rollouts["payments-retry"]["targeting"] == {"deny": ["user-3", "user-9", "vip-1"]}
        assert "v3" in rollouts["api-v3"]["description"]

    def test_rules_become_segments_of_stage_zero(self, imported: Imported) -> None:
        """A rule serving the new path to simple clauses is a segment that stage 0 includes."""
        segments = imported.document["segments"]
        assert imported.document["rollouts"]["checkout-v2"]["stages"][0]["segments"] == [
            "checkout-v2.rule0", "checkout-v2.rule1"]  # fmt: skip
        assert segments["checkout-v2.rule1"] == {"rules": [
            {"attribute": "country", "op": "in", "value": ["DE", "FR"]},
            {"attribute": "plan", "op": "eq", "value": "enterprise"}]}  # fmt: skip
        assert segments["legacy-export.rule0"]["match"] == "any"
        assert segments["legacy-export.rule1"]["rules"][0] == {"attribute": "age", "op": "ge",
                                                               "value": 65}  # fmt: skip
        assert segments["mobile-sync.rule1"]["rules"][0]["op"] == "not_in"

    def test_left_out_flags_are_reported(self, imported: Imported) -> None:
        """A flag that does not map as a rollout is not in the policy, and the report says why."""
        reasons = {u.flag: u.reason for u in imported.unmapped if "left out" in u.reason
                   and u.part.count(".") <= 2}  # fmt: skip
        assert "experiment" in reasons["homepage-experiment"]
        assert "does not start at 0" in reasons["banner"]
        assert "deleted" in reasons["retired-flag"]
        rollouts = imported.document["rollouts"]
        assert {"homepage-experiment", "banner", "retired-flag"}.isdisjoint(rollouts)

    def test_every_unmapped_part_is_reported_with_its_reason(self, imported: Imported) -> None:
        """Each part that does not map is named, with what LaunchDarkly did and what happens."""
        found = {(u.flag, u.part): u.reason for u in imported.unmapped}
        expected = {
            ("pricing-page", "flags.pricing-page.fallthrough.rollout.bucketBy"): "bucket 0",
            ("pricing-page", "flags.pricing-page.targets[0]"): "buckets by",
            ("dark-mode", "flags.dark-mode.on"): "the flag is off",
            ("homepage-experiment", "flags.homepage-experiment.fallthrough"): "experiment",
            ("recommendations", "flags.recommendations.prerequisites[0]"): "new-onboarding",
            ("recommendations", "flags.recommendations.rules[0]"): "percentage split",
            ("recommendations", "flags.recommendations.rules[1].clauses[0]"): "regular expr",
            ("recommendations", "flags.recommendations.rules[2]"): "old path",
            ("banner", "flags.banner.fallthrough"): "list the new variation first",
            ("mobile-sync", "flags.mobile-sync.contextTargets[1]"): '"device"',
            ("mobile-sync", "flags.mobile-sync.rules[0].clauses[0]"): '"organization"',
            ("retired-flag", "flags.retired-flag"): "deleted",
            ("payments-retry", "flags.payments-retry.rules[2]"): "checks deny lists first",
            ("payments-retry", "flags.payments-retry.rules[3].clauses[0]"): "segments",
            ("theme", "flags.theme.targets[0]"): "variation 2",
        }
        assert set(found) == set(expected)
        for where, phrase in expected.items():
            assert phrase in found[where], (where, found[where])
        for item in imported.unmapped:
            assert str(item).startswith(f"{item.flag}: {item.part}: ")

    def test_to_toml_round_trips(self, imported: Imported, tmp_path: Path) -> None:
        """The TOML text parses to the same document, and loads as the same policy."""
        text = imported.to_toml()
        assert tomllib.loads(text) == imported.document
        path = tmp_path / "rollouts.toml"
        path.write_text(text, encoding="utf-8")
        assert load_policy(path) == imported.policy
        assert json.loads(imported.to_json()) == imported.document
        assert text.count("\n#   ") == len(imported.unmapped)


class TestRestApi:
    """The REST API's flags: settings per environment, the salt under each environment."""

    def test_an_environment_is_required_when_there_are_several(self) -> None:
        with pytest.raises(PolicyError, match=r"environments: has the settings of 2 environments"):
            import_file("launchdarkly", REST)

    def test_production_imports_as_the_sdk_data_does(self, imported: Imported) -> None:
        """The same settings in either shape give the same rollouts."""
        rest = import_file("launchdarkly", REST, environment="production")
        for key in ("checkout-v2", "api-v3"):
            ours, theirs = rest.document["rollouts"][key], imported.document["rollouts"][key]
            assert {k: v for k, v in ours.items() if k != "description"} == {
                k: v for k, v in theirs.items() if k != "description"}  # fmt: skip
        assert rest.document["segments"] == {
            k: v for k, v in imported.document["segments"].items() if k.startswith("checkout-v2")
        }
        assert rest.document["rollouts"]["checkout-v2"]["description"] == (
            'LaunchDarkly flag "checkout-v2": Checkout v2'
        )
        assert [(u.flag, u.part) for u in rest.unmapped] == [("old-banner", "items[2]")]
        rest.policy  # noqa: B018 - validates

    def test_each_environment_has_its_own_salt_and_state(self) -> None:
        staging = import_file("launchdarkly", REST, environment="staging").document["rollouts"]
        assert staging["checkout-v2"]["bucketing"]["salt"] == "11112222333344445555666677778888"
        assert staging["checkout-v2"]["stages"] == [{"name": "imported", "percent": 100}]
        assert staging["api-v3"]["stages"][0]["percent"] == 0  # off in staging

    def test_one_flag_and_an_unknown_environment(self) -> None:
        flag = json.loads(REST.read_text(encoding="utf-8"))["items"][0]
        one = from_launchdarkly(flag, environment="staging")
        assert list(one.document["rollouts"]) == ["checkout-v2"]
        with pytest.raises(PolicyError, match=r"has no environment \"prod\""):
            from_launchdarkly(flag, environment="prod")

    def test_a_flag_without_the_environment_is_reported(self) -> None:
        flags = json.loads(REST.read_text(encoding="utf-8"))
        del flags["items"][1]["environments"]["staging"]
        imported = from_launchdarkly(flags, environment="staging")
        assert "api-v3" not in imported.document["rollouts"]
        assert any("no settings for environment" in u.reason for u in imported.unmapped)

    def test_the_rest_salt_is_required(self) -> None:
        flags = json.loads(REST.read_text(encoding="utf-8"))
        del flags["items"][0]["environments"]["production"]["salt"]
        with pytest.raises(PolicyError, match=r"items\[0\]\.environments\.production\.salt"):
            from_launchdarkly(flags, environment="production")


class TestMapping:
    """Small flags, one behaviour each."""

    def test_the_rollout_keeps_launchdarklys_cohort(self) -> None:
        units = [f"user-{i}" for i in range(3000)]
        data = sdk_data(flag_of("f1", fallthrough=rollout(33_333)),
                        flag_of("f2", fallthrough=rollout(500, seed=987)))  # fmt: skip
        rollouts = Rollouts(from_launchdarkly(data).policy)
        for unit in units:
            assert rollouts.enabled("f1", unit) == ld_in("f1", "salt-f1", unit, 33_333)
            assert rollouts.enabled("f2", unit) == ld_in("f2", "", unit, 500, seed=987)

    @settings(max_examples=60, deadline=None)
    @given(
        key=st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True),
        salt=st.text(max_size=20),
        weight=st.integers(0, 100_000),
        seed=st.none() | st.integers(-(2**31), 2**31),
        units=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=20),
    )
    def test_any_rollout_decides_as_the_formula(
        self, key: str, salt: str, weight: int, seed: int | None, units: list[str]
    ) -> None:
        """For any key, salt, seed and weight, a unit is in iff LaunchDarkly's hash says so."""
        more = {} if seed is None else {"seed": seed}
        imported = from_launchdarkly(sdk_data(flag_of(key, salt=salt, fallthrough=rollout(
            weight, **more))))  # fmt: skip
        (name,) = imported.document["rollouts"]
        rollouts = Rollouts(imported.policy)
        for unit in units:
            assert rollouts.enabled(name, unit) == ld_in(key, salt, unit, weight, seed)

    def test_targets_first_match_wins(self) -> None:
        """A key in two targets gets the first one's variation, as the SDK checks them in order."""
        targets = [{"values": ["a", "b"], "variation": 1}, {"values": ["b", "c"], "variation": 0}]
        imported = from_launchdarkly(sdk_data(flag_of("f", targets=targets)))
        assert imported.document["rollouts"]["f"]["targeting"] == {"allow": ["c"],
                                                                    "deny": ["a", "b"]}  # fmt: skip

    def test_a_non_boolean_flag_without_an_off_variation_is_ambiguous(self) -> None:
        flag = flag_of("f", variations=["a", "b"], offVariation=None, fallthrough=rollout(10))
        imported = from_launchdarkly(sdk_data(flag))
        assert imported.document["rollouts"] == {}
        assert "ambiguous" in imported.unmapped[0].reason

    def test_a_clause_with_operators_that_never_match_is_reported(self) -> None:
        rule = {"variation": 0, "clauses": [{"attribute": "age", "op": "lessThan",
                                             "values": ["ten"]}]}  # fmt: skip
        imported = from_launchdarkly(sdk_data(flag_of("f", rules=[rule])))
        assert "never matches" in imported.unmapped[0].reason

    def test_negated_text_operators_do_not_map(self) -> None:
        rule = {"variation": 0, "clauses": [{"attribute": "email", "op": "endsWith",
                                             "values": ["@x"], "negate": True}]}  # fmt: skip
        imported = from_launchdarkly(sdk_data(flag_of("f", rules=[rule])))
        assert imported.unmapped[0].part == "flags.f.rules[0].clauses[0]"
        assert "negated" in imported.unmapped[0].reason

    def test_combinations_of_values_become_several_segments(self) -> None:
        clauses = [{"attribute": "a", "op": "startsWith", "values": ["x", "y"]},
                   {"attribute": "b", "op": "endsWith", "values": ["1", "2"]}]  # fmt: skip
        imported = from_launchdarkly(
            sdk_data(flag_of("f", rules=[{"variation": 0, "clauses": clauses}]))
        )
        segments = imported.document["segments"]
        assert len(segments) == 4
        rollouts = Rollouts(imported.policy)
        assert rollouts.enabled("f", "u", {"a": "yes", "b": "v2"})
        assert not rollouts.enabled("f", "u", {"a": "no", "b": "v2"})
        many = [{"attribute": f"a{i}", "op": "contains", "values": ["p", "q"]} for i in range(5)]
        imported = from_launchdarkly(
            sdk_data(flag_of("f", rules=[{"variation": 0, "clauses": many}]))
        )
        assert "32 segments" in imported.unmapped[0].reason

    def test_flag_values_are_fixed_rollouts(self) -> None:
        imported = from_launchdarkly({"flagValues": {"on": True, "off": False, "colour": "red"}})
        rollouts = imported.document["rollouts"]
        assert rollouts["on"]["stages"][0]["percent"] == 100
        assert rollouts["off"]["stages"][0]["percent"] == 0
        assert "colour" not in rollouts
        assert imported.unmapped[0].part == "flagValues.colour"

    def test_the_sdk_data_has_one_environment(self) -> None:
        with pytest.raises(PolicyError, match="only for a REST API export"):
            from_launchdarkly(sdk_data(flag_of("f")), environment="production")


SHAPES = [
    ([], "", "must be LaunchDarkly's flag data"),
    ({"features": []}, "", "is not LaunchDarkly flag data"),
    ({"flags": []}, "flags", "must be an object"),
    ({"flags": {"f": 3}}, "flags.f", "must be an object"),
    ({"flags": {"f": {"on": True}}}, "flags.f.key", "is required"),
    (sdk_data(flag_of("f", on="yes")), "flags.f.on", "must be true or false"),
    (sdk_data(flag_of("f", rules={})), "flags.f.rules", "must be a list"),
    (sdk_data(flag_of("f", rules=[1])), "flags.f.rules[0]", "must be an object"),
    (sdk_data(flag_of("f", rules=[{"variation": 0}])), "flags.f.rules[0].clauses", "required"),
    (sdk_data(flag_of("f", rules=[{"clauses": []}])), "flags.f.rules[0]", "variation or a rollout"),
    (sdk_data(flag_of("f", rules=[{"variation": 0, "clauses": [{"op": "in", "values": []}]}])),
     "flags.f.rules[0].clauses[0].attribute", "is required"),
    (sdk_data(flag_of("f", targets=[{"values": ["a", 7], "variation": 0}])),
     "flags.f.targets[0].values[1]", "must be text"),
    (sdk_data(flag_of("f", targets=[{"values": [], "variation": 5}])),
     "flags.f.targets[0].variation", "not the index"),
    (sdk_data(flag_of("f", fallthrough={"rollout": {"variations": [{"variation": 0,
                                                                    "weight": True}]}})),
     "flags.f.fallthrough.rollout.variations[0].weight", "must be an integer"),
    (sdk_data(flag_of("f", fallthrough={"rollout": {"variations": [{"variation": 0,
                                                                    "weight": 100_001}]}})),
     "flags.f.fallthrough.rollout.variations[0].weight", "from 0 to 100000"),
    (sdk_data(flag_of("f", fallthrough={"rollout": {"variations": []}})),
     "flags.f.fallthrough.rollout.variations", "at least one"),
    (sdk_data(flag_of("f", salt=5)), "flags.f.salt", "must be text"),
    (sdk_data(flag_of("odd key!", prerequisites=[{"variation": 0}])),
     'flags["odd key!"].prerequisites[0].key', "is required"),
    ({"items": [{"key": "f"}]}, "items[0].environments", "is required"),
    ({"items": [{"key": "f", "environments": {"p": {}}, "variations": [{"name": "x"}]}]},
     "items[0].variations[0].value", "is required"),
    ({"items": [{"key": "f", "environments": {"p": {"on": True, "_summary": {}}}}]},
     "items[0].environments.p", "summary=0"),
    ({"items": [{"key": "f", "environments": {"p": []}}]}, "items[0].environments.p",
     "must be an object"),
]  # fmt: skip


class TestShape:
    """An export of the wrong shape is refused, naming where."""

    @pytest.mark.parametrize(("data", "path", "message"), SHAPES)
    def test_refused_naming_the_path(self, data: object, path: str, message: str) -> None:
        with pytest.raises(PolicyError) as caught:
            from_launchdarkly(data, source="export.json")
        problem = caught.value.problems[0]
        assert (problem.path, message in problem.message) == (path, True), problem
        assert caught.value.source == "export.json"

    def test_every_bad_flag_is_named(self) -> None:
        data = sdk_data(flag_of("a", on=1), flag_of("b"), flag_of("c", offVariation="x"))
        with pytest.raises(PolicyError) as caught:
            from_launchdarkly(data)
        assert [p.path for p in caught.value.problems] == ["flags.a.on", "flags.c.offVariation"]

    def test_a_key_used_twice_is_refused(self) -> None:
        data = {"flags": {"a": flag_of("x"), "b": flag_of("x")}}
        with pytest.raises(PolicyError, match="used more than once"):
            from_launchdarkly(data)

    def test_unknown_fields_are_ignored(self) -> None:
        flag = flag_of("f", fallthrough=rollout(5000), samplingRatio=1, migration={"x": 1},
                       _site={"href": "/"}, excludeFromSummaries=True)  # fmt: skip
        imported = from_launchdarkly(sdk_data(flag))
        assert imported.unmapped == ()
        assert imported.document["rollouts"]["f"]["stages"][0]["percent"] == 5


class TestHostile:
    """Odd, huge and deep input: a PolicyError or a valid policy, never another error."""

    def test_keys_that_are_not_names_keep_their_bucketing(self) -> None:
        keys = ["new checkout!", "new-checkout", "new/checkout", "  ", "x" * 300, "ünï"]
        imported = from_launchdarkly(sdk_data(*(flag_of(k, fallthrough=rollout(40_000))
                                                for k in keys)))  # fmt: skip
        rollouts = imported.document["rollouts"]
        assert len(rollouts) == len(keys)
        assert sorted(r["bucketing"]["flag_key"] for r in rollouts.values()) == sorted(keys)
        names = list(rollouts)
        assert names[:3] == ["new-checkout-2", "new-checkout", "new-checkout-3"]
        assert rollouts["new-checkout"]["bucketing"]["flag_key"] == "new-checkout"  # its own name
        policy = Rollouts(imported.policy)
        for name, flag in rollouts.items():
            key = flag["bucketing"]["flag_key"]
            for unit in ("u1", "u2", "u3", "u4"):
                assert policy.enabled(name, unit) == ld_in(key, f"salt-{key}", unit, 40_000)

    def test_a_key_the_policy_cannot_hold_is_reported(self) -> None:
        imported = from_launchdarkly(sdk_data(flag_of("k" * 2000), flag_of("ok")))
        assert list(imported.document["rollouts"]) == ["ok"]
        assert imported.unmapped[0].reason.startswith("left out: it is not a valid stagedroll")
        assert "flag_key: must be at most" in imported.unmapped[0].reason

    def test_text_no_file_can_hold_is_reported(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A lone surrogate (JSON allows its escape) in a key or a target: left out, reported."""
        path = tmp_path / "export.json"
        path.write_text(json.dumps(sdk_data(
            flag_of("a\ud800"), flag_of("b", targets=[{"values": ["x\udfff"], "variation": 0}]),
            flag_of("c"))), encoding="utf-8")  # fmt: skip
        imported = import_file("launchdarkly", path)
        assert list(imported.document["rollouts"]) == ["c"]
        assert [u.flag[:1] for u in imported.unmapped] == ["a", "b"]
        for item in imported.unmapped:
            str(item).encode()  # the report prints: its lone surrogates are replaced
            assert "lone surrogate" in item.reason
        imported.to_toml().encode()
        assert main(["import", "launchdarkly", str(path), "--out", str(tmp_path / "p.toml")]) == 0
        assert "2 part(s) not mapped" in capsys.readouterr().err

    def test_odd_values_in_clauses(self) -> None:
        deep: Any = "x"
        for _ in range(10_000):
            deep = [deep]
        clauses = [[{"attribute": "a", "op": "in", "values": [deep]}],
                   [{"attribute": "a", "op": "in", "values": [math.nan]}],
                   [{"attribute": "a", "op": "in", "values": [10**40]}],
                   [{"attribute": "a", "op": "greaterThan", "values": [math.inf, 3]}],
                   [{"attribute": "/a/b", "op": "in", "values": ["x"], "contextKind": "user"}],
                   [{"attribute": "kind", "op": "in", "values": ["user"]}],
                   [{"attribute": "a", "op": "frobnicates", "values": ["x"]}],
                   [{"attribute": "a", "op": "semVerEqual", "values": ["v1.2.3", "01.2"]}],
                   [{"attribute": "a", "op": "in", "values": []}]]  # fmt: skip
        rules = [{"variation": 0, "clauses": c} for c in clauses]
        imported = from_launchdarkly(sdk_data(flag_of("f", rules=rules)))
        imported.policy  # noqa: B018 - validates
        assert [u.part for u in imported.unmapped] == [
            f"flags.f.rules[{i}].clauses[0]" for i in range(9) if i != 3
        ]
        assert imported.document["segments"] == {"f.rule3": {"rules": [
            {"attribute": "a", "op": "gt", "value": 3}]}}  # fmt: skip
        imported.to_toml()

    def test_a_huge_export_stays_within_a_policys_bounds(self) -> None:
        """Thousands of flags and long target lists: what fits is imported, the rest reported."""
        flags = [flag_of(f"flag-{i}", fallthrough=rollout(i * 7 % 100_001)) for i in range(3000)]
        flags[0]["targets"] = [{"values": [f"user-{i}" for i in range(30_000)], "variation": 0}]
        flags[1]["targets"] = [{"values": [f"user-{i}" for i in range(60_000)], "variation": 0}]
        imported = from_launchdarkly(sdk_data(*flags))
        rollouts = imported.document["rollouts"]
        assert len(rollouts["flag-0"]["targeting"]["allow"]) == 30_000
        reported = {u.flag for u in imported.unmapped if "50,000 values" in u.reason}
        assert "flag-1" in reported
        assert set(rollouts) | reported == {f["key"] for f in flags}
        assert len(rollouts) > 500
        imported.policy  # noqa: B018 - validates
        assert tomllib.loads(imported.to_toml()) == imported.document

    @settings(max_examples=150, deadline=None)
    @given(st.data())
    def test_mutated_exports_never_break(self, data: st.DataObject) -> None:
        """Any value anywhere in a flag: a PolicyError naming where, or a policy that validates."""
        scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
        values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                              | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                              max_leaves=8)  # fmt: skip
        export = json.loads(EXPORT.read_text(encoding="utf-8"))
        for _ in range(data.draw(st.integers(1, 4))):
            target: Any = export
            while isinstance(target, dict | list) and target:
                keys = list(target) if isinstance(target, dict) else list(range(len(target)))
                key = data.draw(st.sampled_from(keys))
                if not isinstance(target[key], dict | list) or data.draw(st.booleans()):
                    target[key] = data.draw(values)
                    break
                target = target[key]
        try:
            imported = from_launchdarkly(copy.deepcopy(export))
        except PolicyError as exc:
            refused = exc
        else:
            imported.policy  # noqa: B018 - validates
            assert tomllib.loads(imported.to_toml()) == imported.document
            return
        assert refused.problems


class TestCli:
    """``stagedroll import launchdarkly FILE``."""

    def test_prints_a_policy_and_the_report(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["import", "launchdarkly", str(EXPORT)]) == 0
        out, err = capsys.readouterr()
        load_policy(tomllib.loads(out))
        assert "stagedroll: not mapped: recommendations: flags.recommendations.rules[0]:" in err
        assert "13 rollouts imported from launchdarkly, 15 part(s) not mapped" in err

    def test_out_json_and_strict(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        target = tmp_path / "rollouts.toml"
        assert main(["import", "launchdarkly", str(EXPORT), "--out", str(target)]) == 0
        assert capsys.readouterr().out == ""
        load_policy(target)
        assert main(["import", "launchdarkly", str(EXPORT), "--strict"]) == 1
        capsys.readouterr()
        assert main(["--json", "import", "launchdarkly", str(EXPORT)]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["vendor"] == "launchdarkly"
        assert len(report["unmapped"]) == 15
        load_policy(report["policy"])

    def test_rest_export_with_an_environment(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["import", "launchdarkly", str(REST)]) == 1  # several environments
        assert "environments: has the settings of 2 environments" in capsys.readouterr().err
        argv = ["import", "launchdarkly", str(REST), "--source-env", "staging", "--strict"]
        assert main(argv) == 1  # the archived flag is reported
        out = capsys.readouterr().out
        assert tomllib.loads(out)["rollouts"]["checkout-v2"]["bucketing"]["salt"].startswith("1111")
        clean = tmp_path / "one.json"
        clean.write_text(json.dumps({"items": json.loads(REST.read_text())["items"][:2]}))
        argv = ["import", "launchdarkly", str(clean), "--source-env", "production", "--strict"]
        assert main(argv) == 0
