"""The DP stages' edges (mutation survivors of adaptive_clip.py and gaussian.py, docs/privacy.md
"Mutation testing"): every refusal's exact message and boundary, the server's clamp of a
client's bit, the inner stage's state carried through adaptive clipping, count noise below 1,
the bit and the accumulator's dtypes, and what the inner ``prepare`` is handed."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import pytest
import torch

from fedkit.aggregate import AggContext, AggState, Stage, WeightedMean, aggregate
from fedkit.privacy.adaptive_clip import (
    CLIP_NORM,
    AdaptiveClip,
    ClippedUpdate,
    update_noise_multiplier,
)
from fedkit.privacy.gaussian import GaussianNoise
from fedkit.rng import SERVER


def _exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


# -- refusals: exact messages and boundaries ---------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_quantile": 1.5}, "target_quantile must be in [0, 1], got 1.5"),
        ({"learning_rate": 0.0}, "learning_rate must be a finite number > 0, got 0.0"),
        ({"initial_norm": -1.0}, "initial_norm must be a finite number > 0, got -1.0"),
        ({"count_noise": math.inf}, "count_noise must be a finite number >= 0, got inf"),
        ({"count_noise": -1.0}, "count_noise must be a finite number >= 0, got -1.0"),
        ({"expected_clients": 0}, "expected_clients must be >= 1, got 0"),
    ],
)
def test_adaptive_clip_refusals(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=_exact(message)):
        AdaptiveClip(**kwargs)


def test_adaptive_clip_boundaries_are_accepted() -> None:
    # γ = 0 and γ = 1 are the ends of [0, 1]; one expected client is a cohort
    for q in (0.0, 1.0):
        assert AdaptiveClip(target_quantile=q).target_quantile == q
    assert AdaptiveClip(expected_clients=1).expected_clients == 1


def test_update_noise_multiplier_refusal_names_half_of_z() -> None:
    # z = 3: σ_b must exceed z/2 = 1.5
    message = (
        "count_noise = 1.0 is too small for noise_multiplier = 3.0: adaptive clipping under DP "
        "needs count_noise > noise_multiplier / 2 = 1.5 (Andrew et al. use count_noise = "
        "expected clients / 20); raise it or lower noise_multiplier"
    )
    with pytest.raises(ValueError, match=_exact(message)):
        update_noise_multiplier(3.0, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_multiplier": 0.0}, "noise_multiplier must be a finite number > 0, got 0.0"),
        ({"clip_norm": -2.0}, "clip_norm must be a finite number > 0, got -2.0"),
        ({"expected_clients": 0}, "expected_clients must be >= 1, got 0"),
        ({"delta": 0.0}, "delta must be in (0, 1), got 0.0"),
        ({"delta": 1.0}, "delta must be in (0, 1), got 1.0"),
        ({"delta": 1.5}, "delta must be in (0, 1), got 1.5"),
        ({"target_epsilon": -1.0}, "target_epsilon must be a finite number > 0, got -1.0"),
        ({"accountant": "moments"}, "accountant must be 'rdp' or 'pld', got 'moments'"),
        (
            {"inner": AdaptiveClip()},
            "inner of the gaussian noise stage must be the plain mean ('mean') or secure "
            "aggregation over it ('secagg'): the noise is added to its sum of clipped updates; "
            "got AdaptiveClip",
        ),
    ],
)
def test_gaussian_refusals(kwargs: dict[str, Any], message: str) -> None:
    base: dict[str, Any] = {"noise_multiplier": 1.0, "clip_norm": 1.0}
    with pytest.raises(ValueError, match=_exact(message)):
        GaussianNoise(**{**base, **kwargs})


def test_gaussian_boundaries_and_messages_at_use() -> None:
    g = GaussianNoise(noise_multiplier=1.0, clip_norm=1.0, expected_clients=1, delta=0.5)
    assert g.expected_clients == 1 and g.delta == 0.5
    assert GaussianNoise(noise_multiplier=1.0, clip_norm=1.0, accountant="pld").accountant == "pld"
    assert GaussianNoise(noise_multiplier=1.0, clip_norm=1.0, target_epsilon=2.0).target_epsilon
    unset = GaussianNoise(noise_multiplier=1.0, clip_norm=1.0)
    message = (
        "expected_clients is unset: give the expected cohort size k = qN (the experiment runner "
        "sets it from [run])"
    )
    with pytest.raises(ValueError, match=_exact(message)):
        unset.result(aggregate(WeightedMean(), [({"w": torch.ones(2)}, 1.0)]), AggContext(0, 0))
    weighted = (
        "the gaussian noise stage needs uniform client weights (1.0), got 3.0; set "
        "algorithm.weighting = 'uniform'"
    )
    with pytest.raises(ValueError, match=_exact(weighted)):
        g.add(g.zero({"w": torch.ones(2)}), {"w": torch.ones(2)}, 3.0)


# -- adaptive clipping's round ---------------------------------------------------------------


def test_the_server_clamps_a_clients_bit_to_plus_minus_a_half() -> None:
    """A hostile client sending b − ½ = −3 or +3 moves the count by at most ½."""
    agg = AdaptiveClip()
    zero = agg.zero(ClippedUpdate(update={"w": torch.zeros(1)}, unclipped=torch.tensor(0.5)))
    for sent, kept in ((-3.0, -0.5), (3.0, 0.5), (-0.25, -0.25)):
        acc = agg.zero(ClippedUpdate(update={"w": torch.zeros(1)}, unclipped=torch.tensor(0.5)))
        bad = ClippedUpdate(update={"w": torch.zeros(1)}, unclipped=torch.tensor(sent))
        assert float(agg.add(acc, bad, 1.0).unclipped) == kept
    assert zero.unclipped.dtype == torch.float64 and zero.count.dtype == torch.int64


def test_the_bit_a_client_sends_and_what_its_inner_prepare_receives() -> None:
    seen: list[tuple[float, AggContext]] = []

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Spy(Stage):
        def prepare(self, update: Any, weight: float, ctx: AggContext) -> Any:
            seen.append((weight, ctx))
            return self.inner.prepare(update, weight, ctx)

    agg = AdaptiveClip(inner=Spy())
    ctx = AggContext(2, 7, 4, state=((CLIP_NORM, 1.0),))
    inside = agg.prepare({"w": torch.tensor([0.3, 0.4])}, 0.75, ctx)  # ‖Δ‖ = 0.5 ≤ C = 1
    outside = agg.prepare({"w": torch.tensor([3.0, 4.0])}, 0.75, ctx)  # ‖Δ‖ = 5: scaled by 1/5
    assert float(inside.unclipped) == 0.5 and float(outside.unclipped) == -0.5
    assert inside.unclipped.dtype == torch.float64
    assert torch.allclose(outside.update["w"], torch.tensor([0.6, 0.8]))
    assert seen == [(0.75, ctx), (0.75, ctx)]
    with pytest.raises(ValueError, match="client 4: update has a non-finite value"):
        agg.prepare({"w": torch.tensor([math.nan])}, 1.0, ctx)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Counter(Stage):
    """A stateful inner stage: counts the clients of every committed round, and the rounds."""

    def init_state(self) -> AggState:
        return (("clients", 0.0), ("last_round", -1.0))

    def next_state(self, acc: Any, state: AggState, ctx: AggContext) -> AggState:
        mine = {"clients": dict(state)["clients"] + float(acc.count), "last_round": ctx.round}
        return tuple((k, float(mine.get(k, v))) for k, v in state)


def test_adaptive_clipping_carries_its_inner_stages_state() -> None:
    """C_0 = 0.1, then the inner's entries; after a round of 3 clients, all within C (b̄ = 1,
    γ = 0.5, η = 0.2): C_1 = 0.1 · exp(−0.2 · (1 − 0.5)) = 0.1 · e^−0.1, and the inner's
    entries moved by its own rule (3 clients, round 5)."""
    agg = AdaptiveClip(inner=Counter())
    state = agg.init_state()
    assert state == ((CLIP_NORM, 0.1), ("clients", 0.0), ("last_round", -1.0))
    ctx = AggContext(5, 0, SERVER, state=state)
    updates = [({"w": torch.tensor([0.01 * i])}, 1.0) for i in range(1, 4)]
    client_ctx = AggContext(5, 0, 1, state=state)
    prepared = [(agg.prepare(u, w, client_ctx), w) for u, w in updates]
    acc = aggregate(agg, prepared)
    new = agg.next_state(acc, state, ctx)
    assert new[0][0] == CLIP_NORM and new[0][1] == pytest.approx(0.1 * math.exp(-0.1), rel=1e-12)
    assert new[1:] == (("clients", 3.0), ("last_round", 5.0))


def test_count_noise_below_one_is_drawn() -> None:
    """σ_b = 0.5 (below 1) still noises the count: with the seeded stream the new C differs
    from the noise-free one; σ_b = 0 gives exactly the noise-free rule."""
    state = ((CLIP_NORM, 0.1),)
    ctx = AggContext(0, 3, SERVER, state=state)

    def c_next(sigma: float) -> float:
        agg = AdaptiveClip(count_noise=sigma, noise_source="seeded", expected_clients=4)
        acc = aggregate(
            agg, [(agg.prepare({"w": torch.zeros(1)}, 1.0, AggContext(0, 3, i, state=state)), 1.0)
                  for i in range(4)]
        )  # fmt: skip
        return dict(agg.next_state(acc, state, ctx))[CLIP_NORM]

    # all four inside: b̄ = 1 without noise; C_1 = 0.1 · exp(−0.2 · 0.5)
    assert c_next(0.0) == pytest.approx(0.1 * math.exp(-0.1), rel=1e-12)
    assert c_next(0.5) != c_next(0.0)


class _TwoRanks:
    """A two-rank collective seen from one rank: the other rank's sums are ``theirs``; every
    all-reduce adds them (dict leaves), as gloo's SUM would."""

    def __init__(self, theirs: dict[str, Any]) -> None:
        self.theirs = theirs
        self.calls: list[object] = []

    def all_sum(self, tree: Any) -> Any:
        self.calls.append(tree)
        if isinstance(tree, dict) and set(tree) == {"count", "unclipped"}:
            return {k: v + self.theirs[k] for k, v in tree.items()}
        return tree  # the inner mean's own reduction: left alone here

    def gather(self, tree: Any) -> Any:
        return None


def test_adaptive_clip_merges_and_reduces_its_count_and_bits() -> None:
    """Two partial sums: 2 clients (b − ½ = +½, −½) and 3 clients (+½, +½, +½): merged or
    all-reduced, 5 clients and Σ(b − ½) = 0 + 1.5 = 1.5, with the inner sums merged too."""
    agg = AdaptiveClip()
    state = ((CLIP_NORM, 1.0),)

    def part(norms: list[float]) -> Any:
        ups = [({"w": torch.tensor([n])}, 1.0) for n in norms]
        ctx = AggContext(0, 0, 1, state=state)
        return aggregate(agg, [(agg.prepare(u, w, ctx), w) for u, w in ups])

    a, b = part([0.5, 2.0]), part([0.1, 0.2, 0.3])
    merged = agg.merge(a, b)
    assert int(merged.count) == 5 and float(merged.unclipped) == 1.5
    assert float(merged.inner.total["w"][0]) == pytest.approx(0.5 + 1.0 + 0.1 + 0.2 + 0.3)
    assert int(a.count) == 2 and int(b.count) == 3  # inputs untouched
    comm = _TwoRanks({"count": b.count, "unclipped": b.unclipped})
    reduced = agg.reduce(a, comm)  # type: ignore[arg-type]
    assert int(reduced.count) == 5 and float(reduced.unclipped) == 1.5
    assert comm.calls[0] is a.inner  # the inner mean reduced by its own all_sum, of a's sums
    assert reduced.inner is a.inner
