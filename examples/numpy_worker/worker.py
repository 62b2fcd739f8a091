"""A fedkit worker without PyTorch: NumPy, grpcio, protobuf and safetensors' NumPy API only.

It speaks fedkit's open wire protocol (docs/protocol.md) to an ordinary ``fedkit coordinator``
and takes part in FedAvg rounds beside ordinary ``fedkit worker`` processes: it registers, polls
for tasks, trains a logistic-regression or MLP client with plain NumPy SGD
(:mod:`numpy_model`), pushes ``Δ`` and answers federated-evaluation tasks.

The gRPC modules ``fedkit_pb2``/``fedkit_pb2_grpc`` beside this file are generated from
fedkit's ``fedkit.proto`` by ``gen_proto.sh`` (a test checks they match it), so the worker needs
neither the fedkit package nor PyTorch installed.

Its data is one safetensors file of NumPy arrays: ``x`` (float32, ``[n, ...]``), ``y`` (int64,
``[n]``) and optionally ``x_test``/``y_test`` for federated evaluation.

Usage::

    python worker.py --coordinator 127.0.0.1:7070 --experiment exp.toml --client-id 2 \
        --data client-2.safetensors --lr 0.05 --local-steps 5 --batch-size 0

The experiment file is only hashed (the coordinator refuses workers started with another file);
the local-training settings are given here and must equal its ``[algorithm]`` ones.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import struct
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import fedkit_pb2 as pb
import fedkit_pb2_grpc as pb_grpc
import grpc
import numpy as np
from numpy_model import LocalSGD, evaluate, layers_of, train
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

log = logging.getLogger("numpy_worker")

PROTOCOL_VERSION = 1
CHUNK_BYTES = 4 * 1024 * 1024
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", CHUNK_BYTES + 64 * 1024),
    ("grpc.max_receive_message_length", CHUNK_BYTES + 64 * 1024),
]
MAX_TASK_BYTES = 2 * 1024**3
_DTYPES = {"F32": np.float32, "F64": np.float64}
_REREGISTER = {pb.UNKNOWN_WORKER, pb.UNAUTHENTICATED, pb.RUN_MISMATCH}


class Refused(Exception):
    """The coordinator answered with an error code other than OK."""

    def __init__(self, code: int, detail: str) -> None:
        known = code in pb.ErrorCode.values()
        super().__init__(f"{pb.ErrorCode.Name(code) if known else f'code {code}'}: {detail}")
        self.code = code


def check(error: pb.Error) -> None:
    """Raise :class:`Refused` unless ``error`` is OK (an unset code is a protocol violation)."""
    if error.code != pb.OK:
        code = error.code or pb.MALFORMED
        raise Refused(code, error.detail or "no detail given")


# ---------------------------------------------------------------------------- payload bytes
def header_of(payload: bytes | bytearray) -> dict[str, object]:
    """The safetensors JSON header (names, dtypes, shapes), read before any tensor is made."""
    if len(payload) < 8:
        raise Refused(pb.MALFORMED, "payload has no safetensors header")
    (n,) = struct.unpack("<Q", payload[:8])
    if n > 16 * 1024 * 1024 or 8 + n > len(payload):
        raise Refused(pb.MALFORMED, f"safetensors header length {n} exceeds the payload")
    header = json.loads(bytes(payload[8 : 8 + n]))
    if not isinstance(header, dict):
        raise Refused(pb.MALFORMED, "safetensors header is not an object")
    return header


def decode(payload: bytes | bytearray, prefix: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors under ``prefix`` (prefix removed) and the metadata of a payload.

    Every tensor must be named ``prefix + <index>.weight|bias`` and be F32 or F64; the names are
    checked against the model's layer structure before training starts.
    """
    header = header_of(payload)
    meta = header.pop("__metadata__", None) or {}
    for name, entry in header.items():
        if not name.startswith(prefix) or not isinstance(entry, dict):
            raise Refused(pb.SCHEMA_MISMATCH, f"unexpected tensor {name!r}")
        if entry.get("dtype") not in _DTYPES:
            raise Refused(pb.SCHEMA_MISMATCH, f"tensor {name!r}: dtype {entry.get('dtype')!r}")
    tensors = {k[len(prefix) :]: v for k, v in st_load(bytes(payload)).items()}
    layers_of(tensors)  # names and shapes form a chain of dense layers
    return tensors, {str(k): str(v) for k, v in meta.items()}


def chunks(payload: bytes, chunk_bytes: int) -> list[pb.Chunk]:
    """``payload`` cut into chunks of at most ``chunk_bytes``, each with its SHA-256."""
    return [
        pb.Chunk(index=i, data=payload[o : o + chunk_bytes],
                 sha256=hashlib.sha256(payload[o : o + chunk_bytes]).digest())
        for i, o in enumerate(range(0, len(payload), chunk_bytes))
    ]  # fmt: skip


def reassemble(info: pb.TaskInfo, parts: Iterator[pb.TaskPart]) -> bytearray:
    """The task payload from its chunks: size cap first, then order, size and SHA-256 of each."""
    if info.payload_bytes > MAX_TASK_BYTES:
        raise Refused(pb.PAYLOAD_TOO_LARGE, f"task payload of {info.payload_bytes} B")
    buf = bytearray(info.payload_bytes)
    offset = 0
    for i in range(info.num_chunks):
        part = next(parts, None)
        if part is None or part.WhichOneof("part") != "chunk" or part.chunk.index != i:
            raise Refused(pb.MALFORMED, f"chunk {i} missing or out of order")
        data = part.chunk.data
        if not 0 < len(data) <= CHUNK_BYTES or offset + len(data) > len(buf):
            raise Refused(pb.MALFORMED, f"chunk {i} has a bad size")
        if hashlib.sha256(data).digest() != part.chunk.sha256:
            raise Refused(pb.CHECKSUM_MISMATCH, f"chunk {i}: SHA-256 mismatch")
        buf[offset : offset + len(data)] = data
        offset += len(data)
    if offset != len(buf) or next(parts, None) is not None:
        raise Refused(pb.MALFORMED, "payload size differs from the declared one")
    return buf


def hexf(x: float) -> str:
    """A float as fedkit's metadata carries it: exact hexadecimal (Python's ``float.hex``)."""
    return float(x).hex()


# ---------------------------------------------------------------------------- the worker
@dataclass(frozen=True, kw_only=True)
class LocalData:
    """This client's arrays (see the module docstring)."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @classmethod
    def load(cls, path: Path) -> LocalData:
        """Read and check the safetensors data file."""
        arrays = st_load(path.read_bytes())
        x, y = arrays["x"], arrays["y"]
        xt = arrays.get("x_test", np.zeros((0, *x.shape[1:]), dtype=x.dtype))
        yt = arrays.get("y_test", np.zeros(0, dtype=np.int64))
        if len(x) != len(y) or len(xt) != len(yt) or y.dtype.kind not in "iu":
            raise ValueError(f"{path}: x/y (and x_test/y_test) need equal lengths, y integers")
        return cls(x=x, y=y.astype(np.int64), x_test=xt, y_test=yt.astype(np.int64))


class Worker:
    """Register, heartbeat, poll, train, push (docs/protocol.md, "A worker's loop")."""

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        client_id: int,
        digest: str,
        data: LocalData,
        sgd: LocalSGD,
        weighting: str = "examples",
        enrolment_secret: str = "",
    ) -> None:
        self.stub = pb_grpc.CoordinatorStub(channel)
        self.client_id = str(client_id)
        self.digest = digest
        self.data = data
        self.sgd = sgd
        self.weighting = weighting
        self.secret = enrolment_secret
        self.run_id = self.worker_id = self.token = ""
        self.chunk_bytes = CHUNK_BYTES
        self.heartbeat_s = 2.0
        self.rounds_done = 0
        self._stop = threading.Event()

    def header(self, round_: int = 0, task_id: str = "") -> pb.Header:
        """The authenticated header every message after registration carries."""
        return pb.Header(run_id=self.run_id, round=round_, task_id=task_id,
                         worker_id=self.worker_id, token=self.token)  # fmt: skip

    def register(self, give_up_s: float = 60.0) -> None:
        """Register (again, after ``UNKNOWN_WORKER``): store the worker id, token and limits."""
        end = time.monotonic() + give_up_s
        while True:
            try:
                reply = self.stub.Register(
                    pb.RegisterRequest(
                        header=self.header(), client_id=self.client_id,
                        experiment_digest=self.digest, enrolment_secret=self.secret,
                        protocol_version=PROTOCOL_VERSION,
                    ),
                    timeout=30,
                )  # fmt: skip
                check(reply.error)
            except grpc.RpcError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.5)
                continue
            except Refused as err:  # a live predecessor holds the id: wait out its lease
                if err.code != pb.CLIENT_TAKEN or time.monotonic() > end:
                    raise
                time.sleep(1.0)
                continue
            self.run_id, self.worker_id, self.token = reply.run_id, reply.worker_id, reply.token
            self.heartbeat_s = reply.heartbeat_interval_s or 2.0
            self.chunk_bytes = min(reply.chunk_bytes or CHUNK_BYTES, CHUNK_BYTES)
            log.info("client %s registered as %s", self.client_id, self.worker_id)
            return

    def _heartbeats(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            # an unreachable coordinator is the main loop's to notice
            with contextlib.suppress(grpc.RpcError):
                self.stub.Heartbeat(pb.HeartbeatRequest(header=self.header()), timeout=10)

    def run(self, give_up_s: float = 120.0) -> int:
        """Serve tasks until ``SHUTDOWN``; returns the number of accepted training results."""
        self.register(give_up_s)
        beat = threading.Thread(target=self._heartbeats, daemon=True)
        beat.start()
        since: float | None = None
        try:
            while True:
                try:
                    parts = iter(self.stub.GetTask(
                        pb.GetTaskRequest(header=self.header(), wait_s=2.0), timeout=32
                    ))  # fmt: skip
                    first = next(parts)
                    since = None
                except grpc.RpcError:
                    since = since or time.monotonic()
                    if time.monotonic() - since > give_up_s:
                        raise
                    time.sleep(0.5)
                    continue
                if first.WhichOneof("part") != "info":
                    raise Refused(pb.MALFORMED, "task stream did not start with TaskInfo")
                info = first.info
                try:
                    check(info.error)
                except Refused as err:  # docs/protocol.md, "Errors and what a client must do"
                    if err.code in _REREGISTER:
                        self.register(give_up_s)
                    else:  # INTERNAL and the like: the coordinator's trouble, poll again later
                        log.warning("task refused: %s", err)
                        time.sleep(1.0)
                    continue
                if info.kind == pb.SHUTDOWN:
                    return self.rounds_done
                if info.kind == pb.SECAGG:  # docs/protocol.md, "Secure aggregation"
                    log.error(
                        "round %d: secure aggregation (SECAGG tasks) is not implemented by the "
                        "NumPy worker; client %s sits this round out (run fedkit's worker for "
                        "secagg experiments)",
                        info.header.round,
                        info.client_id,
                    )
                    continue
                if info.kind == pb.TRAIN and len(info.client_values) > 0:
                    log.error(
                        "round %d: the task carries per-client aggregator values (%s), which "
                        "the NumPy worker does not apply (plain mean only); client %s sits this "
                        "round out (run fedkit's worker for 'importance' experiments)",
                        info.header.round,
                        ", ".join(v.name for v in info.client_values)[:200],
                        info.client_id,
                    )
                    continue
                if info.kind in (pb.TRAIN, pb.EVALUATE):
                    payload = reassemble(info, parts)
                    if info.kind == pb.TRAIN:
                        self.train(info, payload)
                    else:
                        self.evaluate(info, payload)
        finally:
            self._stop.set()

    def train(self, info: pb.TaskInfo, payload: bytearray) -> None:
        """FedAvg's client half: ``Δ`` of local SGD from the broadcast ``params/…``."""
        t0 = time.perf_counter()
        start, meta = decode(payload, "params/")
        rnd, seed = int(meta["info:round"]), int(meta["info:seed"])
        if rnd != info.header.round or info.client_id != self.client_id:
            raise Refused(pb.MALFORMED, "task header and payload disagree")
        rng = np.random.default_rng([seed, rnd, int(self.client_id)])
        out = train(start, self.data.x, self.data.y, self.sgd, rng=rng,
                    work_fraction=info.work_fraction or 1.0)  # fmt: skip
        if not all(np.isfinite(d).all() for d in out.delta.values()):
            log.warning("round %d: non-finite update, nothing sent", rnd)
            return
        weight = 1.0 if self.weighting == "uniform" else float(len(self.data.y))
        compute_s = time.perf_counter() - t0
        result_meta = {
            "result:weight": hexf(weight),
            "result:num_examples": str(len(self.data.y)),
            "result:steps": str(out.steps),
            "result:train_loss": hexf(out.mean_loss),
            "result:work_fraction": hexf(info.work_fraction or 1.0),
            "result:compute_s": hexf(compute_s),
        }
        tensors = {f"delta/{k}": np.ascontiguousarray(v) for k, v in out.delta.items()}
        if self.push(info, st_save(tensors, metadata=result_meta), compute_s):
            self.rounds_done += 1

    def evaluate(self, info: pb.TaskInfo, payload: bytearray) -> None:
        """Score the global parameters on the local test data (0 examples when there is none)."""
        t0 = time.perf_counter()
        params, _ = decode(payload, "")
        loss, acc = evaluate(params, self.data.x_test, self.data.y_test)
        meta = {"eval:loss": hexf(loss), "eval:accuracy": hexf(acc),
                "eval:num_examples": str(len(self.data.y_test))}  # fmt: skip
        self.push(info, st_save({}, metadata=meta), time.perf_counter() - t0)

    def push(self, info: pb.TaskInfo, payload: bytes, compute_s: float) -> bool:
        """Stream one ``ResultInfo`` and the payload's chunks; False if the result was refused
        (that round only: the worker stays in the run)."""
        parts = chunks(payload, self.chunk_bytes)
        head = pb.ResultInfo(
            header=self.header(info.header.round, info.header.task_id), client_id=self.client_id,
            payload_bytes=len(payload), num_chunks=len(parts), compute_s=compute_s,
        )  # fmt: skip
        stream = [pb.ResultPart(info=head), *(pb.ResultPart(chunk=c) for c in parts)]
        try:
            ack = self.stub.PushResult(iter(stream), timeout=120)
            check(ack.error)
        except (grpc.RpcError, Refused) as err:
            log.warning("round %d result not accepted: %s", info.header.round, err)
            return False
        return True


def channel_for(address: str, tls_dir: Path | None, tls_name: str) -> grpc.Channel:
    """Plaintext, or mutual TLS with ``ca.pem`` and ``<tls_name>.pem/.key`` from ``tls_dir``."""
    if tls_dir is None:
        return grpc.insecure_channel(address, options=GRPC_OPTIONS)
    creds = grpc.ssl_channel_credentials(
        root_certificates=(tls_dir / "ca.pem").read_bytes(),
        private_key=(tls_dir / f"{tls_name}.key").read_bytes(),
        certificate_chain=(tls_dir / f"{tls_name}.pem").read_bytes(),
    )
    return grpc.secure_channel(address, creds, options=GRPC_OPTIONS)


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring); exit 0 at the end of the run, 2 when refused."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--coordinator", required=True, help="HOST:PORT")
    ap.add_argument("--experiment", type=Path, required=True, help="the coordinator's file")
    ap.add_argument("--client-id", type=int, required=True)
    ap.add_argument(
        "--data", type=Path, required=True, help="safetensors file: x, y[, x_test, y_test]"
    )
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--local-steps", type=int, default=None)
    ap.add_argument("--local-epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=0, help="0: full local dataset")
    ap.add_argument("--weighting", choices=("examples", "uniform"), default="examples")
    ap.add_argument("--tls-dir", type=Path, default=None)
    ap.add_argument("--tls-name", default=None, help="certificate name (default worker-<id>)")
    ap.add_argument("--secret-file", type=Path, default=None, help="client-<id>.secret")
    ap.add_argument("--give-up-s", type=float, default=120.0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sgd = LocalSGD(lr=args.lr, steps=args.local_steps, epochs=args.local_epochs,
                   batch_size=args.batch_size)  # fmt: skip
    secret = "" if args.secret_file is None else args.secret_file.read_text().strip()
    channel = channel_for(
        args.coordinator, args.tls_dir, args.tls_name or f"worker-{args.client_id}"
    )
    worker = Worker(
        channel, client_id=args.client_id,
        digest=hashlib.sha256(args.experiment.read_bytes()).hexdigest(),
        data=LocalData.load(args.data), sgd=sgd, weighting=args.weighting,
        enrolment_secret=secret,
    )  # fmt: skip
    try:
        rounds = worker.run(args.give_up_s)
    except Refused as err:
        print(f"numpy worker: the coordinator refused client {args.client_id}: {err}",
              file=sys.stderr)  # fmt: skip
        return 2
    finally:
        channel.close()
    log.info("run over: %d training results accepted", rounds)
    print(json.dumps({"client_id": args.client_id, "rounds": rounds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
