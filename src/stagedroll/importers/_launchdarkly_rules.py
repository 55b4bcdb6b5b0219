"""LaunchDarkly's rule clauses as stagedroll's segment rules, where they have an equivalent.

A LaunchDarkly rule matches a unit when all its clauses do, and a clause when any of its
values does. A rule serving the new path becomes segments that stage 0 includes: one
segment per combination of its clauses' values (at most :data:`MAX_SEGMENTS_PER_RULE`),
or one ``match = "any"`` segment for a rule of one clause. The operators, the context
kinds and the attributes without an equivalent give the reason instead, which the
importer (``_launchdarkly.py``) reports. An ``in`` clause listing a number past 2**53
(which the SDKs do not compare exactly) does not map; a value that never matches in
LaunchDarkly (a version it does not parse, text for a number operator) is dropped.
"""

from __future__ import annotations

import math
import re
from itertools import product
from typing import Any

from ._launchdarkly_export import Clause, attribute_of, shown

__all__ = ["MAX_SEGMENTS_PER_RULE", "segments_of", "user_keys"]

MAX_SEGMENTS_PER_RULE = 16
"""The segments one rule may become (one per combination of its clauses' values), at most."""

_EXACT_INT = 2**53  # JSON numbers beyond this are not compared exactly by LaunchDarkly's SDKs
_SEMVER = re.compile(  # what LaunchDarkly parses as a version (it adds a missing .0 or .0.0)
    r"(0|[1-9]\d*)(\.(0|[1-9]\d*)){0,2}(-(0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)"
    r"(\.(0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?",
    re.ASCII,
)
_TEXT_OPS = {"startsWith": "prefix", "endsWith": "suffix", "contains": "contains"}
_NUMBER_OPS = {"lessThan": "lt", "lessThanOrEqual": "le", "greaterThan": "gt",
               "greaterThanOrEqual": "ge"}  # fmt: skip
_SEMVER_OPS = {"semVerEqual": "semver_eq", "semVerLessThan": "semver_lt",
               "semVerGreaterThan": "semver_gt"}  # fmt: skip
_NO_EQUIVALENT = {
    "matches": "a regular expression, which stagedroll's rules do not have",
    "before": "a date comparison, which stagedroll's rules do not have",
    "after": "a date comparison, which stagedroll's rules do not have",
    "segmentMatch": "membership of LaunchDarkly segments, which are not imported",
}
_BUILT_IN = {"kind": "the context kind", "anonymous": "LaunchDarkly's built-in 'anonymous'",
             "_meta": "context metadata"}  # fmt: skip


def user_keys(clauses: list[Clause]) -> list[str] | None:
    """The user keys a rule lists, when its one clause is ``key in [...]``; else ``None``."""
    if len(clauses) != 1:
        return None
    clause = clauses[0]
    if (clause.attribute, clause.op) != ("key", "in") or clause.negate or clause.kind != "user":
        return None
    values = clause.values
    return values if all(isinstance(v, str) for v in values) else None


def _scalar(value: object) -> bool:
    if isinstance(value, bool | str):
        return True
    if isinstance(value, int):
        return abs(value) <= _EXACT_INT
    return isinstance(value, float) and math.isfinite(value)


def _alternatives(clause: Clause) -> list[list[dict[str, Any]]] | str:
    """A clause as stagedroll rules: any one of the lists, each a conjunction; or why not."""
    op, values, negate = clause.op, clause.values, clause.negate
    if clause.kind != "user":
        return f"tests contexts of kind {shown(clause.kind)}; stagedroll's units are users"
    attribute = attribute_of(clause.attribute, clause.context_kind)
    if attribute is None:
        return f"tests the nested attribute {shown(clause.attribute)}, which rules cannot name"
    if not attribute:
        return "names no attribute (LaunchDarkly fails the evaluation)"
    if attribute in _BUILT_IN or attribute == "key":
        what = _BUILT_IN.get(attribute, "the user key, which stagedroll's rules do not see")
        return f"tests {what}"
    if op in _NO_EQUIVALENT:
        return f"operator {shown(op)} is {_NO_EQUIVALENT[op]}"
    if negate and op != "in":
        return f"a negated {shown(op)} has no stagedroll operator"

    def rule(operator: str, value: object) -> dict[str, Any]:
        return {"attribute": attribute, "op": operator, "value": value}

    if op == "in":
        if not all(_scalar(v) for v in values):
            return "lists a value that is not text, a boolean or a number stagedroll compares"
        unique = list(dict.fromkeys((type(v), v) for v in values))
        if not unique:
            return "lists no values (it never matches)"
        if len(unique) == 1:
            return [[rule("ne" if negate else "eq", unique[0][1])]]
        return [[rule("not_in" if negate else "in", [v for _, v in unique])]]
    if op in _TEXT_OPS:
        texts = list(dict.fromkeys(v for v in values if isinstance(v, str)))
        return [[rule(_TEXT_OPS[op], v)] for v in texts] or "has no text value (never matches)"
    if op in _NUMBER_OPS:
        numbers = [v for v in values if _scalar(v) and not isinstance(v, bool | str)]
        if not numbers:
            return "has no number (it never matches)"
        bound = max(numbers) if op.startswith("less") else min(numbers)  # any of them: the widest
        return [[rule(_NUMBER_OPS[op], bound)]]
    if op in _SEMVER_OPS:
        versions = [v for v in values if isinstance(v, str) and _SEMVER.fullmatch(v)]
        versions = list(dict.fromkeys(versions))
        return [[rule(_SEMVER_OPS[op], v)] for v in versions] or "has no version (never matches)"
    return f"operator {shown(op)} is not one LaunchDarkly documents"


def segments_of(clauses: list[Clause], path: str) -> list[Any] | tuple[str, str]:
    """The segments of a rule serving the new path (any matches), or where and why not."""
    if not clauses:
        return path, "has no clauses, so it matches every unit"
    options = []
    for clause in clauses:
        found = _alternatives(clause)
        if isinstance(found, str):
            return clause.path, found
        options.append(found)
    if len(options) == 1 and all(len(a) == 1 for a in options[0]) and len(options[0]) > 1:
        return [{"match": "any", "rules": [a[0] for a in options[0]]}]
    count = math.prod(len(o) for o in options)
    if count > MAX_SEGMENTS_PER_RULE:
        return path, (f"would take {count} segments (one per combination of its clauses' "
                      f"values; at most {MAX_SEGMENTS_PER_RULE})")  # fmt: skip
    return [{"rules": [r for part in combo for r in part]} for combo in product(*options)]
