"""Tests of the ASGI middleware, through Starlette's and FastAPI's own test clients."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import warnings
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
import structlog.testing
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.exceptions import StarletteDeprecationWarning
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

import stagedroll
from integrating import IN, OUT, POLICY, guarded_price
from stagedroll import Rollouts
from stagedroll.integrations.asgi import Headers, Scope, StagedrollMiddleware
from stagedroll.testing import RecordingSink

with warnings.catch_warnings():
    # Starlette 1.10 asks for httpx2 in place of httpx, which the dev group installs.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient


@pytest.fixture(name="rollouts")
def _rollouts() -> Rollouts:
    return Rollouts(POLICY)


async def unit_text(request: Request) -> PlainTextResponse:
    """A Starlette endpoint answering with the bound unit."""
    return PlainTextResponse(str(stagedroll.current_unit()))


def starlette(**options: Any) -> TestClient:
    """A test client of a Starlette app answering ``/`` with the unit, behind the middleware."""
    app = Starlette(routes=[Route("/", unit_text)])
    app.add_middleware(StagedrollMiddleware, **options)
    return TestClient(app)


class TestFastAPI:
    def test_the_two_units_straddle_half(self, rollouts: Rollouts) -> None:
        """The units the tests use are in and out of the rollout at 50 %."""
        assert rollouts.decide("new-pricing", IN).enabled
        assert not rollouts.decide("new-pricing", OUT).enabled

    def test_two_users_get_their_own_path_and_counts(self, rollouts: Rollouts) -> None:
        """One endpoint, two users: each gets its cohort's path, counted under its own unit."""
        price = guarded_price(rollouts)
        app = FastAPI()
        app.add_middleware(StagedrollMiddleware, header="X-User-Id")

        @app.get("/price")
        async def endpoint() -> dict[str, str]:
            return {"price": price()}

        with RecordingSink(rollouts) as sink, TestClient(app) as test:
            assert test.get("/price", headers={"X-User-Id": IN}).json() == {"price": "new"}
            assert test.get("/price", headers={"X-User-Id": OUT}).json() == {"price": "old"}
        assert sink.units("new-pricing", enabled=True) == {IN}
        assert sink.units("new-pricing", enabled=False) == {OUT}
        status = rollouts.status("new-pricing")
        assert (status.treatment.calls, status.control.calls) == (1, 1)

    def test_a_sync_endpoint_in_the_threadpool_sees_the_unit(self) -> None:
        """A plain ``def`` endpoint runs in a worker thread with the request's context."""
        app = FastAPI()
        app.add_middleware(StagedrollMiddleware, header="X-User-Id")

        @app.get("/")
        def endpoint() -> dict[str, object]:
            return {"unit": stagedroll.current_unit(), "main": threading.current_thread().name}

        body = TestClient(app).get("/", headers={"X-User-Id": "u1"}).json()
        assert body["unit"] == "u1"
        assert body["main"] != threading.current_thread().name

    def test_tasks_and_threads_started_in_the_request_see_the_unit(self) -> None:
        """An asyncio task, ``to_thread`` and a thread given the context see the unit."""
        app = FastAPI()
        app.add_middleware(StagedrollMiddleware, header="X-User-Id")

        @app.get("/")
        async def endpoint() -> list[object]:
            task = asyncio.create_task(asyncio.sleep(0, stagedroll.current_unit()))
            seen: list[object] = [await task, await asyncio.to_thread(stagedroll.current_unit)]
            thread = threading.Thread(
                target=contextvars.copy_context().run,
                args=(lambda: seen.append(stagedroll.current_unit()),),
            )
            thread.start()
            thread.join()
            return seen

        assert TestClient(app).get("/", headers={"X-User-Id": "u1"}).json() == ["u1"] * 3


class TestStarlette:
    def test_header_cookie_and_none(self) -> None:
        """The unit comes from the header, or the cookie; a request without has none."""
        assert starlette(header="X-User-Id").get("/", headers={"X-User-Id": "u1"}).text == "u1"
        assert starlette(header="X-User-Id").get("/").text == "None"
        test = starlette(cookie="uid")
        assert test.get("/", headers={"Cookie": "a=1; uid=u2"}).text == "u2"

    def test_a_callable_gets_the_scope_and_the_headers(self) -> None:
        """``unit=`` and ``attributes=`` are called with the scope and the decoded headers."""

        def unit(scope: Scope, headers: Headers) -> object:
            return f"{scope['path'].strip('/')}-{headers['x-team']}"

        def attributes(scope: Scope, headers: Headers) -> Mapping[str, object]:
            return {"method": scope["method"]}

        async def endpoint(request: Request) -> PlainTextResponse:
            bound = (stagedroll.current_unit(), dict(stagedroll.current_attributes()))
            return PlainTextResponse(repr(bound))

        app = Starlette(routes=[Route("/{name}", endpoint)])
        app.add_middleware(StagedrollMiddleware, unit=unit, attributes=attributes)
        text = TestClient(app).get("/ada", headers={"X-Team": "red"}).text
        assert text == "('ada-red', {'method': 'GET'})"

    def test_a_streamed_body_sees_the_unit(self) -> None:
        """Every chunk of a streamed response is made with the unit bound."""

        async def chunks() -> AsyncIterator[str]:
            for _ in range(3):
                await asyncio.sleep(0)
                yield f"{stagedroll.current_unit()};"

        async def endpoint(request: Request) -> StreamingResponse:
            return StreamingResponse(chunks())

        app = Starlette(routes=[Route("/", endpoint)])
        app.add_middleware(StagedrollMiddleware, header="X-User-Id")
        assert TestClient(app).get("/", headers={"X-User-Id": "u1"}).text == "u1;u1;u1;"

    def test_a_websocket_sees_the_unit(self) -> None:
        """A websocket connection is bound for its whole life."""

        async def socket(websocket: WebSocket) -> None:
            await websocket.accept()
            await websocket.receive_text()
            await websocket.send_text(str(stagedroll.current_unit()))
            await websocket.close()

        app = Starlette(routes=[WebSocketRoute("/ws", socket)])
        app.add_middleware(StagedrollMiddleware, header="X-User-Id")
        with TestClient(app).websocket_connect("/ws", headers={"X-User-Id": "u1"}) as ws:
            ws.send_text("hi")
            assert ws.receive_text() == "u1"

    def test_the_lifespan_passes_through(self) -> None:
        """Startup and shutdown run through the middleware, with no unit bound."""
        seen: list[object] = []

        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            seen.append(stagedroll.current_unit())
            yield

        from contextlib import asynccontextmanager

        app = Starlette(routes=[Route("/", unit_text)], lifespan=asynccontextmanager(lifespan))
        app.add_middleware(StagedrollMiddleware, header="X-User-Id")
        with TestClient(app) as test:
            assert test.get("/", headers={"X-User-Id": "u1"}).text == "u1"
        assert seen == [None]

    def test_unbound_after_an_exception(self) -> None:
        """An endpoint that raises leaves nothing bound, and the error reaches the client."""

        async def endpoint(request: Request) -> PlainTextResponse:
            raise RuntimeError("boom")

        async def main() -> object:
            app = StagedrollMiddleware(Starlette(routes=[Route("/", endpoint)]), header="X-U")
            scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/"}
            scope |= {"headers": [(b"x-u", b"u1")], "query_string": b"", "root_path": ""}

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: Any) -> None:
                return None

            with pytest.raises(RuntimeError, match="boom"):
                await app(scope, receive, send)
            return stagedroll.current_unit()

        assert asyncio.run(main()) is None


class TestHostile:
    def test_a_long_header_is_not_used_and_logged_once(self) -> None:
        """A header value over 256 characters gives no unit, logged once without the value."""
        test = starlette(header="X-User-Id")
        value = "u" * 257
        with structlog.testing.capture_logs() as logs:
            assert test.get("/", headers={"X-User-Id": value}).text == "None"
            assert test.get("/", headers={"X-User-Id": value}).text == "None"
        assert [(e["event"], e["reason"]) for e in logs] == [("request.unit_refused", "too_long")]
        assert value not in str(logs)

    def test_a_utf8_header_is_decoded(self) -> None:
        """A UTF-8 header value is the unit as text, as the WSGI middleware reads it."""
        test = starlette(header="X-User-Id")
        assert test.get("/", headers={"X-User-Id": "jörg".encode()}).text == "jörg"

    def test_a_failing_callable_gives_no_unit(self) -> None:
        """A unit callable that raises is logged once; the request is served with no unit."""

        def broken(scope: Scope, headers: Headers) -> object:
            raise LookupError("user-secret")

        test = starlette(unit=broken)
        with structlog.testing.capture_logs() as logs:
            assert test.get("/").text == "None"
        assert [e["error_type"] for e in logs] == ["LookupError"]
