"""The worker's side of the protocol: register, poll, download, push, heartbeat.

:class:`CoordinatorClient` wraps the generated stub with the retry policy and the credentials the
worker registered with; it knows nothing about models or algorithms (that is
:mod:`fedkit.net.worker`). Typed refusals become :class:`~fedkit.net.errors.NetError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import random
import socket
import ssl
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from fedkit.net.bulk import push as bulk_push
from fedkit.net.codec import Buffer, Reassembler, split
from fedkit.net.errors import ErrorCode, NetError, TLSHandshakeError, raise_for
from fedkit.net.proto import PROTOCOL_VERSION
from fedkit.net.proto import fedkit_pb2 as pb
from fedkit.net.proto import fedkit_pb2_grpc as pb_grpc
from fedkit.net.retry import RetryPolicy, call_with_retry
from fedkit.net.tls import client_ssl_context
from fedkit.net.transport import Security, make_channel, split_address

log = logging.getLogger("fedkit.worker")

BULK_CONNECT_S = 5.0
"""Longest wait for the bulk channel's TCP connection before the result goes by gRPC."""
MAX_TASK_BYTES = 2 * 1024**3
"""Largest broadcast payload a worker accepts (2 GiB)."""


@dataclass(frozen=True, kw_only=True)
class Task:
    """A task received from the coordinator, payload reassembled and checksum-verified."""

    kind: int
    run_id: str
    round: int
    task_id: str
    client_id: str
    work_fraction: float
    deadline_s: float
    payload: Buffer
    client_values: tuple[tuple[str, float], ...] = ()
    """``TaskInfo.client_values`` as sent (unchecked: the worker validates them)."""


class CoordinatorClient:
    """A worker's connection to the coordinator.

    Args:
        address: ``HOST:PORT`` of the coordinator.
        client_id: The data partition this worker serves.
        client_ids: Instead of ``client_id``: every partition a multi-client worker serves.
        security: TLS / plaintext settings.
        tls_identity: Which ``<name>.pem`` of the certificate directory to present (``worker-0``).
        retry: Backoff policy for transient failures.
        experiment_digest: SHA-256 of the experiment file, checked by the coordinator.
        rpc_timeout_s: Deadline of each unary call.
        enrolment_secret: This client id's enrolment secret (hex), sent when registering; needed
            when the coordinator requires enrolment (:mod:`fedkit.net.identity`).
        enrolment_secrets: With ``client_ids``: one secret per id, in the same order.
        num_examples: Each client's training-example count (same order), reported when
            registering for samplers that weigh clients by data size; empty reports none.
        bulk: Push results over the coordinator's bulk channel when it offers one
            (:mod:`fedkit.net.bulk`); False always uses ``PushResult``.
    """

    def __init__(
        self,
        address: str,
        *,
        client_id: str = "",
        client_ids: Sequence[str] = (),
        security: Security,
        tls_identity: str = "worker-0",
        retry: RetryPolicy | None = None,
        experiment_digest: str = "",
        rpc_timeout_s: float = 30.0,
        enrolment_secret: str = "",
        enrolment_secrets: Sequence[str] = (),
        num_examples: Sequence[int] = (),
        bulk: bool = True,
    ) -> None:
        self.address = address
        self.clients = tuple(client_ids) or (client_id,)
        self.num_examples = tuple(num_examples)
        if self.num_examples and len(self.num_examples) != len(self.clients):
            raise ValueError("give one data size per client id, in the same order")
        self.secrets = tuple(enrolment_secrets) or (enrolment_secret,)
        if len(self.secrets) not in (1, len(self.clients)) or (
            len(self.clients) > 1 and enrolment_secret
        ):
            raise ValueError("give one enrolment secret per client id, in the same order")
        self.retry = retry or RetryPolicy()
        self.experiment_digest = experiment_digest
        self.rpc_timeout_s = rpc_timeout_s
        self._channel = make_channel(address, security, identity=tls_identity)
        self._stub = pb_grpc.CoordinatorStub(self._channel)  # type: ignore[no-untyped-call]
        self._rng = random.Random()
        self._lock = threading.Lock()
        self.run_id = ""
        self.worker_id = ""
        self.token = ""
        self.heartbeat_interval_s = 2.0
        self.max_payload_bytes = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self._held: tuple[bytes, bytes] | None = None  # (payload digest, payload) of the last task
        self.bulk = bulk
        self.bulk_port = 0  # the coordinator's bulk channel, told at registration (0: none)
        self._bulk_tls = (
            client_ssl_context(security.cert_dir, tls_identity)
            if bulk and security.cert_dir is not None
            else None
        )

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def header(self, *, round_: int = 0, task_id: str = "") -> pb.Header:
        """The authenticated header for the next message."""
        with self._lock:
            return pb.Header(
                run_id=self.run_id,
                round=round_,
                task_id=task_id,
                worker_id=self.worker_id,
                token=self.token,
            )

    def register(self) -> None:
        """Register (or re-register after a coordinator restart) and store the issued token."""

        def call() -> pb.RegisterReply:
            one = len(self.clients) == 1
            req = pb.RegisterRequest(
                header=self.header(),  # a worker registering again proves it is the same one
                client_id=self.clients[0] if one else "",
                client_ids=() if one else self.clients,
                experiment_digest=self.experiment_digest,
                enrolment_secret=self.secrets[0] if one else "",
                enrolment_secrets=() if one or not any(self.secrets) else self.secrets,
                protocol_version=PROTOCOL_VERSION,
                num_examples=self.num_examples,
            )
            reply: pb.RegisterReply = self._stub.Register(req, timeout=self.rpc_timeout_s)
            return reply

        reply = call_with_retry(call, self.retry, rng=self._rng)
        if reply.error.code == pb.RUN_MISMATCH and self.run_id:
            # A fresh coordinator serving a new run: join it rather than insisting on the old one.
            self.run_id = ""
            reply = call_with_retry(call, self.retry, rng=self._rng)
        raise_for(reply.error)
        with self._lock:
            self.run_id = reply.run_id
            self.worker_id = reply.worker_id
            self.token = reply.token
            self.heartbeat_interval_s = reply.heartbeat_interval_s or 2.0
            self.max_payload_bytes = reply.max_payload_bytes
            self.bulk_port = int(reply.bulk_port)

    def heartbeat(self) -> int:
        """Send a heartbeat; returns the coordinator's current round."""
        reply: pb.HeartbeatReply = call_with_retry(
            lambda: self._stub.Heartbeat(
                pb.HeartbeatRequest(header=self.header()), timeout=self.rpc_timeout_s
            ),
            self.retry,
            rng=self._rng,
        )
        raise_for(reply.error)
        return int(reply.round)

    def get_task(self, wait_s: float = 5.0) -> Task:
        """Long-poll for a task and download its payload (verified chunk by chunk)."""

        def call() -> Task:
            held = self._held
            parts: Iterator[pb.TaskPart] = self._stub.GetTask(
                pb.GetTaskRequest(
                    header=self.header(), wait_s=wait_s, held_payload=held[0] if held else b""
                ),
                timeout=wait_s + self.rpc_timeout_s,
            )
            first = next(parts, None)
            if first is None or first.WhichOneof("part") != "info":
                raise NetError(ErrorCode.MALFORMED, "task stream did not start with TaskInfo")
            info = first.info
            raise_for(info.error)
            self.bytes_received += first.ByteSize()
            if info.payload_held:
                payload = self._reuse(info, held, parts)
            else:
                payload = self._receive(info, parts)
            return Task(
                kind=int(info.kind),
                run_id=info.header.run_id,
                round=int(info.header.round),
                task_id=info.header.task_id,
                client_id=info.client_id,
                work_fraction=info.work_fraction,
                deadline_s=info.deadline_s,
                payload=payload,
                client_values=tuple((v.name, v.value) for v in info.client_values),
            )

        return call_with_retry(call, self.retry, rng=self._rng)

    def _receive(self, info: pb.TaskInfo, parts: Iterator[pb.TaskPart]) -> bytearray:
        """Reassemble the task's chunks; a multi-client worker keeps a copy of the payload under
        its digest, to name in its next request (its other clients' tasks share the broadcast)."""
        assembler = Reassembler(
            declared_bytes=info.payload_bytes,
            declared_chunks=info.num_chunks,
            max_bytes=MAX_TASK_BYTES,
        )
        for part in parts:
            if part.WhichOneof("part") != "chunk":
                raise NetError(ErrorCode.MALFORMED, "only chunks may follow TaskInfo")
            self.bytes_received += part.ByteSize()
            assembler.add(part.chunk)
        payload = assembler.result()
        digest = assembler.digest()
        if len(self.clients) > 1 and info.payload_digest == digest:
            self._held = (digest, bytes(payload))
        return payload

    def _reuse(
        self, info: pb.TaskInfo, held: tuple[bytes, bytes] | None, parts: Iterator[pb.TaskPart]
    ) -> bytearray:
        """The held payload for a task sent without chunks: a fresh copy (the last task's
        decoded tensors may have been changed in place), after checking that the coordinator
        named the payload this worker holds and sent nothing after the info."""
        if held is None or info.payload_digest != held[0] or info.payload_bytes != len(held[1]):
            raise NetError(ErrorCode.MALFORMED, "task names a held payload this worker lacks")
        if next(parts, None) is not None:
            raise NetError(ErrorCode.MALFORMED, "chunks followed a held-payload TaskInfo")
        return bytearray(held[1])

    def push_result(self, task: Task, payload: bytes, *, compute_s: float) -> None:
        """Send a result for ``task`` (over the bulk channel when the coordinator offers one and
        this client uses it, else as a ``PushResult`` stream); raises :class:`NetError` if the
        coordinator refuses it."""
        if self.bulk and self.bulk_port:
            try:
                self._push_bulk(task, payload, compute_s=compute_s)
                return
            except ssl.SSLCertVerificationError as exc:
                raise TLSHandshakeError(f"bulk channel: {exc}") from None
            except OSError as exc:
                # e.g. a restarted coordinator listens on another bulk port, or a firewall drops
                # it: gRPC (with its retries and the re-registration they lead to, which tells
                # the port again) is the channel that always works; until then, only gRPC
                log.warning("bulk upload failed (%s); pushing by gRPC until registered again", exc)
                self.bulk_port = 0
        chunks = split(payload)
        info = pb.ResultInfo(
            header=self.header(round_=task.round, task_id=task.task_id),
            client_id=task.client_id,
            payload_bytes=len(payload),
            num_chunks=len(chunks),
            compute_s=compute_s,
        )
        self.push_parts(
            itertools.chain([pb.ResultPart(info=info)], (pb.ResultPart(chunk=c) for c in chunks))
        )

    def _push_bulk(self, task: Task, payload: bytes, *, compute_s: float) -> None:
        """One result over the bulk channel (:mod:`fedkit.net.bulk`), one attempt."""
        info = pb.ResultInfo(
            header=self.header(round_=task.round, task_id=task.task_id),
            client_id=task.client_id,
            payload_bytes=len(payload),
            compute_s=compute_s,
            payload_sha256=hashlib.sha256(payload).digest(),
        )
        host, _ = split_address(self.address)

        def sent(n: int) -> None:
            self.bytes_sent += n

        connect_s = min(BULK_CONNECT_S, self.rpc_timeout_s)  # an unreachable port fails fast
        raw = socket.create_connection((host, self.bulk_port), timeout=connect_s)
        with contextlib.closing(raw):
            raw.settimeout(self.rpc_timeout_s * 4)  # the transfer, as a PushResult's deadline
            tls = self._bulk_tls
            sock = raw if tls is None else tls.wrap_socket(raw, server_hostname=host)
            with contextlib.closing(sock):
                bulk_push(sock, info, payload, sent=sent)

    def push_parts(self, parts: Iterator[pb.ResultPart]) -> None:
        """Send a raw result stream (exposed for protocol tests); raises on a typed refusal."""
        sent = list(parts)

        def counted() -> Iterator[pb.ResultPart]:
            for p in sent:
                self.bytes_sent += p.ByteSize()
                yield p

        ack: pb.Ack = call_with_retry(
            lambda: self._stub.PushResult(counted(), timeout=self.rpc_timeout_s * 4),
            self.retry,
            rng=self._rng,
        )
        raise_for(ack.error)
