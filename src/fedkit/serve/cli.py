"""The serving commands: ``fedkit export``, ``fedkit serve`` and ``fedkit loadtest``.

``fedkit export RUN --out DIR [--runs RUNS] [--labels a,b]`` writes a completed run's final model
as a bundle (:mod:`fedkit.serve.export`). Exit status 2 when the run or its model cannot be used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["export", "register"]


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
    from fedkit.serve.bundle import BundleError
    from fedkit.serve.export import export_run

    names = None if labels is None else [s.strip() for s in labels.split(",")]
    try:
        manifest = export_run(runs_dir, run_id, out, labels=names)
    except BundleError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"bundle written: {manifest.parent}")


def register(app: typer.Typer) -> None:
    """Add the serving commands to the ``fedkit`` application."""
    app.command("export")(export)
