"""Asynchronous SGD on a parameter server with bounded staleness (stale synchronous parallel).

Ho et al., "More Effective Distributed ML via a Stale Synchronous Parallel Parameter Server"
(NeurIPS 2013); asynchronous SGD as in Dean et al. (2012) and Recht et al. (2011). Each worker
repeatedly pulls the server model w (at version v), computes a gradient g on its next
mini-batch, and pushes it; the server applies every gradient on arrival::

    w ← opt(w, g)            (version v' = v + τ, τ = the update's staleness)

Bounded staleness (SSP, bound s): with c_k the number of pushes of worker k, a worker may start
a new step only while ``c_k − min_j c_j ≤ s``; otherwise it waits for the slowest worker. That
bounds the staleness of every applied update by τ ≤ (K − 1)(2s + 1); s = 0 is lock-step.

Two executions:

* ``train_async_sim`` — deterministic, in one process, on a simulated event clock. Worker k
  takes ``async_step_seconds · speed_k`` per gradient (speeds log-normal with spread
  ``worker_speed_sigma``, drawn from the seed) plus one push + pull on the network. The event
  order is computed by the pure generator ``ssp_events``, so it does not depend on timing noise.
* ``async_server`` / ``async_worker`` — over real gloo ranks (rank 0 the server, ranks 1…K the
  workers, each with a disjoint shard of the training set); tensors travel with tagged
  point-to-point messages, headers as float64 tensors. Its interleaving is real, so it is not
  bit-reproducible.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from fedkit.parallel.comm import model_bytes, push_pull_seconds
from fedkit.parallel.result import EvalPoint, ParallelResult
from fedkit.parallel.schedule import BatchStream, epoch_permutation, lr_at
from fedkit.parallel.spec import ParallelSpec
from fedkit.parallel.trainer import (
    Callback,
    DatasetLike,
    ModelFn,
    build_model,
    build_optimizer,
    evaluate,
    warmup_steps_of,
)
from fedkit.rng import SERVER, generator

_TAG_HDR_UP, _TAG_GRAD, _TAG_HDR_DOWN, _TAG_PARAMS = 11, 12, 13, 14


@dataclass(frozen=True, kw_only=True)
class AsyncEvent:
    """One event of the SSP schedule.

    Attributes:
        kind: ``pull`` (worker reads the model and starts a gradient) or ``push`` (the server
            applies that worker's gradient).
        worker: worker index 0 … K−1.
        time: simulated time of the event in seconds.
        version: server version read (``pull``) or the version the update is applied to
            (``push``; the staleness is this minus the version the worker pulled).
    """

    kind: Literal["pull", "push"]
    worker: int
    time: float
    version: int


def worker_speeds(workers: int, sigma: float, seed: int) -> list[float]:
    """Per-worker slowdown factors exp(σ·z), z ~ N(0, 1) drawn from ``seed``."""
    gen = generator(seed, 0, SERVER, "parallel-async-speeds")
    z = torch.randn(workers, generator=gen, dtype=torch.float64)
    return [math.exp(sigma * float(v)) for v in z]


def ssp_events(
    speeds: list[float], *, staleness: int, step_seconds: float, comm_seconds: float
) -> Iterator[AsyncEvent]:
    """The endless, deterministic event order of SSP asynchronous SGD (ties: lower worker id).

    Args:
        speeds: slowdown factor of each worker.
        staleness: SSP bound s on ``c_k − min_j c_j`` when a worker starts a step.
        step_seconds: nominal compute time of one gradient.
        comm_seconds: time of one push + pull.
    """
    k_workers = len(speeds)
    clocks = [0] * k_workers
    version = 0
    pulled = [0] * k_workers
    heap: list[tuple[float, int]] = []
    waiting: set[int] = set()

    def start(k: int, now: float) -> AsyncEvent:
        pulled[k] = version
        heapq.heappush(heap, (now + step_seconds * speeds[k] + comm_seconds, k))
        return AsyncEvent(kind="pull", worker=k, time=now, version=version)

    for k in range(k_workers):
        yield start(k, 0.0)
    while True:
        now, k = heapq.heappop(heap)
        yield AsyncEvent(kind="push", worker=k, time=now, version=version)
        version += 1
        clocks[k] += 1
        waiting.add(k)
        slowest = min(clocks)
        for j in sorted(waiting):
            if clocks[j] - slowest <= staleness:
                waiting.discard(j)
                yield start(j, now)


def _grads_of(model: torch.nn.Module) -> list[Tensor]:
    return [
        p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
        for p in model.parameters()
    ]


def _server_step(
    opt: torch.optim.Optimizer,
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    spec: ParallelSpec,
    step: int,
    samples: int,
    warmup: int,
    milestones: tuple[int, ...],
) -> float:
    """Apply one pushed gradient on the server at the schedule's LR for ``step``; return the LR."""
    lr = lr_at(
        step,
        samples,
        base_lr=spec.lr,
        warmup_steps=warmup,
        schedule=spec.lr_schedule,
        sample_budget=spec.sample_budget,
        sample_milestones=milestones,
        decay=spec.lr_decay,
    )
    for group in opt.param_groups:
        group["lr"] = lr
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    opt.step()
    return lr


def train_async_sim(
    spec: ParallelSpec,
    dataset: DatasetLike,
    model_fn: ModelFn,
    *,
    callback: Callback | None = None,
) -> ParallelResult:
    """Deterministic in-process simulation of SSP asynchronous SGD (see module docstring)."""
    started = time.perf_counter()
    server = build_model(spec, model_fn)
    server.train()
    worker = build_model(spec, model_fn)  # scratch copy that computes gradients
    worker.train()
    opt = build_optimizer(spec, server)
    K, B, n = spec.workers, spec.batch_size, len(dataset.train.y)
    size = model_bytes(server)
    pp_seconds = push_pull_seconds(size, spec.network) if K > 1 else 0.0
    stream = BatchStream(n, spec.seed)
    warmup = warmup_steps_of(spec, n)
    milestones = tuple(int(f * spec.sample_budget) for f in spec.lr_milestones)
    pending: dict[int, tuple[list[Tensor], float, int]] = {}
    compute = [0.0] * K
    pushes = [0] * K
    history: list[EvalPoint] = []
    samples = updates = max_stale = 0
    loss_sum, loss_count = 0.0, 0
    next_eval = spec.eval_every_samples
    events = ssp_events(
        worker_speeds(K, spec.worker_speed_sigma, spec.seed),
        staleness=spec.staleness,
        step_seconds=spec.async_step_seconds,
        comm_seconds=pp_seconds,
    )
    lr = spec.lr
    for ev in events:
        if ev.kind == "pull":
            t0 = time.perf_counter()
            worker.load_state_dict(server.state_dict())
            worker.zero_grad(set_to_none=True)
            idx = stream.next(B)
            loss = F.cross_entropy(worker(dataset.train.x[idx]), dataset.train.y[idx])
            loss.backward()  # type: ignore[no-untyped-call]
            pending[ev.worker] = (_grads_of(worker), float(loss.detach()), ev.version)
            compute[ev.worker] += time.perf_counter() - t0
            continue
        grads, loss_value, pulled = pending.pop(ev.worker)
        max_stale = max(max_stale, ev.version - pulled)
        lr = _server_step(
            opt, list(server.parameters()), grads, spec, updates, samples, warmup, milestones
        )
        updates += 1
        samples += B
        pushes[ev.worker] += 1
        loss_sum += loss_value
        loss_count += 1
        done = samples >= spec.sample_budget
        if samples >= next_eval or done:
            while next_eval <= samples:
                next_eval += spec.eval_every_samples
            test_loss, test_acc = evaluate(
                server,
                dataset.test,
                batch_size=spec.eval_batch_size,
                max_samples=spec.max_eval_samples,
            )
            point = _point(
                spec,
                updates=updates,
                samples=samples,
                n=n,
                train_loss=loss_sum / max(loss_count, 1),
                test=(test_loss, test_acc),
                compute_seconds=max(compute),
                comm_seconds=max(pushes) * pp_seconds,
                sim_seconds=ev.time,
                pushes=pushes,
                size=size,
                lr=lr,
                max_stale=max_stale,
            )
            loss_sum, loss_count = 0.0, 0
            history.append(point)
            if callback is not None:
                callback(point)
        if done:
            break
    final = {k: v.detach().clone() for k, v in server.state_dict().items()}
    return ParallelResult(
        history=tuple(history),
        final_params=final,
        model_bytes=size,
        wall_seconds=time.perf_counter() - started,
    )


def _point(
    spec: ParallelSpec,
    *,
    updates: int,
    samples: int,
    n: int,
    train_loss: float,
    test: tuple[float, float],
    compute_seconds: float,
    comm_seconds: float,
    sim_seconds: float,
    pushes: list[int],
    size: int,
    lr: float,
    max_stale: int,
) -> EvalPoint:
    per_push = float(size) if spec.workers > 1 else 0.0  # sent by a worker; it pulls as much
    return EvalPoint(
        step=updates,
        samples=samples,
        epoch=samples / n,
        train_loss=train_loss,
        test_loss=test[0],
        test_accuracy=test[1],
        compute_seconds=compute_seconds,
        comm_seconds=comm_seconds,
        sim_seconds=sim_seconds,
        bytes_per_worker=per_push * sum(pushes) / spec.workers,
        bytes_up_per_worker=per_push * sum(pushes) / spec.workers,
        bytes_down_per_worker=per_push * sum(pushes) / spec.workers,
        server_bytes=2 * per_push * sum(pushes),
        syncs=sum(pushes),
        local_steps=1,
        batch_size=spec.batch_size,
        lr=lr,
        max_staleness=max_stale,
    )


def _flat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def _unflat_into(buf: Tensor, tensors: Sequence[Tensor]) -> None:
    offset = 0
    with torch.no_grad():
        for t in tensors:
            t.copy_(buf[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def async_server(
    spec: ParallelSpec,
    dataset: DatasetLike,
    model_fn: ModelFn,
    *,
    callback: Callback | None = None,
) -> ParallelResult:
    """Rank 0 of a world of K + 1 gloo ranks: the SSP parameter server (see module docstring)."""
    started = time.perf_counter()
    model = build_model(spec, model_fn)
    model.train()
    opt = build_optimizer(spec, model)
    params = list(model.parameters())
    K, B, n = spec.workers, spec.batch_size, len(dataset.train.y)
    size = model_bytes(model)
    pp_seconds = push_pull_seconds(size, spec.network) if K > 1 else 0.0
    warmup = warmup_steps_of(spec, n)
    milestones = tuple(int(f * spec.sample_budget) for f in spec.lr_milestones)
    grad_buf = torch.zeros(sum(p.numel() for p in params))
    clocks = [0] * (K + 1)  # index by rank; rank 0 unused
    compute = [0.0] * (K + 1)
    waiting: set[int] = set()
    version = samples = max_stale = stopped = 0
    stopping = False
    loss_sum, loss_count = 0.0, 0
    next_eval = spec.eval_every_samples
    history: list[EvalPoint] = []
    lr = spec.lr

    def send_model(rank: int, stop: bool) -> None:
        dist.send(
            torch.tensor([float(version), float(stop), 0.0], dtype=torch.float64),
            rank,
            tag=_TAG_HDR_DOWN,
        )
        if not stop:
            dist.send(_flat(params), rank, tag=_TAG_PARAMS)

    for rank in range(1, K + 1):
        send_model(rank, False)
    while stopped < K:
        hdr = torch.zeros(3, dtype=torch.float64)
        src = dist.recv(hdr, tag=_TAG_HDR_UP)
        dist.recv(grad_buf, src=src, tag=_TAG_GRAD)
        if not stopping:
            max_stale = max(max_stale, version - int(hdr[0]))
            grads = [torch.empty_like(p) for p in params]
            _unflat_into(grad_buf, grads)
            lr = _server_step(opt, params, grads, spec, version, samples, warmup, milestones)
            version += 1
            samples += B
            clocks[src] += 1
            compute[src] += float(hdr[2])
            loss_sum += float(hdr[1])
            loss_count += 1
            stopping = samples >= spec.sample_budget
            if samples >= next_eval or stopping:
                while next_eval <= samples:
                    next_eval += spec.eval_every_samples
                test = evaluate(
                    model,
                    dataset.test,
                    batch_size=spec.eval_batch_size,
                    max_samples=spec.max_eval_samples,
                )
                pushes = clocks[1:]
                point = _point(
                    spec,
                    updates=version,
                    samples=samples,
                    n=n,
                    train_loss=loss_sum / max(loss_count, 1),
                    test=test,
                    compute_seconds=max(compute),
                    comm_seconds=max(pushes) * pp_seconds,
                    sim_seconds=time.perf_counter() - started,
                    pushes=pushes,
                    size=size,
                    lr=lr,
                    max_stale=max_stale,
                )
                loss_sum, loss_count = 0.0, 0
                history.append(point)
                if callback is not None:
                    callback(point)
        waiting.add(src)
        slowest = min(clocks[1:])
        for rank in sorted(waiting):
            if stopping:
                send_model(rank, True)
                stopped += 1
                waiting.discard(rank)
            elif clocks[rank] - slowest <= spec.staleness:
                send_model(rank, False)
                waiting.discard(rank)
    final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return ParallelResult(
        history=tuple(history),
        final_params=final,
        model_bytes=size,
        wall_seconds=time.perf_counter() - started,
    )


def async_worker(spec: ParallelSpec, dataset: DatasetLike, model_fn: ModelFn, rank: int) -> None:
    """Rank ``rank`` ≥ 1 of the SSP run: pull, compute a gradient on its shard, push, repeat."""
    model = build_model(spec, model_fn)
    model.train()
    params = list(model.parameters())
    K, B, n = spec.workers, spec.batch_size, len(dataset.train.y)
    shard = epoch_permutation(n, spec.seed, 0)[rank - 1 :: K]
    stream = BatchStream(len(shard), spec.seed + rank)
    buf = torch.zeros(sum(p.numel() for p in params))
    hdr = torch.zeros(3, dtype=torch.float64)
    while True:
        dist.recv(hdr, src=0, tag=_TAG_HDR_DOWN)
        if hdr[1] > 0:
            return
        dist.recv(buf, src=0, tag=_TAG_PARAMS)
        t0 = time.perf_counter()
        _unflat_into(buf, params)
        model.zero_grad(set_to_none=True)
        idx = shard[stream.next(min(B, len(shard)))]
        loss = F.cross_entropy(model(dataset.train.x[idx]), dataset.train.y[idx])
        loss.backward()  # type: ignore[no-untyped-call]
        grads = _flat(_grads_of(model))
        elapsed = time.perf_counter() - t0
        up = torch.tensor([hdr[0].item(), float(loss.detach()), elapsed], dtype=torch.float64)
        dist.send(up, 0, tag=_TAG_HDR_UP)
        dist.send(grads, 0, tag=_TAG_GRAD)
