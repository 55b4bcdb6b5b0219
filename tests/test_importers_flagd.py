"""Tests of the flagd importer: its policy decides as flagd's own SDK did, unit for unit."""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mmh3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagedroll import Bucketing, PolicyError, Rollouts, load_policy, parse_policy
from stagedroll.cli import main
from stagedroll.importers import Imported, from_flagd, import_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # the backport, a dependency on Python 3.10
    import tomli as tomllib

HERE = Path(__file__).resolve().parent / "data" / "imports" / "flagd"
EXPORT = HERE / "export.json"
EXPECTED = json.loads((HERE / "expected.json").read_text(encoding="utf-8"))
FLAGS = json.loads(EXPORT.read_text(encoding="utf-8"))["flags"]
UNITS: list[str] = EXPECTED["units"]

# The new path of the flags that are not boolean, as the importer reports it took them.
NEW_PATH = {"theme-v2": "dark", "checkout-copy": "long"}
LEFT_OUT = {"recommendations", "onboarding", "split-thirds"}


def attributes(index: int) -> dict[str, Any]:
    """The attributes unit ``index`` had when the SDK evaluated it (expected.json's rule)."""
    found = {k: v[index % len(v)] for k, v in EXPECTED["attributes"].items()}
    return {k: v for k, v in found.items() if v is not None}


def vendor_on(flag: str) -> list[bool]:
    """Whether the SDK served each unit the flag's new path."""
    variants: dict[str, Any] = FLAGS[flag]["variants"]
    if all(isinstance(value, bool) for value in variants.values()):
        new = {name for name, value in variants.items() if value is True}
    else:
        new = {NEW_PATH[flag]}
    names = EXPECTED["flags"][flag]["variants"]
    return [c != "." and names[int(c)] in new for c in EXPECTED["flags"][flag]["served"]]


def number(value: object) -> float:
    """A value as JsonLogic reads it for ``>=``: missing is 0, text is parsed, else NaN."""
    if value is None:
        return 0.0
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return math.nan


# Where a reported part changes who gets the flag: the units it concerns, as flagd decides.
AFFECTED: dict[str, Callable[[str, Mapping[str, Any]], bool]] = {
    # deny list after a segment: flagd's earlier rule wins for staff in the list
    "header-v3": lambda unit, a: (
        unit in {"user-5", "user-10", "user-11"}
        and str(a.get("email", "")).endswith("@example.com")
    ),
    # the default variant (on) for the empty targeting key
    "loyalty-points": lambda unit, a: unit == "",
    # the rule that restricts the rollout: country == "CN" is off in flagd
    "free-shipping": lambda unit, a: a.get("country") == "CN",
    # a percentage of the "pro" plan
    "price-test": lambda unit, a: a.get("plan") == "pro",
    # JsonLogic's >= on age (text read as a number, missing as 0)
    "age-gate": lambda unit, a: number(a.get("age")) >= 21,
    # bucket_by country: flagd hashes "team-dashboard:null" for a unit without a country
    "team-dashboard": lambda unit, a: "country" not in a,
    # a bare var: flagd serves the default to the empty targeting key, stagedroll hashes "null"
    "referral-bonus": lambda unit, a: unit == "",
}


@pytest.fixture(name="imported", scope="module")
def _imported() -> Imported:
    return import_file("flagd", EXPORT)


@pytest.fixture(name="rollouts", scope="module")
def _rollouts(imported: Imported) -> Rollouts:
    return Rollouts(imported.policy)


def cbor_text(value: str) -> bytes:
    """The CBOR encoding of a text, as flagd-core's cbor2 writes it."""
    data = value.encode("utf-8")
    size = len(data)
    if size < 24:
        return bytes([0x60 + size]) + data
    width = 1 if size < 256 else 2 if size < 65536 else 4
    return bytes([0x77 + width.bit_length()]) + size.to_bytes(width, "big") + data


def flagd_hash(flag_key: str, unit: str) -> int:
    """flagd-core 2's hash of a unit: MurmurHash3 of the CBOR list [flag_key, unit]."""
    return mmh3.hash(b"\x82" + cbor_text(flag_key) + cbor_text(unit), 0, False)


def text_bucket(value: str) -> int:
    """flagd-core 2's bucket of 100 for a bucketing expression whose value is ``value``."""
    return (mmh3.hash(cbor_text(value), 0, False) * 100) >> 32


def flag_document(flags: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A flag definition document holding ``flags``."""
    return {"$schema": "https://flagd.dev/schema/v0/flags.json", "flags": flags, **extra}


def boolean_flag(
    targeting: object = None, *, default: object = "off", **extra: Any
) -> dict[str, Any]:
    """A boolean flag with variants on/off, and ``targeting`` if given."""
    flag: dict[str, Any] = {"state": "ENABLED", "variants": {"on": True, "off": False}}
    flag["defaultVariant"] = default
    if targeting is not None:
        flag["targeting"] = targeting
    return {**flag, **extra}


def reasons(imported: Imported) -> dict[tuple[str, str], str]:
    return {(u.flag, u.part): u.reason for u in imported.unmapped}


class TestExport:
    """The realistic export: the policy validates and decides as flagd's SDK did."""

    def test_expected_was_made_from_this_export(self) -> None:
        """expected.json records the export it evaluated: a stale one fails here."""
        digest = hashlib.sha256(EXPORT.read_bytes()).hexdigest()
        assert EXPECTED["export_sha256"] == digest
        assert (EXPECTED["sdk"], EXPECTED["flagd_core"]) == ("openfeature-provider-flagd", "2.0.0")
        assert len(UNITS) > 2000

    def test_policy_validates_with_the_flags_that_map(self, imported: Imported) -> None:
        """Every flag is a rollout but the four that cannot keep their cohort."""
        policy = imported.policy
        assert set(policy.rollouts) == set(FLAGS) - LEFT_OUT
        assert imported.vendor == "flagd"
        checkout = imported.document["rollouts"]["new-checkout"]
        assert checkout["bucketing"] == {"scheme": "flagd", "flag_key": "new-checkout"}
        assert [s["percent"] for s in checkout["stages"]] == [25, 50, 100]

    def test_percents_and_targeting(self, imported: Imported) -> None:
        """Stage 0 runs each flag's percent now, with its lists and segments."""
        rollouts = imported.document["rollouts"]
        percents = {name: r["stages"][0]["percent"] for name, r in rollouts.items()}
        assert percents == {
            "new-checkout": 25, "new-search": 5, "beta-banner": 50, "mobile-nav": 10,
            "header-v3": 60, "loyalty-points": 75, "partner-api": 15, "checkout-copy": 0,
            "dark-mode": 0, "maintenance-banner": 0, "legacy-cleanup": 100,
            "search-suggestions": 0, "theme-v2": 40, "free-shipping": 20, "price-test": 0,
            "age-gate": 30, "search-ranking": 50, "spring-sale-banner": 40,
            "team-dashboard": 50, "referral-bonus": 40,
        }  # fmt: skip
        search = rollouts["new-search"]["targeting"]
        assert search == {"allow": ["qa-alice", "qa-bob", "user-7"], "deny": ["user-13", "user-99"]}
        assert rollouts["partner-api"]["targeting"] == {"allow": ["user-42", "user-43"]}
        assert rollouts["mobile-nav"]["stages"][0]["segments"] == [
            "mobile-nav-1", "mobile-nav-2", "mobile-nav-3"]  # fmt: skip
        assert imported.document["segments"]["mobile-nav-1"]["rules"] == [
            {"attribute": "app_version", "op": "semver_ge", "value": "2.1.0"},
            {"attribute": "country", "op": "in", "value": ["DE", "AT", "CH"]},
        ]
        # Custom bucketing expressions: a template, with bucket_by where an attribute is read.
        templates = {name: (r.get("bucket_by"), r["bucketing"]) for name, r in rollouts.items()
                     if "template" in r.get("bucketing", {})}  # fmt: skip
        assert templates == {
            "search-ranking": (None, {"scheme": "flagd", "template": "search-ranking{unit}"}),
            "spring-sale-banner": (None, {"scheme": "flagd", "template": "spring-sale:{unit}"}),
            "team-dashboard": ("country", {"scheme": "flagd", "template": "team-dashboard:{unit}"}),
            "referral-bonus": (None, {"scheme": "flagd", "template": "{unit}"}),
        }
        # A flag that serves one variant to everyone else has no cohort: no flagd bucketing.
        assert "bucketing" not in rollouts["legacy-cleanup"]
        assert "bucketing" not in rollouts["dark-mode"]

    @pytest.mark.parametrize("flag", sorted(set(FLAGS) - LEFT_OUT - set(AFFECTED)))
    def test_decisions_equal_the_sdk(self, rollouts: Rollouts, flag: str) -> None:
        """A flag with nothing reported that changes who gets it: same answer, every unit."""
        vendor = vendor_on(flag)
        ours = [rollouts.enabled(flag, unit, attributes(i)) for i, unit in enumerate(UNITS)]
        differ = [UNITS[i] for i, (v, o) in enumerate(zip(vendor, ours, strict=True)) if v != o]
        assert differ == []
        assert 0 < sum(ours) < len(UNITS) or flag in {
            "dark-mode", "maintenance-banner", "legacy-cleanup", "search-suggestions"}  # fmt: skip

    @pytest.mark.parametrize("flag", sorted(AFFECTED))
    def test_differences_are_the_reported_ones(self, rollouts: Rollouts, flag: str) -> None:
        """Where a part did not map, only the units it concerns differ, and some do."""
        affected = AFFECTED[flag]
        differ = [
            unit
            for i, (unit, on) in enumerate(zip(UNITS, vendor_on(flag), strict=True))
            if rollouts.enabled(flag, unit, attributes(i)) != on
        ]
        assert differ
        assert all(affected(unit, attributes(UNITS.index(unit))) for unit in differ)

    def test_report_says_what_and_why(self, imported: Imported) -> None:
        """Each part that did not map is reported, with the reason and what happens instead."""
        found = reasons(imported)
        expected = {
            ("header-v3", "flags.header-v3.targeting.if[2]"): "deny list wins",
            ("loyalty-points", "flags.loyalty-points.defaultVariant"): "empty unit",
            ("dark-mode", "flags.dark-mode.state"): "DISABLED",
            ("theme-v2", "flags.theme-v2.variants"): "taken to be 'dark'",
            ("checkout-copy", "flags.checkout-copy.variants"): "taken to be 'long'",
            ("free-shipping", "flags.free-shipping.targeting.if[0]"): "restricts the rollout",
            ("price-test", "flags.price-test.targeting.if[0]"): "percentage of a group",
            ("age-gate", "flags.age-gate.targeting.if[0]"): "a missing attribute is 0",
            ("recommendations", "flags.recommendations.targeting.fractional"): "experiment",
            ("onboarding", "flags.onboarding.targeting.fractional"): "after the old one",
            ("team-dashboard", "flags.team-dashboard.targeting.fractional[0]"): "empty text",
            ("referral-bonus", "flags.referral-bonus.targeting.fractional[0]"): "text 'null'",
            ("split-thirds", "flags.split-thirds.targeting.fractional"): "33.33 %",
        }
        assert set(found) == set(expected)
        for part, words in expected.items():
            assert words in found[part], part
        for flag in LEFT_OUT:
            assert any("left out of the policy" in r for (f, _), r in found.items() if f == flag)
        for part in [p for p in expected if p[0] in {"free-shipping", "price-test"}]:
            assert "units matching it get what the rest" in found[part]
        dashboard = [u.reason for u in imported.unmapped if u.flag == "team-dashboard"]
        assert len(dashboard) == 2
        assert (
            "text 'null' in its place, which gives the new path, to a unit without"
            in (dashboard[0])
        )

    def test_toml_round_trips(self, imported: Imported, tmp_path: Path) -> None:
        """to_toml() reads back through tomllib as the same document, and loads."""
        text = imported.to_toml()
        assert tomllib.loads(text) == imported.document
        assert text.startswith("# Imported from flagd")
        assert "#   split-thirds: flags.split-thirds.targeting.fractional:" in text
        path = tmp_path / "rollouts.toml"
        path.write_text(text, encoding="utf-8")
        assert load_policy(path) == imported.policy
        assert json.loads(imported.to_json()) == imported.document


class TestWeights:
    """A fractional of any total weight is a whole percent of flagd bucketing."""

    @given(
        h=st.integers(0, 2**32 - 1),
        divisor=st.sampled_from([1, 2, 4, 5, 10, 20, 25, 50, 100]),
        data=st.data(),
    )
    def test_weights_are_the_percent(self, h: int, divisor: int, data: st.DataObject) -> None:
        """(h * total) >> 32 < w exactly when (h * 100) >> 32 < 100 * w / total."""
        scale = data.draw(st.integers(1, (2**31 - 1) // divisor))
        share = data.draw(st.integers(0, divisor))
        total, weight = divisor * scale, share * scale
        assert ((h * total) >> 32 < weight) == ((h * 100) >> 32 < 100 * weight // total)

    @settings(max_examples=60)
    @given(
        key=st.text(min_size=1, max_size=30),
        units=st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=20),
        divisor=st.sampled_from([1, 4, 20, 50, 100]),
        data=st.data(),
    )
    def test_imported_rollout_is_flagds_fractional(
        self, key: str, units: list[str], divisor: int, data: st.DataObject
    ) -> None:
        """The imported rollout serves a unit iff flagd's formula does, whatever the weights."""
        scale = data.draw(st.integers(1, 1000))
        total, weight = divisor * scale, data.draw(st.integers(0, divisor)) * scale
        targeting = {"fractional": [["on", weight], ["off", total - weight]]}
        imported = from_flagd(flag_document({key: boolean_flag(targeting)}))
        ((name, rollout),) = imported.document["rollouts"].items()
        assert rollout["stages"][0]["percent"] == 100 * weight // total
        rollouts = Rollouts(imported.policy)
        for unit in units:
            vendor = (flagd_hash(key, unit) * total) >> 32 < weight
            assert rollouts.enabled(name, unit) is vendor

    def test_scheme_hashes_what_flagd_hashes(self) -> None:
        """The public flagd scheme places a unit at flagd-core's bucket of 100."""
        scheme = Bucketing(scheme="flagd", flag_key="new-checkout").for_rollout("x")
        for unit in ["user-1", "ünïcode-ß", "x" * 300]:
            assert scheme.position(unit) == (flagd_hash("new-checkout", unit) * 100) >> 32

    @pytest.mark.parametrize(
        ("arms", "percent"),
        [
            ([["on", 0], ["off", 100]], 0),
            ([["off", 0], ["on", 100]], 100),  # the order of a zero weight does not matter
            ([["on", 1], ["off", 0]], 100),
            ([["on"], ["off"]], 50),  # a missing weight is 1
            ([["on", 3], ["off", -7]], 100),  # flagd clamps a negative weight to 0
            ([[True, 1], [False, 3]], 25),  # a boolean variant names "true" / "false"
        ],
    )
    def test_weights_read_as_flagd_reads_them(self, arms: list[Any], percent: int) -> None:
        """Missing, zero, negative weights and boolean variant names, as flagd-core reads them."""
        flag = boolean_flag({"fractional": arms})
        if isinstance(arms[0][0], bool):
            flag["variants"] = {"true": True, "false": False}
            flag["defaultVariant"] = "false"
        imported = from_flagd(flag_document({"f": flag}))
        assert imported.document["rollouts"]["f"]["stages"][0]["percent"] == percent

    @pytest.mark.parametrize(
        ("arms", "words"),
        [
            ([["on", 25.0], ["off", 75]], "not an integer"),
            ([["on", True], ["off", 75]], "not an integer"),
            ([["on", 2**31], ["off", 1]], "over 2**31 - 1"),
            ([["on", 0], ["off", 0]], "total weight of 0"),
            ([["on", 25], ["off", 70], ["maybe", 5]], "neither the new path nor the old"),
            ([["on", 25, 1], ["off", 75]], "not a [variant, weight] pair"),
            ([[{"var": "x"}, 25], ["off", 75]], "computes its variant"),
            ([{"cat": [{"var": "a"}, {"var": "b"}]}, ["on", 25], ["off", 75]], "reads both"),
            ([{"var": "targetingKey"}, ["on", 25.0], ["off", 75]], "argument 1 has a weight"),
            ([], "no arguments"),
        ],
    )
    def test_fractionals_that_do_not_map(self, arms: list[Any], words: str) -> None:
        """A fractional flagd-core rejects, or that no percent expresses: the flag is left out."""
        imported = from_flagd(flag_document({"f": boolean_flag({"fractional": arms})}))
        assert imported.document["rollouts"] == {}
        ((flag, part, reason),) = [(u.flag, u.part, u.reason) for u in imported.unmapped]
        assert (flag, part) == ("f", "flags.f.targeting.fractional")
        assert words in reason
        assert "left out of the policy" in reason


def bucketed_on(expression: object, percent: int, *, default: str = "off") -> Imported:
    """The import of flag ``f``: a fractional at ``percent`` on a bucketing expression."""
    targeting = {"fractional": [expression, ["on", percent], ["off", 100 - percent]]}
    return from_flagd(flag_document({"f": boolean_flag(targeting, default=default)}))


TEXTS = st.text(max_size=12).filter(lambda text: "{unit}" not in text)


class TestExpressions:
    """A custom bucketing expression is a template: the rollout hashes what flagd hashes."""

    @settings(max_examples=60)
    @given(
        key=TEXTS.filter(bool),
        before=TEXTS,
        after=TEXTS,
        with_key=st.booleans(),
        percent=st.integers(0, 100),
        units=st.lists(st.text(max_size=20), min_size=1, max_size=10),
    )
    def test_targeting_key_in_a_text(
        self, *, key: str, before: str, after: str, with_key: bool, percent: int, units: list[str]
    ) -> None:
        """flagd serves a unit iff the bucket of the expression's text is below the percent.

        The empty targeting key reaches the expression as null, which cat writes "null".
        """
        head: list[Any] = [{"var": "$flagd.flagKey"}] if with_key else []
        parts = [*head, before, {"var": "targetingKey"}, after]
        targeting = {"fractional": [{"cat": parts}, ["on", percent], ["off", 100 - percent]]}
        imported = from_flagd(flag_document({key: boolean_flag(targeting)}))
        assert imported.unmapped == ()
        ((name, rollout),) = imported.document["rollouts"].items()
        prefix = (key if with_key else "") + before
        assert rollout["bucketing"] == {"scheme": "flagd", "template": f"{prefix}{{unit}}{after}"}
        rollouts = Rollouts(imported.policy)
        for unit in [*units, ""]:
            text = prefix + (unit or "null") + after
            assert rollouts.enabled(name, unit) is (text_bucket(text) < percent)

    @pytest.mark.parametrize(
        ("value", "text"),
        [("DE", "DE"), ("", ""), (7, "7"), (-12, "-12"), (True, None), (1.0, None), (None, None)],
    )
    def test_attribute_is_bucket_by(self, value: object, text: str | None) -> None:
        """An attribute in the expression is bucket_by: text and integers as cat writes them.

        A unit without it, or with a boolean or a number that is not an integer, is no unit
        (off); flagd's cat writes those "null", "True", "1" (see docs/migrating/flagd.md).
        The empty text is bucketed as "null" is: the report says where that differs.
        """
        imported = bucketed_on({"cat": ["shop:", {"var": "region"}]}, 100)
        rollout = imported.document["rollouts"]["f"]
        assert (rollout["bucket_by"], rollout["bucketing"]["template"]) == ("region", "shop:{unit}")
        attributes = {} if value is None else {"region": value}
        rollouts = Rollouts(imported.policy)
        assert rollouts.enabled("f", "anyone", attributes) is (text is not None)
        for percent in (13, 50, 87):
            rollouts = Rollouts(bucketed_on({"cat": ["shop:", {"var": "region"}]}, percent).policy)
            expected = text is not None and text_bucket(f"shop:{text or 'null'}") < percent
            assert rollouts.enabled("f", "anyone", attributes) is expected

    @pytest.mark.parametrize("percent", range(101))
    @pytest.mark.parametrize("default", ["on", "off"])
    def test_notes_only_where_the_answers_differ(self, percent: int, default: str) -> None:
        """A unit without the key or attribute is reported only where flagd answers otherwise."""
        bare = bucketed_on({"var": "targetingKey"}, percent, default=default)
        # flagd serves the default variant to the empty unit; stagedroll hashes "null"
        differs = (text_bucket("null") < percent) != (default == "on")
        assert [u.part for u in bare.unmapped] == ["flags.f.targeting.fractional[0]"] * differs
        assert Rollouts(bare.policy).enabled("f", "") is (text_bucket("null") < percent)
        cat = bucketed_on({"cat": ["p-", {"var": "team"}]}, percent, default=default)
        # flagd hashes "p-null" for a unit without a team, stagedroll turns it off;
        # flagd hashes "p-" for an empty team, stagedroll "p-null"
        missing = text_bucket("p-null") < percent
        empty = (text_bucket("p-") < percent) != missing
        reasons = [u.reason for u in cat.unmapped]
        assert [("without 'team'" in r, "empty text" in r) for r in reasons] == [
            (True, False)] * missing + [(False, True)] * empty  # fmt: skip
        assert not Rollouts(cat.policy).enabled("f", "u", {})
        keyed = bucketed_on({"cat": ["p-", {"var": "targetingKey"}]}, percent, default=default)
        assert keyed.unmapped == ()  # the empty unit hashes "p-null" in both

    @pytest.mark.parametrize(
        ("expression", "words"),
        [
            ({"cat": ["{unit}", {"var": "targetingKey"}]}, "holds the text {unit}"),
            ({"cat": ["{un", "it}", {"var": "a"}]}, "appear twice"),
            ({"cat": [{"var": "a"}, {"var": "targetingKey"}]}, "reads both"),
            ({"cat": ["x", {"var": "$flagd.flagKey"}]}, "neither the targeting key"),
            ("fixed", "is 'fixed'; a cat of texts and vars"),
            ({"cat": [{"var": "$flagd.timestamp"}, {"var": "a"}]}, "'$flagd.timestamp'"),
            ({"cat": [{"var": "user.id"}]}, "'user.id'"),
            ({"cat": [1, {"var": "a"}]}, "is 1, not text"),
            ({"cat": [{"var": ["a", "x"]}]}, "an operation 'var', not text"),
            ({"cat": [{"cat": ["a", {"var": "b"}]}]}, "an operation 'cat', not text"),
            ({"substr": [{"var": "a"}, 0, 4]}, "an operation 'substr'"),
            ({"cat": ["x" * 1020, {"var": "a"}]}, "not one a template can hold"),
        ],
    )
    def test_expressions_that_do_not_map(self, expression: object, words: str) -> None:
        """Anything but texts, the flag's key and one unit is reported; the flag is left out."""
        imported = bucketed_on(expression, 25)
        assert imported.document["rollouts"] == {}
        ((unmapped),) = imported.unmapped
        assert unmapped.part == "flags.f.targeting.fractional"
        assert "custom expression" in unmapped.reason
        assert words in unmapped.reason

    def test_flag_key_holding_the_placeholder(self) -> None:
        """A flag key written into the template may not hold {unit} either."""
        targeting = {
            "fractional": [
                {"cat": [{"var": "$flagd.flagKey"}, {"var": "targetingKey"}]},
                ["on", 1],
                ["off", 1],
            ]
        }
        imported = from_flagd(flag_document({"a{unit}": boolean_flag(targeting)}))
        assert imported.document["rollouts"] == {}
        assert "holds the text {unit}" in imported.unmapped[0].reason

    def test_bucket_by_with_lists_and_segments(self) -> None:
        """With bucket_by, key lists do not map, and segments miss units without the attribute."""
        chain = [{"in": [{"var": "targetingKey"}, ["qa-1"]]}, "on",
                 {"===": [{"var": "plan"}, "pro"]}, "on",
                 {"fractional": [{"var": "org"}, ["on", 10], ["off", 90]]}]  # fmt: skip
        imported = from_flagd(flag_document({"f": boolean_flag({"if": chain})}))
        rollout = imported.document["rollouts"]["f"]
        assert "targeting" not in rollout
        assert rollout["stages"][0]["segments"] == ["f-1"]
        found = reasons(imported)
        assert "allow and deny lists would match" in found[("f", "flags.f.targeting.if[0]")]
        assert "before its segments" in found[("f", "flags.f.targeting.if[2]")]
        rollouts = Rollouts(imported.policy)
        assert rollouts.enabled("f", "u", {"plan": "pro", "org": "acme"})
        assert not rollouts.enabled("f", "u", {"plan": "pro"})  # the reported difference


class TestTargeting:
    """What maps from an if chain, what does not, and why."""

    def imported(self, *chain: object, default: str = "off") -> Imported:
        return from_flagd(flag_document({"f": boolean_flag({"if": list(chain)}, default=default)}))

    def test_ids_in_order(self) -> None:
        """An id decided by an earlier rule stays there; empty and non-text keys never match."""
        imported = self.imported(
            {"in": [{"var": "targetingKey"}, ["a", "b", "", 7]]}, "on",
            {"or": [{"===": ["b", {"var": "targetingKey"}]},
                    {"==": [{"var": "targetingKey"}, "c"]}]}, "off",
            "off",
        )  # fmt: skip
        rollout = imported.document["rollouts"]["f"]
        assert rollout["targeting"] == {"allow": ["a", "b"], "deny": ["c"]}
        assert rollout["stages"][0]["percent"] == 0
        assert imported.unmapped == ()

    def test_default_answers(self) -> None:
        """An if without an else serves the default variant (here the new path) to the rest."""
        imported = self.imported({"in": [{"var": "targetingKey"}, ["x"]]}, "off", default="on")
        rollout = imported.document["rollouts"]["f"]
        assert rollout["stages"][0]["percent"] == 100
        assert rollout["targeting"] == {"deny": ["x"]}
        assert Rollouts(imported.policy).enabled("f", "")  # flagd serves the default to it too

    @pytest.mark.parametrize(
        ("condition", "rule"),
        [
            ({"===": [{"var": "n"}, 5]}, {"attribute": "n", "op": "eq", "value": 5}),
            ({"==": ["gold", {"var": "tier"}]}, {"attribute": "tier", "op": "eq", "value": "gold"}),
            ({"in": [{"var": "c"}, ["DE", 1]]}, {"attribute": "c", "op": "in", "value": ["DE", 1]}),
            ({"in": ["@x", {"var": "e"}]}, {"attribute": "e", "op": "contains", "value": "@x"}),
            ({"ends_with": [{"var": "e"}, ".io"]},
             {"attribute": "e", "op": "suffix", "value": ".io"}),
            ({"sem_ver": [{"var": "v"}, "<", "v2.0"]},
             {"attribute": "v", "op": "semver_lt", "value": "v2.0"}),
        ],
    )  # fmt: skip
    def test_rules_that_map(self, condition: object, rule: dict[str, Any]) -> None:
        """A comparison whose meaning is the same in flagd and stagedroll becomes a segment."""
        imported = self.imported(condition, "on", "off")
        assert imported.unmapped == ()
        assert imported.document["segments"]["f-1"]["rules"] == [rule]
        assert imported.document["rollouts"]["f"]["stages"][0]["segments"] == ["f-1"]

    @pytest.mark.parametrize(
        ("condition", "words"),
        [
            ({"!=": [{"var": "a"}, "x"]}, "without the attribute"),
            ({"<": [{"var": "a"}, 3]}, "a missing attribute is 0"),
            ({"==": [{"var": "a"}, "5"]}, "converts text to numbers"),
            ({"==": [{"var": "a"}, True]}, "converts text to numbers"),
            ({"===": [{"var": "a.b"}, "x"]}, "nested attribute"),
            ({"===": [{"var": ["a", "dflt"]}, "x"]}, "does not compare an attribute"),
            ({"starts_with": [{"var": "targetingKey"}, "qa-"]}, "targetingKey"),
            ({"===": [{"var": "$flagd.timestamp"}, 1]}, "$flagd.timestamp"),
            ({"sem_ver": [{"var": "v"}, "^", "1.0.0"]}, "^ or ~"),
            ({"sem_ver": [{"var": "v"}, ">=", "V1.0.0"]}, "^ or ~, or with a version"),
            ({"in": [{"var": "a"}, "abc"]}, "part of a list or text"),
            ({"and": [{"or": [{"===": [{"var": "a"}, 1]}]}]}, "nests and/or"),
            ({"===": [{"var": "a"}, math.nan]}, "not text, a whole or finite number"),
            ({"===": [{"var": "a"}, 2**70]}, "not text, a whole or finite number"),
            ({"in": [{"var": "a"}, []]}, "which a rule cannot hold"),
            ({"some": [{"var": "a"}, {"==": [1, 1]}]}, "'some'"),
            ({"$ref": "nowhere"}, "names no evaluator"),
            (True, "is True"),
        ],
    )
    def test_rules_that_do_not_map(self, condition: object, words: str) -> None:
        """A comparison flagd decides otherwise: reported, and its units are bucketed."""
        imported = self.imported(condition, "on", {"fractional": [["on", 10], ["off", 90]]})
        ((unmapped),) = imported.unmapped
        assert unmapped.part == "flags.f.targeting.if[0]"
        assert words in unmapped.reason
        assert "bucketed like everyone else" in unmapped.reason
        stage = imported.document["rollouts"]["f"]["stages"][0]
        assert stage == {"name": "imported", "percent": 10}

    @pytest.mark.parametrize(
        ("answer", "words"),
        [
            ({"fractional": [["on", 5], ["off", 95]]}, "percentage of a group"),
            ("maybe", "neither the new path nor the old"),
            ({"if": [True, "on", "off"]}, "nested if"),
            ({"cat": ["o", "n"]}, "nested rule"),
        ],
    )
    def test_answers_that_do_not_map(self, answer: object, words: str) -> None:
        """A branch serving a share, a third variant or a computed answer is reported."""
        imported = self.imported({"===": [{"var": "a"}, 1]}, answer, "off")
        ((unmapped),) = imported.unmapped
        assert (unmapped.part, words in unmapped.reason) == ("flags.f.targeting.if[0]", True)

    def test_else_if_chains_flatten(self) -> None:
        """An if in the else position continues the chain, with the paths it is at."""
        imported = self.imported(
            {"in": [{"var": "targetingKey"}, ["a"]]}, "on",
            {"if": [{"!=": [{"var": "x"}, 1]}, "on", {"fractional": [["on", 20], ["off", 80]]}]},
        )  # fmt: skip
        assert [u.part for u in imported.unmapped] == ["flags.f.targeting.if[2].if[0]"]
        assert imported.document["rollouts"]["f"]["stages"][0]["percent"] == 20

    def test_refs_resolve_as_flagd_core_substitutes_them(self) -> None:
        """A $ref inside an evaluator reaches only a later evaluator; flagd leaves the rest."""
        condition = {"===": [{"var": "plan"}, "pro"]}
        later = {"first": {"$ref": "second"}, "second": condition}
        earlier = {"second": condition, "first": {"$ref": "second"}}
        for evaluators, maps in ((later, True), (earlier, False)):
            document = flag_document(
                {"f": boolean_flag({"if": [{"$ref": "first"}, "on", "off"]})},
                **{"$evaluators": evaluators},
            )
            imported = from_flagd(document)
            assert ("segments" in imported.document) is maps
            assert bool(imported.unmapped) is not maps

    def test_non_boolean_two_variants(self) -> None:
        """The variant that is not the default is the new path, and the report says so."""
        flag = {"state": "ENABLED", "variants": {"a": "x", "b": "y"}, "defaultVariant": "a",
                "targeting": {"if": [{"===": [{"var": "c"}, "DE"]}, "b", "a"]}}  # fmt: skip
        imported = from_flagd(flag_document({"f": flag}))
        ((unmapped),) = imported.unmapped
        assert "taken to be 'b'" in unmapped.reason
        assert imported.document["rollouts"]["f"]["stages"][0]["segments"] == ["f-1"]

    def test_non_boolean_without_a_new_path(self) -> None:
        """Three variants and no fractional: which is new cannot be told, so it is left out."""
        flag = {"state": "ENABLED", "variants": {"a": 1, "b": 2, "c": 3}, "defaultVariant": "a"}
        imported = from_flagd(flag_document({"f": flag}))
        assert imported.document["rollouts"] == {}
        assert "left out" in imported.unmapped[0].reason

    def test_default_that_is_a_third_variant(self) -> None:
        """A rule answering null serves the default; a third variant there is reported."""
        flag = {"state": "ENABLED", "variants": {"dark": 1, "classic": 2, "legacy": 3},
                "defaultVariant": "legacy", "targeting": {"if": [
                    {"===": [{"var": "a"}, 1]}, None,
                    {"fractional": [["dark", 40], ["classic", 60]]}]}}  # fmt: skip
        imported = from_flagd(flag_document({"f": flag}))
        assert [u.part for u in imported.unmapped] == [
            "flags.f.variants",
            "flags.f.targeting.if[0]",
        ]
        assert "serves 'legacy', neither the new path nor the old" in imported.unmapped[1].reason
        assert imported.document["rollouts"]["f"]["stages"][0]["percent"] == 40

    @pytest.mark.parametrize(
        ("targeting", "evaluators", "words"),
        [
            ({"if": [{"===": [{"var": "a"}, 1]}, "on", "maybe"]}, {},
             "serves 'maybe' to everyone else"),
            ({"$ref": "rule"}, {"rule": "on"}, "is 'on': the answer for units no rule"),
            ({"cat": ["o", "n"]}, {}, "an operation 'cat'"),
            ({"$ref": "ü"}, {"ü": {"fractional": [["on", 1], ["off", 1]]}}, "names no evaluator"),
        ],
    )  # fmt: skip
    def test_last_answers_that_do_not_map(
        self, targeting: object, evaluators: dict[str, Any], words: str
    ) -> None:
        """The answer for the units no rule matches decides the flag: else it is left out."""
        document = flag_document({"f": boolean_flag(targeting)}, **{"$evaluators": evaluators})
        imported = from_flagd(document)
        assert imported.document["rollouts"] == {}
        assert words in imported.unmapped[-1].reason

    def test_non_boolean_with_a_broken_fractional(self) -> None:
        """A fractional that does not map is reported once, whatever the variants."""
        flag = {"state": "ENABLED", "variants": {"a": "x", "b": "y"}, "defaultVariant": "a",
                "targeting": {"fractional": [["a", 1.5], ["b", 1]]}}  # fmt: skip
        imported = from_flagd(flag_document({"f": flag}))
        ((unmapped),) = imported.unmapped
        assert "not an integer" in unmapped.reason

    def test_disabled_without_targeting(self) -> None:
        """A disabled flag is at 0 %, with nothing to report when it has no targeting."""
        imported = from_flagd(flag_document({"f": {**boolean_flag(), "state": "DISABLED"}}))
        assert imported.unmapped == ()
        assert imported.document["rollouts"]["f"]["stages"][0]["percent"] == 0

    def test_unknown_default_variant(self) -> None:
        """A default that names no variant is flagd's error: the code's default, the old path."""
        flag = boolean_flag({"fractional": [["on", 10], ["off", 90]]}, default="nope")
        imported = from_flagd(flag_document({"f": flag}))
        assert imported.unmapped[0].part == "flags.f.defaultVariant"
        assert imported.document["rollouts"]["f"]["stages"][0]["percent"] == 10


class TestShape:
    """A document that is not flag definitions is refused, naming where."""

    @pytest.mark.parametrize(
        ("document", "path", "words"),
        [
            ([], "", "a table with flags"),
            ({"features": []}, "flags", "is required"),
            ({"flags": ["a"]}, "flags", "must be a table of flags"),
            ({"flags": {"f": "on"}}, "flags.f", "must be a table"),
            ({"flags": {"f": {"variants": {"on": True}}}}, "flags.f.state", "is required"),
            ({"flags": {"f": {"state": "on", "variants": {"on": True}}}}, "flags.f.state",
             '"ENABLED" or "DISABLED"'),
            ({"flags": {"f": {"state": "ENABLED", "variants": {}}}}, "flags.f.variants",
             "non-empty table"),
            ({"flags": {"f": {"state": "ENABLED", "variants": {True: True}}}},
             "flags.f.variants", "quote it"),
            ({"flags": {True: {"state": "ENABLED", "variants": {"on": True}}}},
             "flags[True]", "quote it"),
            ({"flags": {"f": boolean_flag(default=["on"])}}, "flags.f.defaultVariant",
             "must be a variant name"),
            ({"flags": {"f": boolean_flag("on")}}, "flags.f.targeting", "JsonLogic rule"),
            ({"flags": {"a b": boolean_flag([])}}, "flags['a b'].targeting", "JsonLogic rule"),
            ({"flags": {}, "$evaluators": ["x"]}, "$evaluators", "must be a table"),
        ],
    )  # fmt: skip
    def test_refused_naming_the_path(self, document: object, path: str, words: str) -> None:
        """Each problem is at its path in the export."""
        with pytest.raises(PolicyError) as caught:
            from_flagd(document, source="export.json")
        (problem,) = caught.value.problems
        assert (problem.path, words in problem.message) == (path, True)
        assert caught.value.source == "export.json"

    def test_problems_are_bounded(self) -> None:
        """A file of thousands of broken flags reports the first hundred or so."""
        with pytest.raises(PolicyError) as caught:
            from_flagd({"flags": {f"f{i}": {"state": "x", "variants": {}} for i in range(5000)}})
        assert 100 <= len(caught.value.problems) <= 102

    def test_every_problem_at_once(self) -> None:
        """Problems of several flags are reported together."""
        document = {"flags": {"a": {"state": "x", "variants": {}}, "b": 3}}
        with pytest.raises(PolicyError) as caught:
            from_flagd(document)
        paths = [p.path for p in caught.value.problems]
        assert paths == ["flags.a.state", "flags.a.variants", "flags.b"]

    def test_environment_refused(self) -> None:
        """flagd has no environments: naming one is an error that says so."""
        with pytest.raises(PolicyError, match="no environments"):
            from_flagd(flag_document({}), environment="production")

    def test_unknown_fields_are_ignored(self) -> None:
        """Fields that do not change who gets a flag (metadata, $schema, others) are ignored."""
        flag = boolean_flag({"fractional": [["on", 5], ["off", 95]]}, metadata={"team": "x"})
        imported = from_flagd(flag_document({"f": flag}, metadata={"v": 1}, extra=[1]))
        assert imported.unmapped == ()

    def test_yaml_file(self, tmp_path: Path) -> None:
        """A YAML flag file reads as its JSON does; a bare on/off key is refused with a hint."""
        path = tmp_path / "flags.yaml"
        path.write_text(
            "flags:\n  checkout:\n    state: ENABLED\n"
            '    variants: {"on": true, "off": false}\n    defaultVariant: "off"\n'
            '    targeting:\n      fractional: [["on", 25], ["off", 75]]\n'
        )
        assert import_file("flagd", path).document["rollouts"]["checkout"]["stages"][0] == {
            "name": "imported", "percent": 25}  # fmt: skip
        path.write_text("flags:\n  checkout:\n    state: ENABLED\n    variants: {on: true}\n")
        with pytest.raises(PolicyError, match="quote it"):
            import_file("flagd", path)


class TestHostile:
    """Huge, deep, cyclic and odd-typed exports end in a report or a refusal, never a hang."""

    def test_deep_else_chain(self) -> None:
        """A chain nested deeper than the importer follows is reported and left out."""
        node: object = {"fractional": [["on", 1], ["off", 1]]}
        for _ in range(5000):
            node = {"if": [{"in": [{"var": "targetingKey"}, ["a"]]}, "on", node]}
        imported = from_flagd(flag_document({"f": boolean_flag(node)}))
        assert imported.document["rollouts"] == {}
        assert "nests more than 1000 if rules" in imported.unmapped[0].reason

    def test_cycles(self) -> None:
        """A condition that contains itself, and $refs in a loop, are reported."""
        both: dict[str, Any] = {"and": []}
        both["and"].append(both)
        either: dict[str, Any] = {"or": []}
        either["or"].append(either)
        refs = {"a": {"$ref": "b"}, "b": {"$ref": "a"}}
        flags = {"f": boolean_flag({"if": [both, "on", "off"]}),
                 "g": boolean_flag({"if": [either, "on", "off"]}),
                 "h": boolean_flag({"if": [{"$ref": "a"}, "on", "off"]})}  # fmt: skip
        imported = from_flagd(flag_document(flags, **{"$evaluators": refs}))
        assert [u.flag for u in imported.unmapped] == ["f", "g", "h"]
        assert "nests and/or" in imported.unmapped[1].reason
        assert "names no evaluator" in imported.unmapped[2].reason

    def test_many_flags_and_ids(self) -> None:
        """Thousands of flags, and id lists past what a policy holds through a shared $ref."""
        flags = {
            f"flag-{i}": boolean_flag({"fractional": [["on", i % 101], ["off", 100 - i % 101]]})
            for i in range(3000)
        }
        assert len(from_flagd(flag_document(flags)).document["rollouts"]) == 3000
        ids = [f"user-{i}" for i in range(20_000)]
        listed = {f"listed-{i}": boolean_flag({"if": [{"$ref": "many"}, "on", "off"]})
                  for i in range(3)}  # fmt: skip
        many = {"in": [{"var": "targetingKey"}, ids]}
        imported = from_flagd(flag_document(listed, **{"$evaluators": {"many": many}}))
        ((unmapped),) = imported.unmapped
        assert (unmapped.flag, "more than the 50,000 ids" in unmapped.reason) == ("listed-2", True)
        assert len(imported.policy.rollouts["listed-1"].targeting.allow) == 20_000

    def test_keys_that_are_not_names(self) -> None:
        """Odd keys become valid names, each once; bucketing keeps the vendor's key."""
        keys = ["checkout flow/v2 🚀", "checkout-flow-v2", "", "a" * 1024, "b" * 1025]
        flags = {key: boolean_flag({"fractional": [["on", 50], ["off", 50]]}) for key in keys}
        imported = from_flagd(flag_document(flags))
        rollouts = imported.document["rollouts"]
        keyed = {r["bucketing"]["flag_key"]: name for name, r in rollouts.items()}
        assert set(keyed) == set(keys[:4])
        assert keyed["checkout-flow-v2"] == "checkout-flow-v2"
        assert keyed["checkout flow/v2 🚀"] == "checkout-flow-v2-2"  # the valid key keeps its name
        assert keyed[""] == "flag"
        assert [u.flag for u in imported.unmapped] == ["b" * 197 + "..."]
        decisions = Rollouts(imported.policy)
        for key, name in keyed.items():
            for unit in ("user-1", "user-2", "user-3", "user-4"):
                vendor = (flagd_hash(key, unit) * 100) >> 32 < 50
                assert decisions.enabled(name, unit) is vendor

    def test_shared_conditions_are_read_within_a_budget(self) -> None:
        """A $ref repeating thousands of conditions in every flag ends in a report, not a hang."""
        conditions = {"and": [{"===": [{"var": "a"}, f"x{i}"]} for i in range(3000)]}
        fallback = {"fractional": [["on", 5], ["off", 95]]}
        flags = {f"f{i}": boolean_flag({"if": [{"$ref": "all"}, "on", fallback]})
                 for i in range(100)}  # fmt: skip
        imported = from_flagd(flag_document(flags, **{"$evaluators": {"all": conditions}}))
        segments = imported.document["segments"]
        assert 0 < sum(len(segment["rules"]) for segment in segments.values()) <= 50_000
        budget = [
            u.flag for u in imported.unmapped if "50,000 ids, values and conditions" in u.reason
        ]
        assert budget == [f"f{i}" for i in range(100 - len(budget), 100)]
        assert len(budget) > 50
        reported = {u.flag for u in imported.unmapped}
        assert set(imported.document["rollouts"]) | reported == set(flags)
        imported.policy  # noqa: B018 - the output validates

    def test_shared_if_chain_is_read_within_a_budget(self) -> None:
        """A $ref to an if chain of 20,000 rules is read once; the flags repeating it are not."""
        chain: list[Any] = []
        for i in range(20_000):
            chain += [{"in": [{"var": "targetingKey"}, [f"user-{i}"]]}, "on"]
        chain.append("off")
        flags = {f"f{i}": boolean_flag({"$ref": "chain"}) for i in range(5)}
        imported = from_flagd(flag_document(flags, **{"$evaluators": {"chain": {"if": chain}}}))
        assert len(imported.policy.rollouts["f0"].targeting.allow) == 20_000
        assert [u.flag for u in imported.unmapped] == ["f1", "f2", "f3", "f4"]
        assert all("left out of the policy" in u.reason for u in imported.unmapped)

    def test_a_flag_past_the_policy_size_is_left_out(self) -> None:
        """Flags that would take the policy past 50,000 values are reported; smaller ones fit."""
        conditions = [{"===": [{"var": "a"}, f"x{i}"]} for i in range(8000)]
        big = boolean_flag({"if": [{"and": conditions}, "on", "off"]})
        flags = {"big-1": big, "big-2": big, "small": boolean_flag()}
        imported = from_flagd(flag_document(flags))
        assert set(imported.document["rollouts"]) == {"big-1", "small"}
        ((unmapped),) = imported.unmapped
        assert (unmapped.flag, unmapped.part) == ("big-2", "flags.big-2")
        assert "more than 50,000 values" in unmapped.reason
        assert set(imported.policy.rollouts) == {"big-1", "small"}

    def test_text_that_is_not_unicode(self) -> None:
        """A lone surrogate (a JSON escape) leaves that flag out; the others and TOML are fine."""
        rule = {"if": [{"===": [{"var": "a"}, "x\udfff"]}, "on", "off"]}
        flags = {"ok": boolean_flag(), "bad\ud800": boolean_flag(), "rule": boolean_flag(rule)}
        imported = from_flagd(json.loads(json.dumps(flag_document(flags))))  # as JSON reads it
        assert set(imported.document["rollouts"]) == {"ok"}
        assert [u.part for u in imported.unmapped] == ["flags['bad\\ud800']", "flags.rule"]
        assert all("not Unicode" in u.reason for u in imported.unmapped)
        assert all(str(u).encode("utf-8") for u in imported.unmapped)
        assert tomllib.loads(imported.to_toml()) == imported.document

    def test_odd_values_in_rules(self) -> None:
        """Rule values a policy cannot hold are reported, never written."""
        chain = [{"in": [{"var": "a"}, [math.inf, 1]]}, "on",
                 {"===": [{"var": "b"}, None]}, "on",
                 {"in": [{"var": "targetingKey"}, [["nested"]]]}, "on", "off"]  # fmt: skip
        imported = from_flagd(flag_document({"f": boolean_flag({"if": chain})}))
        assert len(imported.unmapped) == 3
        assert "segments" not in imported.document
        imported.policy  # noqa: B018 - the output validates


VALID_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
KEYS = st.text(alphabet="ab-_. /", max_size=6) | st.text(
    st.characters(codec=None, categories=["Cs", "Lu", "Nd", "Zs", "Po", "So"]), max_size=6
)


def is_unicode(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (it holds no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class TestNames:
    """Every flag key is one rollout, under one valid name; its bucketing keeps the key."""

    @settings(max_examples=80)
    @given(keys=st.lists(KEYS, unique=True, max_size=8))
    def test_each_key_is_one_rollout(self, keys: list[str]) -> None:
        """A key is a rollout (a valid key under its own name) or, not Unicode, reported."""
        flags = {key: boolean_flag({"fractional": [["on", 50], ["off", 50]]}) for key in keys}
        imported = from_flagd(flag_document(flags))
        rollouts = imported.document["rollouts"]
        keyed = {r["bucketing"]["flag_key"]: name for name, r in rollouts.items()}
        unicode = [key for key in keys if is_unicode(key)]
        assert set(keyed) == set(unicode)  # no two keys share a name
        assert all(keyed[key] == key for key in unicode if VALID_NAME.fullmatch(key))
        assert len(imported.unmapped) == len(keys) - len(unicode)
        assert set(imported.policy.rollouts) == set(rollouts)
        assert tomllib.loads(imported.to_toml()) == imported.document


class TestCli:
    """``stagedroll import flagd FILE``, as a user runs it."""

    def run(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["import", "flagd", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    def test_policy_on_stdout_report_on_stderr(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The TOML on stdout validates; each unmapped part is one line on stderr."""
        code, out, err = self.run(capsys, str(EXPORT))
        assert code == 0
        assert set(parse_policy(out, format="toml").rollouts) == set(FLAGS) - LEFT_OUT
        lines = err.splitlines()
        assert lines[-1] == "stagedroll: 20 rollouts imported from flagd, 14 part(s) not mapped"
        assert sum(line.startswith("stagedroll: not mapped: ") for line in lines) == 14

    def test_strict(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        """--strict exits 1 when a part did not map, 0 when everything did."""
        assert self.run(capsys, str(EXPORT), "--strict")[0] == 1
        clean = tmp_path / "clean.json"
        flags = {"f": boolean_flag({"fractional": [["on", 5], ["off", 95]]})}
        clean.write_text(json.dumps(flag_document(flags)))
        assert self.run(capsys, str(clean), "--strict")[0] == 0

    def test_out(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        """--out writes a new .toml or .json file that loads, and never overwrites one."""
        for name in ("rollouts.toml", "rollouts.json"):
            path = tmp_path / name
            code, out, _ = self.run(capsys, str(EXPORT), "--out", str(path))
            assert (code, out) == (0, "")
            assert set(load_policy(path).rollouts) == set(FLAGS) - LEFT_OUT
        code, _, err = self.run(capsys, str(EXPORT), "--out", str(tmp_path / "rollouts.toml"))
        assert code == 2
        assert "exists" in err

    def test_json(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--json gives the policy and the report as one document."""
        code, out, err = self.run(capsys, str(EXPORT), "--json")
        report = json.loads(out)
        assert (code, err) == (0, "")
        assert set(report["policy"]["rollouts"]) == set(FLAGS) - LEFT_OUT
        assert {"flag": "onboarding", "part": "flags.onboarding.targeting.fractional"} in [
            {k: u[k] for k in ("flag", "part")} for u in report["unmapped"]]  # fmt: skip

    def test_refusals(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        """An environment, or a file that is not flag definitions, fails with the reason."""
        code, _, err = self.run(capsys, str(EXPORT), "--source-env", "prod")
        assert code == 1
        assert "no environments" in err
        wrong = tmp_path / "unleash.json"
        wrong.write_text(json.dumps({"version": 1, "features": []}))
        code, _, err = self.run(capsys, str(wrong))
        assert code == 1
        assert "flags: is required" in err
