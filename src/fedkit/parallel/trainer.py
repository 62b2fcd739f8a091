"""The training loop of the synchronous family: sync SGD, (post-)Local SGD, SlowMo, DiLoCo,
adaptive H and adaptive batch size — one loop, run by every process over a ``Collective``.

One step (K workers, per-worker batch B, step t of the ``BatchStream``)::

    every worker k: g_k = ∇ loss(w_k; batch_k)
    synchronous step (sync, adaptive_batch, post_local_sgd before its warm-up ends):
        g ← mean_k g_k  (all-reduce);  w_k ← opt_k(w_k, g)          — one sync
    local step (local_sgd, post_local_sgd after warm-up, slowmo, diloco, adaptive_h):
        w_k ← opt_k(w_k, g_k); every H steps: w̄ = mean_k w_k (all-reduce), then
        w_k ← w̄ (Local SGD) or the outer optimiser's x (SlowMo, DiLoCo)  — one sync

The same function runs all K workers in one process (``ReplicaCollective``) or one worker per
gloo rank (``GlooCollective``), so the two modes execute identical arithmetic. With
``grad_compression`` (gloo mode, ``sync``/``adaptive_batch``) the gradient all-reduce is instead
PyTorch's DDP communication hook (:mod:`fedkit.parallel.grad_compress`), run inside the backward
pass, and each sync is accounted at the bytes the hook sent.

Model averages include floating-point buffers (BatchNorm statistics); synchronous steps average
gradients only, so such buffers stay per worker until the next model average. Evaluation uses
worker 0's model right after a synchronisation (the consensus model), on the main process only.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedkit.parallel.collective import Collective
from fedkit.parallel.comm import CommLedger, model_bytes
from fedkit.parallel.grad_compress import HookedModel
from fedkit.parallel.large_batch import LAMB, LARS
from fedkit.parallel.outer import DiLoCo, OuterOptimizer, SlowMo
from fedkit.parallel.result import EvalPoint, ParallelResult
from fedkit.parallel.schedule import BatchStream, adacomm_h, grown_batch, lr_at
from fedkit.parallel.spec import ParallelSpec


class SplitLike(Protocol):
    """A split with inputs ``x`` and integer labels ``y`` (``fedkit.data.datasets.Split``)."""

    @property
    def x(self) -> Tensor:
        """Inputs, first dimension = samples."""
        ...

    @property
    def y(self) -> Tensor:
        """int64 labels."""
        ...


class DatasetLike(Protocol):
    """A dataset with a train and a test split (``fedkit.data.datasets.Dataset``)."""

    @property
    def train(self) -> SplitLike:
        """Training split."""
        ...

    @property
    def test(self) -> SplitLike:
        """Test split."""
        ...


ModelFn = Callable[[], nn.Module]
Callback = Callable[[EvalPoint], None]


def build_model(spec: ParallelSpec, model_fn: ModelFn) -> nn.Module:
    """The initial model: ``model_fn()`` right after ``torch.manual_seed(spec.seed)``."""
    torch.manual_seed(spec.seed)
    return model_fn()


def build_optimizer(spec: ParallelSpec, model: nn.Module) -> torch.optim.Optimizer:
    """The inner optimiser named by ``spec.optimizer`` over ``model``'s parameters."""
    params = list(model.parameters())
    if spec.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=spec.lr,
            momentum=spec.inner_momentum,
            weight_decay=spec.weight_decay,
            nesterov=spec.nesterov,
        )
    if spec.optimizer == "lars":
        return LARS(
            params,
            lr=spec.lr,
            momentum=spec.inner_momentum,
            weight_decay=spec.weight_decay,
            trust_coefficient=spec.trust_coefficient,
        )
    if spec.optimizer == "lamb":
        return LAMB(
            params, lr=spec.lr, betas=(spec.inner_momentum, 0.999), weight_decay=spec.weight_decay
        )
    return torch.optim.AdamW(
        params, lr=spec.lr, betas=(spec.inner_momentum, 0.999), weight_decay=spec.weight_decay
    )


@torch.no_grad()
def evaluate(
    model: nn.Module, split: SplitLike, *, batch_size: int, max_samples: int = 0
) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy on a split (its first ``max_samples``; 0: all)."""
    n = len(split.y) if max_samples == 0 else min(max_samples, len(split.y))
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, n, batch_size):
        x = split.x[start : min(n, start + batch_size)]
        y = split.y[start : min(n, start + batch_size)]
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(dim=1) == y).sum())
    model.train(was_training)
    return loss_sum / max(n, 1), correct / max(n, 1)


def _sync_tensors(model: nn.Module) -> list[Tensor]:
    """What a model average moves: parameters and floating-point buffers (e.g. BN statistics)."""
    return [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]


def _hooked(spec: ParallelSpec, replicas: list[nn.Module]) -> HookedModel | None:
    """The gloo rank's replica behind PyTorch's DDP hook, when ``grad_compression`` asks."""
    if spec.grad_compression == "none":
        return None
    (model,) = replicas  # gloo mode: one worker per process (the spec checked the mode)
    return HookedModel(
        model,
        spec.grad_compression,
        rank=spec.powersgd_rank,
        start_iter=spec.powersgd_start_iter,
        seed=spec.seed,
    )


def _outer_for(spec: ParallelSpec) -> OuterOptimizer | None:
    if spec.method == "slowmo":
        return SlowMo(slow_lr=spec.slow_lr, slow_momentum=spec.slow_momentum)
    if spec.method == "diloco":
        return DiLoCo(outer_lr=spec.outer_lr, outer_momentum=spec.outer_momentum)
    return None


def warmup_steps_of(spec: ParallelSpec, n_train: int) -> int:
    """LR warm-up length in steps: ``lr_warmup_steps`` plus ``lr_warmup_epochs`` converted."""
    return spec.lr_warmup_steps + round(spec.lr_warmup_epochs * n_train / spec.global_batch)


def train_sync_family(
    spec: ParallelSpec,
    dataset: DatasetLike,
    model_fn: ModelFn,
    collective: Collective,
    *,
    callback: Callback | None = None,
) -> ParallelResult:
    """Run one synchronous-family method over ``collective``'s workers (see module docstring).

    Every process of a run calls this with the same arguments; only the main process's result
    carries the history (other ranks return the same final parameters and an empty history).
    """
    started = time.perf_counter()
    base = build_model(spec, model_fn)
    base.train()
    replicas = [copy.deepcopy(base) for _ in collective.local_ranks]
    opts = [build_optimizer(spec, m) for m in replicas]
    hooked = _hooked(spec, replicas)
    nets: list[nn.Module] = [hooked.module] if hooked is not None else list(replicas)
    K, n = spec.workers, len(dataset.train.y)
    if collective.workers != K:
        raise ValueError(f"spec.workers = {K} but the collective has {collective.workers} workers")
    x_train, y_train = dataset.train.x, dataset.train.y
    ledger = CommLedger(
        model_size=model_bytes(base), workers=K, topology=spec.topology, network=spec.network
    )
    stream = BatchStream(n, spec.seed)
    warmup = warmup_steps_of(spec, n)
    milestones = tuple(int(f * spec.sample_budget) for f in spec.lr_milestones)
    outer = _outer_for(spec)
    anchor = [p.detach().clone() for p in replicas[0].parameters()] if outer else []

    h = spec.local_steps
    step = samples = since_sync = 0
    loss_sum, loss_count = 0.0, 0
    compute = [0.0] * len(replicas)
    next_eval = spec.eval_every_samples
    next_adapt = spec.adapt_every_steps
    adapt_sum, adapt_count, loss_0 = 0.0, 0, 0.0
    history: list[EvalPoint] = []
    lr, batch = spec.lr, spec.batch_size

    def average(inner_lr: float) -> None:
        collective.mean_([_sync_tensors(m) for m in replicas])
        ledger.record_sync()
        if outer is not None:
            with torch.no_grad():
                averaged = [p.detach().clone() for p in replicas[0].parameters()]
                outer.step(anchor, averaged, inner_lr)
                for m in replicas:
                    for p, a in zip(m.parameters(), anchor, strict=True):
                        p.copy_(a)

    while samples < spec.sample_budget:
        absorbed = 0
        if spec.method == "adaptive_batch":
            batch, absorbed = grown_batch(
                samples,
                base_batch=spec.batch_size,
                max_batch=spec.max_batch_size,
                sample_milestones=milestones,
                decay=spec.lr_decay,
            )
        lr = lr_at(
            step,
            samples,
            base_lr=spec.lr,
            warmup_steps=warmup,
            schedule="step" if spec.method == "adaptive_batch" else spec.lr_schedule,
            sample_budget=spec.sample_budget,
            sample_milestones=milestones,
            decay=spec.lr_decay,
            decays_skipped=absorbed,
        )
        synchronous = spec.method in ("sync", "adaptive_batch") or (
            spec.method == "post_local_sgd" and step < spec.post_local_warmup_steps
        )
        global_idx = stream.next(K * batch)
        for i, rank in enumerate(collective.local_ranks):
            t0 = time.perf_counter()
            idx = global_idx[rank * batch : (rank + 1) * batch]
            opt = opts[i]
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(nets[i](x_train[idx]), y_train[idx])
            loss.backward()  # type: ignore[no-untyped-call]
            if not synchronous:
                opt.step()
            compute[i] += time.perf_counter() - t0
            value = float(loss.detach())
            loss_sum += value
            loss_count += 1
            adapt_sum += value
            adapt_count += 1
        if synchronous:
            if hooked is None:
                grads = [[p.grad for p in m.parameters() if p.grad is not None] for m in replicas]
                collective.mean_(grads)
                ledger.record_sync()
            else:  # the DDP hook all-reduced the compressed gradient during backward
                ledger.record_sync(hooked.step_bytes())
            for i, opt in enumerate(opts):
                t0 = time.perf_counter()
                opt.step()
                compute[i] += time.perf_counter() - t0
            synced = True
        else:
            since_sync += 1
            synced = since_sync >= h
            if synced:
                average(lr)
                since_sync = 0
        step += 1
        samples += K * batch

        if spec.method == "adaptive_h" and synced:
            if loss_0 == 0.0:
                loss_0 = collective.sum_scalar(adapt_sum) / collective.sum_scalar(adapt_count)
                adapt_sum, adapt_count = 0.0, 0
            elif step >= next_adapt:
                loss_now = collective.sum_scalar(adapt_sum) / collective.sum_scalar(adapt_count)
                h = adacomm_h(loss_now, loss_0, h0=spec.local_steps, h_min=spec.min_local_steps)
                adapt_sum, adapt_count = 0.0, 0
                next_adapt = step + spec.adapt_every_steps

        done = samples >= spec.sample_budget
        if (synced and samples >= next_eval) or done:
            if not synced:
                average(lr)
                since_sync = 0
            train_loss = collective.sum_scalar(loss_sum) / collective.sum_scalar(loss_count)
            compute_s = collective.max_scalar(max(compute))
            loss_sum, loss_count = 0.0, 0
            while next_eval <= samples:
                next_eval += spec.eval_every_samples
            if collective.is_main:
                test_loss, test_acc = evaluate(
                    replicas[0],
                    dataset.test,
                    batch_size=spec.eval_batch_size,
                    max_samples=spec.max_eval_samples,
                )
                point = EvalPoint(
                    step=step,
                    samples=samples,
                    epoch=samples / n,
                    train_loss=train_loss,
                    test_loss=test_loss,
                    test_accuracy=test_acc,
                    compute_seconds=compute_s,
                    comm_seconds=ledger.comm_seconds,
                    sim_seconds=compute_s + ledger.comm_seconds,
                    bytes_per_worker=ledger.bytes_per_worker,
                    bytes_up_per_worker=ledger.bytes_up_per_worker,
                    bytes_down_per_worker=ledger.bytes_down_per_worker,
                    server_bytes=ledger.server_bytes,
                    syncs=ledger.syncs,
                    local_steps=1 if synchronous else h,
                    batch_size=batch,
                    lr=lr,
                )
                history.append(point)
                if callback is not None:
                    callback(point)

    final = {k: v.detach().clone() for k, v in replicas[0].state_dict().items()}
    return ParallelResult(
        history=tuple(history),
        final_params=final,
        model_bytes=ledger.model_size,
        wall_seconds=time.perf_counter() - started,
    )
