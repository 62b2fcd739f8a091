"""Krum and Multi-Krum (Blanchard et al. 2017): scores worked by hand over whole updates, ties to
the earlier arrival, the honest selection when Byzantine updates are far, and refusals."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit.aggregate import AggContext, EmptyAggregateError, aggregate
from fedkit.experiment.config import ConfigError
from fedkit.registry import AGGREGATORS
from fedkit.robust import Krum, TooFewUpdatesError
from fedkit.robust.krum import krum_scores, pairwise_sq_distances
from tests.unit.test_registry import cfg_of

CTX = AggContext(round=0, seed=0)


def _u(*values: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor(values, dtype=torch.float32)}


def _krum(agg: Krum, ups: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = agg.result(aggregate(agg, [(u, 1.0) for u in ups]), CTX)
    return out


# Two leaves, a = [x] and b = scalar y; n = 5, f = 1 → each score sums the n − f − 2 = 2 nearest.
#   u0 (0, 0)  u1 (1, 0)  u2 (0, 2)  u3 (3, 3)  u4 (-10, 10)
# squared distances over (a, b) together:
#   0-1: 1   0-2: 4   0-3: 9+9 = 18    0-4: 100+100 = 200
#   1-2: 1+4 = 5      1-3: 4+9 = 13    1-4: 121+100 = 221
#   2-3: 9+1 = 10     2-4: 100+64 = 164
#   3-4: 169+49 = 218
# scores: u0 1+4 = 5, u1 1+5 = 6, u2 4+5 = 9, u3 10+13 = 23, u4 164+200 = 364
TWO_LEAVES = [(0.0, 0.0), (1.0, 0.0), (0.0, 2.0), (3.0, 3.0), (-10.0, 10.0)]


def _two(a: float, b: float) -> dict[str, torch.Tensor]:
    return {"a": torch.tensor([a]), "b": torch.tensor(b)}


def test_scores_sum_the_nearest_squared_distances_over_every_leaf() -> None:
    agg = Krum(f=1)
    acc = aggregate(agg, [(_two(a, b), 1.0) for a, b in TWO_LEAVES])
    rows = torch.tensor([[a, b] for a, b in TWO_LEAVES], dtype=torch.float64)
    d2 = pairwise_sq_distances(rows)
    assert d2[0].tolist() == [0.0, 1.0, 4.0, 18.0, 200.0]
    assert d2[3, 4] == d2[4, 3] == 218.0
    assert krum_scores(d2, 2).tolist() == [5.0, 6.0, 9.0, 23.0, 364.0]
    # Krum: u0; Multi-Krum m = 3: mean of u0, u1, u2 = (1/3, 2/3)
    got = agg.result(acc, CTX)
    assert got["a"].tolist() == [0.0] and float(got["b"]) == 0.0
    multi = Krum(f=1, m=3).result(acc, CTX)
    assert multi["a"].tolist() == [pytest.approx(1 / 3)]
    assert float(multi["b"]) == pytest.approx(2 / 3)
    assert multi["b"].shape == () and multi["a"].dtype == torch.float32


def test_ties_go_to_the_earlier_arrival_and_multi_krum_averages_plainly() -> None:
    # 1-D, n = 5, f = 1 → 2 nearest; values 0, 1, 2, 3, 100:
    #   0: 1 + 4 = 5    1: 1 + 1 = 2    2: 1 + 1 = 2    3: 1 + 4 = 5    100: 97² + 98² = 19013
    ups = [_u(v) for v in (0.0, 1.0, 2.0, 3.0, 100.0)]
    assert _krum(Krum(f=1), ups)["w"].tolist() == [1.0]  # 1 and 2 tie: 1 arrived first
    assert _krum(Krum(f=1), ups[::-1])["w"].tolist() == [2.0]  # reversed: 2 arrived first
    # Multi-Krum by score, ties by arrival: 1, 2, 0, 3, 100
    assert _krum(Krum(f=1, m=2), ups)["w"].tolist() == [1.5]  # (1 + 2) / 2
    assert _krum(Krum(f=1, m=3), ups)["w"].tolist() == [1.0]  # (1 + 2 + 0) / 3
    assert _krum(Krum(f=1, m=4), ups)["w"].tolist() == [1.5]  # (1 + 2 + 0 + 3) / 4
    assert _krum(Krum(f=1, m=5), ups)["w"].tolist() == [pytest.approx(106 / 5)]  # the mean
    # the weights are not used: a huge weight on 100 changes nothing
    agg = Krum(f=1, m=2)
    acc = aggregate(agg, [(u, 1e9 if i == 4 else 1.0) for i, u in enumerate(ups)])
    assert agg.result(acc, CTX)["w"].tolist() == [1.5]


def test_f_zero_scores_with_n_minus_two_neighbours() -> None:
    # n = 3, f = 0 → 1 nearest: 0: 1, 1: 1, 5: 16 → 0 (tie with 1, earlier)
    assert _krum(Krum(f=0), [_u(0.0), _u(1.0), _u(5.0)])["w"].tolist() == [0.0]
    # n = 4, f = 0 → 2 nearest; 0, 1, 3, 4: 0: 1+9 = 10, 1: 1+4 = 5, 3: 1+4 = 5, 4: 1+9 = 10
    assert _krum(Krum(f=0, m=2), [_u(v) for v in (0.0, 1.0, 3.0, 4.0)])["w"].tolist() == [2.0]


def test_float64_updates_are_returned_exactly() -> None:
    x = 1.0 + 2.0**-40
    ups = [{"w": torch.tensor([v], dtype=torch.float64)} for v in (x, x + 1, x + 2, 50.0)]
    got = _krum(Krum(f=0), ups)["w"]  # 2 nearest: x: 1+4, x+1: 1+1, x+2: 1+4 → x + 1
    assert got.dtype == torch.float64 and float(got[0]) == x + 1


def test_refuses_bad_settings_too_small_rounds_and_empty_rounds() -> None:
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=r"^f must be an int >= 0"):
            Krum(f=bad)  # type: ignore[arg-type]
    for bad in (0, 2.0, False):
        with pytest.raises(ValueError, match=r"^m must be an int >= 1"):
            Krum(m=bad)  # type: ignore[arg-type]
    four = [_u(float(v)) for v in range(4)]
    with pytest.raises(TooFewUpdatesError, match=r"^Krum with f=1 needs more than 2f \+ 2 = 4 "):
        _krum(Krum(f=1), four)  # n = 4 = 2f + 2
    assert _krum(Krum(f=1), [*four, _u(9.0)])["w"].tolist() == [1.0]  # n = 5 is enough
    with pytest.raises(TooFewUpdatesError, match=r"^Multi-Krum averages m=5 updates, got only 4$"):
        _krum(Krum(f=0, m=5), four)
    assert issubclass(TooFewUpdatesError, EmptyAggregateError)
    agg = Krum(f=0)
    with pytest.raises(EmptyAggregateError, match=r"^no client update to score$"):
        agg.result(agg.zero(_u(0.0)), CTX)
    assert AGGREGATORS.load("krum") is Krum


_HONEST = st.floats(-1, 1, allow_nan=False, width=32)
_FREE = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 3),
    st.integers(0, 4),
    st.data(),
)
def test_krum_selects_an_honest_update_when_the_byzantine_ones_are_far(
    f: int, extra: int, data: st.DataObject
) -> None:
    # h = n − f honest updates in the box [-1, 1]^3, whose diameter is δ = 2√3: an honest score
    # is at most (n − f − 2)δ². Every Byzantine update has a first coordinate beyond ±(1 + δ√n),
    # so it is farther than δ√n from every honest one, and its n − f − 2 nearest include at least
    # n − 2f − 1 >= 2 honest ones (only f − 1 others are Byzantine): its score exceeds 2nδ².
    # Byzantine updates may coincide (colluding).
    n = 2 * f + 3 + extra
    h = n - f
    honest = [data.draw(st.tuples(_HONEST, _HONEST, _HONEST)) for _ in range(h)]
    edge = 1.0 + 2.0 * math.sqrt(3.0) * math.sqrt(n) + 1e-3
    byz = []
    for _ in range(f):
        sign = data.draw(st.sampled_from([-1.0, 1.0]))
        first = sign * (edge + data.draw(st.floats(0, 1e6, allow_nan=False)))
        byz.append((first, data.draw(_FREE), data.draw(_FREE)))
    order = data.draw(st.permutations(range(n)))
    pool = honest + byz
    ups = [_u(*pool[i]) for i in order]
    m = data.draw(st.integers(1, h))
    got = _krum(Krum(f=f), ups)["w"]
    assert any(torch.equal(got, _u(*v)["w"]) for v in honest)  # one of the honest, exactly
    multi = _krum(Krum(f=f, m=m), ups)["w"]
    assert bool((multi.abs() <= 1.0).all())  # an average of honest updates only


def test_built_from_the_experiment_file_by_its_registry_name() -> None:
    cfg = cfg_of(aggregator={"name": "krum", "f": 0, "m": 2})
    assert cfg.algorithm is not None
    assert cfg.algorithm.algorithm.aggregator == Krum(f=0, m=2)
    with pytest.raises(ConfigError, match=r"aggregator\.m must be an int >= 1, got 0"):
        cfg_of(aggregator={"name": "krum", "m": 0})
    with pytest.raises(ConfigError, match=r"aggregator\.f must be an int"):
        cfg_of(aggregator={"name": "krum", "f": 1.5})


def test_scores_are_exact_in_float64_where_float32_would_tie() -> None:
    # (1e4 - 1)² = 99 980 001 needs 27 bits: float32 (24-bit mantissa) would round it to
    # 99 980 000, and nearby scores of large updates would tie; Krum ranks by float64 distances.
    d2 = pairwise_sq_distances(torch.tensor([[0.0], [1.0], [1e4 + 1], [1e4 + 3], [1e4]]).double())
    assert d2.dtype == torch.float64
    assert float(d2[1, 4]) == 99_980_001.0 and float(d2[0, 4]) == 1e8
    assert float(d2[0, 4]) - float(d2[1, 4]) == 19_999.0
