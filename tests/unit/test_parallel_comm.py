"""Communication accounting: byte formulas, the simulated clock, and the counts a run reports."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from fedkit.parallel import (
    NetworkSpec,
    ParallelSpec,
    bytes_per_worker,
    directional_bytes,
    model_bytes,
    ps_bytes_per_worker,
    ps_server_bytes,
    ring_bytes_per_worker,
    run_parallel,
    sync_seconds,
)


@dataclass(frozen=True)
class Split:
    x: torch.Tensor
    y: torch.Tensor


@dataclass(frozen=True)
class Data:
    train: Split
    test: Split


def data() -> Data:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(160, 8, generator=gen), torch.randint(0, 3, (160,), generator=gen)
    return Data(train=Split(x[:128], y[:128]), test=Split(x[128:], y[128:]))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


MLP_BYTES = (8 * 16 + 16 + 16 * 3 + 3) * 4


def test_byte_formulas() -> None:
    assert model_bytes(mlp()) == MLP_BYTES
    assert ring_bytes_per_worker(1000, 4) == pytest.approx(1500.0)  # 2·3/4·M
    assert ring_bytes_per_worker(1000, 1) == 0.0
    # both topologies count bytes a worker sends: a PS worker pushes M (and pulls M), a ring
    # worker sends 2(K−1)/K·M (and receives as much); the server link carries 2KM in + out
    assert ps_bytes_per_worker(1000, 4) == 1000.0
    assert bytes_per_worker(1000, 4, "ps") == 1000.0
    assert bytes_per_worker(1000, 4, "ring") == pytest.approx(1500.0)
    assert ps_server_bytes(1000, 4) == 8000.0  # 2 · K · M
    assert ps_bytes_per_worker(1000, 1) == 0.0
    assert directional_bytes(1000, 4, "ring") == (1500.0, 1500.0)  # sends and receives 2(K−1)/K·M
    assert directional_bytes(1000, 4, "ps") == (1000.0, 1000.0)  # pushes M, pulls M


def test_sync_seconds_by_hand() -> None:
    net = NetworkSpec(latency_ms=1.0, bandwidth_gbit=0.008)  # 1e6 bytes/s
    # ring: 2(K−1) rounds of (latency + M/(K·b)) = 6 · (1e-3 + 1000/4e6)
    assert sync_seconds(1000, 4, "ring", net) == pytest.approx(6 * (1e-3 + 2.5e-4))
    # parameter server: 2 latencies + K·2M through the server link
    assert sync_seconds(1000, 4, "ps", net) == pytest.approx(2e-3 + 8000 / 1e6)
    assert sync_seconds(1000, 1, "ring", net) == 0.0


@pytest.mark.parametrize(
    ("method", "h", "topology"),
    [("sync", 1, "ring"), ("local_sgd", 4, "ring"), ("local_sgd", 8, "ps"), ("slowmo", 2, "ps")],
)
def test_run_reports_formula_bytes(method: str, h: int, topology: str) -> None:
    k, b, steps = 4, 4, 16
    net = {"latency_ms": 0.5, "bandwidth_gbit": 1.0}
    spec = ParallelSpec.from_mapping(
        {
            "method": method,
            "workers": k,
            "local_steps": h,
            "batch_size": b,
            "sample_budget": k * b * steps,
            "eval_every_samples": k * b * 8,
            "topology": topology,
            "network": net,
        }
    )
    out = run_parallel(spec, data(), mlp)
    syncs = steps // h  # divides evenly: no extra final average
    per_sync = (
        ring_bytes_per_worker(MLP_BYTES, k)
        if topology == "ring"
        else ps_bytes_per_worker(MLP_BYTES, k)
    )
    assert out.model_bytes == MLP_BYTES
    assert out.final.syncs == syncs
    assert out.final.bytes_per_worker == pytest.approx(syncs * per_sync)
    up, down = directional_bytes(MLP_BYTES, k, topology)
    assert out.final.bytes_up_per_worker == pytest.approx(syncs * up)
    assert out.final.bytes_down_per_worker == pytest.approx(syncs * down)
    # per step: the formula divided by H
    assert out.final.bytes_per_worker / steps == pytest.approx(per_sync / h)
    expected_server = syncs * ps_server_bytes(MLP_BYTES, k) if topology == "ps" else 0.0
    assert out.final.server_bytes == pytest.approx(expected_server)
    clock = sync_seconds(MLP_BYTES, k, topology, NetworkSpec(**net))
    assert out.final.comm_seconds == pytest.approx(syncs * clock)
    assert out.final.sim_seconds == pytest.approx(out.final.compute_seconds + syncs * clock)
    assert out.final.compute_seconds > 0
    # the first point (after 8 steps) has half the bytes
    assert out.history[0].bytes_per_worker == pytest.approx(out.final.bytes_per_worker / 2)


def test_final_average_is_counted_when_budget_ends_mid_round() -> None:
    spec = ParallelSpec.from_mapping(
        {
            "method": "local_sgd",
            "workers": 2,
            "local_steps": 4,
            "batch_size": 4,
            "sample_budget": 2 * 4 * 6,
            "eval_every_samples": 10**6,
        }
    )
    out = run_parallel(spec, data(), mlp)
    assert out.final.step == 6
    assert out.final.syncs == 2  # one after 4 steps, one final average after 6
    assert out.final.bytes_per_worker == pytest.approx(2 * ring_bytes_per_worker(MLP_BYTES, 2))
