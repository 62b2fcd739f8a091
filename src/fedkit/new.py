"""``fedkit new DIR``: write a small project that runs as written.

The project holds its own model (an ``nn.Module``), its own data (a dataset plugin that makes
each client's data on demand, :class:`fedkit.data.lazy.LazyClients`), an experiment file naming
both by import path, and a test that runs the experiment. From ``DIR``::

    fedkit run experiment.toml --out runs
    python -m pytest test_project.py

The plugins are imported from the current directory (:mod:`fedkit.plugins`), so commands run
from ``DIR``; elsewhere, put ``DIR`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["package_name", "write_project"]

_MODEL = '''"""{pkg}'s model: any nn.Module (fedkit passes num_classes, input_shape)."""

from __future__ import annotations

import math

from torch import Tensor, nn


class Net(nn.Module):
    """A two-layer perceptron (flattened input, one hidden ReLU layer)."""

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], hidden: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)
'''

_DATA = '''"""{pkg}'s data: each client's samples are made when the client is selected.

Replace ``_client`` with your own loading (files per client, a database query ...): it must give
the same tensors for the same client id every time it is called, on every process.
"""

from __future__ import annotations

import torch

from fedkit.algorithm import ClientData
from fedkit.data.datasets import Split
from fedkit.data.lazy import LazyClients
from fedkit.plugins import dataset

FEATURES = 20
CLASSES = 4


def _teacher(seed: int) -> torch.Tensor:
    return torch.randn(FEATURES, CLASSES, generator=torch.Generator().manual_seed(seed))


def _samples(n: int, seed: int, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=g) + shift
    y = (x @ _teacher(0)).argmax(dim=1)
    return x, y


@dataset
def load(num_clients: int = 20, samples: int = 64, seed: int = 0) -> LazyClients:
    """``num_clients`` clients of ``samples`` examples each; client i's inputs are shifted by
    a client-specific offset (feature skew)."""

    def client(cid: int) -> ClientData:
        x, y = _samples(samples, seed * 1_000_003 + cid + 1, shift=0.1 * (cid % 5))
        return ClientData(x, y)

    x_test, y_test = _samples(500, seed * 1_000_003, shift=0.0)
    return LazyClients(
        sizes=[samples] * num_clients,
        load=client,
        test=Split(x_test, y_test),
        num_classes=CLASSES,
        input_shape=(FEATURES,),
    )
'''

_EXPERIMENT = """# {pkg}: FedAvg on the project's own model and data.
#
#   fedkit run experiment.toml --out runs           (from this folder)
#   fedkit run experiment.toml --set 'run.executor="processes"'

[study]
name = "{pkg}"

[data]
dataset = "{pkg}.data:load"
partition = "natural"

[data.options]
num_clients = 20
samples = 64

[model]
name = "{pkg}.model:Net"
hidden = 32

[algorithm]
name = "fedavg"

[algorithm.local]
epochs = 1
batch_size = 16
lr = 0.1

[run]
rounds = 5
clients_per_round = 5
seed = 0
"""

_TEST = '''"""Runs the project's experiment and checks that it learns something."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_experiment_runs(tmp_path: Path) -> None:
    env = {{**os.environ, "PYTHONPATH": str(HERE)}}
    out = subprocess.run(
        [sys.executable, "-m", "fedkit", "run", str(HERE / "experiment.toml"), "--quiet",
         "--json", "--out", str(tmp_path)],
        cwd=HERE, env=env, capture_output=True, text=True, check=False, timeout=600,
    )
    assert out.returncode == 0, out.stderr
    run = json.loads(out.stdout.splitlines()[-1])
    assert run["status"] == "completed", run
    assert run["final_accuracy"] > 0.4  # above the largest class's share of the test set (31%)
'''


def package_name(directory: Path) -> str:
    """A Python package name from the folder's name (``my-fl project`` -> ``my_fl_project``)."""
    name = re.sub(r"\W+", "_", directory.resolve().name.lower()).strip("_")
    if not name or name[0].isdigit() or keyword.iskeyword(name) or name == "fedkit":
        name = f"fl_{name}" if name else "fl_project"
    return name


def write_project(directory: Path, *, force: bool = False) -> list[Path]:
    """Write the project into ``directory`` (created); returns the files written.

    Raises:
        FileExistsError: A file to be written exists and ``force`` is false.
    """
    pkg = package_name(directory)
    files = {
        Path(pkg) / "__init__.py": f'"""{pkg}: a fedkit project (see experiment.toml)."""\n',
        Path(pkg) / "model.py": _MODEL.format(pkg=pkg),
        Path(pkg) / "data.py": _DATA.format(pkg=pkg),
        Path("experiment.toml"): _EXPERIMENT.format(pkg=pkg),
        Path("test_project.py"): _TEST.format(pkg=pkg),
    }
    targets = [directory / rel for rel in files]
    clash = [str(t) for t in targets if t.exists()]
    if clash and not force:
        raise FileExistsError(f"would overwrite {', '.join(clash)} (use --force)")
    for rel, text in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return targets


def new(
    directory: Annotated[Path, typer.Argument(help="Folder of the new project.", metavar="DIR")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
) -> None:
    """Write a small project (model, data, experiment file, a test) into DIR."""
    try:
        written = write_project(directory, force=force)
    except FileExistsError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=2) from None
    for path in written:
        typer.echo(f"wrote {path}")
    typer.echo(f"next: cd {directory} && fedkit run experiment.toml --out runs")
