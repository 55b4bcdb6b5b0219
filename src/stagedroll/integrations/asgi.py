"""ASGI middleware: bind the request's unit for the whole ASGI call, streaming included.

``StagedrollMiddleware(app, header="X-User-Id")`` (or, in Starlette and FastAPI,
``app.add_middleware(StagedrollMiddleware, header="X-User-Id")``) reads the unit from a
header, a cookie, or a callable given the ASGI scope and the request's headers, and binds it
(:func:`stagedroll.bind`) around the application's call for ``http`` and ``websocket``
scopes; ``lifespan`` passes through. Tasks the application creates inherit the binding
(asyncio copies the context). The same bounds as the WSGI middleware apply to what the
request gives (:mod:`stagedroll.integrations.wsgi`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

import stagedroll

from .wsgi import MAX_LENGTH, _Reader, _sources

__all__ = ["StagedrollMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = Mapping[str, str]
"""A request's headers for the callables: lower-case names, latin-1 decoded values, the
first of repeated headers."""


class StagedrollMiddleware:
    """Binds the request's unit around the ASGI application's call.

    Exactly one source: ``header`` (a header's name), ``cookie`` (a cookie's name), or
    ``unit`` (a callable given the scope and the headers, returning the unit or ``None``;
    Starlette's ``scope["user"]`` is there when an authentication middleware ran first).
    ``attributes`` (optional) is a callable given the same two, returning a mapping or
    ``None``. A callable that raises is logged once and the request goes on with no unit.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        header: str | None = None,
        cookie: str | None = None,
        unit: Callable[[Scope, Headers], object] | None = None,
        attributes: Callable[[Scope, Headers], Mapping[str, object] | None] | None = None,
        max_length: int = MAX_LENGTH,
    ) -> None:
        _sources(header, cookie, unit, attributes)
        self.app = app
        self.unit = unit
        self.attributes = attributes
        self._reader = _Reader(header=header, cookie=cookie, max_length=max_length)

    def read(self, scope: Scope) -> tuple[object, Mapping[str, object] | None]:
        """The unit and the attributes of a request (``None`` for what it does not give)."""
        reader = self._reader
        headers = _headers(scope)
        if self.unit is not None:
            unit = reader.called(self.unit, "unit", scope, headers)
        elif reader.header is not None:
            unit = reader.checked(headers.get(reader.header.lower()), f"header {reader.header}")
        else:
            unit = reader.checked(
                reader.cookie_value(headers.get("cookie")), f"cookie {reader.cookie}"
            )
        attributes = None
        if self.attributes is not None:
            attributes = reader.attributes(
                reader.called(self.attributes, "attributes", scope, headers)
            )
        return unit, attributes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        unit, attributes = self.read(scope)
        with stagedroll.bind(unit, attributes):
            await self.app(scope, receive, send)


def _headers(scope: Scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in scope.get("headers") or ():  # bytes, by the ASGI spec
        headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return headers
