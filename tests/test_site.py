"""The documentation site's sources are complete: every public name has its reference entry,
and every page of docs/ is in mkdocs.yml's nav (``make docs`` builds them, strict)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import yaml

import stagedroll

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"
NOT_IN_REFERENCE = {
    "stagedroll.cli": "its interface is the command, documented in docs/cli.md",
    "stagedroll.exporters": "a namespace: its modules have their pages",
    "stagedroll.integrations": "a namespace: its modules have their pages",
}
"""Public modules without a reference page of their own, and why."""

# A mkdocstrings directive: `::: identifier`, then its options indented below it.
DIRECTIVE = re.compile(r"^::: *(?P<identifier>[\w.]+)[ \t]*\n(?P<options>(?:(?: {4}.*)?\n)*)", re.M)


@dataclass(frozen=True)
class Directive:
    """One ``:::`` directive of a reference page."""

    page: str
    identifier: str
    members: list[str] | bool | None
    """The ``members`` option: the names it renders, ``False`` for none, ``None`` unset."""


def directives() -> list[Directive]:
    """Every directive of every reference page."""
    found = []
    for page in sorted(REFERENCE.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for match in DIRECTIVE.finditer(text):
            options = yaml.safe_load(textwrap.dedent(match["options"])) or {}
            members = options.get("options", {}).get("members")
            found.append(Directive(page.name, match["identifier"], members))
    return found


def public_modules() -> list[ModuleType]:
    """stagedroll and each of its modules whose dotted path has no private part."""
    names = [info.name for info in pkgutil.walk_packages(stagedroll.__path__, "stagedroll.")]
    public = [n for n in names if not any(part.startswith("_") for part in n.split("."))]
    return [stagedroll, *(importlib.import_module(name) for name in public)]


def documented_modules() -> list[ModuleType]:
    """The public modules that must have a reference page."""
    return [m for m in public_modules() if m.__name__ not in NOT_IN_REFERENCE]


def rendered() -> set[tuple[str, str]]:
    """The (module, name) pairs the reference pages render."""
    pairs = set()
    modules = {m.__name__ for m in public_modules()}
    for directive in directives():
        if directive.identifier not in modules:  # one object: `::: stagedroll.Rollouts`
            module, _, name = directive.identifier.rpartition(".")
            pairs.add((module, name))
        elif isinstance(directive.members, list):  # a module, with the members it renders
            pairs |= {(directive.identifier, name) for name in directive.members}
    return pairs


def same_object(pair: tuple[str, str], pairs: set[tuple[str, str]]) -> bool:
    """Whether a class or function re-exported as ``pair`` is rendered under another module."""
    module, name = pair
    value = getattr(importlib.import_module(module), name)
    if not (inspect.isclass(value) or inspect.isfunction(value)):
        return False
    for other_module, other_name in pairs:
        try:
            other = getattr(importlib.import_module(other_module), other_name)
        except (ImportError, AttributeError):
            continue
        if other is value:
            return True
    return False


def nav_pages(node: object) -> list[str]:
    """The page paths of a nav (or of one of its sections), in order."""
    if isinstance(node, str):
        return [node] if node.endswith(".md") else []
    if isinstance(node, list):
        return [page for item in node for page in nav_pages(item)]
    if isinstance(node, dict):
        return [page for value in node.values() for page in nav_pages(value)]
    return []


@pytest.fixture(name="config")
def _config() -> dict[str, object]:
    """mkdocs.yml, read as plain YAML (it uses no Python tags)."""
    loaded = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


class TestReference:
    @pytest.mark.parametrize("module", documented_modules(), ids=lambda m: m.__name__)
    def test_every_public_name_is_rendered(self, module: ModuleType) -> None:
        """Each name of the module's ``__all__`` has an entry, here or on its defining page."""
        pairs = rendered()
        names = getattr(module, "__all__", [])
        missing = [
            name
            for name in names
            if (module.__name__, name) not in pairs
            and not same_object((module.__name__, name), pairs)
        ]
        assert missing == [], f"docs/reference: no entry for {module.__name__}: {missing}"

    @pytest.mark.parametrize("module", documented_modules(), ids=lambda m: m.__name__)
    def test_every_public_module_has_a_page(self, module: ModuleType) -> None:
        """Each public module's docstring is rendered by a ``::: module`` directive."""
        pages = [d.page for d in directives() if d.identifier == module.__name__]
        assert pages, f"docs/reference: no page renders `::: {module.__name__}`"

    def test_entries_are_public_names(self) -> None:
        """Every directive names a public module or a name of a public module's ``__all__``."""
        modules = {m.__name__: m for m in public_modules()}
        wrong = []
        for module, name in rendered():
            if module not in modules or name not in getattr(modules[module], "__all__", []):
                wrong.append(f"{module}.{name}")
        assert wrong == []

    def test_a_missing_entry_is_found(self) -> None:
        """A name that no page renders is reported: the check is not vacuous."""
        pairs = rendered() - {("stagedroll", "bucket")}
        assert ("stagedroll", "bucket") not in pairs
        assert not same_object(("stagedroll", "bucket"), pairs)

    def test_reexports_count_where_defined(self) -> None:
        """``stagedroll.MemoryStore`` counts as rendered by its ``stagedroll.stores`` entry."""
        assert same_object(("stagedroll", "MemoryStore"), {("stagedroll.stores", "MemoryStore")})
        assert not same_object(("stagedroll", "__version__"), {("stagedroll", "bucket")})

    def test_directive_options_are_parsed(self) -> None:
        """The directive pattern reads the identifier and the indented options below it."""
        text = "::: pkg.mod\n    options:\n      members:\n        - a\n        - b\n\nText.\n"
        match = DIRECTIVE.search(text)
        assert match is not None
        assert match["identifier"] == "pkg.mod"
        options = yaml.safe_load(textwrap.dedent(match["options"]))
        assert options == {"options": {"members": ["a", "b"]}}


class TestNav:
    def test_every_page_is_in_the_nav(self, config: dict[str, object]) -> None:
        """Each Markdown page of docs/ appears in the nav: no orphan page."""
        listed = set(nav_pages(config["nav"]))
        pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
        assert sorted(pages - listed) == []

    def test_every_nav_entry_exists(self, config: dict[str, object]) -> None:
        """Each page the nav lists is a file of docs/, listed once."""
        listed = nav_pages(config["nav"])
        assert [p for p in listed if not (DOCS / p).is_file()] == []
        assert len(listed) == len(set(listed))

    def test_build_is_strict_and_offline(self, config: dict[str, object]) -> None:
        """Warnings fail the build, and no configured plugin fetches from the network."""
        assert config["strict"] is True
        plugins = [p if isinstance(p, str) else next(iter(p)) for p in config["plugins"]]  # type: ignore[attr-defined]
        assert set(plugins) <= {"search", "autorefs", "mkdocstrings"}
        theme = config["theme"]
        assert isinstance(theme, dict)
        assert theme["font"] is False
