"""``simulate``: which of a set of units each stage of each rollout puts on the new path.

The answer is the one :meth:`Rollouts.decide <stagedroll.Rollouts.decide>` gives with the
rollout running at that stage, computed in bulk: each unit is hashed once per rollout, and
what is kept per unit is one small integer, the set of stages whose cohort holds it (a bit
per stage). Counts, fractions and the nesting check come from a histogram of those sets;
the units of a cohort are listed only when asked for.
"""

from __future__ import annotations

import os
import uuid
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from types import MappingProxyType
from typing import Any, Literal

import mmh3

from .. import BucketingScheme, Policy, RolloutPolicy, Rollouts, load_policy, unit_key

__all__ = ["RolloutSimulation", "Simulation", "StageCohort", "simulate"]

Unit = str | int | uuid.UUID
Attrs = Mapping[str, object]
Attributes = Callable[[object], Attrs | None]
Predicate = Callable[[Attrs], bool]
Mode = Literal["stages", "fixed", "off"]

_hash = mmh3.hash
_EXAMPLES = 3  # units named in the message of a failed nesting check


@dataclass(frozen=True, slots=True)
class StageCohort:
    """The cohort of one stage of a simulated rollout."""

    name: str
    """The stage's name (the environment's, where the environment fixes a percent or is off)."""
    percent: float
    """The stage's percent (0.0 where the environment turns the rollout off)."""
    count: int
    """How many of the simulated units are in the cohort."""
    fraction: float
    """``count`` over the number of simulated units (0.0 when there are none)."""
    expected: float
    """The fraction the percent promises: ``percent / 100``."""


@dataclass(frozen=True, slots=True)
class _Stage:
    """A stage as ``decide`` runs it: its threshold, and the segments in force.

    The threshold is the cut of the rollout's bucketing scheme. A stage's segments are its
    own and those of the earlier stages.
    """

    name: str
    percent: float
    threshold: int
    segments: tuple[Predicate, ...] = ()


@dataclass(frozen=True, slots=True)
class _Plan:
    """One rollout of the policy as it runs in the simulated environment."""

    mode: Mode
    stages: tuple[_Stage, ...]
    """Its stages; where the environment fixes a percent or turns it off, the one setting."""
    salt: str
    """The salt of stagedroll's own bucketing (when ``scheme`` is that)."""
    scheme: BucketingScheme
    """The bucketing that places the rollout's units (stagedroll's own, or another system's)."""
    bucket_by: str | None
    allow: frozenset[str]
    deny: frozenset[str]


def _plan(
    name: str, rollout: RolloutPolicy, segments: Mapping[str, Predicate], environment: str | None
) -> _Plan:
    """Rollout ``name`` as ``Rollouts`` runs it in ``environment``."""
    setting = rollout.environments.get(environment) if environment is not None else None
    if environment is not None and rollout.environments and setting is None:
        setting = "off"  # environments listed, this one not: the new path stays off here
    mode: Mode
    scheme = rollout.scheme(name)
    if setting is None or setting == "stages":
        mode, stages = "stages", _stages(rollout, segments, scheme)
    elif setting == "off":
        mode, stages = "off", (_Stage(f"{environment}", 0.0, 0),)
    else:
        mode, stages = "fixed", (_Stage(f"{environment}", setting, scheme.cut(setting)),)
    targeting = rollout.targeting
    return _Plan(
        mode=mode,
        stages=stages,
        salt=rollout.salt_or(name),
        scheme=scheme,
        bucket_by=rollout.bucket_by,
        allow=frozenset(targeting.allow),
        deny=frozenset(targeting.deny),
    )


def _stages(
    rollout: RolloutPolicy, segments: Mapping[str, Predicate], scheme: BucketingScheme
) -> tuple[_Stage, ...]:
    """The rollout's stages; a segment stays in once included, as units do as the percent grows."""
    stages = []
    included: list[Predicate] = []
    for stage in rollout.stages:
        included.extend(segments[s] for s in stage.segments if segments[s] not in included)
        cut = scheme.cut(stage.percent)
        stages.append(_Stage(stage.name, stage.percent, cut, tuple(included)))
    return tuple(stages)


class _Population:
    """The simulated units, their keys as text, and (lazily) where each key first occurs."""

    __slots__ = ("_positions", "keys", "objects")

    def __init__(self, units: Iterable[Unit]) -> None:
        self.objects: list[object] = list(units)
        try:
            self.keys: list[str] = [u if u.__class__ is str else unit_key(u) for u in self.objects]
        except TypeError as exc:
            position = next(i for i, u in enumerate(self.objects) if not _is_unit(u))
            raise TypeError(f"units[{position}]: {exc}") from None
        self._positions: dict[str, int] | None = None

    def position(self, unit: object) -> int:
        """The index of ``unit`` among the simulated units; ``KeyError`` if it is not one."""
        key = unit_key(unit)
        if self._positions is None:
            n = len(self.keys)
            # Built backwards, so that a unit given twice maps to its first occurrence.
            self._positions = dict(zip(reversed(self.keys), range(n - 1, -1, -1), strict=True))
        try:
            return self._positions[key]
        except KeyError:
            raise KeyError(f"{unit!r} is not one of the simulated units") from None


def _is_unit(unit: object) -> bool:
    try:
        unit_key(unit)
    except TypeError:
        return False
    return True


class RolloutSimulation:
    """The cohorts of one rollout at each of its stages, for the simulated units.

    Built by :func:`simulate`. ``stages`` holds one :class:`StageCohort` per stage; where
    the environment fixes a percent, a single cohort named after the environment, and where
    it turns the rollout off, a single empty cohort named after it (``mode`` says which).
    """

    __slots__ = ("_masks", "_population", "left_out", "mode", "name", "stages")

    def __init__(
        self,
        name: str,
        *,
        mode: Mode,
        stages: tuple[StageCohort, ...],
        population: _Population,
        masks: Sequence[int],
        left_out: tuple[int, ...],
    ) -> None:
        self.name = name
        self.mode: Mode = mode
        """``"stages"``, or ``"fixed"`` / ``"off"`` as the environment sets the rollout."""
        self.stages = stages
        self._population = population
        self._masks = masks
        self.left_out = left_out
        """For each stage after the first, how many units of the previous stage's cohort its
        cohort leaves out (all ``0`` when the cohorts are nested)."""

    @property
    def nested(self) -> bool:
        """Whether each stage's cohort contains the previous stage's cohort."""
        return not any(self.left_out)

    def check(self) -> None:
        """Raise :class:`AssertionError` unless each stage's cohort contains the previous one."""
        problems = self._nesting_problems()
        if problems:
            raise AssertionError("; ".join(problems))

    def _nesting_problems(self) -> list[str]:
        problems = []
        for i, leaks in enumerate(self.left_out):
            if not leaks:
                continue
            before, after = self.stages[i], self.stages[i + 1]
            examples = ", ".join(repr(u) for u in self._leavers(i)[:_EXAMPLES])
            problems.append(
                f"rollout {self.name!r}: stage {after.name!r} ({after.percent:g} %) does not "
                f"contain the cohort of stage {before.name!r} ({before.percent:g} %): "
                f"{leaks} of its units are left out (e.g. {examples})"
            )
        return problems

    def _leavers(self, index: int) -> list[object]:
        inside, outside = 1 << index, 1 << (index + 1)
        return [
            u
            for u, mask in zip(self._population.objects, self._masks, strict=True)
            if mask & inside and not mask & outside
        ]

    def _index(self, stage: str | int) -> int:
        if isinstance(stage, str):
            for i, cohort in enumerate(self.stages):
                if cohort.name == stage:
                    return i
            known = ", ".join(c.name for c in self.stages)
            raise KeyError(f"rollout {self.name!r} has no stage {stage!r} (known: {known})")
        if isinstance(stage, bool) or not isinstance(stage, int):
            raise TypeError(f"a stage is a name or an index, not {type(stage).__name__}")
        if not -len(self.stages) <= stage < len(self.stages):
            raise IndexError(f"rollout {self.name!r} has {len(self.stages)} stages, no [{stage}]")
        return stage % len(self.stages)

    def members(self, stage: str | int) -> list[object]:
        """The units in the cohort of ``stage`` (a name or an index), in the order given."""
        bit = 1 << self._index(stage)
        return [
            u for u, mask in zip(self._population.objects, self._masks, strict=True) if mask & bit
        ]

    def contains(self, unit: Unit, stage: str | int) -> bool:
        """Whether ``unit`` is in the cohort of ``stage`` (a name or an index).

        ``unit`` is matched by its key text (``42`` and ``"42"`` are one unit). Raises
        :class:`KeyError` if it is not one of the simulated units.
        """
        bit = 1 << self._index(stage)
        return bool(self._masks[self._population.position(unit)] & bit)

    def __repr__(self) -> str:
        cohorts = ", ".join(f"{c.name} {c.percent:g}%: {c.count}" for c in self.stages)
        nesting = "nested" if self.nested else "NOT nested"
        return f"<RolloutSimulation {self.name!r} {cohorts} ({nesting})>"


class Simulation(Mapping[str, RolloutSimulation]):
    """The cohorts of every rollout of a policy, for a set of units; built by :func:`simulate`.

    A read-only mapping of rollout names (in the policy's order) to
    :class:`RolloutSimulation`. ``str(simulation)`` is :meth:`table`.
    """

    def __init__(
        self, units: int, rollouts: dict[str, RolloutSimulation], environment: str | None
    ) -> None:
        self.units = units
        """How many units were simulated."""
        self.rollouts: Mapping[str, RolloutSimulation] = MappingProxyType(rollouts)
        """Rollout name to :class:`RolloutSimulation`, in the policy's order."""
        self.environment = environment
        """The environment simulated (``None``: none named)."""

    def __getitem__(self, name: str) -> RolloutSimulation:
        try:
            return self.rollouts[name]
        except KeyError:
            known = ", ".join(self.rollouts) or "none"
            raise KeyError(f"unknown rollout {name!r} (known: {known})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.rollouts)

    def __len__(self) -> int:
        return len(self.rollouts)

    def check(self) -> None:
        """Raise :class:`AssertionError` naming every rollout and stage whose cohort is not nested.

        A stage's cohort must contain the previous stage's cohort.
        """
        problems = [p for rollout in self.rollouts.values() for p in rollout._nesting_problems()]
        if problems:
            raise AssertionError("; ".join(problems))

    def table(self) -> str:
        """A text table: each rollout's stages with percent, count, fraction and nesting."""
        header = ("rollout", "stage", "percent", "count", "fraction", "nested")
        rows = [header]
        for rollout in self.rollouts.values():
            for i, cohort in enumerate(rollout.stages):
                nested = "-" if i == 0 else ("no" if rollout.left_out[i - 1] else "yes")
                rows.append(
                    (
                        rollout.name,
                        cohort.name,
                        f"{cohort.percent:g}%",
                        str(cohort.count),
                        f"{cohort.fraction:.4%}",
                        nested,
                    )
                )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        right = (False, False, True, True, True, False)
        lines = [
            "  ".join(
                cell.rjust(w) if r else cell.ljust(w)
                for cell, w, r in zip(row, widths, right, strict=True)
            ).rstrip()
            for row in rows
        ]
        where = f", environment {self.environment!r}" if self.environment is not None else ""
        return "\n".join([f"{self.units} units{where}", *lines])

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        parts = []
        for rollout in self.rollouts.values():
            nesting = "nested" if rollout.nested else "NOT nested"
            parts.append(f"{rollout.name!r} ({len(rollout.stages)} stages, {nesting})")
        where = f" environment={self.environment!r}" if self.environment is not None else ""
        return f"<Simulation of {self.units} units{where}: {', '.join(parts) or 'no rollouts'}>"


def simulate(
    policy: Policy | Mapping[str, Any] | str | os.PathLike[str] | Rollouts,
    units: Iterable[Unit],
    *,
    environment: str | None = None,
    attributes: Attributes | None = None,
) -> Simulation:
    """Simulate which of ``units`` each stage of each rollout of ``policy`` puts on the new path.

    ``policy`` is a :class:`~stagedroll.Policy`, a mapping in the policy file's shape, a path
    to a policy file, or a :class:`~stagedroll.Rollouts` (its policy, and its environment
    unless ``environment`` is given; ``$STAGEDROLL_ENV`` is not read). Each unit's cohort
    at each stage is what ``decide`` answers with the rollout running at that stage: where
    the environment turns the rollout off, nobody; where it fixes a percent, one cohort
    named after the environment; otherwise the deny list, the allow list, the stage's
    segments (matched on ``attributes(unit)``), then the bucket. ``attributes`` is called
    once per unit, and only if a rollout has segments or ``bucket_by``; without it no
    segment matches and a ``bucket_by`` rollout has no unit to bucket (nobody is in).

    Raises :class:`TypeError` for a unit that is not a ``str``, ``int`` or
    :class:`uuid.UUID`, or attributes that are not a mapping, and
    :class:`~stagedroll.PolicyError` for an invalid policy or an unknown environment.
    """
    if isinstance(policy, Rollouts):
        document = policy.policy
        if environment is None:
            environment = policy.environment
    else:
        document = load_policy(policy)
    environment = environment or None  # an empty name names no environment, as in Rollouts
    document.check_environment(environment)
    population = _Population(units)
    segments = {name: segment.predicate() for name, segment in document.segments.items()}
    plans = {
        name: _plan(name, rollout, segments, environment)
        for name, rollout in document.rollouts.items()
    }
    found = None
    if attributes is not None and any(_reads_attributes(p) for p in plans.values()):
        found = _attributes(attributes, population)
    total = len(population.keys)
    rollouts = {}
    for name, plan in plans.items():
        stages = plan.stages
        masks = _masks(plan, population.keys, found)
        histogram = Counter(masks)  # stage sets are few: counts and nesting are read off them
        cohorts = tuple(
            StageCohort(
                name=stage.name,
                percent=stage.percent,
                count=(count := sum(n for mask, n in histogram.items() if mask >> i & 1)),
                fraction=count / total if total else 0.0,
                expected=stage.percent / 100,
            )
            for i, stage in enumerate(stages)
        )
        left_out = tuple(
            sum(n for mask, n in histogram.items() if mask >> i & 1 and not mask >> (i + 1) & 1)
            for i in range(len(stages) - 1)
        )
        rollouts[name] = RolloutSimulation(
            name,
            mode=plan.mode,
            stages=cohorts,
            population=population,
            masks=masks,
            left_out=left_out,
        )
    return Simulation(total, rollouts, environment)


def _reads_attributes(plan: _Plan) -> bool:
    """Whether the rollout's decisions here read attributes (``bucket_by`` or segments)."""
    if plan.mode == "off":
        return False
    return plan.bucket_by is not None or (
        plan.mode == "stages" and any(stage.segments for stage in plan.stages)
    )


def _attributes(attributes: Attributes, population: _Population) -> list[Attrs | None]:
    found = []
    for unit in population.objects:
        value = attributes(unit)
        if value is not None and value.__class__ is not dict and not isinstance(value, Mapping):
            raise TypeError(
                f"attributes({unit!r}) must return a mapping or None, not {type(value).__name__}"
            )
        found.append(value)
    return found


def _masks(plan: _Plan, keys: list[str], attributes: list[Attrs | None] | None) -> Sequence[int]:
    """For each unit, the set of stages whose cohort holds it: bit ``i`` for stage ``i``."""
    stages = plan.stages
    count = len(stages)
    if plan.mode == "off":
        return bytes(len(keys))
    full = (1 << count) - 1
    thresholds = [stage.threshold for stage in stages]
    scheme = plan.scheme
    bucket_mask: Callable[[int], int]
    if all(a <= b for a, b in pairwise(thresholds)):
        # The stages from the first whose threshold exceeds the bucket on: one bisection.
        table = [full & ~((1 << i) - 1) for i in range(count + 1)]

        def bucket_mask(h: int) -> int:
            return table[bisect_right(thresholds, h)]

        plain = (
            plan.bucket_by is None
            and not plan.allow
            and not plan.deny
            and not any(stage.segments for stage in stages)
        )
        if plain and scheme.name != "stagedroll":
            position = scheme.position
            return _pack([table[bisect_right(thresholds, position(k))] for k in keys], count)
        if plain:  # the common case, inlined: one hash and one bisection per unit
            # stagedroll's position is MurmurHash3 (seed 0, unsigned) of "salt:key": called
            # directly on an ASCII key, the UTF-8 of which is the text itself.
            prefix = plan.salt + ":"
            ascii_salt = prefix.isascii()
            position = scheme.position
            masks = [
                table[
                    bisect_right(
                        thresholds,
                        _hash(prefix + key, 0, False)
                        if ascii_salt and key.isascii()
                        else position(key),
                    )
                ]
                for key in keys
            ]
            return _pack(masks, count)
    else:  # only a policy built without validation has stages whose percents go down

        def bucket_mask(h: int) -> int:
            return sum(1 << i for i, t in enumerate(thresholds) if h < t)

    return _pack(_targeted_masks(plan, keys, attributes, bucket_mask), count)


def _targeted_masks(
    plan: _Plan,
    keys: list[str],
    attributes: list[Attrs | None] | None,
    bucket_mask: Callable[[int], int],
) -> list[int]:
    """The slow path, in ``decide``'s order: no unit, deny, allow, segments, bucket."""
    stages = plan.stages
    full = (1 << len(stages)) - 1
    # Each segment predicate with the stages that include it (segments stay in once included).
    including: dict[Predicate, int] = {}
    for i, stage in enumerate(stages):
        for segment in stage.segments:
            including[segment] = including.get(segment, 0) | 1 << i
    segments = list(including.items())
    position, allow, deny, bucket_by = plan.scheme.position, plan.allow, plan.deny, plan.bucket_by
    masks = []
    for index, unit in enumerate(keys):
        found = attributes[index] if attributes is not None else None
        key: str | None = unit
        if bucket_by is not None:
            key = _attribute_key(found, bucket_by)
        if key is None or key in deny:
            masks.append(0)
            continue
        if key in allow:
            masks.append(full)
            continue
        mask = 0
        if found is not None:
            for segment, stages_in in segments:
                if stages_in & ~mask and segment(found):
                    mask |= stages_in
        if mask != full:
            mask |= bucket_mask(position(key))
        masks.append(mask)
    return masks


def _attribute_key(attributes: Attrs | None, name: str) -> str | None:
    """The ``bucket_by`` attribute as a key, as ``decide`` reads it (``None``: no unit)."""
    raw = attributes.get(name) if attributes is not None else None
    if raw is None:
        return None
    try:
        return unit_key(raw)
    except TypeError:
        return None  # an attribute of the wrong type counts as no unit


def _pack(masks: list[int], stages: int) -> Sequence[int]:
    """Store the masks compactly: a byte each for up to 8 stages."""
    if stages <= 8:
        return bytes(masks)
    if stages <= 64:
        return array("Q", masks)
    return masks
