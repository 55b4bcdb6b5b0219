"""A controllable clock, to drive bake times and automatic steps in tests."""

from __future__ import annotations

import math
import threading

from .. import parse_duration

__all__ = ["FakeClock"]


class FakeClock:
    """A clock that moves only when told to: pass it as ``Rollouts(..., clock=FakeClock())``.

    Calling the clock returns the current time in seconds, as :func:`time.time` does; it
    starts at ``start`` (by default 2023-11-14, a fixed moment, so that histories are
    reproducible). :meth:`advance` moves it forward by a duration, :meth:`set` to a
    moment. It never goes back: a bake time counts from the moment its stage began, and a
    clock that went back would make a stage wait again or stamp history out of order, so
    :meth:`set` refuses an earlier moment. It is safe to use from several threads.

    >>> clock = FakeClock(start=100.0)
    >>> clock.advance("30m")
    1900.0
    >>> clock()
    1900.0
    """

    __slots__ = ("_lock", "_now")

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._lock = threading.Lock()
        self._now = _number(start, "start")

    def __call__(self) -> float:
        """The current time, in seconds."""
        return self._now

    @property
    def now(self) -> float:
        """The current time, in seconds."""
        return self._now

    def advance(self, seconds: float | str) -> float:
        """Move the clock forward and return the new time.

        ``seconds`` is a number of seconds (``0`` leaves the clock where it is) or a
        duration such as ``"30m"`` or ``"1h30m"``, read by :func:`stagedroll.parse_duration`
        (so it must be positive). A negative, infinite or NaN number, or text that is not a
        duration, raises :class:`ValueError`.
        """
        if isinstance(seconds, str):
            step = parse_duration(seconds)
        else:
            step = _number(seconds, "seconds")
            if step < 0:
                raise ValueError(
                    f"a FakeClock only moves forward: cannot advance by {seconds!r} seconds"
                )
        with self._lock:
            moved = self._now + step
            if moved == math.inf:
                raise ValueError(f"advancing by {seconds!r} takes the clock beyond any time")
            self._now = moved
            return moved

    def set(self, when: float) -> float:
        """Move the clock to the moment ``when`` (seconds) and return it.

        ``when`` may equal the current time, but not be earlier: raises :class:`ValueError`,
        since a clock that went back would confuse bake times and the order of history.
        """
        moment = _number(when, "when")
        with self._lock:
            if moment < self._now:
                raise ValueError(
                    f"a FakeClock only moves forward: cannot set it back from {self._now!r}"
                    f" to {moment!r}"
                )
            self._now = moment
            return moment

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r})"


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"{name} must be a finite number, not {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, not {value!r}")
    return number
