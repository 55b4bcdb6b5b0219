"""Tests of pooled evidence: the outbox, the flush, and the tests set to the fleet's totals."""

from __future__ import annotations

import math
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import Gate
from stagedroll import Action, MemoryStore, Rollouts, SQLiteStore, Status
from stagedroll import Health as HealthPolicy
from stagedroll import _pool as pool
from stagedroll._health import AGREE_AFTER, MAX_SHARES, Health, Verdict
from stagedroll._pool import Batch, Outbox, Totals, Unsure, flush
from stagedroll._sequential import MixtureTest, block_of
from stagedroll.stores._digest import digest, rollout_key, token

POLICY: dict[str, Any] = {
    "rollouts": {"co": {"stages": [{"name": "half", "percent": 50}], "health": {"min_events": 3}}}
}


class TestOutbox:
    def test_queues_events_and_units_of_the_visit(self) -> None:
        """Events go under their kind, arm and share, units under their arm and share."""
        outbox = Outbox()
        outbox.visit(3, 1)
        outbox.event("errors", True, "u1", 0.25)
        outbox.event("errors", False, None, 0.25)
        outbox.event("slow", True, "u2", 0.25)
        outbox.unit(True, "u1", 0.25)
        outbox.unit(False, "u3", 0.25)
        outbox.event("errors", False, None, 0.25)
        outbox.blocks["errors"] = 7
        batch = outbox.take(0.25)
        assert (batch.epoch, batch.stage, batch.segment) == (3, 1, "3.1")
        assert batch.events == {"errors.t@0.25": [token("u1")], "slow.t@0.25": [token("u2")]}
        assert batch.calls == {"errors.c@0.25": 2}  # events without a unit: counted
        assert batch.units == {"t@0.25": [token("u1")], "c@0.25": [token("u3")]}
        assert (batch.share, batch.blocks) == (0.25, {"errors": 7})
        assert batch.size() == 4
        empty = outbox.take(0.25)
        assert (empty.epoch, empty.stage, empty.size(), empty.calls) == (3, 1, 0, {})
        assert empty.blocks == {"errors": 7}  # the block stays until the next totals

    def test_each_event_keeps_the_share_it_was_observed_at(self) -> None:
        """A percent edit between two events of one batch: each is queued at its own share."""
        outbox = Outbox()
        outbox.visit(1, 0)
        outbox.event("errors", True, "u1", 0.2)
        outbox.unit(True, "u1", 0.2)
        outbox.event("errors", True, "u2", 0.05)
        outbox.event("errors", True, None, 0.2)
        outbox.event("errors", True, None, 0.05)
        outbox.unit(True, "u2", 0.05)
        batch = outbox.take(0.05)
        assert batch.events == {"errors.t@0.2": [token("u1")], "errors.t@0.05": [token("u2")]}
        assert batch.calls == {"errors.t@0.2": 1, "errors.t@0.05": 1}
        assert batch.units == {"t@0.2": [token("u1")], "t@0.05": [token("u2")]}
        assert batch.share == 0.05

    def test_a_new_visit_drops_the_old_queue(self) -> None:
        """What was queued for a stage visit that ended is not flushed into the next, nor
        its block."""
        outbox = Outbox()
        outbox.visit(1, 0)
        outbox.event("errors", True, "u1", 0.5)
        outbox.blocks["errors"] = 12
        outbox.visit(1, 0)  # the same visit: kept
        assert outbox.batch.size() == 1
        assert outbox.blocks == {"errors": 12}
        outbox.visit(1, 1)
        assert outbox.batch.size() == 0
        assert outbox.blocks == {}
        assert (outbox.batch.epoch, outbox.batch.stage) == (1, 1)

    def test_give_back_requeues_before_newer_items(self) -> None:
        """A failed flush's batch goes back in front of what came meanwhile."""
        outbox = Outbox()
        outbox.visit(1, 0)
        outbox.event("errors", True, "old", 0.5)
        outbox.event("errors", True, None, 0.5)
        batch = outbox.take(0.5)
        outbox.event("errors", True, "new", 0.5)
        outbox.event("errors", True, None, 0.5)
        outbox.give_back(batch)
        assert outbox.batch.events == {"errors.t@0.5": [token("old"), token("new")]}
        assert outbox.batch.calls == {"errors.t@0.5": 2}

    def test_an_unsure_flush_gives_back_its_units_only(self) -> None:
        """Events that may have counted are dropped (and counted as such), units go back."""
        outbox = Outbox()
        outbox.visit(1, 0)
        outbox.event("errors", True, "u1", 0.5)
        outbox.event("errors", True, None, 0.5)
        outbox.unit(True, "u1", 0.5)
        batch = outbox.take(0.5)
        outbox.give_back(batch, events=False)
        assert outbox.batch.events == {}
        assert outbox.batch.calls == {}
        assert outbox.batch.units == {"t@0.5": [token("u1")]}
        assert outbox.dropped == 2

    def test_give_back_of_an_ended_visit_is_dropped(self) -> None:
        """A batch whose stage visit ended meanwhile is not requeued."""
        outbox = Outbox()
        outbox.visit(1, 0)
        outbox.event("errors", True, "u1", 0.5)
        batch = outbox.take(0.5)
        outbox.visit(2, 0)
        outbox.give_back(batch)
        assert outbox.batch.size() == 0

    def test_full_outbox_drops_and_counts(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Past MAX_QUEUED items (the store is down), more are dropped and counted."""
        monkeypatch.setattr(pool, "MAX_QUEUED", 3)
        outbox = Outbox()
        for i in range(5):
            outbox.event("errors", True, f"u{i}", 0.5)
        assert outbox.batch.size() == 3
        assert outbox.dropped == 2
        batch = outbox.take(0.5)
        outbox.unit(True, "x", 0.5)
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
        """Two processes flushing the same unit's first error count it once; unitless count
        each; the counters name the share and the block, and the units new to each process."""
        store = MemoryStore()
        first = Batch(1, 0, events={"errors.t@0.5": [t("u1"), t("u2")]},
                      units={"t@0.5": [t("u1"), t("u2")]}, calls={"errors.t@0.5": 1},
                      share=0.5)  # fmt: skip
        second = Batch(1, 0, events={"errors.t@0.5": [t("u2")], "errors.c@0.5": [t("c1")]},
                       units={"t@0.5": [t("u2"), t("u3")], "c@0.5": [t("c1")]},
                       calls={"errors.t@0.5": 1}, share=0.5)  # fmt: skip
        flush(store, "co", first)
        totals = flush(store, "co", second)
        assert totals.visits == ((0, {"errors.t@0.5#0": 4, "errors.c@0.5#0": 1,
                                      "units.t@0.5": 4, "units.c@0.5": 1}),)  # fmt: skip
        assert (totals.units_treatment, totals.units_control) == (3, 1)

    def test_events_go_to_the_block_of_the_batch(self) -> None:
        """A batch's events, with and without a unit, count in the block it names per kind."""
        store = MemoryStore()
        batch = Batch(1, 0, events={"errors.t@0.5": [t("u1")], "slow.c@0.5": [t("u2")]},
                      calls={"errors.c@0.5": 2}, share=0.5,
                      blocks={"errors": 12, "slow": 3})  # fmt: skip
        counters = flush(store, "co", batch).visits[-1][1]
        assert counters == {"errors.t@0.5#12": 1, "errors.c@0.5#12": 2, "slow.c@0.5#3": 1}

    def test_units_are_counted_per_share(self) -> None:
        """Distinct units count apart per share; the totals are those of the batch's share."""
        store = MemoryStore()
        flush(store, "co", Batch(1, 0, units={"t@0.2": [t("a"), t("b")], "c@0.2": [t("c")]},
                                 share=0.2))  # fmt: skip
        totals = flush(store, "co", Batch(1, 0, units={"t@0.05": [t("a")], "c@0.2": [t("d")]},
                                          share=0.05))  # fmt: skip
        assert (totals.units_treatment, totals.units_control) == (1, 0)
        assert totals.visits[-1][1] == {"units.t@0.2": 2, "units.c@0.2": 2, "units.t@0.05": 1}
        at_twenty = flush(store, "co", Batch(1, 0, share=0.2))
        assert (at_twenty.units_treatment, at_twenty.units_control) == (2, 2)
        assert store.count_distinct("co", "1.0@0.2/c", []) == 2
        assert store.count_distinct("co", "1.0@0.05/t", []) == 1

    def test_a_flush_that_fails_after_counting_counts_nothing_twice(self) -> None:
        """A flush that failed once its counts were written is unsure: its events are not
        sent again; the next flush adds only what came since."""
        store = FailingCountsStore()
        outbox = Outbox()
        outbox.visit(1, 0)
        for unit in ("u1", None, None):
            outbox.event("errors", True, unit, 0.5)
        outbox.unit(True, "u1", 0.5)
        batch = outbox.take(0.5)
        store.failing = True
        with pytest.raises(Unsure):
            flush(store, "co", batch)
        outbox.give_back(batch, events=False)
        store.failing = False
        outbox.event("errors", True, None, 0.5)
        totals = flush(store, "co", outbox.take(0.5))
        assert totals.visits[-1][1]["errors.t@0.5#0"] == 3 + 1
        assert totals.units_treatment == 1  # the unit went back, and counts once

    def test_a_flush_that_fails_before_counting_is_sent_again(self) -> None:
        """A failure while nothing could have counted (the first read) loses nothing."""
        store = FailingReadsStore()
        outbox = Outbox()
        outbox.visit(1, 2)
        outbox.event("errors", True, None, 0.5)
        batch = outbox.take(0.5)
        store.failing = True
        with pytest.raises(ConnectionError) as raised:
            flush(store, "co", batch)
        assert not isinstance(raised.value, Unsure)
        outbox.give_back(batch)
        store.failing = False
        assert flush(store, "co", outbox.take(0.5)).visits[-1][1]["errors.t@0.5#0"] == 1

    def test_first_units_span_the_epoch_and_counts_the_visit(self) -> None:
        """A unit counted in one stage is not counted again in the next; counters are per visit."""
        store = MemoryStore()
        flush(store, "co", Batch(1, 0, events={"errors.t@0.25": [t("u1")]}, share=0.25))
        totals = flush(store, "co", Batch(1, 1, events={"errors.t@0.5": [t("u1"), t("u2")]},
                                          share=0.5))  # fmt: skip
        assert totals.visits == ((0, {"errors.t@0.25#0": 1}), (1, {"errors.t@0.5#0": 1}))
        resumed = flush(store, "co", Batch(5, 1, events={"errors.t@0.5": [t("u1")]}, share=0.5))
        assert resumed.visits == ((0, {}), (1, {"errors.t@0.5#0": 1}))  # a new epoch

    def test_an_empty_batch_reads_the_totals(self) -> None:
        """Flushing nothing still returns what the other processes added, and writes nothing."""
        store = MemoryStore()
        events, units = {"slow.c@0.5": [t("a"), t("b")]}, {"c@0.5": [t("a"), t("b")]}
        flush(store, "co", Batch(2, 0, events=events, units=units, share=0.5))
        before = store.read_counts("co", "2.0")
        totals = flush(store, "co", Batch(2, 0, share=0.5))
        assert totals.visits[-1][1]["slow.c@0.5#0"] == 2
        assert totals.units_control == 2
        assert store.read_counts("co", "2.0") == before


def entries(counters: dict[str, int], kind: str) -> list[tuple[float, int, int, int]]:
    """``(share, block, t, c)`` of a visit's counters of ``kind``, parsed apart from the library."""
    cells: dict[tuple[float, int], list[int]] = {}
    for name, n in counters.items():
        head, _, rest = name.partition("@")
        share, _, block = rest.partition("#")
        if head in (f"{kind}.t", f"{kind}.c") and block:
            cell = cells.setdefault((float(share), int(block)), [0, 0])
            cell[head.endswith(".c")] += n
    return [(share, block, tc[0], tc[1]) for (share, block), tc in cells.items()]


class TestSetCounts:
    @given(
        share=st.floats(0.01, 0.99),
        treatment=st.integers(1, 500),
        control=st.integers(1, 500),
    )
    def test_matches_adding_the_same_events(
        self, share: float, treatment: int, control: int
    ) -> None:
        """Counts of one block give the e-value of the same events added in one batch."""
        added, pooled = MixtureTest(), MixtureTest()
        for test in (added, pooled):
            test.set_share(share)
        added.add(treatment, control)
        pooled.set_counts([[(share, 0, treatment, control)]])
        assert math.isclose(pooled.log_e(), added.log_e(), rel_tol=1e-12, abs_tol=1e-12)
        assert (pooled.events_treatment, pooled.events_control) == (treatment, control)

    def test_counts_replace_not_add(self) -> None:
        """Setting the same cumulative counts again (every flush reads them all) changes
        nothing; newer counts replace the older ones."""
        test, once = MixtureTest(), MixtureTest()
        for each in (test, once):
            each.set_share(0.5)
        visits = [[(0.5, 0, 10, 4)]]
        test.set_counts(visits)
        test.set_counts(visits)
        once.set_counts(visits)
        assert test.log_e() == once.log_e()
        assert (test.events_treatment, test.events_control) == (10, 4)
        test.set_counts([[(0.5, 0, 10, 4), (0.5, block_of(14), 1, 0)]])
        assert (test.events_treatment, test.events_control) == (11, 4)

    def test_each_event_counts_at_its_own_share(self) -> None:
        """Counts at two shares in one visit (a percent edit) score as the same events added
        at their shares, in their blocks; the share in force does not re-score them."""
        test, reference = MixtureTest(), MixtureTest()
        for share, (t_, c) in ((0.05, (4, 1)), (0.25, (4, 1))):
            reference.set_share(share)
            reference.add(t_, c)
        test.set_share(0.25)
        test.set_counts([[(0.05, 0, 4, 1), (0.25, block_of(5), 4, 1)]])
        assert math.isclose(test.log_e(), reference.log_e())
        assert test.events_treatment == 8
        assert test.share == 0.25
        rescored = MixtureTest()
        rescored.set_share(0.25)
        rescored.set_counts([[(0.25, 0, 4, 1), (0.25, block_of(5), 4, 1)]])
        assert not math.isclose(test.log_e(), rescored.log_e())

    def test_inactive_share_ignores_counts(self) -> None:
        """Counts at a share of 0 or 1 carry no evidence."""
        test = MixtureTest()
        test.set_counts([[(0.0, 0, 5, 5), (1.0, 0, 5, 0)]])
        assert test.events_treatment == 0
        assert test.log_e() == 0.0


class TestPooledHealth:
    def pooled(self, share: float = 0.25) -> tuple[Health, Gate]:
        outbox = Outbox()
        outbox.visit(1, 0)
        gate = Gate(share, outbox=outbox, min_events=3)
        return gate.health, gate

    def test_events_are_queued_not_counted(self) -> None:
        """With an outbox, a first error goes to the queue at the share in force; the local
        test does not move."""
        health, gate = self.pooled()
        arms = gate.outcomes.arms(0)
        due = gate.record(arms.treatment, True, None, key="u1")
        gate.record(arms.treatment, True, None, key="u1")  # not a first error
        assert due is False
        assert health.errors.events_treatment == 0
        assert health.outbox is not None
        assert health.outbox.batch.events == {"errors.t@0.25": [token("u1")]}
        assert health.outbox.batch.units == {"t@0.25": [token("u1")]}

    def test_absorb_sets_the_tests_and_units(self) -> None:
        """The fleet's totals of the visit in force become the tests' counts."""
        health, gate = self.pooled()
        arms = gate.outcomes.arms(0)
        events = {"errors.t@0.25#0": 15, "errors.c@0.25#0": 1, "slow.t@0.25#0": 2,
                  "units.t@0.25": 40, "units.c@0.25": 38}  # fmt: skip
        assert health.absorb(Totals(1, 0, ((0, events),), 40, 38)) == ()
        assert (health.errors.events_treatment, health.errors.events_control) == (15, 1)
        assert health.slow.events_treatment == 2
        assert arms.treatment.units_seen() == 40
        assert arms.control.units_seen() == 38
        assert health.verdict().action is Action.ROLLBACK  # 15 of 16 events at a share of 25 %

    def test_a_share_a_float_cannot_tell_from_one_is_ignored(self) -> None:
        """A counter at a share so close to 1 that the alternatives round to it (written behind
        stagedroll's back) is left out: the flush neither raises nor loses the rest."""
        health, _ = self.pooled(0.25)
        events = {"errors.t@0.9999999999999999#0": 1, "errors.c@0.9999999999999999#0": 1,
                  "errors.t@0.25#0": 15, "errors.c@0.25#0": 1}  # fmt: skip
        assert health.absorb(Totals(1, 0, ((0, events),), 0, 0)) == ()
        assert (health.errors.events_treatment, health.errors.events_control) == (15, 1)
        assert health.verdict().action is Action.ROLLBACK

    def test_junk_counters_do_not_crowd_out_the_evidence(self) -> None:
        """However many counters of other names a visit holds, the gate's own are all read."""
        health, _ = self.pooled(0.25)
        events = {f"a{i:06d}": 1 for i in range(20_000)}
        events.update({"errors.t@0.25#0": 15, "errors.c@0.25#0": 1, "errors.t@0.25#99999": 1})
        health.absorb(Totals(1, 0, ((0, events),), 0, 0))
        assert (health.errors.events_treatment, health.errors.events_control) == (16, 1)
        assert health.verdict().action is Action.ROLLBACK

    def test_shares_past_the_bound_keep_those_with_the_most_events(self) -> None:
        """A visit with counters at more than ``MAX_SHARES`` shares is judged on the shares
        with the most events (a bound on a flush's work)."""
        health, _ = self.pooled(0.25)
        events = {f"errors.c@{(i + 1) / 1000!r}#0": 1 for i in range(MAX_SHARES + 10)}
        events["errors.t@0.25#0"] = 15
        health.absorb(Totals(1, 0, ((0, events),), 0, 0))
        assert health.errors.events_treatment == 15
        assert health.errors.events_control == MAX_SHARES - 1

    def test_absorb_matches_the_counts_each_at_its_share_and_block(self) -> None:
        """The tests are the e-process of the counters parsed apart: every share and block of
        every visit, whatever the share in force."""
        health, _ = self.pooled(0.05)
        health.outbox.visit(1, 1)  # type: ignore[union-attr]
        visits = (
            (0, {"errors.t@0.25#0": 3, "errors.c@0.25#0": 9, "slow.c@0.25#0": 4}),
            (1, {"errors.t@0.2#0": 6, "errors.c@0.2#0": 30, "errors.t@0.2#25": 2,
                 "errors.t@0.05#50": 4, "errors.c@0.05#50": 20, "units.t@0.05": 7}),
        )  # fmt: skip
        health.absorb(Totals(1, 1, visits, 0, 0))
        for test, kind in ((health.errors, "errors"), (health.slow, "slow")):
            expected = MixtureTest()
            expected.set_share(0.05)
            expected.set_counts([entries(counters, kind) for _, counters in visits])
            assert test.log_e() == pytest.approx(expected.log_e(), rel=1e-12, abs=1e-12)
            assert test.share == 0.05
        assert health.errors.events_treatment == 3 + 6 + 2 + 4
        assert health.errors.ratio_estimate() == pytest.approx(4 / 20 * 0.95 / 0.05)
        rescored = MixtureTest()
        rescored.set_share(0.05)
        rescored.set_counts([[(0.25, 0, 3, 9)], [(0.05, 0, 6, 30), (0.05, 25, 2, 0),
                                                  (0.05, 50, 4, 20)]])  # fmt: skip
        assert health.errors.e_value < 1.5  # not re-scored at 5 %, which gives:
        assert rescored.e_value > 100

    def test_absorb_sets_the_block_of_the_next_flush(self) -> None:
        """The next flush's events go to the block after the visit's known events, per kind."""
        health, _ = self.pooled()
        events = {"errors.t@0.25#0": 3, "errors.c@0.25#0": 2, "slow.c@0.25#0": 100,
                  "units.t@0.25": 500}  # fmt: skip
        health.absorb(Totals(1, 0, ((0, events),), 0, 0))
        assert health.outbox is not None
        assert health.outbox.blocks == {"errors": block_of(5), "slow": block_of(100)}
        assert health.outbox.take(0.25).blocks == {"errors": block_of(5), "slow": block_of(100)}

    def test_names_of_another_form_are_left_out(self) -> None:
        """Counters without a share and a block (an earlier version's), or with a share or
        block that does not parse, or out of range, carry no evidence."""
        health, _ = self.pooled()
        events = {"errors.t": 50, "errors.t@x#0": 50, "errors.t@0.25#-1": 50,
                  "errors.t@1.0#0": 50, "errors.t@0.25": 50, "errors.x@0.25#0": 50,
                  "errors.t@0.25#0x": 50}  # fmt: skip
        health.absorb(Totals(1, 0, ((0, events),), 0, 0))
        assert health.errors.events_treatment == 0
        assert health.errors.log_e() == 0.0

    def test_absorb_ignores_another_visit(self) -> None:
        """Totals of a stage visit that ended meanwhile change nothing."""
        health, _ = self.pooled()
        health.absorb(Totals(1, 1, ((0, {}), (1, {"errors.t@0.5#0": 9})), 0, 0))
        health.absorb(Totals(0, 0, ((0, {"errors.t@0.25#0": 9}),), 0, 0))
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
        visits = ((0, {"errors.t@0.25#0": 4, "errors.c@0.25#0": 1}),
                  (1, {"errors.t@0.5#0": 6, "errors.c@0.5#0": 2}))  # fmt: skip
        health.absorb(Totals(1, 1, visits, 0, 0))
        reference = MixtureTest()
        for share, (t_, c) in ((0.25, (4, 1)), (0.5, (6, 2))):
            reference.visit()
            reference.set_share(share)
            reference.add(t_, c)
        assert math.isclose(health.errors.log_e(), reference.log_e())
        assert health.errors.events_treatment == 10
        assert health.errors.share == 0.5


def others(health: Health) -> tuple[float, ...]:
    """``health.others`` (read through a call: it changes under the checker's feet)."""
    return health.others


def growing(share: str, n: int, **more: int) -> Totals:
    """Totals of visit ``(1, 0)`` whose counters at ``share`` (as a name spells it) hold ``n``."""
    return Totals(1, 0, ((0, {f"units.t@{share}": n, **more}),), 0, 0)


class TestDisagreement:
    def test_growth_at_another_share_is_a_disagreement(self) -> None:
        """A share other than one's own whose counters grow between two flushes is reported
        once, when it begins, and held in ``others``."""
        health, _ = TestPooledHealth().pooled(0.05)
        health.absorb(growing("0.05", 1))
        assert others(health) == ()
        assert health.absorb(growing("0.05", 2, **{"units.t@0.2": 10})) == (0.2,)
        assert others(health) == (0.2,)
        assert health.absorb(growing("0.05", 2, **{"units.t@0.2": 15})) == ()  # not new
        assert others(health) == (0.2,)

    def test_other_shares_at_the_first_flush_are_taken_to_be_in_use(self) -> None:
        """With nothing to compare with, counters at another share hold the gate, unlogged,
        until they stay still for ``AGREE_AFTER`` flushes."""
        health, _ = TestPooledHealth().pooled(0.05)
        assert health.absorb(growing("0.2", 10)) == ()  # not reported: not seen to grow
        assert others(health) == (0.2,)
        for _ in range(AGREE_AFTER - 1):
            assert health.absorb(growing("0.2", 10)) == ()
            assert others(health) == (0.2,)
        health.absorb(growing("0.2", 10))
        assert others(health) == ()

    def test_growth_after_a_first_look_is_reported(self) -> None:
        """A share held at the first flush that then grows is reported, once."""
        health, _ = TestPooledHealth().pooled(0.05)
        health.absorb(growing("0.2", 10))
        assert health.absorb(growing("0.2", 11)) == (0.2,)
        assert health.absorb(growing("0.2", 12)) == ()

    def test_growth_at_ones_own_share_is_no_disagreement(self) -> None:
        """Counters at the share this process tests at grow freely."""
        health, _ = TestPooledHealth().pooled(0.05)
        for n in (1, 5, 50):
            assert health.absorb(growing("0.05", n, **{"errors.t@0.05#0": n})) == ()
        assert others(health) == ()

    def test_what_the_flush_itself_added_is_no_one_elses(self) -> None:
        """Growth at another share that this flush added itself (events queued before a
        reload changed the share) is not another process's."""
        health, _ = TestPooledHealth().pooled(0.05)
        health.absorb(growing("0.05", 1))
        totals = growing("0.05", 2, **{"errors.t@0.2#0": 3})
        own = Totals(totals.epoch, totals.stage, totals.visits, 0, 0, own={"0.2": 3})
        assert health.absorb(own) == ()
        assert others(health) == ()
        assert health.absorb(growing("0.05", 2, **{"errors.t@0.2#0": 4})) == (0.2,)

    def test_counters_that_stay_put_are_no_disagreement(self) -> None:
        """Counters left at another share by an earlier policy (no longer growing) are fine
        once they have been seen to stay still."""
        health, _ = TestPooledHealth().pooled(0.05)
        for _ in range(AGREE_AFTER + 1):
            assert health.absorb(growing("0.2", 300, **{"errors.t@0.2#0": 7})) == ()
        assert others(health) == ()

    def test_names_that_are_no_share_are_ignored(self) -> None:
        """Counters whose share part is not a share (0, 1, text) are nobody's."""
        health, _ = TestPooledHealth().pooled(0.05)
        junk = {"units.t@abc": 5, "units.t@1.0": 5, "units.t@0": 5, "units.t@nan": 5}
        health.absorb(growing("0.05", 1, **junk))
        bigger = dict.fromkeys(junk, 50)
        assert health.absorb(growing("0.05", 2, **bigger)) == ()
        assert others(health) == ()

    def test_agreement_after_quiet_flushes(self) -> None:
        """``AGREE_AFTER`` flushes without growth at another share clear the disagreement."""
        health, _ = TestPooledHealth().pooled(0.05)
        health.absorb(growing("0.2", 10))
        health.absorb(growing("0.2", 11))
        for _ in range(AGREE_AFTER - 1):
            health.absorb(growing("0.2", 11))
            assert others(health) == (0.2,)
        health.absorb(growing("0.2", 11))
        assert others(health) == ()
        assert health.absorb(growing("0.2", 12)) == (0.2,)  # a new disagreement, reported

    def test_no_verdict_while_processes_disagree(self) -> None:
        """Evidence past the rollback bar takes no action while others count at another
        share, and does once they agree again."""
        health, _ = TestPooledHealth().pooled(0.05)
        strong = {"errors.t@0.05#0": 40}
        health.absorb(growing("0.2", 10, **strong))
        health.absorb(growing("0.2", 11, **strong))
        assert others(health) == (0.2,)
        assert health.errors.e_value > 1e6
        assert health.verdict().action is None
        for _ in range(AGREE_AFTER):
            health.absorb(growing("0.2", 11, **strong))
        assert health.verdict() == Verdict(Action.ROLLBACK, "errors")

    def test_a_flush_in_flight_during_a_reload_counts_for_the_new_gate(self) -> None:
        """A flush that ends on the gate a reload just replaced updates the comparison the new
        gate goes on with: its own events at the old share are nobody else's."""
        old, _ = TestPooledHealth().pooled(0.2)
        old.absorb(growing("0.2", 10))
        new = Health(HealthPolicy(min_events=3))
        new.outbox = Outbox()
        new.outbox.visit(1, 0)
        new.inherit(old)  # the reload: a percent edit from 20 % to 5 %
        new.set_share(0.05)
        landed = growing("0.2", 12)  # the flush in flight ends on the old gate
        old.absorb(Totals(landed.epoch, landed.stage, landed.visits, 0, 0, own={"0.2": 2}))
        assert new.absorb(growing("0.2", 12)) == ()
        assert others(new) == ()

    def test_a_new_visit_or_epoch_forgets_the_disagreement(self) -> None:
        """A stage change and an operator's resume start the comparison afresh."""
        for start_over in (Health.visit, Health.reset):
            health, _ = TestPooledHealth().pooled(0.05)
            health.absorb(growing("0.2", 10))
            health.absorb(growing("0.2", 11))
            assert others(health) == (0.2,)
            start_over(health)
            assert others(health) == ()
            assert health.absorb(growing("0.2", 12)) == ()  # seen for the first time again


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
            outbox.event("errors", True, unit, 0.5)
            outbox.unit(True, unit, 0.5)
        batch = outbox.take(0.5)
        queued = batch.events["errors.t@0.5"] + batch.units["t@0.5"]
        assert all(isinstance(t, bytes) and len(t) == 16 for t in queued)
        assert b"alice" not in b"".join(queued)

    @given(st.lists(st.text(), min_size=1, max_size=20))
    def test_the_store_receives_keyed_digests(self, units: list[str]) -> None:
        """The store receives digests keyed by the rollout and its history: the same in
        every process, another in another history or rollout, never the unit."""
        received: dict[tuple[str, str], list[list[str]]] = {}
        for rollout, history in (("co", "h1"), ("co", "h1"), ("co", "h2"), ("other", "h1")):
            store = RecordingStore()
            batch = Batch(1, 0, events={"errors.t@0.5": [token(u) for u in units]}, share=0.5)
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
        totals = flush(store, "co", Batch(1, 0, events={"errors.t@0.5": [t(u) for u in units]},
                                          units={"t@0.5": [t(u) for u in units]}, share=0.5),
                       "h")  # fmt: skip
        assert totals.refused == 2 + 2
        assert totals.visits[-1][1]["errors.t@0.5#0"] == 38
        assert totals.units_treatment == 38

    def test_the_splitting_is_bounded(self) -> None:
        """A store refusing every call as a data error costs at most SPLIT_CALLS calls more."""
        store = RecordingStore()
        store.broken = ValueError
        units = [t(f"u{i}") for i in range(1000)]
        totals = flush(store, "co", Batch(1, 0, events={"errors.t@0.5": units}, share=0.5))
        assert store.calls <= pool.SPLIT_CALLS + 5  # and the calls that do not split
        assert totals.refused == 1000
        assert totals.visits[-1][1] == {}  # nothing counted: the counters were only read

    def test_running_out_of_calls_drops_both_arms_alike(self) -> None:
        """When the split runs out of calls, the dropped tail (one arm's events) takes the
        other arm's with it: a loss of evidence, never a bias toward a freeze."""
        store = RecordingStore()
        key = rollout_key("co", "h")
        treated = [f"t{i}" for i in range(300)]
        control = [f"c{i}" for i in range(300)]
        store.refused = {digest(key, token(u)) for u in treated[::3] + control[::3]}
        batch = Batch(1, 0, events={"errors.t@0.5": [t(u) for u in treated],
                                    "errors.c@0.5": [t(u) for u in control]},
                      share=0.5)  # fmt: skip
        totals = flush(store, "co", batch, "h")
        accepted = set(store.received)
        assert {digest(key, token(u)) for u in treated + control} & accepted  # some were new
        assert 0 < totals.refused < 600
        assert totals.visits[-1][1] == {}  # yet neither arm counted

    def test_a_store_that_is_down_is_called_once(self) -> None:
        """A failure that is not a data error fails the flush at once, nothing split."""
        store = RecordingStore()
        store.broken = ConnectionError
        with pytest.raises(ConnectionError):
            flush(store, "co", Batch(1, 0, events={"errors.t@0.5": [t(f"u{i}") for i in range(99)]},
                                     share=0.5))  # fmt: skip
        assert store.calls == 1
