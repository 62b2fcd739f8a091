"""Conformance with the open wire protocol (docs/protocol.md).

* A worker written without fedkit or PyTorch (``examples/numpy_worker``: NumPy, grpcio, protobuf
  and safetensors' NumPy API) takes part in FedAvg rounds beside two ordinary ``fedkit`` workers
  on loopback, in plaintext and under mutual TLS; every round commits with all three, and the
  final model equals the serial simulator's, where the third client's update is computed by
  fedkit (full-batch local SGD on the same MLP: the two differ only by float32 summation order).
* The NumPy model's local SGD equals fedkit's ``train_local`` on the same data (the maths under
  the first check, without the network).
* The coordinator refuses a registration speaking an older or a newer protocol version with
  ``UNSUPPORTED_VERSION`` and a detail naming both versions; the NumPy worker, refused, exits 2
  with the code and the reason.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import ModuleType

import grpc
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file
from safetensors.torch import load as st_load

from fedkit.data.spec import build_federated
from fedkit.data.store import ClientStore
from fedkit.experiment.deploy import load_deployment, run_coordinator, run_worker
from fedkit.experiment.results import ResultsStore
from fedkit.local import LocalStats, LocalTraining, train_local
from fedkit.models.vision import logreg, mlp
from fedkit.net.proto import fedkit_pb2 as pb
from fedkit.net.proto import fedkit_pb2_grpc as pb_grpc
from fedkit.net.tls import create_certs
from fedkit.net.transport import Security
from fedkit.params import Params
from fedkit.run import RunConfig, run
from fedkit.sim.serial import SerialExecutor

REPO = Path(__file__).resolve().parents[2]
NUMPY_WORKER = REPO / "examples" / "numpy_worker"

EXPERIMENT = """
[data]
dataset = "synthetic"
partition = "natural"
num_clients = 3
alpha = 1.0
beta = 1.0
seed = 0

[model]
name = "mlp"
hidden = [16]

[algorithm]
name = "fedavg"

[algorithm.local]
steps = 5
batch_size = 0
lr = 0.05

[run]
rounds = 3
clients_per_round = 3
eval_every = 1
federated_eval_every = 3
seed = 11

[deploy]
deadline_s = 60
select_timeout_s = 60
heartbeat_s = 0.3
liveness_s = 20
quorum = 1.0
"""

NUMPY_CLIENT = 2
"""The client id the NumPy worker serves (fedkit workers serve 0 and 1)."""


def numpy_model() -> ModuleType:
    """The example's ``numpy_model`` module, imported from its file."""
    sys.path.insert(0, str(NUMPY_WORKER))
    try:
        import numpy_model as module
    finally:
        sys.path.remove(str(NUMPY_WORKER))
    return module


# ------------------------------------------------------------------------- maths, no network
def fedkit_delta(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int
) -> tuple[Params, dict[str, np.ndarray], LocalStats]:
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    stats = train_local(
        model, x, y, LocalTraining(lr=lr, steps=steps, batch_size=0),
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    return start, {k: (v - start[k]).numpy() for k, v in model.state_dict().items()}, stats


@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(1, 40),
    hidden=st.lists(st.integers(1, 12), max_size=2),
    lr=st.floats(0.01, 1.0),
    steps=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_numpy_local_sgd_equals_fedkit_train_local(
    n: int, hidden: list[int], lr: float, steps: int, seed: int
) -> None:
    # Full-batch SGD, mean cross-entropy: the update is a function of the data set, not of the
    # batch order, so the two implementations agree up to float32 rounding (eps = 1.2e-7). Each
    # step's θ - lr·g rounds to an ulp of |θ|, and Δ = θ_final - θ_start inherits those ulps:
    # 1e-6·max|θ| is 8 ulps of the largest parameter; the gradients' sums, summed in another
    # order, differ by a few eps of the update itself: 5e-6·max|Δ|. Each step starts from the
    # other's rounded θ, so the differences add up over the steps (× steps; Hypothesis found
    # lr = 0.84, 6 steps, two hidden layers off by 2.8e-5 against a one-step bound of 1.4e-5).
    torch.manual_seed(seed)
    x, y = torch.randn(n, 7), torch.randint(0, 4, (n,))
    model = (
        mlp(num_classes=4, input_shape=(7,), hidden=hidden)
        if hidden
        else logreg(num_classes=4, input_shape=(7,))
    )
    start, want, stats = fedkit_delta(model, x, y, lr, steps)
    nm = numpy_model()
    got = nm.train(
        {k: v.numpy() for k, v in start.items()}, x.numpy(), y.numpy(),
        nm.LocalSGD(lr=lr, steps=steps), rng=np.random.default_rng(seed),
    )  # fmt: skip
    assert (got.steps, got.examples) == (stats.steps, stats.examples) == (steps, steps * n)
    assert got.mean_loss == pytest.approx(stats.mean_loss, rel=1e-5)
    scale = max(float(np.abs(d).max()) for d in want.values())
    size = max(float(v.abs().max()) for v in start.values())
    for k, d in want.items():
        assert got.delta[k].dtype == np.float32
        atol = steps * (1e-6 * size + 5e-6 * scale)
        np.testing.assert_allclose(got.delta[k], d, rtol=0, atol=atol)


def test_numpy_gradient_by_hand() -> None:
    # logistic regression, 2 classes, one example x = [1, 2], y = 0, W = 0, b = 0:
    # z = [0, 0], p = [1/2, 1/2], loss = log 2, dz = p - onehot(0) = [-1/2, 1/2],
    # dW = dz^T x = [[-1/2, -1], [1/2, 1]], db = dz = [-1/2, 1/2].
    nm = numpy_model()
    params = {"1.weight": np.zeros((2, 2), np.float32), "1.bias": np.zeros(2, np.float32)}
    loss, grads = nm.loss_and_grads(params, np.array([[1.0, 2.0]], np.float32), np.array([0]))
    assert loss == pytest.approx(np.log(2))
    np.testing.assert_allclose(grads["1.weight"], [[-0.5, -1.0], [0.5, 1.0]])
    np.testing.assert_allclose(grads["1.bias"], [-0.5, 0.5])
    # one step of lr 0.1 moves W by -0.1 dW: Δ = [[0.05, 0.1], [-0.05, -0.1]]
    out = nm.train(params, np.array([[1.0, 2.0]], np.float32), np.array([0]),
                   nm.LocalSGD(lr=0.1, steps=1), rng=np.random.default_rng(0))  # fmt: skip
    np.testing.assert_allclose(out.delta["1.weight"], [[0.05, 0.1], [-0.05, -0.1]], rtol=1e-6)


def test_numpy_model_refuses_parameters_that_are_not_a_dense_chain() -> None:
    nm = numpy_model()
    w = np.zeros((3, 2), np.float32)
    with pytest.raises(nm.ModelError, match="is not '<index>"):
        nm.layers_of({"conv.weight": w})
    with pytest.raises(nm.ModelError, match="needs both"):
        nm.layers_of({"1.weight": w})
    with pytest.raises(nm.ModelError, match="do not chain"):
        nm.layers_of(
            {"1.weight": w, "1.bias": np.zeros(3, np.float32),
             "3.weight": np.zeros((2, 4), np.float32), "3.bias": np.zeros(2, np.float32)}
        )  # fmt: skip


# ------------------------------------------------------------------------- loopback run
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ctx() -> ForkServerContext:
    c = mp.get_context("forkserver")
    c.set_forkserver_preload(["torch._dynamo", "fedkit.experiment.deploy"])
    return c


@pytest.fixture
def procs() -> Iterator[list[BaseProcess | subprocess.Popen[str]]]:
    started: list[BaseProcess | subprocess.Popen[str]] = []
    yield started
    for p in started:
        if isinstance(p, subprocess.Popen):
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=10)
        else:
            if p.is_alive():
                p.kill()
            p.join(5)


def export_client(exp: Path, client_id: int, out: Path) -> Path:
    """Client ``client_id``'s partition as the NumPy worker's data file (what its owner holds)."""
    store = ClientStore.from_federated(build_federated(load_deployment(exp).data))
    d = store.data(client_id)
    arrays = {"x": d.x_train.numpy(), "y": d.y_train.numpy()}
    if d.x_test is not None and d.y_test is not None:
        arrays |= {"x_test": d.x_test.numpy(), "y_test": d.y_test.numpy()}
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(out))
    return out


def poisoned_path(root: Path) -> Path:
    """A directory whose ``torch`` and ``fedkit`` packages fail on import: first on the NumPy
    worker's PYTHONPATH, it proves the worker imports neither."""
    for name in ("torch", "fedkit"):
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text(
            f"raise ImportError('the NumPy worker imported {name}')\n"
        )
    return root


def start_numpy_worker(
    address: str, exp: Path, data: Path, poison: Path, certs: Path | None = None
) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(poison)}
    tls = [] if certs is None else ["--tls-dir", str(certs), "--tls-name", f"worker-{NUMPY_CLIENT}"]
    return subprocess.Popen(
        [sys.executable, str(NUMPY_WORKER / "worker.py"), "--coordinator", address,
         "--experiment", str(exp), "--client-id", str(NUMPY_CLIENT), "--data", str(data),
         "--lr", "0.05", "--local-steps", "5", "--batch-size", "0", "--give-up-s", "60", *tls],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def serial_params(exp_path: Path) -> tuple[Params, Params]:
    """The initial and final global parameters of the serial simulator on the same file."""
    exp = load_deployment(exp_path)
    fd = build_federated(exp.data)
    model = exp.build_model(num_classes=fd.dataset.num_classes, input_shape=fd.dataset.input_shape)
    init = exp.initial_params(model)
    res = run(
        exp.algorithm,
        SerialExecutor(ClientStore.from_federated(fd), model),
        init,
        RunConfig(rounds=exp.rounds, clients_per_round=3, seed=exp.seed, eval_every=0),
    )
    return init, res.params


def committed_params(out: Path) -> Params:
    """The global parameters in the coordinator's last committed checkpoint."""
    with sqlite3.connect(out / "coordinator.db") as con:
        (blob,) = con.execute("SELECT data FROM checkpoint").fetchone()
    prefix = "server/params/"
    return {k[len(prefix) :]: v for k, v in st_load(bytes(blob)).items() if k.startswith(prefix)}


@pytest.mark.net
@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "mutual-tls"])
def test_numpy_worker_and_fedkit_workers_share_fedavg_rounds(
    ctx: ForkServerContext,
    procs: list[BaseProcess | subprocess.Popen[str]],
    tmp_path: Path,
    tls: bool,
) -> None:
    exp = tmp_path / "exp.toml"
    exp.write_text(EXPERIMENT)
    data = export_client(exp, NUMPY_CLIENT, tmp_path / f"client-{NUMPY_CLIENT}.safetensors")
    out = tmp_path / "out"
    address = f"127.0.0.1:{free_port()}"
    certs = tmp_path / "certs" if tls else None
    if certs is not None:  # worker-2's certificate names client 2 only: the NumPy worker's
        create_certs(certs, coordinator_hosts=["127.0.0.1"], workers=3)
    security = Security(cert_dir=certs)
    coordinator = ctx.Process(
        target=run_coordinator,
        kwargs={"experiment": exp, "listen": address, "out_dir": out, "min_workers": 3,
                "security": security},
        daemon=True,
    )  # fmt: skip
    coordinator.start()
    procs.append(coordinator)
    for cid in (0, 1):
        w = ctx.Process(
            target=run_worker,
            kwargs={"coordinator": address, "experiment": exp, "give_up_s": 60.0,
                    "client_ids": [cid], "security": security, "tls_name": f"worker-{cid}"},
            daemon=True,
        )  # fmt: skip
        w.start()
        procs.append(w)
    numpy_worker = start_numpy_worker(address, exp, data, poisoned_path(tmp_path / "poison"), certs)
    procs.append(numpy_worker)

    coordinator.join(120)
    stdout, stderr = numpy_worker.communicate(timeout=30)
    assert coordinator.exitcode == 0, f"coordinator exit {coordinator.exitcode}; numpy: {stderr}"
    assert numpy_worker.returncode == 0, stderr
    assert json.loads(stdout.strip().splitlines()[-1]) == {"client_id": 2, "rounds": 3}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["committed_rounds"] == 3

    # every round committed with all three results, the NumPy worker's among them
    with sqlite3.connect(out / "coordinator.db") as con:
        rows = con.execute(
            "SELECT round, committed, accepted FROM rounds ORDER BY round"
        ).fetchall()
    assert [(r, c, json.loads(a)) for r, c, a in rows] == [(i, 1, [0, 1, 2]) for i in range(3)]
    # the federated evaluation after the last round reached all three (the NumPy worker scored
    # the global model on its own test split)
    with ResultsStore.in_dir(out, create=False) as store:
        assert store.rounds(summary["run_id"])[-1].fed_clients == 3

    # The serial simulator computes client 2's update with fedkit: the models are equal up to
    # float32 summation order, while three rounds moved the model by far more than that.
    init, want = serial_params(exp)
    got = committed_params(out)
    assert sorted(got) == sorted(want)
    moved = max(float((want[k] - init[k]).abs().max()) for k in want)
    assert moved > 1e-2
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-5)


# ------------------------------------------------------------------------- refusals
@pytest.mark.net
def test_coordinator_refuses_other_protocol_versions_and_the_numpy_worker_says_why(
    ctx: ForkServerContext, procs: list[BaseProcess | subprocess.Popen[str]], tmp_path: Path
) -> None:
    exp = tmp_path / "exp.toml"
    exp.write_text(EXPERIMENT)
    digest = load_deployment(exp).digest
    address = f"127.0.0.1:{free_port()}"
    coordinator = ctx.Process(
        target=run_coordinator,
        kwargs={"experiment": exp, "listen": address, "out_dir": tmp_path / "out",
                "min_workers": 3},
        daemon=True,
    )  # fmt: skip
    coordinator.start()
    procs.append(coordinator)
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
        stub = pb_grpc.CoordinatorStub(channel)

        def register(v: int) -> pb.RegisterReply:
            req = pb.RegisterRequest(client_id="0", experiment_digest=digest, protocol_version=v)
            reply: pb.RegisterReply = stub.Register(req, timeout=30)
            return reply

        for version in (0, 2):  # 0: a worker older than the field (unset); 2: a newer one
            refused = register(version)
            assert refused.error.code == pb.UNSUPPORTED_VERSION
            assert not refused.token and not refused.worker_id
            # the detail names the version spoken and the one served (the operator's next step)
            words = re.findall(r"\d+", refused.error.detail)
            assert str(version) in words and "1" in words, refused.error.detail
        # the refusals took nothing: the same client id registers at version 1
        accepted = register(1)
        assert accepted.error.code == pb.OK and accepted.token
        assert accepted.protocol_version == 1

    # The NumPy worker started with another experiment file is refused at registration: it exits
    # 2 at once (no retry) with the code and the coordinator's reason.
    other = tmp_path / "other.toml"
    other.write_text(EXPERIMENT.replace("rounds = 3", "rounds = 4"))
    data = export_client(exp, NUMPY_CLIENT, tmp_path / "client.safetensors")
    w = start_numpy_worker(address, other, data, poisoned_path(tmp_path / "poison"))
    procs.append(w)
    _, err = w.communicate(timeout=60)
    assert w.returncode == 2, err
    assert "RUN_MISMATCH" in err and "experiment file differs" in err, err
