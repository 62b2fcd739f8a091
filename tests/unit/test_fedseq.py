"""FedSeq (Zaccone et al. 2022): superclients built deterministically from a seed, sequential
training within a superclient (checked against the chain done by hand), superclient size 1
equal to FedAvg bit for bit, the same run under the process executor, and from a file."""

from __future__ import annotations

import functools
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit.algorithm import ClientData, RoundInfo
from fedkit.algorithms.fedavg import FedAvg
from fedkit.algorithms.fedseq import FedSeq, superclient_population
from fedkit.algorithms.superclients import (
    Superclient,
    SuperclientStore,
    entropy_of_groups,
    group_clients,
    label_histograms,
)
from fedkit.client import client_context
from fedkit.data.datasets.base import Split
from fedkit.data.lazy import LazyClients
from fedkit.data.store import ClientStore
from fedkit.local import LocalTraining, train_local
from fedkit.params import load_params, model_params
from fedkit.run import RunConfig, run
from fedkit.sim.serial import SerialExecutor
from tests.helpers.toy import SYNTHETIC_UNIFORM, toy_model, toy_store

LOCAL = LocalTraining(lr=0.05, epochs=1, batch_size=8)
CONFIG = RunConfig(rounds=3, clients_per_round=2, seed=5, eval_every=0)


def one_class_hist(classes: list[int], num_classes: int = 4, n: int = 10) -> torch.Tensor:
    h = torch.zeros(len(classes), num_classes, dtype=torch.float64)
    for i, c in enumerate(classes):
        h[i, c] = n
    return h


# --- grouping ---------------------------------------------------------------------------------


def test_diverse_grouping_pairs_different_labels_by_hand() -> None:
    # 8 one-class clients, two of each of 4 classes; size 2. Every group the greedy rule forms
    # adds, to a one-class start, a client of another class (pooled entropy log 2 beats 0 for
    # a same-class partner), so every superclient holds two classes: mean entropy = log 2.
    hist = one_class_hist([0, 0, 1, 1, 2, 2, 3, 3])
    groups = group_clients(hist, 2, "diverse", seed=3)
    assert sorted(c for g in groups for c in g) == list(range(8))
    assert all(len({int(hist[c].argmax()) for c in g}) == 2 for g in groups)
    assert entropy_of_groups(hist, groups) == pytest.approx(math.log(2))
    # size 4 with 4 classes: each superclient holds all four: entropy log 4 (the maximum)
    assert entropy_of_groups(hist, group_clients(hist, 4, "diverse", seed=3)) == pytest.approx(
        math.log(4)
    )
    # random grouping does not guarantee it (this seed pairs two same-class clients)
    worst = min(entropy_of_groups(hist, group_clients(hist, 2, "random", s)) for s in range(20))
    assert worst < math.log(2) - 1e-9


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 30),
    size=st.integers(1, 7),
    method=st.sampled_from(["random", "diverse"]),
    seed=st.integers(0, 2**31),
)
def test_grouping_is_a_seeded_partition(n: int, size: int, method: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    hist = torch.randint(0, 5, (n, 3), generator=g).to(torch.float64)
    groups = group_clients(hist, size, method, seed)  # type: ignore[arg-type]
    assert groups == group_clients(hist, size, method, seed)  # type: ignore[arg-type]
    assert sorted(c for gr in groups for c in gr) == list(range(n))
    sizes = sorted(len(gr) for gr in groups)
    assert all(s == size for s in sizes[1:]) and 1 <= sizes[0] <= size
    assert [min(gr) for gr in groups] == sorted(min(gr) for gr in groups)
    if size == 1:
        assert groups == tuple((c,) for c in range(n))


def test_grouping_depends_on_the_seed() -> None:
    hist = one_class_hist([0, 1, 2, 3] * 5)
    runs = {group_clients(hist, 4, "random", s) for s in range(5)}
    assert len(runs) > 1
    assert group_clients(hist, 2, "diverse", 1) == group_clients(hist, 2, "diverse", 1)


def test_grouping_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="size must be >= 1"):
        group_clients(one_class_hist([0]), 0)
    with pytest.raises(ValueError, match="grouping must be one of"):
        group_clients(one_class_hist([0]), 1, "kmeanz")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="superclient_size"):
        FedSeq(superclient_size=0)


def test_superclient_store_concatenates_members_in_order() -> None:
    base = toy_store(5)
    store = SuperclientStore.grouped(base, [(3, 0), (1,), (4, 2)])
    assert store.num_clients == 3
    d = store.data(0)
    assert isinstance(d, Superclient) and d.members == (base.num_examples(3), base.num_examples(0))
    first, second = d.member_data()
    assert torch.equal(first.x_train, base.data(3).x_train)
    assert torch.equal(second.y_train, base.data(0).y_train)
    assert store.num_examples(2) == base.num_examples(4) + base.num_examples(2)
    with pytest.raises(ValueError, match="each in exactly one"):
        SuperclientStore.grouped(base, [(0, 1), (1, 2, 3, 4)])


def test_label_histograms_count_each_clients_labels() -> None:
    base = toy_store(3)
    hist = label_histograms(base, 3)
    for c in range(3):
        assert hist[c].tolist() == torch.bincount(base.data(c).y_train, minlength=3).tolist()
    assert hist.dtype == torch.float64
    for y in (torch.tensor([0, 3]), torch.tensor([-1, 0]), torch.zeros(2, 2, dtype=torch.long)):
        bad = ClientStore.from_clients([ClientData(torch.zeros(2, 1), y)])
        with pytest.raises(ValueError, match=r"^client 0: grouping by label histograms needs"):
            label_histograms(bad, 3)
    edge = ClientStore.from_clients([ClientData(torch.zeros(2, 1), torch.tensor([0, 2]))])
    assert label_histograms(edge, 3).tolist() == [[1.0, 0.0, 1.0]]  # the top class is allowed


def test_superclient_containers_refuse_inconsistent_input() -> None:
    x, y = torch.zeros(3, 2), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"^member sizes \(1, 1\) do not add up to 3$"):
        Superclient(x, y, None, None, [1, 1])
    with pytest.raises(ValueError, match="do not add up"):
        Superclient(x, y, None, None, [-1, 4])
    assert Superclient(x, y, None, None, [0, 3]).members == (0, 3)
    base = toy_store(3)
    with pytest.raises(
        ValueError, match=r"^superclient groups must split the clients: each in exactly one$"
    ):
        SuperclientStore.grouped(base, [(0, 1, 2), ()])
    lazy = ClientStore.from_lazy(
        LazyClients(
            sizes=[2, 2],
            load=lambda c: ClientData(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long)),
            test=Split(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long)),
            num_classes=2,
            input_shape=(2,),
        )
    )
    with pytest.raises(ValueError, match=r"^superclients need a store held in memory"):
        SuperclientStore.grouped(lazy, [(0, 1)])
    assert math.isnan(entropy_of_groups(one_class_hist([0]), []))
    # a superclient's local test split: all members' when every member has one, else none
    mixed = ClientStore.from_clients([ClientData(x, y, x, y), ClientData(x, y)])
    assert SuperclientStore.grouped(mixed, [(0, 1)]).data(0).x_test is None
    clients = toy_store(3)
    both = SuperclientStore.grouped(clients, [(1, 0, 2)]).data(0)
    assert both.x_test is not None and both.y_test is not None
    parts = [clients.data(c) for c in (1, 0, 2)]
    assert torch.equal(both.x_test, torch.cat([p.x_test for p in parts]))  # type: ignore[misc]
    assert torch.equal(both.y_test, torch.cat([p.y_test for p in parts]))  # type: ignore[misc]
    # three members: each member's own rows, in training order
    for member, part in zip(both.member_data(), parts, strict=True):
        assert torch.equal(member.x_train, part.x_train)


# --- training ---------------------------------------------------------------------------------


def test_superclient_trains_its_members_in_sequence_by_hand() -> None:
    """One round, one superclient (3, 1): the global model after it equals local SGD on client
    3 from x_0, then on client 1 from that model, with the superclient's stream continuing
    (plain server step: x_1 = x_0 + Δ)."""
    base = toy_store(4)
    store = SuperclientStore.grouped(base, [(0, 2), (3, 1)])
    x0 = model_params(toy_model())
    cfg = RunConfig(rounds=1, clients_per_round=1, seed=11, eval_every=0)
    got = run(FedSeq(local=LOCAL), SerialExecutor(store, toy_model()), x0, cfg)
    (cohort,) = [h.cohort for h in got.history]
    assert len(cohort) == 1
    members = [(0, 2), (3, 1)][cohort[0]]

    def chain(order: tuple[int, ...]) -> dict[str, torch.Tensor]:
        model = toy_model()
        load_params(model, x0)
        info = RoundInfo(round=0, seed=11, num_clients=2, cohort_size=1, cohort=cohort)
        g = client_context(model, cohort[0], info).generator
        for c in order:
            train_local(model, base.data(c).x_train, base.data(c).y_train, LOCAL, generator=g)
        return model_params(model)

    want = chain(members)
    assert all(torch.allclose(got.params[k], want[k], atol=1e-6) for k in want)
    swapped = chain(members[::-1])  # the order matters: the test can tell
    assert not all(torch.allclose(got.params[k], swapped[k], atol=1e-6) for k in want)
    assert got.history[0].clients[0].num_examples == sum(base.num_examples(c) for c in members)


def _public_pool() -> tuple[torch.Tensor, torch.Tensor]:
    """A labelled pool for the public set: the toy clients' test splits (3 classes)."""
    parts = [toy_store(6).data(c) for c in range(6)]
    return torch.cat([p.x_test for p in parts]), torch.cat([p.y_test for p in parts])  # type: ignore[misc]


@pytest.mark.parametrize(
    ("grouping", "profile"),
    [
        ("diverse", "labels"),
        ("random", "labels"),
        ("kmeans", "confidence"),
        ("diverse", "confidence"),
    ],
)
def test_superclient_size_one_is_fedavg_bit_for_bit(grouping: str, profile: str) -> None:
    base = toy_store(6)
    x0 = model_params(toy_model())
    ref = run(FedAvg(local=LOCAL), SerialExecutor(toy_store(6), toy_model()), x0, CONFIG)
    kw: dict[str, Any] = {"grouping": grouping, "profile": profile, "public_per_class": 1}
    seq = FedSeq(local=LOCAL, superclient_size=1, **kw)
    store = seq.superclients(base, 3, public=_public_pool(), model_fn=toy_model)
    assert store.groups == tuple((c,) for c in range(6))
    got = run(seq, SerialExecutor(store, toy_model()), x0, CONFIG)
    assert all(torch.equal(ref.params[k], got.params[k]) for k in ref.params)
    assert [h.cohort for h in ref.history] == [h.cohort for h in got.history]
    # and a real grouping changes the result (so the equality above is not vacuous)
    two = FedSeq(local=LOCAL, superclient_size=2, **kw)
    grouped = two.superclients(base, 3, public=_public_pool(), model_fn=toy_model)
    other = run(two, SerialExecutor(grouped, toy_model()), x0, CONFIG)
    assert not all(torch.equal(ref.params[k], other.params[k]) for k in ref.params)


CONFIDENCE = FedSeq(
    local=LOCAL, superclient_size=2, grouping="kmeans", profile="confidence", public_per_class=2
)


@pytest.mark.slow
@pytest.mark.dist
@pytest.mark.parametrize("alg", [FedSeq(local=LOCAL, superclient_size=2), CONFIDENCE])
def test_fedseq_under_two_gloo_ranks_equals_serial(alg: FedSeq) -> None:
    """The serial executor and two gloo ranks (which rebuild the store from the function
    :func:`superclient_population` returns: the groups, not the profiles) run the same."""
    from fedkit.sim.processes import ProcessExecutor

    x0 = model_params(toy_model())
    fn = functools.partial(toy_store, 8)
    store, store_fn = superclient_population(
        alg, toy_store(8), fn, 3, public=_public_pool(), model_fn=toy_model
    )
    ref = run(alg, SerialExecutor(store, toy_model()), x0, CONFIG)
    with ProcessExecutor(store=store, model_fn=toy_model, store_fn=store_fn, world_size=2) as ex:
        got = run(alg, ex, x0, CONFIG)
    assert all(torch.allclose(ref.params[k], got.params[k], atol=1e-6) for k in ref.params)
    assert [h.cohort for h in ref.history] == [h.cohort for h in got.history]


def test_superclient_population_regroups_only_for_fedseq() -> None:
    base = toy_store(4)
    fn = functools.partial(toy_store, 4)
    same, same_fn = superclient_population(FedAvg(local=LOCAL), base, fn, 3)
    assert same is base and same_fn is fn
    grouped, grouped_fn = superclient_population(FedSeq(local=LOCAL), base, fn, 3)
    assert grouped.num_clients == 2
    rebuilt = grouped_fn()
    assert isinstance(rebuilt, SuperclientStore) and rebuilt.groups == grouped.groups  # type: ignore[attr-defined]


def test_superclient_population_estimates_the_profiles_once() -> None:
    """The confidence profiles are computed once; the function other ranks rebuild the store
    with carries the groups (picklable) and trains nothing."""
    import pickle

    built: list[int] = []

    def counted_model() -> torch.nn.Module:
        built.append(1)
        return toy_model()

    fn = functools.partial(toy_store, 8)
    grouped, grouped_fn = superclient_population(
        CONFIDENCE, toy_store(8), fn, 3, public=_public_pool(), model_fn=counted_model
    )
    assert len(built) == 1
    rebuilt = grouped_fn()
    assert len(built) == 1
    assert rebuilt.groups == grouped.groups  # type: ignore[attr-defined]
    assert pickle.loads(pickle.dumps(grouped_fn))().groups == grouped.groups  # type: ignore[attr-defined]


def test_fedseq_runs_from_an_experiment_file(tmp_path: Path) -> None:
    from fedkit.experiment.config import experiment_from_mapping
    from fedkit.experiment.results import ResultsStore, results_path
    from fedkit.experiment.runner import run_experiment

    doc = tomllib.loads(
        SYNTHETIC_UNIFORM.replace('name = "fedavg"', 'name = "fedseq"\nsuperclient_size = 2')
        + "[run]\nrounds = 2\nclients_per_round = 2\nseed = 1\n"
    )
    store = ResultsStore(results_path(tmp_path))
    out = run_experiment(experiment_from_mapping(doc, name="seq", study="s"), store)
    assert out.status == "completed", out.error
    rows = store.rounds(out.run_id)
    assert len(rows) == 2
    assert store.run(out.run_id).config["algorithm"]["superclient_size"] == 2


def test_fedseq_runs_the_output_based_grouping_from_an_experiment_file(tmp_path: Path) -> None:
    from fedkit.experiment.config import experiment_from_mapping
    from fedkit.experiment.results import ResultsStore, results_path
    from fedkit.experiment.runner import run_experiment

    algorithm = (
        'name = "fedseq"\nsuperclient_size = 2\ngrouping = "kmeans"\nprofile = "confidence"\n'
        "public_per_class = 1\nprofile_epochs = 2"
    )
    doc = tomllib.loads(
        SYNTHETIC_UNIFORM.replace('name = "fedavg"', algorithm)
        + "[run]\nrounds = 1\nclients_per_round = 2\nseed = 1\n"
    )
    store = ResultsStore(results_path(tmp_path))
    out = run_experiment(experiment_from_mapping(doc, name="seq", study="s"), store)
    assert out.status == "completed", out.error
    config = store.run(out.run_id).config["algorithm"]
    assert (config["grouping"], config["profile"], config["profile_epochs"]) == (
        "kmeans",
        "confidence",
        2,
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('grouping = "kmeanz"', "grouping"),
        ('profile = "outputs"', "profile"),
        ('profil = "confidence"', "profil"),
        ("public_per_class = 0", "public_per_class"),
        ("profile_epochs = 0", "profile_epochs"),
        ('grupping = "kmeans"', "grupping"),
    ],
)
def test_fedseq_keys_are_validated(line: str, message: str) -> None:
    from fedkit.experiment.config import ConfigError, experiment_from_mapping

    doc = tomllib.loads(
        SYNTHETIC_UNIFORM.replace('name = "fedavg"', f'name = "fedseq"\n{line}')
        + "[run]\nrounds = 1\nclients_per_round = 2\n"
    )
    with pytest.raises(ConfigError, match=message):
        experiment_from_mapping(doc, name="seq", study="s")
