"""GrowthBook's feature rules, read one at a time: whom each serves, and how it buckets.

:func:`read_rule` checks the fields of a rule that decide who is served (a wrong type is a
problem: the payload is refused) and reads the rule on its own, as a cohort (``coverage`` or
a ``range``), a target (a ``condition``), everyone, or ``unmapped`` with the reason. A
condition, GrowthBook's MongoDB-like language, becomes alternatives of segment rules; the
walk is bounded in nesting, alternatives and tests, so a deep or wide condition ends in a
report. ``_growthbook.py`` maps the rules of a feature, in order, to a rollout.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._document import clipped

__all__ = [
    "LEFT_OUT",
    "Atom",
    "NoMap",
    "Rule",
    "canon",
    "duplicates",
    "modulus",
    "read_rule",
    "read_value",
    "show",
    "split",
    "unmap",
]

LEFT_OUT = "the imported rollout leaves the rule out, so the units it serves follow the later rules"
"""How a report ends for a rule left out of a rollout that is imported."""

_MAX_VALUE_DEPTH = 64  # the nesting of a forced value (as a policy file's)
_MAX_NESTING = 16  # levels of $and / $or a condition may nest to map
_MAX_BRANCHES = 64  # alternatives a condition may expand to
_MAX_TESTS = 256  # tests of attributes in one alternative
_ORDER = {"$gt": "gt", "$gte": "ge", "$lt": "lt", "$lte": "le"}
_REGEX_META = frozenset(".^$*+?{}[]|()")
_NOT_MATCHING = {
    "$ne": "matches a unit without the attribute, which stagedroll's ne never does",
    "$nin": "matches a unit without the attribute, which stagedroll's not_in never does",
    "$notInGroup": "matches a unit without the attribute, which stagedroll's not_in never does",
    "$not": "negates a condition, which no stagedroll rule does",
    "$nor": "negates conditions, which no stagedroll rule does",
    "$notRegex": "negates a regular expression, which no stagedroll rule does",
    "$exists": "tests whether the attribute is there, which no stagedroll operator does",
    "$regexi": "matches ignoring case, which no stagedroll operator does",
    "$ini": "matches ignoring case, which no stagedroll operator does",
    "$nini": "matches ignoring case, which no stagedroll operator does",
    "$alli": "matches ignoring case, which no stagedroll operator does",
    "$elemMatch": "tests the items of a list attribute, which no stagedroll operator does",
    "$size": "tests the length of a list attribute, which no stagedroll operator does",
    "$all": "tests the items of a list attribute, which no stagedroll operator does",
    "$type": "tests the attribute's type, which no stagedroll operator does",
    "$savedGroup": "refers to a saved group by reference, which the importer does not read",
}
_VERSIONS = frozenset({"$veq", "$vne", "$vlt", "$vlte", "$vgt", "$vgte"})

Atom = dict[str, Any]  # a stagedroll segment rule: {"attribute", "op", "value"}


class NoMap(Exception):
    """A condition with no exact stagedroll equivalent: where, and why."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(where, why)
        self.where, self.why = where, why


@dataclass(slots=True, eq=False)
class Rule:
    """One rule of a feature, as read: what it serves, to whom, or why it does not map."""

    index: int
    kind: str = "skip"  # "skip", "unmapped", "all", "cohort" or "target"
    forces: bool = False  # it has a force value (whatever its kind now)
    percentage: bool = False  # it has a coverage or a range
    value: Any = None
    canon: Hashable = None
    reason: str = ""
    on: bool | None = None  # serves the new value (True), the old (False), a third (None)
    bucket: tuple[str, str, int] = ("", "id", 1)  # seed, hash attribute, hash version
    cut: int = 0  # the positions below it are in (of 10 000 for v2, 1 000 for v1)
    branches: list[list[Atom]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (part, reason) beside it


def read_rule(
    index: int,
    raw: object,
    *,
    key: str,
    where: str,
    groups: Mapping[str, Any],
    problems: list[tuple[str, str]],
) -> Rule:
    """Rule ``index`` of feature ``key``, found at ``where``: typed, and mapped on its own.

    A field of the wrong type is added to ``problems`` (the payload is refused); a rule with
    no exact stagedroll equivalent is read as ``unmapped``, with the reason. ``groups`` are
    the payload's saved groups.
    """
    rule = Rule(index)
    if not isinstance(raw, Mapping):
        problems.append((where, "must be an object (a rule)"))
        return rule
    duplicates(raw, where, problems)
    if not _typed(raw, where, problems):
        return rule
    if raw.get("force") is None:
        variations = raw.get("variations") or raw.get("contextualVariations")
        if variations is not None:
            count = len(variations) if isinstance(variations, list) else 0
            unmap(rule, f"runs an experiment ({count} variations): a rollout has one new "
                  f"path and no experiments; {LEFT_OUT}")  # fmt: skip
        return rule  # neither a value nor variations: GrowthBook skips it too
    rule.forces, rule.value = True, raw["force"]
    rule.canon = read_value(rule.value, f"{where}.force", problems)
    rule.kind = "target" if raw.get("condition") else "all"
    if raw.get("parentConditions"):
        return unmap(rule, "depends on other features (parentConditions): stagedroll "
                     f"has no prerequisites; {LEFT_OUT}")  # fmt: skip
    if raw.get("filters"):
        return unmap(rule, "serves only a slice of the units (filters, a namespace): "
                     f"no stagedroll rule does; {LEFT_OUT}")  # fmt: skip
    if raw.get("tracks"):
        rule.notes.append((f"{where}.tracks", "GrowthBook fires these experiment "
                           "exposure events when it serves the rule; stagedroll records "
                           "its own outcomes instead"))  # fmt: skip
    rule.percentage = bool(raw.get("range")) or raw.get("coverage") is not None
    if rule.percentage:
        _cohort(rule, raw, where, key)
    if rule.kind == "unmapped" or not raw.get("condition"):
        return rule
    if rule.percentage:
        share = f"{rule.cut * 100 / modulus(rule.bucket[2]):g} %"
        return unmap(rule, f"serves {show(rule.value)} to {share} of the units that match "
                     "its condition: stagedroll cannot restrict a percentage to a group "
                     f"(a segment adds all its units); {LEFT_OUT}")  # fmt: skip
    try:
        rule.branches = _branches(raw["condition"], f"{where}.condition", groups)
    except NoMap as exc:
        return unmap(rule, f"its condition {exc.why} (at {exc.where}); {LEFT_OUT}")
    if [] in rule.branches:  # a branch that holds for everyone: a rule without condition
        rule.kind, rule.branches = "all", []
    return rule


def _typed(raw: Mapping[str, Any], where: str, problems: list[tuple[str, str]]) -> bool:
    """Whether the fields that decide who is served have their documented types."""
    before = len(problems)
    coverage, version = raw.get("coverage"), raw.get("hashVersion")
    if coverage is not None and not _finite(coverage):
        problems.append((f"{where}.coverage", "must be a number from 0 to 1"))
    texts = ("hashAttribute", "seed", "fallbackAttribute")
    wrong = [part for part in texts if raw.get(part) is not None and not isinstance(raw[part], str)]
    problems += [(f"{where}.{part}", "must be text") for part in wrong]
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        problems.append((f"{where}.hashVersion", "must be 1 or 2"))
    span = raw.get("range")
    if span is not None and not (
        isinstance(span, list) and len(span) == 2 and all(_finite(v) for v in span)
    ):
        problems.append((f"{where}.range", "must be a list of two numbers"))
    condition = raw.get("condition")
    if condition is not None and not isinstance(condition, Mapping):
        problems.append((f"{where}.condition", "must be an object (a condition)"))
    return len(problems) == before


def _cohort(rule: Rule, raw: Mapping[str, Any], where: str, key: str) -> None:
    """The percentage of a rule with ``coverage`` or ``range``, as GrowthBook's SDK has it."""
    seed = raw.get("seed") or key  # the SDK: rule.seed or the feature's key
    attribute = raw.get("hashAttribute")
    attribute = "id" if attribute is None else attribute
    version = raw.get("hashVersion") or 1  # a rule without hashVersion hashes with v1
    rule.kind, rule.bucket = "cohort", (seed, attribute, version)
    if version not in (1, 2):
        unmap(rule, f"hashes with version {show(version)}, which GrowthBook's SDKs do "
              f"not know (they serve the rule to no unit); {LEFT_OUT}")  # fmt: skip
        return
    if not attribute:
        unmap(rule, f"hashes on an attribute with an empty name; {LEFT_OUT}")
        return
    span = raw.get("range")
    if span:
        if span[0] > 0:
            unmap(rule, f"serves the slice [{span[0]:g}, {span[1]:g}) of the hash space, "
                  "which does not start at 0 as a stagedroll cohort does; "
                  f"{LEFT_OUT}")  # fmt: skip
            return
        coverage = span[1]  # 0 <= n < end: the cohort of coverage ``end``
    else:
        coverage = raw["coverage"]
    rule.cut = _cut(coverage, modulus(version))
    fallback = raw.get("fallbackAttribute")
    if fallback and not raw.get("disableStickyBucketing"):
        rule.notes.append((f"{where}.fallbackAttribute", "GrowthBook hashes a unit "
                           f"without {show(attribute)} on {show(fallback)} instead; the "
                           "imported rollout leaves such a unit out of the "
                           "percentage"))  # fmt: skip


def unmap(rule: Rule, reason: str) -> Rule:
    """``rule``, marked as not mapped for ``reason`` (its notes no longer apply)."""
    rule.kind, rule.reason, rule.notes = "unmapped", reason, []
    return rule


# -- conditions -----------------------------------------------------------------------------------


def _branches(
    condition: object, where: str, groups: Mapping[str, Any], depth: int = 0
) -> list[list[Atom]]:
    """A condition as alternatives (any of them), each a list of rules (all of them).

    ``groups`` are the payload's saved groups, for ``$inGroup``; ``where`` is the condition's
    path in the payload. A part with no exact equivalent raises :class:`NoMap`.
    """
    if depth > _MAX_NESTING:
        raise NoMap(where, f"nests deeper than {_MAX_NESTING} levels")
    if not isinstance(condition, Mapping):
        raise NoMap(where, "is not a condition object")
    tests: list[Atom] = []  # the attributes' tests, all of which must hold
    parts: list[list[list[Atom]]] = []  # the $and and $or parts, each a set of alternatives
    for key, value in condition.items():
        at = f"{where}.{key}"
        if key in ("$and", "$or"):
            if not isinstance(value, list):
                raise NoMap(at, "is not a list of conditions")
            subs = [_branches(c, f"{at}[{i}]", groups, depth + 1) for i, c in enumerate(value)]
            if key == "$and":
                parts += subs
            elif subs:  # an empty $or holds (GrowthBook: evalOr([]) is true)
                parts.append([branch for sub in subs for branch in sub])
        elif not isinstance(key, str) or key.startswith("$"):
            why = _NOT_MATCHING.get(str(key))
            raise NoMap(at, f"{key} {why}" if why else "uses an operator stagedroll does not know")
        else:
            tests += _atoms(key, value, at, groups)
        if len(tests) > _MAX_TESTS:
            raise NoMap(where, f"has more than {_MAX_TESTS} tests")
    out: list[list[Atom]] = [tests]
    for part in parts:
        if len(out) * len(part) > _MAX_BRANCHES:
            raise NoMap(where, f"expands to more than {_MAX_BRANCHES} alternatives")
        out = [[*a, *b] for a in out for b in part]
        if any(len(branch) > _MAX_TESTS for branch in out):
            raise NoMap(where, f"has more than {_MAX_TESTS} tests")
    return out


def split(alternatives: list[list[Atom]], key_attribute: str) -> tuple[list[str], list[list[Atom]]]:
    """The alternatives that list units by their key (ids), and the others (groups)."""
    ids: list[str] = []
    groups: list[list[Atom]] = []
    for branch in alternatives:
        atom = branch[0] if len(branch) == 1 else None
        if atom is not None and atom["attribute"] == key_attribute and atom["op"] in ("eq", "in"):
            values = atom["value"] if atom["op"] == "in" else [atom["value"]]
            if all(isinstance(v, str) for v in values):
                ids += values
                continue
        groups.append(branch)
    return ids, groups


def _atoms(attribute: str, value: object, where: str, groups: Mapping[str, Any]) -> list[Atom]:
    """The rules that test ``attribute`` as GrowthBook's ``{attribute: value}`` does."""
    if "." in attribute:
        raise NoMap(where, "reads a nested attribute (a dotted path); stagedroll reads flat ones")
    if isinstance(value, Mapping) and all(isinstance(k, str) and k[:1] == "$" for k in value):
        return [_operator(attribute, op, v, f"{where}.{op}", groups) for op, v in value.items()]
    if not _scalar(value):
        raise NoMap(where, "compares the attribute with null, a list or an object")
    return [{"attribute": attribute, "op": "eq", "value": value}]


def _operator(
    attribute: str, op: str, value: object, where: str, groups: Mapping[str, Any]
) -> Atom:
    if op == "$eq" and _scalar(value):
        return {"attribute": attribute, "op": "eq", "value": value}
    if op == "$in" and isinstance(value, list) and value and all(_scalar(v) for v in value):
        return {"attribute": attribute, "op": "in", "value": list(value)}
    if op == "$inGroup" and isinstance(value, str):
        values = _group(value, groups, where)
        if values and all(_scalar(v) for v in values):
            return {"attribute": attribute, "op": "in", "value": values}
        raise NoMap(where, f"$inGroup names the saved group {show(value)}, whose values no "
                    "stagedroll rule takes (none, or not text, numbers or booleans)")  # fmt: skip
    if op in _ORDER and (isinstance(value, str) or _finite(value)):
        return {"attribute": attribute, "op": _ORDER[op], "value": value}
    if op == "$regex" and isinstance(value, str):
        plain = _plain_regex(value)
        if plain is not None:
            return {"attribute": attribute, "op": plain[0], "value": plain[1]}
        raise NoMap(where, "is a regular expression that is not a plain prefix, suffix or text")
    if op in _NOT_MATCHING:
        raise NoMap(where, f"{op} {_NOT_MATCHING[op]}")
    if op in _VERSIONS:
        raise NoMap(where, f"{op} compares versions as GrowthBook pads them, which stagedroll's "
                    "semver rules do not match exactly")  # fmt: skip
    if op in ("$eq", "$in", "$inGroup", "$regex", *_ORDER):
        raise NoMap(where, f"{op} has a value no stagedroll rule takes ({show(value)})")
    raise NoMap(where, f"{op} is an operator stagedroll does not know")


def _group(group_id: str, groups: Mapping[str, Any], where: str) -> list[Any]:
    """The values of a saved group: a legacy list, or ``{"type": "list", "values": [...]}``."""
    group = groups.get(group_id)
    if isinstance(group, Mapping) and group.get("type") == "list":
        group = group.get("values")
    if not isinstance(group, list):
        raise NoMap(where, f"$inGroup names the saved group {show(group_id)}, which the "
                    "payload does not hold as a list of values")  # fmt: skip
    return group


def _plain_regex(pattern: str) -> tuple[str, str] | None:
    """A pattern that is plain text, maybe anchored: ``(op, text)``; else ``None``."""
    start = pattern.startswith("^")
    body = pattern[1:] if start else pattern
    end = body.endswith("$") and not _escaped(body, len(body) - 1)
    body = body[:-1] if end else body
    text, i = [], 0
    while i < len(body):
        char = body[i]
        if char == "\\":
            if i + 1 == len(body) or body[i + 1].isalnum() or body[i + 1] == "_":
                return None  # a class (\d, \w), a boundary (\b), a reference: not plain
            text.append(body[i + 1])
            i += 2
            continue
        if char in _REGEX_META:
            return None
        text.append(char)
        i += 1
    plain = "".join(text)
    op = {(True, True): "eq", (True, False): "prefix", (False, True): "suffix"}
    return op.get((start, end), "contains"), plain


def _escaped(text: str, at: int) -> bool:
    """Whether the character at ``at`` follows an odd number of backslashes."""
    count = 0
    while at - count - 1 >= 0 and text[at - count - 1] == "\\":
        count += 1
    return count % 2 == 1


# -- values ---------------------------------------------------------------------------------------


def canon(value: object) -> Hashable:
    """A value compared as GrowthBook's JSON values are: ``1`` equals ``1.0``, not ``true``."""
    stack: list[tuple[object, int]] = [(value, 0)]
    parts: list[Hashable] = []
    seen: set[int] = set()  # the containers met: JSON has each once (no cycle, no sharing)
    while stack:  # a walk with a stack, bounded in depth, and linear: never recursion
        item, depth = stack.pop()
        if item is None or isinstance(item, bool):
            parts.append(("literal", item))
            continue
        if isinstance(item, str):
            parts.append(("text", str.__str__(item)))
            continue
        if isinstance(item, int | float):
            parts.append(("number", item))
            continue
        if not isinstance(item, list | tuple | Mapping):
            raise ValueError(f"must be a JSON value, not {type(item).__name__}")
        if depth >= _MAX_VALUE_DEPTH:
            raise ValueError(f"is nested deeper than {_MAX_VALUE_DEPTH} levels")
        if id(item) in seen:
            raise ValueError("contains itself, or one part twice: not JSON")
        seen.add(id(item))
        if isinstance(item, Mapping):
            parts.append(("object", tuple(str(k) for k in item)))
            stack.extend((v, depth + 1) for v in reversed(list(item.values())))
        else:
            parts.append(("list", len(item)))
            stack.extend((v, depth + 1) for v in reversed(item))
    return tuple(parts)


def read_value(value: object, where: str, problems: list[tuple[str, str]]) -> Hashable:
    """:func:`canon` of ``value``; a problem at ``where`` (and ``None``) if it is not JSON."""
    try:
        return canon(value)
    except ValueError as exc:
        problems.append((where, str(exc)))
        return None


def _scalar(value: object) -> bool:
    return isinstance(value, str | bool) or _finite(value)


def _finite(value: object) -> bool:
    """Whether ``value`` is a JSON number a policy holds: an int or a finite float, no bool."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) or math.isfinite(value)


def show(value: object) -> str:
    """A value as a report shows it: JSON, at most about 40 characters."""
    if isinstance(value, str):
        return json.dumps(clipped(value, 40), ensure_ascii=False)
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 64 else "a large number"
    if isinstance(value, float):
        return repr(value)
    return "a list" if isinstance(value, list | tuple) else "an object"


def modulus(version: int) -> int:
    """The positions of GrowthBook's hash space: 10,000 for hash version 2, else 1,000."""
    return 10_000 if version == 2 else 1_000


def _cut(coverage: float, positions: int) -> int:
    """How many positions ``n = k / positions`` the SDK includes: those with ``n < coverage``."""
    if coverage <= 0:
        return 0
    if coverage >= 1:
        return positions
    first = int(coverage * positions)
    while first > 0 and (first - 1) / positions >= coverage:
        first -= 1
    while first < positions and first / positions < coverage:
        first += 1
    return first


def duplicates(value: Mapping[str, Any], where: str, problems: list[tuple[str, str]]) -> None:
    """Keys an object gave twice (the JSON reader marks them): which one counts is unclear."""
    found = getattr(value, "duplicates", None)
    if isinstance(found, dict):
        for key, count in found.items():
            problems.append((where or "", f"gives the key {show(key)} {count} times"))
