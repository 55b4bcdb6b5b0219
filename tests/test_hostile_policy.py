"""Hostile policy input: each class is refused as a PolicyError, in bounded memory, never a crash.

The classes of the hostile-input checklist that reach a policy: files that are not regular files
or are too large, deep nesting in every format, YAML aliases, duplicate keys, unbounded
durations, documents without rollouts, arbitrary text and bytes, huge values in messages,
and the command line's output of all of them.
"""

from __future__ import annotations

import json
import os
import string
import sys
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagedroll import Policy, PolicyError, Rollouts, load_policy, parse_duration, parse_policy
from stagedroll.cli import main

Format = str
DEEP = 100_000
LIMIT = 64  # the documented nesting limit
MEMORY = 100 * 1024 * 1024  # peak memory of refusing any hostile document, at most

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and /dev/zero are POSIX")

BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def nested(fmt: Format, openers: str, *, inner: str = "1") -> str:
    """A document nesting ``openers`` (``[`` a list, ``{`` a table) under the root, at ``a``."""
    closers = "".join("]" if o == "[" else "}" for o in reversed(openers))
    if fmt == "json":
        opened = "".join("[" if o == "[" else '{"a": ' for o in openers)
        return '{"a": ' + opened + inner + closers + "}"
    if fmt == "toml":
        opened = "".join("[" if o == "[" else "{a = " for o in openers)
        return "a = " + opened + inner + closers + "\n"
    opened = "".join("[" if o == "[" else "{a: " for o in openers)
    return "a: " + opened + inner + closers + "\n"


DEEP_DOCUMENTS: dict[str, Callable[[int], tuple[Format, str]]] = {
    "json-lists": lambda d: ("json", "[" * d + "]" * d),
    "json-objects": lambda d: ("json", '{"a":' * d + "1" + "}" * d),
    "toml-arrays": lambda d: ("toml", "a = " + "[" * d + "]" * d),
    "toml-inline-tables": lambda d: ("toml", "a = " + "{a = " * d + "1" + "}" * d),
    "toml-dotted-key": lambda d: ("toml", ".".join(["a"] * d) + " = 1\n"),
    "toml-header": lambda d: ("toml", "[" + ".".join(["a"] * d) + "]\n"),
    "yaml-flow-lists": lambda d: ("yaml", "[" * d + "]" * d),
    "yaml-flow-maps": lambda d: ("yaml", "{a: " * d + "1" + "}" * d),
    "yaml-block": lambda d: ("yaml", "".join(" " * i + "a:\n" for i in range(min(d, 1200)))),
}


def problems_of(text: str, fmt: Format) -> list[str]:
    """The problems (as text) of parsing ``text``; any exception but PolicyError escapes."""
    with pytest.raises(PolicyError) as info:
        parse_policy(text, format=fmt)  # type: ignore[arg-type]  # a Format from the table
    return [str(p) for p in info.value.problems]


def peak_memory(action: Callable[[], object]) -> int:
    """The peak of memory traced while ``action`` runs (it must raise PolicyError)."""
    tracemalloc.start()
    try:
        with pytest.raises(PolicyError):
            action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(name="here")
def _here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test's directory, as the working directory, with no size limit in the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STAGEDROLL_MAX_POLICY_BYTES", raising=False)
    for name in ("STAGEDROLL_POLICY", "STAGEDROLL_STORE", "STAGEDROLL_ENV", "STAGEDROLL_KILL"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _zero(path: Path) -> Path:
    path.symlink_to("/dev/zero")
    return path


def _directory(path: Path) -> Path:
    path.mkdir()
    return path


def _large(path: Path) -> Path:
    with path.open("wb") as file:  # sparse: 50 MB of size, no disk used
        file.truncate(50 * 1024 * 1024)
    return path


SPECIAL_FILES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "fifo": (_fifo, "is a FIFO (named pipe): a policy is read from a regular file only"),
    "dev-zero": (_zero, "is a character device: a policy is read from a regular file only"),
    "directory": (_directory, "is a directory: a policy is read from a regular file only"),
    "50MB": (_large, "is 52,428,800 bytes, over the limit of 1,048,576 bytes"),
}


@posix_only
class TestFiles:
    @pytest.mark.parametrize("kind", sorted(SPECIAL_FILES))
    def test_refused_without_reading(
        self, here: Path, kind: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A FIFO, /dev/zero, a directory or a 50 MB file is refused with its reason, unread."""
        make, reason = SPECIAL_FILES[kind]
        path = make(here / "rollouts.toml")
        reads: list[int] = []
        real_read = os.read

        def counting_read(fd: int, n: int) -> bytes:
            reads.append(n)
            return real_read(fd, n)

        monkeypatch.setattr(os, "read", counting_read)
        for load in (load_policy, Rollouts.from_file):
            with pytest.raises(PolicyError) as info:
                load(path)
            [problem] = info.value.problems
            assert problem.message.startswith(reason)
            assert info.value.source == str(path)
            assert str(path) in str(info.value)
        assert reads == []

    @pytest.mark.parametrize("kind", sorted(SPECIAL_FILES))
    def test_hot_reload_set_up_on_one_is_refused(self, here: Path, kind: str) -> None:
        """Watching such a file for reloads is refused at once too: nothing blocks."""
        make, reason = SPECIAL_FILES[kind]
        path = make(here / "rollouts.toml")
        with pytest.raises(PolicyError) as info:
            Rollouts.from_file(path, reload_interval=1)
        assert info.value.problems[0].message.startswith(reason)

    def test_the_size_limit_is_configurable(
        self, here: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """max_bytes, else $STAGEDROLL_MAX_POLICY_BYTES, sets the limit; the file is read whole."""
        path = here / "rollouts.toml"
        path.write_text('[rollouts.r]\nstages = [{ name = "a", percent = 1 }]\n')
        size = path.stat().st_size
        assert load_policy(path, max_bytes=size).rollouts["r"].stages[0].percent == 1
        with pytest.raises(PolicyError, match=f"is {size} bytes, over the limit of {size - 1} "):
            load_policy(path, max_bytes=size - 1)
        monkeypatch.setenv("STAGEDROLL_MAX_POLICY_BYTES", str(size - 1))
        for load in (load_policy, Rollouts.from_file):
            with pytest.raises(PolicyError, match="STAGEDROLL_MAX_POLICY_BYTES"):
                load(path)
        assert "r" in load_policy(path, max_bytes=size).rollouts  # the keyword wins

    @pytest.mark.parametrize("value", ["0", "-1", "lots", "1.5", "1e6"])
    def test_a_bad_limit_in_the_environment_is_named(
        self, here: Path, value: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A $STAGEDROLL_MAX_POLICY_BYTES that is not a positive whole number is a PolicyError."""
        path = here / "rollouts.toml"
        path.write_text("rollouts = {}\n")
        monkeypatch.setenv("STAGEDROLL_MAX_POLICY_BYTES", value)
        with pytest.raises(PolicyError, match=r"\$STAGEDROLL_MAX_POLICY_BYTES must be a whole"):
            load_policy(path)

    @pytest.mark.parametrize("value", [0, -5, True, 1.5])
    def test_a_bad_max_bytes_is_a_value_error(self, here: Path, value: Any) -> None:
        """max_bytes must be a whole number of bytes, at least 1."""
        path = here / "rollouts.toml"
        path.write_text("rollouts = {}\n")
        with pytest.raises(ValueError, match="max_bytes"):
            load_policy(path, max_bytes=value)

    def test_a_missing_file_is_an_os_error(self, here: Path) -> None:
        """A file that is not there still raises OSError, as documented."""
        with pytest.raises(FileNotFoundError):
            load_policy(here / "missing.toml")

    @pytest.mark.parametrize("suffix", [".toml", ".json", ".yaml"])
    def test_a_utf8_byte_order_mark_is_dropped(self, here: Path, suffix: str) -> None:
        """A UTF-8 file that starts with a byte order mark (Notepad's) loads."""
        text = {".toml": "rollouts = {}\n", ".json": '{"rollouts": {}}', ".yaml": "rollouts: {}\n"}
        path = here / f"rollouts{suffix}"
        path.write_bytes(b"\xef\xbb\xbf" + text[suffix].encode())
        assert load_policy(path) == Policy()

    @pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
    def test_utf16_and_utf32_are_named(self, here: Path, encoding: str) -> None:
        """A file saved as UTF-16 or UTF-32 (with a byte order mark) says so."""
        path = here / "rollouts.json"
        path.write_text('{"rollouts": {}}', encoding=encoding)
        with pytest.raises(PolicyError, match="UTF-16 or UTF-32 text"):
            load_policy(path)

    @settings(max_examples=60)
    @given(data=st.binary(max_size=300), suffix=st.sampled_from([".toml", ".json", ".yaml"]))
    def test_any_bytes_load_or_raise_policy_error(self, data: bytes, suffix: str) -> None:
        """Arbitrary bytes in a file of any format either load or raise PolicyError."""
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / f"rollouts{suffix}"
            path.write_bytes(data)
            try:
                load_policy(path)
            except PolicyError as error:
                problems = error.problems
                assert problems


class TestNesting:
    @pytest.mark.parametrize("shape", sorted(DEEP_DOCUMENTS))
    def test_100000_levels_are_refused_in_bounded_memory(self, shape: str) -> None:
        """100,000 levels in each format and shape: a PolicyError, never RecursionError."""
        fmt, text = DEEP_DOCUMENTS[shape](DEEP)
        assert peak_memory(lambda: parse_policy(text, format=fmt)) < MEMORY  # type: ignore[arg-type]
        [problem] = problems_of(text, fmt)
        # libyaml's parser, where PyYAML has it, stops YAML flow collections at 1,000 levels.
        assert f"nested deeper than {LIMIT} levels" in problem or (
            fmt == "yaml" and "exceeded maximum nesting depth" in problem
        )

    @settings(max_examples=40)
    @given(
        fmt=st.sampled_from(["json", "toml", "yaml"]),
        openers=st.text(alphabet="[{", min_size=LIMIT, max_size=3000),
    )
    def test_any_nesting_past_the_limit_is_refused(self, fmt: Format, openers: str) -> None:
        """Lists and tables mixed in any order, past 64 levels, are refused as too deep."""
        problems = problems_of(nested(fmt, openers), fmt)  # the root adds one level
        assert len(problems) == 1
        assert f"nested deeper than {LIMIT} levels" in problems[0]

    @settings(max_examples=40)
    @given(
        fmt=st.sampled_from(["json", "toml", "yaml"]),
        openers=st.text(alphabet="[{", max_size=LIMIT - 1),
    )
    def test_nesting_within_the_limit_is_not_refused_for_it(
        self, fmt: Format, openers: str
    ) -> None:
        """Up to 64 levels, the document parses: its problems are those of its fields."""
        problems = problems_of(nested(fmt, openers), fmt)
        assert not any("nested deeper" in p for p in problems)
        assert any(p.startswith("a: unknown field") for p in problems)

    @pytest.mark.parametrize("fmt", ["json", "toml", "yaml"])
    def test_the_limit_is_64_levels_from_the_root(self, fmt: Format) -> None:
        """A rule value nested to level 64 is a value problem; to level 65, a nesting one."""

        def document(levels: int) -> str:
            value = "[" * levels + "1" + "]" * levels  # under root, segments, s, rules, a rule
            rule = {"attribute": "a", "op": "eq", "value": "VALUE"}
            data = {"segments": {"s": {"rules": [rule]}}, "rollouts": {}}
            if fmt == "toml":
                head = '[[segments.s.rules]]\nattribute = "a"\nop = "eq"\nvalue = VALUE\n'
                return ("rollouts = {}\n" + head).replace("VALUE", value)
            return json.dumps(data).replace('"VALUE"', value)

        [within] = problems_of(document(LIMIT - 5), fmt)
        assert within.startswith("segments.s.rules[0].value: must be a string")
        [past] = problems_of(document(LIMIT - 4), fmt)
        assert f"nested deeper than {LIMIT} levels" in past

    def test_a_mapping_in_code_that_contains_itself_is_refused(self) -> None:
        """A program's mapping holding itself is refused as too deep, not a RecursionError."""
        loop: list[object] = []
        loop.append(loop)
        document = {"rollouts": {"r": {"stages": [{"name": "a", "percent": loop}]}}}
        with pytest.raises(PolicyError, match=f"nested deeper than {LIMIT} levels"):
            load_policy(document)
        with pytest.raises(PolicyError, match="nested deeper"):
            Rollouts(document)

    def test_yaml_aliases_cannot_hide_depth(self) -> None:
        """An alias of a deep node placed deep counts the levels it stands for."""
        half = "[" * 40 + "1" + "]" * 40
        text = f"a: &deep {half}\nb: {'[' * 40}*deep{']' * 40}\n"
        [problem] = problems_of(text, "yaml")
        assert problem.startswith("b[0]")
        assert f"nested deeper than {LIMIT} levels" in problem


class TestYamlAliases:
    def test_a_billion_laughs_is_refused_in_bounded_memory(self) -> None:
        """The 500-byte alias bomb is refused while composed, before it is expanded."""
        assert len(BILLION_LAUGHS.encode()) < 600
        assert peak_memory(lambda: parse_policy(BILLION_LAUGHS, format="yaml")) < MEMORY
        [problem] = problems_of(BILLION_LAUGHS, "yaml")
        assert "aliases stand for more than 40,000 nodes" in problem

    def test_a_bomb_under_a_real_field_is_refused_too(self) -> None:
        """A bomb where a list is expected (an allow list) is refused the same way."""
        text = (
            BILLION_LAUGHS
            + "rollouts: {r: {stages: [{name: a, percent: 1}], targeting: {allow: *i}}}\n"
        )
        assert peak_memory(lambda: parse_policy(text, format="yaml")) < MEMORY

    @settings(max_examples=30)
    @given(width=st.integers(2, 30), levels=st.integers(2, 12))
    def test_any_alias_bomb_is_refused_or_small(self, width: int, levels: int) -> None:
        """Aliases of aliases, any width and depth: refused once they stand for 40,000 nodes."""
        lines = [f"l0: &l0 [{', '.join(['x'] * width)}]"]
        lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
        expanded = sum(width**i for i in range(1, levels)) * (width + 1)
        text = "\n".join(lines) + "\n"
        problems = problems_of(text, "yaml")
        if expanded > 200_000:
            assert len(problems) == 1
            assert "aliases stand for more than 40,000 nodes" in problems[0]

    def test_too_many_aliases_are_refused(self) -> None:
        """More than 1,000 aliases in one document is refused, each as small as it is."""
        text = "a: &a 1\nb: [" + ", ".join(["*a"] * 1001) + "]\n"
        [problem] = problems_of(text, "yaml")
        assert "more than 1,000 aliases" in problem

    def test_an_alias_inside_its_own_node_is_refused(self) -> None:
        """A node that contains an alias of itself (a cycle) is refused."""
        [problem] = problems_of("a: &a [1, *a]\n", "yaml")
        assert "the alias *a is inside the node it names" in problem

    def test_a_shared_list_of_stages_loads(self) -> None:
        """Aliases used as intended (one list of stages for many rollouts) load."""
        stages = "[{name: canary, percent: 1}, {name: all, percent: 100}]"
        text = f"rollouts:\n  r0: {{stages: &s {stages}}}\n" + "".join(
            f"  r{i}: {{stages: *s}}\n" for i in range(1, 200)
        )
        policy = parse_policy(text, format="yaml")
        assert {len(r.stages) for r in policy.rollouts.values()} == {2}
        assert len(policy.rollouts) == 200

    @pytest.mark.parametrize(
        "tag",
        [
            "!!python/object/apply:os.system ['echo pwned']",
            "!!python/name:os.system",
            "!!python/object/new:subprocess.Popen [['true']]",
            "!!python/module:os",
            "!!python/tuple [1, 2]",
        ],
    )
    def test_python_tags_are_refused(self, tag: str) -> None:
        """Every python/* tag is invalid YAML: nothing is built from it, nothing runs."""
        [problem] = problems_of(f"rollouts: {tag}\n", "yaml")
        assert problem.startswith("invalid YAML: could not determine a constructor")


class TestDuplicateKeys:
    @settings(max_examples=50)
    @given(
        fmt=st.sampled_from(["json", "yaml"]),
        key=st.text(alphabet=string.ascii_letters + "-_", min_size=1, max_size=12),
        path=st.lists(st.sampled_from(["x", "y", "z"]), max_size=5),
        times=st.integers(2, 4),
    )
    def test_a_key_given_twice_is_named_with_its_path(
        self, fmt: Format, key: str, path: list[str], times: int
    ) -> None:
        """A key given twice (or more) in one table is refused, at the key's path."""
        if fmt == "json":
            inner = "{" + ", ".join(f'"{key}": {i}' for i in range(times)) + "}"
            for part in reversed(path):
                inner = '{"' + part + '": ' + inner + "}"
            text = '{"rollouts": {}, "t": ' + inner + "}"
        else:
            inner = "{" + ", ".join(f'"{key}": {i}' for i in range(times)) + "}"
            for part in reversed(path):
                inner = "{" + part + ": " + inner + "}"
            text = "rollouts: {}\nt: " + inner + "\n"
        problems = problems_of(text, fmt)
        where = ".".join(["t", *path, key])
        [duplicate] = [p for p in problems if "duplicate key" in p]
        assert duplicate.startswith(f"{where}: duplicate key")
        if fmt == "json":
            assert duplicate.endswith(f"(given {times} times)")

    def test_yaml_names_both_lines(self) -> None:
        """In YAML, the problem gives the line of the first key and of the repeat."""
        text = "rollouts:\n  r:\n    stages: []\n    stages: [{name: a, percent: 1}]\n"
        assert problems_of(text, "yaml") == ["rollouts.r.stages: duplicate key (lines 3 and 4)"]

    def test_yaml_keys_that_read_as_the_same_value_are_duplicates(self) -> None:
        """``1`` and ``0x1`` are the same integer key: refused, as PyYAML would merge them."""
        [problem] = problems_of("rollouts: {}\nt: {1: a, 0x1: b}\n", "yaml")
        assert problem.startswith("t.1: duplicate key")

    def test_a_yaml_merge_key_may_be_overridden(self) -> None:
        """``<<: *defaults`` then a key of the defaults is the override YAML intends."""
        text = (
            "rollouts:\n"
            "  r:\n"
            "    stages: &st [{name: a, percent: 1}]\n"
            "    health: &h {r0: 2.0, min_events: 3}\n"
            "  q:\n"
            "    stages: *st\n"
            "    health: {<<: *h, r0: 3.0}\n"
        )
        assert parse_policy(text, format="yaml").rollouts["q"].health.r0 == 3.0

    def test_toml_still_refuses_them_itself(self) -> None:
        """TOML's own parser refuses a key given twice."""
        [problem] = problems_of("rollouts = {}\na = 1\na = 2\n", "toml")
        assert problem.startswith("invalid TOML: ")


class TestDurations:
    @settings(max_examples=50)
    @given(digits=st.integers(3, 400), unit=st.sampled_from(["d", "w"]))
    def test_huge_durations_are_refused_at_their_path(self, digits: int, unit: str) -> None:
        """A bake of hundreds of days or more, of any number of digits, names its field."""
        bake = "9" * digits + unit
        document = {"rollouts": {"r": {"stages": [{"name": "a", "percent": 1, "bake": bake}]}}}
        with pytest.raises(PolicyError) as info:
            load_policy(document)
        [problem] = info.value.problems
        assert problem.path == "rollouts.r.stages[0].bake"
        assert problem.message == "must be a duration of at most 366 days"

    def test_the_issue_s_example(self) -> None:
        """``"99999999999999999999999w"`` is refused."""
        with pytest.raises(ValueError, match="at most 366 days"):
            parse_duration("99999999999999999999999w")

    @pytest.mark.parametrize("value", ["366d", "52w", "8784h", 366 * 86400, "365d23h59m59s"])
    def test_up_to_366_days_is_a_duration(self, value: object) -> None:
        """366 days, in any unit, is the longest duration."""
        assert 0 < parse_duration(value) <= 366 * 86400

    @pytest.mark.parametrize(
        "value", ["367d", "53w", 366 * 86400 + 1, 1e300, "1" + "0" * 400 + "s"]
    )
    def test_past_366_days_is_refused(self, value: object) -> None:
        """A second more than 366 days is refused, as a number or as text."""
        with pytest.raises(ValueError, match="at most 366 days"):
            parse_duration(value)


class TestDocumentsWithoutRollouts:
    @pytest.mark.parametrize(
        ("fmt", "text"),
        [
            ("toml", ""),
            ("toml", "# only a comment\n\n"),
            ("json", "{}"),
            ("yaml", ""),
            ("yaml", "# only a comment\n"),
            ("yaml", "{}"),
        ],
    )
    def test_an_empty_document_is_refused(self, fmt: Format, text: str) -> None:
        """An empty file, or an empty table, is not a policy: it says how to write one."""
        assert problems_of(text, fmt) == [
            "the document is empty: a policy needs a rollouts table (rollouts = {} for none)"
        ]

    @given(cut=st.integers(0, 3))
    def test_a_file_cut_at_a_table_boundary_is_refused(self, cut: int) -> None:
        """A TOML file truncated before its rollouts, still valid TOML, is refused."""
        tables = [
            'environments = ["dev"]\n',
            '[segments.staff]\nrules = [{ attribute = "a", op = "eq", value = 1 }]\n',
            '[segments.beta]\nrules = [{ attribute = "b", op = "eq", value = 2 }]\n',
            '[rollouts.r]\nstages = [{ name = "a", percent = 1 }]\n',
        ]
        text = "".join(tables[:cut])
        problems = problems_of(text, "toml")
        assert problems[-1].startswith("rollouts: is required") or problems == [
            "the document is empty: a policy needs a rollouts table (rollouts = {} for none)"
        ]
        assert parse_policy("".join(tables), format="toml").rollouts["r"].stages[0].percent == 1

    def test_an_explicit_empty_table_is_a_policy_without_rollouts(self) -> None:
        """``rollouts = {}`` says "no rollouts" on purpose."""
        assert parse_policy('environments = ["dev"]\nrollouts = {}\n', format="toml").rollouts == {}

    def test_rollouts_from_an_empty_file_is_refused(self, here: Path) -> None:
        """Rollouts.from_file on an empty file raises PolicyError, naming the file."""
        path = here / "rollouts.toml"
        path.write_text("")
        with pytest.raises(PolicyError, match=r"in .*rollouts\.toml"):
            Rollouts.from_file(path)

    def test_the_schema_requires_rollouts(self) -> None:
        """The JSON Schema of the file lists rollouts as required; Policy() in code has none."""
        assert Policy.model_json_schema()["required"] == ["rollouts"]
        assert Policy().rollouts == {}


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=2000),
    lambda children: (
        st.lists(children, max_size=50)
        | st.dictionaries(st.text(max_size=20), children, max_size=20)
    ),
    max_leaves=200,
)


class TestMessagesStayShort:
    @settings(max_examples=60)
    @given(
        value=JSON_VALUES,
        field=st.sampled_from(["percent", "bake", "name", "min_units", "segments"]),
    )
    def test_a_value_shown_in_a_message_is_cut(self, value: object, field: str) -> None:
        """Whatever value sits in a field, each message shows at most 40 characters of it."""
        stage: dict[str, object] = {"name": "a", "percent": 1, field: value}
        try:
            load_policy({"rollouts": {"r": {"stages": [stage]}}})
        except PolicyError as error:
            for problem in error.problems:
                assert len(problem.message) < 200, problem.message

    @pytest.mark.parametrize(
        "value",
        [
            "x" * 1_000_000,
            10**5000,
            [[["deep"] * 100] * 100],
            {"k" * 100_000: "v"},
            b"\x00" * 1_000_000,
        ],
        ids=["1MB-str", "5000-digit-int", "ten-thousand-items", "huge-key", "1MB-bytes"],
    )
    def test_huge_values_make_short_messages(self, value: object) -> None:
        """A huge value where a percent goes is named in a message of a few dozen characters."""
        document = {"rollouts": {"r": {"stages": [{"name": "a", "percent": value}]}}}
        with pytest.raises(PolicyError) as info:
            load_policy(document)
        [problem] = info.value.problems
        assert problem.path == "rollouts.r.stages[0].percent"
        assert len(problem.message) < 120

    @pytest.mark.parametrize("fmt", ["json", "toml", "yaml"])
    def test_a_million_values_are_refused_before_validation(self, fmt: Format) -> None:
        """More values than a policy needs is refused whole, in one short message."""
        items = ", ".join(["1"] * 60_000)
        text = {
            "json": '{"rollouts": {"r": {"stages": [{"name": "a", "percent": 1}], '
            '"targeting": {"allow": [' + items + "]}}}}",
            "toml": '[rollouts.r]\nstages = [{ name = "a", percent = 1 }]\n'
            "targeting = { allow = [" + items + "] }\n",
            "yaml": "rollouts: {r: {stages: [{name: a, percent: 1}], targeting: {allow: ["
            + items
            + "]}}}\n",
        }[fmt]
        [problem] = problems_of(text, fmt)
        assert "more than 50,000 values" in problem
        assert len(problem) < 200

    def test_a_yaml_integer_of_5000_digits_is_refused(self) -> None:
        """An integer past Python's conversion limit is a PolicyError, not a ValueError."""
        [problem] = problems_of(
            "rollouts: {r: {stages: [{name: a, percent: " + "9" * 5000 + "}]}}", "yaml"
        )
        assert problem.startswith("invalid YAML: ")
        assert len(problem) < 400


class TestArbitraryText:
    @settings(max_examples=100)
    @given(text=st.text(max_size=400), fmt=st.sampled_from(["toml", "json", "yaml"]))
    def test_any_text_parses_or_raises_policy_error(self, text: str, fmt: Format) -> None:
        """Any text, in any format, gives a Policy or a PolicyError with problems."""
        try:
            parse_policy(text, format=fmt)  # type: ignore[arg-type]  # a Format
        except PolicyError as error:
            problems = error.problems
            assert problems

    @settings(max_examples=60)
    @given(
        text=st.text(alphabet="[]{}\"'\\#=,.\n a1:-*&!", max_size=400),
        fmt=st.sampled_from(["toml", "json", "yaml"]),
    )
    def test_any_punctuation_parses_or_raises_policy_error(self, text: str, fmt: Format) -> None:
        """Text made of the characters the scans care about never escapes as another error."""
        try:
            parse_policy(text, format=fmt)  # type: ignore[arg-type]  # a Format
        except PolicyError as error:
            problems = error.problems
            assert problems


HOSTILE_FILES: dict[str, Callable[[Path], Path]] = {
    "fifo": lambda d: _fifo(d / "p.toml"),
    "dev-zero": lambda d: _zero(d / "p.toml"),
    "directory": lambda d: _directory(d / "p.toml"),
    "50MB": lambda d: _large(d / "p.json"),
    "bomb": lambda d: _write(d / "p.yaml", BILLION_LAUGHS.encode()),
    "deep-json": lambda d: _write(d / "p.json", b"[" * DEEP + b"]" * DEEP),
    "deep-toml": lambda d: _write(d / "p.toml", b"a = " + b"[" * DEEP + b"]" * DEEP),
    "deep-yaml": lambda d: _write(d / "p.yaml", b"{a: " * DEEP + b"1" + b"}" * DEEP),
    "binary": lambda d: _write(d / "p.toml", bytes(range(256)) * 4),
    "utf16": lambda d: _write(d / "p.json", '{"rollouts": {}}'.encode("utf-16")),
    "invalid-utf8": lambda d: _write(d / "p.yaml", b"rollouts:\n  caf\xe9: {}\n"),
    "empty": lambda d: _write(d / "p.toml", b""),
    "duplicates": lambda d: _write(d / "p.json", b'{"rollouts": {}, "rollouts": {}}'),
    "python-tag": lambda d: _write(d / "p.yaml", b"rollouts: !!python/name:os.system\n"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@posix_only
class TestCommandLine:
    @pytest.fixture(name="cli")
    def _cli(
        self, here: Path, capsys: pytest.CaptureFixture[str]
    ) -> Callable[..., tuple[int, str, str]]:
        """Run ``main(argv)``: its exit code, stdout and stderr."""

        def run(*argv: str) -> tuple[int, str, str]:
            capsys.readouterr()
            code = main(list(argv))
            out, err = capsys.readouterr()
            return code, out, err

        return run

    @pytest.mark.parametrize("kind", sorted(HOSTILE_FILES))
    def test_validate_prints_one_problem_and_exits_1(
        self, here: Path, kind: str, cli: Callable[..., tuple[int, str, str]]
    ) -> None:
        """Whatever the file, validate prints its problem and exits 1: no traceback, no wait."""
        path = HOSTILE_FILES[kind](here)
        code, out, err = cli("validate", str(path))
        assert (code, err) == (1, "")
        head, *lines = out.splitlines()
        assert head == f"{path}: 1 problem"
        assert len(lines) == 1
        assert lines[0].startswith(f"  {path}")
        code, out, err = cli("validate", str(path), "--json")
        assert (code, err) == (1, "")
        [result] = json.loads(out)["files"]
        assert (result["file"], result["ok"], len(result["problems"])) == (str(path), False, 1)

    @pytest.mark.parametrize("kind", ["fifo", "dev-zero", "bomb", "deep-json", "binary"])
    @pytest.mark.parametrize(
        ("command", "code", "said"),
        [
            (["simulate"], 1, "stagedroll: {path}: 1 problem\n"),
            (["tick"], 2, "stagedroll: tick needs the policy: {path}: "),
            (["status"], 0, "stagedroll: note: {path}: "),
            (["history", "r"], 0, "stagedroll: note: {path}: "),
        ],
    )
    def test_every_command_refuses_the_file_in_one_message(
        self,
        *,
        here: Path,
        kind: str,
        command: list[str],
        code: int,
        said: str,
        cli: Callable[..., tuple[int, str, str]],
    ) -> None:
        """Other commands refuse such a policy in one message; steering goes on from the store."""
        path = HOSTILE_FILES[kind](here)
        store = f"sqlite:///{here / 's.db'}"
        with Rollouts({"rollouts": {"r": {"stages": [{"name": "a", "percent": 1}]}}}, store=store):
            pass  # a service started r in the store
        got, _, err = cli(*command, "--policy", str(path), "--store", store)
        assert got == code
        assert err.startswith(said.format(path=path))
        assert err.count("\n") == (2 if code == 1 else 1)  # simulate: a head, then its problem
        assert "Traceback" not in err

    def test_control_characters_in_names_and_paths_are_escaped(
        self, here: Path, cli: Callable[..., tuple[int, str, str]]
    ) -> None:
        """A key and a file name holding escape sequences are shown escaped, in one line each."""
        path = here / "a\x1b[2J\rb.toml"
        path.write_text('[rollouts."\\u001b[2J\\r\\u009b\\u202ex"]\nstages = []\n')
        code, out, _ = cli("validate", str(path))
        assert code == 1
        assert not set(out) & {"\x1b", "\r", "\x9b", "\u202e"}
        assert "rollouts.\\x1b[2J\\x0d\\x9b\\u202ex: invalid name" in out
        assert "a\\x1b[2J\\x0db.toml: 2 problems" in out
        _, out, _ = cli("validate", str(path), "--json")
        [result] = json.loads(out)["files"]
        assert result["file"] == str(path)
        assert result["problems"][0]["path"] == "rollouts.\x1b[2J\r\x9b\u202ex"

    def test_reasons_and_actors_are_escaped_and_json_is_exact(
        self, here: Path, cli: Callable[..., tuple[int, str, str]]
    ) -> None:
        """A reason that would clear the screen or forge a line is shown as text; JSON keeps it."""
        (here / "p.toml").write_text('[rollouts.r]\nstages = [{ name = "a", percent = 1 }]\n')
        common = ["--policy", "p.toml", "--store", f"sqlite:///{here / 's.db'}", "--create"]
        reason, actor = "bad\x1b[2J\rfine\nr: kill at a", "ev\u202elia\x07"
        code, out, _ = cli("freeze", "r", "--reason", reason, "--actor", actor, *common)
        assert code == 0
        assert out.count("\n") == 2  # what it did, then who and why
        assert "bad\\x1b[2J\\x0dfine\\x0ar: kill at a" in out
        assert "ev\\u202elia\\x07" in out
        for command in (["history", "r"], ["status"], ["status", "r"]):
            code, out, _ = cli(*command, *common)
            assert code == 0
            assert not set(out) & {"\x1b", "\r", "\x07", "\u202e"}
        _, out, _ = cli("history", "r", "--json", *common)
        [last, _] = json.loads(out)["transitions"]
        assert (last["reason"], last["actor"]) == (reason, actor)

    def test_arguments_argparse_refuses_are_escaped(
        self, cli: Callable[..., tuple[int, str, str]]
    ) -> None:
        """argparse echoes an unknown argument: escaped, like everything else."""
        code, _, err = cli("status", "x", "\x1b]0;pwned\x07")
        assert code == 2
        assert "\x1b" not in err
        assert "\\x1b]0;pwned\\x07" in err

    @pytest.mark.parametrize("kind", ["dev-zero", "directory"])
    def test_a_units_file_that_never_ends_is_refused(
        self, here: Path, kind: str, cli: Callable[..., tuple[int, str, str]]
    ) -> None:
        """simulate --units-file refuses a device or a directory instead of reading forever."""
        (here / "p.toml").write_text('[rollouts.r]\nstages = [{ name = "a", percent = 1 }]\n')
        make, _ = SPECIAL_FILES[kind]
        units = make(here / "units.txt")
        code, out, err = cli("simulate", "p.toml", "--units-file", str(units))
        assert (code, out) == (2, "")
        assert err.endswith("not a regular file or a pipe\n")

    def test_lines_are_found_without_expanding_aliases(self, here: Path) -> None:
        """validate's line finder walks each YAML node once, however often it is aliased."""
        from stagedroll.cli._lines import locate

        stages = ", ".join(f"{{name: s{i}, percent: {i + 1}}}" for i in range(50))
        text = f"rollouts:\n  r0: {{stages: &s [{stages}]}}\n" + "".join(
            f"  r{i}: {{stages: *s}}\n"
            for i in range(1, 40)  # 39 aliases of 251 nodes
        )
        tracemalloc.start()
        try:
            lines = locate(Path("p.yaml"), text)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < MEMORY
        assert lines["rollouts.r0.stages[49].percent"] == 2
        assert lines["rollouts.r39.stages"] == 41
        assert "rollouts.r39.stages[49].percent" not in lines  # an alias: not walked again

    def test_an_internal_error_is_one_line_with_exit_code_70(
        self, here: Path, cli: Callable[..., tuple[int, str, str]], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A bug surfaces as one line and exit code 70; -v adds its traceback."""
        from stagedroll.cli import _offline

        def broken(ctx: object) -> int:
            raise RuntimeError("bug\x1b[2J")

        monkeypatch.setattr(_offline, "schema", broken)
        code, out, err = cli("schema")
        assert (code, out) == (70, "")
        assert err == "stagedroll: internal error (RuntimeError: bug\\x1b[2J); please report it\n"
        code, _, err = cli("schema", "-v")
        assert code == 70
        assert "Traceback" in err
        assert "\x1b" not in err
