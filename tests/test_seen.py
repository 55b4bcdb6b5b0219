"""Tests of SeenUnits: the bounded set of units that already produced an event."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagedroll._seen import EXACT_CAP, SeenUnits


def filled(count: int = EXACT_CAP) -> tuple[SeenUnits, list[str]]:
    """A set given ``count`` distinct keys ``fill-0``, ``fill-1``..., and those keys."""
    seen = SeenUnits()
    keys = [f"fill-{i}" for i in range(count)]
    for key in keys:
        assert seen.add(key) is True
    return seen, keys


@pytest.fixture(name="full")
def _full() -> tuple[SeenUnits, list[str]]:
    """A set past its exact cap: ``EXACT_CAP`` keys, then one more that moves them to the filter."""
    seen, keys = filled()
    assert seen.add("the-one-past-the-cap") is True
    return seen, [*keys, "the-one-past-the-cap"]


class TestExact:
    def test_new_then_seen(self) -> None:
        """``add`` says a key is new the first time only; membership follows."""
        seen = SeenUnits()
        assert "u1" not in seen
        assert seen.add("u1") is True
        assert seen.add("u1") is False
        assert "u1" in seen
        assert "u2" not in seen

    def test_count(self) -> None:
        """``count`` and ``len`` count the keys added as new, repeats excluded."""
        seen = SeenUnits()
        for key in ["a", "b", "a", "c", "b", "a"]:
            seen.add(key)
        assert seen.count == len(seen) == 3

    def test_the_empty_string_is_a_key(self) -> None:
        """``""`` is a unit like any other."""
        seen = SeenUnits()
        assert seen.add("") is True
        assert "" in seen

    def test_clear(self) -> None:
        """``clear`` forgets every key: they are new again."""
        seen = SeenUnits()
        seen.add("u1")
        seen.clear()
        assert len(seen) == 0
        assert "u1" not in seen
        assert seen.add("u1") is True

    @pytest.mark.parametrize("key", [None, 5, 5.0, ("u1",), b"u1"])
    def test_membership_of_other_types(self, key: object) -> None:
        """Objects that are not text are never members (a unit key is text)."""
        seen = SeenUnits()
        seen.add("u1")
        seen.add("5")
        assert key not in seen

    def test_lone_surrogates(self) -> None:
        """Text that is not valid Unicode is a key like any other."""
        seen = SeenUnits()
        assert seen.add("user-\ud800") is True
        assert seen.add("user-\ud800") is False
        assert "user-\ud800" in seen
        assert "user-\udfff" not in seen


class TestFilter:
    def test_the_cap_is_exact(self) -> None:
        """Up to ``EXACT_CAP`` keys are exact: the set has every key and counts each."""
        seen, keys = filled()
        assert len(seen) == EXACT_CAP
        assert all(key in seen for key in keys)
        assert all(seen.add(key) is False for key in keys)
        assert len(seen) == EXACT_CAP

    def test_past_the_cap_earlier_keys_are_still_seen(
        self, full: tuple[SeenUnits, list[str]]
    ) -> None:
        """Moving to the filter loses no key: each is a member and not new."""
        seen, keys = full
        assert len(seen) == EXACT_CAP + 1
        assert all(key in seen for key in keys)
        assert not any(seen.add(key) for key in keys)
        assert len(seen) == EXACT_CAP + 1

    def test_new_keys_past_the_cap(self, full: tuple[SeenUnits, list[str]]) -> None:
        """Past the cap, fresh keys are new once (the filter is far from full) and counted."""
        seen, _ = full
        fresh = [f"fresh-{i}" for i in range(1000)]
        assert all(key not in seen for key in fresh)
        assert all(seen.add(key) for key in fresh)
        assert not any(seen.add(key) for key in fresh)
        assert len(seen) == EXACT_CAP + 1 + 1000

    @pytest.mark.parametrize("key", [None, 5, b"fill-1"])
    def test_membership_of_other_types(
        self, full: tuple[SeenUnits, list[str]], key: object
    ) -> None:
        """In the filter too, objects that are not text are never members."""
        seen, _ = full
        assert key not in seen

    def test_lone_surrogates(self, full: tuple[SeenUnits, list[str]]) -> None:
        """The filter hashes text that is not valid Unicode without failing."""
        seen, _ = full
        assert seen.add("user-\ud800") is True
        assert seen.add("user-\ud800") is False
        assert "user-\ud800" in seen

    def test_clear_goes_back_to_exact(self, full: tuple[SeenUnits, list[str]]) -> None:
        """After ``clear`` the set is empty and exact again."""
        seen, keys = full
        seen.clear()
        assert len(seen) == 0
        assert keys[0] not in seen
        assert seen.add(keys[0]) is True
        assert keys[0] in seen
        assert keys[1] not in seen

    @settings(max_examples=20)
    @given(
        before=st.lists(st.text(max_size=12), max_size=30),
        after=st.lists(st.text(max_size=12), max_size=30),
    )
    def test_no_false_negatives(self, before: list[str], after: list[str]) -> None:
        """Every key added, before or after the switch to the filter, is reported as seen."""
        seen = SeenUnits()
        for key in before:
            seen.add(key)
        for i in range(EXACT_CAP + 1):
            seen.add(f"\x00filler-{i}")
        for key in after:
            seen.add(key)
        for key in before + after:
            assert key in seen
            assert seen.add(key) is False
