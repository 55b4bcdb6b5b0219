"""Write expected.json: what LaunchDarkly's own SDK serves for export.json, unit by unit.

The SDK's file data source loads ``export.json`` beside this script, the export itself,
unchanged. For each flag and each unit (with the attributes recorded in the output), the
SDK's public ``variation_detail`` answers which variation it serves and why. The test of
the importer (``tests/test_importers_launchdarkly.py``) compares the imported policy's
decisions with these; it reads the JSON only and never imports the SDK.

Run it from the repository root in the vendors' venv (``tests/data/vendors/README.md``):

    /tmp/stagedroll-vendors/bin/python tests/data/imports/launchdarkly/generate_launchdarkly.py

It needs no network: the SDK reads the local file, with events and diagnostics off. Its
output depends only on the SDK's version and export.json.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
from collections import Counter
from importlib.metadata import version
from pathlib import Path
from typing import Any

from ldclient.client import LDClient  # type: ignore[import-not-found, unused-ignore]
from ldclient.config import Config  # type: ignore[import-not-found, unused-ignore]
from ldclient.context import Context  # type: ignore[import-not-found, unused-ignore]
from ldclient.integrations import Files  # type: ignore[import-not-found, unused-ignore]

HERE = Path(__file__).resolve().parent
EXPORT = HERE / "export.json"
GENERATED_BY = "tests/data/imports/launchdarkly/generate_launchdarkly.py"

UNITS = [f"user-{i}" for i in range(2000)] + [
    "vip-1", "vip-2", "qa-1", "qa-2", "ünïcode-ß", "用户-7", "a.b", "emoji-🙂", " padded ", "",
]  # fmt: skip
"""The units: each evaluated as a user context with this key (the empty key: no attributes)."""

NOTES = (
    "launchdarkly-server-sdk loads export.json with its file data source "
    "(Files.new_data_source; send_events off, diagnostics off, no stream or poll) and "
    "answers client.variation_detail(flag, context, None) for each flag of the export and "
    "each unit. The context is a user: Context.builder(unit) with the unit's attributes set "
    "(a null in 'attributes' means the attribute is not set); the empty key makes an invalid "
    "context, which the SDK answers with an error and the default. Per flag, 'served' has one "
    "character per unit, in the order of 'units': the index of the variation served, or '-' "
    "for none (an error, or a deleted flag). 'reasons' has one character per unit: 'F' the "
    "default rule (fallthrough), 'T' an individual target, '0' to '9' the rule of that index, "
    "'O' the flag is off, 'P' a prerequisite failed, 'E' an error."
)

COUNTRIES = ["DE", "FR", "US", "CN", "RU", "GB", "NZ"]
PLANS = ["free", "pro", "enterprise"]
VERSIONS = ["2.2.9", "2.3.0", "2.3.1", "2.10.0", "3.0.0-beta.1", "3.0.0", "2.4", "1.9.9"]
NAMES = ["alice", "bob", "carol", "dave", "erin"]


def email(i: int) -> str | None:
    """The unit's email: some at example.com, some at corp.example, a few missing."""
    if i % 37 == 5:
        return None
    return (
        [f"user{i}@example.com", f"u{i}@corp.example", f"qa+{i}@example.com"][i % 10]
        if (i % 10 < 3)
        else f"u{i}@mail.test"
    )


def attributes(i: int) -> dict[str, Any]:
    """The attributes of the unit of index ``i`` (``None``: not set)."""
    return {
        "email": email(i),
        "country": None if i % 23 == 0 else COUNTRIES[i % 7],
        "plan": PLANS[i // 7 % 3],
        "appVersion": VERSIONS[i % 8],
        "name": NAMES[i % 5],
        "age": 18 + (i * 7) % 60,
        "beta": None if i % 9 == 0 else i % 4 == 0,
        "accountId": f"acct-{i // 3}",
    }


def context(unit: str, attrs: dict[str, Any]) -> Any:
    """The unit as a user context with its attributes."""
    builder = Context.builder(unit)
    for name, value in attrs.items():
        if value is not None:
            builder.set(name, value)
    return builder.build()


def reason_code(reason: dict[str, Any]) -> str:
    """One character for the SDK's reason."""
    kind = str(reason.get("kind", ""))  # an unknown or missing kind: "E"
    if kind == "RULE_MATCH":
        index = reason["ruleIndex"]
        if not 0 <= index <= 9:
            raise RuntimeError(f"rule index {index} does not fit one character")
        return str(index)
    codes = {"FALLTHROUGH": "F", "TARGET_MATCH": "T", "OFF": "O", "PREREQUISITE_FAILED": "P"}
    return codes.get(kind, "E")


def main() -> int:
    """Evaluate every flag of export.json for every unit, and write expected.json."""
    counter: Counter[str] = Counter()

    class Count(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            counter[f"{record.levelname} {record.name}: {record.getMessage()}"] += 1

    logging.basicConfig(handlers=[Count(logging.WARNING)], level=logging.WARNING, force=True)
    flags = list(json.loads(EXPORT.read_text(encoding="utf-8"))["flags"])
    columns = {name: [] for name in attributes(0)}  # type: dict[str, list[Any]]
    contexts = []
    for i, unit in enumerate(UNITS):
        attrs = attributes(i) if unit else dict.fromkeys(columns)
        for name, value in attrs.items():
            columns[name].append(value)
        contexts.append(context(unit, attrs))
    config = Config(
        sdk_key="stagedroll-import-offline",
        update_processor_class=Files.new_data_source(paths=[str(EXPORT)]),
        send_events=False,
        diagnostic_opt_out=True,
    )
    client = LDClient(config=config)
    decisions: dict[str, dict[str, str]] = {}
    try:
        if not client.is_initialized():
            raise RuntimeError("the LaunchDarkly client did not load export.json")
        for flag in flags:
            served, reasons = [], []
            for ctx in contexts:
                detail = client.variation_detail(flag, ctx, None)
                index = detail.variation_index
                served.append("-" if index is None else str(index))
                reasons.append(reason_code(detail.reason))
            decisions[flag] = {"served": "".join(served), "reasons": "".join(reasons)}
    finally:
        client.close()
    header = {
        "vendor": "launchdarkly",
        "sdk": "launchdarkly-server-sdk",
        "version": version("launchdarkly-server-sdk"),
        "python": platform.python_version(),
        "generated_by": GENERATED_BY,
        "export": "export.json",
        "notes": NOTES,
    }
    lines = ["{"]
    lines += [f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in header.items()]
    lines.append(f'"units": {json.dumps(UNITS, ensure_ascii=False)},')
    lines.append('"attributes": {')
    lines.append(",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in columns.items()))
    lines.append("},")
    lines.append('"flags": {')
    lines.append(",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in decisions.items()))
    lines.append("}}")
    path = HERE / "expected.json"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    json.loads(path.read_text(encoding="utf-8"))  # the file must parse as written
    print(f"wrote {path.relative_to(HERE.parents[3])}")
    for line, count in sorted(counter.items()):
        print(f"  {count} x {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
