"""Tests of hot reload (Rollouts.from_file(..., reload_interval=...)) and $STAGEDROLL_KILL."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

from stagedroll import Reason, Rollouts, Status, UnknownRolloutError

INTERVAL = 0.01
UNITS = [f"user-{i}" for i in range(400)]


def policy_text(percent: float, *, extra: str = "", name: str = "checkout") -> str:
    return f"""
[rollouts.{name}]
stages = [{{ name = "canary", percent = {percent} }}]
{extra}
"""


def write(path: Path, text: str) -> None:
    """Write ``text``; make sure the modification time moves (coarse file systems)."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    if path.stat().st_mtime_ns == before:
        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


def after_interval() -> None:
    time.sleep(INTERVAL * 2)


def share(rollouts: Rollouts, name: str = "checkout") -> float:
    return sum(rollouts.decide(name, unit).enabled for unit in UNITS) / len(UNITS)


@pytest.fixture(name="path")
def _path(tmp_path: Path) -> Path:
    path = tmp_path / "rollouts.toml"
    write(path, policy_text(0))
    return path


class TestReload:
    def test_a_valid_change_applies(self, path: Path) -> None:
        """A changed file is read again once the interval has passed, by the next call."""
        rollouts = Rollouts.from_file(path, reload_interval=INTERVAL)
        assert share(rollouts) == 0.0
        write(path, policy_text(100))
        after_interval()
        assert share(rollouts) == 1.0
        assert rollouts.policy.rollouts["checkout"].stages[0].percent == 100

    def test_a_percent_edit_keeps_the_totals(self, path: Path) -> None:
        """A changed rollout counts its stage afresh; ``status().totals`` keeps every call."""
        rollouts = Rollouts.from_file(path, reload_interval=INTERVAL)
        for unit in UNITS[:30]:
            rollouts.report("checkout", unit, error=False)
        write(path, policy_text(100))
        after_interval()
        for unit in UNITS[:12]:
            rollouts.report("checkout", unit, error=True)
        status = rollouts.status("checkout")
        assert status.treatment.calls + status.control.calls == 12  # the new counters
        control, treatment, targeted = status.totals
        assert (control.calls + treatment.calls + targeted.calls) == 42
        assert control.errors + treatment.errors + targeted.errors == 12

    def test_a_change_of_pattern_is_refused(self, path: Path) -> None:
        """A running process keeps a rollout's pattern: its code records calls for it."""
        rollouts = Rollouts.from_file(path, reload_interval=INTERVAL)
        guarded = rollouts.guard("checkout", fallback=lambda u: "old", unit=lambda u: u)(
            lambda u: "new"
        )
        write(path, policy_text(100, extra='pattern = "shadow"'))
        after_interval()
        status = rollouts.status("checkout")
        assert status.pending_policy is not None
        assert "rollouts.checkout.pattern: cannot change from None to 'shadow'" in (
            status.pending_policy
        )
        assert rollouts.policy.rollouts["checkout"].pattern is None
        assert guarded("user-1") == "old"  # the last good policy, 0 %

    def test_a_shadow_notices_a_change(self, path: Path) -> None:
        """Calls through a shadow look at the policy file too."""
        write(path, policy_text(100, extra='pattern = "shadow"'))
        rollouts = Rollouts.from_file(path, reload_interval=INTERVAL)
        ran: list[str] = []

        def candidate(user: str) -> str:
            ran.append(user)
            return "old"

        search = rollouts.shadow("checkout", candidate=candidate, unit=lambda user: user)(
            lambda user: "old"
        )
        search("user-1")
        write(path, policy_text(100, extra='pattern = "shadow"\ntargeting = { deny = ["user-1"] }'))
        after_interval()
        for _ in range(3):
            search("user-1")
        assert ran == ["user-1", "user-1"]  # the call that noticed the change, then none

    def test_a_shadow_outside_its_cohort_notices_a_change(self, path: Path) -> None:
        """At 0 %, no call runs the candidate, yet the calls look at the file."""
        write(path, policy_text(0, extra='pattern = "shadow"'))
        rollouts = Rollouts.from_file(path, reload_interval=INTERVAL)
        ran: list[str] = []

        def candidate(user: str) -> str:
            ran.append(user)
            return "old"

        search = rollouts.shadow("checkout", candidate=candidate, unit=lambda user: user)(
            lambda user: "old"
        )
        search("user-1")
        write(path, policy_text(100, extra='pattern = "shadow"'))
        after_interval()
        search("user-1")  # notices the change, at 0 % still
        search("user-1")
        assert ran == ["user-1"]

    def test_an_invalid_change_is_refused_and_the_old_policy_serves(self, path: Path) -> None:
        """A file that does not validate is not applied; it is logged once, shown in status."""
        rollouts = Rollouts.from_file(path, reload_interval=INTERVAL)
        write(path, policy_text(150))
        with structlog.testing.capture_logs() as logs:
            for _ in range(3):
                after_interval()
                assert share(rollouts) == 0.0  # no exception in the calling code
        assert [e["event"] for e in logs].count("policy.reload_failed") == 1
        assert rollouts.failures.count("policy.reload_failed") == 1  # once per bad version
        pending = rollouts.status("checkout").pending_policy
        assert pending is not None
        assert "rollouts.checkout.stages[0].percent" in pending
        write(path, policy_text(100))
        after_interval()
        assert share(rollouts) == 1.0
        assert rollouts.status("checkout").pending_policy is None

    def test_state_survives_and_handles_follow(self, path: Path) -> None:
        """A frozen rollout stays frozen; a guard made before the reload follows the new plan."""
        rollouts = Rollouts.from_file(path, reload_interval=INTERVAL)
        handle = rollouts["checkout"]

        @rollouts.guard("checkout", fallback=lambda unit: "old", unit=lambda unit: unit)
        def new(unit: str) -> str:
            return "new"

        rollouts.freeze("checkout", actor="alice")
        write(path, policy_text(100))
        after_interval()
        rollouts.tick()
        assert rollouts["checkout"] is handle
        assert handle.state.status is Status.FROZEN
        assert {new(unit) for unit in UNITS} == {"new"}

    def test_added_and_removed_rollouts(self, path: Path) -> None:
        """A new rollout starts; a removed one is listed and logged, its state and handle kept."""
        rollouts = Rollouts.from_file(path, reload_interval=INTERVAL)
        handle = rollouts["checkout"]
        write(path, policy_text(50, name="search"))
        after_interval()
        with structlog.testing.capture_logs() as logs:
            rollouts.tick()
        assert "search" in rollouts
        assert "checkout" not in rollouts
        assert list(rollouts) == ["search"]
        assert rollouts.removed == ["checkout"]
        removed = next(e for e in logs if e["event"] == "policy.rollout_removed")
        assert (removed["rollout"], removed["guards"], removed["version"]) == ("checkout", 0, 1)
        assert rollouts.store.load("checkout") is not None
        assert rollouts["checkout"] is handle
        assert rollouts.decide("checkout", "u").reason is Reason.UNKNOWN_ROLLOUT
        assert rollouts.status("checkout").in_policy is False
        with pytest.raises(UnknownRolloutError):
            rollouts["never-there"]

    def test_a_change_of_bucketing_is_a_warning(self, path: Path) -> None:
        """A reload that changes how a live rollout buckets moves units between cohorts at
        the same percent: the operator is warned, with the scheme before and after."""
        rollouts = Rollouts.from_file(path, reload_interval=INTERVAL)
        unleash = 'bucketing = { scheme = "unleash", group_id = "checkout" }'
        for extra, warned in [(unleash, True), (unleash + '\ndescription = "x"', False),
                              ("", True)]:  # fmt: skip
            write(path, policy_text(20, extra=extra))
            after_interval()
            with structlog.testing.capture_logs() as logs:
                rollouts.tick()
            found = [e for e in logs if e["event"] == "policy.rebucketed"]
            assert len(found) == int(warned), extra
        [event] = found
        assert event["log_level"] == "warning"
        assert (event["was"], event["now"]) == (
            "unleash, group_id 'checkout'",
            "stagedroll, salt 'checkout'",
        )
        assert (event["rollout"], event["stage"]) == ("checkout", 0)

    def test_an_environment_the_new_file_lacks_is_refused(self, tmp_path: Path) -> None:
        """A new policy that drops this process's environment is not applied."""
        path = tmp_path / "rollouts.toml"
        write(path, 'environments = ["prod"]\n' + policy_text(0))
        rollouts = Rollouts.from_file(path, environment="prod", reload_interval=INTERVAL)
        write(path, 'environments = ["dev"]\n' + policy_text(100))
        after_interval()
        assert share(rollouts) == 0.0
        assert "prod" in (rollouts.status("checkout").pending_policy or "")

    def test_needs_a_path(self) -> None:
        """reload_interval with a mapping is refused; a bad interval too."""
        with pytest.raises(TypeError, match="policy file"):
            Rollouts({"rollouts": {}}, reload_interval=1)
        with pytest.raises(ValueError, match="reload_interval"):
            Rollouts.from_file(Path(__file__).parent / "data" / "none.toml", reload_interval=0)


class TestKillSwitch:
    def test_named_rollouts_are_off_here(self, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """$STAGEDROLL_KILL turns the named rollouts off in this process, with reason KILLED."""
        write(path, policy_text(100))
        monkeypatch.setenv("STAGEDROLL_KILL", "checkout, unknown")
        rollouts = Rollouts.from_file(path, reload_interval=INTERVAL)
        decision = rollouts.decide("checkout", "user-1")
        assert (decision.enabled, decision.reason) == (False, Reason.KILLED)
        assert rollouts["checkout"].state.status is Status.RUNNING  # the store is untouched

    def test_read_again_on_reload(self, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """The variable is read again when the file is reloaded."""
        write(path, policy_text(100))
        rollouts = Rollouts.from_file(path, reload_interval=INTERVAL)
        assert share(rollouts) == 1.0
        monkeypatch.setenv("STAGEDROLL_KILL", "checkout")
        write(path, policy_text(100, extra='salt = "s2"'))
        after_interval()
        assert share(rollouts) == 0.0


class TestReloadEdges:
    def test_an_added_rollout_starts_and_serves_its_stage(self, path: Path) -> None:
        """A rollout that a reload adds is started at once (in-process store): no 0 %."""
        rollouts = Rollouts.from_file(path, reload_interval=INTERVAL)
        write(path, policy_text(0) + policy_text(100, name="search"))
        after_interval()
        assert share(rollouts, "search") == 1.0
        assert rollouts["search"].state.version == 1
        assert rollouts.failures.count() == 0

    def test_reverting_a_bad_file_clears_the_pending_error(self, path: Path) -> None:
        """Back to the version in force after a bad one, nothing is pending any more."""
        rollouts = Rollouts.from_file(path, reload_interval=INTERVAL)
        good = path.read_text()
        write(path, policy_text(150))
        after_interval()
        assert rollouts.status("checkout").pending_policy is not None
        write(path, good)
        after_interval()
        assert rollouts.status("checkout").pending_policy is None


class TestKillSwitchAndTheGate:
    def test_no_automatic_step_for_a_rollout_killed_here(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A process that killed a rollout by $STAGEDROLL_KILL takes no automatic step on it."""
        path = tmp_path / "rollouts.toml"
        write(
            path,
            """
[rollouts.checkout]
advance = "auto"
stages = [{ name = "a", percent = 10 }, { name = "b", percent = 50 }]
""",
        )
        monkeypatch.setenv("STAGEDROLL_KILL", "checkout")
        rollouts = Rollouts(path)
        assert rollouts.tick() == []
        assert rollouts["checkout"].state.stage == 0
        assert "STAGEDROLL_KILL" in (rollouts.status("checkout").waiting_for or "")


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _large(path: Path) -> None:
    with path.open("wb") as file:  # sparse: 50 MB of size, no disk used
        file.truncate(50 * 1024 * 1024)


UNREADABLE: dict[str, tuple[Callable[[Path], object], str]] = {
    "fifo": (_fifo, "is a FIFO"),
    "dev-zero": (_dev_zero, "is a character device"),
    "directory": (Path.mkdir, "is a directory"),
    "50MB": (_large, "is 52,428,800 bytes, over the limit of 1,048,576 bytes"),
}


@pytest.mark.skipif(os.name != "posix", reason="FIFOs and /dev/zero are POSIX")
class TestPolicyFileReading:
    """A reload reads through the bounded reader: once per change, never blocking, never much."""

    @pytest.mark.parametrize("kind", sorted(UNREADABLE))
    def test_what_cannot_be_read_keeps_the_last_good_policy(
        self, path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A FIFO, /dev/zero, a directory or 50 MB in its place: refused unread, logged once."""
        make, reason = UNREADABLE[kind]
        monkeypatch.delenv("STAGEDROLL_MAX_POLICY_BYTES", raising=False)
        rollouts = Rollouts.from_file(path, reload_interval=INTERVAL)
        write(path, policy_text(100))
        after_interval()
        assert share(rollouts) == 1.0
        path.unlink()
        make(path)
        reads: list[int] = []
        real_read = os.read

        def counting_read(fd: int, size: int) -> bytes:
            reads.append(size)
            return real_read(fd, size)

        monkeypatch.setattr(os, "read", counting_read)
        with structlog.testing.capture_logs() as logs:
            for _ in range(3):
                after_interval()
                assert share(rollouts) == 1.0  # the serving call neither blocks nor fails
        monkeypatch.undo()
        assert reads == []
        assert [e["event"] for e in logs].count("policy.reload_failed") == 1
        pending = rollouts.status("checkout").pending_policy or ""
        assert reason in pending
        assert str(path) in pending
        if kind == "directory":
            path.rmdir()
        else:
            path.unlink()
        write(path, policy_text(0))
        after_interval()
        assert share(rollouts) == 0.0
        assert rollouts.status("checkout").pending_policy is None

    def test_each_change_is_read_once(self, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A change opens the file once: the policy is parsed from the bytes read."""
        rollouts = Rollouts.from_file(path, reload_interval=INTERVAL)
        opened: list[str] = []
        real_open = os.open

        def counting_open(file: str | os.PathLike[str], flags: int, *args: int) -> int:
            opened.append(os.fspath(file))
            return real_open(file, flags, *args)

        monkeypatch.setattr(os, "open", counting_open)
        for percent in (10, 20, 30):
            write(path, policy_text(percent))
            after_interval()
            assert rollouts.status("checkout").percent == percent
            after_interval()
            rollouts.decide("checkout", "user-1")  # no change: not opened again
        monkeypatch.undo()
        assert opened == [os.fspath(path)] * 3

    def test_the_size_limit_of_the_environment_holds(
        self, path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """$STAGEDROLL_MAX_POLICY_BYTES bounds a reload too: a larger file is left unread."""
        rollouts = Rollouts.from_file(path, reload_interval=INTERVAL)
        monkeypatch.setenv("STAGEDROLL_MAX_POLICY_BYTES", str(path.stat().st_size + 10))
        write(path, policy_text(100, extra="# " + "x" * 100))
        after_interval()
        assert share(rollouts) == 0.0
        assert "over the limit" in (rollouts.status("checkout").pending_policy or "")
        monkeypatch.delenv("STAGEDROLL_MAX_POLICY_BYTES")
        write(path, policy_text(100, extra="# " + "y" * 100))
        after_interval()
        assert share(rollouts) == 1.0

    def test_an_emptied_file_is_refused(self, path: Path) -> None:
        """A save caught between its truncation and its write is refused: the policy stays."""
        rollouts = Rollouts.from_file(path, reload_interval=INTERVAL)
        write(path, "")
        after_interval()
        assert rollouts.decide("checkout", "user-1").reason is not Reason.UNKNOWN_ROLLOUT
        assert "the document is empty" in (rollouts.status("checkout").pending_policy or "")
