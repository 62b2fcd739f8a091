"""Secure aggregation over the wire: extra CPU time and bytes per client against the plain mean
(issue 11), with ``fedkit coordinator`` and one multi-client ``fedkit worker`` on loopback.

Setting: MNIST (``FEDKIT_DATA``), IID, n = 10, 50, 100 clients, all in the one round's cohort;
the 2NN (784-200-200-10, 199 210 parameters); FedAvg with uniform weights, 5 local steps of batch
10; one round. Two arms per n, run one after the other in the same conditions:

* **plain**: the default aggregator (the weighted mean);
* **secagg**: ``[aggregator] name = "secagg"``, 32-bit words (packed to 4 bytes on the wire),
  all pairs (Bonawitz et al. 2017) or, with ``--neighbours k``, SecAgg+ (Bell et al. 2020).

The coordinator runs in its own process; one worker process serves every client id (``fedkit
worker --clients 0-(n-1)``), so every id runs its own keys in it. Measured in the worker process:
the CPU seconds (``time.process_time``) spent in its tasks by kind (training with ``prepare``,
which masks under secagg; the secagg steps), and the bytes it sent and received (gRPC message
sizes, :class:`~fedkit.net.client.CoordinatorClient` counters; registration, polling, the model
download and the result upload included). In the coordinator process: its CPU seconds for the
whole run. Per client = the worker's totals / n. The ratios (secagg / plain) are from the one run.

    FEDKIT_DATA=/work/shared/data python benchmarks/secagg_deploy_cost.py [--sizes 10 50 100] \
        [--neighbours 8] [--json benchmarks/results/secagg_deploy_cost.json]

Measured in one run of ``--sizes 10 50 100`` (all pairs) and one of ``--sizes 100 --neighbours
8``; the table is in docs/privacy.md ("Cost over the wire").
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

EXPERIMENT = """
[data]
dataset = "mnist"
partition = "iid"
num_clients = {n}
seed = 0

[model]
name = "mlp"

[algorithm]
name = "fedavg"
weighting = "uniform"

[algorithm.local]
steps = 5
batch_size = 10
lr = 0.05

[run]
rounds = 1
clients_per_round = {n}
eval_every = 0
seed = 1

[deploy]
deadline_s = 300
select_timeout_s = 120
heartbeat_s = 1.0
liveness_s = 60
{aggregator}
"""

SECAGG = """
[aggregator]
name = "secagg"
bits = 32
clip_range = 1.0
neighbours = {neighbours}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _coordinator(out_json: str, **kwargs: Any) -> None:
    from fedkit.experiment.deploy import run_coordinator

    summary = run_coordinator(**kwargs)
    Path(out_json).write_text(
        json.dumps({"cpu_s": time.process_time(), "committed": summary.committed_rounds})
    )


def _worker(out_json: str, **kwargs: Any) -> None:
    """``run_worker`` with its tasks' CPU seconds by kind and its byte counters recorded."""
    import fedkit.net.worker as w
    from fedkit.experiment.deploy import run_worker

    cpu = {"train": 0.0, "secagg": 0.0}
    clients: list[Any] = []

    def timed(kind: str, fn: Any) -> Any:
        def run(self: Any, task: Any) -> None:
            t0 = time.process_time()
            try:
                fn(self, task)
            finally:
                cpu[kind] += time.process_time() - t0

        return run

    w.Worker._train = timed("train", w.Worker._train)  # type: ignore[method-assign]
    w.Worker._secagg_step = timed("secagg", w.Worker._secagg_step)  # type: ignore[method-assign]

    class Counted(w.CoordinatorClient):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            clients.append(self)

    w.CoordinatorClient = Counted  # type: ignore[misc]
    run_worker(**kwargs)
    Path(out_json).write_text(
        json.dumps(
            {
                "cpu": cpu,
                "sent": sum(c.bytes_sent for c in clients),
                "received": sum(c.bytes_received for c in clients),
            }
        )
    )


def measure(n: int, neighbours: str, secure: bool) -> dict[str, Any]:
    """One deployment of one round; the worker's and coordinator's numbers."""
    ctx = mp.get_context("forkserver")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        k = '"all"' if neighbours == "all" else str(int(neighbours))
        agg = SECAGG.format(neighbours=k) if secure else ""
        exp = root / "exp.toml"
        exp.write_text(EXPERIMENT.format(n=n, aggregator=agg))
        address = f"127.0.0.1:{_free_port()}"
        common = {"experiment": exp}
        coord = ctx.Process(
            target=_coordinator,
            kwargs={"out_json": str(root / "c.json"), "listen": address, "out_dir": root / "out",
                    "min_workers": n, **common},
        )  # fmt: skip
        coord.start()
        worker = ctx.Process(
            target=_worker,
            kwargs={"out_json": str(root / "w.json"), "coordinator": address,
                    "client_ids": list(range(n)), "give_up_s": 120.0, **common},
        )  # fmt: skip
        t0 = time.perf_counter()
        worker.start()
        coord.join(900)
        worker.join(120)
        wall = time.perf_counter() - t0
        c = json.loads((root / "c.json").read_text())
        wk = json.loads((root / "w.json").read_text())
    assert c["committed"] == 1, "the round did not commit"
    task_cpu = wk["cpu"]["train"] + wk["cpu"]["secagg"]
    return {
        "clients": n,
        "arm": "secagg" if secure else "plain",
        "neighbours": neighbours if secure else None,
        "worker_task_cpu_ms_per_client": 1e3 * task_cpu / n,
        "worker_train_cpu_ms_per_client": 1e3 * wk["cpu"]["train"] / n,
        "worker_secagg_step_cpu_ms_per_client": 1e3 * wk["cpu"]["secagg"] / n,
        "bytes_up_per_client": wk["sent"] / n,
        "bytes_down_per_client": wk["received"] / n,
        "coordinator_cpu_s": c["cpu_s"],
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--neighbours", default="all", help="all, or the SecAgg+ degree k (even)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        plain = measure(n, args.neighbours, secure=False)
        secure = measure(n, args.neighbours, secure=True)
        secure["neighbours"] = args.neighbours
        for key in (
            "worker_task_cpu_ms_per_client",
            "bytes_up_per_client",
            "bytes_down_per_client",
            "coordinator_cpu_s",
        ):
            secure[f"{key}_ratio"] = secure[key] / plain[key]
        secure["extra_cpu_ms_per_client"] = (
            secure["worker_task_cpu_ms_per_client"] - plain["worker_task_cpu_ms_per_client"]
        )
        rows += [plain, secure]
        print(json.dumps(plain), flush=True)
        print(json.dumps(secure), flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
