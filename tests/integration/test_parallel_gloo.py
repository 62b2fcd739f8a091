"""Replicas mode == gloo mode (real gloo ranks on 127.0.0.1), and async PS over real ranks."""

from __future__ import annotations

import pytest
import torch

from fedkit.parallel import ParallelSpec, run_parallel
from tests.helpers.blobs import blobs
from tests.helpers.blobs import mlp as tiny_mlp

pytestmark = [pytest.mark.dist, pytest.mark.timeout(60)]


def test_replicas_equal_gloo_ranks() -> None:
    """Post-local SGD covers both collectives: 6 gradient all-reduces, then model averages."""
    data = blobs(192, seed=5)
    table: dict[str, object] = {
        "method": "post_local_sgd",
        "post_local_warmup_steps": 6,
        "local_steps": 3,
        "workers": 2,
        "batch_size": 8,
        "lr": 0.1,
        "momentum": 0.9,
        "sample_budget": 16 * 16,
        "eval_every_samples": 16 * 6,
    }
    replicas = run_parallel(ParallelSpec.from_mapping(table), data, tiny_mlp)
    gloo = run_parallel(ParallelSpec.from_mapping({**table, "mode": "gloo"}), data, tiny_mlp)
    assert replicas.final_params.keys() == gloo.final_params.keys()
    for k, v in replicas.final_params.items():
        torch.testing.assert_close(gloo.final_params[k], v, atol=1e-6, rtol=0)
    assert [p.step for p in gloo.history] == [p.step for p in replicas.history] == [6, 12, 16]
    assert [p.syncs for p in gloo.history] == [p.syncs for p in replicas.history] == [6, 8, 10]
    assert [p.local_steps for p in gloo.history] == [1, 3, 3]
    assert gloo.final.bytes_per_worker == replicas.final.bytes_per_worker
    assert gloo.final.train_loss == pytest.approx(replicas.final.train_loss, abs=1e-5)
    assert gloo.final.test_accuracy == pytest.approx(replicas.final.test_accuracy)


@pytest.mark.slow  # 3 spawned ranks: ~10 s idle, ~30 s on a loaded 2-core machine
def test_async_parameter_server_over_gloo_ranks() -> None:
    data = blobs(192, seed=5)
    table: dict[str, object] = {
        "method": "async_ps",
        "workers": 2,
        "batch_size": 8,
        "lr": 0.1,
        "staleness": 1,
        "sample_budget": 8 * 60,
        "eval_every_samples": 8 * 30,
        "mode": "gloo",
    }
    out = run_parallel(ParallelSpec.from_mapping(table), data, tiny_mlp)
    assert out.final.samples == 8 * 60
    assert out.final.step == 60
    # SSP bound: τ ≤ (K − 1)(2s + 1)
    assert 0 <= out.final.max_staleness <= 3
    assert out.final.test_accuracy > 0.6  # the blobs are easy; 60 async updates learn them
