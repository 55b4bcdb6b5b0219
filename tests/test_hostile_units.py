"""Hostile tests of units and attributes at the API boundary, in one process.

Any text and any int is a unit; other types are refused with ``TypeError`` by ``decide``,
``enabled`` and ``report`` (a bug at the call site), and by a guard's routing, which then
sends the call to the old path, counted. The shared stores' side is in
``test_hostile_store.py``.
"""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import plain_policy
from stagedroll import Reason, Rollouts

ROLLOUTS = Rollouts(plain_policy(50))


@ROLLOUTS.guard("checkout", fallback=lambda unit: "old", unit=lambda unit: unit)
def new(unit: object) -> str:
    return "new"


class TestAnyTextOrInt:
    @given(st.one_of(st.text(), st.integers(), st.uuids()))
    def test_decide_enabled_report_and_guard_agree(self, unit: str | int | uuid.UUID) -> None:
        """Every str, int or UUID is decided the same way by each entry point, never raising."""
        decision = ROLLOUTS.decide("checkout", unit)
        assert decision.reason in (Reason.IN_COHORT, Reason.OUT_OF_COHORT)
        assert ROLLOUTS.enabled("checkout", unit) is decision.enabled
        assert ROLLOUTS.report("checkout", unit, error=False) == decision
        assert new(unit) == ("new" if decision.enabled else "old")

    @pytest.mark.parametrize(
        "unit", ["", "\ud800", "a\x00b", "x" * 1_000_000, "<script>", "'; DROP TABLE", "*:*"]
    )
    def test_odd_text(self, unit: str) -> None:
        """Empty, lone surrogates, NUL, 1 MB, HTML, SQL and Redis syntax are plain units."""
        assert ROLLOUTS.decide("checkout", unit).bucket is not None
        assert new(unit) in ("new", "old")


class TestRefusedTypes:
    @pytest.mark.parametrize(
        "unit",
        [1.5, float("nan"), b"x", object(), True, 10**5000],
        ids=["float", "nan", "bytes", "object", "bool", "10**5000"],
    )
    def test_a_wrong_type_is_a_type_error_and_a_guard_falls_back(self, unit: object) -> None:
        """``decide`` names the bug; a guarded call answers from the old path and counts it."""
        rollouts = Rollouts(plain_policy(100))

        @rollouts.guard("checkout", fallback=lambda unit: "old", unit=lambda unit: unit)
        def guarded(unit: object) -> str:
            return "new"

        with pytest.raises(TypeError):
            rollouts.decide("checkout", unit)
        assert guarded(unit) == "old"
        assert rollouts.failures.count("guard.routing_failed") == 1
