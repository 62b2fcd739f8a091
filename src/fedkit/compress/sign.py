"""1-bit sign compression with scaling (Bernstein et al. 2018, "signSGD"; with the ℓ₁ scale of
Karimireddy et al. 2019, "Error Feedback Fixes SignSGD and other Gradient Compression Schemes",
Algorithm 1): a tensor ``v`` of ``d`` elements becomes ``(‖v‖₁ / d) · sgn(v)`` (``sgn(0) = +1``).

Sent: one bit per coordinate and the scale ``‖v‖₁ / d`` as one ``float32``. The compression is
biased; Karimireddy et al. pair it with error feedback (``error_feedback = true``), which is how
it is meant to be used.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from fedkit.compress.codec import Compressor, Packed, checked_codes, pack_bits, packed_length

__all__ = ["SignCompressor"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SignCompressor(Compressor):
    """``(‖v‖₁ / d) · sgn(v)`` per tensor, one bit a coordinate (module docstring)."""

    def encode(self, t: Tensor, gen: torch.Generator) -> Packed:
        """The sign bits (1 for ``v_i ≥ 0``) and the mean absolute value."""
        x = t.detach().reshape(-1).to(torch.float64)
        scale = x.abs().mean() if x.numel() else x.new_zeros(())
        return Packed(
            codes=pack_bits((x >= 0).to(torch.int64), 1),
            scale=scale.to(torch.float32).reshape(1),
            shape=tuple(t.shape),
            dtype=t.dtype,
        )

    def decode(self, leaf: Packed) -> Tensor:
        """``scale · (2b − 1)`` (bits and scale checked)."""
        bits = checked_codes(leaf, 1, 1, 1)
        scale = leaf.scale.double()[0]
        return ((2 * bits - 1).double() * scale).to(leaf.dtype).reshape(leaf.shape)

    def theoretical_nbytes(self, numel: int, itemsize: int) -> int:
        """``⌈numel / 8⌉`` bytes of signs and 4 bytes of scale."""
        return packed_length(numel, 1) + 4
