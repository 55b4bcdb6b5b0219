"""Draw docs/figures/late-regression.svg: the evidence of the health gate over a late regression.

A canary at 5 %, users picked at random from a million (so each error is a unit's first),
the old path failing 1 % of calls. For the first 200,000 requests the new path is as good;
from then on it fails 2 % of calls. Every request goes through ``Rollouts.report`` and the
error test's ``E`` is read from ``status()`` every 250 requests, until the gate freezes the
canary. Beside it, the e-value of the test as it was before start points were added (one
start point, at the first event, with the whole budget), computed from the same first
errors by FREEZE.md's formula, until it would have frozen (the script counts them too, and
checks its counts against the gate's while the gate runs).

    .venv/bin/python docs/figures/late_regression.py [--check]

``--check`` redraws the figure and exits with 1 when it differs from the file (it is
seeded: the figure is a function of the library's code).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

import stagedroll
from stagedroll.testing import FakeClock

OUT = Path(__file__).with_name("late-regression.svg")
ONSET = 200_000
SHARE = 0.05
GRID = (1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
EVERY = 500
LIMIT = 1_000_000


def single_start_log_e(treatment: int, control: int) -> float:
    """``log E`` of one start point at the epoch's first event, all the budget (FREEZE.md)."""
    logs = []
    for r in GRID:
        rho = SHARE * r / (SHARE * r + 1 - SHARE)
        logs.append(treatment * math.log(rho / SHARE) + control * math.log((1 - rho) / (1 - SHARE)))
    top = max(logs)
    return top + math.log(sum(math.exp(v - top) for v in logs) / len(logs))


def simulate() -> tuple[list[tuple[int, float]], list[tuple[int, float]], int | None]:
    """``(requests, log10 E)`` now and before, and the request at which the gate froze."""
    policy = {"rollouts": {"checkout": {"stages": [{"name": "canary", "percent": 5}]}}}
    rollouts = stagedroll.Rollouts(policy, clock=FakeClock())
    rng = random.Random(5)
    now: list[tuple[int, float]] = []
    before: list[tuple[int, float]] = []
    frozen_at = None
    seen: set[str] = set()
    treatment = control = 0  # first errors per unit, as the gate counts them
    for request in range(1, LIMIT + 1):
        user = f"user-{rng.randrange(1_000_000)}"
        new = rollouts.enabled("checkout", user)
        rate = 0.02 if new and request > ONSET else 0.01
        failed = rng.random() < rate
        if failed and user not in seen:
            seen.add(user)
            treatment, control = treatment + new, control + (not new)
        if frozen_at is None:
            rollouts.report("checkout", user, error=failed)
        if request % EVERY:
            continue
        if frozen_at is None:
            status = rollouts.status("checkout")
            health = status.health
            counted = (health.error_events_treatment, health.error_events_control)
            assert counted == (treatment, control), (counted, treatment, control)
            now.append((request, math.log10(max(health.e_errors, 1e-300))))
            if status.status is not stagedroll.Status.RUNNING:
                frozen_at = request
        old = single_start_log_e(treatment, control)
        before.append((request, old / math.log(10)))
        if frozen_at is not None and old >= math.log(20):
            break
    return now, before, frozen_at


def draw(now: list[tuple[int, float]], before: list[tuple[int, float]], frozen: int | None) -> str:
    """The figure as SVG text."""
    width, height, left, right, top, bottom = 760, 380, 70, 20, 30, 50
    x_max = max(r for r, _ in before + now)
    y_min, y_max = -6.0, 3.0

    def x(requests: float) -> float:
        return left + (width - left - right) * requests / x_max

    def y(log10_e: float) -> float:
        value = min(max(log10_e, y_min), y_max)
        return top + (height - top - bottom) * (y_max - value) / (y_max - y_min)

    def path(points: list[tuple[int, float]]) -> str:
        steps = (
            f"{'M' if i == 0 else 'L'}{x(r):.1f},{y(v):.1f}" for i, (r, v) in enumerate(points)
        )
        return " ".join(steps)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for power in range(int(y_min), int(y_max) + 1):
        level = f"{y(power):.1f}"
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{level}" y2="{level}" stroke="#e5e5e5"/>'
        )
        out.append(
            f'<text x="{left - 8}" y="{y(power) + 4:.1f}" text-anchor="end">1e{power}</text>'
        )
    step = 50_000 if x_max > 200_000 else 20_000
    out.extend(
        f'<text x="{x(tick):.1f}" y="{height - bottom + 18}" text-anchor="middle">'
        f"{tick // 1000}k</text>"
        for tick in range(0, int(x_max) + 1, step)
    )
    out.append(
        f'<text x="{(left + width - right) / 2}" y="{height - 10}" text-anchor="middle">'
        "requests (both paths)</text>"
    )
    out.append(
        f'<text x="16" y="{top + (height - top - bottom) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 16 {top + (height - top - bottom) / 2})">E (errors)</text>'
    )
    bar = math.log10(20)
    out.append(
        f'<line x1="{left}" x2="{width - right}" y1="{y(bar):.1f}" y2="{y(bar):.1f}" '
        'stroke="#c0392b" stroke-dasharray="6 4"/>'
    )
    out.append(
        f'<text x="{width - right - 4}" y="{y(bar) - 6:.1f}" text-anchor="end" '
        'fill="#c0392b">freeze bar, E = 20</text>'
    )
    out.append(
        f'<line x1="{x(ONSET):.1f}" x2="{x(ONSET):.1f}" y1="{top}" y2="{height - bottom}" '
        'stroke="#888" stroke-dasharray="2 3"/>'
    )
    out.append(f'<text x="{x(ONSET) + 4:.1f}" y="{top + 12}">the new path starts failing 2x</text>')
    out.append(f'<path d="{path(before)}" fill="none" stroke="#999" stroke-width="1.5"/>')
    out.append(f'<path d="{path(now)}" fill="none" stroke="#1f6fb2" stroke-width="2"/>')
    legend = top + (height - top - bottom) - 40
    out.append(
        f'<line x1="{left + 10}" x2="{left + 40}" y1="{legend}" y2="{legend}" '
        'stroke="#1f6fb2" stroke-width="2"/>'
    )
    caught = f"frozen after {frozen - ONSET:,} requests" if frozen else "not frozen"
    out.append(
        f'<text x="{left + 46}" y="{legend + 4}">with start points '
        f"({caught} of the regression)</text>"
    )
    out.append(
        f'<line x1="{left + 10}" x2="{left + 40}" y1="{legend + 18}" y2="{legend + 18}" '
        'stroke="#999" stroke-width="1.5"/>'
    )
    late = before[-1][0] - ONSET
    reached = before[-1][1] >= math.log10(20)
    after = f"would freeze after {late:,}" if reached else f"not frozen within {late:,}"
    out.append(
        f'<text x="{left + 46}" y="{legend + 22}">one start point, at the first event '
        f"({after})</text>"
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the file differs")
    args = parser.parse_args(argv)
    svg = draw(*simulate())
    if args.check:
        if OUT.read_text() != svg:
            print(f"{OUT} is out of date: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(svg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
