"""Certificates for a deployment, and the TLS credentials built from them.

``fedkit certs create`` makes a small private PKI with ``cryptography``: a CA, one server
certificate for the coordinator (its host names / IPs as subject alternative names, plus
localhost) and one client certificate per worker (common name ``worker-<i>``, serving client id
*i*: SAN URI ``fedkit:client:<i>``). ``fedkit certs issue`` adds a worker certificate for any set of
client ids (``--clients 0,2-4``) with the same CA. The coordinator requires a client certificate
signed by the CA (mutual TLS) and lets it serve only the client ids it names
(:mod:`fedkit.net.identity`). Private keys are written with mode 0600.

Layout of a certificate directory::

    ca.pem  ca.key  coordinator.pem  coordinator.key  worker-0.pem  worker-0.key  ...
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedkit.net.identity import ClientIds, IdentityError, PeerIdentity, identity_of

COORDINATOR_NAME = "fedkit-coordinator"


@dataclass(frozen=True, kw_only=True)
class CertBundle:
    """PEM bytes of one party's key, certificate, and the CA that both sides trust."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, secret: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _issue(
    *,
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    days: int,
    server_hosts: list[str] | None,
    clients: ClientIds | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if server_hosts is not None:
        names = list(dict.fromkeys([*server_hosts, "localhost", "127.0.0.1", "::1"]))
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san(h) for h in names]), critical=False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        uris = [x509.UniformResourceIdentifier(u) for u in (clients or ClientIds()).uris()]
        if uris:
            builder = builder.add_extension(x509.SubjectAlternativeName(uris), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def create_certs(
    out: Path, *, coordinator_hosts: list[str], workers: int, days: int = 365
) -> list[Path]:
    """Create a CA, a coordinator certificate and ``workers`` worker certificates under ``out``.

    Args:
        out: Directory to write into (created if missing).
        coordinator_hosts: Host names or IP addresses workers use to reach the coordinator.
        workers: Number of worker certificates (``worker-0`` ... ``worker-<N-1>``; worker *i*
            may serve client id *i*).
        days: Validity period.

    Returns:
        The files written.
    """
    if workers < 1:
        raise ValueError(f"workers={workers} must be >= 1")
    if not coordinator_hosts:
        raise ValueError("coordinator_hosts must name at least one host or IP address")
    out.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedkit deployment CA")])
    now = dt.datetime.now(dt.UTC)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    written: list[Path] = []

    def emit(name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        _write(out / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM), secret=False)
        _write(out / f"{name}.key", _pem_key(key), secret=True)
        written.extend([out / f"{name}.pem", out / f"{name}.key"])

    emit("ca", ca_cert, ca_key)
    key = _key()
    cert = _issue(
        subject=COORDINATOR_NAME, key=key, ca_key=ca_key, ca_name=ca_name, days=days,
        server_hosts=coordinator_hosts,
    )  # fmt: skip
    emit("coordinator", cert, key)
    for i in range(workers):
        key = _key()
        ids = ClientIds.of([(i, i)])
        cert = _issue(
            subject=f"worker-{i}", key=key, ca_key=ca_key, ca_name=ca_name, days=days,
            server_hosts=None, clients=ids,
        )  # fmt: skip
        emit(f"worker-{i}", cert, key)
    return written


def issue_worker(cert_dir: Path, name: str, clients: ClientIds, *, days: int = 365) -> list[Path]:
    """Issue ``<name>.pem`` / ``<name>.key`` in ``cert_dir`` with the CA there (``ca.pem``,
    ``ca.key``): a worker certificate that may serve ``clients`` (one machine serving several
    client ids).

    Raises:
        FileNotFoundError: the CA files are missing.
        ValueError: no client ids, a bad name, or a name that would overwrite the CA's or the
            coordinator's files.
    """
    if not clients:
        raise ValueError("a worker certificate must name at least one client id")
    if (
        not name
        or name in ("ca", "coordinator")
        or not all(c.isalnum() or c in "-_." for c in name)
    ):
        raise ValueError(f"certificate name {name!r}: letters, digits, '-', '_' or '.'; not ca")
    ca_pem, ca_key_path = cert_dir / "ca.pem", cert_dir / "ca.key"
    for p in (ca_pem, ca_key_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found; create the CA with `fedkit certs create`")
    ca_cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_key_path} is not the EC key `fedkit certs create` writes")
    key = _key()
    cert = _issue(
        subject=name, key=key, ca_key=ca_key, ca_name=ca_cert.subject, days=days,
        server_hosts=None, clients=clients,
    )  # fmt: skip
    paths = [cert_dir / f"{name}.pem", cert_dir / f"{name}.key"]
    _write(paths[0], cert.public_bytes(serialization.Encoding.PEM), secret=False)
    _write(paths[1], _pem_key(key), secret=True)
    return paths


def load_bundle(cert_dir: Path, name: str) -> CertBundle:
    """Read ``ca.pem`` and ``<name>.pem`` / ``<name>.key`` from ``cert_dir``.

    Raises:
        FileNotFoundError: naming the missing file and how to create it.
    """
    paths = [cert_dir / "ca.pem", cert_dir / f"{name}.pem", cert_dir / f"{name}.key"]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(
                f"TLS file {p} not found; create a deployment's certificates with "
                f"`fedkit certs create --out {cert_dir} --coordinator-host HOST --workers N`"
            )
    ca, cert, key = (p.read_bytes() for p in paths)
    return CertBundle(ca_pem=ca, cert_pem=cert, key_pem=key)


def server_credentials(bundle: CertBundle) -> grpc.ServerCredentials:
    """Server credentials that require a client certificate signed by the CA (mutual TLS)."""
    return grpc.ssl_server_credentials(
        [(bundle.key_pem, bundle.cert_pem)],
        root_certificates=bundle.ca_pem,
        require_client_auth=True,
    )


def channel_credentials(bundle: CertBundle) -> grpc.ChannelCredentials:
    """Client credentials presenting the worker certificate and trusting only the CA."""
    return grpc.ssl_channel_credentials(
        root_certificates=bundle.ca_pem,
        private_key=bundle.key_pem,
        certificate_chain=bundle.cert_pem,
    )


def server_ssl_context(cert_dir: Path) -> ssl.SSLContext:
    """The bulk channel's server side of mutual TLS: presents ``coordinator.pem`` and requires a
    worker certificate signed by the CA (the same policy as :func:`server_credentials`)."""
    bundle = load_bundle(cert_dir, "coordinator")  # checks every file exists, with advice
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_dir / "coordinator.pem", cert_dir / "coordinator.key")
    ctx.load_verify_locations(cadata=bundle.ca_pem.decode("ascii"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_ssl_context(cert_dir: Path, name: str) -> ssl.SSLContext:
    """The bulk channel's worker side of mutual TLS: presents ``<name>.pem``, trusts only the CA
    and checks the coordinator's host name (the same policy as :func:`channel_credentials`)."""
    bundle = load_bundle(cert_dir, name)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the peer and its host name
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cadata=bundle.ca_pem.decode("ascii"))
    ctx.load_cert_chain(cert_dir / f"{name}.pem", cert_dir / f"{name}.key")
    return ctx


def socket_identity(sock: ssl.SSLSocket) -> PeerIdentity:
    """The worker identity of a bulk connection's verified client certificate.

    Raises:
        IdentityError: no certificate, or one that may serve no client (see
            :func:`peer_identity`).
    """
    der = sock.getpeercert(binary_form=True)
    if not der:
        raise IdentityError("the connection presented no client certificate")
    return identity_of(ssl.DER_cert_to_PEM_cert(der).encode("ascii"))


def peer_identity(context: grpc.ServicerContext) -> PeerIdentity | None:
    """The worker identity of the client certificate on this call, or None without mutual TLS.

    Raises:
        IdentityError: the certificate (already verified against the CA by TLS) may not serve
            any client: a CA certificate, one not for client authentication, or one naming no
            client ids.
    """
    pem = context.auth_context().get("x509_pem_cert")
    if not pem:
        return None
    first = pem[0] if isinstance(pem, list) else pem
    return identity_of(first if isinstance(first, bytes) else str(first).encode())


__all__ = [
    "COORDINATOR_NAME",
    "CertBundle",
    "IdentityError",
    "channel_credentials",
    "client_ssl_context",
    "create_certs",
    "issue_worker",
    "load_bundle",
    "peer_identity",
    "server_credentials",
    "server_ssl_context",
    "socket_identity",
]
