"""The weighted mean, its context and its reductions, and the algorithms' small rules, worked by
hand (the cases the monoid-law properties do not pin down)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from torch import nn

from fedkit.aggregate import (
    AggContext,
    EmptyAggregateError,
    Stage,
    WeightedMean,
    aggregate,
    fold,
    gather_merge,
)
from fedkit.algorithm import ClientData, RoundInfo
from fedkit.algorithms import FedAvg, FedSGD, Scaffold
from fedkit.algorithms.fedavg import client_weight
from fedkit.client import client_context, client_update, prepared_template
from fedkit.local import LocalTraining
from fedkit.params import model_params, tree_flatten
from fedkit.rng import generator
from fedkit.server_opt import SGD, Adam

CTX = AggContext(round=2, seed=9, client_id=4)


def _u(*v: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor(v)}


def test_weighted_mean_counts_weights_and_updates() -> None:
    agg = WeightedMean[dict[str, torch.Tensor]]()
    acc = aggregate(agg, [(_u(1.0, 2.0), 1.0), (_u(4.0, 8.0), 3.0), (_u(100.0, 100.0), 0.0)])
    # zero weight is allowed (a client with no examples) and counted, but moves nothing
    assert acc.count.dtype == torch.int64 and int(acc.count) == 3
    assert float(acc.weight) == 4.0
    assert agg.result(acc, CTX)["w"].tolist() == [(1 + 12) / 4, (2 + 24) / 4]
    with pytest.raises(ValueError, match=r"aggregation weight must be >= 0, got -1\.0"):
        agg.add(acc, _u(0.0, 0.0), -1.0)


def test_a_mean_over_zero_total_weight_or_no_update_is_refused_with_its_counts() -> None:
    agg = WeightedMean[dict[str, torch.Tensor]]()
    only_zero = aggregate(agg, [(_u(1.0), 0.0), (_u(2.0), 0.0)])
    with pytest.raises(EmptyAggregateError, match=r"\(2 updates, total weight 0.0\)"):
        agg.result(only_zero, CTX)
    with pytest.raises(EmptyAggregateError, match=r"^no updates to aggregate$"):
        aggregate(agg, [])


def test_context_streams_depend_on_round_seed_client_and_name_only() -> None:
    def draw(g: torch.Generator) -> int:
        return int(torch.randint(0, 2**62, (1,), generator=g))

    a = draw(CTX.stream("noise"))
    assert a == draw(generator(9, 2, 4, "agg/noise"))
    assert a == draw(AggContext(round=2, seed=9, client_id=4).stream("noise"))
    others = [
        CTX.stream("mask"),
        AggContext(round=3, seed=9, client_id=4).stream("noise"),
        AggContext(round=2, seed=8, client_id=4).stream("noise"),
        AggContext(round=2, seed=9, client_id=5).stream("noise"),
        generator(9, 2, 4, "noise"),  # the agg/ namespace keeps it apart from client streams
    ]
    assert all(draw(g) != a for g in others)


class _Ranks:
    """A fake two-rank collective: this process plays rank ``rank``; the other rank's
    accumulator is ``other``."""

    def __init__(self, rank: int, other: Any) -> None:
        self.rank, self.other = rank, other

    def all_sum(self, tree: Any) -> Any:
        raise AssertionError("a buffering rule must not all-reduce")

    def gather(self, tree: Any) -> list[Any] | None:
        return [tree, self.other] if self.rank == 0 else None


def test_gather_merge_folds_rank_parts_in_order_at_the_root_only() -> None:
    agg = WeightedMean[dict[str, torch.Tensor]]()
    mine = aggregate(agg, [(_u(1.0), 1.0)])
    theirs = aggregate(agg, [(_u(5.0), 3.0)])
    total = gather_merge(agg, mine, _Ranks(0, theirs))
    assert float(total.weight) == 4.0 and agg.result(total, CTX)["w"].tolist() == [4.0]
    assert gather_merge(agg, mine, _Ranks(1, theirs)) is mine


@dataclasses.dataclass(frozen=True)
class _Spy:
    """An inner aggregator that records what the stage hands it."""

    seen: list[tuple[str, Any]] = dataclasses.field(default_factory=list)

    def prepare(self, update: Any, weight: float, ctx: AggContext) -> Any:
        self.seen.append(("prepare", (weight, ctx)))
        return update

    def zero(self, like: Any) -> Any:
        return ["zero"]

    def add(self, acc: Any, update: Any, weight: float) -> Any:
        return [*acc, weight]

    def merge(self, a: Any, b: Any) -> Any:
        return a + b

    def reduce(self, acc: Any, comm: Any) -> Any:
        self.seen.append(("reduce", comm))
        return acc

    def result(self, acc: Any, ctx: AggContext) -> Any:
        self.seen.append(("result", ctx))
        return acc


def test_a_stage_forwards_every_step_to_its_inner_aggregator() -> None:
    spy = _Spy()
    stage = Stage(inner=spy)
    u = _u(1.0)
    assert stage.prepare(u, 2.0, CTX) is u
    acc = fold(stage, None, u, 2.0)
    acc = stage.merge(acc, stage.add(stage.zero(u), u, 3.0))
    assert acc == ["zero", 2.0, "zero", 3.0]
    comm = object()
    assert stage.reduce(acc, comm) is acc  # type: ignore[arg-type]
    server = AggContext(round=2, seed=9)
    assert stage.result(acc, server) is acc
    assert spy.seen == [("prepare", (2.0, CTX)), ("reduce", comm), ("result", server)]


# ---------------------------------------------------------------------------- algorithm rules


def test_client_weights_are_example_counts_or_exactly_one() -> None:
    assert client_weight("examples", 7) == 7.0
    assert client_weight("uniform", 7) == 1.0


def test_fedavg_refuses_a_server_that_is_not_an_optimizer() -> None:
    @dataclasses.dataclass(frozen=True)
    class HalfOptimizer:
        def init(self, params: Any) -> None:
            return None

    with pytest.raises(TypeError, match="server must be a server optimizer"):
        FedAvg(server=HalfOptimizer())  # type: ignore[arg-type]


def test_fedsgd_keeps_its_local_rule_fixed() -> None:
    FedSGD(server=SGD(lr=0.5))  # one full-batch step with client lr 1: accepted
    for local in (LocalTraining(lr=0.5, steps=1, batch_size=0), LocalTraining(lr=1.0, steps=2)):
        with pytest.raises(ValueError) as err:
            FedSGD(local=local)
        assert str(err.value) == (
            "FedSGD's local training is fixed to one full-batch step with lr 1 "
            "(local=LocalTraining(lr=1.0, steps=1, batch_size=0)); set the step size through "
            "server=SGD(lr=...), or use FedAvg for other local training"
        )


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def _one_client(alg: Any, model: nn.Module) -> Any:
    g = torch.Generator().manual_seed(0)
    data = ClientData(torch.randn(12, 3, generator=g), torch.randint(0, 2, (12,), generator=g))
    info = RoundInfo(round=0, seed=1, num_clients=4, cohort_size=4)
    msg = alg.broadcast(alg.init_state(model_params(model)), info)
    return client_update(alg, client_context(model, 0, info), msg, data, None)


@pytest.mark.parametrize(
    "alg",
    [FedAvg(), Scaffold()],
    ids=["fedavg", "scaffold"],
)
def test_update_templates_have_the_shapes_of_real_updates(alg: Any) -> None:
    model = _model()
    res = _one_client(alg, model)
    got = tree_flatten(alg.update_template(model_params(model)))
    real = tree_flatten(res.update)
    assert {k: (v.dtype, v.shape) for k, v in got.items()} == {
        k: (v.dtype, v.shape) for k, v in real.items()
    }
    assert all(float(v.abs().sum()) == 0.0 for v in got.values())
    prepared = tree_flatten(prepared_template(alg, model_params(model), seed=1))
    assert prepared.keys() == real.keys()


def test_scaffold_keeps_its_server_optimizer_state_and_leaves_buffers_out_of_control() -> None:
    model = _model()
    params = model_params(model)
    alg = Scaffold(server=Adam(lr=0.1), local=LocalTraining(lr=0.1, steps=1, batch_size=4))
    state = alg.init_state(params)
    assert tree_flatten(state.opt).keys() == tree_flatten(Adam(lr=0.1).init(params)).keys()
    res = _one_client(alg, model)
    names = {k for k, _ in model.named_parameters()}
    buffers = [k for k in params if k not in names]
    assert buffers  # running mean/var of the batch norm
    for k in buffers:  # c_i of a non-trained entry stays at its start (zero), whatever moved
        assert float(res.client_state.control[k].abs().sum()) == 0.0
    # K = 1 step: c_i⁺ = c_i - c + (x - y)/(1·η) = -Δy/η with c = c_i = 0
    for k in names:
        torch.testing.assert_close(
            res.client_state.control[k], -res.update.delta[k] / 0.1, rtol=1e-6, atol=1e-7
        )


def test_scaffold_server_step_is_its_optimizers_and_counts_reporters() -> None:
    """x moves by the server optimiser along −mean Δy (here SGD with momentum, whose state must
    carry over rounds); c by |S|/N · mean Δc with |S| the reporters, or the cohort if unsaid."""
    params = {"w": torch.tensor([1.0])}
    alg = Scaffold(server=SGD(lr=1.0, momentum=0.5))
    state = alg.init_state(params)
    agg = alg.update_template(params)
    agg = dataclasses.replace(
        agg, delta={"w": torch.tensor([0.5])}, control_delta={"w": torch.tensor([2.0])}
    )
    info = RoundInfo(round=0, seed=0, num_clients=8, cohort_size=4)
    s1 = alg.server_update(state, agg, dataclasses.replace(info, reported=2))
    # g = -0.5: v = 0.5 v + g = -0.5, x = 1 - v = 1.5;  c = 0 + (2/8)·2 = 0.5
    assert s1.params["w"].tolist() == [1.5] and s1.control["w"].tolist() == [0.5]
    s2 = alg.server_update(s1, agg, info)  # reported unsaid: the cohort, 4
    # v = 0.5·(-0.5) - 0.5 = -0.75, x = 1.5 + 0.75 = 2.25;  c = 0.5 + (4/8)·2 = 1.5
    assert s2.params["w"].tolist() == [2.25] and s2.control["w"].tolist() == [1.5]
