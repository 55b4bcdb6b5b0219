"""flagd's targeting rules read as flagd-core 2 reads them, and written as stagedroll's.

A flagd targeting is a JsonLogic rule in which ``{"$ref": name}`` stands for a shared
evaluator. :class:`Rules` follows the ``$ref`` as flagd-core substitutes them, reads a
condition on the targeting key as the list of keys it tests, and a condition on other
attributes as a segment (``all`` of an ``and``, ``any`` of an ``or``) whose rules mean what
flagd's comparisons mean, or says why not: a condition flagd decides otherwise is never
written as a rule.

The reading is bounded: a rule is read only as deep as the forms that map, and every list
it reads (ids, compared values, conditions, a fractional's arms) is charged to one budget
of :data:`~stagedroll._document.MAX_NODES` per import (:meth:`Rules.take`), so a ``$ref``
that repeats a long list in every flag ends in a report, in time linear in the export's
size.

A ``fractional``'s custom bucketing expression is read as a ``flagd`` template
(:meth:`Rules.expression`): a ``cat`` of texts, the flag's key and one attribute, or a bare
``{"var": name}``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import Bucketing, Rule
from .._document import MAX_NODES

__all__ = [
    "TOO_MANY",
    "UNIT",
    "Expression",
    "Note",
    "Rules",
    "kind_of",
    "operation",
    "scalar",
    "shown",
    "variant_name",
    "why",
]

TOO_MANY = (f"the export lists more than the {MAX_NODES:,} ids, values and conditions that "
            "one import reads ($ref expanded): the rest is not imported")  # fmt: skip
"""Why a list is not read: the import's budget of ids, values and conditions is spent."""

_NUM, _ID = r"(?:0|[1-9]\d*)", r"[0-9A-Za-z-]+"
_PRE = rf"(?:{_NUM}|\d*[A-Za-z-][0-9A-Za-z-]*)"
_VERSION = re.compile(  # a version flagd's semver and stagedroll's rules read the same
    rf"v?{_NUM}(?:\.{_NUM}){{0,2}}(?:-{_PRE}(?:\.{_PRE})*)?(?:\+{_ID}(?:\.{_ID})*)?"
)
_SEMVER = {"=": "semver_eq", "<": "semver_lt", "<=": "semver_le", ">": "semver_gt",
           ">=": "semver_ge"}  # fmt: skip
_NOT = "is true in flagd for a unit without the attribute, and a stagedroll rule is not"
_ORDER = (
    "compares as JsonLogic does (a missing attribute is 0, text is read as a number), "
    "and stagedroll's lt, le, gt, ge compare numbers with numbers, text with text"
)
UNIT = "{unit}"
"""Where a ``flagd`` template puts the unit's key."""
_FLAG_KEY = "$flagd.flagKey"
_CUSTOM = "buckets on a custom expression that no flagd template expresses"


@dataclass(frozen=True)
class Expression:
    """A ``fractional``'s bucketing expression, as a ``flagd`` bucketing template."""

    template: str
    """The expression's value, ``{unit}`` where the unit's key goes."""
    attribute: str | None
    """The attribute read in the unit's place (``bucket_by``), or ``None``: the targeting key."""
    bare: bool
    """A lone ``{"var": name}``: flagd serves the default where it is null, not "null"."""


_REASONS = {"!=": _NOT, "!==": _NOT, "<": _ORDER, "<=": _ORDER, ">": _ORDER, ">=": _ORDER}


class Note:
    """A part of a rule that the importer does not read further, and why."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class Rules:
    """The rules of one flagd document: its shared evaluators, and the budget of one import.

    Each method takes a rule and its ``origin``: the index of the evaluator it was read from
    (``-1`` for a flag's own targeting), which decides the ``$ref`` flagd-core substitutes.
    """

    def __init__(self, evaluators: Mapping[Any, Any], *, budget: int = MAX_NODES) -> None:
        self.evaluators = evaluators
        self.order = {name: i for i, name in enumerate(evaluators)}
        self.budget = budget

    def take(self, count: int) -> bool:
        """Spend ``count`` of the import's budget, or ``False`` (nothing spent) past its end."""
        if count > self.budget:
            return False
        self.budget -= count
        return True

    def deref(self, node: object, origin: int) -> tuple[object, int]:
        """``node`` with its ``$ref`` followed as flagd-core substitutes them."""
        for _ in range(len(self.order) + 1):
            if not (isinstance(node, Mapping) and len(node) == 1 and "$ref" in node):
                break
            # flagd-core replaces the JSON text {"$ref": "name"}, one evaluator after another:
            # a name that JSON escapes, or one of an earlier evaluator, is left in place.
            name = node["$ref"]
            plain = isinstance(name, str) and json.dumps(name) == f'"{name}"'
            index = self.order.get(name, -1) if plain else -1
            if index <= origin:
                reason = f"$ref {shown(name)} names no evaluator that flagd substitutes there"
                return Note(f"{reason} (flagd fails, and serves the code's default)"), origin
            node, origin = self.evaluators[name], index
        return node, origin

    def expression(self, node: object, origin: int, flag_key: str) -> Expression | str:
        """A fractional's bucketing expression as a template, or why it does not map.

        The expression maps when its value is text made of literal texts, the flag's key and
        exactly one of the targeting key or an attribute: ``{"cat": [...]}`` of those, or a
        lone ``{"var": name}``.
        """
        node, origin = self.deref(node, origin)
        op = operation(node)
        if op is None or op[0] not in ("cat", "var"):
            return f"{_CUSTOM} ({why(node)}; a cat of texts and vars, or a var, maps)"
        bare = op[0] == "var"
        parts = [node] if bare else op[1]
        if not self.take(len(parts)):
            return TOO_MANY
        texts: list[str] = []
        unit: str | None = None
        for i, raw in enumerate(parts):
            part = self.deref(raw, origin)[0]
            name = _var(part)
            where = "it" if bare else f"its part {i}"
            if isinstance(part, str) or name == _FLAG_KEY:
                text = part if isinstance(part, str) else flag_key
                if UNIT in text:
                    return (f"{_CUSTOM}: {where} holds the text {UNIT}, which would make the "
                            "template's placeholder ambiguous")  # fmt: skip
                texts.append(text)
            elif name is None:
                return (f"{_CUSTOM}: {where} {why(part)}, not text, the flag's key or a "
                        '{"var": name}')  # fmt: skip
            elif name.startswith("$flagd") or "." in name:
                return (f"{_CUSTOM}: {where} reads {shown(name)}, which no attribute of "
                        "stagedroll holds")  # fmt: skip
            elif unit is not None:
                return f"{_CUSTOM}: it reads both {shown(unit)} and {shown(name)}"
            else:
                unit = name
                texts.append(UNIT)
        if unit is None:
            return (f"{_CUSTOM}: it reads neither the targeting key nor an attribute, so "
                    "every unit gets the same bucket")  # fmt: skip
        at = texts.index(UNIT)
        prefix, suffix = "".join(texts[:at]), "".join(texts[at + 1 :])
        template = prefix + UNIT + suffix
        if template.partition(UNIT) != (prefix, UNIT, suffix):
            return (f"{_CUSTOM}: its texts joined make {UNIT} appear twice, which would make "
                    "the template's placeholder ambiguous")  # fmt: skip
        try:
            Bucketing(scheme="flagd", template=template)
        except ValueError:
            return f"{_CUSTOM}: its text, {shown(template)}, is not one a template can hold"
        attribute = None if unit == "targetingKey" else unit
        return Expression(template, attribute, bare)

    def ids(self, node: object, origin: int, *, inner: bool = False) -> list[str] | str | None:
        """The targeting keys a condition lists (``None``: not such a condition; text: why).

        The condition is a test of ``targetingKey``, or an ``or`` of such tests (one level).
        """
        node, origin = self.deref(node, origin)
        op = operation(node)
        if op is None:
            return None
        name, args = op
        if name == "or" and args and not inner:
            if not self.take(len(args)):
                return TOO_MANY
            found: list[str] = []
            for arg in args:
                ids = self.ids(arg, origin, inner=True)
                if not isinstance(ids, list):
                    return ids
                found += ids
            return found
        if name not in ("in", "==", "===") or len(args) != 2:
            return None
        left, right = (self.deref(arg, origin)[0] for arg in args)
        if name != "in" and _var(right) == "targetingKey":
            left, right = right, left
        if _var(left) != "targetingKey":
            return None
        if name != "in":
            return [right] if isinstance(right, str) and right else None
        if not isinstance(right, list):
            return None
        if not self.take(len(right)):  # before reading it: a $ref may repeat a long list
            return TOO_MANY
        if not all(scalar(unit) for unit in right):
            return None
        # A targeting key is text: flagd never matches a number, nor the empty key (null).
        return [unit for unit in right if isinstance(unit, str) and unit]

    def segment(self, node: object, origin: int, description: str) -> dict[str, Any] | str:
        """A condition as a segment (``all`` of an ``and``, ``any`` of an ``or``), or why not."""
        node, origin = self.deref(node, origin)
        op = operation(node)
        match, parts = "all", [node]
        if op is not None and op[0] in ("and", "or") and op[1]:
            match, parts = ("all" if op[0] == "and" else "any"), op[1]
            if not self.take(len(parts)):
                return TOO_MANY
        rules = []
        for i, part in enumerate(parts):
            rule = self.rule(part, origin)
            if isinstance(rule, str):
                return rule if len(parts) == 1 else f"its condition {i} {rule}"
            rules.append(rule)
        segment: dict[str, Any] = {"description": description[:500]}
        if len(rules) > 1:
            segment["match"] = match
        segment["rules"] = rules
        return segment

    def rule(self, node: object, origin: int) -> dict[str, Any] | str:
        """One comparison as a stagedroll rule, where exactly equivalent, or why not."""
        node, origin = self.deref(node, origin)
        op = operation(node)
        if op is None:
            return f"{why(node)}, which no stagedroll rule expresses"
        name, raw = op
        a = [self.deref(arg, origin)[0] for arg in raw[:3]] + [None, None, None]
        if name in _REASONS:
            return f"uses {name}, which {_REASONS[name]}"
        if name in ("==", "===") and len(raw) == 2:
            var, value = (a[1], a[0]) if _var(a[1]) is not None else (a[0], a[1])
            if name == "==" and not (isinstance(value, str) and not _numeric(value)):
                return ("compares with ==, which converts text to numbers ('5' == 5) and "
                        "booleans to 0 or 1, and stagedroll's eq does not (=== maps)")  # fmt: skip
            return _checked(var, "eq", value)
        if name == "in" and len(raw) == 2 and isinstance(a[0], str):
            return _checked(a[1], "contains", a[0])
        if name == "in" and len(raw) == 2 and isinstance(a[1], list):
            return _checked(a[0], "in", a[1]) if self.take(len(a[1])) else TOO_MANY
        if name in ("starts_with", "ends_with") and len(raw) == 2:
            return _checked(a[0], "prefix" if name == "starts_with" else "suffix", a[1])
        if name == "sem_ver" and len(raw) == 3:
            if not (isinstance(a[1], str) and a[1] in _SEMVER and isinstance(a[2], str)
                    and _VERSION.fullmatch(a[2])):  # fmt: skip
                return ("compares versions with ^ or ~, or with a version that stagedroll does "
                        "not read as flagd does")  # fmt: skip
            return _checked(a[0], _SEMVER[a[1]], a[2])
        if name in ("and", "or"):
            return "nests and/or: a segment is one all, or one any, of conditions"
        if name == "in":
            return "tests whether an attribute is part of a list or text it does not hold"
        return f"uses {shown(name)} as a JsonLogic operation no stagedroll rule expresses"


def _checked(var: object, op: str, value: object) -> dict[str, Any] | str:
    """The rule ``{attribute, op, value}``, if the attribute and value are its own."""
    attribute = _var(var)
    if attribute is None:
        return 'does not compare an attribute ({"var": name}) with a value'
    if attribute == "targetingKey" or attribute.startswith("$flagd"):
        return (f"tests {attribute} other than by a list of targeting keys, and a stagedroll "
                "rule tests attributes")  # fmt: skip
    if "." in attribute:
        return (f"reads the nested attribute {shown(attribute)}: flagd looks inside "
                "objects, and stagedroll reads an attribute of that whole name")  # fmt: skip
    values = value if isinstance(value, list) else [value]
    if not all(scalar(v) for v in values):
        return "compares with a value that is not text, a whole or finite number, or a boolean"
    rule = {"attribute": attribute, "op": op, "value": value}
    try:
        Rule.model_validate(rule)
    except ValueError:
        return f"compares {shown(attribute)} with {shown(value)}, which a rule cannot hold"
    return rule


def operation(node: object) -> tuple[str, list[Any]] | None:
    """A JsonLogic operation's name and arguments (one key; a lone argument as a list)."""
    if not isinstance(node, Mapping) or len(node) != 1:
        return None
    ((name, args),) = node.items()
    return (name, args if isinstance(args, list) else [args]) if isinstance(name, str) else None


def _var(node: object) -> str | None:
    """The name ``{"var": name}`` reads (without a default), or ``None``."""
    op = operation(node)
    if op is None or op[0] != "var" or len(op[1]) != 1:
        return None
    name = op[1][0]
    return name if isinstance(name, str) and name else None


def variant_name(variant: object) -> str | None:
    """A variant's name as flagd-core makes it of an answer (``true``, ``"1"``)."""
    if variant is None or isinstance(variant, str):
        return variant
    if isinstance(variant, bool):
        return "true" if variant else "false"
    return str(variant) if scalar(variant) else None


def scalar(value: object) -> bool:
    """Text, a boolean, or a number a policy file can hold (64-bit, finite)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return -(2**63) <= value < 2**63
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str | bool)


def _numeric(text: str) -> bool:
    """Whether JsonLogic reads ``text`` as a number (as ``float()`` does, ``inf`` aside)."""
    if text.strip().lower() in ("inf", "-inf", "+inf"):
        return False
    try:
        float(text)
    except ValueError:
        return False
    return True


def why(node: object) -> str:
    """What a rule the importer does not read is: the note's reason, or the value shown."""
    return node.text if isinstance(node, Note) else f"is {shown(node)}"


def kind_of(value: object) -> str:
    """The JSON kind of ``value``, as a refusal names it (``a table``, ``null``)."""
    kinds = ((bool, "a boolean"), (str, "text"), (int | float, "a number"),
             (Mapping, "a table"), (list, "a list"))  # fmt: skip
    found = (word for of, word in kinds if isinstance(value, of))
    return "null" if value is None else next(found, type(value).__name__)


def shown(value: object) -> str:
    """A short, bounded ``repr`` of a value from the export."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:37]) + "..."
    if value is None or scalar(value):
        return repr(value)
    if isinstance(value, Mapping) and len(value) == 1 and isinstance(next(iter(value)), str):
        return f"an operation {shown(next(iter(value)))}"
    return kind_of(value)
