"""docs/cli.md's and docs/operations.md's transcripts are real runs: each command prints what
the page shows.

Each page's ```console blocks are one shell session. A line starting with ``$ `` is a
command; the lines after it, up to the next command or the end of the block, are its
output (stdout and stderr, in the order they were written). A block fenced as
```toml file=NAME is written to NAME when the session reaches it, and a runnable ```python
block (one that tests/test_docs.py runs too) is run there, in one namespace per page. The
session runs in an empty directory holding examples/rollouts.toml as rollouts.toml, with no
``STAGEDROLL_*`` variable set but those the page exports; the pages write that directory as
``/srv/rollouts``.

The commands understood are ``stagedroll ...`` and ``python -m stagedroll ...`` (both run
``stagedroll.cli.main`` in this process), a trailing ``| head -n N`` (on stdout),
``export NAME=VALUE ...`` and ``echo $?``. A command that exits non-zero must be followed
by ``echo $?``, so that the page shows every failure. Times and durations differ from run
to run: both sides have them replaced by placeholders before they are compared.

To rewrite the outputs of the pages from a fresh run (the commands are kept)::

    .venv/bin/python tests/test_cli_docs.py --write
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stagedroll.cli import main

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "cli.md"
PAGES = (PAGE, ROOT / "docs" / "operations.md")
EXAMPLE = ROOT / "examples" / "rollouts.toml"
PAGE_ID = PAGE.relative_to(ROOT).as_posix()
SESSION_DIR = "/srv/rollouts"
"""The session's directory as the pages write it (the run's own is replaced by it)."""

FENCE = re.compile(
    r"^```(?P<lang>[\w+-]*)(?P<info>[^\n]*)\n(?P<code>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL
)
PROMPT = "$ "
WRITE_HINT = "regenerate the outputs with: .venv/bin/python tests/test_cli_docs.py --write"

# What differs between two runs of the same session, and its placeholder.
VOLATILE = [
    (re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"), "<time>"),  # since, at, TIME columns
    (re.compile(r'("(?:since|at|first_seen|last_seen)": )-?[0-9][0-9.eE+-]*'), r"\1<time>"),
    (re.compile(r"(bake time: )[0-9dhms]+( left)"), r"\1<duration>\2"),  # waiting for
]


def normalize(text: str) -> str:
    """``text`` with its times and durations replaced by placeholders."""
    for pattern, placeholder in VOLATILE:
        text = pattern.sub(placeholder, text)
    return text


@dataclass(frozen=True)
class Command:
    """One ``$ `` line of the page, and the output the page shows for it."""

    text: str
    """The command, without the prompt."""
    shown: str
    """The page's output: its lines, each ended by a newline."""
    line: int
    """The line of the page the command is on (1-based)."""


@dataclass(frozen=True)
class Transcript:
    """One ```console block."""

    start: int
    end: int
    """The span of the block's content in the page (characters)."""
    commands: tuple[Command, ...]


@dataclass(frozen=True)
class File:
    """A block fenced with ``file=NAME``: written to NAME when the session reaches it."""

    name: str
    content: str


@dataclass(frozen=True)
class Script:
    """A runnable ```python block: run when the session reaches it."""

    code: str
    line: int


Item = Transcript | File | Script


def parse(text: str) -> list[Item]:
    """The transcripts, files and scripts of a page, in order."""
    found: list[Item] = []
    for match in FENCE.finditer(text):
        first = text.count("\n", 0, match.start("code")) + 1
        files = [w[len("file=") :] for w in match["info"].split() if w.startswith("file=")]
        if files:
            found.append(File(files[0], match["code"]))
        skip = {"no-run", "norun", "skip"} & set(match["info"].replace(",", " ").split())
        if match["lang"] == "python" and not skip:
            found.append(Script(match["code"], first))
        if match["lang"] != "console":
            continue
        commands: list[Command] = []
        lines = match["code"].splitlines()
        starts = [i for i, line in enumerate(lines) if line.startswith(PROMPT)]
        if not starts or starts[0] != 0:
            raise ValueError(f"{PAGE_ID}:{first}: a console block starts with a '$ ' command")
        for i, begin in enumerate(starts):
            end = starts[i + 1] if i + 1 < len(starts) else len(lines)
            output = lines[begin + 1 : end]
            while output and not output[-1].strip():
                output.pop()
            shown = "".join(f"{line}\n" for line in output)
            commands.append(Command(lines[begin][len(PROMPT) :], shown, first + begin))
        found.append(Transcript(match.start("code"), match.end("code"), tuple(commands)))
    return found


class _Terminal:
    """What a command writes to stdout and stderr: each apart, and both in order."""

    def __init__(self) -> None:
        self.both: list[str] = []
        self.out = self._Stream(self.both)
        self.err = self._Stream(self.both)

    class _Stream(io.StringIO):
        def __init__(self, both: list[str]) -> None:
            super().__init__()
            self._both = both

        def write(self, s: str) -> int:
            self._both.append(s)
            return super().write(s)


def _stagedroll(argv: list[str], head: int | None) -> tuple[str, int]:
    """Run the command line in this process; its output (first ``head`` lines of stdout)."""
    terminal = _Terminal()
    with contextlib.redirect_stdout(terminal.out), contextlib.redirect_stderr(terminal.err):
        code = main(argv)
    if head is None:
        printed = "".join(terminal.both)
    else:
        kept = "".join(terminal.out.getvalue().splitlines(keepends=True)[:head])
        printed = kept + terminal.err.getvalue()
    here = str(Path.cwd())
    for name in {here, os.path.realpath(here)}:
        printed = printed.replace(name, SESSION_DIR)
    return printed, code


def execute(text: str, last: int, setenv: Callable[[str, str], None]) -> tuple[str, int]:
    """Run one command of the page: its output and exit code."""
    words = shlex.split(text)
    head: int | None = None
    if "|" in words:
        pipe = words.index("|")
        words, rest = words[:pipe], words[pipe + 1 :]
        if len(rest) != 3 or rest[:2] != ["head", "-n"] or not rest[2].isdigit():
            raise ValueError(f"only '| head -n N' is understood after a pipe: {text!r}")
        head = int(rest[2])
    if words[:1] == ["stagedroll"]:
        return _stagedroll(words[1:], head)
    if words[:3] == ["python", "-m", "stagedroll"]:
        return _stagedroll(words[3:], head)
    if words == ["echo", "$?"]:
        return f"{last}\n", 0
    if words[:1] == ["export"] and len(words) > 1 and all("=" in w for w in words[1:]):
        for word in words[1:]:
            name, _, value = word.partition("=")
            setenv(name, value)
        return "", 0
    raise ValueError(f"not a command this test runs: {text!r}")


def run(
    page: list[Item], setenv: Callable[[str, str], None], source: Path = PAGE
) -> list[list[str]]:
    """Run the page's session in the current directory: each transcript's outputs, in order."""
    outputs: list[list[str]] = []
    code = 0
    failed: Command | None = None
    namespace: dict[str, object] = {"__name__": f"docs.{source.stem}"}
    page_id = source.relative_to(ROOT).as_posix()
    for item in page:
        if isinstance(item, File):
            Path(item.name).write_text(item.content, encoding="utf-8")
            continue
        if isinstance(item, Script):
            exec(compile("\n" * (item.line - 1) + item.code, str(source), "exec"), namespace)
            continue
        outputs.append([])
        for command in item.commands:
            if failed is not None and command.text.strip() != "echo $?":
                raise AssertionError(
                    f"{page_id}:{failed.line}: '$ {failed.text}' exited {code}: "
                    "show it with '$ echo $?' on the next line"
                )
            output, code = execute(command.text, code, setenv)
            failed = command if code != 0 else None
            outputs[-1].append(output)
    if failed is not None:
        raise AssertionError(f"{page_id}:{failed.line}: '$ {failed.text}' exited {code}")
    return outputs


def prepare(directory: Path) -> None:
    """The directory the page's session starts in: the example policy as rollouts.toml."""
    shutil.copyfile(EXAMPLE, directory / "rollouts.toml")


def same(printed: str, shown: str) -> bool:
    """Whether a command printed what the page shows, times and durations aside."""
    return normalize(printed).rstrip("\n") == normalize(shown).rstrip("\n")


def render(text: str, page: list[Item], outputs: list[list[str]]) -> str:
    """``text`` with the output of each command replaced by ``outputs``.

    An output that differs from the page's only in its times is kept as the page has it,
    so that a rewrite changes no line that did not change.
    """
    transcripts = [item for item in page if isinstance(item, Transcript)]
    pieces, at = [], 0
    for transcript, found in zip(transcripts, outputs, strict=True):
        pieces.append(text[at : transcript.start])
        for command, printed in zip(transcript.commands, found, strict=True):
            output = command.shown if same(printed, command.shown) else printed
            if output and not output.endswith("\n"):
                output += "\n"
            pieces.append(f"{PROMPT}{command.text}\n{output}")
        at = transcript.end
    pieces.append(text[at:])
    return "".join(pieces)


@contextlib.contextmanager
def _session_here() -> Iterator[Path]:
    """An empty directory as the current one, with no ``STAGEDROLL_*`` variable (restored)."""
    saved_env, saved_cwd = dict(os.environ), Path.cwd()
    with tempfile.TemporaryDirectory() as name:
        for key in [k for k in os.environ if k.startswith("STAGEDROLL_")]:
            del os.environ[key]
        os.chdir(name)
        try:
            yield Path(name)
        finally:
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)


def write() -> None:
    """Rewrite the outputs of each page from a fresh run of its session."""
    for source in PAGES:
        text = source.read_text(encoding="utf-8")
        page = parse(text)
        with _session_here() as directory:
            prepare(directory)
            outputs = run(page, os.environ.__setitem__, source)
        source.write_text(render(text, page, outputs), encoding="utf-8")


class TestCliDocs:
    @pytest.fixture(name="session")
    def _session(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> Callable[[str, str], None]:
        """The page's starting directory, current, and ``setenv`` for its exports."""
        for key in [k for k in os.environ if k.startswith("STAGEDROLL_")]:
            monkeypatch.delenv(key)
        monkeypatch.chdir(tmp_path)
        prepare(tmp_path)
        return monkeypatch.setenv

    @pytest.mark.parametrize("source", PAGES, ids=lambda p: p.name)
    def test_transcript(self, session: Callable[[str, str], None], source: Path) -> None:
        """Every command of the page prints what the page shows, times and durations aside."""
        page = parse(source.read_text(encoding="utf-8"))
        outputs = run(page, session, source)
        transcripts = [item for item in page if isinstance(item, Transcript)]
        page_id = source.relative_to(ROOT).as_posix()
        differ = [
            f"{page_id}:{command.line}: $ {command.text}\n"
            f"--- the page shows\n{command.shown}--- the run printed\n{output}"
            for transcript, found in zip(transcripts, outputs, strict=True)
            for command, output in zip(transcript.commands, found, strict=True)
            if not same(output, command.shown)
        ]
        assert not differ, "\n".join([*differ, WRITE_HINT])

    def test_page_runs_the_commands(self) -> None:
        """The page has transcripts, and they run stagedroll's commands, not only shell."""
        page = parse(PAGE.read_text(encoding="utf-8"))
        commands = [c.text for item in page if isinstance(item, Transcript) for c in item.commands]
        ran = {shlex.split(c)[1] for c in commands if c.startswith("stagedroll ")}
        assert {"validate", "status", "list", "advance", "freeze", "unfreeze", "rollback", "kill",
                "history", "explain", "simulate", "schema", "tick"} <= ran  # fmt: skip
        assert any(c.startswith("python -m stagedroll ") for c in commands)

    def test_runbook_runs_the_commands(self) -> None:
        """The on-call runbook finds, explains, kills, rolls back and checks, for real."""
        page = parse(PAGES[1].read_text(encoding="utf-8"))
        commands = [c.text for item in page if isinstance(item, Transcript) for c in item.commands]
        ran = {shlex.split(c)[1] for c in commands if c.startswith("stagedroll ")}
        assert {"list", "status", "history", "kill", "rollback", "explain"} <= ran
        assert any(isinstance(item, Script) for item in page)

    def test_normalize(self) -> None:
        """Times and durations become placeholders; everything else is kept."""
        text = (
            'x  2026-11-27T13:33:27Z  1\n  "since": 1795786408.580071,\n  "at": 17,\n'
            "bake time: 5h59m59s left\nversion 4\n"
        )
        assert normalize(text) == (
            'x  <time>  1\n  "since": <time>,\n  "at": <time>,\n'
            "bake time: <duration> left\nversion 4\n"
        )

    def test_parse_and_render(self) -> None:
        """Commands and outputs are told apart; render puts new outputs in their place."""
        text = (
            "Intro.\n\n```toml file=a.toml\nx = 1\n```\n\n"
            "```console\n$ stagedroll validate a.toml\nold\n$ echo $?\n0\n```\nEnd.\n"
        )
        page = parse(text)
        assert page[0] == File("a.toml", "x = 1\n")
        transcript = page[1]
        assert isinstance(transcript, Transcript)
        assert [(c.text, c.shown, c.line) for c in transcript.commands] == [
            ("stagedroll validate a.toml", "old\n", 8),
            ("echo $?", "0\n", 10),
        ]
        assert render(text, page, [["new\n", "0\n"]]) == text.replace("old", "new")

    def test_unknown_command_is_refused(self) -> None:
        """A shell command the test cannot run fails the test instead of being skipped."""
        with pytest.raises(ValueError, match="not a command this test runs"):
            execute("rm -rf state.db", 0, lambda name, value: None)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: python {Path(__file__).name} --write  (pytest runs the test)")
    write()
    print(f"rewrote the outputs of {PAGE.relative_to(ROOT)}")
