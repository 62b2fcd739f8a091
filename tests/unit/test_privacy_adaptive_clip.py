"""Adaptive clipping (Andrew et al. 2021): the clip norm's geometric update worked by hand, the
noised count, quantile tracking, the z_Δ relation of the two releases, and the chain checks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import dp_accounting as dpa
import pytest
import torch
from dp_accounting.rdp import RdpAccountant
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit.aggregate import (
    AggContext,
    AggState,
    AggStateError,
    WeightedMean,
    init_state,
    next_state,
)
from fedkit.privacy.adaptive_clip import (
    CLIP_NORM,
    AdaptiveClip,
    ClippedUpdate,
    update_noise_multiplier,
)
from fedkit.privacy.chain import check_chain, resolve
from fedkit.privacy.gaussian import GaussianNoise
from fedkit.privacy.plan import plan_privacy
from fedkit.privacy.poisson import PoissonSampler
from fedkit.rng import SERVER, generator


def _vec(norm: float, dim: int = 3) -> dict[str, torch.Tensor]:
    """An update of L2 norm ``norm`` (all its mass on the first coordinate)."""
    t = torch.zeros(dim, dtype=torch.float64)
    t[0] = norm
    return {"w": t}


def _round(
    agg: AdaptiveClip, norms: Sequence[float], state: AggState, round_: int, seed: int = 5
) -> tuple[torch.Tensor, AggState]:
    """One round exactly as the run loop drives it: prepare on each client with the round's
    state, fold, result and next_state with the server's context."""
    acc = None
    for i, n in enumerate(norms):
        ctx = AggContext(round_, seed, client_id=i, state=state)
        u = agg.prepare(_vec(n), 1.0, ctx)
        acc = agg.add(agg.zero(u) if acc is None else acc, u, 1.0)
    server = AggContext(round_, seed, SERVER, state=state)
    out = agg.result(acc, server)["w"]
    return out, next_state(agg, acc, state, server)


def _clip_of(state: AggState) -> float:
    return dict(state)[CLIP_NORM]


def test_noise_free_clip_norm_follows_the_geometric_update_by_hand() -> None:
    """γ = 0.5, η = 0.2, C_0 = 1, σ_b = 0, m = the reporting count.

    Round 0, norms (0.5, 2, 3): b = (1, 0, 0), Σ(b − ½) = −0.5, b̄ = −0.5/3 + ½ = 1/3,
    C_1 = 1 · exp(−0.2 (1/3 − ½)) = exp(1/30) = 1.033895113…
    The released mean is (0.5 + 1 + 1)/3 = 0.8333… on the first coordinate (2 and 3 clipped to 1).
    Round 1, norms (0.5, 1.02, 3) against C_1 = 1.0339: b = (1, 1, 0), b̄ = 2/3,
    C_2 = C_1 · exp(−0.2 (2/3 − ½)) = exp(1/30 − 1/30) = 1.
    Round 2, norms (0.1, 0.2, 0.3, 0.4) all inside: b̄ = 1, C_3 = exp(−0.2 · 0.5) = 0.904837…
    """
    agg = AdaptiveClip(target_quantile=0.5, learning_rate=0.2, initial_norm=1.0)
    state = init_state(agg)
    assert state == ((CLIP_NORM, 1.0),)
    out, state = _round(agg, [0.5, 2.0, 3.0], state, 0)
    assert float(out[0]) == pytest.approx(2.5 / 3, rel=1e-12)
    assert _clip_of(state) == pytest.approx(1.033895113, rel=1e-9)
    out, state = _round(agg, [0.5, 1.02, 3.0], state, 1)
    # 3.0 clipped to C_1: mean (0.5 + 1.02 + 1.0339)/3
    assert float(out[0]) == pytest.approx((0.5 + 1.02 + 1.033895113) / 3, rel=1e-9)
    assert _clip_of(state) == pytest.approx(1.0, rel=1e-12)
    _, state = _round(agg, [0.1, 0.2, 0.3, 0.4], state, 2)
    assert _clip_of(state) == pytest.approx(0.904837418, rel=1e-9)


def test_expected_clients_is_the_denominator() -> None:
    """m = 4 expected, 2 report, both unclipped: Σ(b − ½) = 1, b̄ = 1/4 + ½ = 0.75 (not 1),
    C_1 = 2 · exp(−0.5 (0.75 − 0.25)) = 2 e^(−0.25) = 1.557601566…"""
    agg = AdaptiveClip(
        target_quantile=0.25, learning_rate=0.5, initial_norm=2.0, expected_clients=4
    )
    _, state = _round(agg, [0.1, 1.0], init_state(agg), 0)
    assert _clip_of(state) == pytest.approx(2.0 * math.exp(-0.25), rel=1e-12)


def test_seeded_count_noise_by_hand() -> None:
    """σ_b = 1.5, m = 3: the count noise is σ_b · N(0,1) from the server's stream
    ``agg/dp-count-noise`` of (seed, round); C_{t+1} = C_t exp(−η ((Σ(b−½) + noise)/m + ½ − γ))
    round after round."""
    agg = AdaptiveClip(
        target_quantile=0.6,
        learning_rate=0.3,
        initial_norm=0.8,
        count_noise=1.5,
        expected_clients=3,
        noise_source="seeded",
    )
    rounds = [[0.1, 0.5, 2.0], [0.9, 0.95, 0.2], [3.0, 3.0, 3.0]]
    state = init_state(agg)
    c = 0.8
    for r, norms in enumerate(rounds):
        noise = 1.5 * float(
            torch.randn(
                (), generator=generator(5, r, SERVER, "agg/dp-count-noise"), dtype=torch.float64
            )
        )
        s = sum(0.5 if n <= c else -0.5 for n in norms)
        expected = c * math.exp(-0.3 * ((s + noise) / 3 + 0.5 - 0.6))
        _, state = _round(agg, norms, state, r)
        assert _clip_of(state) == pytest.approx(expected, rel=1e-12)
        assert _clip_of(state) != pytest.approx(c * math.exp(-0.3 * (s / 3 + 0.5 - 0.6)))
        c = expected


def test_clip_norm_tracks_the_target_quantile() -> None:
    """Norms uniform on (0, 2): the γ = 0.3 quantile is 0.6. From C_0 = 0.05 with η = 0.2 and
    50 clients a round, C converges there: the mean of C over rounds 200–399 is within 5 % of
    0.6 and the mean unclipped fraction within 0.03 of γ (the paper's Figure 1 behaviour)."""
    agg = AdaptiveClip(target_quantile=0.3, learning_rate=0.2, initial_norm=0.05)
    g = torch.Generator().manual_seed(0)
    state = init_state(agg)
    clips, fractions = [], []
    for r in range(400):
        norms = (torch.rand(50, generator=g, dtype=torch.float64) * 2.0).tolist()
        c = _clip_of(state)
        fractions.append(sum(n <= c for n in norms) / 50)
        clips.append(c)
        _, state = _round(agg, norms, state, r)
    # at most ×e^(0.2·0.3) a round while far below: ~41 rounds from 0.05 to 0.6
    assert clips[0] == 0.05 and clips[20] < 0.2 and clips[80] > 0.45
    late = clips[200:]
    assert sum(late) / len(late) == pytest.approx(0.6, rel=0.05)
    assert sum(fractions[200:]) / 200 == pytest.approx(0.3, abs=0.03)


def test_server_clamps_a_forged_unclipped_bit() -> None:
    """A client that sends b − ½ = 7 moves the sum by ½ at most (its sensitivity)."""
    agg = AdaptiveClip(initial_norm=1.0)
    state = init_state(agg)
    honest = agg.prepare(_vec(0.5), 1.0, AggContext(0, 0, 1, state=state))
    assert float(honest.unclipped) == 0.5
    forged = ClippedUpdate(update=_vec(0.5), unclipped=torch.tensor(7.0, dtype=torch.float64))
    acc = agg.add(agg.add(agg.zero(honest), honest, 1.0), forged, 1.0)
    assert float(acc.unclipped) == 1.0 and int(acc.count) == 2


def test_missing_state_is_a_clear_error() -> None:
    agg = AdaptiveClip(initial_norm=1.0)
    with pytest.raises(AggStateError, match="clip_norm"):
        agg.prepare(_vec(0.5), 1.0, AggContext(0, 0, 1))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_quantile": 1.5},
        {"learning_rate": 0.0},
        {"initial_norm": -1.0},
        {"count_noise": math.nan},
        {"expected_clients": 0},
        {"noise_source": "mt19937"},
    ],
)
def test_settings_are_validated(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        AdaptiveClip(**kwargs)  # type: ignore[arg-type]


# -- the privacy of the two releases ------------------------------------------------------------


def test_update_noise_multiplier_by_hand() -> None:
    """z_Δ = (z⁻² − (2σ_b)⁻²)^(−½): z = 1, σ_b = 1 → (1 − ¼)^(−½) = 1.154700538…;
    z = 2, σ_b = 5 → (¼ − 1/100)^(−½) = 0.24^(−½) = 2.041241452…; σ_b = 0 → z."""
    assert update_noise_multiplier(1.0, 1.0) == pytest.approx(1.154700538, rel=1e-9)
    assert update_noise_multiplier(2.0, 5.0) == pytest.approx(2.041241452, rel=1e-9)
    assert update_noise_multiplier(2.0, 0.0) == 2.0
    with pytest.raises(ValueError, match="count_noise"):
        update_noise_multiplier(2.0, 1.0)  # σ_b = z/2: no budget left for the updates


@settings(max_examples=50, deadline=None)
@given(
    z=st.floats(min_value=0.1, max_value=20.0),
    excess=st.floats(min_value=1.01, max_value=100.0),
)
def test_the_two_releases_compose_to_one_gaussian_at_z(z: float, excess: float) -> None:
    """Property: z_Δ ≥ z and z_Δ⁻² + (2σ_b)⁻² = z⁻² for every σ_b > z/2."""
    sigma_b = excess * z / 2
    z_delta = update_noise_multiplier(z, sigma_b)
    assert z_delta >= z
    assert z_delta**-2 + (2 * sigma_b) ** -2 == pytest.approx(z**-2, rel=1e-9)


@pytest.mark.parametrize(("z", "sigma_b"), [(1.0, 1.0), (0.7, 2.5), (3.0, 5.0)])
def test_accountant_agrees_the_pair_costs_one_gaussian_at_z(z: float, sigma_b: float) -> None:
    """dp-accounting's RDP accountant: composing the update release (multiplier z_Δ) with the
    count release (σ_b on sensitivity ½, multiplier 2σ_b) gives the ε of one Gaussian at z."""
    pair = RdpAccountant()
    pair.compose(dpa.GaussianDpEvent(update_noise_multiplier(z, sigma_b)))
    pair.compose(dpa.GaussianDpEvent(2 * sigma_b))
    one = RdpAccountant()
    one.compose(dpa.GaussianDpEvent(z))
    assert pair.get_epsilon(1e-5) == pytest.approx(one.get_epsilon(1e-5), rel=1e-6)


def _dp_adaptive(
    z: float = 1.0, sigma_b: float = 1.0, c0: float = 0.5, **noise_kw: object
) -> AdaptiveClip:
    noise = GaussianNoise(noise_multiplier=z, clip_norm=c0, **noise_kw)  # type: ignore[arg-type]
    return AdaptiveClip(initial_norm=c0, count_noise=sigma_b, inner=noise)


def test_noise_follows_the_adaptive_clip_norm_with_z_delta() -> None:
    """Central noise under adaptive clipping: the release is (Σ clipped + z_Δ C_t · N(0, I))/k
    with the server's "dp-noise" stream, C_t read from the round's state (here C_t = 0.3)."""
    z, sigma_b, k = 1.0, 1.0, 2
    agg = resolve(_dp_adaptive(z, sigma_b, noise_source="seeded"), cohort=k, seeded=True)
    state = ((CLIP_NORM, 0.3),)
    out, _ = _round(agg, [0.1, 2.0], state, 4)
    noise = torch.randn(3, generator=generator(5, 4, SERVER, "agg/dp-noise"), dtype=torch.float64)
    z_delta = 1.0 / math.sqrt(0.75)
    expected = (
        torch.tensor([0.1 + 0.3, 0.0, 0.0], dtype=torch.float64) + z_delta * 0.3 * noise
    ) / k
    assert torch.allclose(out, expected, rtol=1e-12, atol=1e-15)


def test_chain_checks_for_adaptive_clipping() -> None:
    assert check_chain(_dp_adaptive()) is not None
    with pytest.raises(ValueError, match="initial_norm"):
        check_chain(AdaptiveClip(initial_norm=0.4, count_noise=1.0, inner=GaussianNoise(
            noise_multiplier=1.0, clip_norm=0.5)))  # fmt: skip
    with pytest.raises(ValueError, match="count_noise"):
        check_chain(_dp_adaptive(z=1.0, sigma_b=0.0))
    with pytest.raises(ValueError, match="count_noise"):
        check_chain(_dp_adaptive(z=4.0, sigma_b=1.5))  # σ_b ≤ z/2
    with pytest.raises(ValueError, match="distributed"):
        check_chain(_dp_adaptive(distributed=True))
    with pytest.raises(ValueError, match="count_noise"):
        check_chain(_dp_adaptive(sigma_b=1.0, count_noise=2.0))


def test_plan_resolves_the_chain_and_accounts_at_z() -> None:
    """The runner's plan: k and the seeded source on both stages, σ_b copied into the noise
    stage (its update multiplier becomes z_Δ), and the accountant composes one Gaussian at z
    per round (the same ε as fixed clipping at z), with an agg_clip_norm probe."""
    plan = plan_privacy(
        _dp_adaptive(z=1.0, sigma_b=2.0),
        weighting="uniform",
        num_clients=100,
        cohort=10,
        sampler=PoissonSampler(),
        seeded=True,
    )
    outer = plan.aggregator
    assert isinstance(outer, AdaptiveClip) and outer.expected_clients == 10
    assert outer.noise_source == "seeded"
    noise = outer.inner
    assert isinstance(noise, GaussianNoise) and noise.count_noise == 2.0
    assert noise.update_multiplier == pytest.approx((1.0 - 1.0 / 16) ** -0.5)
    assert plan.accounting is not None and plan.accounting.noise_multiplier == 1.0
    from fedkit.algorithm import RoundInfo

    info = RoundInfo(
        round=2, seed=0, num_clients=100, cohort_size=10, agg_state=((CLIP_NORM, 0.7),)
    )
    metrics: dict[str, float] = {}
    for probe in plan.probes:
        metrics.update(probe({}, info))
    assert metrics["agg_clip_norm"] == 0.7 and metrics["dp_epsilon"] > 0


def test_plan_without_noise_resolves_the_count_noise_source() -> None:
    agg = AdaptiveClip(initial_norm=0.5, count_noise=0.5, inner=WeightedMean())
    plan = plan_privacy(
        agg, weighting=None, num_clients=10, cohort=5, sampler=PoissonSampler(), seeded=True
    )
    assert isinstance(plan.aggregator, AdaptiveClip)
    assert plan.aggregator.noise_source == "seeded" and plan.aggregator.expected_clients is None
    assert plan.accounting is None
