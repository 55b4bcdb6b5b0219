"""``explain``: the decision for one unit, and every step of the evaluation order that led to it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .. import BucketingScheme, Rollouts, RolloutStatus, Status, unit_key
from ._main import OK, USAGE, CliError, Context
from ._render import SCHEMA_VERSION, dump, printable, table
from ._steer import Operating
from ._words import place

__all__ = ["explain"]


def _attributes(pairs: list[str]) -> dict[str, object] | None:
    """``--attr k=v`` as a mapping: each value read as JSON when it parses, else as text."""
    if not pairs:
        return None
    found: dict[str, object] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--attr takes KEY=VALUE, not {pair!r}", USAGE)
        try:
            found[key] = json.loads(text)
        except ValueError:
            found[key] = text
        except RecursionError:  # JSON nested thousands deep: no attribute is that
            raise CliError(f"--attr {key}: the value nests too deeply", USAGE) from None
    return found


def _percent(rollouts: Rollouts, name: str, status: RolloutStatus) -> float:
    """The percent of the stage (or environment setting) the rollout is at, killed or not."""
    setting = rollouts[name].policy.environments.get(f"{rollouts.environment}")
    if status.mode == "fixed" and isinstance(setting, int | float):
        return setting
    if status.mode == "off" or status.stage < 0:
        return 0.0
    return status.stages[status.stage].percent


def _segments(rollouts: Rollouts, status: RolloutStatus) -> list[str]:
    """The segments in force at the rollout's stage (its own and the earlier stages')."""
    if status.mode != "stages" or status.stage < 0:
        return []
    names: list[str] = []
    for stage in status.stages[: status.stage + 1]:
        names.extend(s for s in stage.segments if s not in names)
    return names


def _key_text(value: object) -> str | None:
    """A ``bucket_by`` attribute's value as the text it is bucketed on; ``None``: no unit.

    A str, an int (not a bool) or a UUID; anything else counts as no unit, as in ``decide``.
    """
    try:
        return unit_key(value)
    except TypeError:
        return None


def _key_of(
    bucket_by: str | None, unit: str, attributes: Mapping[str, object] | None
) -> str | None:
    """The text that a unit is bucketed on (its id, or the ``bucket_by`` attribute)."""
    if bucket_by is None:
        return unit
    raw = attributes.get(bucket_by) if attributes is not None else None
    return _key_text(raw) if raw is not None else None


class _Steps(list[dict[str, Any]]):
    """The steps of the evaluation order; those after the one that settled are "not reached"."""

    settled = False

    def add(self, kind: str, detail: str, decides: bool | None = None, **extra: object) -> None:
        if self.settled:
            outcome = "not reached"
        else:
            outcome = "next" if decides is None else ("on" if decides else "off")
        self.settled = self.settled or decides is not None
        self.append({"step": kind, "outcome": outcome, "detail": detail, **extra})


def _before_unit(
    steps: _Steps, rollouts: Rollouts, name: str, status: RolloutStatus, percent: float
) -> None:
    """Steps 1 and 2: the environment, and the status."""
    env = rollouts.environment
    if status.mode == "off":
        steps.add("environment", f"the rollout is off in environment {env!r}", False)
    elif status.mode == "fixed":
        steps.add("environment", f"environment {env!r} fixes the percent at {percent:g} %")
    else:
        where = f"environment {env!r}" if env is not None else "no environment named"
        steps.add("environment", f"follows the stages ({where})")
    if status.killed_here:
        steps.add("status", "killed in this process by $STAGEDROLL_KILL: off for everyone", False)
    elif status.status is Status.KILLED:
        steps.add("status", "killed: off for everyone", False)
    elif status.status is Status.COMPLETE:
        steps.add("status", "complete: on for everyone", True)
    else:
        if status.mode != "stages":
            at = f"at environment {env!r}"
        elif status.stage < 0:
            at = "at 0 % (before the first stage)"
        else:
            ladder = tuple((s.name, s.percent) for s in status.stages)
            at = f"at {place(ladder, status.stage)}"
        steps.add(
            "status", f"{status.status} {at}" + f" ({percent:g} %)" * (status.mode != "stages")
        )


def _steps(
    rollouts: Rollouts,
    name: str,
    status: RolloutStatus,
    unit: str,
    attributes: dict[str, object] | None,
) -> list[dict[str, Any]]:
    """Every step of the evaluation order, each with what it found and what it settled."""
    steps = _Steps()
    percent = _percent(rollouts, name, status)
    _before_unit(steps, rollouts, name, status, percent)
    policy = rollouts[name].policy
    key = _key_of(policy.bucket_by, unit, attributes)
    if policy.bucket_by is not None:
        found = f"{key!r}" if key is not None else "missing, or not a str, int or UUID"
        detail = f"bucketed by attribute {policy.bucket_by!r}: {found}"
    else:
        detail = f"unit {key!r}"
    steps.add("unit", detail, False if key is None else None, key=key)

    deny, allow = set(policy.targeting.deny), set(policy.targeting.allow)
    for kind, listing, enabled in (("deny", deny, False), ("allow", allow, True)):
        listed = key is not None and key in listing
        count = f"{len(listing)} unit{'s' if len(listing) != 1 else ''}"
        detail = f"{'on' if listed else 'not on'} the {kind} list ({count})"
        steps.add(kind, detail, enabled if listed else None)

    segments = _segments(rollouts, status)
    known = rollouts.policy.segments
    matches = [
        {"name": s, "match": attributes is not None and known[s].matches(attributes)}
        for s in segments
    ]
    if not segments:
        detail = "no segment in force at this stage"
    elif attributes is None:
        detail = f"no attributes given (--attr): none of {', '.join(segments)} match"
    else:
        detail = "; ".join(f"{m['name']}: {'match' if m['match'] else 'no match'}" for m in matches)
    steps.add(
        "segments", detail, True if any(m["match"] for m in matches) else None, segments=matches
    )

    scheme = policy.scheme(name)
    limit = scheme.cut(percent)
    if key is None:
        steps.add("bucket", "no unit to bucket", None, bucket=None, threshold=limit)
    else:
        value = scheme.position(key)
        inside = value < limit
        place = f"{min(value / scheme.space, 1):.4%} of the space"
        detail = (
            f"bucket {value} ({place}) {'<' if inside else '>='} "
            f"threshold {limit} ({percent:g} %), {_bucketing(scheme)}"
        )
        steps.add("bucket", detail, inside, bucket=value, threshold=limit)
    return steps


def _bucketing(scheme: BucketingScheme) -> str:
    """How the unit was bucketed: stagedroll's salt, or the other system's scheme."""
    described = scheme.describe()
    return described.removeprefix("stagedroll, ") if scheme.name == "stagedroll" else described


def explain(ctx: Context) -> int:
    """``explain NAME UNIT [--attr k=v ...]``: the decision, and every step that led to it."""
    name, unit = ctx.args.name, ctx.args.unit
    attributes = _attributes(ctx.args.attr)  # a usage error before the store is opened
    rollouts = Operating(ctx, require_policy="explain").needs_policy(name, "explain")
    status = rollouts.status(name)  # afresh from the store (and a store that is down, told)
    decision = rollouts.decide(name, unit, attributes)
    steps = _steps(rollouts, name, status, unit, attributes)
    if ctx.json:
        last = next(s for s in steps if s["step"] == "bucket")
        dump(
            {
                "schema_version": SCHEMA_VERSION,
                "rollout": name,
                "unit": unit,
                "attributes": attributes,
                "environment": rollouts.environment,
                "enabled": decision.enabled,
                "reason": str(decision.reason),
                "stage": decision.stage,
                "percent": decision.percent,
                "bucket": last["bucket"],
                "threshold": last["threshold"],
                "steps": steps,
            },
            ctx.out,
        )
        return OK
    where = f", environment {rollouts.environment}" if rollouts.environment is not None else ""
    ctx.out.write(printable(f"{name}, unit {unit!r}{where}") + "\n")
    rows = [(str(i), s["step"], s["outcome"], s["detail"]) for i, s in enumerate(steps, 1)]
    ctx.out.write(table(("#", "STEP", "OUTCOME", "DETAIL"), rows, right={0}) + "\n")
    stage = f", stage {printable(decision.stage)}" if decision.stage is not None else ""
    ctx.out.write(
        f"result: {'on' if decision.enabled else 'off'} ({decision.reason}){stage}, "
        f"{decision.percent:g} %\n"
    )
    return OK
