"""Masked words packed to ⌈bits/8⌉ bytes: round trips, hand-computed bytes, refusals."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fedkit.privacy.secagg.errors import SecAggError
from fedkit.privacy.secagg.packing import pack, unpack, word_bytes


def test_word_widths_and_bytes_by_hand() -> None:
    # ⌈16/8⌉ = 2, ⌈17/8⌉ = 3, ⌈32/8⌉ = 4, ⌈48/8⌉ = 6, ⌈62/8⌉ = 8
    assert [word_bytes(b) for b in (16, 17, 32, 48, 62)] == [2, 3, 4, 6, 8]
    # 0x0102_0304_0506 little-endian in 6 bytes: 06 05 04 03 02 01
    got = pack(torch.tensor([0x010203040506]), 48)
    assert got.tolist() == [[6, 5, 4, 3, 2, 1]]
    assert got.dtype == torch.uint8


@given(
    st.integers(16, 62).flatmap(
        lambda b: st.tuples(st.just(b), st.lists(st.integers(0, 2**b - 1), max_size=20))
    )
)
def test_round_trip(case: tuple[int, list[int]]) -> None:
    bits, values = case
    words = torch.tensor(values, dtype=torch.int64).reshape(-1)
    packed = pack(words, bits)
    assert packed.shape == (len(values), word_bytes(bits))
    assert torch.equal(unpack(packed, bits), words)


def test_shapes_are_kept() -> None:
    words = torch.arange(12, dtype=torch.int64).reshape(3, 4) * 1000
    assert torch.equal(unpack(pack(words, 20), 20), words)
    assert pack(torch.tensor(5), 20).shape == (3,)


def test_refusals() -> None:
    # 20 bits: the third byte may only use its low 4 bits (0x10 = 2^20 is out)
    with pytest.raises(SecAggError, match=r"outside \[0, 2\^20\)"):
        unpack(torch.tensor([[0, 0, 0x10]], dtype=torch.uint8), 20)
    assert int(unpack(torch.tensor([[0xFF, 0xFF, 0x0F]], dtype=torch.uint8), 20)) == 2**20 - 1
    with pytest.raises(SecAggError, match="last dimension of 3 bytes"):
        unpack(torch.zeros(4, 4, dtype=torch.uint8), 20)
    with pytest.raises(SecAggError, match="uint8"):
        unpack(torch.zeros(4, 3, dtype=torch.int16), 20)
    with pytest.raises(SecAggError, match="int64"):
        pack(torch.zeros(3, dtype=torch.int32), 20)
