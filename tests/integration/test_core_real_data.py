"""The core on real data through the public interface: FedAvg/FedProx/SCAFFOLD learn MNIST."""

from __future__ import annotations

import pytest
import torch

from fedkit.algorithms import FedAvg, FedProx, Scaffold
from fedkit.data.datasets import Split, load_dataset
from fedkit.data.spec import DataSpec, build_federated
from fedkit.data.store import ClientStore
from fedkit.evaluate import evaluate
from fedkit.local import LocalTraining
from fedkit.models import build_model
from fedkit.params import model_params
from fedkit.run import RunConfig, central_evaluator, run
from fedkit.sim.serial import SerialExecutor
from tests.conftest import require_data

MNIST = (
    "mnist/train-images-idx3-ubyte.gz",
    "mnist/train-labels-idx1-ubyte.gz",
    "mnist/t10k-images-idx3-ubyte.gz",
    "mnist/t10k-labels-idx1-ubyte.gz",
)
LOCAL = LocalTraining(lr=0.1, epochs=1, batch_size=10)


def _store(partition: str, **kw: int) -> ClientStore:
    require_data(*MNIST)
    spec = DataSpec(dataset="mnist", partition=partition, num_clients=100, seed=0, **kw)
    return ClientStore.from_federated(build_federated(spec))


@pytest.fixture(scope="module")
def test_split() -> Split:
    require_data(*MNIST)
    test = load_dataset("mnist").test
    return Split(x=test.x[:2000], y=test.y[:2000])


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("mlp", num_classes=10, input_shape=(1, 28, 28))


@pytest.mark.parametrize(
    "alg",
    [FedAvg(local=LOCAL), FedProx(local=LOCAL, mu=0.01), Scaffold(local=LOCAL)],
    ids=["fedavg", "fedprox", "scaffold"],
)
def test_learns_mnist_iid(alg: object, test_split: Split) -> None:
    """2NN, 100 IID clients of 600 images, 3 rounds × 5 clients, E=1, B=10."""
    model = _mlp()
    res = run(
        alg,  # type: ignore[arg-type]
        SerialExecutor(_store("iid"), model),
        model_params(model),
        RunConfig(rounds=3, clients_per_round=5, seed=0, federated_eval_every=3),
        evaluator=central_evaluator(_mlp(), test_split.x, test_split.y),
    )
    acc = [r.central.accuracy for r in res.history if r.central is not None]
    assert acc[-1] > 0.75 and acc[-1] > acc[0], acc
    fed = res.history[-1].federated
    assert fed is not None and fed.clients == 100 and fed.p10 <= fed.mean <= 1.0


def test_pathological_shards_still_improve(test_split: Split) -> None:
    """McMahan's 2-shards-per-client split: clients see ~2 labels each, FedAvg still learns."""
    store = _store("shards", shards_per_client=2)
    labels = [len(set(store.data(c).y_train.tolist())) for c in range(100)]
    # a 300-image shard can straddle a label boundary, so a few clients see 3 or 4 labels
    assert max(labels) <= 4 and sum(labels) / 100 <= 2.5, labels
    model = _mlp()
    before = evaluate(_mlp(), test_split.x, test_split.y).accuracy
    res = run(
        FedAvg(local=LOCAL),
        SerialExecutor(store, model),
        model_params(model),
        RunConfig(rounds=3, clients_per_round=10, seed=0),
        evaluator=central_evaluator(_mlp(), test_split.x, test_split.y),
    )
    after = res.history[-1].central
    assert after is not None and after.accuracy > before + 0.2, (before, after)
