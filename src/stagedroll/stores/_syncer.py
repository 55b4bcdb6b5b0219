"""The background refresh of a store shared by processes: one daemon thread per store.

stagedroll's core starts no thread. A store that talks to another process (SQLite's file,
Redis, PostgreSQL) needs one, so that no caller ever waits on that I/O: every
``refresh_interval`` it calls the ``before_refresh`` callbacks (the evidence exchange of
each :class:`~stagedroll.Rollouts`, which may note the store's marker of change on the
way), reads the states of the rollouts this process serves, tells the store's listeners of
any change, and calls the ``on_refresh`` callbacks (the automatic steps). A cycle woken by
a change pushed by the backend reads first, then exchanges. The thread holds its store
weakly and ends with it; it is started again in a forked child, where threads do not
survive.

Whatever the callbacks and listeners raise is contained (see ``_listeners``), so the thread
does not end because of user code. Should it end anyway (an exception raised into it from
outside, a thread that could not be started), the next call that reaches the store
(``load``, ``compare_and_set``, ``wake``, ``on_refresh``, so also ``status()`` and
``tick()``) notices, starts it again, and logs and counts ``store.thread_died``.
"""

from __future__ import annotations

import math
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping

from .._failures import Failures, contained, log
from .._forksafe import register
from .._state import AUTOMATIC, Action, RolloutState, Transition, newer, restorable
from ._codec import check_state, load_state, load_transition
from ._listeners import Listeners
from ._protocol import StateListener

RESTORER = AUTOMATIC
"""The actor of a state restored after the store lost it."""

__all__ = ["SharedStore"]

_MAX_BACKOFF_S = 30.0
EXPIRE_EVERY_S = 3600.0
"""How often the refresh thread deletes what outlived the store's ``ttl`` (:meth:`_expire`)."""
FULL_READ_EVERY = 60
"""Every how many ``refresh_interval`` a refresh reads every state, even when the store's
marker says that nothing changed (a state written behind the store's back, or lost)."""
EMPTY = "the store held no stagedroll data: it is new, or it lost all of it"
"""What ``store.initialized`` says: the store's marker was missing when a state was written."""
_GONE = "registered in this store, but no state and no readable history is left"


def _record(failures: Failures, event: str, exc: BaseException | None, **fields: object) -> None:
    """Count and log a failure from the store's thread, where nothing may escape."""
    try:
        failures.record(event, exc, **fields)
    except BaseException as error:  # the last net: nowhere left to report
        if not contained(error):
            raise


def _same_version(field: object, version: int) -> bool:
    """Whether the version a store compares (an int, or its text in Redis) is ``version``."""
    if isinstance(field, bytes | str):
        text = field.decode("ascii", "replace") if isinstance(field, bytes) else field
        return text.isascii() and text.isdigit() and len(text) <= 20 and int(text) == version
    return type(field) is int and field == version


class _Thread:
    """The daemon thread that runs ``work(owner)`` every ``interval`` seconds.

    ``work`` says whether it worked; after a failure the thread waits longer (doubling from
    ``retry`` up to 30 s), then runs at the interval again. The refresh runs
    ``owner._cycle`` every ``refresh_interval``; the listener runs ``owner._listening`` back
    to back (``interval`` 0: it waits on the backend itself).
    """

    __slots__ = ("__weakref__", "_lock", "_restart", "_store", "_thread", "_wake", "_work",
                 "interval", "name", "pid", "retry")  # fmt: skip

    def __init__(
        self,
        owner: SharedStore,
        name: str,
        interval: float,
        work: Callable[[SharedStore], bool],
        *,
        retry: float | None = None,
    ) -> None:
        self._store = weakref.ref(owner)
        self._work = work
        self.name = name
        self.interval = interval
        self.retry = interval if retry is None else retry
        self._wake = threading.Event()
        self._lock = threading.Lock()  # one start at a time: a thread starting is not alive yet
        self._thread: threading.Thread | None = None
        self._restart = False  # in a forked child: start again once the store is renewed
        self.pid = 0
        register(self)

    def _after_fork(self) -> None:
        """In a forked child: the parent's thread is gone; ours starts again if it ran.

        Not here: once the store has renewed its connections (:meth:`_after_fork_renewed`).
        """
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._restart, self._thread = self._thread is not None, None

    def _after_fork_renewed(self) -> None:
        if self._restart:
            self._restart = False
            self.start()

    def start(self, *, only_if_died: bool = False) -> None:
        """Start the thread unless it runs in this process already; never raises.

        A thread that was started in this process and is no longer alive died: it is
        started again, and ``store.thread_died`` is logged and counted. ``only_if_died``:
        start it only in that case (not for the first time).
        """
        died = False
        error: Exception | None = None
        with self._lock:
            thread = self._thread
            if thread is not None and self.pid == os.getpid():
                if thread.is_alive():
                    return
                died = True
            elif only_if_died:
                return
            self.pid = os.getpid()
            if died:
                self._wake = threading.Event()  # the dead thread may have left it half-used
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            try:
                self._thread.start()
            except Exception as exc:  # RuntimeError: can't start new thread; tried again later
                error = exc
        owner = self._store()
        if (died or error is not None) and owner is not None:
            _record(owner.failures, "store.thread_died", error, store=repr(owner),
                    running=error is None)  # fmt: skip

    def wake(self) -> None:
        """Run the next cycle now rather than at the end of the interval."""
        self._wake.set()

    def stop(self, wait_s: float) -> None:
        """End the thread; wait up to ``wait_s`` for a cycle under way to finish."""
        with self._lock:
            thread, self._thread = self._thread, None
        self._wake.set()
        if thread is not None and thread is not threading.current_thread() and thread.is_alive():
            thread.join(wait_s)

    def _run(self) -> None:
        me = threading.current_thread()
        delay = self.interval
        while True:
            wake = self._wake
            wake.wait(delay)
            wake.clear()
            owner = self._store()
            if owner is None or self._thread is not me or owner.closed:
                return  # the store is gone or closed, or this is a stale thread
            try:
                ok = self._work(owner)
            except BaseException as exc:  # _cycle contains user code; this is the last net
                _record(owner.failures, "store.refresh_failed", exc, store=repr(owner))
                ok = False
            del owner
            # While the backend is down, try less often (up to 30 s), then at the interval.
            delay = self.interval if ok else min(max(delay * 2, self.retry), _MAX_BACKOFF_S)


class SharedStore:
    """The part common to stores shared by processes: refresh, listeners, failures.

    Subclasses read stored states as text with :meth:`_read_many`, and write with
    ``compare_and_set``; every rollout this object loads or commits is then refreshed in the
    background.
    """

    def __init__(self, *, refresh_interval: float, thread_name: str, push: bool = False) -> None:
        if not refresh_interval > 0:
            raise ValueError(f"refresh_interval must be positive, not {refresh_interval!r}")
        if not isinstance(push, bool):
            raise TypeError(f"push must be True or False, not {push!r}")
        self.refresh_interval = refresh_interval
        self.push = push
        """Whether a listener thread waits for the changes the backend pushes (see
        :meth:`_listen`); the refresh every ``refresh_interval`` stays as the backstop."""
        self.failures = Failures()
        """Failures of the backend in this process, by kind (``store.refresh_failed``, …)."""
        # The rollouts to refresh, and the newest state this process knows of each.
        self._names: dict[str, RolloutState | None] = {}
        self._names_lock = threading.Lock()
        self._listeners = Listeners("store.listener_failed", self.failures)
        self._refreshed = Listeners("store.callback_failed", self.failures)
        self._before = Listeners("store.callback_failed", self.failures)
        # A marker an exchange read, when, and on which thread (see _note_generation).
        self._noted: tuple[object, float, int] | None = None
        self._thread = _Thread(self, thread_name, refresh_interval, _cycle)
        self._listener = _Thread(self, f"{thread_name}-listen", 0.0, _listening,
                                 retry=refresh_interval)  # fmt: skip
        self._generation_seen: object = None  # the marker at the last full read
        self._full_read_at = 0.0  # when the next full read is due whatever the marker says
        self._cycle_at = math.inf  # when the cycle under way began (a noted marker is newer)
        self._woken = False  # the next cycle was woken by a change: it reads first
        self._cycling = 0  # the thread of the cycle under way
        self._expire_at = 0.0  # when the refresh thread next deletes old rows (_expire)
        self._unreadable: dict[str, str] = {}
        self._down = False
        self._closed = False
        register(self)

    def _after_fork(self) -> None:
        self._names_lock = threading.Lock()
        self._generation_seen = None  # the child reads every state at its first refresh

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called: nothing is refreshed or written any more."""
        return self._closed

    @property
    def unreadable(self) -> dict[str, str]:
        """The rollouts whose stored state could not be read when last read, with why.

        A corrupt state (see :meth:`load`) is never served; a rollout leaves this mapping
        when its state reads again (repaired, or restored).
        """
        return dict(self._unreadable)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")

    # -- what subclasses provide -------------------------------------------------------------

    def _read_many(self, names: list[str]) -> Mapping[str, object]:
        """The stored states of ``names`` (``None``: absent); may raise.

        Each as its text, or as ``(text, version)`` where the store keeps the version that
        its compare-and-set compares apart from the text: the two must agree, or the state is
        corrupt (a version written behind the store's back would make every transition
        fail). A state that cannot be read while the others can (a Redis key of another
        type) is given as the exception that reading it raised.
        """
        raise NotImplementedError

    def _put_if_lost(self, rollout: str, state: RolloutState, transition: Transition) -> bool:
        """Store ``state`` if the stored one shows it was lost (:func:`restorable`); may raise.

        Atomic, with ``transition`` appended to the history; says whether it was stored.
        """
        raise NotImplementedError

    def _traces(self, rollout: str) -> tuple[str | None, object]:
        """What the store still holds of a rollout whose state is missing; may raise.

        The history id under which the store registered it (``None``: never registered),
        and the newest history entry as text (``None``: no history).
        """
        raise NotImplementedError

    def _generation(self) -> object:
        """A marker of the whole store that changes whenever a state changes; may raise.

        One cheap read (a counter that each compare-and-set bumps): when it is what it was at
        the last full read, the refresh reads no state. ``None``: the store keeps no marker,
        and every refresh reads every state. A marker bumped apart from the write it marks
        can be lost (a writer that dies between the two), and a state written behind the
        store's back bumps nothing: every ``FULL_READ_EVERY`` refreshes (a minute by default),
        the refresh reads every state anyway, and an unreadable state at every refresh.
        """
        return None

    def _listen(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a change the backend pushes; may raise.

        Runs on the listener thread (with ``push``), back to back. Returns whether a change
        may have come: a notification, or a connection made again after a failure, since
        notifications sent while disconnected are lost; the refresh then runs at once,
        reading every state.
        Raises when the backend cannot be reached: the listener tries again later (from
        ``refresh_interval``, doubling up to 30 s), and polling goes on meanwhile.
        """
        raise NotImplementedError

    def _stop_listening(self) -> None:
        """Close the listening connection (the store is closing); never raises."""

    def _loaded(self, rollout: str, state: RolloutState | None) -> None:
        """Called when :meth:`load` read a state, restored one, or found none.

        Redis registers the rollout, and drops what earlier versions kept, once per process.
        """

    # -- reading ------------------------------------------------------------------------------

    def load(self, rollout: str) -> RolloutState | None:
        """Return the rollout's state, or ``None``; the rollout is refreshed from now on.

        Raises ``ValueError`` for a stored state that cannot be read or is out of range (a
        corrupt state: never served, never overwritten by a start). A rollout whose state
        is missing while the store shows it existed (its history, or its registration) was
        lost: it is restored from its newest history entry when there is one, and
        ``store.state_lost`` is logged and counted.
        """
        self._seen(rollout, None)
        raw = self._read_many([rollout]).get(rollout)
        try:
            state = self._recover(rollout) if raw is None else self._decode(rollout, raw)
            self._loaded(rollout, state)
        except ValueError as exc:
            self._unreadable[rollout] = str(exc)
            raise
        self._unreadable.pop(rollout, None)
        self._seen(rollout, state)
        return state

    @staticmethod
    def _decode(rollout: str, raw: object) -> RolloutState:
        """The state read for ``rollout``; ``ValueError`` naming it when it is corrupt."""
        if isinstance(raw, BaseException):
            raise ValueError(f"the stored state of {rollout!r} cannot be read: {raw}")
        text, compared = raw if isinstance(raw, tuple) else (raw, None)
        try:
            state = load_state(text)
        except ValueError as exc:
            raise ValueError(f"corrupt stored state of {rollout!r}: {exc}") from None
        if isinstance(raw, tuple) and not _same_version(compared, state.version):
            shown = repr(compared)[:40] if compared is not None else "missing"
            raise ValueError(
                f"corrupt stored state of {rollout!r}: its version field ({shown}) is not "
                f"the state's version {state.version}"
            )
        return state

    def _entries(self, rollout: str, texts: Iterable[object]) -> list[Transition]:
        """The history entries that can be read; the others are skipped, counted, logged."""
        entries = []
        for text in texts:
            entry = self._entry(rollout, text)
            if entry is not None:
                entries.append(entry)
        return entries

    def _entry(self, rollout: str, text: object) -> Transition | None:
        try:
            return load_transition(text)
        except ValueError as exc:
            self.failures.record("store.decode_failed", rollout=rollout, what="history",
                                 error=str(exc))  # fmt: skip
            return None

    def _recover(self, rollout: str) -> RolloutState | None:
        """The state of a rollout the store has no state for, restored if it was lost.

        Nothing left of it: ``None`` (a new rollout, or one lost with every trace). Its
        registration without a history: counted as lost, ``None`` (it starts again at its
        first stage). A history: the state of its newest entry, written back at the next
        version in a new epoch of evidence, unless another process wrote first; a newest
        entry that cannot be read: ``ValueError`` (the rollout serves the old path).
        """
        registered, newest = self._traces(rollout)
        if registered is None and newest is None:
            return None
        entry = None
        if newest is not None:
            try:
                entry = load_transition(newest)
            except ValueError as exc:  # the newest entry may be a kill: never guess past it
                raise ValueError(
                    f"the state of {rollout!r} is lost and its newest history entry cannot be "
                    f"read ({exc}); serving the old path until it is repaired"
                ) from None
        restored = None if entry is None else _from_history(entry, registered)
        raw = self._read_many([rollout]).get(rollout)  # another process restored meanwhile?
        if raw is not None:  # (it writes its state and its history entry at once)
            return self._decode(rollout, raw)
        if restored is None:
            self.failures.record("store.state_lost", rollout=rollout, restored=False, why=_GONE)
            return None
        start = Transition(rollout, Action.START, restored.stage, restored.stage, None,
                           restored.status, restored.version, time.time(), restored.reason,
                           RESTORER)  # fmt: skip
        if self._put_if_lost(rollout, restored, start):
            self.failures.record("store.state_lost", rollout=rollout, restored=True,
                                 version=restored.version, stage=restored.stage,
                                 status=str(restored.status), source="history")  # fmt: skip
        raw = self._read_many([rollout]).get(rollout)
        return self._decode(rollout, raw) if raw is not None else None

    def _seen(self, rollout: str, state: RolloutState | None) -> None:
        """Refresh ``rollout`` from now on; ``state`` is what this process knows of it."""
        with self._names_lock:
            known = self._names.get(rollout)
            if known is None or (state is not None and newer(state, known)):
                self._names[rollout] = state
        if not self._closed:
            self._thread.start()
            if self.push:
                self._listener.start()

    def _changed(self, rollout: str, state: RolloutState) -> None:
        """Tell the listeners of a state that this process committed."""
        self._seen(rollout, state)
        self._listeners.call(rollout, state)

    # -- the refresh ------------------------------------------------------------------------

    def _note_generation(self, generation: object) -> None:
        """Keep the store's marker (see :meth:`_generation`) that a batched exchange read.

        The refresh that follows in the same cycle of the refresh thread then reads none of
        its own. A marker noted by another thread (a caller's ``status()``) is never taken:
        a change between its exchange and a refresh would go unseen.
        """
        self._noted = (generation, time.monotonic(), threading.get_ident())

    def refresh(self) -> bool:
        """Read the states now and tell the listeners of changes; return whether it worked.

        The background thread calls this every ``refresh_interval``; failures are logged
        and counted (``store.refresh_failed``), never raised. A store that keeps a marker of
        change (:meth:`_generation`) reads it first, and the states only when it moved. A
        state that cannot be read, or is out of range, is skipped (``store.decode_failed``):
        the others still refresh.
        When the store has lost a state (it is missing, or older than one this process read
        from it: the backend lost data), this process writes back what it knew
        (``store.state_lost``).
        """
        if self._closed:
            return False
        with self._names_lock:
            names = dict(self._names)
        if not names:
            return True
        noted, self._noted = self._noted, None
        try:
            # Read before the states (a change after it is seen at the next refresh), or
            # taken from the exchange that started this cycle, which read it just before.
            me = threading.get_ident()
            fresh = (
                noted is not None and noted[2] == me == self._cycling and noted[1] >= self._cycle_at
            )
            generation = noted[0] if noted is not None and fresh else self._generation()
            unchanged = (
                generation is not None
                and generation == self._generation_seen
                and time.monotonic() < self._full_read_at
            )
            if unchanged:  # only the unreadable states, which an operator may be repairing
                names = {name: names[name] for name in self._unreadable if name in names}
            texts = self._read_many(list(names)) if names else {}
        except Exception as exc:
            self.failures.record("store.refresh_failed", exc, store=repr(self))
            self._down = True
            return False
        if self._down:
            self._down = False
            log("info", "store.recovered", store=repr(self))
        if not unchanged:
            self._generation_seen = generation
            self._full_read_at = time.monotonic() + FULL_READ_EVERY * self.refresh_interval
        for name, known in names.items():  # known: as before the read, the store is not behind
            try:
                raw = texts.get(name)
                state = self._decode(name, raw) if raw is not None else None
            except Exception as exc:  # ValueError: one corrupt state; the others go on
                self._unreadable[name] = str(exc)
                self.failures.record("store.decode_failed", rollout=name, error=str(exc))
                continue
            self._unreadable.pop(name, None)
            if known is not None and restorable(known, state):
                self._restore(name, known, state)
                continue
            if state is None:
                continue
            with self._names_lock:
                latest = self._names.get(name)
                if latest is not None and (state == latest or not newer(state, latest)):
                    continue  # no change, or this process committed a newer state meanwhile
                self._names[name] = state
            self._listeners.call(name, state)
        return True

    def _restore(self, name: str, known: RolloutState, stored: RolloutState | None) -> None:
        """Write back ``known``: the store lost it (see :func:`restorable`).

        The state goes back as it was, version and history included, if the store still
        shows the loss when the write lands (atomically); so when several processes restore,
        the newest state any of them knew wins, and a kill or a freeze survives the loss. A
        bare start that a process made in the empty store gives way to it; a history that
        went further (an operator acted after the loss) is followed instead.
        """
        reason = "restored: the store had lost this state"
        entry = Transition(name, Action.START, known.stage, known.stage, None, known.status,
                           known.version, time.time(), reason, RESTORER)  # fmt: skip
        try:
            restored = self._put_if_lost(name, known, entry)
        except Exception as exc:
            self.failures.record("store.restore_failed", exc, rollout=name)
            return
        if restored:
            self.failures.record("store.state_lost", rollout=name, version=known.version,
                                 stored=stored.version if stored is not None else None,
                                 stage=known.stage, status=str(known.status),
                                 source="this process")  # fmt: skip

    def _cycle(self) -> bool:
        """One cycle of the refresh thread: the exchange, the read, the steps.

        A cycle woken by a change (pushed, or :meth:`wake`) reads first: a kill must not
        wait for the exchange of the evidence, which then follows the read.
        """
        self._cycle_at, self._cycling = time.monotonic(), threading.get_ident()
        woken, self._woken = self._woken, False
        try:
            if not woken:
                self._before.call()
            ok = self.refresh()
        finally:
            self._cycling = 0
        if woken:
            self._before.call()
        self._refreshed.call()
        if ok and not self._closed and time.monotonic() >= self._expire_at:
            self._expire_at = time.monotonic() + EXPIRE_EVERY_S
            try:
                self._expire()
            except Exception as exc:
                self.failures.record("store.expire_failed", exc, store=repr(self))
        return ok

    def _expire(self) -> None:
        """Delete what was not written for the store's ``ttl``; may raise.

        Called by the refresh thread once an hour (at its first refresh, then every
        ``EXPIRE_EVERY_S``). SQLite and PostgreSQL delete their old rows; Redis expires
        its keys itself.
        """

    def _listening(self) -> bool:
        """The listener thread's work: wake the refresh when a change may have come."""
        if self._closed:
            return True
        try:
            pushed = self._listen(self.refresh_interval)
        except Exception as exc:
            if self.closed:  # closing ended the wait
                return True
            self.failures.record("store.listen_failed", exc, store=repr(self))
            return False
        if pushed and not self._closed:
            self._full_read_at = 0.0  # a notification, or one lost: read every state
            self._woken = True
            self._thread.wake()
        return True

    # -- the protocol's listening side --------------------------------------------------------

    def watch(self, listener: StateListener) -> None:
        """Call ``listener`` after each change seen: committed here, or read by a refresh."""
        self._listeners.add(listener)

    def before_refresh(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` at the start of each background refresh, before it reads.

        Bound methods are weakly held. Whatever it raises is contained. A batched exchange
        made there (:mod:`~._batch`) tells the refresh the store's marker of change.
        """
        self._before.add(callback)
        if not self._closed:
            self._thread.start()

    def on_refresh(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` after each background refresh (bound methods weakly held)."""
        self._refreshed.add(callback)
        if not self._closed:
            self._thread.start()

    @property
    def down(self) -> bool:
        """Whether the last refresh failed (the backend is down; the refresh backs off)."""
        return self._down

    def supervise(self) -> None:
        """Start the refresh thread again if it died (``store.thread_died``); never raises.

        Cheap (a lock and a look): callers' calls use it now and then, so that a process
        whose calls never reach the store still gets its refresh back.
        """
        if not self._closed:
            self._thread.start(only_if_died=True)
            if self.push:
                self._listener.start(only_if_died=True)

    def wake(self) -> None:
        """Run the next background refresh now (starting the thread again if it died)."""
        if not self._closed:
            self._thread.start(only_if_died=True)
        self._woken = True
        self._thread.wake()

    def _stop(self) -> None:
        """Stop the refresh: wait (a few seconds at most) for a cycle under way to end."""
        self._closed = True
        self._thread.stop(wait_s=5.0)
        self._stop_listening()  # ends a wait under way on the backend
        self._listener.stop(wait_s=5.0)
        self._listeners.clear()
        self._before.clear()
        self._refreshed.clear()


def _cycle(store: SharedStore) -> bool:
    return store._cycle()


def _listening(store: SharedStore) -> bool:
    return store._listening()


def _from_history(entry: Transition, registered: str | None) -> RolloutState | None:
    """The state to restore from a lost rollout's newest history entry (``None``: unusable).

    It has the entry's stage and status at the next version, which begins a new epoch of
    evidence (the epoch in force then is not in the entry; a new one never counts an event
    twice), under the registered history id when the store kept it.
    """
    version = entry.version + 1
    state = RolloutState(
        stage=entry.to_stage,
        status=entry.to_status,
        since=time.time(),
        version=version,
        reason=f"restored from the history (version {entry.version}): the store had lost "
        "this state",
        actor=RESTORER,
        epoch=version,
        history=registered or uuid.uuid4().hex,
    )
    try:
        check_state(state)
    except ValueError:
        return None
    return state
