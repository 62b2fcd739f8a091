"""The bulk result channel (fedkit.net.bulk) on loopback: results arrive over it, every hostile
opening or payload is refused with a typed error while honest uploads keep being served, idle and
surplus connections are cut, mutual TLS binds the upload to the certificate's client ids, and a
worker that cannot reach the channel falls back to ``PushResult``."""

from __future__ import annotations

import hashlib
import math
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fedkit.net.broker import Assignment, Broker
from fedkit.net.bulk import MAGIC, BulkServer, read_ack
from fedkit.net.client import CoordinatorClient, Task
from fedkit.net.codec import check_template, encode, read_header, split, template_of
from fedkit.net.deployment import DeployError, deploy_from_mapping
from fedkit.net.errors import ErrorCode, NetError
from fedkit.net.guard import StreamGuard
from fedkit.net.identity import ClientIds
from fedkit.net.proto import fedkit_pb2 as pb
from fedkit.net.retry import RetryPolicy
from fedkit.net.service import add_service
from fedkit.net.tls import create_certs, issue_worker, server_ssl_context
from fedkit.net.transport import Security, make_server

pytestmark = pytest.mark.net

MODEL = {"w": torch.randn(64, 32), "b": torch.randn(32)}
CAP = 64 * 1024
NO_TIME = {"compute_s": 0.0}


def _check(payload: bytes, complete: bool) -> None:
    specs, _ = read_header(payload)
    check_template(specs, template_of(MODEL))


class Coordinator:
    """A broker served by gRPC and by a bulk channel that shares the gRPC service's guard."""

    def __init__(
        self,
        security: Security,
        *,
        guard: StreamGuard | None = None,
        max_connections: int = 16,
    ) -> None:
        self.broker = Broker(
            run_id="run-1", max_result_bytes=CAP, require_tls_identity=security.tls
        )
        self.guard = guard or StreamGuard()
        self.server, port = make_server("127.0.0.1:0", security, max_workers=16)
        add_service(self.server, self.broker, self.guard)
        tls = server_ssl_context(security.cert_dir) if security.cert_dir else None
        self.bulk = BulkServer(
            self.broker,
            host="127.0.0.1",
            guard=self.guard,
            tls=tls,
            max_connections=max_connections,
        )
        self.broker.bulk_port = self.bulk.port
        self.server.start()
        self.bulk.start()
        self.address = f"127.0.0.1:{port}"

    def open(self, round_: int, clients: list[str], deadline_s: float = 20.0) -> None:
        data = encode(MODEL)
        a = Assignment.of(split(data, 1024), len(data))
        self.broker.open_round(
            round_, {c: a for c in clients}, deadline_s=deadline_s, result_check=_check
        )

    def stop(self) -> None:
        self.server.stop(0)
        self.bulk.close()
        self.guard.close()


@pytest.fixture
def coord() -> Iterator[Coordinator]:
    c = Coordinator(Security(), guard=StreamGuard(idle_s=0.5, max_pending=2, tick_s=0.02))
    yield c
    c.stop()


def client(c: Coordinator, cid: str, **kw: object) -> CoordinatorClient:
    cl = CoordinatorClient(
        c.address,
        client_id=cid,
        security=kw.pop("security", Security()),  # type: ignore[arg-type]
        retry=RetryPolicy(max_attempts=2, base_delay_s=0.05),
        **kw,
    )  # type: ignore[arg-type]
    cl.register()
    return cl


def refused(fn: object) -> ErrorCode:
    with pytest.raises(NetError) as e:
        fn()  # type: ignore[operator]
    return e.value.code


def connect(c: Coordinator) -> socket.socket:
    return socket.create_connection(("127.0.0.1", c.bulk.port), timeout=5)


def opening(cl: CoordinatorClient, task: Task, payload: bytes, **fields: object) -> bytes:
    """The bytes of a bulk upload's step 1 for ``payload`` (fields override the info's)."""
    info = pb.ResultInfo(
        header=cl.header(round_=task.round, task_id=task.task_id),
        client_id=task.client_id,
        payload_bytes=len(payload),
        payload_sha256=hashlib.sha256(payload).digest(),
    )
    for k, v in fields.items():
        setattr(info, k, v)
    raw = info.SerializeToString()
    return MAGIC + struct.pack("<I", len(raw)) + raw


def closed_by_peer(sock: socket.socket, within_s: float = 5.0) -> bool:
    """Whether the coordinator closes ``sock`` (EOF or reset, after any verdict it sends)
    within ``within_s``."""
    end = time.monotonic() + within_s
    try:
        while (left := end - time.monotonic()) > 0:
            sock.settimeout(left)
            if sock.recv(4096) == b"":
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        pass
    return False


def test_results_arrive_over_the_bulk_channel(coord: Coordinator) -> None:
    cl = client(coord, "0")
    assert cl.bulk_port == coord.bulk.port > 0  # told at registration
    coord.open(1, ["0"])
    task = cl.get_task(wait_s=2)
    payload = encode({k: v + 1 for k, v in MODEL.items()})
    cl.push_result(task, payload, compute_s=0.5)
    results = coord.broker.collect(want=1)
    assert results["0"].payload == payload and results["0"].compute_s == 0.5
    assert coord.bulk.accepted == 1
    # what went up: the opening frame and the payload, nothing per chunk
    assert len(payload) < cl.bytes_sent < len(payload) + 512


def test_a_worker_without_bulk_pushes_by_grpc(coord: Coordinator) -> None:
    cl = client(coord, "0", bulk=False)
    coord.open(1, ["0"])
    payload = encode(MODEL)
    cl.push_result(cl.get_task(wait_s=2), payload, compute_s=0)
    assert coord.broker.collect(want=1)["0"].payload == payload
    assert coord.bulk.accepted == 0


def test_an_unreachable_bulk_port_falls_back_to_grpc(coord: Coordinator) -> None:
    cl = client(coord, "0")
    spare = socket.create_server(("127.0.0.1", 0))
    cl.bulk_port = spare.getsockname()[1]
    spare.close()  # nothing listens there now: connection refused
    coord.open(1, ["0"])
    payload = encode(MODEL)
    cl.push_result(cl.get_task(wait_s=2), payload, compute_s=0)
    assert coord.broker.collect(want=1)["0"].payload == payload
    assert coord.bulk.accepted == 0
    # gRPC only until the worker registers again, which tells it the port anew
    assert cl.bulk_port == 0
    cl.register()
    assert cl.bulk_port == coord.bulk.port


@pytest.mark.parametrize("reply", [b"\xff\xff\xff\xff", b"\x03\x00\x00\x00\xff\xff\xff", b""])
def test_a_garbled_verdict_sends_the_worker_to_grpc(coord: Coordinator, reply: bytes) -> None:
    # a "coordinator" on the bulk port answering an oversized frame, an unparsable Ack, or
    # nothing: the worker does not take it for a refusal, it pushes by gRPC
    fake = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = fake.accept()
        with conn:
            conn.recv(1 << 16)
            conn.sendall(reply)

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    cl = client(coord, "0")
    cl.bulk_port = fake.getsockname()[1]
    coord.open(1, ["0"])
    payload = encode(MODEL)
    cl.push_result(cl.get_task(wait_s=2), payload, compute_s=0)
    assert coord.broker.collect(want=1)["0"].payload == payload
    t.join(5)
    fake.close()


def test_typed_refusals_while_others_are_served(coord: Coordinator) -> None:
    ids = [str(i) for i in range(8)]
    cls = {c: client(coord, c) for c in ids}
    coord.open(3, ids)
    tasks = {c: cls[c].get_task(wait_s=2) for c in ids}
    payload = encode({k: v * 2 for k, v in MODEL.items()})

    def push(c: str, data: bytes) -> None:
        cls[c].push_result(tasks[c], data, compute_s=0)

    big = encode({"w": torch.zeros(200, 200)})
    assert refused(lambda: push("1", big)) is ErrorCode.PAYLOAD_TOO_LARGE
    assert refused(lambda: push("2", b"\x01" * 100)) is ErrorCode.MALFORMED
    wrong = encode({"w": torch.zeros(64, 32, dtype=torch.float64), "b": torch.zeros(32)})
    assert refused(lambda: push("3", wrong)) is ErrorCode.SCHEMA_MISMATCH
    stale = Task(**{**tasks["4"].__dict__, "round": 2})
    assert refused(lambda: cls["4"].push_result(stale, payload, compute_s=0)) is (
        ErrorCode.STALE_ROUND
    )
    cls["4"].token = "forged"
    assert refused(lambda: push("4", payload)) is ErrorCode.UNAUTHENTICATED
    # a worker pushing for a client it does not serve
    other = Task(**{**tasks["5"].__dict__, "client_id": "6"})
    assert refused(lambda: cls["5"].push_result(other, payload, compute_s=0)) is (
        ErrorCode.UNAUTHENTICATED
    )
    # the honest worker is served, and its first result wins
    push("0", payload)
    assert refused(lambda: push("0", payload)) is ErrorCode.DUPLICATE_RESULT
    assert coord.broker.collect(want=1)["0"].payload == payload
    codes = {code for _, code in coord.broker.rejections}
    assert {
        ErrorCode.PAYLOAD_TOO_LARGE,
        ErrorCode.MALFORMED,
        ErrorCode.SCHEMA_MISMATCH,
        ErrorCode.STALE_ROUND,
        ErrorCode.UNAUTHENTICATED,
        ErrorCode.DUPLICATE_RESULT,
    } <= codes


def test_hostile_openings_are_refused(coord: Coordinator) -> None:
    cl = client(coord, "0")
    coord.open(1, ["0"])
    task = cl.get_task(wait_s=2)
    payload = encode(MODEL)

    def answer(first: bytes) -> ErrorCode:
        with connect(coord) as s:
            s.sendall(first)
            return refused(lambda: read_ack(s))

    assert answer(b"GET / HTTP/1.1\r\n\r\n") is ErrorCode.MALFORMED  # not the magic
    assert answer(MAGIC + struct.pack("<I", 1 << 30)) is ErrorCode.MALFORMED  # info over 64 KiB
    assert answer(MAGIC + struct.pack("<I", 5) + b"\xff" * 5) is ErrorCode.MALFORMED  # no proto
    # no (or a short) payload digest
    assert answer(opening(cl, task, payload, payload_sha256=b"")) is ErrorCode.MALFORMED
    assert answer(opening(cl, task, payload, payload_sha256=b"\x00" * 31)) is ErrorCode.MALFORMED
    # a compute time that is not a finite number >= 0 (it is stored beside the round trip)
    for bad in (math.nan, math.inf, -1.0):
        assert answer(opening(cl, task, payload, compute_s=bad)) is ErrorCode.MALFORMED
    # the client is still served
    cl.push_result(task, payload, compute_s=0)
    assert coord.broker.collect(want=1)["0"].payload == payload


def test_payload_checks(coord: Coordinator) -> None:
    ids = ["0", "1", "2"]
    cls = {c: client(coord, c) for c in ids}
    coord.open(1, ids)
    tasks = {c: cls[c].get_task(wait_s=2) for c in ids}
    payload = encode({k: v - 1 for k, v in MODEL.items()})
    # a digest that does not match the bytes: CHECKSUM_MISMATCH after the last byte
    with connect(coord) as s:
        s.sendall(opening(cls["0"], tasks["0"], payload, payload_sha256=b"\x07" * 32))
        read_ack(s)  # go
        s.sendall(payload)
        assert refused(lambda: read_ack(s)) is ErrorCode.CHECKSUM_MISMATCH
    # the wrong schema is refused from the header: the rest is never read
    wrong = encode({"w": torch.zeros(64, 32, dtype=torch.float64), "b": torch.zeros(32)})
    with connect(coord) as s:
        s.sendall(opening(cls["1"], tasks["1"], wrong))
        read_ack(s)
        s.sendall(wrong[:1024])  # header only; 16 KiB more were declared
        assert refused(lambda: read_ack(s)) is ErrorCode.SCHEMA_MISMATCH
    # a payload cut short by the worker: MALFORMED, nothing recorded
    with connect(coord) as s:
        s.sendall(opening(cls["2"], tasks["2"], payload))
        read_ack(s)
        s.sendall(payload[: len(payload) // 2])
        s.shutdown(socket.SHUT_WR)
        assert refused(lambda: read_ack(s)) is ErrorCode.MALFORMED
    # nothing was recorded for the truncated upload: its client may still send the whole result
    cls["2"].push_result(tasks["2"], payload, compute_s=0)
    results = coord.broker.collect(want=1)
    assert set(results) == {"2"} and results["2"].payload == payload


def test_one_upload_per_task_at_a_time(coord: Coordinator) -> None:
    # a worker opening many uploads of one result cannot make the coordinator buffer it many
    # times over: while one is arriving, another is DUPLICATE_RESULT (gRPC's PushResult too)
    cl = client(coord, "0")
    coord.open(1, ["0"])
    task = cl.get_task(wait_s=2)
    payload = encode(MODEL)
    with connect(coord) as first:
        first.sendall(opening(cl, task, payload))
        read_ack(first)  # go: this upload is in progress
        with connect(coord) as second:
            second.sendall(opening(cl, task, payload))
            assert refused(lambda: read_ack(second)) is ErrorCode.DUPLICATE_RESULT
        cl.bulk = False
        assert refused(lambda: cl.push_result(task, payload, compute_s=0)) is (
            ErrorCode.DUPLICATE_RESULT
        )
        first.sendall(payload)
        read_ack(first)  # accepted
    assert coord.broker.collect(want=1)["0"].payload == payload


def test_an_abandoned_upload_does_not_block_the_next(coord: Coordinator) -> None:
    cl = client(coord, "0")
    coord.open(1, ["0"])
    task = cl.get_task(wait_s=2)
    payload = encode(MODEL)
    with connect(coord) as dropped:
        dropped.sendall(opening(cl, task, payload))
        read_ack(dropped)
        dropped.sendall(payload[:100])
    time.sleep(0.2)  # the handler sees the close and lets the task go
    cl.push_result(task, payload, compute_s=0)
    assert coord.broker.collect(want=1)["0"].payload == payload


def test_idle_and_trickling_connections_are_cut(coord: Coordinator) -> None:
    cl = client(coord, "0")
    coord.open(1, ["0"], deadline_s=30)
    task = cl.get_task(wait_s=2)
    payload = encode(MODEL)
    with connect(coord) as idle:  # never sends a byte: cut after idle_s (0.5 s)
        t0 = time.monotonic()
        assert closed_by_peer(idle)
        assert time.monotonic() - t0 < 3
    with connect(coord) as slow:  # stops half way: cut, and the refusal says why
        slow.sendall(opening(cl, task, payload))
        read_ack(slow)
        slow.sendall(payload[:2000])
        assert refused(lambda: read_ack(slow)) is ErrorCode.DEADLINE_PASSED
    assert coord.guard.cut >= 2
    cl.push_result(task, payload, compute_s=0)
    assert set(coord.broker.collect(want=1)) == {"0"}


def test_pending_connections_per_address_evict_the_oldest(coord: Coordinator) -> None:
    # max_pending = 2: a third connection that has sent nothing evicts the first
    a, b = connect(coord), connect(coord)
    time.sleep(0.1)
    c = connect(coord)
    try:
        assert closed_by_peer(a, within_s=0.4)  # before its own idle cut at 0.5 s
        assert coord.guard.evicted >= 1
    finally:
        for s in (a, b, c):
            s.close()


def test_connections_over_the_limit_are_closed_at_once() -> None:
    c = Coordinator(Security(), guard=StreamGuard(idle_s=5.0, max_pending=8), max_connections=2)
    try:
        cl = client(c, "0")
        held = [connect(c), connect(c)]
        time.sleep(0.2)
        with connect(c) as extra:
            assert closed_by_peer(extra, within_s=2.0)
        assert c.bulk.refused == 1
        # an honest upload turned away by the cap is not lost: the worker pushes by gRPC
        c.open(1, ["0"])
        payload = encode(MODEL)
        cl.push_result(cl.get_task(wait_s=2), payload, compute_s=0)
        assert c.bulk.refused == 2 and c.bulk.accepted == 0
        assert c.broker.collect(want=1)["0"].payload == payload
        for s in held:
            s.close()
        time.sleep(0.3)  # their handlers end (EOF) and free the slots
        cl.register()  # the bulk port again
        c.open(2, ["0"])
        cl.push_result(cl.get_task(wait_s=2), payload, compute_s=0)
        assert c.bulk.accepted == 1 and set(c.broker.collect(want=1)) == {"0"}
    finally:
        c.stop()


def test_mutual_tls_binds_the_upload_to_the_certificate(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    create_certs(certs, coordinator_hosts=["127.0.0.1"], workers=2)
    c = Coordinator(Security(cert_dir=certs))
    try:
        tls = Security(cert_dir=certs)
        one = client(c, "1", security=tls, tls_identity="worker-1")
        c.open(1, ["0", "1"])
        task = one.get_task(wait_s=2)
        payload = encode(MODEL)
        # worker-1's certificate names client 1 only: pushing for client 0 is refused
        other = Task(**{**task.__dict__, "client_id": "0"})
        assert refused(lambda: one.push_result(other, payload, compute_s=0)) is (
            ErrorCode.UNAUTHENTICATED
        )
        one.push_result(task, payload, compute_s=0)
        assert c.bulk.accepted == 1 and set(c.broker.collect(want=1)) == {"1"}
        # plaintext against the TLS bulk port: dropped, and the channel keeps serving
        with connect(c) as s:
            s.sendall(MAGIC + b"\x00" * 64)
            assert closed_by_peer(s)
        # a certificate from the same CA naming no client of this round's task still
        # authenticates the connection, but not the upload
        issue_worker(certs, "worker-9", ClientIds.parse("9"))
        nine = CoordinatorClient(c.address, client_id="9", security=tls, tls_identity="worker-9")
        nine.register()
        assert refused(lambda: nine.push_result(task, payload, compute_s=0)) is (
            ErrorCode.UNAUTHENTICATED
        )
    finally:
        c.stop()


@pytest.mark.parametrize(
    ("key", "bad"),
    [("bulk", 1), ("bulk", "yes"), ("bulk_port", -1), ("bulk_port", 65_536), ("bulk_port", 2.0)],
)
def test_bulk_settings_are_checked(key: str, bad: object) -> None:
    with pytest.raises(DeployError, match=f"deploy.{key} = "):
        deploy_from_mapping({key: bad})
    assert deploy_from_mapping({"bulk": False, "bulk_port": 65_535}).bulk_port == 65_535


def test_the_coordinator_offers_the_channel_its_settings_ask_for(tmp_path: Path) -> None:
    from fedkit.net.coordinator import _bulk_server
    from fedkit.net.deployment import DeploySettings

    guard = StreamGuard()
    broker = Broker(run_id="r", max_result_bytes=CAP)
    off = _bulk_server(broker, "127.0.0.1:0", Security(), guard, DeploySettings(bulk=False),
                       max_connections=4)  # fmt: skip
    assert off is None and broker.bulk_port == 0
    spare = socket.create_server(("127.0.0.1", 0))
    port = spare.getsockname()[1]
    spare.close()
    on = _bulk_server(broker, "127.0.0.1:0", Security(), guard, DeploySettings(bulk_port=port),
                      max_connections=4)  # fmt: skip
    assert on is not None
    try:
        assert on.port == port and broker.bulk_port == port and on.tls is None
        reply = broker.register(pb.RegisterRequest(protocol_version=1, client_id="0"), None)
        assert reply.bulk_port == port  # what a registering worker is told
    finally:
        on.close()
    certs = tmp_path / "certs"
    create_certs(certs, coordinator_hosts=["127.0.0.1"], workers=1)
    tls = _bulk_server(broker, "127.0.0.1:0", Security(cert_dir=certs), guard, DeploySettings(),
                       max_connections=4)  # fmt: skip
    assert tls is not None and tls.tls is not None
    tls.close()
    guard.close()


@pytest.mark.parametrize("bulk", [True, False])
def test_the_broker_keeps_what_the_complete_check_returns(coord: Coordinator, bulk: bool) -> None:
    seen: list[bool] = []

    def check(payload: bytes, complete: bool) -> object:
        seen.append(complete)
        return ("decoded", len(payload)) if complete else "header only"

    cl = client(coord, "0", bulk=bulk)
    data = encode(MODEL)
    a = Assignment.of(split(data, 1024), len(data))
    coord.broker.open_round(1, {"0": a}, deadline_s=20, result_check=check)
    payload = encode({k: v * 3 for k, v in MODEL.items()})
    cl.push_result(cl.get_task(wait_s=2), payload, compute_s=0)
    assert coord.broker.collect(want=1)["0"].decoded == ("decoded", len(payload))
    assert seen[-1] is True and coord.bulk.accepted == int(bulk)
    # a streaming collect hands the decoding over with the payload, then drops both (views
    # into the payload would keep every folded result in memory)
    coord.broker.open_round(2, {"0": a}, deadline_s=20, result_check=check)
    cl.push_result(cl.get_task(wait_s=2), payload, compute_s=0)
    handed: list[object] = []
    kept = coord.broker.collect(1, lambda res: handed.append(res.decoded))
    assert handed == [("decoded", len(payload))]
    assert kept["0"].decoded is None and kept["0"].payload == b""


@pytest.mark.skipif(not socket.has_dualstack_ipv6(), reason="no dual-stack IPv6 here")
def test_a_channel_on_every_ipv6_address_takes_ipv4_workers_too() -> None:
    guard = StreamGuard()
    server = BulkServer(Broker(run_id="r", max_result_bytes=CAP), host="::", guard=guard)
    server.start()
    try:
        for host in ("127.0.0.1", "::1"):
            with socket.create_connection((host, server.port), timeout=5) as s:
                s.sendall(b"XXXX")  # not the magic: refused with a verdict, over either family
                assert refused(lambda s=s: read_ack(s)) is ErrorCode.MALFORMED  # type: ignore[misc]
    finally:
        server.close()
        guard.close()


@pytest.fixture
def roomy() -> Iterator[Coordinator]:
    """A coordinator whose guard lets 8 connections from one address be pending at once."""
    c = Coordinator(Security(), guard=StreamGuard(idle_s=2.0, max_pending=16))
    yield c
    c.stop()


@pytest.mark.parametrize("bulk", [True, False])
def test_a_lagging_fold_holds_uploads_back_at_the_backlog(roomy: Coordinator, bulk: bool) -> None:
    # collect() hands results over as they arrive; while the consumer (the fold) is stuck,
    # at most max_backlog (4 here) results are arriving or received, the others wait unread
    # (longer than the guard's idle limit: waiting is the coordinator's doing, not silence)
    coord = roomy
    coord.broker.max_backlog = 4
    ids = [str(i) for i in range(8)]
    cls = {c: client(coord, c, bulk=bulk) for c in ids}
    coord.open(1, ids)
    tasks = {c: cls[c].get_task(wait_s=2) for c in ids}
    release = threading.Event()
    taken: list[str] = []

    def fold(res: object) -> None:
        release.wait(10)
        taken.append(res.client_id)  # type: ignore[attr-defined]

    out: dict[str, object] = {}
    collector = threading.Thread(target=lambda: out.update(coord.broker.collect(8, fold)))
    collector.start()
    payload = encode(MODEL)
    pushers = [
        threading.Thread(target=cls[c].push_result, args=(tasks[c], payload), kwargs=NO_TIME)
        for c in ids
    ]
    for t in pushers:
        t.start()
    time.sleep(3.0)
    rnd = coord.broker._round
    assert rnd is not None and rnd.handed == 0
    assert len(rnd.arrivals) == 4 and rnd.receiving == 0  # the rest wait unread
    release.set()
    for t in pushers:
        t.join(10)
    collector.join(10)
    assert sorted(taken) == ids and sorted(out) == ids
