"""The OpenFeature provider, driven through ``openfeature.api`` and a client, as a service does."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import example, given
from hypothesis import strategies as st
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import EventDetails, ProviderEvent
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason as FlagReason
from openfeature.track import TrackingEventDetails

from integrating import unit_in
from servers import RedisServer, unique_prefix
from stagedroll import (
    Decision,
    MemoryStore,
    RedisStore,
    Rollouts,
    RolloutState,
    SQLiteStore,
    Status,
)
from stagedroll.integrations.openfeature import StagedrollProvider
from stagedroll.testing import override
from test_rollouts import ExplodingAttributes

WAIT_S = 30.0
"""How long a test waits for an event that must come (a liveness bound, not a threshold)."""

POLICY: dict[str, Any] = {
    "environments": ["dev", "prod"],
    "segments": {
        "employees": {"rules": [{"attribute": "email", "op": "suffix", "value": "@corp.test"}]}
    },
    "rollouts": {
        "checkout": {
            "stages": [
                {"name": "employees", "percent": 0, "segments": ["employees"]},
                {"name": "half", "percent": 50},
            ],
            "targeting": {"allow": ["vip"], "deny": ["banned"]},
            "environments": {"dev": "off", "prod": "stages"},
        },
        "search": {"stages": [{"name": "half", "percent": 50}]},
        "orgs": {"bucket_by": "org", "stages": [{"name": "half", "percent": 50}]},
    },
}


class Events:
    """The provider events the handlers received, in order, across OpenFeature's thread."""

    def __init__(self) -> None:
        self.received: queue.Queue[tuple[ProviderEvent, EventDetails]] = queue.Queue()

    def handler(self, event: ProviderEvent) -> Any:
        def handle(details: EventDetails) -> None:
            self.received.put((event, details))

        return handle

    def wait_for(
        self, event: ProviderEvent, *, status: str | None = None, provider: str = "stagedroll"
    ) -> EventDetails:
        """The provider's next event of that kind (and rollout status); fail if none comes."""
        while True:
            try:
                got, details = self.received.get(timeout=WAIT_S)
            except queue.Empty:
                pytest.fail(f"no {event.value} event came")
            if (
                got is event
                and details.provider_name == provider
                and (status is None or details.metadata.get("status") == status)
            ):
                return details


class FailingRollouts(Rollouts):
    """Rollouts whose decisions fail inside stagedroll (a real internal failure, reason ERROR).

    Through a client the attributes always arrive as a plain dict, so the failure is
    injected at the one place no OpenFeature context can reach.
    """

    def decide(
        self, name: str, unit: object, attributes: Mapping[str, object] | None = None
    ) -> Decision:
        return super().decide(name, unit, ExplodingAttributes())


class FlakyStore(MemoryStore):
    """A memory store whose reads fail while ``down``: the store unreachable."""

    down = True

    def load(self, rollout: str) -> RolloutState | None:
        if self.down:
            raise ConnectionError("store unreachable")
        return super().load(rollout)


@pytest.fixture(name="isolated", autouse=False)
def _isolated() -> Iterator[None]:
    """OpenFeature's API is process-global: start and end each test with it reset."""
    api.shutdown()
    yield
    api.shutdown()


@pytest.fixture(name="rollouts")
def _rollouts() -> Iterator[Rollouts]:
    with Rollouts(POLICY, environment="prod") as rollouts:
        yield rollouts


@pytest.fixture(name="events")
def _events(isolated: None) -> Events:
    events = Events()
    for event in ProviderEvent:
        api.add_handler(event, events.handler(event))
    return events


def serve(rollouts: Rollouts, **options: Any) -> OpenFeatureClient:
    """Set a provider over ``rollouts`` as the default one, and return a client."""
    api.set_provider_and_wait(StagedrollProvider(rollouts, **options))
    return api.get_client()


@pytest.fixture(name="client")
def _client(rollouts: Rollouts, isolated: None) -> OpenFeatureClient:
    return serve(rollouts)


def ctx(unit: str | None, **attributes: Any) -> EvaluationContext:
    return EvaluationContext(targeting_key=unit, attributes=attributes)


class TestReasons:
    def test_a_bucketed_unit_is_a_split(
        self, rollouts: Rollouts, client: OpenFeatureClient
    ) -> None:
        """A unit decided by its bucket resolves to SPLIT, with stagedroll's account in metadata."""
        rollouts.advance("checkout")
        for enabled in (True, False):
            unit = unit_in(rollouts, "checkout", enabled=enabled)
            decision = rollouts.decide("checkout", unit)
            details = client.get_boolean_details("checkout", not enabled, ctx(unit))
            assert (details.value, details.variant, details.reason, details.error_code) == (
                enabled,
                "new" if enabled else "old",
                FlagReason.SPLIT,
                None,
            )
            assert details.flag_metadata == {
                "reason": "IN_COHORT" if enabled else "OUT_OF_COHORT",
                "stage": "half",
                "percent": 50.0,
                "bucket": decision.bucket,
            }

    def test_allow_and_deny_lists_are_targeting_matches(self, client: OpenFeatureClient) -> None:
        """The allow list turns the new path on, the deny list off: both TARGETING_MATCH."""
        allowed = client.get_boolean_details("checkout", False, ctx("vip"))
        denied = client.get_boolean_details("checkout", True, ctx("banned"))
        assert (allowed.value, allowed.reason, allowed.flag_metadata["reason"]) == (
            True,
            FlagReason.TARGETING_MATCH,
            "ALLOWED",
        )
        assert (denied.value, denied.reason, denied.flag_metadata["reason"]) == (
            False,
            FlagReason.TARGETING_MATCH,
            "DENIED",
        )

    def test_context_attributes_reach_the_segments(self, client: OpenFeatureClient) -> None:
        """The context's attributes are the targeting attributes: a segment matches on them."""
        employee = client.get_boolean_details("checkout", False, ctx("u1", email="a@corp.test"))
        other = client.get_boolean_details("checkout", False, ctx("u1", email="a@else.test"))
        assert (employee.value, employee.reason, employee.flag_metadata["reason"]) == (
            True,
            FlagReason.TARGETING_MATCH,
            "SEGMENT",
        )
        assert (other.value, other.reason) == (False, FlagReason.SPLIT)

    def test_a_complete_rollout_is_static(
        self, rollouts: Rollouts, client: OpenFeatureClient
    ) -> None:
        """A complete rollout is on for everyone: STATIC."""
        rollouts.complete("checkout")
        details = client.get_boolean_details("checkout", False, ctx("u1"))
        assert (details.value, details.variant, details.reason) == (True, "new", FlagReason.STATIC)
        assert details.flag_metadata["reason"] == "COMPLETE"

    def test_a_killed_rollout_is_disabled(
        self, rollouts: Rollouts, client: OpenFeatureClient
    ) -> None:
        """A killed rollout is off for everyone, allow list included: DISABLED."""
        rollouts.kill("checkout")
        details = client.get_boolean_details("checkout", True, ctx("vip"))
        assert (details.value, details.variant, details.reason) == (
            False,
            "old",
            FlagReason.DISABLED,
        )
        assert details.flag_metadata["reason"] == "KILLED"

    def test_a_rollout_rolled_back_to_nothing_is_disabled(
        self, rollouts: Rollouts, client: OpenFeatureClient
    ) -> None:
        """Rolled back to 0 % (before the first stage), a bucketed unit is DISABLED, not SPLIT."""
        rollouts.rollback("search")
        details = client.get_boolean_details("search", True, ctx("u1"))
        assert (details.value, details.reason) == (False, FlagReason.DISABLED)
        assert details.flag_metadata["reason"] == "OUT_OF_COHORT"
        assert details.flag_metadata["percent"] == 0.0

    def test_a_rollout_off_in_the_environment_is_disabled(self, isolated: None) -> None:
        """A rollout that is off in this environment is DISABLED."""
        with Rollouts(POLICY, environment="dev") as rollouts:
            details = serve(rollouts).get_boolean_details("checkout", True, ctx("vip"))
        assert (details.value, details.reason) == (False, FlagReason.DISABLED)
        assert details.flag_metadata["reason"] == "ENVIRONMENT"

    def test_an_override_is_static(self, rollouts: Rollouts, client: OpenFeatureClient) -> None:
        """A decision forced by ``stagedroll.testing.override`` is STATIC."""
        with override(rollouts, "search", enabled=True):
            details = client.get_boolean_details("search", False, ctx("u1"))
        assert (details.value, details.reason) == (True, FlagReason.STATIC)
        assert details.flag_metadata["reason"] == "OVERRIDE"

    def test_an_unreachable_store_is_stale(self, isolated: None) -> None:
        """A rollout serving the unknown state (the store down since the start) is STALE."""
        store = FlakyStore()
        with Rollouts(POLICY, environment="prod", store=store) as rollouts:
            client = serve(rollouts)
            details = client.get_boolean_details("search", True, ctx("u1"))
            assert (details.value, details.variant, details.reason) == (
                False,
                "old",
                FlagReason.STALE,
            )
            store.down = False
            rollouts.status("search")  # the store answers: the rollout starts
            details = client.get_boolean_details("search", True, ctx("vip"))
        assert details.reason in (FlagReason.SPLIT, FlagReason.TARGETING_MATCH)

    def test_an_internal_failure_is_an_error_with_the_default(self, isolated: None) -> None:
        """stagedroll failing inside the decision gives the default value, ERROR and GENERAL."""
        with FailingRollouts(POLICY, environment="prod") as rollouts:
            client = serve(rollouts)
            with structlog.testing.capture_logs():
                details = client.get_boolean_details("checkout", True, ctx("u1"))
            assert rollouts.failures.count("decision.failed") == 1
        assert (details.value, details.reason, details.error_code) == (
            True,
            FlagReason.ERROR,
            ErrorCode.GENERAL,
        )

    @given(unit=st.text(st.characters(exclude_categories=()), min_size=1))
    @example(unit="\ud800")
    @example(unit="\x00\x1b[2J\r")
    @example(unit="x" * 1_000_000)
    def test_the_value_is_stagedrolls_decision(self, unit: str) -> None:
        """For any targeting key, the flag's value and bucket are those of ``Rollouts.decide``."""
        api.shutdown()
        try:
            with Rollouts(POLICY, environment="prod") as rollouts:
                details = serve(rollouts).get_boolean_details("search", False, ctx(unit))
                decision = rollouts.decide("search", unit)
        finally:
            api.shutdown()
        assert (details.value, details.reason, details.error_code) == (
            decision.enabled,
            FlagReason.SPLIT,
            None,
        )
        assert details.flag_metadata["bucket"] == decision.bucket


class TestErrors:
    def test_an_unknown_rollout_is_flag_not_found(self, client: OpenFeatureClient) -> None:
        """A flag key that names no rollout gives the default value and FLAG_NOT_FOUND."""
        details = client.get_boolean_details("chekout\x1b[2J", True, ctx("u1"))
        assert (details.value, details.reason, details.error_code) == (
            True,
            FlagReason.ERROR,
            ErrorCode.FLAG_NOT_FOUND,
        )
        assert details.error_message == "no rollout named 'chekout\\x1b[2J'"

    @pytest.mark.parametrize("unit", [None, ""])
    def test_a_missing_targeting_key_is_reported(
        self, client: OpenFeatureClient, unit: str | None
    ) -> None:
        """No targeting key gives the default value and TARGETING_KEY_MISSING."""
        details = client.get_boolean_details("checkout", True, ctx(unit))
        assert (details.value, details.reason, details.error_code) == (
            True,
            FlagReason.ERROR,
            ErrorCode.TARGETING_KEY_MISSING,
        )

    def test_a_missing_bucket_by_attribute_is_a_missing_targeting_key(
        self, client: OpenFeatureClient
    ) -> None:
        """A rollout bucketed on an attribute the context lacks: TARGETING_KEY_MISSING."""
        details = client.get_boolean_details("orgs", True, ctx("u1"))
        assert (details.value, details.error_code) == (True, ErrorCode.TARGETING_KEY_MISSING)
        assert details.error_message is not None
        assert "'org'" in details.error_message
        found = client.get_boolean_details("orgs", True, ctx("u1", org="acme"))
        assert (found.reason, found.error_code) == (FlagReason.SPLIT, None)

    def test_a_targeting_key_that_is_no_string_is_an_invalid_context(
        self, client: OpenFeatureClient
    ) -> None:
        """A targeting key of another type gives INVALID_CONTEXT, not a guess."""
        context = EvaluationContext(targeting_key=42)  # type: ignore[arg-type]  # the hostile case
        details = client.get_boolean_details("checkout", True, context)
        assert (details.value, details.error_code) == (True, ErrorCode.INVALID_CONTEXT)

    def test_other_types_are_a_type_mismatch(self, client: OpenFeatureClient) -> None:
        """A rollout is a boolean flag: string, integer, float and object give TYPE_MISMATCH."""
        context = ctx("vip")
        results = [
            client.get_string_details("checkout", "old", context),
            client.get_integer_details("checkout", 0, context),
            client.get_float_details("checkout", 0.5, context),
            client.get_object_details("checkout", {"a": 1}, context),
        ]
        assert [(d.value, d.reason, d.error_code) for d in results] == [
            ("old", FlagReason.ERROR, ErrorCode.TYPE_MISMATCH),
            (0, FlagReason.ERROR, ErrorCode.TYPE_MISMATCH),
            (0.5, FlagReason.ERROR, ErrorCode.TYPE_MISMATCH),
            ({"a": 1}, FlagReason.ERROR, ErrorCode.TYPE_MISMATCH),
        ]

    def test_another_type_of_an_unknown_rollout_is_flag_not_found(
        self, client: OpenFeatureClient
    ) -> None:
        """For a name that is no rollout, every type gives FLAG_NOT_FOUND first."""
        details = client.get_string_details("nothing", "old", ctx("u1"))
        assert (details.value, details.error_code) == ("old", ErrorCode.FLAG_NOT_FOUND)


class TestAsync:
    def test_async_evaluation_matches_sync(
        self, rollouts: Rollouts, client: OpenFeatureClient
    ) -> None:
        """The client's async path resolves as the sync one, value, reason and metadata."""
        rollouts.advance("checkout")

        async def evaluate() -> list[Any]:
            return [
                await client.get_boolean_details_async("checkout", False, ctx(f"user-{i}"))
                for i in range(50)
            ] + [await client.get_string_details_async("checkout", "x", ctx("u1"))]

        results = asyncio.run(evaluate())
        expected = [
            client.get_boolean_details("checkout", False, ctx(f"user-{i}")) for i in range(50)
        ]
        assert results[:-1] == expected
        assert {d.value for d in expected} == {True, False}
        assert results[-1].error_code is ErrorCode.TYPE_MISMATCH


class TestEvents:
    def test_ready_after_initialize(self, rollouts: Rollouts, events: Events) -> None:
        """Setting the provider emits READY, named by the provider's metadata name."""
        serve(rollouts, metadata_name="rollouts")
        events.wait_for(ProviderEvent.PROVIDER_READY, provider="rollouts")
        assert api.get_provider_metadata().name == "rollouts"

    def test_a_transition_is_a_configuration_change(
        self, rollouts: Rollouts, events: Events
    ) -> None:
        """Each transition emits CONFIGURATION_CHANGED naming the rollout, to client handlers."""
        client = serve(rollouts)
        seen: queue.Queue[EventDetails] = queue.Queue()
        client.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, seen.put)
        rollouts.freeze("checkout", actor="alice")
        details = events.wait_for(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, status="frozen")
        assert details.flags_changed == ["checkout"]
        assert details.metadata == {"status": "frozen", "stage": 0, "version": 2}
        assert seen.get(timeout=WAIT_S).flags_changed == ["checkout"]

    def test_a_transition_of_another_process_is_a_configuration_change(
        self, tmp_path: Path, events: Events
    ) -> None:
        """A transition that another process makes reaches the provider through the store."""
        path = tmp_path / "state.db"
        here = SQLiteStore(path, refresh_interval=0.02)
        there = SQLiteStore(path, refresh_interval=3600)
        try:
            with Rollouts(POLICY, environment="prod", store=here) as rollouts:
                serve(rollouts)
                with Rollouts(POLICY, environment="prod", store=there) as other:
                    other.kill("search", actor="bob")
                details = events.wait_for(
                    ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, status="killed"
                )
                assert details.flags_changed == ["search"]
        finally:
            here.close()
            there.close()

    def test_stale_while_the_store_is_unreachable(self, isolated: None, events: Events) -> None:
        """A store down since the start: STALE at the first evaluation, READY once it answers."""
        store = FlakyStore()
        with Rollouts(POLICY, environment="prod", store=store) as rollouts:
            client = serve(rollouts)
            events.wait_for(ProviderEvent.PROVIDER_READY)
            client.get_boolean_value("search", False, ctx("u1"))
            events.wait_for(ProviderEvent.PROVIDER_STALE)
            store.down = False
            rollouts.tick()  # every rollout starts: none serves the unknown state any more
            events.wait_for(ProviderEvent.PROVIDER_READY)

    def test_stale_while_redis_is_down(self, redis_server: RedisServer, events: Events) -> None:
        """A shared store whose refresh fails makes the provider STALE; READY when it is back."""
        store = RedisStore(redis_server.url, prefix=unique_prefix("openfeature"),
                           refresh_interval=0.02, timeout=0.25)  # fmt: skip
        try:
            with Rollouts(POLICY, environment="prod", store=store) as rollouts:
                client = serve(rollouts)
                events.wait_for(ProviderEvent.PROVIDER_READY)
                redis_server.stop()
                events.wait_for(ProviderEvent.PROVIDER_STALE)
                details = client.get_boolean_details("checkout", True, ctx("vip"))
                assert (details.value, details.reason) == (True, FlagReason.STALE)
                assert details.flag_metadata["reason"] == "ALLOWED"
                redis_server.start()
                events.wait_for(ProviderEvent.PROVIDER_READY)
        finally:
            store.close()

    def test_shutdown_unsubscribes_and_initialize_subscribes_again(
        self, rollouts: Rollouts, events: Events
    ) -> None:
        """After ``api.shutdown()`` the rollouts hold no listener of the provider (it is not
        kept alive by them); set again, it is told of transitions again."""
        provider = StagedrollProvider(rollouts)
        api.set_provider_and_wait(provider)
        events.wait_for(ProviderEvent.PROVIDER_READY)
        assert rollouts.off_change(provider._changed) is True  # it was subscribed
        rollouts.on_change(provider._changed)
        api.shutdown()
        assert rollouts.off_change(provider._changed) is False  # shutdown unsubscribed it
        for event in ProviderEvent:
            api.add_handler(event, events.handler(event))
        api.set_provider_and_wait(provider)
        rollouts.freeze("checkout", actor="alice")
        details = events.wait_for(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, status="frozen")
        assert details.flags_changed == ["checkout"]


class TestTracking:
    def test_track_reports_an_outcome(self, rollouts: Rollouts, client: OpenFeatureClient) -> None:
        """``client.track`` with the rollout's name records the outcome on the unit's arm."""
        rollouts.advance("checkout")
        new = unit_in(rollouts, "checkout", enabled=True)
        old = unit_in(rollouts, "checkout", enabled=False)
        failed = TrackingEventDetails(value=0.2, attributes={"error": True})
        client.track("checkout", ctx(new), failed)
        client.track("checkout", ctx(old), TrackingEventDetails(value=0.1))
        client.track("checkout", ctx(old))
        status = rollouts.status("checkout")
        assert (status.treatment.calls, status.treatment.errors) == (1, 1)
        assert (status.control.calls, status.control.errors) == (2, 0)
        assert status.treatment.mean_latency_s == pytest.approx(0.2)

    def test_a_failing_new_path_gets_frozen(
        self, rollouts: Rollouts, client: OpenFeatureClient, events: Events
    ) -> None:
        """Evaluated and tracked through OpenFeature alone, a failing new path gets frozen."""
        rollouts.advance("checkout")
        requests = 0
        while rollouts["checkout"].state.status is Status.RUNNING and requests < 20_000:
            context = ctx(f"user-{requests}")
            new = client.get_boolean_value("checkout", False, context)
            client.track(
                "checkout", context, TrackingEventDetails(value=0.05, attributes={"error": new})
            )
            requests += 1
        status = rollouts.status("checkout")
        assert (status.status, status.actor) == (Status.FROZEN, "stagedroll")
        details = events.wait_for(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, status="frozen")
        assert details.flags_changed == ["checkout"]

    @pytest.mark.parametrize(
        ("name", "context", "details", "why"),
        [
            ("checkout-latency", ctx("u1"), None, "no rollout has that name"),
            ("checkout", ctx(None), None, "the context has no targeting_key"),
            (
                "checkout",
                ctx("u1"),
                TrackingEventDetails(attributes={"error": "yes"}),
                'attribute "error" must be a bool, not str',
            ),
        ],
    )
    def test_other_events_are_ignored_and_logged_once(
        self,
        rollouts: Rollouts,
        client: OpenFeatureClient,
        *,
        name: str,
        context: EvaluationContext,
        details: TrackingEventDetails | None,
        why: str,
    ) -> None:
        """An event that names no rollout, lacks a unit or an error flag records nothing."""
        with structlog.testing.capture_logs() as logs:
            client.track(name, context, details)
            client.track(name, context, details)
        status = rollouts.status("checkout")
        assert status.control.calls + status.treatment.calls + status.targeted.calls == 0
        assert [(e["event"], e["why"]) for e in logs] == [("openfeature.track_ignored", why)]
        assert "u1" not in repr(logs)

    def test_a_bad_latency_keeps_the_outcome(
        self, rollouts: Rollouts, client: OpenFeatureClient
    ) -> None:
        """A latency that is no finite duration is dropped by stagedroll; the outcome counts."""
        with structlog.testing.capture_logs():
            for value in (float("nan"), -1.0, float("inf")):
                client.track("checkout", ctx("vip"), TrackingEventDetails(value=value))
        assert rollouts.status("checkout").targeted.calls == 3
        assert rollouts.failures.count("outcome.bad_latency") == 3


class TestProvider:
    def test_refuses_what_is_no_rollouts(self) -> None:
        """The provider is built over a ``Rollouts``; anything else is refused by name."""
        with pytest.raises(TypeError, match=r"rollouts must be a stagedroll\.Rollouts, not dict"):
            StagedrollProvider(POLICY)  # type: ignore[arg-type]  # the mistake under test

    def test_shutdown_leaves_the_rollouts_open(self, rollouts: Rollouts, isolated: None) -> None:
        """``api.shutdown`` stops the provider; the rollouts (the caller's) keep deciding."""
        serve(rollouts)
        api.shutdown()
        assert rollouts.decide("checkout", "vip").enabled
        rollouts.freeze("checkout")  # no provider listening: nothing breaks
