"""Hostile review of the per-rollout bucketing schemes and of ``stagedroll import`` (issue 20).

Each test is an attack, through the public API, on what the bucketing schemes or the import
command reach: a policy that validates but misbehaves, a reload or an operator's transition
while a scheme is live, overrides and sinks (which must take a rollout off the ``direct``
fast path), several processes on one SQLite store, long and hostile unit ids, ``stagedroll
explain`` against ``decide``, the files ``stagedroll import`` writes, its ``--json`` output,
and the TOML it writes. Each bug it found (a name or key ending in a newline, control and
invisible characters in the TOML, a partial ``--out`` file, an empty GrowthBook seed, a seed
past 64 bits, the schema's bound on the seed) was fixed; the tests stay as regression tests.

The vendors' formulas are written out here, apart from the library's own code, so that each
path of a rollout is compared with the vendor's answer and not only with itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mmh3
import pytest
import tomllib
from hypothesis import given, settings
from hypothesis import strategies as st

from stagedroll import (
    PolicyError,
    Reason,
    Rollouts,
    Status,
    load_policy,
    unit_key,
)
from stagedroll.cli import main
from stagedroll.importers import Imported, Unmapped, from_flagd
from stagedroll.testing import RecordingSink, override

# -- the schemes, and the vendors' formulas written out --------------------------------------

SCHEMES: dict[str, dict[str, Any]] = {
    "unleash": {"scheme": "unleash", "group_id": "gr1"},
    "growthbook": {"scheme": "growthbook", "seed": "seed-a", "hash_version": 2},
    "growthbook-v1": {"scheme": "growthbook", "seed": "seed-b", "hash_version": 1},
    "flagd": {"scheme": "flagd", "flag_key": "new-checkout"},
    "launchdarkly": {"scheme": "launchdarkly", "flag_key": "hashKey", "salt": "saltyA"},
    "launchdarkly-seed": {"scheme": "launchdarkly", "seed": 61},
}
"""A ``bucketing`` table per scheme (LaunchDarkly with a salt, and with a rollout seed)."""

STEPS = {"unleash": 1, "growthbook": 0.01, "growthbook-v1": 0.1, "flagd": 1}
"""Each scheme's finest percent step (LaunchDarkly's: 0.001)."""

UNITS = [f"user-{i}" for i in range(300)] + ["123", "999", "", "ünïcode-ß", "用户-7", "emoji-🙂"]
OFF = {"enabled": False}  # no health gate: the decisions alone are under test


def _fnv(data: str) -> int:
    """FNV-1a (32 bits) over the UTF-16 code units of ``data``, as GrowthBook's SDKs hash."""
    raw = data.encode("utf-16-le")
    h = 0x811C9DC5
    for i in range(0, len(raw), 2):
        h = ((h ^ (raw[i] | raw[i + 1] << 8)) * 0x01000193) & 0xFFFFFFFF
    return h


def _cbor_text(text: str) -> bytes:
    data = text.encode("utf-8")
    size = len(data)
    if size < 24:
        return bytes([0x60 + size]) + data
    if size < 256:
        return bytes([0x78, size]) + data
    return bytes([0x79]) + size.to_bytes(2, "big") + data


def vendor_says(table: dict[str, Any], name: str, unit: str, percent: int) -> bool:
    """Whether the vendor's SDK puts ``unit`` in the rollout at ``percent`` (a whole percent),
    from the formulas its source holds (see ``docs/bucketing.md``)."""
    scheme = table["scheme"]
    if scheme == "unleash":
        group = table.get("group_id", name)
        return mmh3.hash(f"{group}:{unit}".encode(), 0, False) % 100 + 1 <= percent
    if scheme == "growthbook":
        if not unit:
            return False
        seed = table.get("seed", name)
        if table.get("hash_version", 1) == 2:
            n = _fnv(str(_fnv(seed + unit))) % 10_000 / 10_000
        else:
            n = _fnv(unit + seed) % 1_000 / 1_000
        return n < percent / 100
    if scheme == "flagd":
        if not unit:
            return False
        data = b"\x82" + _cbor_text(table.get("flag_key", name)) + _cbor_text(unit)
        return (mmh3.hash(data, 0, False) * 100) >> 32 < percent
    assert scheme == "launchdarkly"
    if not unit:
        return False
    seed = table.get("seed")
    prefix = f"{seed}" if seed is not None else f"{table.get('flag_key', name)}.{table['salt']}"
    h = int(hashlib.sha1(f"{prefix}.{unit}".encode()).hexdigest()[:15], 16)
    return h / 0xFFFFFFFFFFFFFFF < percent * 1000 / 100_000


def one_rollout(table: dict[str, Any], *percents: float, **more: Any) -> dict[str, Any]:
    """A policy of rollout ``r`` with the ``bucketing`` table and a stage per percent."""
    stages = [{"name": f"s{i}", "percent": p} for i, p in enumerate(percents)]
    return {"rollouts": {"r": {"bucketing": table, "stages": stages, "health": OFF, **more}}}


def toml_of(policy: dict[str, Any]) -> str:
    """``policy`` as a TOML file (through the importers' writer, tested below)."""
    return Imported("flagd", policy).to_toml()


def write(path: Path, text: str) -> None:
    """Write ``text``; make sure the modification time moves (coarse file systems)."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text, encoding="utf-8")
    if path.stat().st_mtime_ns == before:
        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


def until(condition: Callable[[], bool], rollouts: Rollouts) -> None:
    """Call ``status`` (which looks at the policy file) until ``condition`` holds.

    The deadline is for liveness only: the change is read at the first call after it.
    """
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "the change was never read"
        time.sleep(0.005)
        rollouts.status("r")


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the command line in this process; its exit code, stdout and stderr."""
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(name="clean_env")
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``STAGEDROLL_*`` variable of the test run reaches the command line."""
    for name in ("STAGEDROLL_POLICY", "STAGEDROLL_STORE", "STAGEDROLL_ENV", "STAGEDROLL_KILL"):
        monkeypatch.delenv(name, raising=False)


# -- a policy that validates must behave ------------------------------------------------------


class TestBucketingInAPolicy:
    @pytest.mark.parametrize("scheme", list(STEPS))
    def test_a_stage_or_environment_finer_than_the_scheme_is_refused(self, scheme: str) -> None:
        """A stage percent, or an environment's fixed percent, finer than the scheme's step is
        refused at its path, naming the scheme and its step; one step is accepted."""
        step = STEPS[scheme]
        fine = step / 2
        with pytest.raises(PolicyError) as caught:
            load_policy(one_rollout(SCHEMES[scheme], fine, environments={"prod": fine}))
        found = {p.path: p.message for p in caught.value.problems}
        assert set(found) == {"rollouts.r.stages[0].percent", "rollouts.r.environments.prod"}
        for message in found.values():
            assert "finer than" in message
            assert SCHEMES[scheme]["scheme"] in message
            assert f"steps of {step:g} %" in message
        load_policy(one_rollout(SCHEMES[scheme], step, environments={"prod": step}))

    def test_launchdarkly_takes_thousandths_and_no_finer(self) -> None:
        load_policy(one_rollout(SCHEMES["launchdarkly"], 12.345))
        with pytest.raises(PolicyError, match=r"steps of 0\.001 %"):
            load_policy(one_rollout(SCHEMES["launchdarkly"], 12.3455))

    @pytest.mark.parametrize(
        ("table", "path"),
        [
            ({"scheme": "unleash", "salt": "x"}, "bucketing.salt"),
            ({"scheme": "flagd", "group_id": "x"}, "bucketing.group_id"),
            ({"scheme": "growthbook", "seed": 7}, "bucketing.seed"),
            ({"scheme": "launchdarkly", "seed": "7"}, "bucketing.seed"),
            ({"scheme": "launchdarkly"}, "bucketing.salt"),
            ({"scheme": "growthbook", "hash_version": 3}, "bucketing.hash_version"),
            ({"scheme": "growthbook", "hash_version": 2.0}, "bucketing.hash_version"),
            ({"scheme": "stagedroll", "seed": "x"}, "bucketing.seed"),
            ({"scheme": "Unleash"}, "bucketing.scheme"),
            ({"scheme": "unleash", "group_id": "g" * 1025}, "bucketing.group_id"),
            ({"scheme": "growthbook", "seed": "s" * 1025}, "bucketing.seed"),
            ({"scheme": "unleash", "extra": 1}, "bucketing.extra"),
        ],
    )
    def test_parameters_that_do_not_belong_are_refused(
        self, table: dict[str, Any], path: str
    ) -> None:
        """Each parameter belongs to its schemes; a wrong type, length or name is refused."""
        with pytest.raises(PolicyError) as caught:
            load_policy(one_rollout(table, 25))
        assert any(p.path == f"rollouts.r.{path}" for p in caught.value.problems), [
            (p.path, p.message) for p in caught.value.problems
        ]

    def test_a_salt_beside_another_scheme_is_refused(self) -> None:
        """``salt`` salts stagedroll's own hash only: beside another scheme it would be a
        parameter that silently does nothing."""
        with pytest.raises(PolicyError, match="salt"):
            load_policy(one_rollout(SCHEMES["unleash"], 25, salt="pinned"))
        load_policy(one_rollout({"scheme": "stagedroll"}, 25, salt="pinned"))

    def test_an_empty_growthbook_seed_is_the_default_or_refused(self) -> None:
        """GrowthBook's SDKs read an empty rule seed as the feature's key: a policy that copies
        ``seed = ""`` from a rule must keep GrowthBook's cohort, or be refused."""
        try:
            empty = load_policy(one_rollout({"scheme": "growthbook", "seed": ""}, 25))
        except PolicyError:
            return
        default = load_policy(one_rollout({"scheme": "growthbook"}, 25))
        with Rollouts(empty) as a, Rollouts(default) as b:
            assert [a.enabled("r", u) for u in UNITS] == [b.enabled("r", u) for u in UNITS]

    def test_a_huge_launchdarkly_seed_is_refused_or_works(self) -> None:
        """A policy built in code with a 5,000-digit seed: refused as a ``PolicyError``, or a
        ``Rollouts`` that decides. Never a ``ValueError`` when the rollouts are built."""
        policy = one_rollout({"scheme": "launchdarkly", "seed": 10**5000}, 25)
        try:
            loaded = load_policy(policy)
        except PolicyError:
            return
        with Rollouts(loaded) as rollouts:
            assert rollouts.decide("r", "user-1").reason in (
                Reason.IN_COHORT,
                Reason.OUT_OF_COHORT,
            )

    def test_the_schema_names_the_schemes_and_refuses_unknown_parameters(
        self, capsys: pytest.CaptureFixture[str], clean_env: None
    ) -> None:
        code, out, _ = cli(capsys, "schema")
        assert code == 0
        bucketing = json.loads(out)["$defs"]["Bucketing"]
        assert bucketing["additionalProperties"] is False
        assert bucketing["required"] == ["scheme"]
        assert bucketing["properties"]["scheme"]["enum"] == [
            "stagedroll", "unleash", "growthbook", "flagd", "launchdarkly",
        ]  # fmt: skip
        assert set(bucketing["properties"]) == {
            "scheme", "group_id", "seed", "hash_version", "flag_key", "salt", "template",
        }  # fmt: skip

    def test_the_schema_bounds_the_seed_as_the_policy_does(
        self, capsys: pytest.CaptureFixture[str], clean_env: None
    ) -> None:
        _, out, _ = cli(capsys, "schema")
        seed = json.loads(out)["$defs"]["Bucketing"]["properties"]["seed"]
        texts = [branch for branch in seed["anyOf"] if branch.get("type") == "string"]
        assert texts == [{"type": "string", "maxLength": 1024}]


# -- every path of a live rollout answers as the vendor -------------------------------------


def answers(rollouts: Rollouts, units: list[str], attributes: dict[str, object] | None = None
            ) -> dict[str, list[bool]]:  # fmt: skip
    """Each decision path's answers for ``units``: ``enabled``, ``decide``, a guard, ``track``."""
    guard = rollouts.guard("r", fallback=lambda u: False, unit=lambda u: u)(lambda u: True)
    tracked = []
    for unit in units:
        with rollouts.track("r", unit, attributes) as decision:
            tracked.append(decision.enabled)
    return {
        "enabled": [rollouts.enabled("r", u, attributes) for u in units],
        "decide": [rollouts.decide("r", u, attributes).enabled for u in units],
        "guard": [guard(u) for u in units] if attributes is None else tracked,
        "track": tracked,
    }


AT_HALF = {name: Rollouts(one_rollout(table, 50)) for name, table in SCHEMES.items()}
"""A rollout at 50 % per scheme, built once for the property test below."""


class TestLiveRollouts:
    @pytest.mark.parametrize("scheme", list(SCHEMES))
    def test_every_path_answers_as_the_vendor_through_the_operators_moves(
        self, scheme: str
    ) -> None:
        """Advance, kill, roll back, unfreeze and complete: after each, every path gives the
        vendor's answer at the stage in force (none when killed, all when complete)."""
        table = SCHEMES[scheme]
        with Rollouts(one_rollout(table, 1, 25, 50, 99)) as rollouts:

            def check(percent: int | None, everyone: bool | None = None) -> None:
                want = (
                    [everyone] * len(UNITS)
                    if everyone is not None
                    else [vendor_says(table, "r", u, percent or 0) for u in UNITS]
                )
                for path, got in answers(rollouts, UNITS).items():
                    assert got == want, (scheme, percent, path)

            check(1)
            rollouts.advance("r")
            rollouts.advance("r")
            check(50)
            rollouts.kill("r", reason="incident")
            check(None, everyone=False)
            rollouts.rollback("r", to="s1")
            check(25)
            rollouts.unfreeze("r")
            rollouts.advance("r")
            rollouts.advance("r")
            check(99)
            rollouts.complete("r")
            check(None, everyone=True)
            assert rollouts.failures.count() == 0

    @pytest.mark.parametrize("scheme", list(SCHEMES))
    def test_environments_fix_the_percent_in_the_schemes_cut(self, scheme: str) -> None:
        """An environment that fixes the percent answers at the scheme's cut; one that is
        off, or not listed, answers off."""
        table = SCHEMES[scheme]
        policy = one_rollout(table, 1, environments={"prod": 25, "dev": "off", "qa": "stages"})
        for env, percent in (("prod", 25), ("dev", 0), ("qa", 1)):
            with Rollouts(policy, environment=env) as rollouts:
                want = [vendor_says(table, "r", u, percent) for u in UNITS]
                for path, got in answers(rollouts, UNITS).items():
                    assert got == want, (scheme, env, path)
        with pytest.raises(PolicyError):
            Rollouts(policy, environment="staging")  # not declared: refused

    @pytest.mark.parametrize("scheme", list(SCHEMES))
    def test_bucket_by_places_the_attribute_with_the_scheme(self, scheme: str) -> None:
        """``bucket_by`` with a scheme: the attribute is the vendor's unit, whatever the id;
        without the attribute there is no unit (off)."""
        table = SCHEMES[scheme]
        with Rollouts(one_rollout(table, 50, bucket_by="tenant")) as rollouts:
            for tenant in UNITS[:60]:
                want = vendor_says(table, "r", tenant, 50)
                for path, got in answers(rollouts, ["anyone"], {"tenant": tenant}).items():
                    assert got == [want], (scheme, tenant, path)
            decision = rollouts.decide("r", "anyone", {"other": "x"})
            assert (decision.enabled, decision.reason) == (False, Reason.NO_UNIT)

    @pytest.mark.parametrize("scheme", list(SCHEMES))
    def test_overrides_take_the_rollout_off_the_direct_path(self, scheme: str) -> None:
        """``override`` (of one ``Rollouts``, of every one, of some units) wins over the
        scheme on ``enabled``'s fast path too; leaving it gives the scheme's answer back."""
        table = SCHEMES[scheme]
        want = [vendor_says(table, "r", u, 25) for u in UNITS]
        with Rollouts(one_rollout(table, 25)) as rollouts:
            outside = next(u for u, w in zip(UNITS, want, strict=True) if not w)
            inside = next(u for u, w in zip(UNITS, want, strict=True) if w)
            with override(rollouts, "r", True):
                assert all(rollouts.enabled("r", u) for u in UNITS)
                assert rollouts.decide("r", outside).reason is Reason.OVERRIDE
            with override(None, "r", False):
                assert not any(rollouts.enabled("r", u) for u in UNITS)
            with (
                override(rollouts, "r", True, units=[outside]),
                override(rollouts, "r", False, units=[inside]),
            ):
                assert rollouts.enabled("r", outside) is True
                assert rollouts.enabled("r", inside) is False
                others = [u for u in UNITS if u not in (outside, inside)]
                assert [rollouts.enabled("r", u) for u in others] == [
                    w for u, w in zip(UNITS, want, strict=True) if u not in (outside, inside)
                ]
            assert [rollouts.enabled("r", u) for u in UNITS] == want
        # A Rollouts built while an override of every Rollouts is active is forced at once.
        with override(None, "r", True), Rollouts(one_rollout(table, 25)) as late:
            assert all(late.enabled("r", u) for u in UNITS)

    @pytest.mark.parametrize("scheme", list(SCHEMES))
    def test_the_kill_switch_of_the_environment_turns_the_direct_path_off(
        self, scheme: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``$STAGEDROLL_KILL`` names the rollout: off on every path, killed or not in the
        store, whatever the scheme says of the unit."""
        monkeypatch.setenv("STAGEDROLL_KILL", "other,r")
        with Rollouts(one_rollout(SCHEMES[scheme], 100)) as rollouts:
            for path, got in answers(rollouts, UNITS).items():
                assert not any(got), path
            assert rollouts.decide("r", "user-1").reason is Reason.KILLED

    @pytest.mark.parametrize("scheme", list(SCHEMES))
    def test_a_sink_sees_every_call_on_the_schemes_arm(self, scheme: str) -> None:
        """A ``RecordingSink`` on a scheme's rollout: each guarded call is recorded, on the
        arm the vendor's answer names, and ``enabled`` still answers as the vendor."""
        table = SCHEMES[scheme]
        want = [vendor_says(table, "r", u, 25) for u in UNITS]
        with Rollouts(one_rollout(table, 25)) as rollouts:
            guard = rollouts.guard("r", fallback=lambda u: "old", unit=lambda u: u)(lambda u: "new")
            with RecordingSink(rollouts) as sink:
                assert [guard(u) == "new" for u in UNITS] == want
                assert [rollouts.enabled("r", u) for u in UNITS] == want
            assert len(sink.outcomes) == len(UNITS)
            assert sink.units("r", enabled=True) == {
                u for u, w in zip(UNITS, want, strict=True) if w
            }
            assert [rollouts.enabled("r", u) for u in UNITS] == want  # detached: fast again

    @settings(max_examples=150, deadline=None)
    @given(
        st.sampled_from(list(SCHEMES)),
        st.lists(st.text(max_size=40) | st.integers(), min_size=1, max_size=6),
    )
    def test_enabled_decide_and_the_scheme_agree_on_any_unit(
        self, scheme: str, units: list[object]
    ) -> None:
        """Any text (lone surrogates and NUL too) or int: ``enabled`` (the direct path),
        ``decide`` and the policy's scheme agree, and nothing fails inside stagedroll."""
        rollouts = AT_HALF[scheme]
        placed = rollouts.policy.rollouts["r"].scheme("r")
        for unit in units:
            key = unit_key(unit)
            decision = rollouts.decide("r", unit)
            assert decision.bucket == placed.position(key)
            assert decision.enabled is (placed.position(key) < placed.cut(50))
            assert rollouts.enabled("r", unit) is decision.enabled
        assert rollouts.failures.count() == 0

    @pytest.mark.parametrize("scheme", list(SCHEMES))
    def test_long_ids_get_an_answer_within_the_schemes_bound(self, scheme: str) -> None:
        """Ids of 1,025 characters to 1 MB get an answer on every path. GrowthBook's hash runs
        in Python: past 1,024 characters (emoji too, two UTF-16 units each) its units are
        never in, so a hostile id costs no more than a 1,024-character one."""
        with Rollouts(one_rollout(SCHEMES[scheme], 100)) as rollouts:
            placed = rollouts.policy.rollouts["r"].scheme("r")
            for unit in ("x" * 1025, "🙂" * 1025, "é" * 1_000_000):
                decision = rollouts.decide("r", unit)
                assert decision.bucket == placed.position(unit)
                assert rollouts.enabled("r", unit) is decision.enabled
                if scheme.startswith("growthbook"):
                    assert decision.bucket == placed.space
                    assert decision.enabled is False
                else:
                    assert decision.enabled is True  # 100 %: everyone with an id
            assert rollouts.failures.count() == 0


# -- a reload while a scheme is live ----------------------------------------------------------


class TestReload:
    def test_a_percent_edit_keeps_every_unit_in_and_a_finer_one_is_refused(
        self, tmp_path: Path
    ) -> None:
        """Unleash at 25 %, edited to 30 %: every unit in stays in. Edited to 30.5 % (finer
        than Unleash can express): refused, the old policy serves, the reason is shown."""
        path = tmp_path / "rollouts.toml"
        table = SCHEMES["unleash"]
        write(path, toml_of(one_rollout(table, 25)))
        rollouts = Rollouts.from_file(path, reload_interval=0.001)
        at_25 = [rollouts.decide("r", u).enabled for u in UNITS]
        assert at_25 == [vendor_says(table, "r", u, 25) for u in UNITS]
        write(path, toml_of(one_rollout(table, 30)))
        until(lambda: rollouts.policy.rollouts["r"].stages[0].percent == 30, rollouts)
        at_30 = [rollouts.decide("r", u).enabled for u in UNITS]
        assert at_30 == [vendor_says(table, "r", u, 30) for u in UNITS]
        assert all(b for a, b in zip(at_25, at_30, strict=True) if a)
        write(path, toml_of(one_rollout(table, 30.5)))
        until(lambda: rollouts.status("r").pending_policy is not None, rollouts)
        pending = rollouts.status("r").pending_policy
        assert pending is not None
        assert "finer than unleash" in pending
        assert [rollouts.decide("r", u).enabled for u in UNITS] == at_30
        rollouts.close()

    def test_a_reload_under_an_override_stays_forced(self, tmp_path: Path) -> None:
        """An override active while a reload changes the scheme: the rebuilt view stays off
        the direct path, so the override still wins; after it, the new scheme answers."""
        path = tmp_path / "rollouts.toml"
        write(path, toml_of(one_rollout(SCHEMES["unleash"], 25)))
        rollouts = Rollouts.from_file(path, reload_interval=0.001)
        with override(rollouts, "r", True):
            write(path, toml_of(one_rollout(SCHEMES["launchdarkly"], 25)))
            until(
                lambda: rollouts.policy.rollouts["r"].scheme("r").name == "launchdarkly", rollouts
            )
            assert rollouts.policy.rollouts["r"].scheme("r").name == "launchdarkly"
            assert all(rollouts.enabled("r", u) for u in UNITS)
        want = [vendor_says(SCHEMES["launchdarkly"], "r", u, 25) for u in UNITS]
        assert [rollouts.enabled("r", u) for u in UNITS] == want
        rollouts.close()


# -- several processes on one store -----------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import json, sys
    from stagedroll import Rollouts
    policy, store, units = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    with Rollouts(policy, store=store) as rollouts:
        print(json.dumps([rollouts.enabled("r", u) for u in units]))
    """
)


class TestProcesses:
    @pytest.mark.parametrize("scheme", ["unleash", "growthbook", "launchdarkly"])
    def test_processes_on_one_store_decide_alike_and_follow_a_transition(
        self, tmp_path: Path, scheme: str
    ) -> None:
        """Two processes on one SQLite store, a third advancing it: each process answers as
        the vendor at the stage in force, whatever its hash seed."""
        table = SCHEMES[scheme]
        policy = tmp_path / "rollouts.toml"
        write(policy, toml_of(one_rollout(table, 1, 50)))
        store = f"sqlite:///{tmp_path / 'state.db'}"
        units = [*UNITS[:120], "ünïcode-ß", "emoji-🙂"]

        def children() -> list[list[bool]]:
            runs = [
                subprocess.Popen(
                    [sys.executable, "-c", _CHILD, str(policy), store, json.dumps(units)],
                    stdout=subprocess.PIPE,
                    text=True,
                    env={**os.environ, "PYTHONHASHSEED": str(seed)},
                )
                for seed in (1, 2)
            ]
            found = []
            for run in runs:
                out, _ = run.communicate(timeout=120)
                assert run.returncode == 0
                found.append(json.loads(out.splitlines()[-1]))
            return found

        with Rollouts(policy, store=store) as parent:
            for percent in (1, 50):
                want = [vendor_says(table, "r", u, percent) for u in units]
                assert [parent.enabled("r", u) for u in units] == want
                assert children() == [want, want], percent
                if percent == 1:
                    parent.advance("r")
            parent.kill("r")
            assert children() == [[False] * len(units)] * 2
            assert parent.status("r").status is Status.KILLED


# -- explain shows decide's answer ------------------------------------------------------------


class TestExplain:
    @pytest.mark.parametrize("scheme", list(SCHEMES))
    def test_explain_shows_the_bucket_and_threshold_that_decide_uses(
        self, capsys: pytest.CaptureFixture[str], clean_env: None, tmp_path: Path, scheme: str
    ) -> None:
        """``explain --json``: the same answer, reason, bucket and stage as ``decide``, and a
        threshold that the bucket is (or is not) below as the answer says; at a stage, in an
        environment that fixes the percent, bucketed by an attribute, and killed."""
        table = SCHEMES[scheme]
        policy = tmp_path / "rollouts.toml"
        document = one_rollout(table, 1, 50, environments={"prod": 25, "dev": "stages"})
        document["rollouts"]["t"] = {**document["rollouts"]["r"], "bucket_by": "tenant"}
        write(policy, toml_of(document))
        store = f"sqlite:///{tmp_path / 'state.db'}"
        with Rollouts(policy, store=store, environment="dev") as rollouts:
            rollouts.advance("r")
        units = ["123", "999", "", "user-7", "emoji-🙂", "ünïcode-ß"]

        def compare(env: str, name: str, attrs: dict[str, object] | None) -> None:
            argv = ["explain", name, "?", "--policy", str(policy), "--store", store,
                    "--env", env, "--json"]  # fmt: skip
            if attrs:
                argv += [f"--attr={k}={v}" for k, v in attrs.items()]
            with Rollouts(policy, store=store, environment=env) as rollouts:
                for unit in units:
                    argv[2] = unit
                    code, out, err = cli(capsys, *argv)
                    assert code == 0, err
                    shown = json.loads(out)
                    decision = rollouts.decide(name, unit, attrs)
                    assert (shown["enabled"], shown["reason"], shown["stage"]) == (
                        decision.enabled, str(decision.reason), decision.stage,
                    ), (scheme, env, name, unit)  # fmt: skip
                    assert shown["percent"] == decision.percent
                    if decision.bucket is not None:  # the bucket step was reached
                        assert shown["bucket"] == decision.bucket
                        assert (shown["bucket"] < shown["threshold"]) is decision.enabled

        compare("dev", "r", None)
        compare("prod", "r", None)
        compare("dev", "t", {"tenant": "acme"})
        with Rollouts(policy, store=store, environment="dev") as rollouts:
            rollouts.kill("r")
        compare("dev", "r", None)


# -- stagedroll import: the files it writes, its output -------------------------------------


def flagd_export(*keys: str, experiment: str | None = None) -> dict[str, Any]:
    """A flagd flag file: a 25 % rollout per key, and a three-way experiment (not mapped)."""
    flags: dict[str, Any] = {
        key: {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {"fractional": [["on", 25], ["off", 75]]},
        }
        for key in keys
    }
    if experiment is not None:
        flags[experiment] = {
            "state": "ENABLED",
            "variants": {"a": 1, "b": 2, "c": 3},
            "defaultVariant": "a",
            "targeting": {"fractional": [["a", 30], ["b", 30], ["c", 40]]},
        }
    return {"flags": flags}


@pytest.fixture(name="export")
def _export(tmp_path: Path) -> Callable[..., Path]:
    """Write a flagd export to ``tmp_path``; its path."""

    def make(*keys: str, experiment: str | None = None) -> Path:
        path = tmp_path / "export.json"
        path.write_text(json.dumps(flagd_export(*keys, experiment=experiment)), "utf-8")
        return path

    return make


class TestImportCommand:
    def test_json_output_has_its_documented_shape(
        self, capsys: pytest.CaptureFixture[str], clean_env: None, export: Callable[..., Path]
    ) -> None:
        """``--json``: one document on stdout (schema version, vendor, policy, what did not
        map), nothing on stderr; ``--strict`` makes a part that did not map exit 1."""
        path = export("new-checkout", experiment="three-way")
        code, out, err = cli(capsys, "import", "flagd", str(path), "--json")
        assert (code, err) == (0, "")
        document = json.loads(out)
        assert set(document) == {"schema_version", "vendor", "policy", "unmapped"}
        assert (document["schema_version"], document["vendor"]) == (1, "flagd")
        load_policy(document["policy"])
        [unmapped] = document["unmapped"]
        assert set(unmapped) == {"flag", "part", "reason"}
        assert unmapped["flag"] == "three-way"
        code, out, _ = cli(capsys, "import", "flagd", str(path), "--json", "--strict")
        assert code == 1
        assert json.loads(out) == document

    def test_out_never_writes_through_a_link_a_directory_or_a_missing_directory(
        self,
        capsys: pytest.CaptureFixture[str],
        clean_env: None,
        export: Callable[..., Path],
        tmp_path: Path,
    ) -> None:
        """``--out`` creates a new file only: a symlink (to a file, dangling), a directory or
        an existing file are refused untouched; a missing directory is a usage error."""
        path = export("new-checkout")
        victim = tmp_path / "victim.toml"
        victim.write_text("# mine\n")
        link = tmp_path / "link.toml"
        link.symlink_to(victim)
        dangling = tmp_path / "dangling.toml"
        dangling.symlink_to(tmp_path / "nowhere.toml")
        directory = tmp_path / "dir.toml"
        directory.mkdir()
        for target in (link, dangling, directory, victim):
            code, out, err = cli(capsys, "import", "flagd", str(path), "--out", str(target))
            assert (code, out) == (2, ""), target
            assert "exists" in err
        assert victim.read_text() == "# mine\n"
        assert not (tmp_path / "nowhere.toml").exists()
        assert list(directory.iterdir()) == []
        missing = tmp_path / "no" / "such" / "dir.toml"
        code, _, err = cli(capsys, "import", "flagd", str(path), "--out", str(missing))
        assert code == 2
        assert "cannot write" in err
        assert not (tmp_path / "no").exists()

    @pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
    def test_an_export_that_is_not_a_regular_file_is_refused_unread(
        self,
        capsys: pytest.CaptureFixture[str],
        clean_env: None,
        tmp_path: Path,
        kind: str,
    ) -> None:
        """A FIFO (which would block a reader), ``/dev/zero`` behind a link, a directory."""
        path = tmp_path / "export.json"
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "device":
            path.symlink_to("/dev/zero")
        else:
            path.mkdir()
        code, out, err = cli(capsys, "import", "flagd", str(path))
        assert code == 2
        assert out == ""
        assert err.startswith("stagedroll: cannot read ")
        assert "not a regular file" in err

    def test_a_write_that_fails_leaves_no_partial_policy(
        self, export: Callable[..., Path], tmp_path: Path
    ) -> None:
        """The output file past ``RLIMIT_FSIZE`` (a full disk, as the writer sees it): the
        command fails, and leaves either no file or the whole policy."""
        path = export(*(f"flag-{i}" for i in range(20)))
        out = tmp_path / "rollouts.toml"
        code = (
            "import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))\n"
            "from stagedroll.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n"
        )
        run = subprocess.run(
            [sys.executable, "-c", code, "import", "flagd", str(path), "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert run.returncode == 2, run.stderr
        assert "cannot write" in run.stderr
        if out.exists():
            assert len(load_policy(out).rollouts) == 20

    def test_a_key_ending_in_a_newline_gets_a_valid_name(
        self, capsys: pytest.CaptureFixture[str], clean_env: None, export: Callable[..., Path]
    ) -> None:
        path = export("checkout\n", "search")
        code, out, err = cli(capsys, "import", "flagd", str(path), "--json")
        assert code == 0, err
        policy = load_policy(json.loads(out)["policy"])
        assert len(policy.rollouts) == 2
        assert "search" in policy.rollouts

    @pytest.mark.parametrize("char", ["\u00a0", "\u00ad"], ids=["nbsp", "soft-hyphen"])
    def test_stdout_is_the_same_toml_whatever_the_flag_keys_hold(
        self,
        capsys: pytest.CaptureFixture[str],
        clean_env: None,
        export: Callable[..., Path],
        char: str,
    ) -> None:
        """A flag key with a no-break space or a soft hyphen (pasted from a web page): the
        policy on stdout is the one ``--json`` gives."""
        path = export(f"new{char}checkout")
        code, out, err = cli(capsys, "import", "flagd", str(path))
        assert code == 0, err
        _, as_json, _ = cli(capsys, "import", "flagd", str(path), "--json")
        assert tomllib.loads(out) == json.loads(as_json)["policy"]

    def test_the_out_file_loads_whatever_the_report_quotes(
        self,
        capsys: pytest.CaptureFixture[str],
        clean_env: None,
        export: Callable[..., Path],
        tmp_path: Path,
    ) -> None:
        path = export("new-checkout", experiment="exp\x1b[2J\x00\x7f")
        out = tmp_path / "rollouts.toml"
        code, _, err = cli(capsys, "import", "flagd", str(path), "--out", str(out))
        assert code == 0, err
        assert list(load_policy(out).rollouts) == ["new-checkout"]


# -- the TOML writer --------------------------------------------------------------------------


INJECTIONS = [
    'a"]\n[rollouts.evil]\nx = "',
    "x = 1\n[owned]",
    '"""',
    "'''",
    "\\",
    "\\u0022",
    "# not a comment",
    "a.b",
    "[x]",
    "\r\n",
    "\t",
    "\u2028\u2029",
    "\u202e",
    "\U0001f642",
    "",
]


class TestTomlWriter:
    @pytest.mark.parametrize("text", INJECTIONS)
    def test_text_that_looks_like_toml_stays_text(self, text: str) -> None:
        """Keys and values that try to close a string or open a table round-trip, and the
        policy loads with the same values."""
        document = {
            "segments": {"seg": {"rules": [{"attribute": text or "a", "op": "eq", "value": text}]}},
            "rollouts": {
                "r": {
                    "description": text,
                    "bucketing": {"scheme": "unleash", "group_id": text},
                    "targeting": {"allow": [text], "deny": [text + "!"]},
                    "environments": {text or "e": 25},
                    "stages": [{"name": "s", "percent": 25, "segments": ["seg"]}],
                }
            },
        }
        written = Imported("unleash", document).to_toml()
        assert tomllib.loads(written) == document
        loaded = load_policy(tomllib.loads(written))
        rollout = loaded.rollouts["r"]
        assert (rollout.description, rollout.scheme("r").describe()) == (
            text, f"unleash, group_id {text!r}",
        )  # fmt: skip

    def test_a_key_ending_in_a_newline_is_quoted(self) -> None:
        """An environment named ``"prod\\n"`` (a valid policy in code) is written quoted."""
        document = one_rollout(SCHEMES["unleash"], 25, environments={"prod\n": 25})
        load_policy(document)
        assert tomllib.loads(Imported("unleash", document).to_toml()) == document

    @pytest.mark.parametrize("char", ["\x00", "\x08", "\x1b", "\x7f"])
    def test_the_report_comments_hold_no_control_character(self, char: str) -> None:
        imported = Imported(
            "flagd",
            one_rollout(SCHEMES["flagd"], 25),
            (Unmapped(f"flag{char}", f"flags.flag{char}", f"why{char}"),),
        )
        assert tomllib.loads(imported.to_toml()) == imported.document

    def test_the_report_comments_cannot_open_a_line(self) -> None:
        """A report that holds newlines (any kind) stays inside its comment lines."""
        breaks = "\n[rollouts.evil]\r\nstages = []\u2028\x85\x0b\x0c\x1c"
        imported = Imported(
            "flagd",
            one_rollout(SCHEMES["flagd"], 25),
            (Unmapped("flag" + breaks, "part" + breaks, "reason" + breaks),),
        )
        assert tomllib.loads(imported.to_toml()) == imported.document

    def test_an_imported_policy_round_trips_through_both_files(self) -> None:
        imported = from_flagd(flagd_export("a", "b.c", "d-e", experiment="x"))
        assert tomllib.loads(imported.to_toml()) == imported.document
        assert json.loads(imported.to_json()) == imported.document
        assert load_policy(imported.document).rollouts.keys() == {"a", "b.c", "d-e"}
