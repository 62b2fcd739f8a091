"""Client sampling: the cohort-size rule for a fraction C; uniform selection without replacement."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from fedkit.algorithm import RoundInfo
from fedkit.sampling import UniformSampler, cohort_from_fraction


@pytest.mark.parametrize(
    ("fraction", "clients", "expected"),
    [
        (0.1, 25, 3),  # 2.5 → 3 (halves up; Python's banker's round gave 2)
        (0.1, 35, 4),  # 3.5 → 4 (banker's round gives 4 too: both neighbours checked)
        (0.1, 45, 5),  # 4.5 → 5 (banker's round gave 4)
        (0.58, 25, 15),  # 0.58·25 = 14.499999999999998 in floats: the intended 14.5 → 15
        (0.7, 45, 32),  # 0.7·45 = 31.499999999999996 in floats: the intended 31.5 → 32
        (0.3, 10, 3),  # 0.3·10 = 3.0000000000000004 in floats → 3
        (0.1, 100, 10),
        (0.24, 10, 2),  # 2.4 → 2
        (0.26, 10, 3),  # 2.6 → 3
        (0.01, 10, 1),  # 0.1 → 0, at least one client
        (0.04, 10, 1),  # 0.4 → 0 → 1
        (1.0, 7, 7),
        (0.999, 7, 7),  # 6.993 → 7, never above N
        (0.5, 1, 1),  # 0.5 → 1
    ],
)
def test_cohort_from_fraction_rounds_half_up(fraction: float, clients: int, expected: int) -> None:
    assert cohort_from_fraction(fraction, clients) == expected


@pytest.mark.parametrize(("fraction", "clients"), [(0.0, 10), (-0.1, 10), (1.01, 10), (0.5, 0)])
def test_cohort_from_fraction_rejects_bad_input(fraction: float, clients: int) -> None:
    with pytest.raises(ValueError, match=r"client_fraction|num_clients"):
        cohort_from_fraction(fraction, clients)


def test_cohort_from_fraction_accepts_the_edges() -> None:
    assert cohort_from_fraction(1.0, 1) == 1
    assert cohort_from_fraction(1e-9, 1) == 1


def _info(round_: int, seed: int = 0, n: int = 10, k: int = 3) -> RoundInfo:
    return RoundInfo(round=round_, seed=seed, num_clients=n, cohort_size=k)


def test_uniform_sampler_returns_k_distinct_sorted_ids() -> None:
    s = UniformSampler()
    for r in range(50):
        c = s.sample(10, 3, _info(r))
        assert len(c) == len(set(c)) == 3
        assert c == sorted(c) and all(0 <= i < 10 for i in c)
    assert s.sample(10, 10, _info(0)) == list(range(10))


def test_uniform_sampler_depends_only_on_seed_and_round() -> None:
    s = UniformSampler()
    a = [s.sample(20, 5, _info(r, seed=1, n=20, k=5)) for r in range(10)]
    assert a == [UniformSampler().sample(20, 5, _info(r, seed=1, n=20, k=5)) for r in range(10)]
    assert len({tuple(c) for c in a}) > 1  # rounds differ
    b = [s.sample(20, 5, _info(r, seed=2, n=20, k=5)) for r in range(10)]
    assert a != b  # seeds differ


def test_uniform_sampler_accepts_the_edges_of_k() -> None:
    (only,) = UniformSampler().sample(10, 1, _info(0, k=1))
    assert 0 <= only < 10
    assert UniformSampler().sample(1, 1, _info(0, n=1, k=1)) == [0]


def test_uniform_sampler_cohorts_are_pinned() -> None:
    """A recorded run's cohorts are fixed by (seed, round): they come from the server stream
    ``generator(seed, round, SERVER, "sample")`` of :mod:`fedkit.rng`. Pinned, so a change of
    stream (which would silently change every seeded run's cohorts) fails here."""
    got = [UniformSampler().sample(10, 3, _info(r)) for r in range(3)]
    assert got == [[1, 2, 5], [3, 5, 9], [2, 7, 9]]


@pytest.mark.parametrize("k", [0, 11])
def test_uniform_sampler_rejects_bad_k(k: int) -> None:
    with pytest.raises(ValueError, match=r"clients_per_round must be in \[1, 10\]"):
        UniformSampler().sample(10, k, _info(0))


def test_uniform_sampler_is_uniform_over_subsets() -> None:
    """Each client is in a cohort with probability k/N = 0.3 and each pair with k(k-1)/(N(N-1)).

    Over R = 3000 rounds a client's count is Binomial(3000, 0.3): mean 900, sd 25.1; a pair's is
    Binomial(3000, 1/15): mean 200, sd 13.7. Bounds of ±5 sd fail a sampler that favours low ids
    or picks runs of neighbours.
    """
    s, rounds = UniformSampler(), 3000
    single: Counter[int] = Counter()
    pairs: Counter[tuple[int, int]] = Counter()
    for r in range(rounds):
        c = s.sample(10, 3, _info(r, seed=7))
        single.update(c)
        pairs.update(itertools.combinations(c, 2))
    assert all(abs(single[i] - 900) < 5 * 25.1 for i in range(10)), single
    assert len(pairs) == 45
    assert all(abs(n - 200) < 5 * 13.7 for n in pairs.values()), pairs
