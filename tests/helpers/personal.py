"""A small personalised algorithm for tests of the personal-evaluation seam: FedAvg whose output
layer is personal (FedPer, Arivazhagan et al. 2019, in its simplest form).

Each client keeps its own copy of the parameters named in ``head`` as its client state; local
training starts from the global body plus that head; the update carries the body's delta only
(the head's entries are zero, so the global head never moves); the personal model is the global
body with the client's head. It is its own file on the core seams, as any new method must be.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from fedkit.algorithm import ClientContext, ClientData, ClientResult, LocalOutcome, LocalPlan
from fedkit.algorithms.fedavg import FedAvg, ModelDelta, ModelMessage, client_weight
from fedkit.params import Params


@dataclasses.dataclass(frozen=True)
class HeadState:
    """A client's personal head."""

    head: Params


@dataclasses.dataclass(frozen=True, kw_only=True)
class LocalHead(FedAvg):
    """FedAvg with personal parameters ``head`` (names in the model's state dict)."""

    head: tuple[str, ...] = ("2.weight", "2.bias")

    @property
    def name(self) -> str:
        """Algorithm identifier."""
        return "localhead"

    def client_init(
        self, ctx: ClientContext, msg: ModelMessage, data: ClientData, state: Any
    ) -> LocalPlan[None]:
        """Start from the global body and this client's head (the global head the first time)."""
        return LocalPlan(start=self._personal(msg.params, state), local=self.local)

    def client_final(
        self, ctx: ClientContext, msg: ModelMessage, plan: LocalPlan[Any], outcome: LocalOutcome
    ) -> ClientResult[ModelDelta, HeadState]:
        """The body's delta (zero for the head); the trained head becomes the client state."""
        delta = outcome.delta(plan.start)
        for k in self.head:
            delta[k] = torch.zeros_like(delta[k])
        n = outcome.num_examples
        return ClientResult(
            update=ModelDelta(delta),
            weight=client_weight(self.weighting, n),
            num_examples=n,
            stats=outcome.stats,
            client_state=HeadState({k: outcome.trained[k] for k in self.head}),
        )

    def client_state_template(self, params: Params) -> HeadState:
        """Heads are shaped like the global head."""
        return HeadState({k: torch.zeros_like(params[k]) for k in self.head})

    def personal_params(self, global_params: Params, state: Any) -> Params | None:
        """The global body with the client's head (``None`` before the client first trained)."""
        return None if state is None else self._personal(global_params, state)

    def _personal(self, params: Params, state: Any) -> Params:
        return params if state is None else {**params, **state.head}
