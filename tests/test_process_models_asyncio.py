"""docs/process-models.md, asyncio: a real asyncio server with an async guard, killed from the CLI.

The service (``asyncio.start_server``, a few lines of HTTP) binds the unit of each request
and awaits a task it creates, which runs the guarded coroutine: the task sees the unit. A
kill made with ``stagedroll kill`` reaches the service on its store's refresh thread, while
the event loop keeps answering: the service holds that thread inside an ``on_change``
listener (until the test lets it go), and requests are answered meanwhile.
"""

from __future__ import annotations

import contextlib
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers import free_port, running, service_env, stagedroll_cli

SERVICE = """
import asyncio
import sys
import time
from pathlib import Path

import stagedroll

ROLLOUTS = stagedroll.Rollouts.from_env()  # STAGEDROLL_POLICY, STAGEDROLL_STORE
HERE = Path(__file__).parent


async def old_page():
    return "old"


@ROLLOUTS.guard("new-page", fallback=old_page, unit=stagedroll.current_unit)
async def new_page():
    await asyncio.sleep(0)
    return "new"


async def page():
    return f"{await new_page()} {stagedroll.current_unit()}"


async def handle(reader, writer):
    target = (await reader.readline()).split()[1].decode()
    while await reader.readline() not in (b"\\r\\n", b""):
        pass
    with stagedroll.bind(target.partition("?")[2] or "anonymous"):
        answer = await asyncio.create_task(page())  # a task of the request: it sees the unit
    body = answer.encode()
    head = f"HTTP/1.1 200 OK\\r\\nContent-Length: {len(body)}\\r\\nConnection: close\\r\\n\\r\\n"
    writer.write(head.encode() + body)
    await writer.drain()
    writer.close()
    await writer.wait_closed()


@ROLLOUTS.on_change
def hold(name, state):
    # The test's probe: on the store's refresh thread, hold the refresh that brought in the
    # kill until the test has sent its requests (or two minutes have passed).
    if str(state.status) == "killed":
        (HERE / "held").touch()
        deadline = time.monotonic() + 120
        while not (HERE / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.05)


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()


asyncio.run(main())
"""
POLICY = """
[rollouts.new-page]
stages = [{ name = "everyone", percent = 100 }]
"""
DEADLINE_S = 60.0  # how long "eventually" may take on a loaded machine before the test fails


class Service:
    """The asyncio service in a process of its own, and its URL."""

    def __init__(self, tmp_path: Path) -> None:
        (tmp_path / "service.py").write_text(SERVICE)
        (tmp_path / "rollouts.toml").write_text(POLICY)
        self.dir = tmp_path
        self.store = f"sqlite:///{tmp_path / 'state.db'}"
        self.url = f"http://127.0.0.1:{free_port()}/"
        self.log = tmp_path / "service.log"

    @contextlib.contextmanager
    def run(self) -> Iterator[Service]:
        env = service_env(
            STAGEDROLL_POLICY=str(self.dir / "rollouts.toml"),
            STAGEDROLL_STORE=f"{self.store}?refresh_interval=0.2",
        )
        port = self.url.rsplit(":", 1)[1].strip("/")
        with running([sys.executable, "service.py", port], cwd=self.dir, env=env, log=self.log):
            try:
                yield self
            finally:
                (self.dir / "release").touch()  # a held refresh thread would delay the exit

    def get(self, user: str) -> list[str]:
        """``[path, unit seen by the request's task]`` for one request (30 s at most)."""
        with urllib.request.urlopen(f"{self.url}?{user}", timeout=30) as response:
            text: str = response.read().decode()
        return text.split()

    def answers(self) -> bool:
        """Whether the service answers a request (not while it is starting)."""
        try:
            self.get("anyone")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
        return True

    def up(self) -> None:
        """Wait (up to the deadline) until the service answers."""
        deadline = time.monotonic() + DEADLINE_S
        while not self.answers():
            if time.monotonic() > deadline:
                pytest.fail(f"the service did not come up; log:\n{self.log.read_text()}")
            time.sleep(0.1)

    def wait_for(self, name: str) -> None:
        """Wait (up to the deadline) until the service has made the file ``name``."""
        deadline = time.monotonic() + DEADLINE_S
        while not (self.dir / name).exists():
            if time.monotonic() > deadline:
                pytest.fail(f"no {name!r} from the service; log:\n{self.log.read_text()}")
            time.sleep(0.05)


@pytest.fixture(name="service")
def _service(tmp_path: Path) -> Iterator[Service]:
    with Service(tmp_path).run() as service:
        service.up()
        yield service


class TestAsyncioService:
    def test_a_task_of_the_request_sees_its_unit(self, service: Service) -> None:
        """Each request's task runs the async guard with that request's unit."""
        answers = [service.get(f"user-{i}") for i in range(5)]
        assert answers == [["new", f"user-{i}"] for i in range(5)]

    def test_a_kill_reaches_the_loop_while_it_serves(self, service: Service) -> None:
        """``stagedroll kill`` is taken in on the refresh thread; while that thread is held in
        the refresh, the loop answers every request, from the old path already."""
        assert service.get("user-1") == ["new", "user-1"]
        kill = stagedroll_cli(
            "kill", "new-page", "--reason", "incident", "--actor", "ops",
            "--store", service.store, env=service_env(),
        )  # fmt: skip
        assert kill.returncode == 0, kill.stderr
        service.wait_for("held")  # the refresh thread is inside the refresh that saw the kill
        during = [service.get(f"user-{i}") for i in range(20)]
        assert during == [["old", f"user-{i}"] for i in range(20)]
        (service.dir / "release").touch()
        assert service.get("user-1") == ["old", "user-1"]
