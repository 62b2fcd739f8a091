"""Logistic regression and small MLPs in plain NumPy, trained with local SGD.

The maths of fedkit's ``logreg`` and ``mlp`` models (McMahan et al. 2017's 2NN) and of fedkit's
local training with plain SGD (no momentum, no weight decay), written without PyTorch so that a
worker outside fedkit's code path can take part in FedAvg (McMahan et al. 2017,
"Communication-Efficient Learning of Deep Networks from Decentralized Data"):

* the model is a chain of dense layers ``a_{l+1} = relu(a_l W_l^T + b_l)`` (no ReLU after the
  last), on the flattened input; logistic regression is the chain of one layer;
* the loss of a batch ``B`` is the mean cross-entropy ``-(1/|B|) Σ log softmax(z_i)[y_i]``;
* one SGD step is ``θ ← θ - η ∇θ loss(B)``; a client takes ``steps`` of them (or ``epochs``
  passes of ``ceil(n / batch)`` steps), scaled by the coordinator's ``work_fraction`` as
  ``max(1, floor(planned × work_fraction))``, and returns ``Δ = θ_final - θ_start`` with weight
  ``n`` (its example count) — FedAvg's client half.

Batch order: every epoch is a fresh permutation drawn from a NumPy generator seeded by
``(seed, round, client_id)``. fedkit draws its permutations from a torch generator, so only
full-batch training (``batch_size = 0``) gives the same update as fedkit's worker, up to
floating-point summation order.

Parameters are named as fedkit names a ``torch.nn.Sequential``'s: ``"<index>.weight"`` (shape
``[out, in]``) and ``"<index>.bias"`` (shape ``[out]``), layers in increasing index order.

This module imports only NumPy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

Params = dict[str, np.ndarray]


class ModelError(ValueError):
    """Parameters that do not form a chain of dense layers."""


@dataclass(frozen=True)
class Dense:
    """One dense layer's parameter names."""

    weight: str
    bias: str


def layers_of(params: Mapping[str, np.ndarray]) -> list[Dense]:
    """The dense layers named in ``params``, in increasing index order, shapes checked.

    Raises:
        ModelError: a name that is not ``<int>.weight``/``<int>.bias``, a layer without its pair,
            or shapes that do not chain.
    """
    indices: set[int] = set()
    for name in params:
        index, dot, kind = name.partition(".")
        if not (dot and index.isdigit() and kind in ("weight", "bias")):
            raise ModelError(f"parameter {name!r} is not '<index>.weight' or '<index>.bias'")
        indices.add(int(index))
    layers = [Dense(f"{i}.weight", f"{i}.bias") for i in sorted(indices)]
    width: int | None = None
    for layer in layers:
        if layer.weight not in params or layer.bias not in params:
            raise ModelError(f"layer {layer.weight.split('.')[0]} needs both weight and bias")
        w, b = params[layer.weight], params[layer.bias]
        if w.ndim != 2 or b.shape != (w.shape[0],) or (width is not None and w.shape[1] != width):
            raise ModelError(f"layer {layer.weight}: shapes {w.shape} and {b.shape} do not chain")
        width = int(w.shape[0])
    if not layers:
        raise ModelError("no parameters")
    return layers


def _forward(
    params: Mapping[str, np.ndarray], layers: list[Dense], x: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits and every layer's input (the flattened ``x`` first)."""
    a = x.reshape(x.shape[0], -1)
    inputs = []
    for i, layer in enumerate(layers):
        inputs.append(a)
        z = a @ params[layer.weight].T + params[layer.bias]
        a = np.maximum(z, 0) if i < len(layers) - 1 else z
    return a, inputs


def _log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    out: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return out


def loss_and_grads(
    params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray
) -> tuple[float, Params]:
    """Mean cross-entropy of the batch ``(x, y)`` and its gradient for every parameter.

    With ``p = softmax(z)``: ``∂loss/∂z = (p - onehot(y)) / |B|``; a layer with input ``a`` gets
    ``∂W = (∂z)^T a`` and ``∂b = Σ_rows ∂z``; back through it ``∂a = ∂z W``, masked by ``a > 0``
    (the ReLU that made ``a``).
    """
    layers = layers_of(params)
    logits, inputs = _forward(params, layers, x)
    logp = _log_softmax(logits)
    rows = np.arange(len(y))
    loss = float(-logp[rows, y].mean())
    dz = np.exp(logp)
    dz[rows, y] -= 1
    dz /= len(y)
    grads: Params = {}
    for i in range(len(layers) - 1, -1, -1):
        layer, a = layers[i], inputs[i]
        grads[layer.weight] = dz.T @ a
        grads[layer.bias] = dz.sum(axis=0)
        if i > 0:
            dz = (dz @ params[layer.weight]) * (a > 0)
    return loss, grads


@dataclass(frozen=True, kw_only=True)
class LocalSGD:
    """Local training settings (fedkit's ``[algorithm]`` ``lr``, ``local_steps`` /
    ``local_epochs`` and ``batch_size``; ``batch_size = 0`` is the full local dataset)."""

    lr: float
    steps: int | None = None
    epochs: int = 1
    batch_size: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1 or None, got {self.steps!r}")
        if self.epochs < 1 or self.batch_size < 0:
            raise ValueError(f"epochs must be >= 1 and batch_size >= 0 (0: full batch), got {self}")

    def planned_steps(self, n: int) -> int:
        """Steps of a full unit of work on ``n`` examples."""
        if self.steps is not None:
            return self.steps
        b = n if self.batch_size == 0 else self.batch_size
        return self.epochs * math.ceil(n / max(b, 1))


@dataclass(frozen=True)
class Trained:
    """What local training returns: ``Δ`` by parameter name and the metrics fedkit reports."""

    delta: Params
    steps: int
    examples: int
    mean_loss: float


def train(
    start: Mapping[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    cfg: LocalSGD,
    *,
    rng: np.random.Generator,
    work_fraction: float = 1.0,
) -> Trained:
    """Local SGD from ``start`` on ``(x, y)``; returns ``Δ = θ_final - θ_start`` (see module).

    ``mean_loss`` is the mean of the batch losses weighted by batch size (before each step), as
    fedkit reports it.
    """
    n = len(y)
    if n == 0:
        raise ValueError("no local training data")
    if not 0.0 < work_fraction <= 1.0:
        raise ValueError(f"work_fraction must be in (0, 1], got {work_fraction!r}")
    steps = max(1, int(cfg.planned_steps(n) * work_fraction))
    b = n if cfg.batch_size == 0 else cfg.batch_size
    theta = {k: v.copy() for k, v in start.items()}
    order = np.empty(0, dtype=np.int64)
    weighted, seen = 0.0, 0
    for _ in range(steps):
        if len(order) == 0:
            order = rng.permutation(n)
        idx, order = order[:b], order[b:]
        loss, grads = loss_and_grads(theta, x[idx], y[idx])
        for k, g in grads.items():
            theta[k] -= np.asarray(cfg.lr, dtype=theta[k].dtype) * g.astype(theta[k].dtype)
        weighted += loss * len(idx)
        seen += len(idx)
    delta = {k: theta[k] - start[k] for k in start}
    return Trained(delta=delta, steps=steps, examples=seen, mean_loss=weighted / seen)


def evaluate(params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``params`` on ``(x, y)`` (NaN, NaN when empty)."""
    if len(y) == 0:
        return math.nan, math.nan
    logits, _ = _forward(params, layers_of(params), x)
    logp = _log_softmax(logits)
    loss = float(-logp[np.arange(len(y)), y].mean())
    return loss, float((logits.argmax(axis=1) == y).mean())
