"""A griffe extension for the site: the docstrings' Sphinx roles as links of the reference.

stagedroll's docstrings write ``:class:`Decision``` and ``:meth:`~stagedroll.Rollouts.status```,
which mkdocstrings would show as raw text. This extension, loaded by ``mkdocs.yml``, rewrites
each role into an *optional* cross-reference: a link when the target has a reference entry,
plain code when it has none (``time.time``, a private helper), so a role never fails the
strict build. The docstrings themselves are not changed.
"""

from __future__ import annotations

import html
import re
from typing import Any

from griffe import Extension, GriffeLoader, Module, NameResolutionError, Object

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|exc|obj|const):`(?P<target>[^`]+)`")
"""A Sphinx role of the Python domain, ``:class:`target```."""
EXPLICIT = re.compile(r"(?P<title>[^<]*)<(?P<target>[^>]+)>")
"""A role's target with its own title, ``title <target>``."""


def target_path(owner: Object, target: str) -> str:
    """The full path of ``target`` as ``owner``'s module sees it (the text itself if unknown)."""
    head, _, rest = target.partition(".")
    try:
        path = owner.resolve(head)
    except NameResolutionError:  # not a name of the module: left as written, unlinked
        return target
    return f"{path}.{rest}" if rest else path


def rewrite(owner: Object, text: str) -> str:
    """``text`` with each role replaced by an optional cross-reference to its target."""

    def replace(match: re.Match[str]) -> str:
        written = match["target"].strip()
        explicit = EXPLICIT.fullmatch(written)
        if explicit:  # :meth:`title <target>`
            title, target = explicit["title"].strip(), explicit["target"].strip()
        else:
            target = written.lstrip("~")
            title = target.rsplit(".", 1)[-1] if written.startswith("~") else target
        identifier = target_path(owner, target.lstrip("~").removesuffix("()"))
        return (
            f'<autoref identifier="{html.escape(identifier)}" optional>'
            f"<code>{html.escape(title)}</code></autoref>"
        )

    return ROLE.sub(replace, text)


def visit(obj: Object, seen: set[str]) -> None:
    """Rewrite the docstrings of ``obj`` and of its members (not of aliases: theirs is theirs)."""
    if obj.path in seen:
        return
    seen.add(obj.path)
    if obj.docstring is not None:
        obj.docstring.value = rewrite(obj, obj.docstring.value)
    for member in obj.members.values():
        if not member.is_alias:
            visit(member, seen)  # type: ignore[arg-type]


class SphinxRoles(Extension):
    """Rewrite the Sphinx roles of every docstring of a loaded package."""

    def on_package(self, *, pkg: Module, loader: GriffeLoader, **kwargs: Any) -> None:
        """Rewrite the package's docstrings once it is loaded."""
        visit(pkg, set())
