"""Tests for deterministic bucketing: hashing units, percentage thresholds and cohorts."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import uuid
from decimal import Decimal, localcontext
from fractions import Fraction
from pathlib import Path
from typing import Any, TypedDict

import mmh3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stagedroll
from stagedroll import _bucketing, bucket, threshold
from stagedroll._bucketing import SPACE, hash_key, percent_error, unit_key

# --------------------------------------------------------------------------------------
# Golden vectors
# --------------------------------------------------------------------------------------

GOLDEN_PATH = Path(__file__).parent / "data" / "bucketing.json"


class GoldenCase(TypedDict):
    """One golden vector: a salt and unit, their key, hash and cohort membership."""

    salt: str
    unit: str
    key: str
    hash: int
    in_rollout: dict[str, bool]


def _load_golden() -> tuple[dict[str, Any], dict[str, int], list[GoldenCase]]:
    data: dict[str, Any] = json.loads(GOLDEN_PATH.read_text(encoding="utf-8"))
    thresholds: dict[str, int] = data["thresholds"]
    cases: list[GoldenCase] = data["cases"]
    return data, thresholds, cases


GOLDEN, GOLDEN_THRESHOLDS, GOLDEN_CASES = _load_golden()


def _case_id(case: GoldenCase) -> str:
    unit = case["unit"]
    if not unit:
        label = "<empty>"
    elif len(unit) > 40:
        label = f"{unit[:8]}...<{len(unit)} chars>"
    else:
        label = unit
    return f"{case['salt']}|{label}"


CASE_IDS = [_case_id(case) for case in GOLDEN_CASES]

# --------------------------------------------------------------------------------------
# Helpers and strategies
# --------------------------------------------------------------------------------------

STEPS_PER_PERCENT = 10**4
"""Percentages have at most four decimals: 0.0001 % is one step."""


def exact_threshold(percent: Decimal | Fraction | int) -> int:
    """The contract's threshold, computed with exact rational arithmetic."""
    return math.floor(Fraction(percent) * SPACE / 100)


def in_cohort(salt: str, unit: object, percent: Decimal | float | int) -> bool:
    """Whether ``unit`` is in the cohort of ``percent`` under ``salt``, per the contract."""
    return bucket(salt, unit) < threshold(percent)


def from_steps(steps: int, decimals: int = 4) -> Decimal:
    """The decimal ``steps * 10**-decimals``, exactly."""
    return Decimal(steps).scaleb(-decimals)


def assert_binomial(count: int, trials: int, prob: float, *, sds: float = 5.0) -> None:
    """Assert ``count`` is within ``sds`` standard deviations of Binomial(trials, prob)."""
    mean = trials * prob
    sd = math.sqrt(trials * prob * (1 - prob))
    assert abs(count - mean) <= sds * sd, (
        f"{count} of {trials} is more than {sds} sd ({sd:.1f}) from the mean {mean:.1f}"
    )


def surrogatepass_hash(key: str) -> int:
    """The contract's hash, always fed bytes (mmh3 must never see a lone surrogate)."""
    return mmh3.hash(key.encode("utf-8", "surrogatepass"), 0, False)


PERCENTS = st.integers(min_value=0, max_value=100 * STEPS_PER_PERCENT).map(from_steps)
"""Every valid percentage, as an exact decimal with at most four decimals."""

UTF8_TEXT = st.text(alphabet=st.characters(codec="utf-8"))
"""Text that has a UTF-8 form (no lone surrogates)."""

ANY_TEXT = st.text(alphabet=st.one_of(st.characters(), st.characters(categories=["Cs"])))
"""Any text, lone surrogates included."""

UNITS = st.one_of(ANY_TEXT, st.integers(), st.uuids())
"""Every kind of accepted unit."""


@pytest.fixture(name="units")
def _units() -> list[str]:
    return [f"user-{i}" for i in range(20_000)]


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------


class TestGoldenVectors:
    def test_file_shape(self) -> None:
        """The golden file has a spec, thresholds and cases covering every threshold."""
        assert set(GOLDEN) == {"spec", "thresholds", "cases"}
        assert GOLDEN_THRESHOLDS
        assert GOLDEN_CASES
        for case in GOLDEN_CASES:
            assert set(case) == {"salt", "unit", "key", "hash", "in_rollout"}
            assert set(case["in_rollout"]) == set(GOLDEN_THRESHOLDS)

    @pytest.mark.parametrize(
        ("percent", "expected"), list(GOLDEN_THRESHOLDS.items()), ids=list(GOLDEN_THRESHOLDS)
    )
    def test_threshold_from_decimal(self, percent: str, expected: int) -> None:
        """threshold() of each golden percentage, given as a Decimal, matches the vector."""
        assert threshold(Decimal(percent)) == expected

    @pytest.mark.parametrize(
        ("percent", "expected"), list(GOLDEN_THRESHOLDS.items()), ids=list(GOLDEN_THRESHOLDS)
    )
    def test_threshold_from_float(self, percent: str, expected: int) -> None:
        """threshold() of each golden percentage, given as a float, matches the vector."""
        assert threshold(float(percent)) == expected

    @pytest.mark.parametrize(
        ("percent", "expected"), list(GOLDEN_THRESHOLDS.items()), ids=list(GOLDEN_THRESHOLDS)
    )
    def test_threshold_vector_is_exact(self, percent: str, expected: int) -> None:
        """Each golden threshold is floor(p * 2**32 / 100) in exact arithmetic."""
        assert expected == exact_threshold(Fraction(percent))

    @pytest.mark.parametrize("case", GOLDEN_CASES, ids=CASE_IDS)
    def test_key(self, case: GoldenCase) -> None:
        """The golden key is the salt, a colon and the unit."""
        assert case["key"] == case["salt"] + ":" + unit_key(case["unit"])

    @pytest.mark.parametrize("case", GOLDEN_CASES, ids=CASE_IDS)
    def test_hash_key(self, case: GoldenCase) -> None:
        """hash_key() of the golden key is the golden hash."""
        assert hash_key(case["key"]) == case["hash"]

    @pytest.mark.parametrize("case", GOLDEN_CASES, ids=CASE_IDS)
    def test_bucket(self, case: GoldenCase) -> None:
        """bucket(salt, unit) is the golden hash."""
        assert bucket(case["salt"], case["unit"]) == case["hash"]

    @pytest.mark.parametrize("case", GOLDEN_CASES, ids=CASE_IDS)
    def test_hash_is_murmur3_of_utf8_key(self, case: GoldenCase) -> None:
        """The golden hash is unsigned MurmurHash3_x86_32 of the UTF-8 key with seed 0."""
        assert mmh3.hash(case["key"].encode("utf-8"), 0, False) == case["hash"]

    @pytest.mark.parametrize("case", GOLDEN_CASES, ids=CASE_IDS)
    def test_in_rollout(self, case: GoldenCase) -> None:
        """Membership at every golden percentage is hash < threshold(p) and matches the vector."""
        for percent, expected in case["in_rollout"].items():
            assert (case["hash"] < threshold(Decimal(percent))) is expected, percent
            assert in_cohort(case["salt"], case["unit"], Decimal(percent)) is expected, percent


class TestBucket:
    @given(salt=ANY_TEXT, unit=UNITS)
    @settings(deadline=None)
    def test_in_hash_space(self, salt: str, unit: str | int | uuid.UUID) -> None:
        """A bucket is an integer in [0, 2**32)."""
        assert SPACE == 2**32
        assert 0 <= bucket(salt, unit) < SPACE

    @given(salt=UTF8_TEXT, unit=UTF8_TEXT)
    @settings(deadline=None)
    def test_is_mmh3_of_key(self, salt: str, unit: str) -> None:
        """For text with a UTF-8 form, the bucket is mmh3.hash(salt + ':' + unit, 0, False)."""
        assert bucket(salt, unit) == mmh3.hash(salt + ":" + unit, 0, False)

    @given(salt=ANY_TEXT, unit=ANY_TEXT)
    @settings(deadline=None)
    def test_is_mmh3_of_surrogatepass_bytes(self, salt: str, unit: str) -> None:
        """For any text, the bucket hashes the key's 'surrogatepass' UTF-8 bytes."""
        assert bucket(salt, unit) == surrogatepass_hash(salt + ":" + unit)

    def test_key_is_plain_concatenation(self) -> None:
        """The key is salt + ':' + unit with no escaping, as the contract defines it."""
        assert bucket("a:b", "c") == bucket("a", "b:c") == hash_key("a:b:c")

    @pytest.mark.parametrize("salt", ["new-checkout", "", "Ünïcode-flag"])
    def test_empty_unit(self, salt: str) -> None:
        """The empty string is a valid unit: its key is the salt and a colon."""
        assert unit_key("") == ""
        assert bucket(salt, "") == surrogatepass_hash(salt + ":")

    @pytest.mark.parametrize(
        "unit",
        # Built with chr(): some tools treat lone-surrogate literals as equal.
        [chr(0xD800), chr(0xDFFF), chr(0xDC80), f"a{chr(0xD83D)}b", f"\U0001f642{chr(0xD800)}"],
        ids=["high", "low", "low-escape", "inside-text", "after-pair"],
    )
    def test_lone_surrogate_unit(self, unit: str) -> None:
        """A unit with a lone surrogate is hashed as its 'surrogatepass' UTF-8 bytes."""
        assert bucket("new-checkout", unit) == surrogatepass_hash("new-checkout:" + unit)

    def test_lone_surrogate_salt(self) -> None:
        """A salt with a lone surrogate is hashed as its 'surrogatepass' UTF-8 bytes."""
        assert bucket("\udfffsalt", "user-1") == surrogatepass_hash("\udfffsalt:user-1")

    def test_lone_surrogate_key(self) -> None:
        """hash_key() hashes a key with a lone surrogate as its 'surrogatepass' UTF-8 bytes."""
        assert hash_key("s:\ud800") == mmh3.hash(b"s:\xed\xa0\x80", 0, False)

    def test_public_bucket_is_internal_bucket(self) -> None:
        """stagedroll.bucket and stagedroll.threshold are the _bucketing functions."""
        assert stagedroll.bucket is _bucketing.bucket
        assert stagedroll.threshold is _bucketing.threshold


class TestUnits:
    @pytest.mark.parametrize("unit", [0, 1, -1, 42, 2**31, 2**32, 2**64 + 1, -(10**30)])
    def test_int_is_its_str(self, unit: int) -> None:
        """An int unit lands where its decimal string does."""
        assert unit_key(unit) == str(unit)
        assert bucket("new-checkout", unit) == bucket("new-checkout", str(unit))

    @given(salt=ANY_TEXT, unit=st.integers())
    @settings(deadline=None)
    def test_any_int_is_its_str(self, salt: str, unit: int) -> None:
        """Every int unit lands where its str() does."""
        assert bucket(salt, unit) == bucket(salt, str(unit))

    @given(salt=ANY_TEXT, unit=st.uuids())
    @settings(deadline=None)
    def test_uuid_is_its_str(self, salt: str, unit: uuid.UUID) -> None:
        """A uuid.UUID unit lands where its str() does."""
        assert unit_key(unit) == str(unit)
        assert bucket(salt, unit) == bucket(salt, str(unit))

    def test_golden_uuid(self) -> None:
        """The golden UUID vector holds for the UUID object too."""
        unit = uuid.UUID("550e8400-e29b-41d4-a716-446655440000")
        assert bucket("new-checkout", unit) == 1184049765

    @given(unit=ANY_TEXT)
    def test_str_as_is(self, unit: str) -> None:
        """A str unit is used as is."""
        assert unit_key(unit) == unit

    @pytest.mark.parametrize("unit", [True, False], ids=["True", "False"])
    def test_bool_rejected(self, unit: bool) -> None:
        """A bool unit raises TypeError naming bool, even though True == 1."""
        with pytest.raises(TypeError, match=r"\bbool\b"):
            bucket("new-checkout", unit)
        with pytest.raises(TypeError, match=r"\bbool\b"):
            unit_key(unit)

    def test_true_is_not_one(self) -> None:
        """1 is a valid unit while True, equal to it, is rejected."""
        assert bucket("new-checkout", 1) == bucket("new-checkout", "1")
        with pytest.raises(TypeError):
            bucket("new-checkout", True)

    @pytest.mark.parametrize(
        "unit",
        [
            1.0,
            0.5,
            float("nan"),
            b"user-1",
            bytearray(b"user-1"),
            None,
            object(),
            ["user-1"],
            ("user-1",),
            {"user-1"},
            {"id": "user-1"},
            Decimal("1"),
            Fraction(1, 2),
            1j,
        ],
        ids=lambda unit: type(unit).__name__,
    )
    def test_other_types_rejected(self, unit: object) -> None:
        """Units of any other type raise a TypeError whose message names the type."""
        name = type(unit).__name__
        with pytest.raises(TypeError) as excinfo:
            bucket("new-checkout", unit)
        assert name in str(excinfo.value)
        with pytest.raises(TypeError) as excinfo:
            unit_key(unit)
        assert name in str(excinfo.value)

    def test_custom_object_rejected(self) -> None:
        """An object of a user class, even with a __str__, raises TypeError naming its class."""

        class Account:
            def __str__(self) -> str:
                return "user-1"

        with pytest.raises(TypeError, match="Account"):
            bucket("new-checkout", Account())


class TestThreshold:
    def test_bounds(self) -> None:
        """threshold(0) is 0 and threshold(100) is 2**32, whatever the number type."""
        for zero in (0, 0.0, Decimal(0), Decimal("0.0000"), -0.0, Decimal("-0")):
            assert threshold(zero) == 0
        for hundred in (100, 100.0, Decimal(100), Decimal("100.0000"), Decimal("1E+2")):
            assert threshold(hundred) == 2**32

    def test_finest_step(self) -> None:
        """threshold(0.0001) is floor(2**32 / 10**6) and threshold(0.01) is 429496."""
        assert threshold(0.0001) == 4294
        assert threshold(Decimal("0.0001")) == 4294
        assert threshold(0.01) == 429496

    @given(percent=PERCENTS)
    @settings(deadline=None)
    def test_exact(self, percent: Decimal) -> None:
        """threshold(p) equals floor(p * 2**32 / 100) in exact Fraction arithmetic."""
        assert threshold(percent) == exact_threshold(percent)

    @given(percent=PERCENTS)
    @settings(deadline=None)
    def test_float_reads_as_written(self, percent: Decimal) -> None:
        """A float percentage is read as the decimal it was written as."""
        assert threshold(float(percent)) == exact_threshold(percent)

    @given(percent=st.integers(min_value=0, max_value=100))
    @settings(deadline=None)
    def test_int(self, percent: int) -> None:
        """An int percentage gives the exact threshold."""
        assert threshold(percent) == exact_threshold(percent)
        assert threshold(percent) == percent * SPACE // 100

    @given(percents=st.tuples(PERCENTS, PERCENTS))
    @settings(deadline=None)
    def test_monotone(self, percents: tuple[Decimal, Decimal]) -> None:
        """p1 <= p2 implies threshold(p1) <= threshold(p2)."""
        low, high = sorted(percents)
        assert threshold(low) <= threshold(high)

    @given(steps=st.integers(min_value=0, max_value=100 * STEPS_PER_PERCENT - 1))
    @settings(deadline=None)
    def test_strictly_increasing_per_step(self, steps: int) -> None:
        """Each 0.0001 % step adds 4294 or 4295 buckets, so no two percentages share a cohort."""
        gap = threshold(from_steps(steps + 1)) - threshold(from_steps(steps))
        assert gap in {4294, 4295}

    @given(steps=st.integers(min_value=0, max_value=100 * 10**8).filter(lambda s: s % 10**4 != 0))
    @settings(deadline=None)
    def test_rejects_more_than_four_decimals(self, steps: int) -> None:
        """A percentage with five to eight decimals raises ValueError, as Decimal or float."""
        percent = from_steps(steps, 8)
        with pytest.raises(ValueError, match="decimals"):
            threshold(percent)
        with pytest.raises(ValueError, match="decimals"):
            threshold(float(percent))
        assert percent_error(percent) is not None

    @pytest.mark.parametrize(
        "percent",
        [-1, -0.0001, Decimal("-0.0001"), 100.0001, Decimal("100.0001"), 101, 10**100],
        ids=lambda p: f"{type(p).__name__}({p!s:.20})",
    )
    def test_rejects_out_of_range(self, percent: float | Decimal) -> None:
        """A percentage below 0 or above 100 raises ValueError."""
        with pytest.raises(ValueError, match="between 0 and 100"):
            threshold(percent)

    @given(
        percent=st.one_of(
            st.floats(max_value=0, exclude_max=True, allow_nan=False),
            st.floats(min_value=100, exclude_min=True, allow_nan=False),
        )
    )
    @settings(deadline=None)
    def test_rejects_any_float_out_of_range(self, percent: float) -> None:
        """Every float below 0 or above 100 raises ValueError."""
        with pytest.raises(ValueError, match="percent"):
            threshold(percent)

    @pytest.mark.parametrize(
        "percent",
        [
            "50",
            None,
            [50],
            object(),
            float("nan"),
            Decimal("NaN"),
            Decimal("sNaN"),
            float("inf"),
            float("-inf"),
            Decimal("Infinity"),
        ],
        ids=[
            "str",
            "None",
            "list",
            "object",
            "nan",
            "Decimal-NaN",
            "Decimal-sNaN",
            "inf",
            "-inf",
            "Decimal-Infinity",
        ],
    )
    def test_rejects_non_numbers(self, percent: Any) -> None:
        """Non-numbers, NaN and infinities raise ValueError, not TypeError."""
        with pytest.raises(ValueError, match="percent"):
            threshold(percent)
        assert percent_error(percent) is not None

    @given(percent=PERCENTS)
    def test_percent_error_accepts_valid(self, percent: Decimal) -> None:
        """percent_error() is None for every valid percentage, as Decimal and float."""
        assert percent_error(percent) is None
        assert percent_error(float(percent)) is None

    def test_rejects_decimal_with_more_than_four_decimals_beyond_precision(self) -> None:
        """A Decimal whose fifth-or-later decimal lies past 28 significant digits is rejected."""
        percent = Decimal("1.00000000000000000000000000001")
        assert percent_error(percent) is not None
        with pytest.raises(ValueError, match="decimals"):
            threshold(percent)

    def test_exact_whatever_the_decimal_context(self) -> None:
        """threshold() stays exact when the caller has lowered the decimal context precision."""
        expected = exact_threshold(Decimal("99.9999"))
        with localcontext() as context:
            context.prec = 5
            assert threshold(Decimal("99.9999")) == expected
            assert threshold(99.9999) == expected


class TestCohorts:
    @given(salt=ANY_TEXT, unit=UNITS, percents=st.tuples(PERCENTS, PERCENTS))
    @settings(deadline=None)
    def test_monotone_ramp(
        self, salt: str, unit: str | int | uuid.UUID, percents: tuple[Decimal, Decimal]
    ) -> None:
        """A unit in the cohort at p1 is in the cohort at every p2 >= p1."""
        low, high = sorted(percents)
        if in_cohort(salt, unit, low):
            assert in_cohort(salt, unit, high)

    @given(salt=ANY_TEXT, percents=st.lists(PERCENTS, min_size=2, max_size=8))
    @settings(deadline=None, max_examples=50)
    def test_cohorts_nest(self, salt: str, percents: list[Decimal]) -> None:
        """Along any ramp the cohort of a fixed population only grows."""
        population = [f"user-{i}" for i in range(300)]
        cohorts = [
            {unit for unit in population if in_cohort(salt, unit, percent)}
            for percent in sorted(percents)
        ]
        for smaller, larger in itertools.pairwise(cohorts):
            assert smaller <= larger

    @given(salt=ANY_TEXT, unit=UNITS)
    @settings(deadline=None)
    def test_zero_and_hundred(self, salt: str, unit: str | int | uuid.UUID) -> None:
        """No unit is in the 0 % cohort and every unit is in the 100 % cohort."""
        assert not in_cohort(salt, unit, 0)
        assert in_cohort(salt, unit, 100)

    @pytest.mark.parametrize("salt", ["new-checkout", "search-v2", "uniformity"])
    @pytest.mark.parametrize("percent", [0.01, 0.1, 1, 5, 10, 25, 50, 75, 90, 99, 99.99])
    def test_uniform_cohort_size(self, units: list[str], salt: str, percent: float) -> None:
        """The cohort of 20000 units at p holds a binomially plausible share of them."""
        count = sum(in_cohort(salt, unit, percent) for unit in units)
        assert_binomial(count, len(units), threshold(percent) / SPACE)

    @pytest.mark.parametrize("salt", ["new-checkout", "search-v2", "uniformity"])
    def test_uniform_deciles(self, units: list[str], salt: str) -> None:
        """Each tenth of the hash space holds a binomially plausible share of 20000 units."""
        counts = [0] * 10
        for unit in units:
            counts[bucket(salt, unit) * 10 // SPACE] += 1
        for count in counts:
            assert_binomial(count, len(units), 0.1)

    @pytest.mark.parametrize(
        ("salt_a", "salt_b"), [("new-checkout", "search-v2"), ("exp-1", "exp-2")]
    )
    def test_independent_salts_at_half(self, units: list[str], salt_a: str, salt_b: str) -> None:
        """The 50 % cohorts of two salts overlap on about a quarter of the units."""
        in_a = {unit for unit in units if in_cohort(salt_a, unit, 50)}
        in_b = {unit for unit in units if in_cohort(salt_b, unit, 50)}
        assert_binomial(len(in_a), len(units), 0.5)
        assert_binomial(len(in_b), len(units), 0.5)
        assert_binomial(len(in_a & in_b), len(units), 0.25)

    @pytest.mark.parametrize(
        ("salt_a", "salt_b"), [("new-checkout", "search-v2"), ("exp-1", "exp-2")]
    )
    def test_independent_salts_conditional(
        self, units: list[str], salt_a: str, salt_b: str
    ) -> None:
        """At 10 %, P(in B | in A) and P(in B | not in A) are both about 10 %."""
        prob = threshold(10) / SPACE
        in_a = [unit for unit in units if in_cohort(salt_a, unit, 10)]
        out_a = [unit for unit in units if not in_cohort(salt_a, unit, 10)]
        assert_binomial(len(in_a), len(units), prob)
        assert_binomial(sum(in_cohort(salt_b, unit, 10) for unit in in_a), len(in_a), prob)
        assert_binomial(sum(in_cohort(salt_b, unit, 10) for unit in out_a), len(out_a), prob)


CHILD_SCRIPT = """
import json, sys, uuid
from stagedroll import bucket
kinds = {"str": str, "int": int, "uuid": uuid.UUID}
spec = json.load(sys.stdin)
buckets = [bucket(salt, kinds[kind](text)) for salt, kind, text in spec]
print(json.dumps({"buckets": buckets, "str_hash": hash("stagedroll")}))
"""

CROSS_PROCESS_UNITS: list[tuple[str, str, str]] = [
    *(("new-checkout", "str", f"user-{i}") for i in range(200)),
    ("new-checkout", "str", ""),
    ("new-checkout", "str", "ünïcödé"),
    ("new-checkout", "str", "🙂"),
    ("new-checkout", "str", "\ud800"),
    ("Ünïcode-flag", "str", "user-1"),
    ("search-v2", "int", "42"),
    ("search-v2", "int", "-7"),
    ("search-v2", "int", str(2**70)),
    ("search-v2", "uuid", "550e8400-e29b-41d4-a716-446655440000"),
]


def _in_process(spec: list[tuple[str, str, str]]) -> list[int]:
    kinds: dict[str, type[str] | type[int] | type[uuid.UUID]] = {
        "str": str,
        "int": int,
        "uuid": uuid.UUID,
    }
    return [bucket(salt, kinds[kind](text)) for salt, kind, text in spec]


def _in_child(spec: list[tuple[str, str, str]], hash_seed: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    completed = subprocess.run(
        [sys.executable, "-c", CHILD_SCRIPT],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


class TestDeterminismAcrossProcesses:
    def test_same_buckets_with_different_hash_seeds(self) -> None:
        """Processes with different PYTHONHASHSEED compute the same buckets as this one."""
        expected = _in_process(CROSS_PROCESS_UNITS)
        first = _in_child(CROSS_PROCESS_UNITS, "0")
        second = _in_child(CROSS_PROCESS_UNITS, "12345")
        # The seeds took effect: the interpreters' own str hashes differ.
        assert first["str_hash"] != second["str_hash"]
        assert first["buckets"] == expected
        assert second["buckets"] == expected

    def test_child_agrees_with_golden_vectors(self) -> None:
        """A fresh process reproduces every golden hash."""
        spec = [(case["salt"], "str", case["unit"]) for case in GOLDEN_CASES]
        child = _in_child(spec, "98765")
        assert child["buckets"] == [case["hash"] for case in GOLDEN_CASES]
