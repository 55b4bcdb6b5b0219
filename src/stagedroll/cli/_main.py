"""The command line's frame: the parser, the global options, and the errors behind exit codes."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import structlog

from .. import Policy, Rollouts, __version__, parse_policy
from .._document import decode, format_of, max_policy_bytes, read_document
from ..exceptions import (
    MissingExtraError,
    PolicyError,
    StoreError,
    TransitionError,
    UnknownRolloutError,
)
from ..stores import Store, store_from_url
from ._render import escaping, printable

__all__ = ["CliError", "Context", "main", "read_text"]

OK, FINDING, USAGE, STORE_DOWN, INTERNAL = 0, 1, 2, 3, 70
ACTIONS = ("advance", "freeze", "unfreeze", "rollback", "kill", "complete")

_EXIT_CODES = """exit codes:
  0  ok
  1  a finding: validation errors, a refused transition, cohorts that are not nested
  2  usage error: bad arguments, no --policy, an unknown rollout or environment
  3  the store is unreachable
 70  an internal error of stagedroll (a bug: -v shows its traceback)"""


class CliError(Exception):
    """An expected failure of a command: its lines for stderr, and the exit code.

    ``message`` is one line, or a list of them (a policy's problems); each is printed with
    its own newlines escaped, so that text it quotes cannot forge a line.
    """

    def __init__(self, message: str | list[str], code: int) -> None:
        self.lines = message if isinstance(message, list) else [message]
        super().__init__("\n".join(self.lines))
        self.code = code


@dataclass
class Context:
    """A command's arguments, its output streams, and what it opened (closed by ``main``)."""

    args: argparse.Namespace
    out: TextIO
    err: TextIO
    cleanup: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def json(self) -> bool:
        """Whether ``--json`` asked for machine-readable output."""
        return bool(getattr(self.args, "json", False))

    def note(self, message: str) -> None:
        """One line on stderr, for people (never mixed into the output)."""
        self.err.write(f"stagedroll: {message}\n")

    def policy_path(self) -> Path:
        """``--policy``, else ``$STAGEDROLL_POLICY``; a usage error when neither is given."""
        path = getattr(self.args, "policy", None) or os.environ.get("STAGEDROLL_POLICY")
        if not path:
            raise CliError("no policy file: pass --policy FILE or set STAGEDROLL_POLICY", USAGE)
        return Path(path)

    def environment(self) -> str | None:
        """``--env``, else ``$STAGEDROLL_ENV``; ``None`` when neither names one."""
        return getattr(self.args, "env", None) or os.environ.get("STAGEDROLL_ENV") or None

    def load(self, path: Path) -> Policy:
        """The policy at ``path``, read once within the limits, checked against the environment."""
        text: str | None = None
        try:
            text = read_text(path)
            policy = parse_policy(text, format=format_of(path), source=str(path))
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise CliError(f"cannot read the policy {str(path)!r}: {reason}", USAGE) from None
        except PolicyError as exc:
            from ._offline import problem_lines  # noqa: PLC0415 - the validate command's renderer

            raise CliError(problem_lines(exc, text), FINDING) from None
        try:
            policy.check_environment(self.environment())
        except PolicyError as exc:
            raise CliError("; ".join(p.message for p in exc.problems), USAGE) from None
        return policy

    def store(self) -> Store:
        """The store of ``--store`` (or ``$STAGEDROLL_STORE``, else ``memory://``), opened."""
        url = getattr(self.args, "store", None) or os.environ.get("STAGEDROLL_STORE")
        if not url:
            self.note(
                "note: no store named (--store URL or STAGEDROLL_STORE), so memory:// is used: "
                "it holds nothing between runs"
            )
            url = "memory://"
        try:
            store = store_from_url(url)
        except (ValueError, ImportError) as exc:
            raise CliError(str(exc), USAGE) from None
        self.cleanup.callback(store.close)
        return store

    def rollouts(self) -> Rollouts:
        """The policy's rollouts, bound to the store and environment of the options."""
        policy = self.load(self.policy_path())
        return Rollouts(policy, store=self.store(), environment=self.environment())


def read_text(path: Path) -> str:
    """The text of the policy file ``path``, read once, within the limits of ``load_policy``.

    A FIFO, a device, a directory, a file over the size limit, or bytes that are not UTF-8
    raise :class:`PolicyError`; a file that cannot be read, :class:`OSError`.
    """
    format_of(path)  # an unknown suffix is refused before the file is touched
    limit = max_policy_bytes(source=str(path))
    return decode(read_document(path, max_bytes=limit), source=str(path))


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
        help="memory://, sqlite:///path.db or redis://host:6379/0 "
        "(default: $STAGEDROLL_STORE, else memory://)",
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
        help="machine-readable output (JSON on stdout)",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default(False),
        help="show stagedroll's log events on stderr",
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
    from . import _commands, _offline  # noqa: PLC0415 - they import this module's helpers

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

    sub = command("status", _commands.status, "where each rollout stands, with its evidence")
    sub.add_argument("name", nargs="?", metavar="NAME", help="one rollout (default: all)")

    for action in ACTIONS:
        sub = command(action, _commands.transition, f"{action} a rollout")
        sub.add_argument("name", metavar="NAME")
        sub.add_argument("--reason", required=True, metavar="TEXT", help="why, for the history")
        sub.add_argument("--actor", metavar="NAME", help="who (default: the operating-system user)")

    sub = command("history", _commands.history, "the audit trail of a rollout, newest first")
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("--limit", type=_positive, metavar="N", help="at most N entries")

    sub = command("explain", _commands.explain, "the decision for one unit, step by step")
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
    command("tick", _commands.tick, "take the automatic steps that are due, once")
    return parser


@contextlib.contextmanager
def _logging(verbose: bool, err: TextIO) -> Iterator[None]:
    """Keep the library's log events off stdout: on stderr with ``-v``, else dropped.

    The command's output is its own, so this holds even when a program that configured
    structlog calls ``main``; its configuration is restored afterwards.
    """
    configured, before = structlog.is_configured(), structlog.get_config()
    level = logging.INFO if verbose else logging.CRITICAL
    structlog.configure(
        # structlog's default chain, without colors: ``err`` escapes control characters,
        # those of the colors included, since a logged value (a reason) may hold some.
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.StackInfoRenderer(),
            structlog.dev.set_exc_info,
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(err),
        cache_logger_on_first_use=False,
    )
    try:
        yield
    finally:
        structlog.reset_defaults()
        if configured:
            structlog.configure(**before)


def main(argv: list[str] | None = None) -> int:
    """Run the ``stagedroll`` command line with ``argv`` (default: ``sys.argv[1:]``).

    Returns the exit code: 0 ok, 1 a finding, 2 a usage error, 3 the store is unreachable,
    70 an internal error. What it prints escapes the control characters of text it did not
    write (:func:`~stagedroll.cli._render.printable`); JSON output stays exact JSON.
    """
    out, err = escaping(sys.stdout), escaping(sys.stderr)
    parser = build_parser()
    try:  # argparse prints the arguments it refuses: escaped too
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse's own usage errors (2), and --help (0)
        return exc.code if isinstance(exc.code, int) else USAGE
    ctx = Context(args, out, err)
    run: Command = args.run
    verbose = bool(getattr(args, "verbose", False))
    message: str | list[str]
    try:
        with _logging(verbose, err), ctx.cleanup:
            return run(ctx)
    except CliError as exc:
        message, code = exc.lines, exc.code
    except UnknownRolloutError as exc:
        message, code = str(exc), USAGE
    except TransitionError as exc:
        message, code = str(exc), FINDING
    except StoreError as exc:
        message, code = f"store unreachable: {exc}", STORE_DOWN
    except PolicyError as exc:
        from ._offline import problem_lines  # noqa: PLC0415 - the validate command's renderer

        message, code = problem_lines(exc), FINDING
    except MissingExtraError as exc:
        message, code = str(exc), USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: one line, as for any error (the traceback with -v)
        if verbose:
            err.write(traceback.format_exc())
        name = type(exc).__name__
        shown = str(exc) if len(str(exc)) <= 300 else str(exc)[:297] + "..."
        message, code = f"internal error ({name}: {shown}); please report it", INTERNAL
    # One line per policy problem; any other message is one line, its own newlines escaped
    # (an actor or a reason it quotes must not forge a line).
    parts = message if isinstance(message, list) else [message]
    lines = "\n".join(printable(line) for line in parts)
    err.write(f"stagedroll: {lines}\n")
    return code
