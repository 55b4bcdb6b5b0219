"""States and transitions as JSON text, the form in which SQLite and Redis keep them.

Unknown fields are ignored and missing ones take their defaults, so a store written by a
later version of stagedroll stays readable by this one, and the other way round.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .._state import Action, RolloutState, Status, Transition

__all__ = ["dump_state", "dump_transition", "load_state", "load_transition"]


def _number(value: object) -> float | int | str | None:
    """An evidence value as JSON can hold it (non-finite floats become ``None``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, int | float | str):
        return value
    return str(value)


def dump_state(state: RolloutState) -> str:
    """``state`` as compact JSON."""
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


def _object(text: str | bytes, what: str) -> dict[str, Any]:
    data = json.loads(text)  # json.JSONDecodeError is a ValueError
    if not isinstance(data, dict):
        raise ValueError(f"malformed {what} {text!r}: not a JSON object")
    return data


def load_state(text: str | bytes) -> RolloutState:
    """The state that :func:`dump_state` wrote; raises ``ValueError`` on malformed text."""
    data = _object(text, "rollout state")
    try:
        return RolloutState(
            stage=int(data["stage"]),
            status=Status(data["status"]),
            since=float(data["since"]),
            version=int(data["version"]),
            reason=str(data.get("reason", "")),
            actor=str(data.get("actor", "")),
            epoch=int(data.get("epoch", 0)),
            history=str(data.get("history") or ""),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed rollout state {text!r}: {exc}") from exc


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


def load_transition(text: str | bytes) -> Transition:
    """The transition that :func:`dump_transition` wrote; ``ValueError`` on malformed text."""
    data = _object(text, "transition")
    try:
        from_status = data.get("from_status")
        return Transition(
            rollout=str(data["rollout"]),
            action=Action(data["action"]),
            from_stage=int(data["from_stage"]),
            to_stage=int(data["to_stage"]),
            from_status=Status(from_status) if from_status is not None else None,
            to_status=Status(data["to_status"]),
            version=int(data["version"]),
            at=float(data["at"]),
            reason=str(data.get("reason", "")),
            actor=str(data.get("actor", "")),
            evidence=dict(data.get("evidence") or {}),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed transition {text!r}: {exc}") from exc
