"""Per-FedAvg: Fallah, Mokhtari and Ozdaglar 2020, "Personalized Federated Learning with
Theoretical Guarantees: A Model-Agnostic Meta-Learning Approach".

The global model is trained for the MAML objective ``F(w) = (1/n) Σ_i f_i(w - α ∇f_i(w))``: the
model that is good *after one local step*. Each local step of a client (Algorithm 1) draws
independent batches ``D, D', D''`` and takes, with outer step ``β`` (``local.lr``),

* first order (``variant = "fo"``): ``w ← w - β ∇f(w̃, D')`` with ``w̃ = w - α ∇f(w, D)``;
* Hessian-free (``variant = "hf"``): ``w ← w - β (∇f(w̃, D') - α d)``, where ``d`` approximates
  the Hessian-vector product ``∇²f(w, D'') ∇f(w̃, D')`` by the central difference
  ``[∇f(w + δ g, D'') - ∇f(w - δ g, D'')] / (2δ)`` with ``g = ∇f(w̃, D')``.

The loop is the one local-training helper: its batch gives ``∇f(w, D)``, and the plan's
``grad_hook`` replaces that gradient with the meta-gradient (``D'`` and ``D''`` come from the
client's own ``"meta"`` stream). The server averages ``Δ_i = y_i - w_t`` as FedAvg does. The
personal model is the received global model after one adaptation step of size ``α`` on a local
batch (the paper's evaluation), kept as the client's state.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from fedkit.algorithm import ClientContext, ClientData, LocalPlan
from fedkit.algorithms.fedavg import ModelMessage
from fedkit.algorithms.two_models import PersonalModel, TwoModels
from fedkit.local import GradHook, LocalTraining, LossFn, batch_indices, classification_loss
from fedkit.rng import generator

Variant = Literal["fo", "hf"]
VARIANTS = ("fo", "hf")
META_STREAM = "meta"
"""The name of the random stream of the extra batches ``D'`` and ``D''``."""

Batches = Iterator[tuple[Tensor, Tensor]]


def gradient_at(
    model: nn.Module, point: dict[str, Tensor], x: Tensor, y: Tensor, loss_fn: LossFn
) -> dict[str, Tensor]:
    """``∇f(point, (x, y))`` for the named parameters, the model's own weights untouched."""
    leaves = {k: v.detach().requires_grad_(True) for k, v in point.items()}
    loss = loss_fn(functional_call(model, leaves, (x,)), y)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return dict(zip(leaves, grads, strict=True))


def meta_hook(
    batches: Batches,
    *,
    alpha: float,
    variant: Variant,
    delta: float,
    loss_fn: LossFn = classification_loss,
) -> GradHook:
    """A gradient hook that turns ``∇f(w, D)`` (in ``.grad``) into Per-FedAvg's meta-gradient."""

    def hook(model: nn.Module) -> None:
        named = [(k, p) for k, p in model.named_parameters() if p.grad is not None]
        w = {k: p.detach() for k, p in named}
        adapted = {k: w[k] - alpha * p.grad for k, p in named if p.grad is not None}
        x1, y1 = next(batches)
        meta = gradient_at(model, adapted, x1, y1, loss_fn)
        if variant == "hf":
            x2, y2 = next(batches)
            plus = gradient_at(model, {k: w[k] + delta * meta[k] for k in w}, x2, y2, loss_fn)
            minus = gradient_at(model, {k: w[k] - delta * meta[k] for k in w}, x2, y2, loss_fn)
            meta = {k: meta[k] - alpha * (plus[k] - minus[k]) / (2 * delta) for k in w}
        for k, p in named:
            assert p.grad is not None
            p.grad.copy_(meta[k])

    return hook


def data_batches(data: ClientData, batch_size: int, gen: torch.Generator) -> Batches:
    """Endless mini-batches of the client's training data in ``gen``'s order."""
    for idx in batch_indices(data.num_examples, batch_size, gen):
        yield data.x_train[idx], data.y_train[idx]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PerFedAvg(TwoModels):
    """Per-FedAvg (see module docstring); ``local.lr`` is the outer step ``β``.

    Attributes:
        alpha: the inner (adaptation) step ``α`` (> 0).
        variant: ``"fo"`` (first order) or ``"hf"`` (Hessian-free).
        delta: the finite-difference step ``δ`` of the Hessian-free variant (> 0).
    """

    alpha: float = 0.01
    variant: Variant = "fo"
    delta: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("alpha", "delta"):
            value = getattr(self, key)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{key} must be a finite number > 0, got {value!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")

    @property
    def name(self) -> str:
        """Algorithm identifier."""
        return "perfedavg"

    def personal_plan(self, msg: ModelMessage, state: PersonalModel | None) -> LocalPlan[None]:
        """One step of size ``α`` from the global model on a local batch."""
        adapt = LocalTraining(lr=self.alpha, steps=1, batch_size=self.local.batch_size)
        return LocalPlan(start=msg.params, local=adapt)

    def global_plan(
        self, ctx: ClientContext, msg: ModelMessage, data: ClientData
    ) -> LocalPlan[Any]:
        """Local SGD from ``w_t`` with the meta-gradient in place of the batch gradient."""
        info = ctx.info
        gen = generator(info.seed, info.round, ctx.client_id, META_STREAM)
        batches = data_batches(data, self.local.batch_size, gen)
        hook = meta_hook(batches, alpha=self.alpha, variant=self.variant, delta=self.delta)
        return LocalPlan(start=msg.params, local=self.local, grad_hook=hook)


__all__ = ["PerFedAvg", "gradient_at", "meta_hook"]
