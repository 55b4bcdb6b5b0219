"""The dashboard in a real browser: Playwright driving Debian's Chromium (no browser download).

Chromium comes from the system (``apt-get install -y chromium``; ``.ci/run`` installs it).
Without it these tests skip, saying why, except under ``CI=true``, where they fail. Each
test keeps a screenshot under ``build/artifacts/`` (gitignored), which CI keeps.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dashboards import POLICY
from stagedroll import Action, Rollouts, RolloutState, SQLiteStore, Status, Transition
from stagedroll.dashboard import Dashboard

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

SCRIPT = Path(sys.executable).with_name("stagedroll")
ARTIFACTS = Path(__file__).resolve().parents[1] / "build" / "artifacts"
WAIT_MS = 20_000  # how long to wait for the page to show a change before failing
HOSTILE = '<img src=x onerror="window.pwned=1">'


def unavailable(reason: str) -> None:
    """Skip, or fail under ``CI=true`` (where the browser tests must run)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"the browser tests must run under CI=true: {reason}")
    pytest.skip(reason)


@pytest.fixture(name="browser", scope="module")
def _browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright (which downloads no browser)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        unavailable("no chromium on PATH (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        unavailable(f"playwright is not installed ({exc}): pip install --group dev")
    assert chromium is not None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(name="page")
def _page(browser: Browser) -> Iterator[Page]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        page.close()
    assert errors == []  # no script error in the page


@pytest.fixture(name="url")
def _url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture(name="dashboard")
def _dashboard(url: str) -> Iterator[Dashboard]:
    """A dashboard of a service's rollouts on a SQLite file, with outcomes on both arms."""
    with Rollouts(POLICY, store=url) as rollouts:
        for i in range(300):
            rollouts.report("new-checkout", f"user-{i}", error=i % 9 == 0, latency_s=0.01)
        with Dashboard(rollouts, port=0, refresh_interval=0.2).start() as dashboard:
            yield dashboard


def keep(page: Page, tmp_path: Path, name: str) -> Path:
    """Screenshot the page into ``tmp_path`` and copy it to ``build/artifacts/``."""
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / name)
    return shot


def freeze_by_cli(url: str, name: str, actor: str) -> None:
    """Freeze ``name`` from another process: the ``stagedroll`` command."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGEDROLL_")}
    run = subprocess.run(
        [str(SCRIPT), "freeze", name, "--reason", "checkout errors", "--actor", actor,
         "--store", url, "--json"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["to_status"] == "frozen"


class TestLivePage:
    def test_the_list_follows_a_freeze_made_by_another_process(
        self, page: Page, dashboard: Dashboard, url: str, tmp_path: Path
    ) -> None:
        """The list shows each rollout, and a freeze by the CLI appears without a reload."""
        from playwright.sync_api import expect

        page.goto(dashboard.url)
        search = page.locator("tr.rollout", has_text="new-search")
        expect(search.locator("td.state")).to_have_text("running", timeout=WAIT_MS)
        checkout = page.locator("tr.rollout", has_text="new-checkout")
        expect(checkout.locator("td").nth(4)).to_have_text("10 %")
        expect(checkout.locator("td").nth(8)).to_have_text("ok")
        page.evaluate("window.loadedOnce = true")  # gone if the page reloads
        freeze_by_cli(url, "new-search", "alice")
        expect(search.locator("td.state")).to_have_text("frozen by alice", timeout=WAIT_MS)
        assert page.evaluate("window.loadedOnce") is True
        keep(page, tmp_path, "dashboard-list.png")

    def test_the_detail_view_follows_a_freeze_made_elsewhere(
        self, page: Page, dashboard: Dashboard, url: str, tmp_path: Path
    ) -> None:
        """A click opens the detail (ladder, arms, chart, log), which a freeze updates live."""
        from playwright.sync_api import expect

        page.goto(dashboard.url)
        page.locator("tr.rollout", has_text="new-checkout").locator("a.name").click()
        expect(page.locator("#detail-name")).to_have_text("new-checkout", timeout=WAIT_MS)
        assert page.url.endswith("#/rollout/new-checkout")
        expect(page.locator("#ladder li.current")).to_have_text("canary \u00b7 10 %")
        expect(page.locator("#arms tbody tr")).to_have_count(2)
        expect(page.locator("#chart svg path.evidence")).to_have_count(1)
        expect(page.locator("#chart svg line.freeze")).to_have_count(1)
        expect(page.locator("#history tbody tr")).to_have_count(1)
        with Rollouts(POLICY, store=url) as other:  # a second service on the same file
            other.freeze("new-checkout", reason="p99 up", actor="bob")
        expect(page.locator("#detail-state .state")).to_have_text("frozen by bob", timeout=WAIT_MS)
        expect(page.locator("#history tbody tr")).to_have_count(2)
        expect(page.locator("#history tbody tr").first).to_contain_text("p99 up")
        keep(page, tmp_path, "dashboard-detail.png")

    def test_hostile_text_is_shown_as_text(
        self, page: Page, dashboard: Dashboard, url: str, tmp_path: Path
    ) -> None:
        """A rollout name and reason holding HTML are shown literally and never run."""
        from playwright.sync_api import expect

        store = SQLiteStore(url.removeprefix("sqlite:///"))
        try:
            state = RolloutState(stage=0, status=Status.FROZEN, since=1.0, version=1,
                                 reason=HOSTILE, actor="mallory\x1b[2J",
                                 stages=(("one", 5.0),))  # fmt: skip
            entry = Transition(HOSTILE, Action.FREEZE, 0, 0, None, Status.FROZEN, 1, 1.0, HOSTILE)
            assert store.compare_and_set(HOSTILE, 0, state, entry)
        finally:
            store.close()
        page.goto(dashboard.url)
        planted = page.locator("tr.rollout", has_text=HOSTILE)
        expect(planted.locator("td.state")).to_have_text(
            "frozen by mallory\\u{1b}[2J", timeout=WAIT_MS
        )
        planted.locator("a.name").click()
        expect(page.locator("#detail-why")).to_contain_text(HOSTILE, timeout=WAIT_MS)
        expect(page.locator("#detail-name")).to_have_text(HOSTILE)
        assert page.locator("main img").count() == 0
        assert page.evaluate("window.pwned") is None
        keep(page, tmp_path, "dashboard-hostile.png")

    def test_a_link_opens_the_detail_view_directly(
        self, page: Page, dashboard: Dashboard, tmp_path: Path
    ) -> None:
        """``#/rollout/NAME`` opens that rollout; an unknown one says so."""
        from playwright.sync_api import expect

        page.goto(dashboard.url + "#/rollout/new-search")
        expect(page.locator("#detail-name")).to_have_text("new-search", timeout=WAIT_MS)
        expect(page.locator("#list")).to_be_hidden()
        page.goto(dashboard.url + "#/rollout/no-such")
        expect(page.locator("#detail-state")).to_contain_text("not on this dashboard")
        page.locator("a", has_text="every rollout").click()
        expect(page.locator("#list")).to_be_visible()
        keep(page, tmp_path, "dashboard-link.png")


class TestHostileLayout:
    def test_long_text_wraps_and_a_long_name_opens(
        self, page: Page, dashboard: Dashboard, url: str, tmp_path: Path
    ) -> None:
        """A 1,200-character name and a 5,000-character reason keep the page within the
        viewport, in the list and in the detail view, which the name's link opens."""
        from playwright.sync_api import expect

        name, reason = "N" * 1200, "R" * 5000
        store = SQLiteStore(url.removeprefix("sqlite:///"))
        try:
            state = RolloutState(stage=0, status=Status.FROZEN, since=1.0, version=1,
                                 reason=reason, actor="mallory",
                                 stages=(("S" * 128, 5.0),))  # fmt: skip
            entry = Transition(name, Action.FREEZE, 0, 0, None, Status.FROZEN, 1, 1.0, reason)
            assert store.compare_and_set(name, 0, state, entry)
        finally:
            store.close()
        page.goto(dashboard.url)
        planted = page.locator("tr.rollout", has_text="NNNN")
        expect(planted.locator("td.state")).to_have_text("frozen by mallory", timeout=WAIT_MS)
        link = planted.locator("a.name")
        assert len(link.inner_text()) == 80  # shown cut; all of it in the title
        assert link.get_attribute("title") == "N" * 999 + "\u2026"
        fits = "document.documentElement.scrollWidth <= window.innerWidth"
        assert page.evaluate(fits)
        link.click()
        expect(page.locator("#detail-why")).to_contain_text("RRRR", timeout=WAIT_MS)
        expect(page.locator("#detail-name")).to_have_text("N" * 999 + "\u2026")
        expect(page.locator("#history tbody tr")).to_have_count(1)
        assert page.evaluate(fits)
        keep(page, tmp_path, "dashboard-long-text.png")


class TestRefreshFailure:
    def test_a_failing_refresh_and_stale_data_are_shown(
        self, page: Page, dashboard: Dashboard, tmp_path: Path
    ) -> None:
        """A refresh that keeps failing shows why in the banner, and "stale since" once the
        last good refresh is over three intervals old; a good refresh clears both."""
        from playwright.sync_api import expect

        page.goto(dashboard.url)
        expect(page.locator("#store")).to_have_text("store ok", timeout=WAIT_MS)
        steering = dashboard.board.steering
        assert steering is not None
        good = steering.names

        def broken() -> list[str]:
            raise RuntimeError("a bug in names()")

        steering.names = broken  # type: ignore[method-assign]
        try:
            expect(page.locator("#banner")).to_contain_text(
                "refresh failed: RuntimeError", timeout=WAIT_MS
            )
            expect(page.locator("#store")).to_contain_text("stale since ", timeout=WAIT_MS)
            expect(page.locator("tr.rollout")).to_have_count(2)  # what was read last
            keep(page, tmp_path, "dashboard-stale.png")
        finally:
            steering.names = good  # type: ignore[method-assign]
        expect(page.locator("#store")).to_have_text("store ok", timeout=WAIT_MS)
        expect(page.locator("#banner")).to_be_hidden()
