"""The personal-evaluation seam that can train (``personal_params(global, state, local)``).

Fine-tuning and Ditto build their personal model at evaluation from the *evaluated* global model
on the client's training data (Wang et al. 2019's fine-tuning baseline; Li et al. 2021's Ditto
``v_k ← v_k − η(∇F_k(v_k) + λ(v_k − w))``), deterministically from (seed, round, client), and the
test split is never lent to training. Tiny model as in ``test_maths_personal``: ``nn.Linear(1, 2)``
on ``x = (1, 2)``, ``y = (0, 1)``, full batch; at ``W = 0, b = 0`` the gradient is
``∇W = (0.25, −0.25)``, ``∇b = 0``.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from fedkit.algorithm import ClientData, RoundInfo
from fedkit.algorithms.ditto import Ditto
from fedkit.algorithms.fedavg import FedAvg
from fedkit.algorithms.finetune import FineTune
from fedkit.algorithms.perfedavg import PerFedAvg
from fedkit.algorithms.two_models import PersonalModel
from fedkit.client import evaluate_client, personal_access
from fedkit.local import LocalTraining
from fedkit.params import model_params
from fedkit.run import RunConfig, run
from fedkit.sim.serial import SerialExecutor
from tests.helpers.toy import toy_model, toy_store

X = torch.tensor([[1.0], [2.0]])
Y = torch.tensor([0, 1])
FULL = LocalTraining(lr=0.1, steps=1, batch_size=0)
INFO = RoundInfo(round=7, seed=3, num_clients=1, cohort_size=1)


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


def test_finetune_at_evaluation_is_a_step_from_the_evaluated_global_model() -> None:
    # w = 0: one full-batch step of lr 0.1 gives W = -0.1 (0.25, -0.25) = (-0.025, 0.025), b = 0;
    # the stored personal model (W = (0.5, -0.5)) is not its start.
    stored = PersonalModel(_params([0.5, -0.5], [0.0, 0.0]))
    local = personal_access(_tiny(), 0, ClientData(X, Y), INFO)
    own = FineTune(local=FULL).personal_params(_params([0, 0], [0, 0]), stored, local)
    assert own is not None
    torch.testing.assert_close(own["weight"].flatten(), torch.tensor([-0.025, 0.025]))
    torch.testing.assert_close(own["bias"], torch.zeros(2))
    # without data, the stored model as before
    assert FineTune(local=FULL).personal_params(_params([0, 0], [0, 0]), stored) is stored.params


def test_ditto_at_evaluation_steps_the_stored_v_toward_the_evaluated_w() -> None:
    # v = (W = (0.5, -0.5), b = 0), w = 0, λ = 0.5, η = 0.1 (test_maths_personal's numbers):
    # ∇W0 = 0.7463, so v'W0 = 0.5 - 0.1 (0.7463 + 0.5·0.5) = 0.40036, v'b0 = -0.03060.
    stored = PersonalModel(_params([0.5, -0.5], [0.0, 0.0]))
    local = personal_access(_tiny(), 0, ClientData(X, Y), INFO)
    own = Ditto(local=FULL, lam=0.5).personal_params(_params([0, 0], [0, 0]), stored, local)
    assert own is not None
    assert float(own["weight"][0, 0]) == pytest.approx(0.40036, abs=1e-4)
    assert float(own["bias"][0]) == pytest.approx(-0.03060, abs=1e-4)
    # the anchor is the evaluated w: anchored at w = v (the pull vanishes) the step is 0.5 - 0.07463
    at_v = Ditto(local=FULL, lam=0.5).personal_params(stored.params, stored, local)
    assert at_v is not None
    assert float(at_v["weight"][0, 0]) == pytest.approx(0.5 - 0.07463, abs=1e-4)
    # a client that never trained starts from w: one plain step (the pull is 0 at v = w)
    fresh = Ditto(local=FULL, lam=0.5).personal_params(_params([0, 0], [0, 0]), None, local)
    assert fresh is not None
    torch.testing.assert_close(fresh["weight"].flatten(), torch.tensor([-0.025, 0.025]))


def test_the_test_split_is_not_lent_and_the_stream_is_the_personal_evaluation_one() -> None:
    data = ClientData(X, Y, x_test=X, y_test=Y)
    a = personal_access(_tiny(), 4, data, INFO)
    assert a.data.x_test is None and a.data.y_test is None
    assert torch.equal(a.data.x_train, X) and a.ctx.client_id == 4 and a.ctx.info == INFO
    b = personal_access(_tiny(), 4, data, INFO)
    draws = torch.randint(0, 10**9, (4,), generator=a.ctx.generator)
    assert torch.equal(draws, torch.randint(0, 10**9, (4,), generator=b.ctx.generator))
    other = personal_access(_tiny(), 5, data, INFO)
    assert not torch.equal(draws, torch.randint(0, 10**9, (4,), generator=other.ctx.generator))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rnd=st.integers(0, 1000), cid=st.integers(0, 50))
def test_evaluation_of_a_fine_tuned_model_is_deterministic_from_seed_round_client(
    seed: int, rnd: int, cid: int
) -> None:
    # minibatch SGD (batch 1 of 2 examples): the batch order comes from the stream only
    alg = FineTune(local=LocalTraining(lr=0.5, steps=1, batch_size=1))
    data = ClientData(X, Y, x_test=X, y_test=Y)
    info = RoundInfo(round=rnd, seed=seed, num_clients=51, cohort_size=1)
    w = _params([0.3, -0.1], [0.05, 0.0])
    runs = [evaluate_client(_tiny(), cid, data, w, alg, None, info=info) for _ in range(2)]
    assert runs[0] == runs[1] and runs[0] is not None and runs[0].personal is not None


def test_evaluate_client_scores_the_model_trained_at_evaluation() -> None:
    # Fine-tuning w = 0 once gives W = (-0.025, 0.025): logits (-0.025x, 0.025x), so
    # x = 1, y = 0: ln(1 + e^{0.05}) = 0.71846; x = 2, y = 1: ln(1 + e^{-0.1}) = 0.64440;
    # mean = 0.68143 (below ln 2 = 0.69315, the global model's).
    data = ClientData(X, Y, x_test=X, y_test=Y)
    w = _params([0, 0], [0, 0])
    e = evaluate_client(_tiny(), 0, data, w, FineTune(local=FULL), None, info=INFO)
    assert e is not None and e.personal is not None
    assert e.result.loss == pytest.approx(0.693147, abs=1e-5)  # ln 2 at w = 0
    assert e.personal.loss == pytest.approx(0.68143, abs=1e-4)
    # without the round, the client without a stored model has no personal model
    e0 = evaluate_client(_tiny(), 0, data, w, FineTune(local=FULL), None)
    assert e0 is not None and e0.personal is None


def test_fine_tuning_the_final_model_in_a_run_uses_the_final_global_parameters() -> None:
    # The run's last federated evaluation fine-tunes the *final* global model: its personal
    # score equals evaluating a FineTune step from res.params with the last round's stream,
    # and differs from the stored (one round older) personal model's score.
    cfg = RunConfig(rounds=3, clients_per_round=6, seed=2, eval_every=0, federated_eval_every=3)
    local = LocalTraining(lr=0.1, epochs=1, batch_size=8)
    alg = FineTune(local=local)
    store = toy_store(6)
    res = run(alg, SerialExecutor(store, toy_model()), model_params(toy_model()), cfg)
    fed = res.history[-1].federated
    assert fed is not None
    info = RoundInfo(round=2, seed=2, num_clients=6, cohort_size=6)
    mine = [
        evaluate_client(toy_model(), c, store.data(c), res.params, alg, None, info=info)
        for c in range(6)
    ]
    stored = [
        evaluate_client(toy_model(), c, store.data(c), res.params, alg, store.get_state(c))
        for c in range(6)
    ]
    acc = [e.personal.accuracy for e in mine if e is not None and e.personal is not None]
    old = [e.personal.accuracy for e in stored if e is not None and e.personal is not None]
    assert len(acc) == 6 and len(old) == 6
    assert fed.personal_mean == pytest.approx(sum(acc) / 6, abs=1e-9)
    loss = [e.personal.loss for e in mine if e is not None and e.personal is not None]
    old_loss = [e.personal.loss for e in stored if e is not None and e.personal is not None]
    assert all(abs(a - b) > 1e-6 for a, b in zip(loss, old_loss, strict=True))


@pytest.mark.parametrize("alg", [FedAvg(local=FULL), PerFedAvg(local=FULL, alpha=0.1)])
def test_methods_without_a_trained_personal_model_are_unchanged(alg: FedAvg) -> None:
    local = personal_access(_tiny(), 0, ClientData(X, Y), INFO)
    w = _params([0, 0], [0, 0])
    if isinstance(alg, PerFedAvg):
        # Per-FedAvg's personal model at evaluation: one α-step from w = W - 0.1·∇ = ∓0.025
        own = alg.personal_params(w, None, local)
        assert own is not None
        torch.testing.assert_close(own["weight"].flatten(), torch.tensor([-0.025, 0.025]))
    else:
        assert alg.personal_params(w, None, local) is None
