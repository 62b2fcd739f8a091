"""``fedkit vertical FILE`` on MNIST halves: recorded runs, the arms agree, refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fedkit.experiment.results import ResultsStore, results_path
from fedkit.experiment.vertical import load_vertical
from fedkit.experiment.vertical_cli import vertical

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

TINY = """
[data]
dataset = "mnist"

[vertical]
parties = 2
embedding = 8
bottom_hidden = [16]
overlap = 0.9
max_train = 300
max_test = 200
mode = "simulation"
seed = 1

[vertical.local]
lr = 0.05
epochs = 1
batch_size = 32

[[arms]]
name = "sim"

[[arms]]
name = "central"
vertical.mode = "centralized"
"""

needs_mnist = pytest.mark.skipif(
    not (Path(os.environ.get("FEDKIT_DATA", "../shared/data")) / "mnist").is_dir(),
    reason="needs MNIST under $FEDKIT_DATA",
)


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command("vertical")(vertical)
    app.command("other")(lambda: None)  # two commands: typer keeps the subcommand name
    return app


@needs_mnist
def test_records_both_arms_with_equal_accuracy(tmp_path: Path) -> None:
    file = tmp_path / "v.toml"
    file.write_text(TINY)
    data = os.environ.get("FEDKIT_DATA", "../shared/data")
    res = CliRunner().invoke(
        cli(), ["vertical", str(file), "--out", str(tmp_path), "--json", "--data", data]
    )
    assert res.exit_code == 0, res.output
    rows = {d["name"]: d for d in map(json.loads, res.stdout.splitlines()) if "name" in d}
    assert set(rows) == {"sim", "central"}
    assert rows["sim"]["final_accuracy"] == pytest.approx(rows["central"]["final_accuracy"])
    # 300 x 0.9 x 0.9 ≈ 243 common training samples; the same count in both arms
    common = rows["sim"]["metrics"]["common_train"]
    assert 200 < common < 280
    assert rows["central"]["metrics"]["common_train"] == common
    # party 1 sends an 8-float activation per sample and gets its gradient back (one epoch);
    # the label party's own bottom exchanges nothing
    assert rows["sim"]["bytes_up"] == 2 * int(common) * 8 * 4
    assert rows["central"]["bytes_up"] == 0
    with ResultsStore(results_path(tmp_path), create=False) as store:
        assert [r.status for r in store.runs()] == ["completed", "completed"]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('mode = "simulation"', 'mode = "ray"', "mode must be one of"),
        ("overlap = 0.9", "overlap = 0.0", "overlap must be in"),
        ('dataset = "mnist"', 'dataset = "mnits"', "data.dataset must be one of"),
        ("epochs = 1", "steps = 3", "set local.epochs"),
    ],
)
def test_invalid_file_exits_2(tmp_path: Path, old: str, new: str, message: str) -> None:
    file = tmp_path / "v.toml"
    file.write_text(TINY.replace(old, new, 1))
    res = CliRunner().invoke(cli(), ["vertical", str(file), "--out", str(tmp_path), "-q"])
    assert res.exit_code == 2
    assert message in " ".join(res.output.split())
    assert not results_path(tmp_path).exists()


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("vertical_*.toml")), ids=lambda p: p.stem)
def test_examples_validate(path: Path) -> None:
    assert load_vertical(path)
