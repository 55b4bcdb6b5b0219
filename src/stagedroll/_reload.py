"""Hot reload: notice that the policy file changed, and read it again, with no thread.

:class:`PolicyFile` is asked lazily (``due``) by the calls of a
:class:`~stagedroll.Rollouts`; at most once per ``interval`` it looks at the file's
modification time and size, and when they changed, at its content's hash. A file that does
not validate is not applied: the last good policy keeps serving, and the problems are
logged once per version of the file and kept in :attr:`PolicyFile.error` until a good
version comes.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ._document import format_of, max_policy_bytes, read_document
from ._failures import Failures, log
from ._forksafe import register
from ._policy import Policy, policy_from_bytes
from .exceptions import PolicyError

__all__ = ["PolicyFile", "kill_list"]


def kill_list() -> frozenset[str]:
    """The rollouts named in ``$STAGEDROLL_KILL`` (comma-separated): off in this process."""
    names = os.environ.get("STAGEDROLL_KILL", "")
    return frozenset(n.strip() for n in names.split(",") if n.strip())


def _stamp(path: Path) -> tuple[int, int]:
    found = path.stat()
    return found.st_mtime_ns, found.st_size


class PolicyFile:
    """The file a policy was read from, watched for changes every ``interval`` seconds.

    It is read through the bounded reader of ``load_policy``, once per change: a FIFO, a
    device or a directory is refused without blocking, and a file over the size limit
    (``$STAGEDROLL_MAX_POLICY_BYTES``, default 1 MiB) from its ``stat``, before a byte of it
    is read. A refused file keeps the last good policy serving, as an invalid one does;
    each bad version is logged once and counted in ``failures`` (``policy.reload_failed``).
    :attr:`policy` is the policy of the file as first read (``PolicyError`` if it is bad).
    """

    __slots__ = (
        "__weakref__",
        "_digest",
        "_failed",
        "_failures",
        "_lock",
        "_next",
        "_stamp",
        "error",
        "interval",
        "path",
        "policy",
    )

    def __init__(self, path: str | os.PathLike[str], interval: float, failures: Failures) -> None:
        if not interval > 0:
            raise ValueError(f"reload_interval must be positive, not {interval!r}")
        self.path = Path(path)
        self.interval = interval
        self._failures = failures
        self._lock = threading.Lock()
        self._next = time.monotonic() + interval
        self._stamp = _stamp(self.path)  # before the read: a change during it is seen later
        limit = max_policy_bytes(source=str(self.path))
        content = read_document(self.path, max_bytes=limit)
        self.policy: Policy = policy_from_bytes(
            content, format=format_of(self.path), source=str(self.path)
        )  # parsed from the bytes hashed below: the digest is that of the policy in force
        self._digest = hashlib.sha256(content).hexdigest()
        register(self)
        self._failed = ""  # the digest of the last version that did not validate
        self.error: str | None = None
        """Why the newest version of the file is not applied (``None``: it is)."""

    def due(self) -> bool:
        """Whether the interval has passed since the last look (cheap: a clock read)."""
        return time.monotonic() >= self._next

    def check(self, apply: Callable[[Policy], None]) -> None:
        """Call ``apply`` with the new policy if the file changed and validates; never raises.

        One thread at a time: the look and the swap happen under one lock, so that two
        reloads cannot cross (an older policy put back over a newer one).
        """
        if not self._lock.acquire(blocking=False):
            return  # another thread is looking
        try:
            self._next = time.monotonic() + self.interval
            policy = self._read()
            if policy is not None:
                apply(policy)
        finally:
            self._lock.release()

    def _after_fork(self) -> None:
        """In a forked child: a lock that no thread of the parent can hold."""
        self._lock = threading.Lock()

    def _read(self) -> Policy | None:
        try:
            stamp = _stamp(self.path)
            if stamp == self._stamp:
                return None
            limit = max_policy_bytes(source=str(self.path))
            content = read_document(self.path, max_bytes=limit)  # never blocks, nor reads more
        except PolicyError as exc:  # a FIFO, a device, a directory, or too large: left unread
            self._stamp = stamp  # looked at again when it changes, not at every interval
            self._refuse(str(exc), digest=f"refused:{stamp}")
            return None
        except OSError as exc:
            self._refuse(f"cannot read {self.path}: {exc}", digest=f"oserror:{exc}")
            return None
        self._stamp = stamp
        digest = hashlib.sha256(content).hexdigest()
        if digest == self._digest:
            self.error = None  # back to the version in force (after a bad one): nothing pending
            self._failed = ""
            return None
        try:  # the bytes already read: the file may have changed again since
            policy = policy_from_bytes(content, format=format_of(self.path), source=str(self.path))
        except Exception as exc:  # PolicyError, or anything a broken document could raise
            self._refuse(str(exc), digest=digest)
            return None
        self._digest = digest
        self._failed = ""
        self.error = None
        return policy

    def _refuse(self, why: str, *, digest: str) -> None:
        """Keep the last good policy; log each bad version once."""
        self.error = why
        if digest != self._failed:
            self._failed = digest
            self._failures.tally("policy.reload_failed")
            log("error", "policy.reload_failed", path=str(self.path), error=why)

    def applied(self, error: str) -> None:
        """The new policy could not be applied (e.g. it drops this process's environment)."""
        self._refuse(error, digest=self._digest)
        self._digest = ""  # look again at the next change
