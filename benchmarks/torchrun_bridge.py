"""``fedkit run`` under torchrun: 2 ranks on two "hosts" over a bridge against 1 rank, one run.

The same experiment file (a cohort of clients training an MLP on Synthetic(1, 1), FedAvg) runs

(a) ``1 rank``: ``torchrun --nnodes 1 --nproc-per-node 1 -m fedkit run FILE`` in namespace 1 —
    the same code path with nobody to share the cohort with (the baseline);
(b) ``2 ranks``: ``torchrun --nnodes 2 --nproc-per-node 1 …`` with one rank in each of two
    network namespaces on a private bridge, gloo over the veths (tests/helpers/netns.py);

alternating over ``--repeats``. For each it records the run's own wall time (``wall_seconds`` of
the ``--json`` line: rounds, aggregation, evaluation, excluding process start and data loading),
the wall time of the whole launch, and the CPU seconds of every process of the launch (from
``RUSAGE_CHILDREN``), checks that both end with the same model (``model_sha256``), and prints
the medians and the ratios 1 rank / 2 ranks (> 1: two ranks are faster). All ranks use one torch
thread. On a 2-core machine both ranks share the same two cores with the launchers, so expect
~1.2x at best on the run's wall time, and more CPU seconds in total (two Python processes, the
exchange, the heartbeat). Needs root and ``ip netns``.

Run: ``sudo .venv/bin/python benchmarks/torchrun_bridge.py`` (defaults: 3 repeats of 20
rounds × 20 clients); writes ``benchmarks/results/torchrun_bridge.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's tests/ helpers

from tests.helpers.netns import TwoHosts, torchrun_argv, unavailable

FILE = """
[data]
dataset = "synthetic"
partition = "natural"
alpha = 1.0
beta = 1.0
[data.options]
num_users = {clients}

[model]
name = "mlp"
hidden = [{hidden}]

[algorithm]
name = "fedavg"

[algorithm.local]
epochs = {epochs}
batch_size = 10
lr = 0.05

[run]
rounds = {rounds}
clients_per_round = {clients}
seed = 1
eval_every = 0
"""


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def launch(hosts: TwoHosts, ranks: int, file: Path, out: Path, port: int) -> dict[str, Any]:
    """One launch with ``ranks`` nodes of one rank each; its times and final model."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cpu0, t0 = _cpu_children(), time.perf_counter()
    procs = []
    for i in range(ranks):
        args = ["-m", "fedkit", "run", str(file), "--out", str(out / f"host{i}"), "--json", "-q"]
        argv = torchrun_argv(
            nnodes=ranks, node_rank=i, master=hosts.hosts[0].address, port=port, args=args
        )
        procs.append(hosts.popen(i, argv, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outs = [p.communicate(timeout=1800) for p in procs]
    wall = time.perf_counter() - t0
    cpu = _cpu_children() - cpu0
    for p, (_, err) in zip(procs, outs, strict=True):
        if p.returncode != 0:
            raise SystemExit(f"launch with {ranks} rank(s) failed:\n{err[-3000:]}")
    doc = json.loads(outs[0][0].strip().splitlines()[-1])
    return {
        "run_wall_seconds": float(doc["wall_seconds"]),
        "launch_wall_seconds": wall,
        "cpu_seconds": cpu,
        "model_sha256": doc["model_sha256"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--clients", type=int, default=20, help="population = cohort size")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--port", type=int, default=29700)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/torchrun_bridge.json"))
    args = ap.parse_args()
    why = unavailable()
    if why is not None:
        raise SystemExit(f"cannot make two network namespaces here: {why}")
    rows: dict[str, list[dict[str, Any]]] = {"1 rank": [], "2 ranks": []}
    with tempfile.TemporaryDirectory(prefix="fedkit-bridge-") as tmp, TwoHosts() as hosts:
        file = Path(tmp) / "bench.toml"
        file.write_text(
            FILE.format(
                clients=args.clients, hidden=args.hidden, epochs=args.epochs, rounds=args.rounds
            )
        )
        port = args.port
        for rep in range(args.repeats):
            for name, ranks in (("1 rank", 1), ("2 ranks", 2)):
                port += 1
                got = launch(hosts, ranks, file, Path(tmp) / f"{rep}-{ranks}", port)
                rows[name].append(got)
                print(
                    f"repeat {rep} {name:8s} run {got['run_wall_seconds']:7.2f} s  "
                    f"launch {got['launch_wall_seconds']:7.2f} s  cpu {got['cpu_seconds']:7.2f} s",
                    flush=True,
                )
    shas = {r["model_sha256"] for rs in rows.values() for r in rs}
    med = {
        name: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "model_sha256"}
        for name, rs in rows.items()
    }
    ratio = {k: med["1 rank"][k] / med["2 ranks"][k] for k in med["1 rank"]}
    print(f"\n{'':10s}{'run wall s':>12s}{'launch wall s':>15s}{'cpu s':>10s}")
    for name in rows:
        m = med[name]
        print(
            f"{name:10s}{m['run_wall_seconds']:12.2f}{m['launch_wall_seconds']:15.2f}"
            f"{m['cpu_seconds']:10.2f}"
        )
    print(
        f"{'1 / 2':10s}{ratio['run_wall_seconds']:11.2f}x{ratio['launch_wall_seconds']:14.2f}x"
        f"{ratio['cpu_seconds']:9.2f}x"
    )
    print(f"same final model: {len(shas) == 1}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **{k: getattr(args, k) for k in ("rounds", "clients", "epochs", "hidden", "repeats")},
    }
    args.json.write_text(
        json.dumps(
            {
                "meta": meta,
                "runs": rows,
                "median": med,
                "ratio_1_over_2": ratio,
                "same_model": len(shas) == 1,
            },
            indent=2,
        )
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
