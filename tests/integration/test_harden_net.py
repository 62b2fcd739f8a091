"""Connection exhaustion on loopback (issue 18, part 2): idle unauthenticated result streams
beside honest workers, a result stream trickling past its round's deadline, and the guard that
evicts pending streams and cuts idle ones."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import torch

from fedkit.net.broker import Assignment, Broker
from fedkit.net.client import CoordinatorClient
from fedkit.net.codec import encode, split
from fedkit.net.guard import StreamGuard
from fedkit.net.proto import fedkit_pb2 as pb
from fedkit.net.proto import fedkit_pb2_grpc as pb_grpc
from fedkit.net.retry import RetryPolicy
from fedkit.net.service import add_service, peer_host
from fedkit.net.transport import Security, make_server
from tests.integration.test_net_deploy import Cluster, cluster, ctx, serial_sha, write_experiment

pytestmark = pytest.mark.net
__all__ = ["cluster", "ctx"]  # fixtures used below

MODEL = {"w": torch.randn(64, 32), "b": torch.randn(32)}


class FakeCall:
    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()


def test_guard_evicts_a_peers_oldest_pending_stream_and_cuts_idle_ones() -> None:
    g = StreamGuard(max_pending=2, max_pending_total=3, idle_s=0.3, tick_s=0.02)
    calls = [FakeCall() for _ in range(5)]
    a1 = g.watch(calls[0], pending_peer="a")
    g.watch(calls[1], pending_peer="a")
    assert g.pending("a") == 2 and not calls[0].cancelled.is_set()
    g.watch(calls[2], pending_peer="a")  # a third of peer a: its oldest goes
    assert calls[0].cancelled.is_set() and a1.cut and g.pending("a") == 2
    b = g.watch(calls[3], pending_peer="b")
    b.touch()  # b's first message arrived: no longer pending
    assert g.pending() == 2
    g.watch(calls[4], pending_peer="c")  # total 3 reached: nothing evicted yet
    assert g.evicted == 1
    time.sleep(0.45)  # nobody touched: every watched call is cut after idle_s
    assert all(c.cancelled.is_set() for c in calls)
    g.close()


def test_peer_host_keys_connections_by_address() -> None:
    assert peer_host("ipv4:127.0.0.1:51234") == peer_host("ipv4:127.0.0.1:40000")
    assert peer_host("ipv6:[::1]:51234") == "ipv6:[::1]"
    assert peer_host("unix:/tmp/x") == "unix:/tmp/x"


class Server:
    def __init__(self, idle_s: float) -> None:
        self.broker = Broker(run_id="run-1", max_result_bytes=1 << 20)
        self.guard = StreamGuard(idle_s=idle_s, tick_s=0.05)
        self.server, port = make_server("127.0.0.1:0", Security(), max_workers=16)
        add_service(self.server, self.broker, self.guard)
        self.server.start()
        self.address = f"127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.stop(0)
        self.guard.close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server(idle_s=5.0)
    yield s
    s.stop()


def test_a_stream_trickling_chunks_is_cut_at_the_round_deadline(server: Server) -> None:
    cl = CoordinatorClient(server.address, client_id="0", security=Security(),
                           retry=RetryPolicy(max_attempts=1))  # fmt: skip
    cl.register()
    data = encode(MODEL)
    a = Assignment.of(split(data), len(data))
    server.broker.open_round(0, {"0": a}, deadline_s=3.0, result_check=None)
    task = cl.get_task(wait_s=2)
    chunks = split(encode(MODEL), 512)  # ~17 chunks: 34 s at one chunk every 2 s
    info = pb.ResultInfo(header=cl.header(round_=0, task_id=task.task_id), client_id="0",
                         payload_bytes=sum(len(c.data) for c in chunks),
                         num_chunks=len(chunks))  # fmt: skip

    def trickle() -> Iterator[pb.ResultPart]:
        yield pb.ResultPart(info=info)
        for c in chunks:
            yield pb.ResultPart(chunk=c)
            time.sleep(2.0)

    stub = pb_grpc.CoordinatorStub(grpc.insecure_channel(server.address))  # type: ignore[no-untyped-call]
    t0 = time.monotonic()
    try:
        ack = stub.PushResult(trickle(), timeout=60)
        code = ack.error.code
    except grpc.RpcError as err:
        code = err.code()
    elapsed = time.monotonic() - t0
    # cut at the 3 s deadline (the watchdog cancels the call; a chunk after it is refused)
    assert code in (pb.DEADLINE_PASSED, grpc.StatusCode.CANCELLED)
    assert elapsed < 5.5, elapsed
    cl.close()


def idle_streams(address: str, n: int, stop: threading.Event) -> tuple[list[object], int]:
    """Open ``n`` PushResult streams that never send a message; reopen any that is cut, until
    ``stop``. Returns the futures and how many were opened in all."""
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.CoordinatorStub(channel)  # type: ignore[no-untyped-call]

    def never() -> Iterator[pb.ResultPart]:
        stop.wait()
        return
        yield  # pragma: no cover

    futures = [stub.PushResult.future(never()) for _ in range(n)]
    opened = n
    while not stop.wait(0.2):
        for i, f in enumerate(futures):
            if f.done():  # the guard cut it: the attacker opens another one
                futures[i] = stub.PushResult.future(never())
                opened += 1
    return futures, opened


@pytest.mark.slow
def test_forty_idle_streams_beside_honest_workers_the_run_completes(
    cluster: Callable[[Path], Cluster], tmp_path: Path
) -> None:
    exp = write_experiment(
        tmp_path / "exp.toml", clients=3, per_round=3, rounds=3, steps=5, deadline=30,
        liveness=10, deploy="stream_idle_s = 3.0",
    )  # fmt: skip
    c = cluster(exp)
    c.start_coordinator(min_workers=3)
    stop = threading.Event()
    result: list[tuple[list[object], int]] = []
    time.sleep(1.0)  # the coordinator is listening
    attacker = threading.Thread(
        target=lambda: result.append(idle_streams(c.address, 40, stop)), daemon=True
    )
    attacker.start()
    time.sleep(1.0)  # 40 idle streams are open before any worker arrives
    c.start_workers(range(3))
    try:
        summary = c.summary(timeout=120)
    finally:
        stop.set()
        attacker.join(10)
    assert summary["committed_rounds"] == 3
    assert summary["model_sha256"] == serial_sha(exp)
    for w in c.workers.values():
        w.join(10)
        assert w.exitcode == 0
    ((_, opened),) = result
    assert opened > 40  # the guard kept cutting the attacker's streams, which kept coming back
