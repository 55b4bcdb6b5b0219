"""Real backends for the store tests: the machine's Redis, a private ``redis-server``, SQLite files.

Tests read ``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``). When it cannot be reached
and ``redis-server`` is installed, the session starts a private one on a free port. When
neither works the Redis tests skip, saying why, except under ``CI=true``, where they fail.
PostgreSQL likewise: ``POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``),
else a private server (:class:`PostgresServer`), else a skip (a failure under ``CI=true``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

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


@contextlib.contextmanager
def running(
    command: list[str], *, cwd: Path, env: Mapping[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A server started in a session of its own (its output to ``log``), stopped with the
    processes it forked (:func:`stop`) whatever happens."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            yield process
        finally:
            stop(process)


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


class Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=Closable)


@contextlib.contextmanager
def closing_factory(
    kind: Callable[..., C], *args: Any, **defaults: Any
) -> Iterator[Callable[..., C]]:
    """Make objects of ``kind`` (a store class) from ``args`` and ``defaults``; close each on exit.

    A call's positional arguments replace ``args`` when it gives any, its keywords win over
    ``defaults``: ``make()``, ``make(other_url, timeout=1)``.
    """
    made: list[C] = []

    def make(*given: Any, **options: Any) -> C:
        made.append(kind(*(given or args), **(defaults | options)))
        return made[-1]

    try:
        yield make
    finally:
        for item in made:
            item.close()


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


# -- PostgreSQL ---------------------------------------------------------------------------------
# Tests read POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test); each works in a
# schema of its own. A private server (PostgresServer) serves the tests that stop one.

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_reachable(url: str) -> bool:
    """Whether a PostgreSQL answers at ``url`` within a few seconds."""
    import psycopg  # only the PostgreSQL tests need it

    try:
        with psycopg.connect(url, connect_timeout=2, autocommit=True) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.Error:
        return False


def unique_schema(label: str = "test") -> str:
    """A schema name no other test uses: ``sdtest_{label}_{random}`` (an identifier)."""
    cleaned = "".join(c if c.isalnum() else "_" for c in label.lower())[:30]
    return f"sdtest_{cleaned}_{uuid.uuid4().hex[:12]}"


def drop_schema(url: str, schema: str) -> None:
    """``DROP SCHEMA … CASCADE``, if it exists."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
        conn.execute("SET statement_timeout = '30s'")
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def postgres_unavailable(reason: str) -> None:
    """Skip the test, or fail it under ``CI=true`` (where PostgreSQL must be there)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL is required under CI=true: {reason}")
    pytest.skip(reason)


class PostgresServer:
    """A private PostgreSQL on a free port, which a test may stop and start again.

    Made with ``initdb`` (trust authentication, user ``postgres``) in a directory of
    ``tempfile.mkdtemp()``, and run with ``pg_ctl``, from ``/usr/lib/postgresql/*/bin`` or the
    ``PATH``. As root, both run as the user ``postgres`` (``runuser``), which owns the
    directory (pytest's ``tmp_path`` is not readable by it). The data outlive a stop: a
    server started again has what it had. ``settings`` are more server settings, given as
    ``-c name=value`` after the defaults (so they win over them; no spaces in a value), for
    example ``{"shared_preload_libraries": "pg_stat_statements"}`` when
    :meth:`has_library` says it is installed.
    """

    def __init__(self, *, settings: Mapping[str, str] | None = None) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        pg_ctl = str(found[-1]) if found else shutil.which("pg_ctl")
        if pg_ctl is None:
            raise RuntimeError("PostgreSQL's pg_ctl is not installed")
        self.bin = Path(pg_ctl).parent
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres and shutil.which("runuser") is None:
            raise RuntimeError("running as root, and runuser is missing")
        self.directory = Path(tempfile.mkdtemp(prefix="stagedroll-pg-"))
        if self.as_postgres:
            shutil.chown(self.directory, "postgres")
        self.data = self.directory / "data"
        self.port = free_port()
        self.settings = dict(settings or {})
        self.running = False
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--no-sync")  # fmt: skip

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def has_library(self, name: str) -> bool:
        """Whether the server's library directory holds the module ``name``.

        That is what ``shared_preload_libraries`` loads (``pg_stat_statements``, from the
        contrib package): a server told to preload a module that is missing does not start.
        """
        pg_config = self.bin / "pg_config"
        directory = self.bin.parent / "lib"
        if pg_config.exists():
            done = subprocess.run([str(pg_config), "--pkglibdir"], capture_output=True,
                                  text=True, check=False, timeout=30)  # fmt: skip
            if done.returncode == 0 and done.stdout.strip():
                directory = Path(done.stdout.strip())
        return (directory / f"{name}.so").exists()

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed: {done.stderr.strip()[-500:]}")

    def start(self) -> None:
        """Start the server on its port, and wait until it answers."""
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off "
                   f"-c unix_socket_directories={self.directory}")  # fmt: skip
        for name, value in self.settings.items():
            options += f" -c {name}={value}"
        log = str(self.directory / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", "start")
        self.running = True

    def stop(self) -> None:
        """Stop the server at once (immediate mode: its sessions end as in a crash)."""
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            self.running = False

    def remove(self) -> None:
        """Stop the server and delete its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
