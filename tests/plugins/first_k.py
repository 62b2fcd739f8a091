"""A user sampler: the ``k`` clients after ``offset`` (cyclically), every round."""

from __future__ import annotations

import dataclasses

from fedkit.algorithm import RoundInfo


@dataclasses.dataclass(frozen=True, kw_only=True)
class FirstK:
    """Clients ``offset, offset+1, …`` (mod the population)."""

    offset: int = 0

    def __post_init__(self) -> None:
        if self.offset < 0:
            raise ValueError(f"offset must be >= 0, got {self.offset!r}")

    def sample(self, num_clients: int, k: int, info: RoundInfo) -> list[int]:
        """``k`` consecutive client ids, sorted."""
        return sorted((self.offset + i) % num_clients for i in range(k))
