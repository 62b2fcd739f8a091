"""The errors of secure aggregation: a hostile or malformed message, and a round that aborts.

Every input from a peer (a client's message at the server, the server's message at a client)
is checked before use; what fails a check raises :class:`SecAggError` naming the sender and
what was wrong. A round that cannot finish without revealing something it must not (fewer
than ``t`` clients left) raises :class:`SecAggAbort` with an :class:`AbortReason`: the server
never returns a partial sum.
"""

from __future__ import annotations

import enum

from fedkit.aggregate import AggregationAborted

__all__ = ["AbortReason", "SecAggAbort", "SecAggError"]


class SecAggError(ValueError):
    """A message that breaks the protocol: wrong sizes, ids, keys, field elements, duplicates,
    a failed authentication, or a step out of order."""


class AbortReason(enum.Enum):
    """Why a round of secure aggregation stopped (Bonawitz et al. 2017, Fig. 4: each round
    aborts when fewer than ``t`` clients remain)."""

    TOO_FEW_ADVERTISED = "fewer than t clients advertised keys"
    TOO_FEW_SHARED = "fewer than t clients shared keys"
    TOO_FEW_MASKED = "fewer than t clients sent a masked input"
    TOO_FEW_SURVIVORS = "fewer than t clients answered the unmasking round"
    BAD_SECRET = "a reconstructed secret failed its check (a share holder lied)"


class SecAggAbort(AggregationAborted):
    """The round is refused: no sum is returned and nothing is committed.

    Attributes:
        reason: what fell short.
    """

    def __init__(self, reason: AbortReason, detail: str) -> None:
        super().__init__(f"secure aggregation aborted ({reason.name}): {reason.value}; {detail}")
        self.reason = reason
