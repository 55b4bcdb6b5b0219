"""The bounded YAML loader: PyYAML's safe loader, refusing what would expand or recurse.

It composes a document level by level and refuses, before anything is constructed or
expanded: nesting deeper than :data:`~stagedroll._document.MAX_DEPTH`, more than
:data:`~stagedroll._document.MAX_ALIASES` aliases, aliases that stand for more than
:data:`~stagedroll._document.MAX_ALIASED_NODES` nodes together (a "billion laughs"), and an
alias inside the node it names (a cycle). Keys given twice in one mapping are reported with
their path and lines. PyYAML is an optional extra, imported when a YAML file is read.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from ._document import (
    MAX_ALIASED_NODES,
    MAX_ALIASES,
    MAX_DEPTH,
    MAX_NODES,
    Part,
    Refused,
    YamlError,
    clipped,
    render,
    too_many_nodes,
)
from .exceptions import MissingExtraError, PolicyProblem

if TYPE_CHECKING:
    import yaml

__all__ = ["compose_yaml", "load_yaml"]


def _safe_base(yaml: Any) -> Any:
    """PyYAML's safe loader, its scanner and parser in C when libyaml is there.

    The composer stays PyYAML's own (in Python), so that the bounds below apply as each
    node is composed; libyaml's parser makes the whole about five times faster.
    """
    if not getattr(yaml, "__with_libyaml__", False):
        return yaml.SafeLoader
    from yaml.composer import Composer  # noqa: PLC0415
    from yaml.constructor import SafeConstructor  # noqa: PLC0415
    from yaml.cyaml import CParser  # type: ignore[attr-defined]  # noqa: PLC0415
    from yaml.resolver import Resolver  # noqa: PLC0415

    class CSafeComposingLoader(Composer, CParser, SafeConstructor, Resolver):
        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

    return CSafeComposingLoader


@functools.cache
def _yaml_loader() -> type[Any]:
    """A safe loader that refuses deep nesting, alias bombs, cycles, and duplicate keys.

    And documents of more than :data:`~stagedroll._document.MAX_NODES` nodes.
    """
    try:
        import yaml  # noqa: PLC0415 - an optional extra, imported when a YAML file is read
    except ImportError:
        raise MissingExtraError("Reading YAML policies", "yaml", "yaml") from None

    merge = "tag:yaml.org,2002:merge"
    base = _safe_base(yaml)

    class BoundedLoader(base):  # type: ignore[valid-type,misc]
        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self.depth = 0
            self.aliases = 0
            self.nodes = 0  # nodes composed so far, each alias counting what it stands for
            self.aliased = 0  # nodes the aliases stand for
            self.sizes: dict[str, int] = {}  # anchor -> the nodes it stands for
            self.open: set[str] = set()  # anchors of the collections being composed
            self.path: list[Part] = []
            self.problems: list[PolicyProblem] = []

        def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
            event: Any = self.peek_event()
            if isinstance(event, yaml.AliasEvent):
                self._alias(event)
                aliased: yaml.Node | None = super().compose_node(parent, index)
                return aliased
            anchor = event.anchor
            collection = isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent)
            before = self.nodes
            self.nodes += index is not None or parent is None  # values, not keys (as JSON)
            if self.nodes > MAX_NODES:
                line = event.start_mark.line + 1
                raise Refused(PolicyProblem("", too_many_nodes(line)))
            part: Part | None = None  # a key being composed adds nothing to the path
            if isinstance(index, int):
                part = index
            elif isinstance(index, yaml.ScalarNode):
                part = str(index.value)
            if part is not None:
                self.path.append(part)
            if collection:
                self.depth += 1
                if self.depth > MAX_DEPTH:
                    line = event.start_mark.line + 1
                    message = f"nested deeper than {MAX_DEPTH} levels (line {line})"
                    raise Refused(PolicyProblem("", message))
                if anchor is not None:
                    self.open.add(anchor)
            node: yaml.Node | None = super().compose_node(parent, index)
            if isinstance(node, yaml.MappingNode):
                self._duplicates(node)
            if collection:
                self.depth -= 1
                self.open.discard(anchor)
            if part is not None:
                self.path.pop()
            if anchor is not None:
                self.sizes[anchor] = self.nodes - before
            return node

        def _alias(self, event: Any) -> None:
            line = event.start_mark.line + 1
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                message = f"more than {MAX_ALIASES:,} aliases (line {line})"
                raise Refused(PolicyProblem("", message))
            anchor = event.anchor
            if anchor in self.open:
                message = f"the alias *{anchor} is inside the node it names (line {line})"
                raise Refused(PolicyProblem("", message))
            size = self.sizes.get(anchor, 0)  # 0: an undefined alias, which PyYAML reports
            self.nodes += size
            self.aliased += size
            if self.aliased > MAX_ALIASED_NODES:  # first: it says what went wrong
                message = (
                    f"its aliases stand for more than {MAX_ALIASED_NODES:,} nodes "
                    f"(line {line}): a policy needs few aliases, and small ones"
                )
                raise Refused(PolicyProblem("", message))
            if self.nodes > MAX_NODES:
                raise Refused(PolicyProblem("", too_many_nodes(line)))

        def _duplicates(self, node: yaml.MappingNode) -> None:
            lines: dict[object, list[int]] = {}
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != merge:
                    key = self.construct_object(key_node)
                    lines.setdefault(key, []).append(_line(key_node.start_mark))
            for key, found in lines.items():
                if len(found) > 1:
                    listing = ", ".join(map(str, found[:-1])) + f" and {found[-1]}"
                    where = render([*self.path, str(key)])
                    self.problems.append(PolicyProblem(where, f"duplicate key (lines {listing})"))

        def single_node(self) -> yaml.Node | None:
            node: yaml.Node | None = self.get_single_node()
            if self.problems:
                raise Refused(*self.problems)
            return node

    return BoundedLoader


def _line(mark: Any) -> int:
    return int(mark.line) + 1 if mark is not None else 0


def compose_yaml(text: str) -> yaml.Node | None:
    """The node tree of a YAML document, composed within the bounds (nothing is expanded).

    Raises :class:`MissingExtraError` without PyYAML, ``Refused`` past a bound, and
    ``yaml.YAMLError`` for invalid YAML.
    """
    loader: Any = _yaml_loader()(text)
    try:
        node: yaml.Node | None = loader.single_node()
        return node
    finally:
        loader.dispose()


def load_yaml(text: str) -> object:
    """The data of a YAML document, loaded within the bounds (``Refused``, ``YamlError``)."""
    loader_class = _yaml_loader()
    import yaml  # noqa: PLC0415 - the extra is there: _yaml_loader() raised otherwise

    try:
        loader: Any = loader_class(text)
    except yaml.YAMLError as exc:  # the reader refuses a character it cannot take (NUL)
        raise YamlError(clipped(" ".join(str(exc).split()), 500)) from None
    try:
        # A safe loader builds plain data only: a python/* tag is an error, never code.
        node = loader.single_node()
        return None if node is None else loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise YamlError(clipped(" ".join(str(exc).split()), 500)) from None
    finally:
        loader.dispose()
