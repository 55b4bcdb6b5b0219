"""The process models of docs/process-models.md, run for real: gunicorn with preloaded workers.

A ``Rollouts`` made in gunicorn's master (``--preload``) is inherited by each forked
worker; the store's refresh thread is started again in each (``os.register_at_fork``), so a
kill made from the command line reaches every worker, with nothing in ``post_fork``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers import free_port

BIN = Path(sys.executable).parent
APP = """
import os

import stagedroll

ROLLOUTS = stagedroll.Rollouts.from_env()  # STAGEDROLL_POLICY, STAGEDROLL_STORE


def old_page(user):
    return "old"


@ROLLOUTS.guard("new-page", fallback=old_page, unit=lambda user: user)
def new_page(user):
    return "new"


def app(environ, start_response):
    user = environ.get("QUERY_STRING") or "anonymous"
    body = f"{os.getpid()} {new_page(user)}".encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
"""
POLICY = """
[rollouts.new-page]
stages = [{ name = "everyone", percent = 100 }]
"""
DEADLINE_S = 60.0  # how long "eventually" may take on a loaded machine before the test fails


def get(url: str) -> tuple[int, str] | None:
    """``(pid, path)`` from one request, or ``None`` while the server is not up."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            pid, path = response.read().decode().split()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
    return int(pid), path


@pytest.fixture(name="served")
def _served(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """gunicorn serving the app with two preloaded workers; its URL and environment."""
    if shutil.which("gunicorn", path=str(BIN)) is None:
        pytest.skip("gunicorn is not installed in this environment")
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "rollouts.toml").write_text(POLICY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGEDROLL_")}
    env |= {
        "STAGEDROLL_POLICY": str(tmp_path / "rollouts.toml"),
        "STAGEDROLL_STORE": f"sqlite:///{tmp_path / 'state.db'}?refresh_interval=0.2",
    }
    port = free_port()
    with (tmp_path / "gunicorn.log").open("wb") as log:
        argv = ["--preload", "--workers", "2", "--bind", f"127.0.0.1:{port}", "app:app"]
        server = subprocess.Popen(
            [str(BIN / "gunicorn"), *argv, "--log-level", "warning"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield f"http://127.0.0.1:{port}/", env
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def answers(url: str, count: int) -> list[tuple[int, str]]:
    """``count`` answers, waiting (up to the deadline) for the server to come up."""
    found: list[tuple[int, str]] = []
    deadline = time.monotonic() + DEADLINE_S
    i = 0
    while len(found) < count:
        assert time.monotonic() < deadline, f"gunicorn gave {len(found)} answers of {count}"
        answer = get(f"{url}?user-{i}")
        i += 1
        if answer is None:
            time.sleep(0.1)
            continue
        found.append(answer)
    return found


class TestGunicornPreload:
    def test_a_kill_from_the_command_line_reaches_every_worker(
        self, served: tuple[str, dict[str, str]]
    ) -> None:
        """Preloaded workers serve the new path; after ``stagedroll kill``, all of them the
        old one, each having read the store on its own refresh thread."""
        url, env = served
        before = answers(url, 40)
        assert {path for _, path in before} == {"new"}
        kill = subprocess.run(
            [str(BIN / "stagedroll"), "kill", "new-page", "--reason", "incident", "--actor", "ops"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert kill.returncode == 0, kill.stderr
        # Every worker that answers takes the old path once its refresh has read the kill;
        # then a run of answers from both workers shows nothing but the old path.
        deadline = time.monotonic() + DEADLINE_S
        while True:
            after = answers(url, 40)
            if {path for _, path in after} == {"old"} and len({pid for pid, _ in after}) >= 2:
                break
            assert time.monotonic() < deadline, f"still served after the kill: {after}"
            time.sleep(0.2)
        assert {pid for pid, _ in before} & {pid for pid, _ in after}  # the same workers
