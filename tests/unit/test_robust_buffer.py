"""The shared buffer of the buffering robust rules: rows in arrival order, float64 weights that
grow, merge and gather with the updates, and the flattened view Krum scores."""

from __future__ import annotations

import pytest
import torch

from fedkit.aggregate import AggContext, EmptyAggregateError, aggregate
from fedkit.robust.buffer import Buffered, flat_rows, used_rows

CTX = AggContext(round=0, seed=0)


def _u(a: float, b: float) -> dict[str, torch.Tensor]:
    return {"x": torch.tensor([a], dtype=torch.float32), "y": torch.tensor([[b, -b]])}


def test_add_keeps_rows_and_float64_weights_in_arrival_order_and_grows() -> None:
    buf = Buffered()
    acc = aggregate(buf, [(_u(float(i), 10.0 * i), 0.5 * i) for i in range(6)])
    # 6 rows: room 4 after the first add, doubled to 8 at the fifth
    assert int(acc.count) == 6 and acc.count.dtype == torch.int64
    assert acc.weights.dtype == torch.float64 and acc.weights.shape == (8,)
    assert acc.weights[:6].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert acc.updates["x"].shape == (8, 1) and acc.updates["y"].shape == (8, 1, 2)
    assert acc.updates["x"][:6, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert acc.updates["x"].dtype == torch.float32
    with pytest.raises(ValueError, match=r"^aggregation weight must be >= 0, got -1\.0$"):
        buf.add(acc, _u(0.0, 0.0), -1.0)
    with pytest.raises(ValueError, match="aggregation weight"):
        buf.add(acc, _u(0.0, 0.0), float("nan"))


def test_merge_concatenates_used_rows_a_first() -> None:
    buf = Buffered()
    a = aggregate(buf, [(_u(1.0, 1.0), 3.0)])  # room 4, one row used
    b = aggregate(buf, [(_u(2.0, 2.0), 5.0), (_u(3.0, 3.0), 7.0)])
    m = buf.merge(a, b)
    assert int(m.count) == 3
    assert m.weights.tolist() == [3.0, 5.0, 7.0]
    assert m.updates["x"][:, 0].tolist() == [1.0, 2.0, 3.0]
    assert m.updates["y"][:, 0, 1].tolist() == [-1.0, -2.0, -3.0]
    # adding after a merge grows the exactly-sized buffers again
    m2 = buf.add(m, _u(4.0, 4.0), 9.0)
    assert m2.weights[:4].tolist() == [3.0, 5.0, 7.0, 9.0]
    empty = buf.merge(buf.zero(_u(0.0, 0.0)), buf.zero(_u(0.0, 0.0)))
    assert int(empty.count) == 0 and empty.weights.shape == (0,)


def test_flat_rows_concatenates_every_leaf_in_float64_and_used_rows_refuses_empty() -> None:
    buf = Buffered()
    acc = aggregate(buf, [(_u(1.0, 2.0), 1.0), (_u(3.0, 4.0), 1.0)])
    rows = flat_rows(acc)
    # leaves in name order: x (1 value) then y (2 values)
    assert rows.dtype == torch.float64
    assert rows.tolist() == [[1.0, 2.0, -2.0], [3.0, 4.0, -4.0]]
    assert used_rows(acc, "x") == 2
    with pytest.raises(EmptyAggregateError, match=r"^no client update to score$"):
        used_rows(buf.zero(_u(0.0, 0.0)), "score")
    assert flat_rows(aggregate(buf, [({}, 1.0)])).shape == (1, 0)
    with pytest.raises(NotImplementedError, match="Buffered"):
        buf.result(acc, CTX)
    assert buf.prepare(_u(1.0, 1.0), 1.0, CTX)["x"].tolist() == [1.0]


def test_row_tree_is_the_inverse_of_flat_rows_over_three_leaves() -> None:
    from fedkit.robust.buffer import row_tree

    agg = Buffered()
    ups = [
        {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[3.0], [4.0]]), "c": torch.tensor(5.0)},
        {"a": torch.tensor([6.0, 7.0]), "b": torch.tensor([[8.0], [9.0]]), "c": torch.tensor(10.0)},
    ]
    acc = aggregate(agg, [(u, 1.0) for u in ups])
    rows = flat_rows(acc)
    assert rows.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    for i, u in enumerate(ups):
        back = row_tree(acc, rows[i])
        assert all(torch.equal(back[k], u[k]) and back[k].dtype == u[k].dtype for k in u)
