"""Tests for the pytest plugin ``pytest_stagedroll``, in inner sessions run by ``pytester``."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement

from stagedroll import Reason, Rollouts

ROOT = Path(__file__).parent.parent
BENCHMARKS = ROOT / "benchmarks"

# The application's policy: one new path at 0 % (off unless forced on), one at 100 %.
APP_POLICY = """
[rollouts.new-checkout]
stages = [{ name = "nobody", percent = 0 }]

[rollouts.new-search]
stages = [{ name = "everybody", percent = 100 }]
"""

# An application module, as a service under test would have: its own module-level Rollouts.
APP = """
from pathlib import Path

import stagedroll

ROLLOUTS = stagedroll.Rollouts(Path(__file__).parent / "rollouts.toml")
"""

SMALL = {"rollouts": {"x": {"stages": [{"name": "none", "percent": 0}]}}}


@pytest.fixture(name="project")
def _project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester directory with an ini file, the application's policy and module."""
    pytester.makeini("[pytest]\n")
    pytester.makefile(".toml", rollouts=APP_POLICY)
    pytester.makepyfile(app=APP)
    return pytester


def app_test(checkout: bool, search: bool, reason: str) -> str:
    """A test file asserting what the application's own ``Rollouts`` decides."""
    return f"""
import app

def test_app_decides():
    checkout = app.ROLLOUTS.decide("new-checkout", "user-1")
    search = app.ROLLOUTS.decide("new-search", "user-1")
    assert (checkout.enabled, search.enabled) == ({checkout}, {search})
    assert checkout.reason.name == {reason!r}
"""


class TestMarker:
    def test_policy_mapping_and_force(self, project: pytest.Pytester) -> None:
        """The marker's mapping is the fixture's policy, and its force holds in the test."""
        project.makepyfile(
            """
            import pytest
            from stagedroll import Reason

            POLICY = {"rollouts": {
                "a": {"stages": [{"name": "none", "percent": 0}]},
                "b": {"stages": [{"name": "none", "percent": 0}]},
            }}

            @pytest.mark.stagedroll(policy=POLICY, force={"a": True})
            def test_forced(stagedroll_rollouts):
                assert sorted(stagedroll_rollouts) == ["a", "b"]
                assert stagedroll_rollouts.decide("a", "u").reason is Reason.OVERRIDE
                assert stagedroll_rollouts.enabled("a", "u")
                assert stagedroll_rollouts.decide("b", "u").reason is Reason.OUT_OF_COHORT
            """
        )
        project.runpytest().assert_outcomes(passed=1)

    def test_policy_path_is_relative_to_rootdir(self, project: pytest.Pytester) -> None:
        """A path in the marker is read relative to the rootdir, wherever the test file is."""
        project.mkpydir("sub")
        (project.path / "sub" / "test_path.py").write_text(
            """
import pytest

@pytest.mark.stagedroll(policy="rollouts.toml", force={"new-search": False})
def test_from_file(stagedroll_rollouts):
    assert sorted(stagedroll_rollouts) == ["new-checkout", "new-search"]
    assert not stagedroll_rollouts.enabled("new-search", "u")
"""
        )
        project.runpytest("sub").assert_outcomes(passed=1)

    def test_closest_marker_wins_and_forces_merge(self, project: pytest.Pytester) -> None:
        """A test's marker overrides its class's setting by setting; the forces are merged."""
        project.makepyfile(
            """
            import pytest

            POLICY = {
                "environments": ["dev", "prod"],
                "rollouts": {
                    "a": {"stages": [{"name": "none", "percent": 0}]},
                    "b": {"stages": [{"name": "all", "percent": 100}]},
                    "c": {"stages": [{"name": "none", "percent": 0}]},
                },
            }

            @pytest.mark.stagedroll(policy=POLICY, force={"a": True, "c": True}, environment="dev")
            class TestMerged:
                @pytest.mark.stagedroll(force={"b": False, "c": False}, environment="prod")
                def test_merged(self, stagedroll_rollouts):
                    assert stagedroll_rollouts.environment == "prod"
                    got = {name: stagedroll_rollouts.enabled(name, "u") for name in "abc"}
                    assert got == {"a": True, "b": False, "c": False}
            """
        )
        project.runpytest().assert_outcomes(passed=1)

    def test_environment_comes_from_the_marker_only(
        self, project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The marker's environment is used, and ``$STAGEDROLL_ENV`` never is."""
        monkeypatch.setenv("STAGEDROLL_ENV", "dev")
        project.makepyfile(
            """
            import pytest

            POLICY = {"rollouts": {"a": {
                "stages": [{"name": "none", "percent": 0}],
                "environments": {"dev": 100, "prod": "stages"},
            }}}

            @pytest.mark.stagedroll(policy=POLICY)
            def test_no_environment(stagedroll_rollouts):
                assert stagedroll_rollouts.environment is None

            @pytest.mark.stagedroll(policy=POLICY, environment="dev")
            def test_dev(stagedroll_rollouts):
                decision = stagedroll_rollouts.decide("a", "u")
                assert (decision.enabled, decision.stage) == (True, "dev")
            """
        )
        project.runpytest().assert_outcomes(passed=2)

    @pytest.mark.parametrize(
        ("arguments", "message"),
        [
            ("{'rollouts': {}}", "keyword arguments only"),
            ("policy=POLICY, forced={'x': True}", "unknown argument forced"),
            ("policy=POLICY, force={'x': 'on'}", "must map rollout names to True or False"),
            ("policy=POLICY, force=['x']", "must map rollout names to True or False"),
            ("policy=POLICY, force={'y': True}", "no rollout 'y' in the policy (it has: x)"),
            ("policy=POLICY, environment=1", "environment=...) must be a string, not int"),
            ("policy=POLICY, environment='qa'", "stagedroll_rollouts:"),
            ("policy={'rollouts': {'x': {}}}", "rollouts.x.stages"),
            ("policy='missing.toml'", "cannot read the policy"),
        ],
    )
    def test_bad_marker_fails_the_setup(
        self, project: pytest.Pytester, arguments: str, message: str
    ) -> None:
        """A marker the fixture cannot use errors the test's setup with a one-line reason."""
        project.makepyfile(
            f"""
            import pytest

            POLICY = {{"environments": ["dev"], "rollouts": {{"x": {{"stages": [
                {{"name": "none", "percent": 0}}]}}}}}}

            @pytest.mark.stagedroll({arguments})
            def test_marked(stagedroll_rollouts):
                pass
            """
        )
        result = project.runpytest()
        result.assert_outcomes(errors=1)
        assert message in result.stdout.str()
        result.stdout.no_fnmatch_line("*Traceback*")

    def test_no_policy_fails_the_setup(self, project: pytest.Pytester) -> None:
        """Without a marker's policy or a default one, the fixture says how to give one."""
        project.makepyfile("def test_unmarked(stagedroll_rollouts):\n    pass\n")
        result = project.runpytest()
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(
            ["*stagedroll_rollouts needs a policy: mark the test with*--stagedroll-policy FILE*"]
        )

    def test_marker_is_registered(self, project: pytest.Pytester) -> None:
        """The marker is listed by ``--markers`` and passes ``--strict-markers``."""
        result = project.runpytest("--markers")
        result.stdout.fnmatch_lines(["@pytest.mark.stagedroll(policy=None, force=None, *"])
        project.makepyfile(
            f"""
            import pytest

            @pytest.mark.stagedroll(policy={SMALL!r})
            def test_marked():
                pass
            """
        )
        project.runpytest("--strict-markers").assert_outcomes(passed=1)


FAILING_NEW_PATH = """
import stagedroll

ROLLOUTS = stagedroll.Rollouts(
    {"rollouts": {"discounts": {"stages": [{"name": "all", "percent": 100}]}}}
)


@ROLLOUTS.guard("discounts", fallback=lambda user: "old", unit=lambda user: user)
def discount(user):
    raise IndexError("discount tier out of range")


def test_discount():
    assert discount("u1") == "old"
"""


class TestOnError:
    def test_a_failing_new_path_fails_the_test_by_default(self, project: pytest.Pytester) -> None:
        """In a session the new path's exception reaches the test, which production hides."""
        project.makepyfile(test_discount=FAILING_NEW_PATH)
        result = project.runpytest()
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(["*IndexError: discount tier out of range*"])

    @pytest.mark.parametrize(
        "arguments",
        [("--stagedroll-on-error", "fallback"), ("--stagedroll-on-error", "policy")],
    )
    def test_the_option_keeps_the_fallback(
        self, project: pytest.Pytester, arguments: tuple[str, ...]
    ) -> None:
        """``fallback`` (or ``policy``, whose default is the fallback) answers from the old path."""
        project.makepyfile(test_discount=FAILING_NEW_PATH)
        project.runpytest(*arguments).assert_outcomes(passed=1)

    def test_the_ini_option_and_a_bad_value(self, project: pytest.Pytester) -> None:
        """The ini option sets the default; an unknown value is a usage error."""
        project.makepyfile(test_discount=FAILING_NEW_PATH)
        project.makeini("[pytest]\nstagedroll_on_error = fallback\n")
        project.runpytest().assert_outcomes(passed=1)
        project.makeini("[pytest]\nstagedroll_on_error = sometimes\n")
        result = project.runpytest()
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*stagedroll_on_error*sometimes*"])


class TestDefaultPolicy:
    def test_policy_option_gives_the_fixture_its_policy(self, project: pytest.Pytester) -> None:
        """``--stagedroll-policy FILE`` is the policy of an unmarked test, named in the header."""
        project.makepyfile(
            """
            def test_default(stagedroll_rollouts):
                assert sorted(stagedroll_rollouts) == ["new-checkout", "new-search"]
            """
        )
        result = project.runpytest("--stagedroll-policy", "rollouts.toml")
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines([f"stagedroll: policy {project.path / 'rollouts.toml'}"])

    def test_marker_policy_wins_over_the_option(self, project: pytest.Pytester) -> None:
        """A marker's policy is used over the default one."""
        project.makepyfile(
            f"""
            import pytest

            @pytest.mark.stagedroll(policy={SMALL!r})
            def test_marked(stagedroll_rollouts):
                assert list(stagedroll_rollouts) == ["x"]
            """
        )
        project.runpytest("--stagedroll-policy", "rollouts.toml").assert_outcomes(passed=1)

    def test_ini_option_is_relative_to_the_ini_file(self, project: pytest.Pytester) -> None:
        """``stagedroll_policy`` in the ini file names a file next to it."""
        project.makeini("[pytest]\nstagedroll_policy = rollouts.toml\n")
        project.mkpydir("sub")
        (project.path / "sub" / "test_ini.py").write_text(
            "def test_default(stagedroll_rollouts):\n"
            "    assert 'new-search' in stagedroll_rollouts\n"
        )
        result = project.runpytest("--strict-config", "--rootdir", str(project.path), "sub")
        result.assert_outcomes(passed=1)

    @pytest.mark.parametrize(
        ("policy", "message"),
        [
            ("[rollouts.x]\nstages = []\n", "--stagedroll-policy: 1 problem in *bad.toml:"),
            ("not = [toml", "--stagedroll-policy: * in *bad.toml*"),
        ],
    )
    def test_invalid_policy_file_is_a_usage_error(
        self, project: pytest.Pytester, policy: str, message: str
    ) -> None:
        """A policy file that is invalid stops the session before any test runs."""
        project.makefile(".toml", bad=policy)
        project.makepyfile("def test_never():\n    raise AssertionError\n")
        result = project.runpytest("--stagedroll-policy", "bad.toml")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"ERROR: {message}"])

    def test_invalid_ini_policy_is_a_usage_error(self, project: pytest.Pytester) -> None:
        """A policy named in the ini file that cannot be read is named as the ini option's."""
        project.makeini("[pytest]\nstagedroll_policy = nowhere.toml\n")
        result = project.runpytest()
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["ERROR: stagedroll_policy (ini): cannot read *nowhere.toml:*"])

    def test_missing_policy_file_is_a_usage_error(self, project: pytest.Pytester) -> None:
        """A policy file that cannot be read stops the session with the reason."""
        result = project.runpytest("--stagedroll-policy", "nowhere.toml")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(
            ["ERROR: --stagedroll-policy: cannot read *nowhere.toml: No such file or directory"]
        )


class TestForceOption:
    @pytest.mark.parametrize(
        ("force", "checkout", "search"),
        [
            (["new-checkout=on"], True, True),
            (["new-search=off"], False, False),
            (["new-checkout=ON", "new-search=Off"], True, False),
            (["new-checkout=off", "new-checkout=on"], True, True),  # the last one wins
        ],
    )
    def test_forces_the_applications_own_rollouts(
        self, project: pytest.Pytester, force: list[str], checkout: bool, search: bool
    ) -> None:
        """``--stagedroll-force NAME=on|off`` changes what the application's module-level
        ``Rollouts`` decides."""
        reason = "OVERRIDE" if "new-checkout" in force[0] else "OUT_OF_COHORT"
        project.makepyfile(app_test(checkout, search, reason))
        arguments = [a for f in force for a in ("--stagedroll-force", f)]
        project.runpytest(*arguments).assert_outcomes(passed=1)

    def test_without_option_nothing_is_forced(self, project: pytest.Pytester) -> None:
        """Without the option the application decides by its policy."""
        project.makepyfile(app_test(False, True, "OUT_OF_COHORT"))
        result = project.runpytest()
        result.assert_outcomes(passed=1)
        result.stdout.no_fnmatch_line("stagedroll:*")

    @pytest.mark.parametrize(("value", "expected"), [("on", True), ("off", False)])
    def test_star_forces_every_rollout_of_the_policy(
        self, project: pytest.Pytester, value: str, expected: bool
    ) -> None:
        """``*`` with ``--stagedroll-policy`` forces each of its rollouts, listed in the header."""
        project.makepyfile(app_test(expected, expected, "OVERRIDE"))
        result = project.runpytest(
            "--stagedroll-policy", "rollouts.toml", "--stagedroll-force", f"*={value}"
        )
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(
            [f"stagedroll: forced in every Rollouts: new-checkout={value}, new-search={value}"]
        )

    def test_a_name_wins_over_star(self, project: pytest.Pytester) -> None:
        """A named force holds over ``*``, given before or after it."""
        project.makepyfile(app_test(False, True, "OVERRIDE"))
        result = project.runpytest(
            "--stagedroll-policy=rollouts.toml",
            "--stagedroll-force=new-checkout=off",
            "--stagedroll-force=*=on",
        )
        result.assert_outcomes(passed=1)

    def test_star_without_policy_forces_the_fixture_only(self, project: pytest.Pytester) -> None:
        """Without a default policy, ``*`` forces every rollout of the fixture, not the app's."""
        project.makepyfile(
            """
            import pytest
            import app

            POLICY = {"rollouts": {
                "p": {"stages": [{"name": "none", "percent": 0}]},
                "q": {"stages": [{"name": "none", "percent": 0}]},
            }}

            @pytest.mark.stagedroll(policy=POLICY)
            def test_star(stagedroll_rollouts):
                assert stagedroll_rollouts.enabled("p", "u")
                assert stagedroll_rollouts.enabled("q", "u")
                assert not app.ROLLOUTS.enabled("new-checkout", "u")
            """
        )
        result = project.runpytest("--stagedroll-force", "*=on")
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(
            [
                "stagedroll: *=on forces the stagedroll_rollouts fixture only"
                " (no --stagedroll-policy)"
            ]
        )

    def test_forces_the_fixture_and_the_marker_wins(self, project: pytest.Pytester) -> None:
        """The command line forces the fixture's rollouts too, unless its marker says otherwise."""
        project.makepyfile(
            """
            import pytest
            import app

            def test_unmarked(stagedroll_rollouts):
                assert stagedroll_rollouts.enabled("new-checkout", "u")

            @pytest.mark.stagedroll(force={"new-checkout": False})
            def test_marked(stagedroll_rollouts):
                assert not stagedroll_rollouts.enabled("new-checkout", "u")
                assert app.ROLLOUTS.enabled("new-checkout", "u")  # the marker is the fixture's
            """
        )
        result = project.runpytest(
            "--stagedroll-policy", "rollouts.toml", "--stagedroll-force", "new-checkout=on"
        )
        result.assert_outcomes(passed=2)

    def test_forces_cover_collection_and_fixtures_of_every_scope(
        self, project: pytest.Pytester
    ) -> None:
        """The forces hold at import time, in session-scoped fixtures and in teardowns."""
        project.makeconftest(
            """
            import pytest
            import app

            AT_IMPORT = app.ROLLOUTS.enabled("new-checkout", "u")

            @pytest.fixture(scope="session")
            def at_session_setup():
                return app.ROLLOUTS.enabled("new-checkout", "u")

            @pytest.fixture
            def checked_at_teardown():
                yield
                assert app.ROLLOUTS.enabled("new-checkout", "u")
            """
        )
        project.makepyfile(
            """
            import app
            from conftest import AT_IMPORT

            IN_MODULE = app.ROLLOUTS.enabled("new-checkout", "u")

            def test_scopes(at_session_setup, checked_at_teardown):
                assert (IN_MODULE, at_session_setup) == (True, True)
            """
        )
        # A conftest is imported before the session starts: its module-level decision is not.
        project.makepyfile(
            test_conftest="""
            from conftest import AT_IMPORT

            def test_import():
                assert AT_IMPORT is False
            """
        )
        result = project.runpytest("--stagedroll-force", "new-checkout=on")
        result.assert_outcomes(passed=2)

    def test_forces_end_with_the_session(self, project: pytest.Pytester) -> None:
        """After a forced session, every ``Rollouts`` decides by its policy again."""
        project.makepyfile(app_test(True, False, "OVERRIDE"))
        result = project.runpytest("--stagedroll-force=*=off", "--stagedroll-force=new-checkout=on",
                                   "--stagedroll-policy=rollouts.toml")  # fmt: skip
        result.assert_outcomes(passed=1)
        with Rollouts(project.path / "rollouts.toml") as rollouts:
            assert rollouts.decide("new-checkout", "u").reason is Reason.OUT_OF_COHORT
            assert rollouts.decide("new-search", "u").reason is Reason.IN_COHORT

    def test_forces_nest_inside_a_test_override(self, project: pytest.Pytester) -> None:
        """An ``override`` inside a test wins over the command line's, and ends with its block."""
        project.makepyfile(
            """
            import app
            from stagedroll.testing import override

            def test_nested():
                with override(None, "new-checkout", False):
                    assert not app.ROLLOUTS.enabled("new-checkout", "u")
                assert app.ROLLOUTS.enabled("new-checkout", "u")
            """
        )
        project.runpytest("--stagedroll-force", "new-checkout=on").assert_outcomes(passed=1)

    @pytest.mark.parametrize("value", ["new-checkout", "new-checkout=yes", "=on", "x=", "=", " "])
    def test_bad_value_is_a_usage_error(self, project: pytest.Pytester, value: str) -> None:
        """A value other than ``NAME=on`` or ``NAME=off`` stops pytest with the expected form."""
        result = project.runpytest("--stagedroll-force", value)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(
            ["*argument --stagedroll-force: expected NAME=on or NAME=off (NAME a rollout, or *"]
        )

    def test_unknown_name_with_policy_is_a_usage_error(self, project: pytest.Pytester) -> None:
        """With a default policy, forcing a rollout it does not have stops pytest."""
        result = project.runpytest(
            "--stagedroll-policy", "rollouts.toml", "--stagedroll-force", "new-chekout=on"
        )
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(
            [
                "ERROR: --stagedroll-force: no rollout 'new-chekout' in *rollouts.toml"
                " (it has: new-checkout, new-search)"
            ]
        )

    def test_unknown_name_without_policy_is_allowed(self, project: pytest.Pytester) -> None:
        """Without a default policy any name may be forced: the application's are not known."""
        project.makepyfile(app_test(False, True, "OUT_OF_COHORT"))
        project.runpytest("--stagedroll-force", "other=on").assert_outcomes(passed=1)


class TestFixtures:
    def test_clock_drives_the_rollouts(self, project: pytest.Pytester) -> None:
        """``stagedroll_clock`` is the rollouts' clock: advancing it lets ``tick`` take a step."""
        project.makepyfile(
            """
            import pytest

            POLICY = {"rollouts": {"x": {"advance": "auto", "stages": [
                {"name": "canary", "percent": 1, "bake": "30m"},
                {"name": "half", "percent": 50},
            ]}}}

            @pytest.mark.stagedroll(policy=POLICY)
            def test_tick(stagedroll_rollouts, stagedroll_clock):
                assert stagedroll_clock() == 1_700_000_000.0
                assert stagedroll_rollouts.clock is stagedroll_clock
                assert stagedroll_rollouts.tick() == []
                stagedroll_clock.advance("30m")
                [step] = stagedroll_rollouts.tick()
                assert (step.to_stage, step.at) == (1, 1_700_001_800.0)
            """
        )
        project.runpytest().assert_outcomes(passed=1)

    def test_each_test_gets_fresh_fixtures(self, project: pytest.Pytester) -> None:
        """A test's transitions, clock and forces do not reach the next test."""
        project.makepyfile(
            f"""
            import pytest
            from stagedroll import Reason, Rollouts

            pytestmark = pytest.mark.stagedroll(policy={SMALL!r})

            @pytest.mark.stagedroll(force={{"x": True}})
            def test_first(stagedroll_rollouts, stagedroll_clock):
                stagedroll_clock.advance("1h")
                stagedroll_rollouts.kill("x")
                assert stagedroll_rollouts.decide("x", "u").reason is Reason.OVERRIDE
                with Rollouts({SMALL!r}) as other:  # the force is the fixture's alone
                    assert other.decide("x", "u").reason is Reason.OUT_OF_COHORT

            def test_second(stagedroll_rollouts, stagedroll_clock):
                assert stagedroll_clock() == 1_700_000_000.0
                assert stagedroll_rollouts.status("x").status.value == "running"
                assert stagedroll_rollouts.decide("x", "u").reason is Reason.OUT_OF_COHORT
            """
        )
        project.runpytest().assert_outcomes(passed=2)

    def test_fixture_rollouts_is_closed_after_the_test(self, project: pytest.Pytester) -> None:
        """The fixture's ``Rollouts`` closes its store at teardown."""
        project.makepyfile(
            f"""
            import pytest

            CLOSED = []

            @pytest.mark.stagedroll(policy={SMALL!r})
            def test_keep(stagedroll_rollouts):
                stagedroll_rollouts.store.close = lambda: CLOSED.append(True)

            def test_closed():
                assert CLOSED == [True]
            """
        )
        project.runpytest().assert_outcomes(passed=2)

    def test_fixtures_are_listed_and_none_is_autouse(self, project: pytest.Pytester) -> None:
        """Both fixtures are listed with their docs, and a test that asks for none has none."""
        result = project.runpytest("--fixtures")
        result.stdout.fnmatch_lines(
            [
                "stagedroll_clock -- *pytest_stagedroll.py:*",
                "*A fresh ``FakeClock``*",
                "stagedroll_rollouts -- *pytest_stagedroll.py:*",
                "*An isolated ``Rollouts`` on a fresh ``MemoryStore``*",
            ]
        )
        project.makepyfile(
            """
            def test_plain(request):
                assert [n for n in request.fixturenames if "stagedroll" in n] == []
            """
        )
        project.runpytest().assert_outcomes(passed=1)

    def test_auto_loaded_without_importing_stagedroll(self, project: pytest.Pytester) -> None:
        """The entry point loads the plugin in a new process, and a suite that does not use it
        never imports stagedroll."""
        project.makepyfile(
            """
            import sys

            def test_plain():
                assert "pytest_stagedroll" in sys.modules
                assert not [m for m in sys.modules if m.split(".")[0] == "stagedroll"]
            """
        )
        result = project.runpytest_subprocess("-p", "no:cacheprovider")
        result.assert_outcomes(passed=1)

    def test_options_are_listed_in_help(self, project: pytest.Pytester) -> None:
        """``--help`` shows the options and the ini option."""
        result = project.runpytest("--help")
        result.stdout.fnmatch_lines(
            [
                "stagedroll rollouts:",
                "*--stagedroll-policy=FILE*",
                "*--stagedroll-force=NAME=on|off*",
            ]
        )
        result.stdout.fnmatch_lines(["*stagedroll_policy (string):*"])


def closure(names: list[str]) -> set[str]:
    """The installed distributions ``names`` need, with them (their requirements, recursively)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        dist = importlib.metadata.distribution(name)
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def link_distributions(names: set[str], target: Path) -> None:
    """Link each top-level file and folder of the installed distributions ``names`` into
    ``target``."""
    target.mkdir()
    for name in names:
        dist = importlib.metadata.distribution(name)
        tops = {f.parts[0] for f in dist.files or []} - {"..", "__pycache__"}
        for top in tops:
            source = Path(str(dist.locate_file(top)))
            link = target / top
            if source.exists() and not link.exists() and not top.endswith(".pth"):
                link.symlink_to(source)


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run ``command``; fail the test with its output when it fails."""
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"{command} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


class TestInstalled:
    def test_entry_point_names_the_module(self) -> None:
        """The installed distribution registers ``pytest_stagedroll`` as pytest plugin
        ``stagedroll``."""
        plugins = importlib.metadata.entry_points(group="pytest11")
        [entry] = [ep for ep in plugins if ep.name == "stagedroll"]
        assert entry.value == "pytest_stagedroll"
        assert entry.dist is not None
        assert entry.dist.name == "stagedroll"

    def test_plugin_works_in_a_fresh_virtual_environment(self, tmp_path: Path) -> None:
        """A wheel built from the project, installed alone in a new virtual environment, gives
        pytest there the plugin, auto-loaded, without importing stagedroll until used."""
        # Build the wheel (hatchling from the index, unless this environment has it).
        dist = tmp_path / "dist"
        have_hatchling = importlib.util.find_spec("hatchling") is not None
        isolation = ["--no-build-isolation"] if have_hatchling else []
        run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(dist),
             str(ROOT)], cwd=tmp_path)  # fmt: skip
        [wheel] = dist.glob("stagedroll-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
            [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
            registered = archive.read(entry_points).decode()
        assert "[pytest11]\nstagedroll = pytest_stagedroll" in registered
        assert {"pytest_stagedroll.py", "stagedroll/__init__.py", "stagedroll/py.typed"} <= names

        # A new environment with no stagedroll: its dependencies and pytest's are linked in
        # from this one (offline), and the wheel installed by pip, as a user would.
        venv = tmp_path / "venv"
        run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
        python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
        purelib = Path(
            run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                cwd=tmp_path).strip()
        )  # fmt: skip
        needed = closure(["stagedroll", "pytest"]) - {"stagedroll"}
        link_distributions(needed, tmp_path / "deps")
        (purelib / "dependencies.pth").write_text(f"{tmp_path / 'deps'}\n")
        run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
             "--no-index", str(wheel)], cwd=tmp_path)  # fmt: skip

        project = tmp_path / "project"
        project.mkdir()
        (project / "pytest.ini").write_text("[pytest]\n")
        (project / "rollouts.toml").write_text(APP_POLICY)
        (project / "app.py").write_text(APP)
        (project / "test_app.py").write_text(app_test(True, False, "OVERRIDE"))
        (project / "test_fixture.py").write_text(
            f"""
import sys
from pathlib import Path

import pytest
import pytest_stagedroll

def test_from_the_new_environment():
    assert Path(pytest_stagedroll.__file__).is_relative_to({str(purelib)!r})
    assert Path(sys.modules["stagedroll"].__file__).is_relative_to({str(purelib)!r})

@pytest.mark.stagedroll(policy={SMALL!r}, force={{"x": True}})
def test_fixture(stagedroll_rollouts, stagedroll_clock):
    assert stagedroll_rollouts.enabled("x", "u")
    assert stagedroll_rollouts.clock is stagedroll_clock
"""
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHON"))}
        env.pop("VIRTUAL_ENV", None)
        out = run(
            [str(python), "-m", "pytest", "-p", "no:cacheprovider", "--strict-markers",
             "--stagedroll-force=new-checkout=on", "--stagedroll-force=new-search=off"],
            cwd=project, env=env,
        )  # fmt: skip
        assert "3 passed" in out

        # Loaded in every session, the plugin imports no stagedroll while nothing uses it.
        probe = (
            "import sys, pytest; code = pytest.main(['-q', '--co', '-p', 'no:cacheprovider']); "
            "print(sorted(m for m in sys.modules if 'stagedroll' in m.split('.')[0]))"
        )
        (project / "app.py").unlink()
        for test in ("test_app.py", "test_fixture.py"):
            (project / test).unlink()
        (project / "test_plain.py").write_text("def test_plain():\n    pass\n")
        out = run([str(python), "-c", probe], cwd=project, env=env)
        assert out.splitlines()[-1] == "['pytest_stagedroll']"


@pytest.fixture(name="bench_import")
def _bench_import(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    yield importlib.import_module("bench_import")
    sys.modules.pop("bench_import", None)


class TestBenchImport:
    def test_smoke_run_reports_both_sessions(
        self, bench_import: ModuleType, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A one-run benchmark prints both measures and finds stagedroll not imported."""
        assert bench_import.main(["--json", "--runs", "1"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert set(report["results"]) == {"import pytest", "pytest session"}
        for result in report["results"].values():
            assert result["with_plugin_us"] > 0
            assert result["without_plugin_us"] > 0
        assert report["stagedroll_imported"] is False
        assert report["plugin_imported"] is True
