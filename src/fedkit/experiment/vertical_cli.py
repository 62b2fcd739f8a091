"""``fedkit vertical FILE``: the command (see :mod:`fedkit.experiment.vertical`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fedkit.experiment.results import ResultsStore, results_path
from fedkit.experiment.tables import ConfigError
from fedkit.experiment.vertical import load_vertical, record_vertical

__all__ = ["vertical"]


def vertical(
    file: Annotated[Path, typer.Argument(help="Vertical experiment file (TOML).", metavar="FILE")],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "-s",
            help="Override a key, e.g. --set vertical.mode=grpc.",
            metavar="KEY=VALUE",
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per run.")] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No summary line per run on stderr.")
    ] = False,
    data_root: Annotated[Path | None, typer.Option("--data", help="Data directory.")] = None,
) -> None:
    """Run a vertical FL experiment (split learning over feature parties, PSI alignment)."""
    from fedkit.data.datasets import FedkitDataError
    from fedkit.experiment.cli import _err, fail

    try:
        exps = load_vertical(file, set_ or [])
    except ConfigError as e:
        raise fail(str(e), 2) from None
    with ResultsStore(results_path(out)) as store:
        for exp in exps:
            try:
                run_id, summary = record_vertical(exp, store, data_root=data_root)
            except (ConfigError, FedkitDataError) as e:
                raise fail(f"{file}: {e}", 2) from None
            if as_json:
                typer.echo(json.dumps({"run_id": run_id, "name": exp.name, **summary.to_dict()}))
            if not quiet:
                _err.print(
                    f"run {run_id} {exp.name}: accuracy {summary.final_accuracy}",
                    markup=False,
                    highlight=False,
                )
