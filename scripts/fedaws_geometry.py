"""The class-embedding geometry of positive-only FedAvg and FedAwS on one-class MNIST, per round.

Yu, Rawat, Menon and Kumar 2020 ("Federated Learning with Only Positive Labels") expect FedAvg
with only the positive loss ``(max(0, ν − cos(g(x), w_y)))²`` to collapse: every class embedding
``w_c`` moves toward the same point. This script measures how far it goes, with the settings of
``examples/fedaws_mnist.toml`` (100 clients of one digit each, ``embedding_mlp``, 20 clients per
round, one epoch at batch 20, ``ν = 0.9``), printing every tenth round as JSON:

* ``emb_cos``: mean pairwise cosine of the class embeddings (0 for orthogonal, 1 when collapsed);
* ``feat_cos``: mean pairwise cosine of the class-mean features ``g(x)`` on 2,000 test images;
* ``own_cos``: mean ``cos(g(x), w_y)`` on those images (the positive loss is zero above ``ν``);
* ``acc``: test accuracy on those images.

Usage (docs/personalisation.md has a run)::

    FEDKIT_DATA=... python scripts/fedaws_geometry.py --rounds 200 --arm positive
    FEDKIT_DATA=... python scripts/fedaws_geometry.py --rounds 40 --arm fedaws
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.nn import functional as F

from fedkit.algorithms.fedaws import FedAwS
from fedkit.api import federate
from fedkit.data.spec import DataSpec, build_federated
from fedkit.local import LocalTraining
from fedkit.models.personal import EMBEDDINGS, EmbeddingClassifier, embedding_mlp
from fedkit.params import Params, load_params
from fedkit.run import RoundRecord


def main() -> None:
    """Run one arm and print its geometry every tenth round."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--arm", choices=("positive", "fedaws"), default="positive")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    spec = DataSpec(
        dataset="mnist", partition="one_class", num_clients=100, seed=0, test_partition="none"
    )
    fd = build_federated(spec)
    ds = fd.dataset
    clients = [(ds.train.x[i], ds.train.y[i]) for i in fd.train_parts]
    xt, yt = ds.test.x[:2000], ds.test.y[:2000]
    shape = tuple(ds.train.x.shape[1:])
    model = embedding_mlp(num_classes=10, input_shape=shape)
    probe = embedding_mlp(num_classes=10, input_shape=shape)
    assert isinstance(probe, EmbeddingClassifier)
    local = LocalTraining(lr=0.05, epochs=1, batch_size=20)
    spread = (1.0, 0.5, 1.4) if args.arm == "fedaws" else (0.0, 0.1, 1.2)
    alg = FedAwS(local=local, spread_weight=spread[0], spread_lr=spread[1], spread_margin=spread[2])
    off = ~torch.eye(10, dtype=torch.bool)

    def measure(record: RoundRecord, params: Params) -> None:
        w = F.normalize(params[EMBEDDINGS], dim=1)
        load_params(probe, params)
        with torch.no_grad():
            g = F.normalize(probe.body(xt), dim=1)
            acc = (probe(xt).argmax(1) == yt).float().mean().item()
        mu = F.normalize(torch.stack([g[yt == c].mean(0) for c in range(10)]), dim=1)
        row = {
            "round": record.round + 1,
            "emb_cos": (w @ w.T)[off].mean().item(),
            "feat_cos": (mu @ mu.T)[off].mean().item(),
            "own_cos": (g * w[yt]).sum(1).mean().item(),
            "acc": acc,
        }
        if record.round == 0 or (record.round + 1) % 10 == 0:
            print(json.dumps(row), flush=True)

    federate(
        model,
        clients,
        algorithm=alg,
        rounds=args.rounds,
        clients_per_round=20,
        seed=args.seed,
        eval_every=0,
        callbacks=[measure],
    )


if __name__ == "__main__":
    main()
