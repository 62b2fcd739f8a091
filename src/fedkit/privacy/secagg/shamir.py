"""Shamir t-of-n secret sharing over the prime field GF(p), p = 2^521 − 1 (Shamir 1979).

A secret ``s < p`` is the constant term of a random polynomial ``f`` of degree ``t − 1``;
holder ``x`` (an integer in ``1 .. p − 1``, here a client's position in the cohort plus one)
gets ``f(x)``. Any ``t`` shares give ``s = f(0) = Σ_j y_j Π_{m≠j} x_m / (x_m − x_j)`` (Lagrange
at zero, all mod ``p``); any ``t − 1`` shares are consistent with every secret, so they say
nothing about it. p is the Mersenne prime 2^521 − 1, larger than the 256-bit secrets shared
here (X25519 private keys and mask seeds), so a secret is one field element.

Shares from a peer are hostile: :func:`check_share` and :func:`reconstruct` refuse indices
and values outside the field, repeated indices and too few shares with :class:`ShamirError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from fedkit.privacy.secagg.errors import SecAggError

__all__ = [
    "FIELD_BYTES",
    "PRIME",
    "ShamirError",
    "Share",
    "check_share",
    "element_from_bytes",
    "reconstruct",
    "split",
]

PRIME = 2**521 - 1
"""The field's modulus, a Mersenne prime."""
FIELD_BYTES = 66
"""Bytes of a field element, big-endian (521 bits)."""
_SAMPLE_BYTES = 82  # 656 bits reduced mod p: statistical distance from uniform < 2^-135


class ShamirError(SecAggError):
    """Shares that cannot be used: too few, repeated indices, values outside the field."""


@dataclasses.dataclass(frozen=True)
class Share:
    """One share ``(x, f(x))``."""

    x: int
    y: int


def element_from_bytes(raw: bytes) -> int:
    """A field element (close to uniform) from :data:`_SAMPLE_BYTES` random bytes."""
    if len(raw) != _SAMPLE_BYTES:
        raise ShamirError(f"a field sample needs {_SAMPLE_BYTES} bytes, got {len(raw)}")
    return int.from_bytes(raw, "big") % PRIME


def sample_bytes(degree: int) -> int:
    """How many random bytes :func:`split` needs for a polynomial of ``degree``."""
    return degree * _SAMPLE_BYTES


def split(secret: int, threshold: int, xs: Sequence[int], randomness: bytes) -> list[Share]:
    """Share ``secret`` so that any ``threshold`` of the holders ``xs`` recover it.

    Args:
        secret: the field element to share (``0 ≤ secret < p``).
        threshold: ``t``, with ``1 ≤ t ≤ len(xs)``.
        xs: the holders' distinct indices, each in ``1 .. p − 1``.
        randomness: ``sample_bytes(t − 1)`` secret random bytes (the coefficients
            ``a_1 .. a_{t−1}``).

    Returns:
        ``[Share(x, f(x)) for x in xs]`` with ``f(z) = secret + a_1 z + … + a_{t−1} z^{t−1}``.
    """
    if not 0 <= secret < PRIME:
        raise ShamirError("secret is not a field element")
    if not 1 <= threshold <= len(xs):
        raise ShamirError(f"threshold must be in 1..{len(xs)} (holders), got {threshold}")
    _check_indices(xs)
    degree = threshold - 1
    if len(randomness) != sample_bytes(degree):
        raise ShamirError(f"need {sample_bytes(degree)} random bytes, got {len(randomness)}")
    coeffs = [secret] + [
        element_from_bytes(randomness[i * _SAMPLE_BYTES : (i + 1) * _SAMPLE_BYTES])
        for i in range(degree)
    ]
    out = []
    for x in xs:
        y = 0
        for a in reversed(coeffs):  # Horner
            y = (y * x + a) % PRIME
        out.append(Share(x, y))
    return out


def check_share(share: Share) -> Share:
    """``share`` if its index is in ``1 .. p − 1`` and its value in ``0 .. p − 1``."""
    if not isinstance(share.x, int) or not isinstance(share.y, int):
        raise ShamirError("a share's index and value must be integers")
    if not 0 < share.x < PRIME:
        raise ShamirError(f"share index {share.x} is outside 1..p-1")
    if not 0 <= share.y < PRIME:
        raise ShamirError("share value is outside the field")
    return share


def _check_indices(xs: Sequence[int]) -> None:
    for x in xs:
        if not isinstance(x, int) or not 0 < x < PRIME:
            raise ShamirError(f"share index {x!r} is outside 1..p-1")
    if len(set(xs)) != len(xs):
        raise ShamirError(f"share indices repeat: {sorted(xs)}")


def reconstruct(shares: Sequence[Share], threshold: int) -> int:
    """The secret from at least ``threshold`` shares (the first ``threshold`` are used).

    Raises:
        ShamirError: fewer than ``threshold`` shares, a repeated index, or a share outside the
            field.
    """
    if threshold < 1:
        raise ShamirError(f"threshold must be >= 1, got {threshold}")
    if len(shares) < threshold:
        raise ShamirError(f"{len(shares)} shares cannot reconstruct a {threshold}-of-n secret")
    for s in shares:
        check_share(s)
    _check_indices([s.x for s in shares])
    used = shares[:threshold]
    secret = 0
    for j, sj in enumerate(used):
        num, den = 1, 1
        for m, sm in enumerate(used):
            if m != j:
                num = num * sm.x % PRIME
                den = den * (sm.x - sj.x) % PRIME
        secret = (secret + sj.y * num * pow(den, -1, PRIME)) % PRIME
    return secret
