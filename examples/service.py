"""A simulated service under two staged rollouts, watched by the health gate.

Synthetic users (a few heavy, most light) call two guarded functions through the real
library, on a simulated clock of 40 requests per second:

- ``new-search`` is healthy (the new path fails as often as the old one, 1 %): it advances
  by itself, stage after stage, each time its bake time has passed;
- ``new-checkout`` fails 3 times as often as the old path: the health gate freezes it, then
  rolls it back, while every caller still gets an answer (the old path takes over).

The timeline shows each transition as it happens, and every simulated hour the state of
both rollouts: stage and share, calls and errors per arm, and the e-value ``E``.

    .venv/bin/python examples/service.py        (or: make demo)
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from typing import Any

import structlog

from stagedroll import MemoryStore, Rollouts, TransitionEvent

SEED = 7
USERS = 20_000
RATE = 40  # requests per simulated second
HOURS = 12
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z
OLD_ERROR_RATE = 0.01

POLICY: dict[str, Any] = {
    "rollouts": {
        name: {
            "advance": "auto",
            "stages": [
                {"name": "canary", "percent": 1, "bake": "1h", "min_units": 50},
                {"name": "early", "percent": 5, "bake": "2h", "min_units": 200},
                {"name": "half", "percent": 50, "bake": "2h"},
                {"name": "all", "percent": 100},
            ],
        }
        for name in ("new-search", "new-checkout")
    }
}


class Clock:
    """The simulated time: the library reads it for bake times and history entries."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def stamp(seconds: float) -> str:
    elapsed = int(seconds - START)
    return f"{elapsed // 3600:02d}:{elapsed % 3600 // 60:02d}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=int, default=HOURS, help="simulated hours (default 12)")
    hours = parser.parse_args().hours
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    rng = random.Random(SEED)
    clock = Clock()

    def on_transition(event: TransitionEvent) -> None:
        who = "auto" if event.automatic else event.actor
        print(f"{stamp(event.at)}  {event.rollout:<13} {event.action.value:>9} "
              f"{event.from_stage_name or '0 %'} -> {event.to_stage_name or '0 %'} "
              f"[{event.to_status}] "
              f"({who}: {event.reason})")  # fmt: skip

    rollouts = Rollouts(POLICY, store=MemoryStore(), clock=clock, on_transition=on_transition)
    failure_rate = {"new-search": OLD_ERROR_RATE, "new-checkout": 3 * OLD_ERROR_RATE}

    class Failed(Exception):
        """A simulated failure of a request."""

    def old_path(user: str, name: str) -> str:
        if rng.random() < OLD_ERROR_RATE:
            raise Failed(name)
        return "old"

    guarded = {}
    for name in POLICY["rollouts"]:
        rate = failure_rate[name]

        def new_path(user: str, name: str, rate: float = rate) -> str:
            if rng.random() < rate:
                raise Failed(name)
            return "new"

        guarded[name] = rollouts.guard(name, fallback=old_path, unit=lambda user, name: user)(
            new_path
        )

    # Request volume per user: log-normal, so a few users make much of the traffic.
    users = [f"user-{i}" for i in range(USERS)]
    weights = [rng.lognormvariate(0.0, 1.5) for _ in users]
    answered = failed = 0

    print(f"{USERS:,} users, {RATE} requests/s, {hours} simulated hours; the old path fails "
          f"{OLD_ERROR_RATE:.0%}; new-checkout's new path {3 * OLD_ERROR_RATE:.0%}\n")  # fmt: skip
    started = time.perf_counter()
    for hour in range(hours):
        for _ in range(3600 * RATE // 256):
            for user in rng.choices(users, weights, k=256):
                clock.now += 1 / RATE
                name = "new-search" if rng.random() < 0.5 else "new-checkout"
                try:
                    guarded[name](user, name)
                    answered += 1
                except Failed:
                    failed += 1  # the old path failed too: the user saw an error
        print(f"{stamp(clock.now)}  --- after hour {hour + 1}")
        for name in POLICY["rollouts"]:
            status = rollouts.status(name)
            health = status.health
            print(f"       {name:<13} {status.stage_name or '0 %':<7} {status.percent:>5g} % "
                  f"{status.status!s:<11} control {status.control.errors:>4}/"
                  f"{status.control.calls:<6} new {status.treatment.errors:>4}/"
                  f"{status.treatment.calls:<6} E errors {health.e_errors:<9.3g} "
                  f"next: {status.waiting_for}")  # fmt: skip
    seconds = time.perf_counter() - started
    print(f"\n{answered + failed:,} requests in {seconds:.1f} s of real time; "
          f"{failed:,} answered with an error (the old path's own failures)")  # fmt: skip
    for name in POLICY["rollouts"]:
        print(f"\nhistory of {name} (newest first):")
        for entry in rollouts.history(name):
            why = f": {entry.reason}" if entry.reason else ""
            print(f"  {stamp(entry.at)} {entry.action.value:>9} by {entry.actor}{why}")


if __name__ == "__main__":
    main()
