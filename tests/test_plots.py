"""The pictures of a rollout (stagedroll.plots) and the ``stagedroll plot`` command."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stagedroll import MemoryStore, Rollouts, RolloutStatus, Status, Transition, plots
from stagedroll.cli import main
from stagedroll.exceptions import MissingExtraError
from stagedroll.testing import FakeClock

pytest.importorskip("matplotlib", reason="the plots need stagedroll[plot]")

LADDER = [
    {"name": "canary", "percent": 10, "bake": "10m"},
    {"name": "half", "percent": 50, "bake": "1h"},
    {"name": "all", "percent": 100},
]


def gated(store: Any = None) -> tuple[Rollouts, list[tuple[float, RolloutStatus]]]:
    """A rollout the gate advanced, then froze and rolled back; its status sampled."""
    clock = FakeClock()
    policy = {"rollouts": {"checkout": {"advance": "auto", "stages": LADDER}}}
    rollouts = Rollouts(policy, store=store if store is not None else MemoryStore(), clock=clock)
    rng = random.Random(3)
    samples = []
    for request in range(1, 200_000):
        clock.advance(0.1)
        unit = f"user-{rng.randrange(100_000)}"
        new = rollouts.enabled("checkout", unit)
        late = rollouts["checkout"].state.stage >= 1
        failed = rng.random() < (0.2 if new and late else 0.01)
        rollouts.report("checkout", unit, error=failed)
        if request % 100 == 0:
            status = rollouts.status("checkout")
            samples.append((clock(), status))
            if status.status is Status.ROLLED_BACK:
                return rollouts, samples
    raise AssertionError("the gate did not roll it back")


@pytest.fixture(name="rolled_back", scope="module")
def _rolled_back() -> tuple[list[Transition], list[tuple[float, RolloutStatus]], RolloutStatus]:
    rollouts, samples = gated()
    return rollouts.history("checkout"), samples, rollouts.status("checkout")


def panels(figure: Any) -> list[Any]:
    """The figure's panels (typed loosely: the tests read matplotlib's arrays as lists)."""
    return list(figure.axes)


def texts(figure: Any) -> list[str]:
    """Every text the figure shows: titles, labels, tick labels, annotations, legends."""
    return [t.get_text() for t in figure.findobj(lambda a: hasattr(a, "get_text")) if t.get_text()]


def vertical_lines(collection: Any) -> list[Any]:
    """The segments of a collection that run the panel's height (``vlines``, 0 to 1)."""
    if not hasattr(collection, "get_segments"):
        return []
    return [seg for seg in collection.get_segments() if [p[1] for p in seg] == [0, 1]]


class TestTimeline:
    def test_a_step_line_and_each_transition_marked_and_labelled(
        self, rolled_back: tuple[list[Transition], Any, RolloutStatus]
    ) -> None:
        """The stage line steps at each transition; advance, freeze and rollback are marked
        and labelled with their actor; frozen and rolled-back spans are shaded."""
        history, _, status = rolled_back
        assert [str(e.action) for e in reversed(history)] == [
            "start",
            "advance",
            "freeze",
            "rollback",
        ]
        figure = plots.timeline(history, status.stages)
        [axes] = panels(figure)
        [line] = [ln for ln in axes.get_lines() if ln.get_label() == "stage in force"]
        assert list(line.get_ydata()) == [1, 2, 2, 1, 1]  # canary, half, frozen, canary
        markers = [ln for ln in axes.get_lines() if ln.get_linestyle() == "None"]
        assert len(markers) == 3
        shown = texts(figure)
        for label in ("advance (health gate)", "freeze (health gate)", "roll back (health gate)"):
            assert shown.count(label) == 1
        assert [t.get_text() for t in axes.get_yticklabels()] == [
            "0 %",
            "canary \u00b7 10 %",
            "half \u00b7 50 %",
            "all \u00b7 100 %",
        ]
        assert axes.get_ylabel() == "% of units (stage)"
        assert axes.get_xlabel().startswith("time since 2023-11-14 22:13 UTC (")
        assert {"frozen", "rolled back"} <= set(shown)

    def test_an_operators_kill_names_the_operator(self) -> None:
        """A kill by an operator drops the line to 0 % and is labelled with who made it."""
        policy = {"rollouts": {"search": {"stages": LADDER}}}
        clock = FakeClock()
        rollouts = Rollouts(policy, clock=clock)
        clock.advance("1h")
        rollouts.advance("search", actor="alice")
        clock.advance("1h")
        rollouts.kill("search", reason="incident", actor="bob")
        figure = plots.timeline(rollouts.history("search"), rollouts.status("search").stages)
        [axes] = panels(figure)
        [line] = [ln for ln in axes.get_lines() if ln.get_label() == "stage in force"]
        assert list(line.get_ydata())[-2:] == [0, 0]
        assert {"advance (alice)", "kill (bob)", "killed"} <= set(texts(figure))
        assert "hours" in axes.get_xlabel()

    def test_several_rollouts_draw_a_panel_each(self) -> None:
        """A history of two rollouts draws two panels, titled with their names."""
        policy = {"rollouts": {name: {"stages": LADDER} for name in ("a", "b")}}
        rollouts = Rollouts(policy, clock=FakeClock())
        rollouts.freeze("a", actor="carol")
        history = rollouts.history("a") + rollouts.history("b")
        stages = {name: rollouts.status(name).stages for name in ("a", "b")}
        figure = plots.timeline(history, stages)
        assert [axes.get_title(loc="left") for axes in panels(figure)] == ["a", "b"]

    def test_stored_ladders_and_no_ladder_both_draw(self) -> None:
        """``(name, percent)`` pairs name the stages; without a ladder they are numbered."""
        rollouts = Rollouts({"rollouts": {"a": {"stages": LADDER}}}, clock=FakeClock())
        rollouts.advance("a", actor="carol")
        history = rollouts.history("a")
        named = plots.timeline(history, [("canary", 10.0), ("half", 50.0)])
        assert "half \u00b7 50 %" in texts(named)
        numbered = plots.timeline(history)
        assert "stage 1" in texts(numbered)

    def test_hostile_names_are_shown_escaped_and_cut(self, tmp_path: Path) -> None:
        """Control characters are escaped, ``$`` is not read as math, long names are cut, and
        the figure still renders."""
        rollouts = Rollouts({"rollouts": {"a": {"stages": LADDER}}}, clock=FakeClock())
        rollouts.advance("a", actor="<script>\r" + "m" * 300)
        stages = [("$x^2$\x1b[2J", 10.0), ("n" * 500, 100.0)]  # a ladder from anywhere
        figure = plots.timeline(rollouts.history("a"), stages, title="\u202e" + "t" * 500)
        shown = texts(figure)
        assert "\\$x^2\\$\\x1b[2J \u00b7 10 %" in shown
        assert all(len(text) < 100 for text in shown)
        assert not any(c in text for text in shown for c in "\x1b\r\u202e")
        plots.save(figure, tmp_path / "hostile.png")
        plots.save(figure, tmp_path / "hostile.svg")
        assert "<script>" not in (tmp_path / "hostile.svg").read_text()

    def test_an_empty_history_is_refused(self) -> None:
        """Nothing to draw: a ``ValueError`` naming the history."""
        with pytest.raises(ValueError, match=r"^history: no transition to draw$"):
            plots.timeline([])


def burst(count: int = 1_000) -> tuple[Rollouts, list[Transition]]:
    """``count`` freezes and unfreezes by an operator, a millisecond apart."""
    clock = FakeClock()
    rollouts = Rollouts({"rollouts": {"checkout": {"stages": LADDER}}}, clock=clock)
    rollouts.status("checkout")
    for i in range(count // 2):
        clock.advance(0.001)
        rollouts.freeze("checkout", reason=f"f{i}", actor="alice")
        clock.advance(0.001)
        rollouts.unfreeze("checkout", reason="u", actor="bob")
    history = rollouts.history("checkout", limit=count + 1)
    assert len([e for e in history if str(e.action) != "start"]) == count
    return rollouts, history


def transition_labels(axes: Any) -> list[str]:
    """The labels written beside the transitions (annotations, not plain texts)."""
    return [t.get_text() for t in axes.texts if hasattr(t, "xyann")]


class TestABurstOfTransitions:
    """1,000 transitions in two seconds: a readable picture, not a pile of labels."""

    def test_the_timeline_labels_the_newest_few_and_fits_the_data(self) -> None:
        rollouts, history = burst()
        figure = plots.timeline(history, rollouts.status("checkout").stages)
        [axes] = panels(figure)
        labels = transition_labels(axes)
        assert 1 <= len(labels) <= 12
        assert labels[0] == "unfreeze (bob)"  # the newest is always labelled
        assert f"{1_000 - len(labels):,} more transitions not labelled" in texts(figure)
        markers = [ln for ln in axes.get_lines() if ln.get_linestyle() == "None"]
        xs = [x for ln in markers for x in ln.get_xdata()]
        assert len(xs) == 1_000  # every transition is marked
        low, high = axes.get_xlim()
        assert low <= min(xs)
        assert max(xs) <= high
        assert high - low <= 1.2 * (max(xs) - low)  # no empty ten minutes after the burst
        assert axes.get_xlabel().endswith("(seconds)")
        figure.canvas.draw()  # the labels stay below the title
        title = axes.title.get_window_extent()
        for text in axes.texts:
            if hasattr(text, "xyann"):
                assert text.get_window_extent().y1 <= title.y0 + 1

    def test_the_evidence_labels_the_newest_few_and_fits_the_data(self) -> None:
        _, history = burst()
        figure = plots.evidence(history)
        upper, lower = panels(figure)
        labels = transition_labels(upper)
        assert 1 <= len(labels) <= 12
        assert f"{1_000 - len(labels):,} more transitions not labelled" in texts(figure)
        xs = [seg[0][0] for c in lower.collections for seg in vertical_lines(c)]
        assert len(xs) == 1_000
        low, high = upper.get_xlim()
        assert low <= min(xs)
        assert max(xs) <= high
        assert high - low <= 1.2 * (max(xs) - low)
        assert lower.get_xlabel().endswith("(seconds)")

    def test_a_few_transitions_are_all_labelled(self) -> None:
        rollouts, history = burst(12)
        figure = plots.timeline(history, rollouts.status("checkout").stages)
        [axes] = panels(figure)
        assert len(transition_labels(axes)) == 12
        assert not any("not labelled" in text for text in texts(figure))


class TestEvidence:
    def test_the_curve_crosses_the_labelled_bars(
        self, rolled_back: tuple[list[Transition], list[tuple[float, RolloutStatus]], Any]
    ) -> None:
        """The sampled e-value rises past the freeze bar to the rollback bar; both bars are
        labelled lines; each transition is a labelled vertical line; the lower panel draws
        each arm's error rate."""
        history, samples, _ = rolled_back
        figure = plots.evidence(history, samples=samples)
        upper, lower = panels(figure)
        assert upper.get_yscale() == "log"
        assert upper.get_ylabel() == "evidence E (log)"
        [curve] = [ln for ln in upper.get_lines() if ln.get_label() == "E, errors"]
        assert len(curve.get_ydata()) >= len(samples)
        assert np.nanmax(curve.get_ydata()) >= 1000
        bars = {ln.get_ydata()[0] for ln in upper.get_lines() if list(ln.get_xdata()) == [0, 1]}
        # axhline: from 0 to 1 of the width; E = 1 is drawn faintly as the start
        assert sorted(bars) == pytest.approx([1.0, 20.0, 1000.0])
        verticals = [seg for c in lower.collections for seg in vertical_lines(c)]
        assert len(verticals) == 3  # advance, freeze, rollback
        shown = texts(figure)
        assert {"freeze at E = 20", "roll back at E = 1,000", "freeze (health gate)"} <= set(shown)
        arms = [ln.get_label() for ln in lower.get_lines() if not ln.get_label().startswith("_")]
        assert arms == ["new path", "old path"]
        assert lower.get_ylabel() == "errors\n(% of calls)"

    def test_from_the_history_alone(
        self, rolled_back: tuple[list[Transition], Any, RolloutStatus]
    ) -> None:
        """Without samples, each transition's evidence is a point; the bars come from the
        caller, else the panel says they are unknown."""
        history, _, status = rolled_back
        figure = plots.evidence(
            history,
            freeze_at=status.health.freeze_at_errors,
            rollback_at=status.health.rollback_at_errors,
        )
        upper, lower = panels(figure)
        [points] = [ln for ln in upper.get_lines() if ln.get_label() == "at a transition"]
        assert len(points.get_xdata()) == 3  # the advance, the freeze and the rollback
        assert "roll back at E = 1,000" in texts(figure)
        assert lower.get_ylabel().startswith("units with an error")
        unknown = plots.evidence(history)
        assert "bars unknown: no policy for this rollout" in texts(unknown)

    def test_one_rollout_at_a_time(self) -> None:
        """A history of two rollouts is refused: their evidence is not comparable."""
        rollouts = Rollouts(
            {"rollouts": {name: {"stages": LADDER} for name in ("a", "b")}}, clock=FakeClock()
        )
        with pytest.raises(ValueError, match="draw one at a time"):
            plots.evidence(rollouts.history("a") + rollouts.history("b"))


class TestSave:
    def test_svg_is_reproducible_and_undated(
        self, rolled_back: tuple[list[Transition], Any, RolloutStatus], tmp_path: Path
    ) -> None:
        """The same figure saved twice gives the same bytes, with no date in them."""
        history, _, status = rolled_back
        first = plots.save(plots.timeline(history, status.stages), tmp_path / "a.svg")
        second = plots.save(plots.timeline(history, status.stages), tmp_path / "b.svg")
        assert first.read_bytes() == second.read_bytes()
        assert b"<dc:date>" not in first.read_bytes()

    def test_png_is_800_pixels_wide(
        self, rolled_back: tuple[list[Transition], Any, RolloutStatus], tmp_path: Path
    ) -> None:
        """A PNG is 800 px wide (its IHDR width)."""
        history, samples, _ = rolled_back
        png = plots.save(plots.evidence(history, samples=samples), tmp_path / "e.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert int.from_bytes(png[16:20], "big") == 800

    def test_other_suffixes_are_refused(self, tmp_path: Path) -> None:
        """Only .png and .svg: a ``ValueError`` naming the path."""
        rollouts = Rollouts({"rollouts": {"a": {"stages": LADDER}}}, clock=FakeClock())
        figure = plots.timeline(rollouts.history("a"))
        with pytest.raises(ValueError, match=r"^path: '.*a\.pdf' must end in \.png or \.svg$"):
            plots.save(figure, tmp_path / "a.pdf")


class TestWithoutMatplotlib:
    def test_the_install_hint(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without matplotlib, drawing raises ``MissingExtraError`` with the install hint."""
        monkeypatch.setitem(sys.modules, "matplotlib", None)
        rollouts = Rollouts({"rollouts": {"a": {"stages": LADDER}}}, clock=FakeClock())
        with pytest.raises(MissingExtraError, match=r"pip install 'stagedroll\[plot\]'"):
            plots.timeline(rollouts.history("a"))
        with pytest.raises(ImportError):  # the builtin still catches it
            plots.evidence(rollouts.history("a"))

    def test_the_command_gives_the_hint(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        """``stagedroll plot`` without matplotlib: one line with the hint, exit 2."""
        url = f"sqlite:///{tmp_path / 'state.db'}"
        with Rollouts({"rollouts": {"a": {"stages": LADDER}}}, store=url):
            pass
        monkeypatch.setitem(sys.modules, "matplotlib", None)
        code = main(["--store", url, "plot", "timeline", "a", "--out", str(tmp_path / "t.png")])
        err = capsys.readouterr().err
        assert code == 2
        assert err == (
            "stagedroll: Drawing a rollout needs the optional dependency 'matplotlib': "
            "pip install 'stagedroll[plot]'\n"
        )
        assert not (tmp_path / "t.png").exists()


class TestCommand:
    @pytest.fixture(name="sqlite")
    def _sqlite(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
        """A SQLite store where the gate rolled ``checkout`` back, and its policy file."""
        for name in ("STAGEDROLL_POLICY", "STAGEDROLL_STORE", "STAGEDROLL_ENV"):
            monkeypatch.delenv(name, raising=False)
        url = f"sqlite:///{tmp_path / 'state.db'}"
        policy = tmp_path / "rollouts.json"
        policy.write_text(
            json.dumps({"rollouts": {"checkout": {"advance": "auto", "stages": LADDER}}})
        )
        rollouts, _ = gated(store=url)
        rollouts.close()
        return url, policy

    @pytest.mark.parametrize("picture", ["timeline", "evidence"])
    def test_with_the_policy(
        self,
        sqlite: tuple[str, Path],
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        picture: str,
    ) -> None:
        """With the policy, the picture is written (the evidence with the policy's bars)."""
        url, policy = sqlite
        out = tmp_path / f"{picture}.svg"
        code = main(["--store", url, "--policy", str(policy), "plot", picture, "checkout",
                     "--out", str(out)])  # fmt: skip
        assert (code, capsys.readouterr().out) == (0, f"{picture} of checkout: {out}\n")
        svg = out.read_text()
        assert "roll back (health gate)" in svg
        if picture == "evidence":
            assert "freeze at E = 20" in svg
        else:
            assert "half \u00b7 50 %" in svg

    @pytest.mark.parametrize("picture", ["timeline", "evidence"])
    def test_from_the_store_alone(
        self,
        sqlite: tuple[str, Path],
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        picture: str,
    ) -> None:
        """Without a policy the history and the stored ladder are enough; the evidence says
        that its bars are unknown."""
        url, _ = sqlite
        out = tmp_path / f"{picture}.png"
        code = main(["--store", url, "plot", picture, "checkout", "--out", str(out)])
        assert code == 0
        said = capsys.readouterr().out
        assert said.startswith(f"{picture} of checkout (")
        assert said.endswith(f": from the store alone): {out}\n")
        assert out.read_bytes()[:4] == b"\x89PNG"
        if picture == "timeline":
            svg = tmp_path / "t.svg"
            assert main(["--store", url, "plot", "timeline", "checkout", "--out", str(svg)]) == 0
            assert "half \u00b7 50 %" in svg.read_text()  # the stored ladder names the stages
        else:
            svg = tmp_path / "e.svg"
            assert main(["--store", url, "plot", "evidence", "checkout", "--out", str(svg)]) == 0
            assert "bars unknown" in svg.read_text()

    def test_json(
        self, sqlite: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``--json`` says what was drawn where."""
        url, _ = sqlite
        out = tmp_path / "t.png"
        assert (
            main(["--store", url, "--json", "plot", "timeline", "checkout", "--out", str(out)]) == 0
        )
        document = json.loads(capsys.readouterr().out)
        assert document["rollout"] == "checkout"
        assert (document["picture"], document["out"]) == ("timeline", str(out))
        assert document["entries"] >= 3  # start, advance, rollback (perhaps a freeze)

    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            (["timeline", "checkout", "--out", "t.pdf"], "--out: 't.pdf' must end in .png or .svg"),
            (["evidence", "nope", "--out", "e.png"], "unknown rollout 'nope'"),
            (["timeline", "checkout", "--out", "/nonexistent/dir/t.png"], "cannot write"),
        ],
        ids=["suffix", "unknown", "unwritable"],
    )
    def test_usage_errors(
        self,
        sqlite: tuple[str, Path],
        capsys: pytest.CaptureFixture[str],
        argv: list[str],
        message: str,
    ) -> None:
        """A bad suffix, an unknown rollout, an unwritable file: one line, exit 2."""
        url, _ = sqlite
        assert main(["--store", url, "plot", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("stagedroll: ")
        assert message in err
        assert err.count("\n") == 1
