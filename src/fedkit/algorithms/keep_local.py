"""A shared base for methods that keep part of the model on the client (FedPer, FedBN).

The model's entries split into a *shared* part, trained locally and averaged as FedAvg averages
it, and a *local* part that never leaves the client: each client keeps its own copy of the local
entries as its client state (in the client store or on the worker, never in server state).

Client ``i`` in round ``t``: local training starts from the global shared entries and the
client's own local entries (the global ones the first time), trains every parameter, and sends
``Δ_i = y_i - x_t`` on the shared entries with zeros on the local ones, so the aggregate never
moves the global copy of a local entry; the trained local entries become the client's state.
The client's personal model is the current global shared part with its own local part.

A subclass says which entries are local (:meth:`KeepLocal.local_keys`) from the names and
tensors of the model's state dict alone, so the same rule holds on the server, on a worker and
when a checkpoint is restored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from fedkit.algorithm import (
    ClientContext,
    ClientData,
    ClientResult,
    LocalOutcome,
    LocalPlan,
    PersonalAccess,
)
from fedkit.algorithms.fedavg import FedAvg, ModelDelta, ModelMessage, client_weight
from fedkit.params import Params


@dataclasses.dataclass(frozen=True)
class LocalEntries:
    """A client's own copy of the local entries of the model."""

    params: Params


@dataclasses.dataclass(frozen=True, kw_only=True)
class KeepLocal(FedAvg):
    """FedAvg whose entries named by :meth:`local_keys` stay on the client."""

    def local_keys(self, params: Mapping[str, Tensor]) -> frozenset[str]:
        """The state-dict names that stay on the client (subclasses say which)."""
        raise NotImplementedError

    def client_init(
        self, ctx: ClientContext, msg: ModelMessage, data: ClientData, state: LocalEntries | None
    ) -> LocalPlan[None]:
        """Local SGD from the global shared entries and this client's own local entries."""
        return LocalPlan(start=self._with_own(msg.params, state), local=self.local)

    def client_final(  # type: ignore[override]
        self, ctx: ClientContext, msg: ModelMessage, plan: LocalPlan[Any], outcome: LocalOutcome
    ) -> ClientResult[ModelDelta, LocalEntries]:
        """``Δ_i`` on the shared entries (zero on local ones); the trained local entries are
        the new client state."""
        local = self.local_keys(msg.params)
        delta = {
            k: torch.zeros_like(v) if k in local else outcome.trained[k] - v
            for k, v in msg.params.items()
        }
        n = outcome.num_examples
        return ClientResult(
            update=ModelDelta(delta),
            weight=client_weight(self.weighting, n),
            num_examples=n,
            stats=outcome.stats,
            client_state=LocalEntries({k: outcome.trained[k].clone() for k in sorted(local)}),
        )

    def client_state_template(self, params: Params) -> LocalEntries:  # type: ignore[override]
        """Local entries are shaped like the global ones."""
        return LocalEntries(
            {k: torch.zeros_like(params[k]) for k in sorted(self.local_keys(params))}
        )

    def personal_params(  # type: ignore[override]
        self,
        global_params: Params,
        state: LocalEntries | None,
        local: PersonalAccess | None = None,
    ) -> Params | None:
        """The global shared part with the client's local part (``None`` before it trained)."""
        return None if state is None else self._with_own(global_params, state)

    @staticmethod
    def _with_own(params: Params, state: LocalEntries | None) -> Params:
        return params if state is None else {**params, **state.params}


__all__ = ["KeepLocal", "LocalEntries"]
