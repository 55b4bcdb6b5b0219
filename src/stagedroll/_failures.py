"""Internal failures: counted always, logged at most once a minute per kind.

stagedroll never lets its own failures reach the caller. They are routed here instead, so
that an operator sees them in the logs without a failing store flooding them once per call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from ._forksafe import register

__all__ = ["LOGGER", "Failures", "contained", "log"]

LOGGER = "stagedroll"
"""The logger name of every event: given to the logger factory, and in each event's ``logger``."""

_log = structlog.get_logger(LOGGER)


def contained(exc: BaseException) -> bool:
    """Whether ``exc``, raised by user code (a hook, a processor), is contained, not raised.

    Everything is, except ``KeyboardInterrupt`` on the main thread: that is the user
    pressing Ctrl-C while the code ran, not its failure, and swallowing it would make the
    process impossible to interrupt.
    """
    return not (
        isinstance(exc, KeyboardInterrupt) and threading.current_thread() is threading.main_thread()
    )


def log(level: str, event: str, **fields: object) -> None:
    """Log through structlog; a broken logging setup must not break the host, so never raise.

    The event carries ``logger="stagedroll"`` whatever the logger factory, so that a service
    can route or drop stagedroll's events by name with any structlog configuration (the
    stdlib factory also names its ``logging.Logger`` so). A processor that raises anything
    (``SystemExit`` included) is contained, as a hook is (:func:`contained`).
    """
    try:
        getattr(_log, level)(event, logger=LOGGER, **fields)
    except BaseException as exc:  # nowhere left to report a broken logger
        if not contained(exc):
            raise


class Failures:
    """Counts internal failures by event name and logs each event at most once per interval."""

    __slots__ = ("__weakref__", "_clock", "_counts", "_interval", "_last", "_lock", "_suppressed")

    def __init__(
        self, *, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._interval = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        register(self)

    def _after_fork(self) -> None:
        """In a forked child: a fresh lock, and counts of this process only."""
        self._lock = threading.Lock()
        self._counts.clear()
        self._last.clear()
        self._suppressed.clear()

    def record(self, event: str, exc: BaseException | None = None, **fields: object) -> None:
        """Count one failure of kind ``event``; log it unless logged within the interval."""
        now = self._clock()
        with self._lock:
            self._counts[event] = self._counts.get(event, 0) + 1
            last = self._last.get(event)
            if last is not None and now - last < self._interval:
                self._suppressed[event] = self._suppressed.get(event, 0) + 1
                return
            self._last[event] = now
            suppressed = self._suppressed.pop(event, 0)
        log(
            "error", event, exc_info=exc, suppressed=suppressed, total=self._counts[event], **fields
        )

    def tally(self, event: str) -> None:
        """Count one failure of kind ``event`` that its caller logs itself."""
        with self._lock:
            self._counts[event] = self._counts.get(event, 0) + 1

    def count(self, event: str | None = None) -> int:
        """Failures of kind ``event`` so far, or of every kind."""
        if event is None:
            return sum(self._counts.values())
        return self._counts.get(event, 0)

    def counts(self) -> dict[str, int]:
        """Failures so far, by kind."""
        with self._lock:
            return dict(self._counts)
