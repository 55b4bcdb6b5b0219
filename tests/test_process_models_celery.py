"""docs/process-models.md, Celery: a real prefork worker over Redis, killed from the CLI.

``celery worker --pool prefork --concurrency 2`` imports the app module, which makes its
``Rollouts`` at import, and forks two children that inherit it; each child's store thread
is started again by the store's own fork hook, with nothing in ``worker_process_init``. The
unit travels in the task's headers (``stagedroll.integrations.celery``) from this process
to whichever child runs the task. The broker and the results are the tests' Redis
(``REDIS_URL``, or a private ``redis-server``), under a key prefix of this test alone.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery  # type: ignore[import-untyped]  # no stubs or py.typed

import stagedroll
from servers import running, service_env, stagedroll_cli
from stagedroll.integrations import celery as stagedroll_celery

BIN = Path(sys.executable).parent
TASKS = """
import os
import time

from celery import Celery

import stagedroll
from stagedroll.integrations import celery as stagedroll_celery

ROLLOUTS = stagedroll.Rollouts.from_env()  # STAGEDROLL_POLICY, STAGEDROLL_STORE
stagedroll_celery.connect()  # the unit of the sender, bound around each task

app = Celery("tasks", broker=os.environ["BROKER_URL"], backend=os.environ["BROKER_URL"])
app.conf.update(
    broker_transport_options={"global_keyprefix": os.environ["KEY_PREFIX"]},
    result_backend_transport_options={"global_keyprefix": os.environ["KEY_PREFIX"]},
    task_default_queue=os.environ["QUEUE"],
    worker_enable_remote_control=False,
)


def old_price():
    return "old"


@ROLLOUTS.guard("new-pricing", fallback=old_price, unit=stagedroll.current_unit)
def new_price():
    return "new"


@app.task(name="price")
def price(pause):
    time.sleep(pause)  # long enough for the other child to take the next task
    return [os.getpid(), new_price(), stagedroll.current_unit()]
"""
POLICY = """
[rollouts.new-pricing]
stages = [{ name = "everyone", percent = 100 }]
"""
DEADLINE_S = 60.0  # how long "eventually" may take on a loaded machine before the test fails


class Worker:
    """A prefork worker with two children, and a Celery app of this process that sends to it."""

    def __init__(self, tmp_path: Path, redis_url: str, prefix: str) -> None:
        (tmp_path / "tasks.py").write_text(TASKS)
        (tmp_path / "rollouts.toml").write_text(POLICY)
        self.store = f"sqlite:///{tmp_path / 'state.db'}"
        settings = {"BROKER_URL": redis_url, "KEY_PREFIX": f"{prefix}:", "QUEUE": prefix}
        self.env = service_env(
            **settings,
            PYTHONPATH=str(tmp_path),
            STAGEDROLL_POLICY=str(tmp_path / "rollouts.toml"),
            STAGEDROLL_STORE=f"{self.store}?refresh_interval=0.2",
        )
        self.log = tmp_path / "celery.log"
        self.cwd = tmp_path
        self.sender = Celery("sender", broker=redis_url, backend=redis_url)
        self.sender.conf.update(
            broker_transport_options={"global_keyprefix": settings["KEY_PREFIX"]},
            result_backend_transport_options={"global_keyprefix": settings["KEY_PREFIX"]},
            task_default_queue=prefix,
        )

    @contextlib.contextmanager
    def run(self) -> Iterator[Worker]:
        """Start the worker, yield, and stop it (with its children) whatever happened."""
        argv = ["-A", "tasks", "worker", "--pool", "prefork", "--concurrency", "2"]
        quiet = ["--loglevel", "warning", "--without-gossip", "--without-mingle"]
        command = [str(BIN / "celery"), *argv, *quiet, "--without-heartbeat"]
        try:
            with running(command, cwd=self.cwd, env=self.env, log=self.log):
                yield self
        finally:
            self.sender.close()

    def batch(self, unit: str, count: int = 6) -> list[list[Any]]:
        """``count`` tasks sent at once with ``unit`` bound: ``[pid, path, unit seen]`` each."""
        with stagedroll.bind(unit):
            results = [self.sender.send_task("price", args=(0.2,)) for _ in range(count)]
        try:
            return [result.get(timeout=DEADLINE_S) for result in results]
        except Exception as exc:  # the worker's log says why it did not answer
            pytest.fail(f"no result ({exc!r}); log:\n{self.log.read_text()}")

    def from_both_children(self, unit: str, path: str) -> list[list[Any]]:
        """Batches until one is all on ``path`` and run by both children (up to the deadline)."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            found = self.batch(unit)
            if {p for _, p, _ in found} == {path} and len({pid for pid, _, _ in found}) == 2:
                return found
            assert time.monotonic() < deadline, f"not all on {path}: {found}"

    def kill(self) -> None:
        """``stagedroll kill`` from the command line, on the store alone (no policy)."""
        kill = stagedroll_cli(
            "kill", "new-pricing", "--reason", "incident", "--actor", "ops",
            "--store", self.store, env=service_env(),
        )  # fmt: skip
        assert kill.returncode == 0, kill.stderr


@pytest.fixture(name="connected")
def _connected() -> Iterator[None]:
    """The integration's signals in this process (the sender), for this test alone."""
    stagedroll_celery.connect()
    yield
    stagedroll_celery.disconnect()


@pytest.fixture(name="worker")
def _worker(tmp_path: Path, redis_url: str, redis_prefix: str, connected: None) -> Iterator[Worker]:
    with Worker(tmp_path, redis_url, redis_prefix).run() as worker:
        yield worker


class TestPrefork:
    def test_a_kill_from_the_command_line_reaches_both_children(self, worker: Worker) -> None:
        """Both children run the task on the new path, with the sender's unit; after
        ``stagedroll kill``, both on the old one, each having read the store itself."""
        before = worker.from_both_children("user-3", "new")
        assert {unit for _, _, unit in before} == {"user-3"}  # it travelled to each child
        worker.kill()
        after = worker.from_both_children("user-3", "old")
        assert {pid for pid, _, _ in before} == {pid for pid, _, _ in after}  # the same children
