"""Synthetic(α, β) of FedProx (Li et al., MLSys 2020), generated, so it needs no file.

The procedure of the paper's ``generate_synthetic``, with a seeded generator:

- client sizes ``n_k = floor(LogNormal(4, 2)) + 50`` for ``num_users`` (30) users;
- per user ``u_k ~ N(0, α)`` (mean of the model) and ``B_k ~ N(0, β)``;
- feature means ``v_k ~ N(B_k, 1)`` (``d = 60`` entries); covariance ``Σ = diag(j^-1.2)``,
  ``j = 1..d``;
- ``W_k ~ N(u_k, 1)`` (``d × 10``), ``b_k ~ N(u_k, 1)``; ``x ~ N(v_k, Σ)``;
  ``y = argmax(softmax(x W_k + b_k))``;
- each user's samples are shuffled and split 90% / 10% into train / test.

With ``iid=True`` (FedProx's ``synthetic_iid``) every user shares one ``W, b ~ N(0, 1)`` and the
feature mean is ``B_k`` in every coordinate. Draws happen in the reference order (sizes, ``u``,
``B``, all feature means, then per user ``W``, ``b``, ``x``), but from numpy's PCG64
``default_rng(seed)``, so samples are reproducible for a seed, not bit-identical to files
produced by the reference script (which used the unseeded global RNG).

Output: ``x`` float32 ``(N, d)``, ``y`` int64 in 0..9, ``client`` = user index, names
``f_00000``... as in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedkit.data.datasets.base import CommonOptions, Dataset, Split, parse_options

__all__ = ["SyntheticOptions", "generate_synthetic", "load_synthetic"]


@dataclass(frozen=True, kw_only=True)
class SyntheticOptions(CommonOptions):
    """Synthetic(α, β) options.

    Attributes:
        alpha: spread of the local models (α >= 0).
        beta: spread of the local feature distributions (β >= 0).
        iid: FedProx's ``synthetic_iid`` variant.
        num_users: number of users (30).
        dim: feature dimension (60).
        num_classes: number of classes (10).
        seed: generator seed.
    """

    alpha: float = 1.0
    beta: float = 1.0
    iid: bool = False
    num_users: int = 30
    dim: int = 60
    num_classes: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("alpha", "beta"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 0")
        for name in ("num_users", "dim", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")


def generate_synthetic(
    opts: SyntheticOptions,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-user features and labels of Synthetic(α, β), before the train/test split."""
    rng = np.random.default_rng(opts.seed)
    users, d, c = opts.num_users, opts.dim, opts.num_classes
    sizes = rng.lognormal(4, 2, users).astype(np.int64) + 50
    mean_w = rng.normal(0.0, opts.alpha, users)
    shift = rng.normal(0.0, opts.beta, users)
    sd = np.power(np.arange(1, d + 1, dtype=np.float64), -1.2) ** 0.5
    if opts.iid:
        means = np.repeat(shift[:, None], d, axis=1)
        w_global = rng.normal(0.0, 1.0, (d, c))
        b_global = rng.normal(0.0, 1.0, c)
    else:
        means = np.stack([rng.normal(shift[k], 1.0, d) for k in range(users)])
    xs, ys = [], []
    for k in range(users):
        if opts.iid:
            w, b = w_global, b_global
        else:
            w = rng.normal(mean_w[k], 1.0, (d, c))
            b = rng.normal(mean_w[k], 1.0, c)
        x = means[k] + rng.standard_normal((int(sizes[k]), d)) * sd
        xs.append(x)
        ys.append(np.argmax(x @ w + b, axis=1).astype(np.int64))  # argmax(softmax(z)) = argmax(z)
    return xs, ys


def load_synthetic(root: Path, **options: Any) -> Dataset:
    """Generate Synthetic(α, β); ``root`` is unused (nothing is read)."""
    del root
    opts = parse_options(SyntheticOptions, "synthetic", options)
    xs, ys = generate_synthetic(opts)
    rng = np.random.default_rng([opts.seed, 1])
    parts: dict[str, tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]] = {
        "train": ([], [], []),
        "test": ([], [], []),
    }
    for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
        perm = rng.permutation(len(y))
        n_train = int(0.9 * len(y))
        for part, idx in (("train", perm[:n_train]), ("test", perm[n_train:])):
            parts[part][0].append(x[idx])
            parts[part][1].append(y[idx])
            parts[part][2].append(np.full(len(idx), k, dtype=np.int64))

    def split(name: str) -> Split:
        x, y, c = (np.concatenate(a) for a in parts[name])
        return Split(
            torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y), torch.from_numpy(c)
        )

    return Dataset(
        name="synthetic",
        train=split("train"),
        test=split("test"),
        num_classes=opts.num_classes,
        input_shape=(opts.dim,),
        client_names=tuple(f"f_{k:05d}" for k in range(opts.num_users)),
    )
