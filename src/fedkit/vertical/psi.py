"""Private set intersection by commutative blinding with X25519 (DH-style PSI).

The protocol of Meadows 1986 / Huberman, Franklin & Hogg 1999 ("Enhancing privacy and trust in
electronic communities"), as used to align samples in vertical FL (Hardy et al. 2017; Google's
``private-join-and-compute`` uses the same DDH idea). With ``H`` a hash to a curve point and
``[k]P`` X25519's scalar multiplication, blinding commutes::

    X25519(a, X25519(b, H(x))) == X25519(b, X25519(a, H(x)))

because both are ``[a·b] H(x)`` (with the clamped scalars). So:

1. the sender (the label party) with secret ``a`` sends ``A = {[a] H(x) : x ∈ X}`` in a random
   order;
2. the responder with secret ``b`` returns ``[b] A`` (same order) and ``B = {[b] H(y) : y ∈ Y}``
   in a random order of its own;
3. the sender computes ``[a] B`` and matches it against ``[b] A``: equal points are exactly the
   common ids (up to a hash collision, probability about ``|X||Y| / 2^252``);
4. the sender tells the responder the agreed order as *positions into the responder's own list*
   ``B``; no id, and no hash of an id, crosses the wire, only points blinded by a secret scalar.

Only the sender learns which ids are common (and both learn the intersection's size and each
other's set sizes), the semi-honest guarantee of the protocol under DDH on Curve25519. Every
message is checked (point sizes, counts, positions) before use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

__all__ = ["MAX_IDS", "PsiError", "PsiResponder", "PsiSender", "blind", "hash_to_point"]

POINT_BYTES = 32
MAX_IDS = 10_000_000
"""Most ids one party may send (a larger message is refused before any work)."""

_DOMAIN = b"fedkit-psi-v1:"


class PsiError(ValueError):
    """A PSI message that does not fit the protocol (wrong sizes, counts or positions)."""


def hash_to_point(ident: str) -> bytes:
    """``H(x)``: SHA-256 of the domain-separated id, read as an X25519 u-coordinate."""
    return hashlib.sha256(_DOMAIN + ident.encode("utf-8")).digest()


def blind(scalar: X25519PrivateKey, point: bytes) -> bytes:
    """``[k] P``: X25519 of the secret scalar with the u-coordinate ``point``.

    Raises:
        PsiError: ``point`` is not 32 bytes or is of small order (X25519 gives all zeros).
    """
    if len(point) != POINT_BYTES:
        raise PsiError(f"a PSI point is {POINT_BYTES} bytes, got {len(point)}")
    try:
        return scalar.exchange(X25519PublicKey.from_public_bytes(point))
    except ValueError as e:  # the all-zero result of a small-order point
        raise PsiError(f"a PSI point of small order was refused ({e})") from None


def _check_points(points: Sequence[bytes], what: str) -> None:
    if len(points) > MAX_IDS:
        raise PsiError(f"{what}: {len(points)} points, more than {MAX_IDS}")
    if any(not isinstance(p, bytes) or len(p) != POINT_BYTES for p in points):
        raise PsiError(f"{what}: every point must be {POINT_BYTES} bytes")


def _shuffled(n: int) -> list[int]:
    order = list(range(n))
    for i in range(n - 1, 0, -1):  # Fisher–Yates from the OS's CSPRNG: the order is a secret
        j = secrets.randbelow(i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def _distinct(ids: Sequence[str]) -> list[str]:
    if len(set(ids)) != len(ids):
        raise PsiError("ids must be distinct")
    if len(ids) > MAX_IDS:
        raise PsiError(f"{len(ids)} ids, more than {MAX_IDS}")
    return list(ids)


@dataclasses.dataclass(frozen=True)
class Intersection:
    """The sender's result.

    Attributes:
        ids: the common ids, in the sender's order of ``ids`` (the agreed sample order).
        positions: for each of ``ids``, its position in the responder's blinded list.
    """

    ids: tuple[str, ...]
    positions: tuple[int, ...]


class PsiSender:
    """The party that learns the intersection (the label party)."""

    def __init__(self, ids: Sequence[str]) -> None:
        self._ids = _distinct(ids)
        self._key = X25519PrivateKey.generate()
        self._order = _shuffled(len(self._ids))

    def first(self) -> list[bytes]:
        """``[a] H(x)`` for every own id, in a random order."""
        return [blind(self._key, hash_to_point(self._ids[i])) for i in self._order]

    def finish(
        self, double_blinded: Sequence[bytes], peer_blinded: Sequence[bytes]
    ) -> Intersection:
        """Match ``[b][a]H(x)`` with ``[a][b]H(y)``; the common ids and the responder's positions.

        Raises:
            PsiError: a malformed reply.
        """
        _check_points(double_blinded, "double-blinded")
        _check_points(peer_blinded, "responder's points")
        if len(double_blinded) != len(self._ids):
            raise PsiError(
                f"the reply has {len(double_blinded)} double-blinded points for {len(self._ids)}"
            )
        theirs = {blind(self._key, p): j for j, p in enumerate(peer_blinded)}
        if len(theirs) != len(peer_blinded):
            raise PsiError("the responder's points are not distinct")
        found: dict[int, int] = {}
        for k, point in enumerate(double_blinded):
            j = theirs.get(point)
            if j is not None:
                found[self._order[k]] = j
        mine = sorted(found)
        return Intersection(
            ids=tuple(self._ids[i] for i in mine), positions=tuple(found[i] for i in mine)
        )


class PsiResponder:
    """The other party: blinds what it is sent, and its own ids; learns only the agreed order."""

    def __init__(self, ids: Sequence[str]) -> None:
        self._ids = _distinct(ids)
        self._key = X25519PrivateKey.generate()
        self._order = _shuffled(len(self._ids))

    def respond(self, points: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
        """``[b]`` of each received point (same order) and ``[b] H(y)`` of its ids (shuffled)."""
        _check_points(points, "sender's points")
        double = [blind(self._key, p) for p in points]
        own = [blind(self._key, hash_to_point(self._ids[i])) for i in self._order]
        return double, own

    def align(self, positions: Sequence[int]) -> list[int]:
        """Indices into this party's ``ids`` in the agreed order.

        Raises:
            PsiError: a position out of range or repeated.
        """
        n = len(self._ids)
        if len(set(positions)) != len(positions) or any(not 0 <= p < n for p in positions):
            raise PsiError(f"positions must be distinct and in [0, {n})")
        return [self._order[p] for p in positions]

    def ids_at(self, rows: Sequence[int]) -> list[str]:
        """This party's own ids at ``rows`` (local use only)."""
        return [self._ids[r] for r in rows]
