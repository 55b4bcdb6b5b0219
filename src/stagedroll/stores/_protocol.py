"""The :class:`Store` protocol: the few operations a state backend must offer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from .._state import RolloutState, Transition

__all__ = ["StateListener", "Store"]

StateListener = Callable[[str, RolloutState], None]
"""Called with a rollout's name and its new state after a transition through the store."""


@runtime_checkable
class Store(Protocol):
    """Where rollout state and its history live.

    A store is small on purpose: load a state, replace it by compare-and-set together with
    its history entry, read the history, and tell listeners about changes made through it.
    The decision path never calls a store; only refreshes and transitions do, so a store may
    do I/O and may raise (the caller turns failures into logged, counted fallbacks).
    """

    def load(self, rollout: str) -> RolloutState | None:
        """Return the rollout's state, or ``None`` if the store has never seen it."""
        ...

    def compare_and_set(
        self, rollout: str, expected_version: int, state: RolloutState, transition: Transition
    ) -> bool:
        """Replace the state if its version is ``expected_version`` (``0``: absent).

        ``state.version`` must be ``expected_version + 1``. On success the transition is
        appended to the history in the same atomic step and ``True`` is returned; when the
        stored version differs, nothing changes and ``False`` is returned.
        """
        ...

    def history(self, rollout: str, limit: int | None = None) -> list[Transition]:
        """Return the rollout's transitions, newest first, at most ``limit`` of them."""
        ...

    def watch(self, listener: StateListener) -> None:
        """Call ``listener`` after every successful compare-and-set made through this object.

        The store keeps only a weak reference to bound methods, so watching does not keep
        the watcher alive. Changes made by other processes are seen by reloading.
        """
        ...

    def close(self) -> None:
        """Release the store's resources; it is not used afterwards."""
        ...
