"""The process models of docs/process-models.md, run for real: gunicorn and uWSGI.

A ``Rollouts`` made in the master (gunicorn's ``--preload``, uWSGI without
``--lazy-apps``) is inherited by each forked worker; the store's refresh thread is started
again in each (``os.register_at_fork``), so a kill made from the command line reaches every
worker, with nothing in ``post_fork``. uWSGI forks in C, where those hooks run only when
asked (``--py-call-osafterfork``, ``--py-call-uwsgi-fork-hooks``), or where the app is
imported after the fork (``--lazy-apps``). Celery and asyncio have modules of their own
(``test_process_models_celery.py``, ``test_process_models_asyncio.py``).
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers import free_port, running, service_env, stagedroll_cli

BIN = Path(sys.executable).parent
APP = """
import os
import threading

import stagedroll

ROLLOUTS = stagedroll.Rollouts.from_env()  # STAGEDROLL_POLICY, STAGEDROLL_STORE


def old_page(user):
    return "old"


@ROLLOUTS.guard("new-page", fallback=old_page, unit=lambda user: user)
def new_page(user):
    return "new"


def strays():
    # The Python threads this worker believes it has (besides this one) that are not
    # threads of this process: what a fork leaves when Python's fork hooks did not run.
    if not os.path.isdir("/proc/self/task"):
        return 0  # not Linux: not counted
    mine = set(os.listdir("/proc/self/task"))
    others = [t for t in threading.enumerate() if t is not threading.current_thread()]
    return sum(str(t.native_id) not in mine for t in others)


def app(environ, start_response):
    user = environ.get("QUERY_STRING") or "anonymous"
    body = f"{os.getpid()} {new_page(user)} {strays()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
"""
POLICY = """
[rollouts.new-page]
stages = [{ name = "everyone", percent = 100 }]
"""
DEADLINE_S = 60.0  # how long "eventually" may take on a loaded machine before the test fails


class Answer:
    """One answer of the app: the worker's pid, the path it took, its stray threads."""

    def __init__(self, text: str) -> None:
        pid, self.path, strays = text.split()
        self.pid, self.strays = int(pid), int(strays)

    def __repr__(self) -> str:
        return f"Answer({self.pid}, {self.path!r}, strays={self.strays})"


def get(url: str) -> Answer | None:
    """The answer to one request, or ``None`` while the server is not up."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return Answer(response.read().decode())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


class Served:
    """A server running the app, its URL, and the environment its processes read."""

    def __init__(self, tmp_path: Path, command: list[str]) -> None:
        (tmp_path / "app.py").write_text(APP)
        (tmp_path / "rollouts.toml").write_text(POLICY)
        self.store = f"sqlite:///{tmp_path / 'state.db'}"
        self.env = service_env(
            STAGEDROLL_POLICY=str(tmp_path / "rollouts.toml"),
            STAGEDROLL_STORE=f"{self.store}?refresh_interval=0.2",
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.command = [part.format(port=self.port) for part in command]
        self.log = tmp_path / "server.log"
        self.cwd = tmp_path

    @contextlib.contextmanager
    def run(self) -> Iterator[Served]:
        """Start the server, yield, and stop it (with its workers) whatever happened."""
        with running(self.command, cwd=self.cwd, env=self.env, log=self.log):
            yield self

    def answers(self, count: int) -> list[Answer]:
        """``count`` answers, waiting (up to the deadline) for the server to come up."""
        found: list[Answer] = []
        deadline = time.monotonic() + DEADLINE_S
        i = 0
        while len(found) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"{len(found)} answers of {count}; log:\n{self.log.read_text()}")
            answer = get(f"{self.url}?user-{i}")
            i += 1
            if answer is None:
                time.sleep(0.1)
                continue
            found.append(answer)
        return found

    def from_both_workers(self, path: str) -> list[Answer]:
        """A run of answers from two workers, all on ``path`` (waiting up to the deadline)."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            found = self.answers(40)
            if {a.path for a in found} == {path} and len({a.pid for a in found}) == 2:
                return found
            assert time.monotonic() < deadline, f"not all on {path}: {found}"
            time.sleep(0.2)

    def kill(self) -> None:
        """``stagedroll kill`` from the command line, on the store alone (no policy)."""
        kill = stagedroll_cli(
            "kill", "new-page", "--reason", "incident", "--actor", "ops", "--store", self.store,
            env=service_env(),
        )  # fmt: skip
        assert kill.returncode == 0, kill.stderr


def executable(name: str) -> str:
    """The path of ``name`` in this environment, or skip the test."""
    found = shutil.which(name, path=str(BIN))
    if found is None:
        pytest.skip(f"{name} is not installed in this environment")
    return found


@pytest.fixture(name="gunicorn")
def _gunicorn(tmp_path: Path) -> Iterator[Served]:
    """gunicorn serving the app with two preloaded workers."""
    argv = ["--preload", "--workers", "2", "--bind", "127.0.0.1:{port}", "--log-level", "warning"]
    with Served(tmp_path, [executable("gunicorn"), *argv, "app:app"]).run() as served:
        yield served


UWSGI = [
    "--master", "--workers", "2", "--enable-threads", "--http-socket", "127.0.0.1:{port}",
    "--wsgi-file", "app.py", "--callable", "app", "--need-app", "--die-on-term",
    "--disable-logging",
]  # fmt: skip
"""uWSGI's master with two workers; each test adds how the app reaches them."""


def uwsgi(tmp_path: Path, *options: str) -> contextlib.AbstractContextManager[Served]:
    """uWSGI (pyuwsgi's ``uwsgi`` command) serving the app with ``options`` added."""
    return Served(tmp_path, [executable("uwsgi"), *UWSGI, *options]).run()


class TestGunicornPreload:
    def test_a_kill_from_the_command_line_reaches_every_worker(self, gunicorn: Served) -> None:
        """Preloaded workers serve the new path; after ``stagedroll kill``, all of them the
        old one, each having read the store on its own refresh thread."""
        before = gunicorn.from_both_workers("new")
        gunicorn.kill()
        # Every worker that answers takes the old path once its refresh has read the kill;
        # then a run of answers from both workers shows nothing but the old path.
        after = gunicorn.from_both_workers("old")
        assert {a.pid for a in before} == {a.pid for a in after}  # the same workers
        assert {a.strays for a in before + after} == {0}


@pytest.mark.skipif(
    not Path("/proc/self/task").is_dir(), reason="the app counts its threads in /proc (Linux)"
)
class TestUWSGI:
    @pytest.mark.parametrize(
        "options",
        [["--lazy-apps"], ["--py-call-osafterfork"], ["--py-call-uwsgi-fork-hooks"]],
        ids=["lazy-apps", "py-call-osafterfork", "py-call-uwsgi-fork-hooks"],
    )
    def test_a_kill_from_the_command_line_reaches_every_worker(
        self, tmp_path: Path, options: list[str]
    ) -> None:
        """With the app imported in each worker (``--lazy-apps``), or preloaded in the master
        and Python's fork hooks called in each worker, ``stagedroll kill`` reaches both."""
        with uwsgi(tmp_path, *options) as served:
            before = served.from_both_workers("new")
            served.kill()
            after = served.from_both_workers("old")
            assert {a.pid for a in before} == {a.pid for a in after}  # the same workers
            assert {a.strays for a in before + after} == {0}

    def test_preloaded_without_the_fork_hooks_the_refresh_thread_is_the_masters(
        self, tmp_path: Path
    ) -> None:
        """Preloaded and forked in C with neither option: each worker holds the master's
        refresh thread, which does not run in it, so it would never read a kill (the
        setting the guide warns about)."""
        with uwsgi(tmp_path) as served:
            assert {a.strays > 0 for a in served.from_both_workers("new")} == {True}
