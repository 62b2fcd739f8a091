"""FedProx and SCAFFOLD against their papers' update rules, computed by hand in float64.

The model is softmax regression (one ``nn.Linear``), whose full-batch gradient has the closed
form ``∇W = (P - Y)ᵀ X / n``, ``∇b = Σ (P - Y) / n`` — so the reference below never touches
autograd or fedkit's training loop: it is the papers' recursions written out.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fedkit.aggregate import AggContext
from fedkit.algorithm import ClientData, RoundInfo
from fedkit.algorithms import FedAvg, FedProx, Scaffold
from fedkit.data.store import ClientStore
from fedkit.local import LocalTraining
from fedkit.params import model_params
from fedkit.run import RunConfig, run
from fedkit.server_opt import SGD
from fedkit.sim.serial import SerialExecutor
from fedkit.sim.vectorized import VectorizedExecutor

DIM, CLASSES, N_CLIENTS = 5, 3, 4


def _clients() -> list[ClientData]:
    g = torch.Generator().manual_seed(7)
    out = []
    for i in range(N_CLIENTS):
        n = 6 + 3 * i
        x = torch.randn(n, DIM, generator=g) + 0.5 * i
        y = torch.randint(0, CLASSES, (n,), generator=g)
        out.append(ClientData(x, y))
    return out


def _model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Linear(DIM, CLASSES)


def _grad(w: Tensor, b: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Closed-form full-batch gradient of mean cross-entropy for ``softmax(x wᵀ + b)``."""
    p = torch.softmax(x @ w.T + b, dim=1)
    r = (p - torch.nn.functional.one_hot(y, CLASSES).double()) / x.shape[0]
    return r.T @ x, r.sum(0)


def _start() -> tuple[Tensor, Tensor]:
    m = _model()
    return m.weight.detach().double().clone(), m.bias.detach().double().clone()


# ------------------------------------------------------------------------------------ FedProx


def _fedprox_delta(data: ClientData, mu: float, lr: float, steps: int) -> tuple[Tensor, Tensor]:
    """Li et al. 2020: K full-batch steps on F_i(w) + μ/2 ‖w - w_t‖² from w_t."""
    w0, b0 = _start()
    x, y = data.x_train.double(), data.y_train
    w, b = w0.clone(), b0.clone()
    for _ in range(steps):
        gw, gb = _grad(w, b, x, y)
        w = w - lr * (gw + mu * (w - w0))
        b = b - lr * (gb + mu * (b - b0))
    return w - w0, b - b0


def _one_round_mean(executor_cls: type, algorithm: FedAvg) -> dict[str, Tensor]:
    store = ClientStore.from_clients(_clients())
    model = _model()
    ex = executor_cls(store, model)
    state = algorithm.init_state(model_params(model))
    info = RoundInfo(round=0, seed=0, num_clients=N_CLIENTS, cohort_size=N_CLIENTS)
    out = ex.execute(algorithm, algorithm.broadcast(state, info), range(N_CLIENTS), info)
    mean = algorithm.aggregator.result(out.accumulator, AggContext(round=0, seed=0))
    return {k: v.double() for k, v in mean.delta.items()}


def test_fedprox_proximal_gradient_matches_the_papers_local_objective() -> None:
    mu, lr, steps = 0.7, 0.3, 3
    local = LocalTraining(lr=lr, steps=steps, batch_size=0)
    clients = _clients()
    sizes = torch.tensor([c.num_examples for c in clients], dtype=torch.float64)
    deltas = [_fedprox_delta(c, mu, lr, steps) for c in clients]
    want_w = sum(s * d[0] for s, d in zip(sizes, deltas, strict=True)) / sizes.sum()
    want_b = sum(s * d[1] for s, d in zip(sizes, deltas, strict=True)) / sizes.sum()
    for executor_cls in (SerialExecutor, VectorizedExecutor):
        got = _one_round_mean(executor_cls, FedProx(local=local, mu=mu))
        torch.testing.assert_close(got["weight"], want_w, atol=2e-6, rtol=0)
        torch.testing.assert_close(got["bias"], want_b, atol=2e-6, rtol=0)
    # the proximal term is not negligible here: FedAvg (μ = 0) is measurably elsewhere
    plain = _one_round_mean(SerialExecutor, FedAvg(local=local))
    assert (plain["weight"] - want_w).abs().max() > 1e-3


# ----------------------------------------------------------------------------------- SCAFFOLD


def _scaffold_reference(
    rounds: int,
    lr: float,
    steps: int,
    server_lr: float,
    drop: dict[int, set[int]],
    *,
    planned: bool = False,
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], list[tuple[Tensor, Tensor]]]:
    """Karimireddy et al. 2020, Algorithm 1 with option II, uniform means, all clients selected.

    Client i (if it reports): y ← x; K times y ← y - η_l (g_i(y) - c_i + c);
    c_i⁺ = c_i - c + (x - y)/(K η_l); Δy = y - x, Δc = c_i⁺ - c_i.
    Server: x ← x + η_g · mean Δy;  c ← c + (1/N) Σ_{i reported} Δc_i.
    With ``planned`` the control update is the old, wrong ``c + (|planned cohort|/N) mean Δc``.
    """
    clients = _clients()
    xw, xb = _start()
    cw, cb = torch.zeros_like(xw), torch.zeros_like(xb)
    ci = [(torch.zeros_like(xw), torch.zeros_like(xb)) for _ in clients]
    for r in range(rounds):
        dys, dcs = [], []
        for i, d in enumerate(clients):
            if i in drop.get(r, set()):
                continue
            yw, yb = xw.clone(), xb.clone()
            for _ in range(steps):
                gw, gb = _grad(yw, yb, d.x_train.double(), d.y_train)
                yw = yw - lr * (gw - ci[i][0] + cw)
                yb = yb - lr * (gb - ci[i][1] + cb)
            new_w = ci[i][0] - cw + (xw - yw) / (steps * lr)
            new_b = ci[i][1] - cb + (xb - yb) / (steps * lr)
            dys.append((yw - xw, yb - xb))
            dcs.append((new_w - ci[i][0], new_b - ci[i][1]))
            ci[i] = (new_w, new_b)
        xw = xw + server_lr * sum(d[0] for d in dys) / len(dys)
        xb = xb + server_lr * sum(d[1] for d in dys) / len(dys)
        denom = len(dcs) if planned else N_CLIENTS  # planned cohort = N here
        cw = cw + sum(d[0] for d in dcs) / denom
        cb = cb + sum(d[1] for d in dcs) / denom
    return (xw, xb), (cw, cb), ci


def _run_scaffold(rounds: int, drop: dict[int, set[int]]) -> tuple[object, ClientStore]:
    lr, steps = 0.2, 3
    store = ClientStore.from_clients(_clients())
    model = _model()

    def participation(cid: int, info: RoundInfo) -> float | None:
        return None if cid in drop.get(info.round, set()) else 1.0

    ex = SerialExecutor(store, model, participation=participation)
    alg = Scaffold(local=LocalTraining(lr=lr, steps=steps, batch_size=0), server=SGD(lr=0.5))
    cfg = RunConfig(rounds=rounds, clients_per_round=N_CLIENTS, eval_every=0)
    return run(alg, ex, model_params(model), cfg).state, store


def _check_scaffold(rounds: int, drop: dict[int, set[int]]) -> None:
    state, store = _run_scaffold(rounds, drop)
    (xw, xb), (cw, cb), ci = _scaffold_reference(rounds, 0.2, 3, 0.5, drop)
    tol = {"atol": 2e-6, "rtol": 0}
    torch.testing.assert_close(state.params["weight"].double(), xw, **tol)  # type: ignore[attr-defined]
    torch.testing.assert_close(state.params["bias"].double(), xb, **tol)  # type: ignore[attr-defined]
    torch.testing.assert_close(state.control["weight"].double(), cw, **tol)  # type: ignore[attr-defined]
    torch.testing.assert_close(state.control["bias"].double(), cb, **tol)  # type: ignore[attr-defined]
    for i in range(N_CLIENTS):
        got = store.get_state(i).control
        torch.testing.assert_close(got["weight"].double(), ci[i][0], **tol)
        torch.testing.assert_close(got["bias"].double(), ci[i][1], **tol)


def test_scaffold_control_variates_three_rounds_every_client_reports() -> None:
    _check_scaffold(3, {})


def test_scaffold_server_control_counts_only_the_clients_that_reported() -> None:
    drop = {1: {3}, 2: {0, 2}}
    _check_scaffold(3, drop)
    # the planned-cohort rule (|S| = 4 while 3 reported) lands elsewhere by a visible margin
    state, _ = _run_scaffold(2, drop)
    (_, _), (cw_old, _), _ = _scaffold_reference(2, 0.2, 3, 0.5, drop, planned=True)
    assert (state.control["weight"].double() - cw_old).abs().max() > 1e-3  # type: ignore[attr-defined]
