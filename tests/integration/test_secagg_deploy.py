"""Secure aggregation over the wire (loopback coordinator and worker processes): the same
experiment file gives the serial simulator's model bit for bit; the coordinator never receives
or stores an individual update in the clear; a worker that dies after masking is recovered
from its shares; too many deaths refuse the round and leave the model unchanged."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedkit.aggregate import WeightedMean
from fedkit.data.spec import build_federated
from fedkit.data.store import ClientStore
from fedkit.experiment.deploy import load_deployment, run_coordinator, run_worker
from fedkit.net.codec import decode
from fedkit.net.worker import load_local_data, reported_sizes
from fedkit.params import sha256, tree_leaves
from fedkit.privacy.secagg.packing import unpack
from fedkit.privacy.secagg.stage import SecureSum, find_secure_sum
from fedkit.run import RunConfig, run
from fedkit.sim.serial import SerialExecutor
from tests.integration import test_net_deploy as net
from tests.integration.test_net_deploy import Cluster, serial_sha, write_experiment

ctx = net.ctx  # the loopback cluster's fixtures
cluster = net.cluster

pytestmark = pytest.mark.net

SECAGG = """
[aggregator]
name = "secagg"
bits = 32
clip_range = 2.0
max_weight = 1000.0
threshold = 0.5
"""


def _write(tmp_path: Path, *, rounds: int, clients: int = 4, liveness: float = 10.0) -> Path:
    return write_experiment(
        tmp_path / "exp.toml", clients=clients, per_round=clients, rounds=rounds,
        algorithm="fedavg", liveness=liveness, deadline=20, extra=SECAGG,
    )  # fmt: skip


def test_secagg_deployment_gives_the_simulators_model_bit_for_bit(
    cluster: Callable[[Path], Cluster], tmp_path: Path
) -> None:
    """Masks cancel exactly modulo 2^32 and the fixed-point sums are exact integers, so the
    workers' OS-random keys and the simulator's give the same decoded sum, hence the same model
    (example-count weights, masked inside the update)."""
    exp = _write(tmp_path, rounds=2)
    assert isinstance(load_deployment(exp).algorithm.aggregator, SecureSum)
    c = cluster(exp)
    c.start_coordinator(min_workers=4)
    c.start_workers(range(4))
    summary = c.summary(timeout=90)
    assert summary["committed_rounds"] == 2
    assert summary["model_sha256"] == serial_sha(exp)


# -- what the coordinator received and stored ------------------------------------------------


def _recording_coordinator(record_dir: str, **kwargs: Any) -> None:
    """``run_coordinator`` with every complete result payload it receives (as gRPC chunks or
    over the bulk channel) written to ``record_dir`` (the bytes workers sent, before anything
    else reads them)."""
    import fedkit.net.broker as broker_mod
    import fedkit.net.bulk as bulk_mod

    def recording(cls: Any) -> Any:
        class Recording(cls):  # type: ignore[misc, valid-type]
            def result(self) -> bytearray:
                data: bytearray = super().result()
                name = f"{os.urandom(8).hex()}-{len(data)}.bin"
                Path(record_dir, name).write_bytes(bytes(data))
                return data

        return Recording

    broker_mod.Reassembler = recording(broker_mod.Reassembler)  # type: ignore[misc]
    bulk_mod.SocketUpload = recording(bulk_mod.SocketUpload)  # type: ignore[misc]
    run_coordinator(**kwargs)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Spy(WeightedMean):
    """The plain mean, recording the (clamped) update every client sent in round 0."""

    seen: dict[int, torch.Tensor] = dataclasses.field(default_factory=dict, compare=False)

    def prepare(self, update: Any, weight: float, ctx: Any) -> Any:
        if ctx.round == 0 and ctx.client_id >= 0:
            flat = torch.cat([t.reshape(-1) for _, t in tree_leaves(update)])
            self.seen[ctx.client_id] = flat.detach().clone()
        return super().prepare(update, weight, ctx)


def _round0_updates(exp_path: Path) -> dict[int, torch.Tensor]:
    """Each client's true round-0 update, from the serial simulator of the same file with the
    plain mean (round 0 starts from the same model in both)."""
    exp = load_deployment(exp_path)
    spy = _Spy()
    fd = build_federated(exp.data)
    model = exp.build_model(num_classes=fd.dataset.num_classes, input_shape=fd.dataset.input_shape)
    run(
        dataclasses.replace(exp.algorithm, aggregator=spy),
        SerialExecutor(ClientStore.from_federated(fd), model),
        exp.initial_params(model),
        RunConfig(rounds=1, clients_per_round=4, seed=exp.seed, eval_every=0),
    )
    return spy.seen


def test_the_coordinator_never_holds_an_update_in_the_clear(
    cluster: Callable[[Path], Cluster], tmp_path: Path
) -> None:
    exp = _write(tmp_path, rounds=1)
    record = tmp_path / "received"
    record.mkdir()
    c = cluster(exp)
    c.coordinator = c._start(
        _recording_coordinator,
        {"record_dir": str(record), "experiment": exp, "listen": c.address, "out_dir": c.out,
         "security": c.security, "min_workers": 4},
    )  # fmt: skip
    c.start_workers(range(4))
    assert c.summary(timeout=90)["committed_rounds"] == 1
    updates = _round0_updates(exp)
    assert sorted(updates) == [0, 1, 2, 3]
    stage = find_secure_sum(load_deployment(exp).algorithm.aggregator)
    assert stage is not None
    payloads = [p.read_bytes() for p in sorted(record.iterdir())]
    # 4 adverts, 4 share messages, 4 inbox acks, 4 masked updates, 4 unmask responses
    assert len(payloads) == 20
    masked = []
    for raw in payloads:
        decoded = decode(bytearray(raw))
        tensors = decoded.tensors
        # nothing the workers sent is a float tensor: no update, clipped or not, in the clear
        assert all(not t.is_floating_point() for t in tensors.values())
        if "key_id" in tensors:  # a MaskedUpdate: masked/<leaf>, weight, sender, key_id
            masked.append(tensors)
            # the weight (the client's example count here) is not in the clear: the metadata
            # say 1 and one example; the real weight is the masked word
            assert float.fromhex(decoded.metadata["result:weight"]) == 1.0
            assert decoded.metadata["result:num_examples"] == "1"
    assert len(masked) == 4
    fp = stage.encoding(4)
    d = next(iter(updates.values())).numel()
    for tensors in masked:
        words = torch.cat(
            [unpack(t, 32).reshape(-1) for k, t in tensors.items() if k.startswith("masked/")]
        )
        assert words.numel() == d
        x = updates[int(tensors["sender"])]
        # the masked words against the client's own update: uncorrelated, and no more
        # coordinates equal to its encoding than chance (d / 2^32 ≈ 0)
        corr = np.corrcoef(words.double().numpy(), x.double().numpy())[0, 1]
        assert abs(corr) < 5 / d**0.5
        assert int((words.sort().values == fp.encode(x, 1.0).sort().values).sum()) <= 2
    # no client's update (float32 bytes: four consecutive nonzero coordinates, every 16th
    # window of them) in anything the coordinator received or stored: results.sqlite,
    # coordinator.db, the summary, logs
    stored = [p.read_bytes() for p in c.out.rglob("*") if p.is_file()]
    checked = 0
    for x in updates.values():
        v = x.to(torch.float32)
        for start in range(0, min(v.numel() - 4, 1024), 16):
            if bool((v[start : start + 4] == 0).any()):
                continue  # zeros (an unused input's weights) are in every file
            window = v[start : start + 4].numpy().tobytes()
            checked += 1
            assert not any(window in blob for blob in payloads + stored)
    assert checked > 100


# -- dropouts after masking ------------------------------------------------------------------


def _worker_dying_at_unmask(**kwargs: Any) -> None:
    """``run_worker`` that exits (as if killed) when asked to unmask: it has sent its masked
    update, and its pairwise and self masks must be removed from the others' shares."""
    from fedkit.net import secagg_worker

    real = secagg_worker.WorkerSecAgg.handle

    def handle(self: Any, client: int, round_: int, payload: Any) -> bytes:
        from fedkit.net.secagg_wire import body_of

        if body_of(payload, max_bytes=1 << 26).step == "unmask":
            os._exit(0)
        return real(self, client, round_, payload)

    secagg_worker.WorkerSecAgg.handle = handle  # type: ignore[method-assign]
    run_worker(**kwargs)


def _initial_sha(path: Path) -> str:
    exp = load_deployment(path)
    fd = build_federated(exp.data)
    model = exp.build_model(num_classes=fd.dataset.num_classes, input_shape=fd.dataset.input_shape)
    return sha256(exp.initial_params(model))


def _start(c: Cluster, ids: range, *, dying: set[int]) -> None:
    for cid in ids:
        target = _worker_dying_at_unmask if cid in dying else run_worker
        c.workers[cid] = c._start(
            target,
            {"coordinator": c.address, "experiment": c.exp, "client_ids": [cid],
             "give_up_s": 30.0, "security": c.security},
        )  # fmt: skip


@pytest.mark.slow
def test_a_worker_dying_after_masking_is_recovered(
    cluster: Callable[[Path], Cluster], tmp_path: Path
) -> None:
    """5 clients, t = ⌊0.5·5⌋ + 1 = 3: one dies after sending its masked update. Its input stays
    in the sum: the four survivors reveal their shares of its self-mask seed b (4 ≥ t), so the
    round gives exactly the simulator's model of all five."""
    exp = _write(tmp_path, rounds=1, clients=5, liveness=3.0)
    c = cluster(exp)
    c.start_coordinator(min_workers=5)
    _start(c, range(5), dying={4})
    summary = c.summary(timeout=90)
    assert summary["committed_rounds"] == 1
    assert summary["model_sha256"] == serial_sha(exp)


@pytest.mark.slow
def test_too_many_deaths_refuse_the_round_and_keep_the_model(
    cluster: Callable[[Path], Cluster], tmp_path: Path
) -> None:
    """5 clients, t = 3: three die at the unmasking round, two answer (< t): the round is
    refused (not committed) and the model is the initial one."""
    exp = _write(tmp_path, rounds=1, clients=5, liveness=3.0)
    c = cluster(exp)
    c.start_coordinator(min_workers=5)
    _start(c, range(5), dying={0, 2, 4})
    summary = c.summary(timeout=90)
    assert summary["committed_rounds"] == 0
    assert summary["status"] == "no_rounds_committed"
    assert summary["model_sha256"] == _initial_sha(exp)
    (row,) = [r for r in c.rounds() if r[0] == 0]
    assert row[2] == 0  # round 0 recorded as not committed


# -- client state of a refused round ---------------------------------------------------------


def _coordinator_refusing_round_0(**kwargs: Any) -> None:
    """``run_coordinator`` whose unmasking refuses round 0 (as below the threshold), with every
    worker alive: the workers must drop the new client state they trained in it."""
    from fedkit.net import secagg_coordinator as sc
    from fedkit.privacy.secagg.errors import AbortReason, SecAggAbort

    real = sc.CoordinatorSecAgg.unmask

    def unmask(self: Any, round_: int, total: Any, senders: Any) -> Any:
        if round_ == 0:
            raise SecAggAbort(AbortReason.TOO_FEW_SURVIVORS, "refused by the test")
        return real(self, round_, total, senders)

    sc.CoordinatorSecAgg.unmask = unmask  # type: ignore[method-assign]
    run_coordinator(**kwargs)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _RefuseRound0(SecureSum):
    """The simulator's counterpart: the secagg stage refusing round 0's sum."""

    def open(self, acc: Any, ctx: Any) -> Any:
        from fedkit.privacy.secagg.errors import AbortReason, SecAggAbort

        if ctx.round == 0:
            raise SecAggAbort(AbortReason.TOO_FEW_SURVIVORS, "refused by the test")
        return super().open(acc, ctx)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _RefuseRound0Keep(_RefuseRound0):
    may_abort = False  # type: ignore[misc]  # no rollback: client states keep round 0's


def _simulate(path: Path, stage: type[SecureSum]) -> str:
    exp = load_deployment(path)
    agg = exp.algorithm.aggregator
    assert isinstance(agg, SecureSum)
    fields = {f.name: getattr(agg, f.name) for f in dataclasses.fields(agg) if f.init}
    fd = build_federated(exp.data)
    model = exp.build_model(num_classes=fd.dataset.num_classes, input_shape=fd.dataset.input_shape)
    res = run(
        dataclasses.replace(exp.algorithm, aggregator=stage(**fields)),
        SerialExecutor(ClientStore.from_federated(fd), model),
        exp.initial_params(model),
        RunConfig(rounds=exp.rounds, clients_per_round=4, seed=exp.seed, eval_every=0),
    )
    assert [r.committed for r in res.history] == [False, True]
    return sha256(res.params)


@pytest.mark.slow
def test_a_refused_round_leaves_scaffold_client_state_unchanged_on_workers(
    cluster: Callable[[Path], Cluster], tmp_path: Path
) -> None:
    """SCAFFOLD + secagg, round 0 refused at its unmasking: each worker keeps its client's new
    control variate pending and drops it when round 1's setup says round 0 did not commit, so
    round 1 starts from the initial variates — the simulator's model with the run loop's
    rollback, bit for bit, and not the model of a simulator that keeps round 0's variates."""
    exp = write_experiment(
        tmp_path / "exp.toml", clients=4, per_round=4, rounds=2, algorithm="scaffold",
        liveness=10, deadline=20, extra=SECAGG,
    )  # fmt: skip
    c = cluster(exp)
    c.coordinator = c._start(
        _coordinator_refusing_round_0,
        {"experiment": exp, "listen": c.address, "out_dir": c.out, "security": c.security,
         "min_workers": 4},
    )  # fmt: skip
    c.start_workers(range(4))
    summary = c.summary(timeout=90)
    assert summary["committed_rounds"] == 1
    rolled_back, kept = _simulate(exp, _RefuseRound0), _simulate(exp, _RefuseRound0Keep)
    assert rolled_back != kept
    assert summary["model_sha256"] == rolled_back


LAUNCH = """
[data]
dataset = "synthetic"
partition = "natural"
num_clients = 4

[model]
name = "logreg"

[algorithm]
name = "fedavg"
clients_per_round = 3
local_steps = 5
lr = 0.05

[run]
rounds = 2
seed = 11

[aggregator]
name = "secagg"
bits = 40
clip_range = 2.0
max_weight = 1000.0
neighbours = 2
"""


@pytest.mark.slow
def test_fedkit_launch_gives_the_model_of_fedkit_run(tmp_path: Path) -> None:
    """The must-show through the real CLI: ``fedkit launch --workers 2`` (each worker process
    serves two client ids, each id with its own keys; SecAgg+ with k = 2) against ``fedkit run``
    of the same file (the simulator, seeded masks): the same model, bit for bit."""
    from tests.integration.test_net_launch import fedkit

    exp = tmp_path / "exp.toml"
    exp.write_text(LAUNCH)
    deployed = fedkit("launch", "--workers", "2", "--experiment", str(exp), "--out",
                      str(tmp_path / "launch"), "--json", cwd=tmp_path)  # fmt: skip
    simulated = fedkit("run", str(exp), "--out", str(tmp_path / "runs"), "--json", cwd=tmp_path)
    assert deployed["committed_rounds"] == 2
    assert deployed["model_sha256"] == simulated["model_sha256"]


@pytest.mark.slow
def test_a_restarted_coordinator_reruns_the_round_and_gives_the_simulators_model(
    cluster: Callable[[Path], Cluster], tmp_path: Path
) -> None:
    """SCAFFOLD + secagg: the coordinator is killed once two rounds are committed (the third
    is under way) and restarted on the same state: it sets the interrupted round up again with
    fresh keys, the workers' pending control variates follow ``secagg:committed``, and the run
    ends with the serial simulator's model bit for bit."""
    exp = write_experiment(
        tmp_path / "exp.toml", clients=4, per_round=4, rounds=4, algorithm="scaffold",
        liveness=10, deadline=20, extra=SECAGG,
    )  # fmt: skip
    c = cluster(exp)
    c.start_coordinator(min_workers=4)
    c.start_workers(range(4))
    c.wait_rounds(2, timeout=90)
    assert c.coordinator is not None
    c.coordinator.kill()
    c.coordinator.join(5)
    c.start_coordinator()
    summary = c.summary(timeout=120)
    assert summary["committed_rounds"] == 4 and 2 <= int(summary["start_round"]) <= 3  # type: ignore[call-overload]
    assert summary["model_sha256"] == serial_sha(exp)


def test_workers_report_no_data_sizes_under_secure_aggregation(tmp_path: Path) -> None:
    # under example-count weighting a client's size is its aggregation weight, which the masked
    # update hides: a secagg worker reports none at registration (a plain one reports them all)
    plain = load_deployment(write_experiment(
        tmp_path / "plain.toml", clients=4, per_round=4, rounds=1, algorithm="fedavg",
    ))  # fmt: skip
    local = load_local_data(plain, [0, 2], None)
    assert reported_sizes(plain, local, [0, 2]) == [
        local.clients[0].num_examples,
        local.clients[2].num_examples,
    ]
    assert reported_sizes(load_deployment(_write(tmp_path, rounds=1)), local, [0, 2]) == []


IMPORTANCE_SECAGG = """
[sampler]
name = "probability"
law = "power"
exponent = 1.0

[aggregator]
name = "secagg"
bits = 32
clip_range = 2.0
max_weight = 1000.0
threshold = 0.5

[aggregator.inner]
name = "importance"
"""


def test_importance_under_secure_aggregation_gives_the_simulators_model(
    cluster: Callable[[Path], Cluster], tmp_path: Path
) -> None:
    """The Horvitz–Thompson factor 1 / (N π_k) (uniform weights: the coordinator has no data
    sizes under secure aggregation) is applied on the client before masking, from the π_k and
    W its task carries; the secure sum adds the prepared updates with weight 1, and the model is
    the serial simulator's bit for bit (the fixed-point sums are exact integers)."""
    exp = write_experiment(
        tmp_path / "exp.toml", clients=6, per_round=3, rounds=2, algorithm="fedavg",
        local='local_steps = 5\nweighting = "uniform"', liveness=10, deadline=20,
        extra=IMPORTANCE_SECAGG,
    )  # fmt: skip
    stage = find_secure_sum(load_deployment(exp).algorithm.aggregator)
    assert stage is not None and type(stage.inner).__name__ == "ImportanceWeighted"
    c = cluster(exp)
    c.start_coordinator(min_workers=6)
    c.start_multi_workers([[0, 1, 2], [3, 4, 5]])
    summary = c.summary(timeout=90)
    assert summary["committed_rounds"] == 2
    assert summary["model_sha256"] == serial_sha(exp)
