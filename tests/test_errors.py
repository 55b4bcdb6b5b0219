"""Tests of the new path's errors: kept per rollout, logged at a bounded rate, and ``on_error``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from hypothesis import given
from hypothesis import strategies as st

from stagedroll import PolicyError, RecentError, Rollouts, SQLiteStore, load_policy
from stagedroll._errors import (
    LOG_INTERVAL_S,
    MAX_ERRORS,
    UNIT,
    Errors,
    describe,
    group,
    merge,
    scrub,
)
from stagedroll._state import MAX_ERROR_MESSAGE, MAX_ERROR_TYPE
from stagedroll.testing import FakeClock, on_error

EVERYBODY: dict[str, Any] = {
    "environments": ["dev", "prod"],
    "on_error": {"dev": "raise"},
    "rollouts": {"discounts": {"stages": [{"name": "all", "percent": 100}]}},
}


class DiscountTierError(IndexError):
    """A bug of the new path, as a service's own exception type."""


class Ticker:
    """A monotonic clock the tests move by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def errors_of(clock: FakeClock | None = None) -> tuple[Errors, Ticker]:
    """An ``Errors`` for rollout ``discounts``, with a hand-moved log clock."""
    ticker = Ticker()
    return Errors("discounts", clock or FakeClock(1_000.0), ticker), ticker


def new_path_errors(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    """The ``rollout.new_path_error`` events among captured logs."""
    return [entry for entry in logs if entry["event"] == "rollout.new_path_error"]


class TestDescribe:
    def test_builtin_and_own_types(self) -> None:
        """A builtin type is named alone, a service's with its module."""
        assert describe(IndexError("tier 7 out of range")) == ("IndexError", "tier # out of range")
        kind, _ = describe(DiscountTierError("x"))
        assert kind == f"{__name__}.DiscountTierError"

    def test_huge_message_and_type_are_cut(self) -> None:
        """A message or type name past its cap is cut, with an ellipsis."""
        huge = type("E" * 1_000, (Exception,), {"__module__": "builtins"})
        kind, message = describe(huge("m" * 100_000))
        assert len(kind) == MAX_ERROR_TYPE
        assert kind.endswith("…")
        assert len(message) == MAX_ERROR_MESSAGE
        assert message.endswith("…")

    def test_a_str_that_raises_is_contained(self) -> None:
        """An exception whose ``__str__`` raises is still described."""

        class Nasty(Exception):
            def __str__(self) -> str:
                raise RuntimeError("no")

        assert describe(Nasty())[1] == "<str() failed: RuntimeError>"


class TestScrub:
    @pytest.mark.parametrize(
        ("text", "unit", "scrubbed"),
        [
            ("KeyError('user-4711')", "user-4711", "KeyError('<unit>')"),
            ("list index 7 out of range", "7", "list index <unit> out of range"),
            ("17 is not 7", "7", "17 is not <unit>"),
            ("discount tier out of range", "a", "discount tier out of range"),
            (
                "no user 12ab34cd56ef78ab90cd12ab34cd56ef",
                "12ab34cd-56ef-78ab-90cd-12ab34cd56ef",
                "no user <unit>",
            ),
            ("anything", None, "anything"),
        ],
    )
    def test_the_unit_is_replaced_where_it_stands_alone(
        self, text: str, unit: str | None, scrubbed: str
    ) -> None:
        """A unit quoted by a message is replaced, not the same characters inside a word."""
        assert scrub(text, unit) == scrubbed

    @given(st.text(min_size=1, max_size=20), st.text(max_size=50), st.text(max_size=50))
    def test_no_standalone_unit_survives(self, unit: str, before: str, after: str) -> None:
        """Whatever surrounds it, a unit set apart by a space is gone from the scrubbed text."""
        assert f" {unit} " not in scrub(f"{before} {unit} {after}", unit).replace(UNIT, "")

    def test_the_guard_scrubs_its_unit(self) -> None:
        """A new path whose exception quotes its unit keeps and logs the message without it."""
        r = rollouts()
        prices: dict[str, int] = {}
        guarded = r.guard("discounts", fallback=lambda user: 0, unit=lambda user: user)(
            lambda user: prices[user]
        )
        with structlog.testing.capture_logs() as logs:
            assert guarded("user-SECRET-4711") == 0
        [event] = new_path_errors(logs)
        assert "SECRET" not in repr(event)
        assert event["error"] == "'<unit>'"
        assert "KeyError: '<unit>'" in event["exception"]
        assert r.status("discounts").errors[0].message == "'<unit>'"


class TestErrors:
    def test_distinct_errors_counted_with_first_and_last_seen(self) -> None:
        """The same type and message count up; another message is another entry, newest first."""
        clock = FakeClock(1_000.0)
        errors, _ = errors_of(clock)
        errors.note("treatment", IndexError("tier 7"))
        clock.advance(5)
        errors.note("treatment", IndexError("tier 7"))
        clock.advance(5)
        errors.note("control", KeyError("cart"))
        assert errors.recent() == (
            RecentError("control", "KeyError", "'cart'", 1_010.0, 1_010.0, 1),
            RecentError("treatment", "IndexError", "tier #", 1_000.0, 1_005.0, 2),
        )

    def test_bounded_to_the_most_recent(self) -> None:
        """Only the ``MAX_ERRORS`` most recently seen distinct errors are kept."""
        clock = FakeClock(0.0)
        errors, _ = errors_of(clock)
        for i in range(MAX_ERRORS + 30):
            clock.advance(1)
            errors.note("treatment", ValueError("order " + "x" * i))
        recent = errors.recent()
        assert len(recent) == MAX_ERRORS
        assert recent[0].message == "order " + "x" * (MAX_ERRORS + 29)
        assert len(errors.take()) == MAX_ERRORS

    def test_log_is_paced_per_type_with_the_count_left_out(self) -> None:
        """One event per exception type and interval; the next one says how many were left out."""
        errors, ticker = errors_of()
        with structlog.testing.capture_logs() as logs:
            for _ in range(1_000):
                errors.note("treatment", IndexError("tier 7"))
            errors.note("treatment", KeyError("other type"))
            ticker.now += LOG_INTERVAL_S
            errors.note("treatment", IndexError("tier 7"))
        events = new_path_errors(logs)
        assert [(e["error_type"], e["suppressed"], e["total"]) for e in events] == [
            ("IndexError", 0, 1),
            ("KeyError", 0, 1),
            ("IndexError", 999, 1_001),
        ]
        first = events[0]
        assert first["rollout"] == "discounts"
        assert first["arm"] == "treatment"
        assert first["error"] == "tier #"
        assert first["log_level"] == "error"
        assert first["exception"] == "IndexError: tier 7\n"  # never raised: no frames; as raised

    def test_the_old_paths_errors_are_kept_not_logged(self) -> None:
        """The caller sees the old path's exception; it is kept for status only."""
        errors, _ = errors_of()
        with structlog.testing.capture_logs() as logs:
            errors.note("control", OSError("disk"))
        assert logs == []
        assert [e.arm for e in errors.recent()] == ["control"]

    def test_messages_that_differ_by_numbers_are_one_error(self) -> None:
        """Ids and numbers in messages are grouped: 500 failures are one entry counted 500 times."""
        errors, _ = errors_of()
        for i in range(500):
            errors.note("treatment", LookupError(f"tier {i % 37} for order 9f8e7d6c{i:04x}"))
        [kept] = errors.recent()
        assert (kept.message, kept.count) == ("tier # for order #", 500)
        assert group("deadbeef and 0xff and v2") == "deadbeef and # and v#"

    def test_past_the_paced_types_the_rest_share_one_pace(self) -> None:
        """A flood of distinct exception types logs one event a minute beyond the first 256."""
        errors, _ = errors_of()
        kinds = [type(f"E{i}", (Exception,), {}) for i in range(300)]
        with structlog.testing.capture_logs() as logs:
            for _ in range(20):
                for kind in kinds:
                    errors.note("treatment", kind("x"))
        assert len(new_path_errors(logs)) == 256 + 1

    def test_a_str_that_raises_base_exception_is_contained(self) -> None:
        """``SystemExit`` from a user's ``__str__`` does not escape the guard."""

        class Exits(Exception):
            def __str__(self) -> str:
                raise SystemExit(3)

        errors, _ = errors_of()
        errors.note("treatment", Exits())
        assert errors.recent()[0].message == "<str() failed: SystemExit>"

    def test_str_is_called_once_per_failure(self) -> None:
        """The logged traceback reuses the message: a slow ``__str__`` is not paid twice."""
        calls = []

        class Counted(Exception):
            def __str__(self) -> str:
                calls.append(1)
                return "counted"

        errors, _ = errors_of()
        try:
            raise Counted
        except Counted as exc:
            with structlog.testing.capture_logs() as logs:
                errors.note("treatment", exc)
        assert len(calls) == 1
        [event] = new_path_errors(logs)
        assert event["exception"].startswith("Traceback (most recent call last):\n")
        assert event["exception"].endswith(".<locals>.Counted: counted\n")

    def test_control_characters_in_the_traceback_are_escaped(self) -> None:
        """A message's terminal escapes are written out as text in the logged traceback."""
        errors, _ = errors_of()
        with structlog.testing.capture_logs() as logs:
            errors.note("treatment", ValueError("\x1b[2J\rgone"))
        assert new_path_errors(logs)[0]["exception"] == "ValueError: \\x1b[2J\\x0dgone\n"

    def test_take_and_give_back(self) -> None:
        """``take`` empties what is queued for the store; ``give_back`` queues it again, merged."""
        errors, _ = errors_of()
        errors.note("treatment", IndexError("a"))
        taken = errors.take()
        assert errors.take() == []
        errors.note("treatment", IndexError("a"))
        errors.give_back(taken)
        [again] = errors.pending()
        assert again.count == 2
        assert errors.take() == [again]
        assert errors.pending() == []

    def test_a_broken_clock_never_raises(self) -> None:
        """A clock that raises loses the error, not the call."""

        def broken() -> float:
            raise RuntimeError("clock")

        Errors("x", broken, broken).note("treatment", IndexError("a"))


entries = st.builds(
    RecentError,
    arm=st.sampled_from(["treatment", "control"]),
    type=st.sampled_from(["IndexError", "KeyError"]),
    message=st.sampled_from(["a", "b"]),
    first_seen=st.floats(0, 100),
    last_seen=st.floats(100, 200),
    count=st.integers(1, 50),
)


class TestMerge:
    @given(st.lists(entries, max_size=30), st.randoms())
    def test_order_does_not_matter_and_counts_add(self, items: list[RecentError], rnd: Any) -> None:
        """Merging in any order gives the same entries, each with the sum of its counts."""
        shuffled = list(items)
        rnd.shuffle(shuffled)
        merged = merge(items)
        assert sorted(merged, key=repr) == sorted(merge(shuffled), key=repr)
        assert sum(e.count for e in merged) == sum(e.count for e in items)
        assert [e.last_seen for e in merged] == sorted((e.last_seen for e in merged), reverse=True)


def rollouts(environment: str | None = "prod", **kwargs: Any) -> Rollouts:
    """The ``discounts`` rollout at 100 %, with a fake clock."""
    return Rollouts(EVERYBODY, environment=environment, clock=FakeClock(2_000.0), **kwargs)


class TestGuard:
    def test_new_path_error_is_logged_kept_and_answered_by_the_fallback(self) -> None:
        """In prod the fallback answers; the log and ``status`` show the new path's exception."""
        r = rollouts()

        @r.guard("discounts", fallback=lambda user: "old", unit=lambda user: user)
        def discount(user: str) -> str:
            raise DiscountTierError("discount tier out of range")

        with structlog.testing.capture_logs() as logs:
            assert [discount(f"user-{i}") for i in range(50)] == ["old"] * 50
        [event] = new_path_errors(logs)
        assert event["error"] == "discount tier out of range"
        assert event["error_type"].endswith("DiscountTierError")
        assert "user-" not in repr(event)  # no unit in the event
        [kept] = r.status("discounts").errors
        assert (kept.arm, kept.message, kept.count) == ("treatment", event["error"], 50)

    def test_old_path_error_is_kept_and_raised(self) -> None:
        """The old path's exception is the caller's: raised, and kept as the control arm's."""
        r = Rollouts({"rollouts": {"d": {"stages": [{"name": "none", "percent": 0}]}}})

        def old(user: str) -> str:
            raise KeyError("cart")

        guarded = r.guard("d", fallback=old, unit=lambda user: user)(lambda user: "new")
        with pytest.raises(KeyError):
            guarded("u")
        assert [(e.arm, e.type) for e in r.status("d").errors] == [("control", "KeyError")]

    def test_raise_in_an_environment_whose_on_error_says_so(self) -> None:
        """``on_error = {dev = "raise"}``: in dev the exception propagates, after it is recorded."""
        r = rollouts("dev")

        @r.guard("discounts", fallback=lambda user: "old", unit=lambda user: user)
        def discount(user: str) -> str:
            raise DiscountTierError("tier")

        with pytest.raises(DiscountTierError):
            discount("u1")
        status = r.status("discounts")
        assert status.treatment.errors == 1
        assert status.treatment.fallbacks == 0
        assert status.errors[0].count == 1

    def test_the_guard_and_the_constructor_win(self) -> None:
        """``reraise=False`` beats the policy; ``Rollouts(on_error=...)`` beats the policy."""
        r = rollouts("dev")
        never = r.guard("discounts", fallback=lambda: "old", unit=None, reraise=False)
        assert never(_fails)() == "old"
        r2 = rollouts("dev", on_error="fallback")
        assert r2.guard("discounts", fallback=lambda: "old", unit=None)(_fails)() == "old"
        r3 = rollouts("prod", on_error="raise")
        with pytest.raises(DiscountTierError):
            r3.guard("discounts", fallback=lambda: "old", unit=None)(_fails)()

    def test_testing_on_error_overrides_for_a_block(self) -> None:
        """``stagedroll.testing.on_error`` decides in its block, and gives the decision back."""
        guarded = rollouts("prod").guard("discounts", fallback=lambda: "old", unit=None)(_fails)
        with on_error("raise"), pytest.raises(DiscountTierError):
            guarded()
        assert guarded() == "old"
        with pytest.raises(ValueError, match="on_error must be"), on_error("sometimes"):
            pass

    def test_async_guard(self) -> None:
        """The async wrapper keeps the error and follows ``on_error`` alike."""
        r = rollouts("dev")

        async def old() -> str:
            return "old"

        async def new() -> str:
            raise DiscountTierError("async tier")

        guarded = r.guard("discounts", fallback=old, unit=None)(new)
        with pytest.raises(DiscountTierError):
            asyncio.run(guarded())
        assert r.status("discounts").errors[0].message == "async tier"
        lenient = rollouts("prod").guard("discounts", fallback=old, unit=None)(new)
        assert asyncio.run(lenient()) == "old"

    def test_track_keeps_the_blocks_exception(self) -> None:
        """A tracked block that raises is kept among the errors of its arm."""
        r = rollouts()
        with pytest.raises(ValueError, match="bad cart"), r.track("discounts", "u1"):
            raise ValueError("bad cart")
        assert [(e.arm, e.message) for e in r.status("discounts").errors] == [
            ("treatment", "bad cart")
        ]

    def test_reraise_must_be_a_bool(self) -> None:
        """A truthy string is refused rather than guessed."""
        with pytest.raises(TypeError, match="reraise"):
            rollouts().guard("discounts", fallback=lambda: 1, unit=None, reraise="yes")  # type: ignore[arg-type]


def _fails() -> str:
    raise DiscountTierError("tier")


class TestPolicy:
    def test_on_error_names_known_environments(self) -> None:
        """An environment the policy does not declare is refused, naming the field."""
        bad = {**EVERYBODY, "on_error": {"qa": "raise"}}
        with pytest.raises(PolicyError, match=r"on_error\.qa"):
            load_policy(bad)

    def test_on_error_values(self) -> None:
        """Only "fallback" and "raise" are values."""
        bad = {**EVERYBODY, "on_error": {"dev": "crash"}}
        with pytest.raises(PolicyError, match=r"on_error\.dev"):
            load_policy(bad)

    def test_on_error_environments_count_as_known(self) -> None:
        """Without a declared list, an environment named only by ``on_error`` is known."""
        policy = {"on_error": {"test": "raise"}, "rollouts": EVERYBODY["rollouts"]}
        with pytest.raises(DiscountTierError):
            Rollouts(policy, environment="test").guard(
                "discounts", fallback=lambda: "old", unit=None
            )(_fails)()

    def test_constructor_value_checked(self) -> None:
        """``Rollouts(on_error=...)`` takes "fallback" or "raise" only."""
        with pytest.raises(ValueError, match="on_error"):
            rollouts(on_error="explode")


class TestSharedStore:
    def test_errors_of_one_process_reach_the_status_of_another(self, tmp_path: Path) -> None:
        """Through a shared store, the fleet's recent errors are in every fresh ``status``."""
        path = tmp_path / "state.db"
        with (
            Rollouts(EVERYBODY, store=f"sqlite:///{path}", environment="prod") as a,
            Rollouts(EVERYBODY, store=f"sqlite:///{path}", environment="prod") as b,
        ):
            guarded = a.guard("discounts", fallback=lambda: "old", unit=None)(_fails)
            for _ in range(3):
                guarded()
            a.status("discounts")  # a fresh status flushes this process's errors
            [seen] = b.status("discounts").errors
            assert (seen.arm, seen.message, seen.count) == ("treatment", "tier", 3)
            assert b["discounts"].status(fresh=False).errors == ()  # b's own: none

    def test_a_short_job_leaves_its_errors_in_the_store(self, tmp_path: Path) -> None:
        """``close`` flushes what the refresh has not taken yet: a job's errors outlive it."""
        store = f"sqlite:///{tmp_path / 'state.db'}?refresh_interval=3600"
        with Rollouts(EVERYBODY, store=store, environment="prod") as job:
            guarded = job.guard("discounts", fallback=lambda: "old", unit=None)(_fails)
            for _ in range(50):
                guarded()
        with Rollouts(EVERYBODY, store=store, environment="prod") as later:
            [seen] = later.status("discounts").errors
            assert seen.count == 50


class TestFromEnv:
    def test_reads_the_variables_the_cli_reads(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``STAGEDROLL_POLICY``, ``STAGEDROLL_STORE`` and ``STAGEDROLL_ENV``, as the CLI does."""
        policy = tmp_path / "rollouts.json"
        policy.write_text(__import__("json").dumps(EVERYBODY))
        monkeypatch.setenv("STAGEDROLL_POLICY", str(policy))
        monkeypatch.setenv("STAGEDROLL_STORE", f"sqlite:///{tmp_path / 'state.db'}")
        monkeypatch.setenv("STAGEDROLL_ENV", "dev")
        with Rollouts.from_env() as r:
            assert isinstance(r.store, SQLiteStore)
            assert r.environment == "dev"
            assert r.policy.rollouts.keys() == {"discounts"}
        with Rollouts.from_env(store="memory://", environment="prod") as r:
            assert r.environment == "prod"
            assert not isinstance(r.store, SQLiteStore)

    def test_no_policy_is_a_clear_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without ``STAGEDROLL_POLICY`` nor ``policy=``, the error says how to name one."""
        monkeypatch.delenv("STAGEDROLL_POLICY", raising=False)
        with pytest.raises(ValueError, match="STAGEDROLL_POLICY"):
            Rollouts.from_env()
        assert "STAGEDROLL_POLICY" not in os.environ
