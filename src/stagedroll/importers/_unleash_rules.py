"""Unleash's constraints as stagedroll rules, where a rule is exactly equivalent.

A strategy's constraints, and those of the segments it names, become lists of AND'ed rules,
OR'ed: ``IN``, ``NOT_IN`` inverted, ``STR_*`` (case-sensitive, not inverted) and ``NUM_*``
(not inverted). Any other constraint raises :class:`NotMapped`, with the reason; one that
Unleash's SDK cannot read (it then turns the whole flag off) raises :class:`FlagOff`.
"""

from __future__ import annotations

import itertools
import math
import re
from datetime import datetime
from typing import Any

from .._document import clipped
from ._unleash_export import Constraint, Segment, Strategy

__all__ = ["KEEPS_OUT", "Constraints", "FlagOff", "NotMapped", "Rules", "rule"]

KEEPS_OUT = "; the imported rollout leaves this strategy out"
"""The end of the reason of a strategy left out."""

Rules = list[dict[str, Any]]
"""Rules that hold together (a segment's ``rules``, matched ``all``)."""

_MAX_COMBINATIONS = 16  # segments one strategy's OR'ed constraint values may expand to
_MAX_CONSTRAINTS = 256  # constraints of one strategy, its segments' included
# The constraint values Unleash's SDK reads, as far as they were checked against it: a value
# outside them makes the SDK turn the whole flag off (or may: the import then does the same).
_NUMBER = re.compile(r"[ \t]*([+-]?[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)[ \t]*")
_VERSION = re.compile(
    r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*)){2}(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?"
)
_DATE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{3})?(?:Z|[+-][0-9]{2}:[0-9]{2})"
)
_STRING_OPS = {"STR_STARTS_WITH": "prefix", "STR_ENDS_WITH": "suffix", "STR_CONTAINS": "contains"}
_NUMBER_OPS = {"NUM_EQ": "eq", "NUM_GT": "gt", "NUM_GTE": "ge", "NUM_LT": "lt", "NUM_LTE": "le"}
_UNREADABLE = "where Unleash's SDK cannot read a constraint, it turns the whole flag off"


class NotMapped(Exception):
    """A part that does not map: where, and why (control flow within the importer)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.path, self.reason = path, reason


class FlagOff(NotMapped):
    """Unleash turns the whole flag off, or gates it on what stagedroll cannot check."""


class Constraints:
    """The rules of strategies' constraints and of the Unleash segments they name.

    ``segments`` are the export's, by id; ``admin`` says whether the export is the admin
    export, which may name a segment it does not hold. Each segment is worked out once,
    however many strategies name it, so that its rules are shared.
    """

    def __init__(self, segments: dict[int, Segment], *, admin: bool) -> None:
        self.known, self.admin = segments, admin
        self.worked: dict[int, list[Rules] | NotMapped] = {}  # each segment's alternatives
        self.unread: dict[int, str | None] = {}  # why the SDK cannot read each segment

    def off(self, strategy: Strategy) -> FlagOff | None:
        """Why Unleash's SDK turns the flag off for this strategy's constraints, or ``None``."""
        for c in strategy.constraints:
            if (why := _unreadable(c)) is not None:
                return FlagOff(c.path, f"{c.operator} {why}: {_UNREADABLE}")
        for j, sid in enumerate(strategy.segments):
            if sid not in self.unread:  # each segment is read once, however many name it
                known = self.known.get(sid)
                self.unread[sid] = _missing(sid) if known is None and not self.admin else None
                for c in known.constraints or () if known is not None else ():
                    if self.unread[sid] is None and (why := _unreadable(c)) is not None:
                        self.unread[sid] = (f"its segment {sid}'s {c.path}: {c.operator} "
                                            f"{why}: {_UNREADABLE}")  # fmt: skip
            if (reason := self.unread[sid]) is not None:
                return FlagOff(f"{strategy.path}.segments[{j}]", reason)
        return None

    def conditions(self, strategy: Strategy) -> list[Rules] | None:
        """The strategy's constraints as OR'ed lists of AND'ed rules; ``None`` if it has none.

        :class:`NotMapped` (or :class:`FlagOff`) if one of them has no equivalent rule.
        """
        choices = [_alternatives(c) for c in strategy.constraints[: _MAX_CONSTRAINTS + 1]]
        for j, sid in enumerate(strategy.segments):
            where = f"{strategy.path}.segments[{j}]"
            try:
                choices.extend(self._segment(sid))
            except NotMapped as exc:
                raise type(exc)(where, exc.reason) from None
        if not choices:
            return None
        if len(choices) > _MAX_CONSTRAINTS:
            raise NotMapped(strategy.path, f"has more than {_MAX_CONSTRAINTS} constraints, "
                            "its segments' included" + KEEPS_OUT)  # fmt: skip
        if math.prod(len(c) for c in choices) > _MAX_COMBINATIONS:
            raise NotMapped(strategy.path, "its constraints' values combine into more than "
                            f"{_MAX_COMBINATIONS} segments" + KEEPS_OUT)  # fmt: skip
        return [list(rules) for rules in itertools.product(*choices)]

    def _segment(self, sid: int) -> list[Rules]:
        """The alternatives of the constraints of Unleash segment ``sid``, one list each."""
        known = self.known.get(sid)
        if known is None and not self.admin:
            raise FlagOff("", _missing(sid))
        if known is None or known.constraints is None:
            name = f" ({clipped(known.name, 60)!r})" if known and known.name else ""
            raise NotMapped("", f"names segment {sid}{name}, whose constraints the export "
                            "does not hold (the admin export names segments only; the client "
                            "API features carry them)" + KEEPS_OUT)  # fmt: skip
        if sid not in self.worked:
            try:
                constraints = known.constraints[: _MAX_CONSTRAINTS + 1]
                self.worked[sid] = [_alternatives(c) for c in constraints]
            except NotMapped as exc:  # a FlagOff stays one
                self.worked[sid] = type(exc)("", f"its segment {sid}'s {exc.path}: {exc.reason}")
        found = self.worked[sid]
        if isinstance(found, NotMapped):
            raise found
        return found


def rule(attribute: str, op: str, value: object) -> dict[str, Any]:
    """A segment's rule: ``attribute`` compared by ``op`` with ``value``."""
    return {"attribute": attribute, "op": op, "value": value}


def _alternatives(c: Constraint) -> list[dict[str, Any]]:
    """The rules a constraint holds for, OR'ed; :class:`NotMapped` if none is equivalent.

    A negated constraint holds for a context without the field, where no stagedroll rule
    holds; only ``NOT_IN`` inverted, which is ``IN``, is not negated. A constraint that
    Unleash's SDK cannot read turns the whole flag off (:class:`FlagOff`).
    """
    op, name = c.operator, c.context
    unreadable = _unreadable(c)
    if unreadable is not None:
        raise FlagOff(c.path, f"{op} {unreadable}: {_UNREADABLE}")
    negated = c.inverted != (op == "NOT_IN")
    if negated and (op in ("IN", "NOT_IN") or op in _STRING_OPS or op in _NUMBER_OPS):
        shown = f"{'an inverted ' * c.inverted}{op}"
        raise NotMapped(c.path, f"{shown} holds for a context without {clipped(name, 60)!r} "
                        "in Unleash, and a stagedroll rule never holds for a missing "
                        "attribute" + KEEPS_OUT)  # fmt: skip
    if op in ("IN", "NOT_IN") or op in _STRING_OPS:
        if op in _STRING_OPS and c.case_insensitive:
            raise NotMapped(c.path, f"{op} ignores case (caseInsensitive); stagedroll's "
                            "text rules compare case" + KEEPS_OUT)  # fmt: skip
        if not c.values:
            raise NotMapped(c.path, f"{op} lists no value, so it never holds and the "
                            "strategy is on for no one" + KEEPS_OUT)  # fmt: skip
        if op in _STRING_OPS:
            return [rule(name, _STRING_OPS[op], v) for v in dict.fromkeys(c.values)]
        return [rule(name, "in", list(dict.fromkeys(c.values)))]
    if op in _NUMBER_OPS:
        number = float(_NUMBER.fullmatch(c.value or "")[1])  # type: ignore[index]  # readable
        if not math.isfinite(number):
            raise NotMapped(c.path, f"{op} compares with {clipped(c.value or '', 40)!r}, which "
                            "Unleash reads as an infinite number" + KEEPS_OUT)  # fmt: skip
        value = int(number) if number.is_integer() and abs(number) < 2**53 else number
        return [rule(name, _NUMBER_OPS[op], value)]
    if op.startswith("SEMVER_"):
        raise NotMapped(c.path, f"{op}: stagedroll's version rules also read versions that "
                        "Unleash refuses ('1.2', 'v1.2.0', '01.2.0'), so they are not the same "
                        "rule" + KEEPS_OUT)  # fmt: skip
    if op.startswith("DATE_"):
        raise NotMapped(c.path, f"{op}: stagedroll has no date rule (and Unleash fills "
                        "currentTime itself)" + KEEPS_OUT)  # fmt: skip
    raise NotMapped(c.path, f"operator {clipped(op, 40)!r} is not one Unleash's SDK knows"
                    + KEEPS_OUT)  # fmt: skip


def _unreadable(c: Constraint) -> str | None:
    """Why Unleash's SDK may not read the constraint, and then turns its flag off; or ``None``.

    Its grammar reads some more texts than these checks let through (``v1.2``, ``5.5.5``);
    for those the import turns the flag off too, which lets no unit in that Unleash keeps out.
    """
    op, value = c.operator, c.value or ""
    if op in _STRING_OPS and not c.values:
        return "lists no value"
    for prefix, pattern, such in (("NUM_", _NUMBER, "12.5"), ("SEMVER_", _VERSION, "1.2.3"),
                                  ("DATE_", _DATE, "2024-01-31T12:00:00Z")):  # fmt: skip
        if op.startswith(prefix) and not (pattern.fullmatch(value) and _valid(op, value)):
            return f"compares with {clipped(value, 40)!r}, not a value such as {such}"
    return None


def _valid(op: str, value: str) -> bool:
    """Whether a value of the right form is a real date (a form check says the rest)."""
    if not op.startswith("DATE_"):
        return True
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _missing(sid: int) -> str:
    return (f"names segment {sid}, which the export does not hold, and Unleash's SDK then "
            "turns the whole flag off")  # fmt: skip
