"""Running a buffering aggregator over points given as lists (tests of the robust rules)."""

from __future__ import annotations

import math
from typing import Any

import torch

from fedkit.aggregate import AggContext, aggregate
from fedkit.algorithm import RoundInfo

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


def draw_honest_and_far(
    data: Any, dim: int, bad: int, extra_honest: int, scale: float
) -> tuple[list[list[float]], list[list[float]], list[list[float]]]:
    """Hypothesis draw: ``bad + extra_honest`` honest points in [−1, 1]^dim and ``bad`` attackers
    at distance ``scale · s`` (s in [1, 100]) along one direction.

    Returns ``(honest, honest + attackers, the same points in a drawn arrival order)``.
    """
    from hypothesis import strategies as st

    coords = st.floats(-1.0, 1.0, allow_nan=False)
    honest = [
        data.draw(st.lists(coords, min_size=dim, max_size=dim)) for _ in range(bad + extra_honest)
    ]
    direction = data.draw(
        st.lists(coords, min_size=dim, max_size=dim).filter(lambda v: math.hypot(*v) > 0.1)
    )
    norm = math.hypot(*direction)
    stretch = data.draw(st.lists(st.floats(1.0, 100.0), min_size=bad, max_size=bad))
    points = honest + [[scale * s * c / norm for c in direction] for s in stretch]
    order = data.draw(st.permutations(range(len(points))))
    return honest, points, [points[i] for i in order]


ATTACK_INFO = RoundInfo(round=2, seed=5, num_clients=10, cohort_size=10)
"""The round of :func:`attack_context`: a cohort of 10 out of 10 clients."""


def attack_context(honest: Any, **kw: Any) -> Any:
    """An :class:`~fedkit.attacks.AttackContext` of client 3 in :data:`ATTACK_INFO` that sends
    ``honest``; ``kw`` replaces any field (``train`` returns ``honest`` unless given; ``stream``
    is seeded 0; 2 attackers expected)."""
    from fedkit.attacks import AttackContext
    from fedkit.client import client_context
    from tests.helpers.toy import toy_clients, toy_model

    base: dict[str, Any] = dict(
        client=client_context(toy_model(), 3, ATTACK_INFO),
        data=toy_clients(1)[0],
        honest=honest,
        expected_attackers=2,
        train=lambda d: honest,
        stream=torch.Generator().manual_seed(0),
    )
    base.update(kw)
    return AttackContext(**base)
