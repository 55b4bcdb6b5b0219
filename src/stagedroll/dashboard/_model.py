"""What the dashboard shows, read from the store on one timer, kept as ready JSON documents.

:class:`Board` reads every rollout once per refresh (the policy's through
:meth:`Rollouts.status <stagedroll.Rollouts.status>`, which pools the fleet's evidence and
reads its recent errors; the others through :class:`~stagedroll.Steering`), samples each
gate's evidence into a bounded ring, and keeps the documents the HTTP handlers serve. A
request reads what the last refresh made: ten open pages do not multiply the store's reads.
Everything is bounded: rollouts, history entries, samples, errors, and the length of text.
A refresh that fails (a bug, a store gone wrong in a way no store error covers) is logged,
counted and shown in the documents, which keep what the last good refresh read; a request
made long after the last good refresh is told the documents are stale.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import structlog

from .. import RecentError, Rollouts, RolloutState, RolloutStatus, Status, Steering, Transition
from ..exceptions import CorruptStateError, StoreError

__all__ = [
    "MAX_HISTORY",
    "MAX_KEY",
    "MAX_ROLLOUTS",
    "MAX_SAMPLES",
    "MAX_TEXT",
    "SCHEMA_VERSION",
    "UNIT_CAP",
    "Board",
]

SCHEMA_VERSION = 1
"""The version of every JSON document of the dashboard's API (``"schema_version"``)."""
MAX_ROLLOUTS = 200
"""Rollouts shown at most (the policy's first, in its order; then the store's, sorted)."""
MAX_HISTORY = 50
"""History entries read and shown per rollout (the newest)."""
MAX_SAMPLES = 600
"""Evidence samples kept per rollout (the oldest are dropped)."""
MAX_TEXT = 1000
"""Characters shown of any text the dashboard did not write (names, reasons, messages)."""
MAX_KEY = 2048
"""The longest percent-encoded name a rollout is looked up by (``/api/rollouts/NAME``); a
longer name (or one that is not valid Unicode) is looked up by a digest of it: its ``key``."""
LOG_EVERY_S = 60.0
"""A failed refresh is logged at most once per this long per kind of exception."""
UNIT_CAP = 50_000
"""Distinct units counted per arm and stage visit at most (docs/auto-freeze.md): past it, the
ratio of the two counts is no longer the exposure, and none is shown."""
_SAMPLE_EVERY_S = 30.0  # an unchanged evidence is sampled again after this long
_monotonic = time.monotonic  # how old the documents are (not the board's clock: a simulation's)
_log = structlog.get_logger("stagedroll")
_STATE_WORDS = {
    Status.RUNNING: "running",
    Status.FROZEN: "frozen",
    Status.ROLLED_BACK: "rolled back",
    Status.KILLED: "killed",
    Status.COMPLETE: "complete",
}


def _text(value: object) -> str:
    """``value`` as text, cut to :data:`MAX_TEXT` characters."""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "\u2026"


def _key(name: str) -> str:
    """What ``name`` is looked up by: itself, or a digest of it when too long to be a path."""
    try:
        if len(quote(name, safe="")) <= MAX_KEY:
            return name
    except UnicodeEncodeError:  # a lone surrogate: no URL can carry it
        pass
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"~{digest}"


def _number(value: object) -> float | int | None:
    """A finite number for JSON, else ``None`` (``inf``, ``NaN``, and what is not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int):
        return value if abs(value) < 2**53 else float(value)
    return value if math.isfinite(value) else None


def _who(actor: str, status: Status | None) -> str:
    if actor != "stagedroll":
        return _text(actor) or "an unknown operator"
    return "the health gate" if status in (Status.FROZEN, Status.ROLLED_BACK) else "stagedroll"


def state_words(status: Status, actor: str) -> str:
    """The state in words: ``running``, ``frozen by alice``, ``rolled back by the health gate``."""
    words = _STATE_WORDS.get(status, str(status))
    if status in (Status.RUNNING, Status.COMPLETE):
        return words
    return f"{words} by {_who(actor, status)}"


def dumps(document: Mapping[str, Any]) -> bytes:
    """``document`` as JSON bytes: ASCII only, ``<``, ``>`` and ``&`` escaped, no ``NaN``."""
    text = json.dumps(document, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return text.encode("ascii")


def _error(error: RecentError) -> dict[str, Any]:
    return {
        "arm": _text(error.arm),
        "type": _text(error.type),
        "message": _text(error.message),
        "count": _number(error.count),
        "first_seen": _number(error.first_seen),
        "last_seen": _number(error.last_seen),
    }


def _evidence(evidence: Mapping[str, object]) -> dict[str, Any]:
    return {_text(k)[:64]: _number(v) for k, v in list(evidence.items())[:32]}


def _transition(entry: Transition, ladder: tuple[tuple[str, float], ...]) -> dict[str, Any]:
    def stage(index: int) -> str | None:
        return _text(ladder[index][0]) if 0 <= index < len(ladder) else None

    gate = entry.actor == "stagedroll" and str(entry.action) in ("freeze", "rollback")
    return {
        "action": _text(entry.action),
        "from_stage": entry.from_stage,
        "to_stage": entry.to_stage,
        "from_stage_name": stage(entry.from_stage),
        "to_stage_name": stage(entry.to_stage),
        "to_status": _text(entry.to_status),
        "version": entry.version,
        "at": _number(entry.at),
        "reason": _text(entry.reason),
        "actor": _text(entry.actor),
        "by": "the health gate" if gate else _who(entry.actor, None),
        "evidence": _evidence(entry.evidence),
    }


@dataclass
class _Seen:
    """What the board keeps of one rollout between refreshes."""

    samples: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))
    history: list[dict[str, Any]] = field(default_factory=list)
    history_version: int | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)


def _sample(seen: _Seen, at: float, evidence: Mapping[str, Any], epoch: object) -> None:
    """Add a point to the ring when the evidence changed, or after a while unchanged."""
    point = {
        "at": at,
        "e_errors": evidence.get("e_errors"),
        "e_latency": evidence.get("e_latency"),
        "units": (evidence.get("units_treatment") or 0) + (evidence.get("units_control") or 0),
        "epoch": epoch,
    }
    if seen.samples:
        last = seen.samples[-1]
        same = all(last[k] == point[k] for k in ("e_errors", "e_latency", "units", "epoch"))
        if same and at - last["at"] < _SAMPLE_EVERY_S:
            return
    seen.samples.append(point)


def _checks(
    st: RolloutStatus | None, *, store_down: str | None, broken: str | None, alone: bool
) -> list[dict[str, str]]:
    """The health checks of one rollout, each ``{"check", "words"}``."""
    found: list[dict[str, str]] = []
    if store_down is not None:
        found.append({"check": "store_unreachable", "words": f"store unreachable: {store_down}"})
    if broken is not None:
        found.append({"check": "policy_broken", "words": f"policy broken for it: {broken}"})
    if alone:
        found.append(
            {
                "check": "store_alone",
                "words": "steered from the store alone: no live evidence here",
            }
        )
    if st is None:
        return found
    h = st.health
    live = st.status in (Status.RUNNING, Status.FROZEN) and st.mode == "stages" and st.stage >= 0
    if not h.enabled:
        found.append({"check": "no_gate", "words": "no health gate: nothing freezes it by itself"})
    elif live and h.units_treatment + h.units_control == 0:
        found.append({"check": "no_outcomes", "words": "no outcomes yet"})
    elif live and 0 < h.share < 1 and (h.units_treatment == 0) != (h.units_control == 0):
        arm = "treatment (new path)" if h.units_treatment == 0 else "control (old path)"
        found.append({"check": "arm_silent", "words": f"one arm silent: {arm} has no units"})
    if h.enabled and not h.sample_ratio_ok:
        found.append(
            {"check": "sample_ratio", "words": "sample ratio mismatch: automatic advances stop"}
        )
    if h.shares_elsewhere:
        shares = ", ".join(f"{s:.4g}" for s in h.shares_elsewhere[:8])
        found.append(
            {"check": "shares_disagree", "words": f"processes count at other shares: {shares}"}
        )
    return found


def _arm(units: int, errors: int, slow: int) -> dict[str, Any]:
    return {
        "units": units,
        "error_events": errors,
        "error_rate": errors / units if units else None,
        "slow_events": slow,
    }


def _live(st: RolloutStatus, now: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The summary and the detail fields of a rollout of the policy."""
    h = st.health
    units = h.units_treatment + h.units_control
    capped = max(h.units_treatment, h.units_control) >= UNIT_CAP
    summary = {
        "source": "policy",
        "environment": _text(st.environment) if st.environment is not None else None,
        "mode": st.mode,
        "status": str(st.status),
        "state": state_words(st.status, st.actor),
        "stage": st.stage,
        "stage_name": _text(st.stage_name) if st.stage_name is not None else None,
        "percent": _number(st.percent),
        "observed_exposure": h.units_treatment / units if units and not capped else None,
        "units": units,
        "units_capped": capped,
        "since": _number(st.since),
        "time_in_stage_s": _number(max(0.0, now - st.since)),
        "waiting_for": _text(st.waiting_for) if st.waiting_for is not None else None,
        "version": st.version,
        "reason": _text(st.reason),
        "actor": _text(st.actor),
    }
    evidence = _evidence(h.evidence())
    detail = {
        "stages": [{"name": _text(s.name), "percent": _number(s.percent)} for s in st.stages],
        "next_stage": _text(st.next_stage) if st.next_stage is not None else None,
        "health_enabled": h.enabled,
        "arms": {
            "treatment": _arm(h.units_treatment, h.error_events_treatment, h.slow_events_treatment),
            "control": _arm(h.units_control, h.error_events_control, h.slow_events_control),
        },
        "slow_threshold_s": _number(h.slow_threshold_s),
        "evidence": evidence,
        "thresholds": {
            "freeze_at_errors": _number(h.freeze_at_errors),
            "rollback_at_errors": _number(h.rollback_at_errors),
            "freeze_at_latency": _number(h.freeze_at_latency),
            "rollback_at_latency": _number(h.rollback_at_latency),
        },
        "errors": [_error(e) for e in st.errors[:20]],
    }
    return summary, detail


def _stored(state: RolloutState, now: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The summary and the detail fields of a rollout steered from the store alone."""
    ladder = state.stages
    if state.status is Status.KILLED or state.stage < 0:
        percent: float | None = 0.0
    elif state.status is Status.COMPLETE:
        percent = 100.0
    else:
        percent = ladder[min(state.stage, len(ladder) - 1)][1] if ladder else None
    name = ladder[state.stage][0] if 0 <= state.stage < len(ladder) else None
    summary = {
        "source": "store",
        "environment": None,
        "mode": "stages",
        "status": str(state.status),
        "state": state_words(state.status, state.actor),
        "stage": state.stage,
        "stage_name": _text(name) if name is not None else None,
        "percent": _number(percent),
        "observed_exposure": None,
        "units": None,
        "units_capped": False,
        "since": _number(state.since),
        "time_in_stage_s": _number(max(0.0, now - state.since)),
        "waiting_for": None,
        "version": state.version,
        "reason": _text(state.reason),
        "actor": _text(state.actor),
    }
    going = state.status not in (Status.KILLED, Status.COMPLETE) and state.stage < len(ladder) - 1
    detail: dict[str, Any] = {
        "stages": [{"name": _text(n), "percent": _number(p)} for n, p in ladder],
        "next_stage": _text(ladder[state.stage + 1][0]) if going else None,
        **_no_health(),
    }
    return summary, detail


def _no_health() -> dict[str, Any]:
    """The detail of a rollout without its health (not in this process's policy), each new."""
    return {
        "health_enabled": False,
        "arms": None,
        "slow_threshold_s": None,
        "evidence": {},
        "thresholds": {},
        "errors": [],
    }


_EMPTY: dict[str, Any] = {
    "source": "none",
    "environment": None,
    "mode": None,
    "status": None,
    "state": "no state in the store",
    "stage": None,
    "stage_name": None,
    "percent": None,
    "observed_exposure": None,
    "units": None,
    "units_capped": False,
    "since": None,
    "time_in_stage_s": None,
    "waiting_for": None,
    "version": None,
    "reason": "",
    "actor": "",
}
_EMPTY_DETAIL: dict[str, Any] = {"stages": [], "next_stage": None, **_no_health()}


class Board:
    """The rollouts as the dashboard shows them, refreshed by :meth:`refresh` (one thread).

    ``rollouts`` are the policy's (``None``: none), ``steering`` reads the others that the
    store holds, ``broken`` names the rollouts a policy is broken for (with its problem).
    The index says it is stale once the last good refresh began over ``stale_after`` seconds
    ago (``None``: never).
    """

    def __init__(
        self,
        rollouts: Rollouts | None,
        steering: Steering | None,
        *,
        broken: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        stale_after: float | None = None,
    ) -> None:
        self.rollouts = rollouts
        self.steering = steering
        self.broken = {str(k): str(v) for k, v in (broken or {}).items()}
        self.clock = clock
        self._seen: dict[str, _Seen] = {}
        self._lock = threading.Lock()  # of the documents
        self._reading = threading.Lock()  # one refresh at a time
        self._generation = 0
        self.stale_after = stale_after
        self._failures: dict[str, int] = {}  # failed refreshes, by the exception's type
        self._logged: dict[str, float] = {}  # when each kind was last logged (monotonic)
        self._suppressed: dict[str, int] = {}  # failures of each kind not logged since
        self._failed: str | None = None  # the last refresh's failure, if it failed
        self._succeeded: float | None = None  # when the last good refresh read (board's clock)
        self._fresh_since = _monotonic()  # when it began (or the board was made)
        self._shown = self._document([], None, 0, 0.0)
        self._index = dumps(self._shown)
        self._stale: tuple[int, bytes] | None = None  # the stale index, of its generation
        self._details: dict[str, bytes] = {}
        self._aliases: dict[str, str] = {}  # key: name, of the names not their own key

    # -- what the handlers read ------------------------------------------------------------------

    def index(self) -> bytes:
        """The JSON document of every rollout (``/api/rollouts``), as of the last refresh.

        Marked stale (``"refresh": {"stale": true}``) when the last good refresh began more
        than ``stale_after`` seconds ago: the refresh fails, or hangs on the store.
        """
        with self._lock:
            if self.stale_after is None or _monotonic() - self._fresh_since <= self.stale_after:
                return self._index
            if self._stale is None or self._stale[0] != self._generation:
                refresh = {**self._shown["refresh"], "stale": True}
                self._stale = (self._generation, dumps({**self._shown, "refresh": refresh}))
            return self._stale[1]

    def detail(self, name: str) -> bytes | None:
        """The JSON document of rollout ``name`` (or of its ``key``), or ``None``: not shown."""
        with self._lock:
            found = self._details.get(name)
            if found is None and name in self._aliases:
                found = self._details.get(self._aliases[name])
            return found

    @property
    def failures(self) -> dict[str, int]:
        """The refreshes that failed so far, by the type of their exception."""
        with self._lock:
            return dict(self._failures)

    # -- the refresh -----------------------------------------------------------------------------

    def _names(self) -> tuple[list[str], list[str], str | None, int]:
        """The policy's rollouts and the store's others (bounded), why the store is down, total."""
        policy = list(self.rollouts) if self.rollouts is not None else []
        down: str | None = None
        stored: list[str] = []
        if self.steering is not None:
            try:
                stored = self.steering.names()
            except StoreError as exc:
                down = _text(exc)
        others = sorted((set(stored) | set(self.broken)) - set(policy))
        every = policy + others
        shown = every[:MAX_ROLLOUTS]
        return (
            [n for n in shown if n in policy],
            [n for n in shown if n not in policy],
            down,
            len(every),
        )

    def refresh(self) -> bool:
        """Read every rollout once and rebuild the documents; whether that worked.

        Never raises an :class:`Exception`: a failure (of the store, or a bug) is logged
        through structlog (``dashboard.refresh_failed``, once a minute per kind), counted
        (:attr:`failures`) and shown in the index, which keeps what was last read.
        """
        with self._reading:
            began = _monotonic()
            try:
                self._refresh(began)
            except Exception as exc:
                self._fail(exc)
                return False
            return True

    def _fail(self, exc: Exception) -> None:
        kind = type(exc).__name__
        now = _monotonic()
        with self._lock:
            self._failures[kind] = total = self._failures.get(kind, 0) + 1
            self._failed = kind
            self._generation += 1
            refresh = self._refresh_state()
            self._shown = {**self._shown, "generation": self._generation, "refresh": refresh}
            self._index = dumps(self._shown)
            last = self._logged.get(kind)
            if last is not None and now - last < LOG_EVERY_S:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return
            self._logged[kind] = now
            suppressed = self._suppressed.pop(kind, 0)
        with contextlib.suppress(Exception):  # a broken logging setup must not stop the refresh
            _log.error(
                "dashboard.refresh_failed",
                logger="stagedroll",
                error_type=kind,
                error=str(exc)[:200],
                total=total,
                suppressed=suppressed,
                exc_info=exc,
            )

    def _refresh_state(self) -> dict[str, Any]:
        """The index's ``refresh``: the last one's failure, failures so far, the last good one."""
        return {
            "ok": self._failed is None,
            "error": self._failed,
            "failures": sum(self._failures.values()),
            "last_success": self._succeeded,
            "stale": False,
        }

    def _refresh(self, began: float) -> None:
        now = self.clock()
        policy, others, down, total = self._names()
        rows: list[dict[str, Any]] = []
        details: dict[str, bytes] = {}
        aliases: dict[str, str] = {}
        for name in [*policy, *others]:
            try:
                summary, detail, down = self._one(name, name in policy, down, now)
            except Exception as exc:  # a bug or a store gone wrong: shown, not raised
                summary, detail = dict(_EMPTY), dict(_EMPTY_DETAIL)
                summary["state"] = "unreadable"
                summary["checks"] = [
                    {"check": "unreadable", "words": f"cannot be read: {_text(exc)}"}
                ]
            key = _key(name)
            if key != name:
                aliases[key] = name
            summary = {"rollout": _text(name), "key": key, **summary}
            rows.append(summary)
            document = {"schema_version": SCHEMA_VERSION, **summary, **detail, "now": now}
            details[name] = dumps(document)
        for gone in set(self._seen) - set(details):
            del self._seen[gone]
        shown = self._document(rows, down, total, now)
        self._failed, self._succeeded = None, now  # (written under ``_reading`` only)
        shown["refresh"] = self._refresh_state()
        index = dumps(shown)
        with self._lock:
            self._generation += 1
            self._fresh_since = began
            self._index, self._shown = index, shown
            self._details, self._aliases = details, aliases

    def _document(
        self, rows: list[dict[str, Any]], down: str | None, total: int, now: float
    ) -> dict[str, Any]:
        environment = self.rollouts.environment if self.rollouts is not None else None
        return {
            "schema_version": SCHEMA_VERSION,
            "now": now,
            "generation": self._generation + 1,
            "environment": _text(environment) if environment is not None else None,
            "store": {"reachable": down is None, "error": down},
            "refresh": {
                "ok": True,
                "error": None,
                "failures": 0,
                "last_success": None,
                "stale": False,
            },
            "total": total,
            "truncated": total > len(rows) and total > MAX_ROLLOUTS,
            "rollouts": rows,
        }

    def _read(
        self, name: str, in_policy: bool, down: str | None, now: float, seen: _Seen
    ) -> tuple[RolloutStatus | None, dict[str, Any], dict[str, Any], str | None, str | None]:
        """A rollout's status (of the policy's), summary and detail, problem, the store's."""
        if in_policy:
            assert self.rollouts is not None
            st: RolloutStatus | None = None
            if down is None:
                try:
                    st = self.rollouts.status(name)
                except StoreError as exc:
                    down = _text(exc)
            if st is None:  # the store is down: what this process last read of it
                st = self.rollouts[name].status(fresh=False)
            summary, detail = _live(st, now)
            if st.health.enabled:
                _sample(seen, now, detail["evidence"], (st.stage, st.version))
            return st, summary, detail, None, down
        if self.steering is None or down is not None:  # what was read last, if anything
            if seen.summary:
                return None, dict(seen.summary), dict(seen.detail), None, down
            return None, dict(_EMPTY), dict(_EMPTY_DETAIL), None, down
        state: RolloutState | None = None
        errors: list[RecentError] = []
        problem: str | None = None
        try:
            state = self.steering.load(name)
            errors = self.steering.errors(name)[:20] if state is not None else []
        except CorruptStateError as exc:
            problem = _text(exc)
        except StoreError as exc:
            down = _text(exc)
        if state is None:
            return None, dict(_EMPTY), dict(_EMPTY_DETAIL), problem, down
        summary, detail = _stored(state, now)
        detail["errors"] = [_error(e) for e in errors]
        return None, summary, detail, problem, down

    def _one(
        self, name: str, in_policy: bool, down: str | None, now: float
    ) -> tuple[dict[str, Any], dict[str, Any], str | None]:
        """One rollout's summary and detail; the store's problem, if this read found one."""
        seen = self._seen.setdefault(name, _Seen())
        st, summary, detail, problem, down = self._read(name, in_policy, down, now, seen)
        version = summary.get("version")
        if down is None and self.steering is not None and version != seen.history_version:
            ladder = tuple((str(s["name"]), float(s["percent"] or 0)) for s in detail["stages"])
            try:
                entries = self.steering.history(name, MAX_HISTORY)
                seen.history = [_transition(e, ladder) for e in entries[:MAX_HISTORY]]
                seen.history_version = version
            except StoreError as exc:
                down = _text(exc)
        checks = _checks(
            st,
            store_down=down,
            broken=self.broken.get(name),
            alone=not in_policy and summary["source"] == "store",
        )
        if problem is not None:
            checks.append({"check": "unreadable", "words": f"state unreadable: {problem}"})
            summary["state"] = "unreadable"
        summary = {**summary, "checks": checks}
        seen.summary, seen.detail = summary, detail
        points = [
            {"at": e["at"], "e_errors": e["evidence"].get("e_errors"), "action": e["action"]}
            for e in reversed(seen.history)
            if e["evidence"]
        ]
        detail = {
            **detail,
            "history": seen.history,
            "samples": list(seen.samples),
            "history_points": points,
            "in_policy": in_policy,
            "policy_problem": _text(self.broken[name]) if name in self.broken else None,
        }
        return summary, detail, down
