"""Samplers (fedkit.samplers): exact inclusion probabilities, checked empirically over many
draws, and the Horvitz–Thompson aggregate unbiased for the full-participation mean (exact
expectation by enumerating the sampling design, plus a Monte-Carlo check)."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fedkit.aggregate import AggContext, aggregate
from fedkit.algorithm import RoundInfo
from fedkit.registry import AGGREGATORS, SAMPLERS
from fedkit.samplers.availability import AvailabilityAware
from fedkit.samplers.importance import ImportanceWeighted, InclusionError, with_inclusion
from fedkit.samplers.population import simulated_population
from fedkit.samplers.power_of_choice import PowerOfChoice
from fedkit.samplers.probability import (
    ProbabilitySampler,
    capped_inclusion,
    read_weights,
    systematic,
)
from fedkit.sampling import Population, PopulationError, UniformSampler, draw_cohort
from fedkit.sim.system import SystemModel, SystemParticipation

ROUNDS = 2000


def info(r: int, n: int = 5, k: int = 2, seed: int = 7) -> RoundInfo:
    return RoundInfo(round=r, seed=seed, num_clients=n, cohort_size=k)


def counts(draw: Callable[[int], list[int]], rounds: int = ROUNDS) -> Counter[int]:
    c: Counter[int] = Counter()
    for r in range(rounds):
        c.update(draw(r))
    return c


def assert_binomial(c: Counter[int], pi: list[float], rounds: int = ROUNDS) -> None:
    """Rounds are independent draws, so each client's count is exactly Binomial(rounds, π_k):
    every count lies within 5 standard deviations of ``rounds · π_k`` (a π of 0 or 1 must be hit
    never or always). No Pearson χ² over the clients: the clients of one round are dependent
    (the cohort size is fixed; systematic sampling couples neighbours), so that sum is not
    χ²(N) — with π = (.88, .44, .29, .22, .18) it exceeded 12 in 2 of 10 seeded batches of
    2,000 rounds, with every client's count unbiased over 20,000 rounds."""
    for k, p in enumerate(pi):
        mean, var = rounds * p, rounds * p * (1 - p)
        if var == 0:
            assert c[k] == mean, (k, c[k], mean)
            continue
        assert abs(c[k] - mean) <= 5 * math.sqrt(var), (k, c[k], mean)
    assert sum(c.values()) == round(rounds * sum(pi))  # m distinct clients every round


# --- inclusion probabilities: hand-computed ------------------------------------------------


def test_capped_inclusion_hand_computed() -> None:
    # p = (1, 1, 2, 4), m = 2: c = 2/8 gives (.25, .25, .5, 1.0); client 3 reaches 1 and is
    # capped; the other 1 unit over weights 1+1+2 = 4 gives c = 1/4: (.25, .25, .5, 1).
    pi = capped_inclusion(torch.tensor([1.0, 1.0, 2.0, 4.0]), 2)
    assert pi.tolist() == [0.25, 0.25, 0.5, 1.0]
    # p = (1, 1, 1, 9), m = 2: c = 2/12 gives 1.5 for client 3 -> capped; then c = 1/3.
    pi = capped_inclusion(torch.tensor([1.0, 1.0, 1.0, 9.0]), 2)
    assert pi.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])


def test_capped_inclusion_refuses_impossible_cohorts() -> None:
    with pytest.raises(ValueError, match="cannot draw 3 distinct"):
        capped_inclusion(torch.tensor([1.0, 0.0, 2.0]), 3)
    with pytest.raises(ValueError, match="finite and >= 0"):
        capped_inclusion(torch.tensor([1.0, -1.0, 2.0]), 1)


@settings(max_examples=60, deadline=None)
@given(
    w=st.lists(st.floats(0.0, 50.0), min_size=2, max_size=12),
    frac=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**31),
)
@example(w=[2.2250738585e-313, 5e-324], frac=0.5, seed=0)  # subnormal weights: 1/sum overflows
@example(w=[6.0, 2.2250738585072014e-308, 1.1125369292536007e-308], frac=0.5, seed=0)  # the
# same beside a capped weight: the rest scaled by the overall maximum is subnormal
def test_systematic_draws_exactly_m_distinct_ids_never_a_zero_weight(
    w: list[float], frac: float, seed: int
) -> None:
    p = torch.tensor(w, dtype=torch.float64)
    positive = int((p > 0).sum())
    if positive == 0:
        return
    m = max(1, min(positive, round(frac * positive)))
    pi = capped_inclusion(p, m)
    assert float(pi.sum()) == pytest.approx(m)
    assert bool((pi <= 1.0).all()) and bool((pi[p == 0] == 0).all())
    ids = systematic(pi, torch.Generator().manual_seed(seed))
    assert len(ids) == m == len(set(ids)) and ids == sorted(ids)
    assert all(w[i] > 0 for i in ids)


# --- inclusion probabilities: empirical over many draws ---------------------------------------


def test_uniform_inclusion_is_k_over_n_empirically() -> None:
    s = UniformSampler()
    pop = Population(5)
    assert s.inclusion(pop, 2, info(0)) == (0.4,) * 5
    assert_binomial(counts(lambda r: s.sample(5, 2, info(r))), [0.4] * 5)


@pytest.mark.parametrize(
    ("sampler", "sizes", "expected"),
    [
        # size law: n = (10, 10, 20, 40, 120), m = 2: c = 2/200 -> client 4 gets 1.2, capped;
        # the remaining 1 over 80 examples: (1/8, 1/8, 1/4, 1/2, 1).
        (ProbabilitySampler(law="size"), (10, 10, 20, 40, 120), [1 / 8, 1 / 8, 1 / 4, 1 / 2, 1]),
        # power law, exponent 1: p = (1, 1/2, 1/3, 1/4, 1/5), sum 137/60; c = 2 / (137/60)
        # = 120/137 -> (120, 60, 40, 30, 24)/137, all below 1.
        (
            ProbabilitySampler(law="power", exponent=1.0),
            (),
            [120 / 137, 60 / 137, 40 / 137, 30 / 137, 24 / 137],
        ),
        # explicit weights (0, 1, 1, 2, 0): c = 2/4 -> (0, .5, .5, 1, 0).
        (ProbabilitySampler(law="weights", weights=(0, 1, 1, 2, 0)), (), [0, 0.5, 0.5, 1, 0]),
    ],
)
def test_probability_sampler_inclusion_matches_pi_empirically(
    sampler: ProbabilitySampler, sizes: tuple[int, ...], expected: list[float]
) -> None:
    pop = Population(5, sizes)
    assert list(sampler.inclusion(pop, 2, info(0))) == pytest.approx(expected)
    c = counts(lambda r: sampler.select(pop, 2, info(r)))
    assert_binomial(c, expected)
    assert all(len(sampler.select(pop, 2, info(r))) == 2 for r in range(50))


def test_power_of_choice_inclusion_by_enumeration() -> None:
    # Uniform candidates: every 3-subset A of 5 clients with probability 1/10; the 2 clients
    # of A with the highest loss are kept. A client of loss rank r (0 = highest) is in
    # C(4, 2) = 6 subsets and dropped only when both others rank above it (C(r, 2) of them):
    # P = (6 - C(r, 2)) / 10. Losses (0.5, 3, 2, 1, 4) give ranks (4, 1, 2, 3, 0):
    # (0, .6, .5, .3, .6), summing to m = 2.
    loss = {0: 0.5, 1: 3.0, 2: 2.0, 3: 1.0, 4: 4.0}
    exact = [0.0] * 5
    for a in itertools.combinations(range(5), 3):
        for k in sorted(a, key=lambda c: -loss[c])[:2]:
            exact[k] += 1 / 10
    assert exact == pytest.approx([0.0, 0.6, 0.5, 0.3, 0.6])
    pop = Population(5, local_loss=lambda _p, ids: {i: loss[i] for i in ids}, params={})
    s = PowerOfChoice(d=3, law="uniform")
    assert_binomial(counts(lambda r: s.select(pop, 2, info(r))), exact)


def test_power_of_choice_keeps_the_highest_losses_and_ranks_unscored_last() -> None:
    loss = {0: 0.5, 1: 3.0, 2: float("nan"), 3: 1.0, 4: 4.0}
    pop = Population(5, (1,) * 5, local_loss=lambda _p, ids: {i: loss[i] for i in ids}, params={})
    # d = N: the candidates are everyone, so the cohort is the global top 2 by loss.
    assert PowerOfChoice(d=5).select(pop, 2, info(3)) == [1, 4]
    assert PowerOfChoice(d=5).select(pop, 4, info(3)) == [0, 1, 3, 4]  # NaN ranks last
    with pytest.raises(PopulationError, match="local losses"):
        PowerOfChoice(d=5, law="uniform").sample(5, 2, info(0))


def test_availability_sampler_draws_uniformly_among_the_available() -> None:
    up = {0, 2, 3, 5}  # of 6 clients: each available one with probability 2/4

    pop = Population(6, available=lambda c, _i: c in up)
    s = AvailabilityAware()
    c = counts(lambda r: s.select(pop, 2, info(r, n=6)))
    assert_binomial(c, [0.5 if k in up else 0.0 for k in range(6)])
    assert s.select(pop, 5, info(0, n=6)) == [0, 2, 3, 5]  # fewer available than k: all
    with pytest.raises(PopulationError, match="system model"):
        s.sample(6, 2, info(0, n=6))


def test_simulated_population_agrees_with_the_system_models_hook() -> None:
    from fedkit.local import LocalTraining

    sizes = [10, 20, 30, 40, 50, 60]
    system = SystemModel(availability=0.5)
    local = LocalTraining(lr=0.1)
    pop = simulated_population(sizes, system, local)
    hook = SystemParticipation(system, num_examples=sizes, local=local)
    assert pop.available is not None
    seen = set()
    for r in range(20):
        for c in range(6):
            up = pop.available(c, info(r, n=6))
            assert up == (hook(c, info(r, n=6)) is not None)
            seen.add(up)
    assert seen == {True, False}
    picked = AvailabilityAware().select(pop, 3, info(4, n=6))
    assert all(hook(c, info(4, n=6)) is not None for c in picked)


def test_draws_depend_only_on_seed_and_round() -> None:
    pop = Population(20, tuple(range(1, 21)))
    for s in (ProbabilitySampler(law="size"), ProbabilitySampler(law="power", exponent=2.0)):
        a = [draw_cohort(s, pop, 4, info(r, n=20)) for r in range(5)]
        assert a == [draw_cohort(s, pop, 4, info(r, n=20)) for r in range(5)]
        assert len({tuple(x) for x in a}) > 1
        assert draw_cohort(s, pop, 4, info(0, n=20, seed=8)) != a[0] or a[1] != a[0]


# --- the importance-corrected aggregate -------------------------------------------------------

DELTAS = [torch.tensor([1.0, -2.0]), torch.tensor([4.0, 0.5]), torch.tensor([-3.0, 1.0])]
DELTAS += [torch.tensor([0.25, 8.0]), torch.tensor([2.0, 2.0])]
SIZES = (10, 30, 5, 50, 25)


def ht_aggregate(
    cohort: list[int], pi: tuple[float, ...], weights: tuple[float, ...]
) -> torch.Tensor:
    agg = ImportanceWeighted[dict[str, torch.Tensor]](inclusion=pi, total_weight=sum(weights))
    prepared = [
        (agg.prepare({"w": DELTAS[k]}, weights[k], AggContext(round=0, seed=0, client_id=k)), 1.0)
        for k in cohort
    ]
    return agg.result(aggregate(agg, prepared), AggContext(round=0, seed=0))["w"]


def design(pi: torch.Tensor) -> dict[tuple[int, ...], float]:
    """The exact distribution of systematic sampling's cohort: every order (1/N!) and, within
    an order, the intervals of u between the fractional parts of the cumulative sums."""
    n, m = pi.numel(), round(float(pi.sum()))
    out: dict[tuple[int, ...], float] = {}
    for order in itertools.permutations(range(n)):
        cum = [0.0, *itertools.accumulate(float(pi[k]) for k in order)]
        cuts = sorted({0.0, 1.0, *(c - math.floor(c) for c in cum)})
        for lo, hi in itertools.pairwise(cuts):
            u = (lo + hi) / 2  # the cohort is constant for u in (lo, hi)
            picked = tuple(
                sorted(
                    order[i]
                    for i in range(n)
                    if any(cum[i] <= u + j < cum[i + 1] for j in range(m))
                )
            )
            out[picked] = out.get(picked, 0.0) + (hi - lo) / math.factorial(n)
    return out


@pytest.mark.parametrize("weighting", ["examples", "uniform"])
def test_importance_aggregate_is_unbiased_by_exact_enumeration(weighting: str) -> None:
    weights = tuple(float(n) for n in SIZES) if weighting == "examples" else (1.0,) * 5
    full = sum(w * d for w, d in zip(weights, DELTAS, strict=True)) / sum(weights)
    s = ProbabilitySampler(law="power", exponent=1.5)
    pi = s.inclusion(Population(5), 2, info(0))
    dist = design(torch.tensor(pi, dtype=torch.float64))
    assert sum(dist.values()) == pytest.approx(1.0)
    for k in range(5):  # the design's marginals are the published π (what makes HT unbiased)
        assert sum(p for c, p in dist.items() if k in c) == pytest.approx(pi[k])
    expected = sum(p * ht_aggregate(list(c), pi, weights) for c, p in dist.items())
    assert torch.allclose(expected, full.double(), atol=1e-12)
    # the plain mean of the cohort is biased under the same design (so the test can fail)
    plain = sum(
        p * sum(weights[k] * DELTAS[k] for k in c) / sum(weights[k] for k in c)
        for c, p in dist.items()
    )
    assert not torch.allclose(plain.double(), full.double(), atol=1e-3)


def test_importance_aggregate_is_unbiased_by_monte_carlo() -> None:
    weights = tuple(float(n) for n in SIZES)
    full = (sum(w * d for w, d in zip(weights, DELTAS, strict=True)) / sum(weights)).double()
    s = ProbabilitySampler(law="power", exponent=1.0)
    pop = Population(5, SIZES)
    pi = s.inclusion(pop, 2, info(0))
    draws = torch.stack([ht_aggregate(s.select(pop, 2, info(r)), pi, weights) for r in range(2500)])
    se = draws.std(0) / math.sqrt(draws.shape[0])
    assert bool(((draws.mean(0) - full).abs() <= 5 * se).all()), (draws.mean(0), full, se)


def test_importance_aggregate_refuses_unresolved_or_zero_probabilities() -> None:
    agg = ImportanceWeighted[dict[str, torch.Tensor]]()
    with pytest.raises(InclusionError, match="was not given"):
        agg.prepare({"w": torch.ones(2)}, 1.0, AggContext(round=0, seed=0, client_id=0))
    with pytest.raises(InclusionError, match=r"\(0, 1\]"):
        ImportanceWeighted[dict[str, torch.Tensor]](inclusion=(0.5, 0.0), total_weight=2.0)


def test_with_inclusion_fills_the_chain_from_the_sampler() -> None:
    from fedkit.algorithms.fedavg import FedAvg
    from fedkit.local import LocalTraining
    from fedkit.privacy.clip import ClipNorm

    algo = FedAvg(
        local=LocalTraining(lr=0.1), aggregator=ClipNorm(max_norm=1.0, inner=ImportanceWeighted())
    )
    pop = Population(5, SIZES)
    done = with_inclusion(algo, ProbabilitySampler(law="size"), pop, 2, info(0))
    inner = done.aggregator.inner
    # sizes (10, 30, 5, 50, 25), m = 2: c = 2/120; all below 1: π_k = n_k / 60.
    assert inner.inclusion == pytest.approx(tuple(n / 60 for n in SIZES))
    assert inner.total_weight == 120.0
    assert (
        with_inclusion(
            FedAvg(local=LocalTraining(lr=0.1)), PowerOfChoice(), pop, 2, info(0)
        ).aggregator
        == FedAvg(local=LocalTraining(lr=0.1)).aggregator
    )
    with pytest.raises(InclusionError, match="publishes"):
        with_inclusion(algo, PowerOfChoice(), pop, 2, info(0))
    with pytest.raises(InclusionError, match=r"\(0, 1\]"):
        with_inclusion(
            algo, ProbabilitySampler(law="weights", weights=(1, 1, 0, 1, 1)), pop, 2, info(0)
        )


def test_run_loop_corrects_a_probability_sampled_run() -> None:
    """A FedAvg run with the power-law sampler and the importance aggregate: the algorithm the
    executor sees carries the sampler's π, and the run loop's cohorts are the sampler's."""
    from fedkit.algorithms.fedavg import FedAvg
    from fedkit.local import LocalTraining
    from fedkit.params import model_params
    from fedkit.run import RunConfig, run
    from fedkit.sim.serial import SerialExecutor
    from tests.helpers.toy import toy_model, toy_store

    store = toy_store(6)
    ex = SerialExecutor(store, toy_model())
    seen: list[object] = []
    real = ex.execute

    def spy(algorithm, msg, cohort, info):  # type: ignore[no-untyped-def]
        seen.append(algorithm.aggregator)
        return real(algorithm, msg, cohort, info)

    ex.execute = spy  # type: ignore[method-assign]
    s = ProbabilitySampler(law="power", exponent=1.0)
    sizes = tuple(store.num_examples(c) for c in range(6))
    out = run(
        FedAvg(local=LocalTraining(lr=0.05), aggregator=ImportanceWeighted()),
        ex,
        model_params(toy_model()),
        RunConfig(rounds=3, clients_per_round=2, eval_every=0),
        sampler=s,
        population=Population(6, sizes),
    )
    pi = s.inclusion(Population(6), 2, info(0, n=6))
    assert all(isinstance(a, ImportanceWeighted) and a.inclusion == pi for a in seen)
    assert [list(h.cohort) for h in out.history] == [
        s.select(Population(6), 2, info(r, n=6, seed=0)) for r in range(3)
    ]
    assert all(math.isfinite(float(v.abs().sum())) for v in out.params.values())


def test_weights_file_is_read_and_checked(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_text("# weights\n1\n2.5\n\n0\n")
    assert read_weights(f, 3).tolist() == [1.0, 2.5, 0.0]
    s = ProbabilitySampler(law="file", path=str(f))
    assert s.inclusion(Population(3), 1, info(0, n=3)) == pytest.approx((1 / 3.5, 2.5 / 3.5, 0.0))
    with pytest.raises(ValueError, match="has 3 weights for 4"):
        read_weights(f, 4)
    f.write_text("1\n-2\n")
    with pytest.raises(ValueError, match=r"p.txt:2: weight '-2'"):
        read_weights(f, 2)
    f.write_text("1\nnan\n")
    with pytest.raises(ValueError, match=r"p.txt:2"):
        read_weights(f, 2)
    f.write_text("1\nabc\n")
    with pytest.raises(ValueError, match="not a number"):
        read_weights(f, 2)
    with pytest.raises(ValueError, match="no_such"):
        read_weights(tmp_path / "no_such", 2)


def test_sampler_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="law must be one of"):
        ProbabilitySampler(law="zipf")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weights are given exactly"):
        ProbabilitySampler(law="power", weights=(1.0,))
    with pytest.raises(ValueError, match="path is given exactly"):
        ProbabilitySampler(law="file")
    with pytest.raises(ValueError, match="d must be"):
        PowerOfChoice(d=0)
    with pytest.raises(PopulationError, match="data sizes"):
        ProbabilitySampler(law="size").sample(4, 2, info(0, n=4))


def test_registry_names_build_the_samplers() -> None:
    from fedkit.experiment.tables import build

    def sampler(table: dict[str, object]) -> object:
        return build(SAMPLERS, table, "sampler")

    assert sampler({"name": "proportional"}) == ProbabilitySampler(law="size")
    assert sampler({"name": "probability", "exponent": 2.0}) == ProbabilitySampler(
        law="power", exponent=2.0
    )
    assert sampler({"name": "power_of_choice", "d": 7}) == PowerOfChoice(d=7)
    assert sampler({"name": "availability"}) == AvailabilityAware()
    assert build(AGGREGATORS, {"name": "importance"}, "aggregator") == ImportanceWeighted()


@pytest.mark.slow
@pytest.mark.dist
def test_importance_corrected_run_under_two_gloo_ranks_equals_serial() -> None:
    """The π the run loop fills in travel with the algorithm to the other rank, whose clients
    scale their updates in ``prepare``: the same model as the serial run."""
    import functools

    from fedkit.algorithms.fedavg import FedAvg
    from fedkit.local import LocalTraining
    from fedkit.params import model_params
    from fedkit.run import RunConfig, run
    from fedkit.sim.processes import ProcessExecutor
    from fedkit.sim.serial import SerialExecutor
    from tests.helpers.toy import toy_model, toy_store

    alg = FedAvg(local=LocalTraining(lr=0.05), aggregator=ImportanceWeighted())
    cfg = RunConfig(rounds=3, clients_per_round=3, seed=4, eval_every=0)
    s = ProbabilitySampler(law="power", exponent=1.0)
    x0 = model_params(toy_model())
    pop = Population(8, tuple(toy_store(8).num_examples(c) for c in range(8)))
    ref = run(alg, SerialExecutor(toy_store(8), toy_model()), x0, cfg, sampler=s, population=pop)
    with ProcessExecutor(
        store=toy_store(8),
        model_fn=toy_model,
        store_fn=functools.partial(toy_store, 8),
        world_size=2,
    ) as ex:
        got = run(alg, ex, x0, cfg, sampler=s, population=pop)
    assert all(torch.allclose(ref.params[k], got.params[k], atol=1e-6) for k in ref.params)
