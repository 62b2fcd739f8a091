"""Invariants of the data-parallel track: data order, SSP staleness bound, averaging, schedules."""

from __future__ import annotations

import itertools
import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit.parallel.async_ps import ssp_events, worker_speeds
from fedkit.parallel.collective import ReplicaCollective
from fedkit.parallel.comm import directional_bytes, ps_bytes_per_worker, ring_bytes_per_worker
from fedkit.parallel.schedule import BatchStream, adacomm_h, grown_batch, lr_at


@given(n=st.integers(8, 200), size=st.integers(1, 8), seed=st.integers(0, 10**6))
@settings(max_examples=40, deadline=None)
def test_each_epoch_visits_distinct_samples(n: int, size: int, seed: int) -> None:
    stream = BatchStream(n, seed)
    per_epoch = n // size
    seen: list[int] = []
    for _ in range(per_epoch):
        seen.extend(stream.next(size).tolist())
    assert len(set(seen)) == len(seen) == per_epoch * size
    assert stream.epoch == 0
    stream.next(size)
    assert stream.epoch == 1  # the tail (n mod size) is dropped


@given(k=st.integers(1, 64), m=st.integers(1, 10**9))
def test_ring_never_moves_more_than_twice_the_model(k: int, m: int) -> None:
    ring = ring_bytes_per_worker(m, k)
    assert 0 <= ring < 2 * m
    # bytes sent per worker, the same count for both topologies: a ring worker sends
    # 2(K−1)/K·M >= M (K >= 2), a parameter-server worker exactly M (its push)
    ps = ps_bytes_per_worker(m, k)
    assert ps == (0.0 if k == 1 else m)
    assert ring >= ps
    assert directional_bytes(m, k, "ps") == (ps, ps)
    assert directional_bytes(m, k, "ring") == (ring, ring)


@given(
    k=st.integers(1, 6),
    s=st.integers(0, 4),
    sigma=st.floats(0.0, 1.5),
    seed=st.integers(0, 1000),
)
@settings(max_examples=60, deadline=None)
def test_ssp_bounds_staleness_and_clock_gap(k: int, s: int, sigma: float, seed: int) -> None:
    events = ssp_events(
        worker_speeds(k, sigma, seed), staleness=s, step_seconds=1.0, comm_seconds=0.1
    )
    pulled: dict[int, int] = {}
    clocks = [0] * k
    last_time = 0.0
    for _, ev in zip(range(400), events, strict=False):
        assert ev.time >= last_time
        last_time = ev.time
        if ev.kind == "pull":
            assert ev.worker not in pulled  # one gradient in flight per worker
            assert clocks[ev.worker] - min(clocks) <= s  # SSP admission rule
            pulled[ev.worker] = ev.version
        else:
            staleness = ev.version - pulled.pop(ev.worker)
            assert 0 <= staleness <= (k - 1) * (2 * s + 1)
            clocks[ev.worker] += 1


@given(
    k=st.integers(1, 5),
    values=st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=5, max_size=5),
)
@settings(deadline=None)
def test_replica_mean_is_the_mean_and_identical_everywhere(k: int, values: list[float]) -> None:
    tensors = [[torch.tensor(values, dtype=torch.float64) * (r + 1)] for r in range(k)]
    ReplicaCollective(k).mean_(tensors)
    expected = torch.tensor(values, dtype=torch.float64) * (k + 1) / 2
    for (t,) in tensors:
        torch.testing.assert_close(t, expected)
        assert torch.equal(t, tensors[0][0])


@given(warmup=st.integers(1, 50), base=st.floats(1e-4, 10.0))
@settings(deadline=None)
def test_warmup_is_increasing_and_reaches_base(warmup: int, base: float) -> None:
    lrs = [
        lr_at(t, 0, base_lr=base, warmup_steps=warmup, schedule="constant", sample_budget=1)
        for t in range(warmup + 3)
    ]
    assert all(a < b for a, b in itertools.pairwise(lrs[:warmup]))
    assert lrs[warmup - 1] == base and lrs[-1] == base


def test_cosine_and_step_schedules() -> None:
    kw = {"base_lr": 1.0, "warmup_steps": 0, "sample_budget": 100}
    assert lr_at(5, 50, schedule="cosine", **kw) == 0.5  # type: ignore[arg-type]
    assert lr_at(5, 100, schedule="cosine", **kw) == 0.0  # type: ignore[arg-type]
    step = {"schedule": "step", "sample_milestones": (50, 75), "decay": 0.1, **kw}
    assert lr_at(1, 49, **step) == 1.0  # type: ignore[arg-type]
    assert math.isclose(lr_at(1, 80, **step), 0.01)  # type: ignore[arg-type]
    assert math.isclose(lr_at(1, 80, decays_skipped=1, **step), 0.1)  # type: ignore[arg-type]


@given(base=st.integers(1, 64), cap_mult=st.integers(1, 30), seen=st.integers(0, 1000))
def test_batch_growth_respects_the_cap(base: int, cap_mult: int, seen: int) -> None:
    cap = base * cap_mult
    batch, absorbed = grown_batch(
        seen, base_batch=base, max_batch=cap, sample_milestones=(100, 300, 600), decay=0.2
    )
    assert batch == base * 5**absorbed <= cap
    assert absorbed <= sum(1 for m in (100, 300, 600) if seen >= m)


@given(ratio=st.floats(0.0, 1.0), h0=st.integers(1, 64))
def test_adacomm_h_is_monotone_in_loss_and_bounded(ratio: float, h0: int) -> None:
    h = adacomm_h(ratio * 2.0, 2.0, h0=h0, h_min=1)
    assert 1 <= h <= h0
    assert adacomm_h(min(1.0, ratio + 0.1) * 2.0, 2.0, h0=h0, h_min=1) >= h
