"""A simulated service under two staged rollouts, watched by the health gate.

Synthetic users (a few heavy, most light) call two guarded functions through the real
library, on a simulated clock of 40 requests per second:

- ``new-search`` is healthy (the new path fails as often as the old one, 1 %): it advances
  by itself, stage after stage, each time its bake time has passed;
- ``new-checkout`` fails 3 times as often as the old path: the health gate freezes it, then
  rolls it back, while every caller still gets an answer (the old path takes over).

The timeline shows each transition as it happens, the first exception of each new path
(as stagedroll logs it, ``rollout.new_path_error``), and every simulated hour the state of
both rollouts: stage and share, errors and calls per arm, the e-value ``E`` and what comes
next. An hourly row whose rollout changed in nothing but its counts since the row before
is left out; the last hour shows every rollout. With matplotlib (``stagedroll[plot]``) the
demo also draws both rollouts' timelines into ``demo-timeline.png`` (``--timeline FILE``),
in the current directory, and says so on its last line.

    .venv/bin/python examples/service.py        (or: make demo)
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from typing import Any

import structlog

from stagedroll import MemoryStore, Rollouts, TransitionEvent, plots
from stagedroll.exceptions import MissingExtraError

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


class Failed(Exception):
    """A simulated failure of a request."""


def stamp(seconds: float) -> str:
    elapsed = int(seconds - START)
    return f"{elapsed // 3600:02d}:{elapsed % 3600 // 60:02d}"


ROW = "{:<6} {:<13} {:<7} {:>5} {:<11} {:>13} {:>13} {:>9}  {}"
HEADER = ROW.format("time", "rollout", "stage", "share", "status", "old err/calls",
                    "new err/calls", "E errors", "next")  # fmt: skip


def timeline(clock: Clock) -> structlog.typing.Processor:
    """A structlog processor that shows an event as one timeline line, without traceback."""

    def show(_: object, __: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
        if "error_type" in event:  # rollout.new_path_error
            what = f"{event['error_type']}: {event['error']} (at most one a minute per type)"
        else:
            what = ", ".join(f"{key} {value}" for key, value in event.items()
                             if key not in ("event", "logger", "rollout", "exc_info"))  # fmt: skip
        print(f"{stamp(clock.now)}  {event.get('rollout', ''):<13} logged {event['event']}: {what}")
        raise structlog.DropEvent

    return show


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=int, default=HOURS, help="simulated hours (default 12)")
    parser.add_argument("--timeline", default="demo-timeline.png", metavar="FILE",
                        help="the PNG of both timelines (default demo-timeline.png)")  # fmt: skip
    args = parser.parse_args()
    hours = args.hours
    rng = random.Random(SEED)
    clock = Clock()
    # stagedroll's error events (the new paths' exceptions) as timeline lines; no info ones.
    structlog.configure(
        processors=[timeline(clock)],
        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
    )

    def on_transition(event: TransitionEvent) -> None:
        who = "auto" if event.automatic else event.actor
        print(f"{stamp(event.at)}  {event.rollout:<13} {event.action.value:>9} "
              f"{event.from_stage_name or '0 %'} -> {event.to_stage_name or '0 %'} "
              f"[{event.to_status}] "
              f"({who}: {event.reason})")  # fmt: skip

    rollouts = Rollouts(POLICY, store=MemoryStore(), clock=clock, on_transition=on_transition)
    failure_rate = {"new-search": OLD_ERROR_RATE, "new-checkout": 3 * OLD_ERROR_RATE}

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
    print(HEADER)
    shown: dict[str, tuple[object, ...]] = {}  # each rollout's last row, but for its counts
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
        for name in POLICY["rollouts"]:
            status = rollouts.status(name)
            e_errors = f"{status.health.e_errors:.3g}"
            row = (status.stage_name or "0 %", f"{status.percent:g} %", str(status.status),
                   e_errors, status.waiting_for)  # fmt: skip
            if row == shown.get(name) and hour < hours - 1:
                continue  # nothing but the counts changed: left out
            shown[name] = row
            old, new = status.control, status.treatment
            print(ROW.format(stamp(clock.now), name, *row[:3], f"{old.errors}/{old.calls}",
                             f"{new.errors}/{new.calls}", *row[3:]))  # fmt: skip
    seconds = time.perf_counter() - started
    print(f"\n{answered + failed:,} requests in {seconds:.1f} s of real time; "
          f"{failed:,} answered with an error (the old path's own failures)")  # fmt: skip
    for name in POLICY["rollouts"]:
        print(f"\nhistory of {name} (newest first):")
        for entry in rollouts.history(name):
            why = f": {entry.reason}" if entry.reason else ""
            print(f"  {stamp(entry.at)} {entry.action.value:>9} by {entry.actor}{why}")
    draw(rollouts, clock, args.timeline)


def draw(rollouts: Rollouts, clock: Clock, path: str) -> None:
    """Both rollouts' timelines as a PNG, when matplotlib is there (stagedroll[plot])."""
    history = [entry for name in POLICY["rollouts"] for entry in rollouts.history(name)]
    stages = {name: rollouts.status(name).stages for name in POLICY["rollouts"]}
    try:
        figure = plots.timeline(history, stages, until=clock.now)
    except MissingExtraError:
        print("\ntimeline: not drawn (pip install 'stagedroll[plot]' to draw it as a PNG)")
        return
    print(f"\ntimeline: {plots.save(figure, path)} (each rollout's stage over time, "
          "with every transition marked)")  # fmt: skip


if __name__ == "__main__":
    main()
