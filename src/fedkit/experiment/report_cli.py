"""``fedkit report RUN…|DIR --out DIR``: compare stored runs in Markdown and HTML with plots.

Each argument is a results directory (the latest completed run of each arm in it, so that runs
of an earlier invocation into the same folder are not mixed in; ``--all``: every run, whatever
its status), a run id in ``--runs DIR``, or ``DIR:ID``. What was left out is said on stderr and
under the report's sources. The command writes ``report.md``, ``report.html`` (self-contained)
and the PNG figures into ``--out`` and prints the path of the HTML report (the last line of
stdout, so scripts can pick it up).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedkit.experiment.cli import DEFAULT_OUT

__all__ = ["DEFAULT_RUNS_DIR", "report"]

DEFAULT_RUNS_DIR: Path = DEFAULT_OUT
"""The output directory bare run ids refer to when ``--runs`` is not given (``fedkit run``'s
default ``--out``)."""


def report(
    sources: Annotated[
        list[str],
        typer.Argument(
            help="Results directories (the latest completed run of each arm), run ids in --runs, "
            "or DIR:ID.",
            metavar="RUN…|DIR",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the report to.")],
    runs: Annotated[
        Path, typer.Option("--runs", help="Output directory that bare run ids refer to.")
    ] = DEFAULT_RUNS_DIR,
    study: Annotated[
        str | None, typer.Option("--study", help="Only runs of this study (for directories).")
    ] = None,
    include_unfinished: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Every run of a directory: earlier runs of an arm, and failed, interrupted and "
            "running ones.",
        ),
    ] = False,
    title: Annotated[str | None, typer.Option("--title", help="Report title.")] = None,
) -> None:
    """Compare runs: accuracy vs rounds, time and bytes; per-client accuracy; summary table."""
    # Imported here: matplotlib is only loaded when a report is made, not for every `fedkit` call.
    from fedkit.experiment.report import ReportSourceError, select_arms, write_report
    from fedkit.experiment.report_html import summary_rows

    console = Console(stderr=True)
    try:
        chosen = select_arms(
            sources, runs_dir=runs, study=study, include_unfinished=include_unfinished
        )
    except (ReportSourceError, FileNotFoundError, RuntimeError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(code=2) from None
    arms = chosen.arms
    for note in chosen.notes:
        console.print(note, markup=False, highlight=False)
    files = write_report(arms, out, title=title, notes=chosen.notes)
    for row in summary_rows(arms):
        console.print(f"  {row[0]}: final {row[5]}, best {row[6]}, rounds to target {row[8]}")
    console.print(f"Markdown: {files.markdown}")
    typer.echo(str(files.html))
