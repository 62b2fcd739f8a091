"""``fedkit decentral FILE``: validation, recording, and the same file on torchrun ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fedkit.experiment.decentral import (
    accuracy_at_bytes,
    equal_bytes_table,
    experiments_from_mapping,
    load_decentral,
)
from fedkit.experiment.decentral_cli import decentral
from fedkit.experiment.results import ResultsStore, RoundRow, results_path
from fedkit.experiment.tables import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

TINY = """
[data]
dataset = "synthetic"
partition = "natural"
alpha = 1.0
beta = 1.0
[data.options]
num_users = 4

[model]
name = "logreg"

[decentral]
topology = "ring"
rounds = 3
eval_every = 2
seed = 1

[decentral.local]
lr = 0.05
steps = 2
batch_size = 10

[[arms]]
name = "ring"

[[arms]]
name = "allreduce"
decentral.topology = "allreduce"
"""


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command("decentral")(decentral)
    app.command("other")(lambda: None)  # two commands: typer keeps the subcommand name
    return app


def _json_lines(text: str) -> dict[str, dict[str, object]]:
    rows = [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]
    return {str(r["name"]): r for r in rows}


def test_runs_arms_and_records_rounds(tmp_path: Path) -> None:
    file = tmp_path / "d.toml"
    file.write_text(TINY)
    res = CliRunner().invoke(
        cli(), ["decentral", str(file), "--out", str(tmp_path), "--json", "-q"]
    )
    assert res.exit_code == 0, res.output
    out = _json_lines(res.stdout)
    assert set(out) == {"ring", "allreduce"}
    # logreg on Synthetic: 60 inputs x 10 classes + 10 biases = 610 floats = 2440 bytes per model
    ring_metrics = out["ring"]["metrics"]
    assert isinstance(ring_metrics, dict)
    assert ring_metrics["bytes_per_node"] == 2 * 2440
    with ResultsStore(results_path(tmp_path), create=False) as store:
        runs = store.runs()
        assert [r.status for r in runs] == ["completed", "completed"]
        rounds = store.rounds(runs[0].id)
    assert [r.round for r in rounds] == [0, 1, 2]
    # evaluated at round 2 (eval_every) and the last (3): 0-based rounds 1 and 2
    assert [r.test_accuracy is not None for r in rounds] == [False, True, True]
    assert rounds[0].bytes_up == 4 * 2 * 2440
    assert rounds[0].details is not None and rounds[0].details["consensus_distance"] > 0


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ('topology = "ring"', "topology must be one of"),
        ("rounds = 3", "rounds must be in"),
        ("steps = 2", "unknown key decentral.local.stepz"),
    ],
)
def test_invalid_file_exits_2(tmp_path: Path, patch: str, message: str) -> None:
    bad = {
        'topology = "ring"': 'topology = "star"',
        "rounds = 3": "rounds = 0",
        "steps = 2": "stepz = 2",
    }[patch]
    file = tmp_path / "d.toml"
    file.write_text(TINY.replace(patch, bad, 1))
    res = CliRunner().invoke(cli(), ["decentral", str(file), "--out", str(tmp_path), "-q"])
    assert res.exit_code == 2
    assert message in " ".join(res.output.split())
    assert not results_path(tmp_path).exists()


def test_refusals_of_the_loader() -> None:
    doc = {"data": {"dataset": "synthetic", "num_clients": 8}, "model": {"name": "logreg"}}
    with pytest.raises(ConfigError, match="needs a \\[decentral\\] table"):
        experiments_from_mapping(doc, default_name="x")
    with pytest.raises(ConfigError, match="square number"):
        experiments_from_mapping({**doc, "decentral": {"topology": "torus"}}, default_name="x")
    with pytest.raises(ConfigError, match=r"must be section\.key"):
        experiments_from_mapping(
            {**doc, "decentral": {}}, default_name="x", overrides={"run.rounds": 3}
        )


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("decentral_*.toml")), ids=lambda p: p.stem)
def test_examples_validate(path: Path) -> None:
    assert load_decentral(path)


@pytest.mark.dist
@pytest.mark.slow  # torchrun with 4 ranks, two runs: ~30 s on a loaded 2-core machine
def test_same_file_on_torchrun_ranks_gives_the_simulators_models(tmp_path: Path) -> None:
    file = tmp_path / "d.toml"
    file.write_text(TINY)
    sim = CliRunner().invoke(
        cli(), ["decentral", str(file), "--out", str(tmp_path / "sim"), "--json", "-q"]
    )
    assert sim.exit_code == 0, sim.output
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=4",
            "-m",
            "fedkit",
            "decentral",
            str(file),
            "--out",
            str(tmp_path / "ranks"),
            "--json",
            "-q",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"},
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    want, got = _json_lines(sim.stdout), _json_lines(proc.stdout)
    assert set(got) == {"ring", "allreduce"}  # rank 0 only prints
    for name in want:
        assert got[name]["model_sha256"] == want[name]["model_sha256"], name
        assert got[name]["final_accuracy"] == want[name]["final_accuracy"]


def _round(i: int, acc: float | None, per_node: float) -> RoundRow:
    return RoundRow(
        round=i,
        train_loss=1.0,
        test_loss=None,
        test_accuracy=acc,
        fed_mean=None,
        fed_p10=None,
        fed_var=None,
        fed_min=None,
        fed_clients=None,
        cohort_size=4,
        dropped=0,
        bytes_up=0,
        bytes_down=0,
        wall_seconds=0.0,
        sim_seconds=None,
        committed=True,
        details={"bytes_per_node": per_node, "model_bytes": 10},
    )


def test_accuracy_at_bytes_by_hand() -> None:
    # 20 bytes per node per round; evaluated at rounds 1 and 3 (0-based): cumulative 40 and 80
    rows = [_round(0, None, 20), _round(1, 0.5, 20), _round(2, None, 20), _round(3, 0.7, 20)]
    assert accuracy_at_bytes(rows, 39) is None  # round 1 needs 40 bytes
    assert accuracy_at_bytes(rows, 40) == 0.5
    assert accuracy_at_bytes(rows, 79) == 0.5
    assert accuracy_at_bytes(rows, 10**9) == 0.7


def test_equal_bytes_table_from_a_recorded_study(tmp_path: Path) -> None:
    file = tmp_path / "d.toml"
    file.write_text(TINY)
    res = CliRunner().invoke(cli(), ["decentral", str(file), "--out", str(tmp_path), "-q"])
    assert res.exit_code == 0, res.output
    with ResultsStore(results_path(tmp_path), create=False) as store:
        table = equal_bytes_table(store, "d", [4, 100])
    lines = table.splitlines()
    assert lines[0].startswith("| arm | acc @ 4 models/node | acc @ 100 models/node |")
    ring = next(ln for ln in lines if ln.startswith("| ring |")).split("|")
    allreduce = next(ln for ln in lines if ln.startswith("| allreduce |")).split("|")
    # ring: 2 models per round -> 4 models after round 2 (evaluated: eval_every = 2)
    assert ring[2].strip() != "—"
    assert ring[6].strip() == "2"
    # all-reduce over 4 nodes: 2 (n - 1) / n = 1.5 models per round
    assert allreduce[6].strip() == "1.5"
    assert allreduce[7].strip() == "0.000"  # consensus distance of an exact average
