"""D-PSGD on ``torch.distributed`` ranks: one node per rank, gossip by send/recv to neighbours.

Each rank is one node of :mod:`fedkit.decentral.dpsgd`: it trains with the same
:func:`~fedkit.decentral.dpsgd.local_round`, sends its flattened model to each out-neighbour of
round ``t`` (``dist.isend``) and receives from each in-neighbour (``dist.irecv``), then mixes with
the same :func:`~fedkit.decentral.dpsgd.mix` row, so ranks and simulator give the same models. No
all-reduce moves the models of a gossip topology; the ``allreduce`` baseline gathers them.

Measurement is separate from training: every round the ranks all-gather their models once so
rank 0 can report the consensus distance and score ``x̄`` (the simulator sees every model for
free). That traffic is not counted in ``bytes_per_node``.

:func:`run_gloo` spawns the ranks on 127.0.0.1 (tests, single machine); under ``torchrun``
call :func:`run_rank` inside the initialised group.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from fedkit.algorithm import ClientData
from fedkit.decentral.dpsgd import (
    ALLREDUCE,
    Callback,
    DecentralResult,
    DecentralSpec,
    Evaluator,
    RoundMetrics,
    average,
    consensus_distance,
    gossip_row,
    local_round,
    mix,
)
from fedkit.loopback import free_port, run_loopback_rank
from fedkit.params import Params, nbytes

__all__ = ["flatten", "run_gloo", "run_rank", "unflatten"]


def flatten(p: Params) -> Tensor:
    """The tensors of ``p`` in key order as one vector (one dtype for all)."""
    dtypes = {v.dtype for v in p.values()}
    if len(dtypes) != 1:
        raise ValueError(
            f"gossip over ranks needs one floating dtype, got {sorted(map(str, dtypes))}"
        )
    return torch.cat([p[k].reshape(-1) for k in sorted(p)])


def unflatten(flat: Tensor, template: Params) -> Params:
    """Split ``flat`` back into ``template``'s shapes (key order)."""
    total = sum(v.numel() for v in template.values())
    if flat.dim() != 1 or flat.numel() != total:
        raise ValueError(f"a model vector of {flat.numel()} values for {total} parameters")
    out: Params = {}
    at = 0
    for k in sorted(template):
        size = template[k].numel()
        out[k] = flat[at : at + size].reshape(template[k].shape).clone()
        at += size
    return out


def _exchange(spec: DecentralSpec, t: int, rank: int, n: int, mine: Tensor) -> dict[int, Tensor]:
    """This round's models from the in-neighbours (or everyone, for the all-reduce baseline)."""
    if spec.topology == ALLREDUCE:
        bufs = [torch.empty_like(mine) for _ in range(n)]
        dist.all_gather(bufs, mine)
        return dict(enumerate(bufs))
    send, recv = spec.schedule(n).peers(t, rank)
    got = {j: torch.empty_like(mine) for j in recv}
    reqs = [dist.isend(mine, dst=j) for j in send] + [dist.irecv(got[j], src=j) for j in recv]
    for r in reqs:
        if r is not None:
            r.wait()
    got[rank] = mine
    return got


def run_rank(
    spec: DecentralSpec,
    model: nn.Module,
    init: Params,
    data: ClientData,
    *,
    evaluator: Evaluator | None = None,
    callback: Callback | None = None,
) -> tuple[Params, Params, tuple[RoundMetrics, ...]]:
    """This rank's node (rank ``r`` is node ``r`` of ``world`` nodes) inside an initialised group.

    Returns:
        The node's final model, the final averaged model ``x̄``, and the rounds' metrics
        (evaluated on rank 0 only).
    """
    rank, n = dist.get_rank(), dist.get_world_size()
    schedule = spec.schedule(n)
    x = dict(init)
    model_bytes = nbytes(init)
    history: list[RoundMetrics] = []
    xbar = x
    for t in range(spec.rounds):
        t0 = time.perf_counter()
        trained, stats = local_round(model, x, data, spec.local, spec.seed, t, rank)
        got = _exchange(spec, t, rank, n, flatten(trained))
        models = {j: unflatten(v, trained) for j, v in got.items()}
        x = mix(gossip_row(schedule, t, rank), models)
        # measurement only: every node's model and loss, for Ξ and x̄
        loss = torch.tensor([stats.mean_loss], dtype=torch.float64)
        dist.all_reduce(loss)
        everyone = [torch.empty_like(flatten(x)) for _ in range(n)]
        dist.all_gather(everyone, flatten(x))
        xs = [unflatten(v, x) for v in everyone]
        xbar = average(xs)
        sent = [spec.bytes_sent(schedule, t, i, model_bytes) for i in range(n)]
        rec = RoundMetrics(
            round=t,
            train_loss=float(loss) / n,
            consensus_distance=consensus_distance(xs),
            bytes_per_node=sum(sent) / n,
        )
        if rank == 0 and evaluator is not None and spec.due(t):
            ev = evaluator(xbar)
            rec = dataclasses.replace(rec, test_loss=ev.loss, test_accuracy=ev.accuracy)
        rec = dataclasses.replace(rec, wall_seconds=time.perf_counter() - t0)
        history.append(rec)
        if rank == 0 and callback is not None:
            callback(rec)
    return x, xbar, tuple(history)


ModelFn = Callable[[], nn.Module]


def _rank_main(
    rank: int,
    world: int,
    port: int,
    spec: DecentralSpec,
    model_fn: ModelFn,
    init: Params,
    nodes: Sequence[ClientData],
    out_dir: str,
) -> None:

    def work() -> None:
        x, _, history = run_rank(spec, model_fn(), init, nodes[rank])
        save_file({k: v.contiguous() for k, v in x.items()}, str(Path(out_dir, f"node{rank}.st")))
        if rank == 0:
            Path(out_dir, "history.json").write_text(json.dumps([h.to_dict() for h in history]))

    run_loopback_rank(rank, world, port, work)


def run_gloo(
    spec: DecentralSpec, model_fn: ModelFn, init: Params, nodes: Sequence[ClientData]
) -> DecentralResult:
    """Spawn ``len(nodes)`` gloo ranks on 127.0.0.1, one node each; return every node's model."""
    n = len(nodes)
    with tempfile.TemporaryDirectory(prefix="fedkit-gossip-") as out:
        mp.spawn(  # type: ignore[attr-defined,no-untyped-call]
            _rank_main,
            args=(n, free_port(), spec, model_fn, init, list(nodes), out),
            nprocs=n,
            join=True,
        )
        finals = tuple(load_file(str(Path(out, f"node{i}.st"))) for i in range(n))
        rows = json.loads(Path(out, "history.json").read_text())
    return DecentralResult(
        nodes=finals,
        history=tuple(RoundMetrics(**r) for r in rows),
        model_bytes=nbytes(init),
    )
