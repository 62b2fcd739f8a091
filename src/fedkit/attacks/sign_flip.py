"""Sign flipping and inner-product manipulation: the attacker sends its update reversed.

* Sign flipping (Damaskinos et al. 2018; as evaluated by Karimireddy et al. 2021, "Learning
  from History for Byzantine Robust Optimization"): ``-s · Δ`` with ``s = 1``.
* Inner-product manipulation (Xie et al. 2020, "Fall of Empires: Breaking Byzantine-tolerant SGD
  by Inner Product Manipulation"): ``-ε · ḡ``, ``ḡ`` the mean of the correct updates, so that the
  aggregate's inner product with the true direction turns negative. A small ``ε`` (0.1 in the
  paper) slips past median- and distance-based rules; a large one (100) overwhelms the mean. The
  paper's attacker is omniscient; here each attacker estimates ``ḡ`` by its own honest update
  ``Δ`` — the estimate an attacker without access to other clients has — which makes the rule
  ``-ε · Δ``: this class with ``scale = ε`` (registered as ``ipm`` with ``scale = 0.1``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fedkit.attacks.base import Attack, AttackContext, map_update


@dataclasses.dataclass(frozen=True, kw_only=True)
class SignFlip(Attack):
    """Send ``-scale · Δ`` (module docstring).

    Attributes:
        scale: the factor ``s > 0`` applied after flipping (IPM's ``ε``).
    """

    scale: float = 1.0

    def __post_init__(self) -> None:
        if not (self.scale > 0.0 and self.scale < float("inf")):
            raise ValueError(f"scale must be positive and finite, got {self.scale!r}")

    def forge(self, actx: AttackContext) -> Any:
        """The honest update, reversed and scaled."""
        s = self.scale
        return map_update(actx.honest, lambda t: t * -s)
