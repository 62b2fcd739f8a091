"""The compressors' shared codec: bit packing by hand, and decoding that refuses a hostile
payload (wrong length or dtype, an index out of range or repeated, a code above the top level, a
non-finite scale or value) with a typed error before it allocates the dense tensor."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedkit.aggregate import AggContext, WeightedMean
from fedkit.compress import QSGD, CompressError, Packed, SignCompressor, Sparse, TopK
from fedkit.compress import UniformQuantizer as Uniform
from fedkit.compress.codec import encoded_nbytes, pack_bits, packed_length, unpack_bits
from fedkit.compress.quantize import MAX_CHUNK
from fedkit.params import tree_nbytes

CTX = AggContext(round=0, seed=0, client_id=1)


def test_pack_bits_by_hand() -> None:
    # 2-bit codes 0, 1, 2, 3 little-endian in one byte: 0 + 1·4 + 2·16 + 3·64 = 228
    assert pack_bits(torch.tensor([0, 1, 2, 3]), 2).tolist() == [228]
    # 1-bit codes 1, 0, 1, 1 then padding: 1 + 4 + 8 = 13
    assert pack_bits(torch.tensor([1, 0, 1, 1]), 1).tolist() == [13]
    # 3-bit codes 5, 6, 7, low bit first: 5 = 1,0,1; 6 = 0,1,1; 7 = 1,1,1 -> the stream
    # 1,0,1,0,1,1,1,1 | 1,0,0,... -> byte 0 = 1 + 4 + 16 + 32 + 64 + 128 = 245, byte 1 = 1
    assert pack_bits(torch.tensor([5, 6, 7]), 3).tolist() == [245, 1]
    assert unpack_bits(torch.tensor([245, 1], dtype=torch.uint8), 3, 3).tolist() == [5, 6, 7]
    assert packed_length(3, 3) == 2 and packed_length(8, 1) == 1 and packed_length(9, 1) == 2


def test_encoded_size_is_the_theoretical_size() -> None:
    # d = 1000 float32: 8 bits -> 1000 + 8; 4 bits -> 500 + 8; QSGD s=4 -> 4 bits -> 500 + 4;
    # sign -> 125 + 4; top-1% -> k = 10 positions and values -> 80
    t = {"w": torch.randn(10, 100)}
    cases = [
        (Uniform(bits=8), 1008),
        (Uniform(bits=4), 508),
        (QSGD(levels=4), 504),
        (SignCompressor(), 129),
        (TopK(fraction=0.01), 80),
    ]
    for comp, want in cases:
        enc = comp.prepare(t, 1.0, CTX)
        assert tree_nbytes(enc) == encoded_nbytes(enc) == want
        assert comp.theoretical_nbytes(1000, 4) == want


def test_chunked_quantiser_by_hand() -> None:
    # v = [0, 0.3, 3 | 10, 16, 40], 2 bits (top code 3), chunks of 3:
    # chunk 0: lo 0, step (3 − 0)/3 = 1 -> codes 0, round(0.3) = 0, 3 -> 0, 0, 3
    # chunk 1: lo 10, step (40 − 10)/3 = 10 -> codes 0, round(0.6) = 1, 3 -> 10, 20, 40
    # the whole tensor instead: lo 0, step 40/3 -> 0.3, 3 and 10 become 0, 0, 13.33
    v = {"w": torch.tensor([0.0, 0.3, 3.0, 10.0, 16.0, 40.0])}
    comp = Uniform(bits=2, chunk=3)
    enc = comp.prepare(v, 1.0, CTX)
    assert enc["w"].scale.tolist() == [0.0, 1.0, 10.0, 10.0]  # lo₀, step₀, lo₁, step₁
    assert unpack_bits(enc["w"].codes, 2, 6).tolist() == [0, 0, 3, 0, 1, 3]
    assert comp.decompress(enc)["w"].tolist() == [0.0, 0.0, 3.0, 10.0, 20.0, 40.0]
    whole = Uniform(bits=2).decompress(Uniform(bits=2).prepare(v, 1.0, CTX))["w"]
    assert whole[:3].tolist() == [0.0, 0.0, 0.0] and abs(float(whole[3]) - 40 / 3) < 1e-5
    # a last chunk of 1 (7 coordinates in chunks of 3): its step is 0, its code 0, decodes lo
    w = {"w": torch.tensor([0.0, 0.3, 3.0, 10.0, 16.0, 40.0, -5.0])}
    out = comp.decompress(comp.prepare(w, 1.0, CTX))["w"]
    assert out.tolist() == [0.0, 0.0, 3.0, 10.0, 20.0, 40.0, -5.0]


def test_chunked_size_is_the_theoretical_size() -> None:
    # d = 1000, 3 bits: ⌈3000 / 8⌉ = 375 bytes of codes; chunks of 256: ⌈1000 / 256⌉ = 4 chunks,
    # 4 · 8 = 32 bytes of scales -> 407; chunks of 1000 or more: one chunk, 383 (= chunk 0)
    t = {"w": torch.randn(10, 100)}
    for comp, want in [
        (Uniform(bits=3, chunk=256), 407),
        (Uniform(bits=3, chunk=1000), 383),
        (Uniform(bits=3, chunk=4096), 383),
        (Uniform(bits=3), 383),
    ]:
        enc = comp.prepare(t, 1.0, CTX)
        assert tree_nbytes(enc) == encoded_nbytes(enc) == comp.theoretical_nbytes(1000, 4) == want
    # an empty tensor still sends one (lo, step): 8 bytes, as the whole-tensor quantiser does
    assert Uniform(bits=3, chunk=4).theoretical_nbytes(0, 4) == 8


@pytest.mark.parametrize("chunk", [-1, 2**30 + 1])
def test_chunk_outside_its_range_is_refused(chunk: int) -> None:
    with pytest.raises(ValueError, match="chunk must be 0"):
        Uniform(bits=3, chunk=chunk)
    with pytest.raises(ValueError, match="chunk must be 0"):
        QSGD(levels=3, chunk=chunk)


def test_qsgd_buckets_by_hand() -> None:
    # v = [0, −2, 0 | 0, 0, 5], s = 2, buckets of 3: norms 2 and 5; the ratios |v_i| s / norm
    # are 0, 2, 0 and 0, 0, 2 — whole levels, so no coin is needed: signed level + s =
    # 2, 0, 2, 2, 2, 4, decoding to norm · (c − s) / s = v exactly. With one norm for the whole
    # tensor (√29) the ratios 0.74 and 1.86 are rounded at random instead.
    v = {"w": torch.tensor([0.0, -2.0, 0.0, 0.0, 0.0, 5.0])}
    comp = QSGD(levels=2, chunk=3)
    enc = comp.prepare(v, 1.0, CTX)
    assert enc["w"].scale.tolist() == [2.0, 5.0]
    assert unpack_bits(enc["w"].codes, 3, 6).tolist() == [2, 0, 2, 2, 2, 4]
    assert comp.decompress(enc)["w"].tolist() == [0.0, -2.0, 0.0, 0.0, 0.0, 5.0]
    # d = 1000, s = 3 (3 bits): 375 bytes of levels; buckets of 256: 4 norms, 16 bytes -> 391
    t = {"w": torch.randn(10, 100)}
    for q, want in [(QSGD(levels=3, chunk=256), 391), (QSGD(levels=3), 379)]:
        assert tree_nbytes(q.prepare(t, 1.0, CTX)) == q.theoretical_nbytes(1000, 4) == want


def _sparse(idx: list[int], vals: list[float], **kw: object) -> Sparse:
    leaf = Sparse(
        index=torch.tensor(idx, dtype=torch.int32),
        values=torch.tensor(vals, dtype=torch.float32),
        shape=(2, 2),
        dtype=torch.float32,
    )
    return dataclasses.replace(leaf, **kw)  # type: ignore[arg-type]


def test_sparse_decode_by_hand() -> None:
    comp = TopK(fraction=0.5)  # d = 4 -> k = 2
    dense = comp.decode(_sparse([1, 3], [2.0, -1.0]))
    assert dense.tolist() == [[0.0, 2.0], [0.0, -1.0]]


@pytest.mark.parametrize(
    ("leaf", "message"),
    [
        (_sparse([1, 4], [1.0, 1.0]), r"indices: outside \[0, 4\)"),  # index 4 of a 2x2 tensor
        (_sparse([-1, 2], [1.0, 1.0]), "indices: outside"),
        (_sparse([2, 2], [1.0, 1.0]), "indices: not strictly increasing"),  # repeated
        (_sparse([3, 1], [1.0, 1.0]), "indices: not strictly increasing"),  # unsorted
        (
            _sparse([1], [1.0]),
            "indices: expected a 1-D torch.int32 tensor of 2 elements",
        ),  # wrong length
        (_sparse([1, 2], [1.0, float("nan")]), "values: a NaN"),
        (
            _sparse([1, 2], [1.0, 1.0], index=torch.tensor([1, 2])),
            "indices: expected a 1-D torch.int32",
        ),  # int64 indices
        (
            _sparse([1, 2], [1.0, 1.0], values=torch.tensor([1.0, 2.0], dtype=torch.float64)),
            "values: expected a 1-D torch.float32",
        ),
    ],
)
def test_sparse_decode_refuses_a_hostile_payload(leaf: Sparse, message: str) -> None:
    with pytest.raises(CompressError, match=message):
        TopK(fraction=0.5).decode(leaf)


def _packed(codes: list[int], scale: list[float]) -> Packed:
    return Packed(
        codes=torch.tensor(codes, dtype=torch.uint8),
        scale=torch.tensor(scale, dtype=torch.float32),
        shape=(4,),
        dtype=torch.float32,
    )


@pytest.mark.parametrize(
    ("comp", "leaf", "message"),
    [
        (
            QSGD(levels=1),
            _packed([0b11_00_01_10], [1.0]),
            "packed codes: a code of 3 above the top 2",
        ),  # code 3 > 2s = 2
        (
            QSGD(levels=1),
            _packed([6, 6], [1.0]),
            "packed codes: expected a 1-D torch.uint8 tensor of 1 elements",
        ),  # 2 bytes for 4 2-bit codes
        (QSGD(levels=1), _packed([6], [float("inf")]), "scales: a NaN or infinite"),
        (
            QSGD(levels=1),
            _packed([6], [1.0, 2.0]),
            "scales: expected a 1-D torch.float32 tensor of 1 elements",
        ),
        (
            Uniform(bits=2),
            _packed([6], [0.0]),
            "scales: expected a 1-D torch.float32 tensor of 2 elements",
        ),
        (Uniform(bits=2), _packed([6], [0.0, float("nan")]), "scales: a NaN or infinite"),
        (
            QSGD(levels=1, chunk=2),
            _packed([6], [1.0]),
            "scales: expected a 1-D torch.float32 tensor of 2 elements",
        ),  # 4 coordinates in buckets of 2: two norms
        (
            Uniform(bits=2, chunk=2),
            _packed([6], [0.0, 1.0]),
            "scales: expected a 1-D torch.float32 tensor of 4 elements",
        ),  # 4 coordinates in chunks of 2: two (lo, step) pairs, not one
        (
            Uniform(bits=2, chunk=2),
            _packed([6], [0.0, 1.0, float("inf"), 1.0]),
            "scales: a NaN or infinite",
        ),
        (SignCompressor(), _packed([6, 0], [1.0]), "1 elements"),  # 4 sign bits fit one byte
        (
            Uniform(bits=2),
            _packed([6], [0.0, 1.0]).__class__(
                codes=torch.tensor([6]),
                scale=torch.tensor([0.0, 1.0]),
                shape=(4,),
                dtype=torch.float32,
            ),
            "uint8",
        ),  # int64 codes
    ],
)
def test_packed_decode_refuses_a_hostile_payload(comp: object, leaf: Packed, message: str) -> None:
    with pytest.raises(CompressError, match=message):
        comp.decode(leaf)  # type: ignore[attr-defined]


def test_the_server_refuses_a_hostile_update_before_folding() -> None:
    comp = TopK(fraction=0.5, inner=WeightedMean())
    good = comp.prepare({"w": torch.tensor([[1.0, -3.0], [2.0, 0.5]])}, 1.0, CTX)
    acc = comp.zero(good)
    bad = {"w": dataclasses.replace(good["w"], index=torch.tensor([0, 7], dtype=torch.int32))}
    with pytest.raises(CompressError, match="outside"):
        comp.add(acc, bad, 1.0)
    acc = comp.add(acc, good, 1.0)
    # top-2 of [1, -3, 2, 0.5] = -3 (position 1) and 2 (position 2)
    assert comp.result(acc, CTX)["w"].tolist() == [[0.0, -3.0], [2.0, 0.0]]


def test_long_streams_round_trip_for_every_width() -> None:
    # 20 codes: more than one byte for every width (the fast path's codes per byte, 8 // bits)
    for bits in range(1, 9):
        codes = [(7 * i + 3) % (1 << bits) for i in range(20)]
        packed = pack_bits(torch.tensor(codes), bits)
        assert packed.numel() == packed_length(20, bits)
        assert unpack_bits(packed, bits, 20).tolist() == codes


def test_three_unsorted_indices_are_refused() -> None:
    # d = 4, fraction 0.75 -> k = 3: [0, 3, 2] is not increasing though both later ones exceed 0
    leaf = Sparse(
        index=torch.tensor([0, 3, 2], dtype=torch.int32),
        values=torch.tensor([1.0, 2.0, 3.0]),
        shape=(4,),
        dtype=torch.float32,
    )
    with pytest.raises(CompressError, match="not strictly increasing"):
        TopK(fraction=0.75).decode(leaf)


def test_integer_tensors_pass_through_unencoded() -> None:
    comp = TopK(fraction=0.5)
    update = {"w": torch.tensor([1.0, -5.0, 3.0, 0.5]), "n": torch.tensor([5, 7, 0, 2])}
    enc = comp.prepare(update, 1.0, CTX)
    assert isinstance(enc["w"], Sparse) and torch.equal(enc["n"], update["n"])
    out = comp.decompress(enc)
    assert out["n"].tolist() == [5, 7, 0, 2] and out["w"].tolist() == [0.0, -5.0, 3.0, 0.0]


def test_chunk_bounds() -> None:
    # the largest chunk is allowed, one more is refused (a typed setting error, not a crash)
    assert Uniform(bits=3, chunk=MAX_CHUNK).chunk == MAX_CHUNK
    assert QSGD(levels=3, chunk=MAX_CHUNK).chunk == MAX_CHUNK
    with pytest.raises(ValueError):
        Uniform(bits=3, chunk=MAX_CHUNK + 1)
    with pytest.raises(ValueError):
        QSGD(levels=3, chunk=-1)
