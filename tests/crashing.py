"""A writer killed mid-flight, shared by the crash-safety tests of SQLite and PostgreSQL."""

from __future__ import annotations

import random
import signal
import subprocess
import textwrap
import time
from collections.abc import Callable

WRITES = textwrap.dedent(
    """
    rollouts = Rollouts({policy!r}, store=store)
    i = 0
    while True:
        i += 1
        try:
            rollouts.freeze("x", reason=str(i), actor="child")
        except TransitionError:
            rollouts.unfreeze("x", reason=str(i), actor="child")
        store.add_counts("x", "s", {{"calls": 1, "errors": i % 2}})
        store.add_units("x", "u", [f"unit-{{i % 50}}"])
        store.count_distinct("x", "d", [f"unit-{{i % 70}}"])
    """
)
"""A child writer's endless loop of transitions, counts and units on the rollout "x"."""


def writer_script(setup: str) -> str:
    """The script of a child writer: ``setup`` (indented text: it imports ``Rollouts`` and
    ``TransitionError`` and makes a ``store``), then :data:`WRITES`. A template for
    ``str.format`` with ``policy`` (a policy with the rollout "x"): braces doubled."""
    return textwrap.dedent(setup) + WRITES


def kill_mid_flight(
    command: list[str], version: Callable[[], int], rng: random.Random, *, deadline_s: float
) -> None:
    """Run a writer (``command``) until the stored version (``version()``) rose by 4, then
    SIGKILL it at a random moment within the next 30 ms; fail unless the signal ended it."""
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        start = version()
        deadline = time.monotonic() + deadline_s
        while version() < start + 4:
            assert child.poll() is None, child.communicate()[1].decode()
            assert time.monotonic() < deadline, "the child made no progress"
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.03))
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        _, err = child.communicate()
    assert child.returncode == -signal.SIGKILL, err.decode()
