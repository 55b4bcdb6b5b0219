"""An OpenFeature provider over a :class:`~stagedroll.Rollouts` (extra ``stagedroll[openfeature]``).

A service that evaluates its flags through the OpenFeature API keeps stagedroll's staged
rollouts, its health gate and its auto-freeze::

    from openfeature import api
    from stagedroll.integrations.openfeature import StagedrollProvider

    api.set_provider(StagedrollProvider(rollouts))
    client = api.get_client()
    on = client.get_boolean_value("new-checkout", False, EvaluationContext("user-42"))

The flag key is the rollout's name, the context's ``targeting_key`` the unit, its other
attributes the targeting attributes. Only boolean flags exist. ``client.track(name, ...)``
with the rollout's name as the event name records an outcome (``error``, latency) for the
health gate. The mapping of reasons, the events and the tracking convention are in
``docs/openfeature.md``. The provider reads only stagedroll's public names.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import structlog
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, FlagValueType
from openfeature.flag_evaluation import Reason as FlagReason
from openfeature.provider import AbstractProvider, Metadata
from openfeature.track import TrackingEventDetails

from stagedroll import Decision, Reason, Rollouts, RolloutState, SyncingStore

__all__ = ["StagedrollProvider"]

T = TypeVar("T")

NEW = "new"
"""The variant of a flag whose new path is on."""
OLD = "old"
"""The variant of a flag whose old (stable) path is on."""

_REASONS: Mapping[Reason, str] = {
    Reason.ENVIRONMENT: FlagReason.DISABLED,
    Reason.KILLED: FlagReason.DISABLED,
    Reason.COMPLETE: FlagReason.STATIC,
    Reason.DENIED: FlagReason.TARGETING_MATCH,
    Reason.ALLOWED: FlagReason.TARGETING_MATCH,
    Reason.SEGMENT: FlagReason.TARGETING_MATCH,
    Reason.IN_COHORT: FlagReason.SPLIT,
    Reason.OUT_OF_COHORT: FlagReason.SPLIT,
    Reason.OVERRIDE: FlagReason.STATIC,
}
"""OpenFeature's standard reason for each of stagedroll's (the errors aside)."""

_MAX_IGNORED_NAMES = 100
"""Tracking event names logged as ignored, at most (each once); more are ignored silently."""
_SHOWN_CHARS = 80
"""A name in a message or a log line is cut to this many characters."""

_log = structlog.get_logger("stagedroll")


class StagedrollProvider(AbstractProvider):
    """The OpenFeature provider of the rollouts of ``rollouts``: flag key = rollout name.

    ``metadata_name`` is the provider's name in OpenFeature's metadata and events. The
    provider never closes ``rollouts`` (the caller made it and closes it). Evaluation
    never raises: a failure gives the default value with an OpenFeature error code.
    """

    def __init__(self, rollouts: Rollouts, *, metadata_name: str = "stagedroll") -> None:
        super().__init__()
        given: object = rollouts  # checked at run time: callers may not run mypy
        if not isinstance(given, Rollouts):
            kind = type(given).__name__
            raise TypeError(f"rollouts must be a stagedroll.Rollouts, not {kind}")
        if not isinstance(metadata_name, str) or not metadata_name:
            raise ValueError(f"metadata_name must be a non-empty string, not {metadata_name!r}")
        self.rollouts = rollouts
        store = rollouts.store
        self._syncing = store if isinstance(store, SyncingStore) else None  # checked once
        self._metadata = Metadata(name=metadata_name)
        self._lock = threading.RLock()
        self._active = False  # between initialize and shutdown: events are emitted
        self._subscribed = False  # on_change: from initialize to shutdown
        self._refreshing = False  # the store's on_refresh: once, for life (weakly held)
        self._stale = False  # the last state told: STALE (True) or READY (False)
        self._ignored: set[str] = set()

    def __repr__(self) -> str:
        return f"<StagedrollProvider {self._metadata.name!r} {self.rollouts!r}>"

    # -- the provider's life ---------------------------------------------------------------------

    def get_metadata(self) -> Metadata:
        return self._metadata

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        """Subscribe to the rollouts' changes (and the store's refreshes).

        OpenFeature emits READY when this returns; a store unreachable already is told
        (STALE) by the first check after: the store's next refresh, or an evaluation.
        """
        with self._lock:
            self._active = True
            self._stale = False
            if self._subscribed:
                return
            self._subscribed = True
            self.rollouts.on_change(self._changed)
            if self._syncing is not None and not self._refreshing:
                self._refreshing = True  # weakly held by the store: subscribed once, for life
                self._syncing.on_refresh(self._check)

    def shutdown(self) -> None:
        """Stop emitting events and unsubscribe; ``rollouts`` stays open (the caller's)."""
        with self._lock:
            self._active = False
            if self._subscribed:
                self._subscribed = False
                self.rollouts.off_change(self._changed)

    # -- events ----------------------------------------------------------------------------------

    def _changed(self, name: str, state: RolloutState) -> None:
        """A rollout took a new state (in any process): CONFIGURATION_CHANGED, then the check."""
        with self._lock:
            if self._active:
                self.emit_provider_configuration_changed(
                    ProviderEventDetails(
                        flags_changed=[name],
                        message=f"rollout {_shown(name)} is {state.status.value}",
                        metadata={
                            "status": state.status.value,
                            "stage": state.stage,
                            "version": state.version,
                        },
                    )
                )
        self._check()

    def _check(self) -> None:
        """Emit STALE when the store became unreachable, READY when it answers again."""
        stale = self._unreachable()
        with self._lock:
            if not self._active or stale == self._stale:
                return
            self._stale = stale
            if stale:
                self.emit_provider_stale(
                    ProviderEventDetails(message="the stagedroll store is unreachable")
                )
            else:
                self.emit_provider_ready(
                    ProviderEventDetails(message="the stagedroll store answers again")
                )

    def _store_down(self) -> bool:
        """Whether the shared store's last refresh failed (its public ``down``)."""
        return self._syncing is not None and self._syncing.down is True

    def _unreachable(self) -> bool:
        """The store is down, or a rollout serves a state never read from it (version 0)."""
        if self._store_down():
            return True
        rollouts = self.rollouts
        return any(rollouts[name].state.version == 0 for name in list(rollouts))

    # -- evaluation ------------------------------------------------------------------------------

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        """Decide rollout ``flag_key`` for the context's ``targeting_key``: on is ``"new"``."""
        try:
            return self._resolve(flag_key, default_value, evaluation_context)
        except Exception as exc:  # stagedroll's own failure never reaches the caller
            _warn("openfeature.resolve_failed", rollout=_shown(flag_key), error=type(exc).__name__)
            return _error(default_value, ErrorCode.GENERAL, f"stagedroll failed: {exc}")

    def _resolve(
        self, flag_key: str, default_value: bool, context: EvaluationContext | None
    ) -> FlagResolutionDetails[bool]:
        rollouts = self.rollouts
        if not isinstance(flag_key, str) or flag_key not in rollouts:
            return _not_found(flag_key, default_value)
        unit, attributes, problem = _unit_of(context)
        if problem is not None:
            return _error(default_value, *problem)
        try:
            decision = rollouts.decide(flag_key, unit, attributes)
        except TypeError as exc:  # an attribute of a type the targeting cannot read
            return _error(default_value, ErrorCode.INVALID_CONTEXT, str(exc))
        reason = decision.reason
        if reason is Reason.ERROR:
            return _error(default_value, ErrorCode.GENERAL, "stagedroll failed internally (logged)")
        if reason is Reason.UNKNOWN_ROLLOUT:  # a reload removed it meanwhile
            return _not_found(flag_key, default_value)
        if reason is Reason.NO_UNIT:
            attribute = rollouts[flag_key].policy.bucket_by
            return _error(
                default_value,
                ErrorCode.TARGETING_KEY_MISSING,
                f"rollout {_shown(flag_key)} buckets on attribute {_shown(attribute or '')}, "
                "which the context lacks",
            )
        if rollouts[flag_key].state.version == 0 or self._store_down():
            flag_reason: str = FlagReason.STALE
            if not self._stale:
                self._check()
        elif decision.stage is None and reason in (Reason.IN_COHORT, Reason.OUT_OF_COHORT):
            flag_reason = FlagReason.DISABLED  # 0 %: before the first stage, or rolled back there
        else:
            flag_reason = _REASONS.get(reason, FlagReason.UNKNOWN)
        return FlagResolutionDetails(
            value=decision.enabled,
            reason=flag_reason,
            variant=NEW if decision.enabled else OLD,
            flag_metadata=_metadata(decision),
        )

    def resolve_string_details(
        self,
        flag_key: str,
        default_value: str,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[str]:
        """Rollouts are boolean flags: ``TYPE_MISMATCH`` (``FLAG_NOT_FOUND`` for none)."""
        return self._not_boolean(flag_key, default_value)

    def resolve_integer_details(
        self,
        flag_key: str,
        default_value: int,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[int]:
        """Rollouts are boolean flags: ``TYPE_MISMATCH`` (``FLAG_NOT_FOUND`` for none)."""
        return self._not_boolean(flag_key, default_value)

    def resolve_float_details(
        self,
        flag_key: str,
        default_value: float,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[float]:
        """Rollouts are boolean flags: ``TYPE_MISMATCH`` (``FLAG_NOT_FOUND`` for none)."""
        return self._not_boolean(flag_key, default_value)

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Sequence[FlagValueType] | Mapping[str, FlagValueType],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[FlagValueType] | Mapping[str, FlagValueType]]:
        """Rollouts are boolean flags: ``TYPE_MISMATCH`` (``FLAG_NOT_FOUND`` for none)."""
        return self._not_boolean(flag_key, default_value)

    def _not_boolean(self, flag_key: str, default_value: T) -> FlagResolutionDetails[T]:
        if not isinstance(flag_key, str) or flag_key not in self.rollouts:
            return _not_found(flag_key, default_value)
        return _error(
            default_value,
            ErrorCode.TYPE_MISMATCH,
            f"rollout {_shown(flag_key)} is a boolean flag",
        )

    # -- tracking --------------------------------------------------------------------------------

    def track(
        self,
        tracking_event_name: str,
        evaluation_context: EvaluationContext | None = None,
        tracking_event_details: TrackingEventDetails | None = None,
    ) -> None:
        """Record an outcome of rollout ``tracking_event_name`` for the context's unit.

        The event's name is the rollout's name; ``value`` is the latency in seconds (or
        ``None``), ``attributes["error"]`` whether the call failed (a ``bool``; absent:
        it did not). Other events are ignored, each name logged once. Never raises.
        """
        try:
            self._track(tracking_event_name, evaluation_context, tracking_event_details)
        except Exception as exc:  # stagedroll's own failure never reaches the caller
            _warn("openfeature.track_failed", tracking_event=_shown(tracking_event_name),
                  error=type(exc).__name__)  # fmt: skip

    def _track(
        self,
        name: str,
        context: EvaluationContext | None,
        details: TrackingEventDetails | None,
    ) -> None:
        rollouts = self.rollouts
        if not isinstance(name, str) or name not in rollouts:
            self._ignore(name, "no rollout has that name")
            return
        unit, attributes, problem = _unit_of(context)
        if problem is not None:
            self._ignore(name, problem[1])
            return
        error: Any = False
        latency_s: Any = None
        if details is not None:
            error = details.attributes.get("error", False)
            latency_s = details.value
        if not isinstance(error, bool):
            self._ignore(name, f'attribute "error" must be a bool, not {type(error).__name__}')
            return
        rollouts.report(name, unit, error=error, latency_s=latency_s, attributes=attributes)

    def _ignore(self, name: object, why: str) -> None:
        """Log an ignored tracking event, once per name (at most ``_MAX_IGNORED_NAMES``)."""
        shown = _shown(name)
        with self._lock:
            if shown in self._ignored or len(self._ignored) >= _MAX_IGNORED_NAMES:
                return
            self._ignored.add(shown)
        _warn("openfeature.track_ignored", tracking_event=shown, why=why)


def _unit_of(
    context: EvaluationContext | None,
) -> tuple[str, dict[str, object], tuple[ErrorCode, str] | None]:
    """The unit and attributes of ``context``, or the error code and message of a bad one."""
    key: object = context.targeting_key if context is not None else None
    if key is None or key == "":
        return "", {}, (ErrorCode.TARGETING_KEY_MISSING, "the context has no targeting_key")
    if not isinstance(key, str):
        return (
            "",
            {},
            (
                ErrorCode.INVALID_CONTEXT,
                f"targeting_key must be a string, not {type(key).__name__}",
            ),
        )
    raw: object = context.attributes if context is not None else {}
    if not isinstance(raw, Mapping):
        return (
            "",
            {},
            (
                ErrorCode.INVALID_CONTEXT,
                f"attributes must be a mapping, not {type(raw).__name__}",
            ),
        )
    return key, dict(raw), None


def _metadata(decision: Decision) -> dict[str, bool | int | float | str]:
    """The decision as stagedroll tells it of a decision: its reason, stage, percent and bucket."""
    meta: dict[str, bool | int | float | str] = {
        "reason": decision.reason.value,
        "percent": decision.percent,
    }
    if decision.stage is not None:
        meta["stage"] = decision.stage
    if decision.bucket is not None:
        meta["bucket"] = decision.bucket
    return meta


def _error(default_value: T, code: ErrorCode, message: str) -> FlagResolutionDetails[T]:
    return FlagResolutionDetails(
        value=default_value, error_code=code, error_message=message, reason=FlagReason.ERROR
    )


def _not_found(flag_key: object, default_value: T) -> FlagResolutionDetails[T]:
    return _error(default_value, ErrorCode.FLAG_NOT_FOUND, f"no rollout named {_shown(flag_key)}")


def _shown(name: object) -> str:
    """A name for a message or a log line: quoted, escaped and cut (no user ``__repr__``)."""
    if not isinstance(name, str):
        return f"<{type(name).__name__}>"
    cut = name[:_SHOWN_CHARS]
    return repr(cut) + ("…" if len(name) > _SHOWN_CHARS else "")


def _warn(what: str, **fields: object) -> None:
    with contextlib.suppress(Exception):  # a broken logging setup must not break a call
        _log.warning(what, **fields)
