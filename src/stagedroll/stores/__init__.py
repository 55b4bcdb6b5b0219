"""State stores: where rollout state, its audit trail and the pooled outcome counts live.

:func:`store_from_url` turns a URL into a store: ``memory://`` (:class:`MemoryStore`),
``sqlite:///path/to.db`` (:class:`SQLiteStore`), ``redis://host:6379/0`` (:class:`RedisStore`),
``postgresql://host:5432/dbname`` (:class:`PostgresStore`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from . import _redis
from ._memory import MemoryStore
from ._postgres import PostgresStore
from ._protocol import StateListener, Store, SyncingStore
from ._redis import RedisStore
from ._sqlite import SQLiteStore

__all__ = [
    "MemoryStore",
    "PostgresStore",
    "RedisStore",
    "SQLiteStore",
    "StateListener",
    "Store",
    "SyncingStore",
    "store_from_url",
]

_SCHEMES = ("memory", "sqlite", "redis", "rediss", "postgresql", "postgres")


def _octal(text: str) -> int:
    """File permissions written in octal (``600``, ``0600`` or ``0o600``)."""
    return int(text.removeprefix("0o"), 8)


def _switch(text: str) -> bool:
    """On or off: ``1``, ``true``, ``yes``, ``on`` or ``0``, ``false``, ``no``, ``off``."""
    value = {"1": True, "true": True, "yes": True, "on": True,
             "0": False, "false": False, "no": False, "off": False}.get(text.lower())  # fmt: skip
    if value is None:
        raise ValueError(text)
    return value


_switch.__name__ = "1 or 0 (true or false)"

_OPTIONS: dict[str, Callable[[str], Any]] = {
    "push": _switch,
    "refresh_interval": float,
    "timeout": float,
    "max_history": int,
    "ttl": float,
    "prefix": str,
    "mode": _octal,
    "schema": str,
}


def _options(
    url: str, query: str, allowed: tuple[str, ...], *, passthrough: bool = False
) -> dict[str, Any]:
    """Parse stagedroll's options off a URL's query (``passthrough``: others are the client's).

    ``url`` is shown in errors without its credentials.
    """
    shown = _redis._redact(url)
    options: dict[str, Any] = {}
    for key, text in parse_qsl(query, keep_blank_values=True):
        if key not in allowed:
            if key in _OPTIONS or not passthrough:  # a typo must not pass unnoticed
                known = ", ".join(allowed)
                raise ValueError(f"store URL {shown!r}: unknown option {key!r} (known: {known})")
            continue
        kind = getattr(_OPTIONS[key], "__name__", "valid").lstrip("_")
        try:
            options[key] = _OPTIONS[key](text)
        except ValueError:
            # A Redis or PostgreSQL URL's query may hold a password's tail (an unencoded "?"):
            # not quoted.
            found = "" if passthrough else f", not {text!r}"
            raise ValueError(f"store URL {shown!r}: {key} must be {kind}{found}") from None
    return options


def _without(url: str, names: tuple[str, ...]) -> str:
    """``url`` without the query arguments ``names`` (stagedroll's): the client's URL.

    The rest is kept as written (not encoded again), so that what a password with an
    unencoded ``?`` put in the query still ends at its ``@``, which ``_redact`` hides.
    """
    before, hash_, fragment = url.partition("#")  # as urlsplit splits: the fragment first
    base, _, query = before.partition("?")
    rest = []
    for piece in query.split("&") if query else []:
        pairs = parse_qsl(piece, keep_blank_values=True)
        if piece and not (pairs and pairs[0][0] in names):
            rest.append(piece)
    return base + ("?" + "&".join(rest) if rest else "") + hash_ + fragment


def store_from_url(url: str, *, create: bool = True) -> Store:
    """Return the store a URL names.

    - ``memory://``: a new :class:`MemoryStore` (each URL makes its own);
    - ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``: a :class:`SQLiteStore`
      (the SQLAlchemy convention), with options ``?refresh_interval=1&timeout=0.5`` and
      ``mode=0640`` (octal: the permissions of a new file, ``0600`` by default);
    - ``redis://[:password@]host:6379/0`` or ``rediss://…``: a :class:`RedisStore`, with
      options ``?prefix=myapp&refresh_interval=1&timeout=0.25``; other query arguments go to
      redis-py;
    - ``postgresql://[user[:password]@]host:5432/dbname`` or ``postgres://…``: a
      :class:`PostgresStore`, with options ``?schema=myapp&refresh_interval=1&timeout=2``,
      ``max_history``, ``ttl`` and ``push`` (``0`` or ``1``); other query
      arguments go to libpq (``sslmode=require``, ``application_name=…``).

    ``create=False``: a SQLite file that does not exist (or holds no stagedroll tables) is
    not created but refused, with a :class:`~stagedroll.StoreError` naming its resolved
    path; so is a PostgreSQL schema without stagedroll tables, at the store's first use.
    Memory and Redis stores ignore it (a Redis database cannot be told from an empty
    one but by what it holds: :meth:`Store.names` says whether it holds any rollout, which
    is what the CLI checks).

    Raises :class:`ValueError` for a scheme stagedroll does not know, or an unknown or
    malformed option (the URL shown without its credentials),
    and :class:`ImportError` with an install hint when ``redis`` (or ``psycopg``) is missing.
    """
    shown = _redis._redact(url)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValueError(f"malformed store URL {shown!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme == "memory":
        return MemoryStore(**_options(url, parts.query, ("max_history",)))
    if scheme == "sqlite":
        path = unquote(url.partition("://")[2].split("?", 1)[0])
        if "://" not in url or not path.startswith("/") or path == "/":
            raise ValueError(
                f"store URL {shown!r}: expected sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db"
            )
        allowed = ("refresh_interval", "timeout", "max_history", "ttl", "mode", "push")
        return SQLiteStore(path[1:], create=create, **_options(url, parts.query, allowed))
    if scheme in ("redis", "rediss"):
        allowed = ("refresh_interval", "timeout", "max_history", "ttl", "prefix", "push")
        options = _options(url, parts.query, allowed, passthrough=True)
        return RedisStore(_without(url, allowed), **options)
    if scheme in ("postgresql", "postgres"):
        allowed = ("schema", "refresh_interval", "timeout", "max_history", "ttl", "push")
        options = _options(url, parts.query, allowed, passthrough=True)
        return PostgresStore(_without(url, allowed), create=create, **options)
    known = ", ".join(f"{s}://" for s in _SCHEMES)
    raise ValueError(f"unsupported store URL {shown!r}: known schemes are {known}")
