"""FedSeq's output-based grouping (Zaccone et al. 2022): the confidence vector worked by hand,
the public set, K-means (Lloyd's iterations and k-means++ seeding against hand-worked cases),
the round-robin dealing from the clusters, determinism from the seed, and the grouping of
one-class clients from their pre-trained models' outputs against random grouping."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fedkit.algorithm import ClientData
from fedkit.algorithms.fedseq import FedSeq
from fedkit.algorithms.superclient_profiles import (
    confidence_profiles,
    confidence_vector,
    public_set,
)
from fedkit.algorithms.superclients import (
    entropy_of_groups,
    group_clients,
    kmeans,
    kmeans_plus_plus,
    label_histograms,
    lloyd,
)
from fedkit.data.store import ClientStore
from fedkit.dpsgd import DPSGD
from fedkit.local import LocalTraining

# --- K-means ----------------------------------------------------------------------------------


def col(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)[:, None]


def test_lloyd_on_a_hand_worked_case() -> None:
    # points 0, 1, 2, 10, 11; centres 0 and 1.
    # assignment 1: 0 -> c0 (0 < 1); 1 -> c1; 2 -> c1 (1 < 4); 10, 11 -> c1.
    #   centres: c0 = 0, c1 = (1 + 2 + 10 + 11) / 4 = 6
    # assignment 2: 1 -> c0 (1 < 25); 2 -> c0 (4 < 16); 10 -> c1 (16 < 100); 11 -> c1.
    #   centres: c0 = (0 + 1 + 2) / 3 = 1, c1 = (10 + 11) / 2 = 10.5
    # assignment 3: the same (2: 1 < 72.25; 10: 0.25 < 81): stop.
    pts, start = col(0, 1, 2, 10, 11), col(0, 1)
    labels, centres = lloyd(pts, start)
    assert start.flatten().tolist() == [0.0, 1.0]  # the caller's centres are not moved
    assert labels.tolist() == [0, 0, 0, 1, 1]
    assert centres.flatten().tolist() == [1.0, 10.5]
    one_labels, one_centres = lloyd(pts, col(0, 1), max_iter=1)  # stopped after assignment 1
    assert one_labels.tolist() == [0, 1, 1, 1, 1]
    assert one_centres.flatten().tolist() == [0.0, 6.0]
    with pytest.raises(ValueError, match=r"^k-means needs max_iter >= 1, got 0$"):
        lloyd(pts, col(0, 1), max_iter=0)
    # kmeans = k-means++ from the generator, then Lloyd with the same max_iter (and some
    # seeding needs more than one assignment, so max_iter is seen)
    unsettled = 0
    for seed in range(30):
        for m in (1, 100):
            got = kmeans(pts, 2, torch.Generator().manual_seed(seed), max_iter=m)
            start = kmeans_plus_plus(pts, 2, torch.Generator().manual_seed(seed))
            assert all(torch.equal(a, b) for a, b in zip(got, lloyd(pts, start, m), strict=True))
        one = kmeans(pts, 2, torch.Generator().manual_seed(seed), max_iter=1)
        unsettled += not torch.equal(one[0], kmeans(pts, 2, torch.Generator().manual_seed(seed))[0])
    assert unsettled > 0


def test_lloyd_ties_go_to_the_lower_centre_and_an_empty_centre_stays() -> None:
    # 1 is at distance 1 from both 0 and 2: cluster 0. Nothing is nearest to 100: it stays.
    labels, centres = lloyd(col(1), col(0, 2, 100))
    assert labels.tolist() == [0]
    assert centres.flatten().tolist() == [1.0, 2.0, 100.0]
    # 2-D: (0,0),(0,2) around centre (0,1); (5,5) alone
    labels, centres = lloyd(
        torch.tensor([[0.0, 0.0], [0.0, 2.0], [5.0, 5.0]], dtype=torch.float64),
        torch.tensor([[0.0, 0.5], [4.0, 4.0]], dtype=torch.float64),
    )
    assert labels.tolist() == [0, 0, 1]
    assert centres.tolist() == [[0.0, 1.0], [5.0, 5.0]]


def test_kmeans_plus_plus_picks_the_far_point_when_the_rest_coincide() -> None:
    # points 0, 0, 0, 5: whichever first centre is drawn, D^2 is 0 at every point equal to it,
    # so the second centre is the other value with probability 1.
    pts = col(0, 0, 0, 5)
    for seed in range(10):
        centres = kmeans_plus_plus(pts, 2, torch.Generator().manual_seed(seed))
        assert sorted(centres.flatten().tolist()) == [0.0, 5.0]
    # every point coinciding with a centre: the next draw is uniform (no division by 0),
    # from the same generator: 0, 0, 1, 1 with k = 3 repeats 0 or 1, the same for a seed
    assert kmeans_plus_plus(col(3, 3), 2, torch.Generator()).flatten().tolist() == [3.0, 3.0]
    pts = col(0, 0, 1, 1)
    thirds = set()
    for seed in range(12):
        first = kmeans_plus_plus(pts, 3, torch.Generator().manual_seed(seed))
        assert torch.equal(first, kmeans_plus_plus(pts, 3, torch.Generator().manual_seed(seed)))
        assert sorted(first[:2].flatten().tolist()) == [0.0, 1.0]
        thirds.add(float(first[2]))
    assert thirds == {0.0, 1.0}
    with pytest.raises(ValueError, match=r"^k-means needs 1 <= k <= 2 points, got k=3$"):
        kmeans_plus_plus(col(3, 3), 3, torch.Generator())
    with pytest.raises(ValueError, match=r"^k-means needs 1 <= k <= 2 points, got k=0$"):
        kmeans_plus_plus(col(3, 3), 0, torch.Generator())


def test_kmeans_plus_plus_measures_from_the_nearest_centre_chosen() -> None:
    # points 0, 0, 5, 5, 9, 9 and k = 3: D^2 is 0 at every point equal to a chosen centre, so
    # each draw is a value not chosen yet (D^2 from the *nearest* centre: from the farthest,
    # a chosen value could come back), and the centres are 0, 5 and 9 for every seed.
    pts = col(0, 0, 5, 5, 9, 9)
    for seed in range(20):
        centres = kmeans_plus_plus(pts, 3, torch.Generator().manual_seed(seed))
        assert sorted(centres.flatten().tolist()) == [0.0, 5.0, 9.0], seed


def test_kmeans_plus_plus_draws_in_proportion_to_squared_distance() -> None:
    # points 0, 1, 3. First centre uniform (1/3 each). From 0: D^2 = (0, 1, 9), so 1 follows
    # with probability 1/10 and 3 with 9/10: P(0 then 3) = 0.3, P(0 then 1) = 1/30.
    # From 3: D^2 = (9, 4, 0): P(3 then 0) = 1/3 * 9/13. Over 3,000 seeds the counts lie within
    # 5 binomial standard errors (drawing by D instead of D^2 gives 3/4 and 3/5: 250 off).
    pts, n = col(0, 1, 3), 3000
    pairs: dict[tuple[float, float], int] = {}
    for seed in range(n):
        a, b = kmeans_plus_plus(pts, 2, torch.Generator().manual_seed(seed)).flatten().tolist()
        pairs[(a, b)] = pairs.get((a, b), 0) + 1
    for pair, p in [((0.0, 3.0), 0.3), ((0.0, 1.0), 1 / 30), ((3.0, 0.0), 3 / 13)]:
        assert abs(pairs.get(pair, 0) - n * p) <= 5 * math.sqrt(n * p * (1 - p)), (pair, pairs)


def test_kmeans_separates_well_separated_blobs_for_every_seed() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=torch.float64)
    pts = centres.repeat_interleave(5, 0) + 0.1 * torch.randn(
        15, 2, generator=g, dtype=torch.float64
    )
    for seed in range(5):
        labels, _ = kmeans(pts, 3, torch.Generator().manual_seed(seed))
        blocks = [set(labels[i : i + 5].tolist()) for i in range(0, 15, 5)]
        assert all(len(b) == 1 for b in blocks) and len(set.union(*blocks)) == 3


# --- grouping from K-means --------------------------------------------------------------------


def one_class_hist(classes: list[int], num_classes: int = 4, n: float = 10) -> torch.Tensor:
    h = torch.zeros(len(classes), num_classes, dtype=torch.float64)
    for i, c in enumerate(classes):
        h[i, c] = n
    return h


def classes_of(hist: torch.Tensor, group: tuple[int, ...]) -> list[int]:
    return sorted(int(hist[c].argmax()) for c in group)


def test_kmeans_grouping_deals_one_client_from_each_cluster_in_turn() -> None:
    # classes 0,0,0,0,1,1,2 (7 one-class clients, 3 classes): the clusters are the classes.
    # Dealt round-robin into groups of 3: {0,1,2}, then cluster 2 is empty: {0,1,0}, then {0}
    # (for any seed; only which client of a class goes where depends on it). Pooled entropies
    # log 3 = 1.0986, H(2/3, 1/3) = 0.6365, 0: mean 0.5784.
    hist = one_class_hist([0, 0, 0, 0, 1, 1, 2], num_classes=3)
    for seed in range(5):
        groups = group_clients(hist, 3, "kmeans", seed)
        assert sorted(classes_of(hist, g) for g in groups) == [[0], [0, 0, 1], [0, 1, 2]]
        want = (math.log(3) + (2 / 3 * math.log(3 / 2) + 1 / 3 * math.log(3))) / 3
        assert entropy_of_groups(hist, groups) == pytest.approx(want)
        assert want == pytest.approx(0.5784, abs=1e-4)


def test_kmeans_clusters_normalised_profiles_where_diverse_pools_counts() -> None:
    # A = 10 of class 0, B = 0.1 of class 0 (estimated counts may be fractions), C = 10 of
    # class 1, D = 0.1 of class 1; size 2. K-means clusters the *distributions*: {A, B} and
    # {C, D} (both (1, 0) or (0, 1)), so every pair holds one client of each class, and which
    # pair follows the seed: {A,C},{B,D} or {A,D},{B,C}. The greedy "diverse" rule pools
    # counts: from A the best partner is C (pooled (10, 10): log 2; D gives (10, 0.1):
    # 0.056), from B it is D ((0.1, 0.1): log 2; C gives (0.1, 10): 0.056), so always
    # {A,C},{B,D}.
    hist = torch.tensor([[10.0, 0.0], [0.1, 0.0], [0.0, 10.0], [0.0, 0.1]], dtype=torch.float64)
    pairings = {
        m: {frozenset(map(frozenset, group_clients(hist, 2, m, s))) for s in range(20)}  # type: ignore[arg-type]
        for m in ("kmeans", "diverse")
    }
    ac_bd = frozenset({frozenset({0, 2}), frozenset({1, 3})})
    ad_bc = frozenset({frozenset({0, 3}), frozenset({1, 2})})
    assert pairings == {"kmeans": {ac_bd, ad_bc}, "diverse": {ac_bd}}


def test_diverse_breaks_ties_by_the_seeded_order() -> None:
    # equal profiles: every candidate ties, so each group takes the next clients in the seeded
    # order, the groups random grouping cuts from that same order
    same = torch.ones(9, 3, dtype=torch.float64)
    for seed in range(5):
        assert group_clients(same, 2, "diverse", seed) == group_clients(same, 2, "random", seed)
    assert group_clients(same, 2) == group_clients(same, 2, "diverse", 0)  # the defaults


def test_pooled_entropy_by_hand() -> None:
    from fedkit.algorithms.superclients import pooled_entropy

    # (1, 1) and (0.25, 0.25): uniform on 2 classes, log 2; (3, 1, 0): H(3/4, 1/4) =
    # -(3/4 ln 3/4 + 1/4 ln 1/4) = 0.5623; nothing: 0
    assert pooled_entropy(torch.tensor([1.0, 1.0])) == pytest.approx(math.log(2))
    assert pooled_entropy(torch.tensor([0.25, 0.25])) == pytest.approx(math.log(2))
    assert pooled_entropy(torch.tensor([3.0, 1.0, 0.0])) == pytest.approx(0.5623, abs=1e-4)
    assert pooled_entropy(torch.zeros(3)) == 0.0


def test_kmeans_groups_train_in_the_seeded_order() -> None:
    # 10 classes, 5 one-class clients each, groups of 5: dealt one per cluster, but each
    # group's members train in the seeded order (the order "random" grouping cuts: one group
    # of all 50 is that order itself), not in the clusters' order
    hist = one_class_hist([c for c in range(10) for _ in range(5)], num_classes=10)
    for seed in range(3):
        (order,) = group_clients(hist, 50, "random", seed)
        rank = {c: i for i, c in enumerate(order)}
        groups = group_clients(hist, 5, "kmeans", seed)
        assert all(len(set(classes_of(hist, g))) == 5 for g in groups)
        assert all([rank[c] for c in g] == sorted(rank[c] for c in g) for g in groups)


def test_kmeans_grouping_is_a_seeded_partition_that_depends_on_the_seed() -> None:
    # two clients of class 0 and two of class 1, size 2: the groups are {0,2},{1,3} or
    # {0,3},{1,2} (one of each class always). Which one is the seed's choice: over 20 seeds
    # both appear (all 20 alike would mean the seed is ignored: chance 2^-19).
    hist = one_class_hist([0, 0, 1, 1], num_classes=2)
    # (member order within a group, the training order, also follows the seed)
    seen = {frozenset(map(frozenset, group_clients(hist, 2, "kmeans", s))) for s in range(20)}
    assert seen == {
        frozenset({frozenset({0, 2}), frozenset({1, 3})}),
        frozenset({frozenset({0, 3}), frozenset({1, 2})}),
    }
    assert group_clients(hist, 2, "kmeans", 7) == group_clients(hist, 2, "kmeans", 7)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 25), size=st.integers(1, 6), seed=st.integers(0, 2**31))
def test_kmeans_grouping_partitions_the_clients(n: int, size: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    hist = torch.randint(0, 4, (n, 3), generator=g).to(torch.float64)  # zero rows included
    groups = group_clients(hist, size, "kmeans", seed)
    assert groups == group_clients(hist, size, "kmeans", seed)
    assert sorted(c for gr in groups for c in gr) == list(range(n))
    sizes = sorted(len(gr) for gr in groups)
    assert all(s == size for s in sizes[1:]) and 1 <= sizes[0] <= size
    if size == 1:
        assert groups == tuple((c,) for c in range(n))


# --- confidence vectors -----------------------------------------------------------------------


class IdentityInEval(nn.Module):
    """The identity in evaluation mode, zeros in training mode (a stand-in for dropout)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0 if self.training else x


def test_confidence_vector_by_hand() -> None:
    # nn.Identity: the inputs are the logits. Exemplars (class 0) logits (0, 0) -> softmax
    # (1/2, 1/2), true-class 1/2; (ln 3, 0) -> (3/4, 1/4), 3/4; (class 1) (0, ln 3) -> 3/4.
    # Per-class means: class 0 (1/2 + 3/4)/2 = 5/8, class 1 3/4; normalised: (5/11, 6/11).
    # (The paper's sum over exemplars would give (5/4, 3/4) -> (5/8, 3/8) here: the mean per
    # class is what stays unbiased when the public set is not balanced.)
    x = torch.tensor([[0.0, 0.0], [math.log(3), 0.0], [0.0, math.log(3)]])
    got = confidence_vector(IdentityInEval(), x, torch.tensor([0, 0, 1]), 2)
    assert got.dtype == torch.float64
    assert got.tolist() == pytest.approx([5 / 11, 6 / 11], abs=1e-7)
    int32 = confidence_vector(IdentityInEval(), x, torch.tensor([0, 0, 1], dtype=torch.int32), 2)
    assert torch.equal(int32, got)  # labels of any integer type


def test_confidence_vector_scores_in_batches_as_in_one() -> None:
    # 1,100 exemplars (three batches of EVAL_BATCH = 512): the per-class means over all of
    # them. Logits (a, 0) for class 0 and (0, a) for class 1, a = 0..1099 mod 3 as ln 1..3:
    # true-class probability a/(a+1) with a in {1, 2, 3}: 1/2, 2/3, 3/4.
    n = 1100
    a = torch.tensor([1.0, 2.0, 3.0]).repeat(n // 3 + 1)[:n]
    y = torch.arange(n) % 2
    x = torch.zeros(n, 2)
    x[torch.arange(n), y] = a.log()
    p = a / (a + 1)
    want = torch.stack([p[y == 0].mean(), p[y == 1].mean()]).to(torch.float64)
    got = confidence_vector(IdentityInEval(), x, y, 2)
    assert got.tolist() == pytest.approx((want / want.sum()).tolist(), abs=1e-6)


def test_confidence_vector_refuses_what_it_cannot_score() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="no example of class 2"):
        confidence_vector(nn.Identity(), x, torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match=r"^the public set: confidence vectors need one class"):
        confidence_vector(nn.Identity(), x, torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match=r"\(batch, 2\) logits"):
        confidence_vector(nn.Identity(), x, torch.tensor([0, 1]), 2)


def test_public_set_is_a_seeded_class_balanced_draw() -> None:
    y = torch.tensor([0] * 6 + [1] * 3 + [2] * 4)
    x = torch.arange(13, dtype=torch.float32)[:, None]  # x is the index: the draw is visible
    px, py = public_set(x, y, 3, 2, seed=1)
    assert py.tolist() == [0, 0, 1, 1, 2, 2]
    idx = px.flatten().long()
    assert torch.equal(y[idx], py) and len(set(idx.tolist())) == 6
    assert torch.equal(public_set(x, y, 3, 2, seed=1)[0], px)
    assert len({tuple(public_set(x, y, 3, 2, seed=s)[0].flatten().tolist()) for s in range(8)}) > 1
    with pytest.raises(ValueError, match="needs 4 examples of class 1; the test split has 3"):
        public_set(x, y, 3, 4, seed=0)
    assert public_set(x, y, 3, 3, seed=0)[1].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # all 3
    for bad in (0, 10_001):
        with pytest.raises(
            ValueError, match=rf"^public_per_class must be in \[1, 10000\], got {bad}$"
        ):
            public_set(x, y, 3, bad, seed=0)
    assert public_set(x.repeat(3334, 1), y.repeat(3334), 3, 10_000, seed=0)[1].shape == (30_000,)
    for labels in (
        torch.tensor([0, 3]),
        torch.tensor([-1, 0]),
        torch.zeros(2, 2, dtype=torch.long),
    ):
        with pytest.raises(ValueError, match=r"^the public set: confidence vectors need one class"):
            public_set(torch.zeros(2, 1), labels, 3, 1, seed=0)


# --- grouping one-class clients from model outputs --------------------------------------------


def blobs(classes: list[int], n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` examples of each class ``j``: input ``3 e_j`` plus noise (4 classes, 4 inputs)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor(classes).repeat_interleave(n)
    return 3.0 * torch.eye(4)[y] + 0.3 * torch.randn(len(y), 4, generator=g), y


CLASSES = [0, 0, 1, 1, 2, 2, 3, 3]  # client k holds 20 examples of class CLASSES[k] only
STORE = ClientStore.from_clients(
    [ClientData(*blobs([c], 20, 100 + k)) for k, c in enumerate(CLASSES)]
)
POOL = blobs([0, 1, 2, 3], 10, 7)  # the "test split" the public set is drawn from
PRETRAIN = LocalTraining(lr=2.0, batch_size=5)


def linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 4)


def test_pretrained_confidence_peaks_at_each_clients_class() -> None:
    pub = public_set(*POOL, 4, 5, seed=0)
    conf = confidence_profiles(STORE, linear, pub, 4, local=PRETRAIN, epochs=5, seed=0)
    assert conf.shape == (8, 4)
    assert torch.allclose(conf.sum(1), torch.ones(8, dtype=torch.float64))
    assert conf.argmax(1).tolist() == CLASSES
    again = confidence_profiles(STORE, linear, pub, 4, local=PRETRAIN, epochs=5, seed=0)
    assert torch.equal(conf, again)  # deterministic from the seed
    other = confidence_profiles(STORE, linear, pub, 4, local=PRETRAIN, epochs=5, seed=1)
    assert not torch.equal(conf, other)  # the pre-training's batch order follows the seed
    with pytest.raises(
        ValueError,
        match=re.escape(
            "confidence profiles are not computed under sample-level DP-SGD: the pre-training "
            "would escape the run's privacy accounting (use profile = 'labels' or grouping = "
            "'random')"
        ),
    ):
        dp = LocalTraining(lr=0.1, dp=DPSGD(noise_multiplier=1.0, max_grad_norm=1.0))
        confidence_profiles(STORE, linear, pub, 4, local=dp, epochs=1, seed=0)


def test_confidence_profiles_equal_the_pretraining_done_by_hand() -> None:
    """Client k: a copy of the one initial model, ``epochs`` epochs of local SGD (the run's lr
    and batch size) with the stream (seed, 0, k, "fedseq/profile"), then its confidence vector."""
    from fedkit.local import train_local
    from fedkit.rng import generator

    pub = public_set(*POOL, 4, 5, seed=0)
    steps = LocalTraining(lr=2.0, batch_size=5, steps=1)  # epochs replace the run's steps
    got = confidence_profiles(STORE, linear, pub, 4, local=steps, epochs=3, seed=9)
    initial = linear()
    for k in range(STORE.num_clients):
        model = linear()
        model.load_state_dict(initial.state_dict())
        d = STORE.data(k)
        cfg = LocalTraining(lr=2.0, batch_size=5, epochs=3)
        train_local(
            model, d.x_train, d.y_train, cfg, generator=generator(9, 0, k, "fedseq/profile")
        )
        assert torch.equal(got[k], confidence_vector(model, *pub, 4)), k


def test_public_set_draws_from_its_own_stream() -> None:
    # the documented stream (seed, 0, SERVER, "fedseq/public"): a permutation of each class's
    # examples in turn, the first per_class kept
    from fedkit.rng import SERVER, generator

    y = torch.tensor([1, 0, 1, 0, 1, 0, 1])
    x = torch.arange(7, dtype=torch.float32)[:, None]
    g = generator(3, 0, SERVER, "fedseq/public")
    want = [
        int(w[i])
        for w in (torch.tensor([1, 3, 5]), torch.tensor([0, 2, 4, 6]))
        for i in torch.randperm(len(w), generator=g)[:2]
    ]
    assert public_set(x, y, 2, 2, seed=3)[0].flatten().long().tolist() == want


def test_output_based_grouping_mixes_the_classes_that_random_grouping_does_not() -> None:
    """Superclients of 4 from 8 one-class clients (2 of each of 4 classes), grouped by the
    confidence vectors of their pre-trained models. Pooled label entropy of the true labels:
    every group holding the 4 classes gives log 4 = 1.3863 (the maximum). Random grouping with
    seeds 0..3 gives (classes per group, by hand from the groups it draws):
      seed 0: {2,2,0,1} {1,3,0,3} -> H(1/2,1/4,1/4) = 1.5 log 2 = 1.0397 each
      seed 1: {0,0,2,1} {2,3,3,1} -> 1.0397;  seed 2: {0,2,0,2} {1,3,1,3} -> log 2 = 0.6931
      seed 3: {0,1,2,1} {0,3,3,2} -> 1.0397;  mean 0.9531.
    Output-based "diverse" and "kmeans" both reach log 4 at every one of these seeds."""
    hist = label_histograms(STORE, 4)
    random = [entropy_of_groups(hist, group_clients(hist, 4, "random", s)) for s in range(4)]
    assert random == pytest.approx([1.5 * math.log(2)] * 2 + [math.log(2), 1.5 * math.log(2)])
    assert sum(random) / 4 == pytest.approx(0.9531, abs=1e-4)
    for grouping in ("diverse", "kmeans"):
        for seed in range(4):
            alg = FedSeq(
                local=PRETRAIN,
                superclient_size=4,
                grouping=grouping,  # type: ignore[arg-type]
                grouping_seed=seed,
                profile="confidence",
                profile_epochs=5,
                public_per_class=5,
            )
            groups = alg.superclients(STORE, 4, public=POOL, model_fn=linear).groups
            assert [classes_of(hist, g) for g in groups] == [[0, 1, 2, 3]] * 2, (grouping, seed)
            assert entropy_of_groups(hist, groups) == pytest.approx(math.log(4))


def test_confidence_profile_needs_the_public_set_and_the_model() -> None:
    alg = FedSeq(local=PRETRAIN, superclient_size=2, profile="confidence")
    with pytest.raises(ValueError, match="public set and the initial model"):
        alg.superclients(STORE, 4)
    # nothing to estimate for size 1 or random grouping: no public set needed
    for size, grouping in [(1, "diverse"), (2, "random")]:
        alg = FedSeq(
            local=PRETRAIN,
            superclient_size=size,
            grouping=grouping,  # type: ignore[arg-type]
            profile="confidence",
        )
        assert alg.superclients(STORE, 4).num_clients == 8 // size
