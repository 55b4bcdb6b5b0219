"""The commands that work on the store's state: status and list, the transitions, history, tick.

``status``, ``list``, ``history``, ``freeze``, ``unfreeze``, ``rollback`` and ``kill`` work
from the store alone for a rollout the policy does not have, or is broken for
(:class:`~stagedroll.cli._steer.Operating`); ``advance``, ``complete`` and ``tick`` need
the rollout's policy.
"""

from __future__ import annotations

from collections.abc import Iterable

from .. import Action, RolloutState, RolloutStatus, Status, Transition
from ..exceptions import StoreError, TransitionError
from ._main import FINDING, OK, CliError, Context
from ._render import (
    SCHEMA_VERSION,
    Ladder,
    dump,
    fit,
    iso,
    shorten,
    status_object,
    stored_object,
    table,
    transition_object,
)
from ._steer import Operating
from ._words import (
    Standing,
    error_lines,
    evidence_words,
    headline,
    history_lines,
    short_place,
    since_line,
    statistics,
    transition_lines,
    who,
)

__all__ = ["history", "status", "tick", "transition"]

# The status an action leads to, where doing it twice is what "already" means.
_ALREADY = {
    Action.FREEZE: Status.FROZEN,
    Action.KILL: Status.KILLED,
    Action.COMPLETE: Status.COMPLETE,
}
_NOT_IN_POLICY, _BROKEN = "*", "!"


def _emit(ctx: Context, lines: Iterable[str]) -> None:
    """Write each line, escaped and wrapped to the width of the output."""
    for line in lines:
        for part in fit(line):
            ctx.out.write(part + "\n")


def _unreadable(exc: Exception) -> bool:
    """Whether the store answered with a state it cannot read (not a store that is down)."""
    return isinstance(exc, ValueError) or isinstance(exc.__cause__, ValueError)


def _standing(st: RolloutStatus) -> Standing:
    return Standing(
        rollout=st.rollout,
        status=st.status,
        stage=st.stage,
        ladder=tuple((s.name, s.percent) for s in st.stages),
        since=st.since,
        version=st.version,
        actor=st.actor,
        reason=st.reason,
        mode=st.mode,
        percent=st.percent,
        environment=st.environment,
        killed_here=st.killed_here,
    )


def _stored_standing(name: str, state: RolloutState, environment: str | None) -> Standing:
    return Standing(
        rollout=name,
        status=state.status,
        stage=state.stage,
        ladder=state.stages,
        since=state.since,
        version=state.version,
        actor=state.actor,
        reason=state.reason,
        environment=environment,
    )


def _short_state(s: Standing) -> str:
    """The state for a table cell: ``frozen by the health gate``, ``killed by alice``."""
    if s.killed_here:
        return "killed here ($STAGEDROLL_KILL)"
    if s.status in (Status.RUNNING, Status.COMPLETE):
        return str(s.status)
    by = who(s.actor, s.status)
    by = by if len(by) <= 24 else by[:21] + "..."
    return f"{str(s.status).replace('_', ' ')} by {by}"


def _short_stage(s: Standing) -> str:
    if s.mode == "off":
        return "off in this environment"
    if s.mode == "fixed" and s.percent is not None:
        return f"fixed at {s.percent:g} %"
    return short_place(s.ladder, s.stage)


class _Found:
    """What ``status`` found of each rollout: live statuses, stored states, problems."""

    def __init__(self, ctx: Context, op: Operating, names: list[str]) -> None:
        self.rows: list[tuple[str, RolloutStatus | RolloutState | None]] = []
        self.unreadable: list[tuple[str, str]] = []
        for name in names:
            try:
                if op.in_policy(name):
                    assert op.rollouts is not None
                    self.rows.append((name, op.rollouts.status(name)))
                else:
                    self.rows.append((name, op.steering.load(name)))
            except (StoreError, ValueError) as exc:  # noqa: PERF203 - one bad state of many
                if not _unreadable(exc):
                    raise
                self.unreadable.append((name, str(exc)))


def status(ctx: Context) -> int:
    """``status [NAME]`` and ``list``: where each rollout stands, in words.

    Without a name (or as ``list``), every rollout of the store and of the policy, one a
    line. A rollout whose stored state cannot be read, or that the policy is broken for,
    is a finding (exit code 1); the others are shown.
    """
    op = Operating(ctx)
    name = getattr(ctx.args, "name", None)
    if name is not None:
        op.resolve(name)
    names = [name] if name is not None else op.names()
    found = _Found(ctx, op, names)
    env = ctx.environment()
    if ctx.json:
        objects = [
            status_object(got)
            if isinstance(got, RolloutStatus)
            else stored_object(
                n,
                got,
                problem=op.loaded.broken.get(n),
                environment=env,
                errors=op.steering.errors(n) if got is not None else (),
            )
            for n, got in found.rows
        ]
        document = {"schema_version": SCHEMA_VERSION, "environment": env, "rollouts": objects}
        dump(document, ctx.out)
    elif name is not None and found.rows:
        if env is not None:
            _emit(ctx, [f"environment: {env}"])
        _emit(ctx, _detail(ctx, op, *found.rows[0]))
    elif name is None:
        _emit(ctx, _listing(op, found, env))
    for bad, message in found.unreadable:
        ctx.problem(message, kind="state_unreadable", rollout=bad)
    broken = name is None and any(n in op.loaded.broken for n in names)
    return FINDING if found.unreadable or broken else OK


_NAME_COLUMNS = 40  # of a rollout's name in the list (status NAME shows it whole)


def _listing(op: Operating, found: _Found, env: str | None) -> list[str]:
    """Every rollout, one a line: name (and its marker), state, stage, since."""
    rows, marks = [], set()
    for name, got in found.rows:
        mark = (
            "" if op.in_policy(name) else (_BROKEN if name in op.loaded.broken else _NOT_IN_POLICY)
        )
        marks.add(mark)
        shown = shorten(name, _NAME_COLUMNS) + (f" {mark}" if mark else "")  # one line a row
        if got is None:
            rows.append((shown, "no state in the store", "-", "-"))
            continue
        s = _standing(got) if isinstance(got, RolloutStatus) else _stored_standing(name, got, env)
        rows.append((shown, _short_state(s), _short_stage(s), iso(s.since)))
    lines = [f"environment: {env}"] if env is not None else []
    if not rows:
        return [*lines, "no rollout in the policy or the store"]
    lines.extend(table(("ROLLOUT", "STATE", "STAGE", "SINCE"), rows).split("\n"))
    if _NOT_IN_POLICY in marks:
        lines.append(f"{_NOT_IN_POLICY} not in the policy: steered from the store alone")
    if _BROKEN in marks:
        lines.append(f"{_BROKEN} the policy is broken for it: see the notes above")
    return lines


def _next_line(st: RolloutStatus) -> str:
    ahead = next((s for s in st.stages if s.name == st.next_stage), None)
    stage = f"stage {ahead.name} ({ahead.percent:g} %)" if ahead is not None else None
    if st.waiting_for is None:
        return "  next: nothing automatic can come"
    return (
        f"  next: {stage}, waiting for {st.waiting_for}"
        if stage
        else (f"  next: waiting for {st.waiting_for}")
    )


def _detail(
    ctx: Context, op: Operating, name: str, got: RolloutStatus | RolloutState | None
) -> list[str]:
    """One rollout: its state and what it means, since when and why, health, errors."""
    if got is None:
        return [f"{name}: no state in the store", f"  {op.marker(name)}"]
    if isinstance(got, RolloutStatus):
        s = _standing(got)
        health = got.health
        gated = health.enabled and got.mode == "stages"
        # The gate's own freeze or rollback: the health line below says why, as it stands now.
        by_gate = gated and who(got.actor, got.status) == "the health gate"
        lines = [f"{name}: {headline(s)}", f"  {since_line(s, reason=not by_gate)}"]
        if got.status in (Status.KILLED, Status.COMPLETE):
            pass  # the gate has nothing left to decide: the history has its evidence
        elif gated:
            words = evidence_words(health.evidence(), freeze_at=health.freeze_at_errors)
            lines.append(f"  health: {words}")
            if ctx.verbose:
                lines.append(f"  {statistics(health)}")
        else:
            lines.append("  health: no health gate here")
        if got.status not in (Status.KILLED, Status.COMPLETE):
            lines.append(_next_line(got))
        return [*lines, *error_lines(got.errors)]
    s = _stored_standing(name, got, ctx.environment())
    lines = [f"{name}: {headline(s)}", f"  {since_line(s)}"]
    lines.append(f"  {op.marker(name)}: steered from the store alone")
    last = op.steering.history(name, 1)
    if (
        last
        and last[0].evidence
        and who(last[0].actor, action=last[0].action) == ("the health gate")
    ):
        lines.append(f"  health at that step: {evidence_words(last[0].evidence)}")
    return [*lines, *error_lines(op.steering.errors(name))]


def _to(text: str | None) -> str | int | None:
    """``--to``: a stage name, or ``0%`` (stage -1, before the first stage)."""
    if text is None:
        return None
    if text.replace(" ", "") in ("0%", "-1"):
        return -1
    return text


def _refusal(
    op: Operating, name: str, action: Action, error: TransitionError, state: RolloutState | None
) -> str:
    """Why a transition was refused; "already" when the rollout is where it would lead."""
    if state is not None and _ALREADY.get(action) is state.status:
        return (
            f"cannot {action.verb} {name!r}: it is already {state.status} "
            f"(since {iso(state.since)}, by {state.actor or 'unknown'}); nothing changed"
        )
    return str(error)


def transition(ctx: Context) -> int:
    """``advance | freeze | unfreeze | rollback | kill | complete NAME --reason TEXT``."""
    op = Operating(ctx)
    name, action = ctx.args.name, Action(ctx.args.command)
    how = op.resolve(name)  # an unknown name: a usage error before anything is tried
    to = _to(getattr(ctx.args, "to", None))
    reason, actor = ctx.args.reason, ctx.args.actor or None
    try:
        if how == "store":
            if action in (Action.ADVANCE, Action.COMPLETE):
                op.needs_policy(name, action.value)
            entry = op.steering.apply(name, action, to=to, reason=reason, actor=actor)
        else:
            assert op.rollouts is not None
            rollouts = op.rollouts
            if action is Action.ROLLBACK:
                entry = rollouts.rollback(name, to=to, reason=reason, actor=actor)
            elif action is Action.UNFREEZE:
                entry = rollouts.unfreeze(name, to=to, reason=reason, actor=actor)
            else:
                operation = {
                    Action.ADVANCE: rollouts.advance,
                    Action.FREEZE: rollouts.freeze,
                    Action.KILL: rollouts.kill,
                    Action.COMPLETE: rollouts.complete,
                }[action]
                entry = operation(name, reason=reason, actor=actor)
    except TransitionError as exc:
        state = op.steering.load(name)  # the refused transition read it afresh from the store
        raise CliError(
            _refusal(op, name, action, exc, state), FINDING, kind="transition_refused"
        ) from None
    _show_transitions(ctx, op, [entry], single=True)
    return OK


def _show_transitions(
    ctx: Context, op: Operating, entries: list[Transition], *, single: bool = False
) -> None:
    ladders: dict[str, Ladder] = {}
    for entry in entries:
        if entry.rollout not in ladders:
            ladders[entry.rollout] = op.ladder(entry.rollout)
    objects = [transition_object(e, ladders[e.rollout]) for e in entries]
    if ctx.json:
        document = (
            {"schema_version": SCHEMA_VERSION, **objects[0]}
            if single
            else {"schema_version": SCHEMA_VERSION, "transitions": objects}
        )
        dump(document, ctx.out)
        return
    for entry in entries:
        _emit(ctx, transition_lines(entry, ladders[entry.rollout]))


def history(ctx: Context) -> int:
    """``history NAME [--limit N]``: the audit trail, newest first, with each step's evidence."""
    op = Operating(ctx)
    name = ctx.args.name
    how = op.resolve(name)
    if how == "policy":
        assert op.rollouts is not None
        entries = op.rollouts.history(name, ctx.args.limit)
    else:
        entries = op.steering.history(name, ctx.args.limit)
    ladder = op.ladder(name)
    if ctx.json:
        objects = [transition_object(e, ladder) for e in entries]
        dump({"schema_version": SCHEMA_VERSION, "rollout": name, "transitions": objects}, ctx.out)
        return OK
    if how == "store":
        _emit(ctx, [f"{name}: {op.marker(name)}: steered from the store alone"])
    for entry in entries:
        _emit(ctx, history_lines(entry, ladder))
    return OK


def tick(ctx: Context) -> int:
    """``tick``: take the automatic steps that are due now, once (for cron)."""
    op = Operating(ctx, require_policy="tick")
    rollouts = op.rollouts
    assert rollouts is not None
    problems: list[tuple[str, str]] = []
    for name in rollouts:
        try:  # one unreadable state: the others still tick
            rollouts.store.load(name)
        except ValueError as exc:  # noqa: PERF203 - one bad state of many
            problems.append((name, f"{exc}; {name!r} serves the old path until it is repaired"))
        except Exception as exc:  # tick() carries on when the store is down; an operator is told
            raise StoreError(f"the store failed to load the rollouts' state: {exc}") from exc
    made = rollouts.tick()
    if ctx.json or made:
        _show_transitions(ctx, op, made)
    else:
        ctx.out.write("no automatic step is due\n")
    for bad, message in problems:
        ctx.problem(message, kind="state_unreadable", rollout=bad)
    return FINDING if problems else OK
