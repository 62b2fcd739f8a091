"""Every example study runs (one round per arm) on the real data, when the data is present.

Slow: a round of the larger studies (and one epoch of their centralised arms) takes minutes on a
2-core machine, so this runs with ``make test-all`` (``-m slow``), not in the default suite; the
default suite validates every example's config (``test_examples.py``) and runs the quickstart
end to end (``test_quickstart.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fedkit.experiment.cli import run
from fedkit.experiment.results import ResultsStore, results_path
from tests.conftest import require_data

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# example file stem -> data files it needs (relative to FEDKIT_DATA)
NEEDS: dict[str, tuple[str, ...]] = {
    "quickstart": (),
    "sweep_participation_epochs": (),
    "mnist_fl_vs_central": ("mnist/train-images-idx3-ubyte.gz",),
    "mcmahan_mnist_2nn": ("mnist/train-images-idx3-ubyte.gz",),
    "mcmahan_mnist_cnn": ("mnist/train-images-idx3-ubyte.gz",),
    "femnist_by_writer": ("femnist",),
    "shakespeare_by_role": ("shakespeare/shakespeare_train.h5",),
    "cifar100_lenet_fl_vs_central": ("cifar100/cifar100_rebuilt_uint8.npz",),
}


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("stem", sorted(NEEDS))
def test_example_runs_one_round(stem: str, tmp_path: Path) -> None:
    require_data(*NEEDS[stem])
    app = typer.Typer()
    app.command()(run)  # the only command: invoked without its name
    out = tmp_path / "runs"
    result = CliRunner().invoke(
        app,
        [str(EXAMPLES / f"{stem}.toml"), "--out", str(out), "--quiet", "--set", "run.rounds=1"],
    )
    assert result.exit_code == 0, result.output
    with ResultsStore(results_path(out), create=False) as store:
        runs = store.runs()
        assert runs and all(r.status == "completed" for r in runs), [
            (r.name, r.status, r.error) for r in runs
        ]
        for r in runs:
            assert r.summary is not None and r.summary.final_accuracy is not None
            assert 0.0 <= r.summary.final_accuracy <= 1.0
