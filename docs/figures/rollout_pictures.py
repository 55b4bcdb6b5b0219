"""Draw docs/images/frozen-rollout.svg and docs/images/evidence.svg from a real rollout.

A guarded ``checkout`` runs through the public API on a fake clock, 4 requests a second
from 50,000 users picked at random: the old path fails 1 % of calls. The new path is as
good at first, and the health gate advances it from the canary (5 %) to half (50 %) when
the bake time has passed. Then a bad configuration reaches the new path, which from then
on fails 3 % of calls: the gate freezes the rollout, and rolls it back when the evidence
reaches the rollback bar. ``status()`` is sampled every 250 requests for the evidence
curve. The pictures are :func:`stagedroll.plots.timeline` and
:func:`stagedroll.plots.evidence` of that history.

    .venv/bin/python docs/figures/rollout_pictures.py [--check]

``--check`` redraws both and exits with 1 when either differs from its file (the run is
seeded, the clock fake and the SVG free of dates: the pictures are a function of the
library's code and matplotlib's version).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import structlog

import stagedroll
from stagedroll import plots
from stagedroll.testing import FakeClock

IMAGES = Path(__file__).resolve().parent.parent / "images"
TIMELINE = IMAGES / "frozen-rollout.svg"
EVIDENCE = IMAGES / "evidence.svg"
RATE = 4  # requests a second
USERS = 50_000
ONSET = 2 * 3600  # seconds after the start when the new path starts failing 3x
EVERY = 250  # requests between two samples of status()
LIMIT = 12 * 3600 * RATE
POLICY = {
    "rollouts": {
        "checkout": {
            "advance": "auto",
            "stages": [
                {"name": "canary", "percent": 5, "bake": "1h", "min_units": 100},
                {"name": "half", "percent": 50, "bake": "2h"},
                {"name": "all", "percent": 100},
            ],
        }
    }
}


class Failed(Exception):
    """A simulated failure of a request."""


def run() -> tuple[list[stagedroll.Transition], list[tuple[float, stagedroll.RolloutStatus]],
                   stagedroll.RolloutStatus, float]:  # fmt: skip
    """The rollout's history, the sampled statuses, the last status, and the end time."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    clock = FakeClock()
    start = clock()
    rollouts = stagedroll.Rollouts(POLICY, clock=clock)
    rng = random.Random(11)

    def old_path(user: str) -> str:
        if rng.random() < 0.01:
            raise Failed
        return "old"

    @rollouts.guard("checkout", fallback=old_path, unit=lambda user: user)
    def new_path(user: str) -> str:
        rate = 0.03 if clock() - start > ONSET else 0.01
        if rng.random() < rate:
            raise Failed
        return "new"

    samples = []
    status = rollouts.status("checkout")
    for request in range(1, LIMIT + 1):
        clock.advance(1 / RATE)
        with contextlib.suppress(Failed):  # both paths failed: the caller saw an error
            new_path(f"user-{rng.randrange(USERS)}")
        if request % EVERY == 0:
            status = rollouts.status("checkout")
            samples.append((clock(), status))
            if status.status is stagedroll.Status.ROLLED_BACK:
                break
    clock.advance("30m")
    return rollouts.history("checkout"), samples, status, clock()


def onset(figure: Any) -> None:
    """Mark when the bad configuration reached the new path, on the evidence's panels."""
    upper, lower = figure.axes
    at = ONSET / 3600  # the axis is in hours since the start
    assert "(hours)" in lower.get_xlabel()
    for axes in (upper, lower):
        axes.axvline(at, color="#555555", linewidth=1, linestyle=(0, (2, 2)))
    upper.annotate("the new path starts failing 3x as often", xy=(at, 0.9),
                   xycoords=("data", "axes fraction"), xytext=(-4, 0), textcoords="offset points",
                   ha="right", fontsize=8, color="#555555")  # fmt: skip


def pictures() -> tuple[Any, Any]:
    """The timeline and the evidence of the run, as matplotlib figures."""
    history, samples, status, end = run()
    title = "checkout: frozen, then rolled back, by the health gate"
    timeline = plots.timeline(history, status.stages, until=end, title=title)
    evidence = plots.evidence(history, samples=samples, until=end)
    onset(evidence)
    return timeline, evidence


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when a file differs")
    parser.add_argument("--png", metavar="DIR", help="also write PNG copies into DIR, to look at")
    args = parser.parse_args(argv)
    figures = pictures()
    with tempfile.TemporaryDirectory() as scratch:
        drawn = [plots.save(f, Path(scratch) / out.name)
                 for f, out in zip(figures, (TIMELINE, EVIDENCE), strict=True)]  # fmt: skip
        stale = [out for out, new in zip((TIMELINE, EVIDENCE), drawn, strict=True)
                 if not out.exists() or out.read_bytes() != new.read_bytes()]  # fmt: skip
        if args.check:
            for out in stale:
                print(f"{out} is out of date: run {Path(__file__).name}", file=sys.stderr)
            return 1 if stale else 0
        IMAGES.mkdir(exist_ok=True)
        for out, new in zip((TIMELINE, EVIDENCE), drawn, strict=True):
            out.write_bytes(new.read_bytes())
    if args.png:
        for figure, out in zip(figures, (TIMELINE, EVIDENCE), strict=True):
            plots.save(figure, Path(args.png) / out.with_suffix(".png").name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
