"""LARS and LAMB: layer-wise adaptive large-batch optimisers (not in ``torch.optim``).

LARS — You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks" (2017).
For each parameter tensor (layer) w with gradient g, weight decay λ and trust coefficient η::

    trust = η · ‖w‖ / (‖g‖ + λ‖w‖ + ε)      (1 when ‖w‖ = 0 or ‖g‖ = 0)
    u     = trust · (g + λ w)
    v     ← m v + u ;   w ← w − lr · v

LAMB — You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes"
(ICLR 2020). Adam moments with bias correction, then a layer-wise trust ratio::

    m ← β1 m + (1 − β1) g ;  v ← β2 v + (1 − β2) g²
    r = m̂ / (√v̂ + ε) + λ w
    trust = ‖w‖ / ‖r‖                       (1 when ‖w‖ = 0 or ‖r‖ = 0)
    w ← w − lr · trust · r

By default one-dimensional tensors (biases, norm scales) are neither decayed nor adapted
(``exclude_1d``), as in the papers' reference setups. The trust ratios are exposed as plain
functions so tests can check them by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

import torch
from torch import Tensor


def lars_trust_ratio(
    w: Tensor, g: Tensor, *, eta: float, weight_decay: float, eps: float
) -> Tensor:
    """LARS local-LR factor η‖w‖ / (‖g‖ + λ‖w‖ + ε), or 1 when either norm is zero."""
    w_norm = torch.linalg.vector_norm(w)
    g_norm = torch.linalg.vector_norm(g)
    ratio = eta * w_norm / (g_norm + weight_decay * w_norm + eps)
    one = torch.ones_like(ratio)
    return torch.where((w_norm > 0) & (g_norm > 0), ratio, one)


def lamb_trust_ratio(w: Tensor, r: Tensor) -> Tensor:
    """LAMB trust ratio ‖w‖ / ‖r‖ of weights and the Adam update, or 1 when either norm is 0."""
    w_norm = torch.linalg.vector_norm(w)
    r_norm = torch.linalg.vector_norm(r)
    ratio = w_norm / r_norm
    one = torch.ones_like(ratio)
    return torch.where((w_norm > 0) & (r_norm > 0), ratio, one)


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling on top of heavy-ball SGD (see module docstring)."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
        exclude_1d: bool = True,
    ) -> None:
        """Create the optimiser.

        Args:
            params: parameters or parameter groups.
            lr: global learning rate (scaled per layer by the trust ratio).
            momentum: heavy-ball momentum m.
            weight_decay: L2 weight decay λ, added to the gradient before scaling.
            trust_coefficient: η.
            eps: ε in the trust ratio's denominator.
            exclude_1d: leave 1-D tensors (biases, norm scales) unadapted and undecayed.
        """
        if lr <= 0:
            raise ValueError(f"LARS lr = {lr!r} is invalid; allowed: > 0")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "eps": eps,
            "exclude_1d": exclude_1d,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Apply one LARS update to every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not (group["exclude_1d"] and p.ndim <= 1):
                    wd = group["weight_decay"]
                    trust = lars_trust_ratio(
                        p, g, eta=group["trust_coefficient"], weight_decay=wd, eps=group["eps"]
                    )
                    g = (g + wd * p if wd else g) * trust
                state = self.state[p]
                if group["momentum"]:
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = g.clone()
                    else:
                        buf.mul_(group["momentum"]).add_(g)
                    g = buf
                p.add_(g, alpha=-group["lr"])
        return loss


class LAMB(torch.optim.Optimizer):
    """Layer-wise Adaptive Moments for Batch training (see module docstring)."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        exclude_1d: bool = True,
    ) -> None:
        """Create the optimiser.

        Args:
            params: parameters or parameter groups.
            lr: global learning rate (scaled per layer by the trust ratio).
            betas: Adam moment coefficients (β1, β2).
            eps: ε added to √v̂.
            weight_decay: decoupled weight decay λ (added to the Adam direction).
            exclude_1d: leave 1-D tensors unadapted (trust ratio 1) and undecayed.
        """
        if lr <= 0:
            raise ValueError(f"LAMB lr = {lr!r} is invalid; allowed: > 0")
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "exclude_1d": exclude_1d,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Apply one LAMB update to every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = cast(tuple[float, float], group["betas"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                m_hat = m / (1 - beta1 ** state["step"])
                v_hat = v / (1 - beta2 ** state["step"])
                r = m_hat / (v_hat.sqrt() + group["eps"])
                if group["exclude_1d"] and p.ndim <= 1:
                    p.add_(r, alpha=-group["lr"])
                    continue
                if group["weight_decay"]:
                    r.add_(p, alpha=group["weight_decay"])
                trust = lamb_trust_ratio(p, r)
                p.add_(r * trust, alpha=-group["lr"])
        return loss
