"""Who masks with whom: every pair of the cohort (Bonawitz et al. 2017), or the neighbours on
a random k-regular graph (SecAgg+, Bell et al. 2020, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", §3: a Harary graph under a random permutation).

The Harary graph ``H(k, n)`` (``k`` even) puts the ``n`` clients on a ring and joins each to the
``k/2`` nearest on either side. The ring order is a permutation of the cohort drawn from the
round's *public* randomness (a 32-byte seed every party knows), by Fisher–Yates with indices
from the ChaCha20 keystream under that seed. Each client then shares its secrets among its
``k`` neighbours and itself instead of the whole cohort, so its work and traffic grow with
``k ≈ log n``, not ``n``. With ``k ≥ n − 1`` the graph is complete (the original protocol).
"""

from __future__ import annotations

from collections.abc import Sequence

from fedkit.privacy.secagg.crypto import KEY_BYTES, DerivedEntropy

__all__ = ["neighbourhoods", "ring_order"]


def ring_order(cohort: Sequence[int], public_seed: bytes) -> list[int]:
    """The cohort in a uniformly random order drawn from ``public_seed`` (Fisher–Yates; each
    index from 64 keystream bits reduced mod ``i + 1``, bias below ``n · 2^−64``)."""
    if len(public_seed) != KEY_BYTES:
        raise ValueError(f"the public seed has {KEY_BYTES} bytes, got {len(public_seed)}")
    order = list(cohort)
    raw = DerivedEntropy(public_seed).take("ring", 8 * len(order))
    for i in range(len(order) - 1, 0, -1):
        r = int.from_bytes(raw[8 * i : 8 * i + 8], "little") % (i + 1)
        order[i], order[r] = order[r], order[i]
    return order


def neighbourhoods(
    cohort: Sequence[int], degree: int | None, public_seed: bytes
) -> dict[int, tuple[int, ...]]:
    """Each client's neighbours (sorted, itself excluded).

    Args:
        cohort: the clients (distinct).
        degree: ``None`` for all pairs; else ``k`` (even, ``≥ 2``): the Harary graph
            ``H(k, n)`` on :func:`ring_order`, complete when ``k ≥ n − 1``.
        public_seed: the round's public randomness.
    """
    ids = list(cohort)
    n = len(ids)
    if degree is None or degree >= n - 1:
        return {u: tuple(sorted(v for v in ids if v != u)) for u in ids}
    if degree < 2 or degree % 2:
        raise ValueError(f"the SecAgg+ degree k must be even and >= 2, got {degree}")
    ring = ring_order(ids, public_seed)
    half = degree // 2
    out: dict[int, tuple[int, ...]] = {}
    for pos, u in enumerate(ring):
        near = {ring[(pos + d) % n] for d in range(-half, half + 1) if d != 0}
        out[u] = tuple(sorted(near))
    return out
