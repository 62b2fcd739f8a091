"""Serial executor vs a plain PyTorch loop doing the identical SGD work (issue 2's benchmark).

Setting (McMahan et al. 2017): the CNN with "same" padding (1,663,370 parameters), 10 clients × 600
MNIST samples (IID), E = 1, B = 10, every client in every round, FedAvg. The plain loop is what one
writes by hand: per client, copy the global weights into one model, ``torch.optim.SGD`` over the
same batch order, accumulate the example-weighted mean of the deltas, update the global model.
Both run in this process with one thread, interleaved round by round; the final models must be
bit-identical (checked), so the ratio measures fedkit's overhead only.

    python benchmarks/core_overhead.py [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from fedkit.algorithm import ClientData
from fedkit.algorithms import FedAvg
from fedkit.data.store import ClientStore
from fedkit.local import LocalTraining, batch_indices, classification_loss
from fedkit.models import build_model
from fedkit.params import Params, load_params, model_params
from fedkit.rng import generator
from fedkit.run import RunConfig, run
from fedkit.sim.serial import SerialExecutor

CLIENTS, PER_CLIENT, BATCH, LR = 10, 600, 10, 0.05


def mnist_clients() -> tuple[list[ClientData], str]:
    """600 MNIST training images per client (IID), or same-shaped noise if MNIST is absent."""
    try:
        from fedkit.data.datasets import load_dataset

        ds = load_dataset("mnist")
        x, y, source = ds.train.x, ds.train.y, "MNIST"
    except Exception as e:  # the benchmark still measures overhead without the real files
        print(f"MNIST unavailable ({e}); using random tensors of MNIST's shape", file=sys.stderr)
        g = torch.Generator().manual_seed(0)
        x = torch.rand(CLIENTS * PER_CLIENT, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (CLIENTS * PER_CLIENT,), generator=g)
        source = "random (MNIST absent)"
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(1))
    return [
        ClientData(
            x[perm[i * PER_CLIENT : (i + 1) * PER_CLIENT]],
            y[perm[i * PER_CLIENT : (i + 1) * PER_CLIENT]],
        )
        for i in range(CLIENTS)
    ], source


def plain_round(
    model: nn.Module, glob: Params, clients: list[ClientData], seed: int, r: int
) -> Params:
    """One FedAvg round written directly against PyTorch."""
    total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in glob.items()}
    weight = 0.0
    for cid, c in enumerate(clients):
        load_params(model, glob)
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        model.train()
        order = batch_indices(len(c.y_train), BATCH, generator(seed, r, cid, "client"))
        for _ in range(-(-len(c.y_train) // BATCH)):
            idx = next(order)
            opt.zero_grad(set_to_none=True)
            classification_loss(model(c.x_train[idx]), c.y_train[idx]).backward()
            opt.step()
        n = float(len(c.y_train))
        state = model.state_dict()
        for k in total:
            total[k].add_((state[k] - glob[k]).double(), alpha=n)
        weight += n
    return {k: glob[k] - (-(total[k] / weight).to(glob[k].dtype)) for k in glob}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/core_overhead.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    clients, source = mnist_clients()
    torch.manual_seed(0)
    net = build_model("cnn", num_classes=10, input_shape=(1, 28, 28))
    p0 = model_params(net)
    alg = FedAvg(local=LocalTraining(lr=LR, epochs=1, batch_size=BATCH))
    store = ClientStore.from_clients(clients)
    plain_t: list[float] = []
    ours_t: list[float] = []
    for _ in range(args.repeats):  # interleave whole runs: plain, fedkit, plain, fedkit, ...
        plain_glob = p0
        for r in range(args.rounds):
            t = time.perf_counter()
            plain_glob = plain_round(net, plain_glob, clients, 0, r)
            plain_t.append(time.perf_counter() - t)
        res = run(
            alg,
            SerialExecutor(store, net),
            p0,
            RunConfig(rounds=args.rounds, clients_per_round=CLIENTS, seed=0, eval_every=0),
        )
        ours_t.extend(rec.wall_seconds for rec in res.history)
        ours_glob = res.params
    identical = all(torch.equal(plain_glob[k], ours_glob[k]) for k in p0)
    ratios = [o / p for o, p in zip(ours_t, plain_t, strict=True)]
    row = {
        "benchmark": "core_overhead",
        "model": "cnn (1,663,370 params)",
        "data": source,
        "clients": CLIENTS,
        "samples_per_client": PER_CLIENT,
        "epochs": 1,
        "batch_size": BATCH,
        "threads": 1,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "plain_seconds_per_round": statistics.median(plain_t),
        "fedkit_seconds_per_round": statistics.median(ours_t),
        "ratio_fedkit_over_plain": statistics.median(ratios),
        "per_round_ratios": ratios,
        "bit_identical": identical,
        "cpu_count": os.cpu_count(),
    }
    print(f"{'':24}{'plain loop':>12}{'fedkit serial':>15}{'ratio':>8}")
    print(
        f"{'s / round (median)':24}{row['plain_seconds_per_round']:12.2f}"
        f"{row['fedkit_seconds_per_round']:15.2f}{row['ratio_fedkit_over_plain']:8.3f}"
    )
    print(
        f"per-round ratios: {', '.join(f'{x:.3f}' for x in ratios)}; "
        f"final models bit-identical: {identical}"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(row, indent=2))
    print(f"wrote {args.json}")
    if not identical:
        sys.exit("final models differ: the two loops did not do identical work")


if __name__ == "__main__":
    main()
