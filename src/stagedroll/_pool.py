"""Pooled evidence: the health test of a rollout judged on the counts of every process.

With a store shared by processes (SQLite, Redis), a process does not judge its own
outcomes alone: n processes judging apart would each risk a false freeze at ``alpha``, n
times ``alpha`` together. Instead each process queues its events (first errors and first
slow calls of units, new units per arm) in an :class:`Outbox`, and the store's background
refresh flushes them with :func:`flush`:

- every unit's first event is deduplicated in the store's exact set of the epoch
  (``add_units``): it counts once however many processes saw it; events of calls without
  a unit are counted;
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
``{epoch}/errors`` and ``{epoch}/slow``; the distinct units of each arm per stage visit,
``{epoch}.{stage}/t`` and ``/c``.

A flush is retried only while nothing it sent can have counted: once the counters may have
changed (``add_counts`` failed, or a later step did), its events are dropped rather than
sent again, so nothing counts twice (which would break the bound); a loss only weakens the
evidence. A unit's event sent again is no longer new in the set, so it cannot count twice.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._rollout import Rollout
    from ._rollouts import Rollouts
    from .stores import Store

__all__ = ["MAX_QUEUED", "Batch", "Outbox", "Totals", "Unsure", "exchange", "flush"]

MAX_QUEUED = 100_000
"""Events and units an outbox holds at most (while the store is down); more are dropped."""

KINDS = ("errors", "slow")


@dataclass(slots=True)
class Batch:
    """What one process saw in one stage visit since its last flush."""

    epoch: int
    stage: int
    events: dict[str, list[str]] = field(default_factory=dict)
    """``"errors.t"``, ``"slow.c"``, …: the units of first events."""
    calls: dict[str, int] = field(default_factory=dict)
    """``"errors.t"``, …: events of calls without a unit (per-request bucketing), counted."""
    units: dict[str, list[str]] = field(default_factory=dict)
    """``"t"``, ``"c"``: units new to this process in the stage visit."""

    @property
    def segment(self) -> str:
        """The key of the stage visit's counters."""
        return segment(self.epoch, self.stage)

    def size(self) -> int:
        """Units queued (events and new units); counted calls take no room."""
        return sum(map(len, self.events.values())) + sum(map(len, self.units.values()))


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


class Unsure(Exception):
    """A flush failed once the counters may have changed.

    Its events must not be sent again (they might count twice); its units may be (counting
    distinct units is idempotent).
    """


class Outbox:
    """The events and units of one rollout waiting for the next flush; hold its lock.

    ``flushing`` serializes the flushes of the rollout (the store's thread, ``status`` and
    ``tick`` may flush at once), so that totals are taken in the order they were read.
    """

    __slots__ = ("batch", "dropped", "flushing")

    def __init__(self) -> None:
        self.batch = Batch(0, 0)
        self.dropped = 0
        """Events and units dropped (the outbox was full, or a flush ended unsure)."""
        self.flushing = threading.Lock()

    def renew(self) -> None:
        """In a forked child: drop the parent's queue (the parent flushes it), new lock."""
        self.batch = Batch(self.batch.epoch, self.batch.stage)
        self.flushing = threading.Lock()

    def visit(self, epoch: int, stage: int) -> None:
        """Queue for stage visit ``(epoch, stage)`` from now on; drop another visit's queue."""
        if (self.batch.epoch, self.batch.stage) != (epoch, stage):
            self.batch = Batch(epoch, stage)

    def event(self, kind: str, treatment: bool, key: str | None) -> None:
        """Queue the first event of ``kind`` (``errors``, ``slow``) of unit ``key``."""
        name = f"{kind}.{'t' if treatment else 'c'}"
        if key is None:
            self.batch.calls[name] = self.batch.calls.get(name, 0) + 1
        elif not self._full():
            self.batch.events.setdefault(name, []).append(key)

    def unit(self, treatment: bool, key: str) -> None:
        """Queue a unit new to this process on an arm."""
        if not self._full():
            self.batch.units.setdefault("t" if treatment else "c", []).append(key)

    def _full(self) -> bool:
        if self.batch.size() < MAX_QUEUED:
            return False
        self.dropped += 1
        return True

    def take(self) -> Batch:
        """The queued batch, leaving an empty one for the same visit."""
        batch = self.batch
        self.batch = Batch(batch.epoch, batch.stage)
        return batch

    def give_back(self, batch: Batch, *, events: bool = True) -> None:
        """Queue ``batch`` again (its flush failed), unless its stage visit is over.

        ``events=False`` (the flush ended unsure): only its units go back; its events are
        dropped and counted, since they may have been counted already.
        """
        current = self.batch
        if (batch.epoch, batch.stage) != (current.epoch, current.stage):
            return
        if events:
            for name, keys in batch.events.items():
                current.events[name] = keys + current.events.get(name, [])
            for name, n in batch.calls.items():
                current.calls[name] = current.calls.get(name, 0) + n
        else:
            self.dropped += sum(map(len, batch.events.values())) + sum(batch.calls.values())
        for arm, units in batch.units.items():
            current.units[arm] = units + current.units.get(arm, [])
        size = current.size()
        if size > MAX_QUEUED:
            self.dropped += size  # everything goes: the oldest and newest are equally good
            current.events.clear()
            current.units.clear()


def flush(store: Store, rollout: str, batch: Batch) -> Totals:
    """Add ``batch`` to the store's counts and return the fleet's totals; may raise.

    A unit's first event counts only if no process counted it before in the epoch. Raises
    :class:`Unsure` when it failed once the counters may have changed: the batch's events
    are then not sent again (nothing counts twice; some may be lost, which only weakens
    the evidence).
    """
    visits = [  # reads first: a failure here changes nothing
        (stage, store.read_counts(rollout, segment(batch.epoch, stage)))
        for stage in range(max(batch.stage, 0))  # the earlier visits of the epoch, if any
    ]
    counts = dict(batch.calls)
    for kind in KINDS:
        # Sent again after a failure, a unit already marked here is no longer new: it is
        # lost to the test rather than counted twice.
        treated = batch.events.get(f"{kind}.t", [])
        control = batch.events.get(f"{kind}.c", [])
        ids = treated + control
        new = store.add_units(rollout, f"{batch.epoch}/{kind}", ids) if ids else []
        counts[f"{kind}.t"] = counts.get(f"{kind}.t", 0) + sum(new[: len(treated)])
        counts[f"{kind}.c"] = counts.get(f"{kind}.c", 0) + sum(new[len(treated) :])
    try:
        if any(counts.values()):
            events = store.add_counts(rollout, batch.segment, counts)
        else:
            events = store.read_counts(rollout, batch.segment)  # an idle flush writes nothing
    except Exception as exc:
        if any(counts.values()):
            raise Unsure(str(exc)) from exc  # the increments may have landed
        raise
    visits.append((batch.stage, events))
    try:
        units_t = store.count_distinct(rollout, f"{batch.segment}/t", batch.units.get("t", []))
        units_c = store.count_distinct(rollout, f"{batch.segment}/c", batch.units.get("c", []))
    except Exception as exc:
        raise Unsure(str(exc)) from exc  # the events did count: only the units go back
    return Totals(batch.epoch, batch.stage, tuple(visits), units_t, units_c)


def exchange(owner: Rollouts, rollout: Rollout) -> None:
    """Flush ``rollout``'s queued events and take the fleet's totals; never raises.

    A failed flush is requeued (the store may be down) and counted (``store.flush_failed``);
    one that ended unsure requeues its units only.
    """
    health = rollout.health
    if health is None or health.outbox is None:
        return
    outbox = health.outbox
    lock = rollout.outcomes.lock
    with outbox.flushing:
        with lock:
            batch = outbox.take()
            dropped, outbox.dropped = outbox.dropped, 0
        if dropped:
            owner.failures.record("store.outcomes_dropped", rollout=rollout.name,
                                  dropped=dropped)  # fmt: skip
        try:
            totals = flush(owner.store, rollout.name, batch)
        except Exception as exc:
            with lock:
                outbox.give_back(batch, events=not isinstance(exc, Unsure))
            owner.failures.record("store.flush_failed", exc, rollout=rollout.name)
            return
        shares = rollout._shares()
        with lock:
            health.absorb(totals, shares)
