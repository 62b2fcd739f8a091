"""Coordinate-wise median (Yin et al. 2018): values worked by hand for odd and even cohorts, the
bound under fewer than m/2 arbitrary inputs, invariance to moving outer values further out, merge
order, dtypes, and refusals."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit.aggregate import AggContext, EmptyAggregateError, WeightedMean, aggregate
from fedkit.experiment.config import ConfigError
from fedkit.registry import AGGREGATORS
from fedkit.robust import CoordinateMedian
from tests.unit.test_registry import cfg_of

CTX = AggContext(round=0, seed=0)
MED = CoordinateMedian()


def _u(*values: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor(values, dtype=torch.float32)}


def _median(ups: list[dict[str, torch.Tensor]], weight: float = 1.0) -> torch.Tensor:
    out: torch.Tensor = MED.result(aggregate(MED, [(u, weight) for u in ups]), CTX)["w"]
    return out


def test_odd_cohort_takes_the_middle_value_of_each_coordinate() -> None:
    ups = [_u(1, 10), _u(2, -7), _u(3, 30), _u(100, 20), _u(-50, 0)]
    # coordinate 0: sorted [-50, 1, 2, 3, 100] → 2
    # coordinate 1: sorted [-7, 0, 10, 20, 30] → 10
    assert _median(ups).tolist() == [2.0, 10.0]


def test_even_cohort_averages_the_two_middle_values() -> None:
    ups = [_u(4, 1), _u(1, 1), _u(1000, 2), _u(2, -9)]
    # coordinate 0: sorted [1, 2, 4, 1000] → (2 + 4) / 2 = 3
    # coordinate 1: sorted [-9, 1, 1, 2] → (1 + 1) / 2 = 1
    assert _median(ups).tolist() == [3.0, 1.0]
    # two updates: their mean; one update: itself
    assert _median([_u(1.0, 5.0), _u(2.0, -5.0)]).tolist() == [1.5, 0.0]
    assert _median([_u(7.25, -1.0)]).tolist() == [7.25, -1.0]


def test_weights_do_not_enter_and_one_attacker_of_five_is_bounded() -> None:
    honest = [_u(1.0), _u(1.2), _u(0.8), _u(1.1)]
    attack = _u(1e6)
    acc = aggregate(MED, [(u, 1.0) for u in honest] + [(attack, 1e9)])
    # sorted [0.8, 1.0, 1.1, 1.2, 1e6] → 1.1, whatever the attacker's weight
    assert MED.result(acc, CTX)["w"].tolist() == [pytest.approx(1.1)]
    mean = WeightedMean[dict[str, torch.Tensor]]()
    bad = mean.result(aggregate(mean, [(attack, 1.0), *[(u, 1.0) for u in honest]]), CTX)
    assert float(bad["w"][0]) > 1e5


def test_every_leaf_and_dtype_scalar_and_float64() -> None:
    ups = [
        ({"s": torch.tensor(float(v)), "d": torch.tensor([v + 2.0**-40], dtype=torch.float64)}, 1.0)
        for v in (5.0, -100.0, 1.0, 3.0)
    ]
    got = MED.result(aggregate(MED, ups), CTX)
    # sorted [-100, 1, 3, 5] → (1 + 3) / 2 = 2; the float64 leaf keeps its 2^-40
    assert got["s"].dtype == torch.float32 and float(got["s"]) == 2.0
    assert got["d"].dtype == torch.float64 and float(got["d"][0]) == 2.0 + 2.0**-40


def test_refuses_an_empty_round_and_negative_weights_and_is_registered() -> None:
    with pytest.raises(EmptyAggregateError, match=r"^no client update to take the median of$"):
        MED.result(MED.zero(_u(0.0)), CTX)
    with pytest.raises(ValueError, match="aggregation weight must be >= 0"):
        MED.add(MED.zero(_u(0.0)), _u(1.0), -1.0)
    assert AGGREGATORS.load("median") is CoordinateMedian
    assert MED.prepare(_u(3.0), 1.0, CTX)["w"].tolist() == [3.0]  # identity on the client


_VALUES = st.floats(-100, 100, allow_nan=False, width=32)
_FAR = st.floats(-(2.0**100), 2.0**100, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(_VALUES, _VALUES), min_size=1, max_size=9),
    st.lists(st.tuples(_FAR, _FAR), max_size=8),
    st.randoms(use_true_random=False),
)
def test_fewer_than_half_arbitrary_inputs_keep_each_coordinate_within_the_honest_range(
    honest: list[tuple[float, float]], attack: list[tuple[float, float]], rng: random.Random
) -> None:
    attack = attack[: len(honest) - 1]  # b < m/2  ⇔  b < h
    ups = [_u(*v) for v in honest + attack]
    rng.shuffle(ups)
    got = _median(ups)
    h = torch.tensor(honest, dtype=torch.float32)
    assert bool((got >= h.min(dim=0).values).all()) and bool((got <= h.max(dim=0).values).all())


@settings(max_examples=60, deadline=None)
@given(
    st.lists(_VALUES, min_size=1, max_size=11),
    st.lists(st.floats(0, 2.0**100, allow_nan=False, width=32), min_size=11, max_size=11),
    st.permutations(range(11)),
)
def test_moving_values_outside_the_middle_further_out_leaves_the_median_unchanged(
    values: list[float], push: list[float], perm: list[int]
) -> None:
    m = len(values)
    s = sorted(values)
    # rows above the upper middle (m // 2) go up, rows below the lower middle ((m-1) // 2) down
    moved = [
        v + push[i] if i > m // 2 else v - push[i] if i < (m - 1) // 2 else v
        for i, v in enumerate(s)
    ]
    order = [i for i in perm if i < m]
    before = _median([_u(v) for v in values])
    after = _median([_u(moved[i]) for i in order])
    assert torch.equal(before, after)


@settings(max_examples=40, deadline=None)
@given(st.lists(_VALUES, min_size=1, max_size=12), st.integers(0, 12))
def test_merge_of_two_parts_equals_one_fold(values: list[float], cut: int) -> None:
    ups = [(_u(v, -v), 1.0) for v in values]
    cut = min(cut, len(ups))
    whole = MED.result(aggregate(MED, ups), CTX)["w"]
    left = aggregate(MED, ups[:cut]) if cut else MED.zero(ups[0][0])
    right = aggregate(MED, ups[cut:]) if cut < len(ups) else MED.zero(ups[0][0])
    assert torch.equal(whole, MED.result(MED.merge(right, left), CTX)["w"])


def test_built_from_the_experiment_file_by_its_registry_name() -> None:
    cfg = cfg_of(aggregator={"name": "median"})
    assert cfg.algorithm is not None
    assert cfg.algorithm.algorithm.aggregator == CoordinateMedian()
    with pytest.raises(ConfigError, match=r"unknown key aggregator\.beta"):
        cfg_of(aggregator={"name": "median", "beta": 0.1})
