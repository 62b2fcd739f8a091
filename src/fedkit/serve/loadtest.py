"""``fedkit loadtest``: throughput and latency percentiles of an endpoint against concurrency.

A closed-loop load test: at each concurrency level ``c``, ``c`` clients each send
``POST /v1/predict`` and, on the answer, the next, for ``duration`` seconds (after a short
warm-up whose requests are not counted). Per level it reports requests answered 200 per second
(throughput), the 50th/95th/99th latency percentiles of those (nearest rank), the counts of
503s (queue full) and other failures, the mean batch size the server's ``/metrics`` counted, and
the CPU the load generator and (when local) the server used. Each client holds one keep-alive
HTTP/1.1 connection and writes one fixed request, parsing the answer with ``httptools``: a few
tens of microseconds of generator CPU per request, so that on a machine the generator shares
with the server it takes little from it (an ``httpx`` client with a shared pool cost about
10 ms of CPU per request at 64 clients and was the bottleneck).

With ``--bundle`` it starts the same bundle twice as real ``fedkit serve`` processes, one with
micro-batching (``--max-batch N``) and one without (``--max-batch 1``), loads both at each level
in turn (:func:`compare`: the two arms of a level are measured back to back) and reports the
throughput ratio and both p99s at each level, plus a table (Markdown), a plot (PNG) and the JSON
record. Absolute numbers are this machine's; the ratio is the comparison (the load generator
runs in its own process, on the same cores as the servers).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httptools
import httpx

__all__ = [
    "LevelResult",
    "compare",
    "percentile",
    "run_level",
    "serving",
    "sweep",
    "write_report",
]


@dataclasses.dataclass(frozen=True)
class LevelResult:
    """One concurrency level's outcome (latencies in milliseconds, of 200 answers).

    ``client_cpu`` and ``server_cpu`` are the CPU seconds the load generator and the server
    process used per wall-clock second of the level (1.0: one core busy; NaN when not
    measured), and ``mean_batch`` the mean requests per model call the server's ``/metrics``
    counted during the level (NaN when not measured).
    """

    concurrency: int
    seconds: float
    ok: int
    rejected: int
    failed: int
    throughput: float
    p50: float
    p95: float
    p99: float
    client_cpu: float = math.nan
    server_cpu: float = math.nan
    mean_batch: float = math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (``q`` in (0, 100]) of ``values``; NaN when empty."""
    if not 0.0 < q <= 100.0:
        raise ValueError(f"q={q}: must be in (0, 100]")
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100.0 * len(ordered))) - 1]


class _Exchange(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time.

    The answer is parsed by ``httptools`` (the C parser uvicorn uses); only its status code is
    kept and its body is counted, not stored. A body over ``max_body`` bytes, a malformed
    answer, a lost connection or no answer within ``timeout`` seconds fails the request
    (:class:`_Failed`) and the connection is dropped.
    """

    def __init__(self, *, max_body: int, timeout: float) -> None:
        self.max_body, self.timeout = max_body, timeout
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.answer: asyncio.Future[int] | None = None
        self.body_bytes = 0
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(f"malformed answer ({e})")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail("connection lost")

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > self.max_body:
            self._fail(f"answer body over {self.max_body} bytes")

    def on_message_complete(self) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_result(self.parser.get_status_code())
        if not self.parser.should_keep_alive() and self.transport is not None:
            self.transport.close()  # the next request opens a new connection
            self.transport = None

    def _fail(self, why: str) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(_Failed(why))
        if self.transport is not None:
            self.transport.abort()
            self.transport = None

    async def send(self, request: bytes) -> int:
        """Send ``request`` and return the answer's status code."""
        if self.transport is None:
            raise _Failed("connection closed")
        loop = asyncio.get_running_loop()
        self.answer, self.body_bytes = loop.create_future(), 0
        self.timer = loop.call_later(self.timeout, self._fail, "timed out")
        self.transport.write(request)
        try:
            return await self.answer
        finally:
            self.timer.cancel()


class _Failed(Exception):
    """A request got no well-formed answer."""


@dataclasses.dataclass(frozen=True)
class _Target:
    host: str
    port: int
    ssl: ssl.SSLContext | None
    request: bytes


def _target(url: str, body: bytes) -> _Target:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r}: expected http://HOST[:PORT]/PATH or https://...")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    head = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    context = ssl.create_default_context() if tls else None
    return _Target(parts.hostname, port, context, head.encode("latin-1") + body)


async def _client(
    target: _Target,
    stop_at: float,
    count_from: float,
    latencies: list[float],
    codes: list[int],
    timeout: float,
) -> None:
    loop = asyncio.get_running_loop()
    conn: _Exchange | None = None
    while (now := time.perf_counter()) < stop_at:
        try:
            if conn is None or conn.transport is None:
                _, conn = await loop.create_connection(
                    lambda: _Exchange(max_body=_MAX_ANSWER, timeout=timeout),
                    target.host,
                    target.port,
                    ssl=target.ssl,
                )
            code = await conn.send(target.request)
        except (OSError, _Failed):
            code, conn = -1, None
        if now >= count_from:
            if code == 200:
                latencies.append((time.perf_counter() - now) * 1000.0)
            codes.append(code)
    if conn is not None and conn.transport is not None:
        conn.transport.close()


_MAX_ANSWER = 1 << 20


async def run_level(
    url: str,
    concurrency: int,
    *,
    duration: float,
    warmup: float = 0.5,
    text: str = "i love",
    timeout: float = 30.0,
) -> LevelResult:
    """Load ``url`` (the ``/v1/predict`` endpoint) with ``concurrency`` closed-loop clients.

    Each client holds its own keep-alive connection (one request in flight, as a browser tab or
    a keyboard would): no client-side pool is shared, so the generator's cost per request does
    not grow with ``concurrency`` (httpx's shared pool scans every connection for every
    request, which made the generator, not the server, the bottleneck at 64 clients). A
    refused or lost connection counts as a failure and the client reconnects.

    Raises:
        ValueError: ``url`` is not an http(s) URL, ``concurrency < 1`` or ``duration <= 0``.
    """
    if concurrency < 1 or duration <= 0:
        raise ValueError("concurrency must be >= 1 and duration > 0")
    target = _target(url, json.dumps({"text": text, "k": 3}).encode())
    latencies: list[float] = []
    codes: list[int] = []
    cpu0 = time.process_time()
    start = time.perf_counter()
    count_from = start + warmup
    stop_at = count_from + duration
    await asyncio.gather(
        *(
            _client(target, stop_at, count_from, latencies, codes, timeout)
            for _ in range(concurrency)
        )
    )
    seconds = time.perf_counter() - count_from
    ok = codes.count(200)
    return LevelResult(
        concurrency=concurrency,
        seconds=seconds,
        ok=ok,
        rejected=codes.count(503),
        failed=len(codes) - ok - codes.count(503),
        throughput=ok / seconds,
        p50=percentile(latencies, 50),
        p95=percentile(latencies, 95),
        p99=percentile(latencies, 99),
        client_cpu=(time.process_time() - cpu0) / (time.perf_counter() - start),
    )


def sweep(
    base_url: str,
    levels: Sequence[int],
    *,
    duration: float,
    warmup: float = 0.5,
    server_pid: int | None = None,
) -> list[LevelResult]:
    """:func:`run_level` at each concurrency of ``levels`` on ``BASE_URL/v1/predict``, with the
    mean batch size from the server's ``/metrics`` and, given its local ``server_pid``, the
    server's CPU use over each level."""
    base = base_url.rstrip("/")
    out = []
    for c in levels:
        batches0, cpu0, t0 = _batch_totals(base), _cpu_seconds(server_pid), time.perf_counter()
        r = asyncio.run(run_level(f"{base}/v1/predict", c, duration=duration, warmup=warmup))
        cpu1, wall, batches1 = (
            _cpu_seconds(server_pid),
            time.perf_counter() - t0,
            _batch_totals(base),
        )
        calls = batches1[1] - batches0[1]
        out.append(
            dataclasses.replace(
                r,
                server_cpu=(cpu1 - cpu0) / wall,
                mean_batch=(batches1[0] - batches0[0]) / calls if calls > 0 else math.nan,
            )
        )
    return out


def compare(
    bundle: Path,
    arms: Mapping[str, Sequence[str]],
    levels: Sequence[int],
    *,
    duration: float,
    warmup: float = 0.5,
) -> dict[str, list[LevelResult]]:
    """Serve ``bundle`` once per arm (``fedkit serve`` with that arm's extra arguments), all at
    once, and load them in turn at each level: each level's arms are measured back to back, so
    a change in what else the machine runs shifts them alike. Returns each arm's results."""
    out: dict[str, list[LevelResult]] = {label: [] for label in arms}
    with contextlib.ExitStack() as stack:
        servers = {label: stack.enter_context(serving(bundle, *a)) for label, a in arms.items()}
        for c in levels:
            for label, (url, proc) in servers.items():
                out[label] += sweep(url, [c], duration=duration, warmup=warmup, server_pid=proc.pid)
    return out


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``); NaN elsewhere."""
    if pid is None:
        return math.nan
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return math.nan


def _batch_totals(base: str) -> tuple[float, float]:
    """(requests, model calls) so far from ``fedkit_serve_batch_size`` in ``BASE/metrics``;
    NaNs when the server does not answer with it."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(f"{base}/metrics", timeout=10.0).text
        for family in text_string_to_metric_families(text):
            if family.name == "fedkit_serve_batch_size":
                got = {s.name: s.value for s in family.samples}
                return got["fedkit_serve_batch_size_sum"], got["fedkit_serve_batch_size_count"]
    except (httpx.HTTPError, ValueError, KeyError):
        pass
    return math.nan, math.nan


@contextlib.contextmanager
def serving(bundle: Path, *args: str, timeout: float = 120.0) -> Iterator[tuple[str, Any]]:
    """Run ``fedkit serve BUNDLE --port 0 ARGS`` as a child process until the block ends;
    yields its base URL (once ``/healthz`` answers) and the process."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, "-m", "fedkit", "serve", str(bundle), "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        if not line.startswith("listening on "):
            proc.kill()
            raise RuntimeError(f"fedkit serve did not start: {line!r} {proc.stderr.read()}")
        url = line.split()[-1]
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("fedkit serve did not become healthy")
            time.sleep(0.05)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _table(runs: dict[str, list[LevelResult]]) -> list[str]:
    lines = [
        "| server | concurrency | req/s | p50 ms | p95 ms | p99 ms | 503 | failed "
        "| mean batch | server CPU | client CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, results in runs.items():
        for r in results:
            lines.append(
                f"| {label} | {r.concurrency} | {r.throughput:.1f} | {r.p50:.1f} | {r.p95:.1f} "
                f"| {r.p99:.1f} | {r.rejected} | {r.failed} | {r.mean_batch:.1f} "
                f"| {r.server_cpu:.2f} | {r.client_cpu:.2f} |"
            )
    return lines


def _ratios(label: str, batched: list[LevelResult], single: list[LevelResult]) -> list[str]:
    lines = [
        f"| concurrency | throughput {label} / unbatched | p99 {label} ms | p99 unbatched ms |",
        "|---:|---:|---:|---:|",
    ]
    for b, s in zip(batched, single, strict=True):
        ratio = b.throughput / s.throughput if s.throughput > 0 else math.inf
        lines.append(f"| {b.concurrency} | {ratio:.2f} | {b.p99:.1f} | {s.p99:.1f} |")
    return lines


def write_report(
    runs: dict[str, list[LevelResult]], out: Path, *, meta: dict[str, Any] | None = None
) -> list[str]:
    """Write ``loadtest.md`` (tables), ``loadtest.json`` and ``loadtest.png`` under ``out``;
    returns the Markdown lines. When one of the labels is ``unbatched``, the report adds, for
    every other label, its throughput ratio to ``unbatched`` and both p99s per level."""
    out.mkdir(parents=True, exist_ok=True)
    lines = _table(runs)
    if "unbatched" in runs:
        for label, results in runs.items():
            if label != "unbatched":
                lines += ["", *_ratios(label, results, runs["unbatched"])]
    (out / "loadtest.md").write_text("\n".join(lines) + "\n")
    record = {
        "meta": meta or {},
        "runs": {k: [dataclasses.asdict(r) for r in v] for k, v in runs.items()},
    }
    (out / "loadtest.json").write_text(json.dumps(record, indent=2) + "\n")
    _plot(runs, out / "loadtest.png")
    return lines


def _plot(runs: dict[str, list[LevelResult]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(10, 4))
    for i, (label, results) in enumerate(runs.items()):
        c, color = [r.concurrency for r in results], f"C{i}"
        ax_t.plot(c, [r.throughput for r in results], marker="o", color=color, label=label)
        ax_l.plot(c, [r.p99 for r in results], marker="o", color=color, label=f"{label} p99")
        ax_l.plot(
            c,
            [r.p50 for r in results],
            marker=".",
            linestyle="--",
            color=color,
            label=f"{label} p50",
        )
    ax_l.set_yscale("log")  # p50 and p99 differ by orders of magnitude under overload
    for ax, ylabel in ((ax_t, "requests / s"), (ax_l, "latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle("fedkit serve: throughput and latency against concurrency")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
