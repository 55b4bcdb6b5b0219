"""LaunchDarkly's flags as a policy: each rollout keeps its cohort, percent, key and salt.

It takes the flag JSON in either of LaunchDarkly's shapes:

- the SDK's flag data, ``{"flags": {key: flag}, "segments": {...}}``, as the Relay Proxy
  serves it and the SDK's file data source reads it (``flagValues`` too): one environment;
- the REST API's flags, ``GET /api/v2/flags/{project}`` (``{"items": [...]}``) or one flag,
  whose settings (and salt) are under ``environments.<env>``: ``environment`` picks one,
  required when the export has several.

Which variation is the new path: ``true`` for a boolean flag. For any other flag, the
variation the default rule (fallthrough) serves besides the off variation, which is the old
path; with two variations and a fallthrough that serves only the old one, the other. A flag
where that is not one variation is left out and reported, as is one whose fallthrough does
not map as a percentage whose new range starts at 0 (an experiment, a split over three
variations). A flag that is off runs at 0 % (100 % if its off variation is the new path).

What maps, and how, is in ``docs/migrating/launchdarkly.md``. In short: individual targets
become ``allow``/``deny``; a rule that serves the new path to the units matching simple
clauses becomes segments included at stage 0, and one whose only clause lists user keys,
``allow`` (or ``deny`` when it serves the old path and no earlier rule serves the new one).
Everything else that changes who gets the flag is reported in :attr:`Imported.unmapped`.
The walk is linear in the export and goes no deeper than a clause's values.

``_launchdarkly_export.py`` reads the export into typed records (and refuses what is not
LaunchDarkly's shape), ``_launchdarkly_rules.py`` translates a rule's clauses into segment
rules, and this module decides what each flag becomes.
"""

from __future__ import annotations

from typing import Any

from ._imported import Draft, Imported, refuse, stages_from
from ._launchdarkly_export import (
    FULL_WEIGHT,
    FixedValue,
    Flag,
    Rule,
    Serve,
    ShapeError,
    Target,
    at,
    read_flags,
    read_settings,
    shown,
)
from ._launchdarkly_rules import segments_of, user_keys

__all__ = ["from_launchdarkly"]

_MAX_PROBLEMS = 50  # the shape problems a refusal names, at most
_LEFT = "the units it matches are decided by the later rules and the percentage instead"


def from_launchdarkly(
    data: object, *, environment: str | None = None, source: str | None = None
) -> Imported:
    """Make a policy of LaunchDarkly's flag JSON ``data`` (the SDK's data, or the REST API's).

    Each flag becomes a rollout named after its key (made valid, and unique), bucketing as
    LaunchDarkly does with the flag's key and salt (or its rollout's seed), at the percent it
    serves the new path now. ``environment`` picks the environment of a REST API export;
    data of another shape raises :class:`~stagedroll.exceptions.PolicyError` naming where.
    """
    try:
        flags = read_flags(data, environment)
    except ShapeError as exc:
        raise refuse([(exc.path, exc.message)], source) from None
    draft = Draft("launchdarkly", [flag.key for flag in flags])
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    for flag in flags:
        if flag.key in seen:
            problems.append((flag.path, f"flag key {shown(flag.key)} is used more than once"))
        else:
            seen.add(flag.key)
            problems += _add(draft, flag)
        if len(problems) >= _MAX_PROBLEMS:
            break
    if problems:
        raise refuse(problems, source)
    return draft.imported()


def _add(draft: Draft, flag: Flag | FixedValue) -> list[tuple[str, str]]:
    """Add one flag to ``draft``; where its shape is not LaunchDarkly's, and why, if it is not."""
    try:
        if isinstance(flag, Flag):
            _flag(draft, flag)
        else:
            _fixed(draft, flag)
    except ShapeError as exc:
        return [(exc.path, exc.message)]
    return []


def _fixed(draft: Draft, fixed: FixedValue) -> None:
    """A ``flagValues`` entry: the value served to everyone."""
    key, value = fixed.key, fixed.value
    if not isinstance(value, bool):
        draft.report(key, fixed.path, f"serves the fixed value {shown(value)}, not true or "
                     "false; the flag is left out")  # fmt: skip
        return
    bucketing = {"flag_key": key, "salt": ""}
    draft.add(key, fixed.path, _rollout(f"LaunchDarkly flag {shown(key)}", bucketing,
                                        100 if value else 0))  # fmt: skip


def _rollout(
    description: str,
    bucketing: dict[str, Any],
    percent: float,
    *,
    extra: dict[str, Any] | None = None,
    segments: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A rollout of the policy: LaunchDarkly's bucketing, at ``percent`` now."""
    stages = stages_from(percent)
    if segments:
        stages[0]["segments"] = list(segments)
    return {"description": description, "bucketing": {"scheme": "launchdarkly", **bucketing},
            **(extra or {}), "stages": stages}  # fmt: skip


def _flag(draft: Draft, flag: Flag) -> None:
    """Add the rollout of one flag (its shape checked whole first, as the SDK reads it)."""
    key, where = flag.key, flag.at
    if flag.gone:
        draft.report(key, flag.path, f"{flag.gone}: LaunchDarkly serves it to no one; the "
                     "flag is left out")  # fmt: skip
        return
    s = read_settings(flag)
    fallthrough, off = s.fallthrough, s.off
    if s.on and fallthrough.rollout is not None and fallthrough.rollout.experiment:
        draft.report(key, fallthrough.path, "is an experiment (kind experiment): its arms "
                     "are not a rollout stagedroll runs; the flag is left out")  # fmt: skip
        return
    chosen = _new_and_old(flag.variations, off, fallthrough)
    if isinstance(chosen, str):
        draft.report(key, where, f"{chosen}; the flag is left out")
        return
    new, old = chosen
    bucketing: dict[str, Any] = {"flag_key": key, "salt": s.salt}
    described = f"LaunchDarkly flag {shown(key)}" + (f": {flag.name[:200]}" if flag.name else "")
    if not _is_boolean(flag.variations):
        described += (f" (new path: variation {new}, {shown(flag.variations[new])}; old "
                      f"path: variation {old}, {shown(flag.variations[old])})")  # fmt: skip
    if not s.on:
        fixed = 100 if off is not None and off == new else 0
        if s.targets or s.contexts or s.rules or s.prerequisites:
            draft.report(key, at(where, "on"), "the flag is off: LaunchDarkly serves the off "
                         "variation to everyone and applies none of its targets, rules and "
                         f"prerequisites; the imported rollout runs at {fixed} % without "
                         "them")  # fmt: skip
        draft.add(key, flag.path, _rollout(described, bucketing, fixed))
        return
    percent = _percent(fallthrough, new, old)
    if isinstance(percent, str):
        draft.report(key, fallthrough.path, f"{percent}; the flag is left out")
        return
    by = ""
    if fallthrough.rollout is not None:
        if fallthrough.rollout.seed is not None:
            bucketing["seed"] = fallthrough.rollout.seed
        by = fallthrough.rollout.bucket_by or ""
    for prerequisite in s.prerequisites:
        draft.report(key, prerequisite.path, "LaunchDarkly serves the off variation unless "
                     f"flag {shown(prerequisite.key)} serves its variation "
                     f"{shown(prerequisite.variation)}; the imported rollout does not depend "
                     "on other flags")  # fmt: skip
    decided: dict[str, bool] = {}
    _targets(draft, key, s.targets, s.contexts, paths=(new, old), by=by, decided=decided)
    segments = _rules(draft, key, s.rules, paths=(new, old), by=by, decided=decided)
    allow = [k for k, is_new in decided.items() if is_new]
    deny = [k for k, is_new in decided.items() if not is_new]
    extra: dict[str, Any] = {}
    if allow or deny:
        extra["targeting"] = {k: v for k, v in (("allow", allow), ("deny", deny)) if v}
    if by:
        extra["bucket_by"] = by
        if percent > 0:
            draft.report(key, at(at(fallthrough.path, "rollout"), "bucketBy"),
                         f"LaunchDarkly puts a unit whose {shown(by)} is missing, or not "
                         "text or an integer, in bucket 0 (the new path); stagedroll's "
                         "bucket_by counts it as no unit (off). Units that have it keep "
                         "their cohort")  # fmt: skip
    rollout = _rollout(described, bucketing, percent, extra=extra, segments=segments)
    draft.add(key, flag.path, rollout, segments)


def _targets(draft: Draft, key: str, targets: list[Target], contexts: list[Target], *,
             paths: tuple[int, int], by: str, decided: dict[str, bool]) -> None:  # fmt: skip
    """Individual targets, in the order the SDK checks them, into ``decided`` (first wins)."""
    order = targets
    if contexts:  # the SDK walks contextTargets; a user one stands for the user targets
        order = []
        for target in contexts:
            if target.kind != "user":
                order.append(target)
            else:
                order += [t for t in targets if t.variation == target.variation][:1]
    for target in order:
        variation, values, kind = target.variation, target.values, target.kind
        if not values:
            continue
        if kind != "user":
            why = (f"targets {len(values)} context(s) of kind {shown(kind)}; stagedroll's "
                   "units are the user keys")  # fmt: skip
        elif variation not in paths:
            why = f"serves variation {variation} (neither path) to {len(values)} user(s)"
        elif by:
            why = (f"targets {len(values)} user key(s), but the rollout buckets by {shown(by)}, "
                   "and allow and deny lists then match that attribute")  # fmt: skip
        else:
            for value in values:
                if value:  # LaunchDarkly refuses a context with an empty key
                    decided.setdefault(value, variation == paths[0])
            continue
        draft.report(key, target.path, f"{why}: they are decided by the rules and the percentage")


def _rules(draft: Draft, key: str, rules: list[Rule], *, paths: tuple[int, int], by: str,
           decided: dict[str, bool]) -> dict[str, Any]:  # fmt: skip
    """The rules, in order: the segments of stage 0, and user keys into ``decided``."""
    segments: dict[str, Any] = {}
    earlier_new = False  # whether an earlier rule may serve the new path by attributes
    for index, rule in enumerate(rules):
        if rule.disabled:
            continue  # a disabled rule (REST API) is not in effect
        serve, where = rule.serve, rule.path
        if serve.rollout is not None or serve.variation not in paths:
            what = ("a percentage split" if serve.rollout is not None
                    else f"variation {serve.variation}, neither path,")  # fmt: skip
            draft.report(key, where, f"serves {what} to the units matching it, which "
                         f"stagedroll cannot: {_LEFT}")  # fmt: skip
            earlier_new = earlier_new or serve.rollout is not None  # a split may serve it
            continue
        serves_new = serve.variation == paths[0]
        keys = user_keys(rule.clauses)
        if keys is not None:
            why = ""
            if by:
                why = (f"the rollout buckets by {shown(by)}, and allow and deny lists then "
                       "match that attribute")  # fmt: skip
            elif not serves_new and earlier_new:
                why = ("an earlier rule may serve the new path to them, and stagedroll "
                       "checks deny lists first")  # fmt: skip
            if why:
                draft.report(key, where, f"lists {len(keys)} user key(s), but {why}: {_LEFT}")
                earlier_new = earlier_new or serves_new
                continue
            for value in keys:
                if value:
                    decided.setdefault(value, serves_new)
            continue
        if not serves_new:
            draft.report(key, where, "serves the old path to the units matching its "
                         "clauses; stagedroll turns units off by id only (deny lists): "
                         f"{_LEFT}")  # fmt: skip
            continue
        earlier_new = True
        found = segments_of(rule.clauses, where)
        if isinstance(found, tuple):
            draft.report(key, found[0], f"{found[1]}; the rule (serving the new path) is "
                         f"left out: {_LEFT}")  # fmt: skip
            continue
        for j, segment in enumerate(found):
            suffix = f"rule{index}" + (f".{j}" if len(found) > 1 else "")
            segments[draft.segment_names.name(f"{key}.{suffix}")] = segment
    return segments


def _is_boolean(variations: list[Any]) -> bool:
    return (len(variations) == 2 and all(isinstance(v, bool) for v in variations)
            and variations[0] is not variations[1])  # fmt: skip


def _served(serve: Serve) -> list[int]:
    """The variations the fallthrough can serve, in its order."""
    if serve.rollout is None:
        return [serve.variation] if serve.variation is not None else []
    weights = serve.rollout.weights
    served = [v for v, w in weights if w > 0]
    if sum(w for _, w in weights) < FULL_WEIGHT:
        served.append(weights[-1][0])  # past the last range: the last variation (the SDK)
    return list(dict.fromkeys(served))


def _new_and_old(
    variations: list[Any], off: int | None, fallthrough: Serve
) -> tuple[int, int] | str:
    """The new path's variation and the old one's, or why they are ambiguous."""
    if _is_boolean(variations):
        return variations.index(True), variations.index(False)
    if len(variations) < 2:
        return f"has {len(variations)} variation(s): no new and old path to tell apart"
    if off is None:
        return ("is not a boolean flag and has no offVariation: which variation is the old path "
                "is ambiguous")  # fmt: skip
    others = [v for v in _served(fallthrough) if v != off]
    if not others and len(variations) == 2:
        others = [1 - off]
    if len(others) != 1:
        return (f"its default rule serves {len(others)} variations besides the off variation "
                f"({off}): which one is the new path is ambiguous")  # fmt: skip
    return others[0], off


def _percent(serve: Serve, new: int, old: int) -> float | str:
    """The percent of units the fallthrough serves the new path, or why it cannot be one."""
    rollout = serve.rollout
    if rollout is None:
        if serve.variation is None:
            return "has no default rule (fallthrough): LaunchDarkly serves the code's default"
        return 100 if serve.variation == new else 0
    if rollout.kind != "user":
        return f"buckets contexts of kind {shown(rollout.kind)}; stagedroll's units are users"
    if rollout.bucket_by is None:
        return "buckets by a nested attribute, which stagedroll's bucket_by cannot name"
    if any(v not in (new, old) for v in _served(serve)):
        return "splits the units over more than the new and the old path"
    positive = [(v, w) for v, w in rollout.weights if w > 0]
    news = [w for v, w in positive if v == new]
    if new not in _served(serve):
        return 0
    if (
        len(news) == 1
        and positive[0][0] == new
        and (sum(w for _, w in rollout.weights) >= FULL_WEIGHT or rollout.weights[-1][0] != new)
    ):
        return news[0] / 1000
    if not news and not positive:
        return 100  # no weight at all: every unit falls past the ranges, to the new path
    return ("gives the new path a range that does not start at 0, or more than one (LaunchDarkly "
            "assigns ranges in the order of rollout.variations: list the new variation first); "
            "stagedroll's cohorts grow from 0")  # fmt: skip
