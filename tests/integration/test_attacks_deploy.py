"""Attacks in deployment: a real worker attacks (from the experiment file's [attack] table or
from `fedkit worker --attack`), and the coordinator's model equals the simulator's with the same
attackers, bit for bit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedkit.data.spec import build_federated
from fedkit.data.store import ClientStore
from fedkit.experiment.attack import AttackSettings
from fedkit.experiment.deploy import read_deployment
from fedkit.params import sha256
from fedkit.run import RunConfig, run
from fedkit.sim.serial import SerialExecutor
from tests.integration import test_net_deploy as net
from tests.integration.test_net_deploy import Cluster, write_experiment

ctx = net.ctx  # the loopback cluster's fixtures
cluster = net.cluster

pytestmark = pytest.mark.net

BACKDOOR = {"name": "backdoor", "target": 2, "patch": 3, "value": 4.0, "clients": [1]}


def simulated_sha(path: Path, attack: AttackSettings) -> str:
    """The serial simulator's final model with ``attack``'s clients attacking."""
    file = read_deployment(path)
    exp = file.deployment
    fd = build_federated(exp.data)
    store = ClientStore.from_federated(fd)
    model = exp.build_model(num_classes=fd.dataset.num_classes, input_shape=fd.dataset.input_shape)
    algorithm = attack.wrap(
        exp.algorithm,
        num_clients=store.num_clients,
        seed=exp.seed,
        num_classes=fd.dataset.num_classes,
    )
    res = run(
        algorithm,
        SerialExecutor(store, model),
        exp.initial_params(model),
        RunConfig(
            rounds=exp.rounds,
            clients_per_round=exp.cohort_size(store.num_clients),
            seed=exp.seed,
            eval_every=0,
        ),
    )
    return sha256(res.params)


def test_worker_attack_option_equals_the_simulated_attacker(
    cluster: Callable[[Path], Cluster], tmp_path: Path
) -> None:
    exp = write_experiment(
        tmp_path / "exp.toml", clients=4, per_round=4, rounds=2, algorithm="fedavg",
        liveness=10, extra='[aggregator]\nname = "trimmed_mean"\nbeta = 0.25\n',
    )  # fmt: skip
    c = cluster(exp)
    c.min_workers = 4
    c.start_coordinator(min_workers=4)
    c.start_workers(range(0, 1))
    c.start_workers(range(2, 4))
    settings = AttackSettings.from_mapping(BACKDOOR)
    from fedkit.experiment.deploy import run_worker

    c.workers[1] = c._start(
        run_worker,
        {"coordinator": c.address, "experiment": exp, "client_ids": [1], "give_up_s": 30.0,
         "attack": settings},
    )  # fmt: skip
    summary = c.summary(timeout=60)
    assert summary["committed_rounds"] == 2
    want = simulated_sha(exp, settings)
    assert summary["model_sha256"] == want
    clean = write_experiment(
        tmp_path / "clean.toml", clients=4, per_round=4, rounds=2, algorithm="fedavg",
        liveness=10, extra='[aggregator]\nname = "trimmed_mean"\nbeta = 0.25\n',
    )  # fmt: skip
    assert want != simulated_sha(clean, AttackSettings.from_mapping({**BACKDOOR, "clients": []}))


def test_attack_table_in_the_file_makes_the_named_worker_attack(
    cluster: Callable[[Path], Cluster], tmp_path: Path
) -> None:
    table = "\n".join(
        ["[attack]"] + [f"{k} = {v!r}".replace("'", '"') for k, v in BACKDOOR.items()]
    )
    exp = write_experiment(
        tmp_path / "exp.toml", clients=4, per_round=4, rounds=2, algorithm="fedavg",
        liveness=10, extra=table + '\n[aggregator]\nname = "median"\n',
    )  # fmt: skip
    c = cluster(exp)
    c.start_coordinator(min_workers=4)
    c.start_workers(range(4))
    summary = c.summary(timeout=60)
    assert summary["committed_rounds"] == 2
    assert summary["model_sha256"] == simulated_sha(exp, AttackSettings.from_mapping(BACKDOOR))


def test_worker_cli_refuses_a_bad_attack_before_connecting(tmp_path: Path) -> None:
    from fedkit.cli import _mount, app

    _mount()

    exp = write_experiment(tmp_path / "exp.toml", clients=2, per_round=2, rounds=1)
    runner = CliRunner()
    base = ["worker", "--coordinator", "127.0.0.1:1", "--experiment", str(exp), "--client-id", "0"]
    out = runner.invoke(app, [*base, "--attack", "nope"])
    assert out.exit_code == 2 and "attack.name" in out.output
    out = runner.invoke(app, [*base, "--attack", "sign_flip", "--attack-set", "scale=-1"])
    assert out.exit_code == 2 and "scale must be positive" in out.output
    out = runner.invoke(app, [*base, "--attack-set", "scale=2"])
    assert out.exit_code == 2 and "--attack-set needs --attack" in out.output
