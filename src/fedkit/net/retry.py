"""Bounded retries with exponential backoff and full jitter for transient gRPC failures.

``UNAVAILABLE`` (coordinator down or restarting), ``DEADLINE_EXCEEDED`` and
``RESOURCE_EXHAUSTED`` (the server's concurrent-call limit) are
transient: they are retried for an outage window (``outage_s``, default 60 s — long enough to cover
a coordinator restart) or ``max_attempts``, whichever ends first. Anything else (a typed refusal,
an authentication failure) is raised at once. A TLS handshake failure also surfaces as
``UNAVAILABLE``, but no retry can fix a certificate, so it is turned into
:class:`~fedkit.net.errors.TLSHandshakeError` immediately (fail fast).

Delay before attempt ``k`` (k >= 1) is uniform in ``[0, min(max_delay_s, base_delay_s *
multiplier**(k-1))]`` ("full jitter", Brooker 2015), which spreads reconnecting workers out.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from fedkit.net.errors import TLSHandshakeError

T = TypeVar("T")

TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
_TLS_MARKERS = ("ssl", "tls", "handshake", "certificate")


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How often and how patiently to retry a transient failure.

    Attributes:
        max_attempts: Total attempts including the first (>= 1).
        base_delay_s: Upper bound of the first backoff (> 0).
        max_delay_s: Cap on any single backoff (>= base_delay_s).
        multiplier: Growth of the bound per attempt (>= 1).
        outage_s: Stop retrying once this long has passed since the first attempt (> 0).
    """

    max_attempts: int = 1_000
    base_delay_s: float = 0.1
    max_delay_s: float = 2.0
    multiplier: float = 2.0
    outage_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts={self.max_attempts} must be >= 1")
        if self.base_delay_s <= 0:
            raise ValueError(f"base_delay_s={self.base_delay_s} must be > 0")
        if self.max_delay_s < self.base_delay_s:
            raise ValueError(f"max_delay_s={self.max_delay_s} must be >= base_delay_s")
        if self.multiplier < 1:
            raise ValueError(f"multiplier={self.multiplier} must be >= 1")
        if not self.outage_s > 0:
            raise ValueError(f"outage_s={self.outage_s} must be > 0")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Backoff before retry number ``attempt`` (1-based), with full jitter."""
        bound = min(self.max_delay_s, self.base_delay_s * self.multiplier ** (attempt - 1))
        return rng.uniform(0.0, bound)


def is_tls_failure(err: grpc.RpcError) -> bool:
    """Whether an RPC error is a TLS handshake / certificate failure."""
    if not isinstance(err, grpc.Call) or err.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    detail = (err.details() or "").lower()
    return any(m in detail for m in _TLS_MARKERS)


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    rng: random.Random | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[int, grpc.RpcError], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Call ``fn`` until it succeeds, a non-transient error occurs, or attempts or the outage
    window (``policy.outage_s``) run out.

    Raises:
        TLSHandshakeError: at the first TLS failure (never retried).
        grpc.RpcError: the last error, when it is not transient or attempts are exhausted.
    """
    rng = rng or random.Random()
    attempt = 0
    start = clock()
    while True:
        attempt += 1
        try:
            return fn()
        except grpc.RpcError as err:
            if is_tls_failure(err):
                detail = err.details() if isinstance(err, grpc.Call) else str(err)
                raise TLSHandshakeError(
                    f"TLS handshake with the coordinator failed ({detail}); check that the worker "
                    "certificate and the coordinator certificate come from the same "
                    "`fedkit certs create` directory and that the host name is in the "
                    "coordinator certificate"
                ) from None
            code = err.code() if isinstance(err, grpc.Call) else None
            if code not in TRANSIENT or attempt >= policy.max_attempts:
                raise
            delay = policy.delay(attempt, rng)
            if clock() + delay - start > policy.outage_s:
                raise
            if on_retry is not None:
                on_retry(attempt, err)
            sleep(delay)
