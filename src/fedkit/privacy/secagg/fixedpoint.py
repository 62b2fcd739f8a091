"""Fixed-point encoding of weighted float updates modulo ``2^bits`` (Bonawitz et al. 2017, §3:
inputs are vectors over ``Z_R``; here ``R = 2^bits``, int64 arithmetic, ``16 ≤ bits ≤ 62``).

A client with update ``x`` (float, any shape) and weight ``w`` sends, per coordinate,

    e(x_j) = round(w · clamp(x_j, −B, B) · s)  mod 2^bits,     s = 2^(bits−2) / (n · W · B),

and its weight as ``round(w · s_w) mod 2^bits`` with ``s_w = 2^(bits−2) / (n · W)``, where
``B`` is the clip range, ``W`` the largest allowed weight and ``n`` the cohort size. Since
``|w · clamp(x_j)| ≤ W · B``, a cohort's integer sum satisfies ``|Σ e| ≤ 2^(bits−2)(1 + 2^−51)
+ n/2 < 2^(bits−1)`` whenever ``n < 2^(bits−3)`` (checked), so the sum modulo ``2^bits``,
lifted to ``[−2^(bits−1), 2^(bits−1))``, *is* the integer sum: it never wraps.

**Error bound.** Rounding to the nearest integer costs at most ½ per client and coordinate;
the float64 products ``w · x`` and ``· s`` and the decoding ``S / s`` add relative errors of
``2^−53`` each, at most ``n · W · B · 2^−50`` in all. So each coordinate of the decoded
weighted sum ``Σ_i w_i clamp(x_i)`` is within

    ε_sum = n / (2 s) + n · W · B · 2^−50

of the exact sum (:meth:`FixedPoint.sum_error`), the decoded total weight within
``ε_w = n / (2 s_w) + n · W · 2^−50`` (:meth:`FixedPoint.weight_error`), and the weighted mean
``Ŝ / Ŵ`` within ``(ε_sum + B · ε_w) / (Ŵ − ε_w)`` (:meth:`FixedPoint.mean_error`, because
``|S / W_tot| ≤ B``). Values beyond ``±B`` are clamped, not wrapped: choose ``B`` to cover
the updates (with distributed DP noise, the clip norm plus a few noise standard deviations).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

__all__ = ["MAX_BITS", "MIN_BITS", "FixedPoint"]

MIN_BITS = 16
MAX_BITS = 62


def _finite_positive(name: str, v: float) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a finite number > 0, got {v!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FixedPoint:
    """The encoding of one round (see the module docstring).

    Attributes:
        bits: the modulus is ``2^bits`` (``16 ≤ bits ≤ 62``).
        clip_range: ``B``: coordinates are clamped to ``[−B, B]`` before encoding.
        max_weight: ``W``: the largest client weight the round accepts.
        clients: ``n``: the cohort size (``n < 2^(bits−3)``).
    """

    bits: int
    clip_range: float
    max_weight: float
    clients: int

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise ValueError(f"bits must be an integer, got {self.bits!r}")
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"bits must be in {MIN_BITS}..{MAX_BITS}, got {self.bits}")
        _finite_positive("clip_range", self.clip_range)
        _finite_positive("max_weight", self.max_weight)
        if not 1 <= self.clients < 2 ** (self.bits - 3):
            raise ValueError(
                f"a cohort of {self.clients} clients needs bits > log2(n) + 3; got bits = "
                f"{self.bits}"
            )

    @property
    def modulus(self) -> int:
        """``2^bits``."""
        return 1 << self.bits

    @property
    def scale(self) -> float:
        """``s = 2^(bits−2) / (n · W · B)``, the scale of update coordinates."""
        return 2.0 ** (self.bits - 2) / (self.clients * self.max_weight * self.clip_range)

    @property
    def weight_scale(self) -> float:
        """``s_w = 2^(bits−2) / (n · W)``, the scale of weights."""
        return 2.0 ** (self.bits - 2) / (self.clients * self.max_weight)

    def check_weight(self, weight: float) -> None:
        """Refuse a weight outside ``[0, W]`` (it could make the sum wrap)."""
        if not (0.0 <= weight <= self.max_weight):
            raise ValueError(
                f"secure aggregation accepts client weights in [0, max_weight = "
                f"{self.max_weight}], got {weight}; raise max_weight"
            )

    def _wrap(self, q: Tensor) -> Tensor:
        return q & (self.modulus - 1)  # two's complement: the residue in [0, 2^bits)

    def encode(self, values: Tensor, weight: float) -> Tensor:
        """``round(w · clamp(x, −B, B) · s) mod 2^bits`` as int64 (the shape of ``values``)."""
        self.check_weight(weight)
        v = values.detach().to(torch.float64).clamp(-self.clip_range, self.clip_range)
        return self._wrap(torch.round(v * weight * self.scale).to(torch.int64))

    def encode_weight(self, weight: float) -> Tensor:
        """``round(w · s_w) mod 2^bits`` as an int64 scalar."""
        self.check_weight(weight)
        return self._wrap(torch.tensor(round(weight * self.weight_scale), dtype=torch.int64))

    def lift(self, total: Tensor) -> Tensor:
        """The residues ``total mod 2^bits`` as integers in ``[−2^(bits−1), 2^(bits−1))``."""
        t = self._wrap(total)
        return torch.where(t >= self.modulus // 2, t - self.modulus, t)

    def decode(self, total: Tensor) -> Tensor:
        """The weighted sum of the encoded updates (float64) from their sum mod ``2^bits``."""
        return self.lift(total).to(torch.float64) / self.scale

    def decode_weight(self, total: Tensor) -> float:
        """The total weight from the sum of encoded weights mod ``2^bits``."""
        return float(self.lift(total)) / self.weight_scale

    def sum_error(self) -> float:
        """``ε_sum = n/(2s) + n·W·B·2^−50``: the bound on each decoded sum coordinate."""
        n, w, b = self.clients, self.max_weight, self.clip_range
        return n / (2.0 * self.scale) + n * w * b * 2.0**-50

    def weight_error(self) -> float:
        """``ε_w = n/(2 s_w) + n·W·2^−50``: the bound on the decoded total weight."""
        n, w = self.clients, self.max_weight
        return n / (2.0 * self.weight_scale) + n * w * 2.0**-50

    def mean_error(self, decoded_weight: float) -> float:
        """Bound on each coordinate of ``decoded sum / decoded weight`` against the exact
        weighted mean of the clamped updates: ``(ε_sum + B·ε_w) / (Ŵ − ε_w)``."""
        denom = decoded_weight - self.weight_error()
        if denom <= 0:
            return math.inf
        return (self.sum_error() + self.clip_range * self.weight_error()) / denom
