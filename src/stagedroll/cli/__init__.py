r"""The ``stagedroll`` command line (also ``python -m stagedroll``); standard library only.

Every command takes the global options ``--policy FILE`` (or ``$STAGEDROLL_POLICY``),
``--store URL`` (or ``$STAGEDROLL_STORE``; a command that reads or changes state needs
one), ``--create`` (start a new store where the one named holds no stagedroll data),
``--env NAME`` (or ``$STAGEDROLL_ENV``), ``--json`` and ``-v``, before or after the
command's name.

Exit codes: 0 ok; 1 a finding (validation errors, a refused transition, cohorts that are not
nested; for ``status``/``list``, a corrupt stored state or a rollout the policy is broken
for); 2 a usage error (argparse's own, no store named, no policy where one is needed, an
unknown rollout or environment, a bad store URL); 3 the store is unreachable; 4 no
stagedroll store at the URL (a SQLite file that does not exist or holds no tables, a store
that holds no rollout); 70 an internal error (a bug; ``-v`` shows its traceback). An error
is one line on stderr (a policy's problems: one line each), never a traceback; under
``--json``, one JSON line ``{"schema_version": 1, "error": {"code", "kind", "message",
"details"}}``.

``status``, ``list``, ``history``, ``freeze``, ``unfreeze``, ``rollback`` and ``kill``
work from the store alone for a rollout the policy does not have or is broken for (the
stored state carries its stage ladder); the policy is read leniently, leaving out, with a
note, each rollout it is broken for. The default output fits in 100 columns and says in
words what each rollout does and why; ``-v`` adds the statistics. Text the command line did
not write (names, reasons, actors, units, paths, messages) is printed with its unprintable
characters escaped (ESC as ``\x1b``); JSON output is exact JSON, and every JSON document
carries ``"schema_version": 1``. docs/cli.md documents each command's JSON shape.
"""

from ._main import main

__all__ = ["main"]
