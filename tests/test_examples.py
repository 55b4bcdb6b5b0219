"""The examples run as documented (shortened where they take an option for it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, check=True, timeout=300
    )
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


class TestCohorts:
    def test_every_cohort_contains_the_previous_one(self) -> None:
        """Each stage row of the cohort tables ends with "yes" (or marks the first stage)."""
        out = _run(str(EXAMPLES / "cohorts.py"))
        rows = [line for line in out.splitlines() if line.strip().endswith(("yes", "no", "stage)"))]
        assert len(rows) >= 5
        assert all(not row.endswith("no") for row in rows)
