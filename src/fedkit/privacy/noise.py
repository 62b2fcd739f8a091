"""Where DP noise comes from: a seeded stream in simulation, the OS CSPRNG in deployment.

* ``"seeded"``: ``ctx.stream("dp-noise")`` of the aggregation context, a ``torch.Generator``
  derived from ``(seed, round, client_id)`` (:mod:`fedkit.rng`). A simulation is then
  reproducible under every executor, and a test can check the noise, but anyone who knows the
  seed knows the noise: the guarantee holds only against someone who does not. The run's record
  says ``noise_source = "seeded"``.
* ``"os"``: standard normals made from ``os.urandom`` bytes (the kernel's CSPRNG) by the
  Box–Muller transform, ``z = sqrt(-2 ln u₁) · cos(2π u₂)`` with ``u₁, u₂`` uniform on (0, 1]
  from 53 random bits each. No seed, no reproducible stream, no non-cryptographic generator
  (Mersenne Twister or Philox) between the entropy and the noise.
* ``"auto"``: ``"os"``, unless the simulation runner resolved it to ``"seeded"`` before the run
  (:func:`fedkit.privacy.chain.resolve_noise_source`); a deployment coordinator leaves it as it is.

Floating-point Gaussian samples are not exactly Gaussian (Mironov 2012, "On significance of the
least significant bits for differential privacy"); neither source addresses that.
"""

from __future__ import annotations

from typing import Literal

import torch

from fedkit.aggregate import AggContext
from fedkit.csprng import os_normal

NoiseSource = Literal["auto", "seeded", "os"]
NOISE_SOURCES: tuple[str, ...] = ("auto", "seeded", "os")
STREAM = "dp-noise"
"""The name of the seeded stream (``AggContext.stream(STREAM)``)."""


def check_source(source: str) -> None:
    """Reject a noise-source name other than :data:`NOISE_SOURCES`."""
    if source not in NOISE_SOURCES:
        raise ValueError(f"noise_source must be one of {NOISE_SOURCES}, got {source!r}")


class NoiseDraw:
    """One draw of Gaussian noise for a whole update, tensor after tensor.

    Args:
        source: ``"seeded"`` draws from ``ctx.stream(stream)``; ``"os"`` and ``"auto"`` from
            the OS CSPRNG.
        ctx: the aggregation context (round, client, seed) of the step adding the noise.
        stream: the seeded stream's name (a second release of the same step, such as adaptive
            clipping's noised count, draws from a stream of its own).
    """

    def __init__(self, source: str, ctx: AggContext, stream: str = STREAM) -> None:
        check_source(source)
        self.seeded = source == "seeded"
        self.generator = ctx.stream(stream) if self.seeded else None

    def normal(self, shape: torch.Size | tuple[int, ...], std: float) -> torch.Tensor:
        """``N(0, std²)`` samples of ``shape`` in float64."""
        if self.generator is not None:
            z = torch.randn(shape, generator=self.generator, dtype=torch.float64)
        else:
            z = os_normal(shape)
        return z * std
