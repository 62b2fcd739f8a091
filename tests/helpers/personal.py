"""The personalised algorithm the seam tests name by import path: fedkit's FedPer
(:mod:`fedkit.algorithms.fedper`) with the output layer of ``tests.helpers.toy.toy_model``
(module ``"2"``) as the personal head. Kept as a plugin path so the deployment test still runs a
method named by ``module:Class`` rather than by a registry name."""

from __future__ import annotations

import dataclasses

from fedkit.algorithms.fedper import FedPer


@dataclasses.dataclass(frozen=True, kw_only=True)
class LocalHead(FedPer):
    """FedPer whose personal layer is ``toy_model``'s output layer."""

    head: tuple[str, ...] = ("2",)
