"""Running a buffering aggregator over points given as lists (tests of the robust rules)."""

from __future__ import annotations

from typing import Any

import torch

from fedkit.aggregate import AggContext, aggregate

CTX = AggContext(round=0, seed=0)


def result_of(
    agg: Any, points: list[list[float]], weights: list[float] | None = None
) -> torch.Tensor:
    """``agg``'s result over updates ``{"w": point}`` (float64) with ``weights`` (default 1)."""
    ws = [1.0] * len(points) if weights is None else weights
    ups = [
        ({"w": torch.tensor(p, dtype=torch.float64)}, w) for p, w in zip(points, ws, strict=True)
    ]
    out: torch.Tensor = agg.result(aggregate(agg, ups), CTX)["w"]
    return out
