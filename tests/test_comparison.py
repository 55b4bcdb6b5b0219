"""Tests of the judge shared by shadows and migrations (stagedroll._comparison)."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

from stagedroll._comparison import Comparison, short_repr
from stagedroll._failures import Failures
from stagedroll.patterns import ComparisonStats, Mismatch


def judge(**options: Any) -> Comparison:
    defaults: dict[str, Any] = {"compare": None, "ignore": None, "redact": None, "samples": 10,
                                "on_mismatch": None}  # fmt: skip
    return Comparison("shadow", "search", Failures(), **{**defaults, **options})


class TestComparison:
    def test_verdicts_and_stats(self) -> None:
        """Each judged pair is a match, an ignored difference or a mismatch."""
        comparison = judge(ignore=lambda old, new: new is None)
        assert comparison.judge("a", 1, 1, 0.5) is False
        assert comparison.judge("b", 1, None, 0.5) is False
        assert comparison.judge("c", 1, 2, -0.25) is True
        stats = comparison.stats()
        assert stats == ComparisonStats(compared=3, matched=1, mismatched=1, ignored=1,
                                        mean_latency_delta_s=0.25)  # fmt: skip
        assert stats.mismatch_rate == pytest.approx(1 / 3)
        assert ComparisonStats().mismatch_rate is None
        assert [(m.unit, m.old, m.new) for m in comparison.samples()] == [("c", "1", "2")]

    def test_a_redact_that_raises_keeps_a_sample_without_values(self) -> None:
        """The sample keeps the unit and names the failure; nothing raises."""
        failures = Failures()

        def redact(value: object) -> object:
            raise ValueError("cannot redact")

        comparison = Comparison("migration", "orders", failures, compare=None, ignore=None,
                                redact=redact, samples=10, on_mismatch=None)  # fmt: skip
        assert comparison.judge("k", 1, 2, 0.0) is True
        (sample,) = comparison.samples()
        assert (sample.unit, sample.old, sample.new) == ("k", None, None)
        assert sample.error == "ValueError"  # your redact: the type alone
        assert failures.count("migration.redact_failed") == 1
        assert comparison.stats().failures == 1

    def test_no_samples_and_no_hook_keeps_nothing(self) -> None:
        """``samples=0``: counters only."""
        comparison = judge(samples=0)
        comparison.judge("k", 1, 2, 0.0)
        comparison.failed("k", RuntimeError("x"), old=1)
        assert comparison.samples() == []
        assert comparison.stats().mismatched == comparison.stats().new_errors == 1

    def test_a_hook_sees_every_mismatch_even_with_no_samples(self) -> None:
        """``on_mismatch`` is told of each mismatch and new-side error."""
        told: list[Mismatch] = []
        comparison = judge(samples=0, on_mismatch=told.append)
        comparison.judge("k", 1, 2, 0.0)
        comparison.failed("j", RuntimeError("broke"), old=1)
        assert [(m.unit, m.error) for m in told] == [("k", None), ("j", "RuntimeError: broke")]

    def test_counters_are_exact_under_threads(self) -> None:
        """Eight threads judging at once lose no count."""
        comparison = judge()

        def work() -> None:
            for i in range(1000):
                comparison.judge("k", i, i if i % 10 else -1, 0.0)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stats = comparison.stats()
        assert (stats.compared, stats.mismatched) == (8000, 800)
        assert len(comparison.samples()) == 10

    def test_a_forked_child_starts_from_zero(self) -> None:
        """The parent's counts are not the child's; the lock is fresh."""
        comparison = judge()
        comparison.judge("k", 1, 2, 0.0)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.write(write, str(comparison.stats().compared).encode())
            os._exit(0)
        os.close(write)
        assert os.read(read, 16) == b"0"
        os.close(read)
        os.waitpid(pid, 0)
        assert comparison.stats().compared == 1

    def test_short_repr_is_bounded_and_total(self) -> None:
        """Long values are cut; a repr that raises is named, not raised."""

        class Broken:
            def __repr__(self) -> str:
                raise RuntimeError("no")

        assert len(short_repr("x" * 10_000)) < 300
        assert short_repr(Broken()).startswith("<Broken instance at ")

    def test_an_exception_whose_str_raises_is_named(self) -> None:
        """A new side's exception that cannot be shown still makes a sample; nothing raises."""

        class Opaque(Exception):
            def __str__(self) -> str:
                raise TypeError("no text")

        comparison = judge()
        comparison.failed("k", Opaque())
        assert comparison.samples()[0].error == "Opaque"

    def test_wrong_options_raise(self) -> None:
        """Non-callables and bad sample counts fail when the judge is made."""
        with pytest.raises(TypeError, match="ignore must be callable"):
            judge(ignore=3)
        with pytest.raises(ValueError, match="samples"):
            judge(samples=True)
