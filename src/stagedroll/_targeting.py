"""Targeting rules: segment predicates over a unit's attributes, and version comparison.

A rule never raises. A missing attribute makes every rule false (``ne`` and ``not_in``
included). An attribute of the wrong type makes the ordering, text and version rules false;
``eq``, ``ne``, ``in`` and ``not_in`` compare with Python's ``==``, so ``42`` is ``ne``
``"DE"``, and ``true`` equals ``1``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any, Literal, get_args

__all__ = ["OPERATORS", "Operator", "Predicate", "compile_rule", "compile_segment", "semver_key"]

Operator = Literal[
    "eq", "ne", "in", "not_in", "lt", "le", "gt", "ge", "prefix", "suffix", "contains",
    "semver_eq", "semver_lt", "semver_le", "semver_gt", "semver_ge",
]  # fmt: skip
OPERATORS: tuple[str, ...] = get_args(Operator)
"""Every operator a segment rule may use."""

Attributes = Mapping[str, object]
Predicate = Callable[[Attributes], bool]

_MISSING = object()
_SEMVER = re.compile(
    r"v?(?P<core>\d+(?:\.\d+){0,2})(?:-(?P<pre>[0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?"
)
_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
}
_SEMVER_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "semver_eq": operator.eq,
    "semver_lt": operator.lt,
    "semver_le": operator.le,
    "semver_gt": operator.gt,
    "semver_ge": operator.ge,
}

SemverKey = tuple[int, int, int, tuple[tuple[int, int | str], ...]]


def semver_key(text: object) -> SemverKey | None:
    """Return a sort key for a version such as ``1.4``, ``v2.0.1`` or ``1.0.0-rc.1``.

    Follows semantic versioning precedence: missing minor and patch are zero, build metadata
    is ignored, and a pre-release sorts before its release. ``None`` if ``text`` is not a
    version.
    """
    if not isinstance(text, str):
        return None
    match = _SEMVER.fullmatch(text.strip())
    if match is None:
        return None
    parts = [int(p) for p in match["core"].split(".")]
    major, minor, patch = (*parts, 0, 0)[:3]
    pre = match["pre"]
    if pre is None:
        # A release outranks every pre-release of the same version.
        return (major, minor, patch, ((2, 0),))
    ids: list[tuple[int, int | str]] = []
    for ident in pre.split("."):
        if not ident:
            return None
        ids.append((0, int(ident)) if ident.isdigit() else (1, ident))
    return (major, minor, patch, tuple(ids))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _comparable(left: object, right: object) -> bool:
    return (_is_number(left) and _is_number(right)) or (
        isinstance(left, str) and isinstance(right, str)
    )


def compile_rule(attribute: str, op: str, value: Any) -> Predicate:
    """Return a predicate for one rule. ``value`` has been validated for ``op`` already."""
    if op in ("eq", "ne", "in", "not_in"):
        return _membership(attribute, op, value)
    check: Callable[[object], bool]
    if op in _ORDER:
        compare = _ORDER[op]
        check = lambda a: _comparable(a, value) and compare(a, value)  # noqa: E731 - one line
    elif op == "prefix":
        check = lambda a: isinstance(a, str) and a.startswith(value)  # noqa: E731
    elif op == "suffix":
        check = lambda a: isinstance(a, str) and a.endswith(value)  # noqa: E731
    elif op == "contains":
        check = lambda a: isinstance(a, str | Collection) and value in a  # noqa: E731
    elif op in _SEMVER_ORDER:
        compare = _SEMVER_ORDER[op]
        bound = semver_key(value)
        if bound is None:
            raise ValueError(f"not a version: {value!r}")

        def check(a: object) -> bool:
            key = semver_key(a)
            return key is not None and compare(key, bound)

    else:
        raise ValueError(f"unknown operator {op!r}")

    def predicate(attributes: Attributes) -> bool:
        found = attributes.get(attribute, _MISSING)
        if found is _MISSING:
            return False
        try:
            return bool(check(found))
        except Exception:  # an odd attribute (unhashable, strange __eq__) does not match
            return False

    return predicate


def _membership(attribute: str, op: str, value: Any) -> Predicate:
    """The predicate of an ``eq``, ``ne``, ``in`` or ``not_in`` rule, in one call.

    The commonest rules, on the decision path: no inner function to call. A missing
    attribute matches none of them; an odd one (unhashable, a raising ``__eq__``) neither.
    """
    if op in ("in", "not_in"):
        choices, wanted = frozenset(value), op == "in"

        def member(attributes: Attributes) -> bool:
            found = attributes.get(attribute, _MISSING)
            if found is _MISSING:
                return False
            try:
                return (found in choices) is wanted
            except Exception:
                return False

        return member
    equal = op == "eq"

    def compared(attributes: Attributes) -> bool:
        found = attributes.get(attribute, _MISSING)
        if found is _MISSING:
            return False
        try:
            return bool(found == value) if equal else bool(found != value)
        except Exception:
            return False

    return compared


def compile_segment(rules: Collection[Predicate], *, match: Literal["all", "any"]) -> Predicate:
    """Combine rule predicates: all must hold, or any may."""
    frozen = tuple(rules)
    if len(frozen) == 1:
        return frozen[0]
    wanted = match == "any"

    def segment(attributes: Attributes) -> bool:
        # A loop, not all()/any() over a generator: this runs on the decision path.
        for rule in frozen:
            if rule(attributes) is wanted:
                return wanted
        return not wanted

    return segment
