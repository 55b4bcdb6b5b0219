"""Tests for the ``stagedroll`` command line, run as a user would: ``main(argv)`` and processes."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import re
import sqlite3
import subprocess
import sys
import types
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import EVIDENCE_KEYS
from stagedroll import (
    Action,
    Policy,
    RecentError,
    Rollouts,
    Status,
    Transition,
    bucket,
    threshold,
)
from stagedroll._steering import default_actor
from stagedroll.cli import _offline as offline
from stagedroll.cli import main
from stagedroll.cli._render import EscapingWriter, fit, printable
from stagedroll.cli._words import (
    Standing,
    error_lines,
    evidence_words,
    headline,
    history_lines,
    since_line,
    transition_lines,
)
from stagedroll.testing import simulate

POLICY = """\
# Like the README's example: a canary, then half; staff first, QA in, one merchant out.
[segments.employees]
rules = [{ attribute = "email", op = "suffix", value = "@example.com" }]

[rollouts.new-checkout]
stages = [
  { name = "canary", percent = 5, segments = ["employees"] },
  { name = "half", percent = 50 },
]
targeting = { allow = ["user-1"], deny = ["user-666"] }

[rollouts.search]
advance = "auto"
stages = [{ name = "quarter", percent = 25, bake = "1ms" }, { name = "all", percent = 100 }]
"""

STATUS_KEYS = {
    "rollout",
    "source",
    "in_policy",
    "policy_problem",
    "environment",
    "mode",
    "stage",
    "stage_name",
    "percent",
    "status",
    "since",
    "since_iso",
    "version",
    "reason",
    "actor",
    "stages",
    "next_stage",
    "waiting_for",
    "health_enabled",
    "evidence",
    "thresholds",
    "sample_ratio_ok",
    "shares_elsewhere",
    "internal_errors",
    "errors",
}
TRANSITION_KEYS = {
    "rollout",
    "action",
    "from_stage",
    "to_stage",
    "from_stage_name",
    "to_stage_name",
    "from_status",
    "to_status",
    "version",
    "at",
    "at_iso",
    "reason",
    "actor",
    "trigger",
    "evidence",
}
EXPLAIN_KEYS = {
    "schema_version",
    "rollout",
    "unit",
    "attributes",
    "environment",
    "enabled",
    "reason",
    "stage",
    "percent",
    "bucket",
    "threshold",
    "steps",
}
STEPS = ["environment", "status", "unit", "deny", "allow", "segments", "bucket"]
DOWN = "redis://127.0.0.1:1/0?timeout=0.2"
SCRIPT = Path(sys.executable).with_name("stagedroll")


class Run:
    """One run of the command line: its exit code and what it wrote."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def json(self) -> Any:
        return json.loads(self.out)


Cli = Callable[..., Run]


@pytest.fixture(name="cli")
def _cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """Run ``main(argv)`` and capture its exit code, stdout and stderr."""
    for name in ("STAGEDROLL_POLICY", "STAGEDROLL_STORE", "STAGEDROLL_ENV"):
        monkeypatch.delenv(name, raising=False)

    def run(*argv: str) -> Run:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


@pytest.fixture(name="policy_file")
def _policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "rollouts.toml"
    path.write_text(POLICY)
    return path


@pytest.fixture(name="store", params=["sqlite", "redis"])
def _store(request: pytest.FixtureRequest, tmp_path: Path, policy_file: Path) -> str:
    """A store URL that a service has used: a SQLite file, or a prefix on the test Redis."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        redis_url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")
        url = f"{redis_url}?prefix={prefix}"
    with Rollouts(policy_file, store=url):  # the service starts its rollouts there
        pass
    return url


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: no STAGEDROLL_* of ours, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGEDROLL_")}
    return {**env, **extra}


class TestStateCommands:
    """status, the transitions, history, explain and tick, on SQLite and on Redis."""

    def test_status_list(self, cli: Cli, policy_file: Path, store: str) -> None:
        """Without a name, one line per rollout: its name, state, stage and since when."""
        run = cli("status", "--policy", str(policy_file), "--store", store)
        assert run.code == 0, run.err
        header, *rows = run.out.splitlines()
        assert header.split() == ["ROLLOUT", "STATE", "STAGE", "SINCE"]
        cells = rows[0].split()
        assert cells[:4] == ["new-checkout", "running", "canary", "(5"]
        assert cells[-1].endswith("Z")  # since, in ISO 8601
        assert rows[1].startswith("search ")
        assert run.err == ""
        assert cli("list", "--policy", str(policy_file), "--store", store).out == run.out

    def test_status_of_one(self, cli: Cli, policy_file: Path, store: str) -> None:
        """With a name: the state in words, since when, the health, what comes next."""
        run = cli("status", "new-checkout", "--policy", str(policy_file), "--store", store)
        assert run.code == 0, run.err
        assert run.out.splitlines() == [
            "new-checkout: running at stage canary (5 %): the new path serves 5 % of users",
            run.out.splitlines()[1],
            "  health: no failures yet (0 users on the new path, 0 on the old); evidence 1, "
            "it freezes at 20",
            "  next: stage half (50 %), waiting for an operator: advance is manual",
            "  recent errors: none recorded",
        ]
        assert run.out.splitlines()[1].endswith(", version 1, by stagedroll (automatic)")
        verbose = cli(
            "status", "new-checkout", "-v", "--policy", str(policy_file), "--store", store
        )
        assert "  statistics: share 0.05; errors E 1 (freeze at 20, roll back at 1,000)" in (
            verbose.out
        )

    def test_status_json(self, cli: Cli, policy_file: Path, store: str) -> None:
        """``status --json`` is a list of objects of the documented keys."""
        run = cli("--json", "status", "--policy", str(policy_file), "--store", store)
        assert run.code == 0, run.err
        document = run.json()
        assert set(document) == {"schema_version", "environment", "rollouts"}
        assert document["schema_version"] == 1
        statuses = document["rollouts"]
        assert [s["rollout"] for s in statuses] == ["new-checkout", "search"]
        for status in statuses:
            assert set(status) == STATUS_KEYS
            assert set(status["evidence"]) == EVIDENCE_KEYS
        first = statuses[0]
        assert (first["stage"], first["stage_name"], first["percent"]) == (0, "canary", 5.0)
        assert (first["status"], first["version"], first["next_stage"]) == ("running", 1, "half")
        assert first["since_iso"].endswith("Z")
        assert (first["source"], first["in_policy"], first["errors"]) == ("policy", True, [])
        assert first["stages"] == [
            {"name": "canary", "percent": 5.0},
            {"name": "half", "percent": 50.0},
        ]
        one = cli("status", "search", "--json", "--policy", str(policy_file), "--store", store)
        assert [s["rollout"] for s in one.json()["rollouts"]] == ["search"]

    def test_transitions(self, cli: Cli, policy_file: Path, store: str) -> None:
        """Each action applies, or is refused with the reason and exit code 1."""
        common = ["--policy", str(policy_file), "--store", store, "--json"]

        def act(action: str, reason: str = "test") -> Run:
            return cli(action, "new-checkout", "--reason", reason, "--actor", "alice", *common)

        frozen = act("freeze", "holiday")
        assert frozen.code == 0, frozen.err
        entry = frozen.json()
        assert set(entry) == TRANSITION_KEYS | {"schema_version"}
        assert (entry["schema_version"], entry["trigger"]) == (1, "operator")
        assert set(entry["evidence"]) == EVIDENCE_KEYS
        assert (entry["action"], entry["from_status"], entry["to_status"]) == (
            "freeze",
            "running",
            "frozen",
        )
        assert (entry["actor"], entry["reason"], entry["version"]) == ("alice", "holiday", 2)

        refused = act("advance")
        assert (refused.code, refused.out) == (1, "")
        error = json.loads(refused.err)["error"]
        assert (error["code"], error["kind"]) == (1, "transition_refused")
        assert error["message"] == "cannot advance 'new-checkout': it is frozen (unfreeze it first)"
        again = act("freeze")
        assert again.code == 1
        assert "it is already frozen" in json.loads(again.err)["error"]["message"]
        assert again.err.count("\n") == 1

        steps = [
            ("unfreeze", "canary", "running"),
            ("advance", "half", "running"),
            ("rollback", "canary", "rolled_back"),
            ("kill", "canary", "killed"),
            ("complete", "half", "complete"),
        ]
        for action, stage, status in steps:
            run = act(action)
            assert run.code == 0, run.err
            assert (run.json()["to_stage_name"], run.json()["to_status"]) == (stage, status)
        assert act("complete").code == 1

    def test_transition_text_and_default_actor(
        self, cli: Cli, policy_file: Path, store: str
    ) -> None:
        """Without ``--json`` a transition is what it did and who; the actor defaults to the OS
        user; a kill adds the ways out that do not serve the killed stage again."""
        run = cli(
            "kill",
            "new-checkout",
            "--reason",
            "incident 4711",
            "--policy",
            str(policy_file),
            "--store",
            store,
        )
        assert run.code == 0, run.err
        assert run.out == (
            "new-checkout: killed at stage canary (5 %): the new path is off for everyone\n"
            f"  version 2, by the operator {default_actor()}: incident 4711\n"
            "  unfreeze serves stage canary (5 %) again; rollback --to STAGE (or 0%) holds a "
            "lower one\n"
        )

    def test_history(self, cli: Cli, policy_file: Path, store: str) -> None:
        """The audit trail, newest first, as a table or transition objects; ``--limit`` cuts it."""
        common = ["--policy", str(policy_file), "--store", store]
        cli("freeze", "new-checkout", "--reason", "holiday", "--actor", "alice", *common)
        cli("unfreeze", "new-checkout", "--reason", "back", "--actor", "bob", *common)
        run = cli("history", "new-checkout", *common)
        assert run.code == 0, run.err
        lines = run.out.splitlines()
        assert [line.split()[1:3] for line in lines if not line.startswith(" ")] == [
            ["version", "3:"],
            ["version", "2:"],
            ["version", "1:"],
        ]
        assert lines[0].endswith("version 3: resumed: running at stage canary (5 %)")
        assert lines[1:3] == [
            "    by the operator bob: back",
            "    health: no failures yet (0 users on the new path, 0 on the old); evidence 1",
        ]
        assert lines[-1] == "    by stagedroll (automatic)"
        document = cli("history", "new-checkout", "--json", *common).json()
        assert (document["schema_version"], document["rollout"]) == (1, "new-checkout")
        entries = document["transitions"]
        assert [e["action"] for e in entries] == ["unfreeze", "freeze", "start"]
        assert all(set(e) == TRANSITION_KEYS for e in entries)
        assert entries[-1]["from_status"] is None
        assert entries[-1]["evidence"] == {}
        assert set(entries[0]["evidence"]) == EVIDENCE_KEYS
        limited = cli("history", "new-checkout", "--limit", "1", "--json", *common).json()
        assert [e["version"] for e in limited["transitions"]] == [3]

    def test_explain(self, cli: Cli, policy_file: Path, store: str) -> None:
        """Every step of the evaluation order, and the decision that ``decide`` makes."""
        common = ["--policy", str(policy_file), "--store", store, "--json"]
        run = cli("explain", "new-checkout", "user-8", *common)
        assert run.code == 0, run.err
        doc = run.json()
        assert set(doc) == EXPLAIN_KEYS
        assert [s["step"] for s in doc["steps"]] == STEPS
        assert all({"step", "outcome", "detail"} <= set(s) for s in doc["steps"])
        assert (doc["enabled"], doc["reason"], doc["stage"], doc["percent"]) == (
            True,
            "IN_COHORT",
            "canary",
            5.0,
        )
        assert (doc["bucket"], doc["threshold"]) == (bucket("new-checkout", "user-8"), threshold(5))
        assert [s["outcome"] for s in doc["steps"]] == ["next"] * 6 + ["on"]

        staff = cli(
            "explain",
            "new-checkout",
            "user-9",
            "--attr",
            "email=ada@example.com",
            "--attr",
            "beta=true",
            *common,
        ).json()
        assert staff["attributes"] == {"email": "ada@example.com", "beta": True}
        assert (staff["reason"], staff["steps"][5]["outcome"]) == ("SEGMENT", "on")
        assert staff["steps"][5]["segments"] == [{"name": "employees", "match": True}]
        assert staff["steps"][6]["outcome"] == "not reached"

        denied = cli("explain", "new-checkout", "user-666", *common).json()
        assert denied["reason"] == "DENIED"
        assert [s["outcome"] for s in denied["steps"]][3:5] == ["off", "not reached"]

    def test_explain_text(self, cli: Cli, policy_file: Path, store: str) -> None:
        """The text form numbers the steps and ends with the result."""
        common = ["--policy", str(policy_file), "--store", store]
        cli("kill", "new-checkout", "--reason", "incident", *common)
        run = cli("explain", "new-checkout", "user-1", *common)
        assert run.code == 0, run.err
        lines = run.out.splitlines()
        assert lines[0] == "new-checkout, unit 'user-1'"
        assert lines[3].split()[:3] == ["2", "status", "off"]
        assert lines[-1] == "result: off (KILLED), stage canary, 0 %"

    def test_tick(self, cli: Cli, policy_file: Path, store: str) -> None:
        """``tick`` takes the automatic advance whose bake time is over, and says so."""
        common = ["--policy", str(policy_file), "--store", store]
        cli("status", *common)  # starts the rollouts; the 1 ms bake is then over
        run = cli("tick", "--json", *common)
        assert run.code == 0, run.err
        [entry] = run.json()["transitions"]
        assert set(entry) == TRANSITION_KEYS
        assert (entry["rollout"], entry["action"], entry["to_stage_name"]) == (
            "search",
            "advance",
            "all",
        )
        assert entry["actor"] == "stagedroll"
        assert cli("tick", *common).out == "no automatic step is due\n"
        assert cli("tick", "--json", *common).json() == {"schema_version": 1, "transitions": []}

    def test_unknown_rollout(self, cli: Cli, policy_file: Path, store: str) -> None:
        """An unknown name is a usage error (2), named with the known ones."""
        common = ["--policy", str(policy_file), "--store", store]
        for argv in (
            ["status", "nope"],
            ["freeze", "nope", "--reason", "x"],
            ["history", "nope"],
            ["explain", "nope", "user-1"],
        ):
            run = cli(*argv, *common)
            assert (run.code, run.out) == (2, ""), argv
            assert run.err == (
                "stagedroll: unknown rollout 'nope': neither the policy nor the store has it "
                "(known: new-checkout, search)\n"
            )


class TestStoreDown:
    """A store that does not answer: exit code 3 and one line, for every state command."""

    @pytest.mark.parametrize(
        "argv",
        [
            ["status"],
            ["freeze", "new-checkout", "--reason", "x"],
            ["history", "new-checkout"],
            ["explain", "new-checkout", "user-1"],
            ["tick"],
        ],
    )
    def test_exit_3(self, cli: Cli, policy_file: Path, argv: list[str]) -> None:
        """Exit 3, nothing on stdout, one line on stderr that says the store is unreachable."""
        run = cli(*argv, "--policy", str(policy_file), "--store", DOWN)
        assert (run.code, run.out) == (3, "")
        assert run.err.startswith("stagedroll: store unreachable: ")
        assert run.err.count("\n") == 1
        as_json = cli(*argv, "--policy", str(policy_file), "--store", DOWN, "--json")
        assert (as_json.code, as_json.out) == (3, "")
        error = json.loads(as_json.err)
        assert (error["schema_version"], error["error"]["kind"]) == (1, "store_down")


class TestOptions:
    """Global options, environment variables and usage errors."""

    def test_environment_variables(
        self, cli: Cli, policy_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """STAGEDROLL_POLICY, STAGEDROLL_STORE and STAGEDROLL_ENV stand in for the options."""
        store = f"sqlite:///{tmp_path / 'env.db'}"
        monkeypatch.setenv("STAGEDROLL_POLICY", str(policy_file))
        monkeypatch.setenv("STAGEDROLL_STORE", store)
        assert cli("freeze", "search", "--reason", "env", "--create").code == 0
        run = cli("status", "search", "--json")
        assert (run.code, run.err) == (0, "")
        assert run.json()["rollouts"][0]["status"] == "frozen"
        fresh = cli("status", "--json", "--store", "memory://", "--create")
        assert fresh.json()["rollouts"][0]["status"] == "running"

    def test_environment(self, cli: Cli, tmp_path: Path) -> None:
        """``--env`` picks the environment; an unknown one is a usage error."""
        path = tmp_path / "envs.json"
        policy = {
            "rollouts": {
                "x": {
                    "stages": [{"name": "a", "percent": 1}],
                    "environments": {"dev": 100, "prod": "stages"},
                }
            }
        }
        path.write_text(json.dumps(policy))
        memory = ["--store", "memory://", "--create"]
        run = cli("status", "--policy", str(path), "--env", "dev", "--json", *memory)
        [status] = run.json()["rollouts"]
        assert (status["environment"], status["percent"]) == ("dev", 100.0)
        text = cli("status", "x", "--policy", str(path), "--env", "dev", *memory).out
        assert text.splitlines()[1] == (
            "x: running in environment dev, which fixes the new path at 100 %"
        )
        wrong = cli("status", "--policy", str(path), "--env", "prd", *memory)
        assert wrong.code == 2
        assert "unknown environment 'prd' (known: dev, prod); did you mean 'prod'?" in wrong.err

    @pytest.mark.parametrize(
        "argv",
        [
            ["status"],
            ["list"],
            ["status", "search"],
            ["history", "search"],
            ["freeze", "search", "--reason", "x"],
            ["kill", "search", "--reason", "x"],
            ["tick"],
            ["explain", "search", "user-1"],
        ],
    )
    def test_no_store_named(self, cli: Cli, policy_file: Path, argv: list[str]) -> None:
        """A state command without --store or $STAGEDROLL_STORE is a usage error saying how."""
        run = cli(*argv, "--policy", str(policy_file))
        assert (run.code, run.out) == (2, "")
        assert run.err == (
            "stagedroll: no store named: pass --store URL or set STAGEDROLL_STORE "
            "(sqlite:///path/to/state.db, redis://host:6379/0)\n"
        )

    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            (["validate"], "no policy file: pass --policy FILE or set STAGEDROLL_POLICY"),
            (["tick", "--store", "memory://", "--create"], "tick needs the policy: no policy"),
            (["bogus"], "invalid choice"),
            (["freeze", "new-checkout", "-p"], "--reason"),
            (["history", "new-checkout", "--limit", "0", "-p"], "must be at least 1"),
            (["explain", "new-checkout", "u", "--attr", "email", "-p"], "--attr takes KEY=VALUE"),
            (["status", "--store", "mysql://x", "-p"], "unsupported store URL"),
            (
                ["tick", "--policy", "missing.toml", "--store", "memory://", "--create"],
                "tick needs the policy: cannot read the policy 'missing.toml'",
            ),
            (["simulate", "--units", "5", "--units-file", "f", "-p"], "not allowed with"),
        ],
    )
    def test_usage_errors(self, cli: Cli, policy_file: Path, argv: list[str], message: str) -> None:
        """Bad arguments exit 2 with a message, and no traceback."""
        argv = [a for a in argv if a != "-p"] + (
            ["--policy", str(policy_file)] if "-p" in argv else []
        )
        run = cli(*argv)
        assert run.code == 2
        assert message in run.err
        assert "Traceback" not in run.err

    def test_invalid_policy_is_a_finding(self, cli: Cli, tmp_path: Path) -> None:
        """A state command on an invalid policy exits 1, listing the problems with lines."""
        path = tmp_path / "bad.toml"
        path.write_text('[rollouts.x]\nstages = [{ name = "a", percent = 200 }]\n')
        run = cli("status", "--policy", str(path), "--store", "memory://", "--create")
        assert run.code == 1
        assert f"{path}:2: rollouts.x.stages[0].percent: must be between 0 and 100" in run.err
        assert run.out.splitlines()[1:] == [
            "x !      no state in the store  -      -",
            "! the policy is broken for it: see the notes above",
        ]

    def test_logs_stay_off_stdout(self, cli: Cli, policy_file: Path) -> None:
        """Log events never mix into the output: dropped, or on stderr with ``-v``."""
        common = ["--policy", str(policy_file), "--store", "memory://", "--create", "--json"]
        quiet = cli("freeze", "search", "--reason", "x", *common)
        assert (quiet.json()["action"], quiet.err) == ("freeze", "")
        verbose = cli("freeze", "search", "--reason", "x", "-v", *common)
        assert verbose.json()["action"] == "freeze"
        assert "rollout.frozen" in verbose.err

    def test_host_logging_kept(self, cli: Cli, policy_file: Path) -> None:
        """A program's own structlog setup is set aside during ``main`` and restored after."""
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stdout))
        try:
            run = cli(
                "freeze", "search", "--reason", "x", "--json", "--policy", str(policy_file),
                "--store", "memory://", "--create",
            )  # fmt: skip
            assert run.json()["action"] == "freeze"
            assert structlog.is_configured()
            assert structlog.get_config()["logger_factory"].__class__ is (
                structlog.PrintLoggerFactory
            )
        finally:
            structlog.reset_defaults()

    def test_help(self, cli: Cli) -> None:
        """``--help`` exits 0 and documents the exit codes."""
        run = cli("--help")
        assert run.code == 0
        assert "3  the store is unreachable" in run.out
        assert "4  no stagedroll store there" in run.out


BAD_TOML = """\
environments = ["dev", "prod"]

[rollouts.new-checkout]
stages = [
  { name = "canary", percent = 5 },
  { name = "half", percent = 2, bake = "soon" },
]
advnce = "auto"

[rollouts.new-checkout.environments]
qa = 5
"""
BAD_PROBLEMS = [
    ("rollouts.new-checkout.stages[1].bake", "must be a duration"),
    ("rollouts.new-checkout.advnce", "unknown field; did you mean 'advance'?"),
    ("rollouts.new-checkout.stages[1].percent", "must be greater than the previous stage (5)"),
    ("rollouts.new-checkout.environments.qa", "unknown environment (declared: dev, prod)"),
]


class TestValidate:
    """``validate``: every problem with its path and, where it can be told, its line."""

    @pytest.fixture(name="bad_files")
    def _bad_files(self, tmp_path: Path) -> dict[str, Path]:
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # the backport, a dependency on Python 3.10
            import tomli as tomllib
        import yaml

        data = tomllib.loads(BAD_TOML)
        files = {
            "toml": tmp_path / "bad.toml",
            "json": tmp_path / "bad.json",
            "yaml": tmp_path / "bad.yaml",
        }
        files["toml"].write_text(BAD_TOML)
        files["json"].write_text(json.dumps(data, indent=2))
        files["yaml"].write_text(yaml.safe_dump(data, sort_keys=False))
        return files

    @pytest.mark.parametrize("fmt", ["toml", "json", "yaml"])
    def test_problems_with_lines(self, cli: Cli, bad_files: dict[str, Path], fmt: str) -> None:
        """Each problem names its path and the line where that path is written."""
        path = bad_files[fmt]
        run = cli("validate", str(path), "--json")
        assert run.code == 1
        assert run.json()["schema_version"] == 1
        [result] = run.json()["files"]
        assert (result["file"], result["ok"]) == (str(path), False)
        problems = result["problems"]
        assert [p["path"] for p in problems] == [path for path, _ in BAD_PROBLEMS]
        lines = path.read_text().splitlines()
        for problem, (_, message) in zip(problems, BAD_PROBLEMS, strict=True):
            assert set(problem) == {"path", "line", "message"}
            assert message in problem["message"]
            written = lines[problem["line"] - 1]
            field = problem["path"].rsplit(".", 1)[-1].split("[")[0]
            assert field in written or (field in {"bake", "percent"} and "half" in written), (
                fmt,
                problem,
                written,
            )

    def test_toml_lines(self, cli: Cli, bad_files: dict[str, Path]) -> None:
        """In TOML, the lines are those of the inline table, the key and the table's key."""
        run = cli("validate", str(bad_files["toml"]))
        path = bad_files["toml"]
        assert run.out.splitlines() == [
            f"{path}: 4 problems",
            f"  {path}:6: rollouts.new-checkout.stages[1].bake: must be a duration such as "
            "'30m', '2h' or '1d', not 'soon'",
            f"  {path}:8: rollouts.new-checkout.advnce: unknown field; did you mean 'advance'?",
            f"  {path}:6: rollouts.new-checkout.stages[1].percent: must be greater than the "
            "previous stage (5)",
            f"  {path}:11: rollouts.new-checkout.environments.qa: unknown environment "
            "(declared: dev, prod)",
        ]

    def test_arrays_of_tables(self, cli: Cli, tmp_path: Path) -> None:
        """``[[rollouts.x.stages]]`` items are counted, so the path finds its line."""
        path = tmp_path / "aot.toml"
        path.write_text(
            '[[rollouts.x.stages]]\nname = "a"\npercent = 1\n\n'
            '[[rollouts.x.stages]]\nname = "b"\npercent = 0.5\n'
        )
        [problem] = cli("validate", str(path), "--json").json()["files"][0]["problems"]
        assert (problem["path"], problem["line"]) == ("rollouts.x.stages[1].percent", 7)

    def test_ok_and_unreadable(self, cli: Cli, policy_file: Path, tmp_path: Path) -> None:
        """A valid file prints ok; a missing or syntactically broken one is a problem."""
        broken = tmp_path / "broken.json"
        broken.write_text('{"rollouts": {')
        missing = tmp_path / "missing.toml"
        run = cli("validate", str(policy_file), str(broken), str(missing))
        assert run.code == 1
        lines = run.out.splitlines()
        assert lines[0] == f"{policy_file}: ok"
        assert lines[2].startswith(f"  {broken}: invalid JSON: ")
        assert lines[4] == f"  {missing}: cannot read: No such file or directory"
        ok = cli("validate", str(policy_file), "--json")
        assert ok.code == 0
        assert ok.json() == {
            "schema_version": 1,
            "files": [{"file": str(policy_file), "ok": True, "problems": []}],
        }


class TestSchema:
    """``schema``: the JSON Schema of the policy file."""

    def test_schema(self, cli: Cli) -> None:
        """It is the pydantic models' schema, as JSON, with or without ``--json``."""
        run = cli("schema")
        assert run.code == 0
        schema = run.json()
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert {k: v for k, v in schema.items() if k != "$schema"} == Policy.model_json_schema()
        assert cli("schema", "--json").json() == {"schema_version": 1, "schema": schema}


class TestSimulate:
    """``simulate``: each stage's cohort, the nesting check, and the chart."""

    def test_table(self, cli: Cli, policy_file: Path) -> None:
        """Count and fraction per stage of N synthetic units; exit 0 when nested."""
        run = cli("simulate", str(policy_file), "--units", "2000")
        assert run.code == 0, run.err
        lines = run.out.splitlines()
        assert lines[0] == "2000 units"
        assert lines[1].split() == ["rollout", "stage", "percent", "count", "fraction", "nested"]
        assert [line.split()[:2] for line in lines[2:]] == [
            ["new-checkout", "canary"],
            ["new-checkout", "half"],
            ["search", "quarter"],
            ["search", "all"],
        ]
        assert lines[-1].split()[3:] == ["2000", "100.0000%", "yes"]

    def test_json_and_units_file(self, cli: Cli, policy_file: Path, tmp_path: Path) -> None:
        """``--units-file`` takes one id a line; ``--json`` has the documented keys."""
        units = tmp_path / "units.txt"
        units.write_text("user-1\n\nuser-666\n  user-8  \n")
        run = cli("simulate", "--policy", str(policy_file), "--units-file", str(units), "--json")
        assert run.code == 0, run.err
        doc = run.json()
        assert set(doc) == {"schema_version", "units", "environment", "nested", "rollouts", "plot"}
        assert (doc["units"], doc["nested"], doc["plot"]) == (3, True, None)
        checkout = doc["rollouts"][0]
        assert set(checkout) == {"rollout", "mode", "nested", "stages"}
        assert set(checkout["stages"][0]) == {
            "name",
            "percent",
            "count",
            "fraction",
            "expected",
            "contains_previous",
        }
        # user-1 is allowed, user-666 denied, user-8 in at 5 %.
        assert [(s["name"], s["count"]) for s in checkout["stages"]] == [("canary", 2), ("half", 2)]
        assert [s["contains_previous"] for s in checkout["stages"]] == [None, True]

    def test_not_nested(self, cli: Cli, policy_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A stage that leaves out units of the previous one is a finding: exit 1."""

        def reversed_stages(policy: Policy, units: Any, *, environment: str | None) -> Any:
            rollout = policy.rollouts["new-checkout"]
            shrinking = rollout.model_copy(update={"stages": rollout.stages[::-1]})
            rollouts = {**policy.rollouts, "new-checkout": shrinking}
            return simulate(
                policy.model_copy(update={"rollouts": rollouts}), units, environment=environment
            )

        monkeypatch.setattr(offline, "simulate", reversed_stages)
        run = cli("simulate", str(policy_file), "--units", "1000")
        assert run.code == 1
        assert "cohorts not nested: rollout 'new-checkout': stage 'canary' (5 %)" in run.err

    def test_plot_without_matplotlib(
        self, cli: Cli, policy_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without matplotlib: a text bar chart, a one-line install hint, and exit 0."""
        monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
        out = tmp_path / "cohorts.png"
        run = cli("simulate", str(policy_file), "--units", "1000", "--plot", str(out))
        assert run.code == 0
        assert run.err == (
            "stagedroll: note: --plot needs matplotlib: pip install 'stagedroll[plot]' "
            "(a text chart instead)\n"
        )
        assert "  all         100%  ########################################  1000 (100.00%)" in (
            run.out.splitlines()
        )
        assert not out.exists()

    def test_plot_with_matplotlib(
        self, cli: Cli, policy_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With matplotlib, one bar chart per rollout goes to the PNG file."""
        bars: list[tuple[list[str], list[int]]] = []

        class Axes:
            def bar(self, names: list[str], counts: list[int], **_: object) -> None:
                bars.append((names, counts))

            def set_title(self, title: str) -> None:
                pass

            def set_ylabel(self, label: str) -> None:
                pass

        class Figure:
            def __init__(self, **_: object) -> None:
                pass

            def subplots(self, nrows: int, **_: object) -> list[list[Axes]]:
                return [[Axes()] for _ in range(nrows)]

            def savefig(self, path: str, format: str) -> None:
                Path(path).write_bytes(b"\x89PNG")

        fake = types.ModuleType("matplotlib.figure")
        fake.Figure = Figure  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "matplotlib", types.ModuleType("matplotlib"))
        monkeypatch.setitem(sys.modules, "matplotlib.figure", fake)
        out = tmp_path / "cohorts.png"
        run = cli("simulate", str(policy_file), "--units", "100", "--plot", str(out), "--json")
        assert run.code == 0, run.err
        assert run.json()["plot"] == str(out)
        assert out.read_bytes() == b"\x89PNG"
        assert [names for names, _ in bars] == [
            ["canary\n5%", "half\n50%"],
            ["quarter\n25%", "all\n100%"],
        ]
        assert bars[1][1][1] == 100


class TestProcesses:
    """The installed console script and ``python -m stagedroll``, as separate processes."""

    def test_console_script(self, policy_file: Path) -> None:
        """The ``stagedroll`` script validates a file."""
        done = subprocess.run(
            [str(SCRIPT), "validate", str(policy_file)],
            capture_output=True,
            text=True,
            env=clean_env(),
            check=False,
        )
        assert (done.returncode, done.stdout, done.stderr) == (0, f"{policy_file}: ok\n", "")

    def test_python_m(self, policy_file: Path, tmp_path: Path) -> None:
        """``python -m stagedroll`` reads the policy and store from the environment."""
        env = clean_env(
            STAGEDROLL_POLICY=str(policy_file), STAGEDROLL_STORE=f"sqlite:///{tmp_path / 'm.db'}"
        )
        done = subprocess.run(
            [sys.executable, "-m", "stagedroll", "status", "--json", "--create"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert (done.returncode, done.stderr) == (0, "")
        rollouts = json.loads(done.stdout)["rollouts"]
        assert [s["rollout"] for s in rollouts] == ["new-checkout", "search"]

    def test_concurrent_freeze(self, cli: Cli, policy_file: Path, tmp_path: Path) -> None:
        """Two shells freeze at once: one wins, the other is told, and one freeze is recorded."""
        store = f"sqlite:///{tmp_path / 'shared.db'}"
        assert cli("status", "--policy", str(policy_file), "--store", store, "--create").code == 0
        argv = [
            str(SCRIPT),
            "freeze",
            "new-checkout",
            "--policy",
            str(policy_file),
            "--store",
            store,
        ]
        shells = [
            subprocess.Popen(
                [*argv, "--reason", f"shell {i}", "--actor", f"op{i}"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=clean_env(),
            )
            for i in range(2)
        ]
        results = [(p.wait(timeout=60), *p.communicate()) for p in shells]
        assert sorted(code for code, _, _ in results) == [0, 1]
        [(_, _, told)] = [r for r in results if r[0] == 1]
        assert "already frozen" in told or "changed meanwhile" in told
        assert told.count("\n") == 1
        history = cli(
            "history", "new-checkout", "--json", "--policy", str(policy_file), "--store", store
        ).json()["transitions"]
        assert [e["action"] for e in history] == ["freeze", "start"]


class TestExplainUnderTheKillSwitch:
    def test_the_status_step_says_killed(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Under $STAGEDROLL_KILL, explain settles at the status step, saying why."""
        policy = tmp_path / "rollouts.toml"
        policy.write_text('[rollouts.x]\nstages = [{ name = "all", percent = 100 }]\n')
        monkeypatch.setenv("STAGEDROLL_KILL", "x")
        argv = ["--policy", str(policy), "--store", "memory://", "--create", "--json"]
        assert main([*argv, "explain", "x", "user-1"]) == 0
        report = json.loads(capsys.readouterr().out)
        status = next(step for step in report["steps"] if step["step"] == "status")
        assert status["outcome"] == "off"
        assert "STAGEDROLL_KILL" in status["detail"]
        assert (report["enabled"], report["reason"]) == (False, "KILLED")


class TestEscaping:
    """What the command line prints of text it did not write cannot drive the terminal."""

    @given(st.text())
    def test_printable_text_is_printable(self, text: str) -> None:
        """Any text comes out printable, one line; printable text comes out unchanged."""
        shown = printable(text)
        assert shown.isprintable()
        if text.isprintable():
            assert shown == text

    @pytest.mark.parametrize(
        ("text", "shown"),
        [
            ("\x1b[2J", "\\x1b[2J"),
            ("a\rb", "a\\x0db"),
            ("a\nb", "a\\x0ab"),
            ("\x9b31m", "\\x9b31m"),
            ("\u202eevil", "\\u202eevil"),
            ("\ud800", "\\ud800"),
            ("\U000e0001", "\\U000e0001"),
            ("café ☕ 日本", "café ☕ 日本"),
        ],
    )
    def test_escapes(self, text: str, shown: str) -> None:
        """C0, C1, format characters and lone surrogates are escaped; other text is kept."""
        assert printable(text) == shown

    @given(st.text())
    def test_the_writer_leaves_json_unchanged(self, text: str) -> None:
        """JSON output goes through the escaping stream as it is: JSON escapes them itself."""
        document = json.dumps({"reason": text}, indent=2) + "\n"
        out = io.StringIO()
        EscapingWriter(out).write(document)
        assert out.getvalue() == document
        assert json.loads(out.getvalue()) == {"reason": text}

    def test_the_writer_keeps_newlines_and_escapes_the_rest(self) -> None:
        """Lines stay lines; a control character inside one is escaped."""
        out = io.StringIO()
        EscapingWriter(out).write("one\x1b[2J\ntwo\r\n")
        assert out.getvalue() == "one\\x1b[2J\ntwo\\x0d\n"

    def test_the_writer_survives_a_narrow_encoding(self) -> None:
        """A character the stream cannot encode is written as an escape, not an error."""
        raw = io.BytesIO()
        stream = io.TextIOWrapper(raw, encoding="ascii")
        EscapingWriter(stream).write("café\n")
        stream.flush()
        assert raw.getvalue() == b"caf\\xe9\n"

    def test_an_actor_cannot_forge_a_line_of_an_error(
        self, cli: Cli, policy_file: Path, tmp_path: Path
    ) -> None:
        """A refusal that quotes a hostile actor stays one line on standard error."""
        store = f"sqlite:///{tmp_path / 'state.db'}"
        forged = "mallory\nstagedroll: new-checkout: unfreeze at canary by alice\x1b[2J"
        common = ["--policy", str(policy_file), "--store", store, "--reason", "x", "--create"]
        assert cli("freeze", "new-checkout", "--actor", forged, *common).code == 0
        again = cli("freeze", "new-checkout", "--actor", "bob", *common)
        assert again.code == 1
        assert again.err.count("\n") == 1
        assert "by mallory\\x0astagedroll: " in again.err
        assert "\x1b" not in again.err


class TestUnreadableState:
    """One rollout's corrupt stored state does not hide the others from the operator."""

    @pytest.fixture(name="corrupt")
    def _corrupt(self, cli: Cli, policy_file: Path, tmp_path: Path) -> list[str]:
        store = f"sqlite:///{tmp_path / 'state.db'}"
        common = ["--policy", str(policy_file), "--store", store]
        assert cli("status", *common, "--create").code == 0  # both rollouts started
        with sqlite3.connect(tmp_path / "state.db") as db:
            db.execute("UPDATE rollouts SET state = '{\"stage\": -7}' WHERE name = 'search'")
        return common

    def test_status_shows_the_others_and_names_it(self, cli: Cli, corrupt: list[str]) -> None:
        """status lists the readable rollouts, and names the corrupt one on stderr (exit 1)."""
        run = cli("status", *corrupt)
        assert run.code == 1
        assert "new-checkout" in run.out
        assert "search" not in run.out
        assert run.err.startswith("stagedroll: corrupt stored state of 'search'")
        assert run.err.count("\n") == 1
        as_json = cli("status", "--json", *corrupt)
        rollouts = [s["rollout"] for s in as_json.json()["rollouts"]]
        assert (as_json.code, rollouts) == (1, ["new-checkout"])
        error = json.loads(as_json.err)["error"]
        assert (error["kind"], error["details"]) == ("state_unreadable", [{"rollout": "search"}])

    def test_kill_of_the_corrupt_one_says_what_it_serves(
        self, cli: Cli, corrupt: list[str], tmp_path: Path
    ) -> None:
        """A kill of a corrupt state is a finding (exit 1), not a store outage (exit 3)."""
        store = ["--store", f"sqlite:///{tmp_path / 'state.db'}"]
        for argv in (["kill", "search", *corrupt], ["kill", "search", *store]):  # policy or not
            argv += ["--reason", "incident"]
            run = cli(*argv, "--json")
            assert run.code == 1, run.err
            error = json.loads(run.err.splitlines()[-1])["error"]
            assert error["kind"] in ("state_corrupt", "state_unreadable"), error
            assert "old path" in error["message"] or "corrupt" in error["message"]

    def test_tick_carries_on(self, cli: Cli, corrupt: list[str]) -> None:
        """tick takes the steps of the other rollouts, and names the corrupt one (exit 1)."""
        run = cli("tick", *corrupt)
        assert run.code == 1
        assert run.out == "no automatic step is due\n"
        assert "corrupt stored state of 'search'" in run.err


def sh(*argv: str, cwd: Path | None = None, env: dict[str, str] | None = None, **more: str) -> Run:
    """Run the installed ``stagedroll`` script as a separate process, with a clean environment."""
    done = subprocess.run(
        [str(SCRIPT), *argv],
        capture_output=True,
        text=True,
        env=clean_env(**(env or {}), **more),
        cwd=cwd,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


HEALTHY_AND_BROKEN = """\
[rollouts.healthy]
stages = [{ name = "canary", percent = 5 }, { name = "half", percent = 50 }]

[rollouts.broken]
stages = [{ name = "canary", percent = 5 }, { name = "half", precent = 50 }]
"""


@pytest.fixture(name="served")
def _served(tmp_path: Path) -> str:
    """A SQLite store that a service used for ``healthy`` and ``broken`` (both valid then)."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    policy = {
        "rollouts": {
            name: {"stages": [{"name": "canary", "percent": 5}, {"name": "half", "percent": 50}]}
            for name in ("healthy", "broken")
        }
    }
    with Rollouts(policy, store=url) as rollouts:
        rollouts.advance("broken", reason="looked fine", actor="alice")
    return url


class TestServiceLogs:
    def test_a_kill_from_the_command_line_is_logged_by_the_service(
        self, policy_file: Path, tmp_path: Path
    ) -> None:
        """The service that takes in a state the CLI wrote logs ``rollout.changed``: who, why."""
        url = f"sqlite:///{tmp_path / 'state.db'}"
        with Rollouts.from_file(policy_file, store=f"{url}?refresh_interval=3600") as service:
            run = sh("kill", "new-checkout", "--reason", "INC-4711", "--actor", "oncall",
                     "--store", url, "--policy", str(policy_file))  # fmt: skip
            assert run.code == 0, run.err
            with structlog.testing.capture_logs() as logs:
                service.status("new-checkout")  # the read a refresh makes
            [changed] = [e for e in logs if e["event"] == "rollout.changed"]
            assert (changed["status"], changed["actor"], changed["reason"]) == (
                "killed",
                "oncall",
                "INC-4711",
            )
            assert not service.enabled("new-checkout", "user-1")


class TestNoStoreThere:
    """The command line never acts on a store that does not exist (issue 16, item 2)."""

    def test_misspelt_sqlite_path(self, policy_file: Path, tmp_path: Path, served: str) -> None:
        """A misspelt path is refused naming its absolute path; nothing is created there."""
        for argv in (["status"], ["freeze", "healthy", "--reason", "x"], ["list"]):
            run = sh(*argv, "--store", "sqlite:///stat.db", cwd=tmp_path)
            assert (run.code, run.out) == (4, ""), argv
            assert run.err == (
                f"stagedroll: no stagedroll store at {tmp_path / 'stat.db'}: the file does not "
                "exist (a misspelt path?); pass --create to start a new store here\n"
            )
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("stat.")) == []
        created = sh(
            "status", "--store", "sqlite:///stat.db", "--create", "--policy", str(policy_file),
            cwd=tmp_path,
        )  # fmt: skip
        assert created.code == 0, created.err
        assert (tmp_path / "stat.db").exists()
        again = sh("status", "--store", "sqlite:///stat.db", cwd=tmp_path)
        assert again.code == 0, again.err
        assert [line.split()[0] for line in again.out.splitlines()[1:3]] == [
            "new-checkout",
            "search",
        ]

    def test_no_store_named(self, policy_file: Path) -> None:
        """No --store and no $STAGEDROLL_STORE: a usage error saying how to name one."""
        run = sh("kill", "search", "--reason", "x", STAGEDROLL_POLICY=str(policy_file))
        assert (run.code, run.out) == (2, "")
        assert "no store named: pass --store URL or set STAGEDROLL_STORE" in run.err

    def test_empty_sqlite_file(self, tmp_path: Path) -> None:
        """An existing file that holds no rollout is refused too."""
        (tmp_path / "empty.db").write_bytes(b"")
        run = sh("list", "--store", f"sqlite:///{tmp_path / 'empty.db'}")
        assert run.code == 4
        assert str(tmp_path / "empty.db") in run.err
        assert "pass --create" in run.err

    def test_empty_redis_prefix(self, redis_url: str, redis_prefix: str) -> None:
        """A Redis prefix that holds nothing is refused, and the password is never printed."""
        host = redis_url.split("://", 1)[1]
        url = f"redis://:hunter2@{host}?prefix={redis_prefix}&password=hunter2"
        run = sh("list", "--store", url)
        assert run.code in (3, 4)  # refused (4), or the test server wants no password (3)
        assert "hunter2" not in run.err
        plain = sh("list", "--store", f"{redis_url}?prefix={redis_prefix}", "--json")
        assert (plain.code, plain.out) == (4, "")
        error = json.loads(plain.err)
        assert error["error"]["kind"] == "no_store"
        assert f"prefix={redis_prefix}" in error["error"]["message"]
        created = sh(
            "freeze", "x", "--reason", "y", "--store", f"{redis_url}?prefix={redis_prefix}"
        )
        assert created.code == 4  # --create is what starts a store

    @pytest.mark.parametrize(
        "url",
        [
            "redis://:s3cret@127.0.0.1:1/0?timeout=0.2",
            "redis://user:s3c/r?et@127.0.0.1:1/0",
            "redis://127.0.0.1:1/0?timeout=0.2&password=s3cret",
            "postgresql://app:s3cret@127.0.0.1:1/orders?timeout=0.2",
            "postgresql://app@127.0.0.1:1/orders?timeout=0.2&password=s3cret",
        ],
    )
    def test_password_never_printed(self, url: str) -> None:
        """Whatever form the password takes in the URL, no message shows it."""
        for argv in (["list"], ["list", "--json"]):
            run = sh(*argv, "--store", url)
            assert run.code == 3, run.err
            assert "s3c" not in run.err

    def test_a_user_name_alone_is_shown_as_is(self) -> None:
        """A PostgreSQL user name without a password is no secret: the error shows the URL
        whole (not ``***ql://`` for a user called ``postgres``)."""
        run = sh("list", "--store", "postgresql://postgres@127.0.0.1:1/orders?timeout=0.2")
        assert run.code == 3, run.err
        assert "postgresql://" in run.err
        assert "***ql" not in run.err


class TestSteeringFromTheStore:
    """status, history, kill, freeze, unfreeze and rollback work from the store alone."""

    def test_broken_policy_beside_a_healthy_rollout(self, tmp_path: Path, served: str) -> None:
        """A typo in one rollout blocks nothing: the healthy one by policy, the other by store."""
        policy = tmp_path / "rollouts.toml"
        policy.write_text(HEALTHY_AND_BROKEN)
        env = {"STAGEDROLL_POLICY": str(policy), "STAGEDROLL_STORE": served}
        note = (
            f"stagedroll: note: rollout 'broken' left out of the policy: {policy}:5: "
            "rollouts.broken.stages[1].percent: is required (and 1 more: stagedroll validate "
            "lists them)\n"
        )
        killed = sh("kill", "healthy", "--reason", "incident", "--actor", "alice", env=env)
        assert (killed.code, killed.err) == (0, note)
        assert killed.out.startswith("healthy: killed at stage canary (5 %): the new path is off")
        frozen = sh("freeze", "broken", "--reason", "hold", "--actor", "bob", env=env)
        assert (frozen.code, frozen.err) == (0, note)
        assert frozen.out.startswith("broken: frozen at stage half (50 %)")
        status = sh("status", "broken", env=env)
        assert status.code == 0
        lines = status.out.splitlines()
        assert lines[0] == (
            "broken: frozen by bob at stage half (50 %): it keeps serving 50 % and does not advance"
        )
        assert (
            f"the policy is broken for it: {policy}:5: rollouts.broken.stages[1].percent: is "
            "required (and 1 more: stagedroll validate lists them): steered from the store alone"
        ) in " ".join(status.out.split())
        listing = sh("list", env=env)
        assert listing.code == 1  # a finding: the policy is broken for one rollout
        rows = listing.out.splitlines()
        assert rows[1].split()[:3] == ["healthy", "killed", "by"]
        assert rows[2].split()[:4] == ["broken", "!", "frozen", "by"]
        as_json = sh("list", "--json", env=env)
        [warning] = [json.loads(line) for line in as_json.err.splitlines()]
        assert warning["schema_version"] == 1
        assert (warning["warning"]["kind"], warning["warning"]["rollout"]) == (
            "policy_rollout_left_out",
            "broken",
        )
        history = sh("history", "broken", "--json", env=env)
        assert [e["action"] for e in json.loads(history.out)["transitions"]] == [
            "freeze",
            "advance",
            "start",
        ]
        unfrozen = sh("unfreeze", "broken", "--reason", "ok", env=env)
        assert unfrozen.code == 0, unfrozen.err
        advance = sh("advance", "broken", "--reason", "go", env=env)
        assert advance.code == 2
        assert "advance needs rollout 'broken' in the policy" in advance.err

    def test_no_policy_at_all(self, served: str) -> None:
        """Without any policy file, kill and status work from the store's stages."""
        run = sh("kill", "healthy", "--reason", "double charges", "--store", served)
        assert (run.code, run.err) == (0, "")
        assert run.out.splitlines()[0] == (
            "healthy: killed at stage canary (5 %): the new path is off for everyone"
        )
        listing = sh("list", "--store", served)
        assert listing.out.splitlines()[1:] == [
            listing.out.splitlines()[1],
            listing.out.splitlines()[2],
            "* not in the policy: steered from the store alone",
        ]
        assert listing.out.splitlines()[2].split()[:4] == ["healthy", "*", "killed", "by"]
        document = json.loads(sh("status", "healthy", "--json", "--store", served).out)
        [status] = document["rollouts"]
        assert (status["source"], status["status"], status["percent"]) == ("store", "killed", 0.0)
        assert status["stages"] == [
            {"name": "canary", "percent": 5.0},
            {"name": "half", "percent": 50.0},
        ]

    def test_unreadable_policy_file(self, tmp_path: Path, served: str) -> None:
        """A policy that cannot be read is one note; the store still answers."""
        run = sh("status", "healthy", "--policy", str(tmp_path / "nope.toml"), "--store", served)
        assert run.code == 0
        assert "cannot read the policy" in run.err
        assert "steering from the store alone" in run.err
        assert run.out.startswith("healthy: running at stage canary (5 %)")

    def test_kill_then_rollback_to(self, policy_file: Path, tmp_path: Path) -> None:
        """After a kill, rollback --to lands on the stage asked, held, never exposing more."""
        store = f"sqlite:///{tmp_path / 'state.db'}"
        common = ["--policy", str(policy_file), "--store", store, "--create", "--actor", "alice"]
        assert sh("advance", "new-checkout", "--reason", "go", *common).code == 0
        assert sh("kill", "new-checkout", "--reason", "bad", *common).code == 0
        back = sh("rollback", "new-checkout", "--to", "canary", "--reason", "safe", *common)
        assert back.code == 0, back.err
        assert back.out.splitlines() == [
            "new-checkout: rolled back from stage half (50 %) to stage canary (5 %): it stays "
            "there until an",
            "    operator acts",
            "  version 4, by the operator alice: safe",
        ]
        status = json.loads(sh("status", "new-checkout", "--json", *common[:4]).out)["rollouts"][0]
        assert (status["status"], status["stage_name"], status["percent"]) == (
            "rolled_back",
            "canary",
            5.0,
        )
        nowhere = sh("unfreeze", "new-checkout", "--to", "nope", "--reason", "x", *common)
        assert (nowhere.code, nowhere.out) == (1, "")
        assert "'nope'" in nowhere.err
        zero = sh("unfreeze", "new-checkout", "--to", "0%", "--reason", "retry", *common)
        assert zero.code == 0, zero.err
        assert zero.out.startswith(
            "new-checkout: resumed: running at 0 % (before the first stage) (was at stage canary"
        )

    def test_control_characters_in_a_reason(self, policy_file: Path, tmp_path: Path) -> None:
        """A reason's control characters are escaped in text, and exact in JSON."""
        store = f"sqlite:///{tmp_path / 'state.db'}"
        common = ["--policy", str(policy_file), "--store", store, "--create"]
        reason = "evil\x1b[2J\rline\nforged: ok\u202e"
        run = sh("freeze", "search", "--reason", reason, *common)
        assert run.code == 0, run.err
        assert "evil\\x1b[2J\\x0dline\\x0aforged: ok\\u202e" in run.out
        assert not {"\x1b", "\r"} & set(run.out)
        for argv in (["status", "search"], ["history", "search"]):
            text = sh(*argv, *common)
            assert not {"\x1b", "\u202e"} & set(text.out)
            assert "evil\\x1b[2J" in text.out
        document = json.loads(sh("history", "search", "--json", *common).out)
        assert document["transitions"][0]["reason"] == reason


def width(line: str) -> int:
    """The columns a line takes in a terminal: wide characters two, combining marks none."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in line
    )


LONG = "x" * 128  # the longest rollout name a policy allows


@pytest.fixture(name="gated")
def _gated(tmp_path: Path) -> tuple[str, Path]:
    """A SQLite store where the health gate froze ``new-search``, with its errors recorded."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    policy = tmp_path / "rollouts.json"
    stages = [{"name": "canary", "percent": 50}, {"name": "all", "percent": 100}]
    policy.write_text(
        json.dumps(
            {
                "rollouts": {
                    "new-search": {"stages": stages, "health": {"min_events": 10}},
                    LONG: {"stages": stages},
                }
            }
        )
    )
    rng = random.Random(7)

    def old(unit: str) -> int:
        if rng.random() < 0.05:
            raise ValueError("old path hiccup")
        return 0

    with Rollouts(policy, store=f"{url}?refresh_interval=3600") as rollouts:  # tick() alone

        @rollouts.guard("new-search", fallback=old, unit=lambda unit: unit)
        def new(unit: str) -> int:
            if rng.random() < 0.2:
                raise IndexError("discount tier out of range \x1b[2J" + "é" * 300)
            return 1

        for i in range(20_000):
            with contextlib.suppress(ValueError):  # the old path's own errors reach the caller
                new(f"user-{i}")
            if i % 2 and rollouts.tick():  # pools the evidence, takes the step due
                break
        rollouts.kill(LONG, reason="日本語の理由" * 40, actor="a" * 300)
    return url, policy


class TestWords:
    """The default output says what a rollout does in words, in lines of 100 columns at most."""

    def test_frozen_by_the_health_gate(self, cli: Cli, gated: tuple[str, Path]) -> None:
        """A freeze of the gate reads as one: who failed how often, and the errors seen."""
        store, policy = gated
        run = cli("status", "new-search", "--store", store, "--policy", str(policy))
        assert run.code == 0, run.err
        lines = run.out.splitlines()
        assert lines[0] == (
            "new-search: frozen by the health gate at stage canary (50 %): it keeps serving 50 % "
            "and does not"
        )
        text = " ".join(run.out.split())
        assert ", by the health gate health: the new path" in text  # said once, as it is now
        assert re.search(
            r"health: the new path failed for [\d,]+ of [\d,]+ users, the old path for [\d,]+ of "
            r"[\d,]+ \([\d.]+\u00d7 as often\); evidence [\d,]+ \u2265 20",
            text,
        ), text
        assert "IndexError: discount tier out of range \\x1b[#J" in text
        assert "on the new path, last seen" in text
        assert "ValueError: old path hiccup" in text
        assert "statistics" not in text
        verbose = cli("status", "new-search", "-v", "--store", store, "--policy", str(policy))
        assert "statistics: share 0.5; errors E " in " ".join(verbose.out.split())

    @pytest.mark.parametrize("policy_given", [True, False])
    @pytest.mark.parametrize(
        "argv",
        [
            ["status"],
            ["list"],
            ["status", "new-search"],
            ["status", "new-search", "-v"],
            ["status", LONG],
            ["history", "new-search"],
            ["history", LONG],
            ["unfreeze", "new-search", "--reason", "r" * 500, "--actor", "\u00e9" * 200],
            ["rollback", LONG, "--to", "0%", "--reason", "\u65e5" * 200],
        ],
    )
    def test_every_line_fits(
        self, cli: Cli, gated: tuple[str, Path], argv: list[str], policy_given: bool
    ) -> None:
        """Every line of the default output takes at most 100 columns, and is printable."""
        store, policy = gated
        extra = ["--policy", str(policy)] if policy_given else []
        run = cli(*argv, "--store", store, *extra)
        assert run.code == 0, run.err
        assert run.out
        for line in run.out.splitlines():
            assert width(line) <= 100, line
            assert line.isprintable(), line

    @settings(max_examples=200)
    @given(st.text(max_size=400))
    def test_fit(self, text: str) -> None:
        """A line is cut into printable lines of 100 columns at most, and loses no character."""
        lines = fit(text)
        assert all(width(line) <= 100 and line.isprintable() for line in lines)
        assert "".join("".join(lines).split()) == "".join(printable(text).split())

    @settings(max_examples=200)
    @given(
        status=st.sampled_from(list(Status)),
        stage=st.integers(-1, 3),
        ladder=st.lists(
            st.tuples(st.text(min_size=1, max_size=130), st.floats(0, 100)), max_size=4
        ),
        actor=st.text(max_size=300),
        reason=st.text(max_size=300),
        counts=st.lists(st.integers(0, 10**12), min_size=6, max_size=6),
        e=st.floats(0, 1e308) | st.just(math.inf),
    )
    def test_words_fit_any_state(
        self,
        *,
        status: Status,
        stage: int,
        ladder: list[tuple[str, float]],
        actor: str,
        reason: str,
        counts: list[int],
        e: float,
    ) -> None:
        """Whatever the state holds, each sentence is fitted into lines of 100 columns."""
        standing = Standing("r" * 128, status, stage, tuple(ladder), 0.0, 1, actor, reason)
        keys = ["error_events_treatment", "error_events_control", "units_treatment"]
        keys += ["units_control", "slow_events_treatment", "slow_events_control"]
        evidence = {**dict(zip(keys, counts, strict=True)), "e_errors": e, "slow_threshold_s": 0.8}
        entry = Transition(
            "r" * 128, Action.ROLLBACK, stage, -1, status, status, 2, 0.0, reason, actor, evidence
        )
        error = RecentError("treatment", actor[:128], reason[:200], 0.0, 1e9, counts[0] + 1)
        sentences = [
            headline(standing),
            since_line(standing),
            evidence_words(evidence, freeze_at=20.0),
            *transition_lines(entry, ladder),
            *history_lines(entry, ladder),
            *error_lines([error] * 7),
        ]
        for sentence in sentences:
            for line in fit(sentence):
                assert width(line) <= 100, line


class TestJsonEnvelope:
    """Under --json every output carries schema_version, and every error is JSON on stderr."""

    @pytest.mark.parametrize(
        ("argv", "keys"),
        [
            (["status"], {"environment", "rollouts"}),
            (["list"], {"environment", "rollouts"}),
            (["status", "search"], {"environment", "rollouts"}),
            (["history", "search"], {"rollout", "transitions"}),
            (["freeze", "search", "--reason", "x"], {"rollout", "action", "trigger"}),
            (["tick"], {"transitions"}),
            (["explain", "search", "user-1"], {"rollout", "steps"}),
            (["validate"], {"files"}),
            (["simulate", "--units", "10"], {"rollouts", "nested"}),
            (["schema"], {"schema"}),
        ],
    )
    def test_schema_version(
        self, cli: Cli, policy_file: Path, store: str, argv: list[str], keys: set[str]
    ) -> None:
        """Each command's JSON document is an object with schema_version 1."""
        run = cli(*argv, "--json", "--policy", str(policy_file), "--store", store)
        assert run.code == 0, run.err
        document = run.json()
        assert document["schema_version"] == 1
        assert keys <= set(document)

    @pytest.mark.parametrize(
        ("argv", "code", "kind"),
        [
            (["bogus"], 2, "usage"),
            (["status"], 2, "usage"),
            (["status", "--store", "sqlite:///nowhere/x.db"], 4, "no_store"),
            (["status", "--store", DOWN], 3, "store_down"),
            (["status", "nope", "-s"], 2, "unknown_rollout"),
            (["complete", "search", "--reason", "x", "-s"], 1, "transition_refused"),
            (["validate", "--policy", "-b"], 1, "finding"),
            (["tick", "--policy", "-b", "-s"], 2, "usage"),
        ],
    )
    def test_errors_on_stderr(
        self, *, cli: Cli, tmp_path: Path, policy_file: Path, argv: list[str], code: int, kind: str
    ) -> None:
        """An error is one JSON line on stderr: code, kind, message and details; stdout empty."""
        store = ["--store", f"sqlite:///{tmp_path / 'state.db'}", "--create"]
        bad = tmp_path / "bad.toml"
        bad.write_text('[rollouts.x]\nstages = [{ name = "a", percent = 200 }]\n')
        argv = [str(bad) if a == "-b" else a for a in argv]
        if "-s" in argv:
            argv = [a for a in argv if a != "-s"] + store
        if "--policy" not in argv:
            argv += ["--policy", str(policy_file)]
        if kind == "transition_refused":  # completed once: the second time is refused
            assert cli(*argv).code == 0
        first = cli(*argv, "--json")
        if kind == "finding":  # validate: a finding in its output, not an error
            assert (first.code, json.loads(first.out)["files"][0]["ok"]) == (1, False)
            return
        assert (first.code, first.out) == (code, "")
        [line] = first.err.splitlines()
        document = json.loads(line)
        assert set(document) == {"schema_version", "error"}
        assert set(document["error"]) == {"code", "kind", "message", "details"}
        assert (document["error"]["code"], document["error"]["kind"]) == (code, kind)
        assert document["error"]["message"]


class TestExplainABucketingScheme:
    def test_unleash_position_and_cut(self, cli: Cli, tmp_path: Path) -> None:
        """A rollout with Unleash's bucketing: explain shows its position (Unleash's
        normalized value minus one) and cut, and names the scheme and its group id."""
        policy = tmp_path / "rollouts.toml"
        policy.write_text(
            '[rollouts.checkout]\nbucketing = { scheme = "unleash", group_id = "groupX" }\n'
            'stages = [{ name = "quarter", percent = 25 }, { name = "all", percent = 100 }]\n'
        )
        common = ["--policy", str(policy), "--store", "memory://", "--create", "--json"]
        # Unleash's own test value: ("999", "groupX") normalizes to 25, in at 25 %.
        run = cli("explain", "checkout", "999", *common)
        assert run.code == 0, run.err
        doc = run.json()
        assert (doc["enabled"], doc["reason"], doc["bucket"], doc["threshold"]) == (
            True, "IN_COHORT", 24, 25,
        )  # fmt: skip
        step = doc["steps"][-1]
        assert (step["step"], step["outcome"], step["bucket"], step["threshold"]) == (
            "bucket", "on", 24, 25,
        )  # fmt: skip
        assert step["detail"] == (
            "bucket 24 (24.0000% of the space) < threshold 25 (25 %), unleash, group_id 'groupX'"
        )
        with Rollouts(policy) as rollouts:
            decision = rollouts.decide("checkout", "999")
        assert (decision.bucket, decision.enabled) == (doc["bucket"], doc["enabled"])
        out = cli("explain", "checkout", "user-1", *common[:-1])
        assert out.code == 0, out.err
        assert "unleash, group_id" in out.out
        assert "'groupX'" in out.out
