"""LaunchDarkly's flag JSON, read as its SDK reads it: typed records, each with its path.

The importer (``_launchdarkly.py``) maps these records to a policy; this module only reads
them. It takes either shape of the flag JSON: the SDK's flag data (``{"flags": {...}}``,
and ``flagValues``), or the REST API's flags (``{"items": [...]}`` or one flag), whose
settings are per environment. A value of the wrong type, a required field missing, an
index past the flag's variations raise :class:`ShapeError` naming where it is in the
export (``flags.checkout-v2.rules[0].clauses[1].op``); the importer gathers them into one
:class:`~stagedroll.exceptions.PolicyError`. Fields the SDK does not read are ignored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FULL_WEIGHT",
    "Clause",
    "FixedValue",
    "Flag",
    "Prerequisite",
    "Rollout",
    "Rule",
    "Serve",
    "Settings",
    "ShapeError",
    "Target",
    "at",
    "attribute_of",
    "read_flags",
    "read_settings",
    "shown",
]

FULL_WEIGHT = 100_000
"""The weight of every unit: LaunchDarkly's weights are thousandths of a percent."""

_BARE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
_KINDS: dict[type, str] = {str: "text", int: "an integer", bool: "true or false",
                           list: "a list", dict: "an object"}  # fmt: skip


class ShapeError(Exception):
    """A part of the export that is not LaunchDarkly's shape: where, and what is wrong."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(path, message)
        self.path, self.message = path, message


def at(path: str, key: str | int) -> str:
    """The path of ``key`` (a field or an index) under ``path``, as a message shows it."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _BARE.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{shown(key)}]"


def shown(value: object) -> str:
    """A value for a message: JSON text, clipped; a list or object by its kind only."""
    if isinstance(value, list | dict):
        return "a list" if isinstance(value, list) else "an object"
    try:
        text = json.dumps(value, ensure_ascii=False)
    except ValueError:  # an integer of more digits than Python converts to text
        return "a number too long to show"
    except TypeError:  # not a JSON value (a program's bytes, set or object)
        return f"a {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + '..."'


def attribute_of(reference: str, context_kind: str) -> str | None:
    """The attribute an SDK reference names (``None``: a nested one, which has no equivalent).

    Without a context kind, LaunchDarkly reads the reference as a plain name; with one, a
    leading ``/`` makes it a path (``/address/city``), with ``~1`` for ``/``, ``~0`` for ``~``.
    """
    if not context_kind or not reference.startswith("/"):
        return reference
    parts = reference[1:].split("/")
    if len(parts) != 1 or not parts[0] or re.search(r"~[^01]|~$", parts[0]):
        return None
    return parts[0].replace("~1", "/").replace("~0", "~")


@dataclass(frozen=True, slots=True)
class Rollout:
    """A percentage rollout: the ranges of the variations, and how units are bucketed."""

    weights: tuple[tuple[int, int], ...]
    """``(variation, weight)`` pairs, in the order the SDK assigns their ranges."""
    seed: int | None
    bucket_by: str | None
    """The attribute it buckets by, ``""`` for the key; ``None``: a nested one."""
    experiment: bool
    kind: str
    """The context kind it buckets."""
    path: str


@dataclass(frozen=True, slots=True)
class Serve:
    """What a rule or the default rule serves: one variation, or a rollout (or neither)."""

    variation: int | None
    rollout: Rollout | None
    path: str


@dataclass(frozen=True, slots=True)
class Target:
    """Individual targets: the keys of contexts of one kind, served one variation."""

    variation: int
    values: list[str]
    kind: str
    path: str


@dataclass(frozen=True, slots=True)
class Clause:
    """One clause of a rule: ``attribute op values``, negated or not."""

    attribute: str
    """The reference as written (see :func:`attribute_of`)."""
    op: str
    values: list[Any]
    negate: bool
    context_kind: str
    """The context kind as written (``""`` when absent); the kind tested is ``kind``."""
    path: str

    @property
    def kind(self) -> str:
        """The context kind the clause tests (``user`` when the clause names none)."""
        return self.context_kind or "user"


@dataclass(frozen=True, slots=True)
class Rule:
    """A targeting rule: what it serves to the units matching all its clauses."""

    serve: Serve
    clauses: list[Clause]
    disabled: bool
    path: str


@dataclass(frozen=True, slots=True)
class Prerequisite:
    """Another flag that must serve a variation for this one to be on."""

    key: str
    variation: object
    path: str


@dataclass(frozen=True, slots=True)
class Flag:
    """A flag of the export, with its settings in the chosen environment still unread."""

    key: str
    path: str
    """Where the flag is in the export."""
    at: str
    """Where its environment's settings are (the flag itself in the SDK's data)."""
    settings: Mapping[str, Any]
    variations: list[Any]
    name: str = ""
    gone: str = ""
    """Why LaunchDarkly serves it to no one (deleted, archived, no settings), or ``""``."""


@dataclass(frozen=True, slots=True)
class FixedValue:
    """A ``flagValues`` entry of the SDK's file data: one value served to everyone."""

    key: str
    path: str
    value: object


@dataclass(frozen=True, slots=True)
class Settings:
    """A flag's settings in its environment, their shape checked."""

    on: bool
    off: int | None
    salt: str
    fallthrough: Serve
    targets: list[Target]
    contexts: list[Target]
    rules: list[Rule]
    prerequisites: list[Prerequisite]


def _get(data: Mapping[str, Any], name: str, kind: type, path: str, required: bool = False) -> Any:
    """``data[name]`` of type ``kind`` (absent or null: ``None``), as the SDK reads it."""
    value = data.get(name)
    if value is None:
        if required:
            raise ShapeError(at(path, name), f"is required ({_KINDS[kind]})")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ShapeError(at(path, name), f"must be {_KINDS[kind]}, not {shown(value)}")
    return value


def _objects(data: Mapping[str, Any], name: str, path: str, required: bool = False) -> list[Any]:
    items: list[Any] = _get(data, name, list, path, required) or []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ShapeError(at(at(path, name), i), f"must be an object, not {shown(item)}")
    return items


def _index(data: Mapping[str, Any], name: str, path: str, count: int, required: bool) -> int | None:
    index: int | None = _get(data, name, int, path, required)
    if index is not None and not 0 <= index < count:
        raise ShapeError(at(path, name), f"{shown(index)} is not the index of one of the {count} "
                         "variations")  # fmt: skip
    return index


def read_flags(data: object, environment: str | None) -> list[Flag | FixedValue]:
    """The export's flags (and ``flagValues``), in its order; ``environment`` for a REST one."""
    if not isinstance(data, dict):
        raise ShapeError("", f"must be LaunchDarkly's flag data (an object), not {shown(data)}")
    if "flags" in data or "flagValues" in data:
        if environment is not None:
            raise ShapeError("", "is the SDK's flag data, of one environment: choose an "
                             "environment only for a REST API export")  # fmt: skip
        found: list[Flag | FixedValue] = []
        for name, flag in (_get(data, "flags", dict, "") or {}).items():
            path = at("flags", name)
            if not isinstance(flag, dict):
                raise ShapeError(path, f"must be an object, not {shown(flag)}")
            key = _get(flag, "key", str, path, True)
            gone = "is deleted" if _get(flag, "deleted", bool, path) else ""
            variations = _get(flag, "variations", list, path) or []
            found.append(Flag(key, path, path, flag, variations, gone=gone))
        for key, value in (_get(data, "flagValues", dict, "") or {}).items():
            found.append(FixedValue(key, at("flagValues", key), value))
        return found
    if "items" in data:
        items = _objects(data, "items", "", True)
        paths = [at("items", i) for i in range(len(items))]
    elif "key" in data and "environments" in data:
        items, paths = [data], [""]
    else:
        raise ShapeError("", 'is not LaunchDarkly flag data: expected {"flags": {...}} (SDK or '
                         'Relay data), {"items": [...]} (GET /api/v2/flags/{project}) or one '
                         'flag with "environments"')  # fmt: skip
    return list(_rest_flags(items, paths, environment))


def _rest_flags(items: list[Any], paths: list[str], environment: str | None) -> list[Flag]:
    named: dict[str, None] = {}
    for item, path in zip(items, paths, strict=True):
        named.update(dict.fromkeys(_get(item, "environments", dict, path, True)))
    listed = ", ".join(shown(n) for n in list(named)[:10]) + (", ..." if len(named) > 10 else "")
    if environment is None and len(named) > 1:
        raise ShapeError("environments", f"has the settings of {len(named)} environments "
                         f"({listed}): choose one (environment=, or --source-env)")  # fmt: skip
    if environment is not None and items and environment not in named:
        raise ShapeError("environments", f"has no environment {shown(environment)} (it has: "
                         f"{listed or 'none'})")  # fmt: skip
    env = environment if environment is not None else next(iter(named), "")
    flags = []
    for item, path in zip(items, paths, strict=True):
        key = _get(item, "key", str, path, True)
        variations = []
        for i, variation in enumerate(_objects(item, "variations", path)):
            if "value" not in variation:
                raise ShapeError(at(at(at(path, "variations"), i), "value"), "is required")
            variations.append(variation["value"])
        where = at(at(path, "environments"), env)
        settings = item["environments"].get(env)
        if settings is not None and not isinstance(settings, dict):
            raise ShapeError(where, f"must be an object, not {shown(settings)}")
        if settings is not None and not {"rules", "fallthrough"} <= settings.keys():
            raise ShapeError(where, "is a summary without the flag's targeting: export the "
                             "flags with summary=0")  # fmt: skip
        gone = "is archived" if _get(item, "archived", bool, path) else ""
        if settings is None:
            gone = f"has no settings for environment {shown(env)}"
        elif _get(settings, "archived", bool, where):
            gone = "is archived"
        name = _get(item, "name", str, path) or ""
        flags.append(Flag(key, path, where, settings or {}, variations, name, gone))
    return flags


def read_settings(flag: Flag) -> Settings:
    """A flag's settings in its environment, their shape checked whole, as the SDK checks it."""
    where, s, count = flag.at, flag.settings, len(flag.variations)
    rules = []
    for i, rule in enumerate(_objects(s, "rules", where)):
        path = at(at(where, "rules"), i)
        serve = _serve(rule, path, count)
        clauses = _clauses(rule, path)
        rules.append(Rule(serve, clauses, rule.get("disabled") is True, path))
    prerequisites = []
    for i, prerequisite in enumerate(_objects(s, "prerequisites", where)):
        path = at(at(where, "prerequisites"), i)
        key = _get(prerequisite, "key", str, path, True)
        prerequisites.append(Prerequisite(key, prerequisite.get("variation"), path))
    return Settings(
        on=_get(s, "on", bool, where) is True,
        off=_index(s, "offVariation", where, count, False),
        salt=_get(s, "salt", str, where, required=where != flag.path) or "",  # the SDK's: ""
        fallthrough=_serve(
            _get(s, "fallthrough", dict, where) or {}, at(where, "fallthrough"), count, False
        ),
        targets=_targets(s, "targets", where, count),
        contexts=_targets(s, "contextTargets", where, count),
        rules=rules,
        prerequisites=prerequisites,
    )


def _serve(data: Mapping[str, Any], path: str, count: int, required: bool = True) -> Serve:
    variation = _index(data, "variation", path, count, False)
    raw = _get(data, "rollout", dict, path)
    if raw is None:
        if variation is None and required:
            raise ShapeError(path, "must give a variation or a rollout")
        return Serve(variation, None, path)
    where = at(path, "rollout")
    weights = []
    for i, item in enumerate(_objects(raw, "variations", where, True)):
        entry = at(at(where, "variations"), i)
        weight = _get(item, "weight", int, entry, True)
        if not 0 <= weight <= FULL_WEIGHT:
            raise ShapeError(at(entry, "weight"), f"must be from 0 to {FULL_WEIGHT}, not "
                             f"{shown(weight)}")  # fmt: skip
        weights.append((_index(item, "variation", entry, count, True) or 0, weight))
    if not weights:
        raise ShapeError(at(where, "variations"), "must list at least one variation")
    context_kind = _get(raw, "contextKind", str, where) or ""
    by = _get(raw, "bucketBy", str, where) or "key"
    experiment = _get(raw, "kind", str, where) == "experiment" or "experimentAllocation" in raw
    seed = _get(raw, "seed", int, where)
    if seed is not None and not -(2**63) <= seed < 2**63:
        raise ShapeError(at(where, "seed"), "must be a 64-bit integer")
    name = attribute_of(by, context_kind)
    bucket_by = "" if experiment or name == "key" else name
    rollout = Rollout(tuple(weights), seed, bucket_by, experiment, context_kind or "user", where)
    return Serve(None, rollout, path)


def _targets(settings: Mapping[str, Any], name: str, path: str, count: int) -> list[Target]:
    found = []
    for i, target in enumerate(_objects(settings, name, path)):
        where = at(at(path, name), i)
        variation = _index(target, "variation", where, count, True) or 0
        kind = _get(target, "contextKind", str, where) or "user"
        values = _get(target, "values", list, where, True)
        for j, value in enumerate(values):
            if not isinstance(value, str):
                raise ShapeError(at(at(where, "values"), j), f"must be text, not {shown(value)}")
        found.append(Target(variation, values, kind, where))
    return found


def _clauses(rule: Mapping[str, Any], path: str) -> list[Clause]:
    found = []
    for i, clause in enumerate(_objects(rule, "clauses", path, True)):
        where = at(at(path, "clauses"), i)
        attribute = _get(clause, "attribute", str, where, True)
        op = _get(clause, "op", str, where, True)
        values = _get(clause, "values", list, where, True)
        negate = _get(clause, "negate", bool, where) is True
        context_kind = _get(clause, "contextKind", str, where) or ""
        found.append(Clause(attribute, op, values, negate, context_kind, where))
    return found
