"""Unleash's two export shapes, read into typed records that keep each part's path.

The client API features and the admin export (see :mod:`._unleash`) are read at fixed
paths, never recursing into a value: each flag with its state in the environment picked,
its strategies (with their constraints and the segments they name), its variants and its
parent flags, and the export's segments. A document of another shape is refused with every
problem at its path, up to a thousand.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._document import clipped
from ._imported import refuse

__all__ = ["Constraint", "Export", "Flag", "Segment", "Strategy", "read_unleash"]

_MAX_PROBLEMS = 1000  # shape problems kept before the refusal (the message shows 50)


@dataclass(frozen=True, slots=True)
class Constraint:
    """One constraint of a strategy or segment, as the export writes it."""

    path: str
    context: str
    operator: str
    values: tuple[str, ...]
    value: str | None
    inverted: bool
    case_insensitive: bool


@dataclass(slots=True)
class Strategy:
    """One strategy of a flag: its kind, text parameters, constraints and segment ids."""

    path: str
    name: str
    parameters: dict[str, str]
    constraints: list[Constraint]
    segments: list[int]
    disabled: bool
    variants: int


@dataclass(slots=True)
class Segment:
    """An Unleash segment: its name, and its constraints where the export holds them."""

    name: str
    constraints: list[Constraint] | None  # None: the export names it only


@dataclass(slots=True)
class Flag:
    """One flag of the export, in the environment picked."""

    key: str
    path: str
    enabled: bool | None  # None: the export has no state for the environment
    strategies: list[Strategy] = field(default_factory=list)
    variants: list[tuple[str, int]] = field(default_factory=list)
    dependencies: str | None = None  # where its parent flags are listed
    disabled: int = 0  # strategies the admin export marks disabled (not served)
    skip: str | None = None  # why it is left out of the policy


@dataclass(frozen=True, slots=True)
class Export:
    """What an export holds: its flags in order, its segments by id, and which shape it is."""

    flags: list[Flag]
    segments: dict[int, Segment]
    environment: str | None
    """The environment read (``None`` where the export names none)."""
    admin: bool
    """Whether it is the admin export (which names segments without their constraints)."""


def read_unleash(data: object, *, environment: str | None, source: str | None) -> Export:
    """The flags and segments of the client API features or the admin export (parsed JSON).

    A document that is not one of the two shapes raises
    :class:`~stagedroll.exceptions.PolicyError` naming each problem's path (``source`` names
    the file).
    """
    if not isinstance(data, Mapping):
        kind = "nothing" if data is None else type(data).__name__
        raise refuse([("", f"must be an Unleash export: a JSON object, not {kind}")], source)
    reader = _Reader()
    admin = "featureStrategies" in data or "featureEnvironments" in data
    if admin:
        flags, segments, environment = _admin(reader, data, environment)
    elif "features" in data:
        if environment is not None:
            reader.problem("", "the client API features hold one environment (the API token's): "
                           "an environment is picked from an admin export only")  # fmt: skip
        flags, segments = _client(reader, data)
    else:
        reader.problem("features", "is required: an Unleash export has features (client "
                       "API features, or features and featureStrategies from the admin "
                       "export)")  # fmt: skip
        flags, segments = [], {}
    if reader.problems:
        raise refuse(reader.problems, source)
    return Export(flags, segments, environment, admin)


class _Reader:
    """Checks the export's shape at fixed paths, collecting every problem."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def problem(self, path: str, message: str) -> None:
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append((path, message))

    def table(self, value: object, path: str) -> Mapping[str, Any] | None:
        if isinstance(value, Mapping):
            return value
        self.problem(path, f"must be an object (got {_kind(value)})")
        return None

    def flags(self, data: Mapping[str, Any]) -> list[Any]:
        if data.get("features") is None:
            self.problem("features", "is required: the list of flags")
        return self.items(data, "features", "")

    def items(self, parent: Mapping[str, Any], key: str, path: str) -> list[Any]:
        value = parent.get(key)
        if value is None:
            return []
        if isinstance(value, list):
            return value
        self.problem(_at(path, key), f"must be a list (got {_kind(value)})")
        return []

    def text(self, parent: Mapping[str, Any], key: str, path: str, *, needed: bool = True) -> str:
        value = parent.get(key)
        if isinstance(value, str) and (value or not needed):
            return value
        if value is not None or needed:
            self.problem(_at(path, key), f"must be a non-empty text (got {_kind(value)})")
        return ""

    def switch(self, parent: Mapping[str, Any], key: str, path: str, *, needed: bool) -> bool:
        value = parent.get(key)
        if isinstance(value, bool):
            return value
        if value is not None or needed:
            self.problem(_at(path, key), f"must be true or false (got {_kind(value)})")
        return False

    def strategy(self, raw: object, path: str, name_keys: tuple[str, ...]) -> Strategy | None:
        item = self.table(raw, path)
        if item is None:
            return None
        key = next((k for k in name_keys if k in item), name_keys[0])
        name = self.text(item, key, path)
        parameters: dict[str, str] = {}
        raw_parameters = item.get("parameters")
        if raw_parameters is not None and self.table(raw_parameters, _at(path, "parameters")):
            for pkey, pvalue in raw_parameters.items():
                if isinstance(pvalue, str):
                    parameters[str(pkey)] = pvalue
                else:
                    self.problem(_at(path, f"parameters.{pkey}"), "must be text, as Unleash "
                                 f"writes every parameter (got {_kind(pvalue)})")  # fmt: skip
        segments = []
        for j, sid in enumerate(self.items(item, "segments", path)):
            if isinstance(sid, int) and not isinstance(sid, bool):
                segments.append(sid)
            else:
                self.problem(f"{path}.segments[{j}]", f"must be a segment id (got {_kind(sid)})")
        return Strategy(path, name, parameters, self.constraints(item, path), segments,
                        self.switch(item, "disabled", path, needed=False),
                        len(self.items(item, "variants", path)))  # fmt: skip

    def constraints(self, parent: Mapping[str, Any], path: str) -> list[Constraint]:
        found = []
        for k, raw in enumerate(self.items(parent, "constraints", path)):
            where = f"{path}.constraints[{k}]"
            item = self.table(raw, where)
            if item is None:
                continue
            values = []
            for m, value in enumerate(self.items(item, "values", where)):
                if isinstance(value, str):
                    values.append(value)
                else:
                    self.problem(f"{where}.values[{m}]", f"must be text (got {_kind(value)})")
            found.append(Constraint(
                where, self.text(item, "contextName", where), self.text(item, "operator", where),
                tuple(values), self.text(item, "value", where, needed=False) or None,
                self.switch(item, "inverted", where, needed=False),
                self.switch(item, "caseInsensitive", where, needed=False),
            ))  # fmt: skip
        return found

    def segments(self, data: Mapping[str, Any], *, named_only: bool) -> dict[int, Segment]:
        found: dict[int, Segment] = {}
        for i, raw in enumerate(self.items(data, "segments", "")):
            path = f"segments[{i}]"
            item = self.table(raw, path)
            if item is None:
                continue
            sid = item.get("id")
            if not isinstance(sid, int) or isinstance(sid, bool):
                self.problem(f"{path}.id", f"must be a segment id (got {_kind(sid)})")
                continue
            name = self.text(item, "name", path, needed=False)
            listed = named_only and item.get("constraints") is None
            found[sid] = Segment(name, None if listed else self.constraints(item, path))
        return found


def _client(reader: _Reader, data: Mapping[str, Any]) -> tuple[list[Flag], dict[int, Segment]]:
    flags: list[Flag] = []
    last: dict[str, int] = {}
    for i, raw in enumerate(reader.flags(data)):
        path = f"features[{i}]"
        item = reader.table(raw, path)
        if item is None:
            continue
        flag = Flag(reader.text(item, "name", path), path,
                    reader.switch(item, "enabled", path, needed=True))  # fmt: skip
        for j, strategy in enumerate(reader.items(item, "strategies", path)):
            read = reader.strategy(strategy, f"{path}.strategies[{j}]", ("name",))
            if read is not None:
                flag.strategies.append(read)
        if variants := reader.items(item, "variants", path):
            flag.variants.append((f"{path}.variants", len(variants)))
        if reader.items(item, "dependencies", path):
            flag.dependencies = f"{path}.dependencies"
        if flag.key in last:  # the SDK keeps the last flag of a name
            earlier = flags[last[flag.key]]
            earlier.skip = f"{path} has the same name, and Unleash's SDK keeps the later flag"
        last[flag.key] = len(flags)
        flags.append(flag)
    return flags, reader.segments(data, named_only=False)


def _admin(
    reader: _Reader, data: Mapping[str, Any], environment: str | None
) -> tuple[list[Flag], dict[int, Segment], str | None]:
    states = reader.items(data, "featureEnvironments", "")
    strategies = reader.items(data, "featureStrategies", "")
    found: dict[str, None] = {}
    for kind, rows in (("featureEnvironments", states), ("featureStrategies", strategies)):
        for i, raw in enumerate(rows):
            row = raw if isinstance(raw, Mapping) else {}
            name = reader.text(row, "environment", f"{kind}[{i}]", needed=False)
            if name:
                found[name] = None
    named = ", ".join(repr(clipped(e, 60)) for e in itertools.islice(found, 20))
    if environment is None and len(found) > 1:
        reader.problem("featureEnvironments", f"holds the environments {named}: pick one")
    elif environment is not None and found and environment not in found:
        reader.problem("featureEnvironments", f"has no environment {clipped(environment, 60)!r}"
                       f" (found: {named})")  # fmt: skip
    environment = environment if environment is not None else next(iter(found), None)
    flags: dict[str, Flag] = {}
    for i, raw in enumerate(reader.flags(data)):
        path = f"features[{i}]"
        item = reader.table(raw, path)
        if item is None:
            continue
        flag = Flag(reader.text(item, "name", path), path, None)
        if reader.switch(item, "archived", path, needed=False):
            flag.skip = "the flag is archived, and Unleash serves no archived flag"
        if flag.key in flags:
            reader.problem(_at(path, "name"), "names a flag the export already has")
        flags[flag.key] = flag
    _states(reader, flags, states, environment)
    _strategies(reader, flags, data, strategies, environment)
    for i, raw in enumerate(reader.items(data, "dependencies", "")):
        item = reader.table(raw, f"dependencies[{i}]")
        key = item.get("feature") if item is not None else None
        if isinstance(key, str) and key in flags and item and item.get("dependencies"):
            flags[key].dependencies = f"dependencies[{i}]"
    return list(flags.values()), reader.segments(data, named_only=True), environment


def _states(
    reader: _Reader, flags: dict[str, Flag], states: list[Any], environment: str | None
) -> None:
    """Each flag's state in ``environment``: enabled or not, and its variants."""
    for i, raw in enumerate(states):
        path = f"featureEnvironments[{i}]"
        item = reader.table(raw, path)
        if item is None or not _here(item, environment):
            continue
        key = item.get("featureName", item.get("name"))
        enabled = reader.switch(item, "enabled", path, needed=True)
        if isinstance(key, str) and key in flags:
            flags[key].enabled = enabled
            if variants := reader.items(item, "variants", path):
                flags[key].variants.append((f"{path}.variants", len(variants)))


def _strategies(
    reader: _Reader,
    flags: dict[str, Flag],
    data: Mapping[str, Any],
    strategies: list[Any],
    environment: str | None,
) -> None:
    """Each flag's strategies in ``environment``, those marked disabled counted, not kept."""
    linked: dict[str, list[int]] = {}
    for i, raw in enumerate(reader.items(data, "featureStrategySegments", "")):
        item = reader.table(raw, f"featureStrategySegments[{i}]")
        if item and isinstance(item.get("featureStrategyId"), str):
            sid = item.get("segmentId")
            if isinstance(sid, int) and not isinstance(sid, bool):
                linked.setdefault(item["featureStrategyId"], []).append(sid)
    for i, raw in enumerate(strategies):
        path = f"featureStrategies[{i}]"
        read = reader.strategy(raw, path, ("name", "strategyName"))
        if read is None or not _here(raw, environment):
            continue
        key = reader.text(raw, "featureName", path)
        if key not in flags:
            continue  # a strategy of a flag the export does not hold
        strategy_id = raw.get("id")
        if isinstance(strategy_id, str) and not read.segments:
            read.segments = linked.get(strategy_id, [])
        if read.disabled:  # the server does not serve a disabled strategy to the SDKs
            flags[key].disabled += 1
            continue
        flags[key].strategies.append(read)


def _here(item: object, environment: str | None) -> bool:
    """Whether an admin export's row is of ``environment`` (a row naming none is)."""
    named = item.get("environment") if isinstance(item, Mapping) else None
    return not isinstance(named, str) or named == environment


def _at(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: object) -> str:
    """What a value of the export is, in a few words (never its whole text)."""
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return f"text {clipped(value, 40)!r}"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    return "an object" if isinstance(value, Mapping) else f"a {type(value).__name__}"
