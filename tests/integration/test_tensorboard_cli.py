"""Issue 19, item 7: ``fedkit run --tensorboard DIR`` (the same as ``[run] tensorboard = "DIR"``)
writes one subdirectory per run under DIR, and a ``[parallel]`` study writes TensorBoard scalars
too (one step per evaluation point, one subdirectory per arm), read back by tensorboard's own
EventAccumulator and equal to what the results database holds."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fedkit.experiment.cli import run
from fedkit.experiment.config import ConfigError, study_from_mapping
from fedkit.experiment.results import ResultsStore, results_path
from fedkit.tensorboard import tensorboard_root
from tests.integration.test_tensorboard import scalars

FEDERATED = """
[data]
dataset = "synthetic"
partition = "natural"
[data.options]
num_users = 4
[model]
name = "logreg"
[algorithm]
name = "fedavg"
[run]
rounds = 2
clients_per_round = 2
[[arms]]
name = "a"
[[arms]]
name = "b"
algorithm.name = "fedprox"
algorithm.mu = 0.1
"""

PARALLEL = """
[data]
dataset = "synthetic"
partition = "iid"
num_clients = 1
[model]
name = "logreg"
[parallel]
method = "local_sgd"
workers = 2
local_steps = 4
batch_size = 16
lr = 0.1
sample_budget = 3200
eval_every_samples = 1600
[[arms]]
name = "h4"
[[arms]]
name = "h2"
parallel.local_steps = 2
"""


def _run(tmp_path: Path, text: str, *args: str) -> Path:
    exp = tmp_path / "exp.toml"
    exp.write_text(text)
    app = typer.Typer()
    app.command()(run)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, [str(exp), "--out", str(out), "--quiet", *args])
    assert res.exit_code == 0, res.output
    return out


def _accuracies(out: Path) -> dict[str, list[tuple[int, float]]]:
    """``"<id>-<name>" -> [(round counted from 1, test accuracy)]`` from the database."""
    with ResultsStore(results_path(out), create=False) as store:
        return {
            f"{r.id}-{r.name}": [
                (x.round + 1, x.test_accuracy)
                for x in store.rounds(r.id)
                if x.test_accuracy is not None
            ]
            for r in store.runs()
        }


def test_tensorboard_flag_writes_one_folder_per_run_under_dir(tmp_path: Path) -> None:
    tb = tmp_path / "tb"
    out = _run(tmp_path, FEDERATED, "--tensorboard", str(tb))
    want = _accuracies(out)
    assert sorted(p.name for p in tb.iterdir()) == sorted(want) == ["1-a", "2-b"]
    for name, acc in want.items():
        got = scalars(tb / name)
        assert [(s, pytest.approx(v)) for s, v in got["test/accuracy"]] == acc
        assert [s for s, _ in got["train/loss"]] == [1, 2]
    assert not (out / "tensorboard").exists()  # DIR, not OUT/tensorboard


def test_a_parallel_study_writes_scalars_per_arm(tmp_path: Path) -> None:
    out = _run(tmp_path, PARALLEL.replace("[parallel]", "[run]\ntensorboard = true\n[parallel]"))
    want = _accuracies(out)
    root = out / "tensorboard"
    assert sorted(p.name for p in root.iterdir()) == sorted(want) == ["1-h4", "2-h2"]
    for name, acc in want.items():
        got = scalars(root / name)
        # 3200 samples, evaluated every 1600: two points, steps 1 and 2
        assert [(s, pytest.approx(v)) for s, v in got["test/accuracy"]] == acc
        assert [s for s, _ in got["test/accuracy"]] == [1, 2]
        assert all(v > 0 for _, v in got["bytes/up"])
    # evaluation waits for the next synchronisation: H = 4 syncs every 4 x 16 x 2 = 128 samples,
    # so the first point is at ceil(1600 / 128) = 13 syncs = 1664; H = 2 every 64: 1600 exactly
    samples = {name: [v for _, v in scalars(root / name)["parallel/samples"]] for name in want}
    assert samples == {"1-h4": [1664.0, 3200.0], "2-h2": [1600.0, 3200.0]}
    h = {name: {v for _, v in scalars(root / name)["parallel/local_steps"]} for name in want}
    assert h == {"1-h4": {4.0}, "2-h2": {2.0}}


def test_tensorboard_setting_is_a_bool_or_a_directory(tmp_path: Path) -> None:
    assert tensorboard_root(False, tmp_path) is None
    assert tensorboard_root(True, tmp_path) == tmp_path / "tensorboard"
    assert tensorboard_root("elsewhere/tb", tmp_path) == Path("elsewhere/tb")
    doc = {
        "data": {"dataset": "synthetic", "partition": "natural"},
        "model": {"name": "logreg"},
        "algorithm": {"name": "fedavg"},
        "run": {"rounds": 1, "tensorboard": 1},
    }
    with pytest.raises(ConfigError, match=r"run\.tensorboard"):
        study_from_mapping(doc, default_name="t")
    doc["run"]["tensorboard"] = ""  # type: ignore[index]
    with pytest.raises(ConfigError, match="true, false or a directory"):
        study_from_mapping(doc, default_name="t")
