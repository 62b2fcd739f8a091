"""Checks and settings of an aggregator chain that holds a DP noise stage.

DP-FedAvg's guarantee needs the chain ``clip(C) → gaussian(z, C) → mean`` with uniform client
weights: the noise is calibrated to the clipping bound, so a noise stage without a clip stage
directly outside it with the same bound, or a stage between them that changes the clipped
update, would release a sum whose sensitivity is not ``C``. :func:`check_chain` refuses such
chains with a ``ValueError`` that says what to change; :func:`resolve` fills in what the run
knows (the cohort size ``k`` and, in simulation, the seeded noise source).

Adaptive clipping (:class:`~fedkit.privacy.adaptive_clip.AdaptiveClip`, Andrew et al. 2021) may
take the clip stage's place: ``adaptive_clip(C_0, σ_b) → gaussian(z, C_0) → mean``. The noise
stage's ``clip_norm`` must then equal ``initial_norm`` (the noise follows ``C_t`` each round),
``count_noise`` must be > ``z/2`` (the update noise becomes ``z_Δ = (z⁻² − (2σ_b)⁻²)^(−½)`` so
that the two releases cost one Gaussian at ``z``), and distributed noise is refused (the
unclipped count would reach the server un-noised). :func:`resolve` copies ``σ_b`` into the noise
stage and sets the adaptive stage's ``expected_clients`` and noise source as the noise stage's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from fedkit.privacy.adaptive_clip import AdaptiveClip, update_noise_multiplier
from fedkit.privacy.clip import ClipNorm
from fedkit.privacy.gaussian import GaussianNoise
from fedkit.privacy.secagg.stage import SecureSum

__all__ = ["check_chain", "find_adaptive", "find_noise", "resolve"]

S = TypeVar("S")


def _stages(aggregator: Any) -> list[Any]:
    """The chain from the outermost stage inwards (following ``inner``)."""
    out = [aggregator]
    while dataclasses.is_dataclass(out[-1]) and hasattr(out[-1], "inner"):
        out.append(out[-1].inner)
    return out


def _find(aggregator: Any, kind: type[S]) -> S | None:
    """The chain's outermost stage of type ``kind``, or ``None``."""
    return next((s for s in _stages(aggregator) if isinstance(s, kind)), None)


def find_noise(aggregator: Any) -> GaussianNoise | None:
    """The chain's Gaussian noise stage, or ``None`` when it has none."""
    return _find(aggregator, GaussianNoise)


def find_adaptive(aggregator: Any) -> AdaptiveClip | None:
    """The chain's (outermost) adaptive clipping stage, or ``None``."""
    return _find(aggregator, AdaptiveClip)


def check_chain(aggregator: Any, *, weighting: str | None = None) -> GaussianNoise | None:
    """Validate a chain with a noise stage (see the module docstring); return that stage.

    Args:
        aggregator: the outermost stage.
        weighting: the algorithm's client weighting, when it has one (must be ``"uniform"``).

    Raises:
        ValueError: more than one noise stage; no clip stage directly outside the noise stage;
            a clip bound that differs from the noise stage's ``clip_norm``; a weighting other
            than uniform; with adaptive clipping, ``count_noise`` ≤ ``z/2``, a ``count_noise``
            of the noise stage that differs from the adaptive stage's, or distributed noise.
    """
    stages = _stages(aggregator)
    positions = [i for i, s in enumerate(stages) if isinstance(s, GaussianNoise)]
    if not positions:
        return None
    if len(positions) > 1:
        raise ValueError("the aggregator chain has more than one gaussian noise stage; keep one")
    i = positions[0]
    noise: GaussianNoise = stages[i]
    outer = stages[i - 1] if i > 0 else None
    if isinstance(outer, AdaptiveClip):
        _check_adaptive(outer, noise)
    elif not isinstance(outer, ClipNorm):
        raise ValueError(
            "the gaussian noise stage needs a clip stage directly outside it (name = 'clip' with "
            "max_norm = clip_norm, or 'adaptive_clip' with initial_norm = clip_norm, and the "
            "noise stage as its inner): the noise is calibrated to the clipping bound"
        )
    elif outer.max_norm != noise.clip_norm:
        raise ValueError(
            f"clip_norm of the gaussian noise stage ({noise.clip_norm}) must equal max_norm of "
            f"the clip stage outside it ({outer.max_norm})"
        )
    if weighting is not None and weighting != "uniform":
        raise ValueError(
            f"DP-FedAvg weighs clients uniformly; set algorithm.weighting = 'uniform' "
            f"(got {weighting!r})"
        )
    return noise


def _check_adaptive(outer: AdaptiveClip, noise: GaussianNoise) -> None:
    if outer.initial_norm != noise.clip_norm:
        raise ValueError(
            f"clip_norm of the gaussian noise stage ({noise.clip_norm}) must equal initial_norm "
            f"of the adaptive_clip stage outside it ({outer.initial_norm}); the noise then "
            "follows the adaptive clip norm every round"
        )
    if noise.distributed:
        raise ValueError(
            "adaptive_clip with distributed = true is not supported: each client's unclipped "
            "bit would reach the server without noise; use central noise (distributed = false)"
        )
    if noise.count_noise is not None and noise.count_noise != outer.count_noise:
        raise ValueError(
            f"count_noise of the gaussian noise stage ({noise.count_noise}) must equal "
            f"count_noise of the adaptive_clip stage ({outer.count_noise}); leave it unset"
        )
    if outer.count_noise == 0.0:
        raise ValueError(
            "adaptive_clip under DP needs count_noise > noise_multiplier / 2 (the unclipped "
            "count is released too; Andrew et al. use expected clients / 20), got 0"
        )
    update_noise_multiplier(noise.noise_multiplier, outer.count_noise)


def _replace_in(aggregator: Any, target: Any, new: Any) -> Any:
    if aggregator is target:
        return new
    inner = _replace_in(aggregator.inner, target, new)
    return dataclasses.replace(aggregator, inner=inner)


def _check_expected(stage: str, expected: int | None, cohort: int) -> None:
    if expected is not None and expected != cohort:
        raise ValueError(
            f"expected_clients of the {stage} stage ({expected}) must equal the run's cohort "
            f"size ({cohort}); leave it unset to use the cohort size"
        )


def _resolve_secagg(aggregator: Any, seeded: bool) -> Any:
    """A secure-aggregation stage's ``"auto"`` randomness made ``"seeded"`` when ``seeded``."""
    found = _find(aggregator, SecureSum)
    if found is None or not seeded or found.randomness != "auto":
        return aggregator
    return _replace_in(aggregator, found, dataclasses.replace(found, randomness="seeded"))


def resolve(aggregator: Any, *, cohort: int, seeded: bool) -> Any:
    """The chain with its noise stage's ``expected_clients`` set to ``cohort`` and, when
    ``seeded``, an ``"auto"`` noise source (and a secure-aggregation stage's ``"auto"``
    randomness) made ``"seeded"`` (the simulator's default); an
    adaptive clipping stage gets the seeded source likewise and, with a noise stage, the same
    ``expected_clients`` (and the noise stage its ``count_noise``).

    Raises:
        ValueError: a stage's ``expected_clients`` is set and differs from ``cohort``.
    """
    aggregator = _resolve_secagg(aggregator, seeded)
    noise = find_noise(aggregator)
    adaptive = find_adaptive(aggregator)
    if adaptive is not None:
        source = "seeded" if seeded and adaptive.noise_source == "auto" else adaptive.noise_source
        expected = adaptive.expected_clients
        if noise is not None:
            _check_expected("adaptive_clip", expected, cohort)
            expected = cohort
        new_adaptive = dataclasses.replace(adaptive, noise_source=source, expected_clients=expected)
        aggregator = _replace_in(aggregator, adaptive, new_adaptive)
    if noise is None:
        return aggregator
    noise = find_noise(aggregator)
    assert noise is not None
    _check_expected("gaussian noise", noise.expected_clients, cohort)
    source = "seeded" if seeded and noise.noise_source == "auto" else noise.noise_source
    count = adaptive.count_noise if adaptive is not None else None
    new = dataclasses.replace(
        noise, expected_clients=cohort, noise_source=source, count_noise=count
    )
    return _replace_in(aggregator, noise, new)
