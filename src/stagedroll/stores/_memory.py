"""The in-memory store: the default, and the test double."""

from __future__ import annotations

import threading
import weakref
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from .._failures import log
from .._forksafe import register
from .._state import RolloutState, Transition
from ._protocol import StateListener

__all__ = ["MemoryStore"]


class MemoryStore:
    """Keeps state and history in this process; lost when it exits.

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
        self._listeners: list[Callable[[], Any]] = []
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
        if state.version != expected_version + 1:
            raise ValueError(
                f"the new state's version must be {expected_version + 1}, not {state.version}"
            )
        with self._lock:
            current = self._states.get(rollout)
            if (current.version if current is not None else 0) != expected_version:
                return False
            self._states[rollout] = state
            entries = self._history[rollout]
            entries.append(transition)
            if len(entries) > self._max_history:
                del entries[: len(entries) - self._max_history]
            listeners = list(self._listeners)
        failed: list[Exception] = []
        for ref in listeners:
            listener = ref()
            if listener is None:
                continue
            try:
                listener(rollout, state)
            except Exception as exc:  # a listener must not undo a committed transition
                failed.append(exc)
        for error in failed:
            log("error", "store.listener_failed", rollout=rollout, exc_info=error)
        return True

    def history(self, rollout: str, limit: int | None = None) -> list[Transition]:
        """Return the rollout's transitions, newest first."""
        with self._lock:
            entries = self._history.get(rollout, [])
            newest_first = entries[::-1]
        return newest_first if limit is None else newest_first[: max(limit, 0)]

    def watch(self, listener: StateListener) -> None:
        """Call ``listener`` after each successful compare-and-set (bound methods weakly held)."""
        ref: Callable[[], Any]
        if hasattr(listener, "__self__") and hasattr(listener, "__func__"):
            ref = weakref.WeakMethod(listener)  # do not keep the watcher alive
        else:

            def ref() -> StateListener:
                return listener

        with self._lock:
            self._listeners = [r for r in self._listeners if r() is not None]
            self._listeners.append(ref)

    def close(self) -> None:
        """Forget the listeners; the data stays readable."""
        with self._lock:
            self._listeners.clear()
