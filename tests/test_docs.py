"""The Python examples of README.md and docs/*.md run as written, page by page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("**/*.md")])

# A fence opens with ```python plus an optional info string, and closes with a bare ```.
FENCE = re.compile(
    r"^```(?P<lang>[\w+-]*)(?P<info>[^\n]*)\n(?P<code>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL
)
SKIP_WORDS = frozenset({"no-run", "norun", "skip"})
"""A word in a python fence's info string that keeps the block from running."""
PYTHON_ALIASES = frozenset({"py", "py3", "python3", "pycon", "Python"})
"""Tags that would look like Python to a reader but escape the run: refused."""


@dataclass(frozen=True)
class Block:
    """One fenced block of a page."""

    lang: str
    info: frozenset[str]
    code: str
    line: int
    """The line of the page where the block's code starts (1-based)."""

    @property
    def runs(self) -> bool:
        """Whether the block is Python to run."""
        return self.lang == "python" and not (self.info & SKIP_WORDS)


def blocks(text: str) -> Iterator[Block]:
    """Yield the fenced blocks of a Markdown text, in order."""
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start("code")) + 1
        info = frozenset(match["info"].replace(",", " ").split())
        yield Block(match["lang"], info, match["code"], line)


def page_id(page: Path) -> str:
    """The page's path relative to the repository, as the test id."""
    return page.relative_to(ROOT).as_posix()


@pytest.fixture(name="in_tmp_path")
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run in an empty directory, with no environment named and structlog as it was."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STAGEDROLL_ENV", raising=False)
    yield tmp_path
    structlog.reset_defaults()


class TestDocs:
    @pytest.mark.parametrize("page", PAGES, ids=page_id)
    @pytest.mark.usefixtures("in_tmp_path")
    def test_examples_run(self, page: Path) -> None:
        """Every runnable python block of the page runs, in order, in one fresh namespace."""
        text = page.read_text(encoding="utf-8")
        namespace: dict[str, object] = {"__name__": f"docs.{page.stem}"}
        for block in blocks(text):
            if not block.runs:
                continue
            # Pad so that a traceback names the page's own line numbers.
            source = "\n" * (block.line - 1) + block.code
            exec(compile(source, str(page), "exec"), namespace)

    @pytest.mark.parametrize("page", PAGES, ids=page_id)
    def test_python_is_tagged_python(self, page: Path) -> None:
        """No block is tagged py, python3 or pycon, which would look like code but never run."""
        text = page.read_text(encoding="utf-8")
        escaped = [b.line for b in blocks(text) if b.lang in PYTHON_ALIASES]
        assert escaped == [], f"{page_id(page)}: tag these blocks ```python, lines {escaped}"

    def test_pages_found(self) -> None:
        """The README and the concept pages are collected, each with examples to run."""
        concepts = ["index", "getting-started", "bucketing", "policy", "decisions", "guards",
                    "transitions", "stores"]  # fmt: skip
        expected = [ROOT / "README.md", *(ROOT / "docs" / f"{c}.md" for c in concepts)]
        assert set(expected) <= set(PAGES)
        for page in expected:
            assert any(b.runs for b in blocks(page.read_text("utf-8"))), page_id(page)

    def test_no_run_blocks_are_skipped(self) -> None:
        """A block fenced as python no-run is extracted but not run; other languages never run."""
        text = (
            "```python\nx = 1\n```\n"
            "```python no-run\nraise SystemExit\n```\n"
            "```toml\n[rollouts]\n```\n"
        )
        found = list(blocks(text))
        assert [(b.lang, b.runs, b.line) for b in found] == [
            ("python", True, 2),
            ("python", False, 5),
            ("toml", False, 8),
        ]
