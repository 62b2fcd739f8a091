"""The gRPC servicer: translates the four RPCs into :class:`~fedkit.net.broker.Broker` calls.

Every refusal is answered with a typed ``Error`` in the reply (never an exception text), so a
worker can react to the code. Streams are guarded (:mod:`fedkit.net.guard`): a peer may hold only
a few result streams whose first message has not arrived (a newer one evicts its oldest), and
every stream is cancelled after ``idle_s`` without a message or at its round's deadline.
Under mutual TLS every call's certificate is read (:func:`fedkit.net.tls.peer_identity`): one that
may serve no client (a CA certificate, the coordinator's, one naming no client ids) is refused
with ``UNAUTHENTICATED`` before the broker sees the call.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from fedkit.net.broker import Broker
from fedkit.net.errors import ErrorCode, NetError
from fedkit.net.guard import StreamGuard
from fedkit.net.identity import IdentityError, PeerIdentity
from fedkit.net.proto import fedkit_pb2 as pb
from fedkit.net.proto import fedkit_pb2_grpc as pb_grpc
from fedkit.net.tls import peer_identity

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Coordinator"].full_name
"""``fedkit.net.v1.Coordinator``."""


class CoordinatorService(pb_grpc.CoordinatorServicer):
    """Serves workers from a shared :class:`Broker`."""

    def __init__(self, broker: Broker, guard: StreamGuard | None = None) -> None:
        self.broker = broker
        self.guard = guard or StreamGuard()

    def Register(
        self, request: pb.RegisterRequest, context: grpc.ServicerContext
    ) -> pb.RegisterReply:
        """Admit a worker and issue its per-run token."""
        try:
            return self.broker.register(request, _identity(context))
        except NetError as err:
            return pb.RegisterReply(error=err.to_proto())

    def GetTask(
        self, request: pb.GetTaskRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.TaskPart | bytes]:
        """Stream the worker's task info, then its payload chunks (already serialised)."""
        try:
            info, wire = self.broker.next_task(request, _identity(context))
        except NetError as err:
            yield pb.TaskPart(info=pb.TaskInfo(error=err.to_proto()))
            return
        watch = self.guard.watch(context)  # a reader too slow to take a chunk is cut
        try:
            yield pb.TaskPart(info=info)
            for part in wire:
                watch.touch()
                yield part
        finally:
            watch.done()

    def PushResult(
        self, request_iterator: Iterator[pb.ResultPart], context: grpc.ServicerContext
    ) -> pb.Ack:
        """Receive one result: a ResultInfo, then its chunks (guarded, see module docstring)."""
        try:
            identity = _identity(context)
        except NetError as err:  # refused before a message is read: nothing is held
            return pb.Ack(error=err.to_proto())
        peer = identity.fingerprint if identity is not None else peer_host(context.peer())
        watch = self.guard.watch(context, pending_peer=peer)
        try:
            first = next(request_iterator, None)
            watch.touch()
            if first is None or first.WhichOneof("part") != "info":
                return pb.Ack(
                    error=NetError(
                        ErrorCode.MALFORMED, "a result stream must start with ResultInfo"
                    ).to_proto()
                )

            def chunks() -> Iterator[pb.Chunk]:
                for part in request_iterator:
                    watch.touch()
                    if part.WhichOneof("part") != "chunk":
                        raise NetError(ErrorCode.MALFORMED, "only chunks may follow ResultInfo")
                    yield part.chunk

            self.broker.accept_result(
                first.info, chunks(), identity, limit=watch.limit, touch=watch.touch
            )
        except NetError as err:
            return pb.Ack(error=err.to_proto())
        except grpc.RpcError:  # cut by the watchdog (idle, or past the round's deadline)
            return pb.Ack(error=NetError(ErrorCode.DEADLINE_PASSED, "result stream cut").to_proto())
        finally:
            watch.done()
        return pb.Ack(error=pb.Error(code=pb.OK))

    def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.ServicerContext
    ) -> pb.HeartbeatReply:
        """Refresh liveness."""
        try:
            return self.broker.heartbeat(request, _identity(context))
        except NetError as err:
            return pb.HeartbeatReply(error=err.to_proto())


def _identity(context: grpc.ServicerContext) -> PeerIdentity | None:
    """The call's worker identity (None without mutual TLS); a certificate that may serve no
    client is ``UNAUTHENTICATED``."""
    try:
        return peer_identity(context)
    except IdentityError as exc:
        raise NetError(ErrorCode.UNAUTHENTICATED, str(exc)) from None


def peer_host(peer: str) -> str:
    """The address part of a gRPC peer string (``ipv4:10.0.0.5:5123`` → ``ipv4:10.0.0.5``):
    one key for every connection from the same host."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host, _, port = rest.rpartition(":")
        return f"{kind}:{host}" if port.isdigit() and host else peer
    return peer


def _serialize_part(part: pb.TaskPart | bytes) -> bytes:
    """``TaskPart`` serialiser that passes pre-serialised chunk messages through unchanged."""
    return part if isinstance(part, bytes) else part.SerializeToString()


def add_service(
    server: grpc.Server, broker: Broker, guard: StreamGuard | None = None
) -> CoordinatorService:
    """Register a :class:`CoordinatorService` for ``broker`` on ``server``.

    The method table mirrors the generated one (same service and method names, same messages)
    except that ``GetTask`` accepts pre-serialised chunk messages, so a broadcast is serialised
    once per round rather than once per worker.
    """
    service = CoordinatorService(broker, guard)
    handlers = {
        "Register": grpc.unary_unary_rpc_method_handler(
            service.Register,
            request_deserializer=pb.RegisterRequest.FromString,
            response_serializer=pb.RegisterReply.SerializeToString,
        ),
        "GetTask": grpc.unary_stream_rpc_method_handler(
            service.GetTask,
            request_deserializer=pb.GetTaskRequest.FromString,
            response_serializer=_serialize_part,
        ),
        "PushResult": grpc.stream_unary_rpc_method_handler(
            service.PushResult,
            request_deserializer=pb.ResultPart.FromString,
            response_serializer=pb.Ack.SerializeToString,
        ),
        "Heartbeat": grpc.unary_unary_rpc_method_handler(
            service.Heartbeat,
            request_deserializer=pb.HeartbeatRequest.FromString,
            response_serializer=pb.HeartbeatReply.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    return service
