"""Pooled evidence: the health test of a rollout judged on the counts of every process.

With a store shared by processes (SQLite, Redis), a process does not judge its own
outcomes alone: n processes judging apart would each risk a false freeze at ``alpha``, n
times ``alpha`` together. Instead each process queues its events (first errors and first
slow calls of units, new units per arm) in an :class:`Outbox`, and the store's background
refresh flushes them with :func:`flush`:

- every event is deduplicated in the store's exact set of the epoch (``add_units``): a
  unit's first event counts once however many processes saw it, and an event without a
  unit carries a random id, so that a flush that is retried after a partial failure
  counts nothing twice (it may count less: a conservative loss);
- the new events are added to counters of the stage visit (``add_counts``);
- the distinct units of each arm are counted (``count_distinct``).

Each process then sets its tests from the store's counters of every stage visit of the
epoch (the earlier ones at their shares, read again at each flush), so every process
evaluates the same e-process, a function of the store's counts, which only grow. Each
look is a look at that one e-process, and Ville's inequality bounds a false freeze at
``alpha`` for the fleet.

Keys in the store: counters per stage visit, ``{epoch}.{stage}`` (within an epoch the stage
only moves forward, so this names one visit); the sets of first events per epoch,
``{epoch}/errors`` and ``{epoch}/slow``; the distinct units of each arm per stage visit,
``{epoch}.{stage}/t`` and ``/c``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._rollout import Rollout
    from ._rollouts import Rollouts
    from .stores import Store

__all__ = ["MAX_QUEUED", "Batch", "Outbox", "Totals", "exchange", "flush"]

MAX_QUEUED = 100_000
"""Events and units an outbox holds at most (while the store is down); more are dropped."""

KINDS = ("errors", "slow")
_NO_UNIT = "\x00call:"  # the id of an event without a unit: this prefix and a random part


@dataclass(slots=True)
class Batch:
    """What one process saw in one stage visit since its last flush."""

    epoch: int
    stage: int
    ticket: int = 0
    """The rank of this batch among the outbox's flushes (later totals replace earlier)."""
    events: dict[str, list[str]] = field(default_factory=dict)
    """``"errors.t"``, ``"slow.c"``, …: the ids of first events (a unit, or a random id)."""
    units: dict[str, list[str]] = field(default_factory=dict)
    """``"t"``, ``"c"``: units new to this process in the stage visit."""

    @property
    def segment(self) -> str:
        """The key of the stage visit's counters."""
        return segment(self.epoch, self.stage)

    def size(self) -> int:
        """Events and units queued."""
        return sum(map(len, self.events.values())) + sum(map(len, self.units.values()))


def segment(epoch: int, stage: int) -> str:
    """The key of the counters of stage visit ``(epoch, stage)``."""
    return f"{epoch}.{stage}"


@dataclass(frozen=True, slots=True)
class Totals:
    """The fleet's counts of the epoch up to one stage visit, as the store returned them."""

    epoch: int
    stage: int
    ticket: int
    visits: tuple[tuple[int, dict[str, int]], ...]
    """``(stage, counters)`` of every stage of the epoch up to ``stage``, in order."""
    units_treatment: int
    units_control: int


class Outbox:
    """The events and units of one rollout waiting for the next flush; hold its lock."""

    __slots__ = ("absorbed", "batch", "dropped", "tickets")

    def __init__(self) -> None:
        self.batch = Batch(0, 0)
        self.dropped = 0
        """Events and units dropped because the outbox was full (the store was down)."""
        self.tickets = 0
        self.absorbed = -1
        """The ticket of the newest totals taken: older ones that arrive later are ignored."""

    def visit(self, epoch: int, stage: int) -> None:
        """Queue for stage visit ``(epoch, stage)`` from now on; drop another visit's queue."""
        if (self.batch.epoch, self.batch.stage) != (epoch, stage):
            self.batch = Batch(epoch, stage, self.batch.ticket)

    def event(self, kind: str, treatment: bool, key: str | None) -> None:
        """Queue the first event of ``kind`` (``errors``, ``slow``) of unit ``key``."""
        if self._full():
            return
        name = f"{kind}.{'t' if treatment else 'c'}"
        event_id = key if key is not None else _NO_UNIT + uuid.uuid4().hex
        self.batch.events.setdefault(name, []).append(event_id)

    def unit(self, treatment: bool, key: str) -> None:
        """Queue a unit new to this process on an arm."""
        if self._full():
            return
        self.batch.units.setdefault("t" if treatment else "c", []).append(key)

    def _full(self) -> bool:
        if self.batch.size() < MAX_QUEUED:
            return False
        self.dropped += 1
        return True

    def take(self) -> Batch:
        """The queued batch, with a new ticket, leaving an empty one for the same visit."""
        self.tickets += 1
        batch = self.batch
        batch.ticket = self.tickets
        self.batch = Batch(batch.epoch, batch.stage, batch.ticket)
        return batch

    def give_back(self, batch: Batch) -> None:
        """Queue ``batch`` again (its flush failed), unless its stage visit is over."""
        current = self.batch
        if (batch.epoch, batch.stage) != (current.epoch, current.stage):
            return
        for name, events in batch.events.items():
            current.events[name] = events + current.events.get(name, [])
        for arm, units in batch.units.items():
            current.units[arm] = units + current.units.get(arm, [])
        size = current.size()
        if size > MAX_QUEUED:
            self.dropped += size  # everything goes: the oldest and newest are equally good
            current.events.clear()
            current.units.clear()

    def current(self, totals: Totals) -> bool:
        """Whether ``totals`` are of the visit in force and newer than any taken; take them."""
        if (totals.epoch, totals.stage) != (self.batch.epoch, self.batch.stage):
            return False
        if totals.ticket <= self.absorbed:
            return False
        self.absorbed = totals.ticket
        return True


def flush(store: Store, rollout: str, batch: Batch) -> Totals:
    """Add ``batch`` to the store's counts and return the fleet's totals; may raise.

    An event counts only if its id is new to the epoch's set: a unit's first event counts
    once in the fleet, and a retried flush adds nothing twice.
    """
    visits = [  # read first: a failure here loses nothing
        (stage, store.read_counts(rollout, segment(batch.epoch, stage)))
        for stage in range(max(batch.stage, 0))  # the earlier visits of the epoch, if any
    ]
    counts: dict[str, int] = {}
    for kind in KINDS:
        treated = batch.events.get(f"{kind}.t", [])
        control = batch.events.get(f"{kind}.c", [])
        ids = treated + control
        new = store.add_units(rollout, f"{batch.epoch}/{kind}", ids) if ids else []
        counts[f"{kind}.t"] = sum(new[: len(treated)])
        counts[f"{kind}.c"] = sum(new[len(treated) :])
    if any(counts.values()):
        events = store.add_counts(rollout, batch.segment, counts)
    else:
        events = store.read_counts(rollout, batch.segment)  # an idle flush writes nothing
    visits.append((batch.stage, events))
    units_t = store.count_distinct(rollout, f"{batch.segment}/t", batch.units.get("t", []))
    units_c = store.count_distinct(rollout, f"{batch.segment}/c", batch.units.get("c", []))
    return Totals(batch.epoch, batch.stage, batch.ticket, tuple(visits), units_t, units_c)


def exchange(owner: Rollouts, rollout: Rollout) -> None:
    """Flush ``rollout``'s queued events and take the fleet's totals; never raises.

    A failed flush is requeued (the store may be down) and counted (``store.flush_failed``).
    """
    health = rollout.health
    if health is None or health.outbox is None:
        return
    lock = rollout.outcomes.lock
    with lock:
        batch = health.outbox.take()
        dropped, health.outbox.dropped = health.outbox.dropped, 0
    if dropped:
        owner.failures.record("store.outcomes_dropped", rollout=rollout.name, dropped=dropped)
    try:
        totals = flush(owner.store, rollout.name, batch)
    except Exception as exc:
        with lock:
            health.outbox.give_back(batch)
        owner.failures.record("store.flush_failed", exc, rollout=rollout.name)
        return
    shares = [stage.percent / 100 for stage in rollout._plan.stages]
    with lock:
        health.absorb(totals, shares)
