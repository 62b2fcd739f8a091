"""Sample-level DP-SGD on a client (Abadi et al. 2016, "Deep Learning with Differential
Privacy"), with Opacus's per-sample gradients and clipping.

Each local step draws a Poisson batch (every local example with probability ``q = B/n``),
computes per-sample gradients with Opacus's ``GradSampleModule`` (its ``DPLSTM`` and the other
layers Opacus supports), clips each to L2 norm ``max_grad_norm`` and sums them with Opacus's
``DPOptimizer``, then adds ``N(0, (z·max_grad_norm)² I)`` and divides by the expected batch size
``B`` before the SGD step:

    g̃ = (Σ_{j ∈ batch} clip(∇ℓ_j, C) + N(0, z²C² I)) / B.

The noise comes from fedkit's noise sources (as :mod:`fedkit.privacy.noise` does), not Opacus's
generator: ``"seeded"`` draws from the client's training stream (reproducible), ``"os"`` and
``"auto"`` from the OS CSPRNG (a deployment server knows the run seed, so seeded noise would
not hide a client's examples from it).

The per-client guarantee (examples of one client, add/remove one example) of ``T`` steps is
that of ``T`` Poisson-sampled Gaussian mechanisms with rate ``q`` and multiplier ``z``
(:func:`client_epsilon`, dp-accounting's RDP accountant). Plans with DP-SGD are not vectorised
(the vectorised executor trains them client by client).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable, Iterator

import dp_accounting as dpa
import torch
from dp_accounting.rdp import RdpAccountant
from torch import Tensor, nn

from fedkit.csprng import os_normal

__all__ = ["DPSGD", "client_epsilon", "quiet_absl", "train_dpsgd"]


@contextlib.contextmanager
def quiet_absl() -> Iterator[None]:
    """dp-accounting logs a warning for each fractional RDP order whose series it drops (the
    order is then left out of the minimum, which only makes ε larger); keep those out of runs."""
    log = logging.getLogger("absl")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPSGD:
    """DP-SGD settings of local training (``[algorithm.local.dp]``).

    Attributes:
        noise_multiplier: ``z`` (>= 0; 0 is per-sample clipping only, ε = ∞).
        max_grad_norm: the per-sample clipping bound ``C`` (> 0).
        delta: the δ of the per-client ε (in (0, 1)).
        noise_source: ``"seeded"`` (the client's stream), ``"os"`` or ``"auto"`` (= ``"os"``).
    """

    noise_multiplier: float
    max_grad_norm: float
    delta: float = 1e-5
    noise_source: str = "auto"

    def __post_init__(self) -> None:
        if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            raise ValueError(f"noise_multiplier must be >= 0, got {self.noise_multiplier!r}")
        if not (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm!r}")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {self.delta!r}")
        if self.noise_source not in ("auto", "seeded", "os"):
            raise ValueError(
                f"noise_source must be one of auto, seeded, os; got {self.noise_source!r}"
            )


def client_epsilon(dp: DPSGD, *, sample_rate: float, steps: int) -> float:
    """Sample-level ε at ``dp.delta`` of ``steps`` DP-SGD steps with Poisson rate ``q``."""
    if steps == 0:
        return 0.0
    if dp.noise_multiplier == 0:
        return math.inf
    acc = RdpAccountant()
    event = dpa.PoissonSampledDpEvent(sample_rate, dpa.GaussianDpEvent(dp.noise_multiplier))
    with quiet_absl():
        acc.compose(event, steps)
        return float(acc.get_epsilon(dp.delta))


def train_dpsgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    dp: DPSGD,
    *,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    generator: torch.Generator,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    steps: int,
    trainable: Callable[[str], bool] | None = None,
) -> tuple[int, float]:
    """``steps`` DP-SGD steps on ``(x, y)`` in place (see the module docstring), with
    expected batch size ``batch_size`` (0: all ``n`` examples) and ``torch.optim.SGD``'s
    ``lr``, ``momentum`` and ``weight_decay``.

    Returns:
        The examples processed and their mean training loss.
    """
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    n = int(y.shape[0])
    b = n if batch_size == 0 else min(batch_size, n)
    q = b / n
    frozen = [p for k, p in model.named_parameters() if trainable is not None and not trainable(k)]
    for p in frozen:
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    gsm = GradSampleModule(model)
    try:
        sgd = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        opt = DPOptimizer(
            sgd, noise_multiplier=0.0, max_grad_norm=dp.max_grad_norm, expected_batch_size=b
        )
        std = dp.noise_multiplier * dp.max_grad_norm
        losses: list[Tensor] = []
        sizes: list[int] = []
        gsm.train()
        for _ in range(steps):
            take = torch.rand(n, generator=generator, dtype=torch.float64) < q
            idx = torch.nonzero(take).flatten()
            opt.zero_grad(set_to_none=True)
            if idx.numel() > 0:
                loss = loss_fn(gsm(x[idx]), y[idx])
                losses.append(loss.detach())
                sizes.append(idx.numel())
                loss.backward()  # type: ignore[no-untyped-call]
            else:  # an empty Poisson batch still releases noise
                for p in params:
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)  # type: ignore[attr-defined]
            if opt.pre_step():  # Opacus: per-sample clip, sum, / B (its own noise is 0)
                for p in params:
                    if std > 0 and p.grad is not None:
                        z = (
                            torch.randn(p.shape, generator=generator, dtype=torch.float64)
                            if dp.noise_source == "seeded"
                            else os_normal(p.shape)
                        )
                        p.grad += (z * (std / b)).to(p.dtype)
                sgd.step()
    finally:
        gsm._close()
        for p in frozen:
            p.requires_grad_(True)
    seen = sum(sizes)
    mean = (
        float(torch.stack(losses).double() @ torch.tensor(sizes, dtype=torch.float64)) / seen
        if seen
        else math.nan
    )
    return seen, mean
