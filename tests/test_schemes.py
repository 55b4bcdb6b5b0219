"""The bucketing schemes of other flag systems (``_schemes``): their own test values, the laws
of stagedroll's bucketing (monotone, uniform, independent across keys), and the decisions of
the vendors' SDKs unit for unit (``tests/data/vendors/``)."""

from __future__ import annotations

import json
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stagedroll._schemes import Flagd, GrowthBook, LaunchDarkly, Scheme, Unleash, fnv1a32

VENDORS = Path(__file__).parent / "data" / "vendors"
UNITS = [f"user-{i}" for i in range(20_000)]


def schemes(key: str = "checkout") -> list[Scheme]:
    return [Unleash(key), GrowthBook(key), GrowthBook(key, 1), Flagd(key),
            LaunchDarkly(key, "salt-" + key)]  # fmt: skip


def space(scheme: Scheme) -> int:
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
    def test_nobody_at_zero_everybody_at_a_hundred(self, scheme: Scheme) -> None:
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
        self, scheme: Scheme, fine: float, coarse: float
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


def scheme_of(vendor: str, case: dict[str, Any]) -> tuple[Scheme, Decimal]:
    """The scheme and percent of one case of a vendor's file."""
    if vendor == "unleash":
        return Unleash(case["group_id"]), Decimal(case["percent"])
    if vendor == "growthbook":
        percent = Decimal(repr(case["coverage"])) * 100
        return GrowthBook(case["seed"], case["hash_version"]), percent
    if vendor == "flagd":
        return Flagd(case["flag"]), Decimal(case["percent"])
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
        if "bucket_by" in case:
            continue  # flagd bucketing on an expression of its own: not reproduced (yet)
        scheme, percent = scheme_of(vendor, case)
        cut = scheme.cut(percent)
        ours = "".join("1" if scheme.position(unit) < cut else "0" for unit in units)
        differ = [unit for unit, a, b in zip(units, ours, case["enabled"], strict=True) if a != b]
        assert not differ, (case, differ[:5])
        checked += 1
    assert checked >= 12
