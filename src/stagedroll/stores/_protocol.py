"""The :class:`Store` protocol: the few operations a state backend must offer."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Protocol, runtime_checkable

from .._state import RecentError, RolloutState, Transition

__all__ = ["StateListener", "Store", "SyncingStore"]

StateListener = Callable[[str, RolloutState], None]
"""Called with a rollout's name and its new state after a transition through the store."""


@runtime_checkable
class Store(Protocol):
    """Where rollout state, its history and the pooled outcome counts live.

    A store is small on purpose: load a state, replace it by compare-and-set together with
    its history entry, read the history, list the rollouts it holds, add and read outcome
    counts and recent errors, and tell listeners about changes. The decision path never
    calls a store; only refreshes, transitions and outcome flushes do, so a store may do I/O
    and may raise (the caller turns failures into logged, counted fallbacks).

    Counters and unit sets are named by free-form strings (``segment``, ``scope``) that the
    caller chooses; a store keeps them apart per rollout and may expire them after a while.
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

    def names(self) -> list[str]:
        """Return the names of the rollouts that have a stored state, sorted.

        A rollout of which the store keeps only counters, unit sets or errors is not one.
        """
        ...

    def add_counts(self, rollout: str, segment: str, counts: Mapping[str, int]) -> dict[str, int]:
        """Add ``counts`` to the segment's counters atomically; return all its counters."""
        ...

    def read_counts(self, rollout: str, segment: str) -> dict[str, int]:
        """Return the segment's counters (``{}`` when none was ever added)."""
        ...

    def add_units(self, rollout: str, scope: str, units: Collection[str]) -> list[bool]:
        """Remember ``units`` in the scope's set; say of each whether it was new there.

        Exact: of many processes adding the same unit, exactly one is told it is new. This
        deduplicates the units whose first error the health test counts.
        """
        ...

    def count_distinct(self, rollout: str, scope: str, units: Collection[str]) -> int:
        """Add ``units`` to the scope's distinct count; return the count (may be estimated)."""
        ...

    def add_errors(self, rollout: str, errors: Sequence[RecentError]) -> None:
        """Merge ``errors`` into the rollout's recent errors, atomically.

        One entry per ``(arm, type, message)``: counts add, ``first_seen`` is the earliest,
        ``last_seen`` the latest; at most 20 entries are kept, the most recently seen.
        Raises ``ValueError`` for a malformed error (nothing is then written).
        """
        ...

    def read_errors(self, rollout: str) -> list[RecentError]:
        """Return the rollout's recent errors, the most recently seen first (``[]``: none).

        Stored entries that cannot be read are skipped, never raised.
        """
        ...

    def watch(self, listener: StateListener) -> None:
        """Call ``listener`` after every change of a state that this object sees.

        That is every successful compare-and-set made through it, and for a store shared by
        processes, each change made elsewhere, once its refresh has read it. The store keeps
        only a weak reference to bound methods, so watching does not keep the watcher alive.
        """
        ...

    def close(self) -> None:
        """Release the store's resources; it is not used afterwards."""
        ...


@runtime_checkable
class SyncingStore(Store, Protocol):
    """A store shared by processes, which refreshes and flushes in the background.

    Every ``refresh_interval`` seconds it calls each ``before_refresh`` callback, where a
    :class:`~stagedroll.Rollouts` flushes its pooled outcome counts, then reads the states
    of the rollouts it has loaded (telling its listeners of changes), then calls each
    ``on_refresh`` callback, where a ``Rollouts`` takes its automatic steps, off the
    callers' threads.
    """

    refresh_interval: float

    @property
    def down(self) -> bool:
        """Whether the last refresh failed: the backend is unreachable (the refresh backs off)."""
        ...

    def before_refresh(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` at the start of each refresh, before it reads the states.

        Bound methods are weakly held. A :class:`~stagedroll.Rollouts` sends its pooled
        evidence there, so that a store that batches (:mod:`stagedroll.stores._batch`)
        answers with its marker of change, and the refresh needs no read of its own.
        """
        ...

    def on_refresh(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` after each refresh (bound methods weakly held)."""
        ...

    def supervise(self) -> None:
        """Start the refresh thread again if it died; cheap, and never raises.

        Callers' calls use it now and then (at most once a second), so that a process whose
        calls never reach the store still gets its refresh back.
        """
        ...
