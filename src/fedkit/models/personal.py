"""Models for the personalisation and positive-label methods.

- ``mlp_bn``: McMahan's 2NN with a batch-norm layer after every hidden linear layer (Linear → BN →
  ReLU), the kind of model FedBN (Li et al. 2021) keeps the normalisation of on each client.
- ``embedding_mlp``: a classifier with an explicit class-embedding matrix (Yu et al. 2020,
  FedAwS): a body ``g(x)`` (Linear → ReLU → Linear to ``dim``) and one embedding ``w_c`` per class
  (``classes.weight``, ``C × dim``); the score of class ``c`` is ``s · cos(g(x), w_c)`` with the
  fixed scale ``s = scale`` (cosine logits), so ``argmax`` is the nearest class embedding. FedAwS
  trains it with a positive-only loss and spreads the embeddings out on the server; FedAvg and
  centralised training use cross-entropy on the same scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["EMBEDDINGS", "EmbeddingClassifier", "embedding_mlp", "mlp_bn"]

EMBEDDINGS = "classes.weight"
"""The state-dict name of the class-embedding matrix of :class:`EmbeddingClassifier`."""


def _width(model: str, h: object) -> int:
    if isinstance(h, bool) or not isinstance(h, int) or h < 1:
        raise ValueError(f"model {model!r}: widths must be ints >= 1, got {h!r}")
    return h


def mlp_bn(
    *, num_classes: int, input_shape: tuple[int, ...], hidden: Sequence[int] = (200, 200)
) -> nn.Module:
    """The 2NN with batch norm: ``(Linear → BatchNorm1d → ReLU)`` per width in ``hidden``."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        h = _width("mlp_bn", h)
        layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class EmbeddingClassifier(nn.Module):
    """Cosine scores of a feature map against a class-embedding matrix (see module docstring)."""

    def __init__(self, in_features: int, hidden: int, dim: int, num_classes: int, scale: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, dim)
        )
        self.classes = nn.Linear(dim, num_classes, bias=False)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        """``scale · cos(g(x), w_c)`` for every class ``c``: shape ``(N, C)``."""
        features = F.normalize(self.body(x), dim=1)
        return self.scale * features @ F.normalize(self.classes.weight, dim=1).T


def embedding_mlp(
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    hidden: int = 200,
    dim: int = 64,
    scale: int = 10,
) -> nn.Module:
    """An :class:`EmbeddingClassifier` on flattened inputs.

    Args:
        num_classes: Classes (rows of the embedding matrix).
        input_shape: Sample shape (flattened).
        hidden: Width of the body's hidden layer.
        dim: Embedding dimension.
        scale: The cosine logits' scale ``s``.
    """
    return EmbeddingClassifier(
        math.prod(input_shape),
        _width("embedding_mlp", hidden),
        _width("embedding_mlp", dim),
        num_classes,
        float(_width("embedding_mlp", scale)),
    )
