"""Pooled evidence: the health test of a rollout judged on the counts of every process.

With a store shared by processes (SQLite, Redis), a process does not judge its own
outcomes alone: n processes judging apart would each risk a false freeze at ``alpha``, n
times ``alpha`` together. Instead each process queues its events (first errors and first
slow calls of units, new units per arm) in an :class:`Outbox`, and the store's background
refresh flushes them with :func:`flush`:

- every event is deduplicated in the store's exact set of the epoch (``add_units``): a
  unit's first event counts once however many processes saw it, and the events without a
  unit of one flush go as a parcel with a random id, so that a flush that is retried after
  a partial failure counts nothing twice (it may count less: a conservative loss);
- the new events are added to counters of the stage visit (``add_counts``);
- the distinct units of each arm are counted (``count_distinct``).

Each process then sets its tests from the store's counters of every stage visit of the
epoch (the earlier ones at their shares, read again at each flush), so every process
evaluates the same e-process, a function of the store's counts, which only grow. Each
look is a look at that one e-process, and Ville's inequality bounds a false freeze at
``alpha`` for the fleet (up to the events in flight around a stage change: the earlier
visits are not read in one snapshot with the current one).

Keys in the store: counters per stage visit, ``{epoch}.{stage}`` (within an epoch the stage
only moves forward, so this names one visit); the sets of first events per epoch,
``{epoch}/errors`` and ``{epoch}/slow``, and of parcel ids, ``{epoch}/flushes``; the
distinct units of each arm per stage visit, ``{epoch}.{stage}/t`` and ``/c``.
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
_PARCEL = "\x00flush:"  # the id of a flush's events without a unit: prefix, process, count


@dataclass(slots=True)
class Batch:
    """What one process saw in one stage visit since its last flush."""

    epoch: int
    stage: int
    events: dict[str, list[str]] = field(default_factory=dict)
    """``"errors.t"``, ``"slow.c"``, …: the units of first events."""
    parcels: list[tuple[str, dict[str, int]]] = field(default_factory=list)
    """Events without a unit, counted per flush under a random id: ``(id, {"errors.t": n})``."""
    units: dict[str, list[str]] = field(default_factory=dict)
    """``"t"``, ``"c"``: units new to this process in the stage visit."""

    @property
    def segment(self) -> str:
        """The key of the stage visit's counters."""
        return segment(self.epoch, self.stage)

    def size(self) -> int:
        """Events and units queued."""
        calls = sum(sum(counts.values()) for _, counts in self.parcels)
        return sum(map(len, self.events.values())) + sum(map(len, self.units.values())) + calls


def segment(epoch: int, stage: int) -> str:
    """The key of the counters of stage visit ``(epoch, stage)``."""
    return f"{epoch}.{stage}"


@dataclass(frozen=True, slots=True)
class Totals:
    """The fleet's counts of the epoch up to one stage visit, as the store returned them."""

    epoch: int
    stage: int
    visits: tuple[tuple[int, dict[str, int]], ...]
    """``(stage, counters)`` of every stage of the epoch up to ``stage``, in order."""
    units_treatment: int
    units_control: int


class Outbox:
    """The events and units of one rollout waiting for the next flush; hold its lock."""

    __slots__ = ("_calls", "_flushes", "_process", "batch", "dropped", "pooled")

    def __init__(self) -> None:
        self.batch = Batch(0, 0)
        self._calls: dict[str, int] = {}  # events without a unit since the last flush
        self._process = uuid.uuid4().hex  # parcel ids: unique to this process...
        self._flushes = 0  # ...and to the flush
        self.dropped = 0
        """Events and units dropped because the outbox was full (the store was down)."""
        self.pooled: dict[int, dict[str, int]] = {}
        """The largest counters seen per stage of the visit's epoch (totals only grow)."""

    def renew(self) -> None:
        """In a forked child: drop the parent's queue, and take ids of its own."""
        self.batch = Batch(self.batch.epoch, self.batch.stage)
        self._calls = {}
        self._process = uuid.uuid4().hex
        self.pooled = {}

    def visit(self, epoch: int, stage: int) -> None:
        """Queue for stage visit ``(epoch, stage)`` from now on; drop another visit's queue."""
        if (self.batch.epoch, self.batch.stage) != (epoch, stage):
            if epoch != self.batch.epoch:
                self.pooled = {}
            self.batch = Batch(epoch, stage)
            self._calls = {}

    def event(self, kind: str, treatment: bool, key: str | None) -> None:
        """Queue the first event of ``kind`` (``errors``, ``slow``) of unit ``key``."""
        if self._full():
            return
        name = f"{kind}.{'t' if treatment else 'c'}"
        if key is None:
            self._calls[name] = self._calls.get(name, 0) + 1
        else:
            self.batch.events.setdefault(name, []).append(key)

    def unit(self, treatment: bool, key: str) -> None:
        """Queue a unit new to this process on an arm."""
        if self._full():
            return
        self.batch.units.setdefault("t" if treatment else "c", []).append(key)

    def _full(self) -> bool:
        if self.batch.size() + sum(self._calls.values()) < MAX_QUEUED:
            return False
        self.dropped += 1
        return True

    def take(self) -> Batch:
        """The queued batch, leaving an empty one for the same visit."""
        batch = self.batch
        if self._calls:
            self._flushes += 1
            batch.parcels.append((f"{_PARCEL}{self._process}:{self._flushes}", self._calls))
            self._calls = {}
        self.batch = Batch(batch.epoch, batch.stage)
        return batch

    def give_back(self, batch: Batch) -> None:
        """Queue ``batch`` again (its flush failed), unless its stage visit is over.

        Its parcels keep their ids: if the failed flush did count them, the retry does not.
        """
        current = self.batch
        if (batch.epoch, batch.stage) != (current.epoch, current.stage):
            return
        for name, events in batch.events.items():
            current.events[name] = events + current.events.get(name, [])
        current.parcels[:0] = batch.parcels
        for arm, units in batch.units.items():
            current.units[arm] = units + current.units.get(arm, [])
        size = current.size()
        if size > MAX_QUEUED:
            self.dropped += size  # everything goes: the oldest and newest are equally good
            current.events.clear()
            current.parcels.clear()
            current.units.clear()

    def merge(self, totals: Totals) -> list[tuple[int, dict[str, int]]] | None:
        """The epoch's counters with ``totals`` taken in, or ``None`` for another visit's.

        Each counter keeps the largest value seen: totals only grow, and of two flushes
        that crossed, the older answer must not undo the newer.
        """
        if (totals.epoch, totals.stage) != (self.batch.epoch, self.batch.stage):
            return None
        for stage, counters in totals.visits:
            kept = self.pooled.setdefault(stage, {})
            for name, value in counters.items():
                kept[name] = max(kept.get(name, 0), value)
        return [(stage, self.pooled.get(stage, {})) for stage, _ in totals.visits]


def flush(store: Store, rollout: str, batch: Batch) -> Totals:
    """Add ``batch`` to the store's counts and return the fleet's totals; may raise.

    A unit's first event counts only if no process counted it before in the epoch, and a
    parcel of events without a unit only if its id is new: a retried flush adds nothing
    twice (treatment ids go first, so a flush cut short loses treatment events first:
    the evidence can only fall short, never exceed).
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
    if batch.parcels:
        ids = [parcel_id for parcel_id, _ in batch.parcels]
        new = store.add_units(rollout, f"{batch.epoch}/flushes", ids)
        for is_new, (_, calls) in zip(new, batch.parcels, strict=True):
            if is_new:
                for name, n in calls.items():
                    counts[name] = counts.get(name, 0) + n
    if any(counts.values()):
        events = store.add_counts(rollout, batch.segment, counts)
    else:
        events = store.read_counts(rollout, batch.segment)  # an idle flush writes nothing
    visits.append((batch.stage, events))
    units_t = store.count_distinct(rollout, f"{batch.segment}/t", batch.units.get("t", []))
    units_c = store.count_distinct(rollout, f"{batch.segment}/c", batch.units.get("c", []))
    return Totals(batch.epoch, batch.stage, tuple(visits), units_t, units_c)


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
