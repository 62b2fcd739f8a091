"""A run's privacy plan: the checked DP chain, its accounting, the ε probe and the budget stop.

:func:`plan_privacy` is what a runner calls once before the run loop: it validates the
aggregator chain (:func:`fedkit.privacy.chain.check_chain`), fills in the cohort size and the
noise source (``seeded`` in simulation; a deployment passes ``seeded=False`` and keeps the OS
CSPRNG), names the sampling scheme the accountant must assume from the sampler, and returns the
probe that reports ``dp_epsilon`` / ``dp_delta`` every round and the stop that ends the run
before the round that would exceed ``target_epsilon``. A chain without a noise stage gets an
empty plan.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fedkit.algorithm import RoundInfo
from fedkit.privacy.accounting import EpsilonProbe, PrivacyAccounting, Sampling
from fedkit.privacy.chain import check_chain, find_noise, resolve
from fedkit.privacy.poisson import PoissonSampler
from fedkit.run import Probe
from fedkit.sampling import ClientSampler, UniformSampler

__all__ = ["PrivacyPlan", "plan_privacy", "sampling_of"]


def sampling_of(sampler: ClientSampler) -> Sampling:
    """The sampling scheme the accountant assumes for ``sampler``.

    Raises:
        ValueError: a sampler whose scheme the accountant does not know.
    """
    if isinstance(sampler, PoissonSampler):
        return "poisson"
    if isinstance(sampler, UniformSampler):
        return "fixed"
    raise ValueError(
        f"the DP accountant knows Poisson ('poisson') and uniform fixed-size ('uniform') "
        f"sampling; sampler {type(sampler).__name__} has no accounting"
    )


@dataclasses.dataclass(frozen=True)
class PrivacyPlan:
    """What a run with DP-FedAvg adds to the run loop (empty without a noise stage).

    Attributes:
        aggregator: the chain, resolved (cohort size, noise source).
        accounting: the accountant, or ``None`` without a noise stage.
        target_epsilon: the budget, or ``None``.
    """

    aggregator: Any
    accounting: PrivacyAccounting | None = None
    target_epsilon: float | None = None

    @property
    def probes(self) -> list[Probe]:
        """``[EpsilonProbe]`` with a noise stage, else ``[]``."""
        return [] if self.accounting is None else [EpsilonProbe(self.accounting)]

    def stop(self, info: RoundInfo) -> str | None:
        """Why round ``info.round`` must not run (the budget), or ``None``."""
        if self.accounting is None or self.target_epsilon is None:
            return None
        return self.accounting.stop_reason(info, self.target_epsilon)


def plan_privacy(
    aggregator: Any,
    *,
    weighting: str | None,
    num_clients: int,
    cohort: int,
    sampler: ClientSampler,
    seeded: bool,
) -> PrivacyPlan:
    """Check and resolve a chain and build its accounting (see the module docstring).

    Raises:
        ValueError: an invalid DP chain (see :func:`~fedkit.privacy.chain.check_chain`), a
            mismatched ``expected_clients``, a sampler without accounting, or accounting
            settings the accountant refuses.
    """
    if check_chain(aggregator, weighting=weighting) is None:
        return PrivacyPlan(aggregator=aggregator)
    resolved = resolve(aggregator, cohort=cohort, seeded=seeded)
    noise = find_noise(resolved)
    assert noise is not None
    accounting = PrivacyAccounting.of(
        noise, num_clients=num_clients, cohort=cohort, sampling=sampling_of(sampler)
    )
    return PrivacyPlan(
        aggregator=resolved, accounting=accounting, target_epsilon=noise.target_epsilon
    )
