"""Comparing the old side's result with the new side's: verdicts, counters and samples.

A shadow (dark launch) and a migration both run the two sides of one call and compare the
results. :class:`Comparison` holds what they share: the user's ``compare``, ``ignore`` and
``redact`` functions, the counters (:class:`ComparisonStats`), and a bounded list of
samples (:class:`Mismatch`) of the calls where the new side disagreed or failed. It never
raises: a user function that fails is counted and logged, and the call it judged counts as
a mismatch (the comparison could not vouch for the new side).
"""

from __future__ import annotations

import reprlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._failures import Failures
from ._forksafe import register

__all__ = ["NOT_RUN", "Compared", "Comparison", "ComparisonStats", "Mismatch"]

NOT_RUN: Any = object()
"""A side that gave no result (it raised, or did not run): ``None`` in a :class:`Mismatch`."""

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 200
_repr.maxlist = _repr.maxdict = _repr.maxset = _repr.maxtuple = 10


def short_repr(value: object) -> str:
    """The default ``redact``: a ``repr`` cut to a few hundred characters."""
    try:
        return _repr.repr(value)
    except Exception as exc:  # pragma: no cover - reprlib names an object whose repr raises
        return f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One call where the new side disagreed with the old one, or failed.

    ``old`` and ``new`` are the two results after ``redact`` (by default a short ``repr``,
    so a result of ``None`` is ``'None'``); a side that gave no result (it raised, or did
    not run) is ``None``. ``error`` names the exception of the new side, or of ``side``,
    or one of ``compare`` or ``ignore``: ``"TimeoutError: message"``, or its type alone
    when ``redact`` is yours (a message often quotes the data that ``redact`` hides).
    ``unit`` is the call's unit as text, ``at`` the time by the
    :class:`~stagedroll.Rollouts`' clock.
    """

    unit: str | None
    old: object
    new: object
    error: str | None
    at: float
    side: str = "new"
    """The side whose error this is: ``"new"``, or ``"old"`` for a migration's old store
    that failed a write the caller did not see (a way back would serve that row stale)."""


@dataclass(frozen=True, slots=True)
class ComparisonStats:
    """What the comparisons of a shadow or a migration found so far.

    ``compared`` counts the calls whose two sides both ran; each is ``matched``,
    ``mismatched`` or ``ignored`` (a difference that ``ignore`` accepts). ``new_errors`` and
    ``old_errors`` count each side's exceptions (such calls are not compared), ``skipped``
    the calls whose new side was not run (too many in flight, an executor shut down, a
    sync candidate that returned an awaitable), ``failures`` the user functions
    (``compare``, ``ignore``, ``redact``, ``on_mismatch``) that raised.
    ``mean_latency_delta_s`` is the mean of the new side's latency minus the old side's,
    over the compared calls.
    """

    compared: int = 0
    matched: int = 0
    mismatched: int = 0
    ignored: int = 0
    new_errors: int = 0
    old_errors: int = 0
    skipped: int = 0
    failures: int = 0
    mean_latency_delta_s: float | None = None

    @property
    def mismatch_rate(self) -> float | None:
        """Mismatches per compared call, ``None`` before the first."""
        return self.mismatched / self.compared if self.compared else None


def _error_text(exc: BaseException) -> str:
    """``"TypeName: message"``, the message cut short; never raises."""
    try:
        message = str(exc)
    except Exception:  # an exception whose __str__ raises
        return type(exc).__name__
    return f"{type(exc).__name__}: {short_repr(message)[1:-1]}"


class Comparison:
    """The judge of one shadow or migration; thread-safe, and it never raises."""

    __slots__ = (
        "__weakref__",
        "_clock",
        "_compared",
        "_delta_s",
        "_failures",
        "_ignored",
        "_lock",
        "_matched",
        "_messages",
        "_mismatched",
        "_new_errors",
        "_old_errors",
        "_samples",
        "_skipped",
        "_user_failures",
        "compare",
        "ignore",
        "kind",
        "name",
        "on_mismatch",
        "redact",
    )

    def __init__(
        self,
        kind: str,
        name: str,
        failures: Failures,
        *,
        compare: Callable[[Any, Any], object] | None,
        ignore: Callable[[Any, Any], object] | None,
        redact: Callable[[Any], object] | None,
        samples: int,
        on_mismatch: Callable[[Mismatch], object] | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        for label, fn in (("compare", compare), ("ignore", ignore), ("redact", redact),
                          ("on_mismatch", on_mismatch)):  # fmt: skip
            if fn is not None and not callable(fn):
                raise TypeError(f"{label} must be callable, not {type(fn).__name__}")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
            raise ValueError(f"samples must be a whole number >= 0, not {samples!r}")
        self.kind = kind
        self.name = name
        self.compare = compare
        self.ignore = ignore
        self.redact = redact if redact is not None else short_repr
        self._messages = redact is None  # an exception's message may quote what redact hides
        self.on_mismatch = on_mismatch
        self._failures = failures
        self._clock = clock
        self._lock = threading.Lock()
        self._samples: deque[Mismatch] = deque(maxlen=samples)
        self._compared = self._matched = self._mismatched = self._ignored = 0
        self._new_errors = self._old_errors = self._skipped = self._user_failures = 0
        self._delta_s = 0.0
        register(self)

    def _after_fork(self) -> None:
        """In a forked child: a fresh lock, and counts of this process only."""
        self._lock = threading.Lock()
        self.clear()

    # -- verdicts ----------------------------------------------------------------------------

    def judge(self, key: str | None, old: object, new: object, delta_s: float) -> bool:
        """Compare one call's two results; return whether they mismatched (never raises)."""
        error = None
        step = "compare"
        try:
            same = bool(self.compare(old, new)) if self.compare is not None else bool(old == new)
            step = "ignore"
            ignored = not same and self.ignore is not None and bool(self.ignore(old, new))
        except Exception as exc:  # the comparison cannot vouch for the new side: a mismatch
            self._failed(step, exc)
            same = ignored = False
            error = self._text(exc)
        with self._lock:
            self._compared += 1
            self._delta_s += delta_s
            if same:
                self._matched += 1
            elif ignored:
                self._ignored += 1
            else:
                self._mismatched += 1
        if same or ignored:
            return False
        self._keep(key, old, new, error)
        return True

    def failed(self, key: str | None, exc: BaseException, *, old: object = NOT_RUN) -> None:
        """The new side raised ``exc``; ``old`` is what the old side gave, if it ran."""
        with self._lock:
            self._new_errors += 1
        self._keep(key, old, NOT_RUN, self._text(exc))

    def old_failed(self, key: str | None = None, exc: BaseException | None = None) -> None:
        """The old side raised; with ``exc`` (the caller did not see it), keep a sample."""
        with self._lock:
            self._old_errors += 1
        if exc is not None:
            self._keep(key, NOT_RUN, NOT_RUN, self._text(exc), side="old")

    def skip(self) -> None:
        """The new side of a call was not run (see :attr:`ComparisonStats.skipped`)."""
        with self._lock:
            self._skipped += 1

    def _keep(
        self, key: str | None, old: object, new: object, error: str | None, side: str = "new"
    ) -> None:
        """Keep a sample and tell ``on_mismatch``; a side that did not answer is ``None``."""
        if self._samples.maxlen == 0 and self.on_mismatch is None:
            return
        at = self._clock()
        try:
            sample = Mismatch(key, None if old is NOT_RUN else self.redact(old),
                              None if new is NOT_RUN else self.redact(new), error, at,
                              side)  # fmt: skip
        except Exception as exc:
            self._failed("redact", exc)
            sample = Mismatch(key, None, None, error or self._text(exc), at, side)
        with self._lock:
            self._samples.append(sample)
        if self.on_mismatch is not None:
            try:
                self.on_mismatch(sample)
            except Exception as exc:
                self._failed("on_mismatch", exc)

    def _text(self, exc: BaseException) -> str:
        """An exception as a sample shows it: its type, and its message.

        The message is left out when ``redact`` is the user's: it often quotes the data
        that ``redact`` hides.
        """
        return _error_text(exc) if self._messages else type(exc).__name__

    def _failed(self, function: str, exc: Exception) -> None:
        with self._lock:
            self._user_failures += 1
        event = f"{self.kind}.{function}_failed"
        if self._messages:
            self._failures.record(event, exc, rollout=self.name)
        else:  # the log too keeps the message out: it may quote what redact hides
            self._failures.record(event, rollout=self.name, error=type(exc).__name__)

    # -- reading -------------------------------------------------------------------------------

    def stats(self) -> ComparisonStats:
        """A frozen copy of the counters."""
        with self._lock:
            return ComparisonStats(
                compared=self._compared,
                matched=self._matched,
                mismatched=self._mismatched,
                ignored=self._ignored,
                new_errors=self._new_errors,
                old_errors=self._old_errors,
                skipped=self._skipped,
                failures=self._user_failures,
                mean_latency_delta_s=self._delta_s / self._compared if self._compared else None,
            )

    def samples(self) -> list[Mismatch]:
        """The kept samples, oldest first."""
        with self._lock:
            return list(self._samples)

    def clear(self) -> None:
        """Forget the counters and the samples."""
        with self._lock:
            self._samples.clear()
            self._compared = self._matched = self._mismatched = self._ignored = 0
            self._new_errors = self._old_errors = self._skipped = self._user_failures = 0
            self._delta_s = 0.0


class Compared:
    """What a shadow and a migration show of their comparisons (held in ``_comparison``)."""

    _comparison: Comparison

    @property
    def stats(self) -> ComparisonStats:
        """The counters: compared, matched, mismatched, each side's errors, skipped runs."""
        return self._comparison.stats()

    @property
    def mismatches(self) -> list[Mismatch]:
        """The latest mismatches and new-side errors (at most ``samples``), oldest first."""
        return self._comparison.samples()

    def clear(self) -> None:
        """Forget the counters and the samples (the rollout's health evidence stays)."""
        self._comparison.clear()
