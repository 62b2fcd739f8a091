"""Local fine-tuning of the global model: the personalisation baseline (e.g. Wang et al. 2019,
"Federated Evaluation of On-device Personalization"; Yu et al. 2020, "Salvaging Federated
Learning by Local Adaptation").

The global model is trained by FedAvg. Every round a selected client also fine-tunes the global
model ``w_t`` it received on its own training data with ``finetune``'s settings
(``v_k = w_t - η Σ ∇F_k``, plain local SGD from ``w_t``) and keeps the result as its personal
model. The personal model a client is scored with is therefore the global model of the last
round it took part in, fine-tuned; the global half is FedAvg's bit for bit.
"""

from __future__ import annotations

import dataclasses

from fedkit.algorithm import LocalPlan
from fedkit.algorithms.fedavg import ModelMessage
from fedkit.algorithms.two_models import PersonalModel, TwoModels
from fedkit.local import LocalTraining


@dataclasses.dataclass(frozen=True, kw_only=True)
class FineTune(TwoModels):
    """FedAvg plus local fine-tuning of the global model (see module docstring).

    Attributes:
        finetune: the fine-tuning settings (``local``'s when unset).
    """

    finetune: LocalTraining | None = None

    @property
    def name(self) -> str:
        """Algorithm identifier."""
        return "finetune"

    def personal_plan(self, msg: ModelMessage, state: PersonalModel | None) -> LocalPlan[None]:
        """Plain local SGD from the global model."""
        return LocalPlan(
            start=msg.params, local=self.local if self.finetune is None else self.finetune
        )


__all__ = ["FineTune"]
