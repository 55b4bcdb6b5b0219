"""``plot timeline|evidence NAME --out FILE``: a picture of a rollout, from its history.

The history is read like ``history`` reads it: through the policy's ``Rollouts`` for a
rollout the policy has, else from the store alone (:class:`~stagedroll.cli._steer.Operating`).
The stage names come from the policy, else from the ladder stored with the state; the
evidence's freeze and rollback bars from the policy only (the store does not keep them).
"""

from __future__ import annotations

from pathlib import Path

from .. import RolloutStatus, Transition, plots
from ._main import OK, USAGE, CliError, Context
from ._render import SCHEMA_VERSION, dump, printable
from ._steer import Operating

__all__ = ["plot"]

PICTURES = ("timeline", "evidence")


def _read(op: Operating, name: str) -> tuple[list[Transition], RolloutStatus | None]:
    """The rollout's whole history, and its status when the policy has it."""
    if op.resolve(name) == "policy":
        assert op.rollouts is not None
        return op.rollouts.history(name), op.rollouts.status(name)
    return op.steering.history(name), None


def plot(ctx: Context) -> int:
    """``plot timeline|evidence NAME --out FILE``: draw the picture into a PNG or SVG file."""
    picture, name, out = ctx.args.picture, ctx.args.name, Path(ctx.args.out)
    if out.suffix.lower() not in (".png", ".svg"):
        raise CliError(f"--out: {printable(str(out))!r} must end in .png or .svg", USAGE)
    op = Operating(ctx)
    entries, status = _read(op, name)
    if not entries:
        raise CliError(f"rollout {name!r} has no history to draw", USAGE, kind="no_history")
    if picture == "timeline":
        ladder = status.stages if status is not None else op.ladder(name)
        figure = plots.timeline(entries, ladder)
    else:
        health = status.health if status is not None and status.health.enabled else None
        figure = plots.evidence(
            entries,
            freeze_at=health.freeze_at_errors if health is not None else None,
            rollback_at=health.rollback_at_errors if health is not None else None,
        )
    try:
        plots.save(figure, out)
    except OSError as exc:
        raise CliError(
            f"cannot write {printable(str(out))!r}: {exc.strerror or exc}", USAGE
        ) from None
    if ctx.json:
        document = {"schema_version": SCHEMA_VERSION, "rollout": name, "picture": picture}
        dump({**document, "out": str(out), "entries": len(entries)}, ctx.out)
        return OK
    where = "" if status is not None else f" ({op.marker(name)}: from the store alone)"
    ctx.out.write(printable(f"{picture} of {name}{where}: {out}") + "\n")
    return OK
