"""Who may serve which client id: certificates (mutual TLS) and enrolment secrets (plaintext).

Without a binding, any worker certificate — or, in plaintext mode, any process that reaches the
port — could register as any client id, and the first to register a client id holds it while it
heartbeats, locking the honest worker out. Two bindings, one per transport mode:

* **Mutual TLS.** A worker certificate names the client ids it may serve as subject alternative
  name URIs: ``fedkit:client:3`` for one id, ``fedkit:client:10-19`` for an inclusive range
  (``fedkit certs create --workers N`` gives ``worker-i`` the id ``i``; ``fedkit certs issue
  --clients 0,2-4`` makes one certificate for several). The coordinator reads the peer's
  certificate on every call (:func:`identity_of`) and refuses a registration, task or result for
  an id it does not name, a CA certificate (``basicConstraints: CA``) and a certificate not issued
  for client authentication (the coordinator's own, for one).
* **Plaintext.** An enrolment secret per client id, derived from a run secret the coordinator
  keeps: ``secret_i = HMAC-SHA256(run_secret, "fedkit-enrolment" || i)`` (RFC 2104). The operator
  hands worker *i* only ``client-i.secret`` (``fedkit secrets create``); a process without it cannot
  register as client *i*, so registering ids first locks nobody out. The secret travels in the
  registration request, so it protects against other local processes and peers that cannot read
  the traffic, not against an eavesdropper (that is what mutual TLS is for).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

CLIENT_URI = "fedkit:client:"
"""Prefix of the SAN URIs naming a certificate's client ids."""
SECRET_BYTES = 32
"""Length of a run secret and of each client's enrolment secret (SHA-256 output)."""
_SPAN = re.compile(r"^(\d{1,9})(?:-(\d{1,9}))?$")


class IdentityError(ValueError):
    """A peer certificate that cannot serve any client, or an unusable secret file."""


@dataclass(frozen=True)
class ClientIds:
    """A set of client ids as sorted, disjoint inclusive spans (``0, 2-4``)."""

    spans: tuple[tuple[int, int], ...] = ()

    def __contains__(self, client_id: object) -> bool:
        if isinstance(client_id, str):
            if not client_id.isdigit():
                return False
            client_id = int(client_id)
        if not isinstance(client_id, int) or isinstance(client_id, bool):
            return False
        return any(lo <= client_id <= hi for lo, hi in self.spans)

    def __bool__(self) -> bool:
        return bool(self.spans)

    def __str__(self) -> str:
        return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.spans) or "none"

    @classmethod
    def of(cls, spans: list[tuple[int, int]]) -> ClientIds:
        """Merge overlapping or adjacent spans."""
        merged: list[tuple[int, int]] = []
        for lo, hi in sorted(spans):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
            else:
                merged.append((lo, hi))
        return cls(tuple(merged))

    @classmethod
    def parse(cls, text: str) -> ClientIds:
        """``"0,2-4"`` → ids 0, 2, 3, 4.

        Raises:
            IdentityError: an item that is not ``N`` or ``LO-HI`` with ``LO <= HI``.
        """
        spans = [_span(item.strip(), text) for item in text.split(",") if item.strip()]
        if not spans:
            raise IdentityError(f"client ids {text!r}: give ids or ranges such as 0,2-4")
        return cls.of(spans)

    def ids(self) -> list[int]:
        """Every id, ascending."""
        return [c for lo, hi in self.spans for c in range(lo, hi + 1)]

    def uris(self) -> list[str]:
        """The SAN URIs naming these ids."""
        return [CLIENT_URI + (str(lo) if lo == hi else f"{lo}-{hi}") for lo, hi in self.spans]


def _span(item: str, text: str) -> tuple[int, int]:
    m = _SPAN.match(item)
    if m is None or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
        raise IdentityError(f"client ids {text!r}: {item!r} is not N or LO-HI (LO <= HI)")
    lo = int(m.group(1))
    return lo, int(m.group(2) or lo)


@dataclass(frozen=True)
class PeerIdentity:
    """A worker certificate as the coordinator sees it.

    Attributes:
        name: The certificate's common name (for messages and logs).
        fingerprint: SHA-256 of the certificate's DER bytes (what registrations are bound to).
        clients: The client ids it may serve.
    """

    name: str
    fingerprint: str
    clients: ClientIds


@functools.lru_cache(maxsize=4096)
def _identity(pem: bytes) -> PeerIdentity:
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise IdentityError(f"peer certificate cannot be read: {exc}") from None
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    name = str(cn[0].value) if cn else cert.subject.rfc4514_string()
    try:
        ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        ca = False
    if ca:
        raise IdentityError(f"certificate {name!r} is a CA certificate, not a worker certificate")
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is None or ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
        raise IdentityError(f"certificate {name!r} is not issued for client authentication")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    spans = [_span(u[len(CLIENT_URI) :], u) for u in uris if u.startswith(CLIENT_URI)]
    if not spans:
        raise IdentityError(
            f"certificate {name!r} names no client ids (SAN URI {CLIENT_URI}N); issue one with "
            "`fedkit certs issue --clients IDS` or `fedkit certs create`"
        )
    der = cert.public_bytes(serialization.Encoding.DER)
    return PeerIdentity(
        name=name, fingerprint=hashlib.sha256(der).hexdigest(), clients=ClientIds.of(spans)
    )


def identity_of(pem: bytes) -> PeerIdentity:
    """The identity of a verified peer certificate (PEM), checked for use as a worker's.

    Raises:
        IdentityError: a CA certificate, one without client authentication, or one naming no
            client ids.
    """
    return _identity(bytes(pem))


# ------------------------------------------------------------------------ enrolment secrets
def client_secret(run_secret: bytes, client_id: str) -> str:
    """Client ``client_id``'s enrolment secret (hex): HMAC-SHA256 of the id under the run
    secret."""
    msg = b"fedkit-enrolment\x00" + client_id.encode("ascii")
    return hmac.new(run_secret, msg, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Enrolment:
    """The coordinator's check of enrolment secrets (see module docstring)."""

    run_secret: bytes

    def admits(self, client_id: str, presented: str) -> bool:
        """Whether ``presented`` is client ``client_id``'s secret (constant-time compare)."""
        if not client_id.isdigit():
            return False
        want = client_secret(self.run_secret, client_id).encode()
        return hmac.compare_digest(want, presented.strip().encode("utf-8", "replace"))


def read_secret(path: Path) -> str:
    """A secret file's hex content (one line of 64 hex digits).

    Raises:
        IdentityError: the file is missing, unreadable or not such a line.
    """
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise IdentityError(
            f"secret file {path} cannot be read ({exc}); make one with `fedkit secrets create`"
        ) from None
    if not re.fullmatch(f"[0-9a-f]{{{2 * SECRET_BYTES}}}", text):
        raise IdentityError(
            f"secret file {path} is not {2 * SECRET_BYTES} hex digits; make one with "
            "`fedkit secrets create`"
        )
    return text


def load_enrolment(path: Path) -> Enrolment:
    """The coordinator's :class:`Enrolment` from a run secret file."""
    return Enrolment(bytes.fromhex(read_secret(path)))


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text + "\n")


def create_secrets(out: Path, *, clients: int) -> list[Path]:
    """Write ``run.secret`` (the coordinator's) and ``client-<i>.secret`` for ``i < clients``
    (mode 0600) under ``out``; give worker *i* only its own file."""
    if clients < 1:
        raise ValueError(f"clients={clients} must be >= 1")
    out.mkdir(parents=True, exist_ok=True)
    run_secret = secrets.token_bytes(SECRET_BYTES)
    written = [out / "run.secret"]
    _write_secret(written[0], run_secret.hex())
    for i in range(clients):
        p = out / f"client-{i}.secret"
        _write_secret(p, client_secret(run_secret, str(i)))
        written.append(p)
    return written
