"""TensorBoard event files, read back by tensorboard's own EventAccumulator: a hand-made round
gives exactly its values under the documented tags, and a run with ``[run] tensorboard = true``
writes the same numbers its results database holds (DP-FedAvg's ε included)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from fedkit.evaluate import Distribution, EvalResult
from fedkit.executor import ClientMetrics
from fedkit.experiment.config import study_from_mapping
from fedkit.experiment.results import ResultsStore, results_path
from fedkit.experiment.runner import run_experiment
from fedkit.run import RoundRecord
from fedkit.tensorboard import TensorBoardCallback
from tests.integration.test_runner import tiny


def scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of the run folder: ``tag -> [(step, value), ...]``."""
    ea = EventAccumulator(str(logdir))
    ea.Reload()
    return {
        tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in ea.Tensors(tag)]
        for tag in ea.Tags()["tensors"]
    }


def record(r: int, **kw: object) -> RoundRecord:
    clients = (
        ClientMetrics(client_id=3, num_examples=10, steps=2, train_loss=1.0, seconds=0.5),
        ClientMetrics(client_id=7, num_examples=30, steps=6, train_loss=2.0, seconds=1.5),
    )
    base: dict[str, object] = dict(
        round=r, cohort=(3, 7, 9), clients=clients, dropped=(9,), committed=True,
        train_loss=1.75, central=EvalResult(loss=0.625, accuracy=0.75, num_examples=8),
        federated=None, bytes_up=1200, bytes_down=3600, wall_seconds=1.0, sim_seconds=None,
        metrics={"dp_epsilon": 2.5, "backdoor_accuracy": 0.125},
    )  # fmt: skip
    base.update(kw)
    return RoundRecord(**base)  # type: ignore[arg-type]


def test_a_round_is_written_under_the_documented_tags(tmp_path: Path) -> None:
    cb = TensorBoardCallback(tmp_path, per_worker=True)
    fed = Distribution(
        clients=4, mean=0.5, weighted_mean=0.625, p10=0.25, variance=0.01, minimum=0.125
    )
    cb(record(0, federated=fed), {})
    cb(record(1, central=None, train_loss=float("nan")), {})
    cb.close()
    got = scalars(tmp_path)
    assert got["test/accuracy"] == [(1, 0.75)]  # round 1 only: round 2 had no evaluation
    assert got["test/loss"] == [(1, 0.625)]
    assert got["train/loss"] == [(1, 1.75)]  # the NaN of round 2 is left out
    assert got["federated/mean"] == [(1, 0.5)]
    assert got["federated/p10"] == [(1, 0.25)]
    assert got["federated/weighted_mean"] == [(1, 0.625)]
    assert got["bytes/up"] == [(1, 1200.0), (2, 1200.0)]
    assert got["bytes/down"] == [(1, 3600.0), (2, 3600.0)]
    assert got["clients/completed"] == [(1, 2.0), (2, 2.0)]
    assert got["clients/dropped"] == [(1, 1.0), (2, 1.0)]
    assert got["metrics/dp_epsilon"] == [(1, 2.5), (2, 2.5)]
    assert got["metrics/backdoor_accuracy"] == [(1, 0.125), (2, 0.125)]
    assert got["clients/seconds_mean"][0] == (1, 1.0)  # (0.5 + 1.5) / 2
    assert got["clients/seconds_max"][0] == (1, 1.5)
    assert got["worker_rtt/3"] == [(1, 0.5), (2, 0.5)]
    assert got["worker_rtt/7"] == [(1, 1.5), (2, 1.5)]


def test_run_with_tensorboard_writes_what_the_database_holds(tmp_path: Path) -> None:
    doc = tiny(
        run={"tensorboard": True, "rounds": 3, "federated_eval_every": 1},
        aggregator={
            "name": "clip",
            "max_norm": 1.0,
            "inner": {"name": "gaussian", "noise_multiplier": 1.0, "clip_norm": 1.0},
        },
    )
    doc["data"]["num_clients"] = 10  # type: ignore[index]
    doc["algorithm"]["weighting"] = "uniform"  # type: ignore[index]
    (cfg,) = study_from_mapping(doc, default_name="tb").runs
    store = ResultsStore(results_path(tmp_path))
    outcome = run_experiment(cfg, store)
    assert outcome.status == "completed", outcome.error
    (logdir,) = (tmp_path / "tensorboard").iterdir()
    assert logdir.name == f"{outcome.run_id}-{cfg.name}"
    got = scalars(logdir)
    rows = store.rounds(outcome.run_id)
    assert [s for s, _ in got["test/accuracy"]] == [1, 2, 3]
    for (step, acc), row in zip(got["test/accuracy"], rows, strict=True):
        assert step == row.round + 1
        assert acc == pytest.approx(row.test_accuracy, rel=1e-6)
    for (_, loss), row in zip(got["train/loss"], rows, strict=True):
        assert loss == pytest.approx(row.train_loss, rel=1e-6)
    for (_, mean), row in zip(got["federated/mean"], rows, strict=True):
        assert mean == pytest.approx(row.fed_mean, rel=1e-6)
    for (_, up), row in zip(got["bytes/up"], rows, strict=True):
        assert up == row.bytes_up
    eps = [v for _, v in got["metrics/dp_epsilon"]]
    assert len(eps) == 3 and eps[0] < eps[1] < eps[2]  # ε grows with every noisy round
    assert eps[-1] == pytest.approx(outcome.summary.metrics["dp_epsilon"], rel=1e-6)  # type: ignore[union-attr,index]
