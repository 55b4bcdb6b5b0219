"""Tests of the Celery integration: a real app, in eager mode and with an in-process worker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery  # type: ignore[import-untyped]  # no stubs or py.typed
from celery.contrib.testing.worker import start_worker  # type: ignore[import-untyped]  # idem

import stagedroll
from integrating import IN, OUT, POLICY, guarded_price
from stagedroll import Rollouts
from stagedroll.integrations import celery as integration
from stagedroll.testing import RecordingSink


class Service:
    """A Celery app with one guarded task (``price``) and one that reports what it sees."""

    def __init__(self, rollouts: Rollouts, *, eager: bool) -> None:
        self.rollouts = rollouts
        self.app = Celery("service", broker="memory://", backend="cache+memory://")
        self.app.conf.update(task_always_eager=eager, task_store_eager_result=eager)
        price = guarded_price(rollouts)

        def seen() -> list[object]:
            return [stagedroll.current_unit(), dict(stagedroll.current_attributes())]

        self.price = self.app.task(name="price", shared=False)(price)
        self.seen = self.app.task(name="seen", shared=False)(seen)


@pytest.fixture(name="rollouts")
def _rollouts() -> Rollouts:
    return Rollouts(POLICY)


@pytest.fixture(name="connected", scope="module")
def _connected() -> Iterator[None]:
    integration.connect()
    yield
    integration.disconnect()


@pytest.fixture(name="worker", scope="module")
def _worker(connected: None) -> Iterator[Service]:
    """A service with a real worker in a thread of this process, over the memory broker.

    One for the module (a worker takes seconds to stop): its rollouts are its own.
    """
    service = Service(Rollouts(POLICY), eager=False)
    with start_worker(service.app, pool="solo", perform_ping_check=False):
        yield service


def run(task: Any, unit: object = None, attributes: dict[str, object] | None = None) -> Any:
    """Send ``task`` with ``unit`` bound (none if ``None``) and wait for its result."""
    if unit is None:
        result = task.delay()
    else:
        with stagedroll.bind(unit, attributes):
            result = task.delay()
    return result.get(timeout=30)


class TestWorker:
    def test_the_two_units_straddle_half(self, rollouts: Rollouts) -> None:
        """The units the tests use are in and out of the rollout at 50 %."""
        assert rollouts.decide("new-pricing", IN).enabled
        assert not rollouts.decide("new-pricing", OUT).enabled

    def test_two_users_get_their_own_path_and_counts(self, worker: Service) -> None:
        """One task, two senders: each run takes its sender's path, counted under its unit."""
        rollouts = worker.rollouts  # the only test that calls the guarded task
        with RecordingSink(rollouts) as sink:
            assert run(worker.price, IN) == "new"
            assert run(worker.price, OUT) == "old"
        assert sink.units("new-pricing", enabled=True) == {IN}
        assert sink.units("new-pricing", enabled=False) == {OUT}
        status = rollouts.status("new-pricing")
        assert (status.treatment.calls, status.control.calls) == (1, 1)

    def test_the_unit_and_attributes_arrive_and_leave(self, worker: Service) -> None:
        """The task sees the sender's unit and attributes; the next task, sent without, none."""
        assert run(worker.seen, "ada", {"plan": "pro"}) == ["ada", {"plan": "pro"}]
        assert run(worker.seen) == [None, {}]

    def test_only_plain_attributes_travel(self, worker: Service) -> None:
        """Attributes that JSON cannot carry are left out; the task is still sent."""
        attributes: dict[str, object] = {"plan": "pro", "when": object(), "n": 2}
        assert run(worker.seen, "ada", attributes) == ["ada", {"plan": "pro", "n": 2}]

    def test_a_uuid_travels_as_its_text(self, worker: Service) -> None:
        """A UUID unit arrives as its text, which buckets as the UUID does."""
        unit = uuid.UUID(int=7)
        assert run(worker.seen, unit) == [str(unit), {}]
        assert stagedroll.unit_key(unit) == str(unit)

    def test_another_type_does_not_travel(self, worker: Service) -> None:
        """A unit of a type no decision takes (a float) is not sent; the task runs without."""
        assert run(worker.seen, 1.5) == [None, {}]

    def test_disconnect_stops_the_travel(self, worker: Service) -> None:
        """After ``disconnect``, a task sent with a unit bound runs with none; ``connect``
        again (twice: still one handler each) and it travels again."""
        integration.disconnect()
        try:
            assert run(worker.seen, "ada") == [None, {}]
        finally:
            integration.connect()
            integration.connect()
        assert run(worker.seen, "ada") == ["ada", {}]

    @pytest.mark.parametrize("unit", ["u" * 257, ["ada"], 1.5], ids=["long", "list", "float"])
    def test_a_bad_unit_in_the_message_is_not_bound(self, worker: Service, unit: object) -> None:
        """A worker binds no unit from a message whose header is too long or of a wrong type."""
        result = worker.seen.apply_async(headers={integration.UNIT_HEADER: unit})
        assert result.get(timeout=30) == [None, {}]


class TestEager:
    def test_two_users_get_their_own_path_and_counts(
        self, rollouts: Rollouts, connected: None
    ) -> None:
        """In eager mode the task runs in the sender's context: each sender's path and unit."""
        service = Service(rollouts, eager=True)
        with RecordingSink(rollouts) as sink:
            assert run(service.price, IN) == "new"
            assert run(service.price, OUT) == "old"
            assert run(service.price) == "old"
        assert sink.units("new-pricing", enabled=True) == {IN}
        assert sink.units("new-pricing", enabled=False) == {OUT, None}
        assert stagedroll.current_unit() is None
