"""DP-FedAvg accounting: ε against hand-computed RDP and against the libraries' calculators,
the per-round probe, the target-ε stop, ε across a resume, Poisson sampling."""

from __future__ import annotations

import math
from pathlib import Path

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant
from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS
from opacus.accountants.analysis import rdp as opacus_rdp

from fedkit.algorithm import RoundInfo
from fedkit.algorithms import FedAvg
from fedkit.local import LocalTraining
from fedkit.params import model_params
from fedkit.privacy.accounting import EpsilonProbe, PrivacyAccounting, default_delta
from fedkit.privacy.clip import ClipNorm
from fedkit.privacy.gaussian import GaussianNoise
from fedkit.privacy.poisson import PoissonSampler
from fedkit.run import RunConfig, RunResult, run
from fedkit.sampling import ClientSampler
from fedkit.sim.serial import SerialExecutor
from tests.helpers.toy import toy_model, toy_store


def _improved_conversion(orders: np.ndarray, rdp: np.ndarray, delta: float) -> float:
    """RDP → (ε, δ): ε = min_α RDP(α) + log((α−1)/α) − (log δ + log α)/(α−1) (Canonne, Kamath
    & Steinke 2020, Prop. 12 / Asoodeh et al. 2021), the conversion dp-accounting and Opacus
    use."""
    eps = rdp + np.log1p(-1.0 / orders) - (math.log(delta) + np.log(orders)) / (orders - 1)
    return float(np.min(eps))


def test_gaussian_without_sampling_matches_hand_computed_rdp() -> None:
    """Every client every round (k = N = 50), fixed cohorts → replace-one, sensitivity 2C, so
    the noise multiplier of the mechanism is z/2. With z = 4, T = 10: RDP(α) = T·α/(2(z/2)²)
    = 10α/8 = 1.25α; ε at δ = 1e-5 is the minimum of the conversion over the library's orders.
    The classic bound ε ≤ min_α RDP(α) + log(1/δ)/(α−1) (Mironov 2017, Prop. 3) is looser,
    and above its continuous minimum ρ + 2√(ρ log(1/δ)) = 1.25 + 2√(1.25·11.513) = 8.837."""
    z, t, delta = 4.0, 10, 1e-5
    acc = PrivacyAccounting(
        noise_multiplier=z, num_clients=50, cohort=50, sampling="fixed", delta=delta
    )
    orders = np.array(DEFAULT_RDP_ORDERS, dtype=float)
    rdp = t * orders / (2 * (z / 2) ** 2)
    hand = _improved_conversion(orders, rdp, delta)
    assert acc.epsilon(t) == pytest.approx(hand, rel=1e-9)
    classic = float(np.min(rdp + math.log(1 / delta) / (orders - 1)))
    rho = 1.25
    assert classic >= rho + 2 * math.sqrt(rho * math.log(1 / delta)) - 1e-9
    assert hand < classic
    assert 8.0 < hand < 8.837  # what the numbers above give: 8.34…


def _poisson_rdp_integer(q: float, sigma: float, alpha: int) -> float:
    """RDP of the Poisson-sampled Gaussian at an integer order (Mironov, Talwar & Zhang 2019,
    Sec. 3.3): log(Σ_k C(α,k) (1−q)^(α−k) q^k exp((k²−k)/(2σ²))) / (α − 1)."""
    logs = [
        math.log(math.comb(alpha, k))
        + (alpha - k) * math.log1p(-q)
        + k * math.log(q)
        + (k * k - k) / (2 * sigma**2)
        for k in range(alpha + 1)
    ]
    top = max(logs)  # log-sum-exp: the large orders overflow a float otherwise
    return (top + math.log(sum(math.exp(v - top) for v in logs))) / (alpha - 1)


def test_poisson_rdp_matches_hand_formula_and_opacus() -> None:
    """q = 10/1000, z = 1.1, T = 200 rounds, δ = 1e-5: the integer-order RDP from the formula,
    dp-accounting's RDP at those orders and Opacus's independent RDP implementation agree; our
    ε (the library's default orders, fractional ones too) is at most the integer-order one."""
    q, z, t, delta = 0.01, 1.1, 200, 1e-5
    ints = np.arange(2, 65, dtype=float)
    hand_rdp = np.array([t * _poisson_rdp_integer(q, z, int(a)) for a in ints])
    hand = _improved_conversion(ints, hand_rdp, delta)
    lib = RdpAccountant(orders=list(ints))
    lib.compose(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z)), t)
    assert lib.get_epsilon(delta) == pytest.approx(hand, rel=1e-9)
    op_rdp = opacus_rdp.compute_rdp(q=q, noise_multiplier=z, steps=t, orders=list(ints))
    op_eps, _ = opacus_rdp.get_privacy_spent(orders=list(ints), rdp=op_rdp, delta=delta)
    assert op_eps == pytest.approx(hand, rel=1e-6)
    ours = PrivacyAccounting(
        noise_multiplier=z, num_clients=1000, cohort=10, sampling="poisson", delta=delta
    ).epsilon(t)
    assert ours <= hand + 1e-12
    assert ours == pytest.approx(hand, rel=0.05)


def test_accounting_equals_the_library_calculator_for_each_scheme() -> None:
    """The same parameters through dp-accounting's own accountants directly."""
    delta = 1e-4
    for sampling, rel, event in (
        (
            "poisson",
            dpa.NeighboringRelation.ADD_OR_REMOVE_ONE,
            dpa.PoissonSampledDpEvent(0.05, dpa.GaussianDpEvent(0.9)),
        ),
        (
            "fixed",
            dpa.NeighboringRelation.REPLACE_ONE,
            dpa.SampledWithoutReplacementDpEvent(100, 5, dpa.GaussianDpEvent(0.45)),
        ),
    ):
        ours = PrivacyAccounting(
            noise_multiplier=0.9, num_clients=100, cohort=5, sampling=sampling, delta=delta
        )
        lib = RdpAccountant(neighboring_relation=rel)
        lib.compose(event, 30)
        assert ours.epsilon(30) == pytest.approx(lib.get_epsilon(delta), rel=1e-12)
    pld = PrivacyAccounting(
        noise_multiplier=0.9,
        num_clients=100,
        cohort=5,
        sampling="poisson",
        delta=delta,
        accountant="pld",
    )
    rdp = PrivacyAccounting(
        noise_multiplier=0.9, num_clients=100, cohort=5, sampling="poisson", delta=delta
    )
    assert pld.epsilon(30) < rdp.epsilon(30)  # PLD is the tighter accountant


def test_accounting_refusals_and_defaults() -> None:
    assert default_delta(1000) == pytest.approx(1000**-1.1)  # 5.01e-4
    with pytest.raises(ValueError, match="PLD accountant has no event for fixed-size"):
        PrivacyAccounting(
            noise_multiplier=1,
            num_clients=9,
            cohort=3,
            sampling="fixed",
            delta=0.01,
            accountant="pld",
        )
    with pytest.raises(ValueError, match="cohort"):
        PrivacyAccounting(
            noise_multiplier=1, num_clients=9, cohort=10, sampling="fixed", delta=0.01
        )
    acc = PrivacyAccounting(
        noise_multiplier=1, num_clients=9, cohort=3, sampling="poisson", delta=0.01
    )
    assert acc.epsilon(0) == 0.0
    eps = [acc.epsilon(t) for t in (1, 2, 5)]
    assert eps == sorted(eps) and eps[0] > 0


# -- in the run loop ---------------------------------------------------------------------------

N, K = 8, 3
ALG = FedAvg(
    local=LocalTraining(lr=0.05, batch_size=8),
    weighting="uniform",
    aggregator=ClipNorm(
        max_norm=0.5,
        inner=GaussianNoise(
            noise_multiplier=1.2, clip_norm=0.5, expected_clients=K, noise_source="seeded"
        ),
    ),
)
ACCOUNTING = PrivacyAccounting(
    noise_multiplier=1.2, num_clients=N, cohort=K, sampling="fixed", delta=1e-3
)


def _run(
    rounds: int,
    *,
    ckpt: Path | None = None,
    target: float | None = None,
    sampler: ClientSampler | None = None,
) -> RunResult[object]:
    def stop(info: RoundInfo) -> str | None:
        return None if target is None else ACCOUNTING.stop_reason(info, target)

    return run(
        ALG,
        SerialExecutor(toy_store(N), toy_model()),
        model_params(toy_model()),
        RunConfig(rounds=rounds, clients_per_round=K, seed=4, checkpoint_dir=ckpt),
        probes=[EpsilonProbe(ACCOUNTING)],
        stop=stop,
        sampler=sampler,
    )


def test_probe_reports_epsilon_every_round_and_resume_continues_it(tmp_path: Path) -> None:
    whole = _run(5)
    eps = [r.metrics["dp_epsilon"] for r in whole.history]
    assert eps == [ACCOUNTING.epsilon(t) for t in range(1, 6)]
    assert eps == sorted(eps) and len(set(eps)) == 5
    assert all(r.metrics["dp_delta"] == 1e-3 for r in whole.history)
    _run(2, ckpt=tmp_path)
    resumed = _run(5, ckpt=tmp_path)
    assert resumed.start_round == 2
    assert [r.metrics["dp_epsilon"] for r in resumed.history] == eps[2:]
    assert resumed.history[0].metrics["dp_epsilon"] > ACCOUNTING.epsilon(1)  # not restarted
    assert all(bool((resumed.params[k] == whole.params[k]).all()) for k in whole.params)


def test_target_epsilon_stops_before_the_round_that_would_exceed_it() -> None:
    target = (ACCOUNTING.epsilon(3) + ACCOUNTING.epsilon(4)) / 2
    res = _run(10, target=target)
    assert len(res.history) == 3
    assert res.history[-1].metrics["dp_epsilon"] <= target
    assert res.stopped is not None and "round 3 would bring" in res.stopped
    assert _run(3).stopped is None


def test_poisson_sampler_draws_each_client_with_probability_q() -> None:
    """1000 clients, q = 0.1: cohort sizes over 200 rounds are Binomial(1000, 0.1) (mean 100,
    sd 9.49); their mean must be within 5 standard errors (5·9.49/√200 = 3.35) of 100; each
    round's cohort is sorted, distinct and reproducible."""
    s = PoissonSampler()
    sizes = []
    for r in range(200):
        info = RoundInfo(round=r, seed=1, num_clients=1000, cohort_size=100)
        c = s.sample(1000, 100, info)
        assert c == sorted(set(c)) and c == s.sample(1000, 100, info)
        sizes.append(len(c))
    assert abs(sum(sizes) / 200 - 100) < 3.35
    assert len(set(sizes)) > 5  # the size varies


def test_poisson_run_with_empty_round_commits_nothing() -> None:
    """q = 1/8: some rounds of a Poisson-sampled run have no client; they commit nothing."""
    res = run(
        ALG,
        SerialExecutor(toy_store(N), toy_model()),
        model_params(toy_model()),
        RunConfig(rounds=12, clients_per_round=1, seed=0),
        sampler=PoissonSampler(),
    )
    empty = [r for r in res.history if not r.cohort]
    assert empty and all(not r.committed for r in empty)
    assert any(r.committed for r in res.history)
