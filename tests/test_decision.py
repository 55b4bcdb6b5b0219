from __future__ import annotations

import dataclasses

import pytest

from stagedroll import Decision, Reason


class TestDecision:
    def test_is_frozen_and_slotted(self) -> None:
        """A decision is an immutable value without a __dict__."""
        decision = Decision("r", True, Reason.IN_COHORT, "canary", 1.0, 7)
        with pytest.raises(dataclasses.FrozenInstanceError):
            decision.enabled = False  # type: ignore[misc]
        assert not hasattr(decision, "__dict__")
        assert decision == Decision("r", True, Reason.IN_COHORT, "canary", 1.0, 7)

    def test_truthiness_is_enabled(self) -> None:
        """A decision is truthy exactly when the new path is on."""
        assert Decision("r", True, Reason.ALLOWED)
        assert not Decision("r", False, Reason.DENIED)

    def test_reasons_are_strings(self) -> None:
        """Reasons compare and format as their names, for logs and JSON."""
        assert Reason.IN_COHORT == "IN_COHORT"
        assert f"{Reason.NO_UNIT}" == "NO_UNIT"
        assert str(Reason.ERROR) == "ERROR"
