"""The evidence exchange of a store shared by processes: flush a rollout's events, take totals.

It sits between the queue (:class:`~._pool.Outbox`, :func:`~._pool.flush`) and the gate
that reads the fleet's totals (:meth:`~._health.Health.absorb`), and receives only what it
uses: the store, the failure counter, the rollout's name and state, its gate and its lock.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from ._failures import Failures
from ._health import Health
from ._pool import Unsure, flush
from ._state import RolloutState
from .stores import Store

__all__ = ["exchange"]


def exchange(
    store: Store,
    failures: Failures,
    *,
    rollout: str,
    state: RolloutState,
    health: Health,
    lock: AbstractContextManager[object],
) -> None:
    """Flush ``health``'s queued events of ``rollout`` and take the fleet's totals; never raises.

    ``state`` is the state in force (its history id keys the units' digests), ``lock`` the
    rollout's counting lock, under which the gate changes. A failed flush is requeued (the
    store may be down) and counted (``store.flush_failed``); one that ended unsure requeues
    its units only.
    """
    outbox = health.outbox
    if outbox is None or not state.version:
        return  # not shared, or no state to judge by (unknown, or unreadable: kept for later)
    with outbox.flushing:
        with lock:
            batch = outbox.take(health.errors.share)
            dropped, outbox.dropped = outbox.dropped, 0
        if dropped:
            failures.record("store.outcomes_dropped", rollout=rollout, dropped=dropped)
        try:
            totals = flush(store, rollout, batch, state.history)
        except Exception as exc:
            with lock:
                outbox.give_back(batch, events=not isinstance(exc, Unsure))
            failures.record("store.flush_failed", exc, rollout=rollout)
            return
        if totals.refused:
            failures.record("store.units_refused", rollout=rollout, refused=totals.refused)
        with lock:
            others = health.absorb(totals)
        if others:
            failures.record("health.share_mismatch", rollout=rollout, share=batch.share,
                            elsewhere=list(others))  # fmt: skip
