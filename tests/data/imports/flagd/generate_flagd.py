"""Write expected.json: what flagd's own SDK serves, for each flag of export.json, per unit.

The flags are the export file itself, read by flagd's Python provider in-process (the file
is its offline flag source, as a flagd deployment would serve it): each unit of UNITS, with
the attributes ATTRIBUTES give it, is evaluated through OpenFeature's public API
(``get_boolean_details``, ``get_string_details``), and the variant served is written as one
character per unit per flag: its index in the flag's ``variants`` (in the export's order),
or ``.`` when no variant was served (the code's default: a DISABLED flag, or an error).
tests/test_importers_flagd.py reads the JSON only; it never imports the SDK.

Run it from the repository root in the vendors' venv (tests/data/vendors/README.md):

    /tmp/stagedroll-vendors/bin/python tests/data/imports/flagd/generate_flagd.py

It needs no network. Its output depends only on the export and the SDK versions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import sys
from collections import Counter
from importlib.metadata import version
from pathlib import Path
from typing import Any

from openfeature import api  # type: ignore[import-not-found, unused-ignore]
from openfeature.contrib.provider.flagd import (  # type: ignore[import-not-found, unused-ignore]
    FlagdProvider,
)
from openfeature.contrib.provider.flagd.config import (  # type: ignore[import-not-found, unused-ignore]
    ResolverType,
)
from openfeature.evaluation_context import (  # type: ignore[import-not-found, unused-ignore]
    EvaluationContext,
)

HERE = Path(__file__).resolve().parent
EXPORT = HERE / "export.json"
GENERATED_BY = "tests/data/imports/flagd/generate_flagd.py"

UNITS = [f"user-{i}" for i in range(2000)] + [
    "qa-alice",
    "qa-bob",
    "",
    "ünïcode-ß",
    "emoji-🙂",
    "a:b",
]

# Unit i has attribute NAME = ATTRIBUTES[NAME][i % len(ATTRIBUTES[NAME])], absent when that
# is null. The lengths are pairwise coprime, so the combinations vary; the values include
# the odd ones (other types, other case) on which a loose comparison would differ.
ATTRIBUTES: dict[str, list[Any]] = {
    "email": [
        "ann@example.com",
        "bob@gmail.com",
        None,
        "ops-carl@example.org",
        "dee@example.com.au",
    ],
    "plan": ["free", "beta", "pro", None, "Beta", 5, True],
    "country": ["DE", "FR", "US", "AT", "CN", "BR", None, "de"],
    "app_version": [
        "1.0.0",
        "2.0.0",
        "2.1.0",
        "2.1.0-rc.1",
        "2.10.3",
        "v2.2",
        None,
        "garbage",
        "3",
    ],
    "age": [15, 30, None, "25", 21, 20.5, True, 40, "x", 0, 18],
}

# The file watcher of the in-process resolver wakes every deadline_ms to reread the file.
# An hour keeps it asleep until this script has exited: the file never changes.
POLL_MS = 3_600_000

NOTES = (
    "openfeature-provider-flagd in-process (ResolverType.IN_PROCESS) with export.json as its "
    "offline_flag_source_path, after set_provider_and_wait; for each flag and unit, "
    "client.get_boolean_details(flag, False, ctx) for a flag whose variants are all booleans, "
    "else client.get_string_details(flag, '', ctx), with ctx = EvaluationContext("
    "targeting_key=unit, attributes=the unit's attributes). 'served' has one character per "
    "unit: the index of details.variant in the flag's 'variants' (the export's order), or "
    "'.' when the SDK served no variant (the code's default: a DISABLED flag). No evaluation "
    "erred. Unit i has attribute a = attributes[a][i % len(attributes[a])], absent if null. "
    "The empty unit reaches the targeting as a null targetingKey (OpenFeature's merge)."
)


def attributes_of(index: int) -> dict[str, Any]:
    """The attributes of the unit at ``index`` of UNITS."""
    found = {name: values[index % len(values)] for name, values in ATTRIBUTES.items()}
    return {name: value for name, value in found.items() if value is not None}


def served(client: Any, key: str, flag: dict[str, Any]) -> str:
    """The variant the SDK serves each unit, one character per unit."""
    names = list(flag["variants"])
    boolean = all(isinstance(value, bool) for value in flag["variants"].values())
    chars = []
    for index, unit in enumerate(UNITS):
        context = EvaluationContext(targeting_key=unit, attributes=attributes_of(index))
        if boolean:
            details = client.get_boolean_details(key, False, context)
        else:
            details = client.get_string_details(key, "", context)
        if details.error_code is not None:
            raise RuntimeError(f"flagd failed on {key} for {unit!r}: {details.error_message}")
        chars.append("." if details.variant is None else str(names.index(details.variant)))
    return "".join(chars)


class LogCounter(logging.Handler):
    """Counts the SDK's log lines (it logs each fractional it cannot bucket), to print once."""

    def __init__(self) -> None:
        """Start with no lines."""
        super().__init__(logging.WARNING)
        self.lines: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        """Count one line."""
        self.lines[f"{record.levelname} {record.name}: {record.getMessage()}"] += 1


def main() -> int:
    """Evaluate every flag of the export for every unit, and write expected.json."""
    export = json.loads(EXPORT.read_text(encoding="utf-8"))
    provider = FlagdProvider(
        resolver_type=ResolverType.IN_PROCESS,
        offline_flag_source_path=str(EXPORT),
        deadline_ms=POLL_MS,
    )
    api.set_provider_and_wait(provider)
    try:
        client = api.get_client()
        flags = {
            key: {"variants": list(flag["variants"]), "served": served(client, key, flag)}
            for key, flag in export["flags"].items()
        }
    finally:
        api.shutdown()
    header = {
        "vendor": "flagd",
        "sdk": "openfeature-provider-flagd",
        "version": version("openfeature-provider-flagd"),
        "flagd_core": version("openfeature-flagd-core"),
        "openfeature_sdk": version("openfeature-sdk"),
        "python": platform.python_version(),
        "generated_by": GENERATED_BY,
        "export": "tests/data/imports/flagd/export.json",
        "export_sha256": hashlib.sha256(EXPORT.read_bytes()).hexdigest(),
        "notes": NOTES,
    }
    lines = ["{"]
    lines += [f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in header.items()]
    lines.append(f'"units": {json.dumps(UNITS, ensure_ascii=False)},')
    lines.append(f'"attributes": {json.dumps(ATTRIBUTES, ensure_ascii=False)},')
    lines.append('"flags": {')
    lines.append(",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in flags.items()))
    lines.append("}}")
    path = HERE / "expected.json"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    json.loads(path.read_text(encoding="utf-8"))  # the file must parse as written
    print(f"wrote {path.relative_to(HERE.parents[3])}")
    return 0


if __name__ == "__main__":
    counter = LogCounter()
    logging.basicConfig(handlers=[counter], level=logging.WARNING, force=True)
    code = main()
    for line, count in sorted(counter.lines.items()):
        print(f"  {count} x {line}")
    sys.exit(code)
