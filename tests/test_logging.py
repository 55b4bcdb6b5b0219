"""The log events: under the logger name ``stagedroll``, and never carrying a unit id."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from structlog.typing import EventDict

from stagedroll import (
    MemoryStore,
    Rollouts,
    RolloutState,
    SQLiteStore,
    Status,
    StoreError,
    TransitionEvent,
)
from stagedroll._failures import log
from stagedroll.testing import FakeClock

STR_UNIT = "user-SECRET-4711"
INT_UNIT = 4711_0000_4242
UUID_UNIT = uuid.UUID("5ec2e7a1-4711-4abc-8def-000000004711")
ALLOWED = "user-SECRET-allowed"
DENIED = "user-SECRET-denied"
MARK = "SECRET"
"""In every text unit of these tests, and in no other text they log."""


def traces(unit: object) -> set[str]:
    """The texts by which ``unit`` could show in a log line."""
    found = {str(unit), repr(unit)}
    if isinstance(unit, uuid.UUID):
        found |= {unit.hex, str(unit.int)}
    return found


def leaks(events: Iterable[Mapping[str, Any]], units: Iterable[object]) -> list[tuple[str, str]]:
    """``(event, unit text)`` for each event that shows a unit, its traceback included."""
    texts = {text for unit in units for text in traces(unit)} | {MARK}
    found = []
    for event in events:
        shown = repr(dict(event))
        exc = event.get("exc_info")
        if isinstance(exc, BaseException):
            shown += "".join(traceback.format_exception(exc))
        found += [(str(event.get("event")), text) for text in texts if text in shown]
    return found


@pytest.fixture(name="logs")
def _logs() -> Iterator[list[EventDict]]:
    """Every structlog event of the test, as structlog's ``capture_logs`` keeps it."""
    with structlog.testing.capture_logs() as logs:
        yield logs


class Failed(Exception):
    """A new path's failure, whose message names no unit."""


class FlakyStore(MemoryStore):
    """A store that cannot be reached: every read and write raises."""

    def load(self, rollout: str) -> RolloutState | None:
        raise ConnectionError("store unreachable")

    def compare_and_set(self, *args: Any, **kwargs: Any) -> bool:
        raise ConnectionError("store unreachable")


def policy() -> dict[str, Any]:
    """``checkout`` at 50 % then 100 %, with allow and deny lists; ``search`` at 100 %."""
    return {
        "rollouts": {
            "checkout": {
                "stages": [{"name": "half", "percent": 50}, {"name": "all", "percent": 100}],
                "targeting": {"allow": [ALLOWED], "deny": [DENIED]},
                "health": {"min_events": 5},
            },
            "search": {"stages": [{"name": "all", "percent": 100}]},
        }
    }


def _raise_hook(event: TransitionEvent) -> None:
    raise RuntimeError("hook down")


def _raise_listener(*args: object) -> None:
    raise RuntimeError("listener down")


def guards(rollouts: Rollouts) -> dict[str, Callable[[object], str]]:
    """A guard per rollout whose new path always fails, and one whose unit callable raises."""

    def old(unit: object) -> str:
        return "old"

    def new(unit: object) -> str:
        raise Failed("tier table out of range")

    def broken_unit(unit: object) -> object:
        raise LookupError("no session")

    return {
        "checkout": rollouts.guard("checkout", fallback=old, unit=lambda unit: unit)(new),
        "search": rollouts.guard("search", fallback=old, unit=lambda unit: unit)(new),
        "broken": rollouts.guard("search", fallback=old, unit=broken_unit)(new),
    }


def serve(rollouts: Rollouts, units: Iterable[object]) -> None:
    """Call every guard, ``decide``, ``enabled``, ``track`` and ``report`` for each unit."""
    called = guards(rollouts)
    for unit in units:
        for guarded in called.values():
            assert guarded(unit) == "old"
        rollouts.decide("checkout", unit, {"user_id": str(unit)})
        rollouts.enabled("chekout", unit)  # a typo: rollout.unknown
        rollouts.report("checkout", unit, error=False, latency_s=float("nan"))  # bad_latency
        with contextlib.suppress(Failed), rollouts.track("checkout", unit):
            raise Failed("tracked call failed")


class TestLoggerName:
    def test_every_event_carries_the_logger_name(self, logs: list[EventDict]) -> None:
        """An event of any level carries ``logger="stagedroll"``, beside its own fields."""
        log("info", "rollout.test", rollout="r")
        log("error", "store.test", exc_info=RuntimeError("down"))
        assert [(e["event"], e["logger"], e["log_level"]) for e in logs] == [
            ("rollout.test", "stagedroll", "info"),
            ("store.test", "stagedroll", "error"),
        ]

    def test_the_stdlib_logger_is_named_stagedroll(self) -> None:
        """With the stdlib factory, events reach ``logging.getLogger("stagedroll")``, whose
        level and handlers apply."""
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        named = logging.getLogger("stagedroll")
        named.addHandler(handler)
        named.setLevel(logging.WARNING)
        structlog.configure(
            processors=[structlog.processors.KeyValueRenderer(key_order=["event"])],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
        )
        try:
            log("info", "rollout.quiet", rollout="r")
            log("warning", "rollout.loud", rollout="r")
        finally:
            structlog.reset_defaults()
            named.removeHandler(handler)
            named.setLevel(logging.NOTSET)
        assert stream.getvalue() == (
            "stagedroll WARNING event='rollout.loud' logger='stagedroll' rollout='r'\n"
        )

    def test_a_processor_can_drop_stagedroll_events_only(self) -> None:
        """A processor keyed on ``logger`` drops stagedroll's events and keeps the others."""
        out = io.StringIO()

        def drop(_: object, __: str, event: EventDict) -> EventDict:
            if event.get("logger") == "stagedroll":
                raise structlog.DropEvent
            return event

        structlog.configure(
            processors=[drop, structlog.processors.JSONRenderer()],
            logger_factory=structlog.PrintLoggerFactory(out),
        )
        try:
            Rollouts(policy())  # rollout.started, twice
            structlog.get_logger().info("service.ready")
        finally:
            structlog.reset_defaults()
        assert [json.loads(line) for line in out.getvalue().splitlines()] == [
            {"event": "service.ready"}
        ]

    def test_a_raising_processor_still_never_raises(self) -> None:
        """The ``logger`` field changes nothing of ``log``'s promise: it never raises."""

        def broken(_: object, __: str, event: EventDict) -> EventDict:
            raise SystemExit(3)

        structlog.configure(processors=[broken])
        try:
            log("error", "store.test", rollout="r")
        finally:
            structlog.reset_defaults()


class TestNoUnitInEvents:
    def test_a_day_of_a_service(self, tmp_path: Path, logs: list[EventDict]) -> None:
        """Guards, a gate that freezes and rolls back, a kill seen by a second process
        through a shared SQLite file, a store that is down and hooks that raise: no event
        shows a unit id, in its fields or its traceback."""
        path = tmp_path / "state.db"
        clock = FakeClock(1_000_000.0)
        first = Rollouts(policy(), store=SQLiteStore(path, refresh_interval=60), clock=clock,
                         on_transition=_raise_hook, on_error="fallback")  # fmt: skip
        second_store = SQLiteStore(path, refresh_interval=60)
        second = Rollouts(policy(), store=second_store, clock=clock, on_error="fallback")
        first.on_change(_raise_listener)
        second.on_change(_raise_listener)
        first["checkout"].on_outcome(_raise_listener)
        units: list[object] = [STR_UNIT, INT_UNIT, UUID_UNIT, ALLOWED, DENIED]
        # Wrong types first (guard.routing_failed is logged once a minute): refused, the old
        # path answers, and the log names the type only.
        wrong: list[object] = [b"user-SECRET-bytes", 4711.4711, ("user-SECRET-tuple",)]
        for unit in wrong:
            assert guards(first)["checkout"](unit) == "old"
        serve(first, units)

        # The gate: every new-path unit fails, no old-path unit does.
        degraded = [f"user-SECRET-{i}" for i in range(400)]
        for unit in degraded:
            first.report("checkout", unit, error=first.enabled("checkout", unit))
            clock.advance(1)
        first.tick()
        assert first.status("checkout").status is Status.ROLLED_BACK

        first.kill("search", reason="new path down", actor="oncall")
        first.freeze("checkout", reason="hold", actor="oncall")
        assert second_store.refresh()
        assert second.status("search").status is Status.KILLED
        serve(second, units)

        down = Rollouts(policy(), store=FlakyStore(), clock=clock, on_error="fallback")
        serve(down, units)
        with pytest.raises(StoreError):
            down.kill("search", reason="while down", actor="oncall")
        for rollouts in (first, second, down):
            rollouts.close()

        seen = {str(e["event"]) for e in logs}
        assert {
            "rollout.started", "rollout.new_path_error", "rollout.frozen", "rollout.rolled_back",
            "rollout.killed", "rollout.changed", "rollout.unknown", "guard.routing_failed",
            "outcome.bad_latency", "hook.failed", "store.load_failed",
        } <= seen  # fmt: skip
        assert {e["logger"] for e in logs} == {"stagedroll"}
        assert leaks(logs, [*units, *wrong, *degraded]) == []

    @given(
        unit=st.one_of(
            st.text().map(lambda text: f"{MARK}-{text}"),
            st.integers(min_value=10**15),
            st.integers(max_value=-(10**15)),
            st.uuids(),
        )
    )
    def test_any_unit(self, unit: str | int | uuid.UUID) -> None:
        """Any unit a caller may pass, through every entry point and a failing new path, is
        in no event."""
        with structlog.testing.capture_logs() as logs:
            rollouts = Rollouts(policy(), on_transition=_raise_hook, on_error="fallback")
            serve(rollouts, [unit])
            rollouts.kill("checkout", reason="done")
        assert "rollout.new_path_error" in {e["event"] for e in logs}
        assert leaks(logs, [unit]) == []

    def test_an_exception_that_quotes_the_unit(self, logs: list[EventDict]) -> None:
        """A new path whose exception quotes its unit (a dict lookup by user id) logs no
        unit id either."""
        rollouts = Rollouts(policy(), on_error="fallback")
        prices: dict[str, int] = {}

        @rollouts.guard("search", fallback=lambda user: 0, unit=lambda user: user)
        def price(user: str) -> int:
            return prices[user]

        assert price(STR_UNIT) == 0
        assert leaks(logs, [STR_UNIT]) == []
