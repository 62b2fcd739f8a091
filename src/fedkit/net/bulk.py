"""The bulk result channel: a result's payload over one TCP connection (TLS under mutual TLS),
read straight into its buffer.

Why a second channel: over gRPC a result crosses as 4 MiB ``Chunk`` messages, and gRPC-Python
hands each one to the handler as a fresh ``bytes`` object that is then hashed and copied into the
reassembly buffer. Measured at 100 clients (``benchmarks/deploy_scale.py``), receiving alone cost
the coordinator about half of the in-process floor (hash + decode + fold). Here the coordinator's
``recv_into`` writes the bytes into the result's buffer and each piece is hashed where it lies:
no message objects, no second copy. Control messages (register, tasks, heartbeats, secure
aggregation) stay on gRPC; a worker that does not use this channel pushes by ``PushResult`` as
before, and a coordinator may offer no channel at all (``[deploy] bulk = false``).

The exchange (integers little-endian; docs/protocol.md, "Bulk channel")::

    worker → coordinator   b"FKB1", u32 n, ResultInfo (n bytes, n ≤ 64 KiB)
    coordinator → worker   u32 m, Ack (m bytes): OK ("go"), or a typed refusal and close
    worker → coordinator   the payload: exactly ResultInfo.payload_bytes bytes
    coordinator → worker   u32 m, Ack: the result's verdict, then close

``ResultInfo`` carries the worker's header (run, round, task, worker id and per-run token), so a
bulk upload is authenticated exactly as a ``PushResult`` is, and its ``payload_sha256`` is checked
against the bytes received. Everything the peer sends is hostile and bounded: the magic, the info's
length (64 KiB), the declared payload against the result cap before anything is allocated, the
result schema as soon as the safetensors header is in, the round's deadline, and silence (the
:class:`~fedkit.net.guard.StreamGuard` watchdog shuts a connection down ``idle_s`` after its last
byte; a connection that has not sent its info yet is *pending* and counts against its address's
pending limit, as a gRPC stream does). Connections beyond ``max_connections`` are closed at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator

from fedkit.net.broker import Broker
from fedkit.net.codec import Buffer, check_declared, header_in
from fedkit.net.errors import ErrorCode, NetError, raise_for
from fedkit.net.guard import StreamGuard
from fedkit.net.identity import IdentityError, PeerIdentity
from fedkit.net.proto import fedkit_pb2 as pb
from fedkit.net.tls import socket_identity

__all__ = [
    "MAGIC",
    "BulkServer",
    "SocketUpload",
    "push",
    "read_ack",
    "read_frame",
    "read_info",
    "write_frame",
]

log = logging.getLogger("fedkit.coordinator")

MAGIC = b"FKB1"
"""First bytes of a bulk upload (fedkit bulk, version 1)."""
MAX_FRAME_BYTES = 64 * 1024
"""Largest ``ResultInfo`` or ``Ack`` frame either side accepts."""
READ_BYTES = 1 << 20
"""Most bytes one ``recv_into`` asks for (a piece, between two deadline checks)."""
_LEN = struct.Struct("<I")


def _read_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes; ``MALFORMED`` if the peer closes first."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise NetError(ErrorCode.MALFORMED, f"connection closed after {got} of {n} B")
        got += k
    return bytes(buf)


def read_frame(sock: socket.socket) -> bytes:
    """One length-prefixed frame (at most :data:`MAX_FRAME_BYTES`)."""
    (n,) = _LEN.unpack(_read_exact(sock, _LEN.size))
    if n > MAX_FRAME_BYTES:
        raise NetError(ErrorCode.MALFORMED, f"frame of {n} B exceeds {MAX_FRAME_BYTES} B")
    return _read_exact(sock, n)


def write_frame(sock: socket.socket, data: bytes) -> None:
    """Send one length-prefixed frame."""
    sock.sendall(_LEN.pack(len(data)) + data)


def _ack(error: pb.Error) -> bytes:
    data: bytes = pb.Ack(error=error).SerializeToString()
    return data


def read_ack(sock: socket.socket) -> None:
    """Read the coordinator's ``Ack`` frame; raise its typed refusal, if any.

    Raises:
        NetError: the coordinator's refusal.
        ConnectionError: no readable ``Ack`` came (closed, cut, or not a frame): the channel
            failed, which says nothing about the result (the worker then uses ``PushResult``).
    """
    try:
        ack = pb.Ack.FromString(read_frame(sock))
    except NetError as err:
        raise ConnectionError(f"bulk channel: no verdict ({err.detail})") from None
    except Exception:  # protobuf's DecodeError
        raise ConnectionError("bulk channel: the verdict does not parse") from None
    raise_for(ack.error)


def read_info(sock: socket.socket) -> pb.ResultInfo:
    """The upload's opening: the magic, then its ``ResultInfo``; ``MALFORMED`` otherwise."""
    if _read_exact(sock, len(MAGIC)) != MAGIC:
        raise NetError(ErrorCode.MALFORMED, "not a fedkit bulk upload (bad magic)")
    raw = read_frame(sock)
    try:
        info: pb.ResultInfo = pb.ResultInfo.FromString(raw)
    except Exception:  # protobuf's DecodeError; nothing else can come out of a parse
        raise NetError(ErrorCode.MALFORMED, "ResultInfo does not parse") from None
    return info


class SocketUpload:
    """A payload read from a socket into its buffer (:class:`~fedkit.net.codec.Upload`).

    Args:
        sock: The connection, positioned after the info.
        declared_bytes: ``ResultInfo.payload_bytes``: checked against ``max_bytes`` before the
            buffer is allocated.
        digest: ``ResultInfo.payload_sha256``: the whole payload's SHA-256.
        max_bytes: The result cap.
        on_read: Called after every piece (the watchdog's refresh).
        was_cut: Whether the watchdog shut the connection down (then an early end is
            ``DEADLINE_PASSED``: silent too long or past the round's deadline).
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        declared_bytes: int,
        digest: bytes,
        max_bytes: int,
        on_read: Callable[[], None] = lambda: None,
        was_cut: Callable[[], bool] = lambda: False,
    ) -> None:
        check_declared(declared_bytes, max_bytes)
        if len(digest) != hashlib.sha256().digest_size:
            raise NetError(ErrorCode.MALFORMED, "a bulk upload must declare its payload's SHA-256")
        self._sock = sock
        self._digest = digest
        self._on_read = on_read
        self._was_cut = was_cut
        self._buf = bytearray(declared_bytes)
        self._got = 0
        self._hash = hashlib.sha256()

    @property
    def header_received(self) -> bool:
        """Whether the safetensors header is in (it is checked before the rest is read)."""
        return header_in(self._buf, self._got)

    @property
    def complete(self) -> bool:
        """Whether every declared byte has arrived."""
        return self._got == len(self._buf)

    def peek(self) -> bytearray:
        """The buffer as filled so far."""
        return self._buf

    def pieces(self) -> Iterator[None]:
        """Tell the worker to go on, then read the payload into the buffer, hashing each piece
        where it landed; ``MALFORMED`` if the connection closes early."""
        write_frame(self._sock, _ack(pb.Error(code=pb.OK)))
        n = len(self._buf)
        with memoryview(self._buf) as view:
            while self._got < n:
                try:
                    k = self._sock.recv_into(view[self._got : min(n, self._got + READ_BYTES)])
                except TimeoutError:  # the socket's own limit, a backstop to the watchdog
                    k = -1
                if k <= 0:
                    if k < 0 or self._was_cut():
                        raise NetError(
                            ErrorCode.DEADLINE_PASSED,
                            "upload cut: silent too long or past the round's deadline",
                        )
                    raise NetError(ErrorCode.MALFORMED, f"upload ended after {self._got} of {n} B")
                self._hash.update(view[self._got : self._got + k])
                self._got += k
                self._on_read()
                yield None

    def result(self) -> bytearray:
        """The payload, once complete and matching its declared SHA-256."""
        if not self.complete:
            raise NetError(
                ErrorCode.MALFORMED, f"payload incomplete: {self._got}/{len(self._buf)} B"
            )
        if not hmac.compare_digest(self._hash.digest(), self._digest):
            raise NetError(ErrorCode.CHECKSUM_MISMATCH, "payload SHA-256 mismatch")
        return self._buf


class _Conn:
    """The watchdog's handle on a connection (:class:`~fedkit.net.guard.Cancellable`): cancelling
    shuts its reading side down, which ends a blocked read (the verdict can still be sent)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def cancel(self) -> None:
        # the plain socket's shutdown, also under TLS: a reader blocked on it wakes up
        with contextlib.suppress(OSError):  # already closed
            socket.socket.shutdown(self.sock, socket.SHUT_RD)


class BulkServer:
    """Accepts bulk uploads for a :class:`~fedkit.net.broker.Broker` (see module docstring).

    Args:
        broker: Where results go (:meth:`Broker.accept_upload`).
        host: Address to bind (the gRPC server's host).
        port: Port to bind (0: any free port; :attr:`port` tells which).
        guard: The gRPC service's guard: pending limits per address and the idle / deadline
            watchdog apply to bulk connections too.
        tls: The server's mutual-TLS context (None: plaintext, as the gRPC server).
        max_connections: Connections served at once; more are closed on arrival.
    """

    def __init__(
        self,
        broker: Broker,
        *,
        host: str,
        port: int = 0,
        guard: StreamGuard,
        tls: ssl.SSLContext | None = None,
        max_connections: int = 64,
    ) -> None:
        self.broker = broker
        self.guard = guard
        self.tls = tls
        self._slots = threading.BoundedSemaphore(max_connections)
        v6 = ":" in host
        self._listener = socket.create_server(
            (host, port),
            family=socket.AF_INET6 if v6 else socket.AF_INET,
            backlog=128,
            # "[::]" takes IPv4 workers too, as the gRPC server bound to it does
            dualstack_ipv6=v6 and host == "::" and socket.has_dualstack_ipv6(),
        )
        self._listener.settimeout(0.2)  # the accept loop looks at the stop flag this often
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="fedkit-bulk", daemon=True)
        self.refused = 0
        """Connections closed on arrival because ``max_connections`` were busy."""
        self.accepted = 0
        """Results accepted over this channel."""

    def start(self) -> None:
        """Start accepting."""
        self._thread.start()

    def close(self) -> None:
        """Stop accepting (uploads in progress finish or are cut by their deadline)."""
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=2.0)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            if not self._slots.acquire(blocking=False):
                self.refused += 1
                conn.close()
                continue
            threading.Thread(
                target=self._serve, args=(conn, str(addr[0])), name="fedkit-bulk-conn", daemon=True
            ).start()

    def _serve(self, raw: socket.socket, host: str) -> None:
        conn = _Conn(raw)
        # the key gRPC's guard uses for the same address (fedkit.net.service.peer_host)
        peer = f"ipv6:[{host}]" if ":" in host else f"ipv4:{host}"
        watch = self.guard.watch(conn, pending_peer=peer)
        try:
            # the watchdog cuts a silent connection after idle_s; the socket's own timeout is
            # a backstop (e.g. a TLS handshake that never finishes)
            raw.settimeout(2 * self.guard.idle_s + 1.0)
            if self.tls is not None:
                conn.sock = self.tls.wrap_socket(raw, server_side=True)
            identity = self._identity(conn.sock)
            info = read_info(conn.sock)
            watch.touch()

            def upload(cap: int) -> SocketUpload:
                return SocketUpload(
                    conn.sock,
                    declared_bytes=info.payload_bytes,
                    digest=info.payload_sha256,
                    max_bytes=cap,
                    on_read=watch.touch,
                    was_cut=lambda: watch.cut,
                )

            self.broker.accept_upload(info, upload, identity, limit=watch.limit, touch=watch.touch)
            self.accepted += 1
            write_frame(conn.sock, _ack(pb.Error(code=pb.OK)))
        except NetError as err:
            if watch.cut and err.code is ErrorCode.MALFORMED:  # the watchdog ended its reading
                err = NetError(ErrorCode.DEADLINE_PASSED, "connection cut: silent too long")
            self._tell(conn.sock, err)
        except (OSError, ValueError) as exc:  # reset, TLS failure, cut by the watchdog, closed
            log.debug("bulk connection from %s dropped: %s", host, exc)
            if watch.cut or isinstance(exc, TimeoutError):
                self._tell(conn.sock, NetError(ErrorCode.DEADLINE_PASSED, "connection cut"))
        finally:
            watch.done()
            conn.sock.close()
            self._slots.release()

    def _identity(self, sock: socket.socket) -> PeerIdentity | None:
        if not isinstance(sock, ssl.SSLSocket):
            return None
        try:
            return socket_identity(sock)
        except IdentityError as exc:
            raise NetError(ErrorCode.UNAUTHENTICATED, str(exc)) from None

    @staticmethod
    def _tell(sock: socket.socket, err: NetError) -> None:
        """Best effort: the peer may already be gone."""
        with contextlib.suppress(OSError):
            write_frame(sock, _ack(err.to_proto()))


def push(
    sock: socket.socket, info: pb.ResultInfo, payload: Buffer, *, sent: Callable[[int], None]
) -> None:
    """Send one result over a connected bulk socket (the worker's side).

    ``info.payload_sha256`` must be set. ``sent`` is told the bytes written.

    Raises:
        NetError: the coordinator's typed refusal (before or after the payload).
        OSError: the connection failed (transient: the caller's retry policy decides).
    """
    raw = info.SerializeToString()
    head = MAGIC + _LEN.pack(len(raw)) + raw
    sock.sendall(head)
    sent(len(head))
    read_ack(sock)  # "go", or a refusal before any payload byte is sent
    try:
        sock.sendall(payload)
    except OSError as exc:
        # refused mid-upload: the verdict may still be waiting in the receive buffer
        try:
            read_ack(sock)
        except (OSError, NetError):
            raise exc from None
        raise
    sent(len(payload))
    read_ack(sock)
