"""``stagedroll dashboard``: serve the live, read-only page of every rollout of the store."""

from __future__ import annotations

import argparse
import contextlib

from ..dashboard import DEFAULT_HOST, DEFAULT_PORT, Dashboard
from ._main import OK, USAGE, CliError, Context
from ._render import SCHEMA_VERSION, dump_line
from ._steer import Operating

__all__ = ["add_arguments", "dashboard"]


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {value}")
    return value


def add_arguments(sub: argparse.ArgumentParser) -> None:
    """The options of ``dashboard``: ``--host`` and ``--port``."""
    sub.add_argument(
        "--host",
        default=DEFAULT_HOST,
        metavar="ADDR",
        help=f"the address to listen on (default {DEFAULT_HOST}: this machine only)",
    )
    sub.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        metavar="N",
        help=f"the port (default {DEFAULT_PORT}; 0: any free one)",
    )


def dashboard(ctx: Context) -> int:
    """Serve the dashboard until ``Ctrl-C``: the policy's rollouts and the store's others.

    The store is refused as by the other state commands (none named, none there); the
    policy is read leniently, and a rollout it is broken for is shown as such.
    """
    op = Operating(ctx)
    host, port = ctx.args.host, ctx.args.port
    try:
        board = Dashboard(
            op.rollouts, steering=op.steering, broken=op.loaded.broken, host=host, port=port
        )
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise CliError(f"cannot serve on {host}:{port}: {reason}", USAGE) from None
    if op.rollouts is not None:
        ctx.cleanup.callback(op.rollouts.close)  # after the dashboard (a stack)
    ctx.cleanup.callback(board.close)
    if not board.loopback_only:
        ctx.note(
            f"{board.url} is not on the loopback and has no authentication: anyone who "
            "reaches it reads every rollout (put your own authentication in front of it)",
            kind="dashboard_exposed",
            label="warning",
            url=board.url,
        )
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: the way to stop it, even at once
        if ctx.json:
            dump_line({"schema_version": SCHEMA_VERSION, "url": board.url}, ctx.out)
        else:
            ctx.out.write(f"stagedroll dashboard: {board.url} (read-only; Ctrl-C stops it)\n")
        ctx.out.flush()
        board.serve_forever()
    return OK
