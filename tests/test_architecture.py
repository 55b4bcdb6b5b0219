"""Tests of the module layering, read from the source (docs/architecture.md says why)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "stagedroll"
FACADE, HANDLE = PACKAGE / "_rollouts.py", PACKAGE / "_rollout.py"
HANDLE_PRIVATES = {"_view", "_plan", "_owner"}
CONSUMERS = {
    "cli": sorted((PACKAGE / "cli").glob("*.py")),
    "testing": [*sorted((PACKAGE / "testing").glob("*.py")), SRC / "pytest_stagedroll.py"],
    "exporters": sorted((PACKAGE / "exporters").glob("*.py")),
    "dashboard": sorted((PACKAGE / "dashboard").glob("*.py")),
    "plots": sorted((PACKAGE / "plots").glob("*.py")),
    "integrations": sorted((PACKAGE / "integrations").glob("*.py")),
    "importers": sorted((PACKAGE / "importers").glob("*.py")),
}
# The private modules a consumer may import, and why: the CLI's ``validate`` locates problems
# by line with the policy loader's own reader; ``override`` forces decisions through the one
# module of process-global test state, which the decision path asks; the importers read an
# export file within the bounds of a policy file, with the policy loader's reader.
ALLOWED_PRIVATE = {
    "cli": {"_document", "_yaml"},
    "testing": {"_override"},
    "exporters": set(),
    "dashboard": set(),
    "plots": set(),
    "integrations": set(),
    "importers": {"_document"},
}


def modules() -> Iterator[Path]:
    yield from sorted(PACKAGE.rglob("*.py"))


def library_privates() -> set[str]:
    """The private names the library's own objects define (methods, attributes, slots)."""
    names: set[str] = set()
    consumers = {p for paths in CONSUMERS.values() for p in paths}
    for path in modules():
        if path in consumers:
            continue
        for node in ast.walk(tree(path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(node.name)
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
                and isinstance(node.ctx, ast.Store)
            ):
                names.add(node.attr)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def imported(node: ast.ImportFrom, path: Path) -> str:
    """The absolute name of the module an ``ImportFrom`` reads."""
    if not node.level:
        return node.module or ""
    package = path.parent.relative_to(SRC).parts
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def type_checking_imports(module: ast.Module, path: Path) -> list[str]:
    """What is imported under ``if TYPE_CHECKING:``: ``module.name`` (or the module)."""
    found: list[str] = []
    for node in ast.walk(module):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom):
                    source = imported(inner, path)
                    found += [f"{source}.{alias.name}" for alias in inner.names]
                elif isinstance(inner, ast.Import):
                    found += [alias.name for alias in inner.names]
    return found


class TestLayers:
    @pytest.mark.parametrize("path", list(modules()), ids=lambda p: str(p.relative_to(SRC)))
    def test_no_type_only_import_of_the_facade_or_the_handle(self, path: Path) -> None:
        """No module imports ``Rollouts`` or ``Rollout`` for its annotations only: a module
        that needs them is above them, and imports them; the others receive less."""
        names = type_checking_imports(tree(path), path)
        assert not [n for n in names if n.rsplit(".", 1)[-1] in ("Rollouts", "Rollout")]

    @pytest.mark.parametrize(
        "path",
        [p for p in modules() if p != HANDLE],
        ids=lambda p: str(p.relative_to(SRC)),
    )
    def test_no_module_but_the_handle_reads_its_privates(self, path: Path) -> None:
        """``_view``, ``_plan`` and ``_owner`` are read in the handle's module only."""
        reads = [
            f"{ast.unparse(node)} (line {node.lineno})"
            for node in ast.walk(tree(path))
            if isinstance(node, ast.Attribute) and node.attr in HANDLE_PRIVATES
        ]
        assert reads == []

    def test_the_type_only_imports_left_are_few(self) -> None:
        """What is still imported for annotations only (an optional dependency, or the
        pytest plugin's names) is listed here: a new one is a design decision."""
        found = {
            name
            for path in [*modules(), SRC / "pytest_stagedroll.py"]
            for name in type_checking_imports(tree(path), path)
        }
        assert found == {
            "psycopg",
            "redis",
            "yaml",
            "matplotlib.figure.Figure",  # the plots' return type; matplotlib loads lazily
            "stagedroll.Policy",
            "stagedroll.Rollouts",
            "stagedroll.testing.FakeClock",
        }


class TestConsumers:
    @pytest.mark.parametrize(
        ("kind", "path"),
        [(kind, path) for kind, paths in CONSUMERS.items() for path in paths],
        ids=lambda v: v if isinstance(v, str) else v.name,
    )
    def test_import_only_public_names(self, kind: str, path: Path) -> None:
        """The CLI and the testing toolkit use the library as its users do: through public
        modules and names (and their own package's modules)."""
        own = "" if path.name == "pytest_stagedroll.py" else "stagedroll." + kind
        problems: list[str] = []
        for node in ast.walk(tree(path)):
            if isinstance(node, ast.Import):
                sources = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = imported(node, path)
                sources = [source]
                if not source.startswith("stagedroll") or (own and source.startswith(own)):
                    continue
                problems += [
                    f"{source}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and a.name != "__version__"
                ]
            else:
                continue
            for source in sources:
                if not source.startswith("stagedroll") or (own and source.startswith(own + ".")):
                    continue
                private = [part for part in source.split(".") if part.startswith("_")]
                if private and set(private) - ALLOWED_PRIVATE[kind]:
                    problems.append(source)
        assert problems == []

    @pytest.mark.parametrize(
        "path", [p for paths in CONSUMERS.values() for p in paths], ids=lambda p: p.name
    )
    def test_read_no_private_attribute_of_the_library(self, path: Path) -> None:
        """A consumer's own objects may have private attributes (``self._lock``); the
        library's objects it holds are read through their public names only."""
        privates = library_privates()
        reads = [
            f"{ast.unparse(node)} (line {node.lineno})"
            for node in ast.walk(tree(path))
            if isinstance(node, ast.Attribute)
            and node.attr in privates
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ]
        assert reads == []


def documented_layers() -> dict[str, int]:
    """The layer of each module, from the table of docs/architecture.md."""
    text = (SRC.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    layers: dict[str, int] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0][:1].isdigit() and cells[1].startswith("`"):
            path = cells[1].strip("`")
            name = path.removesuffix("/").removesuffix(".py").removesuffix("/__init__")
            layers[
                "stagedroll." + name.replace("/", ".") if name != "__init__" else "stagedroll"
            ] = int(cells[0].split()[0])
    return layers


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path) -> set[str]:
    """The stagedroll modules ``path`` imports when it is imported (module level)."""
    found: set[str] = set()
    for node in tree(path).body:
        if isinstance(node, ast.ImportFrom):
            source = imported(node, path)
            if source.startswith("stagedroll"):
                found |= {f"{source}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("stagedroll")}
    return found


class TestDocumentedLayers:
    def test_every_module_is_in_the_table(self) -> None:
        """docs/architecture.md lists every module of the package (a package by its folder
        for the public ones)."""
        layers = documented_layers()
        missing = [
            module_name(p)
            for p in modules()
            if module_name(p) not in layers
            and not any(module_name(p).startswith(f"{m}.") for m in layers)
        ]
        assert missing == []

    @pytest.mark.parametrize("path", list(modules()), ids=lambda p: str(p.relative_to(SRC)))
    def test_imports_go_down_the_layers(self, path: Path) -> None:
        """A module imports from its own layer or the layers above it in the table."""
        layers = documented_layers()

        def layer(name: str) -> int | None:
            while name:
                if name in layers:
                    return layers[name]
                name = name.rpartition(".")[0]
            return None

        own = layer(module_name(path))
        assert own is not None
        upward = sorted(name for name in runtime_imports(path) if (layer(name) or 0) > own)
        assert upward == []
