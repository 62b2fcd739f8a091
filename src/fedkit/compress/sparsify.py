"""Sparsifiers: top-k (Aji & Heafield 2017, "Sparse Communication for Distributed Gradient
Descent"; Stich et al. 2018, "Sparsified SGD with Memory") and random-k (Stich et al. 2018;
Wangni et al. 2018).

Each tensor of ``d`` elements keeps ``k = min(d, max(1, ⌈fraction · d⌉))`` coordinates:

- **top-k** the ``k`` largest in magnitude, sent as they are (biased; use it with error
  feedback, ``error_feedback = true``, as Stich et al. do);
- **random-k** ``k`` positions drawn uniformly without replacement from the client's stream,
  sent scaled by ``d / k`` so that ``E[C(v)] = v`` (each coordinate is kept with probability
  ``k / d``).

Sent: ``k`` positions as ``int32`` (increasing) and ``k`` values in the tensor's dtype.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from fedkit.compress.codec import Compressor, Sparse, checked_sparse

__all__ = ["RandomK", "TopK", "kept"]


def kept(fraction: float, numel: int) -> int:
    """``k = min(d, max(1, ⌈fraction · d⌉))`` (``0`` for an empty tensor)."""
    if numel == 0:
        return 0
    return min(numel, max(1, math.ceil(fraction * numel)))


def _check_fraction(fraction: float) -> None:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")


def _sparse(t: Tensor, index: Tensor, values: Tensor) -> Sparse:
    order = torch.argsort(index)
    return Sparse(
        index=index[order].to(torch.int32),
        values=values[order].to(t.dtype),
        shape=tuple(t.shape),
        dtype=t.dtype,
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Sparsifier(Compressor):
    fraction: float = 0.01

    def __post_init__(self) -> None:
        _check_fraction(self.fraction)

    def decode(self, leaf: Sparse) -> Tensor:
        """The dense tensor, zero off the sent positions (positions and values checked)."""
        return checked_sparse(leaf, kept(self.fraction, math.prod(leaf.shape)))

    def theoretical_nbytes(self, numel: int, itemsize: int) -> int:
        """``k`` positions of 4 bytes and ``k`` values of ``itemsize`` bytes."""
        return kept(self.fraction, numel) * (4 + itemsize)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TopK(_Sparsifier):
    """Keep the ``k`` largest-magnitude coordinates of each tensor (module docstring).

    Attributes:
        fraction: the share of coordinates kept, in ``(0, 1]``.
    """

    def encode(self, t: Tensor, gen: torch.Generator) -> Sparse:
        """The positions and values of the ``k`` largest ``|v_i|``."""
        x = t.detach().reshape(-1)
        index = torch.topk(x.abs(), kept(self.fraction, x.numel()), sorted=False).indices
        return _sparse(t, index, x[index])


@dataclasses.dataclass(frozen=True, kw_only=True)
class RandomK(_Sparsifier):
    """Keep ``k`` uniformly drawn coordinates of each tensor, scaled by ``d / k`` (unbiased).

    Attributes:
        fraction: the share of coordinates kept, in ``(0, 1]``.
    """

    stream_name = "randk"

    def encode(self, t: Tensor, gen: torch.Generator) -> Sparse:
        """``k`` positions from the client's stream and ``(d / k) · v`` there."""
        x = t.detach().reshape(-1)
        d = x.numel()
        k = kept(self.fraction, d)
        index = torch.randperm(d, generator=gen)[:k]
        return _sparse(t, index, x[index].double() * (d / k if k else 1.0))  # k = 0: empty
