"""The figures of the documentation are what their scripts draw from the library's code."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

FIGURES = Path(__file__).resolve().parent.parent / "docs" / "figures"


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
