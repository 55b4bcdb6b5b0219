"""Tests for stagedroll._targeting: rule predicates, segments and version comparison."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stagedroll._targeting import OPERATORS, Predicate, compile_rule, compile_segment, semver_key

# A value that fits each operator, for tests that only need a valid rule.
VALUES: dict[str, Any] = {
    "eq": "x",
    "ne": "x",
    "in": ["x", 1],
    "not_in": ["x", 1],
    "lt": 10,
    "le": 10,
    "gt": 10,
    "ge": 10,
    "prefix": "x",
    "suffix": "x",
    "contains": "x",
    "semver_eq": "1.2.0",
    "semver_lt": "1.2.0",
    "semver_le": "1.2.0",
    "semver_gt": "1.2.0",
    "semver_ge": "1.2.0",
}

ORDERED_VERSIONS = [
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-beta",
    "1.0.0-rc.1",
    "1.0.0",
    "1.0.1",
    "1.1",
    "v2",
]

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5)
)
ATTRIBUTES = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=3),
    st.dictionaries(st.text(max_size=3), SCALARS, max_size=3),
    st.sampled_from(ORDERED_VERSIONS),
)
IDENTIFIERS = st.from_regex(r"[0-9A-Za-z-]{1,6}", fullmatch=True)


def _holds(op: str, value: Any, attribute: object) -> bool:
    """Whether the rule ``x op value`` holds for a unit whose ``x`` is ``attribute``."""
    return compile_rule("x", op, value)({"x": attribute})


def _less(a: str, b: str) -> bool:
    """Whether version ``a`` sorts before version ``b`` (both must be versions)."""
    key_a, key_b = semver_key(a), semver_key(b)
    assert key_a is not None
    assert key_b is not None
    return key_a < key_b


def _constant(result: bool) -> Predicate:
    """A predicate that ignores the attributes and gives ``result``."""
    return lambda attributes: result


class TestOperators:
    def test_every_operator_has_a_case(self) -> None:
        """The table of values below covers every operator there is."""
        assert set(VALUES) == set(OPERATORS)

    @pytest.mark.parametrize(
        ("op", "value", "attribute", "expected"),
        [
            ("eq", "beta", "beta", True),
            ("eq", "beta", "Beta", False),
            ("eq", 3, 3, True),
            ("eq", 3, 4, False),
            ("ne", "beta", "alpha", True),
            ("ne", "beta", "beta", False),
            ("in", ["de", "fr"], "fr", True),
            ("in", ["de", "fr"], "it", False),
            ("in", [1, 2], 2, True),
            ("not_in", ["de", "fr"], "it", True),
            ("not_in", ["de", "fr"], "de", False),
            ("lt", 10, 9, True),
            ("lt", 10, 10, False),
            ("lt", 10, 9.5, True),
            ("lt", "m", "a", True),
            ("lt", "m", "z", False),
            ("le", 10, 10, True),
            ("le", 10, 11, False),
            ("gt", 10, 11, True),
            ("gt", 10, 10, False),
            ("ge", 10, 10, True),
            ("ge", 10, 9, False),
            ("ge", 2.5, 3, True),
            ("prefix", "admin-", "admin-7", True),
            ("prefix", "admin-", "user-7", False),
            ("suffix", "@example.com", "ann@example.com", True),
            ("suffix", "@example.com", "ann@example.org", False),
            ("contains", "beta", "pre-beta-1", True),
            ("contains", "beta", "alpha", False),
            ("contains", "beta", ["alpha", "beta"], True),
            ("contains", "beta", ["alpha"], False),
            ("semver_eq", "1.2", "1.2.0", True),
            ("semver_eq", "1.2", "1.2.1", False),
            ("semver_lt", "2.0.0", "1.9.9", True),
            ("semver_lt", "2.0.0", "2.0.0", False),
            ("semver_lt", "2.0.0", "2.0.0-rc.1", True),
            ("semver_le", "2.0.0", "2.0.0", True),
            ("semver_le", "2.0.0", "2.0.1", False),
            ("semver_gt", "1.10.0", "1.10.1", True),
            ("semver_gt", "1.10.0", "1.9.0", False),
            ("semver_ge", "1.4.0", "v1.4.0", True),
            ("semver_ge", "1.4.0", "1.4.0-beta", False),
        ],
    )
    def test_operator(self, op: str, value: Any, attribute: object, expected: bool) -> None:
        """Each operator holds when its condition does, and only then."""
        assert _holds(op, value, attribute) is expected

    @given(st.text(max_size=5), st.one_of(SCALARS, st.text(max_size=5)))
    def test_ne_is_not_eq(self, value: str, attribute: object) -> None:
        """For a present attribute, ne holds exactly when eq does not."""
        assert _holds("ne", value, attribute) is not _holds("eq", value, attribute)

    @given(st.lists(st.text(max_size=3), min_size=1, max_size=4), SCALARS)
    def test_not_in_is_not_in(self, value: list[str], attribute: object) -> None:
        """For a present hashable attribute, not_in holds exactly when in does not."""
        assert _holds("not_in", value, attribute) is not _holds("in", value, attribute)

    @given(st.integers(), st.one_of(st.integers(), st.floats(allow_nan=False)))
    def test_orders_are_complements(self, value: int, attribute: float) -> None:
        """For numbers, lt is the complement of ge and gt the complement of le."""
        assert _holds("lt", value, attribute) is not _holds("ge", value, attribute)
        assert _holds("gt", value, attribute) is not _holds("le", value, attribute)

    def test_other_attributes_are_ignored(self) -> None:
        """A rule reads only its own attribute."""
        rule = compile_rule("country", "eq", "fr")
        assert rule({"country": "fr", "plan": "free"}) is True
        assert rule({"plan": "fr"}) is False


class TestMissingAttribute:
    @pytest.mark.parametrize("op", OPERATORS)
    def test_missing_is_false(self, op: str) -> None:
        """A missing attribute makes every operator false, ne and not_in included."""
        rule = compile_rule("x", op, VALUES[op])
        assert rule({}) is False
        assert rule({"y": "x"}) is False

    @given(
        st.sampled_from(OPERATORS),
        st.dictionaries(st.text(max_size=3).filter(lambda k: k != "x"), ATTRIBUTES),
    )
    def test_missing_is_false_whatever_else(self, op: str, attributes: dict[str, object]) -> None:
        """Whatever other attributes a unit has, a rule on one it lacks is false."""
        assert compile_rule("x", op, VALUES[op])(attributes) is False

    def test_none_is_present(self) -> None:
        """An attribute set to None is present: ne holds for it, eq does not."""
        assert _holds("ne", "x", None) is True
        assert _holds("eq", "x", None) is False


class TestWrongTypes:
    @pytest.mark.parametrize(
        ("op", "value", "attribute"),
        [
            ("lt", 10, "5"),
            ("lt", "5", 10),
            ("ge", 1, True),
            ("gt", 0, None),
            ("le", 10, [1]),
            ("prefix", "1", 12),
            ("suffix", "x", None),
            ("suffix", "x", ["x"]),
            ("contains", "1", 1),
            ("contains", "x", None),
            ("in", ["x", 1], ["x"]),
            ("in", ["x", 1], {"x": 1}),
            ("not_in", ["x", 1], ["y"]),
            ("semver_eq", "1.0.0", 1),
            ("semver_ge", "1.0.0", 1.5),
            ("semver_ge", "1.0.0", "latest"),
            ("semver_lt", "1.0.0", None),
        ],
    )
    def test_wrong_type_is_false(self, op: str, value: Any, attribute: object) -> None:
        """An attribute of the wrong type, or unhashable for in and not_in, makes a rule false."""
        assert _holds(op, value, attribute) is False

    def test_raising_comparison_is_false(self) -> None:
        """An attribute whose comparison raises makes the rule false, not an error."""

        class Odd:
            def __eq__(self, other: object) -> bool:
                raise RuntimeError("no")

            __hash__ = object.__hash__

        assert _holds("eq", "x", Odd()) is False
        assert _holds("ne", "x", Odd()) is False

    @given(st.sampled_from(OPERATORS), ATTRIBUTES)
    def test_never_raises(self, op: str, attribute: object) -> None:
        """Whatever the attribute, a rule gives a bool."""
        assert isinstance(_holds(op, VALUES[op], attribute), bool)


class TestCompileRule:
    def test_unknown_operator(self) -> None:
        """An unknown operator is refused when the rule is compiled."""
        with pytest.raises(ValueError, match="unknown operator 'regex'"):
            compile_rule("x", "regex", "a")

    def test_semver_needs_a_version(self) -> None:
        """A semver rule whose value is not a version is refused when compiled."""
        with pytest.raises(ValueError, match="not a version: 'latest'"):
            compile_rule("x", "semver_ge", "latest")


class TestSemverKey:
    def test_precedence(self) -> None:
        """Versions sort by semantic versioning precedence."""
        for lower, higher in pairwise(ORDERED_VERSIONS):
            assert _less(lower, higher), f"{lower} should sort before {higher}"

    @pytest.mark.parametrize(
        ("a", "b"),
        [
            ("1.2", "1.2.0"),
            ("1", "1.0.0"),
            ("v1.2.3", "1.2.3"),
            ("1.2.3+build.5", "1.2.3"),
            ("1.2.3-rc.1+exp.sha.5114f85", "1.2.3-rc.1"),
            (" 1.2.3 ", "1.2.3"),
        ],
    )
    def test_equal_versions(self, a: str, b: str) -> None:
        """Missing parts are zero; a leading v, build metadata and outer spaces are ignored."""
        assert semver_key(a) is not None
        assert semver_key(a) == semver_key(b)

    def test_numeric_identifiers_sort_numerically_and_first(self) -> None:
        """Numeric pre-release identifiers sort as numbers, and before alphanumeric ones."""
        assert _less("1.0.0-rc.2", "1.0.0-rc.10")
        assert _less("1.0.0-1", "1.0.0-alpha")
        assert _less("1.9.0", "1.10.0")

    @pytest.mark.parametrize(
        "text",
        ["", "abc", "latest", "1.2.3.4", "1..2", "1.0.0-", "1.0.0-a..b", "V1.0", "x1.0", "1.0.0+"],
    )
    def test_garbage_is_none(self, text: str) -> None:
        """Text that is not a version has no key."""
        assert semver_key(text) is None

    @pytest.mark.parametrize("value", [None, 1, 1.2, b"1.2.3", ["1", "2"]])
    def test_non_text_is_none(self, value: object) -> None:
        """Anything but a str has no key."""
        assert semver_key(value) is None

    @given(st.tuples(*[st.integers(0, 10**6)] * 3), st.tuples(*[st.integers(0, 10**6)] * 3))
    def test_order_of_releases(self, a: tuple[int, int, int], b: tuple[int, int, int]) -> None:
        """Releases sort as their (major, minor, patch) numbers do."""
        key_a, key_b = semver_key(".".join(map(str, a))), semver_key(".".join(map(str, b)))
        assert key_a is not None
        assert key_b is not None
        assert (key_a < key_b) is (a < b)
        assert (key_a == key_b) is (a == b)

    @given(
        st.tuples(*[st.integers(0, 999)] * 3),
        st.lists(IDENTIFIERS, min_size=1, max_size=3),
        st.lists(IDENTIFIERS, min_size=1, max_size=3),
    )
    def test_pre_release_before_release_and_build_ignored(
        self, core: tuple[int, int, int], pre: list[str], build: list[str]
    ) -> None:
        """A pre-release sorts before its release, and build metadata never counts."""
        release = ".".join(map(str, core))
        pre_release = f"{release}-{'.'.join(pre)}"
        assert _less(pre_release, release)
        assert semver_key(f"{release}+{'.'.join(build)}") == semver_key(release)
        assert semver_key(f"{pre_release}+{'.'.join(build)}") == semver_key(pre_release)


class TestCompileSegment:
    def test_match_all(self) -> None:
        """With match all, every rule must hold."""
        segment = compile_segment(
            [
                compile_rule("email", "suffix", "@example.com"),
                compile_rule("country", "in", ["de", "fr"]),
            ],
            match="all",
        )
        assert segment({"email": "a@example.com", "country": "fr"}) is True
        assert segment({"email": "a@example.com", "country": "it"}) is False
        assert segment({"email": "a@example.com"}) is False

    def test_match_any(self) -> None:
        """With match any, one rule holding is enough."""
        segment = compile_segment(
            [
                compile_rule("email", "suffix", "@example.com"),
                compile_rule("country", "in", ["de", "fr"]),
            ],
            match="any",
        )
        assert segment({"email": "a@example.org", "country": "fr"}) is True
        assert segment({"email": "a@example.com"}) is True
        assert segment({"email": "a@example.org", "country": "it"}) is False
        assert segment({}) is False

    @given(st.lists(st.booleans(), max_size=6))
    def test_all_and_any_laws(self, results: list[bool]) -> None:
        """A segment is the all() or any() of its rules' results."""
        rules = [_constant(result) for result in results]
        assert compile_segment(rules, match="all")({}) is all(results)
        assert compile_segment(rules, match="any")({}) is any(results)

    def test_rules_are_copied(self) -> None:
        """Changing the list of rules after compiling does not change the segment."""
        rules = [_constant(True)]
        segment = compile_segment(rules, match="all")
        rules.append(_constant(False))
        assert segment({}) is True
