"""Feature parties as separate processes over gRPC (the ``VerticalParty`` service).

A feature party process serves :class:`PartyServicer` on ``127.0.0.1``: the label party runs PSI
with it (``Psi``, then ``Align`` with positions into the party's own blinded list), then drives
training with ``Forward`` (activations of a batch of aligned rows) and ``Backward`` (the
gradient for those activations). :class:`RemoteParty` is the label party's stub; it satisfies
:class:`fedkit.vertical.split.Party`, so :func:`~fedkit.vertical.split.train_vertical` runs the
same loop over processes as in one process.

Tensors cross as safetensors (:mod:`fedkit.net.codec`), checked against the expected name,
dtype and shape before they are made; PSI messages are checked by :mod:`fedkit.vertical.psi`.
A request that does not fit gets ``INVALID_ARGUMENT`` with the reason.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from typing import Any, TypeVar

import grpc
import torch
from torch import Tensor, nn

from fedkit.local import LocalTraining
from fedkit.net.codec import TensorSpec, decode, encode
from fedkit.net.errors import NetError
from fedkit.vertical.proto import vertical_pb2 as pb
from fedkit.vertical.proto import vertical_pb2_grpc as pb_grpc
from fedkit.vertical.psi import Intersection, PsiError, PsiResponder, PsiSender
from fedkit.vertical.split import FeatureParty

__all__ = ["PartyServicer", "RemoteParty", "serve_party"]

T = TypeVar("T")

MESSAGE_BYTES = 64 * 1024 * 1024
"""gRPC message cap both ways (a PSI message of a million 32-byte points fits)."""

_OPTIONS = [
    ("grpc.max_send_message_length", MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MESSAGE_BYTES),
]


def _tensor_bytes(t: Tensor) -> bytes:
    return encode({"t": t.detach().to(torch.float32).contiguous()})


def _tensor(data: bytes, shape: tuple[int, ...]) -> Tensor:
    """The one float32 tensor of ``shape`` in a safetensors payload (checked first)."""
    t = (
        decode(data, template={"t": TensorSpec(dtype=torch.float32, shape=shape)})
        .tensors["t"]
        .clone()
    )
    if not bool(torch.isfinite(t).all()):
        raise ValueError("a tensor with non-finite values")
    return t


class PartyServicer(pb_grpc.VerticalPartyServicer):
    """One feature party: its ids and columns per split, its bottom model, its optimiser.

    Args:
        ids: ``{split: sample ids}`` this party holds.
        features: ``{split: features}`` with rows in the order of ``ids``.
        bottom: the party's bottom model.
        local: optimiser settings.
    """

    def __init__(
        self,
        ids: Mapping[str, Sequence[str]],
        features: Mapping[str, Tensor],
        bottom: nn.Module,
        local: LocalTraining,
    ) -> None:
        self._ids = ids
        self._features = features
        self._bottom = bottom
        self._local = local
        self._psi: dict[str, PsiResponder] = {}
        self._aligned: dict[str, Tensor] = {}
        self._party: FeatureParty | None = None
        self._lock = threading.Lock()
        self.done = threading.Event()

    def _guard(self, context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
        with self._lock:
            try:
                return fn()
            except (ValueError, PsiError, NetError, KeyError) as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{type(e).__name__}: {e}")
                raise AssertionError("unreachable: abort raises") from e

    def Psi(self, request: pb.Points, context: grpc.ServicerContext) -> pb.PsiReply:
        def run() -> pb.PsiReply:
            if request.split not in self._ids:
                raise ValueError(f"unknown split {request.split!r}")
            responder = PsiResponder(self._ids[request.split])
            self._psi[request.split] = responder
            double, own = responder.respond(list(request.points))
            return pb.PsiReply(double_blinded=double, blinded=own)

        return self._guard(context, run)

    def Align(self, request: pb.Alignment, context: grpc.ServicerContext) -> pb.Ack:
        def run() -> pb.Ack:
            responder = self._psi.get(request.split)
            if responder is None:
                raise ValueError(f"Align for split {request.split!r} before its Psi")
            rows = responder.align(list(request.positions))
            self._aligned[request.split] = self._features[request.split][rows]
            self._party = FeatureParty(self._bottom, dict(self._aligned), self._local)
            return pb.Ack(count=len(rows))

        return self._guard(context, run)

    def _ready(self) -> FeatureParty:
        if self._party is None:
            raise ValueError("Forward/Backward before Align")
        return self._party

    def Forward(self, request: pb.Batch, context: grpc.ServicerContext) -> pb.Tensor:
        def run() -> pb.Tensor:
            rows = torch.tensor(list(request.rows), dtype=torch.int64)
            h = self._ready().forward(request.split, request.step, rows, request.train)
            return pb.Tensor(safetensors=_tensor_bytes(h))

        return self._guard(context, run)

    def Backward(self, request: pb.Gradient, context: grpc.ServicerContext) -> pb.Ack:
        def run() -> pb.Ack:
            party = self._ready()
            pending = party.pending_shape(request.step)
            party.backward(request.step, _tensor(request.safetensors, pending))
            return pb.Ack(count=1)

        return self._guard(context, run)

    def Bye(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.Ack:
        del request, context
        self.done.set()
        return pb.Ack(count=0)


def serve_party(servicer: PartyServicer, port: int = 0) -> tuple[grpc.Server, int]:
    """Start a server for ``servicer`` on ``127.0.0.1:port`` (0: a free port); returns the port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=_OPTIONS)
    pb_grpc.add_VerticalPartyServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, bound


class RemoteParty:
    """The label party's view of a remote feature party (a :class:`~fedkit.vertical.split.Party`).

    Args:
        target: ``host:port`` of the party's server.
        embedding: the width of its activations (checked on every reply).
        timeout: seconds for each call.
    """

    def __init__(self, target: str, embedding: int, *, timeout: float = 120.0) -> None:
        self._channel = grpc.insecure_channel(target, options=_OPTIONS)
        self._stub = pb_grpc.VerticalPartyStub(self._channel)  # type: ignore[no-untyped-call]
        self._embedding = embedding
        self._timeout = timeout
        self.bytes_sent = 0
        self.bytes_received = 0

    def _call(self, method: Callable[..., Any], request: Any) -> Any:
        self.bytes_sent += request.ByteSize()
        reply = method(request, timeout=self._timeout, wait_for_ready=True)
        self.bytes_received += reply.ByteSize()
        return reply

    def psi(self, split: str, sender: PsiSender) -> Intersection:
        """Run PSI for ``split`` (the label party is the sender); nothing is aligned yet."""
        reply = self._call(self._stub.Psi, pb.Points(split=split, points=sender.first()))
        return sender.finish(list(reply.double_blinded), list(reply.blinded))

    def align(self, split: str, positions: Sequence[int]) -> int:
        """Tell the party the agreed order of ``split`` (positions into its blinded list)."""
        return int(
            self._call(self._stub.Align, pb.Alignment(split=split, positions=positions)).count
        )

    def forward(self, split: str, step: int, rows: Tensor, train: bool) -> Tensor:
        batch = pb.Batch(split=split, step=step, rows=rows.tolist(), train=train)
        reply = self._call(self._stub.Forward, batch)
        return _tensor(reply.safetensors, (rows.numel(), self._embedding))

    def backward(self, step: int, grad: Tensor) -> None:
        self._call(self._stub.Backward, pb.Gradient(step=step, safetensors=_tensor_bytes(grad)))

    def close(self) -> None:
        """Tell the party training is over and close the channel."""
        try:
            self._stub.Bye(pb.Empty(), timeout=10.0)
        finally:
            self._channel.close()
