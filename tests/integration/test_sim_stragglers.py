"""FedProx's straggler experiment (Li et al. 2020, §5.2) with the settings of the example file.

With 90% stragglers, FedProx (mu = 1, partial work accepted) ends above FedAvg (stragglers
dropped) on Synthetic(1, 1).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from fedkit.algorithms import FedAvg, FedProx
from fedkit.data.spec import DataSpec, build_federated
from fedkit.data.store import ClientStore
from fedkit.local import LocalTraining
from fedkit.params import model_params
from fedkit.run import RunConfig, central_evaluator, run
from fedkit.sim.factory import ModelSpec, build_executor
from fedkit.sim.system import SimulatedClock, SystemModel

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fedprox_stragglers.toml"


def _final_accuracy(cfg: dict[str, Any], arm: dict[str, Any]) -> tuple[float, int]:
    fd = build_federated(DataSpec.from_mapping(cfg["data"]))
    store = ClientStore.from_federated(fd)
    a = cfg["algorithm"]["local"]
    local = LocalTraining(lr=a["lr"], epochs=a["epochs"], batch_size=a["batch_size"])
    arm_alg = arm.get("algorithm", {})  # TOML dotted keys are nested tables
    if arm_alg.get("name") == "fedprox":
        alg: Any = FedProx(local=local, mu=arm_alg["mu"])
    else:
        alg = FedAvg(local=local)
    table = {**cfg["system"], **arm.get("system", {})}
    system = SystemModel.from_mapping(table)
    spec = ModelSpec(name=cfg["model"]["name"], num_classes=10, input_shape=(60,))
    ex = build_executor("serial", store=store, model_fn=spec, system=system, local=local)
    assert isinstance(ex, SimulatedClock)
    res = run(
        alg,
        ex,
        model_params(spec.build()),
        RunConfig(
            rounds=cfg["run"]["rounds"],
            clients_per_round=cfg["run"]["clients_per_round"],
            seed=cfg["run"]["seed"],
            eval_every=cfg["run"]["rounds"],
        ),
        evaluator=central_evaluator(spec.build(), fd.dataset.test.x, fd.dataset.test.y),
    )
    last = res.history[-1].central
    assert last is not None
    return last.accuracy, sum(len(r.clients) for r in res.history)


@pytest.mark.slow
def test_fedprox_with_partial_work_beats_fedavg_dropping_90_percent_stragglers() -> None:
    cfg = tomllib.loads(EXAMPLE.read_text())
    assert cfg["system"]["stragglers"] == 0.9
    arms = {arm["name"]: arm for arm in cfg["arms"]}
    avg_acc, avg_updates = _final_accuracy(cfg, arms["fedavg_drop"])
    prox_acc, prox_updates = _final_accuracy(cfg, arms["fedprox_partial"])
    rounds, k = cfg["run"]["rounds"], cfg["run"]["clients_per_round"]
    assert prox_updates == rounds * k  # every straggler's partial work was accepted
    assert avg_updates < 0.25 * rounds * k  # about 10% of the selected clients finished
    assert prox_acc > avg_acc + 0.1, (prox_acc, avg_acc)
