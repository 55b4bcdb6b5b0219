"""The unit of the current request: bound by an integration, read by guards.

A web framework's middleware (or a task queue's worker) knows who the request is for; the
guarded function deep below it should not have to take the unit as an argument. The unit
and its attributes live in a :class:`~contextvars.ContextVar`, so each thread and each
asyncio task sees its own, and a task or a thread started with the request's context
(``asyncio.create_task``, ``contextvars.copy_context().run``) sees the request's.

``unit=stagedroll.current_unit`` (and ``attributes=stagedroll.current_attributes``) make a
guard read them; a unit callable of one's own always wins, since it is what the guard
calls. With no unit bound, ``current_unit`` gives ``None``: the call takes the no-unit path
(the old path, reason ``NO_UNIT``; see ``docs/decisions.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar, Token
from types import MappingProxyType, TracebackType

__all__ = ["Bound", "bind", "current_attributes", "current_unit"]

_EMPTY: Mapping[str, object] = MappingProxyType({})
_BOUND: ContextVar[tuple[object, Mapping[str, object]] | None] = ContextVar(
    "stagedroll_unit", default=None
)


def current_unit(*args: object, **kwargs: object) -> object:
    """The unit bound to the current context (:func:`bind`), or ``None``.

    It takes and ignores any arguments, so that ``unit=stagedroll.current_unit`` fits a
    guard of any signature.
    """
    bound = _BOUND.get()
    return None if bound is None else bound[0]


def current_attributes(*args: object, **kwargs: object) -> Mapping[str, object]:
    """The attributes bound with the current unit (``{}`` when none were, or no unit is)."""
    bound = _BOUND.get()
    return _EMPTY if bound is None else bound[1]


class Bound:
    """A unit bound to the current context, until the block ends (or :meth:`reset`).

    Made by :func:`bind`; a ``with`` or ``async with`` block, or ``reset()`` by hand (an
    integration that binds in one hook and unbinds in another).
    """

    __slots__ = ("_token", "attributes", "unit")

    def __init__(self, unit: object, attributes: Mapping[str, object]) -> None:
        self.unit = unit
        self.attributes = attributes
        self._token: Token[tuple[object, Mapping[str, object]] | None] | None = _BOUND.set(
            (unit, attributes)
        )

    def reset(self) -> None:
        """Unbind: the context sees what it saw before :func:`bind`; a second call does nothing.

        Called from another context (a different task or thread), the unit is cleared in
        that one instead, and the context that bound it can still unbind.
        """
        token = self._token
        if token is None:
            return
        try:
            _BOUND.reset(token)
        except ValueError:  # created in another context: clear it here, keep the token
            _BOUND.set(None)  # so that the context that bound it can still unbind
            return
        self._token = None

    def __enter__(self) -> Bound:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.reset()

    async def __aenter__(self) -> Bound:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.reset()


def bind(unit: object, attributes: Mapping[str, object] | None = None) -> Bound:
    """Bind ``unit`` (and its targeting ``attributes``) to the current context; return it.

    The binding starts at once; ``with stagedroll.bind(user_id): ...`` ends it with the
    block. The unit is checked when a decision reads it (``str``, ``int``, ``UUID`` or
    ``None``), as any unit is; ``attributes`` must be a mapping (copied, read-only).
    """
    if attributes is None:
        frozen = _EMPTY
    elif isinstance(attributes, Mapping):
        frozen = MappingProxyType(dict(attributes))
    else:
        raise TypeError(f"attributes must be a mapping, not {type(attributes).__name__}")
    return Bound(unit, frozen)
