"""Compression in a loopback deployment: the workers send the encoded update (packed codes,
positions and values) as safetensors, so the bytes the coordinator receives equal the
simulator's recorded bytes plus only the safetensors header, are at most 1.05 × the encoding's
theoretical size, and the model equals the serial simulator's bit for bit — with error feedback's
residual kept by each worker as its client state, and clip → compress → mean in one file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fedkit.compress.feedback import find_compressor
from fedkit.data.spec import build_federated
from fedkit.data.store import ClientStore
from fedkit.experiment.deploy import load_deployment
from fedkit.experiment.results import ResultsStore
from fedkit.params import model_params, sha256
from fedkit.run import RunConfig, RunResult, run
from fedkit.sim.serial import SerialExecutor
from tests.integration import test_net_deploy as net
from tests.integration.test_net_deploy import Cluster, write_experiment

ctx = net.ctx  # the loopback cluster's fixtures
cluster = net.cluster

pytestmark = [pytest.mark.net, pytest.mark.slow]

CLIENTS = 3
CHAINS = {
    "8-bit": '[aggregator]\nname = "quantize"\nbits = 8\n',
    "3-bit chunk 512": '[aggregator]\nname = "quantize"\nbits = 3\nchunk = 512\n',
    "sign+ef": '[aggregator]\nname = "sign"\nerror_feedback = true\n',
    "clip+top2%+ef": (
        '[aggregator]\nname = "clip"\nmax_norm = 1.0\n\n'
        '[aggregator.inner]\nname = "topk"\nfraction = 0.02\nerror_feedback = true\n'
    ),
}


def _simulate(path: Path) -> tuple[RunResult[object], int]:
    """The serial simulator on the deployment's algorithm; and the encoding's theoretical size
    for one client's update."""
    exp = load_deployment(path)
    fd = build_federated(exp.data)
    model = exp.build_model(num_classes=fd.dataset.num_classes, input_shape=fd.dataset.input_shape)
    res = run(
        exp.algorithm,
        SerialExecutor(ClientStore.from_federated(fd), model),
        exp.initial_params(model),
        RunConfig(rounds=exp.rounds, clients_per_round=CLIENTS, seed=exp.seed, eval_every=0),
    )
    comp = find_compressor(exp.algorithm.aggregator)
    assert comp is not None
    theory = sum(comp.theoretical_nbytes(t.numel(), 4) for t in model_params(model).values())
    return res, theory


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_wire_bytes_are_the_encoded_bytes(
    cluster: Callable[[Path], Cluster], tmp_path: Path, chain: str
) -> None:
    exp = write_experiment(
        tmp_path / "exp.toml", clients=CLIENTS, per_round=CLIENTS, rounds=3, algorithm="fedavg",
        liveness=10, extra=CHAINS[chain],
    )  # fmt: skip
    # a wider MLP (60 → 2048 → 10, 145k parameters), so the header is small beside the payload
    exp.write_text(exp.read_text().replace("hidden = [32]", "hidden = [2048]", 1))
    c = cluster(exp)
    c.start_coordinator(min_workers=CLIENTS)
    c.start_workers(range(CLIENTS))
    summary = c.summary(timeout=120)
    assert summary["committed_rounds"] == 3
    ref, theory = _simulate(exp)
    # the same model: each worker fed back its own residual, as the simulator's store did
    assert summary["model_sha256"] == sha256(ref.params)
    with ResultsStore.in_dir(c.out, create=False) as store:
        rows = store.rounds(summary["run_id"])  # type: ignore[arg-type]
    assert [r.round for r in rows] == [0, 1, 2]
    dense = 4 * sum(t.numel() for t in ref.params.values())
    for row, sim in zip(rows, ref.history, strict=True):
        # the simulator counts the encoded tensors: exactly the theoretical size per client
        assert sim.bytes_up == CLIENTS * theory < CLIENTS * dense / 3
        header = row.bytes_up - sim.bytes_up  # safetensors' 8-byte length + JSON header
        assert 0 < header <= CLIENTS * 1200
        assert row.bytes_up <= 1.05 * CLIENTS * theory
