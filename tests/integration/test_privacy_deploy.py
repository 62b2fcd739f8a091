"""Privacy in deployment (loopback): adaptive clipping gives the simulator's model and clip norms
(the aggregator state reaches every worker), and a DP-FedAvg coordinator plans privacy as
``fedkit run`` does — ε every round in results.sqlite, the target-ε stop — and continues ε after
it is killed and restarted."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dp_accounting as dpa
import pytest
from dp_accounting.rdp import RdpAccountant

from fedkit.data.spec import build_federated
from fedkit.data.store import ClientStore
from fedkit.experiment.deploy import read_deployment
from fedkit.experiment.results import ResultsStore
from fedkit.params import sha256
from fedkit.privacy.adaptive_clip import CLIP_NORM, AdaptiveClip
from fedkit.privacy.gaussian import GaussianNoise
from fedkit.run import RunConfig, RunResult, run
from fedkit.sim.serial import SerialExecutor
from tests.integration import test_net_deploy as net
from tests.integration.test_net_deploy import Cluster, write_experiment

ctx = net.ctx  # the loopback cluster's fixtures
cluster = net.cluster

pytestmark = pytest.mark.net

ADAPTIVE = """
[aggregator]
name = "adaptive_clip"
target_quantile = 0.5
learning_rate = 0.5
initial_norm = 0.05
"""

DP = """
[aggregator]
name = "clip"
max_norm = 0.5

[aggregator.inner]
name = "gaussian"
noise_multiplier = 2.0
clip_norm = 0.5
target_epsilon = {target}
"""


def _simulate(path: Path) -> RunResult[object]:
    """The serial simulator on the deployment's own (resolved) algorithm and probes."""
    file = read_deployment(path)
    exp = file.deployment
    fd = build_federated(exp.data)
    model = exp.build_model(num_classes=fd.dataset.num_classes, input_shape=fd.dataset.input_shape)
    return run(
        exp.algorithm,
        SerialExecutor(ClientStore.from_federated(fd), model),
        exp.initial_params(model),
        RunConfig(
            rounds=exp.rounds,
            clients_per_round=exp.cohort_size(len(fd.train_parts)),
            seed=exp.seed,
            eval_every=0,
        ),
        probes=file.privacy.probes,
    )


def _write(tmp_path: Path, extra: str, rounds: int, steps: int = 5) -> Path:
    exp = write_experiment(
        tmp_path / "exp.toml", clients=4, per_round=4, rounds=rounds, algorithm="fedavg",
        liveness=10, steps=steps, extra=extra,
    )  # fmt: skip
    text = exp.read_text().replace("lr = 0.05\n", 'lr = 0.05\nweighting = "uniform"\n', 1)
    exp.write_text(text)
    return exp


def test_adaptive_clipping_deployment_equals_the_simulator(
    cluster: Callable[[Path], Cluster], tmp_path: Path
) -> None:
    exp = _write(tmp_path, ADAPTIVE, rounds=3)
    assert isinstance(read_deployment(exp).deployment.algorithm.aggregator, AdaptiveClip)
    c = cluster(exp)
    c.start_coordinator(min_workers=4)
    c.start_workers(range(4))
    summary = c.summary(timeout=60)
    assert summary["committed_rounds"] == 3
    ref = _simulate(exp)
    assert summary["model_sha256"] == sha256(ref.params)
    want = [r.metrics["agg_clip_norm"] for r in ref.history]
    with ResultsStore.in_dir(c.out, create=False) as store:
        rounds = store.rounds(summary["run_id"])  # type: ignore[arg-type]
    got = [r.details["agg_clip_norm"] for r in rounds if r.details is not None]
    # the clip norm each round ran with, C_0 = 0.05 then moved: the workers clipped to the
    # state they were sent, bit for bit as the simulator's clients
    assert got == want and got[0] == 0.05 and len(set(got)) == 3
    assert dict(ref.agg_state)[CLIP_NORM] not in got  # C_3, after the last round


def _epsilon(rounds: int, delta: float) -> float:
    """dp-accounting by hand: N = k = 4 (everyone, fixed size): replace-one, each round a
    Gaussian with multiplier z/2 = 1 on the sensitivity 2C; no sampling amplification."""
    acc = RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    acc.compose(dpa.GaussianDpEvent(1.0), rounds)
    return float(acc.get_epsilon(delta))


def test_dp_deployment_reports_epsilon_stops_at_target_and_continues_after_restart(
    cluster: Callable[[Path], Cluster], tmp_path: Path
) -> None:
    delta = 4**-1.1  # 1/N^1.1
    target = (_epsilon(4, delta) + _epsilon(5, delta)) / 2  # round 4 would exceed it
    exp = _write(tmp_path, DP.format(target=target), rounds=8, steps=20)
    noise = read_deployment(exp).deployment.algorithm.aggregator.inner
    assert isinstance(noise, GaussianNoise)
    assert noise.expected_clients == 4 and noise.noise_source == "auto"  # OS CSPRNG
    c = cluster(exp)
    c.start_coordinator(min_workers=4)
    c.start_workers(range(4))
    c.wait_rounds(2, timeout=60)
    assert c.coordinator is not None
    c.coordinator.kill()
    c.coordinator.join(5)
    c.start_coordinator()  # same state directory: resumes after the last committed round
    summary = c.summary(timeout=60)
    assert summary["status"] == "completed" and summary["committed_rounds"] == 4
    assert "target_epsilon" in str(summary["stopped"])
    assert 2 <= int(summary["start_round"]) <= 4  # type: ignore[call-overload]
    with ResultsStore.in_dir(c.out, create=False) as store:
        (run_row,) = store.runs()
        rows = store.rounds(run_row.id)
    assert [r.round for r in rows] == [0, 1, 2, 3]
    for r in rows:
        assert r.details is not None
        assert r.details["dp_epsilon"] == pytest.approx(_epsilon(r.round + 1, delta), rel=1e-9)
        assert r.details["dp_delta"] == pytest.approx(delta)
    assert rows[-1].details is not None and rows[-1].details["dp_epsilon"] <= target
