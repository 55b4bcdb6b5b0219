"""The evidence exchange of a store shared by processes: flush the rollouts' queues, take totals.

It sits between the queues (:class:`~._pool.Outbox` and the recent errors of
:class:`~._errors.Errors`) and the gates that read the fleet's totals
(:meth:`~._health.Health.absorb`). The rollouts of one exchange go to the store together,
in one round trip when the store batches (:mod:`~.stores._batch`), so a process's load on
the store does not grow with the number of rollouts it serves. It receives only what it
uses: the store, the failure counter, and each rollout's name, state, gate, lock and
errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass

from ._errors import Errors
from ._failures import Failures
from ._health import Health
from ._pool import Batch, Unsure, flush_all, plan, totals
from ._state import RecentError, RolloutState
from .stores import Store
from .stores._batch import Flush, Flushed
from .stores._codec import dump_error

__all__ = ["Member", "exchange"]


@dataclass(frozen=True, slots=True)
class Member:
    """One rollout of an exchange."""

    rollout: str
    state: RolloutState
    """The state in force: its history id keys the units' digests."""
    health: Health | None
    """The gate whose queued evidence goes out (``None``: no health gate)."""
    lock: AbstractContextManager[object]
    """The rollout's counting lock, under which the gate changes."""
    errors: Errors | None
    """The recent errors to share (``None``: the store is not shared)."""


@dataclass(slots=True)
class _Sent:
    member: Member
    flush: Flush
    batch: Batch | None
    errors: list[RecentError]


def exchange(store: Store, failures: Failures, members: Sequence[Member]) -> None:
    """Flush the members' queued evidence and errors, take the fleet's totals; never raises.

    A failed flush is requeued (the store may be down) and counted (``store.flush_failed``);
    one that ended unsure requeues its units only, and drops its errors (they may have
    landed). Errors that failed alone go back (``store.errors_failed``).
    """
    with ExitStack() as held:
        sent = []
        for member in sorted(members, key=lambda m: m.rollout):  # one lock order everywhere
            batch = _take(held, failures, member)
            errors = (
                [] if member.errors is None else _checked(failures, member.rollout, member.errors)
            )
            if batch is None and not errors:
                continue
            if batch is None:
                flush = Flush(member.rollout, None, errors=errors)
            else:
                flush = plan(member.rollout, batch, member.state.history, errors=errors)
            sent.append(_Sent(member, flush, batch, errors))
        if not sent:
            return
        answers = flush_all(store, [s.flush for s in sent])
        for item, answer in zip(sent, answers, strict=True):
            _absorb(failures, item, answer)


def _checked(failures: Failures, rollout: str, errors: Errors) -> list[RecentError]:
    """The member's queued errors that a store takes; the others are dropped and counted.

    A malformed one (a clock that gave a time that is no finite number) would fail every
    flush it rides in, and with it the evidence.
    """
    good = []
    for error in errors.take():
        refused = _refused(error)
        if refused is None:
            good.append(error)
        else:
            failures.record("store.errors_refused", refused, rollout=rollout)
    return good


def _refused(error: RecentError) -> ValueError | None:
    """Why no store can keep ``error`` (see ``dump_error``), or ``None``."""
    try:
        dump_error(error)
    except ValueError as exc:
        return exc
    return None


def _take(held: ExitStack, failures: Failures, member: Member) -> Batch | None:
    """The member's queued batch (its flushes serialized), or ``None``: nothing to judge."""
    health = member.health
    outbox = health.outbox if health is not None else None
    if health is None or outbox is None or not member.state.version:
        return None  # not pooled, or no state to judge by (unknown, or unreadable)
    held.enter_context(outbox.flushing)
    with member.lock:
        batch = outbox.take(health.errors.share)
        dropped, outbox.dropped = outbox.dropped, 0
    if dropped:
        failures.record("store.outcomes_dropped", rollout=member.rollout, dropped=dropped)
    return batch


def _absorb(failures: Failures, item: _Sent, answer: tuple[Flushed, int] | Exception) -> None:
    member, batch, rollout = item.member, item.batch, item.member.rollout
    if isinstance(answer, Exception):
        unsure = isinstance(answer, Unsure)
        if batch is not None and member.health is not None and member.health.outbox:
            with member.lock:
                member.health.outbox.give_back(batch, events=not unsure)
        if item.errors and member.errors is not None and not unsure:
            member.errors.give_back(item.errors)
        event = "store.flush_failed" if batch is not None else "store.errors_failed"
        failures.record(event, answer, rollout=rollout)
        return
    flushed, refused = answer
    if flushed.errors_failed is not None and member.errors is not None:
        member.errors.give_back(item.errors)
        failures.record("store.errors_failed", flushed.errors_failed, rollout=rollout)
    if batch is None or member.health is None:
        return
    if refused:
        failures.record("store.units_refused", rollout=rollout, refused=refused)
    with member.lock:
        others = member.health.absorb(totals(batch, item.flush, flushed, refused))
    if others:
        failures.record("health.share_mismatch", rollout=rollout, share=batch.share,
                        elsewhere=list(others))  # fmt: skip
