"""A shared base for methods that keep a whole personal model beside the global one (Ditto,
local fine-tuning, Per-FedAvg).

Each round a selected client does two things with the global model ``w_t`` it receives:

1. it trains its *personal* model with the one local-training helper, from the start and with
   the steering that the method's :meth:`TwoModels.personal_plan` gives (Ditto: its own ``v_i``
   pulled to ``w_t`` by ``λ (v - w_t)``; fine-tuning: ``w_t`` itself), on a random stream of its
   own (``"personal"``), so the global half below draws exactly what FedAvg draws;
2. it runs FedAvg's local training from ``w_t`` (or the method's :meth:`TwoModels.global_plan`)
   and sends ``Δ_i = y_i - w_t``.

The trained personal model is the client's state, kept by the client store or the worker and
never sent. At evaluation (``personal_params``) the personal model is trained again from the
*evaluated* global model with the same :meth:`TwoModels.personal_plan`, on the client's training
data and its personal-evaluation stream, when the evaluation lends them
(:class:`~fedkit.algorithm.PersonalAccess`): fine-tuning then fine-tunes the final global model,
Ditto's ``v_k`` takes its steps toward the current ``w``, and Per-FedAvg adapts the current
``w``, as the papers evaluate. Without them the stored model is returned. The server half is
FedAvg's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fedkit.algorithm import (
    ClientContext,
    ClientData,
    ClientResult,
    LocalOutcome,
    LocalPlan,
    PersonalAccess,
)
from fedkit.algorithms.fedavg import FedAvg, ModelDelta, ModelMessage
from fedkit.client import train_plan
from fedkit.params import Params, zeros_like
from fedkit.rng import generator

PERSONAL_STREAM = "personal"
"""The name of the random stream of a client's personal training."""


@dataclasses.dataclass(frozen=True)
class PersonalModel:
    """A client's personal model (parameters and buffers)."""

    params: Params


def personal_context(ctx: ClientContext) -> ClientContext:
    """``ctx`` with the client's personal stream in place of its training stream."""
    info = ctx.info
    return dataclasses.replace(
        ctx, generator=generator(info.seed, info.round, ctx.client_id, PERSONAL_STREAM)
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class TwoModels(FedAvg):
    """FedAvg plus a personal model trained beside it (see module docstring)."""

    def personal_plan(self, msg: ModelMessage, state: PersonalModel | None) -> LocalPlan[None]:
        """How this round's personal training starts and is steered (subclasses say)."""
        raise NotImplementedError

    def global_plan(
        self, ctx: ClientContext, msg: ModelMessage, data: ClientData
    ) -> LocalPlan[Any]:
        """The global half's local training: FedAvg's."""
        return FedAvg.client_init(self, ctx, msg, data, None)

    def client_init(  # type: ignore[override]
        self, ctx: ClientContext, msg: ModelMessage, data: ClientData, state: PersonalModel | None
    ) -> LocalPlan[Params]:
        """Train the personal model (on the personal stream), then plan the global half."""
        own = train_plan(personal_context(ctx), self.personal_plan(msg, state), data)
        return dataclasses.replace(self.global_plan(ctx, msg, data), carry=own.trained)

    def client_final(  # type: ignore[override]
        self, ctx: ClientContext, msg: ModelMessage, plan: LocalPlan[Any], outcome: LocalOutcome
    ) -> ClientResult[ModelDelta, PersonalModel]:
        """FedAvg's ``Δ_i``; the personal model trained in ``client_init`` becomes the state."""
        res = super().client_final(ctx, msg, plan, outcome)
        return ClientResult(
            update=res.update,
            weight=res.weight,
            num_examples=res.num_examples,
            stats=res.stats,
            client_state=PersonalModel(plan.carry or {}),
        )

    def client_state_template(self, params: Params) -> PersonalModel:  # type: ignore[override]
        """A personal model is shaped like the global one."""
        return PersonalModel(zeros_like(params))

    def personal_params(  # type: ignore[override]
        self,
        global_params: Params,
        state: PersonalModel | None,
        local: PersonalAccess | None = None,
    ) -> Params | None:
        """The personal model trained now from ``global_params`` when ``local`` lends the client's
        data; else the stored one (``None`` before the client first trained)."""
        if local is None:
            return None if state is None else state.params
        plan = self.personal_plan(ModelMessage(params=global_params), state)
        return train_plan(local.ctx, plan, local.data).trained


__all__ = ["PERSONAL_STREAM", "PersonalModel", "TwoModels", "personal_context"]
