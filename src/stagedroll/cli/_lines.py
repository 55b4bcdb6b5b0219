"""Where a field of a policy file is written: the line of each path, for ``validate``.

Neither :mod:`tomllib` nor :mod:`json` tells where a value came from, so each format gets a
small scanner that walks the text and records the line of every key and list item under
the path the policy's problems use (``rollouts.new-checkout.stages[2].percent``). YAML uses
PyYAML's node tree, which carries its marks, composed within the same bounds as the policy
(aliases are not expanded). A scanner that meets something it does not follow stops and
keeps what it found: a problem without a line still has its path. The text is a policy
file read within its size limit, so each scanner's work is bounded by it.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import re
from collections.abc import Callable
from pathlib import Path

from .._yaml import compose_yaml

__all__ = ["line_of", "locate"]

Part = str | int
Lines = dict[str, int]

_PUNCT = "[]{},=."
_BARE = re.compile(r"[^\s\[\]{},=.#\"']+")


def render(parts: list[Part]) -> str:
    """A path as the policy's problems write it: ``a.b[0].c``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def locate(path: Path, text: str) -> Lines:
    """The line (1-based) of every path found in ``text``, a policy file of ``path``'s format."""
    scanners: dict[str, Callable[[str], Lines]] = {
        ".toml": _toml,
        ".json": _json,
        ".yaml": _yaml,
        ".yml": _yaml,
    }
    scanner = scanners.get(path.suffix.lower())
    if scanner is None:
        return {}
    try:
        return scanner(text)
    except Exception:  # a scanner is a convenience: never let it hide the problems
        return {}


def line_of(lines: Lines, path: str) -> int | None:
    """The line of ``path``, else of the nearest enclosing path that has one."""
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        if cut <= 0:
            break
        path = path[:cut]
    return lines.get(path)


# -- TOML ------------------------------------------------------------------------------------------


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """``(kind, text, line)``: kinds ``str``, ``bare``, ``nl`` and the punctuation itself."""
    tokens: list[tuple[str, str, int]] = []
    i, line, n = 0, 1, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            tokens.append(("nl", c, line))
            line += 1
            i += 1
        elif c in " \t\r":
            i += 1
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif c in "\"'":
            quote = c * 3 if text.startswith(c * 3, i) else c
            j = i + len(quote)
            while True:
                if j >= n:
                    raise ValueError("unterminated string")
                if c == '"' and text[j] == "\\":
                    j += 2
                    continue
                if text.startswith(quote, j):
                    break
                j += 1
            raw = text[i : j + len(quote)]
            value = raw[len(quote) : -len(quote)]
            if quote == '"':
                with contextlib.suppress(ValueError):
                    value = json.loads(raw)
            tokens.append(("str", value, line))
            line += raw.count("\n")
            i = j + len(quote)
        elif c in _PUNCT:
            tokens.append((c, c, line))
            i += 1
        else:
            match = _BARE.match(text, i)
            if match is None:  # pragma: no cover - every other character starts a bare run
                raise ValueError(f"unexpected {c!r}")
            tokens.append(("bare", match.group(), line))
            i = match.end()
    return tokens


class _Toml:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.lines: Lines = {}
        self.arrays: dict[tuple[str, ...], int] = {}  # [[array of tables]] -> items so far

    def peek(self) -> str:
        return self.toks[self.i][0] if self.i < len(self.toks) else "eof"

    def record(self, parts: list[Part], line: int) -> None:
        self.lines.setdefault(render(parts), line)

    def key(self, end: str) -> list[str]:
        """A dotted key up to (and past) ``end``."""
        parts: list[str] = []
        while self.peek() != end:
            kind, text, _ = self.toks[self.i]
            if kind in ("str", "bare"):
                parts.append(text)
            elif kind != ".":
                raise ValueError(f"unexpected {text!r} in a key")
            self.i += 1
        self.i += 1
        return parts

    def skip_newlines(self) -> None:
        while self.peek() == "nl":
            self.i += 1

    def value(self, path: list[Part]) -> None:
        kind = self.peek()
        if kind == "[":
            self.i += 1
            index = 0
            while True:
                self.skip_newlines()
                if self.peek() == "]":
                    self.i += 1
                    return
                self.record([*path, index], self.toks[self.i][2])
                self.value([*path, index])
                self.skip_newlines()
                if self.peek() == ",":
                    self.i += 1
                    index += 1
                elif self.peek() != "]":
                    raise ValueError("expected ',' or ']'")
        elif kind == "{":
            self.i += 1
            while True:
                self.skip_newlines()
                if self.peek() == "}":
                    self.i += 1
                    return
                line = self.toks[self.i][2]
                key = self.key("=")
                self.assign(path, key, line)
                self.skip_newlines()
                if self.peek() == ",":
                    self.i += 1
                elif self.peek() != "}":
                    raise ValueError("expected ',' or '}'")
        else:
            while self.peek() not in (",", "]", "}", "nl", "eof"):
                self.i += 1

    def assign(self, table: list[Part], key: list[str], line: int) -> None:
        for end in range(1, len(key) + 1):
            self.record([*table, *key[:end]], line)
        self.value([*table, *key])

    def header(self, key: list[str], *, array: bool) -> list[Part]:
        """The path of a table header, with the item index of each array of tables in it."""
        parts: list[Part] = []
        for end, name in enumerate(key, 1):
            parts.append(name)
            prefix = tuple(key[:end])
            if array and end == len(key):
                self.arrays[prefix] = self.arrays.get(prefix, 0) + 1
            if prefix in self.arrays:
                parts.append(self.arrays[prefix] - 1)
        return parts

    def scan(self) -> Lines:
        table: list[Part] = []
        while self.peek() != "eof":
            kind, _, line = self.toks[self.i]
            if kind == "nl":
                self.i += 1
            elif kind == "[":
                array = self.i + 1 < len(self.toks) and self.toks[self.i + 1][0] == "["
                self.i += 2 if array else 1
                key = self.key("]")
                if array:
                    self.i += 1  # the second "]"
                    self.record(list(key), line)
                table = self.header(key, array=array)
                self.record(table, line)
            else:
                key = self.key("=")
                self.assign(table, key, line)
        return self.lines


def _toml(text: str) -> Lines:
    scanner = _Toml(text)
    with contextlib.suppress(ValueError, IndexError):  # keep what was found before it got lost
        scanner.scan()
    return scanner.lines


# -- JSON ------------------------------------------------------------------------------------------


def _json(text: str) -> Lines:
    starts = [0] + [m.end() for m in re.finditer("\n", text)]
    lines: Lines = {}
    decoder = json.JSONDecoder()
    scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]  # untyped in typeshed

    def record(parts: list[Part], at: int) -> None:
        lines.setdefault(render(parts), bisect.bisect_right(starts, at))

    def space(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    def value(i: int, path: list[Part]) -> int:
        i = space(i)
        record(path, i)
        opener = text[i]
        if opener not in "[{":
            return int(decoder.raw_decode(text, i)[1])
        closer, index = ("]" if opener == "[" else "}"), 0
        i = space(i + 1)
        while text[i] != closer:
            if opener == "{":
                key, after = scanstring(text, i + 1)
                record([*path, key], i)
                i = value(space(after) + 1, [*path, key])  # past the ":"
            else:
                i = value(i, [*path, index])
                index += 1
            i = space(i)
            if text[i] == ",":
                i = space(i + 1)
            elif text[i] != closer:
                raise ValueError(f"expected ',' or {closer!r}")
        return i + 1

    with contextlib.suppress(ValueError, IndexError):
        value(0, [])
    return lines


# -- YAML ------------------------------------------------------------------------------------------


def _yaml(text: str) -> Lines:
    """Lines from the node tree, composed within the policy's bounds, each node walked once.

    An alias is not followed twice: the paths under a second use take the line of the node
    it names, so a document of many aliases costs what its text does, never what it expands
    to.
    """
    import yaml  # noqa: PLC0415 - the optional extra; only here when a YAML file was loaded

    lines: Lines = {}
    root = compose_yaml(text)
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, list[Part]]] = [] if root is None else [(root, [])]
    while stack:
        node, path = stack.pop()
        lines.setdefault(render(path), node.start_mark.line + 1)
        if id(node) in seen:
            continue
        seen.add(id(node))
        children: list[tuple[yaml.Node, list[Part]]] = []
        if isinstance(node, yaml.MappingNode):
            for key, child in node.value:
                name = str(key.value)
                lines.setdefault(render([*path, name]), key.start_mark.line + 1)
                children.append((child, [*path, name]))
        elif isinstance(node, yaml.SequenceNode):
            children.extend((child, [*path, index]) for index, child in enumerate(node.value))
        stack.extend(reversed(children))
    return lines
