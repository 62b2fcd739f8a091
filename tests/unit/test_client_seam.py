"""The one client seam (fedkit.client): the plan's linear gradient term by hand, frozen
parameters, the loss escape, what run_client records and hands the aggregator, the template
without training, and client evaluation (global and personal)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from torch import nn

from fedkit.aggregate import AggContext, WeightedMean
from fedkit.algorithm import ClientData, LocalPlan, RoundInfo
from fedkit.algorithms import FedAvg
from fedkit.client import (
    client_context,
    client_update,
    evaluate_client,
    evaluate_clients,
    linear_hook,
    prepared_template,
    run_client,
    server_context,
    train_plan,
)
from fedkit.data.store import ClientStore
from fedkit.evaluate import evaluate
from fedkit.local import LocalTraining
from fedkit.params import load_params, model_params
from fedkit.rng import SERVER, generator

INFO = RoundInfo(round=3, seed=11, num_clients=5, cohort_size=2)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def _data(n: int = 12, test: int = 6) -> ClientData:
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(n + test, 3, generator=g), torch.randint(0, 2, (n + test,), generator=g)
    return ClientData(x[:n], y[:n], x[n:], y[n:])


def test_context_has_the_clients_own_training_stream() -> None:
    ctx = client_context(_model(), 2, INFO, 0.5)
    assert (ctx.client_id, ctx.info, ctx.work_fraction) == (2, INFO, 0.5)
    want = torch.randint(0, 2**62, (3,), generator=generator(11, 3, 2, "client"))
    assert torch.equal(torch.randint(0, 2**62, (3,), generator=ctx.generator), want)
    assert client_context(_model(), 2, INFO).work_fraction == 1.0
    assert server_context(INFO) == AggContext(round=3, seed=11, client_id=SERVER)


def test_linear_term_is_mu_times_distance_to_anchor_plus_offset_by_hand() -> None:
    model = nn.Linear(2, 1, bias=True)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0]]))
        model.bias.copy_(torch.tensor([0.5]))
    start = {"weight": torch.zeros(1, 2), "bias": torch.zeros(1)}
    anchor = {"weight": torch.tensor([[3.0, 1.0]]), "bias": torch.tensor([0.0])}
    offset = {"weight": torch.tensor([[0.25, 0.25]]), "bias": torch.tensor([-1.0])}
    called: list[nn.Module] = []
    plan = LocalPlan(
        start=start, local=LocalTraining(), prox_mu=1.0, anchor=anchor, offset=offset,
        grad_hook=called.append,
    )  # fmt: skip
    model.weight.grad = None  # no gradient: left alone, and the next parameter still edited
    model.bias.grad = torch.tensor([2.0])
    hook = linear_hook(plan)
    assert hook is not None
    hook(model)
    # bias: 2 + 1·(0.5 - 0) + (-1) = 1.5  (anchor, not start, is the pull point: 0.5 - 0.0)
    assert model.bias.grad.tolist() == [1.5]
    assert model.weight.grad is None and called == [model]
    model.weight.grad = torch.tensor([[1.0, 1.0]])
    hook(model)
    # weight: 1 + 1·([1, -2] - [3, 1]) + 0.25 = [-0.75, -1.75]
    assert model.weight.grad.tolist() == [[-0.75, -1.75]]


def test_without_a_term_the_hook_is_the_plans_own_escape_or_none() -> None:
    start = model_params(_model())
    assert linear_hook(LocalPlan(start=start, local=LocalTraining())) is None
    seen: list[nn.Module] = []
    assert linear_hook(LocalPlan(start=start, local=LocalTraining(), grad_hook=seen.append)) == (
        seen.append
    )
    # the anchor defaults to the start: μ (w - start)
    only_mu = linear_hook(LocalPlan(start=start, local=LocalTraining(), prox_mu=2.0))
    m = _model()
    load_params(m, {k: v + 1.0 for k, v in start.items()})
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    assert only_mu is not None
    only_mu(m)
    assert all(torch.allclose(p.grad, torch.full_like(p, 2.0)) for p in m.parameters())


def test_frozen_parameters_stay_and_outcomes_are_copies() -> None:
    m = _model()
    start = model_params(m)
    plan = LocalPlan(
        start=start, local=LocalTraining(lr=0.5, steps=3, batch_size=4),
        frozen=frozenset({"0.weight", "0.bias"}),
    )  # fmt: skip
    out = train_plan(client_context(m, 0, INFO), plan, _data())
    assert torch.equal(out.trained["0.weight"], start["0.weight"])
    assert not torch.equal(out.trained["2.weight"], start["2.weight"])
    with torch.no_grad():
        m[2].weight.add_(1.0)  # the resident model moves on; the outcome does not
    assert not torch.equal(out.trained["2.weight"], m[2].weight)
    assert out.num_examples == 12 and out.stats.steps == 3


def test_a_plan_with_data_of_its_own_trains_on_it_not_on_the_clients() -> None:
    own, other = _data(), _data(n=8)
    flipped = ClientData(own.x_train, 1 - own.y_train)
    m = _model()
    start = model_params(m)
    local = LocalTraining(lr=0.5, steps=3, batch_size=4)
    plain = train_plan(client_context(m, 0, INFO), LocalPlan(start=start, local=local), own)
    moved = train_plan(
        client_context(m, 0, INFO), LocalPlan(start=start, local=local, data=flipped), own
    )
    again = train_plan(client_context(m, 0, INFO), LocalPlan(start=start, local=local), flipped)
    assert all(torch.equal(moved.trained[k], again.trained[k]) for k in start)
    assert not torch.equal(moved.trained["2.weight"], plain.trained["2.weight"])
    small = train_plan(
        client_context(m, 0, INFO), LocalPlan(start=start, local=local, data=other), own
    )
    assert small.num_examples == 8


def test_the_loss_escape_reaches_local_training() -> None:
    m = _model()
    start = model_params(m)
    local = LocalTraining(lr=0.5, steps=2, batch_size=4)
    c = 0.5
    pull = LocalPlan(
        start=start, local=local,
        loss_hook=lambda mod: c * sum(p.pow(2).sum() for p in mod.parameters()),
    )  # fmt: skip
    decay = LocalPlan(start=start, local=dataclasses.replace(local, weight_decay=2 * c))
    a = train_plan(client_context(m, 0, INFO), pull, _data())
    b = train_plan(client_context(m, 0, INFO), decay, _data())
    for k in start:
        torch.testing.assert_close(a.trained[k], b.trained[k], rtol=0, atol=1e-6)


@dataclasses.dataclass(frozen=True)
class _SpyAgg(WeightedMean[Any]):
    seen: list[tuple[float, AggContext]] = dataclasses.field(default_factory=list)

    def prepare(self, update: Any, weight: float, ctx: AggContext) -> Any:
        self.seen.append((weight, ctx))
        return update


@dataclasses.dataclass(frozen=True, kw_only=True)
class _SpyAlg(FedAvg):
    inits: list[Any] = dataclasses.field(default_factory=list)

    def client_init(self, ctx: Any, msg: Any, data: Any, state: Any) -> Any:
        self.inits.append((ctx.client_id, data, state))
        return super().client_init(ctx, msg, data, state)


def test_run_client_records_metrics_hands_prepare_its_context_and_stores_state() -> None:
    spy = _SpyAgg()
    alg = _SpyAlg(local=LocalTraining(lr=0.1, epochs=1, batch_size=5), aggregator=spy)
    data = _data()
    store = ClientStore.from_clients([_data(4), data])
    m = _model()
    msg = alg.broadcast(alg.init_state(model_params(m)), INFO)
    p = run_client(alg, store, m, msg, 1, INFO, 0.5)
    assert alg.inits[0][0] == 1 and torch.equal(alg.inits[0][1].x_train, data.x_train)
    assert (p.metrics.client_id, p.metrics.work_fraction, p.metrics.num_examples) == (1, 0.5, 12)
    assert p.metrics.steps == 1  # ⌈12/5⌉ = 3 planned steps, half the work
    assert 0.0 <= p.metrics.seconds < 60.0
    assert p.weight == 12.0 and spy.seen == [(12.0, AggContext(round=3, seed=11, client_id=1))]
    assert run_client(alg, store, m, msg, 0, INFO).metrics.work_fraction == 1.0
    direct = client_update(alg, client_context(m, 1, INFO, 0.5), msg, data, None)
    assert all(torch.equal(direct.update.delta[k], p.update.delta[k]) for k in p.update.delta)


def test_prepared_template_prepares_the_zero_update_on_the_server_stream() -> None:
    spy = _SpyAgg()
    alg = FedAvg(aggregator=spy)
    params = model_params(_model())
    tmpl = prepared_template(alg, params, seed=7)
    assert spy.seen == [(1.0, AggContext(round=0, seed=7, client_id=SERVER))]
    assert all(float(v.abs().sum()) == 0 and v.shape == params[k].shape
               for k, v in tmpl.delta.items())  # fmt: skip


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Personal(FedAvg):
    """The personal model is the global one shifted by the client's state (a number)."""

    calls: list[Any] = dataclasses.field(default_factory=list)

    def personal_params(self, global_params: Any, state: Any, local: Any = None) -> Any:
        self.calls.append((global_params, state))
        return {k: v + state for k, v in global_params.items()}


def test_evaluate_client_scores_global_and_personal_models() -> None:
    m = _model()
    params = model_params(m)
    data = _data(test=1)  # a single test example is still scored
    load_params(m, {k: v * 0 for k, v in params.items()})  # the model holds something else
    plain = evaluate_client(m, 0, data, params, batch_size=1)
    assert plain is not None and plain.personal is None
    assert data.x_test is not None and data.y_test is not None
    ref = _model()
    assert plain.result == evaluate(ref, data.x_test, data.y_test)
    alg = _Personal()
    e = evaluate_client(m, 0, data, params, alg, 0.3)
    assert e is not None and e.personal is not None
    assert alg.calls[0][1] == 0.3 and alg.calls[0][0] is params
    load_params(ref, {k: v + 0.3 for k, v in params.items()})
    assert e.personal == evaluate(ref, data.x_test, data.y_test)
    assert all(torch.equal(v, params[k]) for k, v in model_params(m).items())  # restored
    # loaded=True trusts the caller: the model's current parameters are scored
    load_params(m, {k: v + 0.3 for k, v in params.items()})
    trusting = evaluate_client(m, 0, data, params, loaded=True)
    assert trusting is not None and trusting.result == e.personal
    for no_test in (ClientData(data.x_train, data.y_train),
                    ClientData(data.x_train, data.y_train, data.x_test[:0], data.y_test[:0]),
                    ClientData(data.x_train, data.y_train, data.x_test, None)):  # fmt: skip
        assert evaluate_client(m, 0, no_test, params) is None
    with pytest.raises(ValueError):
        LocalPlan(start=params, local=LocalTraining(), prox_mu=-1.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Slow(FedAvg):
    def client_init(self, ctx: Any, msg: Any, data: Any, state: Any) -> Any:
        import time

        time.sleep(0.02)
        return super().client_init(ctx, msg, data, state)


def test_run_client_times_the_whole_client() -> None:
    m = _model()
    alg = _Slow()
    msg = alg.broadcast(alg.init_state(model_params(m)), INFO)
    p = run_client(alg, ClientStore.from_clients([_data()]), m, msg, 0, INFO)
    assert p.metrics.seconds >= 0.02


def test_evaluate_clients_takes_this_process_share_with_states_and_skips_no_test_data() -> None:
    m = _model()
    params = model_params(m)
    with_test = _data()
    assert with_test.x_test is not None and with_test.y_test is not None
    without = ClientData(
        with_test.x_train, with_test.y_train, with_test.x_test[:0], with_test.y_test[:0]
    )
    store = ClientStore.from_clients([with_test, with_test, with_test])
    store.set_state(0, 0.0)
    store.set_state(1, 0.5)
    store.set_state(2, 1.0)
    alg = _Personal()
    got = list(
        evaluate_clients(m, store, [2, 0, 1], params, alg, mine=lambda i, cid: i != 1 or cid != 0)
    )
    assert [(i, e.client_id) for i, e in got] == [(0, 2), (2, 1)]
    assert [state for _, state in alg.calls] == [1.0, 0.5]
    ref = _model()
    x, y = with_test.x_test, with_test.y_test
    assert x is not None and y is not None
    load_params(ref, {k: v + 1.0 for k, v in params.items()})
    assert got[0][1].personal == evaluate(ref, x, y)
    assert got[0][1].result == evaluate(_model(), x, y)
    # a client without test data is passed over and the next one still scored
    mixed = ClientStore.from_clients([without, with_test])
    assert [e.client_id for _, e in evaluate_clients(m, mixed, [0, 1], params)] == [1]
    # without an algorithm no state is read and no personal model scored
    plain = list(evaluate_clients(m, store, [0], params))
    assert plain[0][1].personal is None
