"""Property tests: safetensors payloads and chunking round-trip exactly."""

from __future__ import annotations

import hypothesis.strategies as st
import torch
from hypothesis import given, settings

from fedkit.net.codec import Reassembler, decode, encode, num_chunks, split, template_of

DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.uint8,
    torch.bool,
]


@st.composite
def tensors(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    names = draw(st.lists(st.text("abcdefgh._", min_size=1, max_size=12), max_size=6, unique=True))
    out: dict[str, torch.Tensor] = {}
    for i, name in enumerate(names):
        shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
        dtype = draw(st.sampled_from(DTYPES))
        g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)) + i)
        t = torch.randn(shape, generator=g) * 100
        out[name] = t.to(dtype)
    return out


@settings(max_examples=60, deadline=None)
@given(tensors(), st.dictionaries(st.text(min_size=1, max_size=5), st.text(max_size=8), max_size=3))
def test_encode_decode_round_trip(ts: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    data = encode(ts, meta)
    out = decode(data, template=template_of(ts), max_bytes=len(data))
    assert set(out.tensors) == set(ts)
    for k, v in ts.items():
        assert out.tensors[k].dtype == v.dtype and out.tensors[k].shape == v.shape
        assert torch.equal(out.tensors[k], v)
    assert out.metadata == meta


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=5000), st.integers(1, 700))
def test_split_reassemble_round_trip(data: bytes, chunk_bytes: int) -> None:
    chunks = split(data, chunk_bytes)
    assert len(chunks) == num_chunks(len(data), chunk_bytes)
    assert all(0 < len(c.data) <= chunk_bytes for c in chunks)
    r = Reassembler(
        declared_bytes=len(data),
        declared_chunks=len(chunks),
        max_bytes=len(data),
        chunk_bytes=chunk_bytes,
    )
    for c in chunks:
        r.add(c)
    assert r.result() == data


def test_non_contiguous_and_shared_tensors_encode() -> None:
    base = torch.arange(12.0).reshape(3, 4)
    ts = {"t": base.t(), "view": base[1], "same": base}
    out = decode(encode(ts)).tensors
    for k, v in ts.items():
        assert torch.equal(out[k], v)


@settings(max_examples=40, deadline=None)
@given(tensors())
def test_interoperates_with_reference_safetensors(ts: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    ours = st_load(encode(ts))  # the reference reader accepts what we write
    theirs = decode(st_save({k: v.contiguous() for k, v in ts.items()})).tensors  # and vice versa
    for k, v in ts.items():
        assert torch.equal(ours[k], v) and torch.equal(theirs[k], v)


def test_unaligned_offsets_decode_from_reassembled_buffer() -> None:
    ts = {
        "a": torch.arange(3, dtype=torch.uint8),
        "b": torch.randn(5),
        "c": torch.randn(2).double(),
    }
    data = encode(ts)
    chunks = split(data, 7)
    r = Reassembler(
        declared_bytes=len(data), declared_chunks=len(chunks), max_bytes=len(data), chunk_bytes=7
    )
    for c in chunks:
        r.add(c)
    out = decode(r.result(), template=template_of(ts)).tensors
    for k, v in ts.items():
        assert torch.equal(out[k], v)
