"""Executor equivalence: serial, processes (two gloo ranks) and vectorised give the same model.

Each client's training is the same code on the same bytes wherever it runs, so per-client updates
are bit-identical; only the float64 summation order of the merged accumulator differs between one
rank and two (an all-reduce adds two partial sums), hence the 1e-5 relative tolerance — and in
practice the float32 results agree bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import pytest
import torch

from fedkit.algorithm import RoundInfo
from fedkit.algorithms import FedAvg, FedProx, Scaffold
from fedkit.attacks import Attacked
from fedkit.attacks.alie import ALittleIsEnough
from fedkit.attacks.backdoor import Backdoor
from fedkit.local import LocalTraining
from fedkit.params import Params, model_params
from fedkit.privacy import ClipNorm
from fedkit.privacy.gaussian import GaussianNoise
from fedkit.robust import CoordinateMedian, GeometricMedian, Krum, TrimmedMean
from fedkit.run import RunConfig, RunResult, run
from fedkit.sim.processes import ProcessExecutor
from fedkit.sim.serial import SerialExecutor
from fedkit.sim.vectorized import VectorizedExecutor, vectorizable
from tests.helpers.toy import toy_model, toy_store

LOCAL = LocalTraining(lr=0.05, epochs=2, batch_size=8)
ALGORITHMS: dict[str, Any] = {
    "fedavg": FedAvg(local=LOCAL),
    "fedprox": FedProx(local=LOCAL, mu=0.1),
    "scaffold": Scaffold(local=LOCAL),
    # a composed chain whose server rule buffers: clip → coordinate-wise trimmed mean
    "fedavg+clip+trimmed": FedAvg(
        local=LOCAL, aggregator=ClipNorm(max_norm=0.5, inner=TrimmedMean(beta=0.2))
    ),
    # _partial drops one of the 5 sampled clients every round (ids 5, 4, 3): 4 updates each round,
    # so the median averages two middle values, and Krum needs f = 0 (n > 2f + 2)
    "fedavg+median": FedAvg(local=LOCAL, aggregator=CoordinateMedian()),
    "fedavg+krum": FedAvg(local=LOCAL, aggregator=Krum(f=0, m=2)),
    # a buffering rule that uses the client weights: the geometric median (RFA)
    "fedavg+geomed": FedAvg(local=LOCAL, aggregator=GeometricMedian()),
    # DP-FedAvg with seeded noise: central (server) noise and distributed (per-client) noise
    **{
        f"dp-fedavg-{kind}": FedAvg(
            local=LOCAL,
            weighting="uniform",
            aggregator=ClipNorm(
                max_norm=0.5,
                inner=GaussianNoise(
                    noise_multiplier=1.0,
                    clip_norm=0.5,
                    expected_clients=5,
                    noise_source="seeded",
                    distributed=kind == "distributed",
                ),
            ),
        )
        for kind in ("central", "distributed")
    },
    # attackers: a backdoor (poisoned data, boosted update) against a trimmed mean, and "a
    # little is enough" (extra training on shards, from the attacker's own streams) vs the median
    "backdoor+trimmed": Attacked(
        inner=FedAvg(local=LOCAL, aggregator=TrimmedMean(beta=0.2)),
        attack=Backdoor(target=1, patch=2),
        attackers=frozenset({1, 4}),
    ),
    "alie+median": Attacked(
        inner=FedAvg(local=LOCAL, aggregator=CoordinateMedian()),
        attack=ALittleIsEnough(),
        attackers=frozenset({2, 6}),
    ),
}
CONFIG = RunConfig(rounds=3, clients_per_round=5, seed=11, eval_every=0, federated_eval_every=3)


def _close(a: Params, b: Params, rtol: float = 1e-5) -> bool:
    return a.keys() == b.keys() and all(
        torch.allclose(a[k], b[k], rtol=rtol, atol=rtol * float(a[k].abs().max())) for k in a
    )


def _partial(client_id: int, info: RoundInfo) -> float | None:
    """Unequal work: some clients drop, some do part of their steps (exercises masking)."""
    if (client_id + info.round) % 5 == 0:
        return None
    return 1.0 if client_id % 2 else 0.4


def _serial(alg: Any) -> RunResult[Any]:
    ex = SerialExecutor(toy_store(8), toy_model(), participation=_partial)
    return run(alg, ex, model_params(toy_model()), CONFIG)


@pytest.mark.dist
def test_two_gloo_ranks_equal_serial_for_fedavg_fedprox_scaffold() -> None:
    for name, alg in ALGORITHMS.items():
        ref = _serial(alg)
        with ProcessExecutor(
            store=toy_store(8),
            model_fn=toy_model,
            store_fn=functools.partial(toy_store, 8),
            world_size=2,
            participation=_partial,
        ) as ex:
            got = run(alg, ex, model_params(toy_model()), CONFIG)
            states = ex.client_state_tensors()
        assert _close(ref.params, got.params), name
        for r_ref, r_got in zip(ref.history, got.history, strict=True):
            assert r_ref.dropped == r_got.dropped
            assert [c.client_id for c in r_ref.clients] == [c.client_id for c in r_got.clients]
            assert [c.steps for c in r_ref.clients] == [c.steps for c in r_got.clients]
            assert r_ref.bytes_up == r_got.bytes_up and r_ref.bytes_down == r_got.bytes_down
            assert r_ref.train_loss == pytest.approx(r_got.train_loss, rel=1e-6)
        fed_ref, fed_got = ref.history[-1].federated, got.history[-1].federated
        assert fed_ref is not None and fed_got is not None
        assert fed_ref.weighted_mean == pytest.approx(fed_got.weighted_mean, rel=1e-6)
        if name == "scaffold":
            # client control variates stay on their owner ranks and come back for checkpoints
            assert len(states) > 0 and all(k.split("/")[0].isdigit() for k in states)


@pytest.mark.dist
@pytest.mark.slow
def test_processes_resume_from_checkpoint_equals_uninterrupted_serial(tmp_path: Path) -> None:
    """SCAFFOLD's client states are checkpointed from their owner ranks and handed back."""
    alg = ALGORITHMS["scaffold"]
    ref = _serial(alg)

    def processes() -> ProcessExecutor:
        return ProcessExecutor(
            store=toy_store(8),
            model_fn=toy_model,
            store_fn=functools.partial(toy_store, 8),
            world_size=2,
            participation=_partial,
        )

    first = dataclasses.replace(CONFIG, rounds=2, checkpoint_dir=tmp_path, federated_eval_every=0)
    with processes() as ex:
        run(alg, ex, model_params(toy_model()), first)
    resumed = dataclasses.replace(CONFIG, checkpoint_dir=tmp_path)
    with processes() as ex:
        got = run(alg, ex, model_params(toy_model()), resumed)
    assert got.start_round == 2
    assert _close(ref.params, got.params)


def _with_local(alg: Any, local: LocalTraining) -> Any:
    if isinstance(alg, Attacked):
        return dataclasses.replace(alg, inner=dataclasses.replace(alg.inner, local=local))
    return dataclasses.replace(alg, local=local)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_vectorized_equals_serial(name: str) -> None:
    local = LocalTraining(lr=0.05, epochs=2, batch_size=8, momentum=0.5, weight_decay=1e-3)
    alg = _with_local(ALGORITHMS[name], local)
    ref = run(
        alg,
        SerialExecutor(toy_store(8), toy_model(), participation=_partial),
        model_params(toy_model()),
        CONFIG,
    )
    ex = VectorizedExecutor(toy_store(8), toy_model(), participation=_partial, chunk_size=3)
    got = run(alg, ex, model_params(toy_model()), CONFIG)
    assert _close(ref.params, got.params), name
    for r_ref, r_got in zip(ref.history, got.history, strict=True):
        assert r_ref.dropped == r_got.dropped
        assert [(c.client_id, c.steps) for c in r_ref.clients] == [
            (c.client_id, c.steps) for c in r_got.clients
        ]
        assert r_ref.train_loss == pytest.approx(r_got.train_loss, rel=1e-5)
        assert r_ref.bytes_up == r_got.bytes_up


def test_vectorized_full_batch_and_fallback_for_buffers() -> None:
    full = FedAvg(local=LocalTraining(lr=0.1, epochs=3, batch_size=0))
    ref = run(full, SerialExecutor(toy_store(8), toy_model()), model_params(toy_model()), CONFIG)
    got = run(
        full, VectorizedExecutor(toy_store(8), toy_model()), model_params(toy_model()), CONFIG
    )
    assert _close(ref.params, got.params)

    def bn_model() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Linear(12, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3)
        )

    assert not vectorizable(bn_model())
    alg = full  # full batches: BatchNorm cannot train on a last batch of one example
    ref = run(alg, SerialExecutor(toy_store(8), bn_model()), model_params(bn_model()), CONFIG)
    got = run(alg, VectorizedExecutor(toy_store(8), bn_model()), model_params(bn_model()), CONFIG)
    assert all(torch.equal(ref.params[k], got.params[k]) for k in ref.params)


def test_vectorized_equals_serial_on_a_next_character_lstm() -> None:
    """Sequence outputs (N, T, V) with padded targets: the masked loss equals the serial one."""
    from fedkit.algorithm import ClientData
    from fedkit.data.store import ClientStore
    from fedkit.local import IGNORE_INDEX
    from fedkit.models import build_model

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_model("char_lstm", num_classes=20, input_shape=(12,))

    g = torch.Generator().manual_seed(0)
    clients = []
    for n in (7, 13, 20):
        x = torch.randint(0, 20, (n, 12), generator=g)
        y = torch.randint(0, 20, (n, 12), generator=g)
        y[:, 9:] = IGNORE_INDEX  # padded tail of short snippets
        clients.append(ClientData(x, y))
    alg = FedAvg(local=LocalTraining(lr=0.5, epochs=1, batch_size=4))
    cfg = RunConfig(rounds=2, clients_per_round=3, seed=0, eval_every=0)
    ref = run(
        alg, SerialExecutor(ClientStore.from_clients(clients), model()), model_params(model()), cfg
    )
    got = run(
        alg,
        VectorizedExecutor(ClientStore.from_clients(clients), model()),
        model_params(model()),
        cfg,
    )
    assert _close(ref.params, got.params)
    assert ref.history[-1].train_loss == pytest.approx(got.history[-1].train_loss, rel=1e-5)
