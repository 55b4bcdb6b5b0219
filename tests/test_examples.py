"""The examples run as documented (shortened where they take an option for it)."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HEADER = (
    "time   rollout       stage   share status      old err/calls new err/calls  E errors  next"
)
"""The column headers of the demo's hourly table (examples/service.py)."""
ROW = re.compile(r"\d\d:\d\d  new-[a-z]+ .* \d+ % [a-z_]+ +\d+/\d+ ")
"""A row of that table: the time, the rollout, its stage, share, status and counts."""


def _run(*args: str, cwd: Path | None = None) -> str:
    with tempfile.TemporaryDirectory() as scratch:  # what an example writes goes there
        done = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                              check=True, timeout=300, cwd=cwd or scratch)  # fmt: skip
    return done.stdout


class TestService:
    def test_the_healthy_rollout_advances_and_the_degraded_one_is_rolled_back(self) -> None:
        """In three simulated hours, new-search advances by itself; new-checkout freezes,
        then rolls back."""
        out = _run(str(EXAMPLES / "service.py"), "--hours", "3")
        assert "new-search      advance canary -> early [running] (auto:" in out
        assert "new-checkout     freeze" in out
        assert "new-checkout   rollback" in out
        history = out.split("history of new-checkout (newest first):")[1].splitlines()
        actions = [line.split()[1] for line in history if line.strip()]
        assert actions[:2] == ["rollback", "freeze"]
        for name in ("new-search", "new-checkout"):  # each new path's exception, shown once
            logged = f"{name:<13} logged rollout.new_path_error: __main__.Failed: {name} ("
            assert out.count(logged) == 1

    def test_the_timeline_is_drawn_beside_the_text(self, tmp_path: Path) -> None:
        """With matplotlib, the demo writes demo-timeline.png where it runs and says so on
        its last line."""
        pytest.importorskip("matplotlib", reason="the demo draws with stagedroll[plot]")
        out = _run(str(EXAMPLES / "service.py"), "--hours", "2", cwd=tmp_path)
        assert out.splitlines()[-1] == (
            "timeline: demo-timeline.png (each rollout's stage over time, with every "
            "transition marked)"
        )
        png = (tmp_path / "demo-timeline.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert int.from_bytes(png[16:20], "big") == 800  # 800 px wide

    def test_without_matplotlib_it_says_how_to_get_the_picture(self, tmp_path: Path) -> None:
        """Without matplotlib the demo runs all the same, and its last line names the extra."""
        script = (
            "import runpy, sys; sys.modules['matplotlib'] = None; "
            f"sys.argv = ['service.py', '--hours', '1']; "
            f"runpy.run_path({str(EXAMPLES / 'service.py')!r}, run_name='__main__')"
        )
        out = _run("-c", script, cwd=tmp_path)
        assert out.splitlines()[-1] == (
            "timeline: not drawn (pip install 'stagedroll[plot]' to draw it as a PNG)"
        )
        assert not (tmp_path / "demo-timeline.png").exists()

    def test_the_table_has_headers_and_shows_each_line_once(self) -> None:
        """The hourly table names its columns above its first row; no line repeats the one
        before it, nor a rollout's row its row before but for the counts (the last hour
        shows every rollout all the same)."""
        lines = _run(str(EXAMPLES / "service.py")).splitlines()
        first = min(i for i, line in enumerate(lines) if line.startswith("00:"))
        assert HEADER in lines[:first]
        for before, after in itertools.pairwise(lines):
            assert not (after.strip() and after == before), after
        rows = [line for line in lines if ROW.match(line)]
        assert len(rows) >= 10
        last = rows[-1][:5]
        seen: dict[str, str] = {}
        for row in rows:
            name, but_counts = row.split()[1], re.sub(r"\d+/\d+", "", row[7:])
            assert row.startswith(last) or but_counts != seen.get(name), row
            seen[name] = but_counts
        assert {row.split()[1] for row in rows if row.startswith(last)} == set(seen)
        assert set(seen) == {"new-search", "new-checkout"}
        # At 100 %, new-search changes in nothing but its counts: its first hour there is
        # shown, and the last hour.
        at_100 = [row[:5] for row in rows if row.split()[1:3] == ["new-search", "all"]]
        assert at_100 == ["05:59", last]


class TestCohorts:
    def test_every_cohort_contains_the_previous_one(self) -> None:
        """Each stage row of the cohort tables ends with "yes" (or marks the first stage)."""
        out = _run(str(EXAMPLES / "cohorts.py"))
        rows = [line for line in out.splitlines() if line.strip().endswith(("yes", "no", "stage)"))]
        assert len(rows) >= 5
        assert all(not row.endswith("no") for row in rows)


class TestMigration:
    def test_the_gate_freezes_the_buggy_migration_which_completes_once_fixed(self) -> None:
        """The buggy new write makes shadow_read's compared reads mismatch: the health gate
        freezes the migration by itself; after the fix, it goes through every phase and the
        new table holds every write."""
        out = _run(str(EXAMPLES / "migration.py"), "--units", "300", "--requests", "400")
        headers = [line.split()[1].rstrip(":") for line in out.splitlines()
                   if line.startswith("--- ")]  # fmt: skip
        assert headers == ["off", "dual_write", "shadow_read", "shadow_read", "live",
                           "rampdown", "complete"]  # fmt: skip
        assert "freeze shadow_read -> shadow_read [frozen] (auto: errors:" in out
        assert "backfill: " in out
        assert out.index("backfill: ") < out.index("advance dual_write -> shadow_read")
        # The samples show names cut to 24 characters, and the emails redacted.
        samples = out.split("mismatch samples")[1].split("fix:")[0]
        olds = re.findall(r" old '([^']*)' (\S+)", samples)
        news = re.findall(r" new '([^']*)' (\S+)", samples)
        assert olds
        assert len(olds) == len(news)
        for (old_name, old_email), (new_name, new_email) in zip(olds, news, strict=True):
            assert len(old_name) > 24
            assert new_name == old_name[:24]
            assert "***@" in old_email
            assert new_email == old_email
        assert "final check: OK" in out
        assert "FAILED" not in out
        history = out.split("(newest first):")[1].splitlines()
        actions = [(line.split()[1], line.split()[3]) for line in history if line.strip()]
        assert actions == [
            ("complete", "complete"),
            ("advance", "complete"),
            ("advance", "rampdown"),
            ("advance", "live"),
            ("unfreeze", "shadow_read"),
            ("freeze", "shadow_read"),
            ("advance", "shadow_read"),
            ("advance", "dual_write"),
            ("start", "off"),
        ]
        freeze = next(line for line in history if " freeze " in line)
        assert "by stagedroll" in freeze  # the health gate, not an operator

    @pytest.mark.parametrize(("option", "value"), [("--units", "0"), ("--units", "99"),
                                                   ("--requests", "399")])  # fmt: skip
    def test_sizes_too_small_to_freeze_are_refused(self, option: str, value: str) -> None:
        """Below 100 profiles or 400 requests the freeze may not happen: a usage error."""
        done = subprocess.run([sys.executable, str(EXAMPLES / "migration.py"), option, value],
                              capture_output=True, text=True, check=False, timeout=60)  # fmt: skip
        assert done.returncode == 2
        assert f"argument {option}: must be at least" in done.stderr
        assert "Traceback" not in done.stderr

    def test_the_smallest_sizes_still_freeze_and_complete(self) -> None:
        """At the minimum sizes, the gate freezes the buggy migration, which then completes."""
        out = _run(str(EXAMPLES / "migration.py"), "--units", "100", "--requests", "400")
        assert "freeze shadow_read -> shadow_read [frozen] (auto: errors:" in out
        assert "final check: OK" in out
