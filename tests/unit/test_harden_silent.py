"""A worker that heartbeats but never answers (issue 18, part 5): after ``max_missed_tasks``
rounds in a row without its result it is suspended — no round waits its deadline for it, a
stand-in takes its place — until it answers again (broker and remote executor, threads only)."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

from fedkit.algorithm import RoundInfo
from fedkit.algorithms import FedAvg, ModelMessage
from fedkit.local import LocalTraining
from fedkit.net.broker import Assignment, Broker
from fedkit.net.deployment import DeployError, DeploySettings, deploy_from_mapping
from fedkit.net.errors import NetError
from fedkit.net.executor import RemoteExecutor
from fedkit.net.payload import encode_tree
from fedkit.net.proto import fedkit_pb2 as pb
from tests.helpers.broker import push_result
from tests.unit.test_harden_values import PARAMS, TEMPLATE, honest, update_of

DEADLINE = 1.0


def serve(broker: Broker, cid: int, stop: threading.Event, answer: threading.Event) -> None:
    """A worker that polls for tasks (so it looks live) and answers only while ``answer`` is
    set; once set, it first sends the result of the last task it kept quiet about (late)."""
    reply = broker.register(pb.RegisterRequest(protocol_version=1, client_id=str(cid)), None)
    header = pb.Header(run_id=reply.run_id, worker_id=reply.worker_id, token=reply.token)
    held: pb.TaskInfo | None = None
    while not stop.is_set():
        if held is not None and answer.is_set():
            push(broker, reply, cid, held)
            held = None
        info, _ = broker.next_task(pb.GetTaskRequest(header=header, wait_s=0.05), None)
        if info.kind != pb.TRAIN:
            continue
        if not answer.is_set():  # took the task, keeps quiet
            held = info
            time.sleep(0.02)
            continue
        push(broker, reply, cid, info)


def push(broker: Broker, reply: pb.RegisterReply, cid: int, info: pb.TaskInfo) -> None:
    payload = encode_tree(update_of(cid), honest(cid, info.header.round, pb.TRAIN))
    with contextlib.suppress(NetError):  # a late result is stale; it still shows it is back
        push_result(broker, reply, cid, info, payload)


def test_a_silent_worker_is_suspended_after_max_missed_tasks_and_readmitted() -> None:
    settings = DeploySettings(deadline_s=DEADLINE, select_timeout_s=2, heartbeat_s=0.2,
                              max_missed_tasks=2)  # fmt: skip
    broker = Broker(run_id="r", max_result_bytes=1 << 20, liveness_s=5, max_missed_tasks=2)
    executor = RemoteExecutor(broker, num_clients=4, settings=settings, update_template=TEMPLATE)
    stop = threading.Event()
    answers = {c: threading.Event() for c in range(4)}
    for c in (0, 1, 3):
        answers[c].set()  # client 2 stays silent
    threads = [
        threading.Thread(target=serve, args=(broker, c, stop, answers[c]), daemon=True)
        for c in range(4)
    ]
    for t in threads:
        t.start()
    broker.wait_for_clients({"0", "1", "2", "3"}, 4, 5)
    algo = FedAvg(local=LocalTraining(steps=1))

    def round_(r: int) -> tuple[float, object]:
        info = RoundInfo(round=r, seed=1, num_clients=4, cohort_size=3)
        t0 = time.monotonic()
        out = executor.execute(algo, ModelMessage(params=PARAMS), [0, 1, 2], info)
        return time.monotonic() - t0, out

    try:
        for r in range(2):  # quorum 1.0: the silent client costs each round its full deadline
            took, out = round_(r)
            assert took >= DEADLINE * 0.9 and out.accumulator is None  # type: ignore[attr-defined]
        assert broker.suspended_clients() == {"2"}
        assert "2" not in broker.live_clients()
        # round 2: nobody waits for client 2; client 3 stands in and the round commits at once
        took, out = round_(2)
        assert took < DEADLINE * 0.7
        assert out.accumulator is not None  # type: ignore[attr-defined]
        assert [m.client_id for m in out.clients] == [0, 1, 3]  # type: ignore[attr-defined]
        # it answers again (its held result of round 2 arrives late, refused as stale): back in
        # selection without a round having to wait for it
        answers[2].set()
        deadline = time.monotonic() + 3
        while broker.suspended_clients() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert broker.suspended_clients() == set()
    finally:
        stop.set()
        for t in threads:
            t.join(5)


def test_misses_count_only_for_rounds_closed_short_and_registering_again_clears_them() -> None:
    broker = Broker(run_id="r", max_result_bytes=1 << 20, max_missed_tasks=1)
    reply = broker.register(pb.RegisterRequest(protocol_version=1, client_id="0"), None)
    broker.register(pb.RegisterRequest(protocol_version=1, client_id="1"), None)
    a = Assignment.of([], 0)
    # enough results (here: none wanted, as for the extras of an over-selected round): the
    # outstanding tasks were not needed, so nobody missed anything
    broker.open_round(0, {"0": a, "1": a}, deadline_s=0.2, result_check=None)
    broker.collect(want=0)
    assert broker.suspended_clients() == set()
    broker.open_round(1, {"0": a, "1": a}, deadline_s=0.2, result_check=None)
    assert broker.collect(want=2) == {}  # closed short at its deadline: both missed once
    assert broker.suspended_clients() == {"0", "1"}
    again = broker.register(
        pb.RegisterRequest(
            protocol_version=1,
            client_id="0",
            header=pb.Header(worker_id=reply.worker_id, token=reply.token, run_id="r"),
        ),
        None,
    )
    assert again.error.code == pb.OK and broker.suspended_clients() == {"1"}  # re-registered


@pytest.mark.parametrize("bad", [-1, 1001, 2.5, True, "3"])
def test_max_missed_tasks_is_range_checked(bad: object) -> None:
    with pytest.raises(DeployError, match="max_missed_tasks"):
        deploy_from_mapping({"max_missed_tasks": bad})


def test_max_missed_tasks_zero_never_suspends() -> None:
    broker = Broker(run_id="r", max_result_bytes=1 << 20, max_missed_tasks=0)
    broker.register(pb.RegisterRequest(protocol_version=1, client_id="0"), None)
    for r in range(3):
        broker.open_round(r, {"0": Assignment.of([], 0)}, deadline_s=0.05, result_check=None)
        broker.collect(want=1)
    assert broker.suspended_clients() == set() and broker.live_clients() == {"0"}
