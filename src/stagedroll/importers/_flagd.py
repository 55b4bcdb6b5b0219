"""Policies from flagd's flag definitions: each ``fractional`` rollout keeps its cohort.

flagd reads its flags from flag definition files (``https://flagd.dev/schema/v0/flags.json``,
JSON or YAML): ``{"flags": {key: {"state", "variants", "defaultVariant", "targeting"}},
"$evaluators": {name: rule}}``, the targeting a JsonLogic rule in which ``{"$ref": name}``
stands for a shared evaluator. :func:`from_flagd` reads it as flagd-core 2 (the evaluator
of flagd's Python provider) evaluates it:

- ``{"fractional": [["on", w], ["off", v]]}`` is the rollout: ``100 * w / (w + v)`` percent
  (a whole one) with ``flagd`` bucketing on the flag's key, the new path's variant listed
  first; ``DISABLED`` is 0 %, and a flag that serves everyone else one variant is at 0 % or
  100 %, with stagedroll's own bucketing (it has no cohort to keep);
- a custom bucketing expression first in the ``fractional`` (``{"cat": ["campaign-7:",
  {"var": "targetingKey"}]}``) is a ``flagd`` bucketing ``template`` where its value is text
  made of literal texts, the flag's key and one of the targeting key or an attribute (then
  ``bucket_by``); the units on which flagd and stagedroll read it apart are reported;
- an ``if`` chain's conditions on the targeting key (``in`` a list of keys) go to
  ``targeting.allow`` (new path) or ``targeting.deny`` (old path), and conditions on other
  attributes that serve the new path become segments included from stage 0, where the rule
  is exactly equivalent (:mod:`stagedroll.importers._flagd_rules` reads the rules);
- every other part is reported in :attr:`Imported.unmapped`: what flagd does, and what the
  imported rollout does instead. A flag with no rollout to keep (an experiment of three
  variants, a bucketing expression that no template expresses, a percent finer than whole)
is left out.

The new path is, for a boolean flag, its variants whose value is ``true``. For any other
flag, it is the first variant of the ``fractional`` (the second being the old path) or,
with none, the one of exactly two variants that is not the default; either choice is
reported, as an assumption to check. ``docs/migrating/flagd.md`` has the table.

The walk is bounded: at most 1,000 nested else-ifs are followed, the lists read are charged
to one budget per import, and the policy holds at most 50,000 values (a flag past them is
left out, reported), so a deep, cyclic or huge document ends in a report, in time linear in
its size.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import mmh3

from .. import Bucketing
from .._document import clipped
from ._flagd_rules import (
    TOO_MANY,
    UNIT,
    Expression,
    Note,
    Rules,
    kind_of,
    operation,
    scalar,
    shown,
    variant_name,
    why,
)
from ._imported import Draft, Imported, refuse, stages_from

__all__ = ["from_flagd"]

_MAX_WEIGHT = 2_147_483_647  # flagd's bound on a fractional's total weight (MaxInt32)
_MAX_NESTING = 1_000  # else-if levels of one targeting that are followed
_MAX_KEY = 1024  # the longest flag key a policy's bucketing holds
_MAX_PROBLEMS = 100
_BARE = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
_YAML = "(YAML reads a bare on, off, yes or no as a boolean: quote it)"
_LEFT_OUT = "the flag is left out of the policy"
_INSTEAD = "units matching it get what the rest of the targeting gives them"
# flagd-core's bucket of 100 for an expression whose value is the empty text (CBOR 0x60).
_EMPTY_TEXT = (mmh3.hash(b"\x60", 0, False) * 100) >> 32


def from_flagd(
    data: object, *, environment: str | None = None, source: str | None = None
) -> Imported:
    """The policy of a flagd flag definition document (its parsed JSON or YAML).

    ``environment`` must be ``None``: flagd's files have no environments (each deployment
    reads its own). A document that is not flag definitions raises
    :class:`~stagedroll.exceptions.PolicyError` naming where (``flags.checkout.state``).
    """
    if environment is not None:
        message = ("flagd's flag definitions have no environments: import the file that "
                   "environment's flagd reads, without naming one")  # fmt: skip
        raise refuse([("environment", message)], source)
    if not isinstance(data, Mapping):
        raise refuse([("", f"a flagd flag definition file is a table with flags, not "
                       f"{kind_of(data)}")], source)  # fmt: skip
    problems: list[tuple[str, str]] = []
    flags = data.get("flags")
    if not isinstance(flags, Mapping):
        wrong = f"must be a table of flags, not {kind_of(flags)}"
        problems.append(("flags", "is required: a table of flags" if flags is None else wrong))
        flags = {}
    evaluators = data.get("$evaluators") or {}
    if not isinstance(evaluators, Mapping):
        problems.append(("$evaluators", f"must be a table of rules, not {kind_of(evaluators)}"))
    for key, flag in flags.items():
        if len(problems) < _MAX_PROBLEMS:
            problems.extend(_flag_problems(key, flag))
    if problems:
        raise refuse(problems, source)
    run = _Import(evaluators, list(flags))
    for key, flag in flags.items():
        run.flag(key, flag)
    return run.draft.imported()


def _flag_problems(key: object, flag: object) -> list[tuple[str, str]]:
    where = _where(key)
    if not isinstance(key, str):
        return [(where, f"a flag key must be text {_YAML}")]
    if not isinstance(flag, Mapping):
        return [(where, f"must be a table (a flag definition), not {kind_of(flag)}")]
    problems = []
    state = flag.get("state")
    if not (isinstance(state, str) and state in ("ENABLED", "DISABLED")):
        problems.append((f"{where}.state", "is required" if state is None else
                         f'must be "ENABLED" or "DISABLED", not {shown(state)}'))  # fmt: skip
    variants = flag.get("variants")
    if not isinstance(variants, Mapping) or not variants:
        problems.append((f"{where}.variants", "must be a non-empty table of variant name -> "
                         f"value, not {kind_of(variants)}"))  # fmt: skip
    elif not all(isinstance(name, str) for name in variants):
        problems.append((f"{where}.variants", f"variant names must be text {_YAML}"))
    default = flag.get("defaultVariant")
    if default is not None and not isinstance(default, str | bool):
        problems.append(
            (f"{where}.defaultVariant", f"must be a variant name, not {kind_of(default)}")
        )
    targeting = flag.get("targeting")
    if targeting is not None and not isinstance(targeting, Mapping):
        problems.append((f"{where}.targeting", f"must be a JsonLogic rule (a table), not "
                         f"{kind_of(targeting)}"))  # fmt: skip
    return problems


@dataclass(frozen=True)
class _Sides:
    """Which of a flag's variants are the new path and which the old one."""

    new: frozenset[str]
    old: frozenset[str]
    default: str | None  # the default variant (None: the code's default, the old path)

    def of(self, variant: str | None) -> str:
        """``new``, ``old``, or ``error`` (another variant, or a name that is none)."""
        if variant is None and self.default is None:
            return "old"
        variant = self.default if variant is None else variant
        if variant in self.new or variant in self.old:
            return "new" if variant in self.new else "old"
        return "error"


Answer = tuple[str, Any, int]  # what a targeting part answers, its value, its $ref origin
Arms = list[tuple[str | None, int]]  # a fractional's (variant, weight) pairs


class _Import:
    """One import: the rules of the document, and the policy built so far."""

    def __init__(self, evaluators: Mapping[Any, Any], keys: list[str]) -> None:
        self.rules = Rules(evaluators)
        self.draft = Draft("flagd", keys)
        self.key = self.where = ""
        self.expression: Expression | None = None  # the flag's bucketing expression, if any

    @property
    def shown_key(self) -> str:
        """The flag's key as the report names it: at most 200 characters."""
        return clipped(self.key, 200)

    def report(self, part: str, reason: str) -> None:
        """Report ``part`` of the flag being imported (a path below it) as not mapped."""
        self.draft.report(self.shown_key, f"{self.where}{part}", reason)

    def flag(self, key: str, flag: Mapping[str, Any]) -> None:
        """Import one flag as a rollout, or report why it is left out."""
        self.key, self.where = key, _where(key)
        if len(key) > _MAX_KEY:
            self.report("", f"its key is longer than the {_MAX_KEY} characters a policy's "
                        f"bucketing holds; {_LEFT_OUT}")  # fmt: skip
            return
        if flag["state"] == "DISABLED":
            if flag.get("targeting"):
                self.report(".state", "the flag is DISABLED: flagd serves the code's default "
                            "to everyone and ignores its targeting, which is not imported; "
                            "the rollout starts at 0 %")  # fmt: skip
            self.add(0, {}, [], bucketed=False)
            return
        variants: Mapping[str, Any] = flag["variants"]
        default = variant_name(flag.get("defaultVariant")) or None
        if default is not None and default not in variants:
            self.report(".defaultVariant", f"names no variant ({shown(default)}): flagd "
                        "answers with the code's default, taken as the old path")  # fmt: skip
            default = None
        branches, last, at = self.chain(flag.get("targeting"))
        arms = self.arms(last[1], last[2]) if last[0] == "fractional" else None
        sides = self.sides(variants, default, arms, at)
        percent = None if sides is None else self.percent(last, arms, at, sides)
        if sides is None or percent is None:
            return
        bucketed = last[0] == "fractional"
        if bucketed and self.expression is not None:
            for reason in self.value_notes(self.expression, percent, sides):
                self.report(f"{at}.fractional[0]", reason)
        elif sides.of(None) == "new" and bucketed and 0 < percent < 100:
            self.report(".defaultVariant", "flagd serves the default variant, the new path, "
                        "to a unit without a targeting key; stagedroll's flagd bucketing never "
                        "lets the empty unit in")  # fmt: skip
        self.add(percent, *self.branches(branches, sides), bucketed=bucketed)

    def value_notes(self, expression: Expression, percent: int, sides: _Sides) -> Iterator[str]:
        """Where flagd and the rollout read the expression apart, and the answers differ.

        Each case is checked at the rollout's percent: a unit without a targeting key (a bare
        ``var``), and with ``bucket_by`` a unit without the attribute or with empty text.
        """
        scheme = Bucketing(scheme="flagd", template=expression.template).for_rollout(self.key)
        null_in = scheme.position("") < percent  # the text with "null" for the unit
        default_new = sides.of(None) == "new"
        name = expression.attribute
        if name is None:
            if expression.bare and default_new != null_in:
                yield (f"flagd serves the default variant, {_path(default_new)}, to a unit "
                       "without a targeting key that no rule matches (the expression is "
                       "null); the imported rollout buckets it on the text 'null', "
                       f"{_path(null_in)}")  # fmt: skip
            return
        if default_new if expression.bare else null_in:
            how = "serves the default variant, the new path,"
            if not expression.bare:
                how = "buckets on the text 'null' in its place, which gives the new path,"
            yield (
                f"flagd {how} to a unit without {shown(name)}; stagedroll's bucket_by "
                "counts such a unit as no unit (off). Units that have it keep their cohort"
            )
        empty = expression.template.replace(UNIT, "")
        empty_in = (_flagd_bucket(empty) if empty else _EMPTY_TEXT) < percent
        if empty_in != null_in:
            null = expression.template.replace(UNIT, "null")
            yield (
                f"flagd buckets a unit whose {shown(name)} is empty text on {shown(empty)}, "
                f"{_path(empty_in)}; the imported rollout on {shown(null)}, {_path(null_in)}"
            )

    def add(
        self, percent: int, targeting: dict[str, Any], segments: list[Any], *, bucketed: bool
    ) -> None:
        """Add the rollout: with flagd's bucketing where a fractional placed the units.

        A flag that serves one variant to everyone else has no cohort to keep, and every
        unit (the empty one too) is in or out: stagedroll's own bucketing does that.
        """
        name = self.draft.names.name(self.key)
        stages = stages_from(percent)
        named = [self.draft.segment_names.name(f"{name}-{i + 1}") for i in range(len(segments))]
        if named:
            stages[0]["segments"] = named
        rollout: dict[str, Any] = {"description": f"Imported from flagd flag {self.key}"}
        expression = self.expression
        if bucketed and expression is not None:
            if expression.attribute is not None:
                rollout["bucket_by"] = expression.attribute
            rollout["bucketing"] = {"scheme": "flagd", "template": expression.template}
        elif bucketed:
            rollout["bucketing"] = {"scheme": "flagd", "flag_key": self.key}
        rollout["stages"] = stages
        if targeting:
            rollout["targeting"] = targeting
        included = dict(zip(named, segments, strict=True))
        self.draft.add(self.shown_key, self.where, rollout, included, name=name)

    def answer(self, node: object, origin: int) -> Answer:
        """What a targeting part answers: a variant, the default, a fractional, an if, other."""
        node, origin = self.rules.deref(node, origin)
        if node is None:
            return "default", None, origin
        if scalar(node):
            return "variant", variant_name(node), origin
        op = operation(node)
        if op is not None and op[0] in ("fractional", "if"):
            return op[0], op[1], origin
        return "other", node, origin

    def chain(self, targeting: object) -> tuple[list[Any], Answer, str]:
        """The if chain's (condition, origin, answer, path) branches, then the last answer."""
        branches: list[Any] = []
        at = ".targeting"
        self.expression = None  # a new flag's targeting: arms() reads its expression
        node, origin = self.rules.deref(targeting, -1)
        if not node:  # flagd serves the default variant without a rule
            return branches, ("default", None, origin), at
        if not isinstance(node, Mapping):
            return branches, ("other", node, origin), at
        kind, value, origin = self.answer(node, origin)
        for _ in range(_MAX_NESTING):
            if kind != "if":
                return branches, (kind, value, origin), at
            count = len(value)
            if not self.rules.take(count // 2):  # before reading them: a $ref may repeat them
                return branches, ("other", Note(TOO_MANY), origin), at
            branches += [(value[i], origin, self.answer(value[i + 1], origin), f"{at}.if[{i}]")
                         for i in range(0, count - 1, 2)]  # fmt: skip
            if count % 2 == 0:
                return branches, ("default", None, origin), at
            at = f"{at}.if[{count - 1}]"
            kind, value, origin = self.answer(value[-1], origin)
        return branches, ("other", Note(f"nests more than {_MAX_NESTING} if rules"), origin), at

    def sides(
        self, variants: Mapping[str, Any], default: str | None, arms: Arms | str | None, at: str
    ) -> _Sides | None:
        """The flag's new and old variants, or ``None`` (reported) when they cannot be told."""
        if all(isinstance(value, bool) for value in variants.values()):
            new = frozenset(k for k, v in variants.items() if v is True)
            return _Sides(new, frozenset(variants) - new, default)
        if isinstance(arms, str):
            return _Sides(frozenset(), frozenset(), default)  # percent() reports the fractional
        if arms:
            served = list(dict.fromkeys(v for v, w in arms if w > 0))
            if len(served) > 2:
                self.report(f"{at}.fractional", f"serves {len(served)} variants in one fractional: "
                            f"an experiment, not a rollout; {_LEFT_OUT}")  # fmt: skip
                return None
            named = served if len(served) == 2 else list(dict.fromkeys(v for v, _ in arms))
            first, second = (*named, None, None)[:2]
            if len(named) == 2 and first in variants and second in variants:
                self.report(".variants", "not a boolean flag: the new path is taken to be "
                            f"{shown(first)}, the first variant of the fractional, and the "
                            f"old one {shown(second)}")  # fmt: skip
                return _Sides(frozenset((str(first),)), frozenset((str(second),)), default)
        if len(variants) == 2 and default is not None:
            (other,) = (name for name in variants if name != default)
            self.report(".variants", f"not a boolean flag: the new path is taken to be "
                        f"{shown(other)}, the variant that is not the default")  # fmt: skip
            return _Sides(frozenset((other,)), frozenset((default,)), default)
        self.report(".variants", "not a boolean flag, and no fractional or default variant "
                    f"tells which variant is the new path; {_LEFT_OUT}")  # fmt: skip
        return None

    def percent(self, last: Answer, arms: Arms | str | None, at: str, sides: _Sides) -> int | None:
        """The percent of the units no rule matches, or ``None`` (reported: left out)."""
        kind, value, _ = last
        if kind in ("default", "variant"):
            if sides.of(value) != "error":
                return 100 if sides.of(value) == "new" else 0
            served = shown(value if kind == "variant" else sides.default)
            self.report(at, f"serves {served} to everyone else, neither the new path nor the "
                        f"old one; {_LEFT_OUT}")  # fmt: skip
            return None
        if isinstance(value, Note):  # a $ref flagd cannot follow, too deep, too many rules
            self.report(at, f"{value.text}; {_LEFT_OUT}")
            return None
        if kind != "fractional" or arms is None:
            self.report(at, f"{why(value)}: the answer for units no rule matches is not a "
                        f"variant or a fractional; {_LEFT_OUT}")  # fmt: skip
            return None
        at += ".fractional"
        total = sum(w for _, w in arms) if isinstance(arms, list) else 0
        if isinstance(arms, str) or not 0 < total <= _MAX_WEIGHT:
            reason = arms if isinstance(arms, str) else (
                f"has a total weight of {'0' if total <= 0 else 'over 2**31 - 1'}: flagd-core "
                "then serves the default variant")  # fmt: skip
            self.report(at, f"{reason}; {_LEFT_OUT}")
            return None
        served_sides = [sides.of(variant) for variant, weight in arms if weight > 0]
        if not set(served_sides) <= {"new", "old"}:
            self.report(at, f"serves a variant that is neither the new path nor the old one; "
                        f"{_LEFT_OUT}")  # fmt: skip
            return None
        first_old = served_sides.index("old") if "old" in served_sides else len(served_sides)
        if "new" in served_sides[first_old:]:
            self.report(at, "lists the new path's variant after the old one: flagd gives it "
                        "the top of the hash range, stagedroll's flagd bucketing the bottom, so "
                        f"the cohorts differ; {_LEFT_OUT}")  # fmt: skip
            return None
        share = Fraction(100 * sum(w for v, w in arms if sides.of(v) == "new"), total)
        if share.denominator != 1:
            self.report(at, f"gives the new path {float(share):.4g} %, not a whole percent, "
                        f"which flagd bucketing cannot express; {_LEFT_OUT}")  # fmt: skip
            return None
        return int(share)

    def arms(self, args: list[Any], origin: int) -> Arms | str:
        """A fractional's (variant, weight) pairs as flagd-core reads them, or why not."""
        if not args:
            return "has no arguments"
        if not isinstance(self.rules.deref(args[0], origin)[0], list):
            expression = self.rules.expression(args[0], origin, self.key)
            if isinstance(expression, str):
                return expression
            self.expression, args = expression, args[1:]
        if not self.rules.take(len(args)):
            return TOO_MANY
        arms: Arms = []
        first = 0 if self.expression is None else 1  # the arms' index in the fractional
        for i, item in enumerate(args, first):
            arm = self.rules.deref(item, origin)[0]
            if not isinstance(arm, list) or not 1 <= len(arm) <= 2:
                return f"argument {i} is not a [variant, weight] pair"
            if not scalar(arm[0]):
                return f"argument {i} computes its variant"
            weight = arm[1] if len(arm) == 2 else 1
            if isinstance(weight, bool) or not isinstance(weight, int):
                return (f"argument {i} has a weight that is not an integer ({shown(weight)}): "
                        "flagd-core 2 then serves the default variant to every unit")  # fmt: skip
            arms.append((variant_name(arm[0]), max(0, weight)))
        return arms

    def branches(self, branches: list[Any], sides: _Sides) -> tuple[dict[str, Any], list[Any]]:
        """The allow and deny lists and the segments of an if chain's branches."""
        lists: dict[str, list[str]] = {"allow": [], "deny": []}
        decided: set[str] = set()
        segments: list[Any] = []
        earlier = ""  # the first rule that serves the new path by attributes
        by = None if self.expression is None else self.expression.attribute
        for condition, origin, (kind, value, _), at in branches:
            side = sides.of(value) if kind in ("default", "variant") else kind
            ids = self.rules.ids(condition, origin)
            if isinstance(ids, str):
                self.report(at, f"{ids}; {_INSTEAD}")
            elif ids is not None and side in ("new", "old") and by is not None:
                self.report(at, f"tests the targeting key, and the rollout buckets by "
                            f"{shown(by)}, whose value stagedroll's allow and deny lists "
                            f"would match; {_INSTEAD}")  # fmt: skip
            elif ids is not None and side in ("new", "old"):
                fresh = [unit for unit in dict.fromkeys(ids) if unit not in decided]
                decided.update(fresh)
                lists["allow" if side == "new" else "deny"].extend(fresh)
                if side == "old" and earlier and fresh:
                    self.report(at, f"a unit in this list that also matches {earlier} gets "
                                "the new path from flagd, where the earlier rule wins; in "
                                "stagedroll the deny list wins")  # fmt: skip
            elif side != "new":
                value_shown = sides.default if kind == "default" else value
                self.report(at, _branch_reason(kind, side, value_shown))
            elif isinstance(segment := self.segment(condition, origin, at), str):
                self.report(at, f"{segment}; the rollout leaves it out: units matching it are "
                            "bucketed like everyone else")  # fmt: skip
            else:
                segments.append(segment)
                earlier = earlier or f"the rule at {self.where}{at}"
                if by is not None:
                    self.report(at, f"flagd serves the new path to a unit matching it that has "
                                f"no {shown(by)} too; stagedroll's bucket_by counts such a unit "
                                "as no unit (off), before its segments")  # fmt: skip
        return {k: v for k, v in lists.items() if v}, segments

    def segment(self, condition: object, origin: int, at: str) -> dict[str, Any] | str:
        """The branch's condition as a segment, described by its flag and path, or why not."""
        description = f"flagd flag {self.key}: {at.removeprefix('.')}"
        return self.rules.segment(condition, origin, description)


def _branch_reason(kind: str, side: str, value: object) -> str:
    if kind == "fractional":
        return ("gives a percentage of a group: flagd buckets the units matching it at the "
                f"rule's own weights, and stagedroll cannot; {_INSTEAD}")  # fmt: skip
    if side == "error":
        return f"serves {shown(value)}, neither the new path nor the old one; {_INSTEAD}"
    if kind == "if":
        return f"answers with a nested if, which does not map; {_INSTEAD}"
    if side == "old":
        return ("restricts the rollout: flagd serves the old path to units matching it, and "
                f"stagedroll cannot exclude a group; {_INSTEAD}")  # fmt: skip
    return f"answers with a nested rule ({why(value)}), which does not map; {_INSTEAD}"


def _path(new: bool) -> str:
    return "the new path" if new else "the old path"


def _flagd_bucket(text: str) -> int:
    """flagd-core's bucket of 100 for an expression whose value is ``text`` (not empty)."""
    return Bucketing(scheme="flagd", template=UNIT).for_rollout("").position(text)


def _where(key: object) -> str:
    return f"flags.{key}" if isinstance(key, str) and _BARE.match(key) else f"flags[{shown(key)}]"
