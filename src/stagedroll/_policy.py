"""The rollout policy: pydantic models, and loading them from TOML, JSON, YAML or a dict.

Models are frozen and refuse unknown fields. Every problem is reported with the path of the
field it concerns, all at once, as a :class:`~stagedroll.exceptions.PolicyError`.
"""

from __future__ import annotations

import builtins
import contextlib
import difflib
import os
import re
import reprlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ._bucketing import percent_error
from ._document import (
    check_document,
    decode,
    format_of,
    max_policy_bytes,
    parse_document,
    read_document,
)
from ._schemes import (
    UNIT_PLACEHOLDER,
    BucketingScheme,
    Flagd,
    GrowthBook,
    LaunchDarkly,
    Stagedroll,
    Unleash,
    percent_problem,
)
from ._targeting import Operator, Predicate, compile_rule, compile_segment, semver_key
from .exceptions import PolicyError, PolicyProblem

__all__ = [
    "MAX_BUCKETING_TEXT",
    "MAX_DURATION_DAYS",
    "MAX_STAGES",
    "MIGRATION_STAGES",
    "UNIT_CAP",
    "Bucketing",
    "EnvironmentSetting",
    "Health",
    "OnError",
    "Policy",
    "RolloutPolicy",
    "Rule",
    "Segment",
    "Stage",
    "Targeting",
    "load_policy",
    "parse_duration",
    "parse_policy",
    "policy_from_bytes",
    "policy_from_dict",
]

MAX_STAGES = 1000
"""The most stages a rollout may have: each stored state carries its ladder."""
UNIT_CAP = 50_000
"""Distinct units an arm remembers per stage visit (for ``min_units`` and the sample ratio)."""

MAX_BUCKETING_TEXT = 1024
"""The longest group id, seed, salt or flag key a ``bucketing`` table may give (characters)."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PROBLEMS = "policy_problems"
MAX_DURATION_DAYS = 366
"""The longest duration a policy may give (a bake): a year, leap day included."""
_MAX_DURATION = MAX_DURATION_DAYS * 86400.0
_EMPTY = "the document is empty: a policy needs a rollouts table (rollouts = {} for none)"
_MISSING_ROLLOUTS = (
    "is required: a policy with no rollouts says so with an empty table "
    "(rollouts = {}); a file without one is empty, truncated, or not a policy"
)


def parse_duration(value: object) -> float:
    """Return the seconds in a duration such as ``"30m"``, ``"1h30m"``, ``"2d"`` or ``90``.

    Units: ``ms``, ``s``, ``m``, ``h``, ``d``, ``w``; a bare number is seconds. Raises
    :class:`ValueError` for anything else, or for a duration that is not positive or is
    longer than 366 days.
    """
    if isinstance(value, bool):
        raise ValueError("must be a duration such as '30m', '2h' or '1d'")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError("must be a duration of a sensible size") from None
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        parts = _DURATION_PART.findall(text)
        if not text or "".join(n + u for n, u in parts) != text:
            shown = _shown(value)
            raise ValueError(f"must be a duration such as '30m', '2h' or '1d', not {shown}")
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    else:
        raise ValueError("must be a duration such as '30m', '2h' or '1d'")
    if not seconds > 0:
        raise ValueError("must be a positive duration")
    if not seconds <= _MAX_DURATION:
        raise ValueError(f"must be a duration of at most {MAX_DURATION_DAYS} days")
    return seconds


def _percent(value: object) -> float:
    problem = percent_error(value)
    if problem is not None:
        raise ValueError(problem)
    return float(value)  # type: ignore[arg-type]  # percent_error accepted a number


def _unit_id(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return str(value)
        except ValueError:  # more digits than Python converts to text
            raise ValueError("is too long a number to be a unit") from None
    return value


def _environment_setting(value: object) -> object:
    if value in ("stages", "off"):
        return value
    if value is False:  # YAML reads a bare `off` as false
        raise ValueError('must be "stages", "off" or a percent (got false: quote "off" in YAML)')
    if isinstance(value, str) or percent_error(value) is not None:
        raise ValueError(
            f'must be "stages", "off" or a percent between 0 and 100 (got {_shown(value)})'
        )
    return float(value)  # type: ignore[arg-type]  # a valid percent is a number


Percent = Annotated[float, BeforeValidator(_percent)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
UnitId = Annotated[StrictStr, BeforeValidator(_unit_id)]
Name = Annotated[StrictStr, Field(pattern=_NAME.pattern)]
EnvironmentSetting = Annotated[
    Literal["stages", "off"] | float, BeforeValidator(_environment_setting)
]


def _problems(problems: list[tuple[str, str]], nested: Any = ()) -> PydanticCustomError:
    """Report problems at sub-paths of the model being validated (and its field errors)."""
    summary = "; ".join(f"{path}: {message}" for path, message in problems)
    context = {"problems": problems, "nested": list(nested), "summary": summary}
    return PydanticCustomError(_PROBLEMS, "{summary}", context)


def _number(value: object) -> float | None:
    return float(value) if percent_error(value) is None else None  # type: ignore[arg-type]


MIGRATION_STAGES = ("off", "dual_write", "shadow_read", "live", "rampdown", "complete")
"""The stage names of a migration, in order: its six phases."""


def _migration_checks(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A migration's stages are its six phases, in order, and it advances by hand."""
    problems = []
    stages = data.get("stages")
    if isinstance(stages, list | tuple):
        names = tuple(s.get("name") if isinstance(s, Mapping) else None for s in stages)
        if names != MIGRATION_STAGES:
            if False in names:  # YAML 1.1 reads a bare off as false
                where = f"stages[{names.index(False)}].name"
                problems.append((where, 'YAML reads a bare off as false: write "off"'))
            found = ", ".join(map(str, names)) or "none"
            phases = ", ".join(MIGRATION_STAGES)
            message = f"a migration's stages are its six phases, in order: {phases}"
            problems.append(("stages", f"{message} (found: {found})"))
    if data.get("advance") == "auto":
        message = "a migration advances by hand ('manual'): each step moves data"
        problems.append(("advance", f"{message}, and the backfill comes between two"))
    return problems


def _cross_checks(data: Mapping[str, Any], context: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Check a rollout's fields against each other, on raw input, skipping ill-typed parts."""
    problems: list[tuple[str, str]] = []
    stages = data.get("stages")
    known_segments = context.get("segments")
    seen: dict[str, int] = {}
    previous: float | None = None
    for i, stage in enumerate(stages if isinstance(stages, list | tuple) else ()):
        if not isinstance(stage, Mapping):
            previous = None
            continue
        name = stage.get("name")
        if isinstance(name, str):
            if name in seen:
                problems.append(
                    (f"stages[{i}].name", f"duplicates the name of stages[{seen[name]}]")
                )
            seen.setdefault(name, i)
        percent = _number(stage.get("percent"))
        if percent is not None and previous is not None and percent <= previous:
            message = f"must be greater than the previous stage ({previous:g})"
            problems.append((f"stages[{i}].percent", message))
        previous = percent
        min_units = stage.get("min_units")
        if (
            percent == 0
            and isinstance(min_units, int)
            and not isinstance(min_units, bool)
            and min_units > 0
        ):
            problems.append(
                (f"stages[{i}].min_units", "needs a percent above 0: only bucketed units count")
            )
        segments = stage.get("segments")
        for j, segment in enumerate(segments if isinstance(segments, list | tuple) else ()):
            if (
                known_segments is not None
                and isinstance(segment, str)
                and segment not in known_segments
            ):
                message = f"unknown segment {_shown(segment)}{_hint(segment, known_segments)}"
                problems.append((f"stages[{i}].segments[{j}]", message))
    problems.extend(_bucketing_checks(data))
    if data.get("pattern") == "migration":
        problems.extend(_migration_checks(data))
    health = data.get("health")
    if (
        data.get("advance") == "auto"
        and isinstance(health, Mapping)
        and health.get("enabled") is False
    ):
        problems.append(("advance", "'auto' needs the health gate (health.enabled = true)"))
    declared = context.get("environments")
    environments = data.get("environments")
    if declared is not None and isinstance(environments, Mapping):
        listing = f"declared: {', '.join(declared)}" if declared else "none are declared"
        problems.extend(
            (f"environments.{env}", f"unknown environment ({listing})")
            for env in environments
            if isinstance(env, str) and env not in declared
        )
    targeting = data.get("targeting")
    if isinstance(targeting, Mapping):
        allow, deny = (_unit_set(targeting.get(key)) for key in ("allow", "deny"))
        both = sorted(allow & deny)
        if both:
            problems.append(("targeting.deny", f"units also in targeting.allow: {', '.join(both)}"))
    return problems


def _bucketing_checks(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The percents a rollout gives must be ones its bucketing scheme can express."""
    bucketing = data.get("bucketing")
    if not isinstance(bucketing, Mapping):
        return []
    scheme, version = bucketing.get("scheme"), bucketing.get("hash_version")
    if scheme not in ("unleash", "growthbook", "flagd", "launchdarkly"):
        return []  # stagedroll's own (any valid percent), or a bad name reported by its field
    problems = []
    if data.get("salt") is not None:
        problems.append(("salt", f"salts stagedroll's own bucketing, not {scheme}'s: "
                         "give the scheme's parameters in bucketing"))  # fmt: skip
    version = version if version in (1, 2) else None
    stages = data.get("stages")
    for i, stage in enumerate(stages if isinstance(stages, list | tuple) else ()):
        percent = _number(stage.get("percent")) if isinstance(stage, Mapping) else None
        problem = percent_problem(scheme, version, percent) if percent is not None else None
        if problem is not None:
            problems.append((f"stages[{i}].percent", problem))
    environments = data.get("environments")
    for env, setting in environments.items() if isinstance(environments, Mapping) else ():
        percent = None if setting in ("stages", "off") else _number(setting)
        problem = percent_problem(scheme, version, percent) if percent is not None else None
        if problem is not None:
            problems.append((f"environments.{env}", problem))
    return problems


def _unit_set(units: object) -> set[str]:
    if not isinstance(units, list | tuple):
        return set()
    found = set()
    for unit in units:
        if isinstance(unit, str):
            found.add(unit)
        elif isinstance(unit, int) and not isinstance(unit, bool):
            with contextlib.suppress(ValueError):  # too many digits: reported by its field
                found.add(str(unit))
    return found


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Rule(_Model):
    """One condition on a unit's attribute, e.g. ``email`` ``suffix`` ``@example.com``."""

    attribute: Annotated[StrictStr, Field(min_length=1)]
    op: Operator
    value: Any

    @model_validator(mode="after")
    def _value_fits_operator(self) -> Rule:
        value, op = self.value, self.op
        scalar = (str, int, float, bool)
        problem = None
        if op in ("in", "not_in"):
            if not isinstance(value, list | tuple) or not value:
                problem = "must be a non-empty list"
            elif not all(isinstance(v, scalar) for v in value):
                problem = "must list strings, numbers or booleans"
        elif op in ("eq", "ne"):
            if not isinstance(value, scalar):
                problem = "must be a string, a number or a boolean"
        elif op in ("lt", "le", "gt", "ge"):
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                problem = "must be a number or a string"
        elif op in ("prefix", "suffix", "contains"):
            if not isinstance(value, str):
                problem = "must be a string"
        elif semver_key(value) is None:
            problem = "must be a version such as '1.4.0'"
        if problem is not None:
            raise _problems([("value", f"{problem} for operator {op!r}")])
        return self


class Segment(_Model):
    """A named group of units, defined by rules on their attributes."""

    description: StrictStr = ""
    match: Literal["all", "any"] = "all"
    rules: Annotated[tuple[Rule, ...], Field(min_length=1)]

    def predicate(self) -> Predicate:
        """The segment as a function of a unit's attributes (compiled once per call)."""
        return compile_segment(
            [compile_rule(r.attribute, r.op, r.value) for r in self.rules], match=self.match
        )

    def matches(self, attributes: Mapping[str, object]) -> bool:
        """Whether a unit with ``attributes`` is in the segment (as a decision matches it)."""
        return bool(self.predicate()(attributes))


class Stage(_Model):
    """One step of a rollout: a share of units, how long to bake, whom to include."""

    name: Name
    percent: Percent
    bake: Duration | None = None
    min_units: Annotated[StrictInt, Field(ge=0, le=UNIT_CAP)] = 0
    """Distinct bucketed units seen on the new path before an automatic advance."""
    segments: tuple[StrictStr, ...] = ()


class Targeting(_Model):
    """Units always in (``allow``) or always out (``deny``; deny wins)."""

    allow: tuple[UnitId, ...] = ()
    deny: tuple[UnitId, ...] = ()


Alpha = Annotated[float, Field(ge=1e-12, lt=1, strict=True, allow_inf_nan=False)]
"""A false-alarm chance, from 1e-12 up to (not including) 1."""


class Health(_Model):
    """The knobs of the health gate (auto-freeze); see ``docs/auto-freeze.md``."""

    enabled: StrictBool = True
    """Whether outcomes are tested at all (``False``: no automatic step of any kind)."""
    alpha_freeze: Alpha = 0.05
    """Chance of freezing a healthy rollout, at most (errors and latency together)."""
    alpha_rollback: Alpha = 0.001
    """Chance of rolling back a healthy rollout, at most."""
    alpha_sample_ratio: Alpha = 0.001
    """Chance of a false sample-ratio alarm (which blocks automatic advances), at most."""
    r0: Annotated[float, Field(ge=1, le=100, strict=True, allow_inf_nan=False)] = 1.0
    """Tolerated ratio of the new path's error (or slow-call) rate to the old one's."""
    min_events: Annotated[StrictInt, Field(ge=1)] = 3
    """Events on the new path needed before a freeze."""
    latency_slo_ms: Annotated[float, Field(gt=0, strict=True, allow_inf_nan=False)] | None = None
    """Test latency too: a call slower than this SLO is slow."""
    latency_p95: StrictBool = False
    """Test latency too: a call slower than the old path's running 95th percentile is slow."""
    latency_share: Annotated[float, Field(ge=0, le=1, strict=True, allow_inf_nan=False)] | None = (
        None
    )
    """The part of each alpha spent on the latency test, when there is one (default 0.5)."""

    @property
    def latency_part(self) -> float:
        """The part of each alpha that the latency test gets: 0 when latency is not tested."""
        if self.latency_slo_ms is None and not self.latency_p95:
            return 0.0
        return 0.5 if self.latency_share is None else self.latency_share

    @model_validator(mode="after")
    def _consistent(self) -> Health:
        problems = []
        if self.alpha_rollback > self.alpha_freeze:
            problems.append(
                ("alpha_rollback", f"must not exceed alpha_freeze ({self.alpha_freeze})")
            )
        if self.latency_p95 and self.latency_slo_ms is not None:
            problems.append(
                ("latency_p95", "conflicts with latency_slo_ms: choose one definition of slow")
            )
        if self.latency_share is not None and self.latency_slo_ms is None and not self.latency_p95:
            problems.append(
                ("latency_share", "needs a latency test: set latency_slo_ms, or latency_p95 = true")
            )
        if problems:
            raise _problems(problems)
        return self


SchemeName = Literal["stagedroll", "unleash", "growthbook", "flagd", "launchdarkly"]
BucketingText = Annotated[StrictStr, Field(max_length=MAX_BUCKETING_TEXT)]


_SEED_BOUND = 2**63  # a LaunchDarkly seed: a 64-bit integer, as its SDKs hold it


def _seed(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        if not -_SEED_BOUND <= value < _SEED_BOUND:
            raise ValueError("must be a 64-bit integer (launchdarkly's rollout seed)")
        return value
    if isinstance(value, str):
        if len(value) > MAX_BUCKETING_TEXT:
            raise ValueError(f"must be at most {MAX_BUCKETING_TEXT} characters")
        return value
    raise ValueError(
        "must be text (growthbook's seed) or an integer (launchdarkly's rollout seed), "
        f"not {_shown(value)}"
    )


def _hash_version(value: object) -> object:
    if value.__class__ is int and value in (1, 2):
        return value
    raise ValueError(f"must be 1 or 2 (got {_shown(value)})")


# Which schemes each parameter of ``bucketing`` belongs to.
_PARAMETERS: dict[str, tuple[str, ...]] = {
    "group_id": ("unleash",),
    "seed": ("growthbook", "launchdarkly"),
    "hash_version": ("growthbook",),
    "flag_key": ("flagd", "launchdarkly"),
    "template": ("flagd",),
    "salt": ("launchdarkly",),
}


class Bucketing(_Model):
    """Whose bucketing a rollout uses: stagedroll's own, or another flag system's.

    A rollout moved from Unleash, GrowthBook, flagd or LaunchDarkly keeps every unit's
    cohort when it buckets as that system did (``docs/bucketing.md``, "Other systems'
    bucketing"). Each parameter belongs to the schemes that use it; a name left out is the
    rollout's name, as the vendor defaults it to the flag's key.
    """

    scheme: SchemeName
    """``"stagedroll"`` (the default contract), ``"unleash"``, ``"growthbook"``, ``"flagd"``
    or ``"launchdarkly"``."""
    group_id: BucketingText | None = None
    """Unleash: the ``groupId`` of the ``flexibleRollout`` strategy (default: the rollout's
    name)."""
    seed: (
        Annotated[
            BucketingText | Annotated[StrictInt, Field(ge=-_SEED_BOUND, lt=_SEED_BOUND)],
            BeforeValidator(_seed),
        ]
        | None
    ) = None
    """GrowthBook: the rule's ``seed`` (text; default, or empty: the rollout's name, as
    GrowthBook reads it). LaunchDarkly: the rollout's ``seed`` (a 64-bit integer), which
    replaces the flag's key and salt."""
    hash_version: Annotated[Literal[1, 2], BeforeValidator(_hash_version)] | None = None
    """GrowthBook: the rule's ``hashVersion`` (default 1, as GrowthBook reads a rule without
    one)."""
    flag_key: BucketingText | None = None
    """flagd and LaunchDarkly: the flag's key (default: the rollout's name)."""
    salt: BucketingText | None = None
    """LaunchDarkly: the flag's ``salt`` from its exported JSON (required)."""
    template: BucketingText | None = None
    """flagd: the value of a ``fractional``'s bucketing expression, the unit's key written
    ``{unit}`` (``"campaign-7:{unit}"`` for ``{"cat": ["campaign-7:", {"var":
    "targetingKey"}]}``); without it, flagd's default, the pair of the flag's key and the
    unit's."""

    @model_validator(mode="after")
    def _parameters(self) -> Bucketing:
        problems = []
        for field, schemes in _PARAMETERS.items():
            if getattr(self, field) is not None and self.scheme not in schemes:
                where = " and ".join(schemes)
                problems.append((field, f"is a parameter of {where} bucketing, not {self.scheme}"))
        if self.scheme == "launchdarkly":
            if self.salt is None and self.seed is None:
                problems.append(("salt", "is required for launchdarkly bucketing: the flag's "
                                 "salt, from its JSON (or give the rollout's seed)"))  # fmt: skip
            if self.seed is not None and not isinstance(self.seed, int):
                problems.append(("seed", "must be an integer for launchdarkly bucketing "
                                 f"(got {_shown(self.seed)})"))  # fmt: skip
        if self.template is not None and self.template.count(UNIT_PLACEHOLDER) != 1:
            problems.append(("template", f"must hold {UNIT_PLACEHOLDER} once, where the "
                             "unit's key goes"))  # fmt: skip
        if self.template is not None and self.flag_key is not None:
            problems.append(("flag_key", "is not used with a template: write the flag's key "
                             "into the template where the expression has it"))  # fmt: skip
        if self.scheme == "growthbook" and isinstance(self.seed, int):
            problems.append(("seed", f"must be text for growthbook bucketing (got {self.seed})"))
        if problems:
            raise _problems(problems)
        return self

    def for_rollout(self, name: str) -> BucketingScheme:
        """The scheme that places the units of rollout ``name`` (its name fills the defaults)."""
        scheme = self.scheme
        if scheme == "unleash":
            return Unleash(self.group_id if self.group_id is not None else name)
        if scheme == "growthbook":
            # An empty seed is the feature's key, as GrowthBook's SDKs read it (seed or key).
            seed = self.seed if isinstance(self.seed, str) and self.seed else name
            return GrowthBook(seed, self.hash_version if self.hash_version is not None else 1)
        flag_key = self.flag_key if self.flag_key is not None else name
        if scheme == "flagd":
            return Flagd(flag_key, self.template)
        if scheme == "launchdarkly":
            number = self.seed if isinstance(self.seed, int) else None
            return LaunchDarkly(flag_key, self.salt or "", number)
        return Stagedroll(name)


OnError = Literal["fallback", "raise"]
"""What a guard does with an exception of the new path: answer from the fallback, or raise."""


class RolloutPolicy(_Model):
    """One rollout: its stages, environments, targeting and health gate."""

    description: StrictStr = ""
    salt: Annotated[StrictStr, Field(min_length=1)] | None = None
    bucket_by: Annotated[StrictStr, Field(min_length=1)] | None = None
    advance: Literal["auto", "manual"] = "manual"
    pattern: Literal["shadow", "migration"] | None = None
    """The paired pattern the rollout serves: ``"shadow"`` (a dark launch) or
    ``"migration"`` (an expand/contract migration, whose stages are the six phases). Both
    sides of each compared call are recorded and tested at a share of one half."""
    stages: Annotated[tuple[Stage, ...], Field(min_length=1, max_length=MAX_STAGES)]
    environments: dict[StrictStr, EnvironmentSetting] = Field(default_factory=dict)
    targeting: Targeting = Targeting()
    health: Health = Health()
    bucketing: Bucketing | None = None
    """Whose bucketing places the units (default: stagedroll's own, salted by ``salt``)."""

    @model_validator(mode="wrap")
    @classmethod
    def _consistent(
        cls, data: Any, handler: ModelWrapValidatorHandler[RolloutPolicy], info: ValidationInfo
    ) -> RolloutPolicy:
        # The checks across fields run on the raw input, so that their problems are reported
        # together with those of the fields, not only once every field is valid.
        raw = data.model_dump() if isinstance(data, RolloutPolicy) else data
        problems = _cross_checks(raw, info.context or {}) if isinstance(raw, Mapping) else []
        try:
            model = handler(data)
        except ValidationError as exc:
            if not problems:
                raise
            raise _problems(problems, nested=exc.errors(include_url=False)) from None
        if problems:
            raise _problems(problems)
        return model

    def salt_or(self, name: str) -> str:
        """The salt in force: the pinned one, else the rollout's name."""
        return self.salt if self.salt is not None else name

    def scheme(self, name: str) -> BucketingScheme:
        """The bucketing that places the units of this rollout, named ``name`` in its policy.

        A unit is in the cohort of ``percent`` iff ``scheme.position(key) <
        scheme.cut(percent)``, ``key`` being its id as text (:func:`unit_key
        <stagedroll.unit_key>`) or its ``bucket_by`` attribute.
        """
        if self.bucketing is None or self.bucketing.scheme == "stagedroll":
            return Stagedroll(self.salt_or(name))
        return self.bucketing.for_rollout(name)


def _rollouts_required(schema: dict[str, Any]) -> None:
    """The file needs ``rollouts`` (a ``Policy()`` built in code has none)."""
    schema["required"] = ["rollouts"]


class Policy(_Model):
    """A policy document: rollouts, the segments they refer to, and the known environments.

    A document read by :func:`load_policy` or :func:`parse_policy` must have ``rollouts``
    (``{}`` for none); ``Policy()`` built in code defaults it to none.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra=_rollouts_required)

    environments: tuple[Name, ...] | None = None
    segments: dict[Name, Segment] = Field(default_factory=dict)
    rollouts: dict[Name, RolloutPolicy] = Field(default_factory=dict)
    on_error: dict[Name, OnError] = Field(default_factory=dict)
    """What a guard does with an exception of the new path, by environment: answer from the
    fallback (``"fallback"``, the default for an environment not listed) or raise it after
    recording it (``"raise"``, for ``dev`` and tests, where a developer must see the bug)."""

    @model_validator(mode="after")
    def _references(self) -> Policy:
        # load_policy checks references within each rollout, with the whole document as
        # context; a Policy built directly (Policy(...), model_validate) is checked here.
        context = {"segments": tuple(self.segments), "environments": self.environments}
        problems = [
            (f"rollouts.{name}.{path}", message)
            for name, rollout in self.rollouts.items()
            for path, message in _cross_checks(rollout.model_dump(), context)
        ]
        if self.environments is not None:
            known = ", ".join(self.environments) or "none"
            problems += [
                (f"on_error.{env}", f"unknown environment {env!r} (the policy declares {known})")
                for env in self.on_error
                if env not in self.environments
            ]
        if problems:
            raise _problems(problems)
        return self

    @field_validator("environments")
    @classmethod
    def _unique_environments(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("lists an environment twice")
        return value

    def check_environment(self, environment: str | None) -> None:
        """Raise :class:`PolicyError` if the process's ``environment`` is not one the policy knows.

        Known: the declared ``environments`` list, else every name the rollouts use (when
        they use any). ``None`` (no environment named) is always accepted.
        """
        if environment is None:
            return
        known = self.environments
        if known is None:
            used = {env for r in self.rollouts.values() for env in r.environments}
            used.update(self.on_error)
            known = tuple(sorted(used)) if used else None
        if known is not None and environment not in known:
            message = f"unknown environment {environment!r} (known: {', '.join(known)})"
            raise PolicyError([PolicyProblem("environment", message + _hint(environment, known))])

    def raises_in(self, environment: str | None) -> bool:
        """Whether ``on_error`` says ``"raise"`` for ``environment``."""
        return environment is not None and self.on_error.get(environment) == "raise"


_HINTED = 128  # the longest name: a longer word, or choice, gets no hint (difflib is quadratic)


def _hint(word: str, choices: Iterable[str]) -> str:
    if len(word) > _HINTED:
        return ""
    near = [c for c in choices if c != word and len(c) <= _HINTED]
    close = difflib.get_close_matches(word, near, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


# Where each nested model lives: (parent, field) -> (child, whether a key or index follows).
_CHILDREN: dict[tuple[type[BaseModel], str], tuple[type[BaseModel], bool]] = {
    (Policy, "segments"): (Segment, True),
    (Policy, "rollouts"): (RolloutPolicy, True),
    (Segment, "rules"): (Rule, True),
    (RolloutPolicy, "stages"): (Stage, True),
    (RolloutPolicy, "targeting"): (Targeting, False),
    (RolloutPolicy, "health"): (Health, False),
    (RolloutPolicy, "bucketing"): (Bucketing, False),
}


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model whose field ``loc`` names, or ``None`` if ``loc`` leaves the known shape."""
    model: type[BaseModel] = Policy
    i = 0
    while i < len(loc) - 1:
        child = _CHILDREN.get((model, str(loc[i])))
        if child is None:
            return None
        model, keyed = child
        i += 2 if keyed else 1
    return model if i == len(loc) - 1 else None


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


_BOUNDS = {
    "greater_than": "greater than",
    "greater_than_equal": "greater than or equal to",
    "less_than": "less than",
    "less_than_equal": "less than or equal to",
}


def _message(error: Any, loc: tuple[int | str, ...]) -> str:
    kind, msg = error["type"], str(error["msg"])
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        field = str(loc[-1])
        model = _model_at(loc)
        known = sorted(model.model_fields) if model is not None else []
        return f"unknown field{_hint(field, known)}"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {error.get('ctx', {}).get('max_length')} characters"
    if kind in ("tuple_type", "list_type"):
        return f"must be a list (got {_shown(error.get('input'))})"
    if kind in ("dict_type", "model_type"):
        return f"must be a table (got {_shown(error.get('input'))})"
    if kind == "string_pattern_mismatch":
        return "must be a name of letters, digits, '-', '_' or '.', starting with a letter or digit"
    if kind in _BOUNDS:  # pydantic writes small bounds out in full: 0.000000000001
        bound = next(iter(error.get("ctx", {}).values()), None)
        if isinstance(bound, int | float) and not isinstance(bound, bool):
            return f"must be {_BOUNDS[kind]} {bound:g}"
    if msg.startswith("Input should be"):
        msg = "must be" + msg.removeprefix("Input should be")
    elif kind == "too_short":
        return "must not be empty"
    if kind.endswith("_type") or kind == "literal_error":
        msg += f" (got {_shown(error.get('input'))})"
    return msg


class _Bounded(reprlib.Repr):
    """``repr`` that looks at a bounded part of a value, however large or deep it is."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxstring = self.maxother = self.maxlong = 40
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = self.maxdict = 6

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:  # repr() of a huge int is slow, and refused past 4300 digits
            return f"<an integer of {x.bit_length()} bits>"
        return builtins.repr(x)

    def repr_bytes(self, x: bytes, level: int) -> str:
        shown = builtins.repr(x[: self.maxstring])
        return shown + "..." if len(x) > self.maxstring else shown

    def repr_dict(self, x: dict[Any, Any], level: int) -> str:
        # reprlib sorts the keys; a policy's problems show them in the document's order.
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        items = []
        for i, (key, value) in enumerate(x.items()):
            if i == self.maxdict:
                items.append("...")
                break
            items.append(f"{self.repr1(key, level - 1)}: {self.repr1(value, level - 1)}")
        return "{" + ", ".join(items) + "}"


_BOUNDED = _Bounded()


def _shown(value: object) -> str:
    """A short ``repr`` of a value from a document: at most 40 characters, in bounded time."""
    shown = _BOUNDED.repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def _convert(errors: list[Any], prefix: tuple[int | str, ...] = ()) -> list[PolicyProblem]:
    inner = {tuple(e["loc"][:i]) for e in errors for i in range(len(e["loc"]))}
    problems = []
    for error in errors:
        loc = prefix + tuple(error["loc"])
        if error["type"] == "too_short" and tuple(error["loc"]) in inner:
            continue  # the items were invalid, which is reported: their count is not news
        if error["type"] == _PROBLEMS:
            problems.extend(_convert(error["ctx"]["nested"], loc))
            for sub, message in error["ctx"]["problems"]:
                problems.append(PolicyProblem(f"{_path(loc)}.{sub}" if loc else sub, message))
            continue
        if "[key]" in loc:
            loc = loc[: loc.index("[key]")]
            problems.append(PolicyProblem(_path(loc), f"invalid name: {_message(error, loc)}"))
            continue
        problems.append(PolicyProblem(_path(loc), _message(error, loc)))
    return problems


def _context(data: Mapping[str, Any]) -> dict[str, Any]:
    """What a rollout's checks need from the rest of the document."""
    context: dict[str, Any] = {}
    segments = data.get("segments", {})
    if isinstance(segments, Mapping):
        context["segments"] = tuple(str(k) for k in segments)
    environments = data.get("environments")
    if isinstance(environments, list | tuple) and all(isinstance(e, str) for e in environments):
        context["environments"] = tuple(environments)
    return context


def policy_from_dict(data: object, *, source: str | None = None) -> Policy:
    """Validate a mapping (the parsed document) into a :class:`Policy`.

    The document must have a ``rollouts`` table (``{}`` for none), nest at most 64 levels,
    and give no key twice.
    """
    if isinstance(data, Policy):
        return data
    if not isinstance(data, Mapping):
        raise PolicyError(
            [
                PolicyProblem(
                    "",
                    _EMPTY
                    if data is None
                    else f"the document must be a table of rollouts, not {type(data).__name__}",
                )
            ],
            source=source,
        )
    shape = check_document(data)
    if shape:
        raise PolicyError(shape, source=source)
    if not data:
        raise PolicyError([PolicyProblem("", _EMPTY)], source=source)
    problems = [] if "rollouts" in data else [PolicyProblem("rollouts", _MISSING_ROLLOUTS)]
    try:
        policy = Policy.model_validate(data, context=_context(data))
    except ValidationError as exc:
        problems = _convert(exc.errors(include_url=False)) + problems
    except RecursionError:  # a program's mapping that contains itself where a value may be any
        problems.append(PolicyProblem("", "a value contains itself, or nests too deeply"))
    if problems:
        raise PolicyError(problems, source=source)
    return policy


def parse_policy(
    text: str, *, format: Literal["toml", "json", "yaml"], source: str | None = None
) -> Policy:
    """Parse and validate a policy document given as text.

    Nesting deeper than 64 levels, YAML aliases past their bounds, and keys given twice are
    refused, before anything is expanded (``docs/policy.md``, "Limits").
    """
    return policy_from_dict(parse_document(text, format, source=source), source=source)


def policy_from_bytes(
    data: bytes, *, format: Literal["toml", "json", "yaml"], source: str | None = None
) -> Policy:
    """Decode (UTF-8; a byte order mark is dropped), parse and validate a policy file's bytes."""
    return parse_policy(decode(data, source=source), format=format, source=source)


def load_policy(
    source: str | os.PathLike[str] | Mapping[str, Any] | Policy, *, max_bytes: int | None = None
) -> Policy:
    """Load a policy from a file (``.toml``, ``.json``, ``.yaml``/``.yml``) or a mapping.

    A file must be a regular file of at most ``max_bytes`` bytes (default:
    ``$STAGEDROLL_MAX_POLICY_BYTES``, else 1 MiB); it is read once, without blocking.
    Raises :class:`~stagedroll.exceptions.PolicyError` naming every bad field (or why the
    file is refused), and :class:`OSError` when the file cannot be read.
    """
    if not isinstance(source, str | os.PathLike):
        return policy_from_dict(source)
    path = Path(source)
    fmt = format_of(path)
    limit = max_policy_bytes(max_bytes, source=str(path))
    return policy_from_bytes(read_document(path, max_bytes=limit), format=fmt, source=str(path))
