"""LARS and LAMB: hand-computed layer-wise trust ratios and steps; timm agreement when installed."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from fedkit.parallel.large_batch import LAMB, LARS, lamb_trust_ratio, lars_trust_ratio
from fedkit.parallel.spec import ParallelSpec
from fedkit.parallel.trainer import build_optimizer


def test_lars_trust_ratio_by_hand() -> None:
    w = torch.tensor([[3.0, 4.0]])  # ‖w‖ = 5
    g = torch.tensor([[0.0, 2.0]])  # ‖g‖ = 2
    ratio = lars_trust_ratio(w, g, eta=0.001, weight_decay=0.1, eps=0.0)
    assert float(ratio) == pytest.approx(0.001 * 5 / (2 + 0.1 * 5))


def test_trust_ratios_are_one_when_a_norm_is_zero() -> None:
    zero, g = torch.zeros(2, 2), torch.ones(2, 2)
    assert float(lars_trust_ratio(zero, g, eta=0.001, weight_decay=0.0, eps=1e-8)) == 1.0
    assert float(lars_trust_ratio(g, zero, eta=0.001, weight_decay=0.0, eps=1e-8)) == 1.0
    assert float(lamb_trust_ratio(zero, g)) == 1.0
    assert float(lamb_trust_ratio(g, zero)) == 1.0


def test_lamb_trust_ratio_by_hand() -> None:
    w = torch.tensor([[6.0, 8.0]])  # 10
    r = torch.tensor([[0.3, 0.4]])  # 0.5
    assert float(lamb_trust_ratio(w, r)) == pytest.approx(20.0)


def test_lars_two_steps_by_hand_and_bias_is_plain_sgd() -> None:
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([w, b], lr=0.5, momentum=0.9, weight_decay=0.1, trust_coefficient=0.01, eps=0.0)
    w.grad, b.grad = torch.tensor([[0.0, 2.0]]), torch.tensor([0.5])
    opt.step()
    trust1 = 0.01 * 5 / (2 + 0.1 * 5)
    u1 = [trust1 * (0.0 + 0.1 * 3), trust1 * (2.0 + 0.1 * 4)]
    w1 = [3 - 0.5 * u1[0], 4 - 0.5 * u1[1]]
    assert w.tolist()[0] == pytest.approx(w1, rel=1e-6)
    assert b.tolist() == pytest.approx([1.0 - 0.5 * 0.5])  # 1-D: no decay, no trust ratio
    w.grad = torch.tensor([[1.0, 0.0]])
    opt.step()
    norm1 = math.hypot(*w1)
    trust2 = 0.01 * norm1 / (1.0 + 0.1 * norm1)
    u2 = [trust2 * (1.0 + 0.1 * w1[0]), trust2 * (0.0 + 0.1 * w1[1])]
    v2 = [0.9 * u1[0] + u2[0], 0.9 * u1[1] + u2[1]]
    assert w.tolist()[0] == pytest.approx([w1[0] - 0.5 * v2[0], w1[1] - 0.5 * v2[1]], rel=1e-6)


def test_lamb_first_step_by_hand() -> None:
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
    opt = LAMB([w], lr=0.1, betas=(0.9, 0.999), eps=0.0, weight_decay=0.01)
    w.grad = torch.tensor([[1.0, -2.0]])
    opt.step()
    # step 1 with bias correction: m̂ = g, v̂ = g², so the Adam direction is sign(g)
    r = [1.0 + 0.01 * 3, -1.0 + 0.01 * 4]
    trust = 5.0 / math.hypot(*r)
    expected = [3 - 0.1 * trust * r[0], 4 - 0.1 * trust * r[1]]
    assert w.tolist()[0] == pytest.approx(expected, rel=1e-6)


def test_lamb_from_a_spec_keeps_the_papers_first_moment() -> None:
    """``[parallel] optimizer = "lamb"`` without ``momentum`` uses β1 = 0.9 (You et al. 2020).

    Two steps on a 1-D tensor (trust ratio 1), g = 1 then 3, β2 = 0.999, ε ≈ 0, lr = 0.1:
    m = 0.9·0.1·1 + 0.1·3 = 0.39, m̂ = 0.39 / (1 - 0.81) = 2.0526315789;
    v = 0.999·0.001·1 + 0.001·9 = 0.009999, v̂ = 0.009999 / (1 - 0.998001) = 5.0020010005;
    w = 1 - 0.1·1 - 0.1·2.0526315789 / √5.0020010005 = 0.8082219..., where β1 = 0 (the old
    default) gives w = 1 - 0.1 - 0.1·3/√5.002001 = 0.7658628....
    """
    model = torch.nn.Linear(1, 1, bias=False)
    spec = ParallelSpec.from_mapping({"optimizer": "lamb", "lr": 0.1})
    assert spec.inner_momentum == 0.9
    old = ParallelSpec.from_mapping({"optimizer": "lamb", "lr": 0.1, "momentum": 0.0})
    assert old.inner_momentum == 0.0  # an explicit value is honoured
    for s, expected in ((spec, 0.8082219), (old, 0.7658628)):
        w = torch.nn.Parameter(torch.tensor([1.0]))
        opt = build_optimizer(s, model)
        assert isinstance(opt, LAMB)
        assert opt.param_groups[0]["betas"] == (s.inner_momentum, 0.999)
        opt = LAMB([w], lr=0.1, betas=opt.param_groups[0]["betas"], eps=1e-12)
        for g in (1.0, 3.0):
            w.grad = torch.tensor([g])
            opt.step()
        assert w.item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(("optimizer", "beta1"), [("sgd", 0.0), ("lars", 0.0), ("adamw", 0.9)])
def test_unset_momentum_is_each_optimisers_default(optimizer: str, beta1: float) -> None:
    assert ParallelSpec.from_mapping({"optimizer": optimizer}).inner_momentum == beta1
    assert ParallelSpec(optimizer=optimizer, momentum=0.5).inner_momentum == 0.5  # type: ignore[arg-type]


def test_lars_scales_layers_independently() -> None:
    """Multiplying one layer's gradient by c leaves its update unchanged without weight decay."""
    torch.manual_seed(0)
    w_a, w_b = torch.randn(4, 3), torch.randn(5, 2)
    g_a, g_b = torch.randn(4, 3), torch.randn(5, 2)
    updates = []
    for scale in (1.0, 100.0):
        pa, pb = torch.nn.Parameter(w_a.clone()), torch.nn.Parameter(w_b.clone())
        opt = LARS([pa, pb], lr=1.0, momentum=0.0, eps=0.0)
        pa.grad, pb.grad = g_a * scale, g_b.clone()
        opt.step()
        updates.append((w_a - pa.detach(), w_b - pb.detach()))
    torch.testing.assert_close(updates[0][0], updates[1][0])
    torch.testing.assert_close(updates[0][1], updates[1][1])
    # the update's norm is η‖w‖ (trust ratio times gradient norm)
    assert float(updates[0][0].norm()) == pytest.approx(0.001 * float(w_a.norm()), rel=1e-4)


@pytest.mark.skipif(
    importlib.util.find_spec("timm") is None,
    reason="timm is not installed; cross-check against timm.optim.Lars/Lamb skipped "
    "(hand-computed trust-ratio tests above always run)",
)
def test_agrees_with_timm() -> None:
    from timm.optim import Lamb, Lars  # type: ignore[import-not-found,unused-ignore]

    torch.manual_seed(0)
    init = [torch.randn(6, 4), torch.randn(6)]
    grads = [[torch.randn(6, 4), torch.randn(6)] for _ in range(3)]

    def run(make: object) -> list[torch.Tensor]:
        params = [torch.nn.Parameter(t.clone()) for t in init]
        opt = make(params)  # type: ignore[operator]
        for gs in grads:
            for p, g in zip(params, gs, strict=True):
                p.grad = g.clone()
            opt.step()
        return [p.detach() for p in params]

    ours = run(lambda ps: LARS(ps, lr=0.1, momentum=0.9, weight_decay=1e-2, exclude_1d=False))
    theirs = run(lambda ps: Lars(ps, lr=0.1, momentum=0.9, weight_decay=1e-2, trust_coeff=0.001))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)
    ours = run(lambda ps: LAMB(ps, lr=0.01, weight_decay=1e-2, exclude_1d=False))
    theirs = run(lambda ps: Lamb(ps, lr=0.01, weight_decay=1e-2, max_grad_norm=None))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)
