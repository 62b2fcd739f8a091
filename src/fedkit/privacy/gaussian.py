"""Gaussian noise on the sum of clipped updates: the server step of DP-FedAvg (McMahan et al.
2018, "Learning Differentially Private Recurrent Language Models", Algorithm 1).

With each update clipped to ``‖Δ_i‖ ≤ C`` (the :class:`~fedkit.privacy.clip.ClipNorm` stage
outside this one) and uniform weights, the server releases

    Δ̃ = (Σ_{i ∈ cohort} Δ_i + N(0, σ² I)) / k,     σ = z · C,

where ``z`` is the noise multiplier and ``k`` the *expected* cohort size ``qN``. This is the
paper's fixed-denominator estimator ``f̃_f``: the denominator does not depend on who took part,
so under Poisson sampling the number of reporting clients (which reveals membership) is never
divided by, and one client changes the numerator by at most ``C``. With fixed-size cohorts it
equals the plain mean whenever all ``k`` report; when some drop out it shrinks the step by
``reported/k`` (the paper's choice; the noise is still calibrated to the sum).

Distributed DP (``distributed = true``): each client adds ``N(0, σ²/k)`` to its clipped update
in ``prepare``, so the server only ever sees noised updates whose sum carries ``N(0, σ²)``
when all ``k`` report; the server tops the sum up with ``N(0, σ²·(k − m)/k)`` when only
``m < k`` reported, so the released sum always carries at least variance ``σ²`` and the same
accounting applies (against the server itself each update then carries only ``σ²/k``: that is
what secure aggregation hides: with ``secagg`` as this stage's inner, the server sees only the
masked updates and the noised sum).

Under adaptive clipping (:class:`~fedkit.privacy.adaptive_clip.AdaptiveClip` directly outside
this stage) the clip norm is the round's ``C_t`` (the aggregator state's ``clip_norm``, which
this stage reads from its context) and the round also releases a noised count; the update noise
is then ``σ = z_Δ · C_t`` with ``z_Δ = (z⁻² − (2σ_b)⁻²)^(−½)`` (``count_noise`` = ``σ_b``, set
by :func:`fedkit.privacy.chain.resolve`), so both releases together cost one Gaussian at ``z``.

The stage also holds the accounting settings of the mechanism it implements (``delta``,
``target_epsilon``, ``accountant``), read by :mod:`fedkit.privacy.accounting`: the guarantee
belongs to the mechanism, so it is configured and recorded with it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from fedkit.aggregate import AggContext, MeanAcc, Stage, WeightedMean
from fedkit.params import tree_flatten, tree_map, tree_unflatten
from fedkit.privacy.adaptive_clip import CLIP_NORM, update_noise_multiplier
from fedkit.privacy.noise import NoiseDraw, NoiseSource, check_source
from fedkit.privacy.secagg.stage import SecureSum

__all__ = ["Accountant", "GaussianNoise"]

Accountant = Literal["rdp", "pld"]


def _check_positive(name: str, v: float) -> None:
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a finite number > 0, got {v!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GaussianNoise(Stage):
    """DP-FedAvg's noised fixed-denominator mean (see the module docstring).

    Attributes:
        noise_multiplier: ``z`` (> 0); the noise std on the sum is ``z · clip_norm``.
        clip_norm: ``C``, the clipping bound of the ClipNorm stage directly outside this one
            (checked by :func:`fedkit.privacy.chain.check_chain`).
        expected_clients: ``k = qN``, the denominator; ``None`` until the runner sets it to the
            run's cohort size (a Python caller sets it).
        distributed: each client adds its share ``N(0, σ²/k)`` in ``prepare`` instead of the
            server adding ``N(0, σ²)`` in ``result``.
        noise_source: ``"seeded"``, ``"os"`` or ``"auto"`` (:mod:`fedkit.privacy.noise`).
        delta: the δ of the reported (ε, δ); ``None``: ``1 / N^1.1`` for ``N`` clients.
        target_epsilon: stop the run before the round whose release would exceed this ε.
        accountant: ``"rdp"`` (Rényi DP; Poisson or fixed-size cohorts) or ``"pld"`` (privacy
            loss distributions; Poisson sampling only), both from ``dp-accounting``.
        count_noise: ``σ_b`` of the adaptive clipping stage outside this one (``None``: fixed
            clipping); the update noise multiplier is then ``z_Δ`` (see the module docstring).
            Set by :func:`fedkit.privacy.chain.resolve`, checked by ``check_chain``.
        inner: must be a :class:`~fedkit.aggregate.WeightedMean`, whose sums this stage noises.
    """

    noise_multiplier: float
    clip_norm: float
    expected_clients: int | None = None
    distributed: bool = False
    noise_source: NoiseSource = "auto"
    delta: float | None = None
    target_epsilon: float | None = None
    accountant: Accountant = "rdp"
    count_noise: float | None = None

    def __post_init__(self) -> None:
        _check_positive("noise_multiplier", self.noise_multiplier)
        _check_positive("clip_norm", self.clip_norm)
        if self.expected_clients is not None and self.expected_clients < 1:
            raise ValueError(f"expected_clients must be >= 1, got {self.expected_clients!r}")
        check_source(self.noise_source)
        if self.delta is not None and not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {self.delta!r}")
        if self.target_epsilon is not None:
            _check_positive("target_epsilon", self.target_epsilon)
        if self.accountant not in ("rdp", "pld"):
            raise ValueError(f"accountant must be 'rdp' or 'pld', got {self.accountant!r}")
        if self.count_noise is not None:
            update_noise_multiplier(self.noise_multiplier, self.count_noise)  # σ_b > z/2
        if type(self.inner) is not WeightedMean and not isinstance(self.inner, SecureSum):
            raise ValueError(
                "inner of the gaussian noise stage must be the plain mean ('mean') or secure "
                "aggregation over it ('secagg'): the noise is added to its sum of clipped "
                f"updates; got {type(self.inner).__name__}"
            )

    @property
    def update_multiplier(self) -> float:
        """The noise multiplier of the update sum: ``z``, or ``z_Δ`` under adaptive clipping."""
        if self.count_noise is None:
            return self.noise_multiplier
        return update_noise_multiplier(self.noise_multiplier, self.count_noise)

    @property
    def std(self) -> float:
        """``σ = z · C``, the noise std on the sum with fixed clipping."""
        return self.noise_multiplier * self.clip_norm

    def round_std(self, ctx: AggContext) -> float:
        """This round's noise std on the sum: ``z_Δ · C_t`` when the aggregator state carries
        the adaptive clip norm ``C_t``, else :attr:`std`."""
        clip = dict(ctx.state).get(CLIP_NORM, self.clip_norm)
        return self.update_multiplier * clip

    def _k(self) -> int:
        if self.expected_clients is None:
            raise ValueError(
                "expected_clients is unset: give the expected cohort size k = qN (the "
                "experiment runner sets it from [run])"
            )
        return self.expected_clients

    def prepare(self, update: Any, weight: float, ctx: AggContext) -> Any:
        """Distributed DP: ``Δ_i + N(0, σ²/k)`` (its own draw per client); else unchanged."""
        if self.distributed:
            draw = NoiseDraw(self.noise_source, ctx)
            std = self.round_std(ctx) / math.sqrt(self._k())
            flat = tree_flatten(update)  # sorted paths: the same draw order everywhere
            noised = {p: t + draw.normal(t.shape, std).to(t.dtype) for p, t in flat.items()}
            update = tree_unflatten(update, noised)
        return self.inner.prepare(update, weight, ctx)

    def add(self, acc: Any, update: Any, weight: float) -> Any:
        """The inner sum, after checking the weight is 1 (DP-FedAvg weighs clients uniformly:
        an example-count weight would make one client's influence unbounded)."""
        if weight != 1.0:
            raise ValueError(
                f"the gaussian noise stage needs uniform client weights (1.0), got {weight}; "
                "set algorithm.weighting = 'uniform'"
            )
        return self.inner.add(acc, update, weight)

    def result(self, acc: MeanAcc[Any], ctx: AggContext) -> Any:
        """``(Σ Δ_i + N(0, σ²)) / k`` (see the module docstring), in float64 (under secure
        aggregation, of the sum it unmasks)."""
        if isinstance(self.inner, SecureSum):
            acc = self.inner.open(acc, ctx)  # type: ignore[arg-type]
        k = self._k()
        if self.distributed:
            missing = max(0, k - int(acc.count))
            std = self.round_std(ctx) * math.sqrt(missing / k)
        else:
            std = self.round_std(ctx)
        flat = tree_flatten(acc.total)
        if std > 0:
            draw = NoiseDraw(self.noise_source, ctx)
            flat = {p: t + draw.normal(t.shape, std) for p, t in flat.items()}
        noised = tree_unflatten(acc.total, flat)
        return tree_map(lambda t: t / k, noised)
