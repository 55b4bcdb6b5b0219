"""Pooled evidence: the health test of a rollout judged on the counts of every process.

With a store shared by processes (SQLite, Redis, PostgreSQL), a process does not judge its own
outcomes alone: n processes judging apart would each risk a false freeze at ``alpha``, n
times ``alpha`` together. Instead each process queues its events (first errors and first
slow calls of units, new units per arm) in an :class:`Outbox`, and the store's background
refresh flushes them (through :func:`~._exchange.exchange`): :func:`plan` turns a batch into
what the store applies (a :class:`~.stores._batch.Flush`), :func:`flush_all` sends the
plans of all of a process's rollouts in one round trip to a store that batches, else each
through the store's own operations (:func:`apply`), and :func:`totals` reads the answer:

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
``{epoch}/errors`` and ``{epoch}/slow``; the distinct units of each arm per stage visit and
share, ``{epoch}.{stage}@{share}/t`` and ``/c``.

Every counter names the share its events were observed at and their block (see
:mod:`~._sequential`): ``errors.t@0.05#12`` counts first errors on the new path at a 5 %
share in block 12 of the visit. Each event is thus scored at its own share, whatever
policy the process that reads the counts runs: a percent edit, or processes on two
versions of the policy during a rolling deploy, never re-score the visit. The block of a
flush is that of the next event after the visit's events the process knows of, for all
its events (which depends on no event's arm). ``units.t@0.05`` counts the units each
flush found new to its process: a share other than one's own that grows tells a process
that others run another policy (:class:`~._health.Health` then refuses to judge).

No unit's text reaches a store, nor waits in a queue: the outbox keeps a 16-byte token of
each unit (any ``str``, lone surrogates included), and the flush sends its digest keyed by
the rollout's history id, which every process reads from the stored state
(:mod:`stagedroll.stores._digest`). A store that refuses some elements of a batch (a data
error: ``ValueError``, ``TypeError``, ``OverflowError``) has the batch split in halves until
the refused elements stand alone; they are dropped and counted (``store.units_refused``),
and the others land. Only data errors split: a store that is down fails the flush once.

A flush is retried only while nothing it sent can have counted: once the counters may have
changed (``add_counts`` failed, or a later step did), its events are dropped rather than
sent again, so nothing counts twice (which would break the bound); a loss only weakens the
evidence. A unit's event sent again is no longer new in the set, so it cannot count twice.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from ._state import RecentError
from .stores import Store
from .stores._batch import BatchStore, Flush, Flushed, Unsure
from .stores._digest import digest, rollout_key, token

__all__ = ["MAX_QUEUED", "Batch", "Outbox", "Totals", "Unsure", "apply", "flush", "flush_all",
           "plan", "totals"]  # fmt: skip

MAX_QUEUED = 100_000
"""Events and units an outbox holds at most (while the store is down); more are dropped."""

KINDS = ("errors", "slow")

SPLIT_CALLS = 64
"""Store calls that one flush spends at most on isolating the elements a store refuses."""
_DATA_ERRORS = (ValueError, TypeError, OverflowError)  # UnicodeError is a ValueError
_T = TypeVar("_T")


@dataclass(slots=True)
class Batch:
    """What one process saw in one stage visit since its last flush."""

    epoch: int
    stage: int
    events: dict[str, list[bytes]] = field(default_factory=dict)
    """``"errors.t@0.05"``, ``"slow.c@0.2"``, …: the tokens of the units of first events, by
    kind, arm and the share they were observed at."""
    calls: dict[str, int] = field(default_factory=dict)
    """``"errors.t@0.05"``, …: events of calls without a unit (per-request bucketing)."""
    units: dict[str, list[bytes]] = field(default_factory=dict)
    """``"t@0.05"``, ``"c@0.05"``: the tokens of units new to this process in the stage visit."""
    share: float = 0.0
    """The share this process tests at when the batch is taken (its units' totals come back)."""
    blocks: dict[str, int] = field(default_factory=dict)
    """Per kind, the block of the visit this batch's events go into (see the module)."""

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


def share_text(share: float) -> str:
    """``share`` as counter names and scopes spell it (``repr``: it reads back exactly)."""
    return repr(float(share))


@dataclass(frozen=True, slots=True)
class Totals:
    """The fleet's counts of the epoch up to one stage visit, as the store returned them."""

    epoch: int
    stage: int
    visits: tuple[tuple[int, dict[str, int]], ...]
    """``(stage, counters)`` of every stage of the epoch up to ``stage``, in order."""
    units_treatment: int
    units_control: int
    """Distinct units of each arm in the visit at the share of the batch (``Batch.share``)."""
    refused: int = 0
    """Elements the store refused (each alone, after splitting); dropped from the batch."""
    own: dict[str, int] = field(default_factory=dict)
    """What this flush added to the visit's counters, per share (as counter names spell it):
    the growth that is not another process's."""


class Outbox:
    """The events and units of one rollout waiting for the next flush; hold its lock.

    ``flushing`` serializes the flushes of the rollout (the store's thread, ``status`` and
    ``tick`` may flush at once), so that totals are taken in the order they were read.
    """

    __slots__ = ("batch", "blocks", "dropped", "flushing")

    def __init__(self) -> None:
        self.batch = Batch(0, 0)
        self.blocks: dict[str, int] = {}
        """Per kind, the block of the visit the next flush's events go into."""
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
            self.blocks = {}

    def event(self, kind: str, treatment: bool, key: str | None, share: float) -> None:
        """Queue the first event of ``kind`` (``errors``, ``slow``) of unit ``key`` (its token).

        ``treatment`` says the arm, ``share`` the share the event was observed at.
        """
        name = f"{kind}.{'t' if treatment else 'c'}@{share_text(share)}"
        if key is None:
            self.batch.calls[name] = self.batch.calls.get(name, 0) + 1
        elif not self._full():
            self.batch.events.setdefault(name, []).append(token(key))

    def unit(self, treatment: bool, key: str, share: float) -> None:
        """Queue a unit new to this process on an arm at ``share`` (its token)."""
        if not self._full():
            name = f"{'t' if treatment else 'c'}@{share_text(share)}"
            self.batch.units.setdefault(name, []).append(token(key))

    def _full(self) -> bool:
        if self.batch.size() < MAX_QUEUED:
            return False
        self.dropped += 1
        return True

    def take(self, share: float) -> Batch:
        """The queued batch, leaving an empty one for the same visit (``share``: in force)."""
        batch = self.batch
        batch.share = share
        batch.blocks = dict(self.blocks)
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


class _Splitter:
    """Sends batches to a store; on a data error, splits them to isolate what is refused."""

    __slots__ = ("calls", "capped", "refused")

    def __init__(self) -> None:
        self.calls = 0
        self.refused = 0
        self.capped = 0
        """Elements dropped because the calls ran out, unlike one refused element alone."""

    def send(
        self, call: Callable[[list[str]], _T], items: list[str], *, part: bool = False
    ) -> list[tuple[list[str], _T | None]]:
        """``call(items)``, or ``call`` on the parts the store takes: ``(part, result)`` in order.

        An error other than a data error is raised at once (the store may be down). A part
        still refused when it is one element, or once the flush made :data:`SPLIT_CALLS`
        calls, is dropped (result ``None``) and counted in ``refused``.
        """
        if part and self.calls >= SPLIT_CALLS:
            self.refused += len(items)
            self.capped += len(items)
            return [(items, None)]
        self.calls += 1
        try:
            return [(items, call(items))]
        except _DATA_ERRORS:
            if len(items) <= 1:
                self.refused += len(items)
                return [(items, None)]
            half = len(items) // 2
            return self.send(call, items[:half], part=True) + self.send(
                call, items[half:], part=True
            )


def _add_units(
    store: Store, rollout: str, scope: str, ids: list[str], splitter: _Splitter
) -> list[bool]:
    """Which of ``ids`` are new in the scope's set; a refused one is not (never counted)."""

    def add(part: list[str]) -> list[bool]:
        answers = [bool(n) for n in store.add_units(rollout, scope, part)]
        if len(answers) != len(part):
            raise RuntimeError(f"the store answered for {len(answers)} of {len(part)} units")
        return answers

    new: list[bool] = []
    for part, answers in splitter.send(add, ids):
        new += answers if answers is not None else [False] * len(part)
    return new


def _count_distinct(
    store: Store, rollout: str, scope: str, ids: list[str], splitter: _Splitter
) -> int:
    """The scope's distinct count once ``ids`` are added (refused ones left out)."""
    sent = splitter.send(lambda part: int(store.count_distinct(rollout, scope, part)), ids)
    counts = [n for _, n in sent if n is not None]
    if len(sent) > 1 or not counts:  # split: the count once every part is in
        with contextlib.suppress(*_DATA_ERRORS):  # refused even empty: what the parts said
            counts.append(int(store.count_distinct(rollout, scope, [])))
    return max(counts, default=0)


def plan(
    rollout: str, batch: Batch, history: str = "", errors: Sequence[RecentError] = ()
) -> Flush:
    """The store's share of ``batch``: the digests of its units, keyed by ``history``.

    ``history`` is the rollout's history id (its state's): with the rollout's name, it keys
    the digests of the units. A unit's first event counts only if no process counted it
    before in the epoch (its digest is new in the epoch's set of that kind).
    """
    key = rollout_key(rollout, history)
    counts: dict[str, int] = {}
    for name, n in batch.calls.items():
        _count(counts, f"{name}#{batch.blocks.get(name.partition('.')[0], 0)}", n)
    for name, tokens in batch.units.items():
        _count(counts, f"units.{name}", len(tokens))
    events = []
    for kind in KINDS:
        names = sorted(name for name in batch.events if name.startswith(kind + "."))
        if names:
            block = batch.blocks.get(kind, 0)
            groups = [(f"{name}#{block}", [digest(key, t) for t in batch.events[name]])
                      for name in names]  # fmt: skip
            events.append((f"{batch.epoch}/{kind}", groups))
    scopes = {name.partition("@")[2] for name in batch.units} | {share_text(batch.share)}
    distinct = [
        (f"{batch.segment}@{share}/{arm}",
         [digest(key, t) for t in batch.units.get(f"{arm}@{share}", [])])
        for share in sorted(scopes)
        for arm in ("t", "c")
    ]  # fmt: skip
    earlier = [segment(batch.epoch, stage) for stage in range(max(batch.stage, 0))]
    return Flush(rollout, batch.segment, counts, events, distinct, earlier, errors)


def totals(batch: Batch, flush: Flush, flushed: Flushed, refused: int = 0) -> Totals:
    """The fleet's totals that the store answered to ``flush`` (the plan of ``batch``)."""
    visits = [*zip(range(max(batch.stage, 0)), flushed.earlier, strict=True),
              (batch.stage, flushed.counters)]  # fmt: skip
    current = share_text(batch.share)
    by_arm = {}  # "t@0.05": the distinct units of an arm at a share (scope "{seg}@0.05/t")
    for (scope, _), n in zip(flush.distinct, flushed.distinct, strict=True):
        share, _, arm = scope.partition("@")[2].rpartition("/")
        by_arm[f"{arm}@{share}"] = n
    own: dict[str, int] = {}
    for name, n in [*flush.counts.items(), *flushed.added.items()]:
        _count(own, name.partition("@")[2].partition("#")[0], n)
    return Totals(batch.epoch, batch.stage, tuple(visits), by_arm[f"t@{current}"],
                  by_arm[f"c@{current}"], refused, own)  # fmt: skip


def apply(store: Store, flush: Flush) -> tuple[Flushed, int]:
    """Apply ``flush`` through the store's own operations; may raise.

    For a store that is no :class:`~.stores._batch.BatchStore`, with the same answer, and
    the elements it refused (dropped, each alone, after splitting). Raises
    :class:`Unsure` when it failed once the counters may have changed.
    """
    if flush.segment is None:  # errors only
        store.add_errors(flush.rollout, flush.errors)
        return Flushed({}, {}, [], []), 0
    splitter = _Splitter()
    earlier = [store.read_counts(flush.rollout, seg) for seg in flush.earlier]  # changes nothing
    counts = dict(flush.counts)
    added: dict[str, int] = {}
    for scope, groups in flush.events:
        # Sent again after a failure, a unit already marked here is no longer new: it is
        # lost to the test rather than counted twice.
        ids = [unit for _, group in groups for unit in group]
        capped = splitter.capped
        new = _add_units(store, flush.rollout, scope, ids, splitter) if ids else []
        if splitter.capped > capped:
            # The calls ran out: what was dropped is the tail, some arm's events. Count none
            # of the kind's events, on either arm: a loss, not a bias.
            new = [False] * len(new)
        at = 0
        for name, group in groups:
            _count(added, name, sum(new[at : at + len(group)]))
            at += len(group)
    for name, n in added.items():
        _count(counts, name, n)
    try:
        if counts:
            counters = store.add_counts(flush.rollout, flush.segment, counts)
        else:
            counters = store.read_counts(flush.rollout, flush.segment)  # an idle flush
    except Exception as exc:
        if counts:
            raise Unsure(str(exc)) from exc  # the increments may have landed
        raise
    try:
        distinct = [_count_distinct(store, flush.rollout, scope, list(ids), splitter)
                    for scope, ids in flush.distinct]  # fmt: skip
    except Exception as exc:
        raise Unsure(str(exc)) from exc  # the events did count: only the units go back
    failed = None
    if flush.errors:  # last: the evidence landed whatever happens to them
        try:
            store.add_errors(flush.rollout, flush.errors)
        except Exception as exc:
            failed = exc
    return Flushed(counters, added, distinct, earlier, failed), splitter.refused


def flush_all(store: Store, flushes: Sequence[Flush]) -> list[tuple[Flushed, int] | Exception]:
    """Apply ``flushes``: in one round trip when the store batches, else one by one.

    The answer to each, in order: what the store answered and the elements it refused, or
    the exception it failed with (:class:`Unsure` when its counters may have changed).
    When a batching store refuses the call as a whole with a data error, each flush is
    applied apart (which isolates what it refuses); when it fails otherwise once sent,
    each flush that adds counts or carries recent errors is :class:`Unsure`.
    """
    if flushes and _batching(store):
        try:
            answers = store.flush_many(flushes)  # type: ignore[attr-defined]
            if len(answers) != len(flushes):
                raise RuntimeError(f"the store answered {len(answers)} of {len(flushes)} flushes")
        except _DATA_ERRORS:
            pass  # one by one, below
        except Exception as exc:
            # Sent, then failed: any flush may have landed. Its counters and recent errors
            # must not be sent again (they would count twice); events alone may be (a unit
            # already marked in the store's set is no longer new).
            return [Unsure(str(exc)) if f.counts or f.errors else exc for f in flushes]
        else:
            return [answer if isinstance(answer, Exception) else (answer, 0)
                    for answer in answers]  # fmt: skip
    return [_apply(store, flush) for flush in flushes]


def _apply(store: Store, flush: Flush) -> tuple[Flushed, int] | Exception:
    try:
        return apply(store, flush)
    except Exception as exc:
        return exc


def _batching(store: Store) -> bool:
    """Whether ``store`` applies flushes in one round trip; a store that fails to say: no."""
    try:
        return isinstance(store, BatchStore)
    except Exception:
        return False


def flush(store: Store, rollout: str, batch: Batch, history: str = "") -> Totals:
    """Add ``batch`` to the store's counts and return the fleet's totals; may raise.

    One rollout's :func:`plan`, :func:`flush_all` and :func:`totals`. Raises
    :class:`Unsure` when it failed once the counters may have changed: the batch's events
    are then not sent again (nothing counts twice; some may be lost, which only weakens
    the evidence).
    """
    planned = plan(rollout, batch, history)
    (answer,) = flush_all(store, [planned])
    if isinstance(answer, Exception):
        raise answer
    return totals(batch, planned, *answer)


def _count(counts: dict[str, int], name: str, n: int) -> None:
    if n:
        counts[name] = counts.get(name, 0) + n
