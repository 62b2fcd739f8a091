"""Aggregator monoid laws and parameter-op identities, by Hypothesis."""

from __future__ import annotations

import dataclasses

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit import params as P
from fedkit.aggregate import AggContext, MeanAcc, WeightedMean

SHAPES = {"a": (3,), "b": (2, 2)}

CTX = AggContext(round=0, seed=0)


@st.composite
def updates(draw: st.DrawFn, min_size: int = 1, max_size: int = 6) -> list[tuple[P.Params, float]]:
    n = draw(st.integers(min_size, max_size))
    out = []
    for _ in range(n):
        vals = {
            k: torch.tensor(
                draw(
                    st.lists(
                        st.floats(-1e3, 1e3),
                        min_size=int(torch.Size(s).numel()),
                        max_size=int(torch.Size(s).numel()),
                    )
                ),
                dtype=torch.float32,
            ).reshape(s)
            for k, s in SHAPES.items()
        }
        out.append((vals, draw(st.floats(0.01, 100.0))))
    return out


def fold(ups: list[tuple[P.Params, float]]) -> MeanAcc[P.Params]:
    agg: WeightedMean[P.Params] = WeightedMean()
    acc = agg.zero(ups[0][0])
    for u, w in ups:
        acc = agg.add(acc, u, w)
    return acc


def close(a: MeanAcc[P.Params], b: MeanAcc[P.Params], tol: float = 1e-9) -> bool:
    return (
        all(torch.allclose(a.total[k], b.total[k], rtol=tol, atol=tol) for k in a.total)
        and torch.allclose(a.weight, b.weight, rtol=tol)
        and int(a.count) == int(b.count)
    )


@settings(max_examples=60, deadline=None)
@given(updates(), updates(), updates())
def test_merge_is_associative(x: list, y: list, z: list) -> None:
    agg: WeightedMean[P.Params] = WeightedMean()
    a, b, c = fold(x), fold(y), fold(z)
    assert close(agg.merge(agg.merge(a, b), c), agg.merge(a, agg.merge(b, c)))


@settings(max_examples=60, deadline=None)
@given(updates(), updates())
def test_merge_is_commutative(x: list, y: list) -> None:
    agg: WeightedMean[P.Params] = WeightedMean()
    a, b = fold(x), fold(y)
    assert close(agg.merge(a, b), agg.merge(b, a), tol=0.0)


@settings(max_examples=60, deadline=None)
@given(updates())
def test_zero_is_identity(x: list) -> None:
    agg: WeightedMean[P.Params] = WeightedMean()
    a = fold(x)
    z = agg.zero(x[0][0])
    for m in (agg.merge(z, a), agg.merge(a, z)):
        assert close(m, a, tol=0.0)


@settings(max_examples=60, deadline=None)
@given(updates(min_size=2), st.randoms(use_true_random=False))
def test_weighted_mean_independent_of_order(x: list, rnd) -> None:  # type: ignore[no-untyped-def]
    agg: WeightedMean[P.Params] = WeightedMean()
    shuffled = list(x)
    rnd.shuffle(shuffled)
    m1, m2 = agg.result(fold(x), CTX), agg.result(fold(shuffled), CTX)
    for k in m1:
        assert torch.allclose(m1[k], m2[k], rtol=1e-12, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(updates(min_size=2))
def test_split_fold_merge_equals_single_fold(x: list) -> None:
    """What N ranks do (partial folds merged) equals one process folding everything."""
    agg: WeightedMean[P.Params] = WeightedMean()
    half = len(x) // 2
    merged = agg.merge(fold(x[:half]), fold(x[half:])) if half else fold(x)
    assert close(merged, fold(x))


@settings(max_examples=40, deadline=None)
@given(updates())
def test_mean_matches_direct_formula(x: list) -> None:
    agg: WeightedMean[P.Params] = WeightedMean()
    mean = agg.result(fold(x), CTX)
    wsum = sum(w for _, w in x)
    for k in SHAPES:
        direct = sum(u[k].double() * w for u, w in x) / wsum
        assert torch.allclose(mean[k], direct, rtol=1e-10, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(updates(min_size=2, max_size=2), st.floats(-10, 10))
def test_param_ops(x: list, s: float) -> None:
    (a, _), (b, _) = x
    a64 = {k: v.double() for k, v in a.items()}
    b64 = {k: v.double() for k, v in b.items()}
    assert all(torch.allclose(P.sub(P.add(a64, b64), b64)[k], a64[k]) for k in a)
    assert abs(P.dot(a, a) - P.norm(a) ** 2) <= 1e-6 * max(1.0, P.dot(a, a))
    assert all(torch.allclose(P.axpy(a64, b64, s)[k], a64[k] + s * b64[k]) for k in a)
    assert all(torch.allclose(P.scale(a64, s)[k], s * a64[k]) for k in a)
    assert P.num_elements(a) == 7 and P.nbytes(a) == 28
    assert abs(P.dot(a, b) - P.dot(b, a)) <= 1e-9 * max(1.0, abs(P.dot(a, b)))


@dataclasses.dataclass(frozen=True)
class _Payload:
    params: P.Params
    extra: torch.Tensor
    note: int = 3


@settings(max_examples=40, deadline=None)
@given(updates(min_size=1, max_size=1))
def test_tree_flatten_roundtrip(x: list) -> None:
    ((a, _),) = x
    tree = _Payload(params=a, extra=torch.arange(4.0))
    flat = P.tree_flatten(tree)
    back = P.tree_unflatten(tree, flat)
    assert set(flat) == {"params/a", "params/b", "extra"}
    assert all(torch.equal(back.params[k], a[k]) for k in a) and torch.equal(back.extra, tree.extra)
    assert P.tree_nbytes(tree) == P.nbytes(a) + 16
    assert P.sha256(a) == P.sha256(P.clone(a))


def test_tree_unflatten_rejects_foreign_tensors() -> None:
    tree = _Payload(params={"w": torch.zeros(2)}, extra=torch.zeros(1))
    good = P.tree_flatten(tree)
    import pytest

    with pytest.raises(ValueError, match="unexpected tensors"):
        P.tree_unflatten(tree, {**good, "evil": torch.zeros(1)})
    with pytest.raises(ValueError, match="missing tensor 'extra'"):
        P.tree_unflatten(tree, {"params/w": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"expected torch.float32 and \(2,\)"):
        P.tree_unflatten(tree, {**good, "params/w": torch.zeros(3)})
