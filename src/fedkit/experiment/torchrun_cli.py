"""``fedkit run`` on the ranks of a ``torchrun`` launch (one or several hosts).

    torchrun --nnodes 2 --nproc-per-node 1 --node-rank 0 --master-addr 10.0.0.1 \\
        --master-port 29500 -m fedkit run study.toml --out runs/study     # host 1
    torchrun --nnodes 2 --nproc-per-node 1 --node-rank 1 --master-addr 10.0.0.1 \\
        --master-port 29500 -m fedkit run study.toml                      # host 2

Every rank loads and validates the same file (an invalid file stops every rank with status 2
before any of them joins the group), joins the gloo group (:class:`fedkit.sim.torchrun.RankGroup`)
and walks the same list of runs: rank 0 through :func:`fedkit.experiment.cli.run_recorded` (the
results database, checkpoints, progress, ``--json``), the others through
:func:`fedkit.experiment.runner.serve_study` (they write nothing and print only errors, prefixed
with their rank). Every rank ends the process with :func:`fedkit.sim.torchrun.leave`: status 0
when every run completed, 1 when a run failed or a rank was lost, 2 when the file or a dataset
could not be used on some rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer

from fedkit.experiment.cli import fail, run_recorded
from fedkit.experiment.config import ConfigError, load_study
from fedkit.sim.torchrun import (
    RankGroup,
    RankLostError,
    TorchrunEnv,
    is_transport_error,
    leave,
)

__all__ = ["run_on_ranks"]


def _exit_code(exc: typer.Exit) -> int:
    return int(getattr(exc, "exit_code", 1))


def run_on_ranks(
    env: TorchrunEnv,
    file: Path,
    overrides: list[str],
    *,
    out: Path,
    as_json: bool,
    quiet: bool,
    jobs: int,
    data_root: Path | None,
    timeout: float,
    resume: bool = True,
) -> NoReturn:
    """Run ``file`` as rank ``env.rank`` of the launch and end the process (see module doc)."""
    from fedkit.data.datasets import FedkitDataError
    from fedkit.experiment.runner import on_group, serve_study

    me = f"rank {env.rank}: " if env.rank else ""
    try:
        study = load_study(file, overrides)
        on_group(study)
        if jobs != 1:
            raise ConfigError("--jobs runs arms in separate processes; under torchrun use --jobs 1")
    except ConfigError as e:
        fail(f"{me}{file}: {e}", 2)  # prints the message
        leave(2)
    try:
        group = RankGroup.start(env, timeout_s=timeout)
    except Exception as e:  # rendezvous timed out, address unreachable
        fail(f"{me}could not join the process group: {type(e).__name__}: {e}", 1)
        leave(1)
    code = 0
    try:
        if group.rank == 0:
            run_recorded(
                study,
                file,
                out,
                as_json=as_json,
                quiet=quiet,
                jobs=jobs,
                data_root=data_root,
                group=group,
                resume=resume,
            )
        else:
            serve_study(study, group, data_root=data_root)
    except typer.Exit as e:
        code = _exit_code(e)
    except RankLostError as e:
        fail(f"{me}{e}", 1)
        code = 1
    except (ConfigError, FedkitDataError) as e:
        fail(f"{me}{file}: {e}", 2)
        code = 2
    if not group.broken:
        try:
            group.finish()
        except Exception as e:
            if not is_transport_error(e):
                raise
            fail(f"{me}{group.lost(e, 'the final barrier')}", 1)
            code = code or 1
    leave(code)
