"""Real backends for the store tests: the machine's Redis, a private ``redis-server``, SQLite files.

Tests read ``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``). When it cannot be reached
and ``redis-server`` is installed, the session starts a private one on a free port. When
neither works the Redis tests skip, saying why, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import pytest
import redis

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(**values: str) -> dict[str, str]:
    """This process's environment without its ``STAGEDROLL_*`` variables, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGEDROLL_")}
    return env | values


def stagedroll_cli(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m stagedroll ARGS`` in a process of its own, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "stagedroll", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """End a server started with ``start_new_session=True``, and the processes it forked.

    SIGTERM first, which the servers take as a shutdown; when the server has not exited
    within ``timeout`` seconds, SIGKILL to its process group (its workers too).
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # not reaped yet: the group is still its own
        process.wait()


def reachable(url: str) -> bool:
    """Whether a Redis answers PING at ``url`` within a second."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


def unique_prefix(label: str = "test") -> str:
    """A key prefix no other test uses: ``stagedroll-test:{label}:{random}``."""
    return f"stagedroll-test:{label}:{uuid.uuid4().hex[:12]}"


class RedisServer:
    """A private ``redis-server`` on a free port, which a test may stop and start again.

    No persistence: a restarted server is empty, like a Redis that lost its data.
    """

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait (up to 10 s) until it answers."""
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [self.binary, *args, "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not reachable(self.url):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        """Kill the server (SIGKILL: an outage, not a clean shutdown) and wait for it."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def redis_unavailable(reason: str) -> None:
    """Skip the test, or fail it under ``CI=true`` (where Redis must be there)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"Redis is required under CI=true: {reason}")
    pytest.skip(reason)
