"""What every party of one round of secure aggregation agrees on before it starts.

:class:`RoundSetup` fixes the cohort, the neighbourhood graph (all pairs or SecAgg+), the
threshold ``t``, the modulus ``2^bits``, the input length and a context string that binds every
derived key and every encrypted share to this round. The threshold is the smallest number of a
client's share holders (its neighbours and itself) that must take part for its secrets to be
reconstructed: ``t = ⌊threshold · h⌋ + 1`` (capped at ``h``) for ``h`` holders, so the default
``threshold = 0.5`` asks for a strict majority, which keeps fewer than half the holders (with
the server) from reconstructing both of a client's secrets (Bonawitz et al. 2017, Thm. 6.2:
security against an honest-but-curious server with fewer than ``t`` colluding clients).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math

from fedkit.privacy.secagg.crypto import KEY_BYTES
from fedkit.privacy.secagg.fixedpoint import MAX_BITS, MIN_BITS
from fedkit.privacy.secagg.graph import neighbourhoods

__all__ = ["MAX_CLIENT_ID", "RoundSetup", "threshold_of"]

MAX_CLIENT_ID = 2**63 - 1


def threshold_of(fraction: float, holders: int) -> int:
    """``t = min(h, ⌊fraction · h⌋ + 1)`` for ``h`` holders."""
    if not (0.0 <= fraction < 1.0):
        raise ValueError(f"threshold must be in [0, 1), got {fraction!r}")
    return min(holders, math.floor(fraction * holders) + 1)


@dataclasses.dataclass(frozen=True)
class RoundSetup:
    """The round's public parameters.

    Attributes:
        round: the round index.
        cohort: the selected clients (distinct ids in ``0 .. 2^63 − 1``), in any order.
        degree: ``None`` for all pairs, else the SecAgg+ degree ``k`` (even).
        threshold: the fraction in ``t = ⌊threshold · h⌋ + 1``.
        bits: inputs live in ``Z_{2^bits}``.
        length: the number of int64 words in each input.
        public_seed: 32 bytes of public randomness (the SecAgg+ graph).
    """

    round: int
    cohort: tuple[int, ...]
    degree: int | None
    threshold: float
    bits: int
    length: int
    public_seed: bytes
    _graph: dict[int, tuple[int, ...]] = dataclasses.field(
        init=False, repr=False, compare=False, hash=False
    )
    _index: dict[int, int] = dataclasses.field(init=False, repr=False, compare=False, hash=False)
    _context: bytes = dataclasses.field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if len(self.cohort) < 1:
            raise ValueError("the cohort is empty")
        for u in self.cohort:
            if isinstance(u, bool) or not isinstance(u, int) or not 0 <= u <= MAX_CLIENT_ID:
                raise ValueError(f"client id {u!r} is not an integer in 0..2^63-1")
        if len(set(self.cohort)) != len(self.cohort):
            raise ValueError("the cohort lists a client twice")
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"bits must be in {MIN_BITS}..{MAX_BITS}, got {self.bits}")
        if self.length < 0:
            raise ValueError(f"length must be >= 0, got {self.length}")
        if len(self.public_seed) != KEY_BYTES:
            raise ValueError(f"the public seed has {KEY_BYTES} bytes")
        threshold_of(self.threshold, 1)
        graph = neighbourhoods(self.cohort, self.degree, self.public_seed)
        object.__setattr__(self, "_graph", graph)
        object.__setattr__(self, "_index", {u: i + 1 for i, u in enumerate(sorted(self.cohort))})
        h = hashlib.sha256()
        h.update(b"fedkit/secagg/v1")
        for v in (self.round, self.bits, self.length, self.degree or 0, len(self.cohort)):
            h.update(v.to_bytes(8, "big", signed=True))
        for u in sorted(self.cohort):
            h.update(u.to_bytes(8, "big"))
        h.update(self.public_seed)
        object.__setattr__(self, "_context", h.digest())

    @property
    def context(self) -> bytes:
        """Bytes naming this round (round, cohort, graph seed, sizes): every derived key and
        associated-data field includes it, so nothing carries over between rounds (hashed once,
        in ``__post_init__``: every pairwise key and share reads it)."""
        return self._context

    def index(self, client: int) -> int:
        """The client's share index: its position in the sorted cohort, plus one."""
        return self._index[client]

    def neighbours(self, client: int) -> tuple[int, ...]:
        """The clients ``client`` masks with and shares its secrets to (sorted)."""
        return self._graph[client]

    def holders(self, client: int) -> tuple[int, ...]:
        """Who holds shares of ``client``'s secrets: its neighbours and itself (sorted)."""
        return tuple(sorted((*self._graph[client], client)))

    @property
    def t(self) -> int:
        """The threshold ``t`` (the same for every client: the graph is regular)."""
        return threshold_of(self.threshold, len(self.holders(self.cohort[0])))

    def member(self, client: object) -> bool:
        """Whether ``client`` is an id of this cohort."""
        return isinstance(client, int) and not isinstance(client, bool) and client in self._graph
