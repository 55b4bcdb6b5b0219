"""Tests of the dark launch (stagedroll.patterns.shadow, Rollouts.shadow)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import random
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stagedroll import Rollouts, Status, UnknownRolloutError
from stagedroll.patterns import ComparisonStats, Mismatch, Shadow, shadow
from stagedroll.testing import RecordingSink

USERS = [f"user-{i}" for i in range(2000)]


def policy(*percents: float, health: dict[str, Any] | None = None) -> dict[str, Any]:
    stages = [{"name": f"shadow-{p:g}", "percent": p} for p in percents]
    return {
        "rollouts": {
            "search": {
                "pattern": "shadow",
                "stages": stages,
                "health": health or {"min_events": 3},
            },
            "other": {"stages": [{"name": "all", "percent": 100}]},
            "orders": {
                "pattern": "migration",
                "stages": [
                    {"name": name, "percent": p}
                    for name, p in zip(
                        ["off", "dual_write", "shadow_read", "live", "rampdown", "complete"],
                        [0, 20, 40, 60, 80, 100],
                        strict=True,
                    )
                ],
            },
        }
    }


@pytest.fixture(name="rollouts")
def _rollouts() -> Rollouts:
    """Stages of 10, 50 and 100 %, with no health gate (TestHealth has its own)."""
    return Rollouts(policy(10, 50, 100, health={"enabled": False}))


@pytest.fixture(name="executor")
def _executor() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


def old_search(user: str) -> str:
    return f"old:{user}"


def same_search(user: str) -> str:
    return f"old:{user}"


async def async_old(user: str) -> str:
    return f"old:{user}"


class Calls:
    """A candidate that records its calls and answers like the old path."""

    def __init__(self) -> None:
        self.users: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, user: str) -> str:
        with self.lock:
            self.users.append(user)
        return f"old:{user}"


class TestRouting:
    def test_the_caller_gets_the_old_result_and_the_cohort_runs_the_candidate(
        self, rollouts: Rollouts
    ) -> None:
        """Every call returns the old path's result; the candidate runs for cohort units only."""
        candidate = Calls()
        search = rollouts.shadow("search", candidate=candidate, unit=lambda user: user)(old_search)
        assert [search(u) for u in USERS] == [f"old:{u}" for u in USERS]
        cohort = {u for u in USERS if rollouts.enabled("search", u)}
        assert set(candidate.users) == cohort
        assert len(candidate.users) == len(cohort)  # once per call, inline
        assert 0.05 < len(cohort) / len(USERS) < 0.15

    def test_a_candidate_that_disagrees_never_changes_the_result(self, rollouts: Rollouts) -> None:
        """A mismatch is recorded; the caller still gets the old path's answer."""
        shadowed = rollouts.shadow("search", candidate=lambda user: "new", unit=lambda user: user)
        search = shadowed(old_search)
        assert [search(u) for u in USERS[:300]] == [f"old:{u}" for u in USERS[:300]]
        stats = shadowed.stats
        assert stats.compared == stats.mismatched > 0
        assert stats.matched == stats.new_errors == 0
        assert shadowed.mismatches[0] == Mismatch(
            shadowed.mismatches[0].unit, repr(f"old:{shadowed.mismatches[0].unit}"), "'new'",
            None, shadowed.mismatches[0].at,
        )  # fmt: skip

    def test_units_outside_the_cohort_record_nothing(self, rollouts: Rollouts) -> None:
        """Outside the cohort the call is the old path alone: no outcome on either arm."""
        search = rollouts.shadow("search", candidate=same_search, unit=lambda user: user)(
            old_search
        )
        outside = [u for u in USERS if not rollouts.enabled("search", u)][:100]
        with RecordingSink(rollouts) as sink:
            for user in outside:
                search(user)
        assert sink.outcomes == []

    def test_both_sides_of_a_cohort_call_are_recorded(self, rollouts: Rollouts) -> None:
        """The old side on control, the candidate on treatment, with the same unit."""
        search = rollouts.shadow("search", candidate=same_search, unit=lambda user: user)(
            old_search
        )
        inside = [u for u in USERS if rollouts.enabled("search", u)][:20]
        with RecordingSink(rollouts) as sink:
            for user in inside:
                search(user)
        assert sink.units("search", enabled=False) == set(inside)
        assert sink.units("search", enabled=True) == set(inside)
        assert all(o.compared and not o.error for o in sink.outcomes)

    def test_rollback_mid_traffic_shrinks_the_shadowed_cohort(self, rollouts: Rollouts) -> None:
        """After a rollback, units the stage no longer covers run the old path only."""
        candidate = Calls()
        search = rollouts.shadow("search", candidate=candidate, unit=lambda user: user)(old_search)
        rollouts.advance("search", actor="alice")  # 50 %
        for user in USERS:
            search(user)
        wide = set(candidate.users)
        rollouts.rollback("search", actor="bob")  # 10 %
        candidate.users.clear()
        for user in USERS:
            search(user)
        assert set(candidate.users) < wide
        assert set(candidate.users) == {u for u in USERS if rollouts.enabled("search", u)}
        rollouts.kill("search", actor="bob")
        candidate.users.clear()
        for user in USERS:
            assert search(user) == f"old:{user}"
        assert candidate.users == []

    def test_targeted_units_run_the_candidate_unjudged(self) -> None:
        """An allowed unit runs the candidate; its outcomes are not compared by the gate."""
        doc = policy(0)
        doc["rollouts"]["search"]["targeting"] = {"allow": ["vip"]}
        rollouts = Rollouts(doc)
        candidate = Calls()
        search = rollouts.shadow("search", candidate=candidate, unit=lambda user: user)(old_search)
        with RecordingSink(rollouts) as sink:
            assert search("vip") == "old:vip"
            assert search("user-1") == "old:user-1"
        assert candidate.users == ["vip"]
        assert [(o.enabled, o.compared) for o in sink.outcomes] == [(False, False), (True, False)]

    def test_attributes_and_per_request_bucketing(self) -> None:
        """``attributes`` feed bucket_by; ``unit=None`` draws a bucket per call."""
        doc = policy(50)
        doc["rollouts"]["search"]["bucket_by"] = "org"
        rollouts = Rollouts(doc)
        orgs_run: list[str] = []

        def candidate(user: str, org: str) -> str:
            orgs_run.append(org)
            return f"old:{user}"

        def old(user: str, org: str) -> str:
            return f"old:{user}"

        search = rollouts.shadow("search", candidate=candidate, unit=lambda user, org: user,
                                 attributes=lambda user, org: {"org": org})(old)  # fmt: skip
        orgs = [f"org-{i}" for i in range(200)]
        for org in orgs:
            search("u", org)
        assert orgs_run == [o for o in orgs if rollouts.enabled("search", "u", {"org": o})]
        assert 50 < len(orgs_run) < 150
        per_request = Rollouts(policy(50))
        calls = Calls()
        anyone = per_request.shadow("search", candidate=calls, unit=None)(old_search)
        for _ in range(400):
            anyone("u")
        assert 100 < len(calls.users) < 300

    def test_a_failing_unit_function_runs_the_old_path_only(self, rollouts: Rollouts) -> None:
        """stagedroll's routing failure (the unit callable raised) is counted, not raised."""
        candidate = Calls()

        def broken(user: str) -> str:
            raise KeyError(user)

        search = rollouts.shadow("search", candidate=candidate, unit=broken)(old_search)
        assert search("user-1") == "old:user-1"
        assert candidate.users == []
        assert rollouts.failures.count("guard.routing_failed") == 1

    def test_a_method_can_be_shadowed(self, rollouts: Rollouts) -> None:
        """The decorated function binds as a method; the candidate gets the same arguments."""
        rollouts.advance("search", actor="a")
        rollouts.advance("search", actor="a")  # 100 %
        seen: list[tuple[object, str]] = []

        class Service:
            def new(self, user: str) -> str:
                seen.append((self, user))
                return f"old:{user}"

            @rollouts.shadow("search", candidate=new, unit=lambda self, user: user)
            def search(self, user: str) -> str:
                return f"old:{user}"

        service = Service()
        assert service.search("user-1") == "old:user-1"
        assert seen == [(service, "user-1")]


class TestOldPathFailures:
    def test_the_old_path_exception_reaches_the_caller_unchanged(self, rollouts: Rollouts) -> None:
        """Type and traceback are the old path's; the candidate still runs (the pair)."""
        rollouts.advance("search", actor="a")
        rollouts.advance("search", actor="a")  # 100 %
        candidate = Calls()

        def failing(user: str) -> str:
            raise LookupError(f"no {user}")

        shadowed = rollouts.shadow("search", candidate=candidate, unit=lambda user: user)
        search = shadowed(failing)
        with pytest.raises(LookupError, match="no user-1") as raised:
            search("user-1")
        assert raised.traceback[-1].name == "failing"
        assert "raise LookupError" in "".join(traceback.format_tb(raised.value.__traceback__))
        assert candidate.users == ["user-1"]
        assert shadowed.stats.old_errors == 1
        assert shadowed.stats.compared == 0

    def test_base_exceptions_of_the_old_path_propagate(self, rollouts: Rollouts) -> None:
        """A KeyboardInterrupt is not an outcome: it propagates and records nothing."""
        rollouts.advance("search", actor="a")
        rollouts.advance("search", actor="a")

        def interrupted(user: str) -> str:
            raise KeyboardInterrupt

        shadowed = rollouts.shadow("search", candidate=same_search, unit=lambda user: user)
        with pytest.raises(KeyboardInterrupt):
            shadowed(interrupted)("user-1")
        assert shadowed.stats.compared == 0


class TestCandidateFailures:
    def test_a_candidate_that_raises_never_reaches_the_caller(self, rollouts: Rollouts) -> None:
        """The candidate's exception is an error of the treatment arm and a sample."""
        rollouts.advance("search", actor="a")
        rollouts.advance("search", actor="a")

        def candidate(user: str) -> str:
            raise RuntimeError(f"candidate broke on {user}")

        shadowed = rollouts.shadow("search", candidate=candidate, unit=lambda user: user)
        search = shadowed(old_search)
        with RecordingSink(rollouts) as sink:
            assert search("user-1") == "old:user-1"
        assert shadowed.stats.new_errors == 1
        (sample,) = shadowed.mismatches
        assert sample.unit == "user-1"
        assert sample.old == "'old:user-1'"
        assert sample.new is None
        assert sample.error == "RuntimeError: candidate broke on user-1"
        assert [(o.enabled, o.error) for o in sink.outcomes] == [(False, False), (True, True)]

    def test_a_slow_candidate_on_an_executor_does_not_hold_the_caller(
        self, rollouts: Rollouts, executor: concurrent.futures.ThreadPoolExecutor
    ) -> None:
        """The caller returns while the candidate is still blocked; it is judged later."""
        rollouts.advance("search", actor="a")
        rollouts.advance("search", actor="a")
        release = threading.Event()

        def slow(user: str) -> str:
            release.wait(10)
            return "late"

        shadowed = rollouts.shadow(
            "search", candidate=slow, unit=lambda user: user, executor=executor
        )
        search = shadowed(old_search)
        assert search("user-1") == "old:user-1"  # returned with the candidate still blocked
        assert shadowed.stats.compared == 0
        release.set()
        assert shadowed.wait(10)
        assert shadowed.stats.mismatched == 1

    def test_the_executor_is_bounded(
        self, rollouts: Rollouts, executor: concurrent.futures.ThreadPoolExecutor
    ) -> None:
        """Beyond ``max_pending`` runs in flight the candidate is skipped, and counted."""
        rollouts.advance("search", actor="a")
        rollouts.advance("search", actor="a")
        release = threading.Event()

        def blocked(user: str) -> str:
            release.wait(10)
            return f"old:{user}"

        shadowed = rollouts.shadow("search", candidate=blocked, unit=lambda user: user,
                                   executor=executor, max_pending=3)  # fmt: skip
        search = shadowed(old_search)
        with RecordingSink(rollouts) as sink:
            for user in USERS[:10]:
                assert search(user) == f"old:{user}"
            release.set()
            assert shadowed.wait(10)
        stats = shadowed.stats
        assert (stats.compared, stats.matched, stats.skipped) == (3, 3, 7)
        # Skipped calls record neither side: the arms stay paired.
        assert len(sink.of("search", enabled=False)) == len(sink.of("search", enabled=True)) == 3

    def test_a_closed_executor_is_an_internal_failure(self, rollouts: Rollouts) -> None:
        """A submit that fails is counted and logged; the caller gets its result."""
        rollouts.advance("search", actor="a")
        rollouts.advance("search", actor="a")
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        executor.shutdown()
        shadowed = rollouts.shadow("search", candidate=same_search, unit=lambda user: user,
                                   executor=executor)  # fmt: skip
        search = shadowed(old_search)
        with RecordingSink(rollouts) as sink:
            assert search("user-1") == "old:user-1"
            assert search("user-2") == "old:user-2"
        assert rollouts.failures.count("shadow.failed") == 2
        assert shadowed.stats.skipped == 2
        assert sink.outcomes == []  # neither side: the arms stay paired
        assert shadowed.wait()

    def test_a_candidate_that_exits_does_not_end_the_call(self, rollouts: Rollouts) -> None:
        """SystemExit from the candidate is its failure; the caller gets the old result."""
        rollouts.advance("search", actor="a")
        rollouts.advance("search", actor="a")

        def exiting(user: str) -> str:
            raise SystemExit(3)

        shadowed = rollouts.shadow("search", candidate=exiting, unit=lambda user: user)
        assert shadowed(old_search)("user-1") == "old:user-1"
        assert shadowed.mismatches[0].error == "SystemExit: 3"

    def test_a_sync_candidate_returning_an_awaitable_is_refused_at_run(
        self, rollouts: Rollouts
    ) -> None:
        """An async function behind a sync callable: closed, not judged, counted."""
        rollouts.advance("search", actor="a")
        rollouts.advance("search", actor="a")

        def hidden(user: str) -> Any:  # a sync callable that returns a coroutine
            return async_old(user)

        shadowed = rollouts.shadow("search", candidate=hidden, unit=lambda user: user)
        with RecordingSink(rollouts) as sink:
            assert shadowed(old_search)("user-1") == "old:user-1"
        assert sink.outcomes == []
        assert shadowed.stats.skipped == 1
        assert rollouts.failures.count("shadow.candidate_awaitable") == 1

    def test_calls_where_both_sides_fail_are_no_events(self) -> None:
        """Both failed: counted as errors on both arms, but no event of the health test."""
        rollouts = Rollouts(policy(100))

        def failing(user: str) -> str:
            raise ValueError("invalid input")

        shadowed = rollouts.shadow("search", candidate=failing, unit=lambda user: user)
        search = shadowed(failing)
        for user in USERS[:50]:
            with contextlib.suppress(ValueError):
                search(user)
        status = rollouts.status("search")
        assert (status.control.errors, status.treatment.errors) == (50, 50)
        assert status.health.error_events_treatment == status.health.error_events_control == 0
        assert status.status is Status.RUNNING

    def test_your_redact_keeps_exception_messages_out(self, rollouts: Rollouts) -> None:
        """With your own ``redact``, a sample names the exception's type alone."""
        rollouts.advance("search", actor="a")
        rollouts.advance("search", actor="a")

        def candidate(user: str) -> str:
            raise ValueError(f"cannot migrate {user}@example.com")

        shadowed = rollouts.shadow("search", candidate=candidate, unit=lambda user: user,
                                   redact=len)  # fmt: skip
        shadowed(old_search)("user-1")
        assert shadowed.mismatches[0].error == "ValueError"

    def test_a_process_pool_that_cannot_take_the_run_is_a_skip(self, rollouts: Rollouts) -> None:
        """A run the executor could not start is skipped and counted, not lost silently."""
        rollouts.advance("search", actor="a")
        rollouts.advance("search", actor="a")
        with concurrent.futures.ProcessPoolExecutor(max_workers=1) as executor:
            shadowed = rollouts.shadow("search", candidate=same_search, unit=lambda user: user,
                                       executor=executor)  # fmt: skip
            search = shadowed(old_search)
            assert search("user-1") == "old:user-1"
            assert shadowed.wait(30)
        assert shadowed.stats.skipped == 1
        assert rollouts.failures.count("shadow.failed") == 1

    def test_inline_runs_before_the_call_returns(self, rollouts: Rollouts) -> None:
        """Without an executor, a sync candidate runs inline: judged when the call returns."""
        rollouts.advance("search", actor="a")
        rollouts.advance("search", actor="a")
        shadowed = rollouts.shadow("search", candidate=lambda user: "x", unit=lambda user: user)
        shadowed(old_search)("user-1")
        assert shadowed.stats.mismatched == 1
        assert shadowed.wait()  # nothing was submitted


class TestAsync:
    def test_async_candidates_run_as_tasks(self, rollouts: Rollouts) -> None:
        """The caller gets the old result at once; the candidate task is judged after."""
        rollouts.advance("search", actor="a")
        rollouts.advance("search", actor="a")
        release = asyncio.Event()

        async def slow(user: str) -> str:
            await release.wait()
            return f"old:{user}"

        shadowed = rollouts.shadow("search", candidate=slow, unit=lambda user: user)
        search = shadowed(async_old)

        async def main() -> None:
            # The candidate waits for an event set only after the caller returned.
            assert await asyncio.wait_for(search("user-1"), 10) == "old:user-1"
            assert shadowed.stats.compared == 0
            release.set()
            assert await shadowed.wait_async(10)
            assert shadowed.stats.matched == 1

        asyncio.run(main())

    def test_async_candidate_errors_and_timeouts(self, rollouts: Rollouts) -> None:
        """A raising candidate and one slower than ``timeout`` are candidate errors."""
        rollouts.advance("search", actor="a")
        rollouts.advance("search", actor="a")

        async def candidate(user: str) -> str:
            if user == "user-1":
                raise ValueError("bad")
            await asyncio.sleep(30)
            return "never"

        shadowed = rollouts.shadow(
            "search", candidate=candidate, unit=lambda user: user, timeout=0.01
        )
        search = shadowed(async_old)

        async def main() -> None:
            assert await search("user-1") == "old:user-1"
            assert await search("user-2") == "old:user-2"
            assert await shadowed.wait_async(10)

        asyncio.run(main())
        errors = sorted(str(m.error).split(":")[0] for m in shadowed.mismatches)
        assert errors == ["TimeoutError", "ValueError"]
        assert shadowed.stats.new_errors == 2

    def test_async_tasks_are_bounded(self, rollouts: Rollouts) -> None:
        """At most ``max_pending`` candidate tasks are in flight; the others are skipped."""
        rollouts.advance("search", actor="a")
        rollouts.advance("search", actor="a")
        release = asyncio.Event()

        async def blocked(user: str) -> str:
            await release.wait()
            return f"old:{user}"

        shadowed = rollouts.shadow(
            "search", candidate=blocked, unit=lambda user: user, max_pending=2
        )
        search = shadowed(async_old)

        async def main() -> None:
            for user in USERS[:5]:
                await search(user)
            release.set()
            await shadowed.wait_async(10)

        asyncio.run(main())
        assert (shadowed.stats.matched, shadowed.stats.skipped) == (2, 3)

    def test_async_old_path_exception_and_outside_units(self, rollouts: Rollouts) -> None:
        """The old path's exception propagates; units outside the cohort spawn nothing."""

        async def failing(user: str) -> str:
            raise LookupError(user)

        calls: list[str] = []

        async def candidate(user: str) -> str:
            calls.append(user)
            return "x"

        shadowed = rollouts.shadow("search", candidate=candidate, unit=lambda user: user)
        search = shadowed(failing)
        inside = next(u for u in USERS if rollouts.enabled("search", u))
        outside = next(u for u in USERS if not rollouts.enabled("search", u))

        async def main() -> None:
            for user in (inside, outside):
                with pytest.raises(LookupError):
                    await search(user)
            await shadowed.wait_async()

        asyncio.run(main())
        assert calls == [inside]
        assert shadowed.stats.old_errors == 1

    def test_a_cancelled_candidate_records_neither_side(self, rollouts: Rollouts) -> None:
        """A candidate task cancelled when the loop closes leaves the arms paired."""
        rollouts.advance("search", actor="a")
        rollouts.advance("search", actor="a")

        async def never(user: str) -> str:
            await asyncio.Event().wait()
            return user

        shadowed = rollouts.shadow("search", candidate=never, unit=lambda user: user)
        search = shadowed(async_old)

        async def main() -> None:
            assert await search("user-1") == "old:user-1"

        with RecordingSink(rollouts) as sink:
            asyncio.run(main())  # cancels the candidate's task on the way out
        assert sink.outcomes == []
        assert shadowed.stats == ComparisonStats()
        assert shadowed._pending == 0  # its place is free again

    def test_waiting_with_nothing_pending_returns_at_once(self, rollouts: Rollouts) -> None:
        """wait_async with no tasks returns at once."""
        shadowed = rollouts.shadow("search", candidate=same_search, unit=lambda user: user)
        assert asyncio.run(shadowed.wait_async())


class TestDeferredRuns:
    def test_a_result_changed_by_the_caller_is_compared_as_returned(
        self, rollouts: Rollouts, executor: concurrent.futures.ThreadPoolExecutor
    ) -> None:
        """A later comparison uses a copy of the old result, not the caller's object."""
        rollouts.advance("search", actor="a")
        rollouts.advance("search", actor="a")
        release = threading.Event()

        def candidate(user: str) -> dict[str, str]:
            release.wait(10)
            return {"user": user}

        shadowed = rollouts.shadow("search", candidate=candidate, unit=lambda user: user,
                                   executor=executor)  # fmt: skip
        profile = shadowed(lambda user: {"user": user})
        answer = profile("user-1")
        answer["served_by"] = "web-1"  # the caller's own business
        release.set()
        assert shadowed.wait(10)
        assert (shadowed.stats.matched, shadowed.stats.mismatched) == (1, 0)

    def test_a_task_of_a_closed_loop_frees_its_place(self, rollouts: Rollouts) -> None:
        """A loop closed with a candidate task pending does not hold its place for good."""
        rollouts.advance("search", actor="a")
        rollouts.advance("search", actor="a")

        async def candidate(user: str) -> str:
            await asyncio.sleep(0.01)
            return f"old:{user}"

        shadowed = rollouts.shadow("search", candidate=candidate, unit=lambda user: user,
                                   max_pending=2)  # fmt: skip
        search = shadowed(async_old)
        for user in USERS[:3]:
            loop = asyncio.new_event_loop()
            loop.run_until_complete(search(user))
            loop.close()  # the task never ran to its end
        assert shadowed.stats.skipped == 0

        async def later() -> None:
            for user in USERS[3:13]:
                await search(user)
            await shadowed.wait_async(10)

        asyncio.run(later())
        assert shadowed.stats.matched >= 2  # places were freed: the candidate runs again
        assert shadowed._pending == 0

    def test_a_finished_task_of_a_closed_loop_frees_its_place(self, rollouts: Rollouts) -> None:
        """Its done-callback never ran (the loop stopped first): its place is freed too."""
        rollouts.advance("search", actor="a")
        rollouts.advance("search", actor="a")

        async def candidate(user: str) -> str:
            return f"old:{user}"

        shadowed = rollouts.shadow("search", candidate=candidate, unit=lambda user: user,
                                   max_pending=2)  # fmt: skip
        search = shadowed(async_old)
        for user in USERS[:5]:
            loop = asyncio.new_event_loop()
            loop.run_until_complete(search(user))
            loop.close()
        assert shadowed.stats.skipped == 0

    def test_tasks_of_an_abandoned_loop_record_nothing(self, rollouts: Rollouts) -> None:
        """Closed at garbage collection, an abandoned run is no candidate error."""
        rollouts.advance("search", actor="a")
        rollouts.advance("search", actor="a")

        async def candidate(user: str) -> str:
            await asyncio.sleep(30)
            return f"old:{user}"

        shadowed = rollouts.shadow("search", candidate=candidate, unit=lambda user: user,
                                   max_pending=2)  # fmt: skip
        search = shadowed(async_old)
        with RecordingSink(rollouts) as sink:
            for user in USERS[:6]:
                loop = asyncio.new_event_loop()
                loop.run_until_complete(search(user))
                loop.close()  # its tasks are abandoned, never cancelled
            gc.collect()
        assert sink.outcomes == []
        assert shadowed.stats.new_errors == 0

    def test_a_mismatch_against_a_timed_out_old_path_is_no_event(self, rollouts: Rollouts) -> None:
        """Both sides failed the test (one too slow, one wrong): errors, but no event."""
        rollouts.advance("search", actor="a")
        rollouts.advance("search", actor="a")

        async def slow(user: str) -> str:
            await asyncio.sleep(0.03)
            return f"old:{user}"

        async def wrong(user: str) -> str:
            return "new"

        doc = policy(100)
        stores = Rollouts(doc)
        shadowed = stores.shadow("search", candidate=wrong, unit=lambda user: user, timeout=0.01)
        search = shadowed(slow)

        async def main() -> None:
            for user in USERS[:5]:
                await search(user)
            await shadowed.wait_async(10)

        asyncio.run(main())
        status = stores.status("search")
        assert (status.control.errors, status.treatment.errors) == (5, 5)
        assert status.health.error_events_control == status.health.error_events_treatment == 0

    def test_the_timeout_holds_both_sides(self, rollouts: Rollouts) -> None:
        """An old path slower than the timeout is an error for the test, as the candidate is."""
        rollouts.advance("search", actor="a")
        rollouts.advance("search", actor="a")

        async def slow(user: str) -> str:
            await asyncio.sleep(0.05)
            return f"old:{user}"

        shadowed = rollouts.shadow("search", candidate=slow, unit=lambda user: user,
                                   timeout=0.01)  # fmt: skip
        search = shadowed(slow)

        async def main() -> None:
            assert await search("user-1") == "old:user-1"  # the caller still gets its answer
            await shadowed.wait_async(10)

        with RecordingSink(rollouts) as sink:
            asyncio.run(main())
        assert {(o.enabled, o.error) for o in sink.outcomes} == {(False, True), (True, True)}


class TestComparing:
    def test_compare_and_ignore(self, rollouts: Rollouts) -> None:
        """``compare`` decides a match; ``ignore`` accepts a known difference."""
        rollouts.advance("search", actor="a")
        rollouts.advance("search", actor="a")
        answers = {"user-1": "OLD:USER-1", "user-2": "old:user-2 ", "user-3": "other"}
        shadowed = rollouts.shadow(
            "search",
            candidate=lambda user: answers[user],
            unit=lambda user: user,
            compare=lambda old, new: old.lower() == new.lower(),
            ignore=lambda old, new: old.strip() == new.strip(),
        )
        search = shadowed(old_search)
        for user in answers:
            search(user)
        stats = shadowed.stats
        assert (stats.matched, stats.ignored, stats.mismatched) == (1, 1, 1)
        assert stats.mismatch_rate == pytest.approx(1 / 3)
        assert [m.unit for m in shadowed.mismatches] == ["user-3"]

    def test_redact_and_samples_bound(self, rollouts: Rollouts) -> None:
        """Samples keep the latest ``samples`` mismatches, their results redacted."""
        rollouts.advance("search", actor="a")
        rollouts.advance("search", actor="a")
        shadowed = rollouts.shadow(
            "search",
            candidate=lambda user: {"user": user, "email": f"{user}@x.test", "v": 2},
            unit=lambda user: user,
            redact=lambda result: {k: v for k, v in result.items() if k != "email"},
            samples=5,
        )
        search = shadowed(lambda user: {"user": user, "email": f"{user}@x.test", "v": 1})
        for user in USERS[:20]:
            search(user)
        samples = shadowed.mismatches
        assert [m.unit for m in samples] == USERS[15:20]
        assert samples[-1].old == {"user": "user-19", "v": 1}
        assert samples[-1].new == {"user": "user-19", "v": 2}
        assert "x.test" not in repr(samples)
        shadowed.clear()
        assert shadowed.mismatches == []
        assert shadowed.stats.compared == 0

    def test_failing_user_functions_are_counted_not_raised(self, rollouts: Rollouts) -> None:
        """A compare that raises makes a mismatch; on_mismatch that raises is counted."""
        rollouts.advance("search", actor="a")
        rollouts.advance("search", actor="a")
        told: list[Mismatch] = []

        def on_mismatch(sample: Mismatch) -> None:
            told.append(sample)
            raise RuntimeError("hook broke")

        shadowed = rollouts.shadow(
            "search",
            candidate=same_search,
            unit=lambda user: user,
            compare=lambda old, new: 1 / 0,
            on_mismatch=on_mismatch,
        )
        assert shadowed(old_search)("user-1") == "old:user-1"
        assert shadowed.stats.mismatched == 1
        assert shadowed.stats.failures == 2
        assert told[0].error == "ZeroDivisionError: division by zero"
        assert rollouts.failures.count("shadow.compare_failed") == 1
        assert rollouts.failures.count("shadow.on_mismatch_failed") == 1

    def test_an_ignore_that_raises_is_named(self, rollouts: Rollouts) -> None:
        """The failure names the function that raised."""
        rollouts.advance("search", actor="a")
        rollouts.advance("search", actor="a")
        shadowed = rollouts.shadow("search", candidate=lambda user: "x", unit=lambda user: user,
                                   ignore=lambda old, new: old.missing)  # fmt: skip
        shadowed(old_search)("user-1")
        assert rollouts.failures.count("shadow.ignore_failed") == 1
        assert (
            shadowed.mismatches[0].error
            == "AttributeError: 'str' object has no attribute 'missing'"
        )

    def test_the_default_redaction_is_a_short_repr(self, rollouts: Rollouts) -> None:
        """Large results are kept as a bounded repr, not as objects."""
        rollouts.advance("search", actor="a")
        rollouts.advance("search", actor="a")
        shadowed = rollouts.shadow(
            "search", candidate=lambda user: "y" * 10_000, unit=lambda user: user
        )
        shadowed(lambda user: "z" * 10_000)("user-1")
        (sample,) = shadowed.mismatches
        assert isinstance(sample.old, str)
        assert isinstance(sample.new, str)
        assert len(sample.old) < 300
        assert len(sample.new) < 300


class TestHealth:
    def test_a_disagreeing_candidate_freezes_the_stage(self) -> None:
        """Mismatches are treatment errors: the gate freezes (or rolls back) the shadow."""
        rollouts = Rollouts(policy(10, 50, 100))
        rng = random.Random(7)
        shadowed = rollouts.shadow(
            "search",
            candidate=lambda user: "wrong" if rng.random() < 0.3 else f"old:{user}",
            unit=lambda user: user,
        )
        search = shadowed(old_search)
        for user in USERS:
            search(user)
        status = rollouts.status("search")
        assert status.status in (Status.FROZEN, Status.ROLLED_BACK)
        history = rollouts.history("search")
        assert history[-2].evidence["share"] == 0.5
        assert history[-2].actor == "stagedroll"

    @pytest.mark.parametrize("seed", range(5))
    def test_a_faithful_candidate_does_not_freeze(self, seed: int) -> None:
        """A candidate that errs as often as the old path (paired calls) is not frozen.

        At alpha 0.001, so that the seeds test the pairing rather than a 5 % chance.
        """
        rollouts = Rollouts(policy(50, 100, health={"alpha_freeze": 0.001,
                                                     "alpha_rollback": 0.0001}))  # fmt: skip
        rng = random.Random(seed)

        def flaky(user: str) -> str:
            if rng.random() < 0.05:
                raise ConnectionError("flaky")
            return f"old:{user}"

        shadowed = rollouts.shadow("search", candidate=flaky, unit=lambda user: user)
        search = shadowed(flaky)
        for user in USERS * 2:
            with contextlib.suppress(ConnectionError):
                search(user)
        status = rollouts.status("search")
        assert status.status is Status.RUNNING
        assert status.health.share == 0.5
        assert status.health.error_events_treatment > 10  # the candidate did err


class TestErrors:
    def test_wrong_arguments_raise_at_once(self, rollouts: Rollouts) -> None:
        """Misuse fails when the shadow is made or applied, not on a call."""
        with pytest.raises(UnknownRolloutError):
            rollouts.shadow("serch", candidate=same_search, unit=lambda user: user)
        with pytest.raises(TypeError, match="candidate must be callable"):
            rollouts.shadow("search", candidate="nope", unit=lambda user: user)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="unit must be a callable"):
            rollouts.shadow("search", candidate=same_search, unit="user")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="attributes need a unit"):
            rollouts.shadow("search", candidate=same_search, unit=None, attributes=lambda user: {})
        with pytest.raises(ValueError, match="max_pending"):
            rollouts.shadow("search", candidate=same_search, unit=lambda user: user, max_pending=0)
        with pytest.raises(ValueError, match="samples"):
            rollouts.shadow("search", candidate=same_search, unit=lambda user: user, samples=-1)
        with pytest.raises(TypeError, match="compare must be callable"):
            rollouts.shadow("search", candidate=same_search, unit=lambda user: user,
                            compare=1)  # type: ignore[arg-type]  # fmt: skip
        with pytest.raises(TypeError, match="timeout is for async code"):
            rollouts.shadow("search", candidate=same_search, unit=lambda user: user, timeout=1)
        with pytest.raises(TypeError, match="executor is for sync code"):
            rollouts.shadow("search", candidate=async_old, unit=lambda user: user,
                            executor=concurrent.futures.ThreadPoolExecutor())  # fmt: skip
        with pytest.raises(ValueError, match="timeout"):
            rollouts.shadow("search", candidate=async_old, unit=lambda user: user, timeout=0)
        shadowed = rollouts.shadow("search", candidate=same_search, unit=lambda user: user)
        with pytest.raises(TypeError, match="both be async or both be sync"):
            shadowed(async_old)  # type: ignore[arg-type]

    def test_the_policy_names_the_pattern(self, rollouts: Rollouts) -> None:
        """A shadow needs ``pattern = "shadow"``; its rollout then serves nothing else."""
        with pytest.raises(ValueError, match=r"serves a migration .*use rollouts\.migration"):
            rollouts.shadow("orders", candidate=same_search, unit=lambda user: user)
        with pytest.raises(ValueError, match=r'is not a shadow: add pattern = "shadow"'):
            rollouts.shadow("other", candidate=same_search, unit=lambda user: user)
        with pytest.raises(ValueError, match=r"serves a shadow .*not a guard"):
            rollouts.guard("search", fallback=old_search, unit=lambda user: user)
        with pytest.raises(ValueError, match="serves a shadow"):
            rollouts.switch("search", blue=old_search, green=same_search, unit=lambda user: user)
        rollouts.shadow("search", candidate=same_search, unit=lambda user: user)
        rollouts.shadow("search", candidate=same_search, unit=lambda user: user)  # two: fine

    def test_every_process_judges_at_one_half(self, tmp_path: Path) -> None:
        """The share comes from the policy: a process with no Shadow judges alike."""
        store = f"sqlite:///{tmp_path}/state.db"
        with Rollouts(policy(50), store=store) as other:
            assert other.status("search").health.share == 0.5

    def test_the_function_form_and_repr(self, rollouts: Rollouts) -> None:
        """``stagedroll.patterns.shadow(rollouts, name, ...)`` is the same thing."""
        made = shadow(rollouts, "search", candidate=same_search, unit=lambda user: user)
        assert isinstance(made, Shadow)
        assert "search" in repr(made)
        assert made(old_search).__name__ == "old_search"
