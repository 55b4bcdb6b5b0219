"""The background refresh of a store shared by processes: one daemon thread per store.

stagedroll's core starts no thread. A store that talks to another process (SQLite's file,
Redis) needs one, so that no caller ever waits on that I/O: every ``refresh_interval`` it
reads the states of the rollouts this process serves, tells the store's listeners of any
change, and calls the ``on_refresh`` callbacks (the outcome flushes and automatic steps of
each :class:`~stagedroll.Rollouts`). The thread holds its store weakly and ends with it; it
is started again in a forked child, where threads do not survive.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable

from .._failures import Failures, log
from .._forksafe import register
from .._state import Action, RolloutState, Transition, newer, restorable
from ._codec import load_state
from ._listeners import Listeners
from ._protocol import StateListener

RESTORER = "stagedroll"
"""The actor of a state restored after the store lost it."""

__all__ = ["SharedStore"]

_MAX_BACKOFF_S = 30.0


class _Thread:
    """The daemon thread that runs ``owner._cycle()`` every ``interval`` seconds."""

    __slots__ = ("__weakref__", "_owner", "_thread", "_wake", "interval", "name", "pid")

    def __init__(self, owner: SharedStore, name: str, interval: float) -> None:
        self._owner = weakref.ref(owner)
        self.name = name
        self.interval = interval
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.pid = 0
        register(self)

    def _after_fork(self) -> None:
        """In a forked child: the parent's thread is gone; start ours if it ran."""
        self._wake = threading.Event()
        running, self._thread = self._thread is not None, None
        if running:
            self.start()

    def start(self) -> None:
        """Start the thread unless it runs in this process already."""
        if self._thread is not None and self.pid == os.getpid():
            return
        self.pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Run the next cycle now rather than at the end of the interval."""
        self._wake.set()

    def stop(self, wait_s: float) -> None:
        """End the thread; wait up to ``wait_s`` for a cycle under way to finish."""
        thread, self._thread = self._thread, None
        self._wake.set()
        if thread is not None and thread is not threading.current_thread() and thread.is_alive():
            thread.join(wait_s)

    def _run(self) -> None:
        me = threading.current_thread()
        delay = self.interval
        while True:
            self._wake.wait(delay)
            self._wake.clear()
            owner = self._owner()
            if owner is None or self._thread is not me:
                return  # the store is gone or closed, or this is a stale thread
            try:
                ok = owner._cycle()
            except Exception as exc:  # pragma: no cover - _cycle catches what it expects
                owner.failures.record("store.refresh_failed", exc, store=repr(owner))
                ok = False
            del owner
            # While the backend is down, try less often (up to 30 s), then at the interval.
            delay = self.interval if ok else min(max(delay * 2, self.interval), _MAX_BACKOFF_S)


class SharedStore:
    """The part common to stores shared by processes: refresh, listeners, failures.

    Subclasses read stored states as text with :meth:`_read_many`, and write with
    ``compare_and_set``; every rollout this object loads or commits is then refreshed in the
    background.
    """

    def __init__(self, *, refresh_interval: float, thread_name: str) -> None:
        if not refresh_interval > 0:
            raise ValueError(f"refresh_interval must be positive, not {refresh_interval!r}")
        self.refresh_interval = refresh_interval
        self.failures = Failures()
        """Failures of the backend in this process, by kind (``store.refresh_failed``, …)."""
        # The rollouts to refresh, and the newest state this process knows of each.
        self._names: dict[str, RolloutState | None] = {}
        self._names_lock = threading.Lock()
        self._listeners = Listeners("store.listener_failed", self.failures)
        self._refreshed = Listeners("store.callback_failed", self.failures)
        self._thread = _Thread(self, thread_name, refresh_interval)
        self._down = False
        self._closed = False
        register(self)

    def _after_fork(self) -> None:
        self._names_lock = threading.Lock()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called: nothing is refreshed or written any more."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")

    # -- what subclasses provide -------------------------------------------------------------

    def _read_many(self, names: list[str]) -> dict[str, str | bytes | None]:
        """The stored states of ``names`` as text (``None``: absent); may raise."""
        raise NotImplementedError

    def _put_if_lost(self, rollout: str, state: RolloutState, transition: Transition) -> bool:
        """Store ``state`` if the stored one shows it was lost (:func:`restorable`); may raise.

        Atomic, with ``transition`` appended to the history; says whether it was stored.
        """
        raise NotImplementedError

    # -- reading ------------------------------------------------------------------------------

    def load(self, rollout: str) -> RolloutState | None:
        """Return the rollout's state, or ``None``; the rollout is refreshed from now on.

        Raises ``ValueError`` for a stored state that cannot be read.
        """
        self._seen(rollout, None)
        text = self._read_many([rollout])[rollout]
        state = load_state(text) if text is not None else None
        self._seen(rollout, state)
        return state

    def _seen(self, rollout: str, state: RolloutState | None) -> None:
        """Refresh ``rollout`` from now on; ``state`` is what this process knows of it."""
        with self._names_lock:
            known = self._names.get(rollout)
            if known is None or (state is not None and newer(state, known)):
                self._names[rollout] = state
        if not self._closed:
            self._thread.start()

    def _changed(self, rollout: str, state: RolloutState) -> None:
        """Tell the listeners of a state that this process committed."""
        self._seen(rollout, state)
        self._listeners.call(rollout, state)

    # -- the refresh ------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Read the states now and tell the listeners of changes; return whether it worked.

        The background thread calls this every ``refresh_interval``; failures are logged
        and counted (``store.refresh_failed``), never raised. A state that cannot be read is
        skipped (``store.decode_failed``): the others still refresh. When the store has
        lost a state (it is missing, or older than one this process read from it: the
        backend lost data), this process writes back what it knew (``store.state_lost``).
        """
        if self._closed:
            return False
        with self._names_lock:
            names = dict(self._names)
        if not names:
            return True
        try:
            texts = self._read_many(list(names))
        except Exception as exc:
            self.failures.record("store.refresh_failed", exc, store=repr(self))
            self._down = True
            return False
        if self._down:
            self._down = False
            log("info", "store.recovered", store=repr(self))
        for name, text in texts.items():
            known = names[name]  # as before the read: the store cannot be behind it
            try:
                state = load_state(text) if text is not None else None
            except ValueError as exc:
                self.failures.record("store.decode_failed", exc, rollout=name)
                continue
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
                                 stage=known.stage, status=str(known.status))  # fmt: skip

    def _cycle(self) -> bool:
        ok = self.refresh()
        self._refreshed.call()
        return ok

    # -- the protocol's listening side --------------------------------------------------------

    def watch(self, listener: StateListener) -> None:
        """Call ``listener`` after each change seen: committed here, or read by a refresh."""
        self._listeners.add(listener)

    def on_refresh(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` after each background refresh (bound methods weakly held)."""
        self._refreshed.add(callback)
        if not self._closed:
            self._thread.start()

    def wake(self) -> None:
        """Run the next background refresh now."""
        self._thread.wake()

    def _stop(self) -> None:
        """Stop the refresh: wait (a few seconds at most) for a cycle under way to end."""
        self._closed = True
        self._thread.stop(wait_s=5.0)
        self._listeners.clear()
        self._refreshed.clear()
