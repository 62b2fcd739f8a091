"""System heterogeneity: deterministic device draws, availability, dropout, stragglers, deadline."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit.algorithm import RoundInfo
from fedkit.algorithms import FedAvg
from fedkit.local import LocalTraining
from fedkit.params import model_params
from fedkit.run import RunConfig, run
from fedkit.sim.factory import build_executor
from fedkit.sim.system import (
    Constant,
    LogNormal,
    SimulatedClock,
    SystemModel,
    SystemParticipation,
    Trace,
    Uniform,
)
from tests.helpers.toy import toy_model, toy_store

LOCAL = LocalTraining(lr=0.05, epochs=2, batch_size=10)
INFO = RoundInfo(round=3, seed=5, num_clients=1000, cohort_size=10)


def _bind(model: SystemModel, n: int = 1000, size: int = 100) -> SystemParticipation:
    return SystemParticipation(model, num_examples=[size] * n, local=LOCAL, bytes_down=4000)


def test_draws_are_deterministic_per_seed_round_client() -> None:
    m = SystemModel(
        compute_speed=LogNormal(median=100.0, sigma=1.0),
        speed_jitter=0.3,
        availability=0.7,
        dropout=0.1,
        stragglers=0.5,
        policy="partial",
    )
    a, b = _bind(m), _bind(m)
    assert [a.timing(c, INFO) for c in range(50)] == [b.timing(c, INFO) for c in range(50)]
    other = RoundInfo(round=4, seed=5, num_clients=1000, cohort_size=10)
    assert [a.timing(c, INFO) for c in range(50)] != [a.timing(c, other) for c in range(50)]
    # the order of queries does not matter
    assert [a.timing(c, INFO) for c in reversed(range(50))][::-1] == [
        b.timing(c, INFO) for c in range(50)
    ]


def test_full_participation_by_default() -> None:
    p = _bind(SystemModel())
    assert all(p(c, INFO) == 1.0 for c in range(100))


def test_availability_and_dropout_rates() -> None:
    p = _bind(SystemModel(availability=0.6, dropout=0.25))
    t = [p.timing(c, INFO) for c in range(1000)]
    unavailable = sum(x.reason == "unavailable" for x in t) / 1000
    dropped = sum(x.reason == "dropout" for x in t) / 1000
    assert unavailable == pytest.approx(0.4, abs=0.05)
    assert dropped == pytest.approx(0.6 * 0.25, abs=0.04)
    assert all(x.work is None for x in t if x.reason in ("unavailable", "dropout"))


def test_per_client_availability_from_a_distribution() -> None:
    # a trace of per-device probabilities: client k is reachable with probability
    # [0.2, 1.0, 0.5][k % 3], the same every round (a device trait), and a value above 1
    # (lognormal) counts as always reachable
    p = _bind(SystemModel(availability=Trace(values=(0.2, 1.0, 0.5))), n=3)
    assert [p.availability(k) for k in range(3)] == [0.2, 1.0, 0.5]
    rounds = 2000
    up = [0, 0, 0]
    for r in range(rounds):
        info = RoundInfo(round=r, seed=5, num_clients=3, cohort_size=3)
        for k in range(3):
            up[k] += p.timing(k, info).reason != "unavailable"
    assert up[1] == rounds
    for k, q in ((0, 0.2), (2, 0.5)):  # binomial: within 5 standard errors
        assert abs(up[k] / rounds - q) < 5 * math.sqrt(q * (1 - q) / rounds)
    big = _bind(SystemModel(availability=LogNormal(median=5.0, sigma=0.1)), n=10)
    assert all(big.availability(k) == 1.0 for k in range(10))
    # from an experiment table: a number stays one shared probability, a table is per device
    assert SystemModel.from_mapping({"availability": 0.3}).availability == 0.3
    m = SystemModel.from_mapping({"availability": {"dist": "uniform", "low": 0.1, "high": 0.9}})
    drawn = [_bind(m, n=200).availability(k) for k in range(200)]
    assert all(0.1 <= a <= 0.9 for a in drawn) and len(set(drawn)) == 200
    # a device trait of its own stream: (model seed, client, "system/availability"), not the
    # speed's or another seed's
    u = Uniform(low=0.1, high=0.9)
    assert drawn[:5] == [u.draw(m.seed, k, "system/availability") for k in range(5)]
    assert drawn[:5] != [u.draw(m.seed, k, "system/speed") for k in range(5)]
    other = _bind(dataclasses.replace(m, seed=m.seed + 1), n=5)
    assert [other.availability(k) for k in range(5)] != drawn[:5]
    with pytest.raises(ValueError, match=r"^system: availability must be a probability"):
        SystemModel.from_mapping({"availability": 1.5})


@pytest.mark.parametrize("share", [0.0, 0.5, 0.9])
def test_fedprox_straggler_shares(share: float) -> None:
    drop = _bind(SystemModel(stragglers=share, policy="drop"))
    part = _bind(SystemModel(stragglers=share, policy="partial", straggler_work=(0.1, 0.6)))
    d = [drop(c, INFO) for c in range(1000)]
    p = [part(c, INFO) for c in range(1000)]
    assert sum(w is None for w in d) / 1000 == pytest.approx(share, abs=0.05)
    assert all(w is not None for w in p)
    partial = [w for w in p if w is not None and w < 1.0]
    assert len(partial) == sum(w is None for w in d)  # the same clients are stragglers
    assert all(0.1 <= w <= 0.6 for w in partial)


def test_deadline_drop_versus_partial_work() -> None:
    # 100 examples, 2 epochs -> 200 samples of work; speed 100/s -> 2 s compute; comm 0.1 s
    base = dict(
        compute_speed=Constant(value=100.0),
        latency=Constant(value=0.05),
        bandwidth_down=Constant(value=1e9),
        bandwidth_up=Constant(value=1e9),
        deadline=1.05,
    )
    late = _bind(SystemModel(**base, policy="drop")).timing(0, INFO)  # type: ignore[arg-type]
    assert late.work is None and late.reason == "late" and late.seconds == 1.05
    part = _bind(SystemModel(**base, policy="partial")).timing(0, INFO)  # type: ignore[arg-type]
    assert part.reason == "partial"
    assert part.work == pytest.approx((1.05 - 0.1 - 2 * 4000 / 1e9) / 2.0)
    assert part.seconds == pytest.approx(1.05)
    on_time = _bind(SystemModel(**{**base, "deadline": 3.0})).timing(0, INFO)  # type: ignore[arg-type]
    assert on_time.work == 1.0 and on_time.seconds == pytest.approx(2.1 + 2 * 4000 / 1e9)


def test_round_seconds_is_slowest_kept_client_or_deadline() -> None:
    speeds = Trace(values=(100.0, 50.0, 400.0))
    m = SystemModel(compute_speed=speeds, latency=Constant(value=0.5))
    p = _bind(m)
    comm = 0.5 + 4000 / 1e7 + 0.5 + 4000 / 1e6  # default links: 1e7 B/s down, 1e6 B/s up
    assert p.round_seconds([0, 1, 2], INFO) == pytest.approx(200 / 50.0 + comm)
    timed = _bind(SystemModel(compute_speed=speeds, latency=Constant(value=0.5), deadline=3.0))
    assert timed.round_seconds([0, 1, 2], INFO) == 3.0  # client 1 is late; the server waited


def test_distributions_validate_and_draw_in_range() -> None:
    u = Uniform(low=2.0, high=3.0)
    assert all(2.0 <= u.draw(0, c, "s") <= 3.0 for c in range(100))
    assert Trace(values=(1.0, 2.0)).draw(0, 3, "s") == 2.0
    with pytest.raises(ValueError, match="median"):
        LogNormal(median=0.0)
    with pytest.raises(ValueError, match="low"):
        Uniform(low=3.0, high=2.0)
    with pytest.raises(ValueError, match="availability"):
        SystemModel(availability=1.5)
    with pytest.raises(ValueError, match=r"policy.*drop"):
        SystemModel(policy="wait")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="straggler_work"):
        SystemModel(straggler_work=(0.5, 0.2))
    with pytest.raises(ValueError, match="deadline"):
        SystemModel(deadline=-1.0)


@settings(max_examples=60, deadline=None)
@given(
    avail=st.floats(0, 1),
    drop=st.floats(0, 1),
    strag=st.floats(0, 1),
    deadline=st.one_of(st.none(), st.floats(0.01, 10)),
    policy=st.sampled_from(["drop", "partial"]),
    cid=st.integers(0, 999),
)
def test_timing_invariants(
    avail: float, drop: float, strag: float, deadline: float | None, policy: str, cid: int
) -> None:
    m = SystemModel(
        compute_speed=LogNormal(median=200.0, sigma=1.0),
        availability=avail,
        dropout=drop,
        stragglers=strag,
        deadline=deadline,
        policy=policy,  # type: ignore[arg-type]
    )
    t = _bind(m).timing(cid, INFO)
    assert t.work is None or 0.0 < t.work <= 1.0
    assert t.seconds >= 0.0 and math.isfinite(t.seconds)
    if deadline is not None:
        assert t.seconds <= deadline + 1e-9
    if policy == "drop":
        assert t.work in (None, 1.0)


@pytest.mark.parametrize("kind", ["serial", "vectorized"])
def test_simulated_clock_through_the_factory_and_run_loop(kind: str) -> None:
    store = toy_store(8)
    system = SystemModel(
        compute_speed=LogNormal(median=200.0, sigma=1.0), availability=0.8, deadline=1.0
    )
    ex = build_executor(kind, store=store, model_fn=toy_model, system=system, local=LOCAL)
    assert isinstance(ex, SimulatedClock)
    res = run(
        FedAvg(local=LOCAL),
        ex,
        model_params(toy_model()),
        RunConfig(rounds=4, clients_per_round=6, seed=1, eval_every=0),
    )
    for rec in res.history:
        assert rec.sim_seconds is not None and 0.0 < rec.sim_seconds <= 1.0
        expected = {c for c in rec.cohort if ex.system(c, _info(rec.round)) is None}
        assert set(rec.dropped) == expected
        assert rec.bytes_up == sum(ex.system.bytes_up for _ in rec.clients)
    assert any(rec.dropped for rec in res.history)
    with pytest.raises(ValueError, match="local"):
        build_executor("serial", store=store, model_fn=toy_model, system=system)


def _info(r: int) -> RoundInfo:
    return RoundInfo(round=r, seed=1, num_clients=8, cohort_size=6)


def test_system_model_from_experiment_table() -> None:
    m = SystemModel.from_mapping(
        {
            "compute_speed": {"dist": "lognormal", "median": 100.0, "sigma": 1.0},
            "bandwidth_up": 2e6,
            "latency": [0.01, 0.2],
            "stragglers": 0.5,
            "straggler_work": [0.1, 0.9],
            "policy": "partial",
            "deadline": 30,
        }
    )
    assert m.compute_speed == LogNormal(median=100.0, sigma=1.0)
    assert m.bandwidth_up == Constant(value=2e6)
    assert m.latency == Trace(values=(0.01, 0.2))
    assert m.straggler_work == (0.1, 0.9) and m.policy == "partial" and m.deadline == 30
    with pytest.raises(ValueError, match=r"system: unknown key\(s\) \['stragglers_share'\]"):
        SystemModel.from_mapping({"stragglers_share": 0.5})
    with pytest.raises(ValueError, match=r"system.compute_speed.dist must be one of"):
        SystemModel.from_mapping({"compute_speed": {"dist": "pareto"}})
    with pytest.raises(ValueError, match=r"system: policy must be one of"):
        SystemModel.from_mapping({"policy": "wait"})
