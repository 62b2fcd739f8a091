"""Fairness of a model across clients: summaries of per-client accuracy.

The measures Li, Sanjabi, Beirami and Smith 2020 ("Fair Resource Allocation in Federated
Learning", q-FFL) report for the accuracy distribution over devices — its variance (population
variance), the mean of the worst 10% of clients, the 10th percentile and the worst client — and
Jain's fairness index ``J = (Σ a_i)² / (n Σ a_i²)`` (Jain, Chiu and Hawe 1984: 1 when every client
is equally accurate, ``1/n`` when one client has it all).

:func:`fairness_metrics` gives them as named per-round metrics from a federated evaluation
(``fairness.*`` for the global model, ``fairness.personal.*`` for the clients' personal models),
which the results database stores in the round's ``details``; the report's fairness table uses
:func:`spread` at the last evaluation.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from fedkit.evaluate import ClientEval

__all__ = [
    "Spread",
    "fairness_metrics",
    "jain_index",
    "p10",
    "spread",
    "worst_fraction_mean",
]


def jain_index(values: Sequence[float]) -> float:
    """Jain's index ``(Σ x)² / (n Σ x²)`` (NaN for no values or all zeros)."""
    top = max((abs(v) for v in values), default=0.0)
    if top == 0:
        return math.nan
    xs = [v / top for v in values]  # scale-free; no underflow of tiny squares
    # fsum: the same value whatever order the clients' results arrived in
    return math.fsum(xs) ** 2 / (len(xs) * math.fsum(x * x for x in xs))


def worst_fraction_mean(values: Sequence[float], fraction: float = 0.1) -> float:
    """Mean of the lowest ``ceil(fraction · n)`` values (at least one)."""
    if not values:
        return math.nan
    k = max(1, math.ceil(fraction * len(values)))
    return statistics.fmean(sorted(values)[:k])


def p10(values: Sequence[float]) -> float:
    """10th percentile by linear interpolation (``torch.quantile``'s rule); ``values`` not empty."""
    ordered = sorted(values)
    pos = 0.1 * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class Spread:
    """The distribution of per-client accuracy."""

    clients: int
    mean: float
    p10: float
    worst: float
    variance: float
    worst10: float
    jain: float


def spread(values: Sequence[float]) -> Spread | None:
    """Summary of the finite values (``None`` when there are none)."""
    xs = [v for v in values if math.isfinite(v)]
    if not xs:
        return None
    return Spread(
        clients=len(xs),
        mean=statistics.fmean(xs),
        p10=p10(xs),
        worst=min(xs),
        variance=statistics.pvariance(xs),
        worst10=worst_fraction_mean(xs),
        jain=jain_index(xs),
    )


def _named(prefix: str, s: Spread | None) -> dict[str, float]:
    if s is None:
        return {}
    out = {"variance": s.variance, "worst10": s.worst10, "jain": s.jain, "p10": s.p10}
    return {f"{prefix}{k}": v for k, v in out.items() if math.isfinite(v)}


def fairness_metrics(evals: Sequence[ClientEval]) -> dict[str, float]:
    """The round's fairness metrics from its per-client evaluation: ``fairness.variance``,
    ``fairness.worst10``, ``fairness.jain`` and ``fairness.p10`` of the global model's accuracy
    over the clients with test examples, and the same under ``fairness.personal.`` for the
    personal models where the method has them (empty when no client was scored)."""
    scored = [e for e in evals if e.result.num_examples > 0]
    own = [e.personal.accuracy for e in scored if e.personal is not None]
    return {
        **_named("fairness.", spread([e.result.accuracy for e in scored])),
        **_named("fairness.personal.", spread(own)),
    }
