"""Tests of pooled evidence: the outbox, the flush, and the tests set to the fleet's totals."""

from __future__ import annotations

import math
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stagedroll import Action, MemoryStore, Rollouts, SQLiteStore, Status
from stagedroll import Health as HealthPolicy
from stagedroll import _pool as pool
from stagedroll._health import Health
from stagedroll._outcomes import Outcomes
from stagedroll._pool import Batch, Outbox, Totals, Unsure, flush
from stagedroll._sequential import MixtureTest
from stagedroll.stores._digest import digest, rollout_key, token

SHARES = [0.25, 0.5, 1.0]

POLICY: dict[str, Any] = {
    "rollouts": {"co": {"stages": [{"name": "half", "percent": 50}], "health": {"min_events": 3}}}
}


class TestOutbox:
    def test_queues_events_and_units_of_the_visit(self) -> None:
        """Events go under their kind and arm, units under their arm."""
        outbox = Outbox()
        outbox.visit(3, 1)
        outbox.event("errors", True, "u1")
        outbox.event("errors", False, None)
        outbox.event("slow", True, "u2")
        outbox.unit(True, "u1")
        outbox.unit(False, "u3")
        outbox.event("errors", False, None)
        batch = outbox.take()
        assert (batch.epoch, batch.stage, batch.segment) == (3, 1, "3.1")
        assert batch.events == {"errors.t": [token("u1")], "slow.t": [token("u2")]}
        assert batch.calls == {"errors.c": 2}  # events without a unit: counted
        assert batch.units == {"t": [token("u1")], "c": [token("u3")]}
        assert batch.size() == 4
        empty = outbox.take()
        assert (empty.epoch, empty.stage, empty.size(), empty.calls) == (3, 1, 0, {})

    def test_a_new_visit_drops_the_old_queue(self) -> None:
        """What was queued for a stage visit that ended is not flushed into the next."""
        outbox = Outbox()
        outbox.visit(1, 0)
        outbox.event("errors", True, "u1")
        outbox.visit(1, 0)  # the same visit: kept
        assert outbox.batch.size() == 1
        outbox.visit(1, 1)
        assert outbox.batch.size() == 0
        assert (outbox.batch.epoch, outbox.batch.stage) == (1, 1)

    def test_give_back_requeues_before_newer_items(self) -> None:
        """A failed flush's batch goes back in front of what came meanwhile."""
        outbox = Outbox()
        outbox.visit(1, 0)
        outbox.event("errors", True, "old")
        outbox.event("errors", True, None)
        batch = outbox.take()
        outbox.event("errors", True, "new")
        outbox.event("errors", True, None)
        outbox.give_back(batch)
        assert outbox.batch.events == {"errors.t": [token("old"), token("new")]}
        assert outbox.batch.calls == {"errors.t": 2}

    def test_an_unsure_flush_gives_back_its_units_only(self) -> None:
        """Events that may have counted are dropped (and counted as such), units go back."""
        outbox = Outbox()
        outbox.visit(1, 0)
        outbox.event("errors", True, "u1")
        outbox.event("errors", True, None)
        outbox.unit(True, "u1")
        batch = outbox.take()
        outbox.give_back(batch, events=False)
        assert outbox.batch.events == {}
        assert outbox.batch.calls == {}
        assert outbox.batch.units == {"t": [token("u1")]}
        assert outbox.dropped == 2

    def test_give_back_of_an_ended_visit_is_dropped(self) -> None:
        """A batch whose stage visit ended meanwhile is not requeued."""
        outbox = Outbox()
        outbox.visit(1, 0)
        outbox.event("errors", True, "u1")
        batch = outbox.take()
        outbox.visit(2, 0)
        outbox.give_back(batch)
        assert outbox.batch.size() == 0

    def test_full_outbox_drops_and_counts(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Past MAX_QUEUED items (the store is down), more are dropped and counted."""
        monkeypatch.setattr(pool, "MAX_QUEUED", 3)
        outbox = Outbox()
        for i in range(5):
            outbox.event("errors", True, f"u{i}")
        assert outbox.batch.size() == 3
        assert outbox.dropped == 2
        batch = outbox.take()
        outbox.unit(True, "x")
        outbox.give_back(batch)  # 4 > 3: the queue is dropped, and each item counted
        assert outbox.batch.size() == 0
        assert outbox.dropped == 2 + 4


class FailingCountsStore(MemoryStore):
    """A real MemoryStore whose count_distinct fails while ``failing`` is set."""

    failing = False

    def count_distinct(self, rollout: str, scope: str, units: Collection[str]) -> int:
        if self.failing:
            raise ConnectionError("timed out after the counts were written")
        return super().count_distinct(rollout, scope, units)


class FailingReadsStore(MemoryStore):
    """A real MemoryStore whose read_counts fails while ``failing`` is set."""

    failing = False

    def read_counts(self, rollout: str, segment: str) -> dict[str, int]:
        if self.failing:
            raise ConnectionError("down")
        return super().read_counts(rollout, segment)


def t(unit: str) -> bytes:
    """The token a queued event holds for ``unit``."""
    return token(unit)


class TestFlush:
    def test_a_unit_counts_once_across_processes(self) -> None:
        """Two processes flushing the same unit's first error count it once; unitless count each."""
        store = MemoryStore()
        first = Batch(1, 0, events={"errors.t": [t("u1"), t("u2")]},
                      units={"t": [t("u1"), t("u2")]}, calls={"errors.t": 1})  # fmt: skip
        second = Batch(1, 0, events={"errors.t": [t("u2")], "errors.c": [t("c1")]},
                       units={"t": [t("u2"), t("u3")], "c": [t("c1")]},
                       calls={"errors.t": 1})  # fmt: skip
        flush(store, "co", first)
        totals = flush(store, "co", second)
        assert totals.visits == ((0, {"errors.t": 4, "errors.c": 1, "slow.t": 0, "slow.c": 0}),)
        assert (totals.units_treatment, totals.units_control) == (3, 1)

    def test_a_flush_that_fails_after_counting_counts_nothing_twice(self) -> None:
        """A flush that failed once its counts were written is unsure: its events are not
        sent again; the next flush adds only what came since."""
        store = FailingCountsStore()
        outbox = Outbox()
        outbox.visit(1, 0)
        for unit in ("u1", None, None):
            outbox.event("errors", True, unit)
        outbox.unit(True, "u1")
        batch = outbox.take()
        store.failing = True
        with pytest.raises(Unsure):
            flush(store, "co", batch)
        outbox.give_back(batch, events=False)
        store.failing = False
        outbox.event("errors", True, None)
        totals = flush(store, "co", outbox.take())
        assert totals.visits[-1][1]["errors.t"] == 3 + 1
        assert totals.units_treatment == 1  # the unit went back, and counts once

    def test_a_flush_that_fails_before_counting_is_sent_again(self) -> None:
        """A failure while nothing could have counted (the first read) loses nothing."""
        store = FailingReadsStore()
        outbox = Outbox()
        outbox.visit(1, 2)
        outbox.event("errors", True, None)
        batch = outbox.take()
        store.failing = True
        with pytest.raises(ConnectionError) as raised:
            flush(store, "co", batch)
        assert not isinstance(raised.value, Unsure)
        outbox.give_back(batch)
        store.failing = False
        assert flush(store, "co", outbox.take()).visits[-1][1]["errors.t"] == 1

    def test_first_units_span_the_epoch_and_counts_the_visit(self) -> None:
        """A unit counted in one stage is not counted again in the next; counters are per visit."""
        store = MemoryStore()
        flush(store, "co", Batch(1, 0, events={"errors.t": [t("u1")]}))
        totals = flush(store, "co", Batch(1, 1, events={"errors.t": [t("u1"), t("u2")]}))
        zero = {"errors.c": 0, "slow.t": 0, "slow.c": 0}
        assert totals.visits == ((0, {"errors.t": 1, **zero}), (1, {"errors.t": 1, **zero}))
        resumed = flush(store, "co", Batch(5, 1, events={"errors.t": [t("u1")]}))
        assert resumed.visits == ((0, {}), (1, {"errors.t": 1, **zero}))  # a new epoch

    def test_an_empty_batch_reads_the_totals(self) -> None:
        """Flushing nothing still returns what the other processes added."""
        store = MemoryStore()
        flush(
            store,
            "co",
            Batch(2, 0, events={"slow.c": [t("a"), t("b")]}, units={"c": [t("a"), t("b")]}),
        )
        totals = flush(store, "co", Batch(2, 0))
        assert totals.visits[-1][1]["slow.c"] == 2
        assert totals.units_control == 2


class TestSetCurrent:
    @given(
        share=st.floats(0.01, 0.99),
        treatment=st.integers(0, 500),
        control=st.integers(0, 500),
    )
    def test_matches_adding_the_same_events(
        self, share: float, treatment: int, control: int
    ) -> None:
        """Setting totals gives the e-value of adding as many events one by one."""
        added, pooled = MixtureTest(), MixtureTest()
        for test in (added, pooled):
            test.set_share(share)
        added.add(treatment, control)
        pooled.set_current(treatment, control)
        assert math.isclose(pooled.log_e(), added.log_e(), rel_tol=1e-12, abs_tol=1e-12)
        assert (pooled.events_treatment, pooled.events_control) == (treatment, control)

    def test_totals_never_go_back(self) -> None:
        """An older total (two flushes that crossed) is ignored."""
        test = MixtureTest()
        test.set_share(0.5)
        test.set_current(10, 4)
        test.set_current(7, 5)
        assert (test.events_treatment, test.events_control) == (10, 5)

    def test_earlier_shares_are_kept(self) -> None:
        """Totals set at one share are folded when the share changes; the next start at zero."""
        test, reference = MixtureTest(), MixtureTest()
        for share in (0.05, 0.25):
            test.set_share(share)
            reference.set_share(share)
            test.set_current(4, 1)
            reference.add(4, 1)
        assert math.isclose(test.log_e(), reference.log_e())
        assert test.events_treatment == 8

    def test_inactive_share_ignores_totals(self) -> None:
        """At a share of 0 (or before one is set) totals carry no evidence."""
        test = MixtureTest()
        test.set_current(5, 5)
        assert test.events_treatment == 0
        assert test.log_e() == 0.0


class TestPooledHealth:
    def pooled(self) -> tuple[Health, Outcomes]:
        health = Health(HealthPolicy(min_events=3))
        health.outbox = Outbox()
        health.outbox.visit(1, 0)
        outcomes = Outcomes(health)
        outcomes.arms(0)
        health.set_share(SHARES[0])
        return health, outcomes

    def test_events_are_queued_not_counted(self) -> None:
        """With an outbox, a first error goes to the queue; the local test does not move."""
        health, outcomes = self.pooled()
        arms = outcomes.arms(0)
        due = outcomes.record(arms.treatment, True, None, key="u1")
        outcomes.record(arms.treatment, True, None, key="u1")  # not a first error
        assert due is False
        assert health.errors.events_treatment == 0
        assert health.outbox is not None
        assert health.outbox.batch.events == {"errors.t": [token("u1")]}
        assert health.outbox.batch.units == {"t": [token("u1")]}

    def test_absorb_sets_the_tests_and_units(self) -> None:
        """The fleet's totals of the visit in force become the tests' counts."""
        health, outcomes = self.pooled()
        arms = outcomes.arms(0)
        events = {"errors.t": 15, "errors.c": 1, "slow.t": 2}
        health.absorb(Totals(1, 0, ((0, events),), 40, 38), SHARES)
        assert (health.errors.events_treatment, health.errors.events_control) == (15, 1)
        assert health.slow.events_treatment == 2
        assert arms.treatment.units_seen() == 40
        assert arms.control.units_seen() == 38
        assert health.verdict().action is Action.ROLLBACK  # 15 of 16 events at a share of 25 %

    def test_absorb_ignores_another_visit(self) -> None:
        """Totals of a stage visit that ended meanwhile change nothing."""
        health, _ = self.pooled()
        health.absorb(Totals(1, 1, ((0, {}), (1, {"errors.t": 9})), 0, 0), SHARES)
        health.absorb(Totals(0, 0, ((0, {"errors.t": 9}),), 0, 0), SHARES)
        assert health.errors.events_treatment == 0

    def test_the_whole_epoch_is_judged(self) -> None:
        """Earlier visits of the epoch count at their shares, as a process there all along saw.

        A process that joins at a later stage (a new pod, a forked worker) judges the same
        e-process as the others, not the later stages alone.
        """
        health = Health(HealthPolicy(min_events=3))
        health.outbox = Outbox()
        health.outbox.visit(1, 1)
        health.set_share(0.5)
        visits = ((0, {"errors.t": 4, "errors.c": 1}), (1, {"errors.t": 6, "errors.c": 2}))
        health.absorb(Totals(1, 1, visits, 0, 0), SHARES)
        reference = MixtureTest()
        for share, (t, c) in ((0.25, (4, 1)), (0.5, (6, 2))):
            reference.set_share(share)
            reference.add(t, c)
        assert math.isclose(health.errors.log_e(), reference.log_e())
        assert health.errors.events_treatment == 10
        assert health.errors.share == 0.5


class TestPooledRollouts:
    @pytest.fixture(name="path")
    def _path(self, tmp_path: Path) -> Path:
        return tmp_path / "state.db"

    def test_no_step_on_the_callers_thread(self, path: Path) -> None:
        """With a shared store, errors never freeze during a call; the refresh does it."""
        store = SQLiteStore(path, refresh_interval=3600)
        try:
            rollouts = Rollouts(POLICY, store=store)
            for i in range(400):
                rollouts.report("co", f"u{i}", error=rollouts.enabled("co", f"u{i}"))
            assert rollouts["co"].state.status is Status.RUNNING
            made = rollouts.tick()
            assert [t.action for t in made] in ([Action.FREEZE], [Action.ROLLBACK])
            assert made[0].actor == "stagedroll"
        finally:
            store.close()

    def test_two_processes_pool_their_evidence(self, path: Path) -> None:
        """Two Rollouts on two store objects judge on the sum of their deduplicated events."""
        stores = [SQLiteStore(path, refresh_interval=3600) for _ in range(2)]
        try:
            web, worker = (Rollouts(POLICY, store=s) for s in stores)
            treated = [u for u in (f"u{i}" for i in range(200)) if web.enabled("co", u)][:2]
            assert len(treated) == 2
            web.report("co", treated[0], error=True)
            worker.report("co", treated[0], error=True)  # the same unit: one event
            worker.report("co", treated[1], error=True)
            web.tick()
            worker.tick()
            health = web.status("co").health
            assert health.error_events_treatment == 2
            assert worker.status("co").health.error_events_treatment == 2
            assert web.status("co").treatment.units >= 2  # pooled distinct units
        finally:
            for store in stores:
                store.close()

    def test_a_stage_visited_again_is_judged_afresh(self, path: Path) -> None:
        """Back at a stage after a rollback, its first visit's events do not count again."""
        policy = {"rollouts": {"co": {"stages": [{"name": "a", "percent": 50},
                                                 {"name": "b", "percent": 100}],
                                      "health": {"min_events": 3}}}}  # fmt: skip
        store = SQLiteStore(path, refresh_interval=3600)
        try:
            rollouts = Rollouts(policy, store=store)
            treated = [u for u in (f"u{i}" for i in range(400)) if rollouts.enabled("co", u)]
            for unit in treated[:5]:
                rollouts.report("co", unit, error=True)
            assert rollouts.tick() == []  # 5 events: E below the bar of 20
            rollouts.advance("co", actor="alice")
            rollouts.rollback("co", actor="alice")
            rollouts.freeze("co", actor="alice")
            rollouts.report("co", treated[5], error=True)
            assert rollouts.tick() == []  # not rolled back on the old visit's events
            health = rollouts.status("co").health
            assert health.error_events_treatment == 1
        finally:
            store.close()

    def test_a_stored_stage_past_the_policys_last(self, path: Path) -> None:
        """A policy with fewer stages than the stored state holds its last stage, pooling too."""
        longer = {"rollouts": {"co": {"stages": [{"name": n, "percent": p} for n, p in
                                                 (("a", 10), ("b", 25), ("c", 50))],
                                      "health": {"min_events": 3}}}}  # fmt: skip
        store = SQLiteStore(path, refresh_interval=3600)
        try:
            Rollouts(longer, store=store).advance("co", actor="alice")
            Rollouts(longer, store=store).advance("co", actor="alice")  # stage 2 of 3
            shorter = Rollouts(POLICY, store=store)  # one stage, at 50 %
            for i in range(50):
                shorter.report("co", f"u{i}", error=True)
            assert shorter.tick() == []
            status = shorter.status("co")
            assert (status.stage, status.percent) == (0, 50.0)
            assert status.health.error_events_treatment > 0
            assert shorter.failures.count() == 0
        finally:
            store.close()


class RecordingStore(MemoryStore):
    """A real MemoryStore that remembers what reached add_units and count_distinct, and
    refuses (as a data error) the elements in ``refused``, or every call when ``broken``."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[str] = []
        self.refused: set[str] = set()
        self.broken: type[Exception] | None = None
        self.calls = 0

    def _check(self, units: Collection[str]) -> None:
        self.calls += 1
        if self.broken is not None:
            raise self.broken("refused")
        if self.refused & set(units):
            raise UnicodeEncodeError("utf-8", "x", 0, 1, "refused")
        self.received += units

    def add_units(self, rollout: str, scope: str, units: Collection[str]) -> list[bool]:
        self._check(units)
        return super().add_units(rollout, scope, units)

    def count_distinct(self, rollout: str, scope: str, units: Collection[str]) -> int:
        self._check(units)
        return super().count_distinct(rollout, scope, units)


class TestDigests:
    def test_the_queue_holds_tokens_not_units(self) -> None:
        """What waits in the outbox is 16 bytes per unit, whatever the unit: no text."""
        outbox = Outbox()
        outbox.visit(1, 0)
        for unit in ("alice@example.com", "\ud800", "x" * 100_000):
            outbox.event("errors", True, unit)
            outbox.unit(True, unit)
        batch = outbox.take()
        queued = batch.events["errors.t"] + batch.units["t"]
        assert all(isinstance(t, bytes) and len(t) == 16 for t in queued)
        assert b"alice" not in b"".join(queued)

    @given(st.lists(st.text(), min_size=1, max_size=20))
    def test_the_store_receives_keyed_digests(self, units: list[str]) -> None:
        """The store receives digests keyed by the rollout and its history: the same in
        every process, another in another history or rollout, never the unit."""
        received: dict[tuple[str, str], list[list[str]]] = {}
        for rollout, history in (("co", "h1"), ("co", "h1"), ("co", "h2"), ("other", "h1")):
            store = RecordingStore()
            batch = Batch(1, 0, events={"errors.t": [token(u) for u in units]})
            flush(store, rollout, batch, history)
            assert not set(units) & set(store.received)
            received.setdefault((rollout, history), []).append(store.received)
        first, again = received["co", "h1"]
        assert first == again
        assert not set(first) & set(received["co", "h2"][0])
        assert not set(first) & set(received["other", "h1"][0])


class TestSplitting:
    def test_refused_elements_are_isolated(self) -> None:
        """A store refusing two elements of a batch: they are dropped and counted, the
        others land and count."""
        store = RecordingStore()
        units = [f"u{i}" for i in range(40)]
        key = rollout_key("co", "h")
        store.refused = {digest(key, token("u3")), digest(key, token("u30"))}
        totals = flush(store, "co", Batch(1, 0, events={"errors.t": [t(u) for u in units]},
                                          units={"t": [t(u) for u in units]}), "h")  # fmt: skip
        assert totals.refused == 2 + 2
        assert totals.visits[-1][1]["errors.t"] == 38
        assert totals.units_treatment == 38

    def test_the_splitting_is_bounded(self) -> None:
        """A store refusing every call as a data error costs at most SPLIT_CALLS calls more."""
        store = RecordingStore()
        store.broken = ValueError
        units = [t(f"u{i}") for i in range(1000)]
        totals = flush(store, "co", Batch(1, 0, events={"errors.t": units}))
        assert store.calls <= pool.SPLIT_CALLS + 5  # and the calls that do not split
        assert totals.refused == 1000
        assert totals.visits[-1][1] == {}  # nothing counted: the counters were only read

    def test_running_out_of_calls_drops_both_arms_alike(self) -> None:
        """When the split runs out of calls, the dropped tail (the control arm's events)
        takes the treatment's with it: a loss of evidence, never a bias toward a freeze."""
        store = RecordingStore()
        key = rollout_key("co", "h")
        treated = [f"t{i}" for i in range(300)]
        control = [f"c{i}" for i in range(300)]
        store.refused = {digest(key, token(u)) for u in treated[::3] + control[::3]}
        batch = Batch(1, 0, events={"errors.t": [t(u) for u in treated],
                                    "errors.c": [t(u) for u in control]})  # fmt: skip
        counters = flush(store, "co", batch, "h").visits[-1][1]
        assert counters.get("errors.t", 0) == counters.get("errors.c", 0) == 0

    def test_a_store_that_is_down_is_called_once(self) -> None:
        """A failure that is not a data error fails the flush at once, nothing split."""
        store = RecordingStore()
        store.broken = ConnectionError
        with pytest.raises(ConnectionError):
            flush(store, "co", Batch(1, 0, events={"errors.t": [t(f"u{i}") for i in range(99)]}))
        assert store.calls == 1
