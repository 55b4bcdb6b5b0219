"""Tests for the ``stagedroll`` command line, run as a user would: ``main(argv)`` and processes."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from conftest import EVIDENCE_KEYS
from stagedroll import Policy, bucket, threshold
from stagedroll._rollout import default_actor
from stagedroll.cli import _offline as offline
from stagedroll.cli import main
from stagedroll.cli._render import EscapingWriter, printable
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
    "next_stage",
    "waiting_for",
    "health_enabled",
    "evidence",
    "internal_errors",
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
    "evidence",
}
EXPLAIN_KEYS = {
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
def _store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL: a SQLite file of this test, or this test's prefix on the test Redis."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    redis_url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    return f"{redis_url}?prefix={prefix}"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: no STAGEDROLL_* of ours, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGEDROLL_")}
    return {**env, **extra}


class TestStateCommands:
    """status, the transitions, history, explain and tick, on SQLite and on Redis."""

    def test_status_table(self, cli: Cli, policy_file: Path, store: str) -> None:
        """The table lists every rollout with its stage, percent, status and what comes next."""
        run = cli("status", "--policy", str(policy_file), "--store", store)
        assert run.code == 0, run.err
        header, *rows = run.out.splitlines()
        assert header.split()[:4] == ["ROLLOUT", "STAGE", "PERCENT", "STATUS"]
        cells = rows[0].split()
        assert cells[:4] == ["new-checkout", "canary", "5%", "running"]
        assert cells[4].endswith("Z")  # since, in ISO 8601
        assert cells[5] == "1"  # the version
        assert "an operator: advance is manual" in rows[0]
        assert "E 1, r-hat -, events 0/0, units 0/0" in rows[0]
        assert rows[1].startswith("search ")
        assert run.err == ""  # a named store: no note

    def test_status_json(self, cli: Cli, policy_file: Path, store: str) -> None:
        """``status --json`` is a list of objects of the documented keys."""
        run = cli("--json", "status", "--policy", str(policy_file), "--store", store)
        assert run.code == 0, run.err
        statuses = run.json()
        assert [s["rollout"] for s in statuses] == ["new-checkout", "search"]
        for status in statuses:
            assert set(status) == STATUS_KEYS
            assert set(status["evidence"]) == EVIDENCE_KEYS
        first = statuses[0]
        assert (first["stage"], first["stage_name"], first["percent"]) == (0, "canary", 5.0)
        assert (first["status"], first["version"], first["next_stage"]) == ("running", 1, "half")
        assert first["since_iso"].endswith("Z")
        one = cli("status", "search", "--json", "--policy", str(policy_file), "--store", store)
        assert [s["rollout"] for s in one.json()] == ["search"]

    def test_transitions(self, cli: Cli, policy_file: Path, store: str) -> None:
        """Each action applies, or is refused with the reason and exit code 1."""
        common = ["--policy", str(policy_file), "--store", store, "--json"]

        def act(action: str, reason: str = "test") -> Run:
            return cli(action, "new-checkout", "--reason", reason, "--actor", "alice", *common)

        frozen = act("freeze", "holiday")
        assert frozen.code == 0, frozen.err
        entry = frozen.json()
        assert set(entry) == TRANSITION_KEYS
        assert set(entry["evidence"]) == EVIDENCE_KEYS
        assert (entry["action"], entry["from_status"], entry["to_status"]) == (
            "freeze",
            "running",
            "frozen",
        )
        assert (entry["actor"], entry["reason"], entry["version"]) == ("alice", "holiday", 2)

        refused = act("advance")
        assert (refused.code, refused.out) == (1, "")
        assert refused.err == (
            "stagedroll: cannot advance 'new-checkout': it is frozen (unfreeze it first)\n"
        )
        again = act("freeze")
        assert again.code == 1
        assert "it is already frozen" in again.err
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
        """Without ``--json`` a transition is one line; the actor defaults to the OS user."""
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
            f"new-checkout: kill at canary (running -> killed), version 2, by {default_actor()}: "
            "incident 4711\n"
        )

    def test_history(self, cli: Cli, policy_file: Path, store: str) -> None:
        """The audit trail, newest first, as a table or transition objects; ``--limit`` cuts it."""
        common = ["--policy", str(policy_file), "--store", store]
        cli("freeze", "new-checkout", "--reason", "holiday", "--actor", "alice", *common)
        cli("unfreeze", "new-checkout", "--reason", "back", "--actor", "bob", *common)
        run = cli("history", "new-checkout", *common)
        assert run.code == 0, run.err
        header, *rows = run.out.splitlines()
        assert header.split() == ["TIME", "ACTION", "STAGE", "STATUS", "VERSION", "ACTOR", "REASON"]
        assert [r.split()[1] for r in rows] == ["unfreeze", "freeze", "start"]
        assert "frozen -> running" in rows[0]
        assert rows[0].split()[-2:] == ["bob", "back"]
        entries = cli("history", "new-checkout", "--json", *common).json()
        assert [e["action"] for e in entries] == ["unfreeze", "freeze", "start"]
        assert all(set(e) == TRANSITION_KEYS for e in entries)
        assert entries[-1]["from_status"] is None
        assert entries[-1]["evidence"] == {}
        assert set(entries[0]["evidence"]) == EVIDENCE_KEYS
        limited = cli("history", "new-checkout", "--limit", "1", "--json", *common).json()
        assert [e["version"] for e in limited] == [3]

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
        [entry] = run.json()
        assert set(entry) == TRANSITION_KEYS
        assert (entry["rollout"], entry["action"], entry["to_stage_name"]) == (
            "search",
            "advance",
            "all",
        )
        assert entry["actor"] == "stagedroll"
        assert cli("tick", *common).out == "no automatic step is due\n"
        assert cli("tick", "--json", *common).json() == []

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
            assert run.err == "stagedroll: unknown rollout 'nope' (known: new-checkout, search)\n"


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
        run = cli(*argv, "--policy", str(policy_file), "--store", DOWN, "--json")
        assert (run.code, run.out) == (3, "")
        assert run.err.startswith("stagedroll: store unreachable: ")
        assert run.err.count("\n") == 1


class TestOptions:
    """Global options, environment variables and usage errors."""

    def test_environment_variables(
        self, cli: Cli, policy_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """STAGEDROLL_POLICY, STAGEDROLL_STORE and STAGEDROLL_ENV stand in for the options."""
        store = f"sqlite:///{tmp_path / 'env.db'}"
        monkeypatch.setenv("STAGEDROLL_POLICY", str(policy_file))
        monkeypatch.setenv("STAGEDROLL_STORE", store)
        assert cli("freeze", "search", "--reason", "env").code == 0
        run = cli("status", "search", "--json")
        assert (run.code, run.err) == (0, "")
        assert run.json()[0]["status"] == "frozen"
        assert cli("status", "--json", "--store", "memory://").json()[0]["status"] == "running"

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
        run = cli("status", "--policy", str(path), "--env", "dev", "--json")
        assert (run.json()[0]["environment"], run.json()[0]["percent"]) == ("dev", 100.0)
        wrong = cli("status", "--policy", str(path), "--env", "prd")
        assert wrong.code == 2
        assert "unknown environment 'prd' (known: dev, prod); did you mean 'prod'?" in wrong.err

    def test_memory_store_note(self, cli: Cli, policy_file: Path) -> None:
        """Without a store, state commands run on memory:// and say that it keeps nothing."""
        run = cli("status", "--policy", str(policy_file))
        assert run.code == 0
        assert "memory://" in run.err
        assert "holds nothing between runs" in run.err

    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            (["status"], "no policy file: pass --policy FILE or set STAGEDROLL_POLICY"),
            (["bogus"], "invalid choice"),
            (["freeze", "new-checkout", "-p"], "--reason"),
            (["history", "new-checkout", "--limit", "0", "-p"], "must be at least 1"),
            (["explain", "new-checkout", "u", "--attr", "email", "-p"], "--attr takes KEY=VALUE"),
            (["status", "--store", "mysql://x", "-p"], "unsupported store URL"),
            (["status", "--policy", "missing.toml"], "cannot read the policy"),
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
        run = cli("status", "--policy", str(path))
        assert run.code == 1
        assert f"{path}:2: rollouts.x.stages[0].percent: must be between 0 and 100" in run.err

    def test_logs_stay_off_stdout(self, cli: Cli, policy_file: Path) -> None:
        """Log events never mix into the output: dropped, or on stderr with ``-v``."""
        common = ["--policy", str(policy_file), "--store", "memory://", "--json"]
        quiet = cli("freeze", "search", "--reason", "x", *common)
        assert (quiet.json()["action"], quiet.err) == ("freeze", "")
        verbose = cli("freeze", "search", "--reason", "x", "-v", *common)
        assert verbose.json()["action"] == "freeze"
        assert "rollout.frozen" in verbose.err

    def test_host_logging_kept(self, cli: Cli, policy_file: Path) -> None:
        """A program's own structlog setup is set aside during ``main`` and restored after."""
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stdout))
        try:
            run = cli("freeze", "search", "--reason", "x", "--json", "--policy", str(policy_file))
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
        [result] = run.json()
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
        [problem] = cli("validate", str(path), "--json").json()[0]["problems"]
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
        assert ok.json() == [{"file": str(policy_file), "ok": True, "problems": []}]


class TestSchema:
    """``schema``: the JSON Schema of the policy file."""

    def test_schema(self, cli: Cli) -> None:
        """It is the pydantic models' schema, as JSON, with or without ``--json``."""
        run = cli("schema")
        assert run.code == 0
        schema = run.json()
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert {k: v for k, v in schema.items() if k != "$schema"} == Policy.model_json_schema()
        assert cli("schema", "--json").json() == schema


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
        assert set(doc) == {"units", "environment", "nested", "rollouts", "plot"}
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
            "stagedroll: --plot needs matplotlib: pip install 'stagedroll[plot]' "
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
            [sys.executable, "-m", "stagedroll", "status", "--json"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert (done.returncode, done.stderr) == (0, "")
        assert [s["rollout"] for s in json.loads(done.stdout)] == ["new-checkout", "search"]

    def test_concurrent_freeze(self, cli: Cli, policy_file: Path, tmp_path: Path) -> None:
        """Two shells freeze at once: one wins, the other is told, and one freeze is recorded."""
        store = f"sqlite:///{tmp_path / 'shared.db'}"
        assert cli("status", "--policy", str(policy_file), "--store", store).code == 0
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
        ).json()
        assert [e["action"] for e in history] == ["freeze", "start"]


class TestExplainUnderTheKillSwitch:
    def test_the_status_step_says_killed(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Under $STAGEDROLL_KILL, explain settles at the status step, saying why."""
        policy = tmp_path / "rollouts.toml"
        policy.write_text('[rollouts.x]\nstages = [{ name = "all", percent = 100 }]\n')
        monkeypatch.setenv("STAGEDROLL_KILL", "x")
        assert main(["--policy", str(policy), "--json", "explain", "x", "user-1"]) == 0
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
        common = ["--policy", str(policy_file), "--store", store, "--reason", "x"]
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
        assert cli("status", *common).code == 0  # both rollouts started
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
        assert (as_json.code, [s["rollout"] for s in as_json.json()]) == (1, ["new-checkout"])

    def test_tick_carries_on(self, cli: Cli, corrupt: list[str]) -> None:
        """tick takes the steps of the other rollouts, and names the corrupt one (exit 1)."""
        run = cli("tick", *corrupt)
        assert run.code == 1
        assert run.out == "no automatic step is due\n"
        assert "corrupt stored state of 'search'" in run.err
