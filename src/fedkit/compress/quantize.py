"""Quantisers: QSGD's stochastic quantisation and deterministic (or stochastically rounded)
uniform quantisation to ``b`` bits.

**QSGD** (Alistarh et al. 2017, "QSGD: Communication-Efficient SGD via Gradient Quantization and
Encoding", eq. 3.1): with ``s`` levels, each coordinate becomes
``Q_s(v_i) = ‖v‖₂ · sgn(v_i) · ξ_i / s`` where, for ``l = ⌊|v_i| s / ‖v‖₂⌋``, ``ξ_i = l + 1``
with probability ``|v_i| s / ‖v‖₂ − l`` and ``l`` otherwise; so ``E[Q_s(v)] = v`` (unbiased).
Sent: the signed level ``sgn(v_i) ξ_i + s ∈ [0, 2s]`` in ``⌈log₂(2s + 1)⌉`` bits per coordinate,
and ``‖v‖₂`` as one ``float32``. The variance bound, ``min(d/s², √d/s) ‖v‖²``, grows with the
dimension ``d``, which is why the paper quantises buckets of ``d`` consecutive coordinates, each
with its own norm, rather than whole tensors (``chunk``, below).

**Uniform b-bit quantisation** (the "communication cost drops linearly with bit width" baseline):
with ``lo = min v``, ``step = (max v − lo) / (2^b − 1)``, each coordinate becomes the code
``c_i = round((v_i − lo) / step)`` and decodes to ``lo + c_i · step``: error at most ``step / 2``,
biased. With ``stochastic = True`` the rounding is ``⌊(v_i − lo) / step + U⌋``, ``U ~ U[0, 1)``,
which is unbiased. Sent: ``b`` bits per coordinate and ``(lo, step)`` as two ``float32``.

**Chunks** (both quantisers): with ``chunk = c`` the flattened tensor is cut into consecutive
chunks of ``c`` coordinates (the last one shorter) and each chunk is quantised with its own
scales — its own ``(lo, step)``, or its own norm (QSGD's "bucket size") — so one large coordinate
coarsens its chunk only. Sent: the same codes and ``⌈d / c⌉`` times the scales: ``64 / c`` more
bits per coordinate for the uniform quantiser (``c = 512`` adds 0.125), ``32 / c`` for QSGD.
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
class _Chunked(Compressor):
    """A quantiser whose scales cover chunks of ``chunk`` coordinates (module docstring).

    Attributes:
        chunk: coordinates sharing one set of scales; ``0`` (the default): the whole tensor.
    """

    chunk: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.chunk <= MAX_CHUNK:
            raise ValueError(
                f"chunk must be 0 (the whole tensor) or 1..{MAX_CHUNK}, got {self.chunk!r}"
            )

    def _size(self, numel: int) -> int:
        """Coordinates per chunk: ``chunk``, or the whole tensor (at least 1)."""
        return self.chunk or max(1, numel)

    def chunks(self, numel: int) -> int:
        """``⌈numel / chunk⌉`` chunks, at least one (an empty tensor sends one set of scales)."""
        return max(1, -(-numel // self._size(numel)))

    def _rows(self, x: Tensor, fill: float) -> Tensor:
        """``x`` padded with ``fill`` to whole chunks, one chunk a row."""
        n = x.numel()
        size, m = self._size(n), self.chunks(n)
        return torch.cat([x, x.new_full((m * size - n,), fill)]).reshape(m, size)

    def _spread(self, per_chunk: Tensor, numel: int) -> Tensor:
        """Each coordinate's value of ``per_chunk`` (one value a chunk)."""
        return per_chunk.repeat_interleave(self._size(numel))[:numel]


@dataclasses.dataclass(frozen=True, kw_only=True)
class UniformQuantizer(_Chunked):
    """``bits``-bit uniform quantisation between each tensor's minimum and maximum.

    Attributes:
        bits: bits per coordinate, 1 to 8.
        stochastic: round stochastically (unbiased) instead of to the nearest level.
        chunk: coordinates sharing one ``(lo, step)``; ``0`` (the default): the whole tensor.
    """

    bits: int = 8
    stochastic: bool = False

    stream_name = "quantize"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.bits <= 8:
            raise ValueError(f"bits must be in 1..8, got {self.bits!r}")

    @property
    def top(self) -> int:
        """The highest code, ``2^bits − 1``."""
        return (1 << self.bits) - 1

    def encode(self, t: Tensor, gen: torch.Generator) -> Packed:
        """Codes ``round((v − lo) / step)`` (or stochastically rounded) and each chunk's
        ``(lo, step)``, interleaved: ``lo₀, step₀, lo₁, step₁, …``."""
        x = t.detach().reshape(-1).to(torch.float64)
        n = x.numel()
        if n:
            lo = self._rows(x, math.inf).amin(1).to(torch.float32)
            hi = self._rows(x, -math.inf).amax(1).to(torch.float32)
        else:
            lo = hi = torch.zeros(1, dtype=torch.float32)
        step = ((hi.double() - lo.double()) / self.top).to(torch.float32)
        lo_x = self._spread(lo.double(), n)
        step_x = self._spread(step.double(), n)
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
        lo, step = self._spread(scale[:, 0], n), self._spread(scale[:, 1], n)
        return (lo + codes.double() * step).to(leaf.dtype).reshape(leaf.shape)

    def theoretical_nbytes(self, numel: int, itemsize: int) -> int:
        """``⌈numel · bits / 8⌉`` bytes of codes and 8 bytes of ``(lo, step)`` per chunk."""
        return packed_length(numel, self.bits) + 8 * self.chunks(numel)


@dataclasses.dataclass(frozen=True, kw_only=True)
class QSGD(_Chunked):
    """QSGD's unbiased stochastic quantisation to ``levels`` levels (module docstring).

    Attributes:
        levels: the number of levels ``s`` (1 to 127); ``s = 1`` is ternary ``{−‖v‖, 0, ‖v‖}``.
        chunk: coordinates sharing one norm (the paper's bucket size); ``0``: the whole tensor.
    """

    levels: int = 4

    stream_name = "qsgd"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.levels <= 127:
            raise ValueError(f"levels must be in 1..127, got {self.levels!r}")

    @property
    def bits(self) -> int:
        """Bits of one signed level in ``[0, 2s]``: ``⌈log₂(2s + 1)⌉``."""
        return (2 * self.levels).bit_length()

    def encode(self, t: Tensor, gen: torch.Generator) -> Packed:
        """Signed levels ``sgn(v_i) ξ_i + s`` and each chunk's ``‖v‖₂``."""
        s = self.levels
        x = t.detach().reshape(-1).to(torch.float64)
        n = x.numel()
        whole = self.chunks(n) == 1  # x.norm() itself: the same bits as before chunks existed
        norm = (x.norm().reshape(1) if whole else self._rows(x, 0.0).norm(dim=1)).float()
        norm_x = self._spread(norm.double(), n)
        if bool((norm > 0.0).any()):
            ratio = x.abs() * s / torch.where(norm_x > 0.0, norm_x, 1.0)
            level = torch.floor(ratio + _uniform(ratio, gen)).clamp(0, s)
            signed = torch.where(norm_x > 0.0, torch.where(x < 0, -level, level), 0.0)
        else:  # no random draw: the stream of the next tensor stays as it was
            signed = torch.zeros_like(x)
        return Packed(
            codes=pack_bits((signed + s).to(torch.int64), self.bits),
            scale=norm,
            shape=tuple(t.shape),
            dtype=t.dtype,
        )

    def decode(self, leaf: Packed) -> Tensor:
        """``‖v‖₂ · (c − s) / s`` with each coordinate's chunk's norm (codes and norms checked:
        one a chunk, a number the server computes from its own template)."""
        s = self.levels
        n = math.prod(leaf.shape)
        codes = checked_codes(leaf, self.bits, self.chunks(n), 2 * s)
        norm = self._spread(leaf.scale.double(), n)
        return ((codes - s).double() * norm / s).to(leaf.dtype).reshape(leaf.shape)

    def theoretical_nbytes(self, numel: int, itemsize: int) -> int:
        """``⌈numel · ⌈log₂(2s + 1)⌉ / 8⌉`` bytes of levels and 4 bytes of norm per chunk."""
        return packed_length(numel, self.bits) + 4 * self.chunks(numel)
