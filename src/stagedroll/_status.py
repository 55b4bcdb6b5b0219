"""The public read model: what a rollout, and every rollout, look like from outside.

:class:`RolloutStatus` is one rollout (its state, stage ladder, counters, gate evidence,
and what its next automatic step waits for); :class:`Snapshot` is all of them at once.
Both are frozen values built by :meth:`Rollout.status <stagedroll.Rollout.status>` and
:meth:`Rollouts.snapshot <stagedroll.Rollouts.snapshot>`. Consumers (the CLI, a metrics
exporter, a dashboard, an OpenFeature provider) read these, and subscribe to transitions
(:meth:`Rollouts.on_transition <stagedroll.Rollouts.on_transition>`, or
:meth:`Rollouts.on_change <stagedroll.Rollouts.on_change>` for the changes of every
process) and outcomes (:meth:`Rollout.on_outcome <stagedroll.Rollout.on_outcome>`); they
never need anything private.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ._health import HealthReport
from ._outcomes import ArmStats
from ._state import RecentError, Status

__all__ = ["RolloutStatus", "Snapshot", "StageInfo"]


@dataclass(frozen=True, slots=True)
class StageInfo:
    """One stage of a rollout's ladder, as its policy defines it."""

    name: str
    percent: float
    bake_s: float | None = None
    """The bake time in seconds (``None``: none)."""
    min_units: int = 0
    segments: tuple[str, ...] = ()
    """The segments this stage adds (those of the earlier stages stay in)."""


@dataclass(frozen=True, slots=True)
class RolloutStatus:
    """Where a rollout stands, as :meth:`Rollouts.status` reports it.

    ``percent`` is the share in force in this process's environment (``mode`` says whether
    it follows the stages, is fixed by the environment, or is off there). ``control`` and
    ``treatment`` count the outcomes this process recorded during the current stage.
    """

    rollout: str
    environment: str | None
    mode: str
    stage: int
    stage_name: str | None
    percent: float
    status: Status
    since: float
    version: int
    reason: str
    actor: str
    control: ArmStats
    treatment: ArmStats
    targeted: ArmStats
    """Calls routed by targeting, status or environment rather than the bucket (not compared)."""
    next_stage: str | None
    """The name of the stage that ``advance`` leads to, ``None`` at the last stage."""
    internal_errors: int
    """Failures inside stagedroll in this process so far, all rollouts (``Rollouts.failures``)."""
    health: HealthReport
    """The evidence of the health gate: e-values, ratio estimates, events, units."""
    waiting_for: str | None
    """What the next automatic step waits for, in words; ``None`` when none can come."""
    pending_policy: str | None = None
    """Why the changed policy file is not applied (it does not validate); ``None`` when the
    file in force is the newest (or the policy does not come from a reloaded file)."""
    in_policy: bool = True
    """``False`` for a rollout that a reloaded policy no longer has: every call takes the old
    path, and its stored state stays (see :attr:`Rollouts.removed`)."""
    stages: tuple[StageInfo, ...] = ()
    """The stage ladder, first to last (``stage`` indexes it; ``-1`` is before the first)."""
    killed_here: bool = False
    """Killed in this process by ``$STAGEDROLL_KILL``, whatever the stored state says."""
    totals: tuple[ArmStats, ArmStats, ArmStats] = (ArmStats(), ArmStats(), ArmStats())
    """Control, treatment and targeted: every call this process recorded since it started,
    across stage visits and reloads (``control``, ``treatment`` and ``targeted`` count the
    current stage visit only). What a metrics counter reads; ``units`` is not summed (0)."""
    errors: tuple[RecentError, ...] = ()
    """The last distinct exceptions of both paths (at most 20), newest first: of every process
    sharing the store when read fresh, else of this process."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every rollout of a :class:`~stagedroll.Rollouts` at one moment, as this process serves it.

    Made by :meth:`Rollouts.snapshot <stagedroll.Rollouts.snapshot>` without store I/O, so
    a metrics scrape or a dashboard can read it as often as it likes.
    """

    environment: str | None
    at: float
    """When it was taken, by the ``Rollouts``' clock."""
    rollouts: Mapping[str, RolloutStatus]
    """Each rollout of the policy in force, and each that a reload removed, by name."""
    failures: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    """Internal failures of stagedroll in this process so far, by kind (``store.load_failed``,
    ``hook.failed``, …); see ``docs/failure-modes.md``."""
    pending_policy: str | None = None
    """Why the changed policy file is not applied; ``None`` when it is."""
