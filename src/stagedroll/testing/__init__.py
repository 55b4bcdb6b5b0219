"""Tools for testing code that uses stagedroll; this module does not import pytest.

- :func:`override`: force a rollout's decisions, for all units or some, in a block or a
  decorated test (isolated between threads and asyncio tasks).
- :class:`RecordingSink`: every outcome and transition of a test's rollouts.
- :class:`FakeClock`: a clock that moves only when told to, to drive bake times.
- :func:`on_error`: make guards raise (or fall back on) new-path exceptions in a block.
"""

from .. import Outcome
from ._clock import FakeClock
from ._override import Override, on_error, override
from ._simulate import RolloutSimulation, Simulation, StageCohort, simulate
from ._sink import RecordingSink

__all__ = [
    "FakeClock",
    "Outcome",
    "Override",
    "RecordingSink",
    "RolloutSimulation",
    "Simulation",
    "StageCohort",
    "on_error",
    "override",
    "simulate",
]
