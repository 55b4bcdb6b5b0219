"""Policy documents read and parsed within bounds: no input can hang, exhaust memory or crash.

A policy file is read only if it is a regular file of at most ``max_bytes`` (1 MiB unless
``$STAGEDROLL_MAX_POLICY_BYTES`` or the caller says otherwise): a FIFO, a device or a
directory is refused from its ``stat`` before it is opened, and again from the opened
descriptor's ``fstat`` (opened with ``O_NONBLOCK``, so that nothing can block), and no more
than ``max_bytes + 1`` bytes are ever read. A parsed document nests at most
:data:`MAX_DEPTH` levels: JSON and TOML are scanned for it, linearly, before they are
parsed, and YAML is composed by a loader (:mod:`stagedroll._yaml`) that counts levels and
aliases and refuses a document whose aliases stand for more than :data:`MAX_ALIASED_NODES`
nodes (a "billion laughs") before anything is expanded. JSON and YAML keys given twice in
one table are refused, as TOML refuses them. Every refusal is a
:class:`~stagedroll.exceptions.PolicyError`.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from .exceptions import PolicyError, PolicyProblem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "DEFAULT_MAX_BYTES",
    "FORMATS",
    "MAX_ALIASED_NODES",
    "MAX_ALIASES",
    "MAX_BYTES_VARIABLE",
    "MAX_DEPTH",
    "MAX_NODES",
    "Format",
    "Part",
    "Refused",
    "YamlError",
    "check_document",
    "clipped",
    "decode",
    "format_of",
    "max_policy_bytes",
    "parse_document",
    "read_document",
    "render",
    "too_many_nodes",
]

Format = Literal["toml", "json", "yaml"]
FORMATS: dict[str, Format] = {".toml": "toml", ".json": "json", ".yaml": "yaml", ".yml": "yaml"}

DEFAULT_MAX_BYTES = 1 << 20
"""The largest policy file read, unless configured: 1 MiB."""
MAX_BYTES_VARIABLE = "STAGEDROLL_MAX_POLICY_BYTES"
MAX_DEPTH = 64
"""Tables and lists nest at most this deep (the root table is level 1)."""
MAX_ALIASES = 1_000
"""YAML aliases (``*name``) in one document, at most."""
MAX_ALIASED_NODES = 40_000
"""The nodes that the YAML aliases of one document stand for, together, at most."""
MAX_NODES = 50_000
"""The values (tables, lists and scalars) of one document, at most: validating and
compiling a policy costs time on the thread that reloads it, about 10 µs a value."""


def too_many_nodes(line: int | None = None) -> str:
    """The problem of a document with more than :data:`MAX_NODES` values."""
    where = f" (line {line})" if line is not None else ""
    return (
        f"more than {MAX_NODES:,} values{where}: a policy this large takes too long to "
        "validate on the thread that loads it"
    )


_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
_CHUNK = 1 << 16

Part = str | int


def _error(message: str, source: str | None, path: str = "") -> PolicyError:
    return PolicyError([PolicyProblem(path, message)], source=source)


def render(parts: list[Part] | tuple[Part, ...]) -> str:
    """A path as policy problems write it: ``rollouts.r.stages[0].name``."""
    out = ""
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def format_of(path: Path) -> Format:
    """The format a file's suffix names; a :class:`PolicyError` for any other suffix."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        suffix = repr(path.suffix) if path.suffix else "a name without suffix"
        known = ", ".join(FORMATS)
        raise _error(f"cannot tell the format from {suffix} (known: {known})", str(path))
    return fmt


def max_policy_bytes(max_bytes: int | None = None, *, source: str | None = None) -> int:
    """The size limit in force: ``max_bytes``, else ``$STAGEDROLL_MAX_POLICY_BYTES``, else 1 MiB.

    A bad ``max_bytes`` is a :class:`ValueError` (the caller's mistake); a bad variable is a
    :class:`PolicyError`, since it stops the policy from being read.
    """
    if max_bytes is not None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(
                f"max_bytes must be a whole number of bytes, at least 1: {max_bytes!r}"
            )
        return max_bytes
    text = os.environ.get(MAX_BYTES_VARIABLE, "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        shown = repr(text[:40] + ("..." if len(text) > 40 else ""))
        message = f"${MAX_BYTES_VARIABLE} must be a whole number of bytes, at least 1 (got {shown})"
        raise _error(message, source)
    return value


def _kind(mode: int) -> str | None:
    """What a file that is not a regular file is, or ``None`` for a regular file."""
    if stat.S_ISREG(mode):
        return None
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def _check_file(found: os.stat_result, source: str, max_bytes: int) -> None:
    kind = _kind(found.st_mode)
    if kind is not None:
        raise _error(f"is {kind}: a policy is read from a regular file only", source)
    if found.st_size > max_bytes:
        raise _too_large(f"is {found.st_size:,} bytes", source, max_bytes)


def _too_large(what: str, source: str, max_bytes: int) -> PolicyError:
    return _error(
        f"{what}, over the limit of {max_bytes:,} bytes "
        f"(set ${MAX_BYTES_VARIABLE}, or max_bytes=, to raise it)",
        source,
    )


def read_document(path: Path, *, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` of them; never blocks.

    Refuses (:class:`PolicyError`) a FIFO, a device, a directory or a socket (from ``stat``,
    before opening it, and from ``fstat`` on the descriptor opened with ``O_NONBLOCK``), and
    a file larger than ``max_bytes`` (from its size, before reading it, or when it grew
    while read). A file that cannot be opened or read raises :class:`OSError`.
    """
    source = str(path)
    _check_file(os.stat(path), source, max_bytes)
    fd = os.open(path, _OPEN_FLAGS)
    try:
        _check_file(os.fstat(fd), source, max_bytes)
        chunks: list[bytes] = []
        left = max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, _CHUNK))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise _too_large("grew while read", source, max_bytes)
    return data


def decode(data: bytes, *, source: str | None = None) -> str:
    """UTF-8 text, a leading byte order mark dropped; a :class:`PolicyError` for other bytes."""
    skipped = 0
    if data.startswith(codecs.BOM_UTF8):
        data, skipped = data[len(codecs.BOM_UTF8) :], len(codecs.BOM_UTF8)
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise _error(
            "is UTF-16 or UTF-32 text (it starts with their byte order mark): save it as UTF-8",
            source,
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        where = f"byte {exc.start + skipped}, line {line}"
        raise _error(f"not UTF-8 text ({where})", source) from None


# -- Parsing ---------------------------------------------------------------------------------------

# The scans below look at one character of interest at a time, found by a character class:
# no regular expression repeats a group, so their memory is constant, whatever the text.
_JSON_SPECIAL = re.compile(r'[\[\]{}"]')
_JSON_IN_STRING = re.compile(r'["\\]')
_TOML_SPECIAL = re.compile(r"""[\[\]{}"'#=,.\n]""")
_TOML_IN_BASIC = re.compile(r'["\\\n]')  # a one-line basic string ends at its quote (or line)
_TOML_IN_MULTILINE = re.compile(r'["\\]')


def _too_deep(text: str, at: int) -> Refused:
    line = text.count("\n", 0, at) + 1
    return Refused(PolicyProblem("", f"nested deeper than {MAX_DEPTH} levels (line {line})"))


def _string_end(text: str, i: int, special: re.Pattern[str], quote: str) -> int:
    """The index after a string whose body starts at ``i``, skipping backslash escapes."""
    while True:
        found = special.search(text, i)
        if found is None:
            return len(text)
        j = found.start()
        char = text[j]
        if char == "\\":
            i = j + 2
        elif char == "\n":
            return j  # a one-line string cut by its line: the parser reports it
        elif text.startswith(quote, j):
            end = j + len(quote)
            if len(quote) == 3:  # up to two more quotes are the string's own
                end += 1 if text.startswith(quote[0], end) else 0
                end += 1 if text.startswith(quote[0], end) else 0
            return end
        else:
            i = j + 1


def _literal_end(text: str, i: int, quote: str) -> int:
    """The index after a literal (``'``) TOML string whose body starts at ``i``: no escapes."""
    j = text.find(quote, i)
    if len(quote) == 1:
        newline = text.find("\n", i)
        if newline != -1 and (j == -1 or newline < j):
            return newline
    if j == -1:
        return len(text)
    end = j + len(quote)
    if len(quote) == 3:
        end += 1 if text.startswith("'", end) else 0
        end += 1 if text.startswith("'", end) else 0
    return end


def _scan_json(text: str) -> None:
    """Refuse JSON nested too deep, before it is parsed: a linear scan of its brackets."""
    depth, i = 0, 0
    while True:
        found = _JSON_SPECIAL.search(text, i)
        if found is None:
            return
        j = found.start()
        char = text[j]
        if char == '"':
            i = _string_end(text, j + 1, _JSON_IN_STRING, '"')
            continue
        i = j + 1
        if char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise _too_deep(text, j)
        else:
            depth -= 1


def _scan_toml(text: str) -> None:
    """Refuse TOML nested too deep, before it is parsed: its brackets, and its dotted keys.

    Each part of a dotted key (``a.b.c = 1``, ``[a.b.c]``) is a level, so the dots outside
    strings between two of ``[ ] { } = , newline`` count too (a value has one dot at most:
    ``1.5``). A string or a comment is skipped whole.
    """
    depth, dots, i = 0, 0, 0
    while True:
        found = _TOML_SPECIAL.search(text, i)
        if found is None:
            return
        j = found.start()
        char = text[j]
        i = j + 1
        if char == ".":
            dots += 1
            if max(depth, 0) + dots + 1 > MAX_DEPTH:
                raise _too_deep(text, j)
            continue
        if char == "#":
            newline = text.find("\n", j)
            i = len(text) if newline == -1 else newline
        elif char == '"':
            quote = '"""' if text.startswith('"""', j) else '"'
            special = _TOML_IN_MULTILINE if len(quote) == 3 else _TOML_IN_BASIC
            i = _string_end(text, j + len(quote), special, quote)
        elif char == "'":
            quote = "'''" if text.startswith("'''", j) else "'"
            i = _literal_end(text, j + len(quote), quote)
        else:
            dots = 0
            if char in "[{":
                depth += 1
                if depth > MAX_DEPTH:
                    raise _too_deep(text, j)
            elif char in "]}":
                depth -= 1


class _Duplicates(dict[Any, Any]):
    """A JSON object that gave some keys more than once (refused by :func:`check_document`)."""

    duplicates: dict[str, int]


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) == len(pairs):
        return found
    marked = _Duplicates(found)
    counts: dict[str, int] = {}
    for key, _ in pairs:
        counts[key] = counts.get(key, 0) + 1
    marked.duplicates = {key: count for key, count in counts.items() if count > 1}
    return marked


def parse_document(text: str, fmt: Format, *, source: str | None = None) -> object:
    """Parse ``text`` as ``fmt`` within the bounds; any failure is a :class:`PolicyError`.

    A leading byte order mark is dropped. The result is plain data, still to be checked
    (:func:`check_document`) and validated.
    """
    text = text.removeprefix("\ufeff")
    name = fmt.upper()
    try:
        if fmt == "toml":
            _scan_toml(text)
            return tomllib.loads(text)
        if fmt == "json":
            _scan_json(text)
            return json.loads(text, object_pairs_hook=_json_object)
        if fmt == "yaml":
            from ._yaml import load_yaml  # noqa: PLC0415 - it imports this module

            return load_yaml(text)
    except Refused as exc:
        raise PolicyError(exc.problems, source=source) from None
    except tomllib.TOMLDecodeError as exc:
        raise _error(f"invalid TOML: {exc}", source) from None
    except json.JSONDecodeError as exc:
        raise _error(f"invalid JSON: {exc}", source) from None
    except YamlError as exc:
        raise _error(f"invalid YAML: {exc}", source) from None
    except RecursionError:  # a last resort: the scans above refuse deep nesting first
        raise _error(f"nested too deeply to read (at most {MAX_DEPTH} levels)", source) from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise _error(f"invalid {name}: {clipped(str(exc))}", source) from None
    raise _error(f"unknown policy format {fmt!r}", source)


class YamlError(Exception):
    """PyYAML's error, in one line (raised by :mod:`stagedroll._yaml`)."""


class Refused(Exception):
    """Raised inside parsing with the problems to report (turned into a PolicyError)."""

    def __init__(self, *problems: PolicyProblem) -> None:
        super().__init__(problems)
        self.problems = problems


def clipped(text: str, limit: int = 200) -> str:
    """``text``, cut to ``limit`` characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_document(data: object) -> list[PolicyProblem]:
    """Problems of shape no model reports: nesting deeper than :data:`MAX_DEPTH`, duplicate keys.

    Walks the data with a stack, never recursion, so it holds for any depth and for a
    mapping that contains itself (a program's); it stops at the first level too deep.
    """
    problems: list[PolicyProblem] = []
    # (value, depth, parent entry, key): the path is rebuilt only when a problem needs it.
    Entry = tuple[object, int, Any, Part]
    stack: list[Entry] = [(data, 1, None, "")]
    nodes = 1
    while stack:
        entry = stack.pop()
        value, depth = entry[0], entry[1]
        if isinstance(value, Mapping):
            items: Any = value.items()
        elif isinstance(value, list | tuple | set | frozenset):
            items = enumerate(value)
        else:
            continue
        nodes += len(value)
        if nodes > MAX_NODES:
            return [PolicyProblem("", too_many_nodes())]
        if depth > MAX_DEPTH:
            where = _entry_path(entry)
            message = f"nested deeper than {MAX_DEPTH} levels"
            return [PolicyProblem(where, message)]
        if isinstance(value, _Duplicates):
            for key, count in value.duplicates.items():
                where = render([*_entry_parts(entry), key])
                problems.append(PolicyProblem(where, f"duplicate key (given {count} times)"))
        children = [
            (child, depth + 1, entry, key)
            for key, child in items
            if isinstance(child, Mapping | list | tuple | set | frozenset)
        ]
        stack.extend(reversed(children))
    return problems


def _entry_parts(entry: Any) -> list[Part]:
    parts: list[Part] = []
    while entry is not None and entry[2] is not None:
        key = entry[3]
        parts.append(key if isinstance(key, str | int) else str(key))
        entry = entry[2]
    parts.reverse()
    return parts


def _entry_path(entry: Any) -> str:
    return render(_entry_parts(entry))
