"""Privacy accounting of DP-FedAvg with ``dp-accounting`` (Google's DP accounting library).

Each round releases one sampled Gaussian mechanism; the accountant composes them and converts
to ``(ε, δ)``. Which mechanism depends on how cohorts are drawn, and the accounting says so:

* ``"poisson"`` (:class:`fedkit.privacy.poisson.PoissonSampler`): every client takes part
  independently with probability ``q = k/N``. Neighbouring datasets differ by adding or removing
  one client (``ADD_OR_REMOVE_ONE``), the sum's L2 sensitivity is ``C`` and each round is
  ``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` (Mironov, Talwar & Zhang 2019, the RDP of the
  sampled Gaussian mechanism; the bound McMahan et al. 2018 use via the moments accountant).
* ``"fixed"`` (:class:`fedkit.sampling.UniformSampler`, a uniform ``k``-subset): neighbouring
  datasets replace one client (``REPLACE_ONE``; ``N`` is public), which moves the sum by up to
  ``2C``, so the mechanism's noise multiplier relative to its sensitivity is ``z/2``; each round
  is ``SampledWithoutReplacementDpEvent(N, k, GaussianDpEvent(z/2))`` (Wang, Balle &
  Kasiviswanathan 2019, Theorem 27). RDP only (the PLD accountant has no such event).

ε is a function of the number of releases only, and the accountant counts one release per round
the run loop *started* (a round in which no client finished releases nothing, so counting it is an
over-estimate, never an under-estimate). The count is therefore the round index, which the
checkpoint already holds: a resumed run continues its ε exactly, with nothing else to save.
Dropped clients are ignored (dropping only removes participants, which cannot increase ε in
either model). The sampling is assumed secret: the server learns the noised aggregate, not who
took part.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

import dp_accounting as dpa
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from fedkit.algorithm import RoundInfo
from fedkit.dpsgd import quiet_absl
from fedkit.params import Params
from fedkit.privacy.gaussian import GaussianNoise

__all__ = ["EpsilonProbe", "PrivacyAccounting", "Sampling", "default_delta"]

Sampling = Literal["poisson", "fixed"]


def default_delta(num_clients: int) -> float:
    """``1 / N^1.1``: below ``1/N``, as a meaningful δ for ``N`` users must be."""
    return float(num_clients**-1.1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrivacyAccounting:
    """The (ε, δ) of ``releases`` rounds of DP-FedAvg (see the module docstring).

    Attributes:
        noise_multiplier: ``z``, the noise std over the clipping bound.
        num_clients: ``N``, the population.
        cohort: ``k``, the (expected) cohort size; ``q = k/N``.
        sampling: ``"poisson"`` or ``"fixed"``.
        delta: the δ at which ε is reported.
        accountant: ``"rdp"`` or ``"pld"``.
    """

    noise_multiplier: float
    num_clients: int
    cohort: int
    sampling: Sampling
    delta: float
    accountant: Literal["rdp", "pld"] = "rdp"
    _cache: dict[int, float] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not 1 <= self.cohort <= self.num_clients:
            raise ValueError(
                f"cohort must be in [1, num_clients = {self.num_clients}], got {self.cohort}"
            )
        if self.sampling not in ("poisson", "fixed"):
            raise ValueError(f"sampling must be 'poisson' or 'fixed', got {self.sampling!r}")
        if self.accountant not in ("rdp", "pld"):
            raise ValueError(f"accountant must be 'rdp' or 'pld', got {self.accountant!r}")
        if self.accountant == "pld" and self.sampling == "fixed":
            raise ValueError(
                "the PLD accountant has no event for fixed-size cohorts (sampling without "
                "replacement); use accountant = 'rdp', or a Poisson sampler"
            )
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {self.delta!r}")

    @classmethod
    def of(
        cls, noise: GaussianNoise, *, num_clients: int, cohort: int, sampling: Sampling
    ) -> PrivacyAccounting:
        """The accounting of a run with this noise stage (δ defaults to ``1/N^1.1``)."""
        delta = noise.delta if noise.delta is not None else default_delta(num_clients)
        return cls(
            noise_multiplier=noise.noise_multiplier,
            num_clients=num_clients,
            cohort=cohort,
            sampling=sampling,
            delta=delta,
            accountant=noise.accountant,
        )

    @property
    def neighboring(self) -> Any:
        """``REPLACE_ONE`` for fixed-size cohorts, ``ADD_OR_REMOVE_ONE`` for Poisson."""
        rel = dpa.NeighboringRelation
        return rel.REPLACE_ONE if self.sampling == "fixed" else rel.ADD_OR_REMOVE_ONE

    def event(self) -> Any:
        """One round's ``DpEvent``."""
        if self.sampling == "poisson":
            q = self.cohort / self.num_clients
            return dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(self.noise_multiplier))
        gaussian = dpa.GaussianDpEvent(self.noise_multiplier / 2.0)  # replace-one: Δ₂ = 2C
        if self.cohort == self.num_clients:
            return gaussian
        return dpa.SampledWithoutReplacementDpEvent(self.num_clients, self.cohort, gaussian)

    def describe(self) -> str:
        """The accounting in one line (for logs and reports)."""
        scheme = (
            f"Poisson sampling q = {self.cohort}/{self.num_clients}, add/remove one client"
            if self.sampling == "poisson"
            else f"fixed-size cohorts of {self.cohort} of {self.num_clients} without "
            "replacement, replace one client"
        )
        return f"{self.accountant.upper()} accountant, z = {self.noise_multiplier}, {scheme}"

    def epsilon(self, releases: int) -> float:
        """ε at :attr:`delta` after ``releases`` rounds (0 for none)."""
        if releases < 0:
            raise ValueError(f"releases must be >= 0, got {releases}")
        if releases == 0:
            return 0.0
        cached = self._cache.get(releases)
        if cached is None:
            acc: Any
            if self.accountant == "rdp":
                acc = RdpAccountant(neighboring_relation=self.neighboring)
            else:
                acc = PLDAccountant(neighboring_relation=self.neighboring)
            with quiet_absl():
                acc.compose(self.event(), releases)
                cached = float(acc.get_epsilon(self.delta))
            self._cache[releases] = cached
        return cached

    def stop_reason(self, info: RoundInfo, target: float) -> str | None:
        """Why round ``info.round`` must not run (its release would exceed ``target``), or
        ``None``."""
        eps = self.epsilon(info.round + 1)
        if eps <= target:
            return None
        return (
            f"target_epsilon = {target} reached: round {info.round} would bring ε to {eps:.4g} "
            f"(δ = {self.delta:.3g})"
        )


@dataclasses.dataclass(frozen=True)
class EpsilonProbe:
    """Run-loop probe: ``dp_epsilon`` and ``dp_delta`` after each round."""

    accounting: PrivacyAccounting

    def __call__(self, params: Params, info: RoundInfo) -> Mapping[str, float]:
        """ε after round ``info.round`` (``info.round + 1`` releases) and δ."""
        return {
            "dp_epsilon": self.accounting.epsilon(info.round + 1),
            "dp_delta": self.accounting.delta,
        }
