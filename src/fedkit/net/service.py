"""The gRPC servicer: translates the four RPCs into :class:`~fedkit.net.broker.Broker` calls.

Every refusal is answered with a typed ``Error`` in the reply (never an exception text), so a
worker can react to the code; the servicer itself holds no state.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from fedkit.net.broker import Broker
from fedkit.net.errors import ErrorCode, NetError
from fedkit.net.proto import fedkit_pb2 as pb
from fedkit.net.proto import fedkit_pb2_grpc as pb_grpc
from fedkit.net.tls import peer_common_name

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Coordinator"].full_name
"""``fedkit.net.v1.Coordinator``."""


class CoordinatorService(pb_grpc.CoordinatorServicer):
    """Serves workers from a shared :class:`Broker`."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def Register(
        self, request: pb.RegisterRequest, context: grpc.ServicerContext
    ) -> pb.RegisterReply:
        """Admit a worker and issue its per-run token."""
        try:
            return self.broker.register(request, peer_common_name(context))
        except NetError as err:
            return pb.RegisterReply(error=err.to_proto())

    def GetTask(
        self, request: pb.GetTaskRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.TaskPart | bytes]:
        """Stream the worker's task info, then its payload chunks (already serialised)."""
        try:
            info, wire = self.broker.next_task(request, peer_common_name(context))
        except NetError as err:
            yield pb.TaskPart(info=pb.TaskInfo(error=err.to_proto()))
            return
        yield pb.TaskPart(info=info)
        yield from wire

    def PushResult(
        self, request_iterator: Iterator[pb.ResultPart], context: grpc.ServicerContext
    ) -> pb.Ack:
        """Receive one result: a ResultInfo, then its chunks."""
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "info":
            return pb.Ack(
                error=NetError(
                    ErrorCode.MALFORMED, "a result stream must start with ResultInfo"
                ).to_proto()
            )

        def chunks() -> Iterator[pb.Chunk]:
            for part in request_iterator:
                if part.WhichOneof("part") != "chunk":
                    raise NetError(ErrorCode.MALFORMED, "only chunks may follow ResultInfo")
                yield part.chunk

        try:
            self.broker.accept_result(first.info, chunks(), peer_common_name(context))
        except NetError as err:
            return pb.Ack(error=err.to_proto())
        return pb.Ack(error=pb.Error(code=pb.OK))

    def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.ServicerContext
    ) -> pb.HeartbeatReply:
        """Refresh liveness."""
        try:
            return self.broker.heartbeat(request, peer_common_name(context))
        except NetError as err:
            return pb.HeartbeatReply(error=err.to_proto())


def _serialize_part(part: pb.TaskPart | bytes) -> bytes:
    """``TaskPart`` serialiser that passes pre-serialised chunk messages through unchanged."""
    return part if isinstance(part, bytes) else part.SerializeToString()


def add_service(server: grpc.Server, broker: Broker) -> CoordinatorService:
    """Register a :class:`CoordinatorService` for ``broker`` on ``server``.

    The method table mirrors the generated one (same service and method names, same messages)
    except that ``GetTask`` accepts pre-serialised chunk messages, so a broadcast is serialised
    once per round rather than once per worker.
    """
    service = CoordinatorService(broker)
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
