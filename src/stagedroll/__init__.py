"""stagedroll: in-process staged rollouts.

Deterministic bucketing, rollout policies, guards that route calls to the new or the old
path, and state that every process of a service shares.
"""

from __future__ import annotations

from ._bucketing import bucket, threshold, unit_key
from ._context import Bound, bind, current_attributes, current_unit
from ._decision import Decision, Reason
from ._guard import Tracking
from ._health import HealthReport
from ._hooks import TransitionEvent
from ._outcomes import ArmStats, Outcome
from ._policy import (
    Bucketing,
    Health,
    Policy,
    RolloutPolicy,
    Rule,
    Segment,
    Stage,
    Targeting,
    load_policy,
    parse_duration,
    parse_policy,
)
from ._rollout import Rollout
from ._rollouts import Rollouts
from ._schemes import BucketingScheme
from ._state import Action, RecentError, RolloutState, Status, Transition
from ._status import RolloutStatus, Snapshot, StageInfo
from ._steering import Steering
from ._version import __version__
from .exceptions import (
    CorruptStateError,
    NoStoreError,
    PolicyError,
    StagedrollError,
    StoreError,
    TransitionError,
    UnknownRolloutError,
)
from .stores import MemoryStore, PostgresStore, RedisStore, SQLiteStore, Store, SyncingStore

__all__ = [
    "Action",
    "ArmStats",
    "Bound",
    "Bucketing",
    "BucketingScheme",
    "CorruptStateError",
    "Decision",
    "Health",
    "HealthReport",
    "MemoryStore",
    "NoStoreError",
    "Outcome",
    "Policy",
    "PolicyError",
    "PostgresStore",
    "Reason",
    "RecentError",
    "RedisStore",
    "Rollout",
    "RolloutPolicy",
    "RolloutState",
    "RolloutStatus",
    "Rollouts",
    "Rule",
    "SQLiteStore",
    "Segment",
    "Snapshot",
    "Stage",
    "StageInfo",
    "StagedrollError",
    "Status",
    "Steering",
    "Store",
    "StoreError",
    "SyncingStore",
    "Targeting",
    "Tracking",
    "Transition",
    "TransitionError",
    "TransitionEvent",
    "UnknownRolloutError",
    "__version__",
    "bind",
    "bucket",
    "current_attributes",
    "current_unit",
    "load_policy",
    "parse_duration",
    "parse_policy",
    "threshold",
    "unit_key",
]
