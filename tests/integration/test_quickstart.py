"""The quickstart study end to end on a tiny budget: ``fedkit run`` then ``fedkit report``.

This is the README's first command (``make demo``) in miniature: the quickstart example (FedAvg vs
FedProx vs centralised on Synthetic(1, 1), generated data) runs with ``--set run.rounds=2`` and
2 local epochs instead of 20, and its report has every figure as a valid PNG, the self-contained
HTML and the Markdown. A second (slow) test runs ``scripts/demo.sh`` itself, the body of
``make demo``, on the same tiny budget.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import typer
from typer.testing import CliRunner

from fedkit.experiment.cli import run
from fedkit.experiment.report import load_arms
from fedkit.experiment.report_cli import report
from fedkit.experiment.report_model import summarize
from fedkit.experiment.results import ResultsStore, results_path

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "examples" / "quickstart.toml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = ("--set", "run.rounds=2", "--set", "algorithm.local_epochs=2")
FIGURES = ("accuracy_vs_rounds", "accuracy_vs_time", "accuracy_vs_bytes", "client_accuracy")


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("run")(run)
    app.command("report")(report)
    return app


def _check_report(folder: Path) -> str:
    for key in FIGURES:
        png = folder / f"{key}.png"
        assert png.read_bytes()[:8] == PNG_SIGNATURE, f"{png} is not a PNG"
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and min(image.shape[:2]) > 100
    html = (folder / "report.html").read_text(encoding="utf-8")
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(embedded) == len(FIGURES)
    assert all(base64.b64decode(e)[:8] == PNG_SIGNATURE for e in embedded)
    md = (folder / "report.md").read_text(encoding="utf-8")
    assert all(f"({key}.png)" in md for key in FIGURES)
    return md


def test_quickstart_runs_and_reports(tmp_path: Path) -> None:
    runs, out = tmp_path / "runs", tmp_path / "report"
    cli = CliRunner()
    result = cli.invoke(
        _app(),
        ["run", str(QUICKSTART), "--out", str(runs), "--quiet", *TINY],
    )
    assert result.exit_code == 0, result.output
    with ResultsStore(results_path(runs), create=False) as store:
        rows = store.runs()
        assert [(r.name, r.status) for r in rows] == [
            ("fedavg", "completed"),
            ("fedprox", "completed"),
            ("centralized", "completed"),
        ]
        assert all(len(store.rounds(r.id)) == 2 for r in rows)
    # The report's numbers agree with the runner's own summary of each run.
    for arm in load_arms([str(runs)], runs_dir=runs):
        with ResultsStore(results_path(runs), create=False) as store:
            recorded = store.run(int(arm.run_id)).summary
        assert recorded is not None
        mine = summarize(arm)
        assert mine.final_accuracy == pytest.approx(recorded.final_accuracy)
        assert mine.best_accuracy == pytest.approx(recorded.best_accuracy)
        assert mine.rounds_to_target == recorded.rounds_to_target
        assert (mine.bytes_up, mine.bytes_down) == (recorded.bytes_up, recorded.bytes_down)
    result = cli.invoke(_app(), ["report", str(runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == str(out / "report.html")
    md = _check_report(out)
    for arm in ("fedavg", "fedprox", "centralized"):
        assert f"| {arm} |" in md
    assert "study quickstart" in md
    # Centralised training communicates nothing; the FL arms do.
    assert re.search(r"\| centralized \|[^\n]*\| 0 B \|", md)
    assert not re.search(r"\| fedavg \|[^\n]*\| 0 B \|", md)


@pytest.mark.slow  # four `fedkit` processes, each importing torch: ~30 s on a busy 2-core box
@pytest.mark.skipif(sys.platform == "win32", reason="bash script")
def test_demo_script_smoke(tmp_path: Path) -> None:
    """``scripts/demo.sh`` (what ``make demo`` runs) with 2 rounds and no MNIST present."""
    env = dict(os.environ)
    env.update(
        DEMO_OUT=str(tmp_path / "demo"),
        DEMO_ARGS=" ".join((*TINY, "--quiet")),
        FEDKIT_DATA=str(tmp_path / "no-data"),
        VENV=str(Path(sys.executable).parent.parent),
        OMP_NUM_THREADS="1",
    )
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "demo.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    report_path = Path(lines[-1])
    assert report_path == tmp_path / "demo" / "quickstart-report" / "report.html"
    assert "skipping the MNIST comparison" in proc.stdout
    _check_report(report_path.parent)
