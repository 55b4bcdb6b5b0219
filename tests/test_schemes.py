"""The bucketing schemes of other flag systems (``_schemes``): their own test values, the laws
of stagedroll's bucketing (monotone, uniform, independent across keys), and the decisions of
the vendors' SDKs unit for unit (``tests/data/vendors/``), directly and through every decision
path of a rollout whose policy names the scheme (``bucketing``)."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stagedroll import Reason, Rollouts, bucket, threshold, unit_key
from stagedroll._schemes import (
    BucketingScheme,
    Flagd,
    GrowthBook,
    LaunchDarkly,
    Stagedroll,
    Unleash,
    fnv1a32,
)
from stagedroll.testing import simulate

VENDORS = Path(__file__).parent / "data" / "vendors"
UNITS = [f"user-{i}" for i in range(20_000)]


def schemes(key: str = "checkout") -> list[BucketingScheme]:
    return [Unleash(key), GrowthBook(key), GrowthBook(key, 1), Flagd(key),
            LaunchDarkly(key, "salt-" + key)]  # fmt: skip


def space(scheme: BucketingScheme) -> int:
    return scheme.cut(100)


class TestUpstreamValues:
    """The values each vendor's own test suite pins."""

    def test_unleash(self) -> None:
        assert Unleash("gr1").position("123") + 1 == 73
        assert Unleash("groupX").position("999") + 1 == 25

    def test_growthbook(self) -> None:
        assert GrowthBook("seed").position("a") / 10_000 == 0.0505
        assert GrowthBook("89123klj").position("8952klfjas09ujkasdf") / 10_000 == 0.124

    def test_launchdarkly(self) -> None:
        bucket = LaunchDarkly("hashKey", "saltyA").position("userKeyA") / 0xFFFFFFFFFFFFFFF
        assert bucket == pytest.approx(0.42157587, abs=1e-8)

    def test_fnv1a32(self) -> None:
        assert fnv1a32("") == 0x811C9DC5
        assert fnv1a32("a") == 0xE40C292C
        assert fnv1a32("foobar") == 0xBF9CF968


class TestLaws:
    @pytest.mark.parametrize("scheme", schemes(), ids=lambda s: f"{s.name}")
    def test_nobody_at_zero_everybody_at_a_hundred(self, scheme: BucketingScheme) -> None:
        assert scheme.cut(0) == 0
        positions = [scheme.position(unit) for unit in UNITS[:2000]]
        assert all(0 <= p < scheme.cut(100) for p in positions)

    @given(st.data())
    def test_monotone_in_the_percent(self, data: st.DataObject) -> None:
        """A unit in at one percent is in at every higher one (its cut only grows)."""
        scheme = data.draw(st.sampled_from(schemes()))
        steps = int(100 / scheme.step)
        low, high = sorted(data.draw(st.integers(0, steps)) for _ in range(2))
        unit = data.draw(st.text(max_size=20))
        position = scheme.position(unit)
        low_percent, high_percent = low * scheme.step, high * scheme.step
        in_low = position < scheme.cut(Decimal(low_percent.numerator) / low_percent.denominator)
        in_high = position < scheme.cut(Decimal(high_percent.numerator) / high_percent.denominator)
        assert in_high or not in_low

    @given(st.sampled_from(["checkout", "search"]), st.text(max_size=30))
    def test_deterministic(self, key: str, unit: str) -> None:
        """A position depends on the key and the unit alone."""
        assert [s.position(unit) for s in schemes(key)] == [s.position(unit) for s in schemes(key)]

    @pytest.mark.parametrize("index", range(5), ids=["unleash", "gb2", "gb1", "flagd", "ld"])
    def test_uniform(self, index: int) -> None:
        """About a quarter of 20,000 units at 25 % (within 5 standard deviations)."""
        scheme = schemes()[index]
        share = sum(scheme.position(u) < scheme.cut(25) for u in UNITS) / len(UNITS)
        assert abs(share - 0.25) < 5 * (0.25 * 0.75 / len(UNITS)) ** 0.5

    @pytest.mark.parametrize("index", range(5), ids=["unleash", "gb2", "gb1", "flagd", "ld"])
    def test_independent_across_keys(self, index: int) -> None:
        """Two rollouts with different keys at 50 %: a quarter of the units in both."""
        one, two = schemes("checkout")[index], schemes("search")[index]
        both = sum(one.position(u) < one.cut(50) and two.position(u) < two.cut(50) for u in UNITS)
        assert abs(both / len(UNITS) - 0.25) < 5 * (0.25 * 0.75 / len(UNITS)) ** 0.5


class TestResolution:
    @pytest.mark.parametrize(
        ("scheme", "fine", "coarse"),
        [
            (Unleash("g"), 2.5, 3),
            (GrowthBook("s"), 0.005, 0.01),
            (GrowthBook("s", 1), 0.05, 0.1),
            (Flagd("f"), 0.5, 1),
            (LaunchDarkly("k", "s"), 0.0005, 0.001),
        ],
        ids=lambda value: getattr(value, "name", str(value)),
    )
    def test_a_percent_finer_than_the_scheme_is_named(
        self, scheme: BucketingScheme, fine: float, coarse: float
    ) -> None:
        problem = scheme.problem(fine)
        assert problem is not None
        assert scheme.name in problem
        assert repr(fine) in problem
        assert scheme.problem(coarse) is None

    def test_growthbook_takes_its_version(self) -> None:
        assert GrowthBook("s").step == Fraction(1, 100)
        assert GrowthBook("s", 1).step == Fraction(1, 10)
        with pytest.raises(ValueError, match="1 or 2"):
            GrowthBook("s", 3)


def vectors(vendor: str) -> dict[str, Any]:
    path = VENDORS / f"{vendor}.json"
    if not path.exists():
        pytest.fail(f"{path} is missing: see tests/data/vendors/README.md")
    return dict(json.loads(path.read_text(encoding="utf-8")))


def template_of(case: dict[str, Any]) -> str | None:
    """A flagd case's bucketing expression as a ``template``: a ``cat`` of texts and the
    targeting key (``None`` without one: flagd's default, the pair)."""
    expression = case.get("bucket_by")
    if expression is None:
        return None
    parts = expression["cat"]
    return "".join("{unit}" if part == {"var": "targetingKey"} else part for part in parts)


def scheme_of(vendor: str, case: dict[str, Any]) -> tuple[BucketingScheme, Decimal]:
    """The scheme and percent of one case of a vendor's file."""
    if vendor == "unleash":
        return Unleash(case["group_id"]), Decimal(case["percent"])
    if vendor == "growthbook":
        percent = Decimal(repr(case["coverage"])) * 100
        return GrowthBook(case["seed"], case["hash_version"]), percent
    if vendor == "flagd":
        return Flagd(case["flag"], template_of(case)), Decimal(case["percent"])
    seed = case.get("seed")
    return LaunchDarkly(case["flag"], case["salt"], seed), Decimal(case["weight"]) / 1000


@pytest.mark.parametrize("vendor", ["unleash", "growthbook", "flagd", "launchdarkly"])
def test_the_vendors_sdk_decides_the_same_unit_for_unit(vendor: str) -> None:
    """Every case of the vendor's file (2,012 units, percents 1 to 100, three flags, custom
    groups, seeds and salts): the SDK's decision for each unit is stagedroll's."""
    data = vectors(vendor)
    units = data["units"]
    checked = 0
    for case in data["cases"]:
        scheme, percent = scheme_of(vendor, case)
        cut = scheme.cut(percent)
        ours = "".join("1" if scheme.position(unit) < cut else "0" for unit in units)
        differ = [unit for unit, a, b in zip(units, ours, case["enabled"], strict=True) if a != b]
        assert not differ, (case, differ[:5])
        checked += 1
    assert checked >= 12


# -- the schemes in a policy: every decision path of Rollouts ------------------------------------

VENDOR_NAMES = ["unleash", "growthbook", "flagd", "launchdarkly"]
GOLDEN = Path(__file__).parent / "data" / "bucketing.json"
OFF = {"enabled": False}  # no health gate: nothing moves the stage while a test decides


def flag_of(case: dict[str, Any]) -> str:
    """The flag (feature) key of a vendor case."""
    return str(case["feature"] if "feature" in case else case["flag"])


def bucketing_of(vendor: str, case: dict[str, Any], *, explicit: bool) -> dict[str, Any]:
    """The ``bucketing`` table of a case, for a rollout named after the case's flag.

    Unless ``explicit``, the parameters that default to the rollout's name (and GrowthBook's
    hash version 1) are left out, so that the defaults are what place the units.
    """
    flag = flag_of(case)
    table: dict[str, Any]
    defaults: dict[str, Any]
    if vendor == "unleash":
        table, defaults = {"scheme": "unleash", "group_id": case["group_id"]}, {"group_id": flag}
    elif vendor == "growthbook":
        table = {"scheme": "growthbook", "seed": case["seed"], "hash_version": case["hash_version"]}
        defaults = {"seed": flag, "hash_version": 1}
    elif vendor == "flagd" and "bucket_by" in case:
        table, defaults = {"scheme": "flagd", "template": template_of(case)}, {}
    elif vendor == "flagd":
        table, defaults = {"scheme": "flagd", "flag_key": flag}, {"flag_key": flag}
    else:
        table, defaults = {"scheme": "launchdarkly", "flag_key": flag}, {"flag_key": flag}
        if "seed" in case:
            table["seed"] = case["seed"]  # the seed alone: the salt is then not needed
        else:
            table["salt"] = case["salt"]
    if not explicit:
        table = {k: v for k, v in table.items() if k not in defaults or defaults[k] != v}
    return table


def policy_number(percent: Decimal) -> int | float:
    """A percent as a policy file writes it: an int when whole."""
    return int(percent) if percent == percent.to_integral_value() else float(percent)


def case_policy(vendor: str, case: dict[str, Any]) -> dict[str, Any]:
    """Rollouts that should all put the case's cohort on: named after the flag (defaults),
    with every parameter given, bucketed on an attribute, a dark launch, and a percent fixed
    by the ``prod`` environment."""
    percent = policy_number(scheme_of(vendor, case)[1])
    stages = [{"name": "cohort", "percent": percent}]
    explicit = bucketing_of(vendor, case, explicit=True)
    return {
        "rollouts": {
            flag_of(case): {
                "stages": stages,
                "bucketing": bucketing_of(vendor, case, explicit=False),
                "health": OFF,
            },
            "explicit": {"stages": stages, "bucketing": explicit, "health": OFF},
            "by-attribute": {
                "bucket_by": "user",
                "stages": stages,
                "bucketing": explicit,
                "health": OFF,
            },
            "dark": {"pattern": "shadow", "stages": stages, "bucketing": explicit, "health": OFF},
            "fixed": {
                "stages": [{"name": "none", "percent": 0}],
                "environments": {"prod": percent},
                "bucketing": explicit,
                "health": OFF,
            },
        }
    }


def differ(units: list[str], got: list[bool], want: list[bool]) -> list[tuple[str, bool]]:
    """The units (at most five) on which ``got`` is not ``want``, with what ``want`` says."""
    return [(u, w) for u, g, w in zip(units, got, want, strict=True) if g != w][:5]


def guarded(rollouts: Rollouts, name: str) -> dict[str, Any]:
    """Sync guards of ``name`` (the compiled fast path, the generic wrapper, with attributes)
    and an async one: each answers True on the new path."""

    def new_generic(unit: str, *, extra: int = 0) -> bool:
        return True

    def old_generic(unit: str, *, extra: int = 0) -> bool:
        return False

    async def new_async(unit: str) -> bool:
        return True

    async def old_async(unit: str) -> bool:
        return False

    return {
        "guard": rollouts.guard(name, fallback=lambda u: False, unit=lambda u: u)(lambda u: True),
        "guard (generic)": rollouts.guard(name, fallback=old_generic, unit=lambda u, **_: u)(
            new_generic
        ),
        "guard (attributes)": rollouts.guard(
            name, fallback=lambda u: False, unit=lambda u: u, attributes=lambda u: {"plan": "x"}
        )(lambda u: True),
        "guard (async)": rollouts.guard(name, fallback=old_async, unit=lambda unit: unit)(
            new_async
        ),
    }


def answers(rollouts: Rollouts, name: str, units: list[str]) -> dict[str, list[bool]]:
    """Whether each entry point of ``Rollouts`` puts each unit on the new path of ``name``."""
    found = {
        "enabled": [rollouts.enabled(name, u) for u in units],
        "decide": [rollouts.decide(name, u).enabled for u in units],
        "report": [rollouts.report(name, u, error=False).enabled for u in units],
    }
    tracked = []
    for unit in units:
        with rollouts.track(name, unit) as decision:
            tracked.append(decision.enabled)
    found["track"] = tracked
    guards = guarded(rollouts, name)
    for label, guard in guards.items():
        if label.endswith("(async)"):

            async def run(guard: Any = guard) -> list[bool]:
                return [await guard(u) for u in units]

            found[label] = asyncio.run(run())
        else:
            found[label] = [guard(u) for u in units]
    return found


def shadowed(rollouts: Rollouts, name: str, units: list[str]) -> dict[str, list[bool]]:
    """The units whose calls run the candidate of a dark launch over ``name``, sync and async."""
    ran: list[str] = []
    dark = rollouts.shadow(name, candidate=ran.append, unit=lambda u: u)(lambda u: None)
    for unit in units:
        dark(unit)
    sync = [u in set(ran) for u in units]
    ran_async: list[str] = []

    async def candidate(unit: str) -> None:
        ran_async.append(unit)

    async def old(unit: str) -> None:
        return None

    async def run() -> None:
        dark_async = rollouts.shadow(
            name, candidate=candidate, unit=lambda unit: unit, max_pending=len(units) + 1
        )(old)
        for unit in units:
            await dark_async(unit)
        for _ in range(3):
            await asyncio.sleep(0)  # the candidates' tasks run

    asyncio.run(run())
    return {"shadow": sync, "shadow (async)": [u in set(ran_async) for u in units]}


def sampled(units: list[str], everyone: bool) -> list[int]:
    """The indexes of the units a case checks: all, or every seventh and the awkward tail."""
    if everyone:
        return list(range(len(units)))
    return sorted(set(range(0, len(units), 7)) | set(range(len(units) - 12, len(units))))


def golden_cases() -> tuple[dict[str, int], list[dict[str, Any]]]:
    data = json.loads(GOLDEN.read_text(encoding="utf-8"))
    return data["thresholds"], data["cases"]


SCHEME_TABLES: dict[str, dict[str, Any] | None] = {
    "stagedroll": None,
    "unleash": {"scheme": "unleash", "group_id": "g"},
    "growthbook": {"scheme": "growthbook", "seed": "s", "hash_version": 2},
    "growthbook-v1": {"scheme": "growthbook", "seed": "s", "hash_version": 1},
    "flagd": {"scheme": "flagd", "flag_key": "f"},
    "launchdarkly": {"scheme": "launchdarkly", "flag_key": "k", "salt": "salty"},
    "launchdarkly-seed": {"scheme": "launchdarkly", "seed": 61},
}
"""One bucketing per scheme (and variant), for the tests that go through every scheme."""


def one_rollout(table: dict[str, Any] | None, *percents: float, **fields: Any) -> dict[str, Any]:
    """A policy with rollout ``r``: ``table``'s bucketing, a stage at each percent, no gate."""
    rollout: dict[str, Any] = {
        "stages": [{"name": f"s{i}", "percent": p} for i, p in enumerate(percents)],
        "health": OFF,
        **fields,
    }
    if table is not None:
        rollout["bucketing"] = table
    return {"rollouts": {"r": rollout}}


def scheme_in(rollouts: Rollouts, name: str = "r") -> BucketingScheme:
    """The scheme that the policy in force gives rollout ``name``."""
    return rollouts.policy.rollouts[name].scheme(name)


class TestInAPolicy:
    """A rollout's ``bucketing`` reaches every decision path: ``enabled``, ``decide``, guards
    (compiled, generic, with attributes, async), ``track``, ``report``, dark launches,
    ``bucket_by``, an environment's fixed percent and ``simulate``."""

    @pytest.mark.parametrize("vendor", VENDOR_NAMES)
    def test_every_path_decides_as_the_vendors_sdk(self, vendor: str) -> None:
        """Each case of the vendor's file through ``Rollouts``: the SDK's decision, unit for
        unit (a few hundred units a case; every unit for the last case at 50 %)."""
        data = vectors(vendor)
        all_units: list[str] = data["units"]
        cases = data["cases"]
        full = max(i for i, case in enumerate(cases) if scheme_of(vendor, case)[1] == 50)
        for index, case in enumerate(cases):
            picked = sampled(all_units, index == full)
            units = [all_units[i] for i in picked]
            want = [case["enabled"][i] == "1" for i in picked]
            reference, _ = scheme_of(vendor, case)
            flag = flag_of(case)
            label = {k: v for k, v in case.items() if k != "enabled"}
            policy = case_policy(vendor, case)
            with Rollouts(policy, environment="prod") as rollouts:
                for name in (flag, "explicit", "by-attribute", "dark", "fixed"):
                    assert repr(scheme_in(rollouts, name)) == repr(reference), (label, name)
                for name in (flag, "explicit"):
                    for path, got in answers(rollouts, name, units).items():
                        assert got == want, (label, name, path, differ(units, got, want))
                    decisions = [rollouts.decide(name, u) for u in units]
                    assert [d.bucket for d in decisions] == [reference.position(u) for u in units]
                    assert {d.stage for d in decisions} == {"cohort"}
                    assert [d.reason for d in decisions] == [
                        Reason.IN_COHORT if w else Reason.OUT_OF_COHORT for w in want
                    ]
                by_attribute = [
                    rollouts.enabled("by-attribute", "someone-else", {"user": u}) for u in units
                ]
                assert by_attribute == want, (label, differ(units, by_attribute, want))
                fixed = [rollouts.decide("fixed", u) for u in units]
                assert [d.enabled for d in fixed] == want, label
                assert {d.stage for d in fixed} == {"prod"}
                for path, got in shadowed(rollouts, "dark", units).items():
                    assert got == want, (label, path, differ(units, got, want))
            simulation = simulate(policy, units, attributes=lambda u: {"user": u})
            members = set(simulation[flag].members(0))
            assert [u in members for u in units] == want, label
            assert simulation["by-attribute"].members(0) == simulation[flag].members(0)
            on_in_prod = simulate(policy, units, environment="prod")["fixed"]
            assert on_in_prod.mode == "fixed"
            assert on_in_prod.members(0) == simulation[flag].members(0)

    @pytest.mark.parametrize("bucketing", [None, {"scheme": "stagedroll"}], ids=["absent", "own"])
    def test_the_default_scheme_decides_as_before(self, bucketing: dict[str, Any] | None) -> None:
        """The golden vectors of stagedroll's own contract, through ``Rollouts``: the salt
        pinned, or the rollout's name as the salt; ``bucket`` is the hash."""
        thresholds, cases = golden_cases()
        salts = sorted({case["salt"] for case in cases})
        for percent_text in thresholds:
            percent = policy_number(Decimal(percent_text))
            rollouts_table: dict[str, Any] = {}
            for i, salt in enumerate(salts):
                rollout: dict[str, Any] = {
                    "salt": salt,
                    "stages": [{"name": "s", "percent": percent}],
                    "health": OFF,
                }
                if bucketing is not None:
                    rollout["bucketing"] = bucketing
                rollouts_table[f"salted-{i}"] = rollout
                if salt.isascii():  # a valid rollout name: its own salt by default
                    rollouts_table[salt] = {k: v for k, v in rollout.items() if k != "salt"}
            policy = {"rollouts": rollouts_table}
            simulation = simulate(policy, sorted({case["unit"] for case in cases}))
            with Rollouts(policy) as rollouts:
                for name, table in rollouts_table.items():
                    salt = table.get("salt", name)
                    mine = [case for case in cases if case["salt"] == salt]
                    units = [case["unit"] for case in mine]
                    want = [case["in_rollout"][percent_text] for case in mine]
                    hashes = [case["hash"] for case in mine]
                    placed = scheme_in(rollouts, name)
                    assert placed.name == "stagedroll"
                    assert [placed.position(u) for u in units] == hashes
                    assert [simulation[name].contains(u, 0) for u in units] == want
                    decisions = [rollouts.decide(name, u) for u in units]
                    assert [(d.enabled, d.bucket) for d in decisions] == list(
                        zip(want, hashes, strict=True)
                    ), (name, percent_text)
                    for path, got in answers(rollouts, name, units).items():
                        assert got == want, (name, percent_text, path)

    @pytest.mark.parametrize("scheme", list(SCHEME_TABLES))
    def test_calls_without_a_unit_are_routed_at_the_stages_share(self, scheme: str) -> None:
        """``unit=None`` (guards sync and async, a dark launch) draws against the stage's
        share of 2**32, whatever the scheme's own space: about a quarter of 20,000 calls at
        25 % (within 5 standard deviations, several draws in one run)."""
        draws = 20_000
        bound = 5 * (0.25 * 0.75 / draws) ** 0.5
        policy = one_rollout(SCHEME_TABLES[scheme], 25)
        policy["rollouts"]["dark"] = {**policy["rollouts"]["r"], "pattern": "shadow"}
        with Rollouts(policy) as rollouts:
            guard = rollouts.guard("r", fallback=lambda: False, unit=None)(lambda: True)
            assert abs(sum(guard() for _ in range(draws)) / draws - 0.25) < bound

            async def new() -> bool:
                return True

            async def old() -> bool:
                return False

            async def run() -> int:
                guard = rollouts.guard("r", fallback=old, unit=None)(new)
                return sum([await guard() for _ in range(draws)])

            assert abs(asyncio.run(run()) / draws - 0.25) < bound
            ran: list[None] = []
            dark = rollouts.shadow("dark", candidate=lambda: ran.append(None), unit=None)(
                lambda: None
            )
            for _ in range(draws):
                dark()
            assert abs(len(ran) / draws - 0.25) < bound

    @pytest.mark.parametrize("scheme", ["growthbook", "flagd", "launchdarkly"])
    def test_the_empty_unit_id_is_never_in(self, scheme: str) -> None:
        """The vendors whose SDKs turn an empty id away: off at 100 %, on every path."""
        policy = one_rollout(SCHEME_TABLES[scheme], 100)
        with Rollouts(policy) as rollouts:
            for path, got in answers(rollouts, "r", ["", "someone"]).items():
                assert got == [False, True], path
            decision = rollouts.decide("r", "")
            assert decision.reason is Reason.OUT_OF_COHORT
            assert decision.bucket is not None
            assert decision.bucket >= scheme_in(rollouts).space
            assert rollouts.enabled("r", None, {"id": ""}) is False
        assert simulate(policy, ["", "someone"])["r"].members(0) == ["someone"]

    @pytest.mark.parametrize("scheme", ["stagedroll", "unleash"])
    def test_the_empty_unit_id_is_a_unit_for_the_others(self, scheme: str) -> None:
        """stagedroll and Unleash hash the empty id like any other: in at 100 %."""
        with Rollouts(one_rollout(SCHEME_TABLES[scheme], 100)) as rollouts:
            for path, got in answers(rollouts, "r", [""]).items():
                assert got == [True], path

    def test_a_reload_that_changes_the_bucketing_rebuckets(self, tmp_path: Path) -> None:
        """A new ``bucketing`` in the policy file moves the units as the new scheme says, for
        guards built before the reload too, and back to stagedroll's own."""
        path = tmp_path / "rollouts.toml"
        units = [f"user-{i}" for i in range(400)]

        def write(bucketing: str) -> None:
            before = path.stat().st_mtime_ns if path.exists() else 0
            path.write_text(
                f"[rollouts.r]\n{bucketing}\nhealth = {{ enabled = false }}\n"
                'stages = [{ name = "half", percent = 50 }]\n'
            )
            if path.stat().st_mtime_ns == before:  # a coarse clock: make the change seen
                os.utime(path, ns=(before + 1_000_000, before + 1_000_000))

        write('bucketing = { scheme = "unleash", group_id = "a" }')
        rollouts = Rollouts.from_file(path, reload_interval=0.01)
        guard = rollouts.guard("r", fallback=lambda u: False, unit=lambda u: u)(lambda u: True)
        cohorts: list[list[bool]] = []
        for bucketing, scheme in [
            ('bucketing = { scheme = "unleash", group_id = "a" }', Unleash("a")),
            ('bucketing = { scheme = "growthbook", seed = "b" }', GrowthBook("b", 1)),
            ("", None),
            ('bucketing = { scheme = "launchdarkly", salt = "c" }', LaunchDarkly("r", "c")),
            ('bucketing = { scheme = "unleash", group_id = "a" }', Unleash("a")),
        ]:
            if cohorts:
                write(bucketing)
                deadline = time.monotonic() + 30
                while scheme_in(rollouts).describe() != (scheme or Stagedroll("r")).describe():
                    assert time.monotonic() < deadline, "the change was never read"
                    time.sleep(0.02)
                    rollouts.decide("r", "anyone")  # a call that looks at the file
            if scheme is None:
                want = [bucket("r", u) < threshold(50) for u in units]
            else:
                want = [scheme.position(u) < scheme.cut(50) for u in units]
            assert [rollouts.enabled("r", u) for u in units] == want, bucketing
            assert [rollouts.decide("r", u).enabled for u in units] == want, bucketing
            assert [guard(u) for u in units] == want, bucketing
            cohorts.append(want)
        assert cohorts[0] == cohorts[-1]
        assert len({tuple(c) for c in cohorts}) == 4  # each scheme moved units

    @pytest.mark.parametrize("scheme", list(SCHEME_TABLES))
    @pytest.mark.parametrize(
        "unit",
        [
            "\ud800",
            "a\udfffb",
            "x" * 1_000_000,
            "é" * 1_000_000,
            12345,
            -7,
            10**40,
            uuid.UUID("550e8400-e29b-41d4-a716-446655440000"),
        ],
        ids=[
            "surrogate",
            "surrogate-inside",
            "1MB-ascii",
            "1MB-utf8",
            "int",
            "negative",
            "big",
            "uuid",
        ],
    )
    def test_hostile_units_never_break_the_host(self, scheme: str, unit: object) -> None:
        """Lone surrogates, 1 MB of text, ints and UUIDs: every path answers what the scheme
        says of the unit's key, and nothing fails inside stagedroll."""
        with Rollouts(one_rollout(SCHEME_TABLES[scheme], 50)) as rollouts:
            placed = scheme_in(rollouts)
            key = unit_key(unit)
            want = placed.position(key) < placed.cut(50)
            for path, got in answers(rollouts, "r", [unit]).items():  # type: ignore[list-item]
                assert got == [want], path
            assert rollouts.decide("r", unit).bucket == placed.position(key)
            assert rollouts.enabled("r", None, {"id": unit}) is False  # no bucket_by: no unit
            assert rollouts.failures.count() == 0

    @given(
        st.sampled_from(list(SCHEME_TABLES)),
        st.lists(st.one_of(st.text(max_size=12), st.integers(), st.uuids()), max_size=8),
    )
    def test_any_unit_gets_the_schemes_answer(self, scheme: str, units: list[object]) -> None:
        """Any text, int or UUID: ``enabled``, ``decide`` and a guard answer the scheme's."""
        rollouts = ROLLOUTS_AT_HALF[scheme]
        placed = scheme_in(rollouts)
        for unit in units:
            want = placed.position(unit_key(unit)) < placed.cut(50)
            decision = rollouts.decide("r", unit)
            assert (decision.enabled, decision.bucket) == (want, placed.position(unit_key(unit)))
            assert rollouts.enabled("r", unit) is want
            assert HALF_GUARDS[scheme](unit) is want
        assert rollouts.failures.count() == 0

    @given(st.data())
    def test_monotone_in_the_stage_percent(self, data: st.DataObject) -> None:
        """Through ``Rollouts``, advancing stage by stage: a unit on stays on, and each
        stage's answer is the scheme's."""
        scheme = data.draw(st.sampled_from(list(SCHEME_TABLES)), label="scheme")
        step = {
            "stagedroll": Decimal("0.0001"),
            "unleash": Decimal(1),
            "growthbook": Decimal("0.01"),
            "growthbook-v1": Decimal("0.1"),
            "flagd": Decimal(1),
        }.get(scheme, Decimal("0.001"))
        top = int(100 / step)
        picked = data.draw(st.lists(st.integers(0, top), min_size=2, max_size=5, unique=True))
        percents = [policy_number(k * step) for k in sorted(picked)]
        units = data.draw(
            st.lists(st.one_of(st.text(max_size=10), st.integers()), min_size=1, max_size=10)
        )
        with Rollouts(one_rollout(SCHEME_TABLES[scheme], *percents)) as rollouts:
            placed = scheme_in(rollouts)
            before = [False] * len(units)
            for index, percent in enumerate(percents):
                if index:
                    rollouts.advance("r", reason="test", actor="test")
                now = [rollouts.enabled("r", u) for u in units]
                assert all(n or not b for b, n in zip(before, now, strict=True)), percents
                assert now == [placed.position(unit_key(u)) < placed.cut(percent) for u in units]
                before = now


ROLLOUTS_AT_HALF = {
    scheme: Rollouts(one_rollout(table, 50)) for scheme, table in SCHEME_TABLES.items()
}
"""One rollout at 50 % per scheme, for the property tests (built once)."""
HALF_GUARDS = {
    scheme: rollouts.guard("r", fallback=lambda u: False, unit=lambda u: u)(lambda u: True)
    for scheme, rollouts in ROLLOUTS_AT_HALF.items()
}
