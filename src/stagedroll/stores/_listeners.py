"""The listeners of a store: weakly held callbacks, told of changes without ever raising.

A callback is user code (a transition hook runs inside one): whatever it raises is
contained, ``BaseException`` included (``sys.exit()`` in a hook, a custom
``BaseException``), so the store's refresh thread and a committed transition go on. The one
exception that passes is ``KeyboardInterrupt`` on the main thread: that is Ctrl-C arriving
while the callback ran, not the callback's failure, and swallowing it would make a process
impossible to interrupt. (On any other thread Python never delivers it; one raised there
explicitly is contained like the rest.)
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

from .._failures import Failures, contained
from .._forksafe import register

__all__ = ["Listeners"]


def _ref(callback: Callable[..., Any]) -> Callable[[], Callable[..., Any] | None]:
    """A weak reference to a bound method (so watching does not keep its owner alive)."""
    if hasattr(callback, "__self__") and hasattr(callback, "__func__"):
        return weakref.WeakMethod(callback)

    def strong() -> Callable[..., Any]:
        return callback

    return strong


class Listeners:
    """Callbacks held weakly when they are bound methods.

    A callback that raises is counted in ``failures`` under ``event`` and logged (at most
    once a minute), never raised (:func:`contained`).
    """

    __slots__ = ("__weakref__", "_event", "_failures", "_lock", "_refs")

    def __init__(self, event: str, failures: Failures) -> None:
        self._event = event
        self._failures = failures
        self._lock = threading.Lock()
        self._refs: list[Callable[[], Callable[..., Any] | None]] = []
        register(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._refs)

    def add(self, callback: Callable[..., Any]) -> None:
        """Add ``callback``; drop the references whose owner is gone."""
        with self._lock:
            self._refs = [r for r in self._refs if r() is not None]
            self._refs.append(_ref(callback))

    def clear(self) -> None:
        """Forget every callback."""
        with self._lock:
            self._refs = []

    def call(self, *args: object) -> None:
        """Call every live callback with ``args``; log (never raise) what they raise."""
        for ref in self._refs:  # a list replaced, never mutated: safe to iterate unlocked
            callback = ref()
            if callback is None:
                continue
            try:
                callback(*args)
            except BaseException as exc:  # a listener must not undo a committed transition
                if not contained(exc):
                    raise
                fields = {"rollout": args[0]} if args and isinstance(args[0], str) else {}
                self._failures.record(self._event, exc, **fields)
