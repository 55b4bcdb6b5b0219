"""The exceptions of a rollout's paths: the last few distinct ones, and a rate-limited log.

A guard answers a failing new path from the old one, so without this an operator would see
the gate's evidence grow and never the ``IndexError`` behind it. :class:`Errors` keeps the
last :data:`MAX_ERRORS` distinct exceptions of each rollout (by arm, type and message, with
their first and last time and count), queues what changed for a shared store, and logs each
new-path exception as ``rollout.new_path_error``, at most once per exception type and
:data:`LOG_INTERVAL_S`, with the count of those it left out.
"""

from __future__ import annotations

import re
import threading
import traceback
from collections.abc import Callable, Iterable

from ._failures import contained, log
from ._forksafe import register
from ._state import MAX_ERROR_MESSAGE, MAX_ERROR_TYPE, RecentError

__all__ = [
    "LOG_INTERVAL_S",
    "MAX_ERRORS",
    "UNIT",
    "Errors",
    "describe",
    "group",
    "merge",
    "scrub",
]

MAX_ERRORS = 20
"""The distinct exceptions kept per rollout (the least recently seen is dropped first)."""
LOG_INTERVAL_S = 60.0
"""At most one ``rollout.new_path_error`` per rollout and exception type in this time."""
UNIT = "<unit>"
"""What a unit's text is replaced with in a kept or logged exception."""
_MAX_TRACEBACK = 8_000  # characters of a logged traceback (its end: where it failed)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab and newline
_MAX_COUNT = 2**53  # a count past it stays there (a store keeps counts as doubles)
_MAX_LOGGED_TYPES = 256  # exception types paced one by one, per rollout (the rest: together)
_EVERY_OTHER_TYPE = "*"  # the pace of the types past _MAX_LOGGED_TYPES
_VARYING = re.compile(
    r"\b0x[0-9A-Fa-f]+\b|\b(?=[0-9A-Fa-f-]*[0-9])[0-9A-Fa-f]{8,}(?:-[0-9A-Fa-f]+)*\b|[0-9]+"
)

Key = tuple[str, str, str]


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _standalone(text: str, form: str) -> str:
    """``text`` with each occurrence of ``form`` not inside a longer word replaced."""
    parts, start, size = [], 0, len(form)
    while (at := text.find(form, start)) >= 0:
        before = text[at - 1] if at else " "
        after = text[at + size] if at + size < len(text) else " "
        if (before.isascii() and before.isalnum()) or (after.isascii() and after.isalnum()):
            parts.append(text[start : at + size])  # inside a word: kept
        else:
            parts.append(text[start:at] + UNIT)
        start = at + size
    return "".join(parts) + text[start:] if parts else text


def scrub(text: str, unit: str | None) -> str:
    """``text`` with each standalone occurrence of ``unit`` replaced by ``<unit>``.

    Standalone: not inside a longer word or number (a unit ``"a"`` leaves ``"range"``
    alone, a unit ``"7"`` leaves ``"17"``), so a message quoting the unit
    (``KeyError('user-4711')``) keeps its words but not the unit. A UUID's hex form too.
    """
    if not unit:
        return text
    text = _standalone(text, unit)
    if len(unit) == 36 and unit.count("-") == 4:  # a UUID's text
        text = _standalone(text, unit.replace("-", ""))
    return text


def _name(exc: BaseException) -> str:
    cls = type(exc)
    module = getattr(cls, "__module__", None)
    name = getattr(cls, "__qualname__", None) or cls.__name__
    return _cut(str(name if module in (None, "builtins") else f"{module}.{name}"), MAX_ERROR_TYPE)


def _message(exc: BaseException, unit: str | None) -> str:
    """``str(exc)``, the unit scrubbed out, cut; never raises but for Ctrl-C (``contained``)."""
    try:
        message = str(exc)
    except BaseException as failure:  # a user's __str__: contained, whatever it raises
        if not contained(failure):
            raise
        message = f"<str() failed: {type(failure).__name__}>"
    return _cut(scrub(message[: 16 * MAX_ERROR_MESSAGE], unit), MAX_ERROR_MESSAGE)


def group(message: str) -> str:
    """``message`` with its numbers and hexadecimal ids as ``#``.

    ``tier 7 out of range`` and ``tier 12 out of range``, or two timeouts of other
    durations, are one error counted twice, not twenty errors seen once each.
    """
    return _VARYING.sub("#", message)


def describe(exc: BaseException, unit: str | None = None) -> tuple[str, str]:
    """``exc``'s type name (with its module, unless a builtin) and message, as kept.

    The message is ``str(exc)`` (one whose ``__str__`` raises is named by that failure),
    with ``unit`` scrubbed out (:func:`scrub`), cut to :data:`MAX_ERROR_MESSAGE`, and
    grouped (:func:`group`).
    """
    return _name(exc), group(_message(exc, unit))


def _traceback(exc: BaseException, kind: str, message: str, unit: str | None) -> str:
    """``exc``'s traceback as text, the unit scrubbed out and control characters escaped.

    It ends with ``kind: message`` (``str`` is not called again), and is cut to its last
    :data:`_MAX_TRACEBACK` characters.
    """
    try:
        frames = "".join(traceback.format_tb(exc.__traceback__))
    except Exception:  # pragma: no cover - defensive: a frame whose source cannot be read
        frames = ""
    head = "Traceback (most recent call last):\n" + frames if frames else ""
    text = scrub(head, unit) + f"{kind}: {message}\n"
    if len(text) > _MAX_TRACEBACK:
        text = "…" + text[-_MAX_TRACEBACK:]
    # Printed as it is by console renderers: a message's terminal escapes are written out.
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", text)


def merge(errors: Iterable[RecentError], limit: int = MAX_ERRORS) -> tuple[RecentError, ...]:
    """Merge entries of the same ``(arm, type, message)``; the ``limit`` newest, newest first."""
    merged: dict[Key, RecentError] = {}
    for e in errors:
        key = (e.arm, e.type, e.message)
        seen = merged.get(key)
        merged[key] = e if seen is None else RecentError(
            e.arm, e.type, e.message, min(e.first_seen, seen.first_seen),
            max(e.last_seen, seen.last_seen), min(e.count + seen.count, _MAX_COUNT))  # fmt: skip
    return tuple(sorted(merged.values(), key=lambda e: -e.last_seen)[:limit])


class _Entry:
    __slots__ = ("count", "first", "last")

    def __init__(self, now: float) -> None:
        self.first = self.last = now
        self.count = 0


class Errors:
    """The recent exceptions of one rollout, for its status, its store and its log.

    ``clock`` gives the times shown (the ``Rollouts`` clock); ``monotonic`` paces the log.
    """

    __slots__ = ("__weakref__", "_clock", "_kept", "_lock", "_logged", "_monotonic", "_pending",
                 "rollout")  # fmt: skip

    def __init__(
        self, rollout: str, clock: Callable[[], float], monotonic: Callable[[], float]
    ) -> None:
        self.rollout = rollout
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._kept: dict[Key, _Entry] = {}  # in the order last seen, oldest first
        self._pending: dict[Key, _Entry] = {}  # what changed since the store last took it
        self._logged: dict[str, list[float]] = {}  # type -> [last log time, left out since]
        register(self)

    def _after_fork(self) -> None:
        """In a forked child: a fresh lock; the parent's errors are not this process's."""
        self._lock = threading.Lock()
        self._kept.clear()
        self._pending.clear()
        self._logged.clear()

    def note(self, arm: str, exc: BaseException, unit: str | None = None) -> None:
        """Keep one exception of ``arm`` (``"treatment"`` or ``"control"``); never raises.

        ``unit`` is the call's unit as text: it is scrubbed from the message and the
        traceback, so that no unit is kept, stored or logged. A new-path (treatment)
        exception is logged unless its type was logged within :data:`LOG_INTERVAL_S`; the
        old path's are the caller's to see, and only kept.
        """
        try:
            kind, raw = _name(exc), _message(exc, unit)
            message = group(raw)
            now = self._clock()
            key = (arm, kind, message)
            suppressed = -1
            with self._lock:
                for table in (self._kept, self._pending):
                    entry = table.pop(key, None) or _Entry(now)
                    entry.count = min(entry.count + 1, _MAX_COUNT)
                    entry.last = now
                    table[key] = entry  # to the newest end
                    if len(table) > MAX_ERRORS:
                        del table[next(iter(table))]
                if arm == "treatment":
                    suppressed = self._pace(kind)
                total = self._kept[key].count
            if suppressed >= 0:
                log("error", "rollout.new_path_error", rollout=self.rollout, arm=arm,
                    error_type=kind, error=message, suppressed=suppressed, total=total,
                    exception=_traceback(exc, kind, raw, unit))  # fmt: skip
        except Exception:  # a broken clock must not break calls
            return

    def _pace(self, kind: str) -> int:
        """Under the lock: ``-1`` to leave this one out, else how many were left out before."""
        now = self._monotonic()
        if kind not in self._logged and len(self._logged) >= _MAX_LOGGED_TYPES:
            kind = _EVERY_OTHER_TYPE  # so many types: the rest share one pace
        paced = self._logged.get(kind)
        if paced is not None and now - paced[0] < LOG_INTERVAL_S:
            paced[1] += 1
            return -1
        left_out = int(paced[1]) if paced is not None else 0
        self._logged[kind] = [now, 0]
        return left_out

    def recent(self) -> tuple[RecentError, ...]:
        """The kept exceptions, newest first."""
        with self._lock:
            items = list(self._kept.items())
        return tuple(_error(key, entry) for key, entry in reversed(items))

    def pending(self) -> list[RecentError]:
        """What changed since the last ``take``, left queued."""
        with self._lock:
            items = list(self._pending.items())
        return [_error(key, entry) for key, entry in items]

    def take(self) -> list[RecentError]:
        """What changed since the last ``take`` (counts since then), for a shared store."""
        with self._lock:
            items, self._pending = self._pending, {}
        return [_error(key, entry) for key, entry in items.items()]

    def give_back(self, errors: list[RecentError]) -> None:
        """Queue again what a failed flush took (merged with what came meanwhile)."""
        with self._lock:
            for e in errors:
                key = (e.arm, e.type, e.message)
                entry = self._pending.get(key)
                if entry is None:
                    if len(self._pending) >= MAX_ERRORS:
                        continue
                    entry = self._pending[key] = _Entry(e.first_seen)
                entry.first = min(entry.first, e.first_seen)
                entry.last = max(entry.last, e.last_seen)
                entry.count += e.count


def _error(key: Key, entry: _Entry) -> RecentError:
    return RecentError(key[0], key[1], key[2], entry.first, entry.last, entry.count)
