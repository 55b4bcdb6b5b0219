"""Expand/contract migrations: six phases of moving data from an old store to a new one.

The rollout's stage names the phase, for every unit at once (a store's data cannot be half
migrated per user: the backfill needs every write going to both stores first):

============  =====================================  ==========================================
phase         writes                                 reads
============  =====================================  ==========================================
off           old                                    old
dual_write    old, then new (old authoritative)      old
shadow_read   old, then new (old authoritative)      old, compared with new
live          new, then old (new authoritative)      new, compared with old
rampdown      new, then old (new authoritative)      new
complete      new                                    new
============  =====================================  ==========================================

In ``shadow_read`` and ``live`` every read runs on both stores: the old store's outcome is
recorded on the control arm and the new store's on treatment (in ``shadow_read``, a read
that disagrees with the old one counts as the new store's error), so the health test
compares the two stores on the same calls, and freezes the migration, or rolls it back one
phase, when the new store errs, disagrees or is slow more often. Writes are counted
(``stats``, samples) but not tested: the second store is written only once the
authoritative one took the write, so the two outcomes are no fair pair.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any, Generic, NamedTuple, ParamSpec, TypeVar, cast

from ._comparison import NOT_RUN, Compared, Comparison
from ._decision import Reason
from ._guard import is_async
from ._outcomes import ArmCounts
from ._plan import View
from ._policy import MIGRATION_STAGES
from ._rollout import Rollout

__all__ = ["Migration", "Phase"]

RP = ParamSpec("RP")
RR = TypeVar("RR")
WP = ParamSpec("WP")
WR = TypeVar("WR")


class Phase(str, enum.Enum):
    """The six phases of an expand/contract migration, in order; the stage names."""

    OFF = "off"
    """Old store only."""
    DUAL_WRITE = "dual_write"
    """Writes to both stores, the old one authoritative; reads from the old one."""
    SHADOW_READ = "shadow_read"
    """As ``dual_write``, and each read of the old store is compared with the new one."""
    LIVE = "live"
    """The new store authoritative for writes and reads; reads compared with the old one."""
    RAMPDOWN = "rampdown"
    """Reads from the new store only; writes still reach the old one (the way back)."""
    COMPLETE = "complete"
    """New store only."""

    def __str__(self) -> str:
        return self.value


_BY_NAME = {phase.value: phase for phase in Phase}
_OLD_WRITES_FIRST = (Phase.DUAL_WRITE, Phase.SHADOW_READ)


class _Side(NamedTuple):
    """One side's run: whether it returned, its result (or exception), and its seconds."""

    ok: bool
    value: Any
    seconds: float


def _run(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Side:
    """Run one store's side; its exception is kept (raised later if it was authoritative).

    A ``KeyboardInterrupt`` is not a store's failure: it propagates at once.
    """
    start = perf_counter()
    try:
        return _Side(True, fn(*args, **kwargs), perf_counter() - start)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        return _Side(False, exc, perf_counter() - start)


async def _arun(fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> _Side:  # fmt: skip
    """:func:`_run` for async code; a cancellation propagates too."""
    start = perf_counter()
    try:
        return _Side(True, await fn(*args, **kwargs), perf_counter() - start)
    except (KeyboardInterrupt, asyncio.CancelledError, GeneratorExit):
        raise
    except BaseException as exc:
        return _Side(False, exc, perf_counter() - start)


def _side_of(outcome: _Side | BaseException) -> _Side:
    """A side's outcome from ``gather(..., return_exceptions=True)``."""
    return outcome if isinstance(outcome, _Side) else _Side(False, outcome, 0.0)


class _Call(NamedTuple):
    """A read from both stores: the phase, the arms, and the unit as text."""

    phase: Phase
    control: ArmCounts
    treatment: ArmCounts
    key: str | None


class Migration(Compared, Generic[RP, RR, WP, WR]):
    """An expand/contract migration over one rollout whose six stages are the phases.

    Made by :meth:`Rollouts.migration <stagedroll.Rollouts.migration>`. Call
    :meth:`read` and :meth:`write` with the unit first (the record's key, or its owner),
    then the arguments of the read or write functions.
    """

    def __init__(
        self,
        rollout: Rollout,
        *,
        old_read: Callable[RP, RR],
        new_read: Callable[RP, RR],
        old_write: Callable[WP, WR],
        new_write: Callable[WP, WR],
        comparison: Comparison,
        default: Phase | str,
    ) -> None:
        for label, fn in (("old_read", old_read), ("new_read", new_read),
                          ("old_write", old_write), ("new_write", new_write)):  # fmt: skip
            if not callable(fn):
                raise TypeError(f"{label} must be callable, not {type(fn).__name__}")
        self._async_read = is_async(old_read)
        self._async_write = is_async(old_write)
        if is_async(new_read) != self._async_read:
            raise TypeError("old_read and new_read must both be async or both be sync")
        if is_async(new_write) != self._async_write:
            raise TypeError("old_write and new_write must both be async or both be sync")
        self._router = rollout._serves("migration", "rollouts.migration(...)")  # six phases
        try:
            self._default = Phase(default)
        except ValueError:
            raise ValueError(
                f"default must be one of {list(MIGRATION_STAGES)}, not {default!r}"
            ) from None
        self.rollout = rollout
        self._old_read, self._new_read = old_read, new_read
        self._old_write, self._new_write = old_write, new_write
        self._comparison = comparison
        self._last = self._default  # the phase held when the stage names no phase
        self._seen: tuple[View, Phase] | None = None
        self._writes: set[asyncio.Future[_Side]] = set()  # second writes under way (async)

    def __repr__(self) -> str:
        return f"<Migration {self.rollout.name!r} phase={self.phase.value!r}>"

    # -- where it stands -------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        """The phase in force in this process (see :meth:`_resolve` for how it is read)."""
        return self._now()[1]

    def _now(self) -> tuple[View, Phase]:
        """The view in force and its phase (worked out once per view); never raises."""
        router = self._router
        router.tend()  # now and then: the policy file, the store's thread
        v = router.view
        seen = self._seen
        if seen is not None and seen[0] is v:
            return seen
        now = v, self._resolve(v)
        self._seen = now  # one assignment: a reader sees the old pair or the new one
        return now

    def _resolve(self, v: View) -> Phase:
        """The phase of view ``v``; never raises.

        The stage's name gives the phase (see :meth:`_staged`). The status may override it:
        ``complete`` is ``complete``; a kill, or an environment where the rollout is off,
        is ``off``, except where the phase would be ``complete``: the old store has missed
        the writes since, so the kill is refused (``migration.kill_refused``) and the new
        store keeps serving.
        """
        rollout, failures = self.rollout, self._router.runtime.failures
        try:
            phase = self._staged(v)
            constant = v.constant
            if constant is not None:
                if constant.enabled:
                    phase = Phase.COMPLETE
                elif constant.reason is Reason.KILLED and phase is Phase.COMPLETE:
                    failures.record("migration.kill_refused", rollout=rollout.name)
                else:
                    phase = Phase.OFF
        except Exception as exc:  # pragma: no cover - defensive: hold the last phase
            failures.record("migration.phase_failed", exc, rollout=rollout.name,
                            stage=v.stage_name, holding=self._last.value)  # fmt: skip
            return self._last
        self._last = phase
        return phase

    def _staged(self, v: View) -> Phase:
        """The phase that the stage and the environment give, the status aside; may raise.

        An environment fixed at 100 % is ``complete``, below it ``off``. Before the first
        stage: ``off`` after a rollback, ``default`` while the state is unknown (the store
        unreachable since the start). The policy's checks make every stage name a phase
        (``pattern = "migration"``, which a reload cannot change).
        """
        if v.mode == "off":
            return Phase.OFF
        if v.mode == "fixed":
            return Phase.COMPLETE if v.percent >= 100 else Phase.OFF
        if v.stage_name is None:
            return Phase.OFF if v.state.version else self._default
        return _BY_NAME[v.stage_name]

    def _call(self, v: View, phase: Phase, unit: object) -> _Call:
        """A read from both stores: its arms and its unit as text."""
        observed = self._router.observed
        return _Call(phase, observed(v.control), observed(v.treatment), self._key(v, unit))

    def _key(self, v: View, unit: object) -> str | None:
        """The unit as text (the samples name it); ``None`` for one that has no text."""
        return self._router.key_of(v, unit, None)

    # -- reads -----------------------------------------------------------------------------------

    def read(self, unit: object, /, *args: RP.args, **kwargs: RP.kwargs) -> RR:
        """Read through the phase's store(s); ``unit`` first, then the read's arguments.

        Returns what the phase's authoritative store returned, and raises what it raised
        (``await`` it when the reads are async). The other store's read, in ``shadow_read``
        and ``live``, is compared and recorded, never raised. There is no fallback from one
        store to the other: the authoritative store's answer is the only one that is sure
        to hold every acknowledged write.
        """
        if self._async_read:
            return cast("RR", self._aread(unit, args, kwargs))
        v, phase = self._now()
        if phase is Phase.OFF or phase is Phase.DUAL_WRITE:
            return self._old_read(*args, **kwargs)
        if phase is Phase.COMPLETE:
            return self._new_read(*args, **kwargs)
        if phase is Phase.RAMPDOWN:
            only = _run(self._new_read, args, kwargs)
            if only.ok:
                return cast("RR", only.value)
            self._comparison.failed(self._key(v, unit), only.value)
            raise only.value
        call = self._call(v, phase, unit)
        if phase is Phase.SHADOW_READ:  # both stores, authoritative first, whatever it gave
            old = _run(self._old_read, args, kwargs)
            new = _run(self._new_read, args, kwargs)
        else:
            new = _run(self._new_read, args, kwargs)
            old = _run(self._old_read, args, kwargs)
        return cast("RR", self._settle_read(call, old, new))

    async def _aread(self, unit: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        v, phase = self._now()
        old_read = cast("Callable[..., Awaitable[Any]]", self._old_read)
        new_read = cast("Callable[..., Awaitable[Any]]", self._new_read)
        if phase is Phase.OFF or phase is Phase.DUAL_WRITE:
            return await old_read(*args, **kwargs)
        if phase is Phase.COMPLETE:
            return await new_read(*args, **kwargs)
        if phase is Phase.RAMPDOWN:
            only = await _arun(new_read, args, kwargs)
            if only.ok:
                return only.value
            self._comparison.failed(self._key(v, unit), only.value)
            raise only.value
        call = self._call(v, phase, unit)  # shadow_read and live: both stores at once
        # A store may raise CancelledError itself (a driver's reset): gather returns it as
        # that side's failure; a cancellation of the caller still raises from gather.
        both = _arun(old_read, args, kwargs), _arun(new_read, args, kwargs)
        sides = await asyncio.gather(*both, return_exceptions=True)
        old, new = (_side_of(side) for side in sides)
        return self._settle_read(call, old, new)

    def _settle_read(self, call: _Call, old: _Side, new: _Side) -> Any:
        """Record both sides of a compared read, compare them, and answer the caller."""
        record, comparison = self._router.record, self._comparison
        both = not (old.ok or new.ok)  # both failed: no event, it tells nothing of either
        record(call.control, call.key, error=not old.ok, latency_s=old.seconds, event=not both)
        if new.ok and old.ok:
            mismatch = comparison.judge(call.key, old.value, new.value, new.seconds - old.seconds)
            # In shadow_read a mismatch is the new store's error: it is being verified. In
            # live the old store may have drifted (its write failures are not raised), so a
            # mismatch is counted and sampled, not charged to the new store.
            charged = mismatch and call.phase is Phase.SHADOW_READ
            record(call.treatment, call.key, error=charged, latency_s=new.seconds)
        else:
            record(call.treatment, call.key, error=not new.ok, latency_s=new.seconds,
                   event=not both)  # fmt: skip
        if not new.ok:
            comparison.failed(call.key, new.value, old=old.value if old.ok else NOT_RUN)
        if not old.ok:  # in live the caller does not see it: keep a sample
            comparison.old_failed(*((call.key, old.value) if call.phase is Phase.LIVE else ()))
        answer = new if call.phase is Phase.LIVE else old
        if answer.ok:
            return answer.value
        raise answer.value

    # -- writes ----------------------------------------------------------------------------------

    def write(self, unit: object, /, *args: WP.args, **kwargs: WP.kwargs) -> WR:
        """Write through the phase's store(s); ``unit`` first, then the write's arguments.

        Where both stores are written, the authoritative one goes first: its result is
        returned, and its exception reaches the caller (the other store is then not
        written). The other store's exception is recorded, never raised. ``await`` it when
        the writes are async; the second write finishes even if the caller is cancelled
        meanwhile.
        """
        if self._async_write:
            return cast("WR", self._awrite(unit, args, kwargs))
        v, phase = self._now()
        if phase is Phase.OFF:
            return self._old_write(*args, **kwargs)
        if phase is Phase.COMPLETE:
            return self._new_write(*args, **kwargs)
        key = self._key(v, unit)
        first, second = self._write_order(phase)
        done = _run(first, args, kwargs)
        if not done.ok:
            self._first_failed(phase, key, done.value)
            raise done.value
        self._settle_write(phase, key, _run(second, args, kwargs))
        return cast("WR", done.value)

    async def _awrite(self, unit: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        v, phase = self._now()
        if phase is Phase.OFF:
            return await cast("Callable[..., Awaitable[Any]]", self._old_write)(*args, **kwargs)
        if phase is Phase.COMPLETE:
            return await cast("Callable[..., Awaitable[Any]]", self._new_write)(*args, **kwargs)
        key = self._key(v, unit)
        first, second = self._write_order(phase)
        done = await _arun(first, args, kwargs)
        if not done.ok:
            self._first_failed(phase, key, done.value)
            raise done.value
        # The authoritative store has the write: the other must get it too, even if the
        # caller is cancelled while it is under way.
        task = asyncio.ensure_future(_arun(second, args, kwargs))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        try:
            other = await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            cancelling = getattr(current, "cancelling", None)  # Python 3.11+
            if task.done() and not (cancelling is not None and cancelling()):
                # The second store's write cancelled itself: its failure, not the caller's.
                self._settle_later(phase, key, task)
                return done.value
            task.add_done_callback(lambda t: self._settle_later(phase, key, t))
            raise
        self._settle_write(phase, key, other)
        return done.value

    def _write_order(self, phase: Phase) -> tuple[Callable[..., Any], Callable[..., Any]]:
        """The authoritative store's write, then the other's."""
        if phase in _OLD_WRITES_FIRST:
            return self._old_write, self._new_write
        return self._new_write, self._old_write

    def _first_failed(self, phase: Phase, key: str | None, exc: BaseException) -> None:
        """The authoritative write raised: the call is counted, not compared (one side ran)."""
        if phase in _OLD_WRITES_FIRST:
            self._comparison.old_failed()  # the caller sees it: no sample
        else:
            self._comparison.failed(key, exc)

    def _settle_write(self, phase: Phase, key: str | None, second: _Side) -> None:
        """Count the failure of the second store's write, never raised.

        Writes are not shown to the health test: the second store is written only when the
        authoritative one took the write, so their outcomes are not a fair pair (the
        authoritative store's failures would have no counterpart). The compared reads are.
        """
        if second.ok:
            return
        if phase in _OLD_WRITES_FIRST:
            self._comparison.failed(key, second.value)
        else:  # the old store misses this write: a way back would serve it stale
            self._comparison.old_failed(key, second.value)

    def _settle_later(self, phase: Phase, key: str | None, task: asyncio.Future[_Side]) -> None:
        """Record a second write that ended after its caller was cancelled; never raises."""
        try:
            if task.cancelled():  # the loop closed before it ended: it may not have landed
                self._settle_write(phase, key, _Side(False, asyncio.CancelledError(), 0.0))
            elif task.exception() is None:
                self._settle_write(phase, key, task.result())
        except Exception as exc:  # pragma: no cover - recording never raises
            self._router.runtime.failures.record("migration.failed", exc, rollout=self.rollout.name)
