"""The vectorised executor: many clients' local SGD as one batched computation (``torch.func``).

The cohort's parameters are stacked along a leading client axis and every local step runs as
``vmap(grad_and_value(loss))`` over that axis with ``functional_call`` on the one resident model.
Clients of unequal size are padded and masked: each client's mini-batches are drawn exactly as
:func:`fedkit.local.train_local` draws them (same generator, same permutations, same truncation
by ``work_fraction``), padded to the batch size with zero-weight rows, and the masked mean loss
equals the client's own batch mean. Clients are sorted by step count so that at step ``s`` the
clients still training are a prefix of the stack and finished clients cost nothing.

The optimiser is ``torch.optim.SGD``'s rule (momentum, weight decay) applied to the stacked
tensors. Algorithms enter through a *linear gradient correction* ``g += a·(w - anchor) + b``,
which covers FedAvg and the FedOpt family (``a = b = 0``), FedProx (``a = μ``, anchor = the global
model; Li et al. 2020) and SCAFFOLD (``b = c - c_i``; Karimireddy et al. 2020); their client
updates are then formed exactly as their modules define them and added to the aggregator in
ascending client order, as the serial executor does. Other algorithms, and models with buffers
(BatchNorm statistics are updated in place, which ``vmap`` cannot batch), run client by client
through :meth:`SerialExecutor.run_client` — correct, not vectorised.

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

from fedkit.algorithm import Algorithm, RoundInfo
from fedkit.algorithms.fedavg import FedAvg, ModelDelta, ModelMessage, client_weight
from fedkit.algorithms.fedprox import FedProx
from fedkit.algorithms.scaffold import (
    Scaffold,
    ScaffoldClientState,
    ScaffoldMessage,
    ScaffoldUpdate,
)
from fedkit.data.store import ClientStore
from fedkit.evaluate import ClientEval
from fedkit.executor import ClientMetrics, RoundOutput
from fedkit.local import IGNORE_INDEX, LocalTraining, batch_indices
from fedkit.params import Params, tree_nbytes
from fedkit.rng import generator
from fedkit.sim.serial import Participation, SerialExecutor, full_participation


@dataclasses.dataclass
class _Plan:
    """What the vectorised loop needs to know about one algorithm."""

    local: LocalTraining
    mu: float
    kind: str  # "fedavg" | "scaffold"


def vectorizable(model: nn.Module) -> bool:
    """True when ``model`` has no buffers (nothing a forward pass would update in place)."""
    return not any(True for _ in model.buffers())


def _plan(algorithm: Any) -> _Plan | None:
    if isinstance(algorithm, Scaffold) and type(algorithm).client_update is Scaffold.client_update:
        return _Plan(local=algorithm.local, mu=0.0, kind="scaffold")
    if isinstance(algorithm, FedAvg) and type(algorithm).client_update is FedAvg.client_update:
        hook = type(algorithm).gradient_hook
        if hook is FedAvg.gradient_hook:
            return _Plan(local=algorithm.local, mu=0.0, kind="fedavg")
        if isinstance(algorithm, FedProx) and hook is FedProx.gradient_hook:
            return _Plan(local=algorithm.local, mu=algorithm.mu, kind="fedavg")
    return None


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
        plan = _plan(algorithm) if self._vectorizable else None
        agg = algorithm.aggregator()
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
            chunk = live[start : start + self.chunk_size]
            if plan is None:
                results = [
                    self._serial.run_client(algorithm, msg, cid, info, f) for cid, f in chunk
                ]
            else:
                results = self._run_chunk(algorithm, plan, msg, chunk, info)
            for update, weight, metrics in results:
                acc = agg.add(agg.zero(update) if acc is None else acc, update, weight)
                bytes_up += tree_nbytes(update)
                done.append(metrics)
        return RoundOutput(
            accumulator=acc,
            clients=tuple(done),
            dropped=tuple(dropped),
            bytes_down=tree_nbytes(msg) * len(cohort),
            bytes_up=bytes_up,
        )

    def _run_chunk(
        self,
        algorithm: Any,
        plan: _Plan,
        msg: ModelMessage | ScaffoldMessage,
        chunk: list[tuple[int, float]],
        info: RoundInfo,
    ) -> list[tuple[Any, float, ClientMetrics]]:
        t0 = time.perf_counter()
        cfg = plan.local
        datas = [self.store.data(cid) for cid, _ in chunk]
        sizes = [d.num_examples for d in datas]
        steps = [
            0 if n == 0 else max(1, int(cfg.planned_steps(n) * f))
            for n, (_, f) in zip(sizes, chunk, strict=True)
        ]
        for _, f in chunk:
            if not 0.0 < f <= 1.0:
                raise ValueError(f"work_fraction must be in (0, 1], got {f!r}")
        # Order the stack by steps (descending) so that active clients are always a prefix.
        order = sorted(range(len(chunk)), key=lambda i: (-steps[i], i))
        c = len(chunk)
        b = max(max(sizes) if cfg.batch_size == 0 else cfg.batch_size, 1)
        n_max = max(max(sizes), 1)
        x0 = datas[0].x_train
        xs = torch.zeros((c, n_max, *x0.shape[1:]), dtype=x0.dtype)
        ys = torch.zeros((c, n_max, *datas[0].y_train.shape[1:]), dtype=datas[0].y_train.dtype)
        max_steps = max(steps)
        idx = torch.zeros((c, max_steps, b), dtype=torch.int64)
        wts = torch.zeros(
            (c, max_steps, b), dtype=x0.dtype if x0.is_floating_point() else torch.float32
        )
        for pos, i in enumerate(order):
            cid, _ = chunk[i]
            n = sizes[i]
            if n == 0:
                continue
            xs[pos, :n] = datas[i].x_train
            ys[pos, :n] = datas[i].y_train
            batches = batch_indices(
                n, cfg.batch_size, generator(info.seed, info.round, cid, "client")
            )
            for s in range(steps[i]):
                bi = next(batches)
                idx[pos, s, : bi.numel()] = bi
                wts[pos, s, : bi.numel()] = 1.0
        active = [sum(1 for st in steps if st > s) for s in range(max_steps)]
        rows = torch.arange(c)[:, None]

        start = msg.params
        p = {
            k: start[k].detach().unsqueeze(0).repeat(c, *([1] * start[k].dim()))
            for k in self._names
        }
        buf = {k: torch.zeros_like(v) for k, v in p.items()} if cfg.momentum > 0 else None
        corr: dict[str, Tensor] | None = None
        c_i: list[Params] = []
        if plan.kind == "scaffold":
            assert isinstance(msg, ScaffoldMessage)
            for cid, _ in chunk:
                st = self.store.get_state(cid)
                c_i.append(
                    st.control
                    if st is not None
                    else {k: torch.zeros_like(v) for k, v in msg.control.items()}
                )
            corr = {
                k: torch.stack([msg.control[k] - c_i[i][k] for i in order]) for k in self._names
            }
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
                    g = grads[k]
                    if plan.mu > 0:
                        g = g.add(w - start[k], alpha=plan.mu)
                    if corr is not None:
                        g = g.add(corr[k][:k_s])
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
        out: list[tuple[Any, float, ClientMetrics] | None] = [None] * c
        agg = algorithm.aggregator()
        for pos, i in enumerate(order):
            cid, frac = chunk[i]
            n = sizes[i]
            trained = {k: p[k][pos] for k in self._names}
            delta = {k: trained.get(k, v) - v for k, v in start.items()}
            update: Any
            if plan.kind == "scaffold":
                assert isinstance(msg, ScaffoldMessage)
                ci = c_i[i]
                scale = 1.0 / (max(steps[i], 1) * cfg.lr)
                new_c = {
                    k: (ci[k] - msg.control[k] - scale * delta[k]) if k in trained else ci[k]
                    for k in ci
                }
                update = ScaffoldUpdate(
                    delta=delta, control_delta={k: new_c[k] - ci[k] for k in ci}
                )
                self.store.set_state(cid, ScaffoldClientState(control=new_c))
            else:
                update = ModelDelta(delta)
            weight = client_weight(algorithm.weighting, n)
            update = agg.prepare(update, weight)
            mean_loss = float(loss_sum[pos] / max(float(seen[pos]), 1.0)) if n else math.nan
            metrics = ClientMetrics(
                client_id=cid,
                num_examples=n,
                steps=steps[i],
                train_loss=mean_loss,
                work_fraction=frac,
                seconds=elapsed * steps[i] / total_steps,
            )
            out[i] = (update, weight, metrics)
        return [r for r in out if r is not None]

    def evaluate(self, params: Params, clients: Sequence[int]) -> list[ClientEval]:
        """Federated evaluation, client by client on the resident model."""
        return self._serial.evaluate(params, clients)

    def client_state_tensors(self) -> dict[str, Tensor]:
        """Every client's persistent state, flattened."""
        return self.store.state_tensors()

    def load_client_state_tensors(self, flat: dict[str, Tensor], template: Any) -> None:
        """Restore client states from a checkpoint."""
        self.store.load_state_tensors(flat, template)
