"""The GrowthBook importer: a policy from an SDK features payload.

It reads what GrowthBook's SDKs load (``GET /api/features/<clientKey>``, or the same JSON
saved to a file): ``{"features": {key: {"defaultValue", "rules": [...]}}, "savedGroups":
{...}}``, one environment's flags. An encrypted payload (``encryptedFeatures``) is refused:
save it from an SDK connection without encryption.

A feature's rules run in order, and the first that applies serves its value. A boolean
feature's new path is ``true``. For any other feature it is the value its percentage rule
forces (else the first value a rule forces that is not the default); a feature that forces
several values besides its default is reported as ambiguous, and one that forces none is
left out. Each rule maps where stagedroll gives exactly the same answer:

- a **rollout rule** (``force`` with ``coverage``, or a ``range`` from 0) is the percent of
  stage 0, bucketed by the ``growthbook`` scheme with the rule's ``seed`` (else the key) and
  ``hashVersion`` (else 1), both written out; a ``hashAttribute`` other than ``id`` is
  ``bucket_by``;
- a rule that forces the new value on a **condition** is an allow list (a condition on the
  unit's own id, or the bucket attribute: ``$eq``, ``$in``, ``$inGroup``) or segments
  included at stage 0 (``$eq``, ``$in``, ``$gt`` and the like, plain ``$regex`` prefixes,
  suffixes and substrings, ``$and``, ``$or``);
- a rule that forces the old value on ids, ahead of every rule that serves a group or a
  percentage, is a deny list;
- a rule that forces a value to everyone ends the list (100 % or 0 %).

The rest is reported in :attr:`Imported.unmapped` and left out of the rollout, so the units
it would serve follow the later rules: experiments, a percentage of a group, prerequisites,
filters, a third value, a second percentage on another seed, an old value served to a group,
and the operators with no exact equivalent (``$ne``, ``$nin``, ``$exists``, ``$regexi``, the
version comparisons, ...). A rule that changes nobody's answer is left out silently: one
after a rule that serves everyone, or one forcing the old value when nothing later serves the
new one. A flag with no percentage rule (on or off for all but its targets) keeps
stagedroll's own bucketing: it has no cohort to keep. A feature whose rollout is not a valid
policy on its own, or would take the policy past its size, is left out and reported.

Each rule is read on its own in ``_growthbook_rules.py``; this module reads the payload,
chooses each feature's new value, and maps its rules, in order, to one rollout.

The segments match as GrowthBook's conditions do for attributes that are single values of
one JSON type each (Python finds ``True`` equal to ``1``; GrowthBook does not);
``docs/migrating/growthbook.md`` lists where decisions can still differ.
"""

from __future__ import annotations

import json
import re
from collections.abc import Hashable, Mapping
from typing import Any

from .._document import clipped
from ._growthbook_rules import (
    LEFT_OUT,
    Atom,
    Rule,
    canon,
    duplicates,
    modulus,
    read_rule,
    read_value,
    show,
    split,
    unmap,
)
from ._imported import Draft, Imported, Names, refuse, stages_from

__all__ = ["from_growthbook"]

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_LEFT_TAIL = "; " + LEFT_OUT


def from_growthbook(
    data: object, *, environment: str | None = None, source: str | None = None
) -> Imported:
    """A policy from GrowthBook's SDK features payload (``GET /api/features/<clientKey>``).

    Each feature becomes a rollout that serves the new path exactly where GrowthBook serves
    the new value: ``true`` for a boolean feature, else the value its percentage rule forces.
    What does not map is in :attr:`Imported.unmapped`, with the reason. A payload of the
    wrong shape raises :class:`~stagedroll.exceptions.PolicyError` naming where; so does
    ``environment``, as a payload holds one environment already.
    """
    if environment is not None:
        message = "a GrowthBook SDK payload is one environment's already: give no environment"
        raise refuse([("", message)], source)
    if not isinstance(data, Mapping):
        raise refuse([("", 'must be a GrowthBook SDK payload: an object with "features"')], source)
    problems: list[tuple[str, str]] = []
    duplicates(data, "", problems)
    encrypted = "the payload is encrypted: save it from an SDK connection without encryption"
    problems += [(key, encrypted) for key in ("encryptedFeatures", "encryptedSavedGroups")
                 if key in data]  # fmt: skip
    features = data.get("features")
    if "features" not in data:
        problems.append(("features", 'is required: the SDK payload\'s "features" object'))
    elif not isinstance(features, Mapping):
        problems.append(("features", "must be an object of feature keys to definitions"))
    groups = data.get("savedGroups")
    if groups is not None and not isinstance(groups, Mapping):
        problems.append(("savedGroups", "must be an object of saved group ids to values"))
    if problems or not isinstance(features, Mapping):
        raise refuse(problems, source)
    duplicates(features, "features", problems)
    draft = Draft("growthbook", [key for key in features if isinstance(key, str)])
    for key, definition in features.items():
        if not isinstance(key, str):
            problems.append(("features", f"has a key that is not text: {show(key)}"))
            continue
        feature = _Feature(key, definition, groups or {}, problems)
        if not problems:  # a payload to refuse is read on for its problems, not mapped
            feature.map(draft)
    if problems:
        raise refuse(problems, source)
    experiments = data.get("experiments")
    if isinstance(experiments, list) and experiments:
        draft.report("", "experiments", f"{len(experiments)} auto experiment(s) (visual "
                     "editor, URL redirects) are not feature flags: not imported")  # fmt: skip
    return draft.imported()


class _Feature:
    """One feature of the payload: its rules read, checked, and mapped to a rollout."""

    def __init__(
        self,
        key: str,
        definition: object,
        groups: Mapping[str, Any],
        problems: list[tuple[str, str]],
    ) -> None:
        self.key, self.at = key, _path(key)
        self.name = ""
        self.rules: list[Rule] = []
        self.default: Any = None
        self.default_canon: Hashable = None
        self.new: Any = None  # the new value (True for a boolean feature)
        self.new_canon: Hashable = None
        self.old_canon: Hashable = None  # the old value (False for a boolean feature)
        self.boolean = True
        if not isinstance(definition, Mapping):
            problems.append((self.at, "must be an object with defaultValue and rules"))
        else:
            duplicates(definition, self.at, problems)
            self.default = definition.get("defaultValue")
            self.default_canon = read_value(self.default, f"{self.at}.defaultValue", problems)
            rules = definition.get("rules")
            if rules is not None and not isinstance(rules, list):
                problems.append((f"{self.at}.rules", "must be a list of rules"))
            else:
                self.rules = [
                    read_rule(
                        i, rule, key=key, where=self._where(i), groups=groups, problems=problems
                    )
                    for i, rule in enumerate(rules or ())
                ]

    def _where(self, index: int, part: str = "") -> str:
        return f"{self.at}.rules[{index}]{'.' + part if part else ''}"

    # -- mapping the rules ----------------------------------------------------------------------

    def map(self, draft: Draft) -> None:
        """Add the feature's rollout to ``draft``, and report each part that did not map."""
        report: list[tuple[int, str, str]] = []  # (rule index, part, reason): the export's order
        if not self._new_value(report):
            self._left_out(draft, report)
            return
        for rule in self.rules:
            if rule.forces:
                rule.on = rule.canon == self.new_canon or (
                    None if rule.canon != self.old_canon else False
                )
                if rule.on is None and rule.kind != "unmapped":
                    unmap(rule, f"serves {show(rule.value)}, neither the new value nor the "
                          f"default: a rollout has two paths; {LEFT_OUT}")  # fmt: skip
        live: list[Rule] = []  # the mapped rules up to the first that serves everyone
        for rule in self.rules:
            if rule.kind in ("all", "cohort", "target"):
                live.append(rule)
                if rule.kind == "all":
                    break
        final_on = live[-1].on if live and live[-1].kind == "all" else self._default_on()
        first = next((r for r in live if r.kind == "cohort" and r.on), None)
        cohort = None if final_on else first
        if cohort is not None:
            for rule in live:
                if rule.kind == "cohort" and rule.on and rule.bucket != cohort.bucket:
                    seed, attribute, version = rule.bucket
                    unmap(rule, f"is a second percentage, on seed {show(seed)}, attribute "
                          f"{show(attribute)}, hash version {version}: a rollout has one "
                          "bucketing (its first percentage rule's); "
                          f"{LEFT_OUT}")  # fmt: skip
            live = [r for r in live if r.kind != "unmapped"]
        self.name = draft.names.name(self.key)
        rollout, segments = self._rollout(live, cohort, bool(final_on), draft.segment_names)
        if any(r.kind == "unmapped" for r in self.rules) and not any(
            r.kind != "unmapped" for r in live
        ):
            why = "left out: none of its rules maps to a rollout (each is reported)"
            self._left_out(draft, [(len(self.rules), self.at, why)])
            return
        for rule in live:
            if rule.kind != "unmapped":
                report += [(rule.index, part, why) for part, why in rule.notes]
        report += [(r.index, self._where(r.index), r.reason) for r in self.rules
                   if r.kind == "unmapped"]  # fmt: skip
        for _, part, why in sorted(report, key=lambda entry: entry[0]):
            draft.report(self.key, part, why)
        draft.add(self.key, self.at, rollout, segments, name=self.name)

    def _left_out(self, draft: Draft, report: list[tuple[int, str, str]]) -> None:
        """Report a feature left out of the policy: each rule that did not map, and why."""
        report += [(r.index, self._where(r.index), r.reason.removesuffix(_LEFT_TAIL))
                   for r in self.rules if r.kind == "unmapped"]  # fmt: skip
        for _, part, why in sorted(report, key=lambda entry: entry[0]):
            draft.report(self.key, part, why)

    def _new_value(self, report: list[tuple[int, str, str]]) -> bool:
        """Choose the new value; ``False`` if the feature has none (reported)."""
        forcing = [r for r in self.rules if r.forces]
        if all(isinstance(r.value, bool) for r in forcing) and (
            self.default is None or isinstance(self.default, bool)
        ):
            self.new, self.new_canon, self.old_canon = True, canon(True), canon(False)
            return True
        others: list[Rule] = []
        for rule in forcing:
            if rule.canon != self.default_canon and all(rule.canon != o.canon for o in others):
                others.append(rule)
        if not others:
            why = "left out: it serves one value to every unit, so there is no new path"
            if any(r.kind == "unmapped" for r in self.rules):
                why = "left out: none of its rules maps to a rollout (each is reported)"
            report.append((len(self.rules), self.at, why))
            return False
        chosen = next(
            (r for kind in ("cohort", "all", "target") for r in others if r.kind == kind),
            others[0],
        )  # a mapped percentage rule's value first, then a mapped rule's
        self.boolean, self.new, self.new_canon = False, chosen.value, chosen.canon
        self.old_canon = self.default_canon
        if len(others) > 1:
            report.append((-1, self.at, f"serves {len(others)} values besides its default: "
                           f"the new path is {show(chosen.value)}, the value of its first "
                           "percentage rule (else of its first rule)"))  # fmt: skip
        return True

    def _default_on(self) -> bool:
        return self.default_canon == self.new_canon

    def _rollout(
        self, live: list[Rule], cohort: Rule | None, final_on: bool, segment_names: Names
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The rollout's document and segments, from the mapped rules in order."""
        key_attribute = cohort.bucket[1] if cohort is not None else "id"
        decided: dict[str, bool] = {}  # ids (bucket keys) by the first rule that names them
        segments: dict[str, Any] = {}
        grouped = False  # a rule that serves the new value to a group or a percentage came
        serves_after = [False] * len(live) + [final_on]  # a later rule serves the new value
        for i in range(len(live) - 1, -1, -1):
            serves_after[i] = serves_after[i + 1] or bool(live[i].on and live[i].kind != "all")
        for i, rule in enumerate(live):
            if rule.kind == "all" or (not rule.on and not serves_after[i + 1]):
                continue  # the old value, and nothing later serves the new one: no change
            if rule.kind == "cohort":
                if rule.on:
                    grouped = True
                else:
                    unmap(rule, "serves the old value to a percentage of the units, ahead of "
                          "rules that serve the new one: a stagedroll cohort is served the "
                          f"new path; {LEFT_OUT}")  # fmt: skip
                continue
            ids, groups = split(rule.branches, key_attribute)
            if rule.on:
                for unit in ids:
                    decided.setdefault(unit, True)
                if groups:
                    grouped = True
                    self._segments(rule, groups, segment_names, segments, key_attribute)
            elif groups:
                unmap(rule, f"serves the old value ({show(rule.value)}) to a group, ahead of "
                      "rules that serve the new one: stagedroll turns units off by "
                      f"{show(key_attribute)} only (targeting.deny); {LEFT_OUT}")  # fmt: skip
            elif grouped:
                unmap(rule, "serves the old value to listed units after a rule that serves the "
                      "new one to a group or a percentage, and a deny list would win over "
                      f"that rule; {LEFT_OUT}")  # fmt: skip
            else:
                for unit in ids:
                    decided.setdefault(unit, False)
        rollout: dict[str, Any] = {"description": self._description()}
        percent = 100.0 if final_on else 0.0
        if cohort is not None:
            seed, attribute, version = cohort.bucket
            cut = max(r.cut for r in live if r.kind == "cohort" and r.on)
            percent = cut / (modulus(version) // 100)
            if attribute != "id":
                rollout["bucket_by"] = attribute
            rollout["bucketing"] = {"scheme": "growthbook", "seed": seed, "hash_version": version}
        targeting = {
            side: [unit for unit, on in decided.items() if on is (side == "allow")]
            for side in ("allow", "deny")
        }
        if targeting["allow"] or targeting["deny"]:
            rollout["targeting"] = {side: units for side, units in targeting.items() if units}
        stages = stages_from(percent)
        if segments:
            stages[0]["segments"] = list(segments)
        rollout["stages"] = stages
        return rollout, segments

    def _segments(
        self,
        rule: Rule,
        groups: list[list[Atom]],
        segment_names: Names,
        segments: dict[str, Any],
        key_attribute: str,
    ) -> None:
        """Add the segments of a rule that serves the new value to ``groups``."""
        where = self._where(rule.index, "condition")
        described = f"GrowthBook feature {clipped(self.key, 200)!r}, rule {rule.index}"
        if all(len(group) == 1 for group in groups):
            tables = [{"description": described, "match": "any", "rules": [g[0] for g in groups]}]
        else:
            tables = [{"description": described, "match": "all", "rules": g} for g in groups]
        for table in tables:
            segments[segment_names.name(f"{self.name}-rule{rule.index}")] = table
        if key_attribute != "id":
            why = (f"GrowthBook serves the rule to a unit without {show(key_attribute)} too, "
                   "but stagedroll turns such a unit off before its segments (no bucket_by "
                   "value, no unit)")  # fmt: skip
            rule.notes.append((where, why))

    def _description(self) -> str:
        feature = f"GrowthBook feature {clipped(self.key, 200)!r}"
        if self.boolean:
            return f"{feature}: the new path where it serves true."
        return (f"{feature}: the new path where it serves {show(self.new)}, the old where it "
                f"serves {show(self.default)}.")  # fmt: skip


def _path(key: str) -> str:
    """Where feature ``key`` is in the payload: ``features.checkout``, ``features["a.b"]``."""
    if _BARE.fullmatch(key) and len(key) <= 128:
        return f"features.{key}"
    return f"features[{json.dumps(clipped(key, 128), ensure_ascii=False)}]"
