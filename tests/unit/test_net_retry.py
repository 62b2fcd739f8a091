"""Retries: bounded exponential backoff with full jitter, only for transient gRPC errors, and
immediate failure on a TLS handshake error."""

from __future__ import annotations

import random

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedkit.net.errors import TLSHandshakeError
from fedkit.net.retry import RetryPolicy, call_with_retry


class FakeRpcError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    # grpc.Call's other abstract methods are not used by the retry logic.
    def initial_metadata(self) -> None: ...
    def trailing_metadata(self) -> None: ...
    def is_active(self) -> bool: ...
    def time_remaining(self) -> None: ...
    def cancel(self) -> None: ...
    def add_callback(self, callback: object) -> None: ...


def failing(errors: list[FakeRpcError], value: int = 42) -> tuple[list[int], object]:
    calls: list[int] = []

    def fn() -> int:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return value

    return calls, fn


def test_transient_errors_are_retried_with_growing_bounded_delays() -> None:
    sleeps: list[float] = []
    errs = [
        FakeRpcError(grpc.StatusCode.UNAVAILABLE),
        FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED),
    ]
    calls, fn = failing(errs)
    policy = RetryPolicy(max_attempts=5, base_delay_s=0.1, max_delay_s=1.0)
    assert call_with_retry(fn, policy, sleep=sleeps.append, rng=random.Random(0)) == 42  # type: ignore[arg-type]
    assert len(calls) == 3 and len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.1 and 0 <= sleeps[1] <= 0.2


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,  # a full server or too many pending streams
    ],
)
def test_transient_codes_are_retried(code: grpc.StatusCode) -> None:
    calls, fn = failing([FakeRpcError(code)] * 2)
    call_with_retry(fn, RetryPolicy(), sleep=lambda s: None)  # type: ignore[arg-type]
    assert len(calls) == 3


def test_retries_last_the_outage_window_then_stop() -> None:
    # a fake clock: every sleep advances it; the default window (60 s) covers a ~30 s restart
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    calls, fn = failing([FakeRpcError(grpc.StatusCode.UNAVAILABLE)] * 10_000)
    with pytest.raises(grpc.RpcError):
        call_with_retry(fn, RetryPolicy(), sleep=sleep, clock=lambda: now[0])  # type: ignore[arg-type]
    assert 30.0 < now[0] <= 60.0 and len(calls) > 10  # far more than the old 10 attempts


def test_attempts_are_bounded() -> None:
    calls, fn = failing([FakeRpcError(grpc.StatusCode.UNAVAILABLE)] * 10)
    with pytest.raises(grpc.RpcError):
        call_with_retry(fn, RetryPolicy(max_attempts=3), sleep=lambda s: None)  # type: ignore[arg-type]
    assert len(calls) == 3


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL],
)
def test_non_transient_errors_are_not_retried(code: grpc.StatusCode) -> None:
    calls, fn = failing([FakeRpcError(code)])
    with pytest.raises(grpc.RpcError):
        call_with_retry(fn, RetryPolicy(), sleep=lambda s: None)  # type: ignore[arg-type]
    assert len(calls) == 1


def test_tls_failure_fails_fast_with_clear_error() -> None:
    calls, fn = failing(
        [
            FakeRpcError(
                grpc.StatusCode.UNAVAILABLE, "Ssl handshake failed: CERTIFICATE_VERIFY_FAILED"
            )
        ]
    )
    with pytest.raises(TLSHandshakeError, match="fedkit certs create"):
        call_with_retry(fn, RetryPolicy(max_attempts=10), sleep=lambda s: None)  # type: ignore[arg-type]
    assert len(calls) == 1


@given(st.integers(1, 40), st.floats(0.001, 1.0), st.floats(1.0, 4.0), st.integers(0, 2**32))
def test_delay_is_within_full_jitter_bounds(
    attempt: int, base: float, mult: float, seed: int
) -> None:
    p = RetryPolicy(base_delay_s=base, max_delay_s=2.0 + base, multiplier=mult)
    d = p.delay(attempt, random.Random(seed))
    assert 0 <= d <= min(p.max_delay_s, base * mult ** (attempt - 1))


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"base_delay_s": 0}, "base_delay_s"),
        ({"max_delay_s": 0.01}, "max_delay_s"),
        ({"multiplier": 0.5}, "multiplier"),
    ],
)
def test_policy_validation_names_the_field(kw: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RetryPolicy(**kw)  # type: ignore[arg-type]
