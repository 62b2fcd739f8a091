"""Hostile values in results never reach an aggregator or the record (issue 18, part 1).

Against the broker and the remote executor directly (threads, no sockets): a self-reported
weight is bounded by the client's declared example count (a 1e300 weight would replace the model;
a 0 weight in a cohort of one would leave nothing to average), and an evaluation with a NaN or
infinite loss, an accuracy outside [0, 1] or an absurd example count is refused. A refusal is a
typed ``MALFORMED`` to the worker; the client is dropped from that round.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fedkit.algorithm import RoundInfo
from fedkit.algorithms import FedAvg, ModelDelta, ModelMessage
from fedkit.local import LocalTraining
from fedkit.net.broker import Broker
from fedkit.net.deployment import DeploySettings
from fedkit.net.errors import ErrorCode, NetError
from fedkit.net.executor import RemoteExecutor, check_weight
from fedkit.net.payload import EvalMeta, ResultMeta, encode_tree
from fedkit.net.proto import fedkit_pb2 as pb
from fedkit.run import RunConfig, run
from tests.helpers.broker import push_result

PARAMS = {"w": torch.randn(5, 3), "b": torch.randn(3)}
TEMPLATE = ModelDelta(delta={k: torch.zeros_like(v) for k, v in PARAMS.items()})
SETTINGS = DeploySettings(deadline_s=2.0, select_timeout_s=2, quorum=0.6, heartbeat_s=0.2)

# what a worker sends for (client id, round, task kind): the result metadata
Behaviour = Callable[[int, int, int], dict[str, str]]


def honest(cid: int, rnd: int, kind: int) -> dict[str, str]:
    if kind == pb.EVALUATE:
        return EvalMeta(loss=0.5, accuracy=0.75, num_examples=10 + cid).to_metadata()
    return ResultMeta(weight=float(cid + 1), num_examples=cid + 1, steps=1, train_loss=0.0,
                      work_fraction=1.0, compute_s=0.0).to_metadata()  # fmt: skip


def update_of(cid: int) -> ModelDelta:
    return ModelDelta(delta={k: torch.full_like(v, float(cid + 1)) for k, v in PARAMS.items()})


def worker(broker: Broker, cid: int, behave: Behaviour, stop: threading.Event,
           refused: list[tuple[int, ErrorCode]]) -> None:  # fmt: skip
    reply = broker.register(pb.RegisterRequest(protocol_version=1, client_id=str(cid)), None)
    while not stop.is_set():
        header = pb.Header(run_id=reply.run_id, worker_id=reply.worker_id, token=reply.token)
        info, _ = broker.next_task(pb.GetTaskRequest(header=header, wait_s=0.1), None)
        if info.kind not in (pb.TRAIN, pb.EVALUATE):
            continue
        meta = behave(cid, info.header.round, info.kind)
        tree: Any = update_of(cid) if info.kind == pb.TRAIN else {}
        payload = encode_tree(tree, meta)
        try:
            push_result(broker, reply, cid, info, payload, 256)
        except NetError as err:
            refused.append((cid, err.code))


class Workers:
    """Fake workers in threads around one broker and executor."""

    def __init__(self, behaviours: dict[int, Behaviour], settings: DeploySettings = SETTINGS):
        self.broker = Broker(run_id="r", max_result_bytes=1 << 20, heartbeat_interval_s=0.2,
                             liveness_s=5)  # fmt: skip
        self.executor = RemoteExecutor(self.broker, num_clients=len(behaviours),
                                       settings=settings, update_template=TEMPLATE)  # fmt: skip
        self.refused: list[tuple[int, ErrorCode]] = []
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=worker, args=(self.broker, c, b, self.stop, self.refused),
                             daemon=True)
            for c, b in behaviours.items()
        ]  # fmt: skip

    def __enter__(self) -> Workers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)

    def train(self, cohort: list[int]) -> Any:
        info = RoundInfo(round=0, seed=1, num_clients=len(self.threads), cohort_size=len(cohort))
        algo = FedAvg(local=LocalTraining(steps=1))
        return self.executor.execute(algo, ModelMessage(params=PARAMS), cohort, info)


def weighted(weight: float, examples: int = 2) -> Behaviour:
    def behave(cid: int, rnd: int, kind: int) -> dict[str, str]:
        return ResultMeta(weight=weight, num_examples=examples, steps=1, train_loss=0.0,
                          work_fraction=1.0, compute_s=0.0).to_metadata()  # fmt: skip

    return behave


def test_a_1e300_weight_is_refused_and_cannot_replace_the_model() -> None:
    with Workers({0: honest, 1: weighted(1e300), 2: honest}) as w:
        out = w.train([0, 1, 2])
    assert (1, ErrorCode.MALFORMED) in w.refused
    assert out.accumulator is not None and out.dropped == (1,)
    # the mean of clients 0 and 2 only: (1 * 1 + 3 * 3) / (1 + 3) = 2.5 in every element
    assert float(out.accumulator.weight) == 4.0
    mean = out.accumulator.total.delta["w"] / out.accumulator.weight
    assert torch.allclose(mean, torch.full_like(mean, 2.5, dtype=torch.float64))


@pytest.mark.parametrize(
    ("weight", "examples"),
    [(0.0, 5), (3.0, 2), (1.5, 0), (math.inf, 5), (5.0, 10**12)],
    ids=["zero", "above-count", "above-one-without-examples", "inf", "absurd-count"],
)
def test_weights_not_bounded_by_the_example_count_are_refused(weight: float, examples: int) -> None:
    with Workers({0: honest, 1: weighted(weight, examples), 2: honest}) as w:
        out = w.train([0, 1, 2])
    assert (1, ErrorCode.MALFORMED) in w.refused
    assert out.dropped == (1,) and [m.client_id for m in out.clients] == [0, 2]


def test_a_zero_weight_in_a_cohort_of_one_aborts_the_round_and_the_run_goes_on() -> None:
    # round 0: the only client reports weight 0 (nothing to average: the coordinator used to
    # crash with EmptyAggregateError); round 1: an honest result. The run loop survives both.
    def behave(cid: int, rnd: int, kind: int) -> dict[str, str]:
        return weighted(0.0 if rnd == 0 else 1.0, 1)(cid, rnd, kind)

    with Workers({0: behave}, DeploySettings(deadline_s=2.0, select_timeout_s=2)) as w:
        res = run(
            FedAvg(local=LocalTraining(steps=1)),
            w.executor,
            {k: v.clone() for k, v in PARAMS.items()},
            RunConfig(rounds=2, clients_per_round=1, seed=1, eval_every=0),
        )
    assert [r.committed for r in res.history] == [False, True]
    assert w.refused == [(0, ErrorCode.MALFORMED)]  # refused once: out of round 0
    # round 1 committed client 0's delta of 1.0 everywhere: FedAvg's server step x - (-Δ)
    assert not torch.equal(res.params["w"], PARAMS["w"])


def poisoned_eval(loss: float, accuracy: float, examples: int) -> Behaviour:
    def behave(cid: int, rnd: int, kind: int) -> dict[str, str]:
        return EvalMeta(loss=loss, accuracy=accuracy, num_examples=examples).to_metadata()

    return behave


@pytest.mark.parametrize(
    ("loss", "accuracy", "examples"),
    [
        (0.5, math.nan, 10),
        (-math.inf, 0.5, 10),
        (math.nan, 0.5, 10),
        (0.5, 1.5, 10),
        (0.5, -0.1, 10),
        (0.5, 0.5, 10**18),
        (-math.inf, math.nan, 10**18),  # the case
    ],
)
def test_a_poisoned_evaluation_is_refused_and_left_out(
    loss: float, accuracy: float, examples: int
) -> None:
    with Workers({0: honest, 1: poisoned_eval(loss, accuracy, examples), 2: honest}) as w:
        w.broker.wait_for_clients({"0", "1", "2"}, 3, 2.0)
        evals = w.executor.evaluate(PARAMS, [0, 1, 2])
    assert (1, ErrorCode.MALFORMED) in w.refused
    assert [e.client_id for e in evals] == [0, 2]
    assert all(e.result.accuracy == 0.75 for e in evals)


def test_a_client_without_test_data_is_not_refused() -> None:
    with Workers({0: honest, 1: poisoned_eval(math.nan, math.nan, 0)}) as w:
        w.broker.wait_for_clients({"0", "1"}, 2, 2.0)
        evals = w.executor.evaluate(PARAMS, [0, 1])
    assert not w.refused and [e.client_id for e in evals] == [0]  # no data: left out, as before


@given(
    weight=st.floats(allow_nan=True, allow_infinity=True),
    examples=st.integers(min_value=0, max_value=10**6),
)
def test_check_weight_accepts_exactly_the_honest_range(weight: float, examples: int) -> None:
    meta = ResultMeta(weight=weight, num_examples=examples, steps=1, train_loss=0.0,
                      work_fraction=1.0, compute_s=0.0)  # fmt: skip
    honest_range = 0.0 < weight <= max(1, examples) and examples <= 1000
    try:
        check_weight(meta, 1000)
        accepted = True
    except NetError as err:
        assert err.code == ErrorCode.MALFORMED
        accepted = False
    assert accepted == honest_range
