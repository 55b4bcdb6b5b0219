"""Hypothesis strategies for stagedroll: unit ids, percents, stages and whole policies.

This module imports hypothesis (``pip install 'stagedroll[testing]'``);
``stagedroll.testing`` itself does not. Every strategy draws plain data in the policy
file's shape, so a drawn policy can be passed to :func:`stagedroll.load_policy` or
:class:`stagedroll.Rollouts`, or written out as JSON. ``policies(valid=False)`` draws
broken policies, each with the path of its one problem, as
:attr:`stagedroll.PolicyError.problems` reports it.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Callable, Container, Sequence
from typing import Any, Literal, overload

try:
    from hypothesis import strategies as st
except ImportError:
    raise ImportError(
        "stagedroll.testing.strategies needs hypothesis: pip install 'stagedroll[testing]'",
        name="hypothesis",
    ) from None

__all__ = ["percents", "policies", "stages", "unit_ids"]

# The limits of the policy format (docs/policy.md), which drawn policies keep to or break.
_MAX_PERCENT_DECIMALS = 4  # a stage's percent has at most four decimals
_UNIT_CAP = 50_000  # the highest min_units

_Doc = dict[str, Any]
_STEPS: int = 10**_MAX_PERCENT_DECIMALS  # a percent is a whole number of these steps
_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"  # the policy's name rule, unanchored
_names = st.from_regex(re.compile(_NAME_PATTERN), fullmatch=True)
_texts = st.text(max_size=30)  # text a policy can hold: no lone surrogates
_attributes = st.text(min_size=1, max_size=20)
_numbers = st.one_of(st.integers(-(10**6), 10**6), st.floats(allow_nan=False, allow_infinity=False))
_scalars = st.one_of(_texts, _numbers, st.booleans())
_durations = st.one_of(
    st.integers(1, 7 * 86400),
    st.floats(min_value=0.001, max_value=7 * 86400.0),
    # At most 52 of any unit: 52 weeks stays within the longest duration, 366 days.
    st.builds("{}{}".format, st.integers(1, 52), st.sampled_from(["ms", "s", "m", "h", "d", "w"])),
    st.sampled_from(["1h30m", "1.5h", "2d12h", "500ms"]),
)
_versions = st.builds(
    "{}{}.{}.{}{}".format,
    st.sampled_from(["", "v"]),
    st.integers(0, 20),
    st.integers(0, 20),
    st.integers(0, 20),
    st.sampled_from(["", "-rc.1", "-alpha", "+build.5"]),
)


def unit_ids() -> st.SearchStrategy[str | int | uuid.UUID]:
    """Units as a caller may pass them to ``decide``: ``str``, ``int`` or :class:`uuid.UUID`.

    Strings are any text, the empty string, non-ASCII characters and lone surrogates
    included (``decide`` hashes a surrogate as its UTF-8 "surrogatepass" form; a policy's
    allow and deny lists cannot hold one). Integers may be negative or far beyond 64 bits.
    """
    return st.one_of(st.text(st.characters()), st.integers(), st.uuids())


def _percent(step: int) -> float:
    return step / _STEPS


_steps = st.one_of(st.integers(0, 100).map(_STEPS.__mul__), st.integers(0, 100 * _STEPS))


def percents() -> st.SearchStrategy[float]:
    """Valid stage percents: numbers from 0 to 100 with at most four decimals.

    Whole percents come as ``int`` or ``float``, others as the ``float`` that a policy file
    writes as, say, ``0.0125``; the edges 0, 0.0001, 99.9999 and 100 all occur.
    """
    return st.one_of(st.integers(0, 100), _steps.map(_percent))


@st.composite
def _stages(draw: st.DrawFn, min_size: int, max_size: int, segments: Sequence[str]) -> list[_Doc]:
    steps = sorted(draw(st.lists(_steps, min_size=min_size, max_size=max_size, unique=True)))
    names = draw(st.lists(_names, min_size=len(steps), max_size=len(steps), unique=True))
    drawn = []
    for name, step in zip(names, steps, strict=True):
        whole = step % _STEPS == 0 and draw(st.booleans())
        stage: _Doc = {"name": name, "percent": step // _STEPS if whole else _percent(step)}
        if draw(st.booleans()):
            stage["bake"] = draw(_durations)
        if step > 0 and draw(st.booleans()):
            stage["min_units"] = draw(st.integers(0, _UNIT_CAP))
        if bool(segments) and draw(st.booleans()):
            stage["segments"] = draw(st.lists(st.sampled_from(segments), unique=True))
        drawn.append(stage)
    return drawn


def stages(
    min_size: int = 1, max_size: int = 6, *, segments: Sequence[str] = ()
) -> st.SearchStrategy[list[dict[str, Any]]]:
    """Lists of stage mappings that a rollout accepts, between ``min_size`` and ``max_size``.

    Each is ``{"name": ..., "percent": ...}`` with unique valid names and strictly increasing
    percents, sometimes with a ``bake`` duration and ``min_units`` (on stages above 0 %),
    and, when ``segments`` names some, a ``segments`` list drawn from those names.
    """
    if min_size < 1:
        raise ValueError(f"a rollout has at least one stage: min_size must be >= 1, not {min_size}")
    if max_size < min_size:
        raise ValueError(f"max_size ({max_size}) must not be below min_size ({min_size})")
    return _stages(min_size, max_size, tuple(segments))


_rules = st.one_of(
    *(
        st.fixed_dictionaries(
            {"attribute": _attributes, "op": st.sampled_from(ops), "value": values}
        )
        for ops, values in [
            (["eq", "ne"], _scalars),
            (["in", "not_in"], st.lists(_scalars, min_size=1, max_size=4)),
            (["lt", "le", "gt", "ge"], st.one_of(_texts, _numbers)),
            (["prefix", "suffix", "contains"], _texts),
            (["semver_eq", "semver_lt", "semver_le", "semver_gt", "semver_ge"], _versions),
        ]
    )
)
_segments = st.fixed_dictionaries(
    {"rules": st.lists(_rules, min_size=1, max_size=3)},
    optional={"match": st.sampled_from(["all", "any"]), "description": _texts},
)
_alphas = st.floats(min_value=1e-12, max_value=1.0, exclude_max=True)


@st.composite
def _targeting(draw: st.DrawFn) -> _Doc:
    ids = st.one_of(_texts, st.integers(-(10**12), 10**12))
    units = draw(st.lists(ids, unique_by=str, max_size=6))
    cut = draw(st.integers(0, len(units)))
    targeting: _Doc = {}
    for key, listed in (("allow", units[:cut]), ("deny", units[cut:])):
        if bool(listed) or draw(st.booleans()):
            targeting[key] = listed
    return targeting


@st.composite
def _health(draw: st.DrawFn, *, auto: bool) -> _Doc:
    health: _Doc = {}
    if draw(st.booleans()):
        health["enabled"] = True if auto else draw(st.booleans())
    freeze = 0.05  # the default
    if draw(st.booleans()):
        freeze = health["alpha_freeze"] = draw(_alphas)
    if freeze < 0.001 or draw(st.booleans()):  # the default alpha_rollback would exceed it
        health["alpha_rollback"] = draw(st.floats(min_value=1e-12, max_value=freeze))
    optional = {
        "alpha_sample_ratio": _alphas,
        "r0": st.floats(min_value=1.0, max_value=100.0),
        "min_events": st.integers(1, 1000),
    }
    health.update(draw(st.fixed_dictionaries({}, optional=optional)))
    latency = draw(st.sampled_from(["", "slo", "p95"]))
    if latency == "slo":
        health["latency_slo_ms"] = draw(st.floats(min_value=0, max_value=1e5, exclude_min=True))
    elif latency == "p95":
        health["latency_p95"] = True
    if latency and draw(st.booleans()):
        health["latency_share"] = draw(st.floats(min_value=0, max_value=1))
    return health


@st.composite
def _rollout(draw: st.DrawFn, segments: Sequence[str], declared: Sequence[str] | None) -> _Doc:
    optional = {
        "description": _texts,
        "salt": st.text(min_size=1, max_size=30),
        "bucket_by": _attributes,
        "advance": st.sampled_from(["auto", "manual"]),
        "targeting": _targeting(),
    }
    rollout: _Doc = {"stages": draw(stages(segments=segments))}
    rollout.update(draw(st.fixed_dictionaries({}, optional=optional)))
    known = _names if declared is None else st.sampled_from(declared) if declared else None
    if known is not None and draw(st.booleans()):
        settings = st.one_of(st.sampled_from(["stages", "off"]), percents())
        rollout["environments"] = draw(st.dictionaries(known, settings, max_size=3))
    if draw(st.booleans()):
        rollout["health"] = draw(_health(auto=rollout.get("advance") == "auto"))
    return rollout


@st.composite
def _policy(draw: st.DrawFn, max_rollouts: int) -> _Doc:
    doc: _Doc = {}
    declared = draw(st.none() | st.lists(_names, unique=True, max_size=3))
    if declared is not None:
        doc["environments"] = declared
    segments = draw(st.dictionaries(_names, _segments, max_size=3))
    if bool(segments) or draw(st.booleans()):
        doc["segments"] = segments
    names = draw(st.lists(_names, unique=True, min_size=1, max_size=max_rollouts))
    doc["rollouts"] = {name: draw(_rollout(list(segments), declared)) for name in names}
    return doc


# Each mutation breaks a valid policy in one place and returns that place's path. It is
# drawn only where it applies (its predicate holds for the document).
_Mutation = Callable[[st.DrawFn, _Doc], str]
_MUTATIONS: list[tuple[Callable[[_Doc], bool], _Mutation]] = []


def _mutation(applies: Callable[[_Doc], bool] = lambda doc: True) -> Callable[[_Mutation], None]:
    def register(mutate: _Mutation) -> None:
        _MUTATIONS.append((applies, mutate))

    return register


def _fresh(draw: st.DrawFn, taken: Container[str]) -> str:
    """A valid name that is not in ``taken``."""
    return draw(_names.filter(lambda name: name not in taken))


def _rollouts_where(doc: _Doc, test: Callable[[_Doc], bool]) -> list[str]:
    return [name for name, rollout in doc["rollouts"].items() if test(rollout)]


def _pick(
    draw: st.DrawFn, doc: _Doc, test: Callable[[_Doc], bool] = lambda rollout: True
) -> tuple[str, _Doc]:
    name = draw(st.sampled_from(_rollouts_where(doc, test)))
    return name, doc["rollouts"][name]


def _pick_stage(draw: st.DrawFn, doc: _Doc, first: int = 0) -> tuple[str, _Doc, int]:
    name, rollout = _pick(draw, doc, lambda r: len(r["stages"]) > first)
    return name, rollout, draw(st.integers(first, len(rollout["stages"]) - 1))


def _some_rollout(test: Callable[[_Doc], bool]) -> Callable[[_Doc], bool]:
    return lambda doc: bool(_rollouts_where(doc, test))


def _segment_names(doc: _Doc) -> list[str]:
    return list(doc.get("segments", {}))


@_mutation()
def _bad_percent(draw: st.DrawFn, doc: _Doc) -> str:
    name, rollout, i = _pick_stage(draw, doc)
    rollout["stages"][i]["percent"] = draw(st.sampled_from([101, -1, 100.5, 0.00001, "50", True]))
    return f"rollouts.{name}.stages[{i}].percent"


@_mutation()
def _unknown_field(draw: st.DrawFn, doc: _Doc) -> str:
    where = draw(st.sampled_from(["stage", "rollout", "health", "targeting", ""]))
    field = draw(st.sampled_from(["version", "rollout", "percentage", "segment", "alpha"]))
    if where == "":
        doc[field] = {}
        return field
    name, rollout = _pick(draw, doc)
    if where == "rollout":
        rollout[field] = {}
        return f"rollouts.{name}.{field}"
    if where == "stage":
        i = draw(st.integers(0, len(rollout["stages"]) - 1))
        rollout["stages"][i][field] = 1
        return f"rollouts.{name}.stages[{i}].{field}"
    rollout[where] = {**rollout.get(where, {}), field: 1}
    return f"rollouts.{name}.{where}.{field}"


@_mutation()
def _bad_name(draw: st.DrawFn, doc: _Doc) -> str:
    bad = draw(st.sampled_from(["-", "", "a b", "x" * 129, "é"]))
    where = draw(st.sampled_from(["rollout", "segment", "stage"]))
    if where == "stage":
        name, rollout, i = _pick_stage(draw, doc)
        rollout["stages"][i]["name"] = bad
        return f"rollouts.{name}.stages[{i}].name"
    bad = bad or "-"  # an empty key makes no path of its own
    if where == "rollout":
        name = draw(st.sampled_from(list(doc["rollouts"])))
        doc["rollouts"][bad + name] = doc["rollouts"].pop(name)
        return f"rollouts.{bad}{name}"
    doc.setdefault("segments", {})[bad] = {"rules": [{"attribute": "a", "op": "eq", "value": 1}]}
    return f"segments.{bad}"


@_mutation(lambda doc: "environments" in doc)
def _duplicate_environment(draw: st.DrawFn, doc: _Doc) -> str:
    declared = doc["environments"]
    declared.append(draw(st.sampled_from(declared)) if declared else "prod")
    if len(declared) == 1:
        declared.append("prod")
    return "environments"


@_mutation(lambda doc: bool(doc.get("segments")))
def _bad_segment(draw: st.DrawFn, doc: _Doc) -> str:
    name = draw(st.sampled_from(_segment_names(doc)))
    segment = doc["segments"][name]
    k = draw(st.integers(0, len(segment["rules"]) - 1))
    fault = draw(st.sampled_from(["rules", "match", "op", "value", "attribute"]))
    if fault == "rules":
        segment["rules"] = []
        return f"segments.{name}.rules"
    if fault == "match":
        segment["match"] = "some"
        return f"segments.{name}.match"
    rule = segment["rules"][k]
    if fault == "op":
        rule["op"] = "endswith"
    elif fault == "value":
        rule["op"], rule["value"] = draw(st.sampled_from(["semver_ge", "in", "prefix"])), None
    else:
        rule["attribute"] = ""
    return f"segments.{name}.rules[{k}].{fault}"


@_mutation(_some_rollout(lambda r: len(r["stages"]) > 1))
def _decreasing_percent(draw: st.DrawFn, doc: _Doc) -> str:
    name, rollout, i = _pick_stage(draw, doc, first=1)
    stage, previous = rollout["stages"][i], rollout["stages"][i - 1]["percent"]
    stage["percent"] = previous
    if previous == 0:
        stage.pop("min_units", None)  # else a second problem: min_units at 0 %
    return f"rollouts.{name}.stages[{i}].percent"


@_mutation(_some_rollout(lambda r: len(r["stages"]) > 1))
def _duplicate_stage(draw: st.DrawFn, doc: _Doc) -> str:
    name, rollout, i = _pick_stage(draw, doc, first=1)
    stage_names = rollout["stages"]
    stage_names[i]["name"] = stage_names[draw(st.integers(0, i - 1))]["name"]
    return f"rollouts.{name}.stages[{i}].name"


@_mutation()
def _bad_stage_field(draw: st.DrawFn, doc: _Doc) -> str:
    name, rollout, i = _pick_stage(draw, doc)
    stage = rollout["stages"][i]
    field = draw(st.sampled_from(["bake", "min_units", "segments"]))
    if field == "bake":
        stage["bake"] = draw(st.sampled_from(["2 days", "soon", 0, -5, "0s", True]))
    elif field == "segments":
        stage["segments"] = "beta"
    elif stage["percent"] == 0 and draw(st.booleans()):
        stage["min_units"] = 1  # only bucketed units count, so it needs a percent above 0
    else:
        stage["min_units"] = draw(st.sampled_from([-1, 1.5, "5", True, _UNIT_CAP + 1]))
        if stage["min_units"] == _UNIT_CAP + 1 and stage["percent"] == 0:
            stage["min_units"] = -1  # else a second problem: a minimum at 0 %
    return f"rollouts.{name}.stages[{i}].{field}"


@_mutation()
def _unknown_segment(draw: st.DrawFn, doc: _Doc) -> str:
    name, rollout, i = _pick_stage(draw, doc)
    listed = rollout["stages"][i].setdefault("segments", [])
    listed.append(_fresh(draw, _segment_names(doc)))
    return f"rollouts.{name}.stages[{i}].segments[{len(listed) - 1}]"


@_mutation()
def _bad_rollout_field(draw: st.DrawFn, doc: _Doc) -> str:
    name, rollout = _pick(draw, doc)
    field = draw(st.sampled_from(["stages", "advance", "salt", "bucket_by", "description"]))
    if field == "advance" and draw(st.booleans()):
        rollout["advance"] = "auto"
        rollout["health"] = {**rollout.get("health", {}), "enabled": False}
    else:
        broken = {"stages": [], "advance": "sometimes", "salt": "", "bucket_by": ""}
        rollout[field] = broken.get(field, 1)
    return f"rollouts.{name}.{field}"


@_mutation(lambda doc: doc.get("environments") != [])  # else no environment is known
def _bad_environment(draw: st.DrawFn, doc: _Doc) -> str:
    declared = doc.get("environments")
    name, rollout = _pick(draw, doc)
    table = rollout.setdefault("environments", {})
    choices = [*table, *(declared or ["staging"])]
    environment = draw(st.sampled_from(choices))
    table[environment] = draw(st.sampled_from(["on", "Stages", True, 101, -1, None]))
    return f"rollouts.{name}.environments.{environment}"


@_mutation(lambda doc: "environments" in doc)
def _undeclared_environment(draw: st.DrawFn, doc: _Doc) -> str:
    name, rollout = _pick(draw, doc)
    environment = _fresh(draw, doc["environments"])
    rollout.setdefault("environments", {})[environment] = "stages"
    return f"rollouts.{name}.environments.{environment}"


@_mutation()
def _bad_targeting(draw: st.DrawFn, doc: _Doc) -> str:
    name, rollout = _pick(draw, doc)
    targeting = rollout.setdefault("targeting", {})
    allow, deny = targeting.setdefault("allow", []), targeting.setdefault("deny", [])
    if draw(st.booleans()):
        unit = _fresh(draw, {str(unit) for unit in (*allow, *deny)})
        allow.append(unit)
        deny.append(unit)
        return f"rollouts.{name}.targeting.deny"
    key = draw(st.sampled_from(["allow", "deny"]))
    targeting[key].append(draw(st.sampled_from([1.5, None, True, ["x"]])))
    return f"rollouts.{name}.targeting.{key}[{len(targeting[key]) - 1}]"


@_mutation()
def _bad_health(draw: st.DrawFn, doc: _Doc) -> str:
    name, rollout = _pick(draw, doc)
    health = rollout.setdefault("health", {})
    field, value = draw(
        st.sampled_from(
            [
                ("alpha_freeze", 0),
                ("alpha_freeze", 1),
                ("alpha_freeze", "0.05"),
                ("alpha_sample_ratio", 0.0),
                ("r0", 0.5),
                ("min_events", 0),
                ("latency_slo_ms", 0),
                ("latency_share", 1.5),
                ("enabled", "yes"),
                ("alpha_rollback", "consistency"),
                ("latency_p95", "consistency"),
                ("latency_share", "consistency"),
            ]
        )
    )
    if value != "consistency":
        health[field] = value
    elif field == "alpha_rollback":
        health.update(alpha_freeze=0.01, alpha_rollback=0.02)
    elif field == "latency_p95":
        health.update(latency_p95=True, latency_slo_ms=250)
    else:
        for knob in ("latency_slo_ms", "latency_p95"):
            health.pop(knob, None)
        health["latency_share"] = 0.5
    return f"rollouts.{name}.health.{field}"


@st.composite
def _invalid(draw: st.DrawFn, max_rollouts: int) -> tuple[_Doc, str]:
    doc = copy.deepcopy(draw(_policy(max_rollouts)))
    mutate = draw(st.sampled_from([mutate for applies, mutate in _MUTATIONS if applies(doc)]))
    return doc, mutate(draw, doc)


@overload
def policies(
    *, max_rollouts: int = ..., valid: Literal[True] = ...
) -> st.SearchStrategy[dict[str, Any]]: ...
@overload
def policies(
    *, max_rollouts: int = ..., valid: Literal[False]
) -> st.SearchStrategy[tuple[dict[str, Any], str]]: ...
@overload
def policies(
    *, max_rollouts: int = ..., valid: bool
) -> st.SearchStrategy[dict[str, Any]] | st.SearchStrategy[tuple[dict[str, Any], str]]: ...
def policies(
    *, max_rollouts: int = 3, valid: bool = True
) -> st.SearchStrategy[dict[str, Any]] | st.SearchStrategy[tuple[dict[str, Any], str]]:
    """Policy mappings, in the policy file's shape, with 1 to ``max_rollouts`` rollouts.

    ``valid=True``: documents that :func:`stagedroll.load_policy` accepts, with stages,
    and sometimes a salt, ``bucket_by``, ``advance``, targeting, environments (declared or
    not), health knobs within their bounds, and segments that stages refer to.

    ``valid=False``: ``(mapping, path)`` pairs, the mapping invalid in exactly one place and
    ``path`` the place as :attr:`stagedroll.PolicyError.problems` reports it, such as
    ``"rollouts.checkout.stages[1].percent"``: a percent out of range or not above the
    previous one, an unknown field, a duplicate stage name, an undefined segment, an
    ``alpha_freeze`` of 0, and more.
    """
    if max_rollouts < 1:
        raise ValueError(f"max_rollouts must be >= 1, not {max_rollouts}")
    return _policy(max_rollouts) if valid else _invalid(max_rollouts)
