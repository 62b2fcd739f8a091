"""Sample-level DP-SGD on a client: Opacus's per-sample clipping against per-example gradients
computed one by one, the noise scale against χ² quantiles, the per-client ε against Opacus's own
accountant, refusals and the experiment-file table."""

from __future__ import annotations

import math

import dp_accounting as dpa
import numpy as np
import pytest
import torch
from dp_accounting.rdp import RdpAccountant
from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS
from opacus.accountants.analysis import rdp as opacus_rdp
from scipy.stats import chi2
from torch import nn

from fedkit.dpsgd import DPSGD, client_epsilon
from fedkit.experiment.tables import construct
from fedkit.local import LocalTraining, classification_loss, train_local
from fedkit.params import model_params

DIM, CLASSES, N = 6, 3, 20


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, DIM, generator=g), torch.randint(0, CLASSES, (N,), generator=g)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(DIM, CLASSES)


def _one_step(dp: DPSGD, seed: int = 0, gen_seed: int = 1) -> dict[str, torch.Tensor]:
    """One full-batch (q = 1: every example every step) DP-SGD step with lr = 1; the change."""
    x, y = _data(seed)
    m = _model(seed)
    before = model_params(m)
    cfg = LocalTraining(lr=1.0, batch_size=0, steps=1, dp=dp)
    train_local(m, x, y, cfg, generator=torch.Generator().manual_seed(gen_seed))
    after = model_params(m)
    return {k: after[k] - before[k] for k in before}


def test_per_sample_clipping_equals_clipping_each_example_gradient() -> None:
    """z = 0, C = 0.05 (below every per-example gradient norm here): the step is
    −(1/n) Σ_j g_j · min(1, C/‖g_j‖) with g_j each example's gradient over all parameters
    (computed here one example at a time); Opacus adds 1e-6 to the norm, hence rtol 1e-4."""
    c = 0.05
    step = _one_step(DPSGD(noise_multiplier=0.0, max_grad_norm=c))
    x, y = _data()
    m = _model()
    total = {k: torch.zeros_like(v) for k, v in m.named_parameters()}
    norms = []
    for j in range(N):
        m.zero_grad()
        classification_loss(m(x[j : j + 1]), y[j : j + 1]).backward()  # type: ignore[no-untyped-call]
        grads = {k: p.grad.clone() for k, p in m.named_parameters()}  # type: ignore[union-attr]
        norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads.values()))
        norms.append(norm)
        for k in total:
            total[k] += grads[k] * min(1.0, c / norm)
    assert min(norms) > c  # every example is clipped: the test exercises clipping
    for k in step:
        assert torch.allclose(step[k], -total[k] / N, rtol=1e-4, atol=1e-7)


def test_noise_on_the_averaged_gradient_has_std_zC_over_B() -> None:
    """With seeded noise, the step with z > 0 minus the same step with z = 0 (same batch: q = 1)
    is −lr · N(0, (zC)²)/B per coordinate; Σ x²/(zC/B)² over 40 generator seeds × 21 parameters
    ~ χ²(840) must lie within its 1e-6 and 1 − 1e-6 quantiles."""
    z, c = 1.7, 0.5
    diffs = []
    for s in range(40):
        noisy = _one_step(
            DPSGD(noise_multiplier=z, max_grad_norm=c, noise_source="seeded"), gen_seed=s
        )
        clean = _one_step(DPSGD(noise_multiplier=0.0, max_grad_norm=c), gen_seed=s)
        diffs.append(torch.cat([(noisy[k] - clean[k]).flatten() for k in noisy]).double())
    d = torch.cat(diffs)
    stat = float((d / (z * c / N)).pow(2).sum())
    n = d.numel()
    assert float(chi2.ppf(1e-6, n)) < stat < float(chi2.ppf(1 - 1e-6, n))


def test_seeded_dpsgd_repeats_and_os_noise_does_not() -> None:
    seeded = DPSGD(noise_multiplier=1.0, max_grad_norm=1.0, noise_source="seeded")
    a, b = _one_step(seeded), _one_step(seeded)
    assert all(torch.equal(a[k], b[k]) for k in a)
    secure = DPSGD(noise_multiplier=1.0, max_grad_norm=1.0)
    a, b = _one_step(secure), _one_step(secure)
    assert not torch.equal(a["weight"], b["weight"])


def test_client_epsilon_matches_opacus_accountant() -> None:
    """q = 8/100, z = 1.1, 500 steps, δ = 1e-5, against Opacus's independent RDP implementation
    (the same conversion): at integer orders the two agree to 1e-6; over all default orders
    dp-accounting leaves out fractional orders whose series does not converge (α ≤ 1.7 here),
    which can only raise ε, so ours lies between Opacus's all-order ε and the integer-order ε."""
    dp = DPSGD(noise_multiplier=1.1, max_grad_norm=1.0, delta=1e-5)
    ours = client_epsilon(dp, sample_rate=0.08, steps=500)

    def opacus_eps(orders: list[float]) -> float:
        rdp = opacus_rdp.compute_rdp(q=0.08, noise_multiplier=1.1, steps=500, orders=orders)
        eps, _ = opacus_rdp.get_privacy_spent(orders=orders, rdp=np.asarray(rdp), delta=1e-5)
        return float(eps)

    ints = [float(a) for a in range(2, 65)]
    lib = RdpAccountant(orders=ints)
    lib.compose(dpa.PoissonSampledDpEvent(0.08, dpa.GaussianDpEvent(1.1)), 500)
    assert lib.get_epsilon(1e-5) == pytest.approx(opacus_eps(ints), rel=1e-6)
    every = opacus_eps([float(a) for a in DEFAULT_RDP_ORDERS])
    assert every - 1e-9 <= ours <= opacus_eps(ints) + 1e-9
    assert client_epsilon(dp, sample_rate=0.08, steps=0) == 0.0
    no_noise = DPSGD(noise_multiplier=0.0, max_grad_norm=1.0)
    assert client_epsilon(no_noise, sample_rate=0.1, steps=3) == math.inf


def test_refusals_and_the_experiment_table() -> None:
    with pytest.raises(ValueError, match="max_grad_norm"):
        DPSGD(noise_multiplier=1.0, max_grad_norm=0.0)
    with pytest.raises(ValueError, match="noise_source"):
        DPSGD(noise_multiplier=1.0, max_grad_norm=1.0, noise_source="random")
    x, y = _data()
    cfg = LocalTraining(lr=0.1, dp=DPSGD(noise_multiplier=1.0, max_grad_norm=1.0))
    with pytest.raises(ValueError, match="no loss or gradient hooks"):
        train_local(_model(), x, y, cfg, generator=torch.Generator(), grad_hook=lambda m: None)
    built = construct(
        LocalTraining,
        {"lr": 0.1, "dp": {"noise_multiplier": 1.0, "max_grad_norm": 2.0}},
        "algorithm.local",
    )
    assert built.dp == DPSGD(noise_multiplier=1.0, max_grad_norm=2.0)
