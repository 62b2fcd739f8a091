"""The serving commands: ``fedkit export``, ``fedkit serve`` and ``fedkit loadtest``.

``fedkit export RUN --out DIR [--runs RUNS] [--labels a,b]`` writes a completed run's final
model as a bundle (:mod:`fedkit.experiment.export`). Exit status 2 when the run or its model
cannot be used.

``fedkit serve BUNDLE [--host 127.0.0.1] [--port 8000] [--max-batch 32] [--max-wait-ms 5]
[--max-queue 256] [--threads N]`` loads and verifies the bundle and serves it
(:mod:`fedkit.serve.app`) with uvicorn. ``--port 0`` picks a free port; the first line on
standard output is always ``listening on http://HOST:PORT``. Ctrl-C or SIGTERM shuts down
gracefully: no new connections, requests in flight are answered, then the process exits 0.
A bundle that cannot be used exits with status 2 before anything listens.

``fedkit loadtest [URL] [--bundle DIR] [--max-batch 32] [--concurrency 1,4,16,64]
[--duration 5] [--out DIR]`` measures throughput and p50/p95/p99 latency against concurrency
(:mod:`fedkit.serve.loadtest`): of the server at ``URL``, or, with ``--bundle``, of the bundle
served twice (with and without micro-batching) in one run, with the throughput ratio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["export", "loadtest", "register", "serve"]


def export(
    run_id: Annotated[int, typer.Argument(help="Run id (see `fedkit runs list`).", metavar="RUN")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New directory for the bundle.")],
    runs_dir: Annotated[
        Path, typer.Option("--runs", help="Output directory holding results.sqlite.")
    ] = Path("runs"),
    labels: Annotated[
        str | None,
        typer.Option("--labels", help="Class names of a classifier, comma-separated."),
    ] = None,
) -> None:
    """Write a completed run's final model as a bundle (weights, vocabulary, manifest)."""
    from fedkit.experiment.export import export_run
    from fedkit.serve.bundle import BundleError

    names = None if labels is None else [s.strip() for s in labels.split(",")]
    try:
        manifest = export_run(runs_dir, run_id, out, labels=names)
    except BundleError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"bundle written: {manifest.parent}")


def serve(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory (from `fedkit export`).")],
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port (0: any free port).")] = 8000,
    max_batch: Annotated[
        int, typer.Option("--max-batch", help="Most requests per model call (1: no batching).")
    ] = 32,
    max_wait_ms: Annotated[
        float, typer.Option("--max-wait-ms", help="Longest a batch waits to fill, in ms.")
    ] = 5.0,
    max_queue: Annotated[
        int, typer.Option("--max-queue", help="Most waiting requests; beyond it: 503.")
    ] = 256,
    threads: Annotated[
        int | None, typer.Option("--threads", help="torch threads for inference.")
    ] = None,
) -> None:
    """Serve a model bundle over HTTP: POST /v1/predict, GET /healthz, GET /metrics."""
    import signal
    import socket

    import uvicorn

    from fedkit.serve.app import create_app
    from fedkit.serve.batching import BatchSettings
    from fedkit.serve.bundle import BundleError, load_bundle
    from fedkit.serve.predictor import Predictor

    try:
        settings = BatchSettings(
            max_batch=max_batch, max_wait=max_wait_ms / 1000.0, max_queue=max_queue
        )
        predictor = Predictor(load_bundle(bundle), threads=threads)
    except (BundleError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    app = create_app(predictor, batching=settings)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        typer.echo(f"error: cannot listen on {host}:{port} ({e})", err=True)
        raise typer.Exit(2) from None
    bound = sock.getsockname()[1]
    typer.echo(f"listening on http://{host}:{bound}")
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        proxy_headers=False,  # no X-Forwarded-* rewriting on every request (nothing logs it)
        timeout_graceful_shutdown=30,
        http="httptools",  # the C parser (uvicorn[standard]); h11 costs more than a small model
        loop="uvloop",
    )
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again under the
    # handlers found at start: these make that a clean exit (status 0) instead of a kill.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _exit_cleanly)
    uvicorn.Server(config).run(sockets=[sock])


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def loadtest(
    url: Annotated[
        str | None, typer.Argument(help="Base URL of a running `fedkit serve`.", metavar="URL")
    ] = None,
    bundle: Annotated[
        Path | None,
        typer.Option("--bundle", help="Serve this bundle with and without batching instead."),
    ] = None,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Batched server's max.")] = 32,
    concurrency: Annotated[
        str, typer.Option("--concurrency", help="Comma-separated client counts.")
    ] = "1,4,16,64",
    duration: Annotated[float, typer.Option("--duration", help="Seconds per level.")] = 5.0,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory for loadtest.md/.json/.png.")
    ] = Path("reports/loadtest"),
) -> None:
    """Throughput and p50/p95/p99 latency against concurrency, as a table, a plot and JSON."""
    from fedkit.serve.loadtest import compare, sweep, write_report

    try:
        levels = [int(c) for c in concurrency.split(",")]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1 or duration <= 0 or (url is None) == (bundle is None):
        typer.echo(
            "error: give a URL or --bundle (one of them), --concurrency as positive integers "
            "(e.g. 1,4,16) and --duration > 0",
            err=True,
        )
        raise typer.Exit(2)
    if url is not None:
        runs = {"server": sweep(url, levels, duration=duration)}
    else:
        assert bundle is not None
        arms = {
            label: ("--max-batch", str(batch), "--max-queue", "4096")
            for label, batch in (("unbatched", 1), ("batched", max_batch))
        }
        runs = compare(bundle, arms, levels, duration=duration)
    meta = {"url": url, "bundle": None if bundle is None else str(bundle), "max_batch": max_batch}
    for line in write_report(runs, out, meta=meta):
        typer.echo(line)
    typer.echo(f"report: {out}/loadtest.md, loadtest.png, loadtest.json")


def register(app: typer.Typer) -> None:
    """Add the serving commands to the ``fedkit`` application."""
    app.command("export")(export)
    app.command("serve")(serve)
    app.command("loadtest")(loadtest)
