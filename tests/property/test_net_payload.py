"""Typed payload trees survive the wire exactly, and only in the shape the receiver expects."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit.algorithm import RoundInfo
from fedkit.net.errors import ErrorCode, NetError
from fedkit.net.payload import (
    ResultMeta,
    check_tree_header,
    decode_tree,
    encode_tree,
    info_from_metadata,
    info_metadata,
)


@dataclasses.dataclass(frozen=True)
class Msg:
    params: dict[str, torch.Tensor]
    control: torch.Tensor
    lr: float
    step: int
    flag: bool
    note: str


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=50, deadline=None)
@given(finite, st.integers(-(2**62), 2**62), st.booleans(), st.text(max_size=10), st.integers(0, 9))
def test_tree_round_trip(lr: float, step: int, flag: bool, note: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    msg = Msg(
        params={"a.w": torch.randn(3, 2, generator=g), "b": torch.randn(4, generator=g).double()},
        control=torch.randint(0, 9, (5,), generator=g),
        lr=lr, step=step, flag=flag, note=note,
    )  # fmt: skip
    template = Msg(
        params={"a.w": torch.zeros(3, 2), "b": torch.zeros(4, dtype=torch.float64)},
        control=torch.zeros(5, dtype=torch.int64), lr=0.0, step=0, flag=False, note="",
    )  # fmt: skip
    data = encode_tree(msg)
    check_tree_header(data, template)
    out, _ = decode_tree(data, template)
    assert out.lr == lr and out.step == step and out.flag == flag and out.note == note
    assert torch.equal(out.control, msg.control)
    assert all(torch.equal(out.params[k], msg.params[k]) for k in msg.params)


def test_template_mismatch_is_typed() -> None:
    msg = Msg(params={"w": torch.zeros(2)}, control=torch.zeros(1), lr=1.0, step=1, flag=True,
              note="x")  # fmt: skip
    other = dataclasses.replace(msg, params={"w": torch.zeros(3)})
    with pytest.raises(NetError) as e:
        decode_tree(encode_tree(msg), other)
    assert e.value.code is ErrorCode.SCHEMA_MISMATCH
    with pytest.raises(NetError) as e:
        check_tree_header(encode_tree(msg), other)
    assert e.value.code is ErrorCode.SCHEMA_MISMATCH


@given(st.integers(0, 10**6), st.integers(0, 2**31), st.integers(1, 10**4), st.integers(1, 10**4))
def test_round_info_round_trip(r: int, seed: int, n: int, k: int) -> None:
    info = RoundInfo(round=r, seed=seed, num_clients=n, cohort_size=k)
    assert info_from_metadata(info_metadata(info)) == info


@given(
    finite.filter(lambda w: w >= 0),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.floats(allow_nan=True, allow_infinity=False),
    st.floats(0.01, 1.0),
    st.floats(0, 1e4),
)
def test_result_meta_round_trip(w: float, n: int, s: int, loss: float, f: float, c: float) -> None:
    m = ResultMeta(weight=w, num_examples=n, steps=s, train_loss=loss, work_fraction=f, compute_s=c)
    back = ResultMeta.from_metadata(m.to_metadata())
    assert back.weight == w and back.num_examples == n and back.work_fraction == f
    assert (math.isnan(loss) and math.isnan(back.train_loss)) or back.train_loss == loss


@pytest.mark.parametrize("bad", [{"result:weight": "-0x1p+0"}, {"result:steps": "x"}, {}])
def test_result_meta_rejects_bad_values(bad: dict[str, str]) -> None:
    good = ResultMeta(weight=1.0, num_examples=1, steps=1, train_loss=0.0, work_fraction=1.0,
                      compute_s=0.0).to_metadata()  # fmt: skip
    meta = {**good, **bad} if bad else {}
    with pytest.raises(NetError) as e:
        ResultMeta.from_metadata(meta)
    assert e.value.code is ErrorCode.MALFORMED
