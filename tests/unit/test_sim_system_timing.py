"""One client's round under the system model (fedkit.sim.system), hand-computed.

The device: 100 samples/s, links 1000 B/s down and 500 B/s up, 0.5 s latency each way; a
broadcast of 2000 B and an update of 1000 B; 50 examples, batches of 10, one epoch: 5 steps of
10 samples = 50 samples of work. So

    down = 0.5 + 2000 / 1000 = 2.5 s, compute = 50 / 100 = 0.5 s, up = 0.5 + 1000 / 500 = 2.5 s,

and a full round takes 5.5 s. A straggler doing a fraction f of the work takes 5 + 0.5 f s; past
a deadline D a late client could have done (D − 5) / 0.5 of it. The random draws are named in the
module's contract — traits from ``(model seed, client, "system/<trait>")`` at round 0, events
from ``(run seed, round, client, "system/<event>")`` — and recomputed here from those streams.
"""

from __future__ import annotations

import math

import pytest
import torch

from fedkit.algorithm import RoundInfo
from fedkit.local import LocalTraining
from fedkit.rng import generator
from fedkit.sim.system import (
    ClientTiming,
    Constant,
    LogNormal,
    SystemModel,
    SystemParticipation,
    Trace,
    Uniform,
)

INFO = RoundInfo(round=4, seed=9, num_clients=2, cohort_size=2)
DEVICE = {
    "compute_speed": Constant(value=100.0),
    "bandwidth_down": Constant(value=1000.0),
    "bandwidth_up": Constant(value=500.0),
    "latency": Constant(value=0.5),
}


def _bind(local: LocalTraining | None = None, n: int = 50, **rules: object) -> SystemParticipation:
    model = SystemModel(**DEVICE, **rules)  # type: ignore[arg-type]
    local = local or LocalTraining(lr=0.1, epochs=1, batch_size=10)
    return SystemParticipation(
        model, num_examples=[n, n], local=local, bytes_down=2000, bytes_up=1000
    )


def _u(stream: str, client: int = 0) -> float:
    g = generator(INFO.seed, INFO.round, client, stream)
    return float(torch.rand((), generator=g, dtype=torch.float64))


def _z(seed: int, round_: int, client: int, stream: str) -> float:
    g = generator(seed, round_, client, stream)
    return float(torch.randn((), generator=g, dtype=torch.float64))


def test_a_full_round_is_down_plus_compute_plus_up() -> None:
    assert _bind().timing(0, INFO) == ClientTiming(0, 1.0, 5.5, "ok")


def test_the_update_size_is_its_own() -> None:
    p = _bind()
    assert (p.bytes_down, p.bytes_up) == (2000, 1000)
    same = SystemParticipation(SystemModel(), num_examples=[1], local=LocalTraining(), bytes_down=7)
    unset = SystemParticipation(SystemModel(), num_examples=[1], local=LocalTraining())
    assert (same.bytes_up, unset.bytes_down, unset.bytes_up, unset.auto_bytes) == (7, 0, 0, True)
    assert not same.auto_bytes


@pytest.mark.parametrize(
    ("policy", "want"),
    [
        ("partial", ClientTiming(0, 0.4, 5.2, "partial")),
        ("drop", ClientTiming(0, None, 5.2, "straggler")),
    ],
)
def test_a_straggler_does_its_fraction(policy: str, want: ClientTiming) -> None:
    # every client a straggler with work 0.4: 2.5 + 0.5 · 0.4 + 2.5 = 5.2 s
    got = _bind(stragglers=1.0, straggler_work=(0.4, 0.4), policy=policy).timing(0, INFO)
    assert got.work == (None if want.work is None else pytest.approx(want.work))
    assert (got.seconds, got.reason) == (pytest.approx(want.seconds), want.reason)


def test_a_straggler_work_is_drawn_between_its_bounds() -> None:
    # work = 0.2 + (0.6 − 0.2) · u, u from (seed, round, client, "system/straggler-work")
    got = _bind(stragglers=1.0, straggler_work=(0.2, 0.6), policy="partial").timing(1, INFO)
    work = 0.2 + 0.4 * _u("system/straggler-work", 1)
    assert got.work == pytest.approx(work, rel=1e-12)
    assert got.seconds == pytest.approx(5.0 + 0.5 * work, rel=1e-12)


def test_a_straggler_with_no_work_is_dropped_even_under_partial() -> None:
    got = _bind(stragglers=1.0, straggler_work=(0.0, 0.0), policy="partial").timing(0, INFO)
    assert got == ClientTiming(0, None, 5.0, "straggler")


@pytest.mark.parametrize(
    ("policy", "want"),
    [
        ("partial", ClientTiming(0, 0.6, 5.3, "partial")),
        ("drop", ClientTiming(0, None, 5.3, "late")),
    ],
)
def test_a_late_client_at_the_deadline(policy: str, want: ClientTiming) -> None:
    # D = 5.3 < 5.5: it could do (5.3 − 5) / 0.5 = 0.6 of its work by the deadline
    got = _bind(deadline=5.3, policy=policy).timing(0, INFO)
    assert got.work == (None if want.work is None else pytest.approx(want.work))
    assert (got.seconds, got.reason) == (pytest.approx(want.seconds), want.reason)


def test_a_late_straggler_does_the_smaller_of_its_fraction_and_what_the_deadline_allows() -> None:
    # straggler 0.8 would take 5.4 s > D = 5.2: the deadline allows (5.2 − 5) / 0.5 = 0.4
    got = _bind(stragglers=1.0, straggler_work=(0.8, 0.8), deadline=5.2, policy="partial")
    t = got.timing(0, INFO)
    assert (t.work, t.seconds, t.reason) == (pytest.approx(0.4), pytest.approx(5.2), "partial")
    # and one whose fraction fits (0.3 → 5.15 s ≤ 5.2) keeps it
    fits = _bind(stragglers=1.0, straggler_work=(0.3, 0.3), deadline=5.2, policy="partial")
    assert fits.timing(0, INFO).work == pytest.approx(0.3)


def test_a_deadline_shorter_than_the_links_leaves_no_work() -> None:
    # D = 4.9 < down + up = 5: nothing can be done; the server waited until D
    assert _bind(deadline=4.9, policy="partial").timing(0, INFO) == ClientTiming(
        0, None, 4.9, "late"
    )
    # exactly on the deadline is in time
    assert _bind(deadline=5.5).timing(0, INFO) == ClientTiming(0, 1.0, 5.5, "ok")


def test_a_dropout_fails_part_way_through_its_compute() -> None:
    # fails at down + compute · u, u from "system/dropout-at"; capped by the deadline
    u = _u("system/dropout-at")
    assert _bind(dropout=1.0).timing(0, INFO) == ClientTiming(0, None, 2.5 + 0.5 * u, "dropout")
    assert _bind(dropout=1.0, deadline=2.5 + 0.25 * u).timing(0, INFO).seconds == 2.5 + 0.25 * u


def test_unreachable_clients_take_no_time() -> None:
    assert _bind(availability=0.0).timing(1, INFO) == ClientTiming(1, None, 0.0, "unavailable")


def test_speed_jitter_scales_the_compute_time() -> None:
    # speed = 100 · exp(0.5 z), z from (run seed, round, client, "system/jitter")
    z = _z(INFO.seed, INFO.round, 1, "system/jitter")
    t = _bind(speed_jitter=0.5).timing(1, INFO)
    assert t.seconds == pytest.approx(5.0 + 50 / (100 * math.exp(0.5 * z)), rel=1e-12)
    assert z != 0.0


def test_device_traits_come_from_their_named_streams_at_round_0() -> None:
    z = _z(7, 0, 3, "system/speed")
    assert LogNormal(median=100.0, sigma=0.5).draw(7, 3, "system/speed") == 100.0 * math.exp(
        0.5 * z
    )
    g = generator(7, 0, 3, "system/up")
    u = float(torch.rand((), generator=g, dtype=torch.float64))
    assert Uniform(low=1.0, high=3.0).draw(7, 3, "system/up") == 1.0 + 2.0 * u
    assert u != 0.5 and z != 0.0


@pytest.mark.parametrize(
    ("batch_size", "n", "samples"),
    [
        (0, 50, 50),  # full batch: one step of all 50
        (1, 50, 50),  # 50 steps of 1
        (10, 50, 50),  # 5 steps of 10
        (10, 1, 1),  # one step of the single example
        (10, 25, 30),  # 3 steps (the last one short on data, counted as full)
    ],
)
def test_work_samples(batch_size: int, n: int, samples: int) -> None:
    local = LocalTraining(lr=0.1, epochs=1, batch_size=batch_size)
    assert _bind(local, n=n).work_samples(0) == samples


# --------------------------------------------------------------------------- round_seconds
def test_round_waits_for_kept_and_failed_clients_not_unreachable_ones() -> None:
    # client 0 always reachable, client 1 (availability 1e-300) never: the round is client 0's
    # 5.5 s, even with a deadline, since nobody kept the server waiting for it
    p = _bind(availability=Trace(values=(1.0, 1e-300)), deadline=100.0)
    assert [p.timing(c, INFO).reason for c in (0, 1)] == ["ok", "unavailable"]
    assert p.round_seconds([0, 1], INFO) == 5.5
    assert p.round_seconds([1], INFO) == 0.0  # nobody came: no time


def test_round_with_a_failed_client_ends_at_the_deadline_or_when_it_failed() -> None:
    # every client a dropped straggler (work 0.4 → 5.2 s): the server gives up at the deadline
    # when there is one, else when the last one would have reported
    dropped = {"stragglers": 1.0, "straggler_work": (0.4, 0.4), "policy": "drop"}
    assert _bind(deadline=50.0, **dropped).round_seconds([0, 1], INFO) == 50.0
    assert _bind(**dropped).round_seconds([0, 1], INFO) == pytest.approx(5.2)
    assert _bind().round_seconds([], INFO) == 0.0


def test_traits_and_events_come_from_their_named_streams() -> None:
    # Every trait drawn (uniform on its range) from (model seed 13, client, "system/<trait>") at
    # round 0 and every event from (run seed, round, client, "system/<event>"); the outcome of
    # each of 32 clients recomputed from those draws by the rules of the module docstring.
    model = SystemModel(
        compute_speed=Uniform(low=50.0, high=150.0),
        bandwidth_down=Uniform(low=500.0, high=1500.0),
        bandwidth_up=Uniform(low=250.0, high=750.0),
        latency=Uniform(low=0.1, high=0.9),
        availability=0.7,
        stragglers=0.5,
        straggler_work=(0.2, 0.6),
        dropout=0.3,
        policy="partial",
        seed=13,
    )
    local = LocalTraining(lr=0.1, epochs=1, batch_size=10)
    p = SystemParticipation(
        model, num_examples=[50] * 32, local=local, bytes_down=2000, bytes_up=1000
    )
    reasons = set()
    for c in range(32):

        def trait(stream: str, low: float, high: float, c: int = c) -> float:
            g = generator(13, 0, c, stream)
            return low + (high - low) * float(torch.rand((), generator=g, dtype=torch.float64))

        latency = trait("system/latency", 0.1, 0.9)
        down = latency + 2000 / trait("system/down", 500.0, 1500.0)
        up = latency + 1000 / trait("system/up", 250.0, 750.0)
        compute = 50 / trait("system/speed", 50.0, 150.0)
        if _u("system/available", c) >= 0.7:
            want = ClientTiming(c, None, 0.0, "unavailable")
        elif _u("system/dropout", c) < 0.3:
            want = ClientTiming(c, None, down + compute * _u("system/dropout-at", c), "dropout")
        elif _u("system/straggler", c) < 0.5:
            work = 0.2 + 0.4 * _u("system/straggler-work", c)
            want = ClientTiming(c, work, down + compute * work + up, "partial")
        else:
            want = ClientTiming(c, 1.0, down + compute + up, "ok")
        got = p.timing(c, INFO)
        assert (got.work is None) == (want.work is None) and got.reason == want.reason, c
        assert got.seconds == pytest.approx(want.seconds, rel=1e-12), c
        assert got.work == (None if want.work is None else pytest.approx(want.work, rel=1e-12))
        reasons.add(got.reason)
    assert reasons == {"unavailable", "dropout", "partial", "ok"}  # every branch is seen


def test_a_device_too_fast_to_measure_still_waits_for_its_links() -> None:
    # speed 1e308 · exp(2 z) overflows to ∞ for z > 0.3: compute time 0. Its links alone (5 s)
    # miss a 4 s deadline, so it is late with no work done, even under "partial".
    c = next(c for c in range(64) if _z(INFO.seed, INFO.round, c, "system/jitter") > 0.3)
    device = {**DEVICE, "compute_speed": Constant(value=1e308)}
    model = SystemModel(**device, speed_jitter=2.0, deadline=4.0, policy="partial")  # type: ignore[arg-type]
    local = LocalTraining(lr=0.1, epochs=1, batch_size=10)
    p = SystemParticipation(
        model, num_examples=[50] * 64, local=local, bytes_down=2000, bytes_up=1000
    )
    assert p.timing(c, INFO) == ClientTiming(c, None, 4.0, "late")


def test_a_dropped_late_client_is_waited_for_until_the_deadline_exactly() -> None:
    # 17 samples/s, 0.1 s latency: down = up = 2.1 s, compute = 50/17 s, a full round 7.14 s
    # misses D = 5.7 s; the server gave up at D itself (not at down + compute·work + up, which
    # is D in exact arithmetic but 5.700000000000001 in floats)
    device = {**DEVICE, "compute_speed": Constant(value=17.0), "latency": Constant(value=0.1)}
    model = SystemModel(**device, deadline=5.7, policy="drop")  # type: ignore[arg-type]
    local = LocalTraining(lr=0.1, epochs=1, batch_size=10)
    p = SystemParticipation(model, num_examples=[50], local=local, bytes_down=2000, bytes_up=1000)
    assert p.timing(0, INFO) == ClientTiming(0, None, 5.7, "late")


def test_the_largest_jitter_allowed_never_overflows() -> None:
    # speed_jitter is capped at 20 (fedkit.sim.system.MAX_SIGMA): exp(20 z) stays finite for any
    # float64 normal draw, where 1e300 used to raise OverflowError for a positive draw
    part = _bind(speed_jitter=20.0, deadline=1e6, policy="drop")
    for r in range(200):
        info = RoundInfo(round=r, seed=9, num_clients=2, cohort_size=2)
        for client in (0, 1):
            t = part.timing(client, info)
            assert t.seconds >= 5.0  # the links alone take 5 s; compute is never negative
