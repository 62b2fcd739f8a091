"""Evaluation of a model on held-out data, and summaries of per-client results.

Centralised evaluation scores the global model on a pooled test set; federated evaluation scores
it on each client's local test data and reports the distribution of per-client accuracy (mean,
10th percentile, variance): the fairness view that q-FFL and personalisation work need.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fedkit.local import IGNORE_INDEX, LossFn, classification_loss


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Loss and accuracy on ``num_examples`` targets (tokens for sequence tasks)."""

    loss: float
    accuracy: float
    num_examples: int


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int = 1000,
    loss_fn: LossFn = classification_loss,
) -> EvalResult:
    """Mean loss and accuracy of ``model`` on ``(x, y)`` in eval mode, in batches."""
    model.eval()
    loss_sum = 0.0
    correct = 0
    counted = 0
    for start in range(0, int(y.shape[0]), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        valid = yb != IGNORE_INDEX
        k = int(valid.sum())
        if k == 0:  # all padding: the mean loss over no targets is NaN, and counts for nothing
            continue
        out = model(xb)
        loss_sum += float(loss_fn(out, yb)) * k
        correct += int(((out.argmax(dim=-1) == yb) & valid).sum())
        counted += k
    if counted == 0:
        return EvalResult(loss=float("nan"), accuracy=float("nan"), num_examples=0)
    return EvalResult(loss=loss_sum / counted, accuracy=correct / counted, num_examples=counted)


@dataclasses.dataclass(frozen=True)
class ClientEval:
    """One client's evaluation: the global model's, and its personal model's when it has one."""

    client_id: int
    result: EvalResult
    personal: EvalResult | None = None


@dataclasses.dataclass(frozen=True)
class Distribution:
    """Summary of per-client accuracy across clients with test data.

    ``personal_mean`` is the mean accuracy of the clients' personal models over the clients
    that have one (NaN when none has: non-personalised algorithms).
    """

    clients: int
    mean: float
    weighted_mean: float
    p10: float
    variance: float
    minimum: float
    personal_mean: float = math.nan

    @classmethod
    def of(cls, evals: Sequence[ClientEval]) -> Distribution:
        """Summarise; clients without test examples are left out."""
        scored = [e for e in evals if e.result.num_examples > 0]
        if not scored:
            nan = float("nan")
            return cls(clients=0, mean=nan, weighted_mean=nan, p10=nan, variance=nan, minimum=nan)
        acc = torch.tensor([e.result.accuracy for e in scored], dtype=torch.float64)
        w = torch.tensor([e.result.num_examples for e in scored], dtype=torch.float64)
        own = [e.personal.accuracy for e in scored if e.personal is not None]
        return cls(
            clients=len(scored),
            mean=float(acc.mean()),
            weighted_mean=float((acc * w).sum() / w.sum()),
            p10=float(torch.quantile(acc, 0.1)),
            variance=float(acc.var(unbiased=False)),
            minimum=float(acc.min()),
            personal_mean=sum(own) / len(own) if own else math.nan,
        )

    def is_empty(self) -> bool:
        """True when no client had test data."""
        return self.clients == 0 or math.isnan(self.mean)
