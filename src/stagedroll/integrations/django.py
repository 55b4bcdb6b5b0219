"""Django: a middleware that binds the request's unit while the view runs.

Add ``"stagedroll.integrations.django.StagedrollMiddleware"`` to ``MIDDLEWARE``, after
``AuthenticationMiddleware``. The unit is the authenticated user's primary key (as text);
with no authenticated user, the header named by the ``STAGEDROLL_UNIT_HEADER`` setting
(such as ``"X-User-Id"``), if set; else no unit. Subclass and override :meth:`unit` (and
:meth:`attributes`) to choose otherwise. Sync and async stacks are both served.

A ``StreamingHttpResponse`` is iterated after the middleware returns: its body does not see
the unit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings  # type: ignore[import-untyped]  # no stubs or py.typed
from django.http import HttpRequest, HttpResponseBase  # type: ignore[import-untyped]  # idem

import stagedroll

from .wsgi import MAX_LENGTH, _Reader

__all__ = ["StagedrollMiddleware"]


class StagedrollMiddleware:
    """Binds ``self.unit(request)`` (and ``self.attributes(request)``) around the view.

    The hooks are called once per request; one that raises is logged once
    (``request.unit_failed``) and the request goes on with no unit.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        header = getattr(settings, "STAGEDROLL_UNIT_HEADER", None)
        if header is not None and not (isinstance(header, str) and header.strip()):
            raise ValueError(
                f"settings.STAGEDROLL_UNIT_HEADER must be a header name, not {header!r}"
            )
        self._reader = _Reader(header=header, cookie=None, max_length=MAX_LENGTH)

    def unit(self, request: HttpRequest) -> object:
        """The request's unit: the authenticated user's ``pk`` as text, else the header's."""
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            return str(user.pk)
        return self.header_unit(request)

    def header_unit(self, request: HttpRequest) -> object:
        """The unit in the ``STAGEDROLL_UNIT_HEADER`` header, checked; ``None`` without."""
        reader = self._reader
        if reader.header is None:
            return None
        key = "HTTP_" + reader.header.upper().replace("-", "_")
        return reader.checked(request.META.get(key), f"header {reader.header}")

    def attributes(self, request: HttpRequest) -> Mapping[str, object] | None:
        """The request's attributes for targeting: none, unless a subclass says."""
        return None

    def _read(self, request: HttpRequest) -> tuple[object, Mapping[str, object] | None]:
        reader = self._reader
        unit = reader.called(self.unit, "unit", request)
        return unit, reader.attributes(reader.called(self.attributes, "attributes", request))

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.is_async:
            return self._acall(request)
        unit, attributes = self._read(request)
        with stagedroll.bind(unit, attributes):
            response: HttpResponseBase = self.get_response(request)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        auser = getattr(request, "auser", None)
        if auser is not None:  # the lazy user, resolved the async way (no sync DB access)
            try:
                request.user = await auser()
            except Exception:  # the user hook below sees no user then
                self._reader.once("request.unit_failed", "auser", callable="auser")
        unit, attributes = self._read(request)
        with stagedroll.bind(unit, attributes):
            response: HttpResponseBase = await self.get_response(request)
        return response
