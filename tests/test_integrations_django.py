"""Tests of the Django middleware, through Django's own test clients (sync and async).

Django's settings are process-wide: this module configures them bare if nothing did yet,
and each test gives what it needs with ``override_settings``, which restores them after.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import django  # type: ignore[import-untyped]  # no stubs or py.typed
import pytest
import structlog.testing
from django.conf import settings  # type: ignore[import-untyped]
from django.http import HttpRequest, HttpResponse, JsonResponse  # type: ignore[import-untyped]
from django.test import AsyncClient, Client, override_settings  # type: ignore[import-untyped]
from django.urls import path  # type: ignore[import-untyped]

import stagedroll
from integrating import IN, OUT, POLICY, guarded_price, seen_by_a_thread_and_a_task
from stagedroll import Rollouts
from stagedroll.integrations.django import StagedrollMiddleware
from stagedroll.testing import RecordingSink

if not settings.configured:
    settings.configure(SECRET_KEY="stagedroll-tests")  # a key is required, at every restore
    django.setup()

MIDDLEWARE = f"{StagedrollMiddleware.__module__}.StagedrollMiddleware"
LOGIN = f"{__name__}.LoginMiddleware"


@dataclass
class User:
    """A logged-in user as ``AuthenticationMiddleware`` gives one (``pk``, ``is_authenticated``)."""

    pk: object
    is_authenticated: bool = True


class LoginMiddleware:
    """Logs the request in as the user named by ``?as=`` (this test's authentication)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        name = request.GET.get("as")
        request.user = User(name, is_authenticated=name is not None)
        return self.get_response(request)


class HeaderOnly(StagedrollMiddleware):
    """A subclass reading the unit from the header only, with attributes from the path."""

    def unit(self, request: HttpRequest) -> object:
        return self.header_unit(request)

    def attributes(self, request: HttpRequest) -> Mapping[str, object] | None:
        return {"path": request.path}


def unit_view(request: HttpRequest) -> HttpResponse:
    """Answers with the bound unit and attributes."""
    return HttpResponse(f"{stagedroll.current_unit()} {dict(stagedroll.current_attributes())}")


def site(
    *views: tuple[str, Callable[..., Any]], middleware: list[str], **more: Any
) -> override_settings:
    """Settings serving ``views`` behind ``middleware``, restored when the block ends."""

    class Urls:
        urlpatterns: ClassVar[list[Any]] = [path(route, view) for route, view in views]

    return override_settings(
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF=Urls,
        MIDDLEWARE=middleware,
        **more,
    )


@pytest.fixture(name="rollouts")
def _rollouts() -> Rollouts:
    return Rollouts(POLICY)


@pytest.fixture(name="unit_site")
def _unit_site() -> Iterator[None]:
    with site(("", unit_view), middleware=[LOGIN, MIDDLEWARE], STAGEDROLL_UNIT_HEADER="X-User-Id"):
        yield


class TestDjango:
    def test_the_two_units_straddle_half(self, rollouts: Rollouts) -> None:
        """The units the tests use are in and out of the rollout at 50 %."""
        assert rollouts.decide("new-pricing", IN).enabled
        assert not rollouts.decide("new-pricing", OUT).enabled

    def test_two_users_get_their_own_path_and_counts(self, rollouts: Rollouts) -> None:
        """One view, two logged-in users: each gets its cohort's path, counted under its unit."""

        def old_price(request: HttpRequest) -> HttpResponse:
            return HttpResponse("old")

        @rollouts.guard("new-pricing", fallback=old_price, unit=stagedroll.current_unit)
        def price(request: HttpRequest) -> HttpResponse:
            return HttpResponse("new")

        with (
            site(("price", price), middleware=[LOGIN, MIDDLEWARE]),
            RecordingSink(rollouts) as sink,
        ):
            client = Client()
            assert client.get("/price", {"as": IN}).content == b"new"
            assert client.get("/price", {"as": OUT}).content == b"old"
            assert client.get("/price").content == b"old"  # anonymous: no unit
        assert sink.units("new-pricing", enabled=True) == {IN}
        assert sink.units("new-pricing", enabled=False) == {OUT, None}
        assert stagedroll.current_unit() is None

    @pytest.mark.usefixtures("unit_site")
    def test_the_user_wins_over_the_header(self) -> None:
        """An authenticated user is the unit; without one, the setting's header is."""
        client = Client()
        assert client.get("/", {"as": "ada"}, headers={"X-User-Id": "bob"}).content == b"ada {}"
        assert client.get("/", headers={"X-User-Id": "bob"}).content == b"bob {}"
        assert client.get("/").content == b"None {}"

    def test_a_subclass_chooses(self) -> None:
        """A subclass's ``unit`` and ``attributes`` hooks are what the middleware binds."""
        hooks = f"{__name__}.HeaderOnly"
        with site(("x", unit_view), middleware=[LOGIN, hooks], STAGEDROLL_UNIT_HEADER="X-U"):
            response = Client().get("/x", {"as": "ada"}, headers={"X-U": "bob"})
        assert response.content == b"bob {'path': '/x'}"

    @pytest.mark.usefixtures("unit_site")
    def test_a_long_header_is_not_used(self) -> None:
        """A header value over 256 characters gives no unit, logged once without the value."""
        with structlog.testing.capture_logs() as logs:
            assert Client().get("/", headers={"X-User-Id": "u" * 257}).content == b"None {}"
        assert [e["reason"] for e in logs] == ["too_long"]

    def test_unbound_after_an_error(self) -> None:
        """A view that raises leaves nothing bound."""

        def broken(request: HttpRequest) -> HttpResponse:
            raise RuntimeError("boom")

        with site(("", broken), middleware=[LOGIN, MIDDLEWARE]):
            response = Client(raise_request_exception=False).get("/", {"as": "ada"})
        assert response.status_code == 500
        assert stagedroll.current_unit() is None

    def test_threads_and_tasks_started_in_the_view_see_the_unit(self) -> None:
        """A thread given the request's context and an asyncio task see its unit."""

        def view(request: HttpRequest) -> JsonResponse:
            return JsonResponse(seen_by_a_thread_and_a_task(), safe=False)

        with site(("", view), middleware=[LOGIN, MIDDLEWARE]):
            assert Client().get("/", {"as": "ada"}).json() == ["ada", "ada"]

    @pytest.mark.parametrize("header", ["", 7], ids=["empty", "int"])
    def test_a_bad_header_setting_is_named(self, header: object) -> None:
        """A ``STAGEDROLL_UNIT_HEADER`` that is no header name raises, naming the setting."""
        with (
            override_settings(STAGEDROLL_UNIT_HEADER=header),
            pytest.raises(ValueError, match="STAGEDROLL_UNIT_HEADER"),
        ):
            StagedrollMiddleware(unit_view)


class TestAsync:
    def test_an_async_view_sees_the_unit(self, rollouts: Rollouts) -> None:
        """Under the async stack, two users of an async view each get their own path."""
        price = guarded_price(rollouts)

        async def view(request: HttpRequest) -> HttpResponse:
            task = asyncio.create_task(asyncio.sleep(0, price()))
            return HttpResponse(await task)

        async def main() -> list[bytes]:
            client = AsyncClient()
            first = await client.get("/", headers={"X-User-Id": IN})
            second = await client.get("/", headers={"X-User-Id": OUT})
            return [first.content, second.content]

        settings = site(("", view), middleware=[MIDDLEWARE], STAGEDROLL_UNIT_HEADER="X-User-Id")
        with settings, RecordingSink(rollouts) as sink:
            assert asyncio.run(main()) == [b"new", b"old"]
        assert sink.units("new-pricing", enabled=True) == {IN}
        assert sink.units("new-pricing", enabled=False) == {OUT}
