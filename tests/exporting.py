"""A scripted rollout and a race of calls, shared by the exporters' tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from stagedroll import Rollouts, Status, TransitionError


def scripted(rollouts: Rollouts, name: str) -> None:
    """Guarded calls on both arms, errors on both paths, until the gate freezes the rollout."""

    def old(i: int) -> int:
        if i % 7 == 0:
            raise LookupError("old path down")
        return i

    @rollouts.guard(name, fallback=old, unit=lambda i: f"user-{i}")
    def new(i: int) -> int:
        if i % 2 == 0:
            raise ValueError("new path down")
        return i

    for i in range(1, 400):
        with contextlib.suppress(LookupError):
            new(i)
        if rollouts[name].status(fresh=False).status is Status.FROZEN:
            break


class PolicyFile:
    """A policy file of rollouts with two stages (half, all) and the health gate, which a
    :class:`~stagedroll.Rollouts` reloads every hundredth of a second."""

    INTERVAL = 0.01

    def __init__(self, path: Path, *names: str) -> None:
        self.path = path
        self._write(names)

    def load(self) -> Rollouts:
        """The rollouts of the file, reloaded when it changes."""
        return Rollouts.from_file(self.path, reload_interval=self.INTERVAL)

    def keep(self, rollouts: Rollouts, *names: str) -> None:
        """Rewrite the file with ``names`` only, and wait until ``rollouts`` reloaded it."""
        self._write(names)
        deadline = time.monotonic() + 10
        while sorted(rollouts) != sorted(names):
            assert time.monotonic() < deadline, f"not reloaded: {sorted(rollouts)}"
            time.sleep(self.INTERVAL)
            rollouts.tick()  # a call that looks at the file

    def _write(self, names: tuple[str, ...]) -> None:
        text = "".join(
            f'[rollouts."{name}"]\n'
            'stages = [{name = "half", percent = 50}, {name = "all", percent = 100}]\n'
            for name in names
        )
        before = self.path.stat().st_mtime_ns if self.path.exists() else 0
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(text)
        os.replace(temporary, self.path)  # atomic, as the docs ask
        if self.path.stat().st_mtime_ns == before:  # a coarse file system: make it move
            os.utime(self.path, ns=(before + 1_000_000, before + 1_000_000))


def race(rollouts: Rollouts, name: str, read: Callable[[], float], *, rounds: int) -> None:
    """Four threads of 3,000 guarded calls each and one of ``rounds`` advances and rollbacks,
    while this thread reads the total of calls with ``read`` (at least five times): every
    read succeeds, the total never goes down, and no call raises."""
    guarded = rollouts.guard(name, fallback=lambda i: i, unit=lambda i: f"user-{i}")(lambda i: i)
    failed: list[BaseException] = []

    def call(offset: int) -> None:
        try:
            for i in range(3000):
                guarded(offset + i)
        except BaseException as exc:  # pragma: no cover - reported below
            failed.append(exc)

    def steer() -> None:
        for _ in range(rounds):
            for action in (rollouts.advance, rollouts.rollback):
                with contextlib.suppress(TransitionError):
                    action(name, actor="racer")

    threads = [threading.Thread(target=call, args=(k * 10_000,)) for k in range(4)]
    threads.append(threading.Thread(target=steer))
    for t in threads:
        t.start()
    last, reads = 0.0, 0
    while any(t.is_alive() for t in threads) or reads < 5:
        now = read()
        assert now >= last
        last, reads = now, reads + 1
    for t in threads:
        t.join()
    assert failed == []


def import_without(dependency: str, exporter: str, cwd: Path) -> str:
    """What importing ``exporter`` prints, in a fresh interpreter where ``dependency`` is
    missing: the :class:`~stagedroll.exceptions.MissingExtraError`'s message."""
    code = (
        f"import sys; sys.modules[{dependency!r}] = None\n"
        "from stagedroll.exceptions import MissingExtraError\n"
        f"try:\n    import {exporter}\n"
        "except MissingExtraError as exc:\n    print(exc)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=cwd
    ).stdout
