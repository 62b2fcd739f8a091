"""Next-word prediction metrics: top-k accuracy over real words, and perplexity.

The rule (as in Hard et al. 2018, who score in-vocabulary predictions): a target counts only
when it is a vocabulary *word*: padding (and ``IGNORE_INDEX``), out-of-vocabulary and end-of-text
targets are left out, and ``bos`` is never a target. Over the targets that count,

- top-k accuracy = share of targets among the model's ``k`` highest logits (all ids compete, so
  a model that ranks ``oov`` first loses that slot), and
- perplexity = ``exp(mean cross-entropy)`` of the full softmax at those targets.

Outputs ``(N, V)`` (one target per window) and ``(N, T, V)`` (a target per position) are both
accepted; ``y`` is ``(N,)`` or ``(N, T)`` to match.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedkit.local import IGNORE_INDEX

__all__ = ["NWPScores", "counted_targets", "nwp_scores"]


@dataclasses.dataclass(frozen=True)
class NWPScores:
    """Top-1/top-3 accuracy and perplexity over ``targets`` counted targets (NaN when none)."""

    top1: float
    top3: float
    perplexity: float
    targets: int


def counted_targets(y: Tensor, *, pad: int, oov: int, eos: int) -> Tensor:
    """Mask of the targets the metrics count: not padding, ignored, ``oov`` or ``eos``."""
    return (y != IGNORE_INDEX) & (y != pad) & (y != oov) & (y != eos)


@torch.no_grad()
def nwp_scores(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    pad: int,
    oov: int,
    eos: int,
    batch_size: int = 1000,
) -> NWPScores:
    """Score ``model`` on ``(x, y)`` in eval mode (see the module docstring for the rule)."""
    model.eval()
    hits1 = hits3 = 0
    nll = 0.0
    n = 0
    for start in range(0, int(y.shape[0]), batch_size):
        yb = y[start : start + batch_size].reshape(-1)
        keep = counted_targets(yb, pad=pad, oov=oov, eos=eos)
        if not bool(keep.any()):
            continue
        out = model(x[start : start + batch_size])
        logits = out.reshape(-1, out.shape[-1])[keep]
        target = yb[keep]
        top = logits.topk(min(3, logits.shape[-1]), dim=-1).indices
        hits1 += int((top[:, 0] == target).sum())
        hits3 += int((top == target[:, None]).any(dim=-1).sum())
        nll += float(F.cross_entropy(logits, target, reduction="sum"))
        n += int(target.shape[0])
    if n == 0:
        return NWPScores(math.nan, math.nan, math.nan, 0)
    return NWPScores(hits1 / n, hits3 / n, math.exp(nll / n), n)
