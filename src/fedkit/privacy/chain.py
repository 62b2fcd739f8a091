"""Checks and settings of an aggregator chain that holds a DP noise stage.

DP-FedAvg's guarantee needs the chain ``clip(C) → gaussian(z, C) → mean`` with uniform client
weights: the noise is calibrated to the clipping bound, so a noise stage without a clip stage
directly outside it with the same bound, or a stage between them that changes the clipped
update, would release a sum whose sensitivity is not ``C``. :func:`check_chain` refuses such
chains with a ``ValueError`` that says what to change; :func:`resolve` fills in what the run
knows (the cohort size ``k`` and, in simulation, the seeded noise source).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fedkit.privacy.clip import ClipNorm
from fedkit.privacy.gaussian import GaussianNoise

__all__ = ["check_chain", "find_noise", "resolve"]


def _stages(aggregator: Any) -> list[Any]:
    """The chain from the outermost stage inwards (following ``inner``)."""
    out = [aggregator]
    while dataclasses.is_dataclass(out[-1]) and hasattr(out[-1], "inner"):
        out.append(out[-1].inner)
    return out


def find_noise(aggregator: Any) -> GaussianNoise | None:
    """The chain's Gaussian noise stage, or ``None`` when it has none."""
    found = [s for s in _stages(aggregator) if isinstance(s, GaussianNoise)]
    return found[0] if found else None


def check_chain(aggregator: Any, *, weighting: str | None = None) -> GaussianNoise | None:
    """Validate a chain with a noise stage (see the module docstring); return that stage.

    Args:
        aggregator: the outermost stage.
        weighting: the algorithm's client weighting, when it has one (must be ``"uniform"``).

    Raises:
        ValueError: more than one noise stage; no clip stage directly outside the noise stage;
            a clip bound that differs from the noise stage's ``clip_norm``; a weighting other
            than uniform.
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
    if not isinstance(outer, ClipNorm):
        raise ValueError(
            "the gaussian noise stage needs a clip stage directly outside it (name = 'clip' with "
            "max_norm = clip_norm, and the noise stage as its inner): the noise is calibrated "
            "to the clipping bound"
        )
    if outer.max_norm != noise.clip_norm:
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


def _replace_in(aggregator: Any, target: Any, new: Any) -> Any:
    if aggregator is target:
        return new
    inner = _replace_in(aggregator.inner, target, new)
    return dataclasses.replace(aggregator, inner=inner)


def resolve(aggregator: Any, *, cohort: int, seeded: bool) -> Any:
    """The chain with its noise stage's ``expected_clients`` set to ``cohort`` and, when
    ``seeded``, an ``"auto"`` noise source made ``"seeded"`` (the simulator's default).

    Raises:
        ValueError: the stage's ``expected_clients`` is set and differs from ``cohort``.
    """
    noise = find_noise(aggregator)
    if noise is None:
        return aggregator
    if noise.expected_clients is not None and noise.expected_clients != cohort:
        raise ValueError(
            f"expected_clients of the gaussian noise stage ({noise.expected_clients}) must "
            f"equal the run's cohort size ({cohort}); leave it unset to use the cohort size"
        )
    source = "seeded" if seeded and noise.noise_source == "auto" else noise.noise_source
    new = dataclasses.replace(noise, expected_clients=cohort, noise_source=source)
    return _replace_in(aggregator, noise, new)
