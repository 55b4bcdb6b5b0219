"""Fork safety: objects that hold locks, connections or per-process counts renew them.

stagedroll's core starts no thread, but the host may (and stores shared by processes run
one): a lock held by a thread at the moment of ``fork`` would stay held forever in the
child. Objects registered here are told after every fork, in the child, to replace their
locks (and forget per-process counts). An object may also prepare for the fork
(``_before_fork``, e.g. close a connection that must not cross it), resume in the
parent (``_after_fork_in_parent``), and act in the child once every object has renewed
its state (``_after_fork_renewed``: a store's thread starts again only then, never on the
parent's connections).
"""

from __future__ import annotations

import contextlib
import os
import weakref
from typing import Protocol

__all__ = ["ForkAware", "register"]


class ForkAware(Protocol):
    """An object with state that must be renewed in a forked child."""

    def _after_fork(self) -> None: ...


_registered: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def register(obj: ForkAware) -> None:
    """Call ``obj._after_fork()`` in the child after each fork, for as long as ``obj`` lives.

    ``obj._before_fork()`` and ``obj._after_fork_in_parent()``, when it has them, are called
    before each fork and after it in the parent.
    """
    _registered.add(obj)


def _call(name: str) -> None:
    for obj in list(_registered):
        method = getattr(obj, name, None)
        if method is not None:
            with contextlib.suppress(Exception):  # a fork must go ahead whatever happens here
                method()


def _prepare() -> None:
    _call("_before_fork")


def _resume() -> None:
    _call("_after_fork_in_parent")


def _renew() -> None:
    _call("_after_fork")
    # Then what may use the renewed state (a store's thread restarted): only once every
    # object has renewed its own, whatever order the set gives them in.
    _call("_after_fork_renewed")


if hasattr(os, "register_at_fork"):  # pragma: no branch - absent on Windows only
    os.register_at_fork(before=_prepare, after_in_parent=_resume, after_in_child=_renew)
