"""Pooled evidence: the health test of a rollout judged on the counts of every process.

With a store shared by processes (SQLite, Redis), a process does not judge its own
outcomes alone: n processes judging apart would each risk a false freeze at ``alpha``, n
times ``alpha`` together. Instead each process queues its events (first errors and first
slow calls of units, new units per arm) in an :class:`Outbox`, and the store's background
refresh flushes them with :func:`flush`: units are deduplicated fleet-wide (exactly, so a
unit counts once however many processes saw it), the event counts are added to counters
shared by all, and every process's test is set to those totals. The e-process is then the
fleet's one sequence of events, looked at by each process at its flushes, and Ville's
inequality bounds a false freeze at ``alpha`` for the fleet.

Keys in the store: counters per stage visit, ``{epoch}.{stage}``; the sets of units with a
first event per epoch (``{epoch}/errors``, ``{epoch}/slow``), as the local test has them; the
distinct units of each arm per stage visit (``{epoch}.{stage}/t`` and ``/c``).
"""

from __future__ import annotations

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


@dataclass(slots=True)
class Batch:
    """What one process saw in one stage visit since its last flush."""

    epoch: int
    stage: int
    events: dict[str, list[str | None]] = field(default_factory=dict)
    """``"errors.t"``, ``"slow.c"``, …: the units of first events (``None``: no unit)."""
    units: dict[str, list[str]] = field(default_factory=dict)
    """``"t"``, ``"c"``: units new to this process in the stage visit."""

    @property
    def segment(self) -> str:
        return f"{self.epoch}.{self.stage}"

    def size(self) -> int:
        return sum(map(len, self.events.values())) + sum(map(len, self.units.values()))


@dataclass(frozen=True, slots=True)
class Totals:
    """The fleet's counts of one stage visit, as the store returned them."""

    epoch: int
    stage: int
    events: dict[str, int]
    units_treatment: int
    units_control: int


class Outbox:
    """The events and units of one rollout waiting for the next flush; hold its lock."""

    __slots__ = ("batch", "dropped")

    def __init__(self) -> None:
        self.batch = Batch(0, 0)
        self.dropped = 0
        """Events and units dropped because the outbox was full (the store was down)."""

    def visit(self, epoch: int, stage: int) -> None:
        """Queue for stage visit ``(epoch, stage)`` from now on; drop another visit's queue."""
        if (self.batch.epoch, self.batch.stage) != (epoch, stage):
            self.batch = Batch(epoch, stage)

    def event(self, kind: str, treatment: bool, key: str | None) -> None:
        """Queue the first event of ``kind`` (``errors``, ``slow``) of unit ``key``."""
        if self._full():
            return
        name = f"{kind}.{'t' if treatment else 'c'}"
        self.batch.events.setdefault(name, []).append(key)

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
        """The queued batch, leaving an empty one for the same stage visit."""
        batch = self.batch
        self.batch = Batch(batch.epoch, batch.stage)
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


def flush(store: Store, rollout: str, batch: Batch) -> Totals:
    """Add ``batch`` to the store's counts and return the fleet's totals; may raise.

    A unit's first event counts only if no process had counted it before in the epoch.
    """
    counts: dict[str, int] = {}
    for kind in KINDS:
        treated = batch.events.get(f"{kind}.t", [])
        control = batch.events.get(f"{kind}.c", [])
        keyed = [k for k in treated if k is not None] + [k for k in control if k is not None]
        new = store.add_units(rollout, f"{batch.epoch}/{kind}", keyed) if keyed else []
        n_treated = sum(1 for k in treated if k is not None)
        counts[f"{kind}.t"] = sum(new[:n_treated]) + treated.count(None)
        counts[f"{kind}.c"] = sum(new[n_treated:]) + control.count(None)
    if any(counts.values()):
        events = store.add_counts(rollout, batch.segment, counts)
    else:
        events = store.read_counts(rollout, batch.segment)  # an idle flush writes nothing
    units_t = store.count_distinct(rollout, f"{batch.segment}/t", batch.units.get("t", []))
    units_c = store.count_distinct(rollout, f"{batch.segment}/c", batch.units.get("c", []))
    return Totals(batch.epoch, batch.stage, events, units_t, units_c)


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
    with lock:
        health.absorb(totals)
