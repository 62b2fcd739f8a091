"""The processes executor: errors on a rank surface on rank 0, ranks shut down cleanly, the factory.

Each test spawns one extra gloo rank (a few seconds of start-up on a loaded 2-core machine).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import pytest
import torch.distributed as dist

from fedkit.algorithm import ClientContext, ClientData, LocalPlan
from fedkit.algorithms import FedAvg
from fedkit.algorithms.fedavg import ModelMessage
from fedkit.local import LocalTraining
from fedkit.params import model_params
from fedkit.run import RunConfig, run
from fedkit.sim.distributed import RemoteRankError, greedy_assign, owner_table
from fedkit.sim.factory import ModelSpec, build_executor
from fedkit.sim.processes import ProcessExecutor
from tests.helpers.toy import toy_model, toy_store

LOCAL = LocalTraining(lr=0.05, epochs=1, batch_size=8)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FailOnRank(FedAvg):
    """FedAvg whose clients fail on one rank (to test error propagation)."""

    bad_rank: int = 1

    def client_init(
        self, ctx: ClientContext, msg: ModelMessage, data: ClientData, state: None
    ) -> LocalPlan[None]:
        if dist.is_initialized() and dist.get_rank() == self.bad_rank:
            raise ValueError(f"disk on fire while training client {ctx.client_id}")
        return super().client_init(ctx, msg, data, state)


def _broken_store() -> Any:
    raise FileNotFoundError("no such dataset on this rank")


@pytest.mark.dist
def test_error_on_rank_one_surfaces_on_rank_zero_and_ranks_shut_down() -> None:
    ex = build_executor(
        "processes",
        store=toy_store(8),
        model_fn=toy_model,
        store_fn=functools.partial(toy_store, 8),
        processes=2,
    )
    assert isinstance(ex, ProcessExecutor)
    alg = FailOnRank(local=LOCAL)
    cfg = RunConfig(rounds=2, clients_per_round=6, seed=3, eval_every=0)
    try:
        with pytest.raises(RemoteRankError, match=r"rank 1: ValueError: disk on fire"):
            run(alg, ex, model_params(toy_model()), cfg)
        # the ranks stayed in step: rank 0 can still talk to rank 1 (federated evaluation)
        evals = ex.evaluate(model_params(toy_model()), range(8))
        assert [e.client_id for e in evals] == list(range(8))
        processes = list(ex._procs)
    finally:
        t0 = time.monotonic()
        ex.close()
    assert time.monotonic() - t0 < 20
    assert not any(p.is_alive() for p in processes)
    assert all(p.exitcode == 0 for p in processes)
    assert not dist.is_initialized()


@pytest.mark.dist
@pytest.mark.slow
def test_a_rank_that_cannot_build_its_data_fails_the_start() -> None:
    ex = ProcessExecutor(
        store=toy_store(8), model_fn=toy_model, store_fn=_broken_store, world_size=2
    )
    with pytest.raises(RemoteRankError, match=r"rank 1: FileNotFoundError.*no such dataset"):
        ex.start(FedAvg(local=LOCAL))
    ex.close()
    assert not dist.is_initialized()


def test_factory_validates_processes_settings() -> None:
    with pytest.raises(ValueError, match="data_spec"):
        build_executor("processes", store=toy_store(4), model_fn=toy_model, processes=2)
    with pytest.raises(ValueError, match="processes must be >= 1"):
        build_executor("processes", store=toy_store(4), model_fn=toy_model, processes=0)
    with pytest.raises(ValueError, match="allowed: serial, processes, vectorized"):
        build_executor("threads", store=toy_store(4), model_fn=toy_model)
    spec = ModelSpec(name="mlp", num_classes=10, input_shape=(1, 28, 28))
    a, b = spec(), spec.build()
    assert all((a.state_dict()[k] == b.state_dict()[k]).all() for k in a.state_dict())


def test_work_assignment_is_balanced_and_deterministic() -> None:
    work = [(c, float(10 + (c * 37) % 90)) for c in range(40)]
    bins = greedy_assign(work, 3)
    assert sorted(c for b in bins for c in b) == list(range(40))
    loads = [sum(w for c, w in work if c in b) for b in bins]
    assert max(loads) - min(loads) <= max(w for _, w in work)
    assert bins == greedy_assign(list(reversed(work)), 3)
    owner = owner_table([5, 5, 100, 5, 5], 2)
    assert owner.tolist().count(int(owner[2])) == 1  # the big client is alone on its rank
