"""One worker serving many client ids (issue 20) and the protocol version check, at the broker
(no sockets): tasks handed one at a time naming their client, results accepted only for the
worker's own clients, per-client takeover and suspension, and typed refusals of malformed
registrations."""

from __future__ import annotations

import pytest

from fedkit.net.broker import Assignment, Broker
from fedkit.net.errors import ErrorCode, NetError
from fedkit.net.identity import ClientIds, PeerIdentity
from fedkit.net.proto import PROTOCOL_VERSION
from fedkit.net.proto import fedkit_pb2 as pb
from tests.helpers.broker import push_result


def make_broker(**kw: object) -> Broker:
    return Broker(run_id="r", max_result_bytes=1 << 20, num_clients=10, **kw)  # type: ignore[arg-type]


def register(broker: Broker, ids: list[str], **kw: object) -> pb.RegisterReply:
    req = pb.RegisterRequest(protocol_version=PROTOCOL_VERSION, client_ids=ids, **kw)  # type: ignore[arg-type]
    return broker.register(req, None)


def header(reply: pb.RegisterReply) -> pb.Header:
    return pb.Header(run_id=reply.run_id, worker_id=reply.worker_id, token=reply.token)


def next_task(broker: Broker, reply: pb.RegisterReply) -> pb.TaskInfo:
    info, _ = broker.next_task(pb.GetTaskRequest(header=header(reply), wait_s=0.0), None)
    return info


def code_of(call: object) -> ErrorCode:
    with pytest.raises(NetError) as e:
        call()  # type: ignore[operator]
    return e.value.code


def open_round(broker: Broker, clients: list[str], round_: int = 0) -> None:
    a = Assignment.of([], 0)
    broker.open_round(round_, {c: a for c in clients}, deadline_s=5.0, result_check=None)


def test_tasks_of_every_served_client_one_at_a_time_then_wait() -> None:
    broker = make_broker()
    reply = register(broker, ["2", "5", "7"])
    assert reply.protocol_version == PROTOCOL_VERSION
    assert broker.live_clients() == {"2", "5", "7"}
    open_round(broker, ["5", "7", "9"])  # 2 not selected; 9 is someone else's
    first = next_task(broker, reply)
    assert (first.kind, first.client_id) == (pb.TRAIN, "5")  # served order, unsent first
    second = next_task(broker, reply)
    assert second.client_id == "7" and second.header.task_id != first.header.task_id
    # both sent and unanswered: asking again re-sends one (its earlier copy was lost)
    assert next_task(broker, reply).client_id == "5"
    push_result(broker, reply, 5, first, b"x")
    push_result(broker, reply, 7, second, b"y")
    assert next_task(broker, reply).kind == pb.WAIT  # nothing left for this worker
    results = broker.collect(want=2)
    assert {c: r.payload for c, r in results.items()} == {"5": b"x", "7": b"y"}
    assert {r.worker_id for r in results.values()} == {reply.worker_id}


def test_a_result_only_for_the_workers_own_clients() -> None:
    broker = make_broker()
    mine, other = register(broker, ["0", "1"]), register(broker, ["3"])
    open_round(broker, ["0", "3"])
    task3 = next_task(broker, other)
    # worker "mine" pushes client 3's task: refused, and the task stays open for its owner
    assert code_of(lambda: push_result(broker, mine, 3, task3, b"z")) == ErrorCode.UNAUTHENTICATED
    # an empty client id names nothing for a multi-client worker
    assert code_of(lambda: push_result(broker, mine, "", task3, b"z")) == (  # type: ignore[arg-type]
        ErrorCode.UNAUTHENTICATED
    )
    push_result(broker, other, 3, task3, b"ok")
    assert broker.collect(want=1)["3"].payload == b"ok"


def test_a_client_held_by_a_live_worker_is_not_taken_and_takeover_moves_only_that_client() -> None:
    broker = make_broker(liveness_s=60)
    first = register(broker, ["0", "1", "2"])
    assert code_of(lambda: register(broker, ["2", "3"])) == ErrorCode.CLIENT_TAKEN
    assert broker.live_clients() == {"0", "1", "2"}  # the refused registration changed nothing
    # the same worker registering again (its token proves it) takes its clients back at once
    again = register(broker, ["1", "2", "3"], header=header(first))
    assert again.worker_id != first.worker_id
    open_round(broker, ["0", "1"])
    assert next_task(broker, first).client_id == "0"  # client 0 stayed with the old record
    assert next_task(broker, again).client_id == "1"


@pytest.mark.parametrize(
    ("kw", "detail"),
    [
        ({"client_ids": ["1", "1"]}, "named twice"),
        ({"client_ids": ["1", "x"]}, "is not 0..9"),
        ({"client_ids": ["1", "10"]}, "is not 0..9"),
        ({"client_ids": ["1"], "client_id": "1"}, "not both"),
        ({"client_ids": [str(i) for i in range(11)]}, "at most 10"),
        ({"client_ids": ["1", "2"], "enrolment_secrets": ["a"]}, "1 enrolment secrets for 2"),
    ],
)
def test_malformed_multi_client_registrations_are_refused(
    kw: dict[str, object], detail: str
) -> None:
    broker = make_broker()
    req = pb.RegisterRequest(protocol_version=PROTOCOL_VERSION, **kw)  # type: ignore[arg-type]
    with pytest.raises(NetError) as e:
        broker.register(req, None)
    assert e.value.code == ErrorCode.MALFORMED and detail in e.value.detail
    assert broker.live_clients() == set()


@pytest.mark.parametrize("version", [0, PROTOCOL_VERSION + 1])
def test_another_protocol_version_is_refused(version: int) -> None:
    broker = make_broker()
    with pytest.raises(NetError) as e:
        broker.register(pb.RegisterRequest(protocol_version=version, client_id="0"), None)
    assert e.value.code == ErrorCode.UNSUPPORTED_VERSION
    assert f"version {version}" in e.value.detail and broker.live_clients() == set()


def test_a_certificate_must_name_every_client_served() -> None:
    broker = make_broker()
    ident = PeerIdentity(name="site-a", fingerprint="f", clients=ClientIds.parse("0-2"))
    req = pb.RegisterRequest(protocol_version=PROTOCOL_VERSION, client_ids=["1", "3"])
    with pytest.raises(NetError) as e:
        broker.register(req, ident)
    assert e.value.code == ErrorCode.UNAUTHENTICATED and "not client 3" in e.value.detail
    ok = pb.RegisterRequest(protocol_version=PROTOCOL_VERSION, client_ids=["0", "2"])
    assert broker.register(ok, ident).worker_id


def test_suspension_is_per_client_of_a_multi_client_worker() -> None:
    broker = make_broker(max_missed_tasks=2, liveness_s=60)
    reply = register(broker, ["0", "1"])
    for r in range(2):  # client 1 answers, client 0 never does
        a = Assignment.of([], 0)
        broker.open_round(r, {"0": a, "1": a}, deadline_s=0.3, result_check=None)
        while (t := next_task(broker, reply)).client_id != "1":
            pass
        push_result(broker, reply, 1, t, b"ok")
        broker.collect(want=2)
    assert broker.suspended_clients() == {"0"} and broker.live_clients() == {"1"}


def test_launch_cuts_the_population_into_contiguous_blocks() -> None:
    from fedkit.experiment.deploy import client_blocks

    # 10 clients over 4 workers: sizes 3, 3, 2, 2 (the first 10 % 4 = 2 blocks take the extra)
    assert [str(b) for b in client_blocks(10, 4)] == ["0-2", "3-5", "6-7", "8-9"]
    assert [b.ids() for b in client_blocks(3, 3)] == [[0], [1], [2]]


@pytest.mark.parametrize(
    ("client_id", "clients", "ids"),
    [(3, None, [3]), (None, "0-2,5", [0, 1, 2, 5]), (None, "7", [7])],
)
def test_worker_ids_from_either_flag(
    client_id: int | None, clients: str | None, ids: list[int]
) -> None:
    from fedkit.experiment.deploy_cli import _served_ids

    assert _served_ids(client_id, clients) == ids


@pytest.mark.parametrize(("client_id", "clients"), [(None, None), (1, "0-2"), (-1, None)])
def test_worker_ids_refused(client_id: int | None, clients: str | None) -> None:
    from fedkit.experiment.deploy_cli import _served_ids

    with pytest.raises(ValueError, match="--client-id"):
        _served_ids(client_id, clients)


@pytest.mark.parametrize("by_arrival", [False, True])
def test_fold_order_and_what_waits_in_memory(by_arrival: bool) -> None:
    """Results arrive 3, 1, 2 (client 0 never answers). Ordered folding adds 1, 2, 3 only once
    the round closes (client 0 might still come), holding all three until then; arrival folding
    adds 3, 1, 2 and holds nothing. Weighted sums by
    hand: updates are all-(c+1) tensors with weight c+1, so sum w*u = 4*4 + 2*2 + 3*3 = 29
    and the weight total is 9 either way."""
    import torch

    from fedkit.algorithm import RoundInfo
    from fedkit.algorithms import FedAvg
    from fedkit.local import LocalTraining
    from fedkit.net.broker import Result
    from fedkit.net.executor import _OrderedFold
    from fedkit.net.payload import encode_tree
    from tests.unit.test_harden_values import TEMPLATE, honest, update_of

    algo = FedAvg(local=LocalTraining(lr=0.1, steps=1))
    info = RoundInfo(round=0, seed=0, num_clients=4, cohort_size=4)
    fold = _OrderedFold(algo, TEMPLATE, order=[0, 1, 2, 3], limit=4, info=info, attempt=0,
                        by_arrival=by_arrival)  # fmt: skip
    held = []
    for cid in (3, 1, 2):
        payload = encode_tree(update_of(cid), honest(cid, 0, pb.TRAIN))
        fold.offer(Result(client_id=str(cid), worker_id="w", round=0, task_id="t",
                          payload=payload, rtt_s=0.1, compute_s=0.0, arrival=0.0))  # fmt: skip
        held.append(sorted(fold.pending))
    fold.finish()
    assert held == ([[], [], []] if by_arrival else [[3], [1, 3], [1, 2, 3]])
    assert [m.client_id for m in fold.metrics] == ([3, 1, 2] if by_arrival else [1, 2, 3])
    mean = algo.aggregator.result(fold.acc, None)  # type: ignore[arg-type]
    for v in mean.delta.values():
        torch.testing.assert_close(v, torch.full_like(v, 29 / 9))


def test_data_sizes_reported_at_registration() -> None:
    broker = Broker(run_id="r", max_result_bytes=1 << 20, num_clients=4, max_client_examples=1000)
    register(broker, ["0", "1"], num_examples=[5, 7])
    assert broker.data_sizes(4) == ()  # 2 and 3 have not reported: no sizes for the sampler
    register(broker, ["2", "3"], num_examples=[0, 1000])
    assert broker.data_sizes(4) == (5, 7, 0, 1000)
    # hostile reports are refused whole (nothing stored): a count that does not match the ids,
    # and a size above the cap (a worker inflating its size would be drawn more often)
    fresh = Broker(run_id="r", max_result_bytes=1 << 20, num_clients=4, max_client_examples=1000)
    assert code_of(lambda: register(fresh, ["0", "1"], num_examples=[5])) == ErrorCode.MALFORMED
    assert code_of(lambda: register(fresh, ["0", "1"], num_examples=[5, 1001])) == (
        ErrorCode.MALFORMED
    )
    assert fresh.live_clients() == set()
    register(fresh, ["0", "1", "2", "3"])  # reporting none is allowed: sizes stay unknown
    assert fresh.data_sizes(4) == ()
