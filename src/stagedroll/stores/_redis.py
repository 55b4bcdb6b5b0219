"""The Redis store: one state for a fleet of hosts (extra ``stagedroll[redis]``).

Keys, under a prefix per application (``stagedroll`` by default), with the rollout's name
as a hash tag so that one rollout's keys share a Redis Cluster slot:

- ``{prefix}:{name}:state``: a hash, ``v`` the version and ``s`` the state as JSON;
  compare-and-set is one Lua script that also appends the history entry;
- ``{prefix}:{name}:history``: a list, newest first, capped at ``max_history``;
- ``{prefix}:{name}:counts:{segment}``: a hash of pooled outcome counters;
- ``{prefix}:{name}:first:{scope}``: a set of units (exact: ``SADD`` says if a unit is new);
- ``{prefix}:{name}:distinct:{scope}``: a HyperLogLog of units (12 KB, about 0.8 % error).

Counters and unit sets expire ``ttl`` seconds (default 30 days) after their last write.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .._state import RolloutState, Transition
from ._codec import dump_state, dump_transition, load_transition
from ._memory import check_version
from ._syncer import SharedStore

if TYPE_CHECKING:
    import redis

__all__ = ["RedisStore"]

_CAS = """
local current = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if current ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 's', ARGV[3])
redis.call('LPUSH', KEYS[2], ARGV[4])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[5]) - 1)
return 1
"""

# Restore a lost state: the same rule as stagedroll._state.restorable, atomically.
_PUT_IF_LOST = """
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
    ``ttl`` is how long outcome counters live after their last write.
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
    ) -> None:
        if max_history < 1:
            raise ValueError("max_history must be at least 1")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        if not ttl >= 1:
            raise ValueError(f"ttl must be at least 1 (second), not {ttl!r}")
        self._redis = _import_redis()
        super().__init__(refresh_interval=refresh_interval, thread_name="stagedroll-redis")
        self.url = url
        self.prefix = prefix
        self._timeout = timeout
        self._max_history = max_history
        self._ttl = math.ceil(ttl)  # EXPIRE takes whole seconds
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._cas: Any = None
        self._put_script: Any = None

    def _after_fork(self) -> None:
        super()._after_fork()
        self._lock = threading.Lock()
        if self._client is not None:
            _abandoned.append(self._client)
        self._client = None

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
                    retry = self._redis.retry.Retry(self._redis.backoff.NoBackoff(), 0)
                    self._client = self._redis.Redis.from_url(
                        self.url,
                        socket_timeout=self._timeout,
                        socket_connect_timeout=self._timeout,
                        retry=retry,
                        retry_on_timeout=False,
                    )
                    self._cas = self._client.register_script(_CAS)
                    self._put_script = self._client.register_script(_PUT_IF_LOST)
                client = self._client
        return client

    def _key(self, rollout: str, kind: str) -> str:
        return f"{self.prefix}:{{{rollout}}}:{kind}"

    # -- the Store protocol ---------------------------------------------------------------------

    def _read_many(self, names: list[str]) -> dict[str, str | bytes | None]:
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.hget(self._key(name, "state"), "s")
        return dict(zip(names, pipe.execute(), strict=True))

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
        self._changed(rollout, state)
        return True

    def _put_if_lost(self, rollout: str, state: RolloutState, transition: Transition) -> bool:
        client = self.client
        keys = [self._key(rollout, "state"), self._key(rollout, "history")]
        args = [state.version, state.history, dump_state(state), dump_transition(transition),
                self._max_history]  # fmt: skip
        if not self._put_script(keys=keys, args=args, client=client):
            return False
        self._changed(rollout, state)
        return True

    def history(self, rollout: str, limit: int | None = None) -> list[Transition]:
        """Return the rollout's transitions, newest first."""
        if limit is not None and limit <= 0:
            return []
        end = -1 if limit is None else limit - 1
        texts = self.client.lrange(self._key(rollout, "history"), 0, end)
        return [load_transition(text) for text in texts]

    def add_counts(self, rollout: str, segment: str, counts: Mapping[str, int]) -> dict[str, int]:
        """Add ``counts`` to the segment's counters (one round trip); return them all."""
        key = self._key(rollout, "counts:" + segment)
        pipe = self.client.pipeline(transaction=True)
        for name, n in counts.items():
            pipe.hincrby(key, name, n)
        pipe.expire(key, self._ttl)
        pipe.hgetall(key)
        totals = pipe.execute()[-1]
        return {_text(k): int(v) for k, v in totals.items()}

    def read_counts(self, rollout: str, segment: str) -> dict[str, int]:
        """Return the segment's counters."""
        totals = self.client.hgetall(self._key(rollout, "counts:" + segment))
        return {_text(k): int(v) for k, v in totals.items()}

    def add_units(self, rollout: str, scope: str, units: Collection[str]) -> list[bool]:
        """Remember ``units`` in the scope's set (``SADD``); say of each whether it was new."""
        if not units:
            return []
        key = self._key(rollout, "first:" + scope)
        pipe = self.client.pipeline(transaction=False)
        for unit in units:
            pipe.sadd(key, unit)
        pipe.expire(key, self._ttl)
        added = pipe.execute()[:-1]
        return [n == 1 for n in added]

    def count_distinct(self, rollout: str, scope: str, units: Collection[str]) -> int:
        """Add ``units`` to the scope's HyperLogLog; return its estimate (about 0.8 % off)."""
        key = self._key(rollout, "distinct:" + scope)
        pipe = self.client.pipeline(transaction=False)
        if units:
            pipe.pfadd(key, *units)
            pipe.expire(key, self._ttl)
        pipe.pfcount(key)
        return int(pipe.execute()[-1])

    def close(self) -> None:
        """Stop the refresh and close the connections."""
        self._stop()
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _redact(url: str) -> str:
    """``url`` without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def split_options(url: str) -> tuple[str, dict[str, str]]:
    """Take stagedroll's options (``prefix``, ``refresh_interval``, ``timeout``) off ``url``."""
    parts = urlsplit(url)
    ours = {"prefix", "refresh_interval", "timeout", "max_history", "ttl"}
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = {k: v for k, v in query if k in ours}
    rest = urlencode([(k, v) for k, v in query if k not in ours])
    return urlunsplit(parts._replace(query=rest)), options
