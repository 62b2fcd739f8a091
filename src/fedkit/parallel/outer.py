"""Outer optimisers on the pseudo-gradient of Local SGD: plain averaging, SlowMo and DiLoCo.

After H local steps the workers' models are averaged to x̄. With x the model all workers
started the round from, the pseudo-gradient is Δ = x − x̄. An outer optimiser maps (x, Δ) to
the next round's starting model:

* plain Local SGD (Stich 2019; Lin et al. 2020): ``x ← x̄`` (that is, ``x − Δ``);
* SlowMo (Wang, Tantia, Ballas & Rabbat, "SlowMo: Improving Communication-Efficient Distributed
  SGD with Slow Momentum", ICLR 2020), with fast LR γ, slow LR α, slow momentum β::

      u ← β u + Δ / γ ;   x ← x − α γ u

  (α = 1, β = 0 gives back plain averaging);
* DiLoCo (Douillard et al., "DiLoCo: Distributed Low-Communication Training of Language Models",
  2023): outer SGD with Nesterov momentum μ and outer LR η on Δ::

      v ← μ v + Δ ;   x ← x − η (Δ + μ v)

The inner optimisers' states (momentum buffers, Adam moments) stay local to each worker.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class OuterOptimizer(Protocol):
    """Update of the round's starting model from the averaged model."""

    def step(self, anchor: list[Tensor], averaged: list[Tensor], inner_lr: float) -> None:
        """Overwrite ``anchor`` (x) with the next round's starting model, given x̄ and γ."""
        ...


class SlowMo:
    """SlowMo outer update with slow LR α and slow momentum β."""

    def __init__(self, *, slow_lr: float, slow_momentum: float) -> None:
        """Create the optimiser with α = ``slow_lr`` and β = ``slow_momentum``."""
        self.alpha = slow_lr
        self.beta = slow_momentum
        self.u: list[Tensor] | None = None

    @torch.no_grad()
    def step(self, anchor: list[Tensor], averaged: list[Tensor], inner_lr: float) -> None:
        """``u ← β u + (x − x̄)/γ``, ``x ← x − α γ u``."""
        if self.u is None:
            self.u = [torch.zeros_like(a) for a in anchor]
        for x, xbar, u in zip(anchor, averaged, self.u, strict=True):
            u.mul_(self.beta).add_((x - xbar) / inner_lr)
            x.sub_(u, alpha=self.alpha * inner_lr)


class DiLoCo:
    """DiLoCo outer update: SGD with Nesterov momentum on the pseudo-gradient."""

    def __init__(self, *, outer_lr: float, outer_momentum: float) -> None:
        """Create the optimiser with η = ``outer_lr`` and μ = ``outer_momentum``."""
        self.lr = outer_lr
        self.mu = outer_momentum
        self.v: list[Tensor] | None = None

    @torch.no_grad()
    def step(self, anchor: list[Tensor], averaged: list[Tensor], inner_lr: float) -> None:
        """``v ← μ v + Δ``, ``x ← x − η (Δ + μ v)`` with Δ = x − x̄."""
        del inner_lr
        if self.v is None:
            self.v = [torch.zeros_like(a) for a in anchor]
        for x, xbar, v in zip(anchor, averaged, self.v, strict=True):
            delta = x - xbar
            v.mul_(self.mu).add_(delta)
            x.sub_(delta.add(v, alpha=self.mu), alpha=self.lr)
