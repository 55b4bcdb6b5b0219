"""The commands that need no store: ``validate``, ``schema`` and ``simulate``."""

from __future__ import annotations

import contextlib
import importlib
import os
import stat
import sys
from pathlib import Path
from typing import Any

from .. import Policy, parse_policy
from .._document import format_of
from ..exceptions import MissingExtraError, PolicyError, PolicyProblem
from ..testing import Simulation, simulate
from ._lines import line_of, locate
from ._main import FINDING, OK, USAGE, CliError, Context, read_text
from ._render import SCHEMA_VERSION, dump, printable

__all__ = ["located", "problem_line", "problem_lines", "schema", "simulate_cohorts", "validate"]

_BAR = 40  # characters of a full bar in the text chart
_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def located(
    problems: tuple[PolicyProblem, ...], source: str | None, text: str | None
) -> list[dict[str, Any]]:
    """Each problem as ``{"path", "line", "message"}``, the line found in ``text`` if it can be.

    ``text`` is the file's text as read for the problems, or ``None``: then the file is read
    again, within the same limits (a file refused, or gone, gives no lines).
    """
    lines: dict[str, int] = {}
    if source is not None and any(p.path for p in problems):
        path = Path(source)
        if text is None:
            with contextlib.suppress(OSError, PolicyError):
                text = read_text(path)
        if text is not None:
            lines = locate(path, text)
    return [
        {"path": p.path, "line": line_of(lines, p.path) if p.path else None, "message": p.message}
        for p in problems
    ]


def problem_line(source: str | None, problem: dict[str, Any]) -> str:
    """``file:line: path: message``, each part :func:`printable` (it holds the file's text)."""
    where = printable(source or "policy")
    if problem["line"] is not None:
        where += f":{problem['line']}"
    message = printable(problem["message"])
    return (
        f"{where}: {printable(problem['path'])}: {message}"
        if problem["path"]
        else f"{where}: {message}"
    )


def problem_lines(error: PolicyError, text: str | None = None) -> list[str]:
    """A policy's problems for people, one a line: ``file:line: path: message``.

    ``text`` is the file's text the problems were found in (``None``: read it again).
    """
    count = len(error.problems)
    head = f"{printable(error.source or 'the policy')}: {count} problem{'s' if count != 1 else ''}"
    found = located(error.problems, error.source, text)
    return [head, *(problem_line(error.source, p) for p in found)]


def _unread(message: str) -> list[dict[str, Any]]:
    return [{"path": "", "line": None, "message": message}]


def _check(ctx: Context, path: Path) -> dict[str, Any]:
    """The result of validating one file: ``{"file", "ok", "problems"}``.

    The file is read once, within the limits of ``load_policy``, and its problems are
    located in the text read. Whatever the file is, this returns: no traceback.
    """
    problems: list[dict[str, Any]] = []
    text: str | None = None
    try:
        text = read_text(path)
        policy = parse_policy(text, format=format_of(path), source=str(path))
    except PolicyError as exc:
        problems = located(exc.problems, str(path), text)
    except MissingExtraError as exc:
        problems = _unread(str(exc))
    except OSError as exc:
        problems = _unread(f"cannot read: {exc.strerror or exc}")
    except Exception as exc:  # a last resort: a bug must not hide the other files' results
        problems = _unread(f"cannot be checked ({type(exc).__name__}); please report it")
    else:
        try:
            policy.check_environment(ctx.environment())
        except PolicyError as exc:
            problems = located(exc.problems, None, None)
    return {"file": str(path), "ok": not problems, "problems": problems}


def validate(ctx: Context) -> int:
    """``validate FILE...``: every problem of each file, with its path and line."""
    files = [Path(f) for f in ctx.args.files] or [ctx.policy_path()]
    results = [_check(ctx, path) for path in files]
    if ctx.json:
        dump({"schema_version": SCHEMA_VERSION, "files": results}, ctx.out)
    else:
        for result in results:
            shown = printable(result["file"])
            if result["ok"]:
                ctx.out.write(f"{shown}: ok\n")
                continue
            count = len(result["problems"])
            ctx.out.write(f"{shown}: {count} problem{'s' if count != 1 else ''}\n")
            for problem in result["problems"]:
                ctx.out.write(f"  {problem_line(result['file'], problem)}\n")
    return OK if all(r["ok"] for r in results) else FINDING


def schema(ctx: Context) -> int:
    """``schema``: the JSON Schema of the policy file, from the pydantic models.

    Without ``--json`` the schema itself (for an editor); with it, in the envelope of every
    JSON output: ``{"schema_version": 1, "schema": {...}}``.
    """
    document = {"$schema": _SCHEMA_DIALECT, **Policy.model_json_schema()}
    dump({"schema_version": SCHEMA_VERSION, "schema": document} if ctx.json else document, ctx.out)
    return OK


def _units(ctx: Context) -> list[str]:
    """The units to simulate: ``user-0`` ... or the lines of ``--units-file``.

    The file may be a regular file or a pipe (``<(command)``, ``-`` for stdin), read to its
    end; a device (``/dev/zero`` never ends), a directory or a socket is refused.
    """
    source = ctx.args.units_file
    if source is None:
        return [f"user-{i}" for i in range(ctx.args.units)]
    try:
        if source != "-":
            mode = os.stat(source).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
                raise CliError(
                    f"cannot read the units file {source!r}: not a regular file or a pipe", USAGE
                )
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read the units file {source!r}: {exc}", USAGE) from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _simulation_object(sim: Simulation, plot: str | None) -> dict[str, Any]:
    rollouts = []
    for rollout in sim.values():
        left_out = rollout.left_out  # per stage after the first
        stages = [
            {
                "name": cohort.name,
                "percent": cohort.percent,
                "count": cohort.count,
                "fraction": cohort.fraction,
                "expected": cohort.expected,
                "contains_previous": None if i == 0 else not left_out[i - 1],
            }
            for i, cohort in enumerate(rollout.stages)
        ]
        rollouts.append(
            {
                "rollout": rollout.name,
                "mode": rollout.mode,
                "nested": rollout.nested,
                "stages": stages,
            }
        )
    return {
        "schema_version": SCHEMA_VERSION,
        "units": sim.units,
        "environment": sim.environment,
        "nested": all(r.nested for r in sim.values()),
        "rollouts": rollouts,
        "plot": plot,
    }


def _text_chart(sim: Simulation) -> str:
    """Cohort size per stage as bars of ``#``, a full bar being every simulated unit."""
    lines = []
    width = max((len(c.name) for r in sim.values() for c in r.stages), default=0)
    for rollout in sim.values():
        lines.append(rollout.name)
        for cohort in rollout.stages:
            filled = round(cohort.fraction * _BAR)
            bar = "#" * filled + "." * (_BAR - filled)
            lines.append(
                f"  {cohort.name:<{width}}  {cohort.percent:>6g}%  {bar}  "
                f"{cohort.count} ({cohort.fraction:.2%})"
            )
    return "\n".join(lines)


def _plot(sim: Simulation, path: str) -> bool:
    """Draw the cohort sizes into the PNG ``path``; ``False`` when matplotlib is missing."""
    try:  # the optional extra stagedroll[plot]; imported by name, so mypy needs no stubs
        figure_module = importlib.import_module("matplotlib.figure")
    except ImportError:
        return False
    rollouts = list(sim.values())
    figure = figure_module.Figure(figsize=(8, 2.5 * max(1, len(rollouts))), layout="constrained")
    axes = figure.subplots(nrows=max(1, len(rollouts)), ncols=1, squeeze=False)
    for row, rollout in zip(axes, rollouts, strict=False):
        ax = row[0]
        names = [f"{c.name}\n{c.percent:g}%" for c in rollout.stages]
        ax.bar(names, [c.count for c in rollout.stages], color="tab:blue")
        ax.set_title(f"{rollout.name} ({sim.units} units)")
        ax.set_ylabel("units in the cohort")
    figure.savefig(path, format="png")
    return True


def simulate_cohorts(ctx: Context) -> int:
    """``simulate FILE``: each stage's cohort of N synthetic units (or a file's), and nesting."""
    source = Path(ctx.args.file) if ctx.args.file else ctx.policy_path()
    policy = ctx.load(source)
    sim = simulate(policy, _units(ctx), environment=ctx.environment())
    plotted: str | None = None
    fallback = False
    if ctx.args.plot:
        try:
            drawn = _plot(sim, ctx.args.plot)
        except OSError as exc:
            raise CliError(
                f"cannot write the chart {ctx.args.plot!r}: {exc.strerror}", USAGE
            ) from None
        if drawn:
            plotted = ctx.args.plot
        else:
            fallback = True
            ctx.note(
                "--plot needs matplotlib: pip install 'stagedroll[plot]' (a text chart instead)"
            )
    if ctx.json:
        dump(_simulation_object(sim, plotted), ctx.out)
    else:
        ctx.out.write(sim.table() + "\n")
        if fallback:
            ctx.out.write("\n" + _text_chart(sim) + "\n")
        if plotted is not None:
            ctx.out.write(f"\nchart: {plotted}\n")
    try:
        sim.check()
    except AssertionError as exc:
        ctx.problem(f"cohorts not nested: {exc}", kind="cohorts_not_nested")
        return FINDING
    return OK
