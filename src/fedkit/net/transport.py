"""gRPC servers and channels with fedkit's security policy and message limits.

Policy (documented in docs/deploy.md):

* With a certificate directory, everything is mutual TLS: the coordinator presents
  ``coordinator.pem`` and requires a worker certificate signed by the same CA.
* Without one, plaintext is allowed only on loopback addresses (127.0.0.0/8, ::1, localhost), which
  is what tests and ``fedkit launch`` use. Any other address refuses to start unless ``--insecure``
  is given explicitly.
* In every mode each worker message also carries the per-run token issued at registration.

Message sizes are set explicitly on both ends: one message is at most one 4 MiB chunk plus framing.
"""

from __future__ import annotations

import ipaddress
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc

from fedkit.net.codec import GRPC_MESSAGE_BYTES
from fedkit.net.tls import channel_credentials, load_bundle, server_credentials

GRPC_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", GRPC_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", GRPC_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    # Reconnect quickly after a coordinator restart (gRPC's default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]
SERVER_OPTIONS: list[tuple[str, int]] = [
    *GRPC_OPTIONS,
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.so_reuseport", 0),
]


@dataclass(frozen=True, kw_only=True)
class Security:
    """How a connection is protected.

    Attributes:
        cert_dir: Directory made by ``fedkit certs create``; None means plaintext.
        insecure: Explicit permission for plaintext on a non-loopback address.
    """

    cert_dir: Path | None = None
    insecure: bool = False

    @property
    def tls(self) -> bool:
        """Whether this is mutual TLS."""
        return self.cert_dir is not None


def split_address(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6) into host and port, validating both."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"address {address!r} must be HOST:PORT with a port in 0..65535")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names the loopback interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_policy(address: str, security: Security) -> None:
    """Refuse plaintext on a non-loopback address unless ``insecure`` was given explicitly."""
    host, _ = split_address(address)
    if security.cert_dir is None and not security.insecure and not is_loopback(host):
        raise PermissionError(
            f"refusing plaintext gRPC on non-loopback address {address!r}: pass --tls-dir DIR "
            "(made by `fedkit certs create`) for mutual TLS, or --insecure to allow plaintext"
        )


def make_server(address: str, security: Security, *, max_workers: int) -> tuple[grpc.Server, int]:
    """A gRPC server bound to ``address`` (port 0 picks a free port); returns it and its port.

    Raises:
        PermissionError: plaintext on a non-loopback address without ``insecure``.
        OSError: the address could not be bound.
    """
    check_policy(address, security)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fedkit-rpc"),
        options=SERVER_OPTIONS,
        maximum_concurrent_rpcs=max_workers,
    )
    if security.cert_dir is not None:
        port = server.add_secure_port(
            address, server_credentials(load_bundle(security.cert_dir, "coordinator"))
        )
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind gRPC server to {address!r}")
    return server, port


def make_channel(address: str, security: Security, *, identity: str) -> grpc.Channel:
    """A channel to the coordinator; under TLS it presents ``<identity>.pem`` from the cert dir."""
    check_policy(address, security)
    if security.cert_dir is not None:
        creds = channel_credentials(load_bundle(security.cert_dir, identity))
        return grpc.secure_channel(address, creds, options=GRPC_OPTIONS)
    return grpc.insecure_channel(address, options=GRPC_OPTIONS)
