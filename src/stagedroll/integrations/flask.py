"""Flask: bind the request's unit from ``before_request`` to ``teardown_request``.

``init_app(app, header="X-User-Id")`` (or ``cookie=``, or ``unit=`` a callable given
:data:`flask.request`, called inside the request context, so that it can read ``flask.g``
or the logged-in user) binds the unit (:func:`stagedroll.bind`) before the view runs and
unbinds it at the request's teardown, exceptions too. A view's guard reads it with
``unit=stagedroll.current_unit``.

A streamed response body (a generator) is iterated after the teardown: to bind it too,
wrap the WSGI application instead, with
:class:`stagedroll.integrations.wsgi.StagedrollMiddleware`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import flask

import stagedroll

from .wsgi import MAX_LENGTH, _Reader, _sources

__all__ = ["init_app"]

_KEY = "stagedroll_bound"


def init_app(
    app: flask.Flask,
    *,
    header: str | None = None,
    cookie: str | None = None,
    unit: Callable[[flask.Request], object] | None = None,
    attributes: Callable[[flask.Request], Mapping[str, object] | None] | None = None,
    max_length: int = MAX_LENGTH,
) -> None:
    """Bind each request's unit in ``app``: exactly one of ``header``, ``cookie``, ``unit``.

    ``attributes`` (optional) is a callable given the request, returning a mapping or
    ``None``. A callable that raises is logged once (``request.unit_failed``) and the request
    goes on with no unit; a header or cookie value that is too long (``max_length``), not
    UTF-8 or holds a control character is not used (``request.unit_refused``, logged once).
    """
    _sources(header, cookie, unit, attributes)
    reader = _Reader(header=header, cookie=cookie, max_length=max_length)

    def bind_unit() -> None:
        request = flask.request
        if unit is not None:
            value = reader.called(unit, "unit", request)
        elif reader.header is not None:
            raw = request.headers.get(reader.header)  # as WSGI gives it: latin-1 text
            value = reader.checked(raw, f"header {reader.header}")
        else:
            cookies = request.headers.get("Cookie")
            value = reader.checked(reader.cookie_value(cookies), f"cookie {reader.cookie}")
        bound_attributes = None
        if attributes is not None:
            bound_attributes = reader.attributes(reader.called(attributes, "attributes", request))
        setattr(flask.g, _KEY, stagedroll.bind(value, bound_attributes))

    def unbind_unit(exc: BaseException | None) -> None:
        bound = flask.g.pop(_KEY, None)
        if isinstance(bound, stagedroll.Bound):
            bound.reset()

    # In registration order: a ``unit`` reading what an earlier function set (the logged-in
    # user) needs ``init_app`` called after that function is registered.
    app.before_request(bind_unit)
    app.teardown_request(unbind_unit)
