"""Tests of the dashboard's server and JSON API (its page: tests/test_dashboard_browser.py)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import structlog

from dashboards import POLICY, STAGES
from servers import RedisServer, unique_prefix
from stagedroll import (
    Action,
    RedisStore,
    Rollouts,
    RolloutState,
    SQLiteStore,
    Status,
    Steering,
    Transition,
)
from stagedroll.cli._parser import build_parser
from stagedroll.dashboard import DEFAULT_HOST, SCHEMA_VERSION, Dashboard, _model
from stagedroll.dashboard._model import MAX_KEY, MAX_TEXT

SCRIPT = Path(sys.executable).with_name("stagedroll")
PAGE = Path(__file__).resolve().parents[1] / "src" / "stagedroll" / "dashboard"
HOSTILE = "<script>alert(1)</script>\x1b[2J\u202e'; DROP TABLE"
SUMMARY_KEYS = {
    "rollout",
    "key",
    "source",
    "environment",
    "mode",
    "status",
    "state",
    "stage",
    "stage_name",
    "percent",
    "observed_exposure",
    "units",
    "units_capped",
    "since",
    "time_in_stage_s",
    "waiting_for",
    "version",
    "reason",
    "actor",
    "checks",
}
DETAIL_KEYS = SUMMARY_KEYS | {
    "schema_version",
    "now",
    "stages",
    "next_stage",
    "health_enabled",
    "arms",
    "slow_threshold_s",
    "evidence",
    "thresholds",
    "errors",
    "history",
    "samples",
    "history_points",
    "in_policy",
    "policy_problem",
}


class Response:
    """One HTTP answer: status, headers, body."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


def request(url: str, path: str, method: str = "GET", **headers: str) -> Response:
    """Send one request to the dashboard at ``url``."""
    where = urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname or "", where.port, timeout=10)
    try:
        conn.request(method, path, body=b"x" * 10 if method == "POST" else None, headers=headers)
        res = conn.getresponse()
        return Response(res.status, {k.lower(): v for k, v in res.getheaders()}, res.read())
    finally:
        conn.close()


def api(dashboard: Dashboard, path: str = "/api/rollouts") -> Any:
    res = request(dashboard.url, path)
    assert res.status == 200, res.body
    return res.json()


def row(document: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in document["rollouts"] if r["rollout"] == name)


def plant(store: SQLiteStore, name: str, *, reason: str = "", actor: str = "") -> None:
    """Write a state for ``name`` straight into ``store``, as any writer of it could."""
    ladder = (("one", 5.0), ("two", 100.0))
    state = RolloutState(stage=0, status=Status.RUNNING, since=1.0, version=1,
                         reason=reason, actor=actor, stages=ladder)  # fmt: skip
    entry = Transition(name, Action.START, 0, 0, None, Status.RUNNING, 1, 1.0, reason, actor)
    assert store.compare_and_set(name, 0, state, entry)


@pytest.fixture(name="url")
def _url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture(name="rollouts")
def _rollouts(url: str) -> Iterator[Rollouts]:
    with Rollouts(POLICY, store=f"{url}?refresh_interval=3600") as rollouts:
        yield rollouts


@pytest.fixture(name="dashboard")
def _dashboard(rollouts: Rollouts) -> Iterator[Dashboard]:
    """A dashboard on a free port that refreshes only when the test says so."""
    with Dashboard(rollouts, port=0, refresh_interval=3600).start() as dashboard:
        yield dashboard


class TestApi:
    def test_index_lists_every_rollout_in_a_stable_shape(self, dashboard: Dashboard) -> None:
        """``/api/rollouts`` has a schema version, the store's health and one row per rollout."""
        document = api(dashboard)
        assert document["schema_version"] == SCHEMA_VERSION == 1
        assert document["store"] == {"reachable": True, "error": None}
        assert document["refresh"]["ok"] is True
        assert document["refresh"]["stale"] is False
        assert [r["rollout"] for r in document["rollouts"]] == ["new-checkout", "new-search"]
        for summary in document["rollouts"]:
            assert set(summary) == SUMMARY_KEYS
        first = document["rollouts"][0]
        assert (first["state"], first["stage_name"], first["percent"]) == ("running", "canary", 10)
        assert first["checks"] == [{"check": "no_outcomes", "words": "no outcomes yet"}]
        assert first["waiting_for"] == "an operator: advance is manual"

    def test_detail_has_the_ladder_arms_thresholds_and_history(
        self, dashboard: Dashboard, rollouts: Rollouts
    ) -> None:
        """``/api/rollouts/NAME`` adds the stages, the pooled arms, thresholds and the log."""
        for i in range(400):
            rollouts.report("new-checkout", f"user-{i}", error=i % 5 == 0, latency_s=0.01)
        dashboard.refresh()
        detail = api(dashboard, "/api/rollouts/new-checkout")
        assert set(detail) == DETAIL_KEYS
        assert [s["name"] for s in detail["stages"]] == ["canary", "half", "all"]
        health = rollouts.status("new-checkout").health
        treatment, control = detail["arms"]["treatment"], detail["arms"]["control"]
        assert treatment["units"] == health.units_treatment > 0
        assert control["units"] == health.units_control > 0
        assert treatment["error_events"] == health.error_events_treatment
        assert treatment["error_rate"] == health.error_events_treatment / health.units_treatment
        assert detail["observed_exposure"] == health.units_treatment / (
            health.units_treatment + health.units_control
        )
        assert detail["thresholds"]["freeze_at_errors"] == pytest.approx(health.freeze_at_errors)
        assert detail["history"][0]["action"] == "start"
        assert detail["samples"][-1]["e_errors"] == detail["evidence"]["e_errors"]

    def test_a_transition_of_another_process_shows_at_the_next_refresh(
        self, dashboard: Dashboard, url: str
    ) -> None:
        """A freeze made through another ``Rollouts`` on the same file is on the next refresh."""
        with Rollouts(POLICY, store=url) as other:
            other.freeze("new-search", reason="investigating", actor="alice")
        before = row(api(dashboard), "new-search")
        assert before["state"] == "running"  # the documents change on a refresh only
        dashboard.refresh()
        after = row(api(dashboard), "new-search")
        assert (after["state"], after["reason"], after["version"]) == (
            "frozen by alice",
            "investigating",
            2,
        )
        history = api(dashboard, "/api/rollouts/new-search")["history"]
        assert [h["action"] for h in history] == ["freeze", "start"]

    def test_requests_do_not_read_the_store(self, dashboard: Dashboard, url: str) -> None:
        """Many requests between two refreshes serve the same document (one store read)."""
        with Rollouts(POLICY, store=url) as other:
            other.freeze("new-search", reason="x", actor="alice")
        bodies = {request(dashboard.url, "/api/rollouts").body for _ in range(20)}
        assert len(bodies) == 1
        assert row(json.loads(bodies.pop()), "new-search")["status"] == "running"

    def test_unknown_rollout_is_404(self, dashboard: Dashboard) -> None:
        """A rollout the dashboard does not show is a JSON 404."""
        res = request(dashboard.url, "/api/rollouts/" + quote("no-such"))
        assert res.status == 404
        assert res.json()["schema_version"] == 1

    def test_rollout_of_the_store_alone(self, dashboard: Dashboard, url: str) -> None:
        """A rollout only the store has is listed, steered from the store alone."""
        with Rollouts({"rollouts": {"legacy": {"stages": STAGES}}}, store=url) as other:
            other.kill("legacy", reason="old", actor="bob")
        dashboard.refresh()
        legacy = row(api(dashboard), "legacy")
        assert (legacy["source"], legacy["state"], legacy["percent"]) == (
            "store",
            "killed by bob",
            0,
        )
        assert [c["check"] for c in legacy["checks"]] == ["store_alone"]
        detail = api(dashboard, "/api/rollouts/legacy")
        assert detail["arms"] is None
        assert [h["action"] for h in detail["history"]] == ["kill", "start"]

    def test_a_broken_policy_rollout_is_still_listed(self, rollouts: Rollouts) -> None:
        """A rollout the policy is broken for is listed with its problem, state or not."""
        broken = {"new-pricing": "rollouts.toml:3: rollouts.new-pricing.stages: bad"}
        with Dashboard(rollouts, broken=broken, port=0, refresh_interval=3600).start() as board:
            pricing = row(api(board), "new-pricing")
        assert (pricing["source"], pricing["state"]) == ("none", "no state in the store")
        assert pricing["checks"] == [
            {"check": "policy_broken", "words": f"policy broken for it: {broken['new-pricing']}"}
        ]


class TestEscaping:
    def test_hostile_text_round_trips_escaped(self, dashboard: Dashboard, url: str) -> None:
        """Names, reasons and actors keep their exact text in JSON, with no raw ``<`` or ``&``."""
        store = SQLiteStore(url.removeprefix("sqlite:///"))
        try:
            plant(store, HOSTILE, reason=HOSTILE + "&", actor=HOSTILE)
        finally:
            store.close()
        dashboard.refresh()
        res = request(dashboard.url, "/api/rollouts")
        assert b"<" not in res.body
        assert b"&" not in res.body
        assert res.headers["content-type"] == "application/json"
        assert res.headers["x-content-type-options"] == "nosniff"
        planted = row(res.json(), HOSTILE)
        assert planted["reason"] == HOSTILE + "&"
        assert planted["state"] == "running"
        detail = request(dashboard.url, "/api/rollouts/" + quote(HOSTILE, safe=""))
        assert detail.status == 200
        assert detail.json()["actor"] == HOSTILE

    def test_huge_text_is_cut(self, dashboard: Dashboard, rollouts: Rollouts) -> None:
        """A 1 MB reason is shown cut to MAX_TEXT characters."""
        rollouts.freeze("new-search", reason="r" * 1_000_000, actor="alice")
        dashboard.refresh()
        reason = row(api(dashboard), "new-search")["reason"]
        assert len(reason) == MAX_TEXT
        assert reason.endswith("\u2026")

    def test_the_page_never_parses_data_as_html(self) -> None:
        """The script sets text with ``textContent`` only: no ``innerHTML`` or ``eval``."""
        script = (PAGE / "page.js").read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in script
        assert "textContent" in script
        page = (PAGE / "page.html").read_text()
        assert "<script>" not in page  # no inline script: the policy forbids it
        assert "http://" not in page
        assert "https://" not in page  # nothing fetched from the internet

    def test_the_page_is_served_with_a_strict_policy(self, dashboard: Dashboard) -> None:
        """The page and its script come from this server, under a CSP with no inline script."""
        res = request(dashboard.url, "/")
        assert res.status == 200
        assert b"stagedroll dashboard" in res.body
        policy = res.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "default-src 'none'" in policy
        assert "frame-ancestors 'none'" in policy
        for path in ("/page.js", "/page.css"):
            assert request(dashboard.url, path).status == 200


class TestLongNames:
    def test_a_name_over_the_text_limit_opens_by_its_key(
        self, dashboard: Dashboard, url: str
    ) -> None:
        """A name longer than MAX_TEXT is shown cut, yet its detail opens by its whole name
        (its ``key``); one too long for a URL opens by the digest its ``key`` is."""
        long, huge = "L" * (MAX_TEXT + 500), "H" * (MAX_KEY * 5)
        store = SQLiteStore(url.removeprefix("sqlite:///"))
        try:
            plant(store, long, reason="r" * 5000)
            plant(store, huge)
        finally:
            store.close()
        dashboard.refresh()
        document = api(dashboard)
        shown = {r["key"]: r for r in document["rollouts"]}
        assert shown[long]["rollout"] == "L" * (MAX_TEXT - 1) + "\u2026"
        huge_key = next(k for k in shown if k.startswith("~"))
        assert shown[huge_key]["rollout"].startswith("HHH")
        assert len(huge_key) < 64
        by_name = api(dashboard, "/api/rollouts/" + quote(long, safe=""))
        assert (by_name["key"], by_name["rollout"]) == (long, shown[long]["rollout"])
        by_key = api(dashboard, "/api/rollouts/" + quote(huge_key, safe=""))
        assert by_key["key"] == huge_key
        assert by_key["reason"] == ""
        assert api(dashboard, "/api/rollouts/new-search")["key"] == "new-search"

    def test_a_bad_percent_encoding_is_a_400(
        self, dashboard: Dashboard, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``%ff`` is no UTF-8: a JSON 400 with the security headers, and no traceback."""
        res = request(dashboard.url, "/api/rollouts/%ff")
        assert res.status == 400
        assert res.json()["schema_version"] == SCHEMA_VERSION
        assert res.headers["x-content-type-options"] == "nosniff"
        assert "default-src 'none'" in res.headers["content-security-policy"]
        assert request(dashboard.url, "/api/rollouts").status == 200
        assert "Traceback" not in capsys.readouterr().err


class TestRefreshFailure:
    def test_a_failed_refresh_is_logged_counted_and_shown(
        self, dashboard: Dashboard, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A refresh that raises (a bug, not a store error) keeps what was read, says why,
        is logged once per kind a minute and counted; the next good refresh clears it."""
        assert dashboard.board.steering is not None
        good = dashboard.board.steering.names

        def broken() -> list[str]:
            raise RuntimeError("a bug in names()")

        monkeypatch.setattr(dashboard.board.steering, "names", broken)
        with structlog.testing.capture_logs() as logs:
            assert dashboard.refresh() is False
            assert dashboard.refresh() is False
        assert [e["event"] for e in logs] == ["dashboard.refresh_failed"]  # once a minute
        assert (logs[0]["error_type"], logs[0]["logger"]) == ("RuntimeError", "stagedroll")
        assert dashboard.failures == {"RuntimeError": 2}
        document = api(dashboard)
        assert document["refresh"]["ok"] is False
        assert document["refresh"]["error"] == "RuntimeError"
        assert document["refresh"]["failures"] == 2
        assert [r["rollout"] for r in document["rollouts"]] == ["new-checkout", "new-search"]
        assert document["refresh"]["last_success"] == document["now"]
        monkeypatch.setattr(dashboard.board.steering, "names", good)
        assert dashboard.refresh() is True
        assert api(dashboard)["refresh"]["ok"] is True
        assert api(dashboard)["refresh"]["failures"] == 2

    def test_the_refresh_thread_goes_on_after_a_failure(self, rollouts: Rollouts) -> None:
        """The refresh thread survives refreshes that raise: it refreshes again."""
        with Dashboard(rollouts, port=0, refresh_interval=0.01) as dashboard:
            steering = dashboard.board.steering
            assert steering is not None
            good, calls, again = steering.names, [0], threading.Event()

            def failing_twice() -> list[str]:
                calls[0] += 1
                if calls[0] <= 2:
                    raise RuntimeError("a bug in names()")
                again.set()
                return good()

            steering.names = failing_twice  # type: ignore[method-assign]
            dashboard.start()
            assert again.wait(timeout=30)
        assert dashboard.failures == {"RuntimeError": 2}

    def test_the_index_says_when_its_data_is_stale(
        self, dashboard: Dashboard, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Over three refresh intervals after the last good refresh began, the index is
        marked stale, with the time of that refresh; a good refresh makes it fresh again."""
        last = api(dashboard)["refresh"]["last_success"]
        real = _model._monotonic
        monkeypatch.setattr(_model, "_monotonic", lambda: real() + 3 * 3600 + 1)
        refresh = api(dashboard)["refresh"]
        assert (refresh["stale"], refresh["last_success"], refresh["ok"]) == (True, last, True)
        assert dashboard.refresh() is True
        assert api(dashboard)["refresh"]["stale"] is False


class TestReadOnly:
    @pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
    def test_only_get_is_answered(self, dashboard: Dashboard, method: str) -> None:
        """Every method but GET and HEAD is refused with 405, and changes nothing."""
        for path in ("/", "/api/rollouts", "/api/rollouts/new-search"):
            res = request(dashboard.url, path, method)
            assert res.status == 405
            assert res.headers["allow"] == "GET, HEAD"
        dashboard.refresh()
        assert row(api(dashboard), "new-search")["version"] == 1

    def test_binds_to_the_loopback_by_default(self, rollouts: Rollouts) -> None:
        """The Python API and the command both default to 127.0.0.1."""
        assert DEFAULT_HOST == "127.0.0.1"
        with Dashboard(rollouts, port=0, refresh_interval=3600) as board:
            assert urlsplit(board.url).hostname == "127.0.0.1"
        args = build_parser().parse_args(["dashboard"])
        assert (args.host, args.port) == ("127.0.0.1", 8765)

    def test_other_host_names_are_refused_on_the_loopback(self, dashboard: Dashboard) -> None:
        """A page of another site that rebinds its name to 127.0.0.1 reads nothing."""
        assert request(dashboard.url, "/api/rollouts", Host="evil.example").status == 403
        assert request(dashboard.url, "/api/rollouts", Host="localhost:1").status == 200

    def test_a_long_path_is_refused(self, dashboard: Dashboard) -> None:
        """A path over the limit is answered 414, without a lookup."""
        assert request(dashboard.url, "/api/rollouts/" + "x" * 10_000).status == 414

    def test_the_servers_own_errors_carry_the_security_headers(self, dashboard: Dashboard) -> None:
        """An answer of ``http.server`` itself (501: a method it has no handler for) too."""
        res = request(dashboard.url, "/", "BREW")
        assert res.status == 501
        assert res.headers["x-content-type-options"] == "nosniff"
        assert "default-src 'none'" in res.headers["content-security-policy"]

    def test_a_silent_client_blocks_no_one(self, dashboard: Dashboard) -> None:
        """A connection that sends half a request holds its own thread, not the server."""
        where = urlsplit(dashboard.url)
        with socket.create_connection((where.hostname or "", where.port or 0)) as silent:
            silent.sendall(b"GET /api/rollouts HTTP/1.1\r\nHost: 127")
            assert request(dashboard.url, "/api/rollouts").status == 200


class TestStoreDown:
    def test_store_unreachable_is_shown_and_the_rollouts_stay(
        self, redis_server: RedisServer
    ) -> None:
        """With the store down, every rollout stays listed as last read, marked unreachable."""
        store = RedisStore(redis_server.url, prefix=unique_prefix("dash"), refresh_interval=3600,
                           timeout=0.2)  # fmt: skip
        with (
            Rollouts(POLICY, store=store) as rollouts,
            Dashboard(rollouts, port=0, refresh_interval=3600).start() as dashboard,
        ):
            rollouts.freeze("new-search", reason="before the outage", actor="alice")
            dashboard.refresh()
            redis_server.stop()
            dashboard.refresh()
            document = api(dashboard)
            assert document["store"]["reachable"] is False
            assert [r["rollout"] for r in document["rollouts"]] == ["new-checkout", "new-search"]
            search = row(document, "new-search")
            assert search["state"] == "frozen by alice"
            assert search["checks"][0]["check"] == "store_unreachable"
            assert search["checks"][0]["words"].startswith("store unreachable: ")
            redis_server.start()  # an empty Redis, as after a restart: the store is back
            dashboard.refresh()
            assert api(dashboard)["store"]["reachable"] is True
        store.close()


class TestCommand:
    def test_serves_until_interrupted(self, url: str, tmp_path: Path) -> None:
        """``stagedroll dashboard`` prints its URL, serves the store's rollouts (a broken one
        too), and exits 0 on Ctrl-C."""
        with Rollouts(POLICY, store=url):
            pass
        policy = tmp_path / "rollouts.json"
        broken = {"rollouts": {**POLICY["rollouts"], "new-pricing": {"stages": "oops"}}}
        policy.write_text(json.dumps(broken))
        env = {k: v for k, v in os.environ.items() if not k.startswith("STAGEDROLL_")}
        args = [str(SCRIPT), "dashboard", "--store", url, "--policy", str(policy)]
        with subprocess.Popen(
            [*args, "--port", "0", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        ) as child:
            try:
                assert child.stdout is not None
                started = json.loads(child.stdout.readline())
                assert started["schema_version"] == 1
                served = request(started["url"], "/api/rollouts").json()
                names = [r["rollout"] for r in served["rollouts"]]
                assert names == ["new-checkout", "new-search", "new-pricing"]
                assert row(served, "new-pricing")["checks"][0]["check"] == "policy_broken"
            finally:
                child.send_signal(signal.SIGINT)
                _, err = child.communicate(timeout=30)
        assert child.returncode == 0, err
        assert "new-pricing" in err  # the note on the rollout left out of the policy
        assert "dashboard_exposed" not in err  # the loopback: nothing to warn of

    @pytest.mark.parametrize("as_json", [False, True])
    def test_warns_when_not_on_the_loopback(self, url: str, as_json: bool) -> None:
        """Any other address: one warning on stderr (a JSON object under ``--json``)."""
        with Rollouts(POLICY, store=url):
            pass
        env = {k: v for k, v in os.environ.items() if not k.startswith("STAGEDROLL_")}
        args = [str(SCRIPT), "dashboard", "--store", url, "--host", "0.0.0.0", "--port", "0"]
        with subprocess.Popen(
            args + ["--json"] * as_json,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        ) as child:
            try:
                assert child.stdout is not None
                assert "0.0.0.0" in child.stdout.readline()  # serving
            finally:
                child.send_signal(signal.SIGINT)
                _, err = child.communicate(timeout=30)
        assert child.returncode == 0, err
        lines = [line for line in err.splitlines() if "authentication" in line]
        assert len(lines) == 1, err
        if as_json:
            warning = json.loads(lines[0])["warning"]
            assert warning["kind"] == "dashboard_exposed"
            assert warning["url"].startswith("http://0.0.0.0:")
        else:
            assert lines[0].startswith("stagedroll: warning: http://0.0.0.0:")

    def test_refuses_a_store_that_does_not_exist(self, tmp_path: Path) -> None:
        """As every state command: no stagedroll store there is exit code 4."""
        missing = f"sqlite:///{tmp_path / 'missing.db'}"
        run = subprocess.run(
            [str(SCRIPT), "dashboard", "--store", missing, "--port", "0"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert run.returncode == 4
        assert "no stagedroll store" in run.stderr
        assert not (tmp_path / "missing.db").exists()

    def test_a_port_in_use_is_a_usage_error(self, url: str) -> None:
        """Another server on the port: one line and exit code 2, not a traceback."""
        with Rollouts(POLICY, store=url):
            pass
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            run = subprocess.run(
                [str(SCRIPT), "dashboard", "--store", url, "--port", str(port)],
                capture_output=True,
                text=True,
                check=False,
            )
        assert run.returncode == 2
        assert run.stderr.startswith(f"stagedroll: cannot serve on 127.0.0.1:{port}: ")


class TestSteeringOnly:
    def test_a_dashboard_without_a_policy(self, url: str) -> None:
        """With a ``Steering`` alone, every rollout of the store is shown from its state."""
        with Rollouts(POLICY, store=url):
            pass
        with (
            Steering(url) as steering,
            Dashboard(steering=steering, port=0, refresh_interval=3600).start() as dashboard,
        ):
            document = api(dashboard)
        assert [r["source"] for r in document["rollouts"]] == ["store", "store"]
        assert document["environment"] is None
