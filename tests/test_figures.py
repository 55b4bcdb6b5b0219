"""The figures of the documentation are what their scripts draw from the library's code."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import structlog

FIGURES = Path(__file__).resolve().parent.parent / "docs" / "figures"
IMAGES = FIGURES.parent / "images"


def run_script(name: str, *argv: str) -> int:
    """Run ``main(argv)`` of the figure script ``docs/figures/<name>.py``."""
    spec = importlib.util.spec_from_file_location(name, FIGURES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        code: int = module.main(list(argv))
    finally:
        sys.modules.pop(spec.name, None)
        structlog.reset_defaults()  # a script silences the log for its run, not for the suite
    return code


class TestFigures:
    def test_late_regression_is_up_to_date(self) -> None:
        """``late-regression.svg`` is redrawn identically (a seeded run through the API)."""
        spec = importlib.util.spec_from_file_location(
            "late_regression", FIGURES / "late_regression.py"
        )
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        try:
            spec.loader.exec_module(module)
            assert module.main(["--check"]) == 0, "run docs/figures/late_regression.py"
        finally:
            sys.modules.pop(spec.name, None)

    def test_the_page_shows_the_figure(self) -> None:
        """docs/auto-freeze.md links the figure, with the numbers it shows."""
        page = (FIGURES.parent / "auto-freeze.md").read_text()
        svg = (FIGURES / "late-regression.svg").read_text()
        assert "figures/late-regression.svg" in page
        assert "frozen after 49,500 requests" in svg
        assert "would freeze after 68,000" in svg
        assert "froze after 49,500 requests of the regression" in page
        assert "needed 68,000" in page


class TestRolloutPictures:
    def test_the_pictures_are_up_to_date(self) -> None:
        """``frozen-rollout.svg`` and ``evidence.svg`` are redrawn identically (a seeded run
        through the API, drawn by stagedroll.plots)."""
        pytest.importorskip("matplotlib", reason="the pictures are drawn with stagedroll[plot]")
        assert run_script("rollout_pictures", "--check") == 0, (
            "run docs/figures/rollout_pictures.py"
        )

    def test_they_show_the_freeze_and_the_rollback(self) -> None:
        """The timeline marks the gate's freeze and rollback; the evidence crosses its bars."""
        timeline = (IMAGES / "frozen-rollout.svg").read_text()
        evidence = (IMAGES / "evidence.svg").read_text()
        for svg in (timeline, evidence):
            assert "freeze (health gate)" in svg
            assert "roll back (health gate)" in svg
        assert "freeze at E = 20" in evidence
        assert "roll back at E = 1,000" in evidence
        assert "<dc:date>" not in timeline + evidence

    def test_the_observability_page_shows_them(self) -> None:
        """docs/observability.md shows both pictures and names the script that draws them."""
        page = (FIGURES.parent / "observability.md").read_text()
        assert "images/frozen-rollout.svg" in page
        assert "images/evidence.svg" in page
        assert "docs/figures/rollout_pictures.py" in page
