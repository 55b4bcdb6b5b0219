"""Unleash: a policy from its client API features, or from its admin export.

Two documented shapes are read. The **client API** features (``GET /api/client/features``,
what the SDKs fetch: ``{"version", "features": [{"name", "enabled", "strategies",
"variants", "dependencies"}], "segments": [{"id", "constraints"}]}``) hold one environment,
the API token's. The **admin export** (``POST /api/admin/features-batch/export``, or the
UI's export: ``features``, ``featureStrategies``, ``featureEnvironments``, ``segments``,
``dependencies``) is made for one environment too; when it holds several (environments
named on its ``featureEnvironments`` or strategies), ``environment`` picks one.

The new path is the flag being on (``is_enabled``). Strategies are OR'ed, as Unleash does:

- ``flexibleRollout``, ``gradualRolloutUserId`` and ``gradualRolloutSessionId`` become the
  rollout's percent, with ``bucketing = { scheme = "unleash", group_id = ... }`` (always
  written out: the group defaults to the flag's name, which the rollout's name may not
  be). Stickiness ``default`` and ``userId`` bucket the unit (the Unleash ``userId``);
  another field buckets that attribute (``bucket_by``). Two percentages of one group and
  stickiness are the larger one; of different ones, only the larger is kept (reported).
- ``userWithId`` becomes ``targeting.allow`` (a segment on the ``userId`` attribute when
  the rollout buckets on another field); ``default`` makes it 100 %.
- A strategy's constraints, and those of the segments it names, become segments included
  at stage 0 (every matching unit in) where a rule is exactly equivalent: ``IN``,
  ``NOT_IN`` inverted, ``STR_*`` (case-sensitive, not inverted) and ``NUM_*`` (not
  inverted). ``NOT_IN``, inverted ``IN``, ``SEMVER_*`` and ``DATE_*`` are not: each holds
  where a stagedroll rule does not (a missing attribute, a version Unleash refuses).

A unit's attributes are the fields of its Unleash context by name (``country`` for
``properties.country``; ``userId``, ``sessionId``, ``appName`` and ``environment`` too
when a constraint uses them), as text; a ``NUM_*`` field as a number. Whatever does not
map is left out and reported, and the rollout then lets fewer units in than Unleash, never
more: a strategy is kept whole or not at all, and a flag that Unleash gates on something
stagedroll cannot check (a parent flag) or that its SDK turns off whole (a segment the
export lacks, a constraint value it cannot read) runs at 0 %. A disabled flag is imported
at 0 %. Variants are reported: the rollout carries on/off only.

The walk is bounded: it reads fixed paths of the export, never recursing into a value, and
costs time linear in the export's size. :mod:`._unleash_export` reads the export's shape,
:mod:`._unleash_rules` turns constraints into rules, and this module makes each flag's
strategies one rollout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .._document import clipped
from ._imported import RAMP, Draft, Imported, stages_from
from ._unleash_export import Flag, Strategy, read_unleash
from ._unleash_rules import KEEPS_OUT, Constraints, FlagOff, NotMapped, Rules, rule

__all__ = ["from_unleash"]

_PERCENT = re.compile(r"\+?[0-9]{1,10}")  # what Unleash's SDK reads as a whole percent
_UNIT = ("default", "userId")  # the stickiness that buckets the unit itself
_UNMAPPED_KINDS = {
    "gradualRolloutRandom": "turns the flag on for a random share of calls, drawn anew each "
    "time; stagedroll's decisions are sticky",
    "remoteAddress": "matches the caller's IP address; stagedroll has no address rule",
    "applicationHostname": "matches the host name of the process; stagedroll has no such rule",
}


def from_unleash(
    data: object, *, environment: str | None = None, source: str | None = None
) -> Imported:
    """A policy from Unleash's client API features or admin export (the parsed JSON).

    ``environment`` picks one of an admin export's environments (required when it holds
    several); the client API features hold one and refuse it. Each flag becomes a rollout
    at the percent it runs at now, bucketed as Unleash buckets it; the new path is the flag
    being on. What does not map is in :attr:`Imported.unmapped`, and lets no unit in that
    Unleash keeps out. A document that is not one of the two shapes raises
    :class:`~stagedroll.exceptions.PolicyError` naming each problem's path.
    """
    export = read_unleash(data, environment=environment, source=source)
    draft = Draft("unleash", (flag.key for flag in export.flags))
    mapper = _Mapper(draft, Constraints(export.segments, admin=export.admin), export.environment)
    for flag in export.flags:
        mapper.flag(flag)
    return draft.imported()


@dataclass(slots=True)
class _Parts:
    """What a flag's strategies give, OR'ed."""

    everyone: bool = False
    percents: list[tuple[int, str, str | None, str]] = field(default_factory=list)
    fallback: tuple[int, str, str | None, str] | None = None  # a strategy left out
    users: dict[str, None] = field(default_factory=dict)
    users_at: str = ""
    groups: list[tuple[str, list[Rules]]] = field(default_factory=list)  # (path, OR of ANDs)


class _Mapper:
    """Turns the flags read into the draft's rollouts and segments, reporting what does not map."""

    def __init__(self, draft: Draft, constraints: Constraints, environment: str | None) -> None:
        self.draft, self.constraints = draft, constraints
        self.where = f" in {environment!r}" if environment else ""

    def flag(self, flag: Flag) -> None:
        if flag.skip is not None:
            self.report(flag, flag.path, f"left out of the policy: {flag.skip}")
            return
        parts, off = _Parts(), None
        for strategy in flag.strategies:  # first: the SDK reads them all, or turns it off
            off = off or self.constraints.off(strategy)
        for strategy in flag.strategies:
            try:
                self.strategy(flag, strategy, parts)
            except FlagOff as exc:
                off = off or exc
            except NotMapped as exc:
                self.report(flag, exc.path, exc.reason)
            if strategy.variants:
                self.report(flag, f"{strategy.path}.variants", _variants(strategy.variants))
        for path, count in flag.variants:
            self.report(flag, path, _variants(count))
        if flag.dependencies is not None:
            off = off or FlagOff(flag.dependencies, "Unleash turns the flag on only where "
                                 "its parent flags allow (dependencies); stagedroll has no "
                                 "prerequisites")  # fmt: skip
        if flag.enabled is None:
            off = off or FlagOff(flag.path, f"the export holds no state of the flag{self.where}")
        elif not flag.strategies and flag.disabled:
            off = off or FlagOff(flag.path, "every strategy of the flag is disabled")
        elif not flag.strategies:
            parts.everyone = True  # an enabled flag without strategies is on for everyone
        self.build(flag, parts, off)

    def build(self, flag: Flag, parts: _Parts, off: FlagOff | None) -> None:
        group, bucket_by, percent, chosen = flag.key, None, 0, ""
        if parts.everyone:
            percent = 100
        elif parts.percents:
            percent, group, bucket_by, chosen = max(parts.percents, key=lambda p: p[0])
            for other, o_group, o_by, path in parts.percents:
                if (o_group, o_by) != (group, bucket_by):
                    self.report(flag, path, f"gives {other} % by group {o_group!r}{_on(o_by)}, "
                                f"and {chosen} {percent} % by group {group!r}{_on(bucket_by)}: "
                                "a rollout has one bucketing, and the imported one keeps the "
                                "larger percent's (the units only this strategy lets in are "
                                "off)")  # fmt: skip
        elif parts.fallback is not None:
            percent, group, bucket_by, chosen = parts.fallback
            percent = 0
        groups = [] if parts.everyone else list(parts.groups)
        allow = [] if parts.everyone else list(parts.users)
        if allow and bucket_by is not None:
            groups.append((parts.users_at, [[rule("userId", "in", allow)]]))
            allow = []
        if bucket_by is not None and groups and flag.enabled and off is None:
            self.report(flag, f"{chosen}.parameters.stickiness", f"buckets on {bucket_by!r}: "
                        f"stagedroll decides nothing for a unit without {bucket_by!r}, so the "
                        "users and constraints of the other strategies reach only units that "
                        "have it, where Unleash does not need it")  # fmt: skip
        ramp: tuple[int, ...] = RAMP
        if not flag.enabled or off is not None:
            if flag.enabled is False and (allow or groups):
                self.report(flag, flag.path, f"the flag is off{self.where}: imported at 0 % "
                            "without the users and constraints of its strategies, which would "
                            "let units in at 0 % too")  # fmt: skip
            elif off is not None and flag.enabled is not False:
                self.report(flag, off.path, f"{off.reason}: the imported rollout runs at 0 % "
                            "and lets no unit in until it is advanced")  # fmt: skip
            ramp = tuple(sorted({*RAMP, percent})) if percent else RAMP
            percent, allow, groups = 0, [], []
        stages = stages_from(percent, ramp)
        self.add(flag, group=group, bucket_by=bucket_by, stages=stages, allow=allow, groups=groups)

    def strategy(self, flag: Flag, strategy: Strategy, parts: _Parts) -> None:
        kind, params, path = strategy.name, strategy.parameters, strategy.path
        if strategy.disabled:
            raise NotMapped(path, "is marked disabled: the Unleash server serves no "
                            "disabled strategy, but an SDK given one evaluates it"
                            + KEEPS_OUT)  # fmt: skip
        if kind in _UNMAPPED_KINDS:
            raise NotMapped(path, f"the {kind} strategy {_UNMAPPED_KINDS[kind]}" + KEEPS_OUT)
        if kind == "default":
            conditions = self.constraints.conditions(strategy)
            if conditions is None:
                parts.everyone = True
            else:
                parts.groups.append((path, conditions))
        elif kind == "userWithId":
            users = [u.strip() for u in params.get("userIds", "").split(",")]
            ids = list(dict.fromkeys(u for u in users if u))
            conditions = self.constraints.conditions(strategy)
            if conditions is None:
                parts.users.update(dict.fromkeys(ids))
                parts.users_at = parts.users_at or path
            elif ids:
                listed = rule("userId", "in", ids)
                parts.groups.append((path, [[*rules, listed] for rules in conditions]))
        elif kind in ("flexibleRollout", "gradualRolloutUserId", "gradualRolloutSessionId"):
            self.percentage(flag, strategy, parts)
        else:
            raise NotMapped(path, f"{clipped(kind, 60)!r} is a custom strategy, decided by "
                            "code in the application; stagedroll cannot evaluate it"
                            + KEEPS_OUT)  # fmt: skip

    def percentage(self, flag: Flag, strategy: Strategy, parts: _Parts) -> None:
        params, path, kind = strategy.parameters, strategy.path, strategy.name
        if kind == "flexibleRollout":
            text, stickiness = params.get("rollout"), params.get("stickiness")
            group: str | None = params.get("groupId", flag.key)
        else:
            text, group = params.get("percentage"), params.get("groupId")
            stickiness = "userId" if kind == "gradualRolloutUserId" else "sessionId"
        if group is None:
            raise NotMapped(path, f"has no groupId, and Unleash's SDK then turns the {kind} "
                            "strategy off" + KEEPS_OUT)  # fmt: skip
        if not stickiness or stickiness == "random":
            does = "buckets on no field, and Unleash's SDK turns it off"
            if stickiness != "":
                does = "buckets each call at random"
            raise NotMapped(path, f"stickiness {stickiness!r} {does}; stagedroll's decisions "
                            "are sticky" + KEEPS_OUT)  # fmt: skip
        bucket_by = None if stickiness in _UNIT else stickiness
        if text is None or not _PERCENT.fullmatch(text) or int(text) > 100:
            shown = "none" if text is None else repr(clipped(text, 40))
            raise NotMapped(path, f"its percent ({shown}) is not a whole percent from 0 to "
                            "100, and Unleash's SDK turns it off" + KEEPS_OUT)  # fmt: skip
        percent = int(text)
        parts.fallback = parts.fallback or (percent, group, bucket_by, path)
        try:
            conditions = self.constraints.conditions(strategy)
        except NotMapped:
            if percent == 0:
                return  # on for no one, whatever its constraints say
            raise
        if conditions is None:
            parts.percents.append((percent, group, bucket_by, path))
        elif percent == 100:
            has = [] if bucket_by is None else [rule(bucket_by, "prefix", "")]
            parts.groups.append((path, [[*rules, *has] for rules in conditions]))
        elif percent > 0:
            raise NotMapped(path, f"gives {percent} % of the units that match its "
                            "constraints; a stagedroll percent is of all units, and a "
                            "segment lets every matching unit in" + KEEPS_OUT)  # fmt: skip

    def add(
        self,
        flag: Flag,
        *,
        group: str,
        bucket_by: str | None,
        stages: list[dict[str, Any]],
        allow: list[str],
        groups: list[tuple[str, list[Rules]]],
    ) -> None:
        """Add the flag's rollout, and a segment for each group of rules, to the draft."""
        name = self.draft.names.name(flag.key)
        rollout: dict[str, Any] = {"description": f"Unleash flag {flag.key!r}"}
        if bucket_by is not None:
            rollout["bucket_by"] = bucket_by
        rollout["bucketing"] = {"scheme": "unleash", "group_id": group}
        rollout["stages"] = stages
        if allow:
            rollout["targeting"] = {"allow": allow}
        segments: dict[str, Any] = {}
        for path, either in groups:
            match, alternatives = "all", either
            if len(either) > 1 and all(len(rules) == 1 for rules in either):
                match, alternatives = "any", [[rules[0] for rules in either]]
            for rules in alternatives:
                segment = self.draft.segment_names.name(f"{name}.s{len(segments) + 1}")
                description = f"Unleash flag {flag.key!r}: {path}"
                segments[segment] = {"description": description, "match": match, "rules": rules}
        if segments:
            stages[0]["segments"] = list(segments)
        self.draft.add(flag.key, flag.path, rollout, segments, name=name)

    def report(self, flag: Flag, part: str, reason: str) -> None:
        self.draft.report(flag.key, part, reason)


def _variants(count: int) -> str:
    return (
        f"{count} variant(s): Unleash gives each unit that has the flag one of them; the "
        "imported rollout carries whether the flag is on (is_enabled), not which variant"
    )


def _on(bucket_by: str | None) -> str:
    return f" on {bucket_by!r}" if bucket_by is not None else ""
