"""The stagedroll pytest plugin: fixtures, a marker and options to force rollouts in a suite.

Installed with stagedroll (the ``pytest11`` entry point ``stagedroll``), so pytest loads it
in every session. It imports nothing of stagedroll until a test asks for one of its
fixtures or the command line uses one of its options: a suite that does not use it pays
for this module alone. ``-p no:stagedroll`` turns it off.

Fixtures (none of them autouse):

- ``stagedroll_clock``: a fresh :class:`stagedroll.testing.FakeClock`.
- ``stagedroll_rollouts``: an isolated :class:`stagedroll.Rollouts` on a fresh
  ``MemoryStore``, driven by ``stagedroll_clock``. Its policy is the marker's, else the
  default policy (``--stagedroll-policy``, else the ``stagedroll_policy`` ini option); its
  environment is the marker's, else none (``$STAGEDROLL_ENV`` is not read, so that a
  developer's shell cannot change a test). The forces of the command line and of the marker
  hold for the test's duration (the marker's win for the same rollout), and the
  ``Rollouts`` is closed afterwards.

The marker, on a test, a class or a module (the closest one wins, setting by setting; the
``force`` mappings are merged)::

    @pytest.mark.stagedroll(policy="tests/rollouts.toml", force={"new-checkout": True},
                            environment="prod")

``policy`` is a mapping in the policy file's shape, a :class:`stagedroll.Policy`, or the
path of a TOML, JSON or YAML file (relative to pytest's rootdir).

New paths that raise: in a session, a guard re-raises the new path's exception (after
recording it) instead of answering from its fallback, so a test sees the bug that
production would hide. ``--stagedroll-on-error fallback`` (or the ini option
``stagedroll_on_error = fallback``) keeps the fallback, ``policy`` follows the policy's
``on_error``; :func:`stagedroll.testing.on_error` changes it for a block, and a guard's
own ``reraise=`` always wins.

Options, to run a whole suite with some new paths forced on or off:

- ``--stagedroll-policy FILE``: the default policy of ``stagedroll_rollouts`` (relative to
  the current directory; the ini option ``stagedroll_policy`` is relative to the ini file).
  It is loaded when the session starts: a file that cannot be read or is invalid stops the
  run with a usage error.
- ``--stagedroll-force NAME=on|off`` (repeatable): force rollout ``NAME`` in every
  ``Rollouts`` (the application's own ones too, through :func:`stagedroll.testing.override`
  with ``rollouts=None``) and in ``stagedroll_rollouts``. ``NAME`` ``*`` means every rollout
  of the default policy; without a default policy, ``*`` applies to ``stagedroll_rollouts``
  only. A name forces over ``*`` whatever their order; for the same name, the last wins.
  With a default policy, a name it does not have is a usage error (a typo would otherwise
  force nothing).

The forces of ``--stagedroll-force`` hold from the start of the session to its end: test
collection (module imports), the setup and teardown of fixtures of every scope, and every
test call; not the import of the conftest files that pytest reads before the session starts.
Entered once for the session, they nest correctly with the overrides that fixtures of any
scope enter and leave. They live in a context variable (see ``override``): the main thread and the
asyncio tasks it creates see them, a thread that the application starts itself does not
(unless it runs its work in a copy of the caller's context).
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from stagedroll import Policy, Rollouts
    from stagedroll.testing import FakeClock

_EVERY = "*"
_MARKER = (
    "stagedroll(policy=None, force=None, environment=None): the policy (a mapping, a Policy "
    "or the path of a TOML, JSON or YAML file, relative to the rootdir), the forced rollouts "
    "({name: True or False}) and the environment of the stagedroll_rollouts fixture."
)
_MARKER_KEYWORDS = frozenset({"policy", "force", "environment"})
_ON_ERROR = ("raise", "fallback", "policy")
_ON_ERROR_BEFORE = pytest.StashKey[str | None]()

on_error: str | None = None
"""The session's ``stagedroll_on_error``: what a guard does with a new path's exception
(``"raise"``, ``"fallback"``, or ``"policy"``). stagedroll reads it from this module when
a new path raises, so that this plugin imports nothing of stagedroll."""


class _Settings:
    """What the command line and the ini file asked for, read once per session.

    (A plain class, not a dataclass: building one costs a fraction of a millisecond at
    import, in every session.)
    """

    __slots__ = ("every", "forces", "policy", "policy_path", "session")

    def __init__(self) -> None:
        self.policy_path: Path | None = None
        self.policy: Policy | None = None
        self.forces: dict[str, bool] = {}
        """The forced rollouts named on the command line (not ``*``)."""
        self.every: bool | None = None
        """The value of ``--stagedroll-force '*=...'``, if given."""
        self.session = contextlib.ExitStack()
        """The forces entered for the whole session."""

    def suite_forces(self) -> dict[str, bool]:
        """The rollouts forced in every ``Rollouts`` for the whole session."""
        everywhere: dict[str, bool] = {}
        if self.every is not None and self.policy is not None:
            everywhere = dict.fromkeys(self.policy.rollouts, self.every)
        return everywhere | self.forces

    def fixture_forces(self, names: list[str]) -> dict[str, bool]:
        """The command line's forces that apply to a fixture's rollouts called ``names``."""
        forced = dict.fromkeys(names, self.every) if self.every is not None else {}
        return forced | {name: on for name, on in self.forces.items() if name in names}


_SETTINGS = pytest.StashKey[_Settings]()


def _force_arg(text: str) -> tuple[str, bool]:
    """Read one ``--stagedroll-force`` value: ``NAME=on`` or ``NAME=off``."""
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip().lower()
    if not sep or not name or value not in ("on", "off"):
        raise argparse.ArgumentTypeError(
            f"expected NAME=on or NAME=off (NAME a rollout, or * for every rollout of the "
            f"policy), got {text!r}"
        )
    return name, value == "on"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add the ``--stagedroll-*`` options and the ``stagedroll_policy`` ini option."""
    group = parser.getgroup("stagedroll", "stagedroll rollouts")
    group.addoption(
        "--stagedroll-policy",
        metavar="FILE",
        default=None,
        help="the policy of the stagedroll_rollouts fixture when no marker gives one "
        "(TOML, JSON or YAML); '*' in --stagedroll-force means its rollouts",
    )
    group.addoption(
        "--stagedroll-force",
        metavar="NAME=on|off",
        action="append",
        default=[],
        type=_force_arg,
        help="force rollout NAME on or off in every Rollouts for the whole session "
        "(repeatable; NAME '*' means every rollout of --stagedroll-policy)",
    )
    group.addoption(
        "--stagedroll-on-error",
        choices=_ON_ERROR,
        default=None,
        help="what guards do with an exception of the new path in this session: raise it "
        "(the default: a test sees the bug), fall back, or follow the policy",
    )
    parser.addini(
        "stagedroll_on_error",
        help="the default --stagedroll-on-error: raise (default), fallback or policy",
        type="string",
        default="raise",
    )
    parser.addini(
        "stagedroll_policy",
        help="the default --stagedroll-policy, relative to the ini file",
        type="string",
        default="",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker; read the options, loading the default policy if one is named."""
    config.addinivalue_line("markers", _MARKER)
    global on_error  # noqa: PLW0603 - read by stagedroll when a new path raises
    mode = config.getoption("stagedroll_on_error") or config.getini("stagedroll_on_error")
    if mode not in _ON_ERROR:
        raise pytest.UsageError(
            f"stagedroll_on_error: {mode!r} is not one of {', '.join(_ON_ERROR)}"
        )
    config.stash[_ON_ERROR_BEFORE] = on_error  # an inner session (pytester) gives it back
    on_error = mode
    settings = _Settings()
    config.stash[_SETTINGS] = settings
    for name, on in config.getoption("stagedroll_force"):
        if name == _EVERY:
            settings.every = on
        else:
            settings.forces[name] = on
    option = config.getoption("stagedroll_policy")
    ini = config.getini("stagedroll_policy")
    if option:
        settings.policy_path = config.invocation_params.dir / option
        source = "--stagedroll-policy"
    elif ini:
        base = config.inipath.parent if config.inipath is not None else config.rootpath
        settings.policy_path = base / ini
        source = "stagedroll_policy (ini)"
    else:
        return
    settings.policy = _load_default_policy(settings.policy_path, source)
    unknown = sorted(set(settings.forces) - set(settings.policy.rollouts))
    if unknown:
        known = ", ".join(sorted(settings.policy.rollouts)) or "none"
        raise pytest.UsageError(
            f"--stagedroll-force: no rollout {', '.join(map(repr, unknown))} in "
            f"{settings.policy_path} (it has: {known})"
        )


def _load_default_policy(path: Path, option: str) -> Policy:
    from stagedroll import PolicyError, load_policy  # noqa: PLC0415 - lazy: the plugin loads in every session

    try:
        return load_policy(path)
    except PolicyError as exc:
        raise pytest.UsageError(f"{option}: {exc}") from None
    except OSError as exc:
        raise pytest.UsageError(f"{option}: cannot read {path}: {exc.strerror}") from None


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Say which policy and which forces the session runs with, when there are any."""
    settings = config.stash[_SETTINGS]
    lines = []
    if settings.policy_path is not None:
        lines.append(f"stagedroll: policy {settings.policy_path}")
    forces = settings.suite_forces()
    if forces:
        listing = ", ".join(f"{name}={'on' if on else 'off'}" for name, on in forces.items())
        lines.append(f"stagedroll: forced in every Rollouts: {listing}")
    if settings.every is not None and settings.policy is None:
        lines.append(
            f"stagedroll: *={'on' if settings.every else 'off'} forces the "
            "stagedroll_rollouts fixture only (no --stagedroll-policy)"
        )
    return lines


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Enter the command line's forces for every ``Rollouts``, for the whole session."""
    settings = session.config.stash[_SETTINGS]
    forces = settings.suite_forces()
    if not forces:
        return
    from stagedroll.testing import override  # noqa: PLC0415 - lazy: the plugin loads in every session

    for name, on in forces.items():
        settings.session.enter_context(override(None, name, on))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Leave the forces entered at the start of the session."""
    session.config.stash[_SETTINGS].session.close()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Give ``on_error`` back (to the policy, or to an outer session) once it is over."""
    global on_error  # noqa: PLW0603 - see pytest_configure
    on_error = config.stash.get(_ON_ERROR_BEFORE, None)


@pytest.fixture
def stagedroll_clock() -> FakeClock:
    """A fresh ``FakeClock``: pass it as a ``Rollouts``'s clock and ``advance`` it."""
    from stagedroll.testing import FakeClock  # noqa: PLC0415 - lazy: the plugin loads in every session

    return FakeClock()


@pytest.fixture
def stagedroll_rollouts(
    request: pytest.FixtureRequest, stagedroll_clock: FakeClock
) -> Iterator[Rollouts]:
    """An isolated ``Rollouts`` on a fresh ``MemoryStore``, from the marker's or the default policy.

    Its clock is ``stagedroll_clock``; the forces of the command line and of the marker
    (which wins) hold until the test ends.
    """
    from stagedroll import Rollouts, StagedrollError  # noqa: PLC0415 - lazy: the plugin loads in every session
    from stagedroll.testing import override  # noqa: PLC0415 - lazy: the plugin loads in every session

    config = request.config
    settings = config.stash[_SETTINGS]
    policy, forces, environment = _marker(request.node, config.rootpath)
    if policy is None:
        policy = settings.policy
    if policy is None:
        pytest.fail(
            "stagedroll_rollouts needs a policy: mark the test with "
            "@pytest.mark.stagedroll(policy=...), or run pytest with --stagedroll-policy FILE "
            "(or set stagedroll_policy in the ini file)",
            pytrace=False,
        )
    try:
        # No store given: the Rollouts makes (and owns, so closes) a fresh MemoryStore.
        rollouts = Rollouts(policy, environment=environment or "", clock=stagedroll_clock)
    except StagedrollError as exc:
        pytest.fail(f"stagedroll_rollouts: {exc}", pytrace=False)
    except OSError as exc:
        pytest.fail(f"stagedroll_rollouts: cannot read the policy: {exc}", pytrace=False)
    with rollouts, contextlib.ExitStack() as stack:
        for name, on in settings.fixture_forces(list(rollouts)).items():
            stack.enter_context(override(rollouts, name, on))
        unknown = sorted(set(forces) - set(rollouts))
        if unknown:
            pytest.fail(
                f"@pytest.mark.stagedroll(force=...): no rollout {', '.join(map(repr, unknown))}"
                f" in the policy (it has: {', '.join(sorted(rollouts)) or 'none'})",
                pytrace=False,
            )
        for name, on in forces.items():
            stack.enter_context(override(rollouts, name, on))
        yield rollouts


def _marker(node: pytest.Item, rootpath: Path) -> tuple[Any, dict[str, bool], str | None]:
    """The policy, forces and environment of the ``stagedroll`` markers on ``node``.

    The closest marker wins, setting by setting; the ``force`` mappings are merged.
    """
    policy: Any = None
    environment: str | None = None
    forces: dict[str, bool] = {}
    for mark in reversed(list(node.iter_markers("stagedroll"))):  # farthest first
        if mark.args:
            pytest.fail(
                "@pytest.mark.stagedroll takes keyword arguments only: "
                "policy=..., force={...}, environment=...",
                pytrace=False,
            )
        unknown = sorted(set(mark.kwargs) - _MARKER_KEYWORDS)
        if unknown:
            pytest.fail(
                f"@pytest.mark.stagedroll: unknown argument {', '.join(unknown)} "
                "(known: environment, force, policy)",
                pytrace=False,
            )
        if mark.kwargs.get("policy") is not None:
            policy = mark.kwargs["policy"]
        if mark.kwargs.get("environment") is not None:
            environment = mark.kwargs["environment"]
            if not isinstance(environment, str):
                pytest.fail(
                    "@pytest.mark.stagedroll(environment=...) must be a string, not "
                    f"{type(environment).__name__}",
                    pytrace=False,
                )
        forces |= _marker_forces(mark.kwargs.get("force"))
    if isinstance(policy, str | os.PathLike):
        policy = rootpath / policy
    return policy, forces, environment


def _marker_forces(force: object) -> dict[str, bool]:
    if force is None:
        return {}
    if not isinstance(force, Mapping) or not all(
        isinstance(name, str) and isinstance(on, bool) for name, on in force.items()
    ):
        pytest.fail(
            "@pytest.mark.stagedroll(force=...) must map rollout names to True or False, "
            f"got {force!r}",
            pytrace=False,
        )
    return dict(force)
