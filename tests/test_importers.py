"""The importers' shared pieces: names, the draft policy, the TOML writer, the bounded reading
of an export, ``import_file`` and the ``stagedroll import`` command's own options.

Each vendor's importer has its own test module (``test_importers_<vendor>.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import tomllib
from hypothesis import given
from hypothesis import strategies as st

from stagedroll import PolicyError, load_policy
from stagedroll.cli import main
from stagedroll.importers import IMPORTERS, Imported, Unmapped, import_file
from stagedroll.importers._imported import (
    Draft,
    Names,
    count_values,
    read_export,
    stages_from,
    to_toml,
)

DATA = Path(__file__).parent / "data" / "imports"


def rollout(percent: float = 25, **extra: Any) -> dict[str, Any]:
    return {"bucketing": {"scheme": "unleash", "group_id": "g"}, "stages": stages_from(percent),
            **extra}  # fmt: skip


class TestNames:
    def test_a_valid_key_is_kept(self) -> None:
        assert Names().name("checkout.v2_new-path") == "checkout.v2_new-path"

    def test_other_characters_become_dashes(self) -> None:
        assert Names().name("team/checkout flow") == "team-checkout-flow"
        assert Names().name("~~~") == "flag"
        assert Names().name("-leading") == "leading"

    def test_each_name_is_given_once(self) -> None:
        names = Names()
        assert [names.name(k) for k in ("a b", "a/b", "a b")] == ["a-b", "a-b-2", "a-b-3"]

    def test_a_sanitized_key_never_takes_a_valid_keys_name(self) -> None:
        names = Names(["a b", "a-b"])
        assert names.name("a b") == "a-b-2"
        assert names.name("a-b") == "a-b"

    def test_many_keys_of_one_name_each_get_their_own(self) -> None:
        """Keys that all sanitize to one name: each gets the next suffix, without rescanning
        the ones taken (20,000 of them would take minutes if each started again at -2)."""
        names = Names()
        given = [names.name("a" + chr(0x4E00 + i)) for i in range(20_000)]
        assert given[:3] == ["a", "a-2", "a-3"]
        assert len(set(given)) == 20_000

    def test_a_long_key_is_cut_to_a_name(self) -> None:
        names = Names()
        first, second = names.name("x" * 300 + "!"), names.name("x" * 300 + "?")
        assert (len(first), len(second)) == (128, 128)
        assert first != second

    @given(st.lists(st.text(max_size=200), max_size=20))
    def test_every_name_is_valid_and_distinct(self, keys: list[str]) -> None:
        names = Names(keys)
        given_names = [names.name(k) for k in keys]
        assert len(set(given_names)) == len(given_names)
        policy = {"rollouts": {n: {"stages": [{"name": "s", "percent": 1}]} for n in given_names}}
        assert set(load_policy(policy).rollouts) == set(given_names)


class TestStages:
    def test_the_imported_percent_then_the_ramp_above_it(self) -> None:
        assert stages_from(25) == [
            {"name": "imported", "percent": 25},
            {"name": "p50", "percent": 50},
            {"name": "all", "percent": 100},
        ]
        assert [s["name"] for s in stages_from(0)] == ["imported", "p1", "p5", "p25", "p50", "all"]
        assert stages_from(100) == [{"name": "imported", "percent": 100}]

    def test_a_fractional_percent_stays_a_float(self) -> None:
        assert stages_from(33.4)[0] == {"name": "imported", "percent": 33.4}


class TestDraft:
    def test_adds_valid_rollouts_and_builds_the_document(self) -> None:
        draft = Draft("unleash", ["a", "b c"])
        segments = {"beta": {"rules": [{"attribute": "plan", "op": "eq", "value": "beta"}]}}
        with_segment = rollout()
        with_segment["stages"][0]["segments"] = ["beta"]
        assert draft.add("a", "features[0]", with_segment, segments) == "a"
        assert draft.add("b c", "features[1]", rollout(50)) == "b-c"
        imported = draft.imported()
        assert imported.unmapped == ()
        assert set(imported.policy.rollouts) == {"a", "b-c"}
        assert set(imported.policy.segments) == {"beta"}

    def test_an_invalid_rollout_is_reported_and_left_out(self) -> None:
        draft = Draft("unleash")
        assert draft.add("bad", "features[0]", rollout(2.5)) is None
        assert draft.add("good", "features[1]", rollout()) == "good"
        [item] = draft.unmapped
        assert (item.flag, item.part) == ("bad", "features[0]")
        assert "stages[0].percent: 2.5 is finer than unleash bucketing" in item.reason
        assert set(draft.imported().document["rollouts"]) == {"good"}

    def test_text_that_is_not_unicode_is_reported(self) -> None:
        draft = Draft("unleash")
        assert draft.add("odd\ud800", "features[0]", rollout(description="x\udc00")) is None
        [item] = draft.unmapped
        assert "lone surrogate" in item.reason
        str(item).encode("utf-8")  # the report itself prints
        assert draft.imported().to_toml().encode("utf-8")

    def test_the_size_of_a_policy_is_kept(self) -> None:
        draft = Draft("unleash")
        ids = [f"user-{i}" for i in range(20_000)]
        added = [draft.add(f"f{i}", f"features[{i}]", rollout(targeting={"allow": ids}))
                 for i in range(3)]  # fmt: skip
        assert added == ["f0", "f1", None]
        assert "more than 50,000 values" in draft.unmapped[0].reason
        load_policy(draft.imported().document)  # what was added still loads

    def test_counts_values_as_the_policy_check_does(self) -> None:
        assert count_values({"a": [1, 2, {"b": "c"}]}) == 1 + 1 + 3 + 1
        assert count_values([]) == 1


texts = st.text(st.characters(exclude_categories=["Cs"]))  # what a file can hold
documents = st.recursive(
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=20,
)


class TestToml:
    @given(st.dictionaries(texts, documents, max_size=4))
    def test_round_trips_through_tomllib(self, document: dict[str, Any]) -> None:
        assert tomllib.loads(to_toml(document)) == _tomlish(document)

    def test_writes_a_policy_that_loads(self) -> None:
        document = {
            "segments": {
                "beta testers": {
                    "rules": [{"attribute": "plan", "op": "in", "value": ["beta", "qa"]}]
                }
            },
            "rollouts": {"checkout": {**rollout(), "targeting": {"allow": ["u1", 'q"uote']}}},
        }
        document["rollouts"]["checkout"]["stages"][0]["segments"] = ["beta testers"]
        text = to_toml(document)
        assert tomllib.loads(text) == document
        with pytest.raises(PolicyError, match="invalid name"):  # "beta testers" is no name
            load_policy(tomllib.loads(text))

    def test_refuses_a_lone_surrogate(self) -> None:
        with pytest.raises(ValueError, match="lone surrogate"):
            to_toml({"rollouts": {"a": {"description": "\ud800"}}})

    def test_the_header_lists_what_did_not_map_within_bounds(self) -> None:
        unmapped = tuple(Unmapped(f"f{i}", "rules[0]", "why\nnot " * 100) for i in range(500))
        text = Imported("unleash", {"rollouts": {}}, unmapped).to_toml()
        comments = [line for line in text.splitlines() if line.startswith("#")]
        assert len(comments) == 2 + 200 + 1
        assert all(len(line) <= 310 for line in comments)
        assert "... and 300 more" in comments[-1]
        assert tomllib.loads(text) == {"rollouts": {}}


def _tomlish(value: Any) -> Any:
    """What TOML reads back: tuples as lists."""
    if isinstance(value, dict):
        return {k: _tomlish(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_tomlish(v) for v in value]
    return value


class TestReadExport:
    def test_reads_json_and_yaml(self, tmp_path: Path) -> None:
        (tmp_path / "a.json").write_text('{"flags": {}}')
        (tmp_path / "a.yaml").write_text("flags: {}\n")
        assert read_export(tmp_path / "a.json") == {"flags": {}}
        assert read_export(tmp_path / "a.yaml") == {"flags": {}}

    def test_refuses_a_file_over_the_bound(self, tmp_path: Path) -> None:
        path = tmp_path / "big.json"
        path.write_text(json.dumps({"x": "y" * 2000}))
        with pytest.raises(PolicyError, match=r"big\.json"):
            read_export(path, max_bytes=1000)

    def test_refuses_deep_nesting_and_bad_bytes(self, tmp_path: Path) -> None:
        deep = tmp_path / "deep.json"
        deep.write_text("[" * 10_000 + "]" * 10_000)
        with pytest.raises(PolicyError, match="nest"):
            read_export(deep)
        latin = tmp_path / "latin.json"
        latin.write_bytes(b'{"k": "\xe9"}')
        with pytest.raises(PolicyError, match="UTF-8"):
            read_export(latin)

    def test_refuses_a_key_given_twice(self, tmp_path: Path) -> None:
        """JSON allows a key twice, and readers keep one value or the other: refused, named."""
        path = tmp_path / "export.json"
        path.write_text('{"features": [{"name": "a", "parameters": {"rollout": "90", '
                        '"rollout": "10"}}]}')  # fmt: skip
        with pytest.raises(PolicyError) as caught:
            read_export(path)
        [problem] = caught.value.problems
        assert problem.path == "features[0].parameters.rollout"
        assert problem.message == "duplicate key (given 2 times)"

    def test_a_directory_is_an_os_error(self, tmp_path: Path) -> None:
        with pytest.raises(OSError, match="not a regular file"):
            read_export(tmp_path)

    def test_a_missing_file_is_an_os_error(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError):
            read_export(tmp_path / "nope.json")


class TestImportFile:
    def test_every_vendor_has_an_importer(self) -> None:
        assert set(IMPORTERS) == {"unleash", "growthbook", "launchdarkly", "flagd"}

    def test_an_unknown_vendor_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="unknown vendor 'statsig'"):
            import_file("statsig", tmp_path / "x.json")  # type: ignore[arg-type]

    @pytest.mark.parametrize("vendor", sorted(IMPORTERS))
    def test_each_vendors_test_export_imports_and_validates(self, vendor: str) -> None:
        imported = import_file(vendor, DATA / vendor / "export.json")  # type: ignore[arg-type]
        assert imported.vendor == vendor
        assert imported.policy.rollouts
        schemes = {r.bucketing.scheme for r in imported.policy.rollouts.values() if r.bucketing}
        assert vendor in schemes
        assert imported.unmapped, "each test export holds something that cannot map"
        assert tomllib.loads(imported.to_toml()) == json.loads(imported.to_json())


class TestCommand:
    def run(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["import", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    def test_out_writes_a_new_file_and_never_overwrites(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        out = tmp_path / "rollouts.toml"
        code, stdout, err = self.run(capsys, "flagd", str(DATA / "flagd" / "export.json"),
                                     "--out", str(out))  # fmt: skip
        assert code == 0
        assert stdout == ""
        assert "rollouts imported from flagd" in err
        load_policy(out)
        before = out.read_bytes()
        code, _, err = self.run(capsys, "flagd", str(DATA / "flagd" / "export.json"),
                                "--out", str(out))  # fmt: skip
        assert code == 2
        assert "exists" in err
        assert out.read_bytes() == before

    def test_out_must_be_toml_or_json(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        code, _, err = self.run(capsys, "flagd", str(DATA / "flagd" / "export.json"),
                                "--out", str(tmp_path / "p.yaml"))  # fmt: skip
        assert code == 2
        assert "--out must name a .toml or .json file" in err
        assert not (tmp_path / "p.yaml").exists()

    def test_a_missing_export_is_a_usage_error(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        code, _, err = self.run(capsys, "unleash", str(tmp_path / "nope.json"))
        assert code == 2
        assert "cannot read" in err

    def test_an_unknown_vendor_is_a_usage_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, _, err = self.run(capsys, "statsig", "x.json")
        assert code == 2
        assert "invalid choice: 'statsig'" in err
