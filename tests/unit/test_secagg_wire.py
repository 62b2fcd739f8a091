"""Secure aggregation's wire steps in one process: the coordinator's side
(:class:`CoordinatorSecAgg`) against workers' sides (:class:`WorkerSecAgg`) through a broker
stand-in that hands each task's bytes to the worker and each answer's bytes back through the
coordinator's own result check. The unmasked sum equals the plain one exactly; hostile answers
(wrong sizes, ids, repeats, a lying share holder) drop their sender, never the round, unless
fewer than t remain; malformed tasks are refused by the worker."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest
import torch

from fedkit.aggregate import AggContext
from fedkit.algorithm import RoundInfo
from fedkit.net.broker import Assignment, Result
from fedkit.net.codec import decode
from fedkit.net.errors import NetError
from fedkit.net.proto import fedkit_pb2 as pb
from fedkit.net.secagg_coordinator import CoordinatorSecAgg, masked_length
from fedkit.net.secagg_wire import (
    Setup,
    body_of,
    message,
    parse_advert,
    parse_setup,
    parse_unmask_response,
    setup_message,
)
from fedkit.net.secagg_worker import WorkerSecAgg
from fedkit.privacy.secagg.errors import SecAggAbort, SecAggError
from fedkit.privacy.secagg.stage import SecureSum, with_wire
from fedkit.rng import SERVER

Answer = Callable[[int, int, bytes], bytes | None]


def _payload(a: Assignment) -> bytes:
    out = b""
    for raw in a.wire:
        part = pb.TaskPart()
        part.ParseFromString(raw)
        out += part.chunk.data
    return out


class FakeBroker:
    """open_round/collect: each task goes to ``answer(client, round, payload)``; a ``None``
    answer is a worker that never answers; every answer passes the coordinator's result check
    (a refusal there drops the client, as the real broker does)."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self._open: tuple[int, dict[str, Assignment], Any] | None = None
        self.steps: list[str] = []

    def open_round(
        self,
        round_: int,
        assignments: Mapping[str, Assignment],
        *,
        deadline_s: float,
        result_check: Any,
    ) -> None:
        assert all(a.kind == pb.SECAGG for a in assignments.values())
        self._open = (round_, dict(assignments), result_check)

    def collect(self, want: int, on_result: Any = None) -> dict[str, Result]:
        assert self._open is not None
        round_, assignments, check = self._open
        out = {}
        for cid, a in assignments.items():
            task = _payload(a)
            self.steps.append(body_of(task, max_bytes=1 << 20).step)
            got = self.answer(int(cid), round_, task)
            if got is None:
                continue
            try:
                check(bytearray(got), True)
            except NetError:
                continue
            out[cid] = Result(
                client_id=cid, worker_id="w", round=round_, task_id="t", payload=bytearray(got),
                rtt_s=0.0, compute_s=0.0, arrival=0.0,
            )  # fmt: skip
        return out


STAGE = SecureSum(bits=32, clip_range=2.0, max_weight=10.0, threshold=0.5)
COHORT = [3, 5, 8, 13, 21]
UPDATES = {u: {"w": torch.linspace(-1, 1, 7) * (i + 1) / 5} for i, u in enumerate(COHORT)}
WEIGHTS = {u: float(i + 1) for i, u in enumerate(COHORT)}


def _template() -> Any:
    return STAGE.prepare(UPDATES[3], 1.0, AggContext(0, 0, SERVER))


def _round(answer_for: Callable[[dict[int, WorkerSecAgg]], Answer], *, masked: list[int]) -> Any:
    """One round: rounds 0-1 over the fake broker, the ``masked`` clients' updates prepared
    with their workers' sessions and added, round 3 unmasked by the coordinator's wire."""
    length = masked_length(_template())
    workers = {u: WorkerSecAgg(STAGE, length=length, max_cohort=100) for u in COHORT}
    broker = FakeBroker(answer_for(workers))
    coord = CoordinatorSecAgg(broker, STAGE, length=length, deadline_s=1.0)  # type: ignore[arg-type]
    info = RoundInfo(round=4, seed=0, num_clients=100, cohort_size=5, cohort=tuple(COHORT))
    trained = coord.before_train(COHORT, info)
    server = with_wire(STAGE, coord)
    acc = None
    for u in masked:
        if u not in trained:
            continue
        m = with_wire(STAGE, workers[u]).prepare(UPDATES[u], WEIGHTS[u], AggContext(4, 0, u))
        coord.screen(u, m)
        acc = server.add(server.zero(m) if acc is None else acc, m, 1.0)
    return trained, server.open(acc, AggContext(4, 0, SERVER, cohort=tuple(COHORT))), broker


def _honest(workers: dict[int, WorkerSecAgg]) -> Answer:
    return lambda u, r, task: workers[u].handle(u, r, task)


def _plain(clients: list[int]) -> torch.Tensor:
    return sum((UPDATES[u]["w"] * WEIGHTS[u] for u in clients), torch.zeros(7))


def test_a_wire_round_unmasks_exactly_the_weighted_sum() -> None:
    trained, out, broker = _round(_honest, masked=COHORT)
    assert trained == COHORT
    assert broker.steps == ["advertise"] * 5 + ["share"] * 5 + ["inbox"] * 5 + ["unmask"] * 5
    fp = STAGE.encoding(5)
    # Σ w_u x_u: weights 1..5 (masked with the update), total weight 15
    assert float(out.weight) == pytest.approx(15.0, abs=fp.weight_error())
    assert torch.allclose(out.total["w"], _plain(COHORT).double(), atol=fp.sum_error())
    assert int(out.count) == 5


def test_a_client_dying_after_masking_is_recovered_and_too_many_abort() -> None:
    def dying(dead: set[int]) -> Callable[[dict[int, WorkerSecAgg]], Answer]:
        def make(workers: dict[int, WorkerSecAgg]) -> Answer:
            def answer(u: int, r: int, task: bytes) -> bytes | None:
                if u in dead and body_of(task, max_bytes=1 << 20).step == "unmask":
                    return None
                return workers[u].handle(u, r, task)

            return answer

        return make

    # t = ⌊0.5·5⌋ + 1 = 3: two dead after masking leave 3 answers; their inputs stay in the sum
    _, out, _ = _round(dying({3, 21}), masked=COHORT)
    assert torch.allclose(out.total["w"], _plain(COHORT).double(), atol=1e-6)
    with pytest.raises(SecAggAbort, match="TOO_FEW_SURVIVORS"):
        _round(dying({3, 5, 21}), masked=COHORT)


def test_a_client_dropping_before_masking_has_its_pairwise_masks_removed() -> None:
    _, out, _ = _round(_honest, masked=[3, 5, 13, 21])  # 8 shared keys, never sent an input
    assert torch.allclose(out.total["w"], _plain([3, 5, 13, 21]).double(), atol=1e-6)


@pytest.mark.parametrize(
    ("step", "tamper"),
    [
        ("advertise", lambda body: body[:63]),  # short advert
        ("advertise", lambda body: body[:32] * 2),  # c_pk == s_pk
        ("share", lambda body: body[:-1]),  # not whole records
        ("share", lambda body: (99).to_bytes(8, "big") + body[8:]),  # share for a stranger
        ("share", lambda body: body[: len(body) // 4]),  # a neighbour missing
        ("inbox", lambda body: b"\x00"),  # the acknowledgement is empty
    ],
)
def test_a_hostile_answer_drops_its_sender_not_the_round(
    step: str, tamper: Callable[[bytes], bytes]
) -> None:
    def make(workers: dict[int, WorkerSecAgg]) -> Answer:
        def answer(u: int, r: int, task: bytes) -> bytes | None:
            got = workers[u].handle(u, r, task)
            msg = body_of(got, max_bytes=1 << 20)
            if u == 8 and msg.step == step:
                return message(step, r, tamper(msg.body))
            return got

        return answer

    trained, out, _ = _round(make, masked=COHORT)
    assert trained == [3, 5, 13, 21]  # 8 is out of the round, the others go on
    assert torch.allclose(out.total["w"], _plain(trained).double(), atol=1e-6)


def test_a_malformed_unmask_answer_drops_its_sender() -> None:
    """A survivor whose unmask answer is malformed (share kind 7) is left out; the four other
    answers (≥ t = 3) still rebuild every secret, and the sum is exact."""

    def make(workers: dict[int, WorkerSecAgg]) -> Answer:
        def answer(u: int, r: int, task: bytes) -> bytes | None:
            got = workers[u].handle(u, r, task)
            msg = body_of(got, max_bytes=1 << 20)
            if u == 8 and msg.step == "unmask":
                body = bytearray(msg.body)
                body[0] = 7  # share kind 7: malformed
                return message("unmask", r, bytes(body))
            return got

        return answer

    _, out, _ = _round(make, masked=COHORT)  # 8's answer is dropped; 4 ≥ t answers remain
    assert torch.allclose(out.total["w"], _plain(COHORT).double(), atol=1e-6)


def test_workers_refuse_malformed_or_foreign_tasks() -> None:
    length = masked_length(_template())
    w = WorkerSecAgg(STAGE, length=length, max_cohort=10)
    seed = bytes(32)
    good = Setup(4, tuple(COHORT), seed, length, 32, None, 0.5)
    with pytest.raises(SecAggError, match="no secure-aggregation setup"):
        w.handle(3, 4, message("share", 4, b""))
    with pytest.raises(SecAggError, match="round 4 in a task of round 5"):
        w.handle(3, 5, setup_message(good))
    for bad, match in (
        (Setup(4, tuple(COHORT), seed, length, 40, None, 0.5), "differs"),
        (Setup(4, tuple(COHORT), seed, length - 1, 32, None, 0.5), "differs"),
        (Setup(4, tuple(COHORT), seed, length, 32, 2, 0.5), "differs"),
        (Setup(4, tuple(COHORT), seed, length, 32, None, 0.25), "differs"),
        (Setup(4, (3, 3, 5), seed, length, 32, None, 0.5), "twice"),
        (Setup(4, (5, 8), seed, length, 32, None, 0.5), "not in the round's cohort"),
        (Setup(4, tuple(range(11)), seed, length, 32, None, 0.5), "at most 10"),
    ):
        with pytest.raises(SecAggError, match=match):
            w.handle(3, 4, setup_message(bad))
    w.handle(3, 4, setup_message(good))
    with pytest.raises(SecAggError, match="out of order"):
        w.handle(3, 4, message("inbox", 4, b""))  # before share
    # one worker serving many client ids: each id its own fresh OS keys
    many = WorkerSecAgg(STAGE, length=length, max_cohort=10)
    answers = [body_of(many.handle(u, 4, setup_message(good)), max_bytes=1 << 20) for u in COHORT]
    adverts = [parse_advert(u, a.body) for u, a in zip(COHORT, answers, strict=True)]
    assert len({a.c_pk for a in adverts} | {a.s_pk for a in adverts}) == 10
    assert many.session(4, 3) is not many.session(4, 5)


def test_wire_parsers_refuse_hostile_bytes() -> None:
    with pytest.raises(SecAggError, match="one 1-D uint8 tensor"):
        from fedkit.net.codec import encode

        body_of(encode({"body": torch.zeros(3)}, {"secagg:step": "share"}), max_bytes=1 << 20)
    with pytest.raises(SecAggError, match="unknown secure-aggregation step"):
        body_of(_with_meta({"secagg:step": "x"}), max_bytes=99999)
    with pytest.raises(SecAggError, match="round"):
        body_of(_with_meta({"secagg:step": "share", "secagg:round": "-1"}), max_bytes=99999)
    with pytest.raises(SecAggError, match=r"safetensors|payload"):
        body_of(b"\xff" * 40, max_bytes=99999)
    with pytest.raises(SecAggError, match="share kind 9"):
        parse_unmask_response(1, bytes([9]) + bytes(82), max_cohort=5)
    with pytest.raises(SecAggError, match=r"2 records, at most 1$"):
        parse_unmask_response(1, bytes(83 * 2), max_cohort=1)
    with pytest.raises(SecAggError, match=r"outside 0\.\.2"):  # an owner id of 2^64 - 1
        parse_unmask_response(1, bytes([0]) + b"\xff" * 8 + bytes(74), max_cohort=5)
    no_seed = _with_meta({"secagg:step": "advertise", "secagg:round": "0"}, body=b"\x01" * 8)
    with pytest.raises(SecAggError, match="no public seed"):
        parse_setup(body_of(no_seed, max_bytes=99999), max_cohort=5, max_length=10)
    bad_threshold = _with_meta(
        {"secagg:step": "advertise", "secagg:round": "0", "secagg:threshold": "half"},
        body=bytes(40),
    )
    with pytest.raises(SecAggError, match="hex float"):
        parse_setup(body_of(bad_threshold, max_bytes=99999), max_cohort=5, max_length=10)


def _with_meta(meta: dict[str, str], body: bytes = b"") -> bytes:
    from fedkit.net.codec import encode

    t = torch.frombuffer(bytearray(body), dtype=torch.uint8) if body else torch.zeros(0)
    return encode({"body": t.to(torch.uint8)}, meta)


def test_the_coordinator_screens_masked_updates() -> None:
    length = masked_length(_template())
    coord = CoordinatorSecAgg(FakeBroker(lambda *a: None), STAGE, length=length, deadline_s=1.0)  # type: ignore[arg-type]
    t = _template()
    with pytest.raises(NetError, match="names another sender"):
        coord.screen(3, t)  # the template's sender is the server's id
    forged = type(t)(t.masked, t.weight, torch.tensor([3]), t.key_id)
    coord.screen(3, forged)
    stage20 = SecureSum(bits=20, clip_range=2.0, max_weight=10.0)
    t20 = stage20.prepare(UPDATES[3], 1.0, AggContext(0, 0, SERVER))
    bad = {"w": t20.masked["w"].clone()}
    bad["w"][2, -1] = 0x10  # 2^20: outside [0, 2^20)
    coord20 = CoordinatorSecAgg(FakeBroker(lambda *a: None), stage20, length=8, deadline_s=1.0)  # type: ignore[arg-type]
    with pytest.raises(NetError, match="outside"):
        coord20.screen(3, type(t20)(bad, t20.weight, torch.tensor([3]), t20.key_id))
    with pytest.raises(NetError, match="MaskedUpdate"):
        coord.screen(3, {"w": torch.zeros(7)})
    with pytest.raises(SecAggAbort, match="no key setup"):
        coord.unmask(4, torch.zeros(length, dtype=torch.int64), [3])
    assert decode(bytearray(message("inbox", 0, b""))).tensors["body"].numel() == 0
