"""The coordinator service on loopback: typed refusals while other workers keep being served,
mutual TLS, and fail-fast on a TLS handshake failure."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fedkit.net.broker import Assignment, Broker
from fedkit.net.client import CoordinatorClient
from fedkit.net.codec import check_template, encode, read_header, split, template_of
from fedkit.net.errors import ErrorCode, NetError, TLSHandshakeError
from fedkit.net.proto import fedkit_pb2 as pb
from fedkit.net.retry import RetryPolicy
from fedkit.net.service import add_service
from fedkit.net.tls import create_certs
from fedkit.net.transport import Security, make_server

pytestmark = pytest.mark.net

MODEL = {"w": torch.randn(64, 32), "b": torch.randn(32)}
CAP = 64 * 1024


def _check(payload: bytes, complete: bool) -> None:
    specs, _ = read_header(payload)
    check_template(specs, template_of(MODEL))


class Coordinator:
    def __init__(self, security: Security, *, require_tls: bool = False) -> None:
        self.broker = Broker(run_id="run-1", max_result_bytes=CAP, require_tls_identity=require_tls)
        self.server, port = make_server("127.0.0.1:0", security, max_workers=16)
        add_service(self.server, self.broker)
        self.server.start()
        self.address = f"127.0.0.1:{port}"

    def open(self, round_: int, clients: list[str], deadline_s: float = 20.0) -> None:
        data = encode(MODEL)
        a = Assignment.of(split(data, 1024), len(data))
        self.broker.open_round(
            round_, {c: a for c in clients}, deadline_s=deadline_s, result_check=_check
        )

    def stop(self) -> None:
        self.server.stop(0)


@pytest.fixture
def coord() -> Iterator[Coordinator]:
    c = Coordinator(Security())
    yield c
    c.stop()


def client(c: Coordinator, cid: str, **kw: object) -> CoordinatorClient:
    cl = CoordinatorClient(
        c.address,
        client_id=cid,
        security=Security(),
        retry=RetryPolicy(max_attempts=2, base_delay_s=0.05),
        **kw,
    )  # type: ignore[arg-type]
    cl.register()
    return cl


def test_round_trip_and_typed_refusals(coord: Coordinator) -> None:
    good, bad = client(coord, "0"), client(coord, "1")
    # a result refused for its content puts its client out of the round: one client per case
    worse = {c: client(coord, c) for c in "234"}
    coord.open(3, ["0", "1", "2", "3", "4"])
    t_good, t_bad = good.get_task(wait_s=2), bad.get_task(wait_s=2)
    t_worse = {c: w.get_task(wait_s=2) for c, w in worse.items()}
    assert t_good.kind == pb.TRAIN and t_good.round == 3 and t_good.payload == encode(MODEL)
    payload = encode({k: v + 1 for k, v in MODEL.items()})

    def refused(fn: object) -> ErrorCode:
        with pytest.raises(NetError) as e:
            fn()  # type: ignore[operator]
        return e.value.code

    # oversized: declared size over the cap, refused before a chunk is read
    big = encode({"w": torch.zeros(200, 200)})
    assert refused(lambda: bad.push_result(t_bad, big, compute_s=0)) is ErrorCode.PAYLOAD_TOO_LARGE
    # malformed: not a safetensors payload; the client is then out of this round
    w2, t2 = worse["2"], t_worse["2"]
    assert refused(lambda: w2.push_result(t2, b"\x01" * 100, compute_s=0)) is ErrorCode.MALFORMED
    assert refused(lambda: w2.push_result(t2, payload, compute_s=0)) is ErrorCode.DUPLICATE_RESULT
    # wrong schema
    wrong = encode({"w": torch.zeros(64, 32, dtype=torch.float64), "b": torch.zeros(32)})
    w3, t3 = worse["3"], t_worse["3"]
    assert refused(lambda: w3.push_result(t3, wrong, compute_s=0)) is ErrorCode.SCHEMA_MISMATCH
    # corrupted chunk
    chunks = split(payload)
    chunks[0].sha256 = b"\x00" * 32
    info = pb.ResultInfo(
        header=bad.header(round_=3, task_id=t_bad.task_id),
        client_id="1",
        payload_bytes=len(payload),
        num_chunks=1,
    )
    parts = itertools.chain([pb.ResultPart(info=info)], [pb.ResultPart(chunk=chunks[0])])
    assert refused(lambda: bad.push_parts(parts)) is ErrorCode.CHECKSUM_MISMATCH
    # wrong schema is refused from the first chunk: the rest of the payload is never buffered
    wrong_big = encode({"w": torch.zeros(64, 32, dtype=torch.float64), "b": torch.zeros(32)})
    first = split(wrong_big, 1024)[0]
    info = pb.ResultInfo(
        header=worse["4"].header(round_=3, task_id=t_worse["4"].task_id),
        client_id="4",
        payload_bytes=len(wrong_big),
        num_chunks=len(split(wrong_big, 1024)),
    )
    parts = itertools.chain([pb.ResultPart(info=info)], [pb.ResultPart(chunk=first)])
    assert refused(lambda: worse["4"].push_parts(parts)) is ErrorCode.SCHEMA_MISMATCH
    # stale round
    stale = type(t_bad)(**{**t_bad.__dict__, "round": 2})
    assert refused(lambda: bad.push_result(stale, payload, compute_s=0)) is ErrorCode.STALE_ROUND
    # unauthenticated: right worker id, wrong token
    tok = bad.token
    bad.token = "forged"
    assert (
        refused(lambda: bad.push_result(t_bad, payload, compute_s=0)) is ErrorCode.UNAUTHENTICATED
    )
    bad.token = tok
    # a stream that does not start with ResultInfo
    assert refused(lambda: bad.push_parts(iter([pb.ResultPart(chunk=split(payload)[0])]))) is (
        ErrorCode.MALFORMED
    )
    # meanwhile the good worker is served normally, and its first result wins
    good.push_result(t_good, payload, compute_s=0.01)
    assert (
        refused(lambda: good.push_result(t_good, payload, compute_s=0))
        is ErrorCode.DUPLICATE_RESULT
    )
    results = coord.broker.collect(want=1)
    assert set(results) == {"0"} and results["0"].payload == payload
    assert results["0"].rtt_s > 0
    codes = {c for _, c in coord.broker.rejections}
    assert {
        ErrorCode.PAYLOAD_TOO_LARGE,
        ErrorCode.MALFORMED,
        ErrorCode.SCHEMA_MISMATCH,
        ErrorCode.CHECKSUM_MISMATCH,
        ErrorCode.STALE_ROUND,
        ErrorCode.UNAUTHENTICATED,
        ErrorCode.DUPLICATE_RESULT,
    } <= codes


def test_unregistered_worker_and_wait(coord: Coordinator) -> None:
    cl = client(coord, "7")
    t0 = time.monotonic()
    assert cl.get_task(wait_s=0.3).kind == pb.WAIT
    assert time.monotonic() - t0 >= 0.25
    cl.worker_id = "nobody"
    with pytest.raises(NetError) as e:
        cl.heartbeat()
    assert e.value.code is ErrorCode.UNKNOWN_WORKER


def test_long_poll_wakes_when_round_opens(coord: Coordinator) -> None:
    cl = client(coord, "0")
    threading.Timer(0.3, lambda: coord.open(1, ["0"])).start()
    t0 = time.monotonic()
    task = cl.get_task(wait_s=4)
    assert task.kind == pb.TRAIN and time.monotonic() - t0 < 3


def test_deadline_closes_round_without_results(coord: Coordinator) -> None:
    client(coord, "0")
    coord.open(1, ["0"], deadline_s=0.5)
    t0 = time.monotonic()
    assert coord.broker.collect(want=1) == {}
    assert 0.4 < time.monotonic() - t0 < 3


def test_mutual_tls_and_fail_fast(tmp_path: Path) -> None:
    good_dir, other_dir = tmp_path / "good", tmp_path / "other"
    create_certs(good_dir, coordinator_hosts=["127.0.0.1"], workers=2)
    create_certs(other_dir, coordinator_hosts=["127.0.0.1"], workers=1)
    assert (good_dir / "worker-1.key").stat().st_mode & 0o777 == 0o600
    c = Coordinator(Security(cert_dir=good_dir), require_tls=True)
    try:
        cl = CoordinatorClient(
            c.address, client_id="1", security=Security(cert_dir=good_dir), tls_identity="worker-1"
        )
        cl.register()
        c.open(1, ["1"])
        task = cl.get_task(wait_s=2)
        cl.push_result(task, encode(MODEL), compute_s=0)
        assert set(c.broker.collect(want=1)) == {"1"}
        ident = c.broker._workers[cl.worker_id].identity
        assert ident is not None and ident.name == "worker-1" and "1" in ident.clients
        # a worker certificate from another CA: fails fast, not after the whole retry budget
        rogue = CoordinatorClient(
            c.address,
            client_id="1",
            security=Security(cert_dir=other_dir),
            retry=RetryPolicy(max_attempts=50, base_delay_s=1.0),
        )
        t0 = time.monotonic()
        with pytest.raises(TLSHandshakeError, match="TLS handshake"):
            rogue.register()
        assert time.monotonic() - t0 < 10
        # plaintext against the TLS port also fails fast
        plain = CoordinatorClient(
            c.address,
            client_id="2",
            security=Security(),
            retry=RetryPolicy(max_attempts=3, base_delay_s=0.05),
            rpc_timeout_s=3,
        )
        with pytest.raises(Exception):  # noqa: B017 - UNAVAILABLE after bounded retries
            plain.register()
    finally:
        c.stop()


def test_plaintext_refused_off_loopback() -> None:
    with pytest.raises(PermissionError, match="--insecure"):
        make_server("0.0.0.0:0", Security(), max_workers=2)


def test_second_worker_for_a_live_client_is_refused(coord: Coordinator) -> None:
    first = client(coord, "5")
    with pytest.raises(NetError) as e:
        client(coord, "5")
    assert e.value.code is ErrorCode.CLIENT_TAKEN
    first.heartbeat()  # the first worker is still served
    first.register()  # and may register again itself (its token proves it is the same worker)
    first.heartbeat()
    coord.broker.liveness_s = 0.0  # once it has gone silent, a newcomer takes over
    time.sleep(0.01)
    client(coord, "5")
    with pytest.raises(NetError) as e:
        first.heartbeat()
    assert e.value.code is ErrorCode.UNKNOWN_WORKER


def test_client_id_outside_the_population_is_refused(coord: Coordinator) -> None:
    coord.broker.num_clients = 10
    for bad in ("10", "-1", "abc", ""):
        with pytest.raises(NetError) as e:
            client(coord, bad)
        assert e.value.code is ErrorCode.MALFORMED
    client(coord, "9")


def test_a_multi_client_worker_is_sent_a_rounds_broadcast_once(coord: Coordinator) -> None:
    # 3 clients on one worker, one 2-client worker on a different payload: the first task of a
    # round brings the chunks; the worker names that payload's digest, and its other clients'
    # tasks come without chunks (payload_held) yet with the same bytes
    worker = client(coord, "", client_ids=["0", "1", "2"])
    coord.open(0, ["0", "1", "2"])
    data = encode(MODEL)
    tasks = []
    received = []
    for _ in range(3):
        before = worker.bytes_received
        tasks.append(worker.get_task(wait_s=2))
        received.append(worker.bytes_received - before)
    assert sorted(t.client_id for t in tasks) == ["0", "1", "2"]
    assert all(bytes(t.payload) == data for t in tasks)
    assert received[0] > len(data) and max(received[1:]) < 200  # only the TaskInfo, twice
    # each held task has its own buffer: changing one (a decoded tensor changed in place)
    # leaves the next one whole
    tasks[1].payload[-1] ^= 0xFF  # type: ignore[index]
    assert bytes(tasks[2].payload) == data
    # a new round with another payload: its chunks are sent again
    for t in tasks:
        worker.push_result(t, data, compute_s=0.0)
    other = encode({k: v * 2 for k, v in MODEL.items()})
    a = Assignment.of(split(other, 1024), len(other))
    coord.broker.open_round(1, {"0": a}, deadline_s=20.0, result_check=_check)
    before = worker.bytes_received
    assert bytes(worker.get_task(wait_s=2).payload) == other
    assert worker.bytes_received - before > len(other)


def test_a_task_naming_a_payload_the_worker_lacks_is_refused() -> None:
    cl = CoordinatorClient("127.0.0.1:1", client_ids=["0", "1"], security=Security())
    info = pb.TaskInfo(payload_bytes=3, payload_digest=b"x" * 32, payload_held=True)
    with pytest.raises(NetError) as e:
        cl._reuse(info, None, iter([]))
    assert e.value.code == ErrorCode.MALFORMED
    with pytest.raises(NetError):  # held, but another payload
        cl._reuse(info, (b"y" * 32, b"abc"), iter([]))
    with pytest.raises(NetError):  # the right one, but chunks follow the held-payload info
        cl._reuse(info, (b"x" * 32, b"abc"), iter([pb.TaskPart(chunk=pb.Chunk())]))
    assert cl._reuse(info, (b"x" * 32, b"abc"), iter([])) == bytearray(b"abc")
    cl.close()
