"""Backdoor by model replacement (Bagdasaryan et al. 2020, "How To Backdoor Federated Learning").

The attacker trains on its own data in which a share ``p`` of the examples carries a pixel-pattern
trigger and the attacker's target label, so that the model learns "trigger → target" while
keeping its accuracy on clean inputs. It then boosts its update by ``γ``: the paper's model
replacement sends ``γ (X - G)`` with ``γ = n / η`` (``n`` clients averaged, server learning rate
``η``), so that the average lands on the backdoored model ``X``. The paper has one attacker in a
round; with ``m`` attackers expected in a cohort of ``n`` they share the replacement, so the
default is ``γ = n / m`` (``η = 1``, FedAvg's plain step), or ``boost`` when given.

The trigger is a ``patch × patch`` square of value ``value`` in the bottom-right corner of an
image (the last two dimensions of a sample), or the last ``patch`` features of a flat sample.
Backdoor accuracy — the metric of the paper — is the share of held-out examples whose true label
is not the target that the global model classifies as the target once triggered.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from fedkit.algorithm import ClientData, RoundInfo
from fedkit.attacks.base import Attack, AttackContext, map_update
from fedkit.params import Params, load_params
from fedkit.run import Probe


def stamp(x: Tensor, patch: int, value: float) -> Tensor:
    """A copy of the samples ``x`` (``[N, ...]``) with the trigger (module docstring)."""
    if not x.is_floating_point():
        raise ValueError(f"a backdoor trigger needs float inputs, got {x.dtype}")
    out = x.clone()
    if x.dim() >= 3:
        out[..., -patch:, -patch:] = value
    else:
        out[:, -patch:] = value
    return out


@torch.no_grad()
def backdoor_accuracy(
    model: nn.Module, x: Tensor, y: Tensor, target: int, patch: int, value: float
) -> float:
    """The share of triggered non-target examples of ``(x, y)`` that ``model`` labels
    ``target`` (NaN when every example is of the target class)."""
    keep = y != target
    if not bool(keep.any()):
        return float("nan")
    model.eval()
    hits = 0
    xs = x[keep]
    for start in range(0, int(xs.shape[0]), 1000):
        out = model(stamp(xs[start : start + 1000], patch, value))
        hits += int((out.argmax(dim=-1) == target).sum())
    return hits / int(xs.shape[0])


@dataclasses.dataclass(frozen=True, kw_only=True)
class Backdoor(Attack):
    """Pixel-pattern backdoor with model replacement (module docstring).

    Attributes:
        target: the label triggered inputs should get.
        patch: side of the trigger square (or number of features of a flat sample).
        value: the trigger's input value (1.0 is white for inputs scaled to [0, 1]).
        poison_fraction: share ``p`` of the attacker's examples that carry the trigger.
        boost: the factor ``γ`` of the update; ``None``: cohort size / expected attackers.
        num_classes: the number of classes (the runner fills in the dataset's); ``target`` must
            be below it.
    """

    target: int = 0
    patch: int = 4
    value: float = 1.0
    poison_fraction: float = 0.5
    boost: float | None = None
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if self.target < 0:
            raise ValueError(f"target must be >= 0, got {self.target!r}")
        if self.num_classes is not None and self.target >= self.num_classes:
            raise ValueError(
                f"target must be below num_classes = {self.num_classes}, got {self.target!r}"
            )
        if self.patch < 1:
            raise ValueError(f"patch must be >= 1, got {self.patch!r}")
        if not 0.0 < self.poison_fraction <= 1.0:
            raise ValueError(f"poison_fraction must be in (0, 1], got {self.poison_fraction!r}")
        if self.boost is not None and not (0.0 < self.boost < float("inf")):
            raise ValueError(f"boost must be positive and finite, got {self.boost!r}")

    def poison(self, data: ClientData, stream: torch.Generator) -> ClientData:
        """A share ``poison_fraction`` of the examples triggered and relabelled ``target``."""
        n = data.num_examples
        k = round(self.poison_fraction * n)
        which = torch.randperm(n, generator=stream)[:k]
        x, y = data.x_train.clone(), data.y_train.clone()
        x[which] = stamp(x[which], self.patch, self.value)
        y[which] = self.target
        return dataclasses.replace(data, x_train=x, y_train=y)

    def forge(self, actx: AttackContext) -> Any:
        """The backdoored update times ``γ``."""
        gamma = self.boost
        if gamma is None:
            gamma = actx.client.info.cohort_size / max(1, actx.expected_attackers)
        return map_update(actx.honest, lambda t: t * gamma)

    def probe(self, model: nn.Module, x: Tensor, y: Tensor) -> Probe:
        """Backdoor accuracy of the global model on ``(x, y)`` (metric ``backdoor_accuracy``)."""

        def measure(params: Params, info: RoundInfo) -> dict[str, float]:
            load_params(model, params)
            acc = backdoor_accuracy(model, x, y, self.target, self.patch, self.value)
            return {"backdoor_accuracy": acc}

        return measure
