"""``fedkit loadtest``: throughput and latency percentiles of an endpoint against concurrency.

A closed-loop load test: at each concurrency level ``c``, ``c`` clients each send
``POST /v1/predict`` and, on the answer, the next, for ``duration`` seconds (after a short
warm-up whose requests are not counted). Per level it reports requests answered 200 per second
(throughput), the 50th/95th/99th latency percentiles of those (nearest rank), and the counts of
503s (queue full) and other failures.

With ``--bundle`` it starts the same bundle twice as real ``fedkit serve`` processes, one with
micro-batching (``--max-batch N``) and one without (``--max-batch 1``), runs the same sweep on
both in one invocation and reports the throughput ratio and both p99s at each level, plus a table
(Markdown), a plot (PNG) and the JSON record. Absolute numbers are this machine's; the ratio
is the comparison (the load generator runs on the same cores as the server).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

__all__ = ["LevelResult", "percentile", "run_level", "serving", "sweep", "write_report"]


@dataclasses.dataclass(frozen=True)
class LevelResult:
    """One concurrency level's outcome (latencies in milliseconds, of 200 answers)."""

    concurrency: int
    seconds: float
    ok: int
    rejected: int
    failed: int
    throughput: float
    p50: float
    p95: float
    p99: float


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (``q`` in (0, 100]) of ``values``; NaN when empty."""
    if not 0.0 < q <= 100.0:
        raise ValueError(f"q={q}: must be in (0, 100]")
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100.0 * len(ordered))) - 1]


async def _client(
    http: httpx.AsyncClient,
    url: str,
    body: bytes,
    stop_at: float,
    count_from: float,
    latencies: list[float],
    codes: list[int],
) -> None:
    headers = {"content-type": "application/json"}
    while (now := time.perf_counter()) < stop_at:
        try:
            r = await http.post(url, content=body, headers=headers)
            code = r.status_code
        except httpx.HTTPError:
            code = -1
        if now >= count_from:
            if code == 200:
                latencies.append((time.perf_counter() - now) * 1000.0)
            codes.append(code)


async def run_level(
    url: str, concurrency: int, *, duration: float, warmup: float = 0.5, text: str = "i love"
) -> LevelResult:
    """Load ``url`` (the ``/v1/predict`` endpoint) with ``concurrency`` closed-loop clients."""
    if concurrency < 1 or duration <= 0:
        raise ValueError("concurrency must be >= 1 and duration > 0")
    body = json.dumps({"text": text, "k": 3}).encode()
    latencies: list[float] = []
    codes: list[int] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as http:
        start = time.perf_counter()
        count_from = start + warmup
        stop_at = count_from + duration
        await asyncio.gather(
            *(
                _client(http, url, body, stop_at, count_from, latencies, codes)
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
    )


def sweep(
    base_url: str, levels: Sequence[int], *, duration: float, warmup: float = 0.5
) -> list[LevelResult]:
    """:func:`run_level` at each concurrency of ``levels`` on ``BASE_URL/v1/predict``."""
    url = base_url.rstrip("/") + "/v1/predict"
    return [asyncio.run(run_level(url, c, duration=duration, warmup=warmup)) for c in levels]


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
        "| server | concurrency | req/s | p50 ms | p95 ms | p99 ms | 503 | failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, results in runs.items():
        for r in results:
            lines.append(
                f"| {label} | {r.concurrency} | {r.throughput:.1f} | {r.p50:.1f} | {r.p95:.1f} "
                f"| {r.p99:.1f} | {r.rejected} | {r.failed} |"
            )
    return lines


def _ratios(batched: list[LevelResult], single: list[LevelResult]) -> list[str]:
    lines = [
        "| concurrency | throughput batched / unbatched | p99 batched ms | p99 unbatched ms |",
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
    returns the Markdown lines. With exactly the labels ``batched`` and ``unbatched`` the
    report adds the throughput ratio per level."""
    out.mkdir(parents=True, exist_ok=True)
    lines = _table(runs)
    if set(runs) == {"batched", "unbatched"}:
        lines += ["", *_ratios(runs["batched"], runs["unbatched"])]
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
