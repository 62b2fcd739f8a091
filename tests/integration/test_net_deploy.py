"""Deployment on loopback: a coordinator and worker processes against the serial simulator.

Workers and coordinators are real processes (SIGKILL-able), forked from a multiprocessing
forkserver that has fedkit and torch imported once, so each start costs milliseconds instead of a
fresh interpreter's import time on a loaded 2-core machine.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import socket
import sqlite3
import statistics
import time
from collections.abc import Callable, Iterator
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import pytest

from fedkit.data.spec import build_federated
from fedkit.data.store import ClientStore
from fedkit.evaluate import Distribution
from fedkit.experiment.deploy import load_deployment, run_coordinator, run_worker
from fedkit.experiment.results import ResultsStore
from fedkit.net.tls import create_certs
from fedkit.net.transport import Security
from fedkit.params import sha256
from fedkit.run import RunConfig, RunResult, run
from fedkit.sampling import Population
from fedkit.sim.serial import SerialExecutor

pytestmark = pytest.mark.net

EXPERIMENT = """
[data]
dataset = "synthetic"
partition = "natural"
num_clients = {clients}
alpha = 1.0
beta = 1.0
seed = 0

[model]
name = "mlp"
hidden = [32]

[algorithm]
name = "{algorithm}"
clients_per_round = {per_round}
{local}
batch_size = 10
lr = 0.05

[run]
rounds = {rounds}
eval_every = 1
federated_eval_every = {fed_every}
seed = 7

[deploy]
deadline_s = {deadline}
select_timeout_s = 20
heartbeat_s = 0.3
liveness_s = {liveness}
quorum = {quorum}
{deploy}
{extra}
"""


def write_experiment(
    path: Path,
    *,
    clients: int,
    per_round: int,
    rounds: int,
    steps: int = 5,
    deadline: float = 30,
    liveness: float = 5.0,
    quorum: float = 1.0,
    local: str | None = None,
    deploy: str = "",
    algorithm: str = "fedavgm",
    fed_every: int = 0,
    extra: str = "",
) -> Path:
    path.write_text(
        EXPERIMENT.format(
            clients=clients, per_round=per_round, rounds=rounds,
            local=local or f"local_steps = {steps}", deadline=deadline, liveness=liveness,
            quorum=quorum, deploy=deploy, algorithm=algorithm, fed_every=fed_every,
            extra=extra,
        )
    )  # fmt: skip
    return path


def serial_run(path: Path, rounds: int | None = None) -> tuple[RunResult[Any], SerialExecutor]:
    """The serial simulator's run of the same experiment file (its sampler, with the clients'
    data sizes for the samplers that weigh by them), and its executor."""
    exp = load_deployment(path)
    fd = build_federated(exp.data)
    model = exp.build_model(num_classes=fd.dataset.num_classes, input_shape=fd.dataset.input_shape)
    store = ClientStore.from_federated(fd)
    sizes = tuple(store.num_examples(k) for k in range(store.num_clients))
    executor = SerialExecutor(store, model)
    res = run(
        exp.algorithm,
        executor,
        exp.initial_params(model),
        RunConfig(
            rounds=rounds or exp.rounds,
            clients_per_round=exp.cohort_size(len(fd.train_parts)),
            seed=exp.seed,
            eval_every=0,
        ),
        sampler=exp.sampler,
        population=Population(len(sizes), sizes),
    )
    return res, executor


def serial_reference(path: Path, rounds: int | None = None) -> tuple[str, float]:
    """The serial simulator's final model (SHA-256) and its mean per-client test accuracy."""
    res, executor = serial_run(path, rounds)
    algorithm = load_deployment(path).algorithm
    fed = Distribution.of(executor.evaluate(res.params, range(executor.num_clients), algorithm))
    return sha256(res.params), fed.mean


def serial_personal_mean(path: Path) -> float:
    """The serial simulator's mean personal-model accuracy after the run."""
    exp = load_deployment(path)
    fd = build_federated(exp.data)
    model = exp.build_model(num_classes=fd.dataset.num_classes, input_shape=fd.dataset.input_shape)
    executor = SerialExecutor(ClientStore.from_federated(fd), model)
    cfg = RunConfig(
        rounds=exp.rounds,
        clients_per_round=exp.cohort_size(len(fd.train_parts)),
        seed=exp.seed,
        eval_every=0,
    )
    res = run(exp.algorithm, executor, exp.initial_params(model), cfg)
    evals = executor.evaluate(res.params, range(len(fd.train_parts)), exp.algorithm)
    return Distribution.of(evals).personal_mean


def serial_sha(path: Path, rounds: int | None = None) -> str:
    """The serial simulator's final model for the same experiment file."""
    return serial_reference(path, rounds)[0]


@pytest.fixture(scope="module")
def ctx() -> ForkServerContext:
    c = mp.get_context("forkserver")
    # torch._dynamo: torch.optim imports it lazily on the first step (~800 modules, seconds).
    c.set_forkserver_preload(["torch._dynamo", "fedkit.experiment.deploy"])
    return c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    def __init__(self, ctx: ForkServerContext, exp: Path, out: Path) -> None:
        self.ctx, self.exp, self.out = ctx, exp, out
        self.address = f"127.0.0.1:{free_port()}"
        self.procs: list[BaseProcess] = []
        self.workers: dict[int, BaseProcess] = {}
        self.coordinator: BaseProcess | None = None
        self.security = Security()
        self.min_workers = 0

    def _start(self, target: Callable[..., object], kwargs: dict[str, object]) -> BaseProcess:
        p = self.ctx.Process(target=target, kwargs=kwargs, daemon=True)
        p.start()
        self.procs.append(p)
        return p

    def start_coordinator(self, min_workers: int = 0) -> None:
        """Start the coordinator; with ``min_workers`` round 0 waits for that many workers."""
        self.coordinator = self._start(
            run_coordinator,
            {
                "experiment": self.exp,
                "listen": self.address,
                "out_dir": self.out,
                "security": self.security,
                "min_workers": min_workers,
            },
        )

    def start_workers(self, ids: range) -> None:
        for cid in ids:
            self.workers[cid] = self._start(
                run_worker,
                {"coordinator": self.address, "experiment": self.exp, "client_ids": [cid],
                 "give_up_s": 30.0, "security": self.security, "tls_name": f"worker-{cid}"},
            )  # fmt: skip

    def start_multi_workers(self, blocks: list[list[int]]) -> None:
        """One worker process per block, serving every client id of the block."""
        for ids in blocks:
            self.workers[ids[0]] = self._start(
                run_worker,
                {"coordinator": self.address, "experiment": self.exp, "client_ids": ids,
                 "give_up_s": 30.0, "security": self.security},
            )  # fmt: skip

    def completed_rounds(self) -> int:
        db = self.out / "coordinator.db"
        if not db.exists():
            return 0
        try:
            with sqlite3.connect(db, timeout=5) as con:
                row = con.execute("SELECT completed_rounds FROM checkpoint").fetchone()
        except sqlite3.OperationalError:
            return 0
        return 0 if row is None else int(row[0])

    def wait_rounds(self, n: int, timeout: float) -> None:
        end = time.monotonic() + timeout
        while self.completed_rounds() < n:
            assert time.monotonic() < end, f"round {n} not committed within {timeout} s"
            time.sleep(0.01)

    def summary(self, timeout: float) -> dict[str, object]:
        assert self.coordinator is not None
        self.coordinator.join(timeout)
        assert self.coordinator.exitcode == 0, f"coordinator exit code {self.coordinator.exitcode}"
        return dict(json.loads((self.out / "summary.json").read_text()))

    def rounds(self) -> list[tuple[int, int, int, list[int], list[int], float]]:
        with sqlite3.connect(self.out / "coordinator.db") as con:
            rows = con.execute(
                "SELECT round, attempt, committed, accepted, dropped, wall_s FROM rounds "
                "ORDER BY round, attempt"
            ).fetchall()
        return [(r[0], r[1], r[2], json.loads(r[3]), json.loads(r[4]), r[5]) for r in rows]

    def stop(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()
            p.join(5)


@pytest.fixture
def cluster(ctx: ForkServerContext, tmp_path: Path) -> Iterator[Callable[[Path], Cluster]]:
    made: list[Cluster] = []

    def make(exp: Path) -> Cluster:
        c = Cluster(ctx, exp, tmp_path / f"out{len(made)}")
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


@pytest.mark.parametrize("algorithm", ["fedavgm", "scaffold"])
def test_parity_with_serial_simulator(
    cluster: Callable[[Path], Cluster], tmp_path: Path, algorithm: str
) -> None:
    # SCAFFOLD also checks client state: each worker keeps its own control variate.
    exp = write_experiment(
        tmp_path / "exp.toml", clients=4, per_round=3, rounds=3, algorithm=algorithm, fed_every=1,
        liveness=10,  # a loaded machine may starve a heartbeat thread; nobody dies here
    )  # fmt: skip
    c = cluster(exp)
    c.min_workers = 4  # every worker takes part from round 0 (federated evaluation included)
    c.start_coordinator()
    c.start_workers(range(4))
    summary = c.summary(timeout=50)
    assert summary["committed_rounds"] == 3
    sha, fed_mean = serial_reference(exp)
    assert summary["model_sha256"] == sha
    # federated evaluation ran on the workers' own test data, every round, as in the simulator
    with ResultsStore.in_dir(c.out, create=False) as store:
        rounds = store.rounds(summary["run_id"])  # type: ignore[arg-type]
        assert all(r.fed_clients is not None and r.fed_clients >= 3 for r in rounds)
        assert rounds[-1].fed_clients == 4 and rounds[-1].fed_mean == fed_mean
    for w in c.workers.values():
        w.join(10)
        assert w.exitcode == 0
    with sqlite3.connect(c.out / "coordinator.db") as con:
        rtts = con.execute("SELECT round, client_id, rtt_s FROM worker_rtt").fetchall()
    assert len(rtts) == 9 and all(r[2] > 0 for r in rtts)


def test_multi_client_workers_match_the_serial_simulator(
    cluster: Callable[[Path], Cluster], tmp_path: Path
) -> None:
    # 6 clients served by 2 processes (0-3 and 4-5), 5 a round: the coordinator treats them as
    # separate clients, each keeps its own SCAFFOLD control variate on its worker, and the model
    # is the serial simulator's bit for bit.
    exp = write_experiment(
        tmp_path / "exp.toml", clients=6, per_round=5, rounds=3, algorithm="scaffold",
        fed_every=3, liveness=10,
    )  # fmt: skip
    c = cluster(exp)
    c.start_coordinator(min_workers=6)
    c.start_multi_workers([[0, 1, 2, 3], [4, 5]])
    summary = c.summary(timeout=60)
    assert summary["committed_rounds"] == 3
    sha, fed_mean = serial_reference(exp)
    assert summary["model_sha256"] == sha
    with ResultsStore.in_dir(c.out, create=False) as store:
        last = store.rounds(summary["run_id"])[-1]  # type: ignore[arg-type]
        assert last.fed_clients == 6 and last.fed_mean == fed_mean  # every client scored
    for w in c.workers.values():
        w.join(10)
        assert w.exitcode == 0
    with sqlite3.connect(c.out / "coordinator.db") as con:
        served = {int(r[0]) for r in con.execute("SELECT client_id FROM worker_rtt").fetchall()}
    assert served & {0, 1, 2, 3} and served & {4, 5}  # both processes trained clients


def test_size_proportional_sampling_from_the_sizes_workers_report(
    cluster: Callable[[Path], Cluster], tmp_path: Path
) -> None:
    # Synthetic(1,1)'s natural clients differ in size; the proportional sampler draws 2 of 6 a
    # round with p_k ∝ n_k from the sizes the two workers report when they register, and picks
    # the cohorts (and so the model) of the serial simulator, which reads the sizes itself.
    exp = write_experiment(
        tmp_path / "exp.toml", clients=6, per_round=2, rounds=3, algorithm="fedavg",
        liveness=10, extra='[sampler]\nname = "proportional"\n',
    )  # fmt: skip
    *_, executor = _six_clients_on_two_workers_match_serial(cluster(exp), exp)
    sizes = [executor.store.num_examples(k) for k in range(executor.num_clients)]
    assert len(set(sizes)) > 1  # unequal: proportional differs from uniform here


def _six_clients_on_two_workers_match_serial(
    c: Cluster, exp: Path
) -> tuple[dict[str, object], Any, Any]:
    """Run ``exp`` (6 clients, 3 rounds) on two multi-client workers; check that it commits
    every round with the serial simulator's cohorts and model; return the summary and the
    serial run."""
    c.start_coordinator(min_workers=6)
    c.start_multi_workers([[0, 1, 2], [3, 4, 5]])
    summary = c.summary(timeout=60)
    assert summary["committed_rounds"] == 3
    ref, executor = serial_run(exp)
    assert summary["model_sha256"] == sha256(ref.params)
    with sqlite3.connect(c.out / "coordinator.db") as con:
        served = sorted(con.execute("SELECT round, client_id FROM worker_rtt").fetchall())
    assert served == sorted((r.round, m.client_id) for r in ref.history for m in r.clients)
    return summary, ref, executor


def test_importance_corrected_mean_with_a_power_law_sampler(
    cluster: Callable[[Path], Cluster], tmp_path: Path
) -> None:
    # The probability sampler on a power law (p_k ∝ 1/(k+1)) draws 2 of 6 a round, and the
    # importance aggregate scales each update by w_k / (π_k W) on the client: each task carries
    # its client's π_k and W (TaskInfo.client_values), the two multi-client workers resolve their
    # own chains with them, and the model is the serial simulator's bit for bit.
    extra = '[sampler]\nname = "probability"\nlaw = "power"\nexponent = 1.0\n'
    exp = write_experiment(
        tmp_path / "exp.toml", clients=6, per_round=2, rounds=3, algorithm="fedavg",
        liveness=10, extra=extra + '[aggregator]\nname = "importance"\n',
    )  # fmt: skip
    summary, _, _ = _six_clients_on_two_workers_match_serial(cluster(exp), exp)
    # the correction matters here: the plain weighted mean of the same cohorts is another model
    plain = write_experiment(
        tmp_path / "plain.toml", clients=6, per_round=2, rounds=3, algorithm="fedavg",
        extra=extra,
    )  # fmt: skip
    assert sha256(serial_run(plain)[0].params) != summary["model_sha256"]


@pytest.mark.parametrize(
    ("algorithm", "extra"),
    [
        # a composed aggregator chain whose server rule buffers every update
        (
            "fedavg",
            '[aggregator]\nname = "clip"\nmax_norm = 0.5\n'
            '[aggregator.inner]\nname = "trimmed_mean"\nbeta = 0.25\n',
        ),
        # Multi-Krum: whole-update scores and ties by arrival, which is client-id order at the
        # coordinator too (4 updates a round, so f = 0: n > 2f + 2)
        ("fedavg", '[aggregator]\nname = "krum"\nf = 0\nm = 2\n'),
        # a personalised plugin named by import path: personal models scored on the workers
        ("tests.helpers.personal:LocalHead", ""),
    ],
    ids=["clip+trimmed_mean", "multi-krum", "personal-plugin"],
)
def test_parity_for_aggregator_chains_and_personal_models(
    cluster: Callable[[Path], Cluster], tmp_path: Path, algorithm: str, extra: str
) -> None:
    exp = write_experiment(
        tmp_path / "exp.toml", clients=4, per_round=4, rounds=2, algorithm=algorithm, fed_every=2,
        liveness=10, extra=extra,
    )  # fmt: skip
    if algorithm.endswith("LocalHead"):
        text = exp.read_text().replace(
            f'name = "{algorithm}"', f'name = "{algorithm}"\nhead = ["3.weight", "3.bias"]'
        )
        exp.write_text(text)
    c = cluster(exp)
    c.min_workers = 4
    c.start_coordinator()
    c.start_workers(range(4))
    summary = c.summary(timeout=50)
    assert summary["committed_rounds"] == 2
    sha, fed_mean = serial_reference(exp)
    assert summary["model_sha256"] == sha
    with ResultsStore.in_dir(c.out, create=False) as store:
        last = store.rounds(summary["run_id"])[-1]  # type: ignore[arg-type]
        assert last.fed_clients == 4 and last.fed_mean == fed_mean
        if algorithm.endswith("LocalHead"):
            assert last.fed_personal_mean == pytest.approx(serial_personal_mean(exp), abs=1e-12)
            rows = store.clients(summary["run_id"], round=1)  # type: ignore[arg-type]
            assert sum(r.personal_accuracy is not None for r in rows) == 4
        else:
            assert last.fed_personal_mean is None


@pytest.mark.parametrize("bulk", ["true", "false"])
def test_parity_under_mutual_tls(
    cluster: Callable[[Path], Cluster], tmp_path: Path, bulk: str
) -> None:
    # results over the bulk channel (TLS sockets) or as gRPC chunk streams: the same model
    certs = tmp_path / "certs"
    create_certs(certs, coordinator_hosts=["127.0.0.1"], workers=3)
    exp = write_experiment(
        tmp_path / "exp.toml", clients=3, per_round=3, rounds=2, liveness=10,
        deploy=f"bulk = {bulk}",
    )  # fmt: skip
    c = cluster(exp)
    c.security = Security(cert_dir=certs)
    c.start_coordinator()
    c.start_workers(range(3))
    summary = c.summary(timeout=50)
    assert summary["committed_rounds"] == 2
    assert summary["model_sha256"] == serial_sha(exp)


def test_killed_worker_round_commits_with_survivors(
    cluster: Callable[[Path], Cluster], tmp_path: Path
) -> None:
    exp = write_experiment(
        tmp_path / "exp.toml", clients=5, per_round=5, rounds=3, steps=150, quorum=0.6, liveness=4
    )
    c = cluster(exp)
    # with quorum 0.6 a round may open once 3 workers are live: wait for all 5 before round 0,
    # so that the only worker missing from round 1 is the one killed
    c.start_coordinator(min_workers=5)
    c.start_workers(range(5))
    c.wait_rounds(1, timeout=40)
    c.workers[2].kill()  # 20% of the workers, during round 1's local training
    summary = c.summary(timeout=40)
    assert summary["committed_rounds"] == 3
    rows = {r[0]: r for r in c.rounds() if r[2]}
    assert rows[1][3] == [0, 1, 3, 4] and rows[1][4] == [2]
    assert rows[2][4] == [2]


def test_all_workers_gone_round_ends_at_deadline(
    cluster: Callable[[Path], Cluster], tmp_path: Path
) -> None:
    exp = write_experiment(
        tmp_path / "exp.toml", clients=2, per_round=2, rounds=2, steps=150, deadline=6,
        liveness=60,
    )  # fmt: skip
    c = cluster(exp)
    c.start_coordinator()
    c.start_workers(range(2))
    c.wait_rounds(1, timeout=40)
    for w in c.workers.values():
        w.kill()
    summary = c.summary(timeout=40)
    assert summary["committed_rounds"] == 1
    aborted = [r for r in c.rounds() if not r[2]]
    assert [r[0] for r in aborted] == [1]
    assert 5.9 <= aborted[0][5] < 12.0  # ended at its 6 s deadline
    assert summary["model_sha256"] == serial_sha(exp, rounds=1)  # model unchanged by the abort


def test_coordinator_killed_and_restarted_resumes(
    cluster: Callable[[Path], Cluster], tmp_path: Path
) -> None:
    exp = write_experiment(tmp_path / "exp.toml", clients=3, per_round=3, rounds=5, steps=20)
    c = cluster(exp)
    c.start_coordinator()
    c.start_workers(range(3))
    c.wait_rounds(2, timeout=40)
    assert c.coordinator is not None
    c.coordinator.kill()
    c.coordinator.join(5)
    c.start_coordinator()  # same port, same state directory
    summary = c.summary(timeout=50)
    assert summary["start_round"] >= 2
    assert summary["model_sha256"] == serial_sha(exp)
    # the results database holds one run, continued across the restart, with every round and
    # each worker's round-trip time per round
    with ResultsStore.in_dir(c.out, create=False) as store:
        (run,) = store.runs()
        assert run.status == "completed" and run.id == summary["run_id"]
        assert [r.round for r in store.rounds(run.id)] == [0, 1, 2, 3, 4]
        rows = store.clients(run.id)
        assert len(rows) == 15 and all(r.seconds is not None and r.seconds > 0 for r in rows)
    for w in c.workers.values():
        w.join(10)
        assert w.exitcode == 0


def test_over_selection_commits_first_arrivals(
    cluster: Callable[[Path], Cluster], tmp_path: Path
) -> None:
    exp = write_experiment(
        tmp_path / "exp.toml", clients=4, per_round=2, rounds=2, deploy="over_selection = 2.0"
    )
    c = cluster(exp)
    c.start_coordinator()
    c.start_workers(range(4))
    summary = c.summary(timeout=40)
    assert summary["committed_rounds"] == 2
    with sqlite3.connect(c.out / "coordinator.db") as con:
        asked = con.execute("SELECT round, count(*) FROM worker_rtt GROUP BY round").fetchall()
    # 2 x over-selection asks all 4 clients; exactly clients_per_round = 2 results are used
    assert all(n == 2 for _, n in asked)
    assert all(len(r[3]) == 2 for r in c.rounds())


def test_slow_worker_gets_fewer_local_steps(
    cluster: Callable[[Path], Cluster], tmp_path: Path
) -> None:
    # client 0 holds 370 examples, the others about 50: with local epochs it is several times
    # slower, so from round 1 on it is given a proportionally smaller share of its local work.
    exp = write_experiment(
        tmp_path / "exp.toml", clients=5, per_round=5, rounds=3, local="local_epochs = 20",
        deploy="balance_stragglers = true\nmin_work_fraction = 0.1",
    )  # fmt: skip
    c = cluster(exp)
    c.start_coordinator()
    c.start_workers(range(5))
    assert c.summary(timeout=50)["committed_rounds"] == 3
    with sqlite3.connect(c.out / "coordinator.db") as con:
        rows = con.execute("SELECT round, client_id, work_fraction FROM worker_rtt").fetchall()
    frac = {(r, cid): f for r, cid, f in rows}
    assert all(frac[(0, cid)] == 1.0 for cid in range(5))  # nothing measured yet
    for r in (1, 2):  # the slow client gets a share below the full work and below the others'
        others = statistics.median(frac[(r, c)] for c in range(1, 5))
        assert frac[(r, 0)] < 0.9 and frac[(r, 0)] < others, frac
    with ResultsStore.in_dir(c.out, create=False) as store:
        (run_row,) = store.runs()
        steps = {(r.round, r.client_id): r.steps for r in store.clients(run_row.id)}
    assert steps[(1, 0)] < steps[(0, 0)] and steps[(2, 0)] < steps[(0, 0)]  # fewer local steps
