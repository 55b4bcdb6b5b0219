"""What a store keeps of a unit: a keyed digest, never the unit's text.

The health gate needs to know of a unit only whether a process already counted its first
error (or slow call) in the epoch, and how many distinct units each arm had. A digest does
for both, so no raw unit id (an email, an account number) leaves the process:

1. :func:`token`, when an event is queued (:class:`~stagedroll._pool.Outbox`): 16 bytes of
   BLAKE2b of the unit's text. Any ``str`` works: it is encoded as UTF-8 with surrogates
   kept (``surrogatepass``), so a lone surrogate is a unit like any other. The queue holds
   tokens, 16 bytes each, whatever the length of the unit.
2. :func:`digest`, when the queue is flushed: the token hashed again with the rollout's key
   (:func:`rollout_key`, 128-bit keyed BLAKE2b, as hex text). The key is derived from the
   rollout's name and the random id of its history (``RolloutState.history``), which every
   process of the fleet reads from the stored state: the same unit gives the same digest in
   every process, a different one in every other rollout (and in a history begun anew), so
   digests do not link a unit across rollouts or stores. This is what the ``Store``
   protocol's ``add_units`` and ``count_distinct`` receive.
3. :func:`member`, in the SQLite and Redis stores: a 64-bit BLAKE2b of whatever text they are
   given, as a signed integer. A store therefore keeps 8 bytes per unit, and never a text,
   even from a caller that hands it raw ids.

With ``n`` units in one set, about ``n**2 / 2**65`` pairs collide (64-bit members): 7e-11
at 50,000 units (the distinct units counted per arm), 3e-8 at a million first errors. A
collision makes a unit's first event look like a repeat (it is not counted: the test loses
one event, it never counts one twice) or a distinct count one short.

The key is not a secret from whoever can read the store (the history id is in the stored
state): it stops reading ids off the store, precomputed tables, and linking a unit across
rollouts, not the test of a guessed id by someone who holds the store's data.
"""

from __future__ import annotations

from hashlib import blake2b

__all__ = ["digest", "member", "rollout_key", "token"]


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def token(unit: str) -> bytes:
    """The 16 bytes a queued event holds for ``unit`` (any ``str``, lone surrogates too)."""
    return blake2b(_utf8(unit), digest_size=16).digest()


def rollout_key(rollout: str, history: str) -> bytes:
    """The key of the digests of ``rollout`` in the history ``history`` (its random id)."""
    return blake2b(_utf8(f"{len(rollout)}:{rollout}:{history}"), digest_size=32,
                   person=b"stagedroll.key").digest()  # fmt: skip


def digest(key: bytes, unit_token: bytes) -> str:
    """The keyed digest of a unit's token, as the store receives it (32 hex characters)."""
    return blake2b(unit_token, digest_size=16, key=key).hexdigest()


def member(unit: str) -> int:
    """What a SQLite or Redis store keeps of ``unit``: a signed 64-bit hash of its text."""
    return int.from_bytes(blake2b(_utf8(unit), digest_size=8).digest(), "big", signed=True)
