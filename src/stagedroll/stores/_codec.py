"""States and transitions as JSON text, the form in which SQLite and Redis keep them.

Unknown fields are ignored and missing ones take their defaults, so a store written by a
later version of stagedroll stays readable by this one, and the other way round.

Reading is total: whatever a store holds (any JSON value, nesting deep enough to exhaust the
parser's recursion, numbers out of range, text that is not JSON, a value of another type),
:func:`load_state`, :func:`load_transition` and :func:`load_error` return a valid object or
raise ``ValueError`` with a short description, never another exception. A state out of range
(:func:`check_state`) is refused when it is read and when it is written, so a store never
holds a state that its readers would refuse. A state's stage ladder is the exception: it is
informational (what an operator steers by), so a malformed or oversized one loads as ``()``
rather than making the state, and so the rollout, unreadable.

The recent errors of a rollout (:class:`~stagedroll.RecentError`) are kept one JSON object
each; :func:`merge_errors` is the rule every store applies when it adds them.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterable, Iterator
from typing import Any

from .._state import (
    MAX_ERROR_MESSAGE,
    MAX_ERROR_TYPE,
    Action,
    RecentError,
    RolloutState,
    Status,
    Transition,
)

__all__ = [
    "MAX_ARM",
    "MAX_COUNT",
    "MAX_ERRORS",
    "MAX_READ_VERSION",
    "MAX_STAGE",
    "MAX_STAGES",
    "MAX_STAGE_NAME",
    "MAX_VERSION",
    "check_state",
    "dump_error",
    "dump_state",
    "dump_transition",
    "load_error",
    "load_state",
    "load_transition",
    "merge_errors",
]

MAX_STAGE = 2**31 - 1
"""The highest stage a stored state may name (a policy's last stage is far below)."""
MAX_VERSION = 2**53
"""The highest version a stored state may have: Redis's Lua compares versions as doubles,
exact up to 2**53 (a billion transitions a second would take 285 years to reach it)."""
MAX_READ_VERSION = 2**52
"""The highest version a state read from a store may have: half of :data:`MAX_VERSION`, so
that a version set near the top behind the store's back is refused (the rollout serves the
old path) rather than served with no room left for a kill."""
MAX_HISTORY_ID = 64
"""The longest history id a stored state may have (stagedroll writes 32 hex characters)."""
MAX_STAGES = 1000
"""The most stages a state's ladder (``RolloutState.stages``) may have."""
MAX_STAGE_NAME = 128
"""The longest stage name in a state's ladder (a policy's names are at most 128 too)."""
MAX_ERRORS = 20
"""The distinct recent errors a store keeps per rollout (the least recently seen go)."""
MAX_COUNT = 2**53
"""The highest count of a recent error (counts that would pass it stay at it)."""
MAX_ARM = 32
"""The longest arm name of a recent error (stagedroll writes ``treatment`` or ``control``)."""

_SHOWN = 120  # characters of a malformed text quoted in an error message


def _shown(text: object) -> str:
    """``text`` quoted for an error message, cut to a few dozen characters."""
    shown = repr(text[:_SHOWN] if isinstance(text, str | bytes) else type(text).__name__)
    if isinstance(text, str | bytes) and len(text) > _SHOWN:
        shown += f"... ({len(text)} characters)"
    return shown


def _number(value: object) -> float | int | str | None:
    """An evidence value as JSON can hold it (non-finite floats become ``None``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, int | float | str):
        return value
    return str(value)


def check_state(state: RolloutState) -> None:
    """Raise ``ValueError`` unless ``state`` is one a store may hold.

    ``stage`` from ``-1`` (0 %, after a rollback from the first stage) to :data:`MAX_STAGE`
    (a stage past the policy's last is served as the last), ``version`` from 1 to
    :data:`MAX_VERSION`, ``epoch`` from 0 (states from before epochs) to ``version``,
    ``since`` finite, ``history`` at most :data:`MAX_HISTORY_ID` characters.
    """
    if not isinstance(state.status, Status):
        raise ValueError(f"unknown status {state.status!r}")
    for name, value, low, high in (
        ("stage", state.stage, -1, MAX_STAGE),
        ("version", state.version, 1, MAX_VERSION),
        ("epoch", state.epoch, 0, state.version),
    ):
        if type(value) is not int:
            raise ValueError(f"{name} must be an integer, not {_shown_value(value)}")
        if not low <= value <= high:
            raise ValueError(f"{name} {_shown_value(value)} is out of range ({low} to {high})")
    since = state.since
    if not isinstance(since, int | float) or isinstance(since, bool) or not _finite(since):
        raise ValueError(f"since must be a finite number, not {_shown_value(since)}")
    for name, text in (
        ("reason", state.reason),
        ("actor", state.actor),
        ("history", state.history),
    ):
        if not isinstance(text, str):
            raise ValueError(f"{name} must be text, not {_shown_value(text)}")
    if len(state.history) > MAX_HISTORY_ID:
        raise ValueError(
            f"history id of {len(state.history)} characters (at most {MAX_HISTORY_ID})"
        )
    _check_stages(state.stages)


def _check_stages(stages: object) -> None:
    """Raise ``ValueError`` unless ``stages`` is a ladder a state may carry.

    A tuple of at most :data:`MAX_STAGES` pairs ``(name, percent)``: a name of 1 to
    :data:`MAX_STAGE_NAME` characters, a finite percent from 0 to 100.
    """
    if not isinstance(stages, tuple):
        raise ValueError(f"stages must be a tuple, not {type(stages).__name__}")
    if len(stages) > MAX_STAGES:
        raise ValueError(f"{len(stages)} stages (at most {MAX_STAGES})")
    for i, pair in enumerate(stages):
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise ValueError(
                f"stages[{i}] must be a pair (name, percent), not {_shown_value(pair)}"
            )
        name, percent = pair
        if type(name) is not str or not 1 <= len(name) <= MAX_STAGE_NAME:
            raise ValueError(
                f"stages[{i}] name must be text of 1 to {MAX_STAGE_NAME} characters, "
                f"not {_shown_value(name)}"
            )
        if type(percent) not in (int, float) or not _finite(percent) or not 0 <= percent <= 100:
            raise ValueError(
                f"stages[{i}] percent must be a finite number from 0 to 100, "
                f"not {_shown_value(percent)}"
            )


def _finite(number: float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an int beyond floats
        return False


def _shown_value(value: object) -> str:
    if type(value) is int and abs(value) > 10**30:
        return f"<an integer of {len(str(abs(value)))} digits>"
    return _shown(value) if isinstance(value, str | bytes) else repr(value)[:_SHOWN]


def dump_state(state: RolloutState) -> str:
    """``state`` as compact JSON; ``ValueError`` for a state out of range (:func:`check_state`)."""
    check_state(state)
    return json.dumps(
        {
            "stage": state.stage,
            "status": state.status.value,
            "since": state.since,
            "version": state.version,
            "reason": state.reason,
            "actor": state.actor,
            "epoch": state.epoch,
            "history": state.history,
            "stages": [[name, percent] for name, percent in state.stages],
        },
        separators=(",", ":"),
    )


def _object(text: object, what: str) -> dict[str, Any]:
    if not isinstance(text, str | bytes | bytearray):
        raise ValueError(f"malformed {what}: a {type(text).__name__}, not JSON text")
    data = json.loads(text)  # json.JSONDecodeError is a ValueError
    if not isinstance(data, dict):
        raise ValueError(f"malformed {what} {_shown(text)}: not a JSON object")
    return data


def _int(data: dict[str, Any], key: str, default: int | None = None) -> int:
    value = data[key] if default is None else data.get(key, default)
    if type(value) is not int:  # not a bool, a float or a string of digits
        raise ValueError(f"{key} must be an integer, not {_shown_value(value)}")
    return value


def _float(data: dict[str, Any], key: str) -> float:
    value = data[key]
    if type(value) not in (int, float):
        raise ValueError(f"{key} must be a number, not {_shown_value(value)}")
    number = float(value)  # OverflowError for an int beyond floats: caught as malformed
    if not math.isfinite(number):
        raise ValueError(f"{key} must be finite, not {value!r}")
    return number


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if type(value) is not str:
        raise ValueError(f"{key} must be text, not {_shown_value(value)}")
    return value


def _status(value: object) -> Status:
    if type(value) is not str:
        raise ValueError(f"status must be text, not {_shown_value(value)}")
    try:
        return Status(value)
    except ValueError:
        raise ValueError(f"unknown status {_shown(value)}") from None


@contextlib.contextmanager
def _total(what: str, text: object) -> Iterator[None]:
    """Turn whatever decoding ``text`` raises into a ``ValueError`` naming ``what``."""
    try:
        yield
    except KeyError as exc:
        raise ValueError(f"malformed {what} {_shown(text)}: no {exc}") from None
    except ValueError:
        raise
    except Exception as exc:  # RecursionError (deep nesting), OverflowError, MemoryError...
        raise ValueError(f"malformed {what} {_shown(text)}: {type(exc).__name__}: {exc}") from None


def load_state(text: object) -> RolloutState:
    """The state that :func:`dump_state` wrote; ``ValueError`` for anything else.

    Total: any text (or value) a store may hold gives a valid state or ``ValueError``.
    """
    with _total("rollout state", text):
        data = _object(text, "rollout state")
        state = RolloutState(
            stage=_int(data, "stage"),
            status=_status(data["status"]),
            since=_float(data, "since"),
            version=_int(data, "version"),
            reason=_text(data, "reason"),
            actor=_text(data, "actor"),
            epoch=_int(data, "epoch", 0),
            history=_text(data, "history"),
            stages=_stages(data.get("stages")),
        )
        check_state(state)
        if state.version > MAX_READ_VERSION:  # written behind the store's back, and close
            # to where no transition could follow it (kills would fail): old path instead
            raise ValueError(f"version {state.version} leaves no room for transitions")
        return state


def _stages(value: object) -> tuple[tuple[str, float], ...]:
    """A stored ladder, or ``()`` for one that is absent, malformed or too long (never raises)."""
    if not isinstance(value, list) or len(value) > MAX_STAGES:
        return ()
    stages = []
    for pair in value:
        if not isinstance(pair, list) or len(pair) != 2:
            return ()
        name, percent = pair
        if type(percent) not in (int, float) or not _finite(percent):  # not a bool, nor huge
            return ()
        stages.append((name, float(percent)))
    ladder = tuple(stages)
    try:
        _check_stages(ladder)
    except ValueError:
        return ()
    return ladder


def dump_transition(entry: Transition) -> str:
    """``entry`` as compact JSON."""
    return json.dumps(
        {
            "rollout": entry.rollout,
            "action": entry.action.value,
            "from_stage": entry.from_stage,
            "to_stage": entry.to_stage,
            "from_status": entry.from_status.value if entry.from_status is not None else None,
            "to_status": entry.to_status.value,
            "version": entry.version,
            "at": entry.at,
            "reason": entry.reason,
            "actor": entry.actor,
            "evidence": {str(k): _number(v) for k, v in entry.evidence.items()},
        },
        separators=(",", ":"),
    )


def load_transition(text: object) -> Transition:
    """The transition that :func:`dump_transition` wrote; ``ValueError`` for anything else."""
    with _total("transition", text):
        data = _object(text, "transition")
        from_status = data.get("from_status")
        evidence = data.get("evidence") or {}
        if not isinstance(evidence, dict):
            raise ValueError(f"evidence must be an object, not {_shown_value(evidence)}")
        action = data["action"]
        if type(action) is not str:
            raise ValueError(f"action must be text, not {_shown_value(action)}")
        return Transition(
            rollout=str(data["rollout"]),
            action=Action(action),
            from_stage=_int(data, "from_stage"),
            to_stage=_int(data, "to_stage"),
            from_status=_status(from_status) if from_status is not None else None,
            to_status=_status(data["to_status"]),
            version=_int(data, "version"),
            at=_float(data, "at"),
            reason=_text(data, "reason"),
            actor=_text(data, "actor"),
            evidence={str(k): _number(v) for k, v in evidence.items()},
        )


# -- recent errors ---------------------------------------------------------------------------


def _error_time(value: object, name: str) -> float:
    if type(value) not in (int, float) or not _finite(value):  # type: ignore[arg-type]
        raise ValueError(f"{name} must be a finite number, not {_shown_value(value)}")
    return float(value)  # type: ignore[arg-type]  # a finite int or float


def _checked_error(error: RecentError) -> RecentError:
    """``error`` with its type and message cut to their caps; ``ValueError`` when malformed."""
    if not isinstance(error, RecentError):
        raise ValueError(f"a recent error must be a RecentError, not {type(error).__name__}")
    arm = error.arm
    if type(arm) is not str or not 1 <= len(arm) <= MAX_ARM:
        raise ValueError(f"arm must be text of 1 to {MAX_ARM} characters, not {_shown_value(arm)}")
    for name, text in (("type", error.type), ("message", error.message)):
        if type(text) is not str:
            raise ValueError(f"{name} must be text, not {_shown_value(text)}")
    count = error.count
    if type(count) is not int or not 1 <= count <= MAX_COUNT:
        raise ValueError(f"count must be an integer from 1 to 2**53, not {_shown_value(count)}")
    return RecentError(
        arm=arm,
        type=error.type[:MAX_ERROR_TYPE],
        message=error.message[:MAX_ERROR_MESSAGE],
        first_seen=_error_time(error.first_seen, "first_seen"),
        last_seen=_error_time(error.last_seen, "last_seen"),
        count=count,
    )


def dump_error(error: RecentError) -> str:
    """``error`` as compact JSON, its type and message cut to their caps.

    ``ValueError`` for an error out of range: an arm that is not text of 1 to
    :data:`MAX_ARM` characters, a type or message that is not text, a time that is not a
    finite number, a count that is not an integer from 1 to 2**53.
    """
    error = _checked_error(error)
    return json.dumps(
        {
            "arm": error.arm,
            "type": error.type,
            "message": error.message,
            "first_seen": error.first_seen,
            "last_seen": error.last_seen,
            "count": error.count,
        },
        separators=(",", ":"),
    )


def load_error(text: object) -> RecentError:
    """The recent error that :func:`dump_error` wrote; ``ValueError`` for anything else.

    Total, like :func:`load_state`; a type or message longer than its cap is cut.
    """
    with _total("recent error", text):
        data = _object(text, "recent error")
        return _checked_error(
            RecentError(
                arm=data["arm"],
                type=data["type"],
                message=data["message"],
                first_seen=data["first_seen"],
                last_seen=data["last_seen"],
                count=data["count"],
            )
        )


def merge_errors(stored: Iterable[RecentError], new: Iterable[RecentError]) -> list[RecentError]:
    """The recent errors a store keeps after adding ``new`` to ``stored``: newest first.

    Errors are one entry per ``(arm, type, message)`` (after cutting type and message to
    their caps): counts add (up to 2**53), ``first_seen`` is the earliest and ``last_seen``
    the latest. At most :data:`MAX_ERRORS` entries are kept, the most recently seen. Raises
    ``ValueError`` when an error of ``new`` is malformed (see :func:`dump_error`); ``stored``
    is taken as read (:func:`load_error` checked it).
    """
    checked = [_checked_error(error) for error in new]  # all checked before any is merged
    merged: dict[tuple[str, str, str], RecentError] = {}
    for error in (*stored, *checked):
        key = (error.arm, error.type, error.message)
        known = merged.get(key)
        merged[key] = (
            error
            if known is None
            else RecentError(
                arm=error.arm,
                type=error.type,
                message=error.message,
                first_seen=min(known.first_seen, error.first_seen),
                last_seen=max(known.last_seen, error.last_seen),
                count=min(known.count + error.count, MAX_COUNT),
            )
        )
    newest = sorted(merged.values(), key=_recency)
    return newest[:MAX_ERRORS]


def _recency(error: RecentError) -> tuple[float, float, str, str, str]:
    """Newest ``last_seen`` first; ties in a stable order (so every store keeps the same)."""
    return (-error.last_seen, -error.first_seen, error.arm, error.type, error.message)
