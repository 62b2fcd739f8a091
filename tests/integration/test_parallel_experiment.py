"""A ``[parallel]`` experiment through the experiment layer: parsed, run, recorded in the store."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedkit.experiment.config import ConfigError, load_study, study_from_mapping
from fedkit.experiment.results import ResultsStore
from fedkit.experiment.runner import run_study

REPO = Path(__file__).resolve().parents[2]


def test_parallel_arm_is_recorded(tmp_path: Path) -> None:
    doc = {
        "study": {"name": "parallel-smoke"},
        "data": {"dataset": "synthetic", "partition": "iid", "num_clients": 1, "seed": 0},
        "model": {"name": "logreg"},
        "parallel": {
            "method": "local_sgd",
            "workers": 2,
            "local_steps": 4,
            "batch_size": 16,
            "lr": 0.1,
            "sample_budget": 3200,
            "eval_every_samples": 1600,
        },
    }
    study = study_from_mapping(doc, default_name="x", overrides={})
    store = ResultsStore(tmp_path / "results.sqlite")
    (outcome,) = run_study(study, store)
    assert outcome.status == "completed", outcome.error
    rounds = store.rounds(outcome.run_id)
    assert len(rounds) == 2
    assert rounds[-1].test_accuracy is not None and rounds[-1].test_accuracy > 0.5
    assert all(r.bytes_up is not None and r.bytes_up > 0 for r in rounds)
    (run,) = store.runs()
    assert run.config["parallel"]["method"] == "local_sgd"


def test_bad_parallel_key_is_a_config_error() -> None:
    doc = {
        "data": {"dataset": "synthetic", "partition": "iid", "num_clients": 1},
        "model": {"name": "logreg"},
        "parallel": {"method": "local_sgd", "local_step": 4},
    }
    with pytest.raises(ConfigError, match="local_step"):
        study_from_mapping(doc, default_name="x", overrides={})


def test_cifar100_study_file_parses() -> None:
    study = load_study(REPO / "examples" / "cifar100_parallel.toml")
    names = [r.name for r in study.runs]
    assert names == [
        "minibatch-sgd",
        "largebatch-sgd",
        "largebatch-lars",
        "localsgd-h1",
        "localsgd-h4",
        "localsgd-h16",
        "slowmo-h16",
    ]
    budgets = {r.parallel.sample_budget for r in study.runs if r.parallel is not None}
    assert budgets == {1_000_000}  # an equal sample budget for every arm
    hs = {r.name: r.parallel.local_steps for r in study.runs if r.parallel is not None}
    assert (hs["localsgd-h1"], hs["localsgd-h4"], hs["localsgd-h16"]) == (1, 4, 16)


def test_module_entry_point_writes_a_readable_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedkit.parallel.__main__ import main
    from fedkit.parallel.launch import read_result

    config = tmp_path / "tiny.toml"
    config.write_text(
        '[data]\ndataset = "synthetic"\npartition = "iid"\nnum_clients = 1\n'
        '[model]\nname = "logreg"\n'
        '[parallel]\nmethod = "slowmo"\nworkers = 2\nlocal_steps = 2\nbatch_size = 8\n'
        "sample_budget = 640\neval_every_samples = 320\n"
    )
    main([str(config), "--set", "parallel.lr=0.2", "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert printed.count("step ") == 2 and "final.safetensors" in printed
    result = read_result(tmp_path / "out")
    assert [p.samples for p in result.history] == [320, 640]
    assert result.history[-1].lr == pytest.approx(0.2)
    # the files hold exactly what an in-process run of the same arm produces
    from fedkit.data.datasets import load_dataset
    from fedkit.parallel import run_parallel
    from fedkit.sim.factory import ModelSpec

    (cfg,) = load_study(config, ["parallel.lr=0.2"]).runs
    assert cfg.parallel is not None
    ds = load_dataset(cfg.data.dataset, **cfg.data.dataset_options())
    model = ModelSpec(
        name="logreg", num_classes=ds.num_classes, input_shape=tuple(ds.input_shape), init_seed=0
    )
    direct = run_parallel(cfg.parallel, ds, model)
    assert direct.final_params.keys() == result.final_params.keys()
    for k, v in direct.final_params.items():
        assert torch.equal(v, result.final_params[k]), k


def _parallel_doc(topology: str) -> dict[str, object]:
    return {
        "data": {"dataset": "synthetic", "partition": "iid", "num_clients": 1, "seed": 0},
        "model": {"name": "logreg"},
        "parallel": {
            "method": "local_sgd",
            "workers": 4,
            "local_steps": 2,
            "batch_size": 8,
            "lr": 0.1,
            "sample_budget": 1280,
            "eval_every_samples": 640,
            "topology": topology,
        },
    }


@pytest.mark.parametrize("topology", ["ring", "ps"])
def test_evaluation_points_keep_their_details_and_directional_bytes(
    topology: str, tmp_path: Path
) -> None:
    """Every measurement of a point is stored; up/down bytes follow the topology's formulas."""
    (cfg,) = study_from_mapping(_parallel_doc(topology), default_name="d").runs
    with ResultsStore(tmp_path / "results.sqlite") as store:
        (outcome,) = run_study(study_from_mapping(_parallel_doc(topology), default_name="d"), store)
        rounds = store.rounds(outcome.run_id)
    assert outcome.status == "completed" and cfg.parallel is not None
    last = rounds[-1].details
    assert last is not None
    for key in ("samples", "epoch", "compute_seconds", "comm_seconds", "syncs", "local_steps"):
        assert key in last, key
    assert last["samples"] == 1280 and last["syncs"] == 1280 // (4 * 8 * 2)
    k = 4
    up = sum(r.bytes_up for r in rounds)
    down = sum(r.bytes_down for r in rounds)
    assert up == round(last["bytes_up_per_worker"] * k)
    assert down == round(last["bytes_down_per_worker"] * k)
    model_bytes = (60 * 10 + 10) * 4  # logreg on Synthetic: d = 60, 10 classes, float32
    syncs = int(last["syncs"])
    if topology == "ring":  # each worker sends and receives 2(K-1)/K model bytes per sync
        assert up == down == round(k * syncs * 2 * (k - 1) / k * model_bytes)
    else:  # parameter server: each worker sends one model and receives one per sync
        assert up == down == k * syncs * model_bytes
        assert last["server_bytes"] == k * 2 * model_bytes * syncs


def test_schema_1_database_is_migrated_in_place(tmp_path: Path) -> None:
    """A results database written before per-round details existed still opens and gains them."""
    import sqlite3

    path = tmp_path / "results.sqlite"
    with ResultsStore(path):
        pass
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE r2 AS SELECT * FROM rounds")  # rebuild rounds without `details`
    cols = [r[1] for r in con.execute("PRAGMA table_info(rounds)") if r[1] != "details"]
    con.execute("DROP TABLE rounds")
    con.execute(f"CREATE TABLE rounds AS SELECT {', '.join(cols)} FROM r2")
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()
    with ResultsStore(path) as store:
        (outcome,) = run_study(study_from_mapping(_parallel_doc("ring"), default_name="m"), store)
        assert store.rounds(outcome.run_id)[-1].details is not None
