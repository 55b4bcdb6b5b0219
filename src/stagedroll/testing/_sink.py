"""``RecordingSink``: what a test's calls did, outcome by outcome, and the transitions made."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from types import TracebackType

from .. import Outcome, Rollouts, TransitionEvent

__all__ = ["RecordingSink"]


class RecordingSink:
    """Records every outcome and transition of the rollouts of a :class:`~stagedroll.Rollouts`.

    Attached from construction until :meth:`detach` (or the end of a ``with`` block)::

        with RecordingSink(rollouts) as sink:
            checkout(order)
        assert sink.units("new-checkout", enabled=True) == {"user-42"}

    ``outcomes`` lists each guarded call, ``track`` block and ``report`` as an
    :class:`Outcome`, in order; ``transitions`` each :class:`~stagedroll.TransitionEvent`
    made through this ``Rollouts``. Watched rollouts leave the decision fast path: a sink is
    for tests, not production.
    """

    def __init__(self, rollouts: Rollouts, names: Iterable[str] | None = None) -> None:
        self.outcomes: list[Outcome] = []
        self.transitions: list[TransitionEvent] = []
        self._lock = threading.Lock()
        self._rollouts = rollouts
        self._names = list(rollouts) if names is None else [rollouts[n].name for n in names]
        self._stops: list[Callable[[], None]] = [
            rollouts[name].on_outcome(self.add) for name in self._names
        ]
        rollouts.hooks.add(self._transition)

    def __repr__(self) -> str:
        return f"<RecordingSink {len(self.outcomes)} outcomes, {len(self.transitions)} transitions>"

    def __enter__(self) -> RecordingSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.detach()

    def detach(self) -> None:
        """Stop recording; what was recorded stays readable."""
        stops, self._stops = self._stops, []
        for stop in stops:
            stop()
        self._rollouts.hooks.remove(self._transition)

    def add(self, outcome: Outcome) -> None:
        """Record one outcome (the rollouts call this)."""
        with self._lock:
            self.outcomes.append(outcome)

    def _transition(self, event: TransitionEvent) -> None:
        with self._lock:
            self.transitions.append(event)

    def clear(self) -> None:
        """Forget what was recorded so far."""
        with self._lock:
            self.outcomes.clear()
            self.transitions.clear()

    def of(self, rollout: str, *, enabled: bool | None = None) -> list[Outcome]:
        """The outcomes of ``rollout``, of one path only when ``enabled`` is given."""
        with self._lock:
            return [
                o
                for o in self.outcomes
                if o.rollout == rollout and (enabled is None or o.enabled is enabled)
            ]

    def units(self, rollout: str, *, enabled: bool | None = None) -> set[str | None]:
        """The units whose calls ``rollout`` recorded (on the new path with ``enabled=True``)."""
        return {o.unit for o in self.of(rollout, enabled=enabled)}

    def errors(self, rollout: str, *, enabled: bool | None = None) -> list[Outcome]:
        """The failed calls of ``rollout`` (of one path when ``enabled`` is given)."""
        return [o for o in self.of(rollout, enabled=enabled) if o.error]
