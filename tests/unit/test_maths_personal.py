"""Personalised and fair methods against their papers' rules, one round on a tiny model, by hand.

The model is ``nn.Linear(1, 2)`` (two-class softmax regression on one feature) on the client
``x = (1, 2)``, ``y = (0, 1)``, trained full batch, so every gradient has the closed form
``∇W = (P - Y)ᵀ X / n``, ``∇b = Σ (P - Y) / n``. At ``W = 0, b = 0``: ``P = ½`` everywhere, so
``∇W = ((½-1)·1 + ½·2)/2 = 0.25`` for class 0 and ``-0.25`` for class 1, ``∇b = 0``, and the mean
loss is ``ln 2``.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from fedkit.aggregate import WeightedMean
from fedkit.algorithm import ClientData, RoundInfo
from fedkit.algorithms.ditto import Ditto
from fedkit.algorithms.fedavg import FedAvg, ModelDelta, ModelMessage
from fedkit.algorithms.fedaws import FedAwS, PositiveLoss, spreadout, spreadout_gradient
from fedkit.algorithms.fedbn import FedBN, batchnorm_keys
from fedkit.algorithms.fedper import FedPer, last_modules
from fedkit.algorithms.finetune import FineTune
from fedkit.algorithms.perfedavg import PerFedAvg
from fedkit.algorithms.qfedavg import QFedAvg, QUpdate, q_terms
from fedkit.algorithms.two_models import PersonalModel
from fedkit.client import client_context, client_update
from fedkit.local import LocalTraining
from fedkit.models.personal import embedding_mlp, mlp_bn
from fedkit.params import model_params
from fedkit.run import RunConfig, run
from fedkit.sim.serial import SerialExecutor
from tests.helpers.toy import toy_model, toy_store

X = torch.tensor([[1.0], [2.0]])
Y = torch.tensor([0, 1])
DATA = ClientData(X, Y)
INFO = RoundInfo(round=0, seed=0, num_clients=1, cohort_size=1)
FULL = LocalTraining(lr=0.1, steps=1, batch_size=0)


def _tiny() -> nn.Module:
    m = nn.Linear(1, 2)
    with torch.no_grad():
        m.weight.zero_()
        m.bias.zero_()
    return m


def _params(w: list[float], b: list[float]) -> dict[str, Tensor]:
    return {
        "weight": torch.tensor([[w[0]], [w[1]]], dtype=torch.float32),
        "bias": torch.tensor(b, dtype=torch.float32),
    }


def _grad(p: dict[str, Tensor]) -> dict[str, Tensor]:
    """Closed-form full-batch gradient of mean cross-entropy on (X, Y)."""
    w, b = p["weight"].double(), p["bias"].double()
    r = (torch.softmax(X.double() @ w.T + b, 1) - nn.functional.one_hot(Y, 2).double()) / 2
    return {"weight": r.T @ X.double(), "bias": r.sum(0)}


def _one_client(alg: object, params: dict[str, Tensor], state: object = None) -> object:
    ctx = client_context(_tiny(), 0, INFO)
    return client_update(alg, ctx, ModelMessage(params), DATA, state)  # type: ignore[arg-type]


def test_closed_form_gradient_matches_the_numbers_in_the_docstring() -> None:
    g = _grad(_params([0.0, 0.0], [0.0, 0.0]))
    torch.testing.assert_close(g["weight"].flatten(), torch.tensor([0.25, -0.25]).double())
    torch.testing.assert_close(g["bias"], torch.zeros(2).double())


# ------------------------------------------------------------------------ Ditto, fine-tuning


def test_ditto_personal_step_is_the_regularised_gradient_step() -> None:
    # v = (W = (0.5, -0.5), b = 0), w_t = 0, λ = 0.5, η = 0.1, one full-batch step:
    # logits (±0.5) and (±1) give P0 = σ(1) = 0.7311, σ(2) = 0.8808, so
    # ∇W0 = ((0.7311 - 1)·1 + 0.8808·2)/2 = 0.7463, ∇b0 = (-0.2689 + 0.8808)/2 = 0.3060;
    # v'W0 = 0.5 - 0.1 (0.7463 + 0.5·0.5) = 0.40036, v'b0 = -0.03060 (class 1 the negatives).
    alg = Ditto(local=FULL, lam=0.5)
    v = _params([0.5, -0.5], [0.0, 0.0])
    res = _one_client(alg, _params([0, 0], [0, 0]), PersonalModel(v))
    own = res.client_state.params  # type: ignore[attr-defined]
    g = _grad(v)
    want_w = v["weight"].double() - 0.1 * (g["weight"] + 0.5 * v["weight"].double())
    want_b = v["bias"].double() - 0.1 * g["bias"]
    torch.testing.assert_close(own["weight"].double(), want_w, rtol=0, atol=1e-6)
    torch.testing.assert_close(own["bias"].double(), want_b, rtol=0, atol=1e-6)
    assert float(own["weight"][0, 0]) == pytest.approx(0.40036, abs=1e-4)
    assert float(own["bias"][0]) == pytest.approx(-0.03060, abs=1e-4)
    # the global half is FedAvg's: Δ = -η ∇F(w_t) = (-0.025, 0.025) on W
    delta = res.update.delta  # type: ignore[attr-defined]
    torch.testing.assert_close(delta["weight"].flatten(), torch.tensor([-0.025, 0.025]))


@pytest.mark.parametrize("alg", [Ditto(lam=1.0), FineTune()], ids=["ditto", "finetune"])
def test_two_model_methods_train_the_global_model_exactly_as_fedavg(alg: FedAvg) -> None:
    cfg = RunConfig(rounds=3, clients_per_round=4, seed=3, eval_every=0)
    local = LocalTraining(lr=0.1, epochs=1, batch_size=8)
    ours = run(
        type(alg)(local=local),
        SerialExecutor(toy_store(6), toy_model()),
        model_params(toy_model()),
        cfg,
    )
    ref = run(
        FedAvg(local=local),
        SerialExecutor(toy_store(6), toy_model()),
        model_params(toy_model()),
        cfg,
    )
    for k in ref.params:
        assert torch.equal(ours.params[k], ref.params[k])


def test_finetune_personal_model_is_the_global_model_after_local_sgd() -> None:
    # fine-tuning from w_t = 0 with η = 0.5, one full-batch step: v = -0.5 ∇F(0) = (-0.125, 0.125)
    alg = FineTune(local=FULL, finetune=LocalTraining(lr=0.5, steps=1, batch_size=0))
    res = _one_client(alg, _params([0, 0], [0, 0]), PersonalModel(_params([9, 9], [9, 9])))
    own = res.client_state.params  # type: ignore[attr-defined]
    torch.testing.assert_close(own["weight"].flatten(), torch.tensor([-0.125, 0.125]))
    torch.testing.assert_close(own["bias"], torch.zeros(2))


# --------------------------------------------------------------------------- FedPer, FedBN


def test_fedbn_keeps_batch_norm_entries_out_of_the_aggregate() -> None:
    torch.manual_seed(0)
    model = mlp_bn(num_classes=3, input_shape=(12,), hidden=[8])
    params = model_params(model)
    bn = batchnorm_keys(params)
    assert bn == {"2.weight", "2.bias", "2.running_mean", "2.running_var"}  # float entries
    local = LocalTraining(lr=0.1, epochs=1, batch_size=8)
    cfg = RunConfig(rounds=1, clients_per_round=3, seed=1, eval_every=0)
    build = lambda: mlp_bn(num_classes=3, input_shape=(12,), hidden=[8])  # noqa: E731
    store = toy_store(3)
    ours = run(FedBN(local=local), SerialExecutor(store, build()), params, cfg)
    ref = run(FedAvg(local=local), SerialExecutor(toy_store(3), build()), params, cfg)
    for k in params:
        if k in bn:  # the global copy never moves
            assert torch.equal(ours.params[k], params[k]), k
        else:  # round 0 starts every client from the same model: FedAvg's shared average
            assert torch.equal(ours.params[k], ref.params[k]), k
    for cid in range(3):  # each client keeps its own trained statistics and affine parameters
        own = store.get_state(cid).params
        assert set(own) == bn
        assert not torch.equal(own["2.running_mean"], params["2.running_mean"])
        personal = FedBN().personal_params(ours.params, store.get_state(cid))
        assert personal is not None and torch.equal(personal["2.bias"], own["2.bias"])
        assert torch.equal(personal["1.weight"], ours.params["1.weight"])


def test_fedper_head_defaults_to_the_last_module_and_stays_local() -> None:
    params = model_params(toy_model())
    assert last_modules(params, 1) == ("2",) and last_modules(params, 2) == ("0", "2")
    assert FedPer().local_keys(params) == {"2.weight", "2.bias"}
    res = _one_client(FedPer(local=FULL, head=("bias",)), _params([0, 0], [0, 0]))
    delta = res.update.delta  # type: ignore[attr-defined]
    assert torch.equal(delta["bias"], torch.zeros(2))  # personal entries send zero
    torch.testing.assert_close(delta["weight"].flatten(), torch.tensor([-0.025, 0.025]))
    with pytest.raises(ValueError, match="no model entry"):
        FedPer(head=("nope",)).local_keys(params)


# ------------------------------------------------------------------------------ Per-FedAvg


def test_perfedavg_first_order_meta_gradient_step() -> None:
    # α = 1, β = 0.1 from w = 0: w̃ = -α ∇F(0) = (W = (-0.25, 0.25), b = 0); at w̃ the logits are
    # (∓0.25), (∓0.5): P0 = σ(-0.5) = 0.3775, σ(-1) = 0.2689, ∇W0 = (-0.6225 + 2·0.2689)/2 =
    # -0.04229, ∇b0 = (-0.6225 + 0.2689)/2 = -0.17676; w' = -β ∇F(w̃) = (0.004229, 0.017676).
    alg = PerFedAvg(local=FULL, alpha=1.0, variant="fo")
    zero = _params([0, 0], [0, 0])
    res = _one_client(alg, zero)
    delta = res.update.delta  # type: ignore[attr-defined]
    g0 = _grad(zero)
    adapted = {k: zero[k].double() - 1.0 * g0[k] for k in zero}
    want = {k: -0.1 * v for k, v in _grad(adapted).items()}
    for k in want:
        torch.testing.assert_close(delta[k].double(), want[k], rtol=0, atol=1e-6)
    assert float(delta["weight"][0, 0]) == pytest.approx(0.004229, abs=1e-5)
    assert float(delta["bias"][0]) == pytest.approx(0.017676, abs=1e-5)
    # the personal model: one α-step from w_t, = (-0.25, 0.25) on W
    own = res.client_state.params  # type: ignore[attr-defined]
    torch.testing.assert_close(own["weight"].flatten(), torch.tensor([-0.25, 0.25]))


def test_perfedavg_hessian_free_step_uses_the_hessian_vector_product() -> None:
    # w' = w - β (∇F(w̃) - α ∇²F(w) ∇F(w̃)), the exact Hessian from autograd on the closed form
    alpha, beta = 0.5, 0.1
    start = _params([0.3, -0.2], [0.1, 0.0])
    res = _one_client(PerFedAvg(local=FULL, alpha=alpha, variant="hf", delta=1e-3), start)
    delta = res.update.delta  # type: ignore[attr-defined]
    flat = torch.cat([start["weight"].double().flatten(), start["bias"].double()])

    def unflat(v: Tensor) -> dict[str, Tensor]:
        return {"weight": v[:2].reshape(2, 1), "bias": v[2:]}

    def loss(v: Tensor) -> Tensor:
        p = unflat(v)
        return nn.functional.cross_entropy(X.double() @ p["weight"].T + p["bias"], Y)

    g0 = _grad(start)
    gt = _grad({k: start[k].double() - alpha * g0[k] for k in start})
    gt_flat = torch.cat([gt["weight"].flatten(), gt["bias"]])
    hess = torch.autograd.functional.hessian(loss, flat)
    want = unflat(-beta * (gt_flat - alpha * hess @ gt_flat))
    for k in want:
        torch.testing.assert_close(delta[k].double(), want[k], rtol=0, atol=1e-5)
    fo = _one_client(PerFedAvg(local=FULL, alpha=alpha, variant="fo"), start)
    assert not torch.allclose(fo.update.delta["weight"], delta["weight"], atol=1e-5)  # type: ignore[attr-defined]


# -------------------------------------------------------------------------------- q-FedAvg


def test_qfedavg_delta_and_h_follow_the_paper() -> None:
    # η = 0.1, L = 1/η = 10, w_t = 0: F = ln 2, w̄ = -η ∇F, Δw = L (w_t - w̄) = ∇F = (0.25, -0.25),
    # ‖Δw‖² = 0.125; q = 1: Δ = F Δw = (0.17329, -0.17329), h = 1·F⁰·0.125 + 10 ln 2 = 7.05647;
    # w_{t+1} = -Δ/h = (-0.024557, 0.024557).
    alg = QFedAvg(local=FULL, q=1.0)
    res = _one_client(alg, _params([0, 0], [0, 0]))
    upd = res.update  # type: ignore[attr-defined]
    assert float(upd.h) == pytest.approx(0.125 + 10 * math.log(2), rel=1e-6)
    assert float(upd.delta["weight"][0, 0]) == pytest.approx(0.25 * math.log(2), rel=1e-5)
    assert res.weight == 1.0  # type: ignore[attr-defined]
    state = alg.server_update(alg.init_state(_params([0, 0], [0, 0])), upd, INFO)
    assert float(state.params["weight"][0, 0]) == pytest.approx(-0.024557, abs=1e-6)
    # q = 5: Δ = F⁵ Δw, h = 5 F⁴ ‖Δw‖² + L F⁵
    upd5 = _one_client(QFedAvg(local=FULL, q=5.0), _params([0, 0], [0, 0])).update  # type: ignore[attr-defined]
    f = math.log(2)
    assert float(upd5.h) == pytest.approx(5 * f**4 * 0.125 + 10 * f**5, rel=1e-6)
    assert float(upd5.delta["bias"].abs().sum()) == 0.0


def test_qfedavg_server_step_is_the_ratio_of_sums() -> None:
    # two clients: w - (Δ1 + Δ2)/(h1 + h2), whatever the mean's weights are (both 1)
    alg = QFedAvg(q=2.0)
    u1 = QUpdate({"w": torch.tensor([1.0, 2.0])}, torch.tensor([2.0], dtype=torch.float64))
    u2 = QUpdate({"w": torch.tensor([3.0, -2.0])}, torch.tensor([6.0], dtype=torch.float64))
    agg = WeightedMean()
    acc = agg.add(agg.add(agg.zero(u1), u1, 1.0), u2, 1.0)
    mean = agg.result(acc, None)  # type: ignore[arg-type]
    state = alg.server_update(alg.init_state({"w": torch.zeros(2)}), mean, INFO)
    torch.testing.assert_close(state.params["w"], torch.tensor([-0.5, 0.0]))


@settings(max_examples=50, deadline=None)
@given(
    lip=st.floats(0.1, 100.0),
    loss=st.floats(0.0, 10.0),
    step=st.lists(st.floats(-5.0, 5.0), min_size=1, max_size=4),
)
def test_q_zero_step_is_the_plain_model_difference_for_any_lipschitz_estimate(
    lip: float, loss: float, step: list[float]
) -> None:
    s = {"w": torch.tensor(step, dtype=torch.float64) * lip}
    delta, h = q_terms(loss, lip, 0.0, s, frozenset({"w"}))
    assert h == lip
    torch.testing.assert_close(delta["w"] / h, torch.tensor(step, dtype=torch.float64))


def test_q_zero_equals_fedavg_with_uniform_weights() -> None:
    # Li et al. 2020: with q = 0 and L = 1/η, q-FedAvg's step is w - mean(w - w̄_k) = mean w̄_k
    local = LocalTraining(lr=0.05, epochs=2, batch_size=8)
    cfg = RunConfig(rounds=4, clients_per_round=4, seed=2, eval_every=0)
    q0 = run(
        QFedAvg(local=local, q=0.0),
        SerialExecutor(toy_store(6), toy_model()),
        model_params(toy_model()),
        cfg,
    )
    avg = run(
        FedAvg(local=local, weighting="uniform"),
        SerialExecutor(toy_store(6), toy_model()),
        model_params(toy_model()),
        cfg,
    )
    for k in avg.params:
        torch.testing.assert_close(q0.params[k], avg.params[k], rtol=1e-5, atol=1e-6)
    q5 = run(
        QFedAvg(local=local, q=5.0),
        SerialExecutor(toy_store(6), toy_model()),
        model_params(toy_model()),
        cfg,
    )
    assert not torch.allclose(q5.params["2.weight"], avg.params["2.weight"], atol=1e-4)


def test_qfedavg_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="q must be"):
        QFedAvg(q=-1.0)
    with pytest.raises(ValueError, match="lipschitz"):
        QFedAvg(lipschitz=0.0)


# ---------------------------------------------------------------------------------- FedAwS


def test_spreadout_gradient_by_hand() -> None:
    # w1 = (1, 0), w2 = (0, 1), ν' = 2: ‖ŵ1 - ŵ2‖ = √2, reg = 2 (2 - √2)² = 0.68629;
    # ∂reg/∂w1 = -2·2(ν' - d) ∂d/∂w1, ∂d/∂ŵ1 = (ŵ1 - ŵ2)/d = (1, -1)/√2, projected on the
    # tangent of ŵ1 (I - ŵ1ŵ1ᵀ = diag(0, 1)): (0, -1/√2) → ∇w1 = (0, 4 (2 - √2)/√2) = (0, 1.65685)
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert float(spreadout(w, 2.0)) == pytest.approx(2 * (2 - math.sqrt(2)) ** 2, rel=1e-6)
    g = spreadout_gradient(w, 2.0)
    torch.testing.assert_close(g, torch.tensor([[0.0, 1.65685], [1.65685, 0.0]]), atol=1e-5, rtol=0)
    # embeddings further apart than the margin feel nothing
    assert float(spreadout_gradient(w, 1.0).abs().sum()) == 0.0


def test_positive_loss_pulls_only_below_the_margin_and_only_the_own_class() -> None:
    # ∂/∂s_y of mean (max(0, ν - s_y/10))² = -2 (ν - cos_y) / (10 n): at cos 0.5, n = 2,
    # -2 · 0.4 / 20 = -0.04; at cos 0.95 (above ν) exactly 0 — the hinge stops pulling, which is
    # where positive-only FedAvg's collapse stalls (docs/personalisation.md); other classes'
    # scores get no gradient at all (no negatives).
    out = torch.tensor([[5.0, 1.0], [0.0, 9.5]], requires_grad=True)
    PositiveLoss(margin=0.9, scale=10.0)(out, torch.tensor([0, 1])).backward()
    assert out.grad is not None
    torch.testing.assert_close(out.grad, torch.tensor([[-0.04, 0.0], [0.0, 0.0]]))


def test_positive_loss_and_the_server_spreadout_step() -> None:
    # cosines (0.5, 0.95) for the true classes, ν = 0.9: ((0.9 - 0.5)² + 0)/2 = 0.08
    loss = PositiveLoss(margin=0.9, scale=10.0)
    out = torch.tensor([[5.0, 1.0], [0.0, 9.5]])
    assert float(loss(out, torch.tensor([0, 1]))) == pytest.approx(0.08)
    torch.manual_seed(0)
    params = model_params(embedding_mlp(num_classes=3, input_shape=(4,), hidden=8, dim=2))
    alg = FedAwS(spread_margin=2.0, spread_weight=0.5, spread_lr=0.2)
    zero = ModelDelta({k: torch.zeros_like(v) for k, v in params.items()})
    state = alg.server_update(alg.init_state(params), zero, INFO)
    w = params["classes.weight"]
    torch.testing.assert_close(state.params["classes.weight"], w - 0.1 * spreadout_gradient(w, 2.0))
    assert torch.equal(state.params["body.1.weight"], params["body.1.weight"])


# ------------------------------------------------------------------ settings and small seams


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda v: Ditto(lam=v), "lam must be a finite number >= 0"),
        (lambda v: FedAwS(margin=v), "margin must be a finite number >= 0"),
        (lambda v: FedAwS(spread_margin=v), "spread_margin must be a finite number >= 0"),
        (lambda v: FedAwS(spread_weight=v), "spread_weight must be a finite number >= 0"),
    ],
)
def test_non_negative_settings_accept_zero_and_refuse_the_rest(make: object, message: str) -> None:
    make(0.0)  # type: ignore[operator]
    for bad in (-0.1, math.inf, math.nan):
        with pytest.raises(ValueError, match=message):
            make(bad)  # type: ignore[operator]


@pytest.mark.parametrize("key", ["scale", "spread_lr"])
def test_positive_settings_refuse_zero_and_infinity(key: str) -> None:
    FedAwS(**{key: 0.5})  # type: ignore[arg-type]
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match=f"{key} must be a finite number > 0"):
            FedAwS(**{key: bad})  # type: ignore[arg-type]


def test_q_fedavg_accepts_a_lipschitz_estimate_below_one_and_refuses_nan() -> None:
    assert QFedAvg(lipschitz=0.5).lipschitz_estimate == 0.5  # the studies' L = 0.5
    for bad in (0.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="lipschitz must be a finite number > 0"):
            QFedAvg(lipschitz=bad)


def test_ditto_personal_steps_use_the_personal_settings() -> None:
    # as test_ditto_personal_step_is_the_regularised_gradient_step but with personal lr 0.2:
    # v'W0 = 0.5 - 0.2 (0.7463 + 0.5·0.5) = 0.30074 (the global half keeps local lr 0.1)
    personal = LocalTraining(lr=0.2, steps=1, batch_size=0)
    alg = Ditto(local=FULL, lam=0.5, personal=personal)
    res = _one_client(alg, _params([0, 0], [0, 0]), PersonalModel(_params([0.5, -0.5], [0, 0])))
    own = res.client_state.params  # type: ignore[attr-defined]
    assert float(own["weight"][0, 0]) == pytest.approx(0.30074, abs=1e-4)
    delta = res.update.delta  # type: ignore[attr-defined]
    torch.testing.assert_close(delta["weight"].flatten(), torch.tensor([-0.025, 0.025]))


def test_spreadout_of_close_embeddings_by_hand() -> None:
    # w1 = (1, 0), w2 = (cos 30°, sin 30°): ‖ŵ1 - ŵ2‖² = 2 - 2 cos 30° = 0.26795, d = 0.51764;
    # ν' = 1.2: reg = 2 (1.2 - 0.51764)² = 0.93124 (both ordered pairs)
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    w = torch.tensor([[1.0, 0.0], [c, s]], dtype=torch.float64)
    assert float(spreadout(w, 1.2)) == pytest.approx(2 * (1.2 - math.sqrt(2 - 2 * c)) ** 2)
    assert float(spreadout(w, 1.2)) == pytest.approx(0.93124, abs=1e-5)


def test_fedaws_client_plan_is_local_sgd_on_the_positive_loss() -> None:
    params = model_params(embedding_mlp(num_classes=3, input_shape=(4,), hidden=8, dim=2))
    alg = FedAwS(local=FULL, margin=0.8, scale=5.0)
    ctx = client_context(_tiny(), 0, INFO)
    plan = alg.client_init(ctx, ModelMessage(params), DATA, None)
    assert plan.loss_fn == PositiveLoss(margin=0.8, scale=5.0)
    assert plan.start is params and plan.local == FULL
    with pytest.raises(ValueError, match=r"no class-embedding entry 'classes\.weight'"):
        alg.client_init(ctx, ModelMessage({"weight": torch.zeros(1)}), DATA, None)


def test_fedaws_server_step_keeps_the_server_optimisers_state() -> None:
    from fedkit.server_opt import Adam

    params = model_params(embedding_mlp(num_classes=3, input_shape=(4,), hidden=8, dim=2))
    delta = ModelDelta({k: torch.full_like(v, 0.1) for k, v in params.items()})
    ours = FedAwS(server=Adam(lr=0.1), spread_weight=0.0)
    ref = FedAvg(server=Adam(lr=0.1))
    a = ours.server_update(ours.init_state(params), delta, INFO)
    b = ref.server_update(ref.init_state(params), delta, INFO)
    assert a.opt is not None and b.opt is not None and a.opt.m  # Adam keeps moments
    for k in b.opt.m:
        assert torch.equal(a.opt.m[k], b.opt.m[k]) and torch.equal(a.opt.v[k], b.opt.v[k])


def test_q_fedavg_h_is_float64_and_the_template_is_zero() -> None:
    # h carries Σ h_k through the weighted mean; float32 would round h = 0.125 + 10 ln 2
    alg = QFedAvg(local=FULL, q=1.0)
    res = _one_client(alg, _params([0, 0], [0, 0]))
    assert res.update.h.dtype == torch.float64 and res.update.h.shape == (1,)  # type: ignore[attr-defined]
    tmpl = alg.update_template(_params([1, 2], [3, 4]))
    assert tmpl.h.dtype == torch.float64 and float(tmpl.h.abs().sum()) == 0 and tmpl.h.shape == (1,)
    shapes = {k: tuple(v.shape) for k, v in tmpl.delta.items()}
    assert shapes == {"weight": (2, 1), "bias": (2,)}
    assert all(float(v.abs().sum()) == 0 for v in tmpl.delta.values())


@pytest.mark.parametrize("key", ["alpha", "delta"])
def test_per_fedavg_steps_must_be_positive_and_finite(key: str) -> None:
    PerFedAvg(**{key: 0.5})  # type: ignore[arg-type]
    for bad in (0.0, -0.1, math.inf, math.nan):
        with pytest.raises(ValueError, match=f"{key} must be a finite number > 0"):
            PerFedAvg(**{key: bad})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="variant must be one of"):
        PerFedAvg(variant="so")  # type: ignore[arg-type]


def test_per_fedavg_adaptation_is_one_step_on_one_batch() -> None:
    # batch 1 of the two examples, α = 0.1, from w = 0 (P = ½): on (x=1, y=0) ∇W = (-½, ½),
    # W' = (0.05, -0.05); on (x=2, y=1) ∇W = (1, -1), W' = (-0.1, 0.1). A full batch would give
    # (-0.025, 0.025) and a second step something else.
    from fedkit.client import personal_access

    alg = PerFedAvg(local=LocalTraining(lr=0.1, steps=1, batch_size=1), alpha=0.1)
    seen = set()
    for cid in range(6):
        own = alg.personal_params(
            _params([0, 0], [0, 0]), None, personal_access(_tiny(), cid, DATA, INFO)
        )
        assert own is not None
        w0 = round(float(own["weight"][0, 0]), 6)
        assert w0 in (0.05, -0.1)
        seen.add(w0)
    assert seen == {0.05, -0.1}  # both batches occur over the clients' streams


def test_per_fedavg_meta_batches_come_from_the_clients_meta_stream() -> None:
    # D' is drawn from (seed, round, client, "meta"): the same plan twice trains the same model,
    # and it is the model the documented stream's batches give (8 examples, batch 1, 6 steps).
    from fedkit.algorithms.perfedavg import data_batches, meta_hook
    from fedkit.client import train_plan
    from fedkit.rng import generator

    data = ClientData(torch.linspace(-1, 1, 8).unsqueeze(1), torch.tensor([0, 1] * 4))
    local = LocalTraining(lr=0.1, steps=6, batch_size=1)
    alg = PerFedAvg(local=local, alpha=0.1)
    w = _params([0.2, -0.1], [0.0, 0.05])
    info = RoundInfo(round=3, seed=7, num_clients=9, cohort_size=1)
    got = []
    for _ in range(2):
        ctx = client_context(_tiny(), 5, info)
        got.append(train_plan(ctx, alg.global_plan(ctx, ModelMessage(w), data), data).trained)
    ctx = client_context(_tiny(), 5, info)
    batches = data_batches(data, 1, generator(7, 3, 5, "meta"))
    plan = dataclasses.replace(
        alg.global_plan(ctx, ModelMessage(w), data),
        grad_hook=meta_hook(batches, alpha=0.1, variant="fo", delta=alg.delta),
    )
    want = train_plan(ctx, plan, data).trained
    for g in got:
        for k in want:
            assert torch.equal(g[k], want[k])
