"""A rollout compiled for one environment (:class:`Plan`) and its view of a state (:class:`View`).

Decisions run on these small objects, never on the pydantic models: a view holds exactly
what the evaluation order needs (environment and status, deny, allow, segments, bucket),
precomputed, so the common case is one hash and one comparison.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from ._bucketing import hash_key, threshold, unit_key
from ._decision import Decision, Reason, decision
from ._outcomes import ArmCounts, Outcomes
from ._policy import Policy, RolloutPolicy
from ._schemes import BucketingScheme, Stagedroll
from ._state import RolloutState, Status
from ._targeting import Predicate

__all__ = ["Mode", "Plan", "StagePlan", "View", "compile_policy"]

Mode = Literal["stages", "fixed", "off"]
_random_bucket = random.getrandbits
IN_COHORT, OUT_OF_COHORT = Reason.IN_COHORT, Reason.OUT_OF_COHORT


@dataclass(frozen=True, slots=True)
class StagePlan:
    """A stage with its threshold and the segments in force (its own and the earlier ones')."""

    name: str
    percent: float
    threshold: int
    """The cut of the rollout's bucketing scheme: a position below it is in."""
    segments: tuple[Predicate, ...]
    share: int
    """``threshold(percent)``, in stagedroll's 2**32 space: a call with no unit is routed by a
    random draw against it, whatever the scheme."""


class Plan:
    """One rollout of a policy, compiled for the process's environment."""

    __slots__ = (
        "allow",
        "bucket_by",
        "deny",
        "fixed",
        "killed",
        "mode",
        "name",
        "policy",
        "prefix",
        "removed",
        "scheme",
        "stages",
    )

    def __init__(
        self,
        name: str,
        policy: RolloutPolicy,
        segments: Mapping[str, Predicate],
        environment: str | None,
    ) -> None:
        self.name = name
        self.policy = policy
        scheme = policy.scheme(name)
        self.scheme: BucketingScheme | None = None if isinstance(scheme, Stagedroll) else scheme
        """Another system's bucketing; ``None`` for stagedroll's own (``prefix`` and a hash)."""
        self.prefix = scheme.prefix if isinstance(scheme, Stagedroll) else ""
        """``salt:``, what stagedroll's own bucketing hashes before the unit (the fast paths
        that inline its hash run only with it)."""
        cut = scheme.cut
        self.bucket_by = policy.bucket_by
        self.allow = frozenset(policy.targeting.allow)
        self.deny = frozenset(policy.targeting.deny)
        stages: list[StagePlan] = []
        included: list[Predicate] = []
        for stage in policy.stages:
            # Segments stay in once included, as units do when the percentage grows.
            included.extend(segments[s] for s in stage.segments if segments[s] not in included)
            share = threshold(stage.percent)
            stages.append(StagePlan(stage.name, stage.percent, cut(stage.percent),
                                    tuple(included), share))  # fmt: skip
        self.stages = tuple(stages)
        self.killed = False
        """Killed in this process by ``$STAGEDROLL_KILL``, whatever the stored state says."""
        self.removed = False
        """No longer in the policy (a reload dropped it): every call takes the old path."""
        setting = policy.environments.get(environment) if environment is not None else None
        if environment is not None and policy.environments and setting is None:
            setting = "off"  # environments listed, this one not: the new path stays off here
        self.mode: Mode
        self.fixed: StagePlan | None = None
        if setting is None or setting == "stages":
            self.mode = "stages"
        elif setting == "off":
            self.mode = "off"
        else:
            self.mode = "fixed"
            self.fixed = StagePlan(f"{environment}", setting, cut(setting), (), threshold(setting))

    @property
    def last_stage(self) -> int:
        """The index of the final stage."""
        return len(self.stages) - 1

    @property
    def ladder(self) -> tuple[tuple[str, float], ...]:
        """The policy's stages as ``(name, percent)`` pairs: what a stored state carries."""
        return tuple((s.name, float(s.percent)) for s in self.policy.stages)

    def stage_name(self, stage: int) -> str | None:
        """The name of stage ``stage``.

        ``None`` for ``-1`` (before the first); the last stage's for one past it (a policy
        that lost stages holds at its last).
        """
        return self.stages[min(stage, self.last_stage)].name if stage >= 0 else None

    def retired(self) -> Plan:
        """A copy of this plan for a rollout that a reloaded policy no longer has (:attr:`removed`).

        Its stages stay (transitions through the store still need them), but every decision
        is off, with reason ``UNKNOWN_ROLLOUT``.
        """
        plan = copy.copy(self)
        plan.removed = True
        return plan

    def view(self, state: RolloutState, outcomes: Outcomes) -> View:
        """Precompute what decisions need under ``state``; record into ``outcomes``."""
        return View(self, state, outcomes)


class View:
    """What decisions need for one rollout in one state; replaced whole when the state changes."""

    __slots__ = (
        "allow",
        "allowed",
        "arms",
        "bucket_by",
        "constant",
        "control",
        "denied",
        "deny",
        "direct",
        "mode",
        "no_unit",
        "percent",
        "plain",
        "prefix",
        "rollout",
        "scheme",
        "segment",
        "segments",
        "share",
        "stage",
        "stage_name",
        "state",
        "threshold",
        "treatment",
    )

    def __init__(self, plan: Plan, state: RolloutState, outcomes: Outcomes) -> None:
        self.rollout = plan.name
        self.mode = plan.mode
        self.state = state
        self.prefix = plan.prefix
        self.scheme = plan.scheme
        self.bucket_by = plan.bucket_by
        self.allow = plan.allow
        self.deny = plan.deny
        # A policy that lost stages since the state was written: hold at its last stage.
        self.stage = min(state.stage, plan.last_stage)
        self.arms = outcomes.arms(self.stage)
        self.control, self.treatment = self.arms.control, self.arms.treatment
        current = (
            plan.fixed
            if plan.mode == "fixed"
            else (plan.stages[self.stage] if self.stage >= 0 else None)
        )
        self.stage_name = current.name if current is not None else None
        self.percent = current.percent if current is not None else 0.0
        self.threshold = current.threshold if current is not None else 0
        self.share = current.share if current is not None else 0
        self.segments = current.segments if current is not None else ()
        # A decision that does not depend on the unit is made once, here.
        self.constant: Decision | None = None
        if plan.removed:
            self.constant = Decision(plan.name, False, Reason.UNKNOWN_ROLLOUT, None, 0.0)
        elif plan.mode == "off":
            self.constant = Decision(plan.name, False, Reason.ENVIRONMENT, None, 0.0)
        elif state.status is Status.KILLED or plan.killed:
            self.constant = Decision(plan.name, False, Reason.KILLED, self.stage_name, 0.0)
        elif state.status is Status.COMPLETE:
            self.constant = Decision(plan.name, True, Reason.COMPLETE, self.stage_name, 100.0)
        name, stage, percent = plan.name, self.stage_name, self.percent
        self.no_unit = Decision(name, False, Reason.NO_UNIT, stage, percent)
        self.denied = Decision(name, False, Reason.DENIED, stage, percent)
        self.allowed = Decision(name, True, Reason.ALLOWED, stage, percent)
        self.segment = Decision(name, True, Reason.SEGMENT, stage, percent)
        # The fast path: nothing but the bucket can decide. ``plain`` with stagedroll's own
        # bucketing (inlined by the callers); ``direct`` is the position of another scheme.
        alone = (
            self.constant is None
            and self.bucket_by is None
            and not self.allow
            and not self.deny
            and not self.segments
        )
        self.plain = alone and self.scheme is None
        self.direct: Callable[[str], int] | None = (
            self.scheme.position if alone and self.scheme is not None else None
        )

    def settle(self, key: str | None, attributes: Mapping[str, object] | None) -> Decision | int:
        """Return the decision made before the bucket step, or else the unit's bucket.

        The bucket is the unit's position in the rollout's bucketing scheme (stagedroll's
        own: its hash, in ``[0, 2**32)``), to compare with :attr:`threshold`.

        The evaluation order: environment and status (precomputed), no unit, deny, allow,
        stage segments, bucket. The decisions of the earlier steps do not depend on the unit,
        so they are built once per view; only the bucket step is per unit.
        """
        if self.constant is not None:
            return self.constant
        if self.bucket_by is not None:
            key = self._attribute_key(attributes)
        if key is None:
            return self.no_unit
        if key in self.deny:
            return self.denied
        if key in self.allow:
            return self.allowed
        if attributes is not None:
            for segment in self.segments:
                if segment(attributes):
                    return self.segment
        if self.scheme is not None:
            return self.scheme.position(key)
        return hash_key(self.prefix + key)

    def _attribute_key(self, attributes: Mapping[str, object] | None) -> str | None:
        raw = attributes.get(self.bucket_by) if attributes is not None and self.bucket_by else None
        try:
            return unit_key(raw) if raw is not None else None
        except TypeError:
            return None  # documented: an attribute of the wrong type counts as no unit

    def key_of(self, unit: object, attributes: Mapping[str, object] | None) -> str | None:
        """The text that a unit is bucketed on (its id, or the ``bucket_by`` attribute)."""
        try:
            if self.bucket_by is not None:
                return self._attribute_key(attributes)
            return unit if unit is None or unit.__class__ is str else unit_key(unit)
        except Exception:
            return None

    def evaluate(self, key: str | None, attributes: Mapping[str, object] | None) -> Decision:
        """Decide for a unit whose key is already text (or ``None``: no unit)."""
        settled = self.settle(key, attributes)
        if isinstance(settled, Decision):
            return settled
        enabled = settled < self.threshold
        reason = IN_COHORT if enabled else OUT_OF_COHORT
        return decision((self.rollout, enabled, reason, self.stage_name, self.percent, settled))

    def enabled(self, key: str | None, attributes: Mapping[str, object] | None) -> bool:
        """Whether the new path is on, without building a :class:`Decision`."""
        settled = self.settle(key, attributes)
        if isinstance(settled, Decision):
            return settled.enabled
        return settled < self.threshold

    def route(
        self, key: str | None, attributes: Mapping[str, object] | None
    ) -> tuple[ArmCounts, str | None]:
        """The counters of the arm that the unit's calls are recorded in, and its bucketing key.

        The key is ``None`` for calls routed by targeting (they are not compared).
        """
        settled = self.settle(key, attributes)
        if isinstance(settled, Decision):
            return (self.arms.targeted_on if settled.enabled else self.arms.targeted_off), None
        if self.bucket_by is not None:
            key = self._attribute_key(attributes)
        return (self.treatment if settled < self.threshold else self.control), key

    def sample(self) -> ArmCounts:
        """Route one request with no unit: a fresh random draw against the share."""
        if self.constant is not None:
            return self.arms.targeted_on if self.constant.enabled else self.arms.targeted_off
        return self.treatment if _random_bucket(32) < self.share else self.control

    def arm(self, decision: Decision) -> ArmCounts:
        """The counters that a call decided by ``decision`` is recorded in."""
        reason = decision.reason
        if reason is Reason.IN_COHORT:
            return self.treatment
        if reason is Reason.OUT_OF_COHORT:
            return self.control
        return self.arms.targeted_on if decision.enabled else self.arms.targeted_off


def compile_policy(policy: Policy, environment: str | None) -> dict[str, Plan]:
    """Compile every rollout of ``policy`` for ``environment``."""
    segments = {name: segment.predicate() for name, segment in policy.segments.items()}
    return {name: Plan(name, r, segments, environment) for name, r in policy.rollouts.items()}
