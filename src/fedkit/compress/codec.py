"""The shared part of the compressors: bit packing, the encoded leaves, checked decoding, and the
:class:`Compressor` stage every compressor subclasses.

A compressor is an aggregator stage (:class:`fedkit.aggregate.Stage`). Its ``prepare`` runs on
the client and replaces every floating-point tensor of the (inner-prepared) update by an encoded
leaf: a frozen dataclass whose tensor fields ARE the encoded form (packed ``uint8`` codes, ``int32``
indices with their values, ``float32`` scales). The prepared update is what the deployment codec
sends as safetensors and what the simulators count as ``bytes_up``, so the bytes recorded are the
compressed bytes. Its ``zero`` and ``add`` decode on the server, then hand the dense update to the
inner stage. Integer leaves (none in the built-in algorithms' updates) pass through unencoded.

An encoded leaf's ``shape`` and ``dtype`` are plain fields, not tensors: a peer never sends them
(the deployment codec rebuilds the prepared update on the server's own template), so the server
decodes into the size it expects. :func:`decode_tree` checks every tensor a peer did send (dtype,
length, index range and uniqueness, finiteness, code range) before it allocates the dense tensor,
and raises :class:`CompressError` on a malformed payload.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from fedkit.aggregate import AggContext, Stage
from fedkit.params import tree_map

__all__ = [
    "CompressError",
    "Compressor",
    "Packed",
    "Sparse",
    "decode_tree",
    "encoded_nbytes",
    "pack_bits",
    "packed_length",
    "unpack_bits",
]


class CompressError(ValueError):
    """An encoded update that cannot be decoded (wrong dtype or length, an index out of range or
    repeated, a code above the top level, a non-finite scale or value)."""


def packed_length(count: int, bits: int) -> int:
    """Bytes holding ``count`` codes of ``bits`` bits each: ``ceil(count · bits / 8)``."""
    return (count * bits + 7) // 8


def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Pack unsigned integer ``codes`` (each ``< 2**bits``, ``1 <= bits <= 8``) into ``uint8``,
    little-endian within each byte: code ``i`` occupies bits ``i·bits … i·bits + bits - 1`` of
    the stream. The result has :func:`packed_length` bytes (the last one zero-padded)."""
    if 8 % bits == 0:  # 1, 2, 4, 8 bits: whole codes per byte, code j of a byte at bit j·bits
        per = 8 // bits
        c = codes.reshape(-1).to(torch.int32)
        c = torch.cat([c, c.new_zeros(-c.numel() % per)]).reshape(-1, per)
        shifts = torch.arange(per, dtype=torch.int32) * bits
        return (c << shifts).sum(dim=1).to(torch.uint8)
    shifts = torch.arange(bits, dtype=torch.uint8)
    stream = ((codes.to(torch.uint8).reshape(-1, 1) >> shifts) & 1).reshape(-1)
    pad = packed_length(codes.numel(), bits) * 8 - stream.numel()
    stream = torch.cat([stream, stream.new_zeros(pad)]).reshape(-1, 8)
    weights = torch.tensor([1 << i for i in range(8)], dtype=torch.int32)
    return (stream.to(torch.int32) * weights).sum(dim=1).to(torch.uint8)


def unpack_bits(packed: Tensor, bits: int, count: int) -> Tensor:
    """The ``count`` codes of ``bits`` bits packed by :func:`pack_bits`, as ``int64``."""
    if 8 % bits == 0:
        shifts = torch.arange(8 // bits, dtype=torch.int32) * bits
        codes = (packed.to(torch.int32).reshape(-1, 1) >> shifts) & ((1 << bits) - 1)
        return codes.reshape(-1)[:count].to(torch.int64)
    stream = ((packed.reshape(-1, 1) >> torch.arange(8, dtype=torch.uint8)) & 1).reshape(-1)
    stream = stream[: count * bits].reshape(count, bits).to(torch.int64)
    return (stream << torch.arange(bits, dtype=torch.int64)).sum(dim=1)


@dataclasses.dataclass(frozen=True)
class Packed:
    """A tensor as ``bits``-bit codes packed into ``uint8`` and a few ``float32`` scales.

    Attributes:
        codes: the packed codes, ``uint8`` of :func:`packed_length` ``(numel, bits)`` bytes.
        scale: the compressor's ``float32`` scales (e.g. the quantiser's lowest level and step).
        shape: the original shape (from the server's template, never from a peer).
        dtype: the original dtype.

    The width of one code is the compressor's setting, not a field: nothing a peer sends sets
    it (a scalar field would travel in the payload's metadata).
    """

    codes: Tensor
    scale: Tensor
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclasses.dataclass(frozen=True)
class Sparse:
    """A tensor as ``k`` of its flat positions (``int32``, increasing) and their values.

    Attributes:
        index: the positions, ``int32`` of length ``k``.
        values: the values at ``index``, in the original dtype.
        shape: the original shape (from the server's template, never from a peer).
        dtype: the original dtype.
    """

    index: Tensor
    values: Tensor
    shape: tuple[int, ...]
    dtype: torch.dtype


Encoded = Packed | Sparse


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _check(t: Tensor, what: str, dtype: torch.dtype, length: int) -> None:
    """Refuse a sent tensor of another dtype or length than the encoding's."""
    if t.dtype != dtype or t.dim() != 1 or t.numel() != length:
        raise CompressError(
            f"{what}: expected a 1-D {dtype} tensor of {length} elements, got {t.dtype} "
            f"{list(t.shape)}"
        )


def _check_finite(t: Tensor, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise CompressError(f"{what}: a NaN or infinite value")


def checked_codes(leaf: Packed, bits: int, scales: int, top: int) -> Tensor:
    """The unpacked ``bits``-bit codes of ``leaf`` (``int64``) after checking the sent tensors:
    ``codes`` of the packed length, ``scale`` of ``scales`` finite ``float32`` values, every
    code ``<= top``.

    Raises:
        CompressError: naming what is wrong.
    """
    n = _numel(leaf.shape)
    _check(leaf.codes, "packed codes", torch.uint8, packed_length(n, bits))
    _check(leaf.scale, "scales", torch.float32, scales)
    _check_finite(leaf.scale, "scales")
    codes = unpack_bits(leaf.codes, bits, n)
    if n and int(codes.max()) > top:
        raise CompressError(f"packed codes: a code of {int(codes.max())} above the top {top}")
    return codes


def checked_sparse(leaf: Sparse, k: int) -> Tensor:
    """The dense tensor of a :class:`Sparse` leaf after checking what was sent: ``k`` ``int32``
    indices, strictly increasing, inside ``[0, numel)``; ``k`` finite values of the dtype.

    Raises:
        CompressError: naming what is wrong (before the dense tensor is allocated).
    """
    n = _numel(leaf.shape)
    _check(leaf.index, "indices", torch.int32, k)
    _check(leaf.values, "values", leaf.dtype, k)
    _check_finite(leaf.values, "values")
    idx = leaf.index.to(torch.int64)
    if k and (int(idx[0]) < 0 or int(idx[-1]) >= n):
        raise CompressError(f"indices: outside [0, {n})")
    if k > 1 and not bool((idx[1:] > idx[:-1]).all()):
        raise CompressError("indices: not strictly increasing (repeated or unsorted)")
    out = torch.zeros(n, dtype=leaf.dtype)
    out[idx] = leaf.values
    return out.reshape(leaf.shape)


def _map_encoded(fn: Callable[[Any], Any], tree: Any) -> Any:
    """``fn`` on every encoded leaf of ``tree``; tensors (unencoded leaves) are kept."""
    if isinstance(tree, Packed | Sparse):
        return fn(tree)
    if isinstance(tree, Mapping):
        return {k: _map_encoded(fn, v) for k, v in tree.items()}
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        changes = {
            f.name: _map_encoded(fn, getattr(tree, f.name)) for f in dataclasses.fields(tree)
        }
        return dataclasses.replace(tree, **changes)
    return tree


def decode_tree(tree: Any, decode: Callable[[Any], Tensor]) -> Any:
    """The update with every encoded leaf replaced by ``decode(leaf)`` (a dense tensor)."""
    return _map_encoded(decode, tree)


def encoded_nbytes(tree: Any) -> int:
    """The bytes of the tensors an encoded update sends (what ``tree_nbytes`` counts)."""
    total = 0

    def count(leaf: Any) -> Any:
        nonlocal total
        for f in dataclasses.fields(leaf):
            t = getattr(leaf, f.name)
            if isinstance(t, Tensor):
                total += t.numel() * t.element_size()
        return leaf

    _map_encoded(count, tree)
    return total


@dataclasses.dataclass(frozen=True, kw_only=True)
class Compressor(Stage):
    """Base of the compressors: encode each floating-point tensor on the client (``prepare``),
    decode on the server before the inner stage sees it (``zero``, ``add``).

    A subclass defines ``encode(t, gen) -> Packed | Sparse`` (``gen``: the client's stream of this
    stage), ``decode(leaf) -> Tensor`` (checked, see :func:`checked_codes` and
    :func:`checked_sparse`) and ``theoretical_nbytes(numel, itemsize)``, the size of the
    encoding of one tensor.

    Attributes:
        error_feedback: keep what compression dropped as client state and add it to the next
            round's update (:mod:`fedkit.compress.feedback`; the experiment runner wraps the
            algorithm when a stage of its chain asks for it).
        inner: the next stage (the weighted mean by default).
    """

    error_feedback: bool = False

    stream_name: ClassVar[str] = "compress"

    def encode(self, t: Tensor, gen: torch.Generator) -> Encoded:
        """The encoding of one floating-point tensor."""
        raise NotImplementedError

    def decode(self, leaf: Any) -> Tensor:
        """The dense tensor of one encoded leaf (checked; :class:`CompressError` if malformed)."""
        raise NotImplementedError

    def theoretical_nbytes(self, numel: int, itemsize: int) -> int:
        """The bytes of this encoding of a tensor of ``numel`` elements of ``itemsize`` bytes."""
        raise NotImplementedError

    def compress(self, update: Any, ctx: AggContext) -> Any:
        """Encode every floating-point tensor of ``update`` (draws from ``ctx``'s stream)."""
        gen = ctx.stream(self.stream_name)
        return tree_map(lambda t: self.encode(t, gen) if t.is_floating_point() else t, update)

    def decompress(self, encoded: Any) -> Any:
        """The dense update of an encoded one (every leaf checked)."""
        return decode_tree(encoded, self.decode)

    def prepare(self, update: Any, weight: float, ctx: AggContext) -> Any:
        """The inner stage's ``prepare``, then the encoding (what leaves the client)."""
        return self.compress(self.inner.prepare(update, weight, ctx), ctx)

    def zero(self, like: Any) -> Any:
        """The inner stage's zero for the decoded shape."""
        return self.inner.zero(self.decompress(like))

    def add(self, acc: Any, update: Any, weight: float) -> Any:
        """Decode (checked), then the inner stage's ``add``."""
        return self.inner.add(acc, self.decompress(update), weight)
