"""The Redis store: one state for a fleet of hosts (extra ``stagedroll[redis]``).

Keys, under a prefix per application (``stagedroll`` by default), with the rollout's name
as a hash tag so that one rollout's keys share a Redis Cluster slot:

- ``{prefix}:{name}:state``: a hash, ``v`` the version and ``s`` the state as JSON;
  compare-and-set is one Lua script that also appends the history entry;
- ``{prefix}:{name}:history``: a list, newest first, capped at ``max_history``;
- ``{prefix}:{name}:counts:{segment}``: a hash of pooled outcome counters;
- ``{prefix}:{name}:seen:{scope}``: a set of units' 64-bit digests (exact: ``SADD`` says if
  one is new); never a unit's text (see ``_digest``);
- ``{prefix}:{name}:units:{scope}``: a HyperLogLog of units' digests (12 KB, about 0.8 %
  error);
- ``{prefix}:{name}:errors``: a hash of the rollout's recent errors, one JSON object per
  distinct error (at most 20), rewritten whole under ``WATCH`` by each addition;
- ``{prefix}:meta``: a hash, the store's marker (``created``) and the history id of each
  rollout it has held (``rollout:{name}``), which tell a lost state from a new rollout, and
  which :meth:`RedisStore.names` reads instead of scanning the keys;
- ``{prefix}:generation``: a counter that each write of a state increments, right after it
  (one ``GET`` tells a refresh whether any state changed); each increment is followed by a
  ``PUBLISH`` of ``"{token} {name}"`` on the channel ``{prefix}:changes`` (the token names
  the store object that wrote, whose own listener skips it), which the listener thread of
  every ``RedisStore`` with ``push`` subscribes to.

Counters, unit sets and recent errors expire ``ttl`` seconds (default 30 days) after their
last write.

Earlier versions kept units as text: in sets (``{prefix}:{name}:first:{scope}``), turned
into digests then deleted, and in HyperLogLogs (``{prefix}:{name}:distinct:{scope}``, never
read by this version: its digests would count a unit twice), deleted; both at the first load
of their rollout by each store object, and a set also when its scope is next written to.

The pooled evidence of every rollout a process serves is exchanged in one round trip
(:meth:`RedisStore.flush_many`, see ``stores._batch``): one ``EVALSHA`` of a script that,
for each rollout's flush, adds its units to the sets of first events (``SADD``, the new ones
counted), its counts to the segment's counters (``HINCRBY``), its units to the
HyperLogLogs, reads the counters back, and merges its recent errors, as the single
operations do; the same script reads ``generation``, which the refresh that follows then
needs not read. The arguments are one JSON text (digests as decimal text: Lua's numbers
hold 53 bits), and every key the script touches is in its ``KEYS``. A flush whose keys are
of another type writes nothing and fails alone (but for its errors' key, replaced as
``add_errors`` replaces it); a batch heavier than ``_batch.MAX_WEIGHT`` (20,000 digests,
each flush's recent errors counting as 500) is sent in several round trips. That script
spans the hash slots of many rollouts: on a Redis Cluster it would have to be sent once per
slot (``RedisStore`` connects to one Redis). The script and the pure functions of the
exchange are in ``_redis_flush``.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import threading
import time
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus, urlsplit

from .._failures import log
from .._state import MAX_ERROR_MESSAGE, MAX_ERROR_TYPE, RecentError, RolloutState, Transition
from ._batch import Flush, Flushed, Unsure, rounds
from ._codec import (
    MAX_ERRORS,
    dump_error,
    dump_state,
    dump_transition,
    load_error,
    load_state,
    merge_errors,
)
from ._digest import digest, member, rollout_key, token
from ._memory import check_version
from ._redis_flush import _FLUSH, _indexed, _pairs, _planned, _reach
from ._syncer import EMPTY, SharedStore

if TYPE_CHECKING:
    import redis

__all__ = ["RedisStore"]

# Redis does not undo a script's writes when a later command fails: both scripts check the
# types of the keys they write first, and write nothing when one is of another type.
_TYPES = """
local function wrong(key, kind)
  local found = redis.call('TYPE', key).ok
  if found ~= 'none' and found ~= kind then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. found .. ', not a ' .. kind
      .. ': nothing was written')
  end
end
local refused = wrong(KEYS[1], 'hash') or wrong(KEYS[2], 'list')
if refused then return refused end
"""

_CAS = (
    _TYPES
    + """
local current = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if current ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 's', ARGV[3])
redis.call('LPUSH', KEYS[2], ARGV[4])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[5]) - 1)
return 1
"""
)

# Restore a lost state: the same rule as stagedroll._state.restorable, atomically.
_PUT_IF_LOST = (
    _TYPES
    + """
local known_version, known_history = tonumber(ARGV[1]), ARGV[2]
local text = redis.call('HGET', KEYS[1], 's')
if text then
  local ok, stored = pcall(cjson.decode, text)
  if not ok or type(stored) ~= 'table' then return 0 end
  local version, history = tonumber(stored.version) or 0, stored.history or ''
  local same = history == known_history or history == '' or known_history == ''
  if same and version >= known_version then return 0 end
  if not same and not (version <= 1 and known_version > 1) then return 0 end
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 's', ARGV[3])
redis.call('LPUSH', KEYS[2], ARGV[4])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[5]) - 1)
return 1
"""
)

# Add digests to a set of first events, unless the set of texts of an earlier version is
# still there (it is turned into digests first): then -1.
_ADD = """
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local new = {}
for i = 2, #ARGV do new[i - 1] = redis.call('SADD', KEYS[1], ARGV[i]) end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return new
"""
# Read states: the fields s and v of each state hash of KEYS, in one command whatever their
# number; a key of another type answers its error alone, as {message}.
_READ = """
local found = {}
for i, key in ipairs(KEYS) do
  local read = redis.pcall('HMGET', key, 's', 'v')
  if type(read) == 'table' and read.err then found[i] = {read.err} else found[i] = read end
end
return found
"""
_CHUNK = 5000  # units per command: a large batch does not hold Redis for long
_DRAIN = 1000  # messages the listener takes at once before it wakes the refresh
_WATCH_TRIES = 50  # attempts of an optimistic transaction before it fails (WatchError)

_UNENCODED = "percent-encode any '/', '?' or '#' in its user name and password (%2F, %3F, %23)"

_INSTALL_HINT = "RedisStore needs redis-py: pip install 'stagedroll[redis]'"

# Clients abandoned in a forked child: their sockets are the parent's.
_abandoned: list[Any] = []


def _import_redis() -> Any:
    try:
        import redis  # noqa: PLC0415 - an optional extra, imported when first used
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return redis


class RedisStore(SharedStore):
    """Keeps state, history and pooled outcome counts in Redis, for a fleet of hosts.

    ``url`` is a redis-py URL (``redis://host:6379/0``, ``rediss://…``, ``unix://…``).
    ``prefix`` keeps applications apart on one Redis. ``timeout`` bounds every command
    (connecting included), in seconds: a slow or unreachable Redis fails fast, and the
    background refresh tries again. Commands are not retried. ``refresh_interval`` is how
    often changes made by other hosts are read; ``max_history`` caps each rollout's history;
    ``ttl`` is how long outcome counters live after their last write. With ``push`` (the
    default) a second thread subscribes to the store's channel, and a transition made
    anywhere reaches this process in milliseconds; the refresh stays as the backstop (a
    message published while the subscriber was disconnected is lost). Either way a refresh
    sends one ``GET`` when no state changed.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "stagedroll",
        refresh_interval: float = 1.0,
        timeout: float = 0.25,
        max_history: int = 1000,
        ttl: float = 30 * 86400,
        push: bool = True,
    ) -> None:
        if max_history < 1:
            raise ValueError("max_history must be at least 1")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        if not ttl >= 1:
            raise ValueError(f"ttl must be at least 1 (second), not {ttl!r}")
        self._redis = _import_redis()
        super().__init__(refresh_interval=refresh_interval, thread_name="stagedroll-redis",
                         push=push)  # fmt: skip
        self.url = url
        if not isinstance(prefix, str) or not prefix:
            raise ValueError("prefix must be non-empty text: it keeps applications apart")
        self.prefix = prefix
        self._timeout = timeout
        self._max_history = max_history
        self._ttl = math.ceil(ttl)  # EXPIRE takes whole seconds
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._cas: Any = None
        self._put_script: Any = None
        self._add_script: Any = None
        self._flush_script: Any = None
        self._read_script: Any = None
        self._registered: set[str] = set()  # rollouts registered in meta by this process
        self._upgraded: set[str] = set()  # rollouts whose keys of earlier versions were dropped
        self._unannounced: set[str] = set()  # writes whose generation bump failed: retried
        self._pubsub: Any = None  # the listener's subscription (its own connection)
        self._subscribed = False  # whether it was made before (a new one may have missed some)
        self._token = uuid.uuid4().hex  # names this object's messages (not news to itself)

    def _after_fork(self) -> None:
        super()._after_fork()
        self._lock = threading.Lock()
        if self._client is not None:
            _abandoned.append(self._client)
        if self._pubsub is not None:
            _abandoned.append(self._pubsub)
        self._client = None
        self._pubsub = None
        self._subscribed = True  # the child's first subscription may have missed changes
        self._token = uuid.uuid4().hex
        self._registered = set()
        self._unannounced = set()

    def __repr__(self) -> str:
        return f"RedisStore({_redact(self.url)!r}, prefix={self.prefix!r})"

    @property
    def client(self) -> redis.Redis:
        """The redis-py client (made on first use; made again in a forked child)."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._check_open()
                    self._client = self._connect()
                    self._cas = self._client.register_script(_CAS)
                    self._put_script = self._client.register_script(_PUT_IF_LOST)
                    self._add_script = self._client.register_script(_ADD)
                    self._flush_script = self._client.register_script(_FLUSH)
                    self._read_script = self._client.register_script(_READ)
                client = self._client
        return client

    def _connect(self, **options: Any) -> redis.Redis:
        """A client for ``self.url``; an error about the URL shows it without credentials.

        ``options`` go to redis-py over the store's own (the listener's longer timeout).

        Whatever redis-py raises about the URL may quote part of it (``Port could not be
        cast to integer value as 'ab'``: the start of a password): its message is replaced,
        and it is neither the cause nor the context of the error raised.
        """
        why = _UNENCODED
        try:
            if not _misread(self.url):
                retry = self._redis.retry.Retry(self._redis.backoff.NoBackoff(), 0)
                settings: dict[str, Any] = {
                    "socket_timeout": self._timeout,
                    "socket_connect_timeout": self._timeout,
                    "retry": retry,
                    "retry_on_timeout": False,
                }
                client: redis.Redis = self._redis.Redis.from_url(self.url, **(settings | options))
                return client
        except Exception as exc:
            why = f"it cannot be parsed ({type(exc).__name__}); {_UNENCODED}"
        # Raised here, out of the except clause: the error has no context to show.
        raise self._redis.exceptions.ConnectionError(
            f"cannot use the Redis URL {_redact(self.url)!r}: {why}"
        )

    def _key(self, rollout: str, kind: str) -> str:
        return f"{self.prefix}:{{{rollout}}}:{kind}"

    # -- the Store protocol ---------------------------------------------------------------------

    def _meta(self) -> str:
        return f"{self.prefix}:meta"

    def _channel(self) -> str:
        return f"{self.prefix}:changes"

    def _generation(self) -> object:
        """The store's ``generation`` counter (one ``GET``); 0 when it is missing.

        Increments that failed after their write landed are sent first. A counter of
        another type, or text that is not a counter (written behind the store's back), is
        no marker: ``None``, so every refresh reads every state, and
        ``store.generation_unreadable`` is counted.
        """
        self._announce_pending()
        try:
            value = self.client.get(f"{self.prefix}:generation")
        except self._redis.exceptions.ResponseError as exc:  # WRONGTYPE
            self.failures.record("store.generation_unreadable", exc, store=repr(self))
            return None
        return self._counter(value)

    def _counter(self, value: object) -> object:
        """The marker that ``generation``'s value makes: 0 when it is missing.

        Text that is no counter (written behind the store's back) is no marker: ``None``,
        and ``store.generation_unreadable`` is counted.
        """
        if value is None:
            return 0
        if not (isinstance(value, bytes) and value.isdigit() and len(value) <= 19):
            self.failures.record("store.generation_unreadable", store=repr(self),
                                 error="not a counter")  # fmt: skip
            return None
        return value

    def _announce_pending(self) -> None:
        """Announce the writes whose announcement failed (see :meth:`_announce`)."""
        if self._unannounced:
            self._announce(*self._unannounced.copy())  # a copy: writers may add meanwhile

    def _announce(self, *rollouts: str) -> None:
        """Increment ``generation`` and publish each rollout written; never raises.

        One round trip after the write. When it fails, the write stands: it is announced
        again at the next refresh, and until then other processes see it at their next full
        read (every minute at most, by default).
        """
        key = f"{self.prefix}:generation"
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.incr(key)
            for rollout in rollouts:  # under this object's token: its listener skips its own
                pipe.publish(self._channel(), f"{self._token} {rollout}")
            pipe.execute()
        except Exception as exc:
            self._unannounced.update(rollouts)
            self.failures.record("store.announce_failed", exc, store=repr(self))
            if isinstance(exc, self._redis.exceptions.ResponseError) and "integer" in str(exc):
                # Text that is no counter (written behind the store's back) would refuse
                # every increment: start it again (a change readers see; the next
                # refresh announces these writes).
                with contextlib.suppress(Exception):
                    self.client.set(key, b"1", xx=True)
            return
        self._unannounced.difference_update(rollouts)

    def _listen(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for a rollout's name on ``{prefix}:changes``.

        The subscription has its own connection, made (and subscribed) here when there is
        none. Made again after a failure: ``True``, since what was published meanwhile is
        lost.
        """
        pubsub: Any = self._pubsub
        if pubsub is None:
            if self._closed:
                return False
            client = self._connect(socket_timeout=timeout + self._timeout,
                                   socket_keepalive=True, health_check_interval=30)  # fmt: skip
            # The subscription keeps its client: a client collected closes its pool, the
            # subscription's connection included (which would then connect again, unowned).
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            pubsub.owner = client
            try:
                pubsub.subscribe(self._channel())
            except Exception:
                _close(pubsub)
                raise
            self._pubsub = pubsub
            if self.closed:  # closed meanwhile: _stop_listening may not have seen it
                self._stop_listening()
            again, self._subscribed = self._subscribed, True
            return again
        try:
            message = pubsub.get_message(timeout=timeout)
            pushed = False
            for _ in range(_DRAIN):  # take what else arrived at once (bounded: then refresh)
                if message is None:
                    break
                pushed = pushed or not _text(message.get("data") or "").startswith(self._token)
                message = pubsub.get_message(timeout=0)
            pushed = pushed or message is not None  # more than it takes at once: news
        except Exception:
            self._pubsub = None
            _close(pubsub)
            raise
        finally:
            if self._closed:  # closing from another thread may have let it reconnect
                _close(pubsub)
        return pushed

    def _stop_listening(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            _close(pubsub)

    def _read_many(self, names: list[str]) -> dict[str, object]:
        """The states of ``names``, in one request (a script) whatever their number.

        A key of another type fails alone (WRONGTYPE), given as its error; a connection
        that fails raises. The field v is what compare-and-set compares: it must agree with
        the state's version.
        """
        client = self.client
        found: dict[str, object] = {}
        for start in range(0, len(names), _CHUNK):
            part = names[start : start + _CHUNK]
            reads = self._read_script(keys=[self._key(name, "state") for name in part],
                                      client=client)  # fmt: skip
            for name, read in zip(part, reads, strict=True):
                if len(read) == 1:  # the error of that key alone
                    found[name] = self._redis.exceptions.ResponseError(_text(read[0]))
                elif read[0] is None and read[1] is None:
                    found[name] = None
                else:
                    found[name] = tuple(read)
        return found

    def _register(self, rollout: str, state: RolloutState, *, quiet: bool = False) -> None:
        """Register ``rollout`` in meta with its history id, and the store's marker.

        Never raises (the write it follows has landed). The marker was missing: the store
        is new or lost everything, logged as ``store.initialized`` unless ``quiet`` (a state
        read, not written: a store from before the marker).
        """
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hsetnx(self._meta(), "created", repr(time.time()))
            pipe.hset(self._meta(), "rollout:" + rollout, state.history)
            created = pipe.execute()[0]
        except Exception as exc:
            self.failures.record("store.register_failed", exc, rollout=rollout)
            return
        self._registered.add(rollout)
        if created and not quiet:
            log("warning", "store.initialized", store=repr(self), rollout=rollout, note=EMPTY)

    def _loaded(self, rollout: str, state: RolloutState | None) -> None:
        if state is not None and rollout not in self._registered:
            self._register(rollout, state, quiet=True)
        if rollout not in self._upgraded:
            self._upgraded.add(rollout)
            # No state: whatever an earlier version kept belongs to no history there is.
            self._drop_legacy(rollout, state.history if state is not None else None)

    def _drop_legacy(self, rollout: str, history: str | None) -> None:
        """Drop the unit ids that earlier versions kept of ``rollout``; never raises.

        Its sets of unit texts (``first:{scope}``) become digests (see :meth:`_convert`); its
        HyperLogLogs of unit texts (``distinct:{scope}``) are deleted. Done at the first
        load of each rollout by this store object (one ``SCAN`` of the keys), so that no raw
        id waits out the ``ttl``. A failure is logged and counted (``store.upgrade_failed``):
        the load goes on, and sets of texts are still converted when next written to.
        """
        first, distinct = self._key(rollout, "first:"), self._key(rollout, "distinct:")
        try:
            client = self.client
            pattern = _GLOB.sub(r"\\\g<0>", self._key(rollout, "")) + "*"
            keys = list(client.scan_iter(match=pattern, count=1000))
        except Exception as exc:
            self.failures.record("store.upgrade_failed", exc, rollout=rollout)
            return
        for key in keys:
            name = _text(key)
            try:
                if name.startswith(first) and history is not None:
                    seen = self._key(rollout, "seen:" + name.removeprefix(first))
                    self._convert(rollout, seen, key, history=history)
                elif name.startswith((first, distinct)):
                    client.delete(key)
            except Exception as exc:  # one key of another type: the others still go
                self.failures.record("store.upgrade_failed", exc, rollout=rollout, key=name)

    def _traces(self, rollout: str) -> tuple[str | None, object]:
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self._meta(), "rollout:" + rollout)
        pipe.lindex(self._key(rollout, "history"), 0)
        registered, newest = pipe.execute(raise_on_error=False)
        if not isinstance(registered, bytes | str):
            registered = None
        if not isinstance(newest, bytes | str):
            newest = None
        return (_text(registered) if registered is not None else None), newest

    def compare_and_set(
        self, rollout: str, expected_version: int, state: RolloutState, transition: Transition
    ) -> bool:
        """Replace the state if its version is ``expected_version``; see :class:`Store`."""
        check_version(expected_version, state)
        client = self.client
        done = self._cas(
            keys=[self._key(rollout, "state"), self._key(rollout, "history")],
            args=[
                expected_version,
                state.version,
                dump_state(state),
                dump_transition(transition),
                self._max_history,
            ],
            client=client,
        )
        if not done:
            return False
        self._announce(rollout)
        self._changed(rollout, state)
        self._register(rollout, state)
        return True

    def _put_if_lost(self, rollout: str, state: RolloutState, transition: Transition) -> bool:
        client = self.client
        keys = [self._key(rollout, "state"), self._key(rollout, "history")]
        args = [state.version, state.history, dump_state(state), dump_transition(transition),
                self._max_history]  # fmt: skip
        if not self._put_script(keys=keys, args=args, client=client):
            return False
        self._announce(rollout)
        self._changed(rollout, state)
        self._register(rollout, state)
        return True

    def names(self) -> list[str]:
        """Return the names of the rollouts that have a stored state, sorted.

        Read from the rollouts registered in ``meta`` (every process of this version
        registers the rollouts it writes or loads), each checked for a state; a store
        without a registry (new, or written only by versions from before it) is scanned
        for state keys under the prefix instead.
        """
        client = self.client
        try:
            fields = client.hkeys(self._meta())
        except self._redis.exceptions.ResponseError:  # meta of another type: no registry
            fields = []
        # A name that is not UTF-8 (written behind the store's back) names no key: skipped.
        texts = [text for text in map(_utf8, fields) if text is not None]
        registered = [t.removeprefix("rollout:") for t in texts if t.startswith("rollout:")]
        if not registered and not fields:
            registered = self._scan_names()
        found = []
        for start in range(0, len(registered), _CHUNK):
            chunk = registered[start : start + _CHUNK]
            pipe = client.pipeline(transaction=False)
            for name in chunk:
                pipe.hexists(self._key(name, "state"), "s")
            # A state key of another type (WRONGTYPE) is a state, if a corrupt one: listed.
            answers = pipe.execute(raise_on_error=False)
            found += [
                name
                for name, has in zip(chunk, answers, strict=True)
                if has is True or isinstance(has, Exception)
            ]
        return sorted(set(found))

    def _scan_names(self) -> list[str]:
        """The rollouts with a state key under the prefix, found by one ``SCAN``."""
        head = f"{self.prefix}:{{"
        pattern = _GLOB.sub(r"\\\g<0>", head) + "*}:state"
        names = []
        for key in self.client.scan_iter(match=pattern, count=1000):
            text = _utf8(key)
            name = text[len(head) : -len("}:state")] if text is not None else ""
            if name and self._key(name, "state") == text:
                names.append(name)
        return names

    def add_errors(self, rollout: str, errors: Sequence[RecentError]) -> None:
        """Merge ``errors`` into the rollout's recent errors; see :class:`Store`.

        An optimistic transaction: the hash is read under ``WATCH``, merged, and rewritten
        in ``MULTI``; tried again when another writer changed it meanwhile (up to 50 times,
        then ``WatchError``). A hash of another type is replaced.
        """
        if not errors:
            return
        key = self._key(rollout, "errors")
        pipe: Any = self.client.pipeline(transaction=True)
        with pipe:
            for _ in range(_WATCH_TRIES - 1):
                if self._merge_errors(pipe, key, errors):
                    return
            if not self._merge_errors(pipe, key, errors):
                raise self._redis.exceptions.WatchError(
                    f"{key} changed under each of {_WATCH_TRIES} attempts to add errors"
                )

    def _merge_errors(self, pipe: Any, key: str, errors: Sequence[RecentError]) -> bool:
        """One attempt of :meth:`add_errors`; ``False`` when another writer came between."""
        try:
            pipe.watch(key)
            merged = merge_errors(self._stored_errors(pipe, key), errors)
            pipe.multi()
            pipe.delete(key)
            pipe.hset(key, mapping={_error_field(e): dump_error(e) for e in merged})
            pipe.expire(key, self._ttl)
            pipe.execute()
        except self._redis.exceptions.WatchError:
            return False
        finally:
            pipe.reset()
        return True

    def read_errors(self, rollout: str) -> list[RecentError]:
        """Return the rollout's recent errors, the most recently seen first."""
        return merge_errors(self._stored_errors(self.client, self._key(rollout, "errors")), ())

    def _stored_errors(self, client: Any, key: str) -> list[RecentError]:
        """The errors stored at ``key`` that can be read (the others are skipped).

        A key of another type holds none.
        """
        try:
            texts = client.hvals(key)
        except self._redis.exceptions.ResponseError:  # WRONGTYPE
            return []
        found = []
        for text in texts:
            with contextlib.suppress(ValueError):
                found.append(load_error(text))
        return found

    def history(self, rollout: str, limit: int | None = None) -> list[Transition]:
        """Return the rollout's transitions, newest first."""
        if limit is not None and limit <= 0:
            return []
        end = -1 if limit is None else limit - 1
        texts = self.client.lrange(self._key(rollout, "history"), 0, end)
        return self._entries(rollout, texts)

    def add_counts(self, rollout: str, segment: str, counts: Mapping[str, int]) -> dict[str, int]:
        """Add ``counts`` to the segment's counters (one round trip); return them all."""
        key = self._key(rollout, "counts:" + segment)
        pipe = self.client.pipeline(transaction=True)
        for name, n in counts.items():
            pipe.hincrby(key, name, n)
        pipe.expire(key, self._ttl)
        pipe.hgetall(key)
        totals = pipe.execute()[-1]
        return _counters(totals)

    def read_counts(self, rollout: str, segment: str) -> dict[str, int]:
        """Return the segment's counters."""
        totals = self.client.hgetall(self._key(rollout, "counts:" + segment))
        return _counters(totals)

    def add_units(self, rollout: str, scope: str, units: Collection[str]) -> list[bool]:
        """Remember ``units`` in the scope's set (``SADD``); say of each whether it was new.

        The set keeps a 64-bit digest of each unit's text, never the text.
        """
        if not units:
            return []
        keys = [self._key(rollout, "seen:" + scope), self._key(rollout, "first:" + scope)]
        members = [member(unit) for unit in units]
        new: list[bool] = []
        client = self.client
        for start in range(0, len(members), _CHUNK):
            args = [self._ttl, *members[start : start + _CHUNK]]
            added = self._add_script(keys=keys, args=args, client=client)
            if added == -1:  # a set of texts from an earlier version: digests first
                self._convert(rollout, keys[0], keys[1])
                added = self._add_script(keys=keys, args=args, client=client)
            if not isinstance(added, list) or len(added) != len(args) - 1:
                raise RuntimeError(f"unexpected answer from Redis to adding units: {added!r}")
            new += [n == 1 for n in added]
        return new

    def _convert(
        self, rollout: str, seen: str, legacy: bytes | str, history: str | None = None
    ) -> None:
        """Turn a set of unit texts (written by an earlier version) into digests, and drop it.

        Each text gets the digest that this version's processes send for that unit, under
        the key of the rollout's history (``history``, by default the stored state's), so
        that a unit counted before the upgrade is not new after it. Adding to the set waits
        until the texts are gone.
        """
        client = self.client
        if history is None:
            text = client.hget(self._key(rollout, "state"), "s")  # a failing Redis raises here
            try:
                history = load_state(text).history if text is not None else ""
            except ValueError:  # a corrupt state: the rollout is not served; count anyway
                history = ""
        key = rollout_key(rollout, history)
        while True:
            texts = client.srandmember(legacy, _CHUNK)
            if not texts:
                return
            digests = [member(digest(key, token(_text(text)))) for text in map(_member, texts)]
            pipe = client.pipeline(transaction=True)
            pipe.sadd(seen, *digests)
            pipe.expire(seen, self._ttl)
            pipe.srem(legacy, *texts)
            pipe.execute()

    def count_distinct(self, rollout: str, scope: str, units: Collection[str]) -> int:
        """Add ``units`` to the scope's HyperLogLog; return its estimate (about 0.8 % off).

        It hashes 64-bit digests of the units' texts, never the texts.
        """
        key = self._key(rollout, "units:" + scope)
        members = [member(unit) for unit in units]
        pipe = self.client.pipeline(transaction=False)
        for start in range(0, len(members), _CHUNK):
            pipe.pfadd(key, *members[start : start + _CHUNK])
        if members:
            pipe.expire(key, self._ttl)
        pipe.pfcount(key)
        return int(pipe.execute()[-1])

    def flush_many(self, flushes: Sequence[Flush]) -> list[Flushed | Exception]:
        """Apply ``flushes`` in one ``EVALSHA``; the answer to each, in order.

        See :class:`~._batch.BatchStore`. One script applies every flush (up to
        ``MAX_WEIGHT`` a round trip: a heavier list is sent in several), and reads the store's
        marker of change, which the refresh that follows then needs not read. A flush
        that meets a set of unit texts of an earlier version writes nothing: the set is
        turned into digests (:meth:`_convert`) and the flush sent again (a second round
        trip, once per such set).

        When Redis cannot be reached (no connection to send on), each flush answers the
        ``ConnectionError``: none landed. Raises when a round trip fails once sent.
        """
        if not flushes:
            return []
        self._announce_pending()  # as _generation does
        answers: dict[int, Flushed | Exception] = {}
        legacy: dict[int, list[tuple[str, str]]] = {}
        marker = self._send_all(flushes, range(len(flushes)), answers, legacy)
        again = []
        for i, sets in legacy.items():
            failed = self._converted(flushes[i].rollout, sets)
            if failed is None:
                again.append(i)
            else:  # the flush wrote nothing: it fails alone
                answers[i] = failed
        if again:
            legacy.clear()
            marker = self._send_all(flushes, again, answers, legacy)
            for i in legacy:
                answers[i] = RuntimeError("a set of unit texts came back as it was converted")
        if marker is not None:
            self._note_generation(self._marker(*marker))
        return [answers[i] for i in range(len(flushes))]

    def _converted(self, rollout: str, sets: list[tuple[str, str]]) -> Exception | None:
        """Turn ``sets`` (``(seen, texts)`` keys) into digests; what failed, if it did."""
        try:
            for seen, texts in sets:
                self._convert(rollout, seen, texts)
        except Exception as exc:
            return exc
        return None

    def _send_all(
        self,
        flushes: Sequence[Flush],
        indexes: Iterable[int],
        answers: dict[int, Flushed | Exception],
        legacy: dict[int, list[tuple[str, str]]],
    ) -> tuple[object, object] | None:
        """Send ``flushes[i]`` for each of ``indexes``, ``MAX_WEIGHT`` a round trip at most.

        Puts each answer in ``answers``, or the sets of texts the flush met in ``legacy``;
        returns the store's marker as the last round trip read it (see :meth:`_marker`),
        ``None`` when there was none (no flush could be sent).
        """
        marker = None
        for group in rounds(flushes, indexes):
            marker = self._send(flushes, group, answers, legacy) or marker
        return marker

    def _send(
        self,
        flushes: Sequence[Flush],
        indexes: list[int],
        answers: dict[int, Flushed | Exception],
        legacy: dict[int, list[tuple[str, str]]],
    ) -> tuple[object, object] | None:
        """One round trip of :meth:`flush_many`: the flushes ``indexes`` of ``flushes``."""
        keys = {f"{self.prefix}:generation": 1}  # every key the script touches, by index
        sent, planned = [], []
        for i in indexes:
            try:
                plan, names = _planned(flushes[i], self._key)
            except Exception as exc:  # a malformed flush (an error, a count): it alone
                answers[i] = exc
                continue
            sent.append(i)
            planned.append(_indexed(plan, [keys.setdefault(k, len(keys) + 1) for k in names]))
        if not sent:
            return None
        payload = {"ttl": self._ttl, "tc": MAX_ERROR_TYPE, "mc": MAX_ERROR_MESSAGE,
                   "me": MAX_ERRORS, "f": planned}  # fmt: skip
        # Texts as UTF-8 with lone surrogates kept (a message may hold one): cjson takes
        # the bytes as they are, where it would refuse the escape.
        arg = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        client = self.client  # made first: it registers the script
        try:
            _reach(client)
        except Exception as exc:  # nothing was sent: each flush failed, none landed
            answers.update(dict.fromkeys(sent, exc))
            return None
        reply = self._flush_script(keys=list(keys), args=[arg.encode("utf-8", "surrogatepass")],
                                   client=client)  # fmt: skip
        if not isinstance(reply, list) or len(reply) != len(sent) + 2:
            raise RuntimeError(f"unexpected answer from Redis to a batch of flushes: {reply!r}")
        for i, answer in zip(sent, reply[2:], strict=True):
            status = _text(answer[0])
            if status == "legacy":
                scopes = [s for s in flushes[i].events if any(d for _, d in s[1])]
                legacy[i] = [(self._key(flushes[i].rollout, "seen:" + scopes[n - 1][0]),
                              self._key(flushes[i].rollout, "first:" + scopes[n - 1][0]))
                             for n in answer[1]]  # fmt: skip
            else:
                answers[i] = self._answer(answer)
        return reply[0], reply[1]

    def _answer(self, answer: list[Any]) -> Flushed | Exception:
        """The answer to one flush, from what the script answered of it."""
        status = _text(answer[0])
        if status == "ok":
            failed = _text(answer[5])
            return Flushed(
                counters=_counters(_pairs(answer[1])),
                added={_text(name): int(n) for name, n in _pairs(answer[2]).items()},
                distinct=[int(n) for n in answer[3]],
                earlier=[_counters(_pairs(flat)) for flat in answer[4]],
                errors_failed=self._redis.exceptions.ResponseError(failed) if failed else None,
            )
        if status == "unsure":
            return Unsure(_text(answer[1]))
        refused: Exception = self._redis.exceptions.ResponseError(_text(answer[1]))
        return refused  # nothing of the flush was written

    def _marker(self, kind: object, value: object) -> object:
        """What :meth:`_generation` answers, from what the script read of the counter."""
        found = _text(kind) if isinstance(kind, bytes | str) else ""
        if found == "none":
            return 0
        if found != "string":
            exc = self._redis.exceptions.ResponseError(
                f"WRONGTYPE {self.prefix}:generation holds a {found}, not a counter"
            )
            self.failures.record("store.generation_unreadable", exc, store=repr(self))
            return None
        return self._counter(value)

    def close(self) -> None:
        """Stop the refresh and the listener, and close the connections.

        The writes whose announcement failed are announced once more first.
        """
        if not self._closed:
            self._announce_pending()
        self._stop()
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def _close(pubsub: Any) -> None:
    """Close a subscription, its connection and its client's; never raises."""
    with contextlib.suppress(Exception):
        pubsub.close()
    with contextlib.suppress(Exception):
        pubsub.owner.close()


def _counters(raw: Mapping[Any, Any]) -> dict[str, int]:
    """A hash of counters as read, without the fields that are not integers.

    Such a field was written behind the store's back; leaving it out keeps the rollout's
    flushes working.
    """
    counters = {}
    for name, value in raw.items():
        with contextlib.suppress(ValueError, TypeError):
            counters[_text(name)] = int(value)
    return counters


def _error_field(error: RecentError) -> str:
    """The field of a recent error in its hash: what makes it distinct, as JSON."""
    return json.dumps([error.arm, error.type, error.message], separators=(",", ":"))


def _member(value: object) -> bytes | str:
    return value if isinstance(value, bytes | str) else str(value)


def _utf8(value: object) -> str | None:
    """``value`` as text when it is UTF-8 (a key or field that names a rollout), else None."""
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8") if isinstance(value, bytes) else None
    except UnicodeDecodeError:
        return None


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


# Query arguments whose value is a credential (password, username, ssl_password, tokens).
_SECRET_ARGUMENT = re.compile(r"pass|user|secret|token|auth|cred|key", re.IGNORECASE)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_GLOB = re.compile(r"[*?\[\]\\]")  # what a SCAN pattern reads as a wildcard, or escapes


def _redact(url: str) -> str:
    """``url`` without its credentials, for repr, logs and error messages.

    Hidden (each run of hidden characters shown as ``***``), whatever characters a password
    has: everything between ``://`` and the last ``@`` (the user information, even with an
    unencoded ``/``, ``?``, ``#``, ``@`` or ``:`` in it), and, read as urllib reads the URL,
    the value of each query argument that carries a credential (``password=``,
    ``username=``, ``ssl_password=``, …), with what an unencoded ``#`` or ``&`` in that value
    cut off. A URL whose text before ``://`` is not a scheme is not shown at all.
    """
    try:
        scheme, sep, rest = url.partition("://")
        if not sep:
            scheme, rest = "", url
        elif not _SCHEME.fullmatch(scheme):
            return "(unparsable URL)"
        at = max(rest.rfind("@"), 0)
        hidden = [True] * at + [False] * (len(rest) - at)
        _hide_arguments(rest, 0, hidden)  # as urllib reads it
        _hide_arguments(rest, at, hidden)  # the part after the user information
        shown, previous = [scheme, sep], False
        for char, hide in zip(rest, hidden, strict=True):
            if not hide:
                shown.append(char)
            elif not previous:
                shown.append("***")
            previous = hide
        return "".join(shown)
    except Exception:  # no known case; never show the URL
        return "(unparsable URL)"


def _hide_arguments(text: str, begin: int, hidden: list[bool]) -> None:
    """Mark in ``hidden`` the values of the credential arguments of ``text[begin:]``'s query.

    The query is read as urllib reads it (the fragment first, then the query); a value runs
    on over what an unencoded ``&`` cut off (arguments without ``=``), and over the fragment
    when it is the last argument (an unencoded ``#``).
    """
    before = text[begin:].partition("#")[0]
    if "?" not in before:
        return
    start, stop = begin + before.index("?") + 1, begin + len(before)
    secret = False  # whether the argument before is a credential
    for piece in text[start:stop].split("&"):
        key, eq, _ = piece.partition("=")
        if eq:
            secret = bool(_SECRET_ARGUMENT.search(unquote_plus(key)))
        if secret:
            skip = len(key) + 1 if eq else 0
            end = len(text) if start + len(piece) == stop else start + len(piece)
            hidden[start + skip : end] = [True] * (end - start - skip)
        start += len(piece) + 1


def _misread(url: str) -> bool:
    """Whether urllib, so redis-py, ends the user information of ``url`` before its last ``@``.

    The user information then holds an unencoded ``/``, ``?`` or ``#``, and redis-py would take
    part of the password for the port, the database, the socket's path or a query argument
    (and show it in its errors). An ``@`` in the value of a query argument, or in the path of
    a ``unix://`` URL without user information, is not such a case.
    """
    if "@" not in url.partition("://")[2]:
        return False
    parts = urlsplit(url)
    if "@" in parts.fragment:
        return True
    if "@" in parts.path and (parts.scheme.lower() != "unix" or parts.netloc):
        return True
    return any("@" in piece.partition("=")[0] for piece in parts.query.split("&"))
