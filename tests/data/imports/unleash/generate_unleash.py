"""Write expected.json and fuzz.json: what Unleash's own Python SDK decides for flags.

expected.json: the SDK loads export.json itself (the client API features, as a server
serves them) and answers ``is_enabled`` for every flag and each of about 2,000 units, with
attributes where the flags' constraints look at them. fuzz.json: the same for a seeded
random export of 250 flags, which combines every strategy and constraint with the others,
odd values included. The test of the Unleash importer checks that the policy made of each
export decides the same, unit for unit, for every flag that maps whole, and lets no unit in
that the SDK keeps out for the others.

Run it in the vendors' venv (tests/data/vendors/README.md), from the repository root:

    python tests/data/imports/unleash/generate_unleash.py

It needs no network: the client is bootstrapped from a file, never initialized, with
metrics and registration off. Its output depends only on the SDK's version.
"""

from __future__ import annotations

import json
import platform
import random
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

from UnleashClient import UnleashClient  # type: ignore[import-not-found, unused-ignore]
from UnleashClient.cache import FileCache  # type: ignore[import-not-found, unused-ignore]
from UnleashClient.utils import (  # type: ignore[import-not-found, unused-ignore]
    InstanceAllowType,
)

HERE = Path(__file__).resolve().parent
EXPORT = HERE / "export.json"
GENERATED_BY = "tests/data/imports/unleash/generate_unleash.py"

# Flags whose strategies draw at random on each call: their decisions are not reproducible,
# so none are recorded (the importer reports those strategies, and imports them at 0 %).
RANDOM_FLAGS = ("random-banner",)

# Ids that the export's userWithId strategies name, so that those lists are exercised.
LISTED_UNITS = ["qa-alice", "qa-bob", "ops-1", "user-3 ", ""]

NOTES = (
    "UnleashClient (its engine: yggdrasil-engine) loads export.json, unchanged, from a "
    "FileCache in a temporary directory (bootstrap_from_file), with metrics and "
    "registration off and the client never initialized, so it never fetches. For each unit "
    "and flag: client.is_enabled(flag, context), context = {'userId': unit, 'sessionId': "
    "..., 'remoteAddress': ...} plus the other attributes as 'properties' (the SDK turns "
    "every value into text, so age 70 reaches it as '70'). 'attributes' holds them as the "
    "test passes them to stagedroll: the Unleash context's fields by name, numbers as "
    "numbers, a missing attribute left out. Each flag's string has one character per unit, "
    "in the order of 'units': '1' where the SDK answered true. Flags in 'random' draw at "
    "random per call (stickiness random, gradualRolloutRandom): not recorded."
)

FUZZ_NOTES = (
    "A random export (random.Random(seed)): 250 flags of up to 3 strategies of every kind, "
    "with constraints of every operator, odd values among them, and segments 1 and 2 (3 is "
    "named but not defined). 'export' holds it; 'units', 'attributes' and 'flags' are as in "
    "expected.json, decided by the same client in the same way. Numbers are only in 'age', "
    "which only NUM_ constraints look at, as the importer's attribute convention says."
)
FUZZ_SEED = 20
FUZZ_TEXTS = {
    "country": ["DE", "AT", "US", "de"],
    "plan": ["pro", "free"],
    "email": ["a", "@x", ""],
}
FUZZ_NUMBERS = ["18", "30", "65", "12.5", " 5", "5.", "+5", "ten", "", "1e400", ".5"]


def units_and_attributes() -> tuple[list[str], list[dict[str, Any]]]:
    """About 2,000 units, and their attributes, the same at each run (a seeded draw)."""
    draw = random.Random(20)  # a seeded draw: the same data at each run
    units = [f"user-{i}" for i in range(2000)] + LISTED_UNITS
    attributes = []
    for index, unit in enumerate(units):
        found: dict[str, Any] = {
            "country": draw.choice(["DE", "AT", "FR", "US", "GB", None]),
            "plan": draw.choice(["free", "free", "pro", "enterprise", None]),
            "team": draw.choice(["qa", "dev", None, None, None]),
            "age": draw.choice([None, draw.randint(16, 90)]),
            "appVersion": draw.choice(["1.9.0", "2.0.0", "2.1.0-rc.1", "2.3.1", None]),
            "accountId": draw.choice([f"acct-{index // 4}", None]),
            "sessionId": draw.choice([f"s-{draw.randrange(10**9)}", None]),
            "remoteAddress": draw.choice(["10.1.2.3", "192.168.1.20", "203.0.113.9"] + [None] * 7),
        }
        if unit == "user-3":  # account-billing lists this user: Unleash needs no account
            found["accountId"] = None
        name = draw.choice(["ada", "admin", "Admin-ops", "grace", "linus"])
        domain = draw.choice(["example.com", "example.org", "mail.example.net", None])
        found["email"] = f"{name}.{index}@{domain}" if domain else None
        attributes.append({k: v for k, v in found.items() if v is not None})
    return units, attributes


CONTEXT_FIELDS = ("sessionId", "remoteAddress")  # Unleash's own fields; the rest are properties


def context(unit: str, attributes: dict[str, Any]) -> dict[str, Any]:
    """The Unleash context of a unit: its userId, its own fields, and the rest as properties."""
    found: dict[str, Any] = {"userId": unit}
    found.update((k, v) for k, v in attributes.items() if k in CONTEXT_FIELDS)
    found["properties"] = {k: v for k, v in attributes.items() if k not in CONTEXT_FIELDS}
    return found


@contextmanager
def bootstrapped(export: dict[str, Any]) -> Iterator[Any]:
    """An UnleashClient that holds ``export``, offline: bootstrapped, never initialized."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "features.json"
        path.write_text(json.dumps(export), encoding="utf-8")
        cache = FileCache("stagedroll-imports", directory=directory)
        cache.bootstrap_from_file(path)
        client = UnleashClient(
            url="http://127.0.0.1:9/never-fetched",
            app_name="stagedroll-imports",
            disable_metrics=True,
            disable_registration=True,
            cache=cache,
            cache_directory=directory,
            multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
        )
        if not client.unleash_bootstrapped:
            raise RuntimeError("the Unleash client did not take the export")
        missing = {f["name"] for f in export["features"]} - set(client.feature_definitions())
        if missing:
            raise RuntimeError(f"the Unleash client did not load {sorted(missing)}")
        yield client


def decide(
    export: dict[str, Any], units: list[str], attributes: list[dict[str, Any]]
) -> dict[str, str]:
    """Every flag's decisions for every unit, but those of RANDOM_FLAGS."""
    with bootstrapped(export) as client:
        return {
            flag["name"]: "".join(
                "1" if client.is_enabled(flag["name"], context(unit, found)) else "0"
                for unit, found in zip(units, attributes, strict=True)
            )
            for flag in export["features"]
            if flag["name"] not in RANDOM_FLAGS
        }


def header(notes: str) -> dict[str, Any]:
    """What a file says of how it was made."""
    return {
        "vendor": "unleash",
        "sdk": "UnleashClient",
        "version": version("UnleashClient"),
        "engine": version("yggdrasil-engine"),
        "python": platform.python_version(),
        "generated_by": GENERATED_BY,
        "notes": notes,
    }


def expected() -> dict[str, Any]:
    """The SDK's decisions for the flags of export.json (read as the client reads it)."""
    units, attributes = units_and_attributes()
    export = json.loads(EXPORT.read_text(encoding="utf-8"))
    flags = decide(export, units, attributes)
    return {**header(NOTES), "export": EXPORT.name, "random": list(RANDOM_FLAGS),
            "units": units, "attributes": attributes, "flags": flags}  # fmt: skip


def fuzz_constraint(draw: random.Random) -> dict[str, Any]:
    """One constraint: any operator, sometimes an odd value, inverted, or case-insensitive."""
    found: dict[str, Any]
    if draw.random() < 0.3:
        operator = draw.choice(["NUM_EQ", "NUM_GT", "NUM_GTE", "NUM_LT", "NUM_LTE"])
        found = {"contextName": "age", "operator": operator, "value": draw.choice(FUZZ_NUMBERS)}
    else:
        name = draw.choice([*FUZZ_TEXTS, "userId"])
        operator = draw.choice(["IN", "NOT_IN", "STR_STARTS_WITH", "STR_ENDS_WITH",
                                "STR_CONTAINS", "SEMVER_GT", "DATE_AFTER", "REGEX"])  # fmt: skip
        found = {"contextName": name, "operator": operator}
        if operator == "SEMVER_GT":
            found["value"] = draw.choice(["2.0.0", "2.0", "abc", ""])
        elif operator == "DATE_AFTER":
            found["value"] = draw.choice(["2024-01-01T00:00:00Z", "2024-01-01", "2024-13-01"])
        else:
            texts = FUZZ_TEXTS.get(name, ["u1", "u2", "u3"])
            found["values"] = draw.sample(texts, draw.randint(0, 2))
    found["inverted"] = draw.random() < 0.2
    found["caseInsensitive"] = draw.random() < 0.2
    return found


def fuzz_strategy(draw: random.Random) -> dict[str, Any]:
    """One strategy of any kind, with up to two constraints and maybe a segment."""
    kind = draw.choice(
        ["flexibleRollout"] * 4
        + [
            "default",
            "default",
            "userWithId",
            "gradualRolloutUserId",
            "gradualRolloutSessionId",
            "remoteAddress",
        ]
    )
    parameters: dict[str, str] = {}
    if kind == "flexibleRollout":
        percent = draw.choice([0, 1, 25, 50, 99, 100, draw.randint(0, 100)])
        stickiness = draw.choice(["default", "userId", "accountId", "sessionId"])
        parameters = {"rollout": str(percent), "stickiness": stickiness}
        if draw.random() < 0.9:
            parameters["groupId"] = draw.choice(["g1", "g2"])
    elif kind.startswith("gradual"):
        parameters = {"percentage": str(draw.randint(0, 100)), "groupId": draw.choice(["g1", "g2"])}
    elif kind == "userWithId":
        parameters = {"userIds": ",".join(draw.sample(["u1", "u2", "u3", "u4"], 2))}
    elif kind == "remoteAddress":
        parameters = {"IPs": "10.1.2.3"}
    count = draw.choice([0, 0, 1, 2])
    strategy: dict[str, Any] = {
        "name": kind,
        "parameters": parameters,
        "constraints": [fuzz_constraint(draw) for _ in range(count)],
    }
    segments = draw.sample([1, 2, 3], draw.choice([0, 0, 1]))
    if segments:
        strategy["segments"] = segments
    return strategy


def fuzz() -> dict[str, Any]:
    """The SDK's decisions for a seeded random export, which the file holds."""
    draw = random.Random(FUZZ_SEED)
    features = [
        {"name": f"f{i}", "enabled": draw.random() < 0.9,
         "strategies": [fuzz_strategy(draw) for _ in range(draw.randint(0, 3))]}
        for i in range(250)
    ]  # fmt: skip
    segments = [
        {"id": 1, "constraints": [fuzz_constraint(draw)]},
        {"id": 2, "constraints": [fuzz_constraint(draw), fuzz_constraint(draw)]},
    ]
    export = {"version": 2, "features": features, "segments": segments}
    units, attributes = [], []
    for i in range(250):
        units.append(draw.choice(["u1", "u2", "u3", "u4"]) if i < 20 else f"user-{i}")
        found = {
            "country": draw.choice(["DE", "AT", "US", "FR", "de"]),
            "plan": draw.choice(["pro", "free", "PRO"]),
            "age": draw.choice([10, 18, 30, 65, 70, 12.5, 5]),
            "email": draw.choice(["a@x", "b@y", "ab", "", "@x"]),
            "accountId": f"acc{draw.randint(0, 40)}",
            "sessionId": f"s{draw.randint(0, 999)}",
        }
        attributes.append({k: v for k, v in found.items() if draw.random() < 0.8})
    flags = decide(export, units, attributes)
    return {**header(FUZZ_NOTES), "seed": FUZZ_SEED, "export": export, "units": units,
            "attributes": attributes, "flags": flags}  # fmt: skip


def write(data: dict[str, Any], name: str) -> Path:
    """Write a file beside this script, one line per flag, so that a diff shows which changed."""
    head = {k: v for k, v in data.items() if k not in {"units", "attributes", "flags"}}
    lines = ["{"]
    lines += [f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in head.items()]
    lines.append(f'"units": {json.dumps(data["units"], ensure_ascii=False)},')
    lines.append(f'"attributes": {json.dumps(data["attributes"], ensure_ascii=False)},')
    flags = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in data["flags"].items()]
    lines.append('"flags": {\n' + ",\n".join(flags) + "\n}}")
    path = HERE / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    json.loads(path.read_text(encoding="utf-8"))  # the file must parse as written
    return path


def main() -> int:
    """Write expected.json and fuzz.json beside this script."""
    for data, name in ((expected(), "expected.json"), (fuzz(), "fuzz.json")):
        print(f"wrote {write(data, name).relative_to(HERE.parents[3])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
