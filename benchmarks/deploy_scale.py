"""Deployment at scale: one coordinator, W worker processes serving C clients (issue 20).

McMahan's CNN (1,663,370 parameters), no local work: each worker process serves a block of C/W
client ids (``fedkit worker --clients``: one registration, one resident template), decodes every
broadcast it is sent and answers with a zero delta of the model's size for the client the task
names. The coordinator is the real one: the run loop with the remote executor (broadcast encoded
once per round; uploads SHA-256-checked per chunk as they arrive, validated, decoded zero-copy
over the received buffer, folded into the aggregator). The cohort is 10% of C.

Reported per C, as means over the measured rounds (one warm-up round is left out):

* the coordinator's CPU seconds per round (this process: run loop, gRPC and bulk-channel
  threads, hashing, validation, aggregation) against the **in-process floor** measured in the
  same run: the same bytes through the same steps with no network (encode + chunk the broadcast
  once; per upload: chunk hashes, reassembly, header and finiteness checks, zero-copy decode,
  fold), and against the same floor plus the server's update (the rest of a round's
  computation, which no transport can avoid);
* each with uploads over the **bulk channel** (``fedkit.net.bulk``, the default) and as gRPC
  chunk streams (``--transports``);
* the **bare gRPC transfer** cost in the same run: a gRPC server with the same options and
  message types whose handlers do nothing (drain the upload chunks, stream pre-serialised
  broadcast chunks), fed the same bytes by W client processes — what moving the bytes alone costs
  the server, so ``floor + transfer`` is what the coordinator can hope for with gRPC in Python;
* wall seconds per round (all W + 1 processes share this machine's cores, so on 2 cores it
  tracks the total CPU, not the coordinator's);
* bytes per client per direction on the wire (protobuf message bytes) against the model bytes;
* the coordinator's peak resident memory above its level after the warm-up round, for
  ``deploy.fold = "ordered"`` (bit-for-bit with the simulator; early results wait for lower ids)
  and ``"arrival"`` (one accumulator whatever the cohort).

``--flower`` adds Flower's deployment engine (SuperLink + one SuperNode per client, Flower
installed by this script into its own virtual environment, never a project dependency) on the
same model size and cohort; see ``benchmarks/flower_scale.py``.

    python benchmarks/deploy_scale.py [--clients 100 1000] [--workers 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Literal

import grpc
import torch

from fedkit.aggregate import AggContext, check_finite
from fedkit.algorithm import RoundInfo
from fedkit.algorithms import FedAvg, ModelDelta, ModelMessage
from fedkit.local import LocalTraining
from fedkit.models import build_model
from fedkit.net.broker import Broker
from fedkit.net.bulk import BulkServer
from fedkit.net.client import CoordinatorClient
from fedkit.net.codec import Reassembler, split
from fedkit.net.deployment import DeploySettings
from fedkit.net.executor import RemoteExecutor
from fedkit.net.guard import StreamGuard
from fedkit.net.payload import (
    ResultMeta,
    check_tree_header,
    decode_tree,
    encode_tree,
    info_from_metadata,
)
from fedkit.net.proto import fedkit_pb2 as pb
from fedkit.net.service import add_service
from fedkit.net.transport import Security, make_channel, make_server
from fedkit.params import model_params, nbytes
from fedkit.run import RunConfig, run

ZERO_META = ResultMeta(
    weight=1.0, num_examples=1, steps=0, train_loss=0.0, work_fraction=1.0, compute_s=0.0
).to_metadata()


def cnn_params() -> dict[str, torch.Tensor]:
    """The CNN's initial parameters (seeded)."""
    torch.manual_seed(0)
    model = build_model("cnn", num_classes=10, input_shape=(1, 28, 28))
    return {k: v.detach().clone() for k, v in model_params(model).items()}


def null_worker(address: str, ids: list[int], stats_q: Any, cpus: set[int] | None) -> None:
    """One process serving ``ids``: decode each broadcast, answer a zero delta for its client
    (on ``cpus`` when given)."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    torch.set_num_threads(1)
    params = cnn_params()
    msg_template = ModelMessage(params=params)
    zero = encode_tree(ModelDelta(delta={k: torch.zeros_like(v) for k, v in params.items()}),
                       ZERO_META)  # fmt: skip
    client = CoordinatorClient(address, client_ids=[str(c) for c in ids], security=Security())
    client.register()
    tasks: list[tuple[int, int, int]] = []  # (round, bytes down, bytes up) per client task
    while True:
        down0, up0 = client.bytes_received, client.bytes_sent
        task = client.get_task(wait_s=5.0)
        if task.kind == pb.SHUTDOWN:
            break
        if task.kind != pb.TRAIN:
            continue
        _msg, meta = decode_tree(task.payload, msg_template)
        info_from_metadata(meta)
        client.push_result(task, zero, compute_s=0.0)
        tasks.append((task.round, client.bytes_received - down0, client.bytes_sent - up0))
    client.close()
    stats_q.put(tasks)


def coordinator_floor(params: dict[str, torch.Tensor], cohort: int) -> tuple[float, float]:
    """CPU seconds of the coordinator's per-round work for ``cohort`` uploads, in one process:
    (broadcast + hash, decode and fold of every upload; the same plus the server's update)."""
    msg = ModelMessage(params=params)
    template = ModelDelta(delta={k: torch.zeros_like(v) for k, v in params.items()})
    upload = encode_tree(template, ZERO_META)
    parts = split(upload)  # the worker's work: not counted
    algorithm = FedAvg(local=LocalTraining(lr=0.1, steps=1))
    agg = algorithm.aggregator
    t0 = time.process_time()
    split(encode_tree(msg))  # the broadcast, once
    acc = None
    for _ in range(cohort):
        r = Reassembler(declared_bytes=len(upload), declared_chunks=len(parts),
                        max_bytes=len(upload))  # fmt: skip
        for c in parts:
            r.add(c)
        payload = r.result()
        check_tree_header(payload, template)
        update, meta = decode_tree(payload, template)
        check_finite(update)
        m = ResultMeta.from_metadata(meta)
        acc = agg.add(agg.zero(update) if acc is None else acc, update, m.weight)
    folded = time.process_time() - t0
    assert acc is not None
    info = RoundInfo(round=0, seed=0, num_clients=cohort, cohort_size=cohort)
    mean = agg.result(acc, AggContext(round=0, seed=0, client_id=-1))
    algorithm.server_update(algorithm.init_state(params), mean, info)
    return folded, time.process_time() - t0


_SERVICE = "fedkit.net.v1.Coordinator"


def _bare_handlers(payload: bytes) -> grpc.GenericRpcHandler:
    """Handlers that move bytes and do nothing else (the transfer arm)."""
    wire = [pb.TaskPart(chunk=c).SerializeToString() for c in split(payload)]

    def push(parts: Any, _ctx: Any) -> pb.Ack:
        for _ in parts:
            pass
        return pb.Ack()

    def get(_req: Any, _ctx: Any) -> Any:
        yield from wire

    return grpc.method_handlers_generic_handler(_SERVICE, {
        "PushResult": grpc.stream_unary_rpc_method_handler(
            push, request_deserializer=pb.ResultPart.FromString,
            response_serializer=pb.Ack.SerializeToString),
        "GetTask": grpc.unary_stream_rpc_method_handler(
            get, request_deserializer=pb.GetTaskRequest.FromString,
            response_serializer=lambda b: b),
    })  # fmt: skip


def _bare_client(address: str, payload: bytes, transfers: int, cpus: set[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    channel = make_channel(address, Security(), identity="bench")
    up = channel.stream_unary(f"/{_SERVICE}/PushResult",
                              request_serializer=pb.ResultPart.SerializeToString,
                              response_deserializer=pb.Ack.FromString)  # fmt: skip
    down = channel.unary_stream(f"/{_SERVICE}/GetTask",
                                request_serializer=pb.GetTaskRequest.SerializeToString,
                                response_deserializer=pb.TaskPart.FromString)  # fmt: skip
    parts = [pb.ResultPart(chunk=c) for c in split(payload)]
    for _ in range(transfers):
        list(down(pb.GetTaskRequest()))
        up(iter(parts))
    channel.close()


def grpc_transfer_cpu(
    payload: bytes, cohort: int, workers: int, ctx: Any, cpus: set[int] | None
) -> float:
    """Server CPU seconds to send ``payload`` to and receive it from ``cohort`` clients (spread
    over ``workers`` client processes) through a bare gRPC server."""
    server, port = make_server("127.0.0.1:0", Security(), max_workers=2 * workers + 8)
    server.add_generic_rpc_handlers((_bare_handlers(payload),))
    server.start()
    share = [cohort // workers + (k < cohort % workers) for k in range(workers)]
    procs = [ctx.Process(target=_bare_client, args=(f"127.0.0.1:{port}", payload, n, cpus))
             for n in share if n]  # fmt: skip
    t0 = time.process_time()
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)
    cpu = time.process_time() - t0
    server.stop(1)
    return cpu


def rss_bytes() -> int:
    """This process's resident set size."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """This process's peak RSS since :meth:`reset`, from the kernel's high-water mark (``VmHWM``,
    reset by writing 5 to ``/proc/self/clear_refs``). No sampling thread: an earlier version
    sampled every 5 ms and its own CPU (about 5% of a round) was counted as the coordinator's."""

    def reset(self) -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    @staticmethod
    def peak() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc/self/status")


def one_setting(
    n_clients: int,
    workers: int,
    rounds: int,
    fold: Literal["ordered", "arrival"],
    transport: Literal["grpc", "bulk"] = "bulk",
    pin: bool = True,
) -> dict[str, Any]:
    """Run ``rounds`` + 1 rounds with ``workers`` processes serving ``n_clients`` clients;
    uploads over the bulk channel (``transport = "bulk"``) or as gRPC chunk streams. With
    ``pin`` (and 2+ CPUs) the coordinator runs on CPU 0 and the workers on the others, as if the
    coordinator had a machine of its own; the floor is then measured on CPU 0 too."""
    allowed = os.sched_getaffinity(0)
    cpus = sorted(allowed)
    worker_cpus = set(cpus[1:]) if pin and len(cpus) > 1 else None
    if worker_cpus:
        os.sched_setaffinity(0, {cpus[0]})  # before any server thread: they inherit it
    params = cnn_params()
    raw = nbytes(params)
    cohort = max(1, n_clients // 10)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["fedkit.net.client", "fedkit.net.payload", "fedkit.models"])
    settings = DeploySettings(deadline_s=600, select_timeout_s=600, heartbeat_s=5,
                              liveness_s=120, fold=fold)  # fmt: skip
    broker = Broker(run_id="bench", max_result_bytes=settings.max_update_bytes,
                    heartbeat_interval_s=5, liveness_s=120)  # fmt: skip
    server, port = make_server("127.0.0.1:0", Security(), max_workers=2 * workers + 8)
    guard = StreamGuard()
    add_service(server, broker, guard)
    bulk = None
    if transport == "bulk":
        bulk = BulkServer(broker, host="127.0.0.1", guard=guard, max_connections=2 * workers + 8)
        broker.bulk_port = bulk.port
        bulk.start()
    server.start()
    stats_q = ctx.Queue()
    blocks = [list(range(n_clients))[k::workers] for k in range(workers)]
    procs = [
        ctx.Process(
            target=null_worker, args=(f"127.0.0.1:{port}", b, stats_q, worker_cpus), daemon=True
        )
        for b in blocks
    ]
    for p in procs:
        p.start()
    broker.wait_for_clients({str(i) for i in range(n_clients)}, n_clients, 600)
    template = ModelDelta(delta={k: torch.zeros_like(v) for k, v in params.items()})
    executor = RemoteExecutor(broker, num_clients=n_clients, settings=settings,
                              update_template=template)  # fmt: skip
    algorithm = FedAvg(local=LocalTraining(lr=0.1, steps=1))
    coord_cpu: list[float] = []
    last = [time.process_time()]

    meter = PeakRss()
    base_rss = [rss_bytes()]

    def cpu_meter(record: object, params: object) -> None:
        now = time.process_time()
        coord_cpu.append(now - last[0])
        last[0] = now
        if len(coord_cpu) == 1:  # after the warm-up round: memory from here on
            base_rss[0] = rss_bytes()
            meter.reset()

    last[0] = time.process_time()
    result = run(
        algorithm, executor, params,
        RunConfig(rounds=rounds + 1, clients_per_round=cohort, seed=0, eval_every=0),
        callbacks=[cpu_meter],
    )  # fmt: skip
    peak = meter.peak()
    broker.shutdown(grace_s=30)
    tasks = [t for _ in procs for t in stats_q.get(timeout=120)]
    for p in procs:
        p.join(30)
    server.stop(1)
    if bulk is not None:
        bulk.close()
    guard.close()
    measured = [t for t in tasks if t[0] >= 1]
    walls = [r.wall_seconds for r in result.history[1:]]
    floors = [coordinator_floor(params, cohort) for _ in range(3)]
    floor = statistics.median(f[0] for f in floors)
    floor_round = statistics.median(f[1] for f in floors)
    upload = encode_tree(template, ZERO_META)
    transfer = statistics.median(
        grpc_transfer_cpu(upload, cohort, workers, ctx, worker_cpus) for _ in range(3)
    )
    cpu = statistics.mean(coord_cpu[1:])
    os.sched_setaffinity(0, allowed)
    return {
        "clients": n_clients,
        "workers": workers,
        "cohort": cohort,
        "fold": fold,
        "transport": transport,
        "pinned": bool(worker_cpus),
        "rounds_measured": len(walls),
        "all_committed": all(r.committed and len(r.clients) == cohort for r in result.history),
        "model_bytes": raw,
        "coordinator_cpu_s_per_round": cpu,
        "floor_cpu_s_per_round": floor,
        "cpu_over_floor": cpu / floor,
        "floor_with_server_update_cpu_s_per_round": floor_round,
        "cpu_over_floor_with_server_update": cpu / floor_round,
        "grpc_transfer_cpu_s_per_round": transfer,
        "cpu_over_floor_plus_transfer": cpu / (floor + transfer),
        "wall_s_per_round": statistics.mean(walls),
        "down_bytes_per_client": statistics.mean(t[1] for t in measured),
        "up_bytes_per_client": statistics.mean(t[2] for t in measured),
        "down_ratio": statistics.mean(t[1] for t in measured) / raw,
        "up_ratio": statistics.mean(t[2] for t in measured) / raw,
        "coordinator_peak_rss_above_start_mib": (peak - base_rss[0]) / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds (plus one warm-up)")
    folds = ["ordered", "arrival"]
    ap.add_argument("--folds", nargs="+", default=folds, choices=folds)
    transports = ["grpc", "bulk"]
    ap.add_argument(
        "--transports",
        nargs="+",
        default=transports,
        choices=transports,
        help="how uploads travel: gRPC chunk streams, or the bulk channel (fedkit.net.bulk)",
    )
    ap.add_argument("--json-out", type=Path, default=Path("benchmarks/results/deploy_scale.json"))
    ap.add_argument(
        "--flower",
        action="store_true",
        help="also run Flower's deployment engine on the same work (flower_scale.py)",
    )
    ap.add_argument(
        "--flower-venv",
        type=Path,
        default=None,
        help="Flower's virtual env (default: flower_scale.DEFAULT_VENV, made if absent)",
    )
    ap.add_argument(
        "--flower-all-active",
        action="store_true",
        help="every Flower SuperNode runs ClientApps (see flower_scale.py)",
    )
    ap.add_argument(
        "--no-pin",
        action="store_true",
        help="let the OS place the coordinator and the workers (default: coordinator on CPU 0)",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [
        one_setting(c, args.workers, args.rounds, fold, transport, pin=not args.no_pin)
        for c in args.clients
        for fold in args.folds
        for transport in args.transports
    ]
    flower_rows: list[dict[str, Any]] = []
    flower_skipped: list[dict[str, Any]] = []
    if args.flower:
        import flower_scale  # benchmarks/ is on sys.path when run as a script

        shapes = [(k, tuple(v.shape)) for k, v in cnn_params().items()]
        for c in args.clients:
            try:
                flower_rows.append(
                    flower_scale.run_flower(shapes, clients=c, rounds=args.rounds,
                                            venv=args.flower_venv or flower_scale.DEFAULT_VENV,
                                            all_active=args.flower_all_active)
                )  # fmt: skip
            except flower_scale.FlowerRunError as exc:
                print(f"Flower at C = {c} not run: {exc}")
                flower_skipped.append({"clients": c, "reason": str(exc)})
    head = (f"{'C':>5s} {'cohort':>6s} {'fold':>8s} {'upload':>6s} {'coord CPU s':>11s} "
            f"{'floor s':>8s} "
            f"{'ratio':>6s} {'+upd s':>7s} {'ratio':>6s} {'gRPC s':>7s} {'/(f+g)':>6s} "
            f"{'wall s':>7s} {'down/model':>10s} "
            f"{'up/model':>9s} {'peak MiB':>9s}")  # fmt: skip
    print(head)
    for r in rows:
        print(f"{r['clients']:5d} {r['cohort']:6d} {r['fold']:>8s} {r['transport']:>6s} "
              f"{r['coordinator_cpu_s_per_round']:11.3f} {r['floor_cpu_s_per_round']:8.3f} "
              f"{r['cpu_over_floor']:6.2f} {r['floor_with_server_update_cpu_s_per_round']:7.3f} "
              f"{r['cpu_over_floor_with_server_update']:6.2f} "
              f"{r['grpc_transfer_cpu_s_per_round']:7.3f} "
              f"{r['cpu_over_floor_plus_transfer']:6.2f} "
              f"{r['wall_s_per_round']:7.2f} {r['down_ratio']:10.4f} "
              f"{r['up_ratio']:9.4f} {r['coordinator_peak_rss_above_start_mib']:9.1f}")  # fmt: skip
    ratios = []
    if flower_rows:
        import flower_scale

        print(
            f"Flower {flower_scale.FLWR_VERSION} (SuperLink + one SuperNode per client; "
            "coordinator = SuperLink + SuperExec + ServerApp processes):"
        )
        print(
            f"{'C':>5s} {'cohort':>6s} {'coord CPU s':>11s} {'less idle':>9s} {'wall s':>7s} "
            f"{'down/model':>10s} {'up/model':>9s} {'peak MiB':>9s}"
        )
        for f in flower_rows:
            print(
                f"{f['clients']:5d} {f['cohort']:6d} {f['coordinator_cpu_s_per_round']:11.3f} "
                f"{f['coordinator_cpu_s_per_round_less_idle']:9.3f} "
                f"{f['wall_s_per_round']:7.2f} {f['down_ratio']:10.4f} {f['up_ratio']:9.4f} "
                f"{f['coordinator_peak_rss_above_start_mib']:9.1f}"
            )
        ratios = [
            flower_scale.ratio_row(r, f)
            for f in flower_rows
            for r in rows
            if r["clients"] == f["clients"]
        ]
        for q in ratios:
            print(f"C = {q['clients']}, fold {q['fedkit_fold']}, {q['fedkit_transport']}: "
                  "Flower / fedkit coordinator CPU "
                  f"per round = {q['cpu_ratio']:.1f}x ({q['cpu_ratio_less_idle']:.1f}x without "
                  f"Flower's idle polling), wall = {q['wall_ratio']:.1f}x")  # fmt: skip
    out = {
        "rows": rows,
        "flower_rows": flower_rows,
        "flower_ratios": ratios,
        "flower_skipped": flower_skipped,
        "cpus": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    print(f"machine: {out['cpus']} CPUs, 1-min load {out['load_avg_1min']:.1f}")
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
