"""Celery: the unit travels with the task, from the code that sends it to the worker.

:func:`connect` (once, in the process that sends tasks and in the worker) hooks three of
Celery's signals: ``before_task_publish`` puts the current unit and attributes
(:func:`stagedroll.current_unit`) in the message's headers, ``task_prerun`` binds them in
the worker around the task, and ``task_postrun`` unbinds them. A task then guards with
``unit=stagedroll.current_unit`` as a view does. A task sent with no unit bound runs with
none (the no-unit path). :func:`disconnect` undoes :func:`connect`.

The headers hold JSON-safe values only: a ``str`` or ``int`` unit (a :class:`uuid.UUID`
travels as its text, which buckets the same), attributes with ``str`` keys and ``str``,
``int``, ``float``, ``bool`` or ``None`` values; other attributes are left out, and a unit
of another type does not travel, nor does a worker bind a text unit longer than 256
characters (each logged once, ``task.unit_refused``). In eager mode
(``task_always_eager``) no message is sent: the task runs in the caller's context and sees
its unit directly.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Mapping
from typing import Any

import structlog
from celery import signals  # type: ignore[import-untyped]  # no stubs or py.typed

import stagedroll

from .wsgi import MAX_LENGTH

__all__ = ["ATTRIBUTES_HEADER", "UNIT_HEADER", "connect", "disconnect"]

UNIT_HEADER = "stagedroll_unit"
"""The message header that carries the unit."""
ATTRIBUTES_HEADER = "stagedroll_attributes"
"""The message header that carries the attributes (a JSON object)."""

_UID = "stagedroll.integrations.celery"
_SCALARS = (str, int, float, bool, type(None))
_log = structlog.get_logger("stagedroll")
_logged: set[str] = set()
_lock = threading.Lock()
_bound: dict[str, stagedroll.Bound] = {}  # task id -> its binding, from prerun to postrun


def connect() -> None:
    """Hook the signals (idempotent: a second call changes nothing)."""
    signals.before_task_publish.connect(_publish, weak=False, dispatch_uid=_UID)
    signals.task_prerun.connect(_prerun, weak=False, dispatch_uid=_UID)
    signals.task_postrun.connect(_postrun, weak=False, dispatch_uid=_UID)


def disconnect() -> None:
    """Unhook the signals; tasks sent afterwards carry no unit."""
    signals.before_task_publish.disconnect(_publish, dispatch_uid=_UID)
    signals.task_prerun.disconnect(_prerun, dispatch_uid=_UID)
    signals.task_postrun.disconnect(_postrun, dispatch_uid=_UID)


def _once(kind: str, **fields: object) -> None:
    with _lock:
        if kind in _logged:
            return
        _logged.add(kind)
    with contextlib.suppress(Exception):  # a broken logging setup must not fail a publish
        _log.warning("task.unit_refused", logger="stagedroll", reason=kind, **fields)


def _publish(headers: dict[str, Any] | None = None, **kwargs: object) -> None:
    """``before_task_publish``: the current unit and attributes into the headers."""
    if headers is None:
        return
    try:
        unit = stagedroll.current_unit()
        if unit is None:
            return
        if isinstance(unit, uuid.UUID):
            unit = str(unit)
        if type(unit) not in (str, int):
            _once("type", unit_type=type(unit).__name__)
            return
        headers[UNIT_HEADER] = unit
        attributes = {
            key: value
            for key, value in stagedroll.current_attributes().items()
            if isinstance(key, str) and type(value) in _SCALARS
        }
        if attributes:
            headers[ATTRIBUTES_HEADER] = attributes
    except Exception:  # the task is sent without a unit rather than not at all
        _once("failed")


def _prerun(task_id: str | None = None, task: Any = None, **kwargs: object) -> None:
    """``task_prerun``: bind the unit the message carries, if it carries one."""
    request = getattr(task, "request", None)
    unit = getattr(request, UNIT_HEADER, None)
    if task_id is None or unit is None or getattr(request, "is_eager", False):
        return
    if type(unit) not in (str, int):
        _once("type", unit_type=type(unit).__name__)
        return
    if isinstance(unit, str) and len(unit) > MAX_LENGTH:
        _once("too_long", length=len(unit))
        return
    attributes = getattr(request, ATTRIBUTES_HEADER, None)
    if not isinstance(attributes, Mapping):
        attributes = None
    _bound[task_id] = stagedroll.bind(unit, attributes)


def _postrun(task_id: str | None = None, **kwargs: object) -> None:
    """``task_postrun``: unbind what ``task_prerun`` bound."""
    bound = _bound.pop(task_id, None) if task_id is not None else None
    if bound is not None:
        bound.reset()
