"""Norm bounding: Sun et al. 2019, "Can You Really Backdoor Federated Learning?".

The SERVER scales every update it receives to L2 norm at most ``M`` before the weighted mean:

    Δ_i ← Δ_i · min(1, M / ‖Δ_i‖₂)        (the norm over every tensor of the update together)

so one client moves the mean by at most ``α_i M / Σ α_j`` however large the update it sends. That
defeats the boosted ("model replacement") updates of a backdoor attack, which need a large norm.
It tolerates any number of bad clients in the sense that each one's influence is bounded; it does
not reject any of them. The clipping is applied in ``add`` (on the server), not in ``prepare``:
``prepare`` runs on the client, and an attacker skips it. (Client-side clipping for differential
privacy is :class:`fedkit.privacy.clip.ClipNorm`; both measure the norm with
:func:`fedkit.privacy.clip.global_norm`.)

A streaming rule: it holds one model's worth (the ``inner`` accumulator; the weighted mean by
default) and reduces across ranks as ``inner`` does. An update with a NaN or infinite value is
refused with :class:`fedkit.aggregate.NonFiniteUpdateError` (the core seam already refuses one
before any aggregator; this guards direct use).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from fedkit.aggregate import NonFiniteUpdateError, Stage
from fedkit.params import tree_map
from fedkit.privacy.clip import global_norm


@dataclasses.dataclass(frozen=True, kw_only=True)
class NormBound(Stage):
    """Scale each received update to L2 norm at most ``max_norm``, then fold it into ``inner``.

    Attributes:
        max_norm: the bound ``M`` (> 0) on each update's L2 norm.
        inner: the next stage (the weighted mean by default).
    """

    max_norm: float = 1.0

    def __post_init__(self) -> None:
        if not (self.max_norm > 0 and math.isfinite(self.max_norm)):
            raise ValueError(f"max_norm must be a finite number > 0, got {self.max_norm!r}")

    def add(self, acc: Any, update: Any, weight: float) -> Any:
        """Fold ``Δ · min(1, M / ‖Δ‖)`` into ``acc`` with the inner stage's ``add``."""
        norm = global_norm(update)
        if not math.isfinite(norm):
            raise NonFiniteUpdateError("norm bounding: a received update has a non-finite value")
        if norm > self.max_norm:
            scale = self.max_norm / norm
            update = tree_map(lambda t: t * scale, update)
        return self.inner.add(acc, update, weight)
