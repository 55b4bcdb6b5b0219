"""Tests of the WSGI middleware, through Werkzeug's test client and the stdlib's validator."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.validate import validator

import pytest
import structlog.testing
from hypothesis import given
from hypothesis import strategies as st
from werkzeug.test import Client

import stagedroll
from integrating import IN, OUT, POLICY, guarded_price, seen_by_a_thread_and_a_task
from stagedroll import Rollouts
from stagedroll.integrations.wsgi import Environ, StagedrollMiddleware, StartResponse
from stagedroll.testing import RecordingSink


def text_app(read: Callable[[], object]) -> Callable[[Environ, StartResponse], Iterable[bytes]]:
    """A WSGI app whose body is ``str(read())``, read when the app is called."""

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(read()).encode()]

    return app


class BufferedClient(Client):
    """Werkzeug's test client, reading and closing each response (as a server does)."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("buffered", True)
        return super().open(*args, **kwargs)


def client(app: Callable[[Environ, StartResponse], Iterable[bytes]], **options: Any) -> Client:
    """A test client of ``app`` behind the middleware, checked by ``wsgiref.validate``."""
    return BufferedClient(validator(StagedrollMiddleware(app, **options)), use_cookies=False)


@pytest.fixture(name="rollouts")
def _rollouts() -> Rollouts:
    return Rollouts(POLICY)


class TestUsers:
    def test_the_two_units_straddle_half(self, rollouts: Rollouts) -> None:
        """The units the tests use are in and out of the rollout at 50 %."""
        assert rollouts.decide("new-pricing", IN).enabled
        assert not rollouts.decide("new-pricing", OUT).enabled

    def test_two_users_get_their_own_path_and_counts(self, rollouts: Rollouts) -> None:
        """One handler, two users: each gets its cohort's path, counted under its own unit."""
        price = guarded_price(rollouts)
        test = client(text_app(price), header="X-User-Id")
        with RecordingSink(rollouts) as sink:
            assert test.get(headers={"X-User-Id": IN}).text == "new"
            assert test.get(headers={"X-User-Id": OUT}).text == "old"
        assert sink.units("new-pricing", enabled=True) == {IN}
        assert sink.units("new-pricing", enabled=False) == {OUT}
        status = rollouts.status("new-pricing")
        assert (status.treatment.calls, status.control.calls) == (1, 1)

    def test_no_header_takes_the_no_unit_path(self, rollouts: Rollouts) -> None:
        """A request without the header has no unit: the guard takes the old path."""
        price = guarded_price(rollouts)
        assert client(text_app(price), header="X-User-Id").get().text == "old"


class TestSources:
    def test_a_cookie(self) -> None:
        """``cookie=`` reads the named cookie among others, quoted or not."""
        test = client(text_app(stagedroll.current_unit), cookie="uid")
        assert test.get(headers={"Cookie": 'a=1; uid="user-7"; b=2'}).text == "user-7"
        assert test.get(headers={"Cookie": "uid=user-8"}).text == "user-8"
        assert test.get(headers={"Cookie": "uidx=user-8"}).text == "None"

    def test_a_callable_and_attributes(self) -> None:
        """``unit=`` and ``attributes=`` are called with the environ."""
        test = client(
            text_app(lambda: (stagedroll.current_unit(), dict(stagedroll.current_attributes()))),
            unit=lambda environ: environ["PATH_INFO"].strip("/"),
            attributes=lambda environ: {"method": environ["REQUEST_METHOD"]},
        )
        assert test.get("/user-9").text == "('user-9', {'method': 'GET'})"

    def test_a_utf8_header_is_decoded(self) -> None:
        """A UTF-8 header value is the unit as text, as an ASGI server would give it."""
        test = client(text_app(stagedroll.current_unit), header="X-User-Id")
        raw = "jörg".encode().decode("latin-1")  # what a WSGI server puts in the environ
        assert test.get(headers={"X-User-Id": raw}).text == "jörg"

    @given(st.text(st.characters(codec="utf-8"), min_size=1, max_size=40))
    def test_any_printable_value_is_the_unit(self, value: str) -> None:
        """A printable header value within bounds is the unit, surrounding spaces aside."""
        seen: list[object] = []
        app = StagedrollMiddleware(
            text_app(lambda: seen.append(stagedroll.current_unit())), header="X-U"
        )
        environ = {"HTTP_X_U": value.encode().decode("latin-1"), "REQUEST_METHOD": "GET"}
        body = app(environ, lambda *args: None)
        try:
            list(body)
        finally:
            body.close()  # type: ignore[attr-defined]  # the middleware's body has close()
        stripped = value.strip()
        expected = stripped if stripped and stripped.isprintable() else None
        assert seen == [expected]

    @pytest.mark.parametrize(
        "options",
        [{}, {"header": "X-U", "cookie": "u"}, {"header": ""}],
        ids=["none", "two", "empty"],
    )
    def test_exactly_one_source(self, options: dict[str, Any]) -> None:
        """No source, two sources or an empty name raise ValueError naming the arguments."""
        with pytest.raises(ValueError, match="header"):
            StagedrollMiddleware(text_app(str), **options)


class TestHostile:
    @pytest.mark.parametrize(
        ("value", "reason"),
        [("u" * 257, "too_long"), ("u" * 100_000, "too_long"), ("user\x01", "control_character")],
        ids=["257", "huge", "control"],
    )
    def test_a_bad_value_is_not_used_and_logged_once(self, value: str, reason: str) -> None:
        """A value too long or with a control character gives no unit, logged once, unnamed."""
        test = client(text_app(stagedroll.current_unit), header="X-User-Id")
        with structlog.testing.capture_logs() as logs:
            assert test.get(headers={"X-User-Id": value}).text == "None"
            assert test.get(headers={"X-User-Id": value}).text == "None"
        assert [(e["event"], e["reason"]) for e in logs] == [("request.unit_refused", reason)]
        assert value not in str(logs)

    def test_not_utf8_is_not_used(self) -> None:
        """A header value that is not UTF-8 gives no unit."""
        test = client(text_app(stagedroll.current_unit), header="X-User-Id")
        with structlog.testing.capture_logs() as logs:
            assert test.get(headers={"X-User-Id": "\xff\xfe"}).text == "None"
        assert logs[0]["reason"] == "not_utf8"

    def test_a_failing_callable_gives_no_unit(self) -> None:
        """A unit callable that raises is logged once; the request is served with no unit."""

        def broken(environ: Environ) -> object:
            raise KeyError("user-secret")

        test = client(text_app(stagedroll.current_unit), unit=broken)
        with structlog.testing.capture_logs() as logs:
            assert test.get().text == "None"
            assert test.get().text == "None"
        assert [(e["event"], e["error_type"]) for e in logs] == [
            ("request.unit_failed", "KeyError")
        ]
        assert "user-secret" not in str(logs)

    def test_attributes_not_a_mapping_are_left_out(self) -> None:
        """An attributes callable returning a non-mapping gives no attributes, logged once."""
        test = client(
            text_app(lambda: dict(stagedroll.current_attributes())),
            header="X-U",
            attributes=lambda environ: ["a"],  # not a mapping
        )
        with structlog.testing.capture_logs() as logs:
            assert test.get(headers={"X-U": "u"}).text == "{}"
            assert test.get(headers={"X-U": "u"}).text == "{}"
        assert [e["reason"] for e in logs] == ["attributes:type"]


class TestDuration:
    def test_the_body_iteration_sees_the_unit(self) -> None:
        """A generator body, iterated by the server after the app returned, sees the unit."""

        def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
            start_response("200 OK", [("Content-Type", "text/plain")])
            yield b"unit:"
            yield str(stagedroll.current_unit()).encode()

        assert client(app, header="X-U").get(headers={"X-U": "u1"}).text == "unit:u1"
        assert stagedroll.current_unit() is None

    def test_unbound_after_close(self) -> None:
        """The unit is bound until the server closes the body, and gone after."""
        app = StagedrollMiddleware(text_app(str), header="X-U")
        body = app({"HTTP_X_U": "u1", "REQUEST_METHOD": "GET"}, lambda *args: None)
        assert stagedroll.current_unit() == "u1"
        list(body)
        body.close()  # type: ignore[attr-defined]  # the middleware's body has close()
        assert stagedroll.current_unit() is None

    def test_unbound_when_the_app_raises(self) -> None:
        """An app that raises leaves nothing bound."""

        def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            BufferedClient(StagedrollMiddleware(app, header="X-U")).get(headers={"X-U": "u1"})
        assert stagedroll.current_unit() is None

    def test_unbound_when_the_body_raises(self) -> None:
        """A body that raises while iterated leaves nothing bound once closed."""

        def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
            start_response("200 OK", [])
            yield b"x"
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            BufferedClient(StagedrollMiddleware(app, header="X-U")).get(headers={"X-U": "u1"})
        assert stagedroll.current_unit() is None

    def test_threads_and_tasks_started_in_the_request_see_the_unit(self) -> None:
        """A thread given the request's context and an asyncio task both see its unit."""
        app = text_app(seen_by_a_thread_and_a_task)
        assert client(app, header="X-U").get(headers={"X-U": "u1"}).text == "['u1', 'u1']"
