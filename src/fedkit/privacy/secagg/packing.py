"""Masked words packed to whole bytes for the wire: a word of ``Z_{2^bits}`` takes
``⌈bits / 8⌉`` bytes instead of an int64's eight (Bonawitz et al. 2017 count the masked input
as ``m · ⌈log2 R⌉`` bits; byte granularity keeps packing one vectorised shift per byte).

:func:`pack` writes each word little-endian into a trailing dimension of ``⌈bits / 8⌉``
``uint8`` bytes; :func:`unpack` reads them back as int64 and refuses (:class:`SecAggError`) a
tensor that is not ``uint8``, whose trailing dimension is not ``⌈bits / 8⌉``, or whose top byte
sets bits at or above ``bits`` (a word outside ``[0, 2^bits)``: a hostile or corrupted input
that would otherwise be silently reduced).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedkit.privacy.secagg.errors import SecAggError

__all__ = ["pack", "unpack", "word_bytes"]


def word_bytes(bits: int) -> int:
    """``⌈bits / 8⌉``: the bytes one packed word takes."""
    return (bits + 7) // 8


def pack(words: Tensor, bits: int) -> Tensor:
    """``words`` (int64 in ``[0, 2^bits)``, any shape) as ``uint8`` of shape
    ``(*words.shape, ⌈bits / 8⌉)``, least significant byte first."""
    if words.dtype != torch.int64:
        raise SecAggError(f"only int64 words are packed, got {words.dtype}")
    shifts = torch.arange(0, 8 * word_bytes(bits), 8, dtype=torch.int64)
    return ((words.unsqueeze(-1) >> shifts) & 0xFF).to(torch.uint8)


def unpack(packed: Tensor, bits: int) -> Tensor:
    """The int64 words of :func:`pack` (the shape without the trailing byte dimension).

    Raises:
        SecAggError: not ``uint8``, a trailing dimension other than ``⌈bits / 8⌉``, or a word
            at or above ``2^bits``.
    """
    nb = word_bytes(bits)
    if packed.dtype != torch.uint8 or packed.dim() < 1 or packed.shape[-1] != nb:
        raise SecAggError(
            f"packed words must be uint8 with a last dimension of {nb} bytes, got "
            f"{packed.dtype} {tuple(packed.shape)}"
        )
    top = bits - 8 * (nb - 1)  # the bits of the last byte that belong to the word
    if top < 8 and packed.numel() and int(packed[..., -1].max()) >> top:
        raise SecAggError(f"a packed word is outside [0, 2^{bits})")
    shifts = torch.arange(0, 8 * nb, 8, dtype=torch.int64)
    return (packed.to(torch.int64) << shifts).sum(dim=-1)
