"""The load test's arithmetic and report, and its HTTP client against stub servers on loopback
(the real server is loaded in test_serve_http.py)."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from fedkit.serve.loadtest import LevelResult, _target, percentile, run_level, write_report


def test_nearest_rank_percentiles_by_hand() -> None:
    values = [float(v) for v in range(10, 0, -1)]  # 10..1, unsorted
    # nearest rank: the ceil(q/100 · 10)-th smallest
    assert percentile(values, 50) == 5.0
    assert percentile(values, 95) == 10.0  # ceil(9.5) = 10th
    assert percentile(values, 10) == 1.0
    assert percentile(values, 11) == 2.0  # ceil(1.1) = 2nd
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="q=0"):
        percentile(values, 0)


@given(st.lists(st.floats(0, 1e4, allow_nan=False), min_size=1, max_size=200))
def test_percentiles_are_ordered_members(values: list[float]) -> None:
    p50, p95, p99 = (percentile(values, q) for q in (50, 95, 99))
    assert p50 <= p95 <= p99 <= max(values) and p50 in values and p99 in values


def _level(c: int, throughput: float, p99: float) -> LevelResult:
    return LevelResult(c, 5.0, int(throughput * 5), 0, 0, throughput, p99 / 2, p99 * 0.9, p99)


def test_report_has_the_ratio_table_plot_and_json(tmp_path: Path) -> None:
    runs = {
        "unbatched": [_level(1, 100.0, 12.0), _level(16, 120.0, 150.0)],
        "batched": [_level(1, 95.0, 13.0), _level(16, 360.0, 60.0)],
    }
    lines = write_report(runs, tmp_path, meta={"bundle": "b"})
    # 95 / 100 = 0.95 and 360 / 120 = 3.00
    assert "| 1 | 0.95 | 13.0 | 12.0 |" in lines and "| 16 | 3.00 | 60.0 | 150.0 |" in lines
    assert (tmp_path / "loadtest.png").stat().st_size > 1000
    record = json.loads((tmp_path / "loadtest.json").read_text())
    assert record["runs"]["batched"][1]["throughput"] == 360.0 and record["meta"]["bundle"] == "b"
    assert (tmp_path / "loadtest.md").read_text().splitlines()[: len(lines)] == lines


def test_every_arm_gets_a_ratio_table_against_unbatched(tmp_path: Path) -> None:
    runs = {
        "unbatched": [_level(4, 200.0, 30.0)],
        "batched 5 ms": [_level(4, 500.0, 20.0)],
        "batched 0 ms": [_level(4, 700.0, 10.0)],
    }
    lines = write_report(runs, tmp_path)
    # 500 / 200 = 2.50 and 700 / 200 = 3.50, each beside its own p99 and unbatched's
    assert "| 4 | 2.50 | 20.0 | 30.0 |" in lines and "| 4 | 3.50 | 10.0 | 30.0 |" in lines
    assert any("throughput batched 0 ms / unbatched" in line for line in lines)
    assert not any("unbatched / unbatched" in line for line in lines)
    assert len(write_report({"server": runs["unbatched"]}, tmp_path / "one")) == 3  # no ratios


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["http://x", "--bundle", "b"],
        ["http://x", "--concurrency", "0"],
        ["http://x", "--concurrency", "a"],
    ],
)
def test_loadtest_arguments_are_checked(args: list[str]) -> None:
    import typer

    from fedkit.serve.cli import loadtest

    app = typer.Typer()
    app.command()(loadtest)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2


def test_the_request_is_one_fixed_http11_post() -> None:
    t = _target("http://127.0.0.1:8123/v1/predict", b'{"text": "a"}')
    assert (t.host, t.port, t.ssl) == ("127.0.0.1", 8123, None)
    assert t.request == (
        b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1:8123\r\n"
        b"Content-Type: application/json\r\nContent-Length: 13\r\n\r\n"
        b'{"text": "a"}'
    )
    assert _target("https://example.org/p", b"").port == 443
    assert _target("https://example.org/p", b"").ssl is not None
    for bad in ("ftp://h/p", "h:80/p", "http:///p"):
        with pytest.raises(ValueError, match="expected http"):
            _target(bad, b"")


_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}"


async def _against_stub(answer: bytes, concurrency: int, *, close: bool = False) -> tuple:
    """run_level against a loopback server that reads one request (up to its body) and writes
    ``answer`` for each; returns the level and the number of connections the server saw."""
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                writer.write(answer)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        r = await run_level(
            f"http://127.0.0.1:{port}/v1/predict", concurrency, duration=0.3, warmup=0.05
        )
    return r, connections


@pytest.mark.net
def test_each_client_keeps_one_connection_for_all_its_requests() -> None:
    # no shared pool: 8 clients open exactly 8 keep-alive connections however many requests
    r, connections = asyncio.run(_against_stub(_OK, 8))
    assert connections == 8
    assert r.ok > 8 and r.failed == 0 and r.rejected == 0
    assert r.client_cpu >= 0.0 and math.isnan(r.server_cpu) and math.isnan(r.mean_batch)


@pytest.mark.net
def test_a_closing_server_is_reconnected_and_503s_are_counted_apart() -> None:
    busy = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    r, connections = asyncio.run(_against_stub(busy, 2, close=True))
    assert r.rejected > 0 and r.ok == 0 and r.failed == 0
    assert connections > 2  # a new connection after every answer
    assert math.isnan(r.p50)  # latencies are of 200 answers only


@pytest.mark.net
@pytest.mark.parametrize(
    "answer",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2000000\r\n\r\n" + b"x" * 2_000_000,
    ],
    ids=["malformed", "body over 1 MiB"],
)
def test_hostile_answers_are_failures_not_crashes(answer: bytes) -> None:
    r, _ = asyncio.run(_against_stub(answer, 2))
    assert r.failed > 0 and r.ok == 0
