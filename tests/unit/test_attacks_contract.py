"""The attacks' contracts beyond their formulas: settings refused at their exact boundaries with
the field named, draws that come only from the attacker's own named streams, the trigger's
geometry, and Attacked's server half and honest clients being the wrapped algorithm's."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch

from fedkit.algorithm import ClientData, RoundInfo
from fedkit.algorithms import FedAvg, Scaffold
from fedkit.algorithms.fedavg import ModelDelta
from fedkit.attacks import Attack, AttackContext, Attacked, attacked, choose_attackers
from fedkit.attacks.alie import ALittleIsEnough, shards, z_max
from fedkit.attacks.backdoor import Backdoor, stamp
from fedkit.attacks.gaussian import GaussianNoise
from fedkit.attacks.label_flip import LabelFlip, check_labels
from fedkit.attacks.noisy import InputNoise, LabelNoise
from fedkit.attacks.sign_flip import SignFlip
from fedkit.client import client_context, client_update, train_plan
from fedkit.local import LocalTraining
from fedkit.params import model_params, tree_leaves
from fedkit.rng import generator
from fedkit.run import RunConfig, run
from fedkit.sim.serial import SerialExecutor
from tests.helpers.personal import LocalHead
from tests.helpers.robust import attack_context as ctx_of
from tests.helpers.toy import toy_clients, toy_model, toy_store

INFO = RoundInfo(round=2, seed=5, num_clients=10, cohort_size=10)
LOCAL = LocalTraining(lr=0.1, epochs=1, batch_size=8)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: LabelFlip(num_classes=1), "num_classes must be >= 2, got 1"),
        (lambda: LabelNoise(p=1.01), r"p must be in \[0, 1\], got 1.01"),
        (lambda: LabelNoise(p=-0.1), r"p must be in \[0, 1\], got -0.1"),
        (lambda: LabelNoise(num_classes=1), "num_classes must be >= 2, got 1"),
        (lambda: InputNoise(std=0.0), "std must be positive and finite, got 0.0"),
        (lambda: InputNoise(std=math.inf), "std must be positive and finite, got inf"),
        (lambda: GaussianNoise(std=0.0), "std must be positive and finite, got 0.0"),
        (lambda: GaussianNoise(std=math.inf), "std must be positive and finite, got inf"),
        (lambda: GaussianNoise(std=math.nan), "std must be positive and finite, got nan"),
        (lambda: SignFlip(scale=math.inf), "scale must be positive and finite, got inf"),
        (lambda: Backdoor(target=-1), "target must be >= 0, got -1"),
        (lambda: Backdoor(patch=0), "patch must be >= 1, got 0"),
        (lambda: Backdoor(target=10, num_classes=10), "target must be below num_classes = 10"),
        (lambda: Backdoor(poison_fraction=0.0), r"poison_fraction must be in \(0, 1\], got 0.0"),
        (lambda: Backdoor(poison_fraction=1.5), r"poison_fraction must be in \(0, 1\], got 1.5"),
        (lambda: Backdoor(boost=0.0), "boost must be positive and finite, got 0.0"),
        (lambda: Backdoor(boost=math.inf), "boost must be positive and finite, got inf"),
        (lambda: ALittleIsEnough(z=math.inf), "z must be finite, got inf"),
        (lambda: ALittleIsEnough(shards=1), "shards must be >= 2, got 1"),
        (lambda: z_max(0, 0), "need n >= 1 and m >= 0, got n=0, m=0"),
        (lambda: z_max(5, -1), "need n >= 1 and m >= 0, got n=5, m=-1"),
        (lambda: choose_attackers(10, 1.01, 0), "attack fraction must be in"),
    ],
)
def test_settings_are_refused_at_their_boundary_with_the_field_named(
    make: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{message}"):
        make()


def test_the_boundary_values_themselves_are_accepted() -> None:
    LabelFlip(num_classes=2)
    LabelNoise(p=1.0, num_classes=2)
    LabelNoise(p=0.0)
    InputNoise(std=1e-9)
    GaussianNoise(std=1e-9)
    Backdoor(poison_fraction=1.0, boost=0.5, target=0, patch=1)
    ALittleIsEnough(shards=2, z=-3.0)
    for f in (0.0, 1.0):
        Attacked(inner=FedAvg(), attack=SignFlip(), attackers=frozenset(), assumed_fraction=f)
    assert choose_attackers(10, 1.0, 0) == frozenset(range(10))


def test_z_max_edges() -> None:
    # n = 1, m = 0: s = 1, (n - s)/n = 0 → kept at 1/(2n) = 0.5 → z = 0
    assert z_max(1, 0) == pytest.approx(0.0, abs=1e-12)
    # n = 2, m = 0: s = 2, p = 0 → 1/(2n) = 0.25 → Φ⁻¹(0.25) = −0.67449
    assert z_max(2, 0) == pytest.approx(-0.6744898, abs=1e-6)
    # n = 5, m = 0: s = 3, p = 0.4 → −0.253347
    assert z_max(5, 0) == pytest.approx(-0.2533471, abs=1e-6)


def test_labels_at_the_class_count_are_refused_with_the_attack_named() -> None:
    check_labels(torch.tensor([0, 4]), 5, "x")
    with pytest.raises(
        ValueError,
        match=r"^label_noise: label 5 is not below num_classes = 5; set the attack's "
        r"num_classes to the dataset's$",
    ):
        LabelNoise(num_classes=5).poison(
            ClientData(torch.zeros(2, 1), torch.tensor([0, 5])), torch.Generator()
        )
    with pytest.raises(ValueError, match=r"^label_flip: label 5 is not below num_classes = 5"):
        LabelFlip(num_classes=5).poison(
            ClientData(torch.zeros(2, 1), torch.tensor([0, 5])), torch.Generator()
        )
    with pytest.raises(ValueError, match=r"^label_noise needs num_classes"):
        LabelNoise().poison(ClientData(torch.zeros(1, 1), torch.tensor([0])), torch.Generator())


def _twice(fn: Any) -> tuple[Any, Any]:
    """``fn(stream)`` twice from equal streams, the global RNG moved between the calls."""
    torch.manual_seed(1)
    a = fn(torch.Generator().manual_seed(7))
    torch.manual_seed(2)
    b = fn(torch.Generator().manual_seed(7))
    return a, b


def test_draws_come_only_from_the_stream_given() -> None:
    data = ClientData(torch.rand(50, 1, 5, 5), torch.arange(50) % 3)
    for poison in (
        LabelNoise(p=0.5, num_classes=3).poison,
        InputNoise(std=0.5).poison,
        Backdoor(poison_fraction=0.3).poison,
    ):
        a, b = _twice(lambda g, poison=poison: poison(data, g))
        assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    a, b = _twice(lambda g: shards(data, 3, g))
    assert all(torch.equal(p.y_train, q.y_train) for p, q in zip(a, b, strict=True))
    honest = ModelDelta({"w": torch.ones(30)})

    def forge(g: torch.Generator) -> Any:
        return GaussianNoise(std=2.0).forge(ctx_of(honest, stream=g))

    a, b = _twice(forge)
    assert torch.equal(a.delta["w"], b.delta["w"])
    other = GaussianNoise(std=2.0).forge(ctx_of(honest, stream=torch.Generator().manual_seed(8)))
    assert not torch.equal(a.delta["w"], other.delta["w"])
    # drawn in float64 and cast: the leaf keeps its dtype
    want = torch.randn(30, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 2.0
    assert torch.equal(a.delta["w"], want.float())


def test_label_noise_keeps_the_label_dtype_and_can_draw_class_zero_for_class_zero() -> None:
    zeros = ClientData(torch.zeros(1000, 1), torch.zeros(1000, dtype=torch.int32))
    out = LabelNoise(p=1.0, num_classes=10).poison(zeros, torch.Generator().manual_seed(0))
    assert out.y_train.dtype == torch.int32
    changed = float((out.y_train != 0).float().mean())
    # every label replaced by a uniform class: 9/10 differ from 0 (sd 0.0095)
    assert abs(changed - 0.9) < 0.05
    assert set(out.y_train.tolist()) == set(range(10))


def test_input_noise_adds_the_streams_gaussians() -> None:
    x64 = torch.rand(20, 3, dtype=torch.float64)
    out = InputNoise(std=0.5).poison(
        ClientData(x64, torch.zeros(20)), torch.Generator().manual_seed(4)
    )
    g = torch.Generator().manual_seed(4)
    assert torch.equal(
        out.x_train, x64 + torch.randn(20, 3, generator=g, dtype=torch.float64) * 0.5
    )
    with pytest.raises(ValueError, match=r"^input_noise needs float inputs, got torch.int64$"):
        InputNoise().poison(ClientData(torch.zeros(2, 1).long(), torch.zeros(2)), torch.Generator())
    x = torch.rand(20, 3)
    out = InputNoise(std=0.5).poison(
        ClientData(x, torch.zeros(20)), torch.Generator().manual_seed(4)
    )
    want = x + torch.randn(20, 3, generator=torch.Generator().manual_seed(4)) * 0.5
    assert torch.equal(out.x_train, want)


def test_the_trigger_sits_in_the_last_two_dimensions() -> None:
    out = stamp(torch.zeros(1, 1, 5, 5), 2, 1.0)
    assert out[0, 0].nonzero().tolist() == [[3, 3], [3, 4], [4, 3], [4, 4]]
    # a sample with no channel axis ([N, H, W]) is an image too
    out = stamp(torch.zeros(1, 5, 5), 2, 1.0)
    assert out[0].nonzero().tolist() == [[3, 3], [3, 4], [4, 3], [4, 4]]


def test_alie_default_z_comes_from_the_cohort_and_the_expected_attackers() -> None:
    honest = ModelDelta({"w": torch.tensor([1.0, 2.0])})
    parts = iter(
        [ModelDelta({"w": torch.tensor([0.0, 2.0])}), ModelDelta({"w": torch.tensor([2.0, 2.0])})]
    )
    data = ClientData(torch.zeros(4, 2), torch.zeros(4).long())
    out = ALittleIsEnough(shards=2).forge(ctx_of(honest, data=data, train=lambda d: next(parts)))
    z = z_max(10, 2)  # cohort 10, 2 attackers expected: 0.253347
    assert out.delta["w"].tolist() == pytest.approx([1.0 - z * math.sqrt(2.0), 2.0])
    assert out.delta["w"].dtype == torch.float32


class _Recorder(Attack):
    """Records the first draw of the streams it is given, and trains on two halves."""

    def poison(self, data: ClientData, stream: torch.Generator) -> ClientData | None:
        SEEN["poison"] = float(torch.rand(1, generator=stream))
        return None

    def forge(self, actx: AttackContext) -> Any:
        SEEN["forge"] = float(torch.rand(1, generator=actx.stream))
        SEEN["expected"] = actx.expected_attackers
        SEEN["client"] = actx.client.client_id
        n = actx.data.num_examples
        half = ClientData(actx.data.x_train[: n // 2], actx.data.y_train[: n // 2])
        SEEN["train"] = [actx.train(half), actx.train(half)]
        return actx.honest


SEEN: dict[str, Any] = {}


def _first(what: str, cid: int, info: RoundInfo) -> float:
    return float(torch.rand(1, generator=generator(info.seed, info.round, cid, f"attack:{what}")))


def test_the_attacker_draws_from_its_own_named_streams_and_trains_shards_on_its_own() -> None:
    inner = Scaffold(local=LOCAL)  # its final reads the plan's carry and the context
    alg = Attacked(inner=inner, attack=_Recorder(), attackers=frozenset({1}))
    info = RoundInfo(round=3, seed=9, num_clients=4, cohort_size=2)
    data = toy_clients(4)[1]
    msg = alg.broadcast(alg.init_state(model_params(toy_model())), info)
    SEEN.clear()
    client_update(alg, client_context(toy_model(), 1, info), msg, data, None)
    assert SEEN["poison"] == _first("poison", 1, info)
    assert SEEN["forge"] == _first("forge", 1, info)
    assert SEEN["client"] == 1 and SEEN["expected"] == 1  # round(1/4 · 2 + 0.5) = 1
    # the two shard trainings run from streams train:0 and train:1 on the half given
    n = data.num_examples
    half = ClientData(data.x_train[: n // 2], data.y_train[: n // 2])
    for i, got in enumerate(SEEN["train"]):
        ctx = dataclasses.replace(
            client_context(toy_model(), 1, info),
            generator=generator(9, 3, 1, f"attack:train:{i}"),
        )
        plan = dataclasses.replace(inner.client_init(ctx, msg, data, None), data=half)
        want = inner.client_final(ctx, msg, plan, train_plan(ctx, plan, half)).update
        assert all(
            torch.equal(a, b)
            for (_, a), (_, b) in zip(tree_leaves(got), tree_leaves(want), strict=True)
        )
    first, second = (dict(tree_leaves(u)) for u in SEEN["train"])
    assert not torch.equal(first["delta/0.weight"], second["delta/0.weight"])


def test_a_plan_without_data_is_refused_by_the_attackers_final() -> None:
    inner = FedAvg(local=LOCAL)
    alg = Attacked(inner=inner, attack=SignFlip(), attackers=frozenset({3}))
    ctx = client_context(toy_model(), 3, INFO)
    data = toy_clients(1)[0]
    msg = inner.broadcast(inner.init_state(model_params(toy_model())), INFO)
    plan = inner.client_init(ctx, msg, data, None)  # not Attacked's: no data named
    with pytest.raises(
        ValueError,
        match=r"^client 3: an attacker's plan names its data \(Attacked.client_init sets it\); "
        r"this plan was not made by Attacked.client_init$",
    ):
        alg.client_final(ctx, msg, plan, train_plan(ctx, plan, data))


def test_the_server_half_and_templates_are_the_wrapped_algorithms() -> None:
    for inner in (Scaffold(local=LOCAL), LocalHead(local=LOCAL)):
        alg = Attacked(inner=inner, attack=SignFlip(), attackers=[1, 2])  # type: ignore[arg-type]
        assert alg.attackers == frozenset({1, 2}) and isinstance(alg.attackers, frozenset)
        p = model_params(toy_model())
        state = alg.init_state(p)
        msg, want_msg = alg.broadcast(state, INFO), inner.broadcast(inner.init_state(p), INFO)
        assert type(msg) is type(want_msg)
        update = alg.update_template(p)
        assert type(update) is type(inner.update_template(p))
        agg = dataclasses.replace(
            update, **{f.name: getattr(update, f.name) for f in dataclasses.fields(update)}
        )
        new, want = alg.server_update(state, agg, INFO), inner.server_update(state, agg, INFO)
        assert all(torch.equal(alg.global_params(new)[k], inner.global_params(want)[k]) for k in p)
        t, wt = alg.client_state_template(p), inner.client_state_template(p)
        assert (t is None) == (wt is None)
        cstate = inner.client_state_template(p)
        own, want_own = alg.personal_params(p, cstate), inner.personal_params(p, cstate)
        assert (own is None) == (want_own is None)
        if own is not None and want_own is not None:
            assert all(torch.equal(own[k], want_own[k]) for k in want_own)
    wrapped = attacked(FedAvg(), SignFlip(), [4, 1], 0.3)
    assert isinstance(wrapped, Attacked)
    assert (wrapped.attackers, wrapped.assumed_fraction) == (frozenset({1, 4}), 0.3)
    assert wrapped.attack == SignFlip() and wrapped.inner == FedAvg()


def test_with_no_attacker_sampled_the_run_is_the_wrapped_algorithms_bit_for_bit() -> None:
    config = RunConfig(rounds=3, clients_per_round=3, seed=4, eval_every=0)
    for inner in (Scaffold(local=LOCAL), LocalHead(local=LOCAL)):
        alg = Attacked(inner=inner, attack=SignFlip(), attackers=frozenset({99}))
        got = run(alg, SerialExecutor(toy_store(6), toy_model()), model_params(toy_model()), config)
        want = run(
            inner, SerialExecutor(toy_store(6), toy_model()), model_params(toy_model()), config
        )
        assert all(torch.equal(got.params[k], want.params[k]) for k in want.params)


def test_attackers_come_from_the_runs_own_stream() -> None:
    # (seed, round 0, the population's id -1, "attackers"): the same set wherever it is drawn
    perm = torch.randperm(30, generator=generator(5, 0, -1, "attackers"))
    assert choose_attackers(30, 0.2, seed=5) == frozenset(int(i) for i in perm[:6])


def test_alie_shards_come_from_the_attackers_stream() -> None:
    data = ClientData(torch.zeros(9, 1), torch.arange(9))
    honest = ModelDelta({"w": torch.zeros(1)})

    def train(d: ClientData) -> Any:  # an "update" that tells which examples a shard holds
        return ModelDelta({"w": d.y_train.double().sum().reshape(1).float()})

    def forge(global_seed: int) -> Any:
        actx = ctx_of(honest, data=data, train=train, stream=torch.Generator().manual_seed(7))
        torch.manual_seed(global_seed)  # (building the context seeds the global RNG)
        return ALittleIsEnough(z=1.0, shards=3).forge(actx)

    assert torch.equal(forge(1).delta["w"], forge(2).delta["w"])


def test_expected_attackers_is_at_least_one() -> None:
    alg = Attacked(inner=FedAvg(), attack=SignFlip(), attackers=frozenset({0}))
    # 1 of 100 in a cohort of 10: 0.1 rounds to 0, an attacker in the cohort counts itself
    assert alg._expected(RoundInfo(round=0, seed=0, num_clients=100, cohort_size=10)) == 1
    assert alg._expected(RoundInfo(round=0, seed=0, num_clients=2, cohort_size=2)) == 1
    # 3 of 10 in a cohort of 5: 1.5 rounds half up to 2
    three = dataclasses.replace(alg, attackers=frozenset({0, 1, 2}))
    assert three._expected(RoundInfo(round=0, seed=0, num_clients=10, cohort_size=5)) == 2
