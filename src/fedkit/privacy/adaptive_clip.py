"""Adaptive clipping to a target quantile of the update norms (Andrew, Thakkar, McMahan &
Ramaswamy 2021, "Differentially Private Learning with Adaptive Clipping", Algorithm 1).

The clip norm ``C_t`` is the aggregator's state across rounds (:data:`fedkit.aggregate.AggState`,
key :data:`CLIP_NORM`), held by the run loop and seen by every step of round ``t``. Each client
clips its update to ``C_t`` (flat L2 clipping, as :class:`~fedkit.privacy.clip.ClipNorm`) and
also sends whether it was already inside, centred: ``b_i − ½`` with ``b_i = 1[‖Δ_i‖₂ ≤ C_t]``.
After the round the server estimates the fraction of unclipped clients and moves ``C`` towards
the ``γ``-quantile of the norms by the paper's geometric update

    b̄_t = (Σ_i (b_i − ½) + N(0, σ_b²)) / m + ½,        C_{t+1} = C_t · exp(−η_C (b̄_t − γ)),

where ``m`` is the expected number of clients (the DP noise stage's ``k``; without one, the
number that reported, and then with all ``m`` reporting ``b̄ = Σ b_i / m``). Centring makes the
sum's sensitivity ½ instead of 1 (one client moves it by ±½): this is what gives the paper's
privacy relation below. The server clamps every received ``b_i − ½`` to ``[−½, ½]``, so a client
cannot move the estimate by more than that (robustness and sensitivity alike).

With a DP noise stage (:class:`~fedkit.privacy.gaussian.GaussianNoise`, total noise multiplier
``z``) the round releases two Gaussian sums: the updates', with multiplier ``z_Δ`` on the clip
norm, and the count's, with multiplier ``2σ_b`` on its sensitivity ½. Gaussian mechanisms compose
like one Gaussian in the joint space, ``z⁻² = z_Δ⁻² + (2σ_b)⁻²`` (Andrew et al. 2021, Theorem 1;
the same holds for replace-one neighbours, where both sensitivities double), so the update noise
is raised to

    z_Δ = (z⁻² − (2σ_b)⁻²)^(−½)        (requires σ_b > z/2; the paper uses σ_b = m/20)

(:func:`update_noise_multiplier`) and the accountant (:mod:`fedkit.privacy.accounting`) counts a
single sampled Gaussian at ``z`` per round. The count noise comes from the same source as the
update noise (seeded in simulation, the OS CSPRNG in deployment), from a stream of its own.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor

from fedkit.aggregate import (
    AggContext,
    AggState,
    Collective,
    Stage,
    combine_states,
    init_state,
    next_state,
    state_value,
)
from fedkit.privacy.clip import clip_update
from fedkit.privacy.noise import NoiseDraw, NoiseSource, check_source

__all__ = [
    "CLIP_NORM",
    "AdaptiveAcc",
    "AdaptiveClip",
    "ClippedUpdate",
    "next_clip_norm",
    "update_noise_multiplier",
]

CLIP_NORM = "clip_norm"
"""The aggregator-state key of the current clip norm ``C_t``."""
COUNT_STREAM = "dp-count-noise"
"""The seeded stream of the count noise (the update noise uses ``"dp-noise"``)."""


def update_noise_multiplier(z: float, count_noise: float) -> float:
    """``z_Δ = (z⁻² − (2σ_b)⁻²)^(−½)``: the update noise multiplier that, together with count
    noise ``σ_b``, costs exactly what one Gaussian release at ``z`` costs (see the module
    docstring); ``z`` itself when ``σ_b = 0`` (no count is released privately).

    Raises:
        ValueError: ``σ_b ≤ z/2`` (the count alone would cost more than the whole budget).
    """
    if count_noise == 0.0:
        return z
    if not 2.0 * count_noise > z:
        raise ValueError(
            f"count_noise = {count_noise} is too small for noise_multiplier = {z}: adaptive "
            f"clipping under DP needs count_noise > noise_multiplier / 2 = {z / 2} (Andrew et "
            "al. use count_noise = expected clients / 20); raise it or lower noise_multiplier"
        )
    return float((z**-2 - (2.0 * count_noise) ** -2) ** -0.5)


def next_clip_norm(
    clip_norm: float, unclipped_sum: float, noise: float, m: int, quantile: float, lr: float
) -> float:
    """``C · exp(−η (b̄ − γ))`` with ``b̄ = (Σ (b_i − ½) + noise) / m + ½`` (module docstring)."""
    fraction = (unclipped_sum + noise) / m + 0.5
    return clip_norm * math.exp(-lr * (fraction - quantile))


@dataclasses.dataclass
class ClippedUpdate:
    """A prepared update of :class:`AdaptiveClip`: the inner stage's prepared update of the
    clipped ``Δ_i``, and ``b_i − ½`` (float64 scalar, ``±½``)."""

    update: Any
    unclipped: Tensor


@dataclasses.dataclass
class AdaptiveAcc:
    """Accumulator of :class:`AdaptiveClip`: the inner one, ``Σ (b_i − ½)`` (float64, exact for
    halves) and the number of updates (int64); plain sums, so ranks reduce them by all-reduce."""

    inner: Any
    unclipped: Tensor
    count: Tensor


def _positive(name: str, v: float) -> None:
    if isinstance(v, bool) or not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a finite number > 0, got {v!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdaptiveClip(Stage):
    """Clip to the adaptive norm ``C_t`` and track the ``γ``-quantile (module docstring).

    Attributes:
        target_quantile: ``γ`` in [0, 1], the fraction of clients whose update should be left
            unclipped (the paper: 0.5).
        learning_rate: ``η_C`` > 0 of the geometric update (the paper: 0.2).
        initial_norm: ``C_0`` > 0 (the paper: 0.1).
        count_noise: ``σ_b`` ≥ 0, the std of the noise on ``Σ (b_i − ½)``; under DP it must
            exceed ``z/2`` (the paper: ``m/20``).
        expected_clients: ``m``, the denominator; ``None``: the number of clients that reported
            (the runner sets it to the cohort size when the chain has a DP noise stage).
        noise_source: of the count noise: ``"seeded"``, ``"os"`` or ``"auto"``
            (:mod:`fedkit.privacy.noise`).
        inner: the next stage (e.g. the Gaussian noise stage, or the mean).
    """

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    initial_norm: float = 0.1
    count_noise: float = 0.0
    expected_clients: int | None = None
    noise_source: NoiseSource = "auto"

    def __post_init__(self) -> None:
        q = self.target_quantile
        if isinstance(q, bool) or not (0.0 <= q <= 1.0):
            raise ValueError(f"target_quantile must be in [0, 1], got {q!r}")
        _positive("learning_rate", self.learning_rate)
        _positive("initial_norm", self.initial_norm)
        s = self.count_noise
        if isinstance(s, bool) or not (s >= 0.0 and math.isfinite(s)):
            raise ValueError(f"count_noise must be a finite number >= 0, got {s!r}")
        if self.expected_clients is not None and self.expected_clients < 1:
            raise ValueError(f"expected_clients must be >= 1, got {self.expected_clients!r}")
        check_source(self.noise_source)

    # -- state across rounds ------------------------------------------------------------------

    def init_state(self) -> AggState:
        """``clip_norm = C_0``, then the inner stage's entries."""
        return combine_states([(CLIP_NORM, float(self.initial_norm))], init_state(self.inner))

    def next_state(self, acc: AdaptiveAcc, state: AggState, ctx: AggContext) -> AggState:
        """The inner stage's update, and ``C_{t+1}`` from the round's noised unclipped count."""
        state = next_state(self.inner, acc.inner, state, ctx)
        m = self.expected_clients if self.expected_clients is not None else int(acc.count)
        noise = 0.0
        if self.count_noise > 0.0:
            draw = NoiseDraw(self.noise_source, ctx, stream=COUNT_STREAM)
            noise = float(draw.normal((), self.count_noise))
        c = next_clip_norm(
            state_value(state, CLIP_NORM),
            float(acc.unclipped),
            noise,
            m,
            self.target_quantile,
            self.learning_rate,
        )
        return tuple((k, c if k == CLIP_NORM else v) for k, v in state)

    # -- the round ----------------------------------------------------------------------------

    def prepare(self, update: Any, weight: float, ctx: AggContext) -> ClippedUpdate:
        """``Δ · min(1, C_t / ‖Δ‖)`` through the inner ``prepare``, with ``b − ½``."""
        clipped, inside = clip_update(update, ctx.value(CLIP_NORM), ctx)
        b = torch.tensor(0.5 if inside else -0.5, dtype=torch.float64)
        return ClippedUpdate(update=self.inner.prepare(clipped, weight, ctx), unclipped=b)

    def zero(self, like: ClippedUpdate) -> AdaptiveAcc:
        """The inner zero and zero sums."""
        return AdaptiveAcc(
            inner=self.inner.zero(like.update),
            unclipped=torch.zeros((), dtype=torch.float64),
            count=torch.zeros((), dtype=torch.int64),
        )

    def add(self, acc: AdaptiveAcc, update: ClippedUpdate, weight: float) -> AdaptiveAcc:
        """The inner ``add``; ``b_i − ½`` clamped to [−½, ½] on the server (a client cannot move
        the count by more than its sensitivity)."""
        acc.inner = self.inner.add(acc.inner, update.update, weight)
        acc.unclipped = acc.unclipped + update.unclipped.double().clamp(-0.5, 0.5).reshape(())
        acc.count = acc.count + 1
        return acc

    def merge(self, a: AdaptiveAcc, b: AdaptiveAcc) -> AdaptiveAcc:
        """The inner ``merge`` and the sums added."""
        return AdaptiveAcc(
            inner=self.inner.merge(a.inner, b.inner),
            unclipped=a.unclipped + b.unclipped,
            count=a.count + b.count,
        )

    def reduce(self, acc: AdaptiveAcc, comm: Collective) -> AdaptiveAcc:
        """The inner ``reduce``, then one all-reduce SUM of the two scalars."""
        inner = self.inner.reduce(acc.inner, comm)
        sums = comm.all_sum({"count": acc.count, "unclipped": acc.unclipped})
        return AdaptiveAcc(inner=inner, unclipped=sums["unclipped"], count=sums["count"])

    def result(self, acc: AdaptiveAcc, ctx: AggContext) -> Any:
        """The inner stage's result (the noise stage reads ``C_t`` from ``ctx.state``)."""
        return self.inner.result(acc.inner, ctx)
