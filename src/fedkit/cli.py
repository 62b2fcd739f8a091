"""The ``fedkit`` command line.

Each area of the library owns a sub-application (a ``typer.Typer``) in its own module; this file
only mounts them, so that commands stay next to the code they drive.
"""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    # help printed as written: "[data]" is not read as terminal markup, flags show no "<bool>"
    rich_markup_mode=None,
    help="fedkit: federated and distributed learning on PyTorch.",
)


def version() -> str:
    """The installed distribution's version (``fedkit.__version__`` when not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("fedkit")
    except PackageNotFoundError:
        from fedkit import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"fedkit {version()}")
        raise typer.Exit()


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print fedkit's version and exit.",
        ),
    ] = False,
) -> None:
    """Federated and distributed learning on PyTorch."""


def _mount() -> None:
    """Attach the sub-applications (imported here so ``fedkit --help`` stays one import away)."""
    from fedkit.data.cli import app as data_app

    app.add_typer(data_app, name="data", help="Inspect datasets and federated partitions.")

    from fedkit.experiment.cli import run, runs_app

    app.command("run")(run)
    app.add_typer(runs_app, name="runs", help="List, show and export recorded runs.")

    from fedkit.experiment.report_cli import report

    app.command("report")(report)

    from fedkit.experiment.deploy_cli import register as register_deploy

    register_deploy(app)  # coordinator, worker, launch, certs

    from fedkit.new import new

    app.command("new")(new)

    from fedkit.experiment.decentral_cli import decentral

    app.command("decentral")(decentral)

    from fedkit.experiment.vertical_cli import vertical

    app.command("vertical")(vertical)

    from fedkit.serve.cli import register as register_serve

    register_serve(app)  # export, serve, loadtest


def main() -> None:
    """Console-script entry point."""
    _mount()
    app()
