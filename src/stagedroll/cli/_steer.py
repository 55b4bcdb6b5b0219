"""Steering from the store alone: a policy read leniently, and each rollout's way to be operated.

An operator who must kill one rollout cannot wait for someone to fix a typo in another.
So the state commands read the policy leniently (:func:`lenient_policy`): a rollout the
policy is broken for is left out, with one note on stderr naming its first problem, and
the rest is validated and used. :class:`Operating` then operates each rollout the
(remaining) policy has through :class:`~stagedroll.Rollouts`, and each other rollout that
the store holds through :class:`~stagedroll.Steering`, from its stored state alone (whose
stage ladder was stamped by the policy that wrote it).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import Policy, Rollouts, RolloutState, Steering, load_policy, parse_policy
from .._document import format_of, parse_document
from ..exceptions import PolicyError, PolicyProblem
from ._lines import line_of, locate
from ._main import FINDING, USAGE, CliError, Context, read_text
from ._render import Ladder, printable

__all__ = ["Loaded", "Operating", "lenient_policy"]

_STEERABLE = "status, history, freeze, unfreeze, rollback and kill work from the store alone"


@dataclass
class Loaded:
    """A policy read leniently: what could be used, and what could not."""

    policy: Policy | None
    source: str | None = None
    broken: dict[str, str] = field(default_factory=dict)
    """Each rollout left out, with its first problem (``file:line: path: message``)."""
    why_none: str | None = None
    """Why there is no policy at all (none named, unreadable, or broken as a whole)."""


def _owner(path: str, names: Mapping[str, object], table: str) -> str | None:
    """The entry of ``table`` (``rollouts``, ``segments``) that a problem's path is under."""
    head = f"{table}."
    if not path.startswith(head):
        return None
    rest = path[len(head) :]
    found = [n for n in names if rest == n or rest.startswith((f"{n}.", f"{n}["))]
    return max(found, key=len) if found else None


class _Lines:
    """A problem as ``file:line: path: message``, its line found in the policy's text."""

    def __init__(self, path: Path, text: str) -> None:
        self.source = str(path)
        self.lines = locate(path, text)

    def __call__(self, problem: PolicyProblem) -> str:
        line = line_of(self.lines, problem.path) if problem.path else None
        where = f"{self.source}:{line}" if line is not None else self.source
        return f"{where}: {problem}"


def lenient_policy(ctx: Context) -> Loaded:
    """The configured policy without the rollouts it is broken for (see the module)."""
    path = ctx.configured_policy()
    if path is None:
        return Loaded(None, why_none="no policy file named (--policy FILE or STAGEDROLL_POLICY)")
    source = str(path)
    try:
        text = read_text(path)
        fmt = format_of(path)
    except OSError as exc:
        return Loaded(None, source, why_none=f"cannot read the policy {source!r}: {exc.strerror}")
    except PolicyError as exc:
        return Loaded(None, source, why_none=f"{source}: {exc.problems[0]}")
    try:
        policy = parse_policy(text, format=fmt, source=source)
    except PolicyError as exc:
        error = exc
    else:
        ctx.check_environment(policy)
        return Loaded(policy, source)
    shown = _Lines(path, text)
    try:
        document = parse_document(text, fmt, source=source)
    except PolicyError as exc:
        return Loaded(None, source, why_none=shown(exc.problems[0]))
    return _without_broken(ctx, document, error, shown)


def _without_broken(ctx: Context, document: object, error: PolicyError, shown: _Lines) -> Loaded:
    """Drop the rollouts (and segments) that ``error`` names until the rest validates."""
    source = shown.source
    if not isinstance(document, Mapping) or not isinstance(document.get("rollouts"), Mapping):
        return Loaded(None, source, why_none=shown(error.problems[0]))
    data: dict[str, Any] = dict(document)
    rollouts: dict[str, Any] = dict(data["rollouts"])
    segments: dict[str, Any] = dict(data.get("segments") or {})
    broken: dict[str, str] = {}
    while True:
        named = {p.path: _owner(p.path, rollouts, "rollouts") for p in error.problems}
        bad_segments = {_owner(p.path, segments, "segments") for p in error.problems} - {None}
        if not any(named.values()) and not bad_segments:  # broken as a whole
            first = shown(error.problems[0])
            broken.update(dict.fromkeys(rollouts, first))
            return Loaded(None, source, broken, why_none=first)
        for problem in error.problems:
            name = named[problem.path]
            if name is not None and name not in broken:
                count = sum(1 for owner in named.values() if owner == name)
                more = f" (and {count - 1} more: stagedroll validate lists them)" * (count > 1)
                broken[name] = shown(problem) + more
        for name in set(named.values()) - {None}:
            rollouts.pop(str(name), None)
        for name in bad_segments:
            segments.pop(str(name), None)
        if not rollouts:
            return Loaded(None, source, broken, why_none="the policy has no valid rollout")
        try:
            policy = load_policy({**data, "rollouts": rollouts, "segments": segments})
        except PolicyError as exc:
            error = exc
            continue
        ctx.check_environment(policy)
        return Loaded(policy, source, broken)


class Operating:
    """The rollouts an operator can act on: the policy's, and those the store alone has."""

    def __init__(self, ctx: Context, *, require_policy: str | None = None) -> None:
        """``require_policy`` names the command when it cannot work without a policy."""
        store = ctx.store()
        self.loaded = loaded = lenient_policy(ctx)
        if loaded.policy is None and require_policy is not None:
            why = loaded.why_none or "no valid policy"
            raise CliError(f"{require_policy} needs the policy: {why}", USAGE)
        for name, problem in loaded.broken.items():
            ctx.note(
                f"rollout {name!r} left out of the policy: {problem}",
                kind="policy_rollout_left_out",
                rollout=name,
            )
        if loaded.why_none is not None and loaded.source is not None and not loaded.broken:
            ctx.note(f"{loaded.why_none}: steering from the store alone", kind="policy_unusable")
        self.rollouts: Rollouts | None = None
        if loaded.policy is not None:
            self.rollouts = Rollouts(loaded.policy, store=store, environment=ctx.environment())
        self.steering = Steering(store)
        self._stored: list[str] | None = None

    def stored(self) -> list[str]:
        """The rollouts that have a state in the store, sorted."""
        if self._stored is None:
            self._stored = self.steering.names()
        return self._stored

    def in_policy(self, name: str) -> bool:
        """Whether the (remaining) policy has rollout ``name``."""
        return self.rollouts is not None and name in self.rollouts

    def names(self) -> list[str]:
        """Every rollout: the policy's in its order, then the others (stored or broken), sorted."""
        first = list(self.rollouts) if self.rollouts is not None else []
        others = (set(self.stored()) | set(self.loaded.broken)) - set(first)
        return first + sorted(others)

    def resolve(self, name: str) -> str:
        """``"policy"`` or ``"store"``: how rollout ``name`` is operated; else a usage error."""
        if self.in_policy(name):
            return "policy"
        if name in self.stored():
            return "store"
        if name in self.loaded.broken:
            raise CliError(
                f"the policy is broken for rollout {name!r} and the store has no state for it: "
                f"{self.loaded.broken[name]}",
                FINDING,
                kind="policy_invalid",
            )
        known = self.names()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        listed = ", ".join(known[:20]) + (f", ... ({len(known)} in all)" if len(known) > 20 else "")
        raise CliError(
            f"unknown rollout {name!r}: neither the policy nor the store has it "
            f"(known: {listed or 'none'}){hint}",
            USAGE,
            kind="unknown_rollout",
        )

    def needs_policy(self, name: str, command: str) -> Rollouts:
        """The policy's rollouts, for a command that cannot work from the store alone."""
        if self.rollouts is not None and name in self.rollouts:
            return self.rollouts
        self.resolve(name)  # an unknown name is told as such
        raise CliError(
            f"{command} needs rollout {name!r} in the policy ({self.marker(name)}); {_STEERABLE}",
            USAGE,
            kind="needs_policy",
        )

    def marker(self, name: str) -> str | None:
        """Why rollout ``name`` is steered from the store alone; ``None`` when it is not."""
        if self.in_policy(name):
            return None
        if name in self.loaded.broken:
            return f"the policy is broken for it: {self.loaded.broken[name]}"
        if self.loaded.policy is None and self.loaded.why_none is not None:
            return f"no usable policy ({printable(self.loaded.why_none)})"
        where = printable(self.loaded.source) if self.loaded.source else "no policy"
        return f"not in the policy ({where})" if self.loaded.source else "no policy file named"

    def ladder(self, name: str, state: RolloutState | None = None) -> Ladder:
        """The stages of rollout ``name`` as (name, percent): the policy's, else the stored ones."""
        if self.rollouts is not None and name in self.rollouts:
            return tuple((s.name, s.percent) for s in self.rollouts[name].policy.stages)
        if state is None:
            state = self.steering.load(name)
        return state.stages if state is not None else ()
