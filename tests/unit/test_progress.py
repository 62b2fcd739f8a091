"""Progress output (issue 19, items 3 and 4): plain lines when standard error is not a terminal
(nothing cut off or redrawn into a log), ``[k/N]`` for the runs of a study, the loss kinds named
(``train loss``, ``test acc``), rounds counted from 1, and a bar on a terminal."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.console import Console
from typer.testing import CliRunner

from fedkit.experiment.progress import RunProgress, _clock


def _plain(runs: int | None) -> tuple[RunProgress, io.StringIO]:
    buf = io.StringIO()
    return RunProgress(console=Console(file=buf, width=80), runs=runs), buf


def test_not_a_terminal_prints_one_whole_line_per_round() -> None:
    progress, buf = _plain(runs=2)
    assert progress.plain  # a StringIO is not a terminal
    with progress:
        progress.start_run("fedavg", 3)
        progress.update(1, loss=0.5, accuracy=None)
        progress.update(2, loss=0.25, accuracy=0.75)
        progress.end_run("completed")
        progress.start_run("fedprox with a rather long name that a bar would have to cut", 1)
        progress.update(1, loss=None, accuracy=0.5)
        progress.end_run("completed")
    lines = buf.getvalue().splitlines()
    assert lines[0] == "[1/2] fedavg: started, 3 rounds"
    assert re.fullmatch(
        r"\[1/2\] fedavg: round 1/3  train loss 0\.5000  test acc —  elapsed 0:00:\d\d  "
        r"ETA 0:00:\d\d",
        lines[1],
    ), lines[1]
    assert "round 2/3  train loss 0.2500  test acc 0.7500" in lines[2]
    assert re.fullmatch(r"\[1/2\] fedavg: completed after 0:00:\d\d", lines[3])
    # a long name is printed whole (soft wrap: no ellipsis, no bar columns cut)
    assert lines[4].startswith("[2/2] fedprox with a rather long name that a bar would have to cut")
    assert "…" not in buf.getvalue() and len(lines) == 7


def test_without_a_study_count_there_is_no_label_and_quiet_prints_nothing() -> None:
    progress, buf = _plain(runs=None)
    with progress:
        progress.start_run("solo", 1)
    assert buf.getvalue().splitlines() == ["solo: started, 1 rounds"]
    buf = io.StringIO()
    with RunProgress(enabled=False, console=Console(file=buf)) as quiet:
        quiet.start_run("x", 2)
        quiet.update(1, loss=0.1, accuracy=0.2)
        quiet.end_run("completed")
    assert buf.getvalue() == ""


def test_a_terminal_gets_a_bar_with_the_loss_kinds_named() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=160)
    with RunProgress(console=console, runs=3) as progress:
        assert not progress.plain
        progress.start_run("fedavg", 4)
        progress.update(2, loss=0.5, accuracy=0.25)
        progress.end_run("completed")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())
    assert "[1/3] fedavg (completed)" in text
    assert "train loss 0.5000  test acc 0.2500" in text and "2/4" in text


def test_clock() -> None:
    # 3725 s = 1 h 2 min 5 s
    assert [_clock(3725.4), _clock(59.6), _clock(None), _clock(float("inf"))] == [
        "1:02:05", "0:01:00", "-:--:--", "-:--:--"
    ]  # fmt: skip


def test_fedkit_run_of_a_study_prints_arm_k_of_n_lines_when_piped(tmp_path: Path) -> None:
    import typer

    from fedkit.experiment.cli import run

    exp = tmp_path / "s.toml"
    exp.write_text(
        '[data]\ndataset = "synthetic"\npartition = "natural"\n[data.options]\nnum_users = 4\n'
        '[model]\nname = "logreg"\n[algorithm]\nname = "fedavg"\n[run]\nrounds = 2\n'
        "clients_per_round = 2\n"
        '[[arms]]\nname = "a"\n[[arms]]\nname = "b"\nalgorithm.name = "fedprox"\n'
        "algorithm.mu = 0.1\n"
    )
    app = typer.Typer()
    app.command()(run)
    res = CliRunner().invoke(app, [str(exp), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    lines = res.stderr.splitlines()
    assert "[1/2] a: started, 2 rounds" in lines and "[2/2] b: started, 2 rounds" in lines
    assert any(ln.startswith("[2/2] b: round 2/2  train loss ") for ln in lines), lines
