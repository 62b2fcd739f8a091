"""Quantisers: QSGD's stochastic quantisation and deterministic (or stochastically rounded)
uniform quantisation to ``b`` bits.

**QSGD** (Alistarh et al. 2017, "QSGD: Communication-Efficient SGD via Gradient Quantization and
Encoding", eq. 3.1): with ``s`` levels, each coordinate becomes
``Q_s(v_i) = ‖v‖₂ · sgn(v_i) · ξ_i / s`` where, for ``l = ⌊|v_i| s / ‖v‖₂⌋``, ``ξ_i = l + 1``
with probability ``|v_i| s / ‖v‖₂ − l`` and ``l`` otherwise; so ``E[Q_s(v)] = v`` (unbiased).
Sent: the signed level ``sgn(v_i) ξ_i + s ∈ [0, 2s]`` in ``⌈log₂(2s + 1)⌉`` bits per coordinate,
and ``‖v‖₂`` as one ``float32``.

**Uniform b-bit quantisation** (the "communication cost drops linearly with bit width" baseline):
with ``lo = min v``, ``step = (max v − lo) / (2^b − 1)``, each coordinate becomes the code
``c_i = round((v_i − lo) / step)`` and decodes to ``lo + c_i · step``: error at most ``step / 2``,
biased. With ``stochastic = True`` the rounding is ``⌊(v_i − lo) / step + U⌋``, ``U ~ U[0, 1)``,
which is unbiased. Sent: ``b`` bits per coordinate and ``(lo, step)`` as two ``float32``.

With ``chunk = c`` the flattened tensor is cut into consecutive chunks of ``c`` coordinates (the
last one shorter) and each chunk gets its own ``(lo, step)``: one large coordinate then widens the
step of its chunk only (the per-bucket scaling of QSGD's implementation, Alistarh et al. 2017,
"bucket size"). Sent: ``b`` bits per coordinate and ``2 · ⌈d / c⌉`` ``float32`` scales, i.e.
``64 / c`` bits per coordinate more (``c = 512`` adds 0.125 bit).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from fedkit.compress.codec import Compressor, Packed, checked_codes, pack_bits, packed_length

__all__ = ["MAX_CHUNK", "QSGD", "UniformQuantizer"]

MAX_CHUNK = 1 << 30
"""The largest ``chunk`` (a setting, so bounded like every integer of an experiment file)."""


def _uniform(t: Tensor, gen: torch.Generator) -> Tensor:
    return torch.rand(t.shape, generator=gen, dtype=t.dtype)


@dataclasses.dataclass(frozen=True, kw_only=True)
class UniformQuantizer(Compressor):
    """``bits``-bit uniform quantisation between each tensor's minimum and maximum.

    Attributes:
        bits: bits per coordinate, 1 to 8.
        stochastic: round stochastically (unbiased) instead of to the nearest level.
        chunk: coordinates sharing one ``(lo, step)``; ``0`` (the default): the whole tensor.
    """

    bits: int = 8
    stochastic: bool = False
    chunk: int = 0

    stream_name = "quantize"

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 8:
            raise ValueError(f"bits must be in 1..8, got {self.bits!r}")
        if not 0 <= self.chunk <= MAX_CHUNK:
            raise ValueError(
                f"chunk must be 0 (the whole tensor) or 1..{MAX_CHUNK}, got {self.chunk!r}"
            )

    @property
    def top(self) -> int:
        """The highest code, ``2^bits − 1``."""
        return (1 << self.bits) - 1

    def _size(self, numel: int) -> int:
        """Coordinates per chunk: ``chunk``, or the whole tensor (at least 1)."""
        return self.chunk or max(1, numel)

    def chunks(self, numel: int) -> int:
        """``⌈numel / chunk⌉`` chunks, at least one (an empty tensor sends one ``(0, 0)``)."""
        return max(1, -(-numel // self._size(numel)))

    def encode(self, t: Tensor, gen: torch.Generator) -> Packed:
        """Codes ``round((v − lo) / step)`` (or stochastically rounded) and each chunk's
        ``(lo, step)``, interleaved: ``lo₀, step₀, lo₁, step₁, …``."""
        x = t.detach().reshape(-1).to(torch.float64)
        n, size, m = x.numel(), self._size(x.numel()), self.chunks(x.numel())
        if n:
            pad = m * size - n
            lo = torch.cat([x, x.new_full((pad,), math.inf)]).reshape(m, size).amin(1)
            hi = torch.cat([x, x.new_full((pad,), -math.inf)]).reshape(m, size).amax(1)
            lo, hi = lo.to(torch.float32), hi.to(torch.float32)
        else:
            lo = hi = torch.zeros(1, dtype=torch.float32)
        step = ((hi.double() - lo.double()) / self.top).to(torch.float32)
        lo_x = lo.double().repeat_interleave(size)[:n]
        step_x = step.double().repeat_interleave(size)[:n]
        if bool((step > 0.0).any()):
            level = (x - lo_x) / torch.where(step_x > 0.0, step_x, 1.0)
            level = torch.floor(level + _uniform(level, gen)) if self.stochastic else level.round()
            level = torch.where(step_x > 0.0, level, 0.0)
        else:  # no random draw: the stream of the next tensor stays as it was
            level = torch.zeros_like(x)
        codes = level.clamp(0, self.top)
        return Packed(
            codes=pack_bits(codes.to(torch.int64), self.bits),
            scale=torch.stack([lo, step], dim=1).reshape(-1),
            shape=tuple(t.shape),
            dtype=t.dtype,
        )

    def decode(self, leaf: Packed) -> Tensor:
        """``lo + c · step`` with each coordinate's chunk's scales (codes and scales checked:
        ``2 · chunks`` of them, a number the server computes from its own template)."""
        n = math.prod(leaf.shape)
        m = self.chunks(n)
        codes = checked_codes(leaf, self.bits, 2 * m, self.top)
        scale = leaf.scale.double().reshape(m, 2)
        size = self._size(n)
        lo = scale[:, 0].repeat_interleave(size)[:n]
        step = scale[:, 1].repeat_interleave(size)[:n]
        return (lo + codes.double() * step).to(leaf.dtype).reshape(leaf.shape)

    def theoretical_nbytes(self, numel: int, itemsize: int) -> int:
        """``⌈numel · bits / 8⌉`` bytes of codes and 8 bytes of ``(lo, step)`` per chunk."""
        return packed_length(numel, self.bits) + 8 * self.chunks(numel)


@dataclasses.dataclass(frozen=True, kw_only=True)
class QSGD(Compressor):
    """QSGD's unbiased stochastic quantisation to ``levels`` levels (module docstring).

    Attributes:
        levels: the number of levels ``s`` (1 to 127); ``s = 1`` is ternary ``{−‖v‖, 0, ‖v‖}``.
    """

    levels: int = 4

    stream_name = "qsgd"

    def __post_init__(self) -> None:
        if not 1 <= self.levels <= 127:
            raise ValueError(f"levels must be in 1..127, got {self.levels!r}")

    @property
    def bits(self) -> int:
        """Bits of one signed level in ``[0, 2s]``: ``⌈log₂(2s + 1)⌉``."""
        return (2 * self.levels).bit_length()

    def encode(self, t: Tensor, gen: torch.Generator) -> Packed:
        """Signed levels ``sgn(v_i) ξ_i + s`` and ``‖v‖₂``."""
        s = self.levels
        x = t.detach().reshape(-1).to(torch.float64)
        norm = x.norm().to(torch.float32)
        if float(norm) > 0.0:
            ratio = x.abs() * s / norm.double()
            level = torch.floor(ratio + _uniform(ratio, gen)).clamp(0, s)
            signed = torch.where(x < 0, -level, level)
        else:
            signed = torch.zeros_like(x)
        return Packed(
            codes=pack_bits((signed + s).to(torch.int64), self.bits),
            scale=norm.reshape(1),
            shape=tuple(t.shape),
            dtype=t.dtype,
        )

    def decode(self, leaf: Packed) -> Tensor:
        """``‖v‖₂ · (c − s) / s`` (codes and the norm checked)."""
        s = self.levels
        codes = checked_codes(leaf, self.bits, 1, 2 * s)
        norm = leaf.scale.double()[0]
        return ((codes - s).double() * norm / s).to(leaf.dtype).reshape(leaf.shape)

    def theoretical_nbytes(self, numel: int, itemsize: int) -> int:
        """``⌈numel · ⌈log₂(2s + 1)⌉ / 8⌉`` bytes of levels and 4 bytes of norm."""
        return packed_length(numel, self.bits) + 4
