"""Norm bounding (Sun et al. 2019): the server scales each received update to L2 norm ≤ M before
the weighted mean — values worked by hand, the bound on one client's influence by Hypothesis, and
refusals."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit.aggregate import (
    AggContext,
    EmptyAggregateError,
    NonFiniteUpdateError,
    WeightedMean,
    aggregate,
)
from fedkit.experiment.config import ConfigError
from fedkit.privacy.clip import global_norm
from fedkit.robust import NormBound, TrimmedMean
from tests.unit.test_registry import cfg_of

CTX = AggContext(round=0, seed=0)


def _ab(a: float, b: float) -> dict[str, torch.Tensor]:
    return {"a": torch.tensor([a]), "b": torch.tensor([b])}


def test_server_scales_updates_above_the_bound_before_the_weighted_mean() -> None:
    agg = NormBound(max_norm=1.0)
    big = _ab(3.0, 4.0)  # ‖Δ‖ = √(9 + 16) = 5 > 1 → Δ · 1/5 = (0.6, 0.8)
    small = _ab(0.3, 0.4)  # ‖Δ‖ = 0.5 ≤ 1 → unchanged
    got = agg.result(aggregate(agg, [(big, 1.0), (small, 3.0)]), CTX)
    # weighted mean with weights 1 and 3: a = (0.6 + 3·0.3)/4 = 0.375, b = (0.8 + 3·0.4)/4 = 0.5
    assert got["a"].item() == pytest.approx(0.375)
    assert got["b"].item() == pytest.approx(0.5)
    # the received update itself is not modified in place
    assert big["a"].item() == 3.0 and big["b"].item() == 4.0


def test_the_client_side_step_does_not_clip_so_skipping_it_gains_nothing() -> None:
    agg = NormBound(max_norm=2.0)
    attack = {"w": torch.tensor([0.0, 1e6])}
    assert agg.prepare(attack, 1.0, CTX) is attack  # prepare (on the client) is the identity
    honest = {"w": torch.tensor([1.0, 0.0])}
    # the server scales the un-prepared attack to norm 2: (0, 2); mean of (1, 0) and (0, 2)
    got = agg.result(aggregate(agg, [(honest, 1.0), (attack, 1.0)]), CTX)
    assert got["w"].tolist() == pytest.approx([0.5, 1.0])


def test_updates_within_the_bound_give_the_plain_weighted_mean_bit_for_bit() -> None:
    ups = [({"w": torch.tensor([0.1, -0.2]), "s": torch.tensor(0.3)}, 2.0)]
    ups.append(({"w": torch.tensor([-0.4, 0.25]), "s": torch.tensor(-0.1)}, 5.0))
    agg = NormBound(max_norm=0.6)  # norms √0.14 ≈ 0.374 and √0.2325 ≈ 0.482
    mean = WeightedMean[dict[str, torch.Tensor]]()
    got = agg.result(aggregate(agg, ups), CTX)
    want = mean.result(aggregate(mean, ups), CTX)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_the_bound_is_one_norm_over_every_leaf_and_keeps_dtypes() -> None:
    agg = NormBound(max_norm=1.0, inner=TrimmedMean(beta=0.0))  # β = 0 of one: the update itself
    up = {"x": torch.tensor([2.0], dtype=torch.float64), "y": torch.tensor([[0.0, 2.0]])}
    # ‖Δ‖ = √(4 + 4) = 2√2 over both leaves together → each scaled by 1/(2√2)
    got = agg.result(aggregate(agg, [(up, 1.0)]), CTX)
    assert got["x"].dtype == torch.float64 and got["y"].dtype == torch.float32
    assert got["x"].item() == pytest.approx(2**-0.5)
    assert got["y"][0].tolist() == pytest.approx([0.0, 2**-0.5])


def test_norm_bounding_composes_with_a_buffering_rule() -> None:
    chain = NormBound(max_norm=2.0, inner=TrimmedMean(beta=0.2))
    ups = [{"w": torch.tensor([v])} for v in (1.0, 1.5, -30.0, 0.5, 40.0)]
    # scaled to norm ≤ 2: 1, 1.5, −2, 0.5, 2 → trim one at each end → mean(0.5, 1, 1.5) = 1
    got = chain.result(aggregate(chain, [(u, 1.0) for u in ups]), CTX)
    assert got["w"].item() == pytest.approx(1.0)


@settings(max_examples=60, deadline=None)
@given(
    honest=st.lists(
        st.tuples(st.floats(-10, 10), st.floats(-10, 10), st.floats(0.1, 10.0)),
        min_size=1,
        max_size=6,
    ),
    direction=st.tuples(st.floats(-1, 1), st.floats(-1, 1)).filter(lambda d: math.hypot(*d) > 1e-3),
    scale=st.floats(1.0, 1e30),
    attacker_weight=st.floats(0.1, 10.0),
    bound=st.floats(0.1, 5.0),
)
def test_one_client_moves_the_result_by_at_most_its_weight_share_of_the_bound(
    honest: list[tuple[float, float, float]],
    direction: tuple[float, float],
    scale: float,
    attacker_weight: float,
    bound: float,
) -> None:
    """With the attacker's update x and the same round without its content (x = 0),
    r(x) − r(0) = α_a · clip(x) / Σα, so ‖r(x) − r(0)‖ ≤ α_a M / Σα however large x is; and every
    result lies in the ball of radius M (a convex combination of points in it)."""
    agg = NormBound(max_norm=bound)
    ups = [({"w": torch.tensor([x, y], dtype=torch.float64)}, w) for x, y, w in honest]
    attack = {"w": scale * torch.tensor(direction, dtype=torch.float64)}
    zero = {"w": torch.zeros(2, dtype=torch.float64)}
    with_attack = agg.result(aggregate(agg, [*ups, (attack, attacker_weight)]), CTX)
    without = agg.result(aggregate(agg, [*ups, (zero, attacker_weight)]), CTX)
    total = sum(w for *_, w in honest) + attacker_weight
    shift = global_norm({"d": with_attack["w"] - without["w"]})
    assert shift <= attacker_weight * bound / total * (1 + 1e-9) + 1e-12
    assert global_norm(with_attack) <= bound * (1 + 1e-9)
    # the plain weighted mean has no such bound: it moves with the attacker's scale
    mean = WeightedMean[dict[str, torch.Tensor]]()
    plain = mean.result(aggregate(mean, [*ups, (attack, attacker_weight)]), CTX)
    raw = mean.result(aggregate(mean, [*ups, (zero, attacker_weight)]), CTX)
    expected = attacker_weight * scale * math.hypot(*direction) / total
    assert global_norm({"d": plain["w"] - raw["w"]}) == pytest.approx(expected, rel=1e-6)


def test_refuses_bad_bounds_non_finite_updates_and_empty_rounds() -> None:
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=r"^max_norm must be a finite number > 0, got "):
            NormBound(max_norm=bad)
    agg = NormBound(max_norm=1.0)
    acc = agg.zero(_ab(0.0, 0.0))
    for bad_value in (float("nan"), float("inf")):
        with pytest.raises(NonFiniteUpdateError, match="non-finite"):
            agg.add(acc, _ab(bad_value, 0.0), 1.0)
    with pytest.raises(ValueError, match="aggregation weight must be >= 0"):
        agg.add(acc, _ab(1.0, 0.0), -1.0)  # the inner mean's check still applies
    with pytest.raises(EmptyAggregateError):
        agg.result(acc, CTX)


def test_built_from_the_experiment_file_by_its_registry_name() -> None:
    cfg = cfg_of(aggregator={"name": "norm_bound", "max_norm": 0.5})
    assert cfg.algorithm is not None
    assert cfg.algorithm.algorithm.aggregator == NormBound(max_norm=0.5)
    with pytest.raises(ConfigError, match="max_norm"):
        cfg_of(aggregator={"name": "norm_bound", "max_norm": -1.0})
