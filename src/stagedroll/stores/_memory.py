"""The in-memory store: the default, and the test double."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence

from .._failures import Failures
from .._forksafe import register
from .._state import RecentError, RolloutState, Transition
from ._codec import merge_errors
from ._listeners import Listeners
from ._protocol import StateListener

__all__ = ["MemoryStore", "check_version"]


def check_version(expected_version: int, state: RolloutState) -> None:
    """Raise :class:`ValueError` unless ``state.version`` is ``expected_version + 1``."""
    if state.version != expected_version + 1:
        raise ValueError(
            f"the new state's version must be {expected_version + 1}, not {state.version}"
        )


class MemoryStore:
    """Keeps state, history and outcome counts in this process; lost when it exits.

    Thread-safe. Several :class:`~stagedroll.Rollouts` may share one instance, and each sees
    the others' transitions at once. ``max_history`` bounds the history kept per rollout.
    """

    def __init__(self, *, max_history: int = 1000) -> None:
        if max_history < 1:
            raise ValueError("max_history must be at least 1")
        self._max_history = max_history
        self._lock = threading.Lock()
        self._states: dict[str, RolloutState] = {}
        self._history: defaultdict[str, list[Transition]] = defaultdict(list)
        self._counts: defaultdict[tuple[str, str], dict[str, int]] = defaultdict(dict)
        self._units: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
        self._errors: dict[str, list[RecentError]] = {}
        self.failures = Failures()
        """Failures of this store's listeners (``store.listener_failed``), counted and logged."""
        self._listeners = Listeners("store.listener_failed", self.failures)
        register(self)

    def _after_fork(self) -> None:
        """In a forked child: a fresh lock (the data is the child's own copy)."""
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryStore(rollouts={len(self._states)})"

    def load(self, rollout: str) -> RolloutState | None:
        """Return the rollout's state, or ``None``."""
        return self._states.get(rollout)

    def compare_and_set(
        self, rollout: str, expected_version: int, state: RolloutState, transition: Transition
    ) -> bool:
        """Replace the state if its version is ``expected_version``; see :class:`Store`."""
        check_version(expected_version, state)
        with self._lock:
            current = self._states.get(rollout)
            if (current.version if current is not None else 0) != expected_version:
                return False
            self._states[rollout] = state
            entries = self._history[rollout]
            entries.append(transition)
            if len(entries) > self._max_history:
                del entries[: len(entries) - self._max_history]
        self._listeners.call(rollout, state)
        return True

    def history(self, rollout: str, limit: int | None = None) -> list[Transition]:
        """Return the rollout's transitions, newest first."""
        with self._lock:
            entries = self._history.get(rollout, [])
            newest_first = entries[::-1]
        return newest_first if limit is None else newest_first[: max(limit, 0)]

    def names(self) -> list[str]:
        """Return the names of the rollouts that have a state, sorted."""
        with self._lock:
            return sorted(self._states)

    def add_counts(self, rollout: str, segment: str, counts: Mapping[str, int]) -> dict[str, int]:
        """Add ``counts`` to the segment's counters; return them all."""
        with self._lock:
            totals = self._counts[rollout, segment]
            for name, n in counts.items():
                totals[name] = totals.get(name, 0) + n
            return dict(totals)

    def read_counts(self, rollout: str, segment: str) -> dict[str, int]:
        """Return the segment's counters."""
        with self._lock:
            return dict(self._counts.get((rollout, segment), {}))

    def add_units(self, rollout: str, scope: str, units: Collection[str]) -> list[bool]:
        """Remember ``units`` in the scope's set; say of each whether it was new."""
        with self._lock:
            seen = self._units[rollout, "first:" + scope]
            new = []
            for unit in units:
                new.append(unit not in seen)
                seen.add(unit)
            return new

    def count_distinct(self, rollout: str, scope: str, units: Collection[str]) -> int:
        """Add ``units`` to the scope's distinct units; return how many there are (exact)."""
        with self._lock:
            seen = self._units[rollout, "distinct:" + scope]
            seen.update(units)
            return len(seen)

    def add_errors(self, rollout: str, errors: Sequence[RecentError]) -> None:
        """Merge ``errors`` into the rollout's recent errors; see :class:`Store`."""
        with self._lock:
            merged = merge_errors(self._errors.get(rollout, ()), errors)
            if merged:
                self._errors[rollout] = merged

    def read_errors(self, rollout: str) -> list[RecentError]:
        """Return the rollout's recent errors, the most recently seen first."""
        with self._lock:
            return list(self._errors.get(rollout, ()))

    def watch(self, listener: StateListener) -> None:
        """Call ``listener`` after each successful compare-and-set (bound methods weakly held)."""
        self._listeners.add(listener)

    def close(self) -> None:
        """Forget the listeners; the data stays readable."""
        self._listeners.clear()
