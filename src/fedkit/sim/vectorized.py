"""The vectorised executor: many clients' local SGD as one batched computation (``torch.func``).

The cohort's parameters are stacked along a leading client axis and every local step runs as
``vmap(grad_and_value(loss))`` over that axis with ``functional_call`` on the one resident model.
Clients of unequal size are padded and masked: each client's mini-batches are drawn exactly as
:func:`fedkit.local.train_local` draws them (same generator, same permutations, same truncation
by ``work_fraction``), padded to the batch size with zero-weight rows, and the masked mean loss
equals the client's own batch mean. Clients are sorted by step count so that at step ``s`` the
clients still training are a prefix of the stack and finished clients cost nothing.

This module holds no algorithm code. Each client's :class:`~fedkit.algorithm.LocalPlan` (from
the algorithm's ``client_init``) says where training starts and how it is steered: the
optimiser is ``torch.optim.SGD``'s rule (momentum, weight decay) applied to the stacked tensors,
and the plan's linear gradient term ``g += μ (w - anchor) + offset`` is applied per client (it is
FedProx's proximal gradient, SCAFFOLD's correction, nothing for FedAvg); the algorithm's
``client_final`` then forms each update, which is prepared and added to the aggregator in
ascending client order, as the serial executor does. Plans with general hooks (not linear in
``w``), chunks whose plans differ in optimiser settings, and models with buffers (BatchNorm
statistics are updated in place, which ``vmap`` cannot batch) run client by client through the
core seam (:func:`fedkit.client.train_plan`) — correct, not vectorised.

Chunk size. Stacking C clients makes every step stream C copies of the weights (and their
gradients) through memory, while the serial loop keeps one copy in cache; with the small batches
of federated learning (B = 10) a CPU is then memory-bound. By default (``chunk_size=None``) the
chunk is sized so that the stacked parameters stay within ``cache_bytes`` (12 MiB: about 15 clients
of the 2NN, one client of the McMahan CNN) on a CPU, and 256 clients on an accelerator.
Measured (CPU seconds, benchmarks/sim_speed.py) on the shared 2-core CPU this was developed on:
the 2NN about 1.2× faster than serial at 15 clients per chunk (0.9× at 100); the CNN 0.8–0.85× of
serial at one client per chunk (0.6–0.75× at 20). On a GPU it batches many small clients into
large kernels.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap
from torch.nn import functional as F

from fedkit.aggregate import fold
from fedkit.algorithm import (
    Algorithm,
    ClientContext,
    ClientData,
    LocalOutcome,
    LocalPlan,
    RoundInfo,
)
from fedkit.client import PreparedUpdate, client_context, finish_client, train_plan
from fedkit.data.store import ClientStore
from fedkit.evaluate import ClientEval
from fedkit.executor import ClientMetrics, RoundOutput
from fedkit.local import IGNORE_INDEX, LocalStats, batch_indices
from fedkit.params import Params, tree_nbytes
from fedkit.sim.serial import Participation, SerialExecutor, full_participation


def vectorizable(model: nn.Module) -> bool:
    """True when ``model`` has no buffers (nothing a forward pass would update in place)."""
    return not any(True for _ in model.buffers())


@dataclasses.dataclass(frozen=True)
class _Client:
    """One client of a chunk: its context, its data and the plan its algorithm made."""

    ctx: ClientContext
    data: ClientData
    plan: LocalPlan[Any]


def _batchable(plans: Sequence[LocalPlan[Any]]) -> bool:
    """True when one stacked loop can run every plan: linear terms only, shared settings."""
    first = plans[0]
    return all(
        p.vectorizable
        and p.local == first.local
        and p.prox_mu == first.prox_mu
        and p.frozen == first.frozen
        and (p.offset is None) == (first.offset is None)
        for p in plans
    )


def _stack(trees: Sequence[Params], names: Sequence[str]) -> dict[str, Tensor]:
    """Stack per-client tensors along a leading client axis (no copy of a shared tensor)."""
    out: dict[str, Tensor] = {}
    for k in names:
        leaves = [t[k] for t in trees]
        first = leaves[0]
        out[k] = first.unsqueeze(0) if all(t is first for t in leaves) else torch.stack(leaves)
    return out


def _masked_loss(out: Tensor, y: Tensor, w: Tensor) -> Tensor:
    """``classification_loss`` of the rows with weight 1 (padding rows have weight 0)."""
    if out.dim() == 3:
        per = F.cross_entropy(
            out.reshape(-1, out.shape[-1]),
            y.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        )
        tok = (y.reshape(-1) != IGNORE_INDEX).to(per.dtype) * w.repeat_interleave(y.shape[1])
        return (per * tok).sum() / tok.sum().clamp_min(1.0)
    per = F.cross_entropy(out, y, ignore_index=IGNORE_INDEX, reduction="none")
    valid = (y != IGNORE_INDEX).to(per.dtype) * w
    return (per * valid).sum() / valid.sum().clamp_min(1.0)


class VectorizedExecutor:
    """Runs a cohort as stacked, vmapped local SGD (see module docstring).

    Args:
        store: the clients' data and state.
        model: the resident model (its architecture; parameters are loaded per round).
        participation: the system-heterogeneity hook.
        chunk_size: at most this many clients are stacked at once; ``None`` sizes it from
            ``cache_bytes`` (see the module docstring).
        cache_bytes: on a CPU, the budget for the stacked parameters of one chunk.
        eval_batch_size: batch size of federated evaluation.
    """

    def __init__(
        self,
        store: ClientStore,
        model: nn.Module,
        *,
        participation: Participation = full_participation,
        chunk_size: int | None = None,
        cache_bytes: int = 12 * 2**20,
        eval_batch_size: int = 1000,
    ) -> None:
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None (automatic), got {chunk_size}")
        if cache_bytes < 1:
            raise ValueError(f"cache_bytes must be >= 1, got {cache_bytes}")
        self.store = store
        self.model = model
        self.participation = participation
        if chunk_size is None:
            params = list(model.parameters())
            nbytes = sum(p.numel() * p.element_size() for p in params)
            on_cpu = all(p.device.type == "cpu" for p in params)
            chunk_size = max(1, min(256, cache_bytes // max(nbytes, 1))) if on_cpu else 256
        self.chunk_size = chunk_size
        self._serial = SerialExecutor(store, model, eval_batch_size=eval_batch_size)
        self._vectorizable = vectorizable(model)
        self._names = [k for k, _ in model.named_parameters()]

        def loss(p: dict[str, Tensor], x: Tensor, y: Tensor, w: Tensor) -> Tensor:
            return _masked_loss(functional_call(self.model, p, (x,)), y, w)

        self._step = vmap(grad_and_value(loss))

    @property
    def num_clients(self) -> int:
        """Population size."""
        return self.store.num_clients

    def execute(
        self,
        algorithm: Algorithm[Any, Any, Any, Any],
        msg: Any,
        cohort: Sequence[int],
        info: RoundInfo,
    ) -> RoundOutput:
        """Run ``cohort``; updates are added to the aggregator in ascending client order."""
        agg = algorithm.aggregator
        acc: Any = None
        done: list[ClientMetrics] = []
        dropped: list[int] = []
        bytes_up = 0
        live: list[tuple[int, float]] = []
        for cid in sorted(cohort):
            frac = self.participation(cid, info)
            if frac is None:
                dropped.append(cid)
            else:
                live.append((cid, frac))
        for start in range(0, len(live), self.chunk_size):
            chunk = [
                self._plan(algorithm, msg, cid, info, f)
                for cid, f in live[start : start + self.chunk_size]
            ]
            if self._vectorizable and _batchable([c.plan for c in chunk]):
                results = self._run_chunk(algorithm, msg, chunk, info)
            else:
                results = [self._run_one(algorithm, msg, c, info) for c in chunk]
            for c, r in zip(chunk, results, strict=True):
                if r is None:  # refused: a NaN or infinite update
                    dropped.append(c.ctx.client_id)
                    continue
                acc = fold(agg, acc, r.update, r.weight)
                bytes_up += tree_nbytes(r.update)
                done.append(r.metrics)
        return RoundOutput(
            accumulator=acc,
            clients=tuple(done),
            dropped=tuple(dropped),
            bytes_down=tree_nbytes(msg) * len(cohort),
            bytes_up=bytes_up,
        )

    def _plan(
        self,
        algorithm: Algorithm[Any, Any, Any, Any],
        msg: Any,
        cid: int,
        info: RoundInfo,
        frac: float,
    ) -> _Client:
        if not 0.0 < frac <= 1.0:
            raise ValueError(f"work_fraction must be in (0, 1], got {frac!r}")
        ctx = client_context(self.model, cid, info, frac)
        data = self.store.data(cid)
        plan = algorithm.client_init(ctx, msg, data, self.store.get_state(cid))
        return _Client(ctx=ctx, data=data if plan.data is None else plan.data, plan=plan)

    def _finish(
        self,
        algorithm: Algorithm[Any, Any, Any, Any],
        msg: Any,
        c: _Client,
        outcome: LocalOutcome,
        seconds: float,
    ) -> PreparedUpdate | None:
        """The client's update, prepared, and its new state stored; ``None`` when the update is
        refused (NaN or infinite values: the client keeps its previous state)."""
        res = algorithm.client_final(c.ctx, msg, c.plan, outcome)
        done = finish_client(
            algorithm, res, c.ctx.client_id, c.ctx.info, c.ctx.work_fraction, seconds
        )
        if done is None:
            return None
        self.store.set_state(c.ctx.client_id, res.client_state)
        return done

    def _run_one(
        self, algorithm: Algorithm[Any, Any, Any, Any], msg: Any, c: _Client, info: RoundInfo
    ) -> PreparedUpdate | None:
        """A client whose plan cannot join the stacked loop: the core seam, on its own."""
        t0 = time.perf_counter()
        outcome = train_plan(c.ctx, c.plan, c.data)
        return self._finish(algorithm, msg, c, outcome, time.perf_counter() - t0)

    def _run_chunk(
        self,
        algorithm: Algorithm[Any, Any, Any, Any],
        msg: Any,
        chunk: list[_Client],
        info: RoundInfo,
    ) -> list[PreparedUpdate | None]:
        t0 = time.perf_counter()
        plan0 = chunk[0].plan
        cfg = plan0.local
        mu = plan0.prox_mu
        frozen = plan0.frozen
        sizes = [c.data.num_examples for c in chunk]
        steps = [
            0 if n == 0 else max(1, int(cfg.planned_steps(n) * c.ctx.work_fraction))
            for n, c in zip(sizes, chunk, strict=True)
        ]
        # Order the stack by steps (descending) so that active clients are always a prefix.
        order = sorted(range(len(chunk)), key=lambda i: (-steps[i], i))
        c = len(chunk)
        b = max(max(sizes) if cfg.batch_size == 0 else cfg.batch_size, 1)
        n_max = max(max(sizes), 1)
        x0 = chunk[0].data.x_train
        y0 = chunk[0].data.y_train
        xs = torch.zeros((c, n_max, *x0.shape[1:]), dtype=x0.dtype)
        ys = torch.zeros((c, n_max, *y0.shape[1:]), dtype=y0.dtype)
        max_steps = max(steps)
        idx = torch.zeros((c, max_steps, b), dtype=torch.int64)
        wts = torch.zeros(
            (c, max_steps, b), dtype=x0.dtype if x0.is_floating_point() else torch.float32
        )
        for pos, i in enumerate(order):
            n = sizes[i]
            if n == 0:
                continue
            xs[pos, :n] = chunk[i].data.x_train
            ys[pos, :n] = chunk[i].data.y_train
            batches = batch_indices(n, cfg.batch_size, chunk[i].ctx.generator)
            for s in range(steps[i]):
                bi = next(batches)
                idx[pos, s, : bi.numel()] = bi
                wts[pos, s, : bi.numel()] = 1.0
        active = [sum(1 for st in steps if st > s) for s in range(max_steps)]
        rows = torch.arange(c)[:, None]

        plans = [chunk[i].plan for i in order]
        start = _stack([pl.start for pl in plans], self._names)
        p = {k: v.detach().expand(c, *v.shape[1:]).clone() for k, v in start.items()}
        anchor = (
            _stack([pl.start if pl.anchor is None else pl.anchor for pl in plans], self._names)
            if mu > 0
            else None
        )
        offset = (
            _stack([pl.offset for pl in plans if pl.offset is not None], self._names)
            if plan0.offset is not None
            else None
        )
        buf = {k: torch.zeros_like(v) for k, v in p.items()} if cfg.momentum > 0 else None
        loss_sum = torch.zeros(c, dtype=torch.float64)
        seen = torch.zeros(c, dtype=torch.float64)
        with torch.no_grad():
            for s in range(max_steps):
                k_s = active[s]
                if k_s == 0:
                    break
                bidx = idx[:k_s, s]
                bw = wts[:k_s, s]
                xb = xs[rows[:k_s], bidx]
                yb = ys[rows[:k_s], bidx]
                view = {k: v[:k_s] for k, v in p.items()}
                grads, losses = self._step(view, xb, yb, bw)
                cnt = bw.sum(1).double()
                loss_sum[:k_s] += losses.detach().double() * cnt
                seen[:k_s] += cnt
                for k, w in view.items():
                    if k in frozen:
                        continue
                    g = grads[k]
                    if anchor is not None:
                        g = g.add(w - anchor[k][:k_s], alpha=mu)
                    if offset is not None:
                        g = g.add(offset[k][:k_s])
                    if cfg.weight_decay > 0:
                        g = g.add(w, alpha=cfg.weight_decay)
                    if buf is not None:
                        mb = buf[k][:k_s]
                        if s == 0:
                            mb.copy_(g)
                        else:
                            mb.mul_(cfg.momentum).add_(g)
                        g = mb
                    w.sub_(g, alpha=cfg.lr)
        elapsed = time.perf_counter() - t0
        total_steps = max(sum(steps), 1)
        out: list[PreparedUpdate | None] = [None] * c
        for pos, i in enumerate(order):
            n = sizes[i]
            # copies, as LocalOutcome promises: a kept row must not pin the whole stacked chunk
            trained = {**chunk[i].plan.start, **{k: p[k][pos].clone() for k in self._names}}
            mean_loss = float(loss_sum[pos] / max(float(seen[pos]), 1.0)) if n else math.nan
            stats = LocalStats(steps=steps[i], examples=int(seen[pos]), mean_loss=mean_loss)
            outcome = LocalOutcome(trained=trained, stats=stats, num_examples=n)
            seconds = elapsed * steps[i] / total_steps
            out[i] = self._finish(algorithm, msg, chunk[i], outcome, seconds)
        return out

    def evaluate(
        self,
        params: Params,
        clients: Sequence[int],
        algorithm: Algorithm[Any, Any, Any, Any] | None = None,
        info: RoundInfo | None = None,
    ) -> list[ClientEval]:
        """Federated evaluation, client by client on the resident model."""
        return self._serial.evaluate(params, clients, algorithm, info)

    def client_state_tensors(self) -> dict[str, Tensor]:
        """Every client's persistent state, flattened."""
        return self.store.state_tensors()

    def load_client_state_tensors(self, flat: dict[str, Tensor], template: Any) -> None:
        """Restore client states from a checkpoint."""
        self.store.load_state_tensors(flat, template)
