"""DP-FedAvg's Gaussian noise stage: clipping, the noise scale, the fixed denominator, chain
checks, distributed noise and the two noise sources."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chi2

from fedkit.aggregate import AggContext, WeightedMean, aggregate
from fedkit.experiment.config import experiment_from_mapping
from fedkit.privacy.chain import check_chain, find_noise, resolve
from fedkit.privacy.clip import ClipNorm, global_norm
from fedkit.privacy.gaussian import GaussianNoise
from fedkit.privacy.noise import NoiseDraw, os_normal
from fedkit.rng import SERVER
from fedkit.robust.trimmed_mean import TrimmedMean


def dp_chain(
    z: float = 1.0, c: float = 1.0, k: int = 4, *, source: str = "seeded", distributed: bool = False
) -> ClipNorm:
    noise = GaussianNoise(
        noise_multiplier=z,
        clip_norm=c,
        expected_clients=k,
        noise_source=source,  # type: ignore[arg-type]
        distributed=distributed,
    )
    return ClipNorm(max_norm=c, inner=noise)


def _release(
    agg: ClipNorm, updates: list[torch.Tensor], round_: int, seed: int = 3
) -> torch.Tensor:
    prepared = [
        (agg.prepare({"w": u}, 1.0, AggContext(round_, seed, client_id=i)), 1.0)
        for i, u in enumerate(updates)
    ]
    acc = aggregate(agg, prepared)
    out: torch.Tensor = agg.result(acc, AggContext(round_, seed, SERVER))["w"]
    return out


def _chi2_bounds(n: int, p: float = 1e-6) -> tuple[float, float]:
    return float(chi2.ppf(p, n)), float(chi2.ppf(1.0 - p, n))


@pytest.mark.parametrize("source", ["seeded", "os"])
@pytest.mark.parametrize("distributed", [False, True])
def test_noise_on_zero_updates_has_std_zC_over_k(source: str, distributed: bool) -> None:
    """k zero updates: the release is pure noise N(0, (zC/k)²) per coordinate. Over n draws,
    Σ x² / (zC/k)² ~ χ²(n): it must lie within the χ² quantiles at 1e-6 and 1 − 1e-6 (a std
    off by 2 % leaves that band for n = 40 000), and the mean within 5 standard errors."""
    z, c, k, dim, rounds = 1.3, 0.7, 4, 2000, 20
    agg = dp_chain(z, c, k, source=source, distributed=distributed)
    draws = torch.cat([_release(agg, [torch.zeros(dim)] * k, r) for r in range(rounds)])
    n = draws.numel()
    std = z * c / k  # = 0.2275 per coordinate
    stat = float((draws / std).pow(2).sum())
    lo, hi = _chi2_bounds(n)
    assert lo < stat < hi
    assert abs(float(draws.mean())) < 5 * std / math.sqrt(n)
    # the band is narrow enough to tell a 2 % error in the std apart
    assert not lo < stat / 1.02**2 < hi or not lo < stat / 0.98**2 < hi


def test_release_is_clipped_sum_plus_noise_over_expected_k() -> None:
    """Updates of norms 3, 0.5 and 2 with C = 1: clipped to norms 1, 0.5, 1; the release is
    (Σ clipped + noise) / k with k = 4 (the expected cohort, not the 3 that reported)."""
    agg = dp_chain(z=0.5, c=1.0, k=4)
    ups = [torch.tensor([3.0, 0.0]), torch.tensor([0.0, 0.5]), torch.tensor([0.0, -2.0])]
    out = _release(agg, ups, round_=7)
    # the same round's noise, drawn as the stage draws it: sorted paths, float64, σ = zC = 0.5
    noise = NoiseDraw("seeded", AggContext(7, 3, SERVER)).normal((2,), 0.5)
    clipped_sum = torch.tensor([1.0, 0.5 - 1.0], dtype=torch.float64)
    assert torch.allclose(out, (clipped_sum + noise) / 4, atol=1e-7)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-50, 50), min_size=3, max_size=3), st.floats(0.1, 5.0))
def test_prepared_update_norm_is_at_most_C(values: list[float], c: float) -> None:
    agg = ClipNorm(max_norm=c, inner=GaussianNoise(noise_multiplier=1.0, clip_norm=c))
    out = agg.prepare({"w": torch.tensor(values, dtype=torch.float64)}, 1.0, AggContext(0, 0, 1))
    assert global_norm(out) <= c * (1 + 1e-12)
    norm = math.sqrt(sum(v * v for v in values))
    if norm <= c:  # not clipped: unchanged
        assert torch.equal(out["w"], torch.tensor(values, dtype=torch.float64))


def test_seeded_noise_repeats_and_os_noise_does_not() -> None:
    """Two coordinators of one experiment file (noise_source left "auto", as a deployment gets
    it) with the same seed and round draw different noise; seeded simulations draw the same."""
    doc = {
        "data": {"dataset": "synthetic", "num_clients": 6},
        "model": {"name": "logreg"},
        "algorithm": {"name": "fedavg", "weighting": "uniform"},
        "aggregator": {
            "name": "clip",
            "max_norm": 1.0,
            "inner": {"name": "gaussian", "noise_multiplier": 1.0, "clip_norm": 1.0},
        },
        "run": {"rounds": 1, "clients_per_round": 3, "seed": 5},
    }
    coordinators = [
        resolve(
            experiment_from_mapping(doc, name="a", study="s").algorithm.algorithm.aggregator,  # type: ignore[union-attr]
            cohort=3,
            seeded=False,
        )
        for _ in range(2)
    ]
    assert find_noise(coordinators[0]).noise_source == "auto"  # type: ignore[union-attr]
    ups = [torch.zeros(50)] * 3
    a, b = (_release(agg, ups, round_=0, seed=5) for agg in coordinators)
    assert not torch.equal(a, b)
    seeded = [resolve(agg, cohort=3, seeded=True) for agg in coordinators]
    assert find_noise(seeded[0]).noise_source == "seeded"  # type: ignore[union-attr]
    a, b = (_release(agg, ups, round_=0, seed=5) for agg in seeded)
    assert torch.equal(a, b)
    assert not torch.equal(a, _release(seeded[0], ups, round_=1, seed=5))


def test_os_normal_moments() -> None:
    """Box–Muller from os.urandom: n = 200 000 draws, Σz² ~ χ²(n) within its 1e-6 quantiles."""
    z = os_normal((200_000,))
    lo, hi = _chi2_bounds(z.numel())
    assert lo < float(z.pow(2).sum()) < hi
    assert abs(float(z.mean())) < 5 / math.sqrt(z.numel())
    assert os_normal((0,)).numel() == 0


def test_distributed_clients_add_their_share_and_server_tops_up_missing() -> None:
    """Distributed: client i's prepared update is Δ_i + N(0, σ²/k) from its own stream; with
    m = 2 of k = 4 reporting, the server adds N(0, σ²·2/4) so the sum carries σ² in all."""
    z, c, k = 2.0, 1.0, 4
    agg = dp_chain(z, c, k, distributed=True)
    seen = agg.prepare({"w": torch.zeros(3)}, 1.0, AggContext(2, 3, client_id=1))["w"]
    own = NoiseDraw("seeded", AggContext(2, 3, client_id=1)).normal((3,), z * c / 2)
    assert torch.allclose(seen.double(), own, atol=1e-6)
    out = _release(agg, [torch.zeros(3), torch.zeros(3)], round_=2)
    shares = sum(
        NoiseDraw("seeded", AggContext(2, 3, client_id=i)).normal((3,), 1.0).float().double()
        for i in range(2)
    )
    top_up = NoiseDraw("seeded", AggContext(2, 3, SERVER)).normal((3,), z * c * math.sqrt(2 / 4))
    assert torch.allclose(out, (shares + top_up) / k, atol=1e-6)


def test_chain_checks_name_what_to_change() -> None:
    noise = GaussianNoise(noise_multiplier=1.0, clip_norm=1.0)
    assert check_chain(WeightedMean()) is None
    assert check_chain(ClipNorm(max_norm=1.0, inner=noise), weighting="uniform") is noise
    with pytest.raises(ValueError, match="clip stage directly outside"):
        check_chain(noise)
    with pytest.raises(ValueError, match=r"clip_norm .* must equal max_norm"):
        check_chain(ClipNorm(max_norm=2.0, inner=noise))
    with pytest.raises(ValueError, match="weighting = 'uniform'"):
        check_chain(ClipNorm(max_norm=1.0, inner=noise), weighting="examples")
    with pytest.raises(ValueError, match="plain mean"):
        GaussianNoise(noise_multiplier=1.0, clip_norm=1.0, inner=TrimmedMean(beta=0.1))
    with pytest.raises(ValueError, match="noise_multiplier"):
        GaussianNoise(noise_multiplier=0.0, clip_norm=1.0)
    with pytest.raises(ValueError, match="expected_clients"):
        resolve(dp_chain(k=4), cohort=5, seeded=True)
    with pytest.raises(ValueError, match="uniform client weights"):
        aggregate(dp_chain(), [({"w": torch.ones(2)}, 3.0)])
    unset = ClipNorm(max_norm=1.0, inner=noise)
    acc = aggregate(unset, [({"w": torch.ones(2)}, 1.0)])
    with pytest.raises(ValueError, match="expected_clients is unset"):
        unset.result(acc, AggContext(0, 0))
    resolved = resolve(unset, cohort=6, seeded=True)
    assert find_noise(resolved) == GaussianNoise(
        noise_multiplier=1.0, clip_norm=1.0, expected_clients=6, noise_source="seeded"
    )
