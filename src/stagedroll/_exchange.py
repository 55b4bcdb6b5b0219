"""The evidence exchange of a store shared by processes: flush a rollout's events, take totals.

It sits between the queue (:class:`~._pool.Outbox`, :func:`~._pool.flush`) and the gate
that reads the fleet's totals (:meth:`~._health.Health.absorb`), and receives only what it
uses: the store, the failure counter, the rollout's name and state, its gate and its lock.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from ._errors import Errors
from ._failures import Failures
from ._health import Health
from ._pool import Unsure, flush
from ._state import RolloutState
from .stores import Store

__all__ = ["exchange", "share_errors"]


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


def share_errors(store: Store, failures: Failures, *, rollout: str, errors: Errors) -> None:
    """Add the exceptions ``errors`` kept since the last call to the store's; never raises.

    A failed write is queued again (the store may be down) and counted
    (``store.errors_failed``), so every process's recent errors reach ``status`` anywhere.
    """
    taken = errors.take()
    if not taken:
        return
    try:
        store.add_errors(rollout, taken)
    except Exception as exc:
        errors.give_back(taken)
        failures.record("store.errors_failed", exc, rollout=rollout)
