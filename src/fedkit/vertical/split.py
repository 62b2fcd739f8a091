"""Split learning over feature-partitioned parties (vertical FL).

Every party holds some columns of the same (aligned) samples and a *bottom* model over them;
the label party also holds the labels and the *top* model over the concatenated bottom outputs
(Vepakomma et al. 2018, "Split learning for health", the vertical configuration; Liu et al. 2022,
"Vertical Federated Learning: Concepts, Advances and Challenges", §3). One step on a mini-batch:

1. each feature party computes ``h_k = f_k(x_k)`` on the batch's rows and sends ``h_k``;
2. the label party computes ``ŷ = g([h_1, …, h_K])``, the loss, and ``∂L/∂h_k``, sends each
   party its gradient, and steps its top model;
3. each party back-propagates ``∂L/∂h_k`` through ``f_k`` and steps it.

Each model is updated by its own ``torch.optim.SGD`` with the same rule, so the whole is exactly
the centralised :class:`SplitModel` (same bottoms and top, applied to the concatenated columns)
trained by fedkit's :func:`~fedkit.local.train_local` with the same batch order: the
equivalence the tests check. Only activations and their gradients leave a party; no raw
feature, no label and no model parameter does.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from fedkit.evaluate import EvalResult
from fedkit.local import LocalTraining, LossFn, batch_indices, classification_loss

__all__ = [
    "FeatureParty",
    "Party",
    "SplitModel",
    "evaluate_vertical",
    "mlp_layers",
    "row_bands",
    "split_mlp",
    "train_vertical",
]

TRAIN, TEST = "train", "test"


def row_bands(input_shape: Sequence[int], parties: int) -> list[Tensor]:
    """Column groups of a flattened image: ``parties`` horizontal bands of rows (image halves
    for two parties). Flattened index of pixel ``(c, r, q)`` is ``(c·H + r)·W + q``."""
    shape = tuple(input_shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3:
        raise ValueError(f"row bands need an image shape (C, H, W) or (H, W), got {input_shape}")
    c, h, w = shape
    if not 1 <= parties <= h:
        raise ValueError(f"parties must be in [1, {h}] (one band per party), got {parties}")
    idx = torch.arange(c * h * w).reshape(c, h, w)
    bounds = [round(h * k / parties) for k in range(parties + 1)]
    return [idx[:, bounds[k] : bounds[k + 1], :].reshape(-1) for k in range(parties)]


def mlp_layers(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers ``sizes[0] → … → sizes[-1]`` with ReLU between them."""
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])  # no activation after the last layer


class SplitModel(nn.Module):
    """Bottoms over column groups, concatenated, then the top: the centralised equivalent.

    Args:
        groups: each party's column indices into the flattened input.
        bottoms: one module per group.
        top: the module over the concatenated bottom outputs.
    """

    def __init__(self, groups: Sequence[Tensor], bottoms: Sequence[nn.Module], top: nn.Module):
        super().__init__()
        if len(groups) != len(bottoms):
            raise ValueError(f"{len(groups)} column groups for {len(bottoms)} bottom models")
        self.groups = [g.to(torch.int64) for g in groups]
        self.bottoms = nn.ModuleList(bottoms)
        self.top = top

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        h = [b(flat[:, g]) for b, g in zip(self.bottoms, self.groups, strict=True)]
        out: Tensor = self.top(torch.cat(h, dim=1))
        return out


def split_mlp(
    groups: Sequence[Tensor],
    num_classes: int,
    *,
    embedding: int = 64,
    bottom_hidden: Sequence[int] = (128,),
    top_hidden: Sequence[int] = (),
    seed: int = 0,
) -> SplitModel:
    """MLP bottoms (``len(g) → bottom_hidden → embedding``) and an MLP top
    (``K·embedding → top_hidden → num_classes``), initialised from ``seed``."""
    torch.manual_seed(seed)
    bottoms = [mlp_layers([len(g), *bottom_hidden, embedding]) for g in groups]
    top = mlp_layers([embedding * len(groups), *top_hidden, num_classes])
    return SplitModel(groups, bottoms, top)


class Party(Protocol):
    """A feature party as the label party sees it (in process, or over gRPC)."""

    def forward(self, split: str, step: int, rows: Tensor, train: bool) -> Tensor:
        """Activations ``h_k`` of the aligned ``rows`` of ``split``."""
        ...

    def backward(self, step: int, grad: Tensor) -> None:
        """Back-propagate ``∂L/∂h_k`` of ``step``'s batch and take one optimiser step."""
        ...


class FeatureParty:
    """A party's bottom model and its columns of the aligned samples, with its own optimiser.

    Args:
        bottom: the bottom model (trained in place).
        data: ``{split: features}`` with rows in the agreed (PSI) order.
        local: optimiser settings (lr, momentum, weight decay) shared by all parties.
    """

    def __init__(self, bottom: nn.Module, data: dict[str, Tensor], local: LocalTraining) -> None:
        self.bottom = bottom
        self.data = data
        self._opt = torch.optim.SGD(
            bottom.parameters(),
            lr=local.lr,
            momentum=local.momentum,
            weight_decay=local.weight_decay,
        )
        self._pending: tuple[int, Tensor] | None = None

    def rows(self, split: str) -> int:
        """Aligned samples held for ``split``."""
        return int(self.data[split].shape[0])

    def forward(self, split: str, step: int, rows: Tensor, train: bool) -> Tensor:
        x = self.data.get(split)
        if x is None:
            raise ValueError(f"no aligned data for split {split!r}")
        if rows.dim() != 1 or rows.numel() == 0 or int(rows.min()) < 0 or int(rows.max()) >= len(x):
            raise ValueError(f"batch rows must be a non-empty 1-D index into {len(x)} samples")
        if not train:
            self.bottom.eval()
            with torch.no_grad():
                out: Tensor = self.bottom(x[rows])
            return out
        self.bottom.train()
        self._opt.zero_grad(set_to_none=True)
        h: Tensor = self.bottom(x[rows])
        self._pending = (step, h)
        return h.detach()

    def pending_shape(self, step: int) -> tuple[int, ...]:
        """The shape of ``step``'s activations awaiting their gradient."""
        if self._pending is None or self._pending[0] != step:
            raise ValueError(f"a gradient for step {step} without its forward pass")
        return tuple(self._pending[1].shape)

    def backward(self, step: int, grad: Tensor) -> None:
        if self._pending is None or self._pending[0] != step:
            raise ValueError(f"a gradient for step {step} without its forward pass")
        h = self._pending[1]
        if grad.shape != h.shape or grad.dtype != h.dtype or not bool(torch.isfinite(grad).all()):
            raise ValueError(
                f"gradient of shape {tuple(grad.shape)} for activations {tuple(h.shape)}"
            )
        h.backward(grad)  # type: ignore[no-untyped-call]
        self._opt.step()
        self._pending = None


@dataclasses.dataclass(frozen=True)
class VerticalStats:
    """What :func:`train_vertical` did.

    Attributes:
        steps: optimiser steps.
        mean_loss: mean training loss over the steps.
        bytes_per_party: for each party, the bytes of its activations plus their gradients.
    """

    steps: int
    mean_loss: float
    bytes_per_party: tuple[int, ...]


def train_vertical(
    parties: Sequence[Party],
    top: nn.Module,
    y: Tensor,
    local: LocalTraining,
    *,
    generator: torch.Generator,
    loss_fn: LossFn = classification_loss,
    first_step: int = 0,
) -> VerticalStats:
    """The label party's loop: ``local.planned_steps(n)`` steps of split learning.

    Batch order comes from :func:`fedkit.local.batch_indices` with ``generator``, as in
    :func:`~fedkit.local.train_local`, so the centralised :class:`SplitModel` trained there
    with the same generator is the same computation.
    """
    n = int(y.shape[0])
    if n == 0:
        raise ValueError("no aligned training samples (the PSI intersection is empty)")
    opt = torch.optim.SGD(
        top.parameters(), lr=local.lr, momentum=local.momentum, weight_decay=local.weight_decay
    )
    top.train()
    batches = batch_indices(n, local.batch_size, generator)
    steps = local.planned_steps(n)
    losses: list[float] = []
    sent = [0] * len(parties)
    for s in range(first_step, first_step + steps):
        idx = next(batches)
        hs = [p.forward(TRAIN, s, idx, True).requires_grad_() for p in parties]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(top(torch.cat(hs, dim=1)), y[idx])
        loss.backward()  # type: ignore[no-untyped-call]
        for k, (p, h) in enumerate(zip(parties, hs, strict=True)):
            assert h.grad is not None
            p.backward(s, h.grad)
            sent[k] += (h.numel() + h.grad.numel()) * h.element_size()
        opt.step()
        losses.append(float(loss.detach()))
    return VerticalStats(
        steps=steps,
        mean_loss=sum(losses) / len(losses),
        bytes_per_party=tuple(sent),
    )


@torch.no_grad()
def evaluate_vertical(
    parties: Sequence[Party], top: nn.Module, y: Tensor, *, batch_size: int = 1000
) -> EvalResult:
    """Loss and accuracy of the split model on the aligned test rows."""
    top.eval()
    n = int(y.shape[0])
    loss_sum, correct = 0.0, 0
    for start in range(0, n, batch_size):
        rows = torch.arange(start, min(n, start + batch_size))
        out = top(torch.cat([p.forward(TEST, 0, rows, False) for p in parties], dim=1))
        loss_sum += float(classification_loss(out, y[rows])) * rows.numel()
        correct += int((out.argmax(1) == y[rows]).sum())
    return EvalResult(
        loss=loss_sum / n if n else math.nan,
        accuracy=correct / n if n else math.nan,
        num_examples=n,
    )
