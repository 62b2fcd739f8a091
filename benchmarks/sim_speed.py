"""Simulation speed: fedkit's executors against a plain PyTorch loop doing the identical SGD work.

One run times, on the same MNIST clients, FedAvg rounds (E local epochs, batch B) done by

(a) ``plain``: a hand-written PyTorch loop (load the global weights, ``torch.optim.SGD`` over the
    client's mini-batches, weighted average of the deltas) — the baseline;
(b) ``serial``: fedkit's run loop with the serial executor;
(c) ``processes``: the same with ``executor = "processes"`` (K gloo ranks, one thread each);
(d) ``vectorized``: the same with the ``torch.func`` vectorised executor;

for the 2NN (``mlp``) and the CNN (``cnn``), with 100 clients × 600 samples and with 1000 clients
× 60 samples. Every method draws the same cohorts and the same mini-batches (the plain loop uses
fedkit's ``(seed, round, client)`` generators), so the final models are compared too. Each round
is timed separately, methods are interleaved over ``--repeats`` repetitions after a small untimed
warm-up round each, and the median per-round time is reported; the processes' one-time start-up
(spawning and loading data on the other rank) is reported apart. It prints a table of times and
ratios and writes JSON.

Run: ``python benchmarks/sim_speed.py`` (full workload, long on 2 cores) or reduce it, e.g.
``python benchmarks/sim_speed.py --rounds 2 --clients-per-round 20 --models mlp``.
All processes use one torch thread. Timings on a shared machine are noisy: compare the ratios,
which are measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from fedkit.algorithm import RoundInfo
from fedkit.algorithms import FedAvg
from fedkit.data.spec import DataSpec, build_federated
from fedkit.data.store import ClientStore
from fedkit.local import LocalTraining
from fedkit.models.spec import ModelSpec
from fedkit.params import Params, model_params
from fedkit.rng import generator
from fedkit.run import RoundRecord, RunConfig, run
from fedkit.sampling import UniformSampler
from fedkit.sim.processes import ProcessExecutor, store_recipe
from fedkit.sim.serial import SerialExecutor
from fedkit.sim.vectorized import VectorizedExecutor

SEED = 0
_SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
if "FEDKIT_DATA" not in os.environ and _SHARED.is_dir():
    os.environ["FEDKIT_DATA"] = str(_SHARED.resolve())


def plain_round(
    model: nn.Module,
    store: ClientStore,
    global_params: Params,
    cohort: list[int],
    rnd: int,
    local: LocalTraining,
) -> Params:
    """One FedAvg round written directly in PyTorch (the baseline)."""
    sums = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in global_params.items()}
    total = 0.0
    for cid in cohort:
        d = store.data(cid)
        x, y = d.x_train, d.y_train
        n = int(y.shape[0])
        model.load_state_dict(global_params)
        opt = torch.optim.SGD(model.parameters(), lr=local.lr)
        g = generator(SEED, rnd, cid, "client")
        for _ in range(local.epochs):
            for idx in torch.split(torch.randperm(n, generator=g), local.batch_size):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x[idx]), y[idx]).backward()  # type: ignore[no-untyped-call]
                opt.step()
        with torch.no_grad():
            for k, p in model.state_dict().items():
                sums[k].add_((p - global_params[k]).double(), alpha=float(n))
        total += n
    return {k: v + (sums[k] / total).to(v.dtype) for k, v in global_params.items()}


def time_plain(
    spec: ModelSpec, store: ClientStore, rounds: int, k: int, local: LocalTraining
) -> tuple[list[tuple[float, float]], Params]:
    model = spec.build()
    params = model_params(model)
    times = []
    for r in range(rounds):
        info = RoundInfo(round=r, seed=SEED, num_clients=store.num_clients, cohort_size=k)
        t0, c0 = time.perf_counter(), time.process_time()
        cohort = UniformSampler().sample(store.num_clients, k, info)
        params = plain_round(model, store, params, cohort, r, local)
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    return times, params


def time_fedkit(
    executor: Any, spec: ModelSpec, rounds: int, k: int, local: LocalTraining
) -> tuple[list[tuple[float, float]], Params]:
    times: list[tuple[float, float]] = []
    last = [time.perf_counter(), time.process_time()]

    def tick(record: RoundRecord, params: Params) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        ranks = getattr(executor, "last_rank_cpu_seconds", None)
        # processes: the busiest rank's CPU seconds on its clients (the round's critical path
        # if every rank had a free core); in-process methods: this process's CPU seconds
        times.append((now - last[0], max(ranks) if ranks else cpu - last[1]))
        last[0], last[1] = now, cpu

    res = run(
        FedAvg(local=local),
        executor,
        model_params(spec.build()),
        RunConfig(rounds=rounds, clients_per_round=k, seed=SEED, eval_every=0),
        callbacks=[tick],
    )
    return times, res.params


def max_rel_diff(a: Params, b: Params) -> float:
    return max(float((a[k] - b[k]).norm() / a[k].norm().clamp_min(1e-12)) for k in a)


def bench_case(model_name: str, num_clients: int, args: argparse.Namespace) -> dict[str, Any]:
    data = DataSpec(
        dataset="mnist", partition="iid", num_clients=num_clients, seed=0, test_partition="none"
    )
    store = ClientStore.from_federated(build_federated(data))
    spec = ModelSpec(name=model_name, num_classes=10, input_shape=(1, 28, 28))
    local = LocalTraining(lr=0.05, epochs=args.epochs, batch_size=args.batch_size)
    k = min(args.clients_per_round, num_clients)
    rounds = args.rounds
    out: dict[str, Any] = {
        "model": model_name,
        "num_clients": num_clients,
        "samples_per_client": store.num_examples(0),
        "clients_per_round": k,
        "rounds": rounds,
        "repeats": args.repeats,
    }
    executors: dict[str, Any] = {
        "plain": None,
        "serial": SerialExecutor(store, spec.build()),
        "vectorized": VectorizedExecutor(store, spec.build(), chunk_size=args.chunk_size or None),
    }
    if args.processes > 1:
        ex = ProcessExecutor(
            store=store,
            model_fn=spec,
            store_fn=store_recipe(data_spec=data),
            world_size=args.processes,
        )
        t0 = time.perf_counter()
        ex.start(FedAvg(local=local))
        out["processes_startup_s"] = time.perf_counter() - t0
        executors["processes"] = ex

    def once(name: str, n_rounds: int, cohort: int = k) -> tuple[list[tuple[float, float]], Params]:
        if name == "plain":
            return time_plain(spec, store, n_rounds, cohort, local)
        return time_fedkit(executors[name], spec, n_rounds, cohort, local)

    results: dict[str, tuple[list[tuple[float, float]], Params]] = {}
    try:
        for name in executors:  # warm-up: one small untimed round each
            once(name, 1, min(k, 4))
        for _ in range(args.repeats):  # interleaved, so machine-load drift hits all alike
            for name in executors:
                times, params = once(name, rounds)
                prev = results.get(name, ([], params))[0]
                results[name] = (prev + times, params)
    finally:
        if "processes" in executors:
            executors["processes"].close()

    def med(name: str, i: int) -> float:
        return statistics.median(t[i] for t in results[name][0])

    rows = {}
    for name, (times, params) in results.items():
        rows[name] = {
            "round_s_median": med(name, 0),
            "round_s_all": [t[0] for t in times],
            "vs_plain": med(name, 0) / med("plain", 0),
            "speedup_vs_serial": med("serial", 0) / med(name, 0),
            # CPU seconds: of this process for plain/serial/vectorized (less sensitive to other
            # load on a shared machine); for processes the busiest rank's CPU on its clients
            "cpu_s_median": med(name, 1),
            "cpu_vs_plain": med(name, 1) / med("plain", 1),
            "cpu_speedup_vs_serial": med("serial", 1) / med(name, 1),
            "max_rel_diff_vs_plain": max_rel_diff(results["plain"][1], params),
        }
    out["methods"] = rows
    out["vectorized_chunk_size"] = executors["vectorized"].chunk_size
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp, cnn")
    ap.add_argument("--populations", default="100,1000", help="comma-separated client counts")
    ap.add_argument("--clients-per-round", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repetitions")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument(
        "--chunk-size", type=int, default=0, help="vectorised clients per chunk (0: automatic)"
    )
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/sim_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    cases = []
    for model_name in args.models.split(","):
        for pop in (int(p) for p in args.populations.split(",")):
            case = bench_case(model_name.strip(), pop, args)
            cases.append(case)
            print(
                f"\n{case['model']}: {case['num_clients']} clients × "
                f"{case['samples_per_client']} samples, {case['clients_per_round']} per round, "
                f"E={args.epochs}, B={args.batch_size}, {case['rounds']} rounds × "
                f"{args.repeats} repeats, vectorized chunk {case['vectorized_chunk_size']}"
                + (
                    f" (processes start-up {case['processes_startup_s']:.1f} s, not in the times)"
                    if "processes_startup_s" in case
                    else ""
                )
            )
            print(
                f"{'method':<12}{'s/round':>9}{'÷ plain':>9}{'× serial':>9}"
                f"{'cpu s':>9}{'cpu÷plain':>10}{'cpu×serial':>11}{'rel diff':>10}"
            )
            for name, row in case["methods"].items():
                mark = "*" if name == "processes" else " "
                print(
                    f"{name:<12}{row['round_s_median']:>9.3f}{row['vs_plain']:>9.3f}"
                    f"{row['speedup_vs_serial']:>9.2f}{row['cpu_s_median']:>9.3f}"
                    f"{row['cpu_vs_plain']:>9.3f}{mark}{row['cpu_speedup_vs_serial']:>10.2f}"
                    f"{mark}{row['max_rel_diff_vs_plain']:>10.1e}"
                )
            print(
                "  * processes: CPU of the busiest rank on its clients (the speed-up if every "
                "rank had a free core)\n  rel diff: max over tensors of |w - w_plain| / |w_plain|"
            )
    meta = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "threads_per_process": 1,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "cases": cases}, indent=2))
    print(f"\nwrote {args.json} (load average at the end: {os.getloadavg()})")


if __name__ == "__main__":
    main()
