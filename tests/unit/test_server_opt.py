"""Server optimisers against hand-computed steps (Reddi et al. 2021, Algorithm 2)."""

from __future__ import annotations

import math

import pytest
import torch

from fedkit.server_opt import SGD, Adagrad, Adam, Yogi, make_server_optimizer


def _p(v: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor([v], dtype=torch.float64)}


def test_sgd_momentum_two_steps() -> None:
    opt = SGD(lr=0.5, momentum=0.9)
    x, s = opt.step(_p(1.0), _p(2.0), opt.init(_p(1.0)))
    assert x["w"].item() == pytest.approx(1.0 - 0.5 * 2.0)
    x, s = opt.step(x, _p(1.0), s)
    assert s.m["w"].item() == pytest.approx(0.9 * 2.0 + 1.0)
    assert x["w"].item() == pytest.approx(0.0 - 0.5 * 2.8)


def test_adam_yogi_adagrad_first_step() -> None:
    g, tau, lr = 0.5, 1e-3, 0.1
    m = 0.1 * g  # (1 - β1) g with β1 = 0.9, for all three (Reddi et al. Algorithm 2)
    v_adam = 0.99 * tau**2 + 0.01 * g * g
    v_yogi = tau**2 - 0.01 * g * g * math.copysign(1.0, tau**2 - g * g)
    v_ada = tau**2 + g * g
    for opt, m_exp, v_exp in [
        (Adam(lr=lr, beta1=0.9, beta2=0.99, tau=tau), m, v_adam),
        (Yogi(lr=lr, beta1=0.9, beta2=0.99, tau=tau), m, v_yogi),
        (Adagrad(lr=lr, beta1=0.9, tau=tau), m, v_ada),
    ]:
        x, s = opt.step(_p(1.0), _p(g), opt.init(_p(1.0)))
        assert s.m["w"].item() == pytest.approx(m_exp)
        assert s.v["w"].item() == pytest.approx(v_exp)
        assert x["w"].item() == pytest.approx(1.0 - lr * m_exp / (math.sqrt(v_exp) + tau))


def test_yogi_second_moment_grows_slower_than_adagrad() -> None:
    yogi, ada = Yogi(lr=0.1), Adagrad(lr=0.1)
    sy, sa = yogi.init(_p(0.0)), ada.init(_p(0.0))
    x = _p(0.0)
    for _ in range(20):
        _, sy = yogi.step(x, _p(1.0), sy)
        _, sa = ada.step(x, _p(1.0), sa)
    assert sy.v["w"].item() < sa.v["w"].item()


def test_steps_do_not_mutate_inputs() -> None:
    opt = Adam(lr=0.1)
    x0, g = _p(1.0), _p(0.3)
    s0 = opt.init(x0)
    opt.step(x0, g, s0)
    assert x0["w"].item() == 1.0 and s0.m["w"].item() == 0.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"lr": -1.0}, "server_lr"),
        ({"lr": 0.0}, "server_lr"),
        ({"momentum": 1.0}, "server_momentum"),
    ],
)
def test_sgd_rejects_bad_settings(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SGD(**kwargs)


def test_adaptive_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="tau"):
        Adam(tau=0.0)
    with pytest.raises(ValueError, match="beta2"):
        Yogi(beta2=1.5)


def test_unknown_server_optimizer_names_allowed_values() -> None:
    with pytest.raises(
        ValueError, match=r"unknown server optimizer 'adamw'.*adagrad, adam, sgd, yogi"
    ):
        make_server_optimizer("adamw")
    with pytest.raises(ValueError, match="has no setting"):
        make_server_optimizer("sgd", beta1=0.9)
    assert isinstance(make_server_optimizer("yogi", lr=0.01), Yogi)
