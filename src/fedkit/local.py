"""The one local-training helper every algorithm uses.

Mini-batch SGD (with optional momentum and weight decay, as ``torch.optim.SGD`` defines them) for a
number of epochs or a fixed number of steps, over data held in memory. Algorithms change local
training only through two hooks, never by copying this loop:

* ``loss_hook(model) -> Tensor``: a term added to the batch loss (FedProx's proximal term);
* ``grad_hook(model) -> None``: edits ``.grad`` in place before the step (SCAFFOLD's correction).

Batch order comes from the generator passed in (derived from ``(seed, round, client_id)``), so a
client's training is reproducible wherever it runs. ``work_fraction < 1`` truncates the planned
steps (partial work of a straggler, as in FedProx's systems-heterogeneity experiments).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fedkit.dpsgd import DPSGD, train_dpsgd

LossHook = Callable[[nn.Module], Tensor]
GradHook = Callable[[nn.Module], None]
LossFn = Callable[[Tensor, Tensor], Tensor]

IGNORE_INDEX = -100
"""Targets equal to this are ignored by the loss and by accuracy (padding in text tasks)."""


def classification_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy; sequence outputs ``(N, T, V)`` are flattened over positions."""
    if logits.dim() == 3:
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
        )
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)


MAX_LOCAL_STEPS = 10**6
"""Most local epochs or steps a client may be asked for (a typo such as 10**12 is refused)."""

MAX_BATCH_SIZE = 2**24
"""Largest mini-batch size (0 still means the full local dataset)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class LocalTraining:
    """Client optimiser settings.

    Attributes:
        lr: client learning rate (> 0).
        epochs: passes over the local data (>= 1); ignored when ``steps`` is set.
        steps: a fixed number of mini-batch steps instead of epochs.
        batch_size: mini-batch size; ``0`` means the full local dataset (one batch per epoch).
        momentum: heavy-ball momentum in [0, 1).
        weight_decay: L2 coefficient (>= 0), added to the gradient as ``torch.optim.SGD`` does.
        dp: sample-level DP-SGD (per-sample clipping and noise, :mod:`fedkit.dpsgd`);
            ``None``: plain SGD.
    """

    lr: float = 0.1
    epochs: int = 1
    steps: int | None = None
    batch_size: int = 10
    momentum: float = 0.0
    weight_decay: float = 0.0
    dp: DPSGD | None = None

    def __post_init__(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not 1 <= self.epochs <= MAX_LOCAL_STEPS:
            raise ValueError(f"local_epochs must be in [1, {MAX_LOCAL_STEPS}], got {self.epochs!r}")
        if self.steps is not None and not 1 <= self.steps <= MAX_LOCAL_STEPS:
            raise ValueError(
                f"local_steps must be in [1, {MAX_LOCAL_STEPS}] or unset, got {self.steps!r}"
            )
        if not 0 <= self.batch_size <= MAX_BATCH_SIZE:
            raise ValueError(
                f"batch_size must be in [1, {MAX_BATCH_SIZE}], or 0 for full batch; "
                f"got {self.batch_size!r}"
            )
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")

    def planned_steps(self, num_examples: int) -> int:
        """How many steps a full unit of work is on ``num_examples`` samples."""
        if self.steps is not None:
            return self.steps
        b = num_examples if self.batch_size == 0 else self.batch_size
        return self.epochs * math.ceil(num_examples / max(b, 1))


@dataclasses.dataclass(frozen=True)
class LocalStats:
    """What one call of :func:`train_local` did."""

    steps: int
    examples: int
    mean_loss: float


def batch_indices(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless stream of mini-batch index tensors: a fresh permutation each epoch."""
    b = n if batch_size == 0 else batch_size
    while True:
        perm = torch.randperm(n, generator=generator)
        yield from torch.split(perm, b)


def train_local(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    cfg: LocalTraining,
    *,
    generator: torch.Generator,
    loss_fn: LossFn = classification_loss,
    loss_hook: LossHook | None = None,
    grad_hook: GradHook | None = None,
    work_fraction: float = 1.0,
    trainable: Callable[[str], bool] | None = None,
) -> LocalStats:
    """Train ``model`` in place on ``(x, y)``.

    Args:
        model: the resident model, already holding the starting parameters.
        x: local inputs; ``y``: local targets.
        cfg: optimiser settings.
        generator: the source of batch order.
        loss_fn: ``(outputs, targets) -> scalar``.
        loss_hook: optional extra loss term computed from the model.
        grad_hook: optional in-place gradient edit before each step.
        work_fraction: share of the planned steps to do, in (0, 1].
        trainable: predicate on parameter names; others are frozen (personal/shared layers).

    Returns:
        Steps taken, examples processed and the mean training loss.
    """
    n = int(y.shape[0])
    if n == 0:
        return LocalStats(steps=0, examples=0, mean_loss=float("nan"))
    if not 0.0 < work_fraction <= 1.0:
        raise ValueError(f"work_fraction must be in (0, 1], got {work_fraction!r}")
    steps = max(1, int(cfg.planned_steps(n) * work_fraction))
    if cfg.dp is not None:
        if loss_hook is not None or grad_hook is not None:
            raise ValueError("DP-SGD local training takes no loss or gradient hooks")
        seen, mean = train_dpsgd(
            model,
            x,
            y,
            cfg.dp,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            generator=generator,
            loss_fn=loss_fn,
            steps=steps,
            trainable=trainable,
        )
        return LocalStats(steps=steps, examples=seen, mean_loss=mean)
    named = [(k, p) for k, p in model.named_parameters() if trainable is None or trainable(k)]
    opt = torch.optim.SGD(
        [p for _, p in named],
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )
    model.train()
    batches = batch_indices(n, cfg.batch_size, generator)
    losses: list[Tensor] = []  # summed once at the end: no per-step bookkeeping ops
    sizes: list[int] = []
    for _ in range(steps):
        idx = next(batches)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x[idx]), y[idx])
        losses.append(loss.detach())
        sizes.append(idx.numel())
        if loss_hook is not None:
            loss = loss + loss_hook(model)
        loss.backward()  # type: ignore[no-untyped-call]
        if grad_hook is not None:
            grad_hook(model)
        opt.step()
    seen = sum(sizes)
    weighted = torch.stack(losses).double() @ torch.tensor(sizes, dtype=torch.float64)
    return LocalStats(steps=steps, examples=seen, mean_loss=float(weighted) / max(seen, 1))
