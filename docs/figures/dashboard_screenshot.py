"""Draw docs/images/dashboard.png and dashboard-detail.png: the dashboard of a scripted run.

Run ``.venv/bin/python docs/figures/dashboard_screenshot.py`` (needs Debian's ``chromium``
and ``playwright`` from the dev group; Playwright downloads no browser). It plays three
rollouts on a temporary SQLite store with a simulated clock: ``new-checkout``, whose new
path fails three times as often as the old one, until the health gate freezes it;
``new-search``, advanced to its second stage and healthy; ``legacy-ranking``, killed by an
operator. Then it serves the dashboard, opens it in Chromium, and saves the two pictures.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import shutil
import sys
import tempfile
from pathlib import Path

import structlog

from stagedroll import Rollouts, Status
from stagedroll.dashboard import Dashboard
from stagedroll.testing import FakeClock

IMAGES = Path(__file__).resolve().parent.parent / "images"
STAGES = [
    {"name": "canary", "percent": 5, "bake": "30m"},
    {"name": "quarter", "percent": 25, "bake": "2h"},
    {"name": "half", "percent": 50},
    {"name": "all", "percent": 100},
]
POLICY = {
    "rollouts": {
        "new-checkout": {"stages": STAGES, "health": {"min_events": 20}},
        "new-search": {"stages": STAGES},
        "legacy-ranking": {"stages": STAGES},
    }
}


def play(rollouts: Rollouts, dashboard: Dashboard, clock: FakeClock) -> None:
    """The scripted run: traffic every simulated minute, the dashboard sampling it."""
    rng = random.Random(11)
    rollouts.advance("new-search", reason="canary clean for a day", actor="alice")
    rollouts.kill("legacy-ranking", reason="ranking timeouts in eu-west", actor="bob")

    def old(user: str) -> str:
        if rng.random() < 0.015:
            raise TimeoutError("payment provider timed out")
        return "old"

    @rollouts.guard("new-checkout", fallback=old, unit=lambda user: user)
    def new(user: str) -> str:
        if rng.random() < 0.035:
            raise KeyError("discount_tier")
        return "new"

    @rollouts.guard("new-search", fallback=lambda user: "old", unit=lambda user: user)
    def search(user: str) -> str:
        return "new"

    user = 0
    for _ in range(600):
        for _ in range(300):
            user += 1
            with contextlib.suppress(TimeoutError):  # the old path's own errors are the caller's
                new(f"user-{user}")
            search(f"user-{user}")
        clock.advance(60)
        rollouts.tick()  # pools the evidence; the gate freezes when it must
        dashboard.refresh()
        if rollouts.status("new-checkout").status is not Status.RUNNING:
            break
    for _ in range(5):  # five quiet minutes: the operator has stopped the traffic
        clock.advance(60)
        dashboard.refresh()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=IMAGES, help="the folder for the PNGs")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium")
    if chromium is None:
        print("no chromium on PATH (apt-get install -y chromium)", file=sys.stderr)
        return 1
    from playwright.sync_api import expect, sync_playwright  # noqa: PLC0415 - a dev tool

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))

    clock = FakeClock(start=1_767_261_600.0)  # 2026-01-01 10:00 UTC
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'state.db'}?refresh_interval=3600"
        with Rollouts(POLICY, store=url, clock=clock) as rollouts:
            dashboard = Dashboard(rollouts, port=0, refresh_interval=3600, clock=clock)
            with dashboard:
                play(rollouts, dashboard, clock)
                dashboard.start()
                args.out.mkdir(parents=True, exist_ok=True)
                with sync_playwright() as playwright:
                    browser = playwright.chromium.launch(executable_path=chromium, headless=True)
                    page = browser.new_page(viewport={"width": 1200, "height": 400})
                    page.goto(dashboard.url)
                    expect(page.locator("tr.rollout")).to_have_count(3)
                    page.screenshot(path=str(args.out / "dashboard.png"), full_page=True)
                    page.goto(dashboard.url + "#/rollout/new-checkout")
                    expect(page.locator("#chart svg path.evidence")).to_have_count(1)
                    expect(page.locator("#history tbody tr")).to_have_count(2)
                    page.screenshot(path=str(args.out / "dashboard-detail.png"), full_page=True)
                    browser.close()
    print(f"wrote {args.out / 'dashboard.png'} and {args.out / 'dashboard-detail.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
