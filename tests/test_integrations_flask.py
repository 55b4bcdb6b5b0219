"""Tests of the Flask integration, through Flask's own test client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import flask
import pytest
import structlog.testing

import stagedroll
from integrating import IN, OUT, POLICY, guarded_price, seen_by_a_thread_and_a_task
from stagedroll import Rollouts
from stagedroll.integrations.flask import init_app
from stagedroll.integrations.wsgi import StagedrollMiddleware
from stagedroll.testing import RecordingSink


@pytest.fixture(name="rollouts")
def _rollouts() -> Rollouts:
    return Rollouts(POLICY)


def unit_app(**options: Any) -> flask.Flask:
    """A Flask app answering ``/`` with the bound unit, set up with ``init_app``."""
    app = flask.Flask(__name__)

    @app.get("/")
    def index() -> str:
        return str(stagedroll.current_unit())

    init_app(app, **options)
    return app


class TestFlask:
    def test_the_two_units_straddle_half(self, rollouts: Rollouts) -> None:
        """The units the tests use are in and out of the rollout at 50 %."""
        assert rollouts.decide("new-pricing", IN).enabled
        assert not rollouts.decide("new-pricing", OUT).enabled

    def test_two_users_get_their_own_path_and_counts(self, rollouts: Rollouts) -> None:
        """One view, two users: each gets its cohort's path, counted under its own unit."""
        price = guarded_price(rollouts)
        app = flask.Flask(__name__)
        app.get("/price")(price)
        init_app(app, header="X-User-Id")
        test = app.test_client()
        with RecordingSink(rollouts) as sink:
            assert test.get("/price", headers={"X-User-Id": IN}).text == "new"
            assert test.get("/price", headers={"X-User-Id": OUT}).text == "old"
        assert sink.units("new-pricing", enabled=True) == {IN}
        assert sink.units("new-pricing", enabled=False) == {OUT}
        status = rollouts.status("new-pricing")
        assert (status.treatment.calls, status.control.calls) == (1, 1)
        assert stagedroll.current_unit() is None

    def test_a_cookie_and_no_unit(self) -> None:
        """The unit comes from the cookie; a request without it has none."""
        test = unit_app(cookie="uid").test_client()
        test.set_cookie("uid", "user-7")
        assert test.get("/").text == "user-7"
        assert unit_app(cookie="uid").test_client().get("/").text == "None"

    def test_a_callable_reads_what_an_earlier_function_set(self) -> None:
        """``unit=`` is called in the request context, after the functions registered before."""
        app = flask.Flask(__name__)

        @app.before_request
        def login() -> None:
            flask.g.user = flask.request.args.get("as")

        @app.get("/")
        def index() -> str:
            return f"{stagedroll.current_unit()} {dict(stagedroll.current_attributes())}"

        init_app(
            app,
            unit=lambda request: flask.g.user,
            attributes=lambda request: {"path": request.path},
        )
        assert app.test_client().get("/?as=ada").text == "ada {'path': '/'}"

    def test_unbound_after_an_error(self) -> None:
        """A view that raises leaves nothing bound; the teardown ran."""
        app = flask.Flask(__name__)

        @app.get("/")
        def index() -> str:
            raise RuntimeError("boom")

        init_app(app, header="X-U")
        assert app.test_client().get("/", headers={"X-U": "u1"}).status_code == 500
        assert stagedroll.current_unit() is None

    def test_threads_and_tasks_started_in_the_view_see_the_unit(self) -> None:
        """A thread given the request's context and an asyncio task see its unit."""
        app = flask.Flask(__name__)

        app.get("/")(seen_by_a_thread_and_a_task)
        init_app(app, header="X-U")
        assert app.test_client().get("/", headers={"X-U": "u1"}).json == ["u1", "u1"]

    def test_a_long_header_is_not_used(self) -> None:
        """A header value over 256 characters gives no unit, logged once."""
        test = unit_app(header="X-U").test_client()
        with structlog.testing.capture_logs() as logs:
            assert test.get("/", headers={"X-U": "u" * 257}).text == "None"
        assert [e["reason"] for e in logs] == ["too_long"]

    def test_a_streamed_body_needs_the_wsgi_middleware(self) -> None:
        """Wrapping ``app.wsgi_app`` binds the unit for a streamed body too."""
        app = flask.Flask(__name__)

        @app.get("/")
        def index() -> flask.Response:
            def chunks() -> Iterator[str]:
                yield "unit:"
                yield str(stagedroll.current_unit())

            return flask.Response(chunks())

        app.wsgi_app = StagedrollMiddleware(app.wsgi_app, header="X-U")  # type: ignore[method-assign]  # Flask's documented way to wrap
        response = app.test_client().get("/", headers={"X-U": "u1"})
        assert response.text == "unit:u1"
        response.close()  # as a server does: the body's close() unbinds
        assert stagedroll.current_unit() is None
