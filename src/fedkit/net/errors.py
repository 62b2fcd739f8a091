"""Typed errors of the deployment protocol.

Every reply on the wire carries an :class:`ErrorCode` (mirroring ``ErrorCode`` in
``proto/fedkit.proto``); on the Python side a failure is a :class:`NetError` holding that code, so
callers branch on a typed value instead of parsing messages.
"""

from __future__ import annotations

import enum

from fedkit.net.proto import fedkit_pb2 as pb


class ErrorCode(enum.IntEnum):
    """Why the coordinator (or the codec) refused a message. Values equal the protobuf enum."""

    OK = pb.OK
    UNAUTHENTICATED = pb.UNAUTHENTICATED
    UNKNOWN_WORKER = pb.UNKNOWN_WORKER
    RUN_MISMATCH = pb.RUN_MISMATCH
    STALE_ROUND = pb.STALE_ROUND
    DUPLICATE_RESULT = pb.DUPLICATE_RESULT
    UNKNOWN_TASK = pb.UNKNOWN_TASK
    PAYLOAD_TOO_LARGE = pb.PAYLOAD_TOO_LARGE
    MALFORMED = pb.MALFORMED
    CHECKSUM_MISMATCH = pb.CHECKSUM_MISMATCH
    SCHEMA_MISMATCH = pb.SCHEMA_MISMATCH
    DEADLINE_PASSED = pb.DEADLINE_PASSED
    CLIENT_TAKEN = pb.CLIENT_TAKEN
    INTERNAL = pb.INTERNAL
    UNSUPPORTED_VERSION = pb.UNSUPPORTED_VERSION


class NetError(Exception):
    """A protocol-level failure with a typed :class:`ErrorCode` and a human-readable detail."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(f"{code.name}: {detail}")
        self.code = code
        self.detail = detail

    def to_proto(self) -> pb.Error:
        """The wire form of this error."""
        return pb.Error(code=pb.ErrorCode.ValueType(self.code), detail=self.detail)


class TLSHandshakeError(ConnectionError):
    """The TLS handshake with the coordinator failed: wrong CA, certificate or host name.

    Not retried: retrying cannot fix a certificate problem, so the worker stops at once.
    """


def ok() -> pb.Error:
    """The wire form of success."""
    return pb.Error(code=pb.OK, detail="")


def raise_for(error: pb.Error) -> None:
    """Raise :class:`NetError` unless ``error`` is OK (an unset error counts as malformed)."""
    if error.code == pb.OK:
        return
    try:
        code = ErrorCode(error.code)
    except ValueError:
        code = ErrorCode.INTERNAL
    if error.code == pb.ERROR_CODE_UNSPECIFIED:
        code = ErrorCode.MALFORMED
    raise NetError(code, error.detail or "no detail given")
