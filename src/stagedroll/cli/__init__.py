r"""The ``stagedroll`` command line (also ``python -m stagedroll``); standard library only.

Every command takes the global options ``--policy FILE`` (or ``$STAGEDROLL_POLICY``),
``--store URL`` (or ``$STAGEDROLL_STORE``; default ``memory://``, which holds nothing
between runs), ``--env NAME`` (or ``$STAGEDROLL_ENV``), ``--json`` and ``-v``, before or
after the command's name.

Exit codes: 0 ok; 1 a finding (validation errors, a refused transition, cohorts that are not
nested); 2 a usage error (argparse's own, no policy, an unknown rollout or environment, a
bad store URL); 3 the store is unreachable; 70 an internal error (a bug; ``-v`` shows its
traceback). An error is one line on stderr (a policy's problems: one line each), never a
traceback. Text the command line did not write (names, reasons, actors, units, paths,
messages) is printed with its unprintable characters escaped (ESC as ``\x1b``); JSON output is
exact JSON.

``--json`` writes one JSON document to stdout; its shape per command is stable:

- ``validate``: a list of ``{"file", "ok", "problems": [{"path", "line", "message"}]}``;
  ``line`` is 1-based, or ``null`` where it cannot be told.
- ``status``: a list of ``{"rollout", "environment", "mode", "stage", "stage_name",
  "percent", "status", "since", "since_iso", "version", "reason", "actor", "next_stage",
  "waiting_for", "health_enabled", "evidence", "internal_errors"}``; ``since`` is the
  store's time (seconds since the epoch), ``evidence`` the 13 keys of
  :meth:`stagedroll.HealthReport.evidence`.
- ``advance``, ``freeze``, ``unfreeze``, ``rollback``, ``kill``, ``complete``: one
  transition object, ``{"rollout", "action", "from_stage", "to_stage", "from_stage_name",
  "to_stage_name", "from_status", "to_status", "version", "at", "at_iso", "reason", "actor",
  "evidence"}`` (stage names are ``null`` at stage -1; ``from_status`` is ``null`` for the
  start).
- ``history``: a list of transition objects, newest first. ``tick``: a list of the
  transition objects it made (``[]`` when none was due).
- ``explain``: ``{"rollout", "unit", "attributes", "environment", "enabled", "reason",
  "stage", "percent", "bucket", "threshold", "steps"}``, where ``steps`` lists ``{"step",
  "outcome", "detail"}`` for ``environment``, ``status``, ``unit`` (also ``"key"``),
  ``deny``, ``allow``, ``segments`` (also ``"segments": [{"name", "match"}]``) and
  ``bucket`` (also ``"bucket"``, ``"threshold"``), in that order; ``outcome`` is ``"next"``,
  ``"on"`` or ``"off"`` (the step that settled it) or ``"not reached"``.
- ``simulate``: ``{"units", "environment", "nested", "rollouts": [{"rollout", "mode",
  "nested", "stages": [{"name", "percent", "count", "fraction", "expected",
  "contains_previous"}]}], "plot"}``; ``contains_previous`` is ``null`` for a first stage,
  ``plot`` the PNG written or ``null``.
- ``schema``: the JSON Schema of the policy file (with ``--json`` or without).

On an error, stdout stays empty and the message goes to stderr, as without ``--json``.
"""

from ._main import main

__all__ = ["main"]
