"""The worker's client half without sockets: retried rounds restart from the pre-round client
state, evaluation tasks score the local test data, refused results leave the state unchanged."""

from __future__ import annotations

from pathlib import Path

import torch

from fedkit.algorithm import RoundInfo
from fedkit.experiment.deploy import load_deployment
from fedkit.net.client import Task
from fedkit.net.codec import decode
from fedkit.net.errors import ErrorCode, NetError
from fedkit.net.payload import EvalMeta, encode_tree, info_metadata
from fedkit.net.proto import fedkit_pb2 as pb
from fedkit.net.worker import Worker, load_local_data
from fedkit.params import tree_flatten

EXPERIMENT = """
[data]
dataset = "synthetic"
partition = "natural"
num_clients = 3

[model]
name = "logreg"

[algorithm]
name = "scaffold"
clients_per_round = 3
local_steps = 3

[run]
rounds = 3
seed = 5
"""


class FakeClient:
    """Records pushed payloads; refuses the next push when told to."""

    def __init__(self) -> None:
        self.pushed: list[bytes] = []
        self.refuse: NetError | None = None

    def push_result(self, task: Task, payload: bytes, *, compute_s: float) -> None:
        if self.refuse is not None:
            err, self.refuse = self.refuse, None
            raise err
        self.pushed.append(payload)


def make(tmp_path: Path) -> tuple[Worker, FakeClient]:
    path = tmp_path / "exp.toml"
    path.write_text(EXPERIMENT)
    exp = load_deployment(path)
    client = FakeClient()
    worker = Worker(exp, local=load_local_data(exp, [1], None), client=client)  # type: ignore[arg-type]
    return worker, client


def task(worker: Worker, round_: int, kind: int = pb.TRAIN) -> Task:
    info = RoundInfo(round=round_, seed=worker.exp.seed, num_clients=3, cohort_size=3)
    tree = worker.msg_template if kind == pb.TRAIN else dict(worker.params_template)
    return Task(kind=kind, run_id="r", round=round_, task_id=f"t{round_}", client_id="1",
                work_fraction=1.0, deadline_s=10.0,
                payload=encode_tree(tree, info_metadata(info)))  # fmt: skip


def test_retried_round_restarts_from_the_state_before_it(tmp_path: Path) -> None:
    worker, client = make(tmp_path)
    worker._train(task(worker, 0))
    after_first = tree_flatten(worker.client_state[1])
    worker._train(task(worker, 0))  # the same round again (an aborted attempt was retried)
    first, again = (decode(p).tensors for p in client.pushed)  # metadata holds timings
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert all((after_first[k] == v).all() for k, v in tree_flatten(worker.client_state[1]).items())
    worker._train(task(worker, 1))
    assert worker.rounds_done == 3


def test_refused_result_leaves_client_state_unchanged(tmp_path: Path) -> None:
    worker, client = make(tmp_path)
    client.refuse = NetError(ErrorCode.STALE_ROUND, "round 0 is not open")
    worker._train(task(worker, 0))
    assert worker.client_state[1] is None and worker.rounds_done == 0 and not client.pushed


def test_evaluation_task_scores_local_test_data(tmp_path: Path) -> None:
    worker, client = make(tmp_path)
    worker._evaluate(task(worker, 0, kind=pb.EVALUATE))
    from fedkit.net.payload import decode_tree

    _, meta = decode_tree(client.pushed[0], {})
    m = EvalMeta.from_metadata(meta)
    assert m.num_examples == worker.local.clients[1].y_test.shape[0] > 0  # type: ignore[union-attr]
    assert 0.0 <= m.accuracy <= 1.0
