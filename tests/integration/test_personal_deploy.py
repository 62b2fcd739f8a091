"""Personalised methods in deployment: Ditto (a whole personal model per client, kept by the
worker) and q-FedAvg (a scalar h beside the update) run on a loopback coordinator and real
workers, and give the serial simulator's global model bit for bit and its personal accuracy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fedkit.experiment.results import ResultsStore
from tests.integration import test_net_deploy as net
from tests.integration.test_net_deploy import Cluster, write_experiment

ctx = net.ctx  # the loopback cluster's fixtures
cluster = net.cluster

pytestmark = [pytest.mark.net, pytest.mark.slow]  # ~5 s a case


@pytest.mark.parametrize(
    ("extra", "personal"),
    [
        ("lam = 0.5\n", True),
        ("q = 1.0\n", False),
    ],
    ids=["ditto", "qfedavg"],
)
def test_personalised_and_fair_methods_deploy_as_they_simulate(
    cluster: Callable[[Path], Cluster], tmp_path: Path, extra: str, personal: bool
) -> None:
    algorithm = "ditto" if personal else "qfedavg"
    exp = write_experiment(
        tmp_path / "exp.toml", clients=4, per_round=4, rounds=2, algorithm=algorithm, fed_every=2,
        liveness=10,
    )  # fmt: skip
    text = exp.read_text()
    head = f'name = "{algorithm}"\n'
    assert text.count(head) == 1
    exp.write_text(text.replace(head, head + extra))
    c = cluster(exp)
    c.min_workers = 4
    c.start_coordinator()
    c.start_workers(range(4))
    summary = c.summary(timeout=50)
    assert summary["committed_rounds"] == 2
    sha, fed_mean = net.serial_reference(exp)
    assert summary["model_sha256"] == sha
    with ResultsStore.in_dir(c.out, create=False) as store:
        last = store.rounds(summary["run_id"])[-1]  # type: ignore[arg-type]
        assert last.fed_clients == 4 and last.fed_mean == fed_mean
        if personal:
            assert last.fed_personal_mean == pytest.approx(net.serial_personal_mean(exp), abs=1e-12)
        else:
            assert last.fed_personal_mean is None
