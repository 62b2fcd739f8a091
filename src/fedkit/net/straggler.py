"""Straggler-aware load balancing from measured round-trip times.

Each accepted result gives the client's round-trip time ``rtt`` for a share ``f`` of the full local
work, so ``rtt / f`` estimates its time for the full work; an exponential moving average smooths
it. A client ``k`` times slower than the median of the known clients is given ``1 / k`` of the work
(never less than ``min_fraction``, never more than 1), so slow workers finish near the others.
Unknown clients get the full work. Disabled, everyone gets 1.0 (what seeded parity needs).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass(kw_only=True)
class StragglerPolicy:
    """Per-client work fractions from round-trip times (see module docstring).

    Attributes:
        enabled: Whether to balance at all.
        min_fraction: Floor of a client's work fraction, in (0, 1].
        smoothing: Weight of the newest measurement in the moving average, in (0, 1].
    """

    enabled: bool = False
    min_fraction: float = 0.25
    smoothing: float = 0.5
    full_time: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < self.min_fraction <= 1:
            raise ValueError(f"min_fraction={self.min_fraction} must be in (0, 1]")
        if not 0 < self.smoothing <= 1:
            raise ValueError(f"smoothing={self.smoothing} must be in (0, 1]")

    def observe(self, client_id: int, rtt_s: float, work_fraction: float) -> None:
        """Record one round trip of ``client_id`` that did ``work_fraction`` of the work."""
        if rtt_s <= 0 or work_fraction <= 0:
            return
        est = rtt_s / work_fraction
        old = self.full_time.get(client_id)
        self.full_time[client_id] = est if old is None else old + self.smoothing * (est - old)

    def fraction(self, client_id: int) -> float:
        """The share of the full local work to give ``client_id`` next round."""
        if not self.enabled or client_id not in self.full_time or len(self.full_time) < 2:
            return 1.0
        median = statistics.median(self.full_time.values())
        mine = self.full_time[client_id]
        if mine <= median:
            return 1.0
        return max(self.min_fraction, median / mine)
