"""The ``stagedroll`` argument parser: the global options, and each command with its own."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .. import Action, __version__
from . import _commands, _dashboard, _explain, _import, _offline, _plot
from ._main import Context

__all__ = ["ACTIONS", "build_parser"]

ACTIONS = ("advance", "freeze", "unfreeze", "rollback", "kill", "complete")

_EXIT_CODES = """exit codes:
  0  ok
  1  a finding: validation errors, a refused transition, cohorts that are not nested,
     a rollout the policy is broken for or whose stored state is corrupt (status, list)
  2  usage error: bad arguments, no --store, an unknown rollout or environment
  3  the store is unreachable
  4  no stagedroll store there: the file does not exist or holds no rollout
     (--create starts a new store)
 70  an internal error of stagedroll (a bug: -v shows its traceback)"""


def _add_globals(parser: argparse.ArgumentParser, *, nested: bool) -> None:
    # On the subcommands the defaults are SUPPRESS, so that an option given before the
    # command is not reset by the subcommand's parser.
    def default(value: object) -> object:
        return argparse.SUPPRESS if nested else value

    group = parser.add_argument_group("global options")
    group.add_argument(
        "--policy",
        metavar="FILE",
        default=default(None),
        help="the policy file (default: $STAGEDROLL_POLICY)",
    )
    group.add_argument(
        "--store",
        metavar="URL",
        default=default(None),
        help="sqlite:///path.db, redis://host:6379/0 or memory:// (default: $STAGEDROLL_STORE)",
    )
    group.add_argument(
        "--create",
        action="store_true",
        default=default(False),
        help="start a new store when --store holds no stagedroll data (else: refused, exit 4)",
    )
    group.add_argument(
        "--env",
        metavar="NAME",
        default=default(None),
        help="the environment (default: $STAGEDROLL_ENV)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="machine-readable output (JSON on stdout; errors as JSON lines on stderr)",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default(False),
        help="add the statistics (e-values, r-hat, bars); log events on stderr",
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


Command = Callable[[Context], int]


def build_parser() -> argparse.ArgumentParser:
    """The ``stagedroll`` argument parser, every command with its options."""
    common = argparse.ArgumentParser(add_help=False)
    _add_globals(common, nested=True)
    parser = argparse.ArgumentParser(
        prog="stagedroll",
        description="Operate stagedroll rollouts: validate, inspect, steer and simulate.",
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_globals(parser, nested=False)
    parser.add_argument("--version", action="version", version=f"stagedroll {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Command, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            parents=[common],
            help=help,
            description=help,
            epilog=_EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(run=run)
        return sub

    sub = command("validate", _offline.validate, "check policy files; list every problem")
    sub.add_argument("files", nargs="*", metavar="FILE", help="default: the --policy file")

    sub = command("status", _commands.status, "where a rollout stands and why, in words")
    sub.add_argument("name", nargs="?", metavar="NAME", help="one rollout (default: list all)")
    command("list", _commands.status, "every rollout of the store and the policy, one a line")

    for action in ACTIONS:
        sub = command(action, _commands.transition, f"{Action(action).verb} a rollout")
        sub.add_argument("name", metavar="NAME")
        sub.add_argument("--reason", required=True, metavar="TEXT", help="why, for the history")
        sub.add_argument("--actor", metavar="NAME", help="who (default: the operating-system user)")
        if action in ("rollback", "unfreeze"):
            sub.add_argument(
                "--to",
                metavar="STAGE",
                help="the stage to land on: a stage name, or 0%% (before the first stage)",
            )

    sub = command("history", _commands.history, "the audit trail of a rollout, newest first")
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("--limit", type=_positive, metavar="N", help="at most N entries")

    sub = command("explain", _explain.explain, "the decision for one unit, step by step")
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("unit", metavar="UNIT")
    sub.add_argument(
        "--attr",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help='an attribute; VALUE is read as JSON when it parses (42, true, "4.2"), else as text',
    )

    sub = command("simulate", _offline.simulate_cohorts, "the cohort of each stage for N units")
    sub.add_argument("file", nargs="?", metavar="FILE", help="default: the --policy file")
    units = sub.add_mutually_exclusive_group()
    units.add_argument(
        "--units",
        type=_positive,
        default=100_000,
        metavar="N",
        help="simulate user-0 ... user-(N-1) (default 100000)",
    )
    units.add_argument(
        "--units-file", metavar="F", help="simulate the unit ids in F, one a line ('-': stdin)"
    )
    sub.add_argument("--plot", metavar="PNG", help="draw the cohort sizes (needs stagedroll[plot])")

    command("schema", _offline.schema, "the JSON Schema of the policy file")
    sub = command("import", _import.import_flags, "a policy from Unleash, GrowthBook, ... flags")
    _import.add_arguments(sub)
    command("tick", _commands.tick, "take the automatic steps that are due, once")
    sub = command("plot", _plot.plot, "draw a rollout's timeline or evidence (stagedroll[plot])")
    sub.add_argument("picture", choices=_plot.PICTURES, help="timeline or evidence")
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("--out", required=True, metavar="FILE", help="the picture: FILE.png or .svg")
    sub = command("dashboard", _dashboard.dashboard, "serve a live, read-only page of the rollouts")
    _dashboard.add_arguments(sub)
    return parser
