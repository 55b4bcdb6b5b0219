"""Import cost of the stagedroll pytest plugin: pytest as installed against ``-p no:stagedroll``.

pytest loads every installed plugin (the ``pytest11`` entry points) in every session, so the
plugin must cost nothing beyond its own small module until a test uses it. Two measures,
each taken ``--runs`` times per side, the sides interleaved (the order alternates each
round), the median kept:

- ``python -X importtime -c "import pytest"``: the measure the issue names. Importing pytest
  loads no plugin, so both sides should agree (the plugin is not imported on either).
- a pytest session, ``pytest.main(["--collect-only", ...])`` under ``-X importtime``, on a
  directory with one plain test: here pytest loads the plugin, and this is where its cost
  shows.

For each, the total import time (the sum of the "self" times that ``-X importtime``
reports) with the plugin and without, the difference and the ratio (the session without the
plugin is the floor, measured in the same rounds). Also the plugin module's own cumulative
import time, and whether the session imported any ``stagedroll`` module (it must not).

    .venv/bin/python benchmarks/bench_import.py [--runs N] [--json]

Exits 1 when a session that does not use the plugin imports stagedroll.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PLUGIN = "pytest_stagedroll"
WITH = "with_plugin"
WITHOUT = "without_plugin"
# A pytest session that reports, on its last line of stdout, the modules it ended with whose
# name mentions stagedroll. pytest loads entry-point plugins with importlib.import_module,
# which -X importtime does not list (only their own ``import`` statements), hence sys.modules.
SESSION = (
    "import json, sys, pytest; "
    "code = pytest.main(['--collect-only', '-q', '-s', '-p', 'no:cacheprovider', *sys.argv[1:]]); "
    "print(json.dumps(sorted(m for m in sys.modules if 'stagedroll' in m))); "
    "sys.exit(code)"
)


@dataclass(frozen=True)
class Run:
    """What one ``-X importtime`` run reported."""

    total_us: int
    """The sum of the self times: the time spent importing, all modules together."""
    cumulative_us: dict[str, int]
    """Each listed module's cumulative time."""
    wall_s: float
    """The whole process, start to exit (interpreter start-up included)."""
    stdout: str


def parse(report: str) -> tuple[int, dict[str, int]]:
    """Read the ``import time:`` lines of ``-X importtime`` (stderr): the total, each module."""
    total = 0
    cumulative: dict[str, int] = {}
    for line in report.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative_us, name = line.removeprefix("import time:").split("|", 2)
        total += int(self_us)
        cumulative[name.strip()] = int(cumulative_us)
    return total, cumulative


def measure(command: list[str], *, plugin: bool, cwd: Path) -> Run:
    """Run ``python -X importtime <command>`` (with ``-p no:stagedroll`` unless ``plugin``)."""
    # Bytecode is written and used, as in an installed environment (pip compiles it).
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYTEST_") and k != "PYTHONDONTWRITEBYTECODE"}  # fmt: skip
    blocked = [] if plugin else ["-p", "no:stagedroll"]
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *command, *blocked],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    total, cumulative = parse(done.stderr)
    return Run(total, cumulative, wall, done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21, help="runs per side and measure")
    parser.add_argument("--json", action="store_true", help="print a JSON report")
    args = parser.parse_args(argv)

    commands = {
        # After "-c CODE", "-p no:stagedroll" is given to the script: "import pytest" ignores
        # it (it loads no plugin), the session passes it to pytest.
        "import pytest": ["-c", "import pytest"],
        "pytest session": ["-c", SESSION],
    }
    runs: dict[str, dict[str, list[Run]]] = {m: {WITH: [], WITHOUT: []} for m in commands}
    alone: list[Run] = []
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        (project / "pytest.ini").write_text("[pytest]\n")  # keeps any outer config away
        (project / "test_plain.py").write_text("def test_plain():\n    pass\n")
        for command in [*commands.values(), ["-c", f"import {PLUGIN}"]]:  # writes bytecode
            measure(command, plugin=True, cwd=project)
        for round_ in range(args.runs):
            sides = [True, False] if round_ % 2 == 0 else [False, True]
            for name, command in commands.items():
                for plugin in sides:
                    runs[name][WITH if plugin else WITHOUT].append(
                        measure(command, plugin=plugin, cwd=project)
                    )
            alone.append(
                measure(["-c", f"import pytest; import {PLUGIN}"], plugin=True, cwd=project)
            )

    results: dict[str, dict[str, float]] = {}
    for name, sides_runs in runs.items():
        with_us = statistics.median(r.total_us for r in sides_runs[WITH])
        without_us = statistics.median(r.total_us for r in sides_runs[WITHOUT])
        results[name] = {
            "with_plugin_us": with_us,
            "without_plugin_us": without_us,
            "difference_us": with_us - without_us,
            "ratio": with_us / without_us,
            "with_plugin_wall_ms": 1000 * statistics.median(r.wall_s for r in sides_runs[WITH]),
            "without_plugin_wall_ms": 1000
            * statistics.median(r.wall_s for r in sides_runs[WITHOUT]),
        }
    plugin_us = statistics.median(r.cumulative_us[PLUGIN] for r in alone)
    loaded = [json.loads(r.stdout.splitlines()[-1]) for r in runs["pytest session"][WITH]]
    blocked = [json.loads(r.stdout.splitlines()[-1]) for r in runs["pytest session"][WITHOUT]]
    plugin_imported = all(PLUGIN in modules for modules in loaded)
    plugin_blocked = not any(PLUGIN in modules for modules in blocked)
    stagedroll_imported = any(
        m.split(".")[0] == "stagedroll" for modules in loaded + blocked for m in modules
    ) or any(
        name.split(".")[0] == "stagedroll"
        for side in runs.values()
        for run in side[WITH] + side[WITHOUT]
        for name in run.cumulative_us
    )

    if args.json:
        report = {
            "runs": args.runs,
            "results": results,
            "plugin_module_us": plugin_us,
            "plugin_imported": plugin_imported,
            "plugin_blocked": plugin_blocked,
            "stagedroll_imported": stagedroll_imported,
        }
        print(json.dumps(report, indent=2))
    else:
        print(f"import cost of the stagedroll pytest plugin (median of {args.runs} runs per side, "
              "interleaved)")  # fmt: skip
        print("import time: the sum of -X importtime's self times; wall: the whole process")
        print(f"{'':16} {'with plugin':>12} {'-p no:stagedroll':>17} {'difference':>11} "
              f"{'ratio':>6} {'wall with':>10} {'wall w/o':>9}")  # fmt: skip
        for name, r in results.items():
            print(
                f"{name:16} {r['with_plugin_us'] / 1000:>9.1f} ms "
                f"{r['without_plugin_us'] / 1000:>14.1f} ms {r['difference_us'] / 1000:>+8.1f} ms "
                f"{r['ratio']:>6.3f} {r['with_plugin_wall_ms']:>7.0f} ms "
                f"{r['without_plugin_wall_ms']:>6.0f} ms"
            )
        print(f"{PLUGIN} alone, imported after pytest: {plugin_us / 1000:.2f} ms "
              "(pytest's loader hides it from the session's -X importtime list)")  # fmt: skip
        print(f"plugin loaded in the session: {'yes' if plugin_imported else 'NO'}; "
              f"kept out by -p no:stagedroll: {'yes' if plugin_blocked else 'NO'}")  # fmt: skip
        print(f"stagedroll imported by a session that does not use it: "
              f"{'YES (target missed)' if stagedroll_imported else 'no'}")  # fmt: skip
    return 1 if stagedroll_imported or not plugin_imported or not plugin_blocked else 0


if __name__ == "__main__":
    sys.exit(main())
