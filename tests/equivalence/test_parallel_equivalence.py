"""Equivalences of the data-parallel track (replicas mode, tiny MLP on synthetic blobs).

* K = 1 equals centralised training bit for bit (sync and Local SGD, with momentum and decay);
* Local SGD with H = 1 and no momentum equals synchronous SGD at batch K·B (and both equal
  centralised SGD at batch K·B);
* SlowMo with α = 1, β = 0 — and DiLoCo with η = 1, μ = 0 — equal Local SGD;
* post-local SGD whose warm-up covers the run equals synchronous SGD.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedkit.parallel import ParallelSpec, run_parallel
from fedkit.parallel.schedule import epoch_permutation
from tests.helpers.blobs import Data, blobs, mlp


def centralised(
    data: Data,
    *,
    batch: int,
    steps: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    seed: int,
) -> dict[str, torch.Tensor]:
    """Plain single-process mini-batch SGD over the documented data order."""
    torch.manual_seed(seed)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    n = len(data.train.y)
    per_epoch = n // batch
    for t in range(steps):
        epoch, pos = divmod(t, per_epoch)
        idx = epoch_permutation(n, seed, epoch)[pos * batch : (pos + 1) * batch]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(data.train.x[idx]), data.train.y[idx]).backward()
        opt.step()
    return model.state_dict()


def spec(**kw: object) -> ParallelSpec:
    base: dict[str, object] = {"lr": 0.1, "eval_every_samples": 10**9, "seed": 3}
    base.update(kw)
    return ParallelSpec.from_mapping(base)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], *, exact: bool) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_one_worker_equals_centralised_bit_for_bit() -> None:
    data = blobs()
    steps = 40  # crosses two epoch boundaries at batch 16 (16 steps per epoch)
    ref = centralised(data, batch=16, steps=steps, lr=0.1, momentum=0.9, weight_decay=1e-3, seed=3)
    for method in ("sync", "local_sgd", "slowmo"):
        s = spec(
            method=method,
            workers=1,
            local_steps=4,
            batch_size=16,
            momentum=0.9,
            weight_decay=1e-3,
            sample_budget=16 * steps,
            slow_momentum=0.0,
        )
        out = run_parallel(s, data, mlp)
        if method == "slowmo":  # the outer step (x − γ·Δ/γ) is not bit-exact; α=1, β=0 ≈ average
            assert_same(out.final_params, ref, exact=False)
        else:
            assert_same(out.final_params, ref, exact=True)
        assert out.final.step == steps


def test_local_sgd_h1_equals_sync_sgd_at_batch_kb() -> None:
    data = blobs()
    kw: dict[str, object] = {"workers": 4, "batch_size": 8, "sample_budget": 32 * 20}
    local = run_parallel(spec(method="local_sgd", local_steps=1, **kw), data, mlp)
    sync = run_parallel(spec(method="sync", **kw), data, mlp)
    ref = centralised(data, batch=32, steps=20, lr=0.1, momentum=0.0, weight_decay=0.0, seed=3)
    assert_same(local.final_params, sync.final_params, exact=False)
    assert_same(sync.final_params, ref, exact=False)


def test_sync_with_momentum_and_decay_equals_centralised_large_batch() -> None:
    data = blobs()
    s = spec(
        method="sync",
        workers=4,
        batch_size=8,
        momentum=0.9,
        weight_decay=1e-3,
        sample_budget=32 * 20,
    )
    ref = centralised(data, batch=32, steps=20, lr=0.1, momentum=0.9, weight_decay=1e-3, seed=3)
    assert_same(run_parallel(s, data, mlp).final_params, ref, exact=False)


def test_slowmo_alpha1_beta0_and_diloco_lr1_mu0_equal_local_sgd() -> None:
    data = blobs()
    kw: dict[str, object] = {
        "workers": 3,
        "local_steps": 4,
        "batch_size": 8,
        "momentum": 0.9,
        "sample_budget": 24 * 24,
    }
    local = run_parallel(spec(method="local_sgd", **kw), data, mlp).final_params
    slowmo = run_parallel(
        spec(method="slowmo", slow_lr=1.0, slow_momentum=0.0, **kw), data, mlp
    ).final_params
    diloco = run_parallel(
        spec(method="diloco", outer_lr=1.0, outer_momentum=0.0, **kw), data, mlp
    ).final_params
    assert_same(slowmo, local, exact=False)
    assert_same(diloco, local, exact=False)
    # and the slow momentum does change the trajectory
    moving = run_parallel(spec(method="slowmo", slow_momentum=0.5, **kw), data, mlp).final_params
    assert any(not torch.allclose(moving[k], local[k], atol=1e-4) for k in local)


def test_local_sgd_differs_from_sync_when_h_gt_1() -> None:
    data = blobs()
    kw: dict[str, object] = {"workers": 2, "batch_size": 8, "sample_budget": 16 * 16}
    local = run_parallel(spec(method="local_sgd", local_steps=4, **kw), data, mlp).final_params
    sync = run_parallel(spec(method="sync", **kw), data, mlp).final_params
    assert any(not torch.allclose(local[k], sync[k], atol=1e-5) for k in local)


def test_post_local_sgd_with_full_warmup_equals_sync() -> None:
    data = blobs()
    kw: dict[str, object] = {
        "workers": 2,
        "batch_size": 8,
        "momentum": 0.9,
        "sample_budget": 16 * 12,
    }
    post = run_parallel(
        spec(method="post_local_sgd", local_steps=4, post_local_warmup_steps=12, **kw), data, mlp
    )
    sync = run_parallel(spec(method="sync", **kw), data, mlp)
    assert_same(post.final_params, sync.final_params, exact=True)
    assert post.final.syncs == 12
