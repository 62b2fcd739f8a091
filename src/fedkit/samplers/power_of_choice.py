"""Power-of-choice client selection (Cho, Wang & Joshi 2020, "Client Selection in Federated
Learning: Convergence Analysis and Power-of-Choice Selection Strategies", Algorithm 1).

Each round the server draws a candidate set ``A`` of ``d >= m`` clients (the paper: without
replacement, with probability proportional to data size — here by the exact-probability draw of
:class:`~fedkit.samplers.probability.ProbabilitySampler` with ``law``), asks each candidate for
its local loss ``F_k(w)`` on the current global model, and keeps the ``m`` candidates with the
highest loss (ties broken by the lower client id). ``d = m`` is the candidate law's plain draw;
larger ``d`` biases selection towards clients the model fits worst, which the paper shows
speeds convergence at the cost of a non-vanishing bias (so no importance correction applies).

The losses come from the run's :class:`~fedkit.sampling.Population` (``local_loss``: by default
the executor's evaluation of the global model on each candidate's local *held-out* data — the
paper uses the local training loss; both are the candidate's fit of the current model).
Candidates without a score rank after every scored one.
"""

from __future__ import annotations

import dataclasses
import math

from fedkit.algorithm import RoundInfo
from fedkit.samplers.probability import Law, ProbabilitySampler
from fedkit.sampling import Population, check_cohort_size

__all__ = ["PowerOfChoice"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PowerOfChoice:
    """The ``m`` highest-loss clients of ``d`` candidates (see the module docstring).

    Attributes:
        d: candidates per round (``>= m``; clamped to the population size).
        law: how candidates are drawn (``"size"``: proportional to data size, as in the
            paper; ``"uniform"``; any law of :class:`ProbabilitySampler`).
        exponent: the power law's exponent when ``law = "power"``.
    """

    d: int = 20
    law: Law = "size"
    exponent: float = 1.0

    def __post_init__(self) -> None:
        if self.d < 1:
            raise ValueError(f"d must be >= 1, got {self.d}")
        ProbabilitySampler(law=self.law, exponent=self.exponent)  # validates law and exponent

    def candidates(self, population: Population, k: int, info: RoundInfo) -> list[int]:
        """The round's candidate set ``A`` (``max(d, k)`` clients, at most ``N``)."""
        check_cohort_size(k, population.num_clients)
        d = min(max(self.d, k), population.num_clients)
        law = ProbabilitySampler(law=self.law, exponent=self.exponent)
        return law.select(population, d, info)

    def select(self, population: Population, k: int, info: RoundInfo) -> list[int]:
        """The ``k`` candidates with the highest local loss, sorted by id."""
        cands = self.candidates(population, k, info)
        losses = population.losses(cands, "the power_of_choice sampler")

        def key(c: int) -> tuple[float, int]:
            loss = losses.get(c, math.nan)
            return (-loss if math.isfinite(loss) else math.inf, c)

        return sorted(sorted(cands, key=key)[:k])

    def sample(self, num_clients: int, k: int, info: RoundInfo) -> list[int]:
        """Refused: power-of-choice needs the candidates' losses (a run's population)."""
        return self.select(Population(num_clients), k, info)
