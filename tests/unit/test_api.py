"""fedkit.api.federate: one's own nn.Module on tensors, a torch Dataset or lazily supplied
clients gives the same final model from each (the store's lazy mode changes nothing), and it
learns."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from fedkit.algorithms import FedAvg
from fedkit.api import federate, to_client_data
from fedkit.data.datasets import Split
from fedkit.data.lazy import LazyClients
from fedkit.local import LocalTraining
from fedkit.params import sha256
from tests.plugins.user_data import client_data
from tests.plugins.user_model import TinyNet

ALGO = FedAvg(local=LocalTraining(lr=0.1, epochs=1, batch_size=4))
SIZES = [5 + c % 3 for c in range(6)]


def _net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet(num_classes=3, input_shape=(6,))


def test_tensors_dataset_and_lazy_clients_give_the_same_model() -> None:
    data = [client_data(c, n) for c, n in enumerate(SIZES)]
    pairs = federate(
        _net(),
        [(d.x_train, d.y_train) for d in data],
        algorithm=ALGO,
        rounds=3,
        clients_per_round=3,
        seed=4,
    )
    datasets = federate(
        _net(),
        [TensorDataset(d.x_train, d.y_train) for d in data],
        algorithm=ALGO,
        rounds=3,
        clients_per_round=3,
        seed=4,
    )
    lazy = LazyClients(
        sizes=SIZES,
        load=lambda c: client_data(c, SIZES[c]),
        test=Split(torch.zeros(1, 6), torch.zeros(1, dtype=torch.int64)),
        num_classes=3,
        input_shape=(6,),
        cache=1,
    )
    lazily = federate(_net(), lazy, algorithm=ALGO, rounds=3, clients_per_round=3, seed=4)
    assert sha256(pairs.params) == sha256(datasets.params) == sha256(lazily.params)
    assert len(pairs.history) == 3
    assert sha256(pairs.params) != sha256(dict(_net().state_dict()))  # it trained


def test_federate_learns_a_separable_task() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 3, generator=g)
    clients = []
    for _ in range(4):
        x = torch.randn(40, 6, generator=g)
        clients.append((x, (x @ w).argmax(1)))
    xt = torch.randn(200, 6, generator=g)
    yt = (xt @ w).argmax(1)
    result = federate(_net(), clients, algorithm=ALGO, rounds=10, test=(xt, yt))
    first, last = result.history[0].central, result.history[-1].central
    assert first is not None and last is not None
    assert last.accuracy > first.accuracy
    assert last.accuracy > 0.8  # a linear teacher: a linear model fits it


def test_bad_client_data_is_refused() -> None:
    with pytest.raises(TypeError, match="must be ClientData"):
        to_client_data([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one client"):
        federate(_net(), [], rounds=1)
