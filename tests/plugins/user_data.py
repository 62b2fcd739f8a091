"""A user's own datasets (``tests.plugins.user_data:…``): a Dataset to partition, and lazily
supplied clients that count how often each one was loaded."""

from __future__ import annotations

from collections import Counter

import torch

from fedkit.algorithm import ClientData
from fedkit.data.datasets import Dataset, Split
from fedkit.data.lazy import LazyClients
from fedkit.plugins import dataset

FEATURES = 6
CLASSES = 3
LOADS: Counter[int] = Counter()
"""How many times each client's data was made in this process (reset by tests)."""


def _samples(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=g)
    return x, torch.arange(n) % CLASSES


def client_data(cid: int, n: int) -> ClientData:
    """Client ``cid``'s data: ``n`` samples seeded by the id (a pure function of it)."""
    x, y = _samples(n, 1000 + cid)
    xt, yt = _samples(4, 5000 + cid)
    return ClientData(x, y, xt, yt)


@dataset
def tensors(n: int = 60) -> Dataset:
    """A plain in-memory dataset: the spec's partition splits it."""
    x, y = _samples(n, 0)
    xt, yt = _samples(12, 1)
    return Dataset(
        name="tensors",
        train=Split(x, y),
        test=Split(xt, yt),
        num_classes=CLASSES,
        input_shape=(FEATURES,),
    )


@dataset
def lazy(clients: int = 10, cache: int = 2, local_test: bool = True) -> LazyClients:
    """``clients`` clients of ``5 + cid % 3`` samples each, made on demand."""

    def load(cid: int) -> ClientData:
        LOADS[cid] += 1
        return client_data(cid, 5 + cid % 3)

    xt, yt = _samples(12, 1)
    return LazyClients(
        sizes=[5 + c % 3 for c in range(clients)],
        load=load,
        test=Split(xt, yt),
        num_classes=CLASSES,
        input_shape=(FEATURES,),
        local_test=local_test,
        cache=cache,
    )


def unmarked() -> Dataset:
    """Not marked: an experiment file may not call it."""
    return tensors()
