"""Deployment overhead: 50 loopback workers, McMahan's CNN (1,663,370 parameters), no local work.

What a round costs beyond the learning itself: the coordinator runs the real run loop with the
remote executor (encode the broadcast once, stream it to every worker in SHA-256-checked 4 MiB
chunks, collect, validate and aggregate 50 updates in client-id order, server update); each worker
process receives the broadcast, decodes and validates it against its template, and sends back an
update of the model's size (a zero delta: no local training). Reported:

* seconds per round (mean over the measured rounds, after one warm-up round), against the
  in-process floor measured in the same run: the same codec work (encode, chunk + hash,
  reassemble + verify, decode) done for 50 workers in one process without gRPC;
* CPU seconds per round of the coordinator process (its part of the critical path when workers
  run on their own machines) and of the workers (on one machine they share its cores, so the sum
  over all processes divided by the core count bounds the round time from below);
* bytes on the wire per worker per direction (protobuf message bytes, what gRPC frames; HTTP/2
  framing adds 9 bytes per 16 KiB frame) against the raw model bytes (4 x 1,663,370).

Targets from issue 6: <= 0.5 s per round; <= 1.05x the model bytes per direction per worker.

    python benchmarks/net_overhead.py [--workers 50] [--rounds 5] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fedkit.algorithms import FedAvg, ModelDelta, ModelMessage
from fedkit.local import LocalTraining
from fedkit.models import build_model
from fedkit.net.broker import Broker
from fedkit.net.client import CoordinatorClient
from fedkit.net.codec import Reassembler, split
from fedkit.net.deployment import DeploySettings
from fedkit.net.executor import RemoteExecutor
from fedkit.net.payload import ResultMeta, decode_tree, encode_tree, info_from_metadata
from fedkit.net.proto import fedkit_pb2 as pb
from fedkit.net.service import add_service
from fedkit.net.transport import Security, make_server
from fedkit.params import model_params, nbytes
from fedkit.run import RunConfig, run


def cnn_params() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model("cnn", num_classes=10, input_shape=(1, 28, 28))
    return {k: v.detach().clone() for k, v in model_params(model).items()}


def null_worker(address: str, client_id: int, stats_q: Any) -> None:
    """A worker with no local work: decode the broadcast, return a zero delta of the same size."""
    torch.set_num_threads(1)
    params = cnn_params()
    msg_template = ModelMessage(params=params)
    zero = ModelDelta(delta={k: torch.zeros_like(v) for k, v in params.items()})
    client = CoordinatorClient(address, client_id=str(client_id), security=Security())
    client.register()
    down: list[int] = []
    up: list[int] = []
    cpu: list[float] = []
    while True:
        before_down, before_up = client.bytes_received, client.bytes_sent
        cpu0 = time.process_time()
        task = client.get_task(wait_s=5.0)
        if task.kind == pb.SHUTDOWN:
            break
        if task.kind != pb.TRAIN:
            continue
        _msg, meta = decode_tree(task.payload, msg_template)
        info_from_metadata(meta)
        meta_out = ResultMeta(
            weight=1.0, num_examples=1, steps=0, train_loss=0.0, work_fraction=1.0, compute_s=0.0
        )
        client.push_result(task, encode_tree(zero, meta_out.to_metadata()), compute_s=0.0)
        down.append(client.bytes_received - before_down)
        up.append(client.bytes_sent - before_up)
        cpu.append(time.process_time() - cpu0)
    client.close()
    stats_q.put((client_id, down, up, cpu))


def codec_floor(params: dict[str, torch.Tensor], workers: int) -> float:
    """Seconds for the codec work of one round for ``workers`` workers, in one process."""
    msg = ModelMessage(params=params)
    zero = ModelDelta(delta={k: torch.zeros_like(v) for k, v in params.items()})
    t0 = time.perf_counter()
    data = encode_tree(msg)
    chunks = split(data)
    for _ in range(workers):
        for payload, template in ((data, msg), (encode_tree(zero), zero)):
            parts = chunks if payload is data else split(payload)
            r = Reassembler(
                declared_bytes=len(payload), declared_chunks=len(parts), max_bytes=len(payload)
            )
            for c in parts:
                r.add(c)
            decode_tree(r.result(), template)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workers", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5, help="measured rounds (plus one warm-up)")
    ap.add_argument("--json-out", type=Path, default=Path("benchmarks/results/net_overhead.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    params = cnn_params()
    raw = nbytes(params)
    n = args.workers

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["fedkit.net.client", "fedkit.net.payload", "fedkit.models"])
    settings = DeploySettings(deadline_s=300, select_timeout_s=300, heartbeat_s=5, liveness_s=60)
    broker = Broker(run_id="bench", max_result_bytes=settings.max_update_bytes,
                    heartbeat_interval_s=5, liveness_s=60)  # fmt: skip
    server, port = make_server("127.0.0.1:0", Security(), max_workers=2 * n + 8)
    add_service(server, broker)
    server.start()
    stats_q = ctx.Queue()
    procs = [
        ctx.Process(target=null_worker, args=(f"127.0.0.1:{port}", i, stats_q), daemon=True)
        for i in range(n)
    ]
    for p in procs:
        p.start()
    broker.wait_for_clients({str(i) for i in range(n)}, n, 600)

    template = ModelDelta(delta={k: torch.zeros_like(v) for k, v in params.items()})
    executor = RemoteExecutor(broker, num_clients=n, settings=settings, update_template=template)
    algorithm = FedAvg(local=LocalTraining(lr=0.1, steps=1))
    coord_cpu: list[float] = []
    last = [time.process_time()]

    def cpu_meter(record: object, params: object) -> None:
        now = time.process_time()  # this process: run loop, gRPC threads, hashing, aggregation
        coord_cpu.append(now - last[0])
        last[0] = now

    result = run(
        algorithm, executor, params,
        RunConfig(rounds=args.rounds + 1, clients_per_round=n, seed=0, eval_every=0),
        callbacks=[cpu_meter],
    )  # fmt: skip
    broker.shutdown(grace_s=30)
    stats = [stats_q.get(timeout=60) for _ in range(n)]
    for p in procs:
        p.join(30)
    server.stop(1)

    walls = [r.wall_seconds for r in result.history[1:]]
    committed = all(r.committed and len(r.clients) == n for r in result.history)
    down = [d for _, ds, _, _ in stats for d in ds[1:]]
    up = [u for _, _, us, _ in stats for u in us[1:]]
    worker_cpu = [c for *_, cs in stats for c in cs[1:]]
    floor = codec_floor(params, n)
    out = {
        "workers": n,
        "rounds_measured": len(walls),
        "all_rounds_committed_with_all_workers": committed,
        "model_params": sum(v.numel() for v in params.values()),
        "model_bytes": raw,
        "round_seconds_mean": statistics.mean(walls),
        "round_seconds_min": min(walls),
        "round_seconds_max": max(walls),
        "coordinator_cpu_seconds_per_round": statistics.mean(coord_cpu[1:]),
        "worker_cpu_seconds_per_round_mean": statistics.mean(worker_cpu),
        "all_processes_cpu_seconds_per_round": statistics.mean(coord_cpu[1:])
        + n * statistics.mean(worker_cpu),
        "codec_floor_seconds": floor,
        "round_over_floor": statistics.mean(walls) / floor,
        "down_bytes_per_worker": statistics.mean(down),
        "up_bytes_per_worker": statistics.mean(up),
        "down_ratio": statistics.mean(down) / raw,
        "up_ratio": statistics.mean(up) / raw,
        "cpus": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    print(f"{'metric':40s} {'measured':>14s} {'baseline / target':>22s}")
    print(f"{'seconds per round (mean)':40s} {out['round_seconds_mean']:14.3f} "
          f"{'target <= 0.5':>22s}")  # fmt: skip
    print(f"{'  min / max':40s} {out['round_seconds_min']:6.3f} / {out['round_seconds_max']:.3f}")
    print(f"{'coordinator CPU s / round':40s} {out['coordinator_cpu_seconds_per_round']:14.3f}")
    print(f"{'one worker CPU s / round':40s} {out['worker_cpu_seconds_per_round_mean']:14.3f}")
    print(f"{'all 1+N processes CPU s / round':40s} "
          f"{out['all_processes_cpu_seconds_per_round']:14.3f} "
          f"{'/ ' + str(out['cpus']) + ' CPUs':>22s}")  # fmt: skip
    print(f"{'in-process codec floor (s, same work)':40s} {floor:14.3f} "
          f"{'ratio ' + format(out['round_over_floor'], '.2f') + 'x':>22s}")  # fmt: skip
    print(f"{'down bytes / worker / round':40s} {out['down_bytes_per_worker']:14.0f} "
          f"{'model ' + str(raw) + ' B':>22s}")  # fmt: skip
    print(f"{'  ratio to model bytes':40s} {out['down_ratio']:14.5f} {'target <= 1.05':>22s}")
    print(f"{'up bytes / worker / round':40s} {out['up_bytes_per_worker']:14.0f}")
    print(f"{'  ratio to model bytes':40s} {out['up_ratio']:14.5f} {'target <= 1.05':>22s}")
    print(f"{'all rounds committed with all workers':40s} {committed!s:>14s}")
    print(f"machine: {out['cpus']} CPUs, 1-min load {out['load_avg_1min']:.1f}")
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json_out}")


if __name__ == "__main__":
    sys.exit(main())
