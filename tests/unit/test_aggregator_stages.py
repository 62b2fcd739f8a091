"""Aggregator stages: the trimmed mean (a buffering rule) and per-client clipping (a wrapper),
against values worked by hand, their monoid laws, and their composition."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit.aggregate import AggContext, EmptyAggregateError, WeightedMean, aggregate
from fedkit.privacy import ClipNorm
from fedkit.privacy.clip import NonFiniteUpdateError
from fedkit.robust import TrimmedMean

CTX = AggContext(round=0, seed=0)


def _u(*values: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor(values, dtype=torch.float32)}


def test_trimmed_mean_drops_the_extremes_of_each_coordinate() -> None:
    # 5 clients, β = 0.2 → k = ⌊0.2·5⌋ = 1 value cut at each end of every coordinate
    ups = [_u(1, 10), _u(2, -7), _u(3, 30), _u(100, 20), _u(-50, 0)]
    agg = TrimmedMean(beta=0.2)
    got = agg.result(aggregate(agg, [(u, 1.0) for u in ups]), CTX)
    # coordinate 0: sorted [-50, 1, 2, 3, 100] → mean(1, 2, 3) = 2
    # coordinate 1: sorted [-7, 0, 10, 20, 30] → mean(0, 10, 20) = 10
    assert got["w"].tolist() == [2.0, 10.0]
    # β = 0.1 of 5 → k = 0: the plain (unweighted) mean
    plain = TrimmedMean(beta=0.1)
    got0 = plain.result(aggregate(plain, [(u, 1.0) for u in ups]), CTX)
    assert got0["w"].tolist() == pytest.approx([56 / 5, 53 / 5])


def test_trimmed_mean_ignores_the_weights_and_bounds_one_attacker() -> None:
    honest = [_u(1.0), _u(1.2), _u(0.8), _u(1.1)]
    attack = _u(1e6)
    agg = TrimmedMean(beta=0.2)
    acc = aggregate(agg, [(u, 1.0) for u in honest] + [(attack, 1e9)])
    got = float(agg.result(acc, CTX)["w"][0])
    assert got == pytest.approx((1.0 + 1.1 + 1.2) / 3, rel=1e-6)
    mean = WeightedMean[dict[str, torch.Tensor]]()
    assert (
        float(
            mean.result(aggregate(mean, [(attack, 1.0), *[(u, 1.0) for u in honest]]), CTX)["w"][0]
        )
        > 1e5
    )


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=1, max_size=12),
    st.integers(0, 12),
    st.permutations(range(12)),
)
def test_trimmed_mean_merge_of_parts_equals_one_fold_in_any_order(
    values: list[float], cut: int, perm: list[int]
) -> None:
    agg = TrimmedMean(beta=0.25)
    ups = [(_u(v, -v), 1.0) for v in values]
    shuffled = [ups[i] for i in perm if i < len(ups)]
    cut = min(cut, len(ups))
    whole = agg.result(aggregate(agg, ups), CTX)["w"]
    left = aggregate(agg, shuffled[:cut]) if cut else agg.zero(ups[0][0])
    right = aggregate(agg, shuffled[cut:]) if cut < len(ups) else agg.zero(ups[0][0])
    merged = agg.result(agg.merge(left, right), CTX)["w"]
    assert torch.equal(whole, merged)


def test_trimmed_mean_refuses_bad_settings_and_empty_rounds() -> None:
    with pytest.raises(ValueError, match="beta"):
        TrimmedMean(beta=0.5)
    agg = TrimmedMean()
    with pytest.raises(EmptyAggregateError):
        agg.result(agg.zero(_u(0.0)), CTX)


def test_clip_scales_only_updates_above_the_bound_then_defers_to_inner() -> None:
    clip = ClipNorm(max_norm=1.0)
    big = {"a": torch.tensor([3.0]), "b": torch.tensor([4.0])}  # ‖Δ‖ = 5 → scaled by 1/5
    small = {"a": torch.tensor([0.3]), "b": torch.tensor([0.4])}  # ‖Δ‖ = 0.5 → unchanged
    pb = clip.prepare(big, 1.0, CTX)
    assert pb["a"].item() == pytest.approx(0.6) and pb["b"].item() == pytest.approx(0.8)
    assert clip.prepare(small, 1.0, CTX) is small
    acc = aggregate(clip, [(pb, 1.0), (small, 3.0)])
    got = clip.result(acc, CTX)
    assert got["a"].item() == pytest.approx((0.6 + 3 * 0.3) / 4)
    with pytest.raises(NonFiniteUpdateError):
        clip.prepare({"a": torch.tensor([float("nan")])}, 1.0, CTX)
    with pytest.raises(ValueError, match="max_norm"):
        ClipNorm(max_norm=0.0)


def test_stages_compose_clip_then_trimmed_mean() -> None:
    chain = ClipNorm(max_norm=2.0, inner=TrimmedMean(beta=0.2))
    ups = [_u(1.0), _u(1.5), _u(-30.0), _u(0.5), _u(40.0)]  # attackers clipped to ±2 first
    prepared = [chain.prepare(u, 1.0, CTX) for u in ups]
    assert [float(p["w"][0]) for p in prepared] == [1.0, 1.5, -2.0, 0.5, 2.0]
    got = chain.result(aggregate(chain, [(p, 1.0) for p in prepared]), CTX)
    assert float(got["w"][0]) == pytest.approx((0.5 + 1.0 + 1.5) / 3)


class _Ranks:
    """A fake two-rank collective seen from rank ``rank`` (the other rank holds ``other``)."""

    def __init__(self, rank: int, other: object) -> None:
        self.rank, self.other = rank, other

    def all_sum(self, tree: object) -> object:
        return ("summed", tree)

    def gather(self, tree: object) -> list[object] | None:
        return [tree, self.other] if self.rank == 0 else None


def test_reductions_sum_means_and_gather_buffers() -> None:
    mean = WeightedMean[dict[str, torch.Tensor]]()
    acc = aggregate(mean, [(_u(1.0), 1.0)])
    assert mean.reduce(acc, _Ranks(0, None)) == ("summed", acc)  # type: ignore[arg-type]
    tm = TrimmedMean(beta=0.25)
    mine = aggregate(tm, [(_u(1.0), 1.0), (_u(2.0), 1.0)])
    theirs = aggregate(tm, [(_u(3.0), 1.0), (_u(400.0), 1.0)])
    total = tm.reduce(mine, _Ranks(0, theirs))  # type: ignore[arg-type]
    assert int(total.count) == 4 and total.count.dtype == torch.int64
    assert tm.result(total, CTX)["w"].tolist() == [2.5]  # sorted 1,2,3,400 → mean(2, 3)
    assert tm.reduce(mine, _Ranks(1, theirs)) is mine  # type: ignore[arg-type]


def test_trimmed_mean_keeps_float64_updates_exact_and_checks_weights() -> None:
    agg = TrimmedMean(beta=0.0)  # β = 0 is allowed: the unweighted mean
    ups = [({"w": torch.tensor([1.0 + 2.0**-40], dtype=torch.float64)}, 1.0) for _ in range(5)]
    got = agg.result(aggregate(agg, ups), CTX)["w"]
    assert got.dtype == torch.float64 and float(got[0]) == 1.0 + 2.0**-40
    f32 = agg.result(aggregate(agg, [(_u(1.5), 1.0)]), CTX)["w"]
    assert f32.dtype == torch.float32
    acc = agg.zero(_u(0.0))
    agg.add(acc, _u(1.0), 0.0)  # zero weight: accepted (and not used by the rule)
    agg.add(acc, _u(1.0), 0.5)
    with pytest.raises(ValueError, match=r"^aggregation weight must be >= 0, got -1\.0$"):
        agg.add(acc, _u(1.0), -1.0)
    with pytest.raises(EmptyAggregateError, match=r"^no client update to trim$"):
        agg.result(agg.zero(_u(0.0)), CTX)


class _Spy(WeightedMean[dict[str, torch.Tensor]]):
    def __init__(self) -> None:
        self.seen: list[tuple[float, AggContext]] = []

    def prepare(
        self, update: dict[str, torch.Tensor], weight: float, ctx: AggContext
    ) -> dict[str, torch.Tensor]:
        self.seen.append((weight, ctx))
        return update


def test_clip_measures_the_norm_in_float64_and_hands_inner_weight_and_context() -> None:
    spy = _Spy()
    clip = ClipNorm(max_norm=1.0, inner=spy)
    huge = {"w": torch.tensor([1e20, 1e20], dtype=torch.float32)}  # squares overflow float32
    out = clip.prepare(huge, 3.0, CTX)
    assert torch.allclose(out["w"], torch.tensor([2**-0.5, 2**-0.5]))
    assert spy.seen == [(3.0, CTX)]
    with pytest.raises(NonFiniteUpdateError, match=r"^client -1: update has a non-finite value$"):
        clip.prepare({"w": torch.tensor([float("inf")])}, 1.0, CTX)


def test_trimmed_mean_of_scalar_updates_grows_its_buffer() -> None:
    agg = TrimmedMean(beta=0.2)
    ups = [({"s": torch.tensor(float(v))}, 1.0) for v in (5, -100, 1, 3, 2, 4, 200, 6, 0, 7)]
    # 10 scalars, k = 2 cut at each end: mean(1, 2, 3, 4, 5, 6) = 3.5
    assert float(agg.result(aggregate(agg, ups), CTX)["s"]) == 3.5
