"""Unit tests of ``fedkit report``: summaries, arm loading from the results store, the files.

Runs are written with the results store's own API (no training), so these tests check the report
against hand-computed numbers.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import matplotlib.image
import pytest
from typer.testing import CliRunner

from fedkit.experiment.report import ReportSourceError, flatten_config, load_arms, write_report
from fedkit.experiment.report_model import (
    Arm,
    RoundPoint,
    differing_settings,
    labels,
    summarize,
)
from fedkit.experiment.results import ClientRow, ResultsStore, RoundRow, RunSummary, results_path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _point(
    r: int, acc: float | None, *, wall: float = 0.0, up: int = 0, down: int = 0
) -> RoundPoint:
    return RoundPoint(
        round=r, accuracy=acc, loss=None, wall_seconds=wall, bytes_up=up, bytes_down=down
    )


def assert_valid_png(path: Path) -> None:
    """The file starts with the PNG signature and matplotlib decodes it into an RGB(A) image."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert float(image.std()) > 0.0, f"{path} is a blank image"


def _assert_balanced_html(text: str) -> None:
    """Every opened element (other than void ones) is closed, in order."""
    from html.parser import HTMLParser

    void = {"meta", "img", "br", "hr", "link", "input"}

    class Checker(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.stack: list[str] = []

        def handle_starttag(self, tag: str, attrs: object) -> None:
            if tag not in void:
                self.stack.append(tag)

        def handle_endtag(self, tag: str) -> None:
            assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
            self.stack.pop()

    checker = Checker()
    checker.feed(text)
    checker.close()
    assert checker.stack == []


# -- summaries -------------------------------------------------------------------------------


def test_summarize_final_best_and_rounds_to_target() -> None:
    arm = Arm(
        run_id="1",
        name="fedavg",
        algorithm="fedavg",
        target_accuracy=0.6,
        points=(
            _point(1, 0.3, wall=1.0, up=10, down=20),
            _point(2, None, wall=2.0, up=20, down=40),
            _point(3, 0.65, wall=3.0, up=30, down=60),
            _point(4, 0.7, wall=4.0, up=40, down=80),
            _point(5, 0.62, wall=5.5, up=50, down=100),
        ),
        client_accuracy=(0.0, 0.5, 1.0, 0.25, 0.75),
    )
    s = summarize(arm)
    assert s.rounds == 5
    assert s.final_accuracy == pytest.approx(0.62)
    assert (s.best_accuracy, s.best_round) == (pytest.approx(0.7), 4)
    assert s.rounds_to_target == 3
    assert (s.seconds_to_target, s.bytes_to_target) == (3.0, 90)
    assert (s.wall_seconds, s.bytes_up, s.bytes_down) == (5.5, 50, 100)
    assert s.client_mean == pytest.approx(0.5)
    # 10th percentile of [0, .25, .5, .75, 1] by linear interpolation: position 0.4 -> 0.1.
    assert s.client_p10 == pytest.approx(0.1)
    assert s.client_count == 5


def test_summarize_target_not_reached_and_no_target() -> None:
    points = (_point(1, 0.2), _point(2, 0.4))
    assert (
        summarize(
            Arm(run_id="1", name="a", algorithm="fedavg", target_accuracy=0.9, points=points)
        ).rounds_to_target
        is None
    )
    s = summarize(Arm(run_id="1", name="a", algorithm="fedavg", points=points))
    assert s.rounds_to_target is None
    assert s.client_mean is None and s.client_count == 0


def test_summarize_empty_run() -> None:
    s = summarize(Arm(run_id="7", name="crashed", algorithm="fedavg", status="failed"))
    assert s.rounds == 0 and s.final_accuracy is None and s.best_accuracy is None


def test_points_must_increase() -> None:
    with pytest.raises(ValueError, match="increasing"):
        Arm(run_id="1", name="a", algorithm="x", points=(_point(2, 0.1), _point(1, 0.2)))
    with pytest.raises(ValueError, match="round must be >= 1"):
        _point(0, 0.1)


def test_labels_disambiguate_equal_names() -> None:
    arms = [
        Arm(run_id="1", name="fedavg", algorithm="fedavg"),
        Arm(run_id="2", name="fedavg", algorithm="fedavg"),
        Arm(run_id="3", name="central", algorithm="centralized"),
    ]
    assert labels(arms) == ["fedavg [1]", "fedavg [2]", "central"]


def test_differing_settings() -> None:
    a = Arm(
        run_id="1",
        name="a",
        algorithm="fedavg",
        settings=(("run.rounds", "5"), ("algorithm.name", "fedavg"), ("algorithm.mu", "0.1")),
    )
    b = Arm(
        run_id="2",
        name="b",
        algorithm="fedprox",
        settings=(("run.rounds", "5"), ("algorithm.name", "fedprox")),
    )
    common, differing = differing_settings([a, b])
    assert common == [("run.rounds", "5")]
    assert differing == ["algorithm.name", "algorithm.mu"]


def test_format_bytes() -> None:
    from fedkit.experiment.report_plots import format_bytes

    assert format_bytes(0) == "0 B"
    assert format_bytes(999) == "999 B"
    assert format_bytes(1536) == "1.54 KB"
    assert format_bytes(1_250_000) == "1.25 MB"
    assert format_bytes(999_999) == "1 MB"
    assert format_bytes(318_736_000) == "319 MB"
    assert format_bytes(5e15) == "5000 TB"


def test_flatten_config() -> None:
    flat = flatten_config({"run": {"rounds": 5, "target_accuracy": None}, "data": {"a": "x"}})
    assert flat == [("run.rounds", "5"), ("run.target_accuracy", "null"), ("data.a", "x")]


# -- from the results store to the files ----------------------------------------------------


def _record(
    store: ResultsStore,
    name: str,
    algorithm: str,
    accs: list[float],
    *,
    bytes_per_round: int,
    client_accs: list[float],
    target: float | None = 0.5,
    study: str = "unit",
) -> int:
    config = {
        "algorithm": {"name": algorithm, "lr": 0.1},
        "data": {"dataset": "synthetic", "partition": "natural"},
        "run": {"rounds": len(accs), "target_accuracy": target},
    }
    run_id = store.start_run(name=name, config=config, study=study, code="test", env={})
    for r, acc in enumerate(accs):
        last = r == len(accs) - 1
        clients = [
            ClientRow(
                round=r,
                client_id=-1 if algorithm == "centralized" else 0,
                trained=True,
                num_examples=10,
                train_loss=1.0,
            )
        ]
        if last:
            clients += [
                ClientRow(
                    round=r, client_id=100 + i, trained=False, eval_examples=5, eval_accuracy=a
                )
                for i, a in enumerate(client_accs)
            ]
        store.add_round(
            run_id,
            RoundRow(
                round=r,
                train_loss=1.0 / (r + 1),
                test_loss=1.0,
                test_accuracy=acc,
                fed_mean=None,
                fed_p10=None,
                fed_var=None,
                fed_min=None,
                fed_clients=None,
                cohort_size=3,
                dropped=0,
                bytes_up=bytes_per_round,
                bytes_down=2 * bytes_per_round,
                wall_seconds=0.5,
                sim_seconds=None,
                committed=True,
            ),
            clients,
        )
    store.finish_run(
        run_id,
        RunSummary(
            rounds=len(accs),
            final_accuracy=accs[-1],
            best_accuracy=max(accs),
            rounds_to_target=None,
            target_accuracy=target,
            wall_seconds=0.5 * len(accs),
            bytes_up=bytes_per_round * len(accs),
            bytes_down=2 * bytes_per_round * len(accs),
            model_sha256="0" * 64,
        ),
    )
    return run_id


@pytest.fixture()
def results_dir(tmp_path: Path) -> Path:
    out = tmp_path / "runs"
    with ResultsStore(results_path(out)) as store:
        _record(
            store,
            "fedavg",
            "fedavg",
            [0.2, 0.45, 0.55, 0.6],
            bytes_per_round=1000,
            client_accs=[0.4, 0.5, 0.7, 0.9],
        )
        _record(
            store,
            "centralized",
            "centralized",
            [0.5, 0.7, 0.72, 0.71],
            bytes_per_round=0,
            client_accs=[0.6, 0.8],
        )
        failed = store.start_run(
            name="broken",
            config={"algorithm": {"name": "fedavg"}},
            study="unit",
            code="test",
            env={},
        )
        store.fail_run(failed, "RuntimeError: boom")
    return out


def test_arm_from_store_accumulates_and_reads_last_federated_eval(results_dir: Path) -> None:
    arms = load_arms([str(results_dir)], runs_dir=results_dir)
    assert [a.name for a in arms] == ["fedavg", "centralized"]  # the failed run is left out
    fedavg, central = arms
    assert [p.round for p in fedavg.points] == [1, 2, 3, 4]
    assert [p.wall_seconds for p in fedavg.points] == [0.5, 1.0, 1.5, 2.0]
    assert [p.bytes_total for p in fedavg.points] == [3000, 6000, 9000, 12000]
    assert fedavg.client_accuracy == (0.4, 0.5, 0.7, 0.9)
    assert fedavg.client_round == 4
    assert fedavg.target_accuracy == 0.5
    assert summarize(fedavg).rounds_to_target == 3
    assert summarize(central).rounds_to_target == 1
    assert summarize(central).bytes_up + summarize(central).bytes_down == 0
    assert ("algorithm.lr", "0.1") in fedavg.settings


def test_load_arms_selection_and_errors(results_dir: Path, tmp_path: Path) -> None:
    everything = load_arms([str(results_dir)], runs_dir=results_dir, include_unfinished=True)
    assert [a.status for a in everything] == ["completed", "completed", "failed"]
    by_id = load_arms(["2", f"{results_dir}:1"], runs_dir=results_dir)
    assert [a.name for a in by_id] == ["centralized", "fedavg"]
    with pytest.raises(ReportSourceError, match="no run 9"):
        load_arms(["9"], runs_dir=results_dir)
    with pytest.raises(ReportSourceError, match="neither a results directory"):
        load_arms(["nonsense"], runs_dir=results_dir)
    with pytest.raises(ReportSourceError, match="no results database"):
        load_arms(["1"], runs_dir=tmp_path / "empty")
    with pytest.raises(ReportSourceError, match="of study 'other'"):
        load_arms([str(results_dir)], runs_dir=results_dir, study="other")


def test_write_report_files(results_dir: Path, tmp_path: Path) -> None:
    arms = load_arms([str(results_dir)], runs_dir=results_dir)
    files = write_report(arms, tmp_path / "report")
    assert [p.key for p in files.plots] == [
        "accuracy_vs_rounds",
        "accuracy_vs_time",
        "accuracy_vs_bytes",
        "client_accuracy",
    ]
    for plot in files.plots:
        assert plot.path.parent == tmp_path / "report"
        assert_valid_png(plot.path)
    html = files.html.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 4
    assert all(base64.b64decode(img)[:8] == PNG_SIGNATURE for img in images)
    assert "study unit" in html
    _assert_balanced_html(html)
    md = files.markdown.read_text(encoding="utf-8")
    for plot in files.plots:
        assert f"]({plot.path.name})" in md
    # The summary rows: final, best (round), target and rounds to target per arm.
    assert (
        "| fedavg | 1 | fedavg | completed | 4 | 60.00% | 60.00% (4) | 50.00% | 3 | 1.5 s / 9 KB |"
        in md
    )
    assert (
        "| centralized | 2 | centralized | completed | 4 | 71.00% | 72.00% (3) | 50.00% | 1 |" in md
    )
    assert "0 B" in md and "12 KB" in md
    # Settings that differ between the arms are listed per arm.
    assert "| algorithm.name | fedavg | centralized |" in md


def test_report_command(results_dir: Path, tmp_path: Path) -> None:
    import typer

    from fedkit.experiment.report_cli import report

    app = typer.Typer()
    app.command()(report)
    out = tmp_path / "cli-report"
    result = CliRunner().invoke(app, [str(results_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == str(out / "report.html")
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    bad = CliRunner().invoke(app, ["42", "--runs", str(results_dir), "--out", str(out)])
    assert bad.exit_code == 2
    assert "no run 42" in bad.output


def test_report_with_a_failed_run_without_rounds(results_dir: Path, tmp_path: Path) -> None:
    """``--all`` brings in a failed run that recorded nothing; the report still renders."""
    arms = load_arms([str(results_dir)], runs_dir=results_dir, include_unfinished=True)
    files = write_report(arms, tmp_path / "all")
    for plot in files.plots:
        assert_valid_png(plot.path)
    md = files.markdown.read_text(encoding="utf-8")
    assert "| broken | 3 | fedavg | failed | 0 | – | – | – | – |" in md


def test_report_of_arms_without_federated_evaluation(tmp_path: Path) -> None:
    arms = [
        Arm(run_id="1", name="a", algorithm="fedavg", points=(_point(1, 0.5, up=10, down=10),)),
        Arm(run_id="2", name="b", algorithm="centralized", points=(_point(1, 0.7),)),
    ]
    files = write_report(arms, tmp_path / "nofed", title="no clients <&>")
    for plot in files.plots:
        assert_valid_png(plot.path)
    html = files.html.read_text(encoding="utf-8")
    assert "<title>no clients &lt;&amp;&gt;</title>" in html
