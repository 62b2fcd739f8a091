"""The remote executor's round policy, against the broker directly (no sockets): quorum, retries,
abort policy, and aggregation in client-id order whatever the arrival order."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import pytest
import torch

from fedkit.aggregate import WeightedMean
from fedkit.algorithm import RoundInfo
from fedkit.algorithms import FedAvg, ModelDelta, ModelMessage
from fedkit.local import LocalTraining
from fedkit.net.broker import Broker
from fedkit.net.deployment import DeploySettings
from fedkit.net.errors import ErrorCode, NetError
from fedkit.net.executor import QuorumError, RemoteExecutor
from fedkit.net.payload import ResultMeta, encode_tree
from fedkit.net.proto import fedkit_pb2 as pb
from fedkit.net.state import RoundRow, RttRow
from tests.helpers.broker import push_result

PARAMS = {"w": torch.randn(5, 3), "b": torch.randn(3)}
TEMPLATE = ModelDelta(delta={k: torch.zeros_like(v) for k, v in PARAMS.items()})
INFO = RoundInfo(round=0, seed=1, num_clients=3, cohort_size=3)


def update_of(cid: int) -> ModelDelta:
    g = torch.Generator().manual_seed(cid)
    return ModelDelta(delta={k: torch.randn(v.shape, generator=g) for k, v in PARAMS.items()})


REFUSED: list[tuple[int, ErrorCode]] = []
POISONED: set[int] = set()  # clients whose update carries one NaN


def fake_worker(broker: Broker, cid: int, delay_s: float, stop: threading.Event) -> None:
    reply = broker.register(pb.RegisterRequest(protocol_version=1, client_id=str(cid)), None)
    header = pb.Header(run_id=reply.run_id, worker_id=reply.worker_id, token=reply.token)
    while not stop.is_set():
        info, _ = broker.next_task(pb.GetTaskRequest(header=header, wait_s=0.2), None)
        if info.kind != pb.TRAIN:
            continue
        time.sleep(max(delay_s, 0.0))
        weight = -1.0 if delay_s < 0 else float(cid + 1)  # delay < 0: a worker sending garbage
        meta = ResultMeta(weight=weight, num_examples=cid + 1, steps=1, train_loss=0.0,
                          work_fraction=info.work_fraction, compute_s=0.0)  # fmt: skip
        update = update_of(cid)
        if cid in POISONED:
            update.delta["w"][0, 0] = float("nan")
        payload = encode_tree(update, meta.to_metadata())
        try:
            push_result(broker, reply, cid, info, payload, 256)
        except NetError as err:
            REFUSED.append((cid, err.code))


def make(settings: DeploySettings) -> tuple[Broker, RemoteExecutor, list[RoundRow]]:
    broker = Broker(run_id="r", max_result_bytes=1 << 20, heartbeat_interval_s=0.2, liveness_s=5)
    rows: list[RoundRow] = []

    def on_round(row: RoundRow, rtts: list[RttRow]) -> None:
        rows.append(row)

    ex = RemoteExecutor(broker, num_clients=3, settings=settings, update_template=TEMPLATE,
                        on_round=on_round)  # fmt: skip
    return broker, ex, rows


def run_round(ex: RemoteExecutor, broker: Broker, delays: dict[int, float]) -> Any:
    stop = threading.Event()
    threads = [threading.Thread(target=fake_worker, args=(broker, c, d, stop), daemon=True)
               for c, d in delays.items()]  # fmt: skip
    for t in threads:
        t.start()
    try:
        algo = FedAvg(local=LocalTraining(steps=1))
        return ex.execute(algo, ModelMessage(params=PARAMS), [0, 1, 2], INFO)
    finally:
        stop.set()
        for t in threads:
            t.join(5)


def test_updates_are_added_in_client_id_order_whatever_the_arrival_order() -> None:
    broker, ex, rows = make(DeploySettings(deadline_s=20, select_timeout_s=5))
    out = run_round(ex, broker, {0: 0.6, 1: 0.3, 2: 0.0})  # arrive 2, 1, 0
    agg = WeightedMean[ModelDelta]()
    ref = agg.zero(TEMPLATE)
    for c in (0, 1, 2):
        ref = agg.add(ref, update_of(c), float(c + 1))
    assert [m.client_id for m in out.clients] == [0, 1, 2]
    assert all(torch.equal(out.accumulator.total.delta[k], ref.total.delta[k]) for k in PARAMS)
    assert float(out.accumulator.weight) == 6.0
    assert rows[0].committed and rows[0].accepted == (0, 1, 2)


def test_quorum_missed_retries_then_skips_with_model_unchanged() -> None:
    s = DeploySettings(deadline_s=1.0, select_timeout_s=1, quorum=1.0, round_retries=2)
    broker, ex, rows = make(s)
    out = run_round(ex, broker, {0: 0.0, 1: 0.0})  # client 2 never shows up
    assert out.accumulator is None and out.dropped == (0, 1, 2)
    assert [(r.attempt, r.committed) for r in rows] == [(0, False), (1, False), (2, False)]


def test_quorum_met_commits_with_survivors() -> None:
    broker, ex, rows = make(DeploySettings(deadline_s=1.0, select_timeout_s=1, quorum=0.6))
    out = run_round(ex, broker, {0: 0.0, 2: 0.0})
    assert out.accumulator is not None and out.dropped == (1,)
    assert float(out.accumulator.weight) == 1.0 + 3.0  # clients 0 and 2 only
    assert rows[0].committed and rows[0].accepted == (0, 2)
    assert [m.client_id for m in out.clients] == [0, 2]


def test_on_abort_stop_raises() -> None:
    s = DeploySettings(deadline_s=0.5, select_timeout_s=0.5, on_abort="stop")
    broker, ex, _ = make(s)
    with pytest.raises(QuorumError, match="on_abort = 'stop'"):
        run_round(ex, broker, {})


def test_invalid_result_metadata_is_refused_and_the_round_goes_on() -> None:
    REFUSED.clear()
    broker, ex, rows = make(DeploySettings(deadline_s=1.0, select_timeout_s=1, quorum=0.6))
    out = run_round(ex, broker, {0: 0.0, 1: -1.0, 2: 0.0})
    assert (1, ErrorCode.MALFORMED) in REFUSED  # negative weight: typed refusal to the worker
    assert out.accumulator is not None and out.dropped == (1,)
    assert rows[0].accepted == (0, 2)


def test_fold_adds_in_id_order_and_holds_only_out_of_order_results() -> None:
    from fedkit.net.broker import Result
    from fedkit.net.executor import _OrderedFold

    def res(cid: int) -> Result:
        meta = ResultMeta(weight=1.0, num_examples=1, steps=1, train_loss=0.0, work_fraction=1.0,
                          compute_s=0.0)  # fmt: skip
        return Result(client_id=str(cid), worker_id=f"w{cid}", round=0, task_id="t",
                      payload=encode_tree(update_of(cid), meta.to_metadata()), rtt_s=0.1,
                      compute_s=0.0, arrival=0.0)  # fmt: skip

    fold = _OrderedFold(FedAvg(), TEMPLATE, order=[0, 1, 2, 3], limit=3, info=INFO, attempt=0)
    fold.offer(res(2))
    assert set(fold.pending) == {2} and not fold.metrics  # waits for 0 and 1
    fold.offer(res(0))
    assert set(fold.pending) == {2} and [m.client_id for m in fold.metrics] == [0]
    fold.offer(res(3))
    fold.offer(res(1))  # past the limit of 3 arrivals: ignored
    fold.finish()  # 1 never came: skipped; 2 and 3 follow in order
    assert [m.client_id for m in fold.metrics] == [0, 2, 3] and not fold.pending
    assert fold.accepted == [2, 0, 3]


def test_an_update_with_a_nan_is_refused_on_arrival_and_never_reaches_the_mean() -> None:
    REFUSED.clear()
    POISONED.add(1)
    try:
        broker, ex, _ = make(DeploySettings(deadline_s=1.0, select_timeout_s=1, quorum=0.6))
        out = run_round(ex, broker, {0: 0.0, 1: 0.0, 2: 0.0})
    finally:
        POISONED.clear()
    assert (1, ErrorCode.MALFORMED) in REFUSED
    assert out.accumulator is not None and out.dropped == (1,)
    assert [m.client_id for m in out.clients] == [0, 2]
    assert all(bool(torch.isfinite(t).all()) for t in out.accumulator.total.delta.values())


def test_fold_uses_the_arrival_checks_decoding_and_the_broker_keeps_it() -> None:
    from fedkit.net.broker import Result
    from fedkit.net.executor import _OrderedFold

    meta = ResultMeta(weight=2.0, num_examples=2, steps=1, train_loss=0.0, work_fraction=1.0,
                      compute_s=0.0)  # fmt: skip
    payload = encode_tree(update_of(1), meta.to_metadata())
    _, ex, _ = make(DeploySettings())
    decoded = ex._check(payload, True)  # what the broker keeps as Result.decoded
    assert decoded is not None and ex._check(payload, False) is None  # header only: nothing
    # a payload the fold could not decode: only the kept decoding can make this add work
    res = Result(client_id="1", worker_id="w", round=0, task_id="t", payload=b"\x00" * 16,
                 rtt_s=0.1, compute_s=0.0, arrival=0.0, decoded=decoded)  # fmt: skip
    fold = _OrderedFold(FedAvg(), TEMPLATE, order=[1], limit=1, info=INFO, attempt=0)
    fold.offer(res)
    assert [m.client_id for m in fold.metrics] == [1] and fold.acc.weight == 2.0
    # without it, the same payload is decoded again (and here refused: the client is dropped)
    fold2 = _OrderedFold(FedAvg(), TEMPLATE, order=[1], limit=1, info=INFO, attempt=0)
    fold2.offer(dataclasses.replace(res, decoded=None))
    assert fold2.accepted == [] and fold2.acc is None
