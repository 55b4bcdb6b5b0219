"""Exceptions raised by stagedroll.

Every exception derives from :class:`StagedrollError` and, where one fits, from the
matching builtin, so ``except ValueError`` keeps working::

    StagedrollError
    ├── PolicyError (ValueError)
    ├── UnknownRolloutError (LookupError)
    ├── TransitionError
    ├── StoreError
    └── MissingExtraError (ImportError)

Decisions never raise these: a failure on the decision path makes the decision fall back
to the stable path. They come from loading policies, naming rollouts and operating on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CorruptStateError",
    "MissingExtraError",
    "NoStoreError",
    "PolicyError",
    "PolicyProblem",
    "StagedrollError",
    "StoreError",
    "TransitionError",
    "UnknownRolloutError",
]


class StagedrollError(Exception):
    """The root of every error stagedroll raises on purpose."""


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """One problem in a policy: where it is and what is wrong."""

    path: str
    """Dotted path to the field, e.g. ``rollouts.new-checkout.stages[2].percent``."""

    message: str
    """What is wrong with it."""

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


_SHOWN_PROBLEMS = 50
"""Problems a :class:`PolicyError`'s message lists; :attr:`PolicyError.problems` has all."""
_SHOWN_CHARACTERS = 500


def _clipped(text: str) -> str:
    if len(text) <= _SHOWN_CHARACTERS:
        return text
    return f"{text[: _SHOWN_CHARACTERS - 3]}... ({len(text):,} characters)"


class PolicyError(StagedrollError, ValueError):
    """Raised when a policy cannot be read or is invalid.

    The message lists the problems found, one per line (the first 50, each cut to 500
    characters); :attr:`problems` holds them all as :class:`PolicyProblem` values.
    """

    def __init__(self, problems: Sequence[PolicyProblem], *, source: str | None = None) -> None:
        self.problems: tuple[PolicyProblem, ...] = tuple(problems)
        self.source = source
        where = f" in {source}" if source else ""
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''}{where}:"
        # The message is logged and kept (status().pending_policy): bounded, whatever came.
        lines = [f"  {_clipped(str(p))}" for p in self.problems[:_SHOWN_PROBLEMS]]
        if count > _SHOWN_PROBLEMS:
            lines.append(f"  ... and {count - _SHOWN_PROBLEMS:,} more (see .problems)")
        super().__init__("\n".join([head, *lines]))

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled whole (a multiprocessing worker's error comes back as it was raised).
        return _policy_error, (self.problems, self.source)


class UnknownRolloutError(StagedrollError, LookupError):
    """Raised by ``rollouts[name]`` and ``rollouts.guard(name, ...)`` for an unknown name.

    Failing at once turns a typo into an import-time error instead of a path that never runs.
    """

    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.name = name
        self.known = tuple(sorted(known))
        listing = ", ".join(self.known) or "none"
        super().__init__(f"unknown rollout {name!r} (known: {listing})")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.name, self.known)

    def __str__(self) -> str:
        # LookupError's str() quotes its argument; show the sentence as is.
        return str(self.args[0])


class TransitionError(StagedrollError):
    """Raised when a transition does not apply to the rollout's state (e.g. advancing a frozen one).

    The message says why, e.g. ``cannot advance 'checkout': it is frozen (unfreeze it first)``.
    """


class StoreError(StagedrollError):
    """Raised by operator calls (transitions, ``history``) when the state store fails.

    The decision path never raises it: decisions keep the last known state.
    """


class CorruptStateError(StoreError):
    """Raised by operator calls (transitions, ``status``, ``Steering``) for an unreadable state.

    Written behind stagedroll's back, or damaged: every process serves the old path for
    that rollout (as if killed) until the state is repaired or written anew.
    """


class NoStoreError(StoreError):
    """Raised when no stagedroll store is where one was asked for without creating one.

    ``SQLiteStore(path, create=False)`` (and ``store_from_url(url, create=False)``): the
    file does not exist, or holds no stagedroll tables. The message names the resolved path.
    ``creatable`` is false where creating cannot help (a directory, a file that is not a
    SQLite database).
    """

    def __init__(self, message: str, *, creatable: bool = True) -> None:
        super().__init__(message)
        self.creatable = creatable


class MissingExtraError(StagedrollError, ImportError):
    """Raised when a feature needs an optional dependency that is not installed."""

    def __init__(self, feature: str, extra: str, module: str) -> None:
        self.feature, self.extra, self.module = feature, extra, module
        super().__init__(
            f"{feature} needs the optional dependency {module!r}: "
            f"pip install 'stagedroll[{extra}]'",
            name=module,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.feature, self.extra, self.module)


def _policy_error(problems: Sequence[PolicyProblem], source: str | None) -> PolicyError:
    """Rebuild a pickled :class:`PolicyError` (its ``source`` is keyword-only)."""
    return PolicyError(problems, source=source)
