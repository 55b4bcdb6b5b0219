"""Write expected.json: what GrowthBook's own SDK serves for the flags of export.json.

GrowthBook's Python SDK loads export.json beside this script as the payload it is (an SDK
features payload, through ``GrowthBook.set_payload``), offline, and evaluates every feature
for 2,008 units with their attributes through ``GrowthBook.eval_feature``. The test of the
GrowthBook importer (tests/test_importers_growthbook.py) compares stagedroll's decisions on
the imported policy with these answers, unit for unit. It reads this JSON only; it never
imports the SDK, which is not a dependency of stagedroll.

For the features the importer maps only in part, the SDK also evaluates the export with the
parts that did not map taken out (``REMOVED``): that is what the imported rollout does
instead, and the test checks that the importer reports exactly those parts.

Run it from the repository root in the vendors' venv (see tests/data/vendors/README.md):

    python tests/data/imports/growthbook/generate_growthbook.py

It needs no network and its output depends only on the SDK version and export.json.
"""

from __future__ import annotations

import copy
import hashlib
import json
import platform
import re
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from growthbook import GrowthBook  # type: ignore[import-not-found, unused-ignore]

HERE = Path(__file__).resolve().parent
EXPORT = HERE / "export.json"
GENERATED_BY = "tests/data/imports/growthbook/generate_growthbook.py"

UNITS = [f"user-{i}" for i in range(2000)] + [
    "",
    "ünïcode-ß",
    "用户-7",
    "emoji-🙂",
    "a:b",
    " padded ",
    "qa-1",
    "qa-2",
]

# The parts of export.json that the importer does not map, by feature: a rule it leaves out
# (``rules[i]``), or a field of a rule it maps without (``rules[i].field``).
REMOVED: dict[str, list[str]] = {
    "recommendations": [
        "rules[0]",
        "rules[1]",
        "rules[2]",
        "rules[3]",
        "rules[4].fallbackAttribute",
    ],
    "beta-editor": ["rules[0]", "rules[3]"],
    "homepage-hero": ["rules[0]"],
    "checkout-upsell": ["rules[0].tracks", "rules[1]"],
}

NOTES = (
    "growthbook (the Python SDK) loads export.json with GrowthBook.set_payload and evaluates "
    "each feature with eval_feature for every unit, its attributes being {'id': unit} and "
    "the unit's entries in 'attributes' (null: the attribute is absent). 'values' lists the "
    "distinct values served, and 'served' has one character per unit, in the order of "
    "'units': the index of its value in 'values'. 'removed' names the parts that the "
    "importer leaves out, and 'served_without_removed' is what the SDK serves once they "
    "are taken out of the feature. The SDK is driven offline: no client key, no network."
)


def attributes(i: int) -> dict[str, Any]:
    """The attributes of unit number ``i``, as a GrowthBook user has them (``None``: absent)."""
    if i % 13 == 0:
        email = None
    elif i % 37 == 0:
        email = f"u{i}@example.com.evil.io"
    elif i % 10 == 0:
        email = f"u{i}@example.com"
    elif i % 3 == 0:
        email = f"u{i}@acme.io"
    else:
        email = f"u{i}@mail.test"
    return {
        "country": ["US", "DE", "FR", "NZ", "AU", "GB", None][i % 7],
        "plan": ["free", "pro", "team", "enterprise"][i % 4],
        "email": email,
        "beta": True if i % 9 == 0 else False if i % 9 == 1 else None,
        "age": None if i % 11 == 0 else i % 97,
        "company": None if i % 17 == 0 else f"company-{i % 41}",
        "app_version": f"{1 + i % 3}.{i % 12}.{i % 5}",
        "deviceId": f"dev-{i}",
    }


def user(unit: str, i: int) -> dict[str, Any]:
    """What the SDK is given for one unit: its id, and the attributes it has."""
    found = {key: value for key, value in attributes(i).items() if value is not None}
    return {"id": unit, **found}


def without(payload: dict[str, Any], key: str, parts: list[str]) -> dict[str, Any]:
    """The payload with the named parts of feature ``key`` taken out."""
    reduced = copy.deepcopy(payload)
    rules = reduced["features"][key]["rules"]
    fields = [re.fullmatch(r"rules\[(\d+)\]\.(\w+)", part) for part in parts]
    for match in filter(None, fields):
        del rules[int(match[1])][match[2]]
    whole = sorted((int(m[1]) for p in parts if (m := re.fullmatch(r"rules\[(\d+)\]", p))),
                   reverse=True)  # fmt: skip
    for index in whole:
        del rules[index]
    return reduced


def serve(payload: dict[str, Any], key: str) -> list[Any]:
    """The value the SDK serves each unit for feature ``key``."""
    gb = GrowthBook()
    gb.set_payload(copy.deepcopy(payload))
    served = []
    for i, unit in enumerate(UNITS):
        gb.set_attributes(user(unit, i))
        served.append(gb.eval_feature(key).value)
    gb.destroy()
    return served


def encode(served: list[Any], values: list[Any]) -> str:
    """One character per unit: the index of its value in ``values`` (added as met)."""
    out = []
    for value in served:
        found = next((i for i, v in enumerate(values) if json.dumps(v) == json.dumps(value)), None)
        if found is None:
            values.append(value)
            found = len(values) - 1
        if found > 9:
            raise RuntimeError("more than ten values served: extend the encoding")
        out.append(str(found))
    return "".join(out)


def main() -> int:
    """Evaluate every feature of export.json and write expected.json."""
    raw = EXPORT.read_bytes()
    payload = json.loads(raw)
    features = []
    for key in payload["features"]:
        values: list[Any] = []
        entry: dict[str, Any] = {"feature": key}
        served = encode(serve(payload, key), values)
        if key in REMOVED:
            entry["removed"] = REMOVED[key]
            reduced = without(payload, key, REMOVED[key])
            entry["served_without_removed"] = encode(serve(reduced, key), values)
        entry["values"] = values
        entry["served"] = served
        features.append(entry)
    columns = {name: [attributes(i)[name] for i in range(len(UNITS))] for name in attributes(0)}
    header = {
        "vendor": "growthbook",
        "sdk": "growthbook",
        "version": version("growthbook"),
        "python": platform.python_version(),
        "generated_by": GENERATED_BY,
        "export": "export.json",
        "export_sha256": hashlib.sha256(raw).hexdigest(),
        "notes": NOTES,
    }
    lines = ["{"]
    lines += [f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in header.items()]
    lines.append(f'"units": {json.dumps(UNITS, ensure_ascii=False)},')
    lines.append('"attributes": {')
    lines.append(",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in columns.items()))
    lines.append("},")
    lines.append('"features": [')
    lines.append(",\n".join(json.dumps(f, ensure_ascii=False) for f in features))
    lines.append("]}")
    path = HERE / "expected.json"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    json.loads(path.read_text(encoding="utf-8"))  # the file must parse as written
    print(f"wrote {path.relative_to(HERE.parents[3])}: {len(features)} features")
    return 0


if __name__ == "__main__":
    sys.exit(main())
