"""The command line's frame: a command's context (its store, its policy), and exit codes."""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qsl, unquote

import structlog

from .. import Policy, parse_policy
from .._document import decode, format_of, max_policy_bytes, read_document
from ..exceptions import (
    CorruptStateError,
    MissingExtraError,
    NoStoreError,
    PolicyError,
    StoreError,
    TransitionError,
    UnknownRolloutError,
)
from ..stores import Store, store_from_url
from ._render import SCHEMA_VERSION, dump_line, escaping, printable

__all__ = ["CliError", "Context", "main", "read_text", "shown_store"]

OK, FINDING, USAGE, STORE_DOWN, NO_STORE, INTERNAL = 0, 1, 2, 3, 4, 70

_KINDS = {OK: "ok", FINDING: "finding", USAGE: "usage", STORE_DOWN: "store_down"}
_KINDS.update({NO_STORE: "no_store", INTERNAL: "internal"})


class CliError(Exception):
    """An expected failure of a command: its lines for stderr, and the exit code.

    ``message`` is one line, or a list of them (a policy's problems); each is printed with
    its own newlines escaped, so that text it quotes cannot forge a line. ``kind`` names
    the failure under ``--json`` (default: from the exit code), ``details`` are its parts
    there (a policy's problems: ``{"path", "line", "message"}``).
    """

    def __init__(
        self,
        message: str | list[str],
        code: int,
        *,
        kind: str | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        self.lines = message if isinstance(message, list) else [message]
        super().__init__("\n".join(self.lines))
        self.code = code
        self.kind = kind or _KINDS.get(code, "error")
        self.details = details or []


def shown_store(url: str) -> str:
    """The store of ``url`` for a message, with no secret in it.

    A SQLite file's absolute path; else the URL without its credentials and with no query
    option but ``prefix``.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "(a malformed store URL)"
    if scheme.lower() == "sqlite":
        path = unquote(rest.split("?", 1)[0])
        return str(Path(path[1:] or ".").resolve()) if path.startswith("/") else path
    if "@" in rest:  # the password may hold any character: cut at the last "@"
        userinfo, rest = rest.rsplit("@", 1)
        user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
        rest = f"{user}:***@{rest}" if user else f"***@{rest}"
    where, _, query = rest.partition("?")
    kept = [f"{k}={v}" for k, v in parse_qsl(query.split("#", 1)[0]) if k == "prefix"]
    return f"{scheme}://{where.split('#', 1)[0]}" + (f"?{'&'.join(kept)}" if kept else "")


def secrets_of(url: str) -> list[str]:
    """The passwords a store URL holds (its user information's, a ``password=`` option's)."""
    scheme, _, rest = url.partition("://")
    found: list[str] = []
    if "@" in rest:
        userinfo = rest.rsplit("@", 1)[0]
        if ":" in userinfo:
            found.append(userinfo.split(":", 1)[1])
        elif scheme.lower().startswith("redis"):  # redis://secret@host: taken for a password
            found.append(userinfo)
        rest = rest.rsplit("@", 1)[1]
    query = rest.partition("?")[2]
    found.extend(v for k, v in parse_qsl(query) if "pass" in k.lower() or "token" in k.lower())
    return [s for s in {*found, *(unquote(s) for s in found)} if len(s) >= 1]


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with each of ``secrets`` (longest first) replaced by ``***``."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


@dataclass
class Context:
    """A command's arguments, its output streams, and what it opened (closed by ``main``)."""

    args: argparse.Namespace
    out: TextIO
    err: TextIO
    cleanup: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    secrets: list[str] = field(default_factory=list)
    """The store URL's passwords: never printed (:func:`scrub`)."""

    @property
    def json(self) -> bool:
        """Whether ``--json`` asked for machine-readable output."""
        return bool(getattr(self.args, "json", False))

    @property
    def verbose(self) -> bool:
        """Whether ``-v`` asked for the statistics (and the log events)."""
        return bool(getattr(self.args, "verbose", False))

    def note(
        self, message: str, *, kind: str = "note", label: str = "note", **fields: object
    ) -> None:
        """One line on stderr, for people (never mixed into the output); JSON under --json.

        ``label`` starts the line (``stagedroll: note: ...``, ``stagedroll: warning: ...``).
        """
        if self.json:
            dump_line(
                {
                    "schema_version": SCHEMA_VERSION,
                    "warning": {"kind": kind, "message": message, **fields},
                },
                self.err,
            )
        else:
            self.err.write(f"stagedroll: {label}: {printable(message)}\n")

    def problem(self, message: str, *, kind: str, code: int = FINDING, **fields: object) -> None:
        """An error that does not stop the command (a corrupt state of one rollout)."""
        if self.json:
            error = {
                "code": code,
                "kind": kind,
                "message": message,
                "details": [fields] * bool(fields),
            }
            dump_line({"schema_version": SCHEMA_VERSION, "error": error}, self.err)
        else:
            self.err.write(f"stagedroll: {printable(message)}\n")

    def configured_policy(self) -> Path | None:
        """``--policy``, else ``$STAGEDROLL_POLICY``; ``None`` when neither is given."""
        path = getattr(self.args, "policy", None) or os.environ.get("STAGEDROLL_POLICY")
        return Path(path) if path else None

    def policy_path(self) -> Path:
        """``--policy``, else ``$STAGEDROLL_POLICY``; a usage error when neither is given."""
        path = self.configured_policy()
        if path is None:
            raise CliError("no policy file: pass --policy FILE or set STAGEDROLL_POLICY", USAGE)
        return path

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
            from ._offline import located, problem_lines  # noqa: PLC0415 - validate's renderer

            raise CliError(
                problem_lines(exc, text),
                FINDING,
                kind="policy_invalid",
                details=located(exc.problems, exc.source, text),
            ) from None
        self.check_environment(policy)
        return policy

    def check_environment(self, policy: Policy) -> None:
        """Refuse an environment (``--env``) that ``policy`` does not declare: a usage error."""
        try:
            policy.check_environment(self.environment())
        except PolicyError as exc:
            raise CliError("; ".join(p.message for p in exc.problems), USAGE) from None

    def store_url(self) -> str:
        """``--store``, else ``$STAGEDROLL_STORE``; a usage error when neither names one."""
        url = getattr(self.args, "store", None) or os.environ.get("STAGEDROLL_STORE")
        if not url:
            raise CliError(
                "no store named: pass --store URL or set STAGEDROLL_STORE "
                "(sqlite:///path/to/state.db, redis://host:6379/0)",
                USAGE,
            )
        return str(url)

    def store(self) -> Store:
        """The store of ``--store`` (or ``$STAGEDROLL_STORE``), opened, holding stagedroll data.

        A store that holds no rollout (a SQLite file that does not exist, an empty Redis
        prefix) is refused, naming where it looked, unless ``--create`` is given.
        """
        url = self.store_url()
        self.secrets = secrets_of(url)
        create = bool(getattr(self.args, "create", False))
        shown = shown_store(url)
        hint = "pass --create to start a new store here"
        sqlite = url.partition("://")[0].lower() == "sqlite" and Path(shown).is_absolute()
        if not create and sqlite and not Path(shown).exists():
            raise CliError(
                f"no stagedroll store at {shown}: the file does not exist "
                f"(a misspelt path?); {hint}",
                NO_STORE,
            )
        try:
            store = store_from_url(url, create=create)
            self.cleanup.callback(store.close)
            names = store.names()
        except (ValueError, ImportError) as exc:
            raise CliError(str(exc), USAGE) from None
        except NoStoreError as exc:  # a file that is not a store (no tables) is not created
            raise CliError(f"{exc}; {hint}" if exc.creatable else str(exc), NO_STORE) from None
        except Exception as exc:  # a store that does not wrap its client's errors
            raise StoreError(f"{shown}: {type(exc).__name__}: {exc}") from exc
        if not create and not names:
            raise CliError(
                f"no stagedroll data in {shown}: expected the state of at least one rollout, "
                f"as a service using this store writes it (a wrong URL or prefix?); {hint}",
                NO_STORE,
            )
        return store


def read_text(path: Path) -> str:
    """The text of the policy file ``path``, read once, within the limits of ``load_policy``.

    A FIFO, a device, a directory, a file over the size limit, or bytes that are not UTF-8
    raise :class:`PolicyError`; a file that cannot be read, :class:`OSError`.
    """
    format_of(path)  # an unknown suffix is refused before the file is touched
    limit = max_policy_bytes(source=str(path))
    return decode(read_document(path, max_bytes=limit), source=str(path))


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


def _json_error(err: TextIO, code: int, kind: str, lines: list[str], details: list[Any]) -> None:
    message = "\n".join(lines[:1]) if details or len(lines) <= 1 else "\n".join(lines)
    error = {"code": code, "kind": kind, "message": message, "details": details}
    dump_line({"schema_version": SCHEMA_VERSION, "error": error}, err)


def _parse(
    parser: argparse.ArgumentParser, argv: list[str] | None, out: TextIO, err: TextIO
) -> argparse.Namespace | int:
    """The parsed arguments, or the exit code of argparse's own usage error (or --help)."""
    words = sys.argv[1:] if argv is None else argv
    as_json = "--json" in words
    said = io.StringIO()
    try:  # argparse prints the arguments it refuses: escaped too
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(said if as_json else err):
            return parser.parse_args(argv)
    except SystemExit as exc:  # argparse's own usage errors (2), and --help (0)
        code = exc.code if isinstance(exc.code, int) else USAGE
        if as_json and code != OK:
            last = [line for line in said.getvalue().splitlines() if line.strip()][-1:]
            message = last[0].split(": error: ", 1)[-1] if last else "bad arguments"
            _json_error(err, code, "usage", [message], [])
        return code


def main(argv: list[str] | None = None) -> int:
    """Run the ``stagedroll`` command line with ``argv`` (default: ``sys.argv[1:]``).

    Returns the exit code: 0 ok, 1 a finding, 2 a usage error, 3 the store is unreachable,
    4 no stagedroll store at the URL, 70 an internal error. What it prints escapes the
    control characters of text it did not write (:func:`~stagedroll.cli._render.printable`);
    JSON output stays exact JSON, and under ``--json`` an error is one JSON line on stderr.
    """
    from ._parser import build_parser  # noqa: PLC0415 - it imports the commands, which import this

    out, err = escaping(sys.stdout), escaping(sys.stderr)
    args = _parse(build_parser(), argv, out, err)
    if isinstance(args, int):
        return args
    ctx = Context(args, out, err)
    run: Callable[[Context], int] = args.run
    verbose = ctx.verbose
    message: str | list[str]
    kind, details = "", []
    try:
        with _logging(verbose, err), ctx.cleanup:
            return run(ctx)
    except CliError as exc:
        message, code, kind, details = exc.lines, exc.code, exc.kind, exc.details
    except UnknownRolloutError as exc:
        message, code, kind = str(exc), USAGE, "unknown_rollout"
    except TransitionError as exc:
        message, code, kind = str(exc), FINDING, "transition_refused"
    except CorruptStateError as exc:
        message, code, kind = str(exc), FINDING, "state_corrupt"
    except StoreError as exc:
        message, code, kind = f"store unreachable: {exc}", STORE_DOWN, "store_down"
    except PolicyError as exc:
        from ._offline import located, problem_lines  # noqa: PLC0415 - validate's renderer

        message, code, kind = problem_lines(exc), FINDING, "policy_invalid"
        details = located(exc.problems, exc.source, None)
    except MissingExtraError as exc:
        message, code, kind = str(exc), USAGE, "missing_extra"
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: one line, as for any error (the traceback with -v)
        if verbose:
            err.write(traceback.format_exc())
        name = type(exc).__name__
        shown = str(exc) if len(str(exc)) <= 300 else str(exc)[:297] + "..."
        message, code = f"internal error ({name}: {shown}); please report it", INTERNAL
        kind = "internal"
    parts = [
        scrub(part, ctx.secrets) for part in (message if isinstance(message, list) else [message])
    ]
    if ctx.json:
        _json_error(err, code, kind, parts, details)
        return code
    # One line per policy problem; any other message is one line, its own newlines escaped
    # (an actor or a reason it quotes must not forge a line).
    lines = "\n".join(printable(line) for line in parts)
    err.write(f"stagedroll: {lines}\n")
    return code
