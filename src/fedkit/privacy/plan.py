"""A run's privacy plan: the checked DP chain, its accounting, the ε probe and the budget stop.

:func:`plan_privacy` is what a runner calls once before the run loop: it validates the
aggregator chain (:func:`fedkit.privacy.chain.check_chain`), fills in the cohort size and the
noise source (``seeded`` in simulation; a deployment passes ``seeded=False`` and keeps the OS
CSPRNG), names the sampling scheme the accountant must assume from the sampler, and returns the
probe that reports ``dp_epsilon`` / ``dp_delta`` every round and the stop that ends the run
before the round that would exceed ``target_epsilon``. A chain without a noise stage gets an
empty plan (an adaptive clipping stage in it is still resolved: its count noise is seeded in
simulation). A chain whose aggregator keeps state across rounds (adaptive clipping) also gets
:class:`AggStateProbe`, which reports the state each round used (``agg_clip_norm``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

from fedkit.aggregate import init_state
from fedkit.algorithm import RoundInfo
from fedkit.dpsgd import DPSGD, client_epsilon
from fedkit.local import LocalTraining
from fedkit.params import Params
from fedkit.privacy.accounting import EpsilonProbe, PrivacyAccounting, Sampling
from fedkit.privacy.chain import check_chain, find_noise, resolve
from fedkit.privacy.poisson import PoissonSampler
from fedkit.run import Probe
from fedkit.sampling import ClientSampler, UniformSampler

__all__ = [
    "AggStateProbe",
    "ClientEpsilonProbe",
    "PrivacyPlan",
    "dpsgd_probes",
    "plan_privacy",
    "sampling_of",
]


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
        """``[EpsilonProbe]`` with a noise stage, ``[AggStateProbe]`` with aggregator state."""
        out: list[Probe] = [] if self.accounting is None else [EpsilonProbe(self.accounting)]
        if self.aggregator is not None and init_state(self.aggregator):
            out.append(AggStateProbe())
        return out

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
        if aggregator is None:
            return PrivacyPlan(aggregator=None)
        return PrivacyPlan(aggregator=resolve(aggregator, cohort=cohort, seeded=seeded))
    resolved = resolve(aggregator, cohort=cohort, seeded=seeded)
    noise = find_noise(resolved)
    assert noise is not None
    accounting = PrivacyAccounting.of(
        noise, num_clients=num_clients, cohort=cohort, sampling=sampling_of(sampler)
    )
    return PrivacyPlan(
        aggregator=resolved, accounting=accounting, target_epsilon=noise.target_epsilon
    )


@dataclasses.dataclass(frozen=True)
class AggStateProbe:
    """Run-loop probe: the aggregator state round ``t`` ran with, each entry as
    ``agg_<name>`` (adaptive clipping: ``agg_clip_norm``, the clip norm ``C_t``)."""

    def __call__(self, params: Params, info: RoundInfo) -> Mapping[str, float]:
        """``{"agg_<name>": value}`` for every entry of ``info.agg_state``."""
        return {f"agg_{name}": value for name, value in info.agg_state}


@dataclasses.dataclass(frozen=True)
class ClientEpsilonProbe:
    """Run-loop probe of sample-level DP-SGD: ``dpsgd_epsilon_max``, the largest per-client ε
    (examples of one client, :func:`fedkit.dpsgd.client_epsilon`) after round ``t``,
    over every client, as if each had trained in all ``t + 1`` rounds so far (an upper bound
    for clients that took part less often), and ``dpsgd_delta``.

    Attributes:
        local: the local-training settings (``local.dp`` set).
        sizes: every client's number of training examples.
    """

    local: LocalTraining
    sizes: tuple[int, ...]

    def __call__(self, params: Params, info: RoundInfo) -> Mapping[str, float]:
        """The bound after round ``info.round``."""
        dp = self.local.dp
        assert dp is not None
        worst = 0.0
        for n in sorted(set(self.sizes)):
            if n == 0:
                continue
            b = n if self.local.batch_size == 0 else min(self.local.batch_size, n)
            steps = self.local.planned_steps(n) * (info.round + 1)
            worst = max(worst, _client_epsilon(dp, b / n, steps))
        return {"dpsgd_epsilon_max": worst, "dpsgd_delta": dp.delta}


@functools.lru_cache(maxsize=4096)
def _client_epsilon(dp: DPSGD, sample_rate: float, steps: int) -> float:
    return client_epsilon(dp, sample_rate=sample_rate, steps=steps)


def dpsgd_probes(local: LocalTraining | None, sizes: Sequence[int]) -> list[Probe]:
    """``[ClientEpsilonProbe]`` when ``local`` trains with DP-SGD, else ``[]``."""
    if local is None or local.dp is None:
        return []
    return [ClientEpsilonProbe(local, tuple(sizes))]
