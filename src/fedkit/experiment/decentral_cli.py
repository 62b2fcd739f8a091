"""``fedkit decentral FILE``: the command (see :mod:`fedkit.experiment.decentral`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedkit.experiment.decentral import load_decentral, run_decentral
from fedkit.experiment.progress import RunProgress
from fedkit.experiment.results import ResultsStore, results_path
from fedkit.experiment.tables import ConfigError

__all__ = ["decentral"]


def decentral(
    file: Annotated[Path, typer.Argument(help="Decentral experiment file (TOML).", metavar="FILE")],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "-s",
            help="Override a key, e.g. --set decentral.rounds=5.",
            metavar="KEY=VALUE",
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per run.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    data_root: Annotated[Path | None, typer.Option("--data", help="Data directory.")] = None,
) -> None:
    """Run a decentralised (gossip / D-PSGD) experiment; one rank per node under torchrun."""
    import json

    from fedkit.experiment.cli import _err, fail
    from fedkit.sim.torchrun import torchrun_env

    try:
        exps = load_decentral(file, set_ or [])
        env = torchrun_env()
    except (ConfigError, ValueError) as e:
        raise fail(str(e), 2) from None
    group = False
    if env is not None:
        import datetime

        import torch.distributed as dist

        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=1800))
        group = True
    rank = 0 if not group else env.rank if env is not None else 0
    store = ResultsStore(results_path(out)) if rank == 0 else None
    try:
        with RunProgress(enabled=not quiet and rank == 0, console=_err) as progress:
            for exp in exps:
                run_id, summary = run_decentral(
                    exp, store, data_root=data_root, progress=progress, on_ranks=group
                )
                if summary is not None and as_json:
                    typer.echo(
                        json.dumps({"run_id": run_id, "name": exp.name, **summary.to_dict()})
                    )
    except ConfigError as e:
        raise fail(f"{file}: {e}", 2) from None
    finally:
        if store is not None:
            store.close()
        if group:
            import torch.distributed as dist

            dist.destroy_process_group()
    if group:  # as fedkit.loopback: leave without interpreter teardown (gloo threads abort it)
        import os
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
