"""Tests of stagedroll's exceptions: the hierarchy, the builtins they also are, pickling."""

from __future__ import annotations

import concurrent.futures
import pickle

import pytest

from stagedroll import PolicyError, StagedrollError, UnknownRolloutError, load_policy
from stagedroll.exceptions import MissingExtraError, PolicyProblem


def bad_policy() -> PolicyError:
    """A real PolicyError, as load_policy raises it."""
    try:
        load_policy({"rollouts": {"r": {"stages": [{"name": "a", "percent": 500}]}}})
    except PolicyError as exc:
        return exc
    raise AssertionError("the policy was accepted")


def raise_in_worker() -> None:
    """Raised in another process, the error must come back whole."""
    raise bad_policy()


class TestPickling:
    @pytest.mark.parametrize(
        "error",
        [
            PolicyError([PolicyProblem("rollouts.r.stages", "is empty")], source="p.toml"),
            UnknownRolloutError("serch", ["search", "checkout"]),
            MissingExtraError("YAML policies", "yaml", "yaml"),
        ],
        ids=["PolicyError", "UnknownRolloutError", "MissingExtraError"],
    )
    def test_round_trip(self, error: StagedrollError) -> None:
        """Each error pickles to an equal message and attributes (multiprocessing needs it)."""
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert vars(copy) == vars(error)

    def test_a_worker_process_reports_every_problem(self) -> None:
        """A PolicyError raised in a process pool comes back with its problems, not characters."""
        with (
            concurrent.futures.ProcessPoolExecutor(max_workers=1) as pool,
            pytest.raises(PolicyError) as info,
        ):
            pool.submit(raise_in_worker).result(timeout=60)
        assert [p.path for p in info.value.problems] == ["rollouts.r.stages[0].percent"]
        assert isinstance(info.value, ValueError)
