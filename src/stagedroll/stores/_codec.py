"""States and transitions as JSON text, the form in which SQLite and Redis keep them.

Unknown fields are ignored and missing ones take their defaults, so a store written by a
later version of stagedroll stays readable by this one, and the other way round.

Reading is total: whatever a store holds (any JSON value, nesting deep enough to exhaust the
parser's recursion, numbers out of range, text that is not JSON, a value of another type),
:func:`load_state` and :func:`load_transition` return a valid object or raise
``ValueError`` with a short description, never another exception. A state out of range
(:func:`check_state`) is refused when it is read and when it is written, so a store never
holds a state that its readers would refuse.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from typing import Any

from .._state import Action, RolloutState, Status, Transition

__all__ = [
    "MAX_READ_VERSION",
    "MAX_STAGE",
    "MAX_VERSION",
    "check_state",
    "dump_state",
    "dump_transition",
    "load_state",
    "load_transition",
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
        )
        check_state(state)
        if state.version > MAX_READ_VERSION:  # written behind the store's back, and close
            # to where no transition could follow it (kills would fail): old path instead
            raise ValueError(f"version {state.version} leaves no room for transitions")
        return state


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
