"""The batched evidence exchange: every rollout's pooled evidence in one round trip.

A process that serves many rollouts would otherwise send each one's evidence apart (its
first events, counters and distinct units, see :mod:`stagedroll._pool`), several store
calls per rollout per refresh. A store that can apply them all at once offers
:meth:`BatchStore.flush_many`: one round trip (one Redis script, one PostgreSQL statement)
per exchange, whatever the number of rollouts. A store that does not is sent each
rollout's :class:`Flush` through its :class:`~.Store` operations instead, with the same
result.

A :class:`Flush` is applied in this order, and every store gives the same answer:

1. each ``events`` group, in order: each digest is added to the group's scope's set, and
   one that was new there (at its first place in the flush, for a digest repeated) adds 1
   to its counter;
2. ``counts`` and those new events are added to the counters of ``segment``;
3. each ``distinct`` scope gets its digests added, then is counted;
4. the counters of ``segment`` and of each ``earlier`` segment are read;
5. ``errors`` are merged into the rollout's recent errors (see :meth:`Store.add_errors`).

The flushes of one call are independent: one that fails (a key of another type, a row the
database refuses) fails alone, as the exception in its place in the answer, and the others
land. A failure that may have left some of its writes is :class:`Unsure`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from .._state import RecentError

__all__ = ["MAX_WEIGHT", "BatchStore", "Flush", "Flushed", "Unsure", "rounds", "weight"]

Events = Sequence[tuple[str, Sequence[tuple[str, Sequence[str]]]]]
"""Per kind of first event: ``(scope, [(counter, digests), ...])``."""


@dataclass(frozen=True, slots=True)
class Flush:
    """One rollout's share of a batched exchange (digests only: never a unit's text)."""

    rollout: str
    segment: str | None
    """The stage visit's counters: ``counts`` and the new first events are added to them
    (``None``: the flush only carries ``errors``, and steps 1 to 4 are skipped)."""
    counts: Mapping[str, int] = field(default_factory=dict)
    """Added to the segment's counters as they are."""
    events: Events = ()
    """First events: each digest new in its scope's set adds 1 to its counter."""
    distinct: Sequence[tuple[str, Sequence[str]]] = ()
    """``(scope, digests)``: added to the scope's distinct units, which are then counted."""
    earlier: Sequence[str] = ()
    """Segments whose counters are read back as well (the earlier visits of the epoch)."""
    errors: Sequence[RecentError] = ()
    """Recent errors to merge into the rollout's (already checked: see ``dump_error``)."""


@dataclass(frozen=True, slots=True)
class Flushed:
    """What the store answered to one :class:`Flush`."""

    counters: dict[str, int]
    """The segment's counters once the flush's were added."""
    added: dict[str, int]
    """Per event counter, the first events of the flush that were new (and counted)."""
    distinct: list[int]
    """The count of each ``distinct`` scope, in order."""
    earlier: list[dict[str, int]]
    """The counters of each ``earlier`` segment, in order."""
    errors_failed: Exception | None = None
    """Why the flush's errors were not merged while its evidence landed (then they may be
    sent again); ``None`` when they were, or when there were none."""


class Unsure(Exception):
    """A flush failed once the counters may have changed.

    Its events must not be sent again (they might count twice); its units may be (counting
    distinct units is idempotent).
    """


MAX_WEIGHT = 20_000
"""The weight (see :func:`weight`) of the flushes one round trip carries at most: more go
in several, so that no round trip holds the backend for long (tens of milliseconds)."""
ERRORS_WEIGHT = 500
"""The weight of a flush's recent errors: merging them costs about what adding 500 digests
does (they are read, merged with the new ones, and written back)."""


def weight(flush: Flush) -> int:
    """What applying ``flush`` costs the backend, in digests: what bounds a round trip."""
    errors = ERRORS_WEIGHT if flush.errors else 0
    if flush.segment is None:
        return errors
    events = sum(len(digests) for _, groups in flush.events for _, digests in groups)
    return errors + events + sum(len(digests) for _, digests in flush.distinct)


def rounds(flushes: Sequence[Flush], indexes: Iterable[int]) -> list[list[int]]:
    """``indexes`` (of ``flushes``), in order, cut into round trips.

    Each carries at most :data:`MAX_WEIGHT`; a heavier flush goes alone.
    """
    groups: list[list[int]] = []
    size = 0
    for i in indexes:
        cost = weight(flushes[i])
        if not groups or (groups[-1] and size + cost > MAX_WEIGHT):
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += cost
    return groups


@runtime_checkable
class BatchStore(Protocol):
    """A store that applies the flushes of many rollouts in one round trip."""

    def flush_many(self, flushes: Sequence[Flush]) -> list[Flushed | Exception]:
        """Apply ``flushes`` (see the module); the answer to each, in order.

        An answer is an exception when that flush failed: :class:`Unsure` when some of its
        writes may have landed, any other when none did (also when the backend could not
        be reached: nothing was sent). Raises when the call as a whole failed once sent:
        then any flush may have landed. A data error (``ValueError``, ``TypeError``) raised
        as a whole must mean that nothing was applied: each flush is then applied apart.
        Round trips carry at most :data:`MAX_WEIGHT` (one heavier flush goes alone).
        """
        ...
