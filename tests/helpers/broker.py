"""Pushing a result straight into a :class:`~fedkit.net.broker.Broker` (no sockets), as a fake
worker of the broker-level tests does."""

from __future__ import annotations

from fedkit.net.broker import Broker
from fedkit.net.codec import CHUNK_BYTES, split
from fedkit.net.proto import fedkit_pb2 as pb


def push_result(
    broker: Broker,
    reply: pb.RegisterReply,
    cid: int,
    task: pb.TaskInfo,
    payload: bytes,
    chunk_bytes: int = CHUNK_BYTES,
) -> None:
    """Send ``payload`` as client ``cid``'s result for ``task``; a refusal raises ``NetError``."""
    chunks = split(payload, chunk_bytes)
    rinfo = pb.ResultInfo(
        header=pb.Header(run_id=reply.run_id, round=task.header.round,
                         task_id=task.header.task_id, worker_id=reply.worker_id,
                         token=reply.token),
        client_id=str(cid), payload_bytes=len(payload), num_chunks=len(chunks),
    )  # fmt: skip
    broker.accept_result(rinfo, iter(chunks), None)
