"""A worker's evaluation metadata: the personal model's score travels beside the global one,
and malformed or out-of-range entries are refused with a typed error."""

from __future__ import annotations

import math

import pytest

from fedkit.net.errors import ErrorCode, NetError
from fedkit.net.payload import EvalMeta


def test_personal_scores_round_trip_exactly_and_are_optional() -> None:
    m = EvalMeta(
        loss=0.1 + 0.2, accuracy=2 / 3, num_examples=9, personal_loss=0.7, personal_accuracy=8 / 9
    )
    back = EvalMeta.from_metadata(m.to_metadata())
    assert back == m
    plain = EvalMeta(loss=0.5, accuracy=0.25, num_examples=4)
    meta = plain.to_metadata()
    assert not any("personal" in k for k in meta)
    assert EvalMeta.from_metadata(meta) == plain


@pytest.mark.parametrize(
    "change",
    [
        {"personal_accuracy": (1.5).hex()},  # out of [0, 1]
        {"personal_accuracy": "zz"},  # not a float
    ],
)
def test_bad_personal_entries_are_refused(change: dict[str, str]) -> None:
    m = EvalMeta(loss=0.5, accuracy=0.5, num_examples=2, personal_loss=0.1, personal_accuracy=0.9)
    meta = m.to_metadata()
    key = next(k for k in meta if k.endswith("personal_accuracy"))
    meta[key] = next(iter(change.values()))
    with pytest.raises(NetError) as err:
        EvalMeta.from_metadata(meta)
    assert err.value.code == ErrorCode.MALFORMED


def test_half_of_the_personal_pair_is_refused() -> None:
    meta = EvalMeta(
        loss=0.5, accuracy=0.5, num_examples=2, personal_loss=0.1, personal_accuracy=0.9
    ).to_metadata()
    del meta[next(k for k in meta if k.endswith("personal_loss"))]
    with pytest.raises(NetError) as err:
        EvalMeta.from_metadata(meta)
    assert err.value.code == ErrorCode.MALFORMED
    assert math.isnan(
        EvalMeta.from_metadata(
            EvalMeta(loss=math.nan, accuracy=math.nan, num_examples=0).to_metadata()
        ).loss
    )
