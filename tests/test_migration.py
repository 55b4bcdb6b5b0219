"""Tests of expand/contract migrations (stagedroll.patterns.migration, Rollouts.migration)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from stagedroll import PolicyError, Rollouts, Status, UnknownRolloutError
from stagedroll.patterns import Migration, Phase, migration
from stagedroll.testing import FakeClock, RecordingSink
from test_rollouts import FailingStore

PHASES = ["off", "dual_write", "shadow_read", "live", "rampdown", "complete"]


def policy(health: dict[str, Any] | None = None) -> dict[str, Any]:
    stages = [
        {"name": n, "percent": p} for n, p in zip(PHASES, [0, 20, 40, 60, 80, 100], strict=True)
    ]
    return {
        "rollouts": {
            "orders": {
                "pattern": "migration",
                "stages": stages,
                "health": health or {"enabled": False},
            },
            "plain": {"stages": [{"name": "all", "percent": 100}]},
        }
    }


class Table:
    """A store of one side: a dict, the log of its calls, and switches to make it fail."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.rows: dict[str, object] = {}
        self.log = log
        self.fail_reads = False
        self.fail_writes = False
        self.flaky: random.Random | None = None  # reads and writes fail now and then
        self.fail_rate = 0.05

    def failing(self) -> bool:
        return self.flaky is not None and self.flaky.random() < self.fail_rate

    def read(self, key: str) -> object:
        self.log.append(f"{self.name}.read")
        if self.fail_reads or self.failing():
            raise ConnectionError(f"{self.name} read failed")
        return self.rows.get(key)

    def write(self, key: str, value: object) -> str:
        self.log.append(f"{self.name}.write")
        if self.fail_writes or self.failing():
            raise ConnectionError(f"{self.name} write failed")
        self.rows[key] = value
        return f"{self.name}:{key}"


class Stores:
    """The old and the new table, and a migration over them (sync or async)."""

    def __init__(self, rollouts: Rollouts, *, asynchronous: bool = False, **options: Any) -> None:
        self.log: list[str] = []
        self.old = Table("old", self.log)
        self.new = Table("new", self.log)
        self.asynchronous = asynchronous
        make = _async if asynchronous else (lambda fn: fn)
        self.migration: Migration[Any, Any, Any, Any] = rollouts.migration(
            "orders",
            old_read=make(self.old.read),
            new_read=make(self.new.read),
            old_write=make(self.old.write),
            new_write=make(self.new.write),
            **options,
        )

    def read(self, key: str) -> object:
        self.log.clear()
        result = self.migration.read(key, key)
        return asyncio.run(result) if self.asynchronous else result

    def write(self, key: str, value: object) -> object:
        self.log.clear()
        result = self.migration.write(key, key, value)
        return asyncio.run(result) if self.asynchronous else result


def _async(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0)
        return fn(*args, **kwargs)

    return wrapper


def phase_of(stores: Stores) -> Phase:
    """The migration's phase now (a call: mypy narrows no property across transitions)."""
    return stores.migration.phase


def at(rollouts: Rollouts, phase: str) -> None:
    """Advance rollout ``orders`` to ``phase``."""
    while rollouts.status("orders").stage_name != phase:
        rollouts.advance("orders", actor="alice")


@pytest.fixture(name="rollouts")
def _rollouts() -> Rollouts:
    return Rollouts(policy(), clock=FakeClock(1_700_000_000))


@pytest.fixture(name="asynchronous", params=[False, True], ids=["sync", "async"])
def _asynchronous(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


WRITES = {
    "off": ["old.write"],
    "dual_write": ["old.write", "new.write"],
    "shadow_read": ["old.write", "new.write"],
    "live": ["new.write", "old.write"],
    "rampdown": ["new.write", "old.write"],
    "complete": ["new.write"],
}
READS = {
    "off": ({"old.read"}, "old"),
    "dual_write": ({"old.read"}, "old"),
    "shadow_read": ({"old.read", "new.read"}, "old"),
    "live": ({"old.read", "new.read"}, "new"),
    "rampdown": ({"new.read"}, "new"),
    "complete": ({"new.read"}, "new"),
}


class TestPhases:
    @pytest.mark.parametrize("phase", PHASES)
    def test_each_phase_writes_and_reads_its_stores(
        self, rollouts: Rollouts, asynchronous: bool, phase: str
    ) -> None:
        """Writes go to the phase's stores, authoritative first; reads come from its side."""
        stores = Stores(rollouts, asynchronous=asynchronous)
        at(rollouts, phase)
        assert stores.migration.phase is Phase(phase)
        answer = stores.write("k", 1)
        assert stores.log == WRITES[phase]
        assert answer == f"{WRITES[phase][0].split('.')[0]}:k"
        stores.old.rows["k"], stores.new.rows["k"] = "from old", "from new"
        read = stores.read("k")
        assert set(stores.log) == READS[phase][0]
        assert read == f"from {READS[phase][1]}"

    def test_a_rollback_mid_traffic_moves_every_call_back_one_phase(
        self, rollouts: Rollouts, asynchronous: bool
    ) -> None:
        """From live to shadow_read between two calls: the old store answers again, whole."""
        stores = Stores(rollouts, asynchronous=asynchronous)
        at(rollouts, "live")
        for i in range(50):
            stores.write(f"k{i}", i)
        assert stores.old.rows == stores.new.rows  # both written in live
        rollouts.rollback("orders", actor="bob")
        assert phase_of(stores) is Phase.SHADOW_READ
        stores.write("k0", "after")
        assert stores.log == ["old.write", "new.write"]  # the old store first again
        stores.new.rows["k1"] = "only in new"
        assert stores.read("k1") == 1  # the old store answers; the difference is sampled
        assert stores.migration.mismatches[-1].unit == "k1"

    def test_every_unit_follows_the_phase(self, rollouts: Rollouts) -> None:
        """The percents do not split units: at dual_write every write reaches both stores."""
        stores = Stores(rollouts)
        at(rollouts, "dual_write")  # 20 %
        for i in range(200):
            stores.write(f"k{i}", i)
        assert stores.old.rows == stores.new.rows
        assert len(stores.new.rows) == 200

    def test_compared_reads_count_matches_and_mismatches(self, rollouts: Rollouts) -> None:
        """In shadow_read and live each read is compared; mismatches are sampled."""
        stores = Stores(rollouts, redact=lambda value: "***")
        at(rollouts, "shadow_read")
        stores.old.rows.update(a=1, b=2)
        stores.new.rows.update(a=1, b=3)
        assert stores.read("a") == 1
        assert stores.read("b") == 2
        stats = stores.migration.stats
        assert (stats.compared, stats.matched, stats.mismatched) == (2, 1, 1)
        (sample,) = stores.migration.mismatches
        assert (sample.unit, sample.old, sample.new, sample.error) == ("b", "***", "***", None)
        assert sample.at == rollouts.clock()
        at(rollouts, "live")
        assert stores.read("b") == 3  # the new store answers now; still a mismatch
        assert stores.migration.stats.mismatched == 2

    def test_a_missing_row_is_not_an_error(self, rollouts: Rollouts) -> None:
        """A new side that returned ``None`` shows ``'None'``; one that raised shows ``None``."""
        stores = Stores(rollouts)
        at(rollouts, "shadow_read")
        stores.old.rows["k"] = 1
        stores.read("k")
        stores.new.fail_reads = True
        stores.read("k")
        missing, failed = stores.migration.mismatches
        assert (missing.old, missing.new, missing.error) == ("1", "None", None)
        assert (failed.old, failed.new, failed.error) == (
            "1",
            None,
            "ConnectionError: new read failed",
        )

    def test_environments_and_statuses(self) -> None:
        """Killed or off: ``off``; complete or fixed at 100 %: ``complete``."""
        doc = policy()
        doc["environments"] = ["dev", "prod", "test"]
        doc["rollouts"]["orders"]["environments"] = {"dev": 100, "test": 50, "prod": "off"}
        assert Stores(Rollouts(doc, environment="dev")).migration.phase is Phase.COMPLETE
        assert Stores(Rollouts(doc, environment="test")).migration.phase is Phase.OFF
        assert Stores(Rollouts(doc, environment="prod")).migration.phase is Phase.OFF
        rollouts = Rollouts(policy())
        stores = Stores(rollouts)
        at(rollouts, "rampdown")
        rollouts.kill("orders", actor="alice")  # the old store is still written: it can serve
        assert phase_of(stores) is Phase.OFF
        assert repr(stores.migration) == "<Migration 'orders' phase='off'>"
        rollouts.unfreeze("orders", actor="alice")
        rollouts.complete("orders", actor="alice")
        assert phase_of(stores) is Phase.COMPLETE

    def test_a_kill_where_the_phase_is_complete_is_refused_everywhere(self) -> None:
        """An environment fixed at 100 % serves ``complete``: a kill there is refused too."""
        doc = policy()
        doc["environments"] = ["dev", "prod"]
        doc["rollouts"]["orders"]["environments"] = {"dev": 100, "prod": "stages"}
        rollouts = Rollouts(doc, environment="dev")
        stores = Stores(rollouts)
        assert phase_of(stores) is Phase.COMPLETE
        rollouts.kill("orders", actor="alice")
        assert phase_of(stores) is Phase.COMPLETE
        assert rollouts.failures.count("migration.kill_refused") == 1

    def test_a_kill_after_the_old_store_was_left_holds_complete(self, rollouts: Rollouts) -> None:
        """At the complete stage the old store is stale: a kill keeps reading the new one."""
        stores = Stores(rollouts)
        at(rollouts, "complete")
        stores.write("k", "written at complete")
        rollouts.kill("orders", actor="alice")
        assert phase_of(stores) is Phase.COMPLETE
        assert stores.read("k") == "written at complete"
        assert rollouts.failures.count("migration.kill_refused") == 1

    def test_a_rollback_before_the_first_stage_is_off(self, rollouts: Rollouts) -> None:
        """Rolled back from ``off``: still ``off`` (not the ``default`` of an unknown state)."""
        stores = Stores(rollouts, default="live")
        rollouts.rollback("orders", actor="alice")
        assert rollouts.status("orders").stage == -1
        assert phase_of(stores) is Phase.OFF

    def test_the_default_phase_while_the_state_is_unknown(self) -> None:
        """Store down at start: the migration serves ``default`` until the store answers."""
        store = FailingStore()
        Rollouts(policy(), store=store).advance("orders", actor="alice")
        store.fail_load = True
        rollouts = Rollouts(policy(), store=store)
        stores = Stores(rollouts, default="dual_write")
        assert phase_of(stores) is Phase.DUAL_WRITE
        stores.write("k", 1)
        assert stores.log == ["old.write", "new.write"]
        store.fail_load = False
        rollouts.tick()
        assert phase_of(stores) is Phase.DUAL_WRITE  # the stored stage, now
        rollouts.advance("orders", actor="alice")
        assert phase_of(stores) is Phase.SHADOW_READ

    def test_a_reload_that_renames_the_stages_is_refused(self, tmp_path: Path) -> None:
        """A file that still declares the migration must name the six phases: not applied."""
        path = tmp_path / "rollouts.toml"
        path.write_text(migration_toml(PHASES))
        rollouts = Rollouts.from_file(path, reload_interval=0.01)
        stores = Stores(rollouts)
        at(rollouts, "live")
        reload(rollouts, path, migration_toml([*PHASES[:3], "live2", *PHASES[4:]]))
        status = rollouts.status("orders")
        assert status.pending_policy is not None
        assert "six phases" in status.pending_policy
        assert phase_of(stores) is Phase.LIVE

    def test_a_reload_that_drops_the_migration_is_refused(self, tmp_path: Path) -> None:
        """A running process keeps its rollouts' patterns: their calls are recorded for it."""
        path = tmp_path / "rollouts.toml"
        path.write_text(migration_toml(PHASES))
        rollouts = Rollouts.from_file(path, reload_interval=0.01)
        stores = Stores(rollouts)
        at(rollouts, "live")
        reload(rollouts, path, migration_toml(PHASES, pattern=None))
        status = rollouts.status("orders")
        assert status.pending_policy is not None
        assert "rollouts.orders.pattern: cannot change" in status.pending_policy
        assert status.health.share == 0.5
        assert phase_of(stores) is Phase.LIVE


def migration_toml(names: list[str], pattern: str | None = "migration") -> str:
    stages = ", ".join(f'{{ name = "{n}", percent = {20 * i} }}' for i, n in enumerate(names))
    declared = f'pattern = "{pattern}"\n' if pattern else ""
    return f"[rollouts.orders]\n{declared}stages = [{stages}]\n"


def reload(rollouts: Rollouts, path: Path, text: str) -> None:
    """Write ``text`` to the policy file and let ``rollouts`` read it."""
    path.write_text(text)
    later = time.time() + 5
    os.utime(path, (later, later))
    time.sleep(0.02)  # the reload interval
    rollouts.tick()


class TestFailures:
    @pytest.mark.parametrize("phase", ["live", "rampdown", "complete"])
    def test_the_new_stores_read_error_reaches_the_caller(
        self, rollouts: Rollouts, asynchronous: bool, phase: str
    ) -> None:
        """Once the new store is authoritative, no fallback: the old one may be stale."""
        stores = Stores(rollouts, asynchronous=asynchronous)
        at(rollouts, phase)
        stores.old.rows["k"] = "maybe stale"
        stores.new.fail_reads = True
        with pytest.raises(ConnectionError, match="new read failed"):
            stores.read("k")
        if phase != "complete":
            assert stores.migration.stats.new_errors == 1
            assert stores.migration.mismatches[0].error == "ConnectionError: new read failed"

    def test_a_failing_old_write_in_live_is_sampled(
        self, rollouts: Rollouts, asynchronous: bool
    ) -> None:
        """The old store missing a write the caller did not see is kept, side "old"."""
        stores = Stores(rollouts, asynchronous=asynchronous)
        at(rollouts, "live")
        stores.old.fail_writes = True
        assert stores.write("k", 2) == "new:k"
        (sample,) = stores.migration.mismatches
        assert (sample.unit, sample.side, sample.error) == (
            "k",
            "old",
            "ConnectionError: old write failed",
        )
        assert stores.migration.stats.old_errors == 1

    def test_shadow_read_raises_the_old_stores_exception(
        self, rollouts: Rollouts, asynchronous: bool
    ) -> None:
        """The old store is authoritative: its exception reaches the caller, type kept."""
        stores = Stores(rollouts, asynchronous=asynchronous)
        at(rollouts, "shadow_read")
        stores.old.fail_reads = True
        with pytest.raises(ConnectionError, match="old read failed") as raised:
            stores.read("k")
        assert raised.traceback[-1].name == "read"
        assert stores.migration.stats.old_errors == 1

    @pytest.mark.parametrize(("phase", "authoritative"), [("dual_write", "old"), ("live", "new")])
    def test_the_authoritative_write_raises_and_the_other_is_not_written(
        self, rollouts: Rollouts, asynchronous: bool, phase: str, authoritative: str
    ) -> None:
        """A failed authoritative write reaches the caller; the other store is left alone."""
        stores = Stores(rollouts, asynchronous=asynchronous)
        at(rollouts, phase)
        table = stores.old if authoritative == "old" else stores.new
        table.fail_writes = True
        with pytest.raises(ConnectionError, match=f"{authoritative} write failed"):
            stores.write("k", 1)
        assert stores.log == [f"{authoritative}.write"]
        assert stores.old.rows == stores.new.rows == {}

    @pytest.mark.parametrize(("phase", "other"), [("shadow_read", "new"), ("rampdown", "old")])
    def test_the_other_write_never_raises(
        self, rollouts: Rollouts, asynchronous: bool, phase: str, other: str
    ) -> None:
        """The non-authoritative store's failure is counted and sampled, not raised."""
        stores = Stores(rollouts, asynchronous=asynchronous)
        at(rollouts, phase)
        (stores.new if other == "new" else stores.old).fail_writes = True
        with RecordingSink(rollouts) as sink:
            assert stores.write("k", 1) is not None
        stats = stores.migration.stats
        assert (stats.new_errors, stats.old_errors) == ((1, 0) if other == "new" else (0, 1))
        assert [m.side for m in stores.migration.mismatches] == [other]
        assert sink.outcomes == []  # writes are not shown to the health test


class TestAsyncWrites:
    def test_a_cancelled_caller_does_not_stop_the_second_write(self, rollouts: Rollouts) -> None:
        """The authoritative store has the write: the other one gets it, failures counted."""
        at(rollouts, "live")
        old: dict[str, int] = {}
        new: dict[str, int] = {}
        started = asyncio.Event()

        async def new_write(key: str, value: int) -> str:
            new[key] = value
            return "new"

        async def old_write(key: str, value: int) -> str:
            started.set()
            await asyncio.sleep(0.01)
            old[key] = value
            if value == 2:
                raise ConnectionError("old write failed late")
            return "old"

        async def read(key: str) -> int | None:
            return None

        orders = rollouts.migration("orders", old_read=read, new_read=read,
                                    old_write=old_write, new_write=new_write)  # fmt: skip

        async def main() -> None:
            for value in (1, 2):
                started.clear()
                call = asyncio.ensure_future(orders.write("k", "k", value))
                await started.wait()
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
                while orders._writes:
                    await asyncio.sleep(0.01)

        asyncio.run(main())
        assert old == new == {"k": 2}
        assert orders.stats.old_errors == 1  # the late failure is counted, though nobody waits
        assert orders.mismatches[0].side == "old"

    def test_a_store_that_cancels_itself_is_that_stores_failure(self, rollouts: Rollouts) -> None:
        """A driver raising CancelledError on the other store does not cancel the caller."""
        at(rollouts, "shadow_read")

        async def old_read(key: str) -> str:
            return "old"

        async def new_read(key: str) -> str:
            raise asyncio.CancelledError("driver reset")

        async def old_write(key: str, value: int) -> str:
            return "old"

        async def new_write(key: str, value: int) -> str:
            raise asyncio.CancelledError("driver reset")

        orders = rollouts.migration("orders", old_read=old_read, new_read=new_read,
                                    old_write=old_write, new_write=new_write)  # fmt: skip

        async def main() -> tuple[str, str]:
            return await orders.read("k", "k"), await orders.write("k", "k", 1)

        assert asyncio.run(main()) == ("old", "old")
        assert orders.stats.new_errors == 2

    def test_a_second_write_cut_short_by_the_loop_is_counted(self, rollouts: Rollouts) -> None:
        """The loop closes before the shielded write ends: it is an old-store failure."""
        at(rollouts, "live")

        async def new_write(key: str, value: int) -> str:
            return "new"

        async def old_write(key: str, value: int) -> str:
            await asyncio.sleep(30)
            return "old"

        async def read(key: str) -> None:
            return None

        orders = rollouts.migration("orders", old_read=read, new_read=read,
                                    old_write=old_write, new_write=new_write)  # fmt: skip

        async def main() -> None:
            call = asyncio.ensure_future(orders.write("k", "k", 1))
            await asyncio.sleep(0.01)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call

        asyncio.run(main())  # cancels the write still under way
        assert orders.stats.old_errors == 1
        assert orders.mismatches[0].side == "old"


class TestHealth:
    def test_both_sides_are_recorded_on_their_arms(self, rollouts: Rollouts) -> None:
        """A compared read: old on control, new on treatment, with the same unit."""
        stores = Stores(rollouts)
        at(rollouts, "shadow_read")
        with RecordingSink(rollouts) as sink:
            stores.write("user-1", 1)
            stores.read("user-1")
        assert [(o.enabled, o.unit) for o in sink.outcomes] == [(False, "user-1"), (True, "user-1")]

    def test_inconsistent_reads_freeze_the_migration(self) -> None:
        """Mismatches in shadow_read are treatment errors: the gate stops the migration."""
        rollouts = Rollouts(policy({"min_events": 3}))
        stores = Stores(rollouts)
        at(rollouts, "dual_write")
        rng = random.Random(1)
        for i in range(300):
            stores.write(f"k{i}", i)
        at(rollouts, "shadow_read")
        for i in range(0, 300, 7):
            stores.new.rows[f"k{i}"] = "corrupt"
        for _ in range(600):
            stores.read(f"k{rng.randrange(300)}")
        status = rollouts.status("orders")
        assert status.status in (Status.FROZEN, Status.ROLLED_BACK)
        assert status.health.share == 0.5
        frozen = rollouts.history("orders")
        assert "errors" in next(t.reason for t in frozen if t.actor == "stagedroll")
        if status.status is Status.ROLLED_BACK:
            assert phase_of(stores) is Phase.DUAL_WRITE  # one phase back

    @pytest.mark.parametrize("seed", range(4))
    @pytest.mark.parametrize("phase", ["shadow_read", "live"])
    def test_equally_flaky_stores_give_equal_events(self, seed: int, phase: str) -> None:
        """Both stores fail 20 % of reads: the arms' events stay even, and nothing freezes.

        A unit's first event counts on each arm (a paired call has both). In live, writes
        fail too: the old store drifts, and its mismatches are not the new store's errors.
        The gate's false-freeze bound is its alpha: 0.001 here, so that these seeds say
        something about the pairing, not about a 5 % chance.
        """
        rollouts = Rollouts(policy({"alpha_freeze": 0.001, "alpha_rollback": 0.0001}))
        stores = Stores(rollouts)
        rng = random.Random(seed)
        for i in range(500):
            stores.old.rows[f"k{i}"] = stores.new.rows[f"k{i}"] = i
        for table in (stores.old, stores.new):
            table.flaky, table.fail_rate = rng, 0.2
        at(rollouts, phase)
        for i in range(3000):
            with contextlib.suppress(ConnectionError):
                if phase == "live" and rng.random() < 0.5:
                    stores.write(f"k{i % 500}", i)
                else:
                    stores.read(f"k{i % 500}")
        status = rollouts.status("orders")
        assert status.status is Status.RUNNING
        health = status.health
        assert health.error_events_treatment > 100
        ratio = health.error_events_treatment / health.error_events_control
        assert 0.8 < ratio < 1.25
        assert health.sample_ratio_ok

    def test_a_consistent_migration_does_not_freeze(self) -> None:
        """Both stores equally flaky, reads consistent: the gate stays quiet."""
        rollouts = Rollouts(policy({"min_events": 3}))
        stores = Stores(rollouts)
        rng = random.Random(3)
        stores.old.flaky = stores.new.flaky = rng
        at(rollouts, "dual_write")
        for i in range(300):
            with contextlib.suppress(ConnectionError):
                stores.write(f"k{i}", i)
        stores.new.rows = dict(stores.old.rows)  # the backfill
        at(rollouts, "shadow_read")
        for _ in range(2000):
            with contextlib.suppress(ConnectionError):
                stores.read(f"k{rng.randrange(300)}")
        status = rollouts.status("orders")
        assert status.status is Status.RUNNING
        assert status.health.error_events_treatment > 10


class TestErrors:
    def test_wrong_arguments_raise_at_once(self, rollouts: Rollouts) -> None:
        """Misuse fails when the migration is made."""
        sync, asynchronous = Table("t", []).read, _async(Table("t", []).read)
        write = Table("t", []).write
        with pytest.raises(UnknownRolloutError):
            rollouts.migration("order", old_read=sync, new_read=sync, old_write=write,
                               new_write=write)  # fmt: skip
        with pytest.raises(ValueError, match='is not a migration: add pattern = "migration"'):
            rollouts.migration("plain", old_read=sync, new_read=sync, old_write=write,
                               new_write=write)  # fmt: skip
        with pytest.raises(TypeError, match="old_read and new_read must both be async"):
            rollouts.migration("orders", old_read=sync, new_read=asynchronous,
                               old_write=write, new_write=write)  # fmt: skip
        with pytest.raises(TypeError, match="old_write and new_write must both be async"):
            rollouts.migration("orders", old_read=sync, new_read=sync, old_write=write,
                               new_write=_async(write))  # fmt: skip
        with pytest.raises(TypeError, match="new_write must be callable"):
            rollouts.migration("orders", old_read=sync, new_read=sync, old_write=write,
                               new_write=None)  # type: ignore[arg-type]  # fmt: skip
        auto = policy({"enabled": True})
        auto["rollouts"]["orders"]["advance"] = "auto"
        with pytest.raises(PolicyError, match="a migration advances by hand"):
            Rollouts(auto)
        renamed = policy()
        renamed["rollouts"]["orders"]["stages"][2]["name"] = "shadow-read"
        with pytest.raises(PolicyError, match=r"rollouts\.orders\.stages: a migration's stages"):
            Rollouts(renamed)
        with pytest.raises(ValueError, match="default must be one of"):
            rollouts.migration("orders", old_read=sync, new_read=sync, old_write=write,
                               new_write=write, default="halfway")  # fmt: skip

    def test_a_migration_rollout_serves_nothing_else(self, rollouts: Rollouts) -> None:
        """Guards and shadows refuse a rollout declared a migration."""
        with pytest.raises(ValueError, match="serves a migration"):
            rollouts.shadow("orders", candidate=lambda user: user, unit=lambda user: user)
        with pytest.raises(ValueError, match="serves a migration"):
            rollouts.guard("orders", fallback=lambda user: user, unit=lambda user: user)

    def test_the_function_form(self, rollouts: Rollouts) -> None:
        """``stagedroll.patterns.migration(rollouts, name, ...)`` is the same thing."""
        table = Table("t", [])
        made = migration(rollouts, "orders", old_read=table.read, new_read=table.read,
                         old_write=table.write, new_write=table.write)  # fmt: skip
        assert isinstance(made, Migration)
        assert made.phase is Phase.OFF
        assert str(Phase.SHADOW_READ) == "shadow_read"
        made.clear()
        assert made.stats.compared == 0
