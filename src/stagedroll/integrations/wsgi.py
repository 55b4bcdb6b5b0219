"""WSGI middleware: bind the request's unit for the request's whole duration.

``StagedrollMiddleware(app, header="X-User-Id")`` reads the unit from a header (or a
cookie, or a callable given the WSGI environ) and binds it (:func:`stagedroll.bind`) while
the application runs *and* while the server iterates the response body, until the body's
``close()``; guards read it with ``unit=stagedroll.current_unit``. It unbinds always,
exceptions too.

The request is hostile input: a value longer than ``max_length`` characters (256), with a
control character, or not UTF-8 is not used (the request has no unit) and logged once per
middleware as ``request.unit_refused``, naming the source and never the value.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import structlog

import stagedroll

__all__ = ["MAX_LENGTH", "StagedrollMiddleware"]

MAX_LENGTH = 256
"""The longest unit read from a header or a cookie, in characters; a longer one is refused."""

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

_log = structlog.get_logger("stagedroll")


class _Reader:
    """The shared part of the middlewares: checks a request's value, logs a refusal once."""

    def __init__(self, *, header: str | None, cookie: str | None, max_length: int) -> None:
        if header is not None and not (isinstance(header, str) and header.strip()):
            raise ValueError(f"header must be a non-empty header name, not {header!r}")
        if cookie is not None and not (isinstance(cookie, str) and cookie.strip()):
            raise ValueError(f"cookie must be a non-empty cookie name, not {cookie!r}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive int, not {max_length!r}")
        self.header = header.strip() if header is not None else None
        self.cookie = cookie.strip() if cookie is not None else None
        self.max_length = max_length
        self._logged: set[str] = set()
        self._lock = threading.Lock()

    def once(self, event: str, kind: str, **fields: object) -> None:
        """Log ``event`` the first time this kind of refusal happens (never raises)."""
        with self._lock:
            if kind in self._logged:
                return
            self._logged.add(kind)
        with contextlib.suppress(Exception):  # a broken logging setup must not fail a request
            _log.warning(event, logger="stagedroll", reason=kind, **fields)

    def checked(self, raw: str | None, source: str) -> str | None:
        """The unit in ``raw`` (a latin-1 decoded header value), or ``None`` if unusable."""
        if raw is None:
            return None
        if len(raw) > 4 * self.max_length:  # before any work on a huge value
            self.once("request.unit_refused", "too_long", source=source, length=len(raw))
            return None
        try:
            value = raw.encode("latin-1").decode("utf-8").strip()
        except UnicodeError:
            self.once("request.unit_refused", "not_utf8", source=source)
            return None
        if len(value) > self.max_length:
            self.once("request.unit_refused", "too_long", source=source, length=len(value))
            return None
        if not value.isprintable():
            self.once("request.unit_refused", "control_character", source=source)
            return None
        return value or None

    def cookie_value(self, header: str | None) -> str | None:
        """The value of this reader's cookie in a ``Cookie`` header, or ``None``."""
        if header is None or self.cookie is None:
            return None
        for part in header.split(";"):
            key, sep, value = part.partition("=")
            if sep and key.strip() == self.cookie:
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                return value
        return None

    def called(self, function: Callable[..., Any], what: str, *args: object) -> Any:
        """``function(*args)``; a failure is logged once and gives ``None``."""
        try:
            return function(*args)
        except Exception as exc:  # the request goes on without a unit
            self.once(
                "request.unit_failed",
                f"{what}:{type(exc).__name__}",
                callable=what,
                error_type=type(exc).__name__,
            )
            return None

    def attributes(self, value: object) -> Mapping[str, object] | None:
        """``value`` if it is a mapping with str keys; else ``None`` (logged once)."""
        if value is None:
            return None
        if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
            return value
        self.once("request.unit_failed", "attributes:type", callable="attributes")
        return None


def _sources(header: str | None, cookie: str | None, unit: object, attributes: object) -> None:
    """Check a middleware's arguments: exactly one source of the unit, callables callable."""
    given = [name for name, v in (("header", header), ("cookie", cookie), ("unit", unit)) if v]
    if len(given) != 1:
        raise ValueError(
            f"give exactly one of header=, cookie= or unit=, not {' and '.join(given) or 'none'}"
        )
    if unit is not None and not callable(unit):
        raise TypeError(f"unit must be a callable, not {type(unit).__name__}")
    if attributes is not None and not callable(attributes):
        raise TypeError(f"attributes must be a callable, not {type(attributes).__name__}")


class StagedrollMiddleware:
    """Binds the request's unit for the whole request, response body included.

    Exactly one source: ``header`` (a header's name, such as ``"X-User-Id"``), ``cookie``
    (a cookie's name), or ``unit`` (a callable given the WSGI environ, returning the unit
    or ``None``). ``attributes`` (optional) is a callable given the environ, returning the
    attributes (a mapping) or ``None``. A callable that raises is logged once
    (``request.unit_failed``) and the request goes on with no unit: stagedroll's failures
    never fail a request.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        header: str | None = None,
        cookie: str | None = None,
        unit: Callable[[Environ], object] | None = None,
        attributes: Callable[[Environ], Mapping[str, object] | None] | None = None,
        max_length: int = MAX_LENGTH,
    ) -> None:
        _sources(header, cookie, unit, attributes)
        self.app = app
        self.unit = unit
        self.attributes = attributes
        self._reader = _Reader(header=header, cookie=cookie, max_length=max_length)
        self._key = (
            "HTTP_" + header.strip().upper().replace("-", "_") if header is not None else None
        )

    def read(self, environ: Environ) -> tuple[object, Mapping[str, object] | None]:
        """The unit and the attributes of a request (``None`` for what it does not give)."""
        reader = self._reader
        if self.unit is not None:
            unit = reader.called(self.unit, "unit", environ)
        elif self._key is not None:
            unit = reader.checked(environ.get(self._key), f"header {reader.header}")
        else:
            unit = reader.checked(
                reader.cookie_value(environ.get("HTTP_COOKIE")), f"cookie {reader.cookie}"
            )
        attributes = None
        if self.attributes is not None:
            attributes = reader.attributes(reader.called(self.attributes, "attributes", environ))
        return unit, attributes

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        unit, attributes = self.read(environ)
        bound = stagedroll.bind(unit, attributes)
        try:
            body = self.app(environ, start_response)
        except BaseException:
            bound.reset()
            raise
        return _Body(body, bound)


class _Body:
    """The application's response body; unbinds the unit when the server closes it."""

    __slots__ = ("_body", "_bound", "_iterator")

    def __init__(self, body: Iterable[bytes], bound: stagedroll.Bound) -> None:
        self._body = body
        self._bound = bound
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:
            self._iterator = iter(self._body)
        return next(self._iterator)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._bound.reset()
