"""What an importer gives: the policy document, and every part of the export it could not map.

The importers of the other flag systems share these pieces: the result (:class:`Imported`),
the report of what did not map (:class:`Unmapped`), the rollout names and stages they build,
and the bounded reading of an export file.
"""

from __future__ import annotations

import errno
import json
import math
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .. import Policy, load_policy
from .._document import MAX_NODES, clipped, decode, parse_document, read_document
from ..exceptions import PolicyError, PolicyProblem

__all__ = [
    "MAX_EXPORT_BYTES",
    "RAMP",
    "Draft",
    "Imported",
    "Names",
    "Unmapped",
    "count_values",
    "read_export",
    "refuse",
    "stages_from",
    "to_toml",
]

MAX_EXPORT_BYTES = 16 * 1024 * 1024
"""The largest export file an importer reads (bytes): a whole project's flags fit."""

RAMP = (1, 5, 25, 50, 100)
"""The stages an imported rollout may widen through, above the percent it runs at now."""

_INLINE = 100  # the longest inline table the TOML writer makes
_LISTED, _COMMENT = 200, 300  # report lines at the head of a TOML file, and their length
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True, slots=True)
class Unmapped:
    """A part of an export that the policy does not carry, and why."""

    flag: str
    """The vendor's key of the flag it belongs to (``""`` for the export as a whole)."""
    part: str
    """Where it is in the export, e.g. ``features[2].strategies[1].constraints[0]``."""
    reason: str
    """Why it did not map, and what the imported rollout does instead."""

    def __str__(self) -> str:
        where = f"{self.flag}: {self.part}" if self.flag else self.part
        return f"{where}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Imported:
    """A policy made from another flag system's export, and what it could not carry over.

    ``document`` is the policy as data (what a policy file holds): every rollout keeps its
    cohort, as its stage 0 runs the vendor's percent with the vendor's bucketing. Nothing is
    dropped silently: each part of the export that the policy does not carry is in
    ``unmapped``, with the reason.
    """

    vendor: str
    """``"unleash"``, ``"growthbook"``, ``"launchdarkly"`` or ``"flagd"``."""
    document: dict[str, Any]
    """The policy document: ``{"rollouts": {...}}``, with ``segments`` where rules mapped."""
    unmapped: tuple[Unmapped, ...] = field(default=())
    """Every part of the export that did not map, in the export's order."""

    @property
    def policy(self) -> Policy:
        """The document, validated (a :class:`~stagedroll.exceptions.PolicyError` if not)."""
        return load_policy(self.document)

    def to_toml(self) -> str:
        """The document as a TOML policy file, headed by the report of what did not map."""
        head = [f"# Imported from {self.vendor} by `stagedroll import`."]
        if self.unmapped:
            head.append("# Not mapped (the rollouts below leave these out):")
            head += [f"#   {_comment(str(u))[:_COMMENT]}" for u in self.unmapped[:_LISTED]]
            if len(self.unmapped) > _LISTED:
                more = len(self.unmapped) - _LISTED
                head.append(f"#   ... and {more:,} more (stagedroll import prints them all)")
        return "\n".join(head) + "\n\n" + to_toml(self.document)

    def to_json(self) -> str:
        """The document as a JSON policy file."""
        return json.dumps(self.document, indent=2, ensure_ascii=False) + "\n"


class Names:
    """Rollout names for the vendor's flag keys: valid, and each given once.

    A key that is already a valid name is kept; any other is written with ``-`` for the
    characters a name cannot hold (and a ``-2``, ``-3``... where that is taken). Give every
    key of the export as ``keys`` so that a sanitized key never takes the name of a valid
    key that comes later. The bucketing keeps the vendor's own key, so a renamed rollout
    still places every unit where the vendor did.
    """

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._taken: set[str] = set()
        self._reserved = {key for key in keys if _NAME.fullmatch(key)}
        self._next: dict[str, int] = {}  # the next suffix to try for each base: no rescans

    def name(self, key: str) -> str:
        """A new rollout name for flag ``key``."""
        if _NAME.fullmatch(key) and key not in self._taken:
            self._taken.add(key)
            return key
        base = key if _NAME.fullmatch(key) else _slug(key)
        name, n = base, self._next.get(base, 2)
        if name in self._taken or (name != key and name in self._reserved):
            name = ""
        while not name or name in self._taken or name in self._reserved:
            suffix = f"-{n}"
            name, n = base[: 128 - len(suffix)] + suffix, n + 1
        self._next[base] = n
        self._taken.add(name)
        return name


class Draft:
    """The policy an importer builds: rollouts added one at a time, each checked on its own.

    A rollout that would not be a valid policy (a value the policy refuses, text that is not
    Unicode) or that would take the document past the :data:`~stagedroll._document.MAX_NODES`
    values a policy holds is left out and reported, so that one odd flag never costs the
    import of the others.
    """

    def __init__(self, vendor: str, keys: Iterable[str] = ()) -> None:
        self.vendor = vendor
        self.names = Names(keys)
        """The rollouts' names (give every flag key of the export as ``keys``)."""
        self.segment_names = Names()
        """The segments' names, unique across the document."""
        self.rollouts: dict[str, Any] = {}
        self.segments: dict[str, Any] = {}
        self.unmapped: list[Unmapped] = []
        self.values = 3  # the document's own: its table, its rollouts and segments tables
        self._counted: dict[int, object] = {}  # lists of plain values walked once

    def report(self, flag: str, part: str, reason: str) -> None:
        """Report ``part`` of flag ``flag`` as not mapped, and why."""
        self.unmapped.append(Unmapped(_unicode(flag), _unicode(part), _unicode(reason)))

    def add(
        self,
        flag: str,
        part: str,
        rollout: dict[str, Any],
        segments: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
    ) -> str | None:
        """Add flag ``flag``'s rollout (and the segments it includes); its name, or ``None``.

        ``name`` is the rollout's name if the caller took one already (``names.name(flag)``).
        A rollout left out is reported at ``part``, with the reason.
        """
        segments = dict(segments or {})
        counted = self._counted
        cost = count_values(rollout, counted) + sum(
            count_values(s, counted) for s in segments.values()
        )
        if self.values + cost > MAX_NODES:
            self.report(flag, part, f"left out: the policy would hold more than {MAX_NODES:,} "
                        "values, the most a policy holds (import the rest from a smaller "
                        "export)")  # fmt: skip
            return None
        problem = _invalid(rollout, segments)
        if problem is not None:
            self.report(flag, part, f"left out: {problem}")
            return None
        name = name if name is not None else self.names.name(flag)
        self.rollouts[name] = rollout
        self.segments.update(segments)
        self.values += cost
        return name

    def imported(self) -> Imported:
        """The document built, and the report."""
        document: dict[str, Any] = {"segments": self.segments} if self.segments else {}
        document["rollouts"] = self.rollouts
        return Imported(self.vendor, document, tuple(self.unmapped))


def _invalid(rollout: dict[str, Any], segments: Mapping[str, Any]) -> str | None:
    """Why ``rollout`` (with ``segments``) is not a valid policy on its own, or ``None``."""
    try:
        json.dumps([rollout, segments], ensure_ascii=False).encode("utf-8")
        load_policy({"segments": segments, "rollouts": {"rollout": rollout}})
    except UnicodeEncodeError:
        return "it holds text that is not Unicode (a lone surrogate), which no policy file holds"
    except PolicyError as exc:
        problems = "; ".join(
            f"{p.path.removeprefix('rollouts.rollout.')}: {p.message}" for p in exc.problems[:3]
        )
        return f"it is not a valid stagedroll rollout ({clipped(problems, 300)})"
    except (TypeError, ValueError) as exc:  # a value no policy document holds (NaN, bytes)
        return f"it is not a valid stagedroll rollout ({clipped(str(exc), 300)})"
    return None


def count_values(value: object, counted: dict[int, object] | None = None) -> int:
    """The values a policy's size check counts for ``value`` (tables, lists and scalars).

    ``counted`` remembers the lists of plain values already walked (by identity, each kept
    alive so that its id is never reused): a list that many rollouts share, a segment's
    values, is walked once, and counted by its length after that.
    """
    count, stack = 1, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            count += len(item)
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            count += len(item)
            if counted is not None and id(item) in counted:
                continue
            nested = [v for v in item if isinstance(v, Mapping | list | tuple)]
            if counted is not None and not nested:
                counted[id(item)] = item
            stack.extend(nested)
    return count


def _unicode(text: str) -> str:
    r"""``text`` with any lone surrogate written as ``\udXXX``: a report must print and encode."""
    if _encodes(text):
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _slug(key: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", key).strip("-._")[:128]
    return slug or "flag"


def stages_from(percent: float, ramp: Iterable[float] = RAMP) -> list[dict[str, Any]]:
    """The stages of an imported rollout: its percent now (stage 0), then the ramp above it.

    Stage 0 is named ``imported``; the later ones by their percent (``p25``, ``all``).
    """
    stages: list[dict[str, Any]] = [{"name": "imported", "percent": _number(percent)}]
    for step in ramp:
        if step > percent:
            name = "all" if step == 100 else f"p{_number(step)}".replace(".", "_")
            stages.append({"name": name, "percent": _number(step)})
    return stages


def _number(value: float) -> float | int:
    """A percent as the document writes it: an integer when it is one."""
    return int(value) if float(value).is_integer() else float(value)


def read_export(path: str | Path, *, max_bytes: int = MAX_EXPORT_BYTES) -> object:
    """The data of an export file (JSON; YAML for ``.yaml``/``.yml``), read within bounds.

    A file over ``max_bytes``, not UTF-8, nested deeper than 64 levels, or not valid JSON
    (YAML) raises :class:`~stagedroll.exceptions.PolicyError`; one that cannot be read, or
    is not a regular file (a directory, a FIFO, a device: never read), :class:`OSError`.
    """
    path = Path(path)
    if not stat.S_ISREG(path.stat().st_mode):
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    fmt: Literal["json", "yaml"] = "yaml" if path.suffix.lower() in (".yaml", ".yml") else "json"
    text = decode(read_document(path, max_bytes=max_bytes), source=str(path))
    data = parse_document(text, fmt, source=str(path))
    duplicates = _duplicate_keys(data)
    if duplicates:  # which of the values would count is the reader's guess: refused
        raise refuse(duplicates, str(path))
    return data


def _duplicate_keys(data: object) -> list[tuple[str, str]]:
    """Each key an object of the file gives more than once, at its path (JSON allows it)."""
    problems: list[tuple[str, str]] = []
    stack: list[tuple[object, str]] = [(data, "")]
    while stack and len(problems) < _LISTED:
        value, path = stack.pop()
        if isinstance(value, Mapping):
            for key, count in getattr(value, "duplicates", {}).items():
                problems.append((_joined(path, key), f"duplicate key (given {count} times)"))
            stack.extend((v, _joined(path, k)) for k, v in value.items() if _nested(v))
        elif isinstance(value, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(value) if _nested(v))
    return problems


def _nested(value: object) -> bool:
    return isinstance(value, Mapping | list)


def _joined(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def refuse(problems: Iterable[tuple[str, str]], source: str | None = None) -> PolicyError:
    """An export whose shape is not the vendor's: each problem at its path in the export."""
    return PolicyError([PolicyProblem(path, message) for path, message in problems], source=source)


def to_toml(document: Mapping[str, Any]) -> str:
    """A policy document (tables, lists, text, numbers, booleans) as TOML text."""
    lines: list[str] = []
    _table(lines, (), document)
    return "\n".join(lines).strip("\n") + "\n"


def _table(lines: list[str], path: tuple[str, ...], table: Mapping[str, Any]) -> None:
    inline = {k: v for k, v in table.items() if not _header(v)}
    if path and (inline or not any(_header(v) for v in table.values())):
        lines += ["", f"[{_dotted(path)}]"]
    lines += [_line(k, v) for k, v in inline.items()]
    for key, value in table.items():
        if _header(value) and _is_table(value):
            _table(lines, (*path, key), value)
        elif _header(value):
            for item in value:
                lines += ["", f"[[{_dotted((*path, key))}]]"]
                _items(lines, item)


def _items(lines: list[str], table: Mapping[str, Any]) -> None:
    """The body of one ``[[array]]`` entry: its values, its tables inline."""
    lines += [_line(k, v) for k, v in table.items()]


def _header(value: object) -> bool:
    """Whether ``value`` is a table (or a list of them) too big to be written inline."""
    if isinstance(value, Mapping):
        return not _small(value)
    return _is_tables(value) and not all(_small(v) for v in value)  # type: ignore[attr-defined]


def _small(table: Mapping[str, Any]) -> bool:
    """A table of plain values (or lists of them) that fits on one line."""
    return all(_plain(v) for v in table.values()) and len(_value(table)) <= _INLINE


def _plain(value: object) -> bool:
    if isinstance(value, list | tuple):
        return not any(isinstance(item, Mapping | list | tuple) for item in value)
    return not isinstance(value, Mapping)


def _line(key: str, value: object) -> str:
    if _is_tables(value):  # small tables: one a line
        items = "".join(f"  {_value(v)},\n" for v in value)  # type: ignore[attr-defined]
        return f"{_key(key)} = [\n{items}]"
    return f"{_key(key)} = {_value(value)}"


def _is_table(value: object) -> bool:
    return isinstance(value, Mapping)


def _is_tables(value: object) -> bool:
    return isinstance(value, list | tuple) and bool(value) and all(_is_table(v) for v in value)


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(_key(part) for part in path)


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    # JSON's escapes are TOML's. Every other character that does not print (DEL, C1
    # controls, a no-break space, a soft hyphen) is escaped too: the file reads as it shows.
    if not _encodes(text):
        raise ValueError("a policy file holds no lone surrogate")
    quoted = json.dumps(text, ensure_ascii=False)
    if quoted.isprintable():
        return quoted
    return "".join(c if c.isprintable() else _escape(c) for c in quoted)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"a policy holds no {value!r}")
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"a policy holds no {type(value).__name__}")


def _comment(text: str) -> str:
    """``text`` on one line, as a TOML comment may hold it (no control character)."""
    folded = " ".join(text.split())
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 0x100
                   else f"\\u{ord(c):04x}" for c in folded)  # fmt: skip
