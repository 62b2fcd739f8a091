"""Secure aggregation's extra CPU time and bytes per client against the plain mean (issue 11).

Setting: the MNIST 2NN (McMahan et al. 2017; 784-200-200-10, 199 210 parameters), cohorts of
10, 50 and 100 clients, one round, every client in it, uniform weights, 48-bit fixed point;
all pairs (Bonawitz et al. 2017) and SecAgg+ with ``k`` = log2(n) rounded up to even (Bell et
al. 2020; k = 4, 6, 8), threshold 0.5; a second SecAgg+ row with 10 % of the cohort dropped
before masking (their pairwise masks are rebuilt by the server). All in this process with one
thread, each measurement right after its baseline:

* **plain mean** (the baseline): the server folds the n float32 updates into
  :class:`~fedkit.aggregate.WeightedMean` (its CPU seconds / n per client); each client sends
  its float32 update and a float64 weight.
* **secure aggregation**: :func:`fedkit.privacy.secagg.simulate_round`, each party's CPU seconds
  measured apart (``time.process_time`` around its own steps): per client, encoding, key
  generation and agreement, Shamir sharing and encryption, masking (ChaCha20), unmasking
  answers; the server's total divided by n. Bytes are the protocol's payloads (ids, keys,
  ciphertexts, the int64 masked vector, shares), both directions; the model broadcast is the
  same in both and not counted.
* **one local epoch**, for scale: a client's E = 1, B = 10 SGD epoch on 600 examples of the 2NN.

The ratios (secure / plain) are computed within the one run. The decoded sums are checked
against the plain sums (within the fixed-point bound) so the timed work is the real protocol.

    python benchmarks/secagg_cost.py [--sizes 10 50 100] \
        [--json benchmarks/results/secagg_cost.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from fedkit.aggregate import AggContext, WeightedMean, aggregate
from fedkit.local import LocalTraining, train_local
from fedkit.models.registry import build_model
from fedkit.privacy.secagg import SecAggSettings, simulate_round

D = 199_210  # parameters of the 2NN


def plain_mean(updates: list[torch.Tensor]) -> tuple[float, torch.Tensor]:
    """CPU seconds of folding the updates into the weighted mean, and the mean's sum."""
    t0 = time.process_time()
    acc = aggregate(WeightedMean(), [({"w": u}, 1.0) for u in updates])
    WeightedMean().result(acc, AggContext(0, 0))
    return time.process_time() - t0, acc.total["w"]


def local_epoch_seconds() -> float:
    """CPU seconds of one E = 1, B = 10 epoch of the 2NN on 600 MNIST-shaped examples."""
    model = build_model("mlp", num_classes=10, input_shape=(1, 28, 28))
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(600, 1, 28, 28, generator=g), torch.randint(0, 10, (600,), generator=g)
    t0 = time.process_time()
    train_local(model, x, y, LocalTraining(lr=0.05, epochs=1, batch_size=10), generator=g)
    return time.process_time() - t0


def degree(n: int) -> int:
    """``k`` = log2(n) rounded up to an even number."""
    k = math.ceil(math.log2(n))
    return k + (k % 2)


def measure(n: int, neighbours: Any, drop: float, epoch: float) -> dict[str, Any]:
    g = torch.Generator().manual_seed(n)
    updates = [(torch.rand(D, generator=g) - 0.5) * 0.02 for _ in range(n)]
    dropped = set(range(0, n, round(1 / drop))) if drop else set()
    plain_s, plain_sum = plain_mean([u for i, u in enumerate(updates) if i not in dropped])
    settings = SecAggSettings(bits=48, clip_range=0.05, neighbours=neighbours)
    out = simulate_round(
        updates, [1.0] * n, settings=settings, seed=1, dropped_before_masking=dropped
    )
    err = float((out.weighted_sum - plain_sum).abs().max())
    assert err <= out.encoding.sum_error(), (err, out.encoding.sum_error())
    senders = [u for u in range(n) if u not in dropped]
    client_s = sum(out.client_seconds[u] for u in senders) / len(senders)
    plain_per_client = plain_s / len(senders)
    plain_bytes = 4 * D + 8
    up = sum(out.bytes_up[u] for u in senders) / len(senders)
    down = sum(out.bytes_down[u] for u in senders) / len(senders)
    return {
        "clients": n,
        "neighbours": neighbours,
        "dropped_before_masking": len(dropped),
        "plain_server_s_per_client": plain_per_client,
        "secagg_client_s": client_s,
        "secagg_server_s_per_client": out.server_seconds / n,
        "client_cpu_ratio": client_s / plain_per_client,
        "server_cpu_ratio": out.server_seconds / plain_s,
        "client_s_over_local_epoch": client_s / epoch,
        "plain_bytes_up": plain_bytes,
        "secagg_bytes_up": up,
        "secagg_bytes_down": down,
        "bytes_up_ratio": up / plain_bytes,
        "max_abs_error": err,
        "error_bound": out.encoding.sum_error(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    epoch = local_epoch_seconds()
    rows = []
    for n in args.sizes:
        for neighbours, drop in (("all", 0.0), (degree(n), 0.0), (degree(n), 0.1)):
            row = measure(n, neighbours, drop, epoch)
            rows.append(row)
            print(
                f"n={n:4d} k={neighbours!s:>3} drop={row['dropped_before_masking']:3d} | "
                f"client {row['secagg_client_s']:.3f}s ({row['client_cpu_ratio']:.0f}x plain "
                f"per-client, {row['client_s_over_local_epoch']:.2f}x a local epoch) | server "
                f"{row['server_cpu_ratio']:.0f}x plain | up {row['bytes_up_ratio']:.3f}x "
                f"({row['secagg_bytes_up'] / 1e6:.2f} MB), "
                f"down {row['secagg_bytes_down'] / 1e3:.1f} kB",
                flush=True,
            )
    result = {
        "benchmark": "secagg_cost",
        "parameters": D,
        "bits": 48,
        "threshold": 0.5,
        "local_epoch_s": epoch,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "rows": rows,
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
