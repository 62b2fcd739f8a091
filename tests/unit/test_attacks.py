"""Attacks (fedkit.attacks): each rule against numbers worked by hand, the Attacked wrapper's
promises (honest clients and the server untouched, attackers' own streams), attacker choice, and
the experiment file's [attack] table."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch
from torch import nn

from fedkit.algorithm import ClientData, RoundInfo
from fedkit.algorithms import FedAvg
from fedkit.algorithms.fedavg import ModelDelta
from fedkit.attacks import Attacked, attacked, choose_attackers
from fedkit.attacks.alie import ALittleIsEnough, shards, z_max
from fedkit.attacks.backdoor import Backdoor, backdoor_accuracy, stamp
from fedkit.attacks.gaussian import GaussianNoise
from fedkit.attacks.label_flip import LabelFlip
from fedkit.attacks.noisy import InputNoise, LabelNoise
from fedkit.attacks.sign_flip import SignFlip
from fedkit.client import client_context, client_update
from fedkit.experiment.attack import AttackSettings
from fedkit.experiment.tables import ConfigError, build
from fedkit.local import LocalTraining
from fedkit.params import model_params
from fedkit.registry import ATTACKS
from fedkit.rng import generator
from tests.helpers.robust import attack_context as ctx_of
from tests.helpers.toy import toy_clients, toy_model

INFO = RoundInfo(round=2, seed=5, num_clients=10, cohort_size=10)


def test_label_flip_mirrors_labels_and_keeps_padding() -> None:
    data = ClientData(torch.zeros(4, 2), torch.tensor([0, 3, 9, -100]))
    out = LabelFlip(num_classes=10).poison(data, torch.Generator())
    assert out.y_train.tolist() == [9, 6, 0, -100]  # C - 1 - y with C = 10
    assert torch.equal(out.x_train, data.x_train)
    with pytest.raises(ValueError, match="label 9 is not below num_classes = 5"):
        LabelFlip(num_classes=5).poison(data, torch.Generator())
    with pytest.raises(
        ValueError, match=r"^label_flip needs num_classes \(the dataset's number of classes\)$"
    ):
        LabelFlip().poison(data, torch.Generator())


def test_sign_flip_and_ipm_reverse_and_scale_the_honest_update() -> None:
    honest = ModelDelta({"w": torch.tensor([1.0, -2.0]), "n": torch.tensor([3])})
    out = SignFlip(scale=2.0).forge(ctx_of(honest))
    assert out.delta["w"].tolist() == [-2.0, 4.0]
    assert out.delta["n"].tolist() == [3]  # integer leaves are not touched
    ipm = build(ATTACKS, {"name": "ipm"}, "attack")
    assert ipm == SignFlip(scale=0.1)  # Xie et al.'s ε = 0.1, the registry's preset
    assert ipm.forge(ctx_of(honest)).delta["w"].tolist() == pytest.approx([-0.1, 0.2])
    for bad in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="scale"):
            SignFlip(scale=bad)


def test_gaussian_noise_has_the_asked_spread_and_comes_from_the_attackers_stream() -> None:
    honest = ModelDelta({"w": torch.ones(20_000)})
    a = GaussianNoise(std=3.0).forge(ctx_of(honest, stream=torch.Generator().manual_seed(1)))
    b = GaussianNoise(std=3.0).forge(ctx_of(honest, stream=torch.Generator().manual_seed(1)))
    assert torch.equal(a.delta["w"], b.delta["w"])
    w = a.delta["w"].double()
    # sample variance of n = 20000 N(0, 9) draws: sd of s² is 9·sqrt(2/(n-1)) = 0.09, so a
    # 5-sd band is 9 ± 0.45; the mean's sd is 3/sqrt(n) = 0.021
    assert abs(float(w.var()) - 9.0) < 0.45
    assert abs(float(w.mean())) < 5 * 0.0213
    assert a.delta["w"].dtype == torch.float32


def test_stamp_sets_exactly_the_bottom_right_patch_or_the_last_features() -> None:
    x = torch.zeros(2, 1, 4, 4)
    out = stamp(x, 2, 1.0)
    want = torch.zeros(4, 4)
    want[2:, 2:] = 1.0
    assert torch.equal(out[0, 0], want) and torch.equal(out[1, 0], want)
    assert float(x.sum()) == 0.0  # a copy
    flat = stamp(torch.zeros(3, 5), 2, 7.0)
    assert flat[0].tolist() == [0.0, 0.0, 0.0, 7.0, 7.0]
    with pytest.raises(ValueError, match="float inputs"):
        stamp(torch.zeros(2, 3, dtype=torch.long), 1, 1.0)


def test_backdoor_poisons_its_share_and_boosts_by_the_cohort_size() -> None:
    data = ClientData(torch.zeros(10, 1, 4, 4), torch.arange(10) % 3 + 1)
    bd = Backdoor(target=0, patch=2, value=1.0, poison_fraction=0.3)
    out = bd.poison(data, torch.Generator().manual_seed(0))
    hit = out.x_train.flatten(1).sum(1) > 0
    assert int(hit.sum()) == 3  # round(0.3 · 10)
    assert out.y_train[hit].tolist() == [0, 0, 0]
    assert torch.equal(out.y_train[~hit], data.y_train[~hit])
    honest = ModelDelta({"w": torch.tensor([0.5, -1.0])})
    # γ = n / m: a cohort of 10 with 2 attackers expected shares the replacement, 5 each
    assert bd.forge(ctx_of(honest)).delta["w"].tolist() == [2.5, -5.0]
    alone = bd.forge(ctx_of(honest, expected_attackers=1)).delta["w"].tolist()
    assert alone == [5.0, -10.0]  # the paper's single attacker: γ = n = 10
    boosted = Backdoor(boost=3.0).forge(ctx_of(honest)).delta["w"].tolist()
    assert boosted == [1.5, -3.0]


class _Detector(nn.Module):
    """Predicts class 0 exactly when the input's last feature is above 0.5, else class 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        on = (x[:, -1] > 0.5).float()
        return torch.stack([on, 1 - on], dim=1)


def test_backdoor_accuracy_counts_triggered_non_target_examples_labelled_target() -> None:
    x = torch.zeros(6, 3)
    y = torch.tensor([0, 1, 1, 2, 2, 0])
    # the 4 non-target examples, triggered, all get class 0 from the detector → 1.0
    assert backdoor_accuracy(_Detector(), x, y, target=0, patch=1, value=1.0) == 1.0
    # a trigger value the detector ignores → none
    assert backdoor_accuracy(_Detector(), x, y, target=0, patch=1, value=0.0) == 0.0
    assert math.isnan(backdoor_accuracy(_Detector(), x, torch.zeros(6).long(), 0, 1, 1.0))
    probe = Backdoor(target=0, patch=1).probe(_Detector(), x, y)
    assert probe({}, INFO) == {"backdoor_accuracy": 1.0}


def test_z_max_follows_baruch_et_al() -> None:
    # n = 10, m = 2: s = floor(6) - 2 = 4, z = Φ⁻¹(6/10) = 0.253347
    assert z_max(10, 2) == pytest.approx(0.2533471, abs=1e-6)
    # n = 50, m = 10: s = 26 - 10 = 16, z = Φ⁻¹(34/50) = 0.467699
    assert z_max(50, 10) == pytest.approx(0.4676988, abs=1e-6)
    # n = 20, m = 1: s = 10, z = Φ⁻¹(0.5) = 0
    assert z_max(20, 1) == pytest.approx(0.0, abs=1e-12)
    # attackers alone a majority: probability capped at 1 - 1/(2n)
    assert z_max(4, 4) == pytest.approx(1.1503494, abs=1e-6)  # Φ⁻¹(7/8)


def test_alie_sends_mean_minus_z_sigma_from_shard_updates() -> None:
    honest = ModelDelta({"w": torch.tensor([1.0, 2.0])})
    parts = iter(
        [ModelDelta({"w": torch.tensor([0.0, 2.0])}), ModelDelta({"w": torch.tensor([2.0, 2.0])})]
    )
    seen: list[int] = []

    def train(d: ClientData) -> Any:
        seen.append(d.num_examples)
        return next(parts)

    data = ClientData(torch.zeros(5, 2), torch.zeros(5).long())
    out = ALittleIsEnough(z=1.5, shards=2).forge(ctx_of(honest, data=data, train=train))
    # σ (n - 1 denominator) of (0, 2) is sqrt(2), of (2, 2) is 0: μ - 1.5 σ = (1 - 2.1213, 2)
    assert out.delta["w"].tolist() == pytest.approx([1.0 - 1.5 * math.sqrt(2.0), 2.0])
    assert sorted(seen) == [2, 3]  # two disjoint shards of the 5 examples
    lone = ClientData(torch.zeros(1, 2), torch.zeros(1).long())
    assert ALittleIsEnough().forge(ctx_of(honest, data=lone)) is honest


def test_shards_are_disjoint_and_cover_the_data() -> None:
    data = ClientData(torch.arange(11.0).unsqueeze(1), torch.arange(11))
    parts = shards(data, 3, torch.Generator().manual_seed(2))
    ids = sorted(int(v) for p in parts for v in p.y_train)
    assert ids == list(range(11)) and sorted(p.num_examples for p in parts) == [3, 4, 4]
    assert all(torch.equal(p.x_train.squeeze(1).long(), p.y_train) for p in parts)


def test_label_and_input_noise() -> None:
    y = torch.arange(1000) % 10
    data = ClientData(torch.zeros(1000, 3), y)
    noisy = LabelNoise(p=0.5, num_classes=10).poison(data, torch.Generator().manual_seed(0))
    changed = float((noisy.y_train != y).float().mean())
    # replaced with prob 0.5, and a replacement equals the old label w.p. 1/10: 0.45 expected,
    # sd sqrt(0.45·0.55/1000) = 0.0157
    assert abs(changed - 0.45) < 5 * 0.0157
    assert LabelNoise(p=0.0, num_classes=10).poison(data, torch.Generator()).y_train.equal(y)
    moved = InputNoise(std=2.0).poison(data, torch.Generator().manual_seed(0)).x_train
    assert abs(float(moved.std()) - 2.0) < 0.1 and torch.equal(data.x_train, torch.zeros(1000, 3))


def test_choose_attackers_is_a_seeded_share_of_the_population() -> None:
    a = choose_attackers(50, 0.2, seed=3)
    assert len(a) == 10 and a == choose_attackers(50, 0.2, seed=3) and max(a) < 50
    assert a != choose_attackers(50, 0.2, seed=4)
    assert choose_attackers(50, 0.0, seed=3) == frozenset()
    assert len(choose_attackers(7, 0.1, seed=0)) == 1  # round(0.7)
    with pytest.raises(ValueError, match="fraction"):
        choose_attackers(10, 1.5, seed=0)


def _train(alg: Any, cid: int) -> Any:
    data = toy_clients(4)[cid]
    m = toy_model()
    info = RoundInfo(round=1, seed=9, num_clients=4, cohort_size=4)
    msg = alg.broadcast(alg.init_state(model_params(m)), info)
    return client_update(alg, client_context(m, cid, info), msg, data, None)


def test_attacked_leaves_honest_clients_and_the_server_half_alone() -> None:
    inner = FedAvg(local=LocalTraining(lr=0.1, epochs=1, batch_size=8))
    alg = Attacked(inner=inner, attack=LabelFlip(num_classes=3), attackers=frozenset({1}))
    assert alg.name == inner.name and alg.aggregator is inner.aggregator
    honest, plain = _train(alg, 0), _train(inner, 0)
    assert all(
        torch.equal(honest.update.delta[k], plain.update.delta[k]) for k in plain.update.delta
    )
    bad, good = _train(alg, 1), _train(inner, 1)
    assert not torch.equal(bad.update.delta["2.weight"], good.update.delta["2.weight"])
    # the attacker trained on flipped labels: equal to the inner algorithm on that data
    flipped = dataclasses.replace(toy_clients(4)[1], y_train=2 - toy_clients(4)[1].y_train)
    m = toy_model()
    info = RoundInfo(round=1, seed=9, num_clients=4, cohort_size=4)
    msg = inner.broadcast(inner.init_state(model_params(m)), info)
    want = client_update(inner, client_context(m, 1, info), msg, flipped, None)
    assert all(torch.equal(bad.update.delta[k], want.update.delta[k]) for k in want.update.delta)
    assert bad.weight == good.weight  # the weight is the inner algorithm's


def test_alie_shard_training_uses_the_attackers_own_streams() -> None:
    inner = FedAvg(local=LocalTraining(lr=0.1, epochs=1, batch_size=4))
    alg = Attacked(inner=inner, attack=ALittleIsEnough(z=1.0), attackers=frozenset({2}))
    a, b = _train(alg, 2), _train(alg, 2)
    assert torch.equal(a.update.delta["0.weight"], b.update.delta["0.weight"])
    plain = _train(inner, 2)
    gap = (a.update.delta["0.weight"] - plain.update.delta["0.weight"]).abs()
    assert float(gap.max()) > 0  # shifted by σ, which is not zero on real shards
    g1 = generator(9, 1, 2, "attack:train:0")
    g2 = generator(9, 1, 2, "client")
    assert not torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


def test_attacked_expected_attackers_and_the_no_op_wrapper() -> None:
    inner = FedAvg()
    alg = Attacked(inner=inner, attack=SignFlip(), attackers=frozenset(range(20)))
    assert alg._expected(RoundInfo(round=0, seed=0, num_clients=100, cohort_size=10)) == 2
    told = dataclasses.replace(alg, assumed_fraction=0.3)
    assert told._expected(RoundInfo(round=0, seed=0, num_clients=100, cohort_size=10)) == 3
    assert attacked(inner, None, {1}) is inner and attacked(inner, SignFlip(), ()) is inner
    with pytest.raises(ValueError, match="assumed_fraction"):
        Attacked(inner=inner, attack=SignFlip(), attackers=frozenset(), assumed_fraction=2.0)


def test_attack_table_builds_validates_and_round_trips() -> None:
    s = AttackSettings.from_mapping({"name": "label_flip", "fraction": 0.2})
    assert s.attack == LabelFlip() and s.fraction == 0.2 and s.clients is None
    assert s.attackers(50, 0) == choose_attackers(50, 0.2, 0)
    assert s.resolved(62) == LabelFlip(num_classes=62)
    again = AttackSettings.from_mapping(s.to_mapping())
    assert again == s
    ipm = AttackSettings.from_mapping({"name": "ipm", "clients": [4, 1, 4]})
    assert ipm.clients == (1, 4) and ipm.attack == SignFlip(scale=0.1)
    assert AttackSettings.from_mapping(ipm.to_mapping()) == ipm
    assert ipm.to_mapping()["name"] == "ipm"  # a preset keeps its name in the record
    with pytest.raises(ConfigError, match="not in the population"):
        ipm.attackers(3, 0)
    bad = [
        ({"name": "sign_flip"}, "needs 'fraction'"),
        ({"name": "sign_flip", "fraction": 1.5}, r"attack.fraction must be in \[0, 1\]"),
        ({"name": "sign_flip", "fraction": True}, "attack.fraction must be a number"),
        ({"name": "sign_flip", "clients": [True]}, "attack.clients must be a list"),
        ({"name": "nope", "fraction": 0.1}, "attack.name"),
        ({"name": "sign_flip", "fraction": 0.1, "scale": -1.0}, "scale"),
        ({"name": "sign_flip", "fraction": 0.1, "assumed_fraction": 3}, "assumed_fraction"),
    ]
    for table, match in bad:
        with pytest.raises(ConfigError, match=match):
            AttackSettings.from_mapping(table)
