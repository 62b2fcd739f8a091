"""FedAwS: Yu, Rawat, Menon and Kumar 2020, "Federated Learning with Only Positive Labels".

Every client holds examples of a single class, so a softmax classifier trained by FedAvg learns
to put every input in the client's class: the class embeddings collapse. FedAwS (Algorithm 2)
trains a classifier with an explicit class-embedding matrix ``W`` (rows ``w_c``; see
:func:`fedkit.models.personal.embedding_mlp`, scores ``s · cos(g(x), w_c)``) by

* the client's *positive-only* loss, which pulls an example's features to its own class
  embedding: ``ℓ_pos(x, y) = (max(0, ν - cos(g(x), w_y)))²`` (the plan's loss in place of
  cross-entropy); the client sends ``Δ_i = y_i - x_t`` as in FedAvg;
* the server's *spreadout* step after FedAvg's average, which pushes the class embeddings apart:
  ``W ← W - η λ ∇_W reg_sp(W)`` with
  ``reg_sp(W) = Σ_c Σ_{c' ≠ c} (max(0, ν' - ‖ŵ_c - ŵ_{c'}‖))²`` on the unit embeddings
  ``ŵ_c = w_c / ‖w_c‖`` (the scores use only their directions).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor
from torch.nn import functional as F

from fedkit.algorithm import ClientContext, ClientData, LocalPlan, RoundInfo
from fedkit.algorithms.fedavg import FedAvg, FedOptState, ModelDelta, ModelMessage
from fedkit.models.personal import EMBEDDINGS


@dataclasses.dataclass(frozen=True)
class PositiveLoss:
    """``mean (max(0, ν - cos_y))²`` from cosine scores ``s · cos`` (``scale = s``)."""

    margin: float
    scale: float

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """The mean positive-only loss of a batch."""
        cos = outputs.gather(1, targets.unsqueeze(1)).squeeze(1) / self.scale
        return F.relu(self.margin - cos).pow(2).mean()


def spreadout(weights: Tensor, margin: float) -> Tensor:
    """``reg_sp(W) = Σ_{c ≠ c'} (max(0, ν' - ‖ŵ_c - ŵ_{c'}‖))²`` on the unit rows of ``W``."""
    unit = F.normalize(weights, dim=1)
    squared = (2.0 - 2.0 * unit @ unit.T).clamp_min(1e-12)  # ‖a - b‖² of unit vectors
    off = ~torch.eye(weights.shape[0], dtype=torch.bool, device=weights.device)
    return (F.relu(margin - squared.sqrt()).pow(2) * off).sum()


def spreadout_gradient(weights: Tensor, margin: float) -> Tensor:
    """``∇_W reg_sp(W)``."""
    w = weights.detach().double().requires_grad_(True)
    (grad,) = torch.autograd.grad(spreadout(w, margin), [w])
    return grad.to(weights.dtype)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedAwS(FedAvg):
    """FedAvg with the positive-only client loss and the server's spreadout step.

    Attributes:
        margin: ``ν``, the cosine an example should reach with its class embedding.
        scale: the model's score scale ``s`` (``embedding_mlp``'s ``scale``).
        spread_margin: ``ν'``, the distance of unit embeddings below which they are pushed apart.
        spread_weight: ``λ``, the weight of the spreadout regulariser (>= 0).
        spread_lr: ``η``, the server's step on the regulariser (> 0).
        embeddings: the state-dict name of the class-embedding matrix.
    """

    margin: float = 0.9
    scale: float = 10.0
    spread_margin: float = 1.2
    spread_weight: float = 1.0
    spread_lr: float = 0.1
    embeddings: str = EMBEDDINGS

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("scale", "spread_lr"):
            value = getattr(self, key)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{key} must be a finite number > 0, got {value!r}")
        for key in ("margin", "spread_margin", "spread_weight"):
            value = getattr(self, key)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{key} must be a finite number >= 0, got {value!r}")

    @property
    def name(self) -> str:
        """Algorithm identifier."""
        return "fedaws"

    def client_init(
        self, ctx: ClientContext, msg: ModelMessage, data: ClientData, state: None
    ) -> LocalPlan[None]:
        """Local SGD from the global model on the positive-only loss."""
        if self.embeddings not in msg.params:
            raise ValueError(f"fedaws: the model has no class-embedding entry {self.embeddings!r}")
        loss = PositiveLoss(margin=self.margin, scale=self.scale)
        return LocalPlan(start=msg.params, local=self.local, loss_fn=loss)

    def server_update(
        self, state: FedOptState, aggregate: ModelDelta, info: RoundInfo
    ) -> FedOptState:
        """FedAvg's step, then ``W ← W - η λ ∇reg_sp(W)`` on the class embeddings."""
        new = super().server_update(state, aggregate, info)
        w = new.params[self.embeddings]
        step = self.spread_lr * self.spread_weight
        spread = w - step * spreadout_gradient(w, self.spread_margin)
        return FedOptState(params={**new.params, self.embeddings: spread}, opt=new.opt)


__all__ = ["FedAwS", "PositiveLoss", "spreadout", "spreadout_gradient"]
