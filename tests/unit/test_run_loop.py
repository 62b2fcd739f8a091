"""Run loop: reproducibility, checkpoint/resume, evaluation, validation of settings."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from fedkit.algorithms import FedAvg, FedProx, Scaffold
from fedkit.checkpoint import FILENAME, CheckpointError, FileCheckpointer, RunKey
from fedkit.local import LocalTraining
from fedkit.params import Params, model_params
from fedkit.run import RoundRecord, RunConfig, central_evaluator, run
from fedkit.server_opt import Adam
from fedkit.sim.serial import SerialExecutor
from tests.helpers.toy import toy_clients, toy_model, toy_store

LOCAL = LocalTraining(lr=0.05, epochs=1, batch_size=8, momentum=0.9)
ALGORITHMS = {
    "fedavg": FedAvg(local=LOCAL),
    "fedadam": FedAvg(local=LOCAL, server=Adam(lr=0.01)),
    "fedprox": FedProx(local=LOCAL, mu=0.1),
    "scaffold": Scaffold(local=LocalTraining(lr=0.05, batch_size=8)),
}


def _go(alg: object, rounds: int, ckpt: Path | None = None, seed: int = 11) -> Params:
    res = run(
        alg,  # type: ignore[arg-type]
        SerialExecutor(toy_store(8), toy_model()),
        model_params(toy_model()),
        RunConfig(rounds=rounds, clients_per_round=3, seed=seed, checkpoint_dir=ckpt),
    )
    return res.params


def _bit_equal(a: Params, b: Params) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_seeded_run_repeats_bit_identically(name: str) -> None:
    alg = ALGORITHMS[name]
    assert _bit_equal(_go(alg, 4), _go(alg, 4))
    assert not _bit_equal(_go(alg, 4), _go(alg, 4, seed=12))


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_resume_equals_uninterrupted(name: str, tmp_path: Path) -> None:
    """Stop after 2 rounds (a fresh process would see only the directory), resume to 5."""
    alg = ALGORITHMS[name]
    _go(alg, 2, ckpt=tmp_path)
    assert (tmp_path / FILENAME).exists()
    resumed = run(
        alg,  # type: ignore[arg-type]
        SerialExecutor(toy_store(8), toy_model(seed=99)),  # fresh store: no client state in memory
        model_params(toy_model()),
        RunConfig(rounds=5, clients_per_round=3, seed=11, checkpoint_dir=tmp_path),
    )
    assert resumed.start_round == 2 and [r.round for r in resumed.history] == [2, 3, 4]
    assert _bit_equal(resumed.params, _go(alg, 5))


class _Saves:
    """A checkpointer that remembers which completed-round counts it was asked to save."""

    def __init__(self, directory: Path) -> None:
        self.inner = FileCheckpointer(directory)
        self.saved: list[int] = []

    def save(self, completed_rounds: int, *rest: Any) -> None:
        self.saved.append(completed_rounds)
        self.inner.save(completed_rounds, *rest)

    def load(self, template: Any, key: RunKey) -> Any:
        return self.inner.load(template, key)


def test_checkpoint_every_k_saves_every_kth_round_and_the_last(tmp_path: Path) -> None:
    # 7 rounds, every 3: after rounds 3 and 6 (counts of completed rounds), and after the last, 7
    saves = _Saves(tmp_path)
    run(
        ALGORITHMS["fedavg"],
        SerialExecutor(toy_store(8), toy_model()),
        model_params(toy_model()),
        RunConfig(rounds=7, clients_per_round=3, seed=11, checkpoint_every=3),
        checkpointer=saves,
    )
    assert saves.saved == [3, 6, 7]


@pytest.mark.parametrize("name", ["fedadam", "scaffold"])
def test_resume_from_a_sparse_checkpoint_repeats_the_unsaved_rounds(
    name: str, tmp_path: Path
) -> None:
    """Every 3 rounds; stopped before round 5 (rounds 0-4 done, only 3 saved): the resume
    starts at round 3 and ends with the uninterrupted model, client state (SCAFFOLD's control
    variates) included."""
    alg = ALGORITHMS[name]
    first = run(
        alg,  # type: ignore[arg-type]
        SerialExecutor(toy_store(8), toy_model()),
        model_params(toy_model()),
        RunConfig(rounds=7, clients_per_round=3, seed=11, checkpoint_every=3),
        checkpointer=FileCheckpointer(tmp_path),
        stop=lambda info: "stop" if info.round == 5 else None,
    )
    assert [r.round for r in first.history] == [0, 1, 2, 3, 4]
    resumed = run(
        alg,  # type: ignore[arg-type]
        SerialExecutor(toy_store(8), toy_model(seed=99)),
        model_params(toy_model()),
        RunConfig(rounds=7, clients_per_round=3, seed=11, checkpoint_every=3),
        checkpointer=FileCheckpointer(tmp_path),
    )
    assert resumed.start_round == 3 and [r.round for r in resumed.history] == [3, 4, 5, 6]
    assert _bit_equal(resumed.params, _go(alg, 7))


def test_checkpoint_every_must_be_positive() -> None:
    with pytest.raises(ValueError, match="checkpoint_every must be >= 1, got 0"):
        RunConfig(rounds=2, clients_per_round=1, checkpoint_every=0)


def test_checkpoint_from_another_run_is_refused(tmp_path: Path) -> None:
    _go(ALGORITHMS["fedavg"], 1, ckpt=tmp_path)
    with pytest.raises(CheckpointError, match="belongs to algorithm 'fedavg' with seed 11"):
        _go(ALGORITHMS["fedprox"], 2, ckpt=tmp_path)
    before = (tmp_path / FILENAME).read_bytes()
    with pytest.raises(CheckpointError, match="with seed 11, not 'fedavg' with seed 5"):
        _go(ALGORITHMS["fedavg"], 2, ckpt=tmp_path, seed=5)
    assert (tmp_path / FILENAME).read_bytes() == before  # nothing stored was touched


def test_corrupt_checkpoint_is_reported_not_overwritten(tmp_path: Path) -> None:
    _go(ALGORITHMS["fedavg"], 1, ckpt=tmp_path)
    path = tmp_path / FILENAME
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="unreadable"):
        _go(ALGORITHMS["fedavg"], 2, ckpt=tmp_path)
    assert len(path.read_bytes()) == 100


def test_checkpoint_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    _go(ALGORITHMS["scaffold"], 3, ckpt=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILENAME]


def test_records_evaluation_and_callbacks() -> None:
    seen: list[RoundRecord] = []
    model = toy_model()
    clients = toy_clients(8)
    x = torch.cat([c.x_test for c in clients if c.x_test is not None])
    y = torch.cat([c.y_test for c in clients if c.y_test is not None])
    res = run(
        FedAvg(local=LOCAL),
        SerialExecutor(toy_store(8), model),
        model_params(toy_model()),
        RunConfig(rounds=5, clients_per_round=4, eval_every=2, federated_eval_every=5),
        evaluator=central_evaluator(toy_model(), x, y),
        callbacks=[lambda rec, params: seen.append(rec)],
    )
    assert [r.round for r in seen] == [0, 1, 2, 3, 4]
    assert [r.central is not None for r in seen] == [False, True, False, True, True]
    assert [r.federated is not None for r in seen] == [False] * 4 + [True]
    last = res.history[-1]
    assert last.central is not None and 0.0 <= last.central.accuracy <= 1.0
    fed = last.federated
    assert fed is not None and fed.clients == 8 and fed.p10 <= fed.mean and fed.variance >= 0
    assert all(len(r.cohort) == 4 and r.committed and not math.isnan(r.train_loss) for r in seen)
    assert seen[0].bytes_down == 4 * sum(p.numel() * 4 for p in model_params(model).values())
    assert seen[0].bytes_up == seen[0].bytes_down


def test_probes_see_each_rounds_model_and_their_values_are_the_rounds_metrics() -> None:
    seen: list[tuple[int, float]] = []

    def probe(params: Params, info: object) -> dict[str, float]:
        first = float(next(iter(params.values())).flatten()[0])
        seen.append((info.round, first))  # type: ignore[attr-defined]
        return {"first": first, "round": float(info.round)}  # type: ignore[attr-defined]

    res = run(
        FedAvg(local=LOCAL),
        SerialExecutor(toy_store(8), toy_model()),
        model_params(toy_model()),
        RunConfig(rounds=3, clients_per_round=2),
        probes=[probe, lambda params, info: {} if info.round else {"only_round_0": 1.0}],
    )
    assert [r.metrics.get("round") for r in res.history] == [0.0, 1.0, 2.0]
    assert res.history[0].metrics["only_round_0"] == 1.0
    assert "only_round_0" not in res.history[1].metrics
    # each probe saw the model after that round's server update (the final one last)
    assert seen[-1][1] == float(next(iter(res.params.values())).flatten()[0])
    assert len({v for _, v in seen}) == 3


def test_dropped_clients_and_empty_rounds() -> None:
    store = toy_store(4)
    drop_all = SerialExecutor(store, toy_model(), participation=lambda cid, info: None)
    p0 = model_params(toy_model())
    res = run(FedAvg(local=LOCAL), drop_all, p0, RunConfig(rounds=2, clients_per_round=2))
    assert all(not r.committed and len(r.dropped) == 2 for r in res.history)
    assert _bit_equal(res.params, p0)  # model unchanged when nobody finished
    half = SerialExecutor(store, toy_model(), participation=lambda cid, info: 0.5)
    rec = run(FedAvg(local=LOCAL), half, p0, RunConfig(rounds=1, clients_per_round=4)).history[0]
    full = run(
        FedAvg(local=LOCAL),
        SerialExecutor(store, toy_model()),
        p0,
        RunConfig(rounds=1, clients_per_round=4),
    ).history[0]
    assert all(
        h.steps == max(1, f.steps // 2) for h, f in zip(rec.clients, full.clients, strict=True)
    )


def test_cohort_larger_than_population_fails_clearly() -> None:
    with pytest.raises(
        ValueError,
        match=r"clients_per_round = 9 exceeds the number of clients \(8\); allowed values: 1 to 8",
    ):
        _go_k(9)


def _go_k(k: int) -> None:
    run(
        FedAvg(),
        SerialExecutor(toy_store(8), toy_model()),
        model_params(toy_model()),
        RunConfig(rounds=1, clients_per_round=k),
    )


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: LocalTraining(lr=-0.1), "lr must be a finite number > 0, got -0.1"),
        (lambda: LocalTraining(epochs=0), r"local_epochs must be in \[1, 1000000\], got 0"),
        (
            lambda: LocalTraining(batch_size=-2),
            r"batch_size must be in \[1, 16777216\], or 0 for full batch",
        ),
        (lambda: LocalTraining(momentum=1.0), r"momentum must be in \[0, 1\)"),
        (lambda: FedProx(mu=-1.0), "mu must be a finite number >= 0"),
        (lambda: FedAvg(weighting="size"), r"weighting must be one of \('examples', 'uniform'\)"),
        (lambda: FedAvg(server="adamx"), "server must be a server optimizer"),
        (lambda: RunConfig(rounds=0, clients_per_round=1), "rounds must be >= 1"),
        (lambda: RunConfig(rounds=1, clients_per_round=0), "clients_per_round must be >= 1"),
    ],
)
def test_invalid_settings_fail_at_construction(make: object, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        make()  # type: ignore[operator]


def test_settings_are_frozen_and_keyword_only() -> None:
    alg = FedAvg()
    with pytest.raises(AttributeError):
        alg.weighting = "uniform"  # type: ignore[misc]
    with pytest.raises(TypeError):
        LocalTraining(0.1)  # type: ignore[misc]
