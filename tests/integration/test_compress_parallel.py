"""Gradient compression in the data-parallel track: PyTorch's DDP communication hooks (fp16,
PowerSGD) on real gloo ranks, with the bytes each hook sent accounted per sync, and the
option refused where no DDP hook can run."""

from __future__ import annotations

import pytest
import torch

from fedkit.parallel import ParallelSpec, run_parallel
from tests.helpers.blobs import blobs
from tests.helpers.blobs import mlp as tiny_mlp

TABLE: dict[str, object] = {
    "method": "sync",
    "workers": 2,
    "batch_size": 8,
    "lr": 0.1,
    "sample_budget": 16 * 10,  # 10 steps of 2 × 8
    "eval_every_samples": 16 * 5,
    "mode": "gloo",
}
# the tiny MLP: Linear(8, 16) and Linear(16, 3): 128 + 16 + 48 + 3 = 195 float32 gradients
DENSE_STEP = 4 * 195


def test_the_option_is_refused_where_no_hook_runs() -> None:
    with pytest.raises(ValueError, match="grad_compression"):
        ParallelSpec.from_mapping({**TABLE, "grad_compression": "powersgd", "mode": "replicas"})
    with pytest.raises(ValueError, match="grad_compression"):
        ParallelSpec.from_mapping({**TABLE, "grad_compression": "fp16", "method": "local_sgd"})
    with pytest.raises(ValueError, match="grad_compression"):
        ParallelSpec.from_mapping({**TABLE, "grad_compression": "int8"})
    with pytest.raises(ValueError, match="grad_compression"):  # needs NCCL: not on gloo ranks
        ParallelSpec.from_mapping({**TABLE, "grad_compression": "bf16"})
    with pytest.raises(ValueError, match="powersgd_start_iter"):
        ParallelSpec.from_mapping({**TABLE, "powersgd_start_iter": 1})


@pytest.mark.dist
@pytest.mark.slow  # three 2-rank gloo runs
@pytest.mark.timeout(180)
def test_ddp_hooks_on_gloo_ranks_send_the_bytes_they_claim() -> None:
    data = blobs(192, seed=5)
    dense = run_parallel(ParallelSpec.from_mapping(TABLE), data, tiny_mlp)
    fp16 = run_parallel(
        ParallelSpec.from_mapping({**TABLE, "grad_compression": "fp16"}), data, tiny_mlp
    )
    power = run_parallel(
        ParallelSpec.from_mapping(
            {**TABLE, "grad_compression": "powersgd", "powersgd_rank": 1, "powersgd_start_iter": 2}
        ),
        data,
        tiny_mlp,
    )
    # ring all-reduce with K = 2 sends 2(K−1)/K = 1 × the payload per worker and sync
    assert dense.final.bytes_per_worker == 10 * DENSE_STEP == 7800
    assert fp16.final.bytes_per_worker == 10 * 2 * 195 == 3900
    # PowerSGD rank 1: 16×8 -> P, Q of 16 + 8; 3×16 -> 3 + 16 (38 < 48 with min rate 2); the
    # biases (n × 1) are sent as they are: 24 + 16 + 19 + 3 = 62 elements. Steps 0 and 1 are
    # plain all-reduce (start_iter 2): 2 · 780 + 8 · 4 · 62 = 3544
    assert power.final.bytes_per_worker == 2 * DENSE_STEP + 8 * 4 * 62 == 3544
    assert dense.final.syncs == fp16.final.syncs == power.final.syncs == 10
    # fp16 rounds the averaged gradient: the model stays within fp16's precision of dense
    for k, v in dense.final_params.items():
        torch.testing.assert_close(fp16.final_params[k], v, atol=5e-3, rtol=0)
    # PowerSGD's low-rank gradient is a different model, but it still learns the blobs
    moved = max(
        float((power.final_params[k] - v).abs().max()) for k, v in dense.final_params.items()
    )
    assert moved > 1e-4
    assert power.final.test_accuracy > 0.6 and dense.final.test_accuracy > 0.6
