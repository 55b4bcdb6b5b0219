"""Write golden cohort vectors from four vendors' own Python SDKs.

Each vendor's SDK evaluates the same percentage rollouts for the same units through its
public evaluation API, offline, and this script stores which units it served the "on"
variation. The project's tests read the JSON files only; they never import the SDKs.

Run it inside a throwaway venv made from requirements.txt beside it (see README.md):

    python tests/data/vendors/generate.py

It needs no network: every SDK reads flags from data or a local file, and metrics,
registration and events are off. Its output depends only on the SDK versions.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

from growthbook import GrowthBook  # type: ignore[import-not-found, unused-ignore]
from ldclient.client import LDClient  # type: ignore[import-not-found, unused-ignore]
from ldclient.config import Config as LDConfig  # type: ignore[import-not-found, unused-ignore]
from ldclient.context import Context  # type: ignore[import-not-found, unused-ignore]
from ldclient.integrations import Files  # type: ignore[import-not-found, unused-ignore]
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
from UnleashClient import UnleashClient  # type: ignore[import-not-found, unused-ignore]
from UnleashClient.cache import FileCache  # type: ignore[import-not-found, unused-ignore]
from UnleashClient.utils import (  # type: ignore[import-not-found, unused-ignore]
    InstanceAllowType,
)

HERE = Path(__file__).resolve().parent
GENERATED_BY = "tests/data/vendors/generate.py"

# The same flag keys for every vendor. The last one also gets a non-default group, seed,
# salt or bucketing key, where the vendor has one.
FLAGS = ("checkout", "new-search", "pricing-v2")
CUSTOM_FLAG = "pricing-v2"
PERCENTS = (0, 1, 25, 50, 99, 100)

# Ids from the vendors' own published test values: Unleash ("123", "gr1") -> 73 (and
# "999", whose published value is for group "groupX", not a case here), GrowthBook
# ("seed", "a", v2) -> 0.0505, LaunchDarkly (seed 61, "userKeyA") -> 0.098.
UPSTREAM_UNITS = ["123", "999", "a", "userKeyA"]
AWKWARD_UNITS = [
    "",
    "ünïcode-ß",
    "用户-7",
    "a:b",
    "a.b",
    "emoji-🙂",
    " padded ",
    "long-" + "0123456789" * 29 + "abcde",
]
UNITS = [f"user-{i}" for i in range(2000)] + AWKWARD_UNITS + UPSTREAM_UNITS

UNLEASH_CUSTOM_GROUP = "gr1"
GROWTHBOOK_CUSTOM_SEED = "seed"
LAUNCHDARKLY_SALTS: dict[str, str | None] = {
    "checkout": "5f8b2c1e9a7d4e3fb6c0a1d2e3f40516",
    "new-search": None,  # no "salt" in the flag JSON: the SDK's default applies
    "pricing-v2": "saltyA",
}
LAUNCHDARKLY_CUSTOM_SEED = 61
FLAGD_CUSTOM_BUCKET_BY: dict[str, Any] = {"cat": ["campaign-7:", {"var": "targetingKey"}]}


def bits(decisions: Iterable[bool]) -> str:
    """The decisions as a string of '0' and '1', in the order of the units."""
    return "".join("1" if decided else "0" for decided in decisions)


def document(vendor: str, sdk: str, notes: str, cases: list[dict[str, Any]]) -> dict[str, Any]:
    """One vendor's file, with the SDK version read from the installed distribution."""
    return {
        "vendor": vendor,
        "sdk": sdk,
        "version": version(sdk),
        "python": platform.python_version(),
        "generated_by": GENERATED_BY,
        "notes": notes,
        "units": UNITS,
        "cases": cases,
    }


# Unleash ---------------------------------------------------------------------------------

UNLEASH_NOTES = (
    "UnleashClient evaluates with its compiled engine (yggdrasil-engine); each case is a "
    "toggle named after the flag with one flexibleRollout strategy (rollout = percent as a "
    "string, stickiness = userId, groupId as recorded), bootstrapped from a dict into a "
    "FileCache in a temporary directory, with metrics and registration off and the client "
    "never initialized, so it never fetches. Context {'userId': unit}; "
    "client.is_enabled(flag, context). Formula (Unleash's documented one, which every "
    "decision here agrees with): murmur3_x86_32(f'{groupId}:{userId}', seed 0) as unsigned, "
    "% 100 + 1, on iff that is <= percent: an inclusive check on a 1..100 bucket, so 0 is "
    "off for all, 100 on for all, and the resolution is 1 %. The key is hashed as UTF-8 "
    "bytes. The empty userId is not treated as missing: it is hashed as f'{groupId}:' like "
    "any other id (so '' is on at 100 and, e.g., on at 99 but off at 50 for 'checkout')."
)


def unleash_features(flag: str, group_id: str, percent: int) -> dict[str, Any]:
    """The client features payload with one flexibleRollout toggle."""
    strategy = {
        "name": "flexibleRollout",
        "parameters": {"rollout": str(percent), "stickiness": "userId", "groupId": group_id},
    }
    toggle = {"name": flag, "type": "release", "enabled": True, "strategies": [strategy]}
    return {"version": 1, "features": [toggle]}


def unleash_case(flag: str, group_id: str, percent: int) -> dict[str, Any]:
    """One case evaluated by a fresh, bootstrapped, offline UnleashClient."""
    with tempfile.TemporaryDirectory() as directory:
        cache = FileCache("stagedroll-vectors", directory=directory)
        cache.bootstrap_from_dict(unleash_features(flag, group_id, percent))
        client = UnleashClient(
            url="http://127.0.0.1:9/never-fetched",
            app_name="stagedroll-vectors",
            disable_metrics=True,
            disable_registration=True,
            cache=cache,
            cache_directory=directory,
            multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
        )
        if not client.unleash_bootstrapped:
            raise RuntimeError("the Unleash client did not take the bootstrapped features")
        enabled = bits(client.is_enabled(flag, {"userId": unit}) for unit in UNITS)
    return {"flag": flag, "group_id": group_id, "percent": percent, "enabled": enabled}


def unleash() -> dict[str, Any]:
    """Every Unleash case: the flags with their own name as group, and one custom group."""
    configs = [(flag, flag) for flag in FLAGS] + [(CUSTOM_FLAG, UNLEASH_CUSTOM_GROUP)]
    cases = [
        unleash_case(flag, group_id, percent) for flag, group_id in configs for percent in PERCENTS
    ]
    return document("unleash", "UnleashClient", UNLEASH_NOTES, cases)


# GrowthBook ------------------------------------------------------------------------------

GROWTHBOOK_NOTES = (
    "growthbook evaluates a feature whose only rule forces true with coverage = percent/100, "
    "hashAttribute = id and an explicit hashVersion; the rule carries a seed only where "
    "seed differs from the feature key (the SDK then uses the key: rule.seed or key). "
    "Attributes {'id': unit}; gb.is_on(feature). Read from growthbook/core.py "
    "(_isIncludedInRollout, gbhash, fnv1a32): v2 n = fnv1a32(str(fnv1a32(seed + id))) % "
    "10000 / 10000, v1 n = fnv1a32(id + seed) % 1000 / 1000 (id first, no separator); "
    "on iff n < coverage: a strict check ('half-open, like inRange'), so a coverage of "
    "k/10000 holds exactly k buckets; coverage 0 is off and a missing hashVersion means v1. "
    "fnv1a32 runs over the string's UTF-16 code units (JavaScript charCodeAt), not its "
    "UTF-8 bytes: the two agree for ASCII only (see 'ünïcode-ß', '用户-7', 'emoji-🙂'; the "
    "emoji is two surrogate units). An empty id is never included: off at every coverage, "
    "1.0 included. Resolution: 0.01 % (v2), 0.1 % (v1)."
)


def growthbook_case(feature: str, seed: str, hash_version: int, percent: int) -> dict[str, Any]:
    """One case evaluated by a GrowthBook instance that holds the feature as local data."""
    coverage = percent / 100
    rule: dict[str, Any] = {
        "force": True,
        "coverage": coverage,
        "hashAttribute": "id",
        "hashVersion": hash_version,
    }
    if seed != feature:
        rule["seed"] = seed
    gb = GrowthBook(features={feature: {"defaultValue": False, "rules": [rule]}})
    decisions: list[bool] = []
    for unit in UNITS:
        gb.set_attributes({"id": unit})
        decisions.append(gb.is_on(feature))
    gb.destroy()
    return {
        "feature": feature,
        "seed": seed,
        "hash_version": hash_version,
        "coverage": coverage,
        "enabled": bits(decisions),
    }


def growthbook() -> dict[str, Any]:
    """Every GrowthBook case: hash versions 2 and 1, default seeds and one custom seed."""
    configs = [(flag, flag) for flag in FLAGS] + [(CUSTOM_FLAG, GROWTHBOOK_CUSTOM_SEED)]
    cases = [
        growthbook_case(feature, seed, hash_version, percent)
        for hash_version in (2, 1)
        for feature, seed in configs
        for percent in PERCENTS
    ]
    return document("growthbook", "growthbook", GROWTHBOOK_NOTES, cases)


# LaunchDarkly ----------------------------------------------------------------------------

LAUNCHDARKLY_NOTES = (
    "launchdarkly-server-sdk evaluates a flag that is on, with variations [true, false] and "
    "a fallthrough rollout (kind rollout, bucketBy key, variations "
    "[{variation 0, weight}, {variation 1, 100000 - weight}], weights in 1/1000 of a "
    "percent), loaded by the Files data source from a JSON file in a temporary directory "
    "(send_events off, diagnostics off, no stream or poll). "
    "client.variation_detail(flag, Context.create(unit), False), whose value is what "
    "client.variation returns; its reason shows that only the empty key errs. Read from "
    "ldclient/impl/evaluator_common.py (_bucket_context, _variation_index_for_context): "
    "hash key f'{flag_key}.{salt}.{key}', or f'{seed}.{key}' when the rollout has a seed "
    "(flag key and salt then unused); bucket = int(sha1(utf8).hexdigest()[:15], 16) / "
    "float(0xFFFFFFFFFFFFFFF); variation i is served iff bucket < (sum of weights up to and "
    "including i) / 100000, a strict check, and a bucket past the last sum goes to the "
    "last variation. A flag JSON without 'salt' gets salt '' (opt_str(data, 'salt') or ''), "
    "so the hash key is f'{flag_key}..{key}'; the case records salt ''. Context.create('') "
    "is an invalid context (empty key), so the SDK returns the default (false) for it at "
    "every weight. Resolution: 0.001 %."
)


def launchdarkly_flag(flag: str, salt: str | None, seed: int | None, weight: int) -> dict[str, Any]:
    """A flag as LaunchDarkly's flag JSON spells it, served by a fallthrough rollout."""
    rollout: dict[str, Any] = {
        "kind": "rollout",
        "bucketBy": "key",
        "variations": [
            {"variation": 0, "weight": weight},
            {"variation": 1, "weight": 100000 - weight},
        ],
    }
    if seed is not None:
        rollout["seed"] = seed
    data: dict[str, Any] = {
        "key": flag,
        "version": 1,
        "on": True,
        "variations": [True, False],
        "offVariation": 1,
        "fallthrough": {"rollout": rollout},
        "targets": [],
        "contextTargets": [],
        "rules": [],
        "prerequisites": [],
        "trackEvents": False,
        "trackEventsFallthrough": False,
        "clientSide": False,
        "deleted": False,
    }
    if salt is not None:
        data["salt"] = salt
    return data


def launchdarkly_decision(client: Any, flag: str, unit: str) -> bool:
    """Whether the client serves true; only the empty key may end in an error (the default)."""
    detail = client.variation_detail(flag, Context.create(unit), False)
    if detail.reason.get("kind") == "ERROR" and unit != "":
        raise RuntimeError(f"LaunchDarkly failed on {flag} for {unit!r}: {detail.reason}")
    return detail.value is True


def launchdarkly_case(
    flag: str, salt: str | None, seed: int | None, percent: int
) -> dict[str, Any]:
    """One case evaluated by a fresh LDClient that reads its flag from a local file."""
    weight = percent * 1000
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "flags.json"
        flags = {"flags": {flag: launchdarkly_flag(flag, salt, seed, weight)}}
        path.write_text(json.dumps(flags), encoding="utf-8")
        config = LDConfig(
            sdk_key="stagedroll-vectors-offline",
            update_processor_class=Files.new_data_source(paths=[str(path)]),
            send_events=False,
            diagnostic_opt_out=True,
        )
        client = LDClient(config=config)
        try:
            if not client.is_initialized():
                raise RuntimeError("the LaunchDarkly client did not load the flag file")
            decisions = [launchdarkly_decision(client, flag, unit) for unit in UNITS]
        finally:
            client.close()
    case: dict[str, Any] = {"flag": flag, "salt": salt or "", "weight": weight}
    if seed is not None:
        case["seed"] = seed
    case["enabled"] = bits(decisions)
    return case


def launchdarkly() -> dict[str, Any]:
    """Every LaunchDarkly case: explicit salts, a missing salt, and one rollout seed."""
    configs: list[tuple[str, str | None, int | None]] = [
        (flag, LAUNCHDARKLY_SALTS[flag], None) for flag in FLAGS
    ]
    configs.append((CUSTOM_FLAG, LAUNCHDARKLY_SALTS[CUSTOM_FLAG], LAUNCHDARKLY_CUSTOM_SEED))
    cases = [
        launchdarkly_case(flag, salt, seed, percent)
        for flag, salt, seed in configs
        for percent in PERCENTS
    ]
    return document("launchdarkly", "launchdarkly-server-sdk", LAUNCHDARKLY_NOTES, cases)


# flagd -----------------------------------------------------------------------------------

FLAGD_NOTES = (
    "openfeature-provider-flagd runs the in-process resolver on an offline flag file (no "
    "gRPC connection); its fractional operator comes from openfeature-flagd-core "
    "(openfeature/contrib/tools/flagd/core/targeting/custom_ops.py), version recorded in "
    "'flagd_core'. Each case is a boolean flag with variants on/off, defaultVariant off and "
    "targeting {'fractional': [['on', p], ['off', 100 - p]]}, or with a custom bucketing "
    "expression as the first argument where the case has 'bucket_by'; "
    "client.get_boolean_details(flag, False, EvaluationContext(targeting_key=unit)), "
    "whose value is what get_boolean_value returns, after set_provider_and_wait (without "
    "the wait, the first evaluations can return the default before the file is loaded). "
    "Formula of this version: with the shorthand (no bucketing expression) the bucketing "
    "value is the two-element list [flag_key, targeting_key], not the concatenated string; "
    "with an expression it is the expression's value. That value goes through "
    "normalize_numbers and is encoded as canonical CBOR (cbor2.dumps(value, "
    "canonical=True)); hash = mmh3.hash(cbor_bytes, signed=False) (murmur3_x86_32, seed "
    "0); bucket = (hash * total_weight) >> 32; the first variant whose cumulative weight "
    "is > bucket wins (bucket < range_end, strict), so at a boundary the later variant wins "
    "and a weight of 0 never wins. So the issue's mmh3(flag_key + unit) is NOT what this "
    "version hashes: CBOR of a list is 0x82, then each string as a CBOR text string (major "
    "type 3 with its UTF-8 length), then its UTF-8 bytes. An empty targeting key reaches "
    "the targeting as null (the OpenFeature SDK merges contexts with "
    "'ctx2.targeting_key or self.targeting_key'): the shorthand then fails (fractional "
    "returns null, logged) and the flag resolves to its defaultVariant, off at every "
    "percent, 100 included; a bucketing expression sees null, which JSON-logic 'cat' "
    "renders as 'null' (here 'campaign-7:null'). Resolution: 1/total_weight (1 % here)."
)


# The file watcher of the in-process resolver wakes every deadline_ms to reread the file.
# An hour keeps it asleep until this script has exited: the files never change.
FLAGD_FILE_POLL_MS = 3_600_000


@contextmanager
def flagd_client(path: Path, flag: str, targeting: dict[str, Any]) -> Iterator[Any]:
    """An OpenFeature client whose provider is flagd in-process, on a file with one flag."""
    flags = {
        "flags": {
            flag: {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "off",
                "targeting": targeting,
            }
        }
    }
    path.write_text(json.dumps(flags), encoding="utf-8")
    provider = FlagdProvider(
        resolver_type=ResolverType.IN_PROCESS,
        offline_flag_source_path=str(path),
        deadline_ms=FLAGD_FILE_POLL_MS,
    )
    api.set_provider_and_wait(provider)
    try:
        yield api.get_client()
    finally:
        api.shutdown()


def flagd_case(
    path: Path, flag: str, bucket_by: dict[str, Any] | None, percent: int
) -> dict[str, Any]:
    """One case evaluated through the OpenFeature client, its flag file written to path."""
    fractions: list[Any] = [["on", percent], ["off", 100 - percent]]
    arguments = fractions if bucket_by is None else [bucket_by, *fractions]
    decisions: list[bool] = []
    with flagd_client(path, flag, {"fractional": arguments}) as client:
        for unit in UNITS:
            details = client.get_boolean_details(flag, False, EvaluationContext(targeting_key=unit))
            if details.error_code is not None:
                raise RuntimeError(f"flagd failed on {flag} for {unit!r}: {details.error_message}")
            decisions.append(details.value is True)
    enabled = bits(decisions)
    case: dict[str, Any] = {"flag": flag, "percent": percent}
    if bucket_by is not None:
        case["bucket_by"] = bucket_by
    case["enabled"] = enabled
    return case


def flagd() -> dict[str, Any]:
    """Every flagd case: the default bucketing key, and one custom bucketing expression."""
    configs: list[tuple[str, dict[str, Any] | None]] = [(flag, None) for flag in FLAGS]
    configs.append((CUSTOM_FLAG, FLAGD_CUSTOM_BUCKET_BY))
    runs = [(flag, bucket_by, percent) for flag, bucket_by in configs for percent in PERCENTS]
    with tempfile.TemporaryDirectory() as directory:
        cases = [
            flagd_case(Path(directory) / f"flags-{index}.json", flag, bucket_by, percent)
            for index, (flag, bucket_by, percent) in enumerate(runs)
        ]
    result = document("flagd", "openfeature-provider-flagd", FLAGD_NOTES, cases)
    result["flagd_core"] = version("openfeature-flagd-core")
    result["openfeature_sdk"] = version("openfeature-sdk")
    return result


VENDORS: dict[str, Callable[[], dict[str, Any]]] = {
    "unleash": unleash,
    "growthbook": growthbook,
    "launchdarkly": launchdarkly,
    "flagd": flagd,
}


def write(name: str, data: dict[str, Any]) -> Path:
    """Write one vendor's file: one line per case, so a diff shows which case changed."""
    header = {key: value for key, value in data.items() if key not in {"units", "cases"}}
    lines = ["{"]
    lines.extend(
        f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)},"
        for key, value in header.items()
    )
    lines.append(f'"units": {json.dumps(data["units"], ensure_ascii=False)},')
    lines.append('"cases": [')
    cases = [json.dumps(case, ensure_ascii=False) for case in data["cases"]]
    lines.append(",\n".join(cases))
    lines.append("]}")
    path = HERE / f"{name}.json"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    json.loads(path.read_text(encoding="utf-8"))  # the file must parse as written
    return path


class LogCounter(logging.Handler):
    """Counts the SDKs' log lines, so that each is printed once with its count."""

    def __init__(self) -> None:
        """Start with no lines."""
        super().__init__(logging.WARNING)
        self.lines: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        """Count one line."""
        self.lines[f"{record.levelname} {record.name}: {record.getMessage()}"] += 1


def main(argv: list[str]) -> int:
    """Write every vendor's file, or only those named on the command line."""
    names = argv or list(VENDORS)
    unknown = sorted(set(names) - set(VENDORS))
    if unknown:
        print(f"unknown vendor(s): {', '.join(unknown)}; known: {', '.join(VENDORS)}")
        return 2
    for name in names:
        counter = LogCounter()
        logging.basicConfig(handlers=[counter], level=logging.WARNING, force=True)
        path = write(name, VENDORS[name]())
        print(f"wrote {path.relative_to(HERE.parents[2])}")
        for line, count in sorted(counter.lines.items()):
            print(f"  {count} x {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
