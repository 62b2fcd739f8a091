"""FedSeq's privacy-preserving estimate of each client's label distribution from model outputs.

Zaccone et al. 2022 ("Speeding up Heterogeneous Federated Learning with Sequentially Trained
Superclients", ICPR), Sec. "Estimation of clients' distribution": before federated training,
every client trains a copy of the same initial model on its own data for a few epochs (a
*pre-training* phase); the server then runs each pre-trained model on a small *exemplar* set it
holds and forms the client's **confidence vector**

    ``c_k[j] ∝ mean over exemplars (x, y) with y = j of softmax(f_k(x))_j``, ``Σ_j c_k[j] = 1``,

the model's confidence in the true class, class by class. A model trained only on class ``j``
is confident on the exemplars of ``j`` and not on the others, so ``c_k`` approximates client
``k``'s label distribution without the server ever seeing its label counts. The superclients
are then formed from these vectors (:func:`fedkit.algorithms.superclients.group_clients`,
with ``n_k · c_k`` as client ``k``'s estimated label counts).

Where this follows the paper and where not:

* The exemplar ("public") set is a seeded, class-balanced draw of ``per_class`` examples of
  every class from the dataset's **test split** (:func:`public_set`), as the paper's exemplars
  are examples set aside from the test set. Unlike the paper we do not remove them from the
  evaluation set, so every arm of a study is scored on the same examples. That is harmless
  for the comparison: the global model never trains on them, and all that is derived from
  them is a partition of the clients, chosen for label diversity, not for test accuracy; and
  even a model that memorised them could move test accuracy by at most their share of the test
  split (100 of 10,000 MNIST test examples at 10 a class: 1 point).
* The paper sums ``softmax(f_k(x))_y`` over the exemplars and normalises; we average per class
  first, which is the same on a class-balanced set and stays unbiased on an unbalanced one.
* The pre-training uses the run's local optimiser settings (learning rate, batch size,
  momentum, weight decay) for ``epochs`` epochs (the paper: 10), from the run's initial model
  architecture freshly initialised from the model seed, with the stream ``(seed, 0, k,
  "fedseq/profile")`` for batch order. It is simulated on the server in one pass; in a real
  deployment it would be one extra round in which each client trains and uploads its model.
  Sample-level DP-SGD is refused (those steps would escape the run's privacy accounting).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor, nn

from fedkit.data.store import ClientStore
from fedkit.local import LocalTraining, train_local
from fedkit.rng import SERVER, generator

__all__ = ["confidence_profiles", "confidence_vector", "public_set"]

MAX_PUBLIC_PER_CLASS = 10_000
"""The most exemplars of one class the public set may draw."""
EVAL_BATCH = 512
"""Exemplars scored per forward pass."""


def _check_labels(y: Tensor, num_classes: int, what: str) -> None:
    if y.dim() != 1 or (y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes)):
        raise ValueError(
            f"{what}: confidence vectors need one class label in [0, {num_classes}) per example"
        )


def public_set(
    x: Tensor, y: Tensor, num_classes: int, per_class: int, seed: int
) -> tuple[Tensor, Tensor]:
    """The server's exemplar set: ``per_class`` examples of each class drawn without
    replacement from ``(x, y)`` (a dataset's test split) with the stream ``(seed, 0, SERVER,
    "fedseq/public")``, class by class in class order.

    Raises:
        ValueError: ``per_class`` out of ``[1, MAX_PUBLIC_PER_CLASS]``, labels that are not
            classes, or a class with fewer than ``per_class`` examples.
    """
    if not 1 <= per_class <= MAX_PUBLIC_PER_CLASS:
        raise ValueError(
            f"public_per_class must be in [1, {MAX_PUBLIC_PER_CLASS}], got {per_class!r}"
        )
    _check_labels(y, num_classes, "the public set")
    g = generator(seed, 0, SERVER, "fedseq/public")
    picks = []
    for j in range(num_classes):
        where = (y == j).nonzero().flatten()
        if where.numel() < per_class:
            raise ValueError(
                f"the public set needs {per_class} examples of class {j}; the test split has "
                f"{where.numel()} (lower public_per_class)"
            )
        picks.append(where[torch.randperm(where.numel(), generator=g)[:per_class]])
    idx = torch.cat(picks)
    return x[idx], y[idx]


def confidence_vector(model: nn.Module, x: Tensor, y: Tensor, num_classes: int) -> Tensor:
    """``(num_classes,)`` float64: the model's mean softmax probability of the true class over
    the exemplars of each class, normalised to sum 1 (module docstring).

    Raises:
        ValueError: labels that are not classes, a class without exemplars, or outputs that
            are not ``(batch, num_classes)`` logits.
    """
    _check_labels(y, num_classes, "the public set")
    counts = torch.bincount(y.to(torch.int64), minlength=num_classes)
    if bool((counts == 0).any()):
        missing = int((counts == 0).nonzero()[0])
        raise ValueError(f"the public set has no example of class {missing}")
    sums = torch.zeros(num_classes, dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        for at in range(0, int(y.shape[0]), EVAL_BATCH):
            logits = model(x[at : at + EVAL_BATCH])
            yb = y[at : at + EVAL_BATCH].to(torch.int64)
            if logits.dim() != 2 or int(logits.shape[1]) != num_classes:
                raise ValueError(
                    f"confidence vectors need (batch, {num_classes}) logits, got "
                    f"{tuple(logits.shape)}"
                )
            p = torch.softmax(logits.to(torch.float64), dim=1)
            sums.index_add_(0, yb, p.gather(1, yb[:, None]).squeeze(1))
    mean = sums / counts.to(torch.float64)
    return mean / mean.sum()


def confidence_profiles(
    store: ClientStore,
    model_fn: Callable[[], nn.Module],
    public: tuple[Tensor, Tensor],
    num_classes: int,
    *,
    local: LocalTraining,
    epochs: int,
    seed: int,
) -> Tensor:
    """``(N, num_classes)`` float64: every client's confidence vector after its pre-training
    (module docstring) from one model ``model_fn()`` built once.

    Args:
        store: the clients (their training splits are trained on).
        model_fn: builds the initial model (deterministic: the run's model seed).
        public: the exemplar set ``(x, y)``, e.g. from :func:`public_set`.
        num_classes: number of classes.
        local: the run's local optimiser settings (``epochs``/``steps`` are replaced).
        epochs: pre-training epochs per client.
        seed: the seed of the pre-training streams.

    Raises:
        ValueError: ``local`` uses DP-SGD, or as :func:`confidence_vector`.
    """
    if local.dp is not None:
        raise ValueError(
            "confidence profiles are not computed under sample-level DP-SGD: the pre-training "
            "would escape the run's privacy accounting (use profile = 'labels' or grouping = "
            "'random')"
        )
    settings = dataclasses.replace(local, epochs=epochs, steps=None)
    initial = model_fn()
    rows = []
    for k in range(store.num_clients):
        model = copy.deepcopy(initial)
        data = store.data(k)
        g = generator(seed, 0, k, "fedseq/profile")
        train_local(model, data.x_train, data.y_train, settings, generator=g)
        rows.append(confidence_vector(model, public[0], public[1], num_classes))
    return torch.stack(rows)  # a store has at least one client
