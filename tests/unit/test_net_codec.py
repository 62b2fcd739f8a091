"""Unit tests of the wire codec: caps before buffering, checksums, schema checks, bad headers."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from fedkit.net.codec import (
    CHUNK_BYTES,
    Reassembler,
    TensorSpec,
    decode,
    encode,
    read_header,
    split,
    template_of,
)
from fedkit.net.errors import ErrorCode, NetError
from fedkit.net.proto import fedkit_pb2 as pb

PARAMS = {"w": torch.randn(4, 3), "b": torch.zeros(3)}


def code_of(exc: pytest.ExceptionInfo[NetError]) -> ErrorCode:
    return exc.value.code


def test_declared_size_over_cap_is_refused_before_allocation() -> None:
    with pytest.raises(NetError) as e:
        # 1 TiB declared: refused at construction, nothing allocated.
        Reassembler(declared_bytes=1 << 40, declared_chunks=1 << 18, max_bytes=10 << 20)
    assert code_of(e) is ErrorCode.PAYLOAD_TOO_LARGE


def test_decode_respects_cap() -> None:
    data = encode(PARAMS)
    with pytest.raises(NetError) as e:
        decode(data, max_bytes=len(data) - 1)
    assert code_of(e) is ErrorCode.PAYLOAD_TOO_LARGE


def test_corrupted_chunk_is_refused() -> None:
    data = encode(PARAMS)
    chunks = split(data, 32)
    bad = pb.Chunk(
        index=1, data=bytes([chunks[1].data[0] ^ 1]) + chunks[1].data[1:], sha256=chunks[1].sha256
    )
    r = Reassembler(
        declared_bytes=len(data), declared_chunks=len(chunks), max_bytes=len(data), chunk_bytes=32
    )
    r.add(chunks[0])
    with pytest.raises(NetError) as e:
        r.add(bad)
    assert code_of(e) is ErrorCode.CHECKSUM_MISMATCH


def test_out_of_order_oversized_and_missing_chunks() -> None:
    data = bytes(range(200))
    chunks = split(data, 64)
    r = Reassembler(declared_bytes=200, declared_chunks=4, max_bytes=200, chunk_bytes=64)
    with pytest.raises(NetError) as e:
        r.add(chunks[1])
    assert code_of(e) is ErrorCode.MALFORMED
    r.add(chunks[0])
    with pytest.raises(NetError) as e:
        r.result()
    assert code_of(e) is ErrorCode.MALFORMED
    big = split(b"x" * 65, 65)[0]
    big.index = 1
    with pytest.raises(NetError) as e:
        r.add(big)
    assert code_of(e) is ErrorCode.MALFORMED
    with pytest.raises(NetError) as e:
        Reassembler(declared_bytes=200, declared_chunks=2, max_bytes=200, chunk_bytes=64)
    assert code_of(e) is ErrorCode.MALFORMED


def test_split_never_exceeds_4_mib() -> None:
    data = bytes(CHUNK_BYTES * 2 + 5)
    chunks = split(data)
    assert [len(c.data) for c in chunks] == [CHUNK_BYTES, CHUNK_BYTES, 5]
    with pytest.raises(ValueError, match="chunk_bytes"):
        split(data, CHUNK_BYTES + 1)


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        (
            {
                "w": TensorSpec(dtype=torch.float64, shape=(4, 3)),
                "b": TensorSpec(dtype=torch.float32, shape=(3,)),
            },
            "float64",
        ),
        (
            {
                "w": TensorSpec(dtype=torch.float32, shape=(3, 4)),
                "b": TensorSpec(dtype=torch.float32, shape=(3,)),
            },
            "[3, 4]",
        ),
        ({"w": TensorSpec(dtype=torch.float32, shape=(4, 3))}, "unexpected ['b']"),
        ({**template_of(PARAMS), "c": TensorSpec(dtype=torch.float32, shape=())}, "missing ['c']"),
    ],
)
def test_schema_mismatch(template: dict[str, TensorSpec], fragment: str) -> None:
    with pytest.raises(NetError) as e:
        decode(encode(PARAMS), template=template)
    assert code_of(e) is ErrorCode.SCHEMA_MISMATCH
    assert fragment in e.value.detail


def _raw(header: object, body: bytes = b"") -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + body


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 7,
        struct.pack("<Q", 10**9) + b"{}",
        struct.pack("<Q", 3) + b"{x}",
        _raw([1, 2]),
        _raw({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\x00" * 4),
        _raw({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\x00" * 8),
        _raw({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\x00" * 8),
        _raw({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\x00" * 4),
        _raw({"__metadata__": {"k": 1}}),
        _raw({"a": {"dtype": "F32", "shape": [1]}}, b"\x00" * 4),
    ],
)
def test_malformed_headers(data: bytes) -> None:
    with pytest.raises(NetError) as e:
        decode(data)
    assert code_of(e) is ErrorCode.MALFORMED


def test_unknown_dtype_is_schema_mismatch() -> None:
    data = _raw({"a": {"dtype": "PICKLE", "shape": [1], "data_offsets": [0, 4]}}, b"\x00" * 4)
    with pytest.raises(NetError) as e:
        read_header(data)
    assert code_of(e) is ErrorCode.SCHEMA_MISMATCH
