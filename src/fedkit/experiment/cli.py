"""``fedkit run FILE`` and ``fedkit runs list|show|export``: run experiments, browse their results.

``fedkit run FILE [--set key=value]… [--out DIR] [--json] [--jobs N]`` validates the whole file
(every arm and grid point) first — an invalid file exits with status 2 and writes nothing — then
runs each run in turn (``--jobs N``: up to N at once, each in its own process) with a progress bar
on standard error, recording it in ``DIR/results.sqlite`` (default ``runs/``). With ``--json``,
standard output carries one JSON object per run, one per line, as each run ends (so for a single
run the final line is its object; with ``--jobs`` in the order runs finish): ``run_id``, ``name``,
``status``, ``rounds``, ``final_accuracy``, ``best_accuracy``, ``rounds_to_target`` (null when
not reached), ``target_accuracy``, ``wall_seconds``, ``bytes_up``, ``bytes_down``,
``model_sha256``, ``final_loss`` (the centralised *test* loss after the last round, beside
``final_accuracy``; the progress output's ``train loss`` is the clients' training loss) (and
``error`` for a failed run). Exit status: 0 when every run
completed, 1 when a run failed, 2 when the file or a dataset could not be used, 130 when
interrupted.

Interrupt and resume: Ctrl-C or SIGTERM records the run under way as ``interrupted`` (its rounds
kept; ``fedkit runs list`` shows them). Every federated run checkpoints each committed round under
``OUT/checkpoints/<name>-<config digest>/``, so running the same command again (``--resume``, the
default) continues the interrupted run from its checkpoint in the same run row and ends with the
same model as an uninterrupted run; ``--no-resume`` starts afresh in a new row (the old one stays
``interrupted``). Centralised and ``[parallel]`` runs do not checkpoint: they start over.

Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` in the environment, or
``--distributed``, which requires them) every rank reads and validates the same file and joins a
gloo process group (``--timeout`` seconds for any collective); the runs go one after another on
the whole group: rank 0 runs the loop, records ``OUT/results.sqlite``, checkpoints each run under
``OUT/checkpoints/`` and prints; the other ranks build the same data, model and algorithm, serve
their share of each cohort and write nothing. A rank that dies ends the run on rank 0 with an
error naming the rank and its host; the run is recorded ``interrupted``, and rerunning the same
command resumes it from its checkpoint. See docs/distributed.md.

``fedkit runs list|show RUN|export [--format csv|json] [--table runs|rounds|clients]`` read an
output directory (``--runs DIR``, alias ``--out``; default ``runs/``). Rounds are counted from
1 there (``round`` 1 is the first round), as in reports, the progress output and
``rounds_to_target`` (the database stores the 0-based index). A run whose process was killed
without a word (SIGKILL, out of memory) is marked ``interrupted`` by these commands and by
``fedkit run`` (:meth:`~fedkit.experiment.results.ResultsStore.mark_orphaned`), and resumes.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import io
import json
import signal
import sys
import threading
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedkit.experiment.config import ConfigError, Study, load_study
from fedkit.experiment.results import ResultsStore, RunRow, results_path

if TYPE_CHECKING:
    from fedkit.experiment.runner import RunOutcome
    from fedkit.sim.torchrun import RankGroup

__all__ = ["DEFAULT_OUT", "report_outcome", "run", "run_recorded", "runs_app"]

DEFAULT_OUT = Path("runs")
"""Default output directory of ``fedkit run`` and of the ``runs`` commands."""

_err = Console(stderr=True)


def fail(message: str, code: int) -> typer.Exit:
    _err.print(f"[red]error:[/red] {escape(message)}", markup=True, highlight=False, soft_wrap=True)
    return typer.Exit(code=code)


def run(
    file: Annotated[Path, typer.Argument(help="Experiment or study file (TOML).", metavar="FILE")],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "-s",
            help="Override a key, e.g. --set algorithm.local.lr=0.05 (repeatable; applied last).",
            metavar="KEY=VALUE",
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output directory (holds results.sqlite).")
    ] = DEFAULT_OUT,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per run on stdout.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            help="Runs of a study at once, each in its own process (default 1: one after another).",
        ),
    ] = 1,
    data_root: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Data directory (default: $FEDKIT_DATA, else ../shared/data beside the "
            "checkout, else ~/.cache/fedkit).",
        ),
    ] = None,
    distributed: Annotated[
        bool | None,
        typer.Option(
            "--distributed/--no-distributed",
            help="Run on the ranks of a torchrun launch (default: when torchrun's environment "
            "is set).",
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            min=1.0,
            help="Under torchrun: seconds any rank may wait for the others (rendezvous and "
            "every exchange) before the run ends with an error.",
        ),
    ] = 1800.0,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume/--no-resume",
            help="Continue an interrupted run of the same config from its checkpoint in "
            "OUT/checkpoints (default), or start afresh.",
        ),
    ] = True,
    tensorboard: Annotated[
        Path | None,
        typer.Option(
            "--tensorboard",
            help="Write TensorBoard scalars under DIR, one subdirectory per run (the same as "
            '--set run.tensorboard="DIR"; `tensorboard --logdir DIR` to watch).',
            metavar="DIR",
        ),
    ] = None,
) -> None:
    """Run an experiment file (every arm and grid point) and record it in OUT/results.sqlite."""
    from fedkit.sim.torchrun import torchrun_env

    if tensorboard is not None:  # a --set like any other: validated, applied to every run
        set_ = [*(set_ or []), f"run.tensorboard={json.dumps(str(tensorboard))}"]

    try:
        env = torchrun_env()
    except ValueError as e:
        raise fail(f"torchrun environment: {e}", 2) from None
    if distributed is None:
        distributed = env is not None
    if distributed:
        if env is None:
            raise fail(
                "--distributed needs torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, "
                "MASTER_PORT): launch with `torchrun --nnodes N --nproc-per-node K … -m fedkit "
                "run FILE` (see docs/distributed.md)",
                2,
            )
        from fedkit.experiment.torchrun_cli import run_on_ranks

        run_on_ranks(
            env,
            file,
            set_ or [],
            out=out,
            as_json=as_json,
            quiet=quiet,
            jobs=jobs,
            data_root=data_root,
            timeout=timeout,
            resume=resume,
        )
    try:
        study = load_study(file, set_ or [])
    except ConfigError as e:
        raise fail(str(e), 2) from None
    with _sigterm_interrupts():
        run_recorded(
            study,
            file,
            out,
            as_json=as_json,
            quiet=quiet,
            jobs=jobs,
            data_root=data_root,
            resume=resume,
        )


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (``kill``, a scheduler's stop) raises ``KeyboardInterrupt`` like Ctrl-C, so the
    run under way is recorded ``interrupted`` and resumable (main thread only; restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        del frame
        raise KeyboardInterrupt(f"signal {signum} (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def report_outcome(outcome: RunOutcome, *, as_json: bool) -> None:
    """One run's ``--json`` line on standard output and its summary line on standard error."""
    if as_json:
        typer.echo(json.dumps(outcome.to_json()))
        sys.stdout.flush()
    s = outcome.summary
    if s is not None:
        acc = "—" if s.final_accuracy is None else f"{s.final_accuracy:.4f}"
        loss = "—" if s.final_loss is None else f"{s.final_loss:.4f}"
        _err.print(
            f"run {outcome.run_id} {outcome.name}: completed, {s.rounds} rounds, "
            f"final test accuracy {acc}, test loss {loss}, {s.wall_seconds:.1f} s",
            markup=False,
            highlight=False,
        )
    else:
        _err.print(
            f"run {outcome.run_id} {outcome.name}: {outcome.status}: {outcome.error}",
            markup=False,
            highlight=False,
        )


def run_recorded(
    study: Study,
    file: Path,
    out: Path,
    *,
    as_json: bool,
    quiet: bool,
    jobs: int,
    data_root: Path | None,
    group: RankGroup | None = None,
    resume: bool = True,
) -> None:
    """Run ``study`` into ``OUT/results.sqlite`` (this process, or rank 0 of ``group``);
    ``resume``: continue interrupted runs of the same config (see the module docstring)."""
    from fedkit.data.datasets import FedkitDataError
    from fedkit.experiment.progress import RunProgress
    from fedkit.experiment.runner import run_study

    db = results_path(out)
    created = not db.exists()
    store = ResultsStore(db)
    store.mark_orphaned()  # a run killed by SIGKILL is resumable like an interrupted one
    try:
        # a study run one run at a time labels each run [k/N]; with --jobs one bar counts runs
        arms = len(study.runs) if jobs == 1 and len(study.runs) > 1 else None
        with RunProgress(enabled=not quiet, console=_err, runs=arms) as progress:
            outcomes = run_study(
                study,
                store,
                progress=progress,
                data_root=data_root,
                on_outcome=functools.partial(report_outcome, as_json=as_json),
                jobs=jobs,
                group=group,
                resume=resume,
            )
    except KeyboardInterrupt as e:
        _err.print(
            f"interrupted ({e or 'Ctrl-C'}): the run under way is recorded as interrupted in "
            f"{db}; run the same command again to resume it",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(code=130) from None
    except ConfigError as e:
        _discard_if_empty(store, created)
        raise fail(f"{file}: {e}", 2) from None
    except FedkitDataError as e:
        _discard_if_empty(store, created)
        raise fail(str(e), 2) from None
    finally:
        store.close()
    _err.print(f"results: {results_path(out)}", markup=False, highlight=False)
    if any(o.status != "completed" for o in outcomes):
        raise typer.Exit(code=1)


def _discard_if_empty(store: ResultsStore, created: bool) -> None:
    """Remove a database this command created when no run was recorded in it."""
    if created and not store.runs():
        store.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{store.path}{suffix}").unlink(missing_ok=True)


# -- runs ----------------------------------------------------------------------------------------

runs_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # help as written: brackets stay, flags show no <bool>
    help="List, show and export recorded runs.",
)

RunsDir = Annotated[
    Path,
    typer.Option("--runs", "--out", "-o", help="Output directory holding results.sqlite."),
]


def _open(runs_dir: Path) -> ResultsStore:
    """The folder's store, with runs whose process died marked ``interrupted`` first."""
    try:
        store = ResultsStore(results_path(runs_dir), create=False)
    except (FileNotFoundError, RuntimeError) as e:
        raise fail(str(e), 2) from None
    store.mark_orphaned()
    return store


def _out() -> Console:
    """Standard output; wide when it is not a terminal, so piped tables are not truncated."""
    con = Console()
    return con if con.is_terminal else Console(width=200)


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "—" if v is None else format(v, spec)


@runs_app.command("list")
def list_runs(
    runs_dir: RunsDir = DEFAULT_OUT,
    study: Annotated[str | None, typer.Option("--study", help="Only this study's runs.")] = None,
) -> None:
    """A table of the runs in an output directory."""
    with _open(runs_dir) as store:
        rows = store.runs(study=study)
        so_far = {r.id: store.progress(r.id) for r in rows if r.summary is None}
    table = Table(title=str(results_path(runs_dir)))
    for col in ("id", "study", "name", "status", "rounds", "final acc", "best acc", "to target"):
        table.add_column(col)
    table.add_column("wall s", justify="right")
    for r in rows:
        s = r.summary
        if s is None:  # running, failed or interrupted: what its stored rounds say
            n, last, best = so_far[r.id]
            done, final_acc, best_acc = str(n), _fmt(last), _fmt(best)
        else:
            done, final_acc, best_acc = str(s.rounds), _fmt(s.final_accuracy), _fmt(s.best_accuracy)
        table.add_row(
            str(r.id),
            escape(r.study or ""),
            escape(r.name),
            r.status,
            done,
            final_acc,
            best_acc,
            "" if s is None or s.rounds_to_target is None else str(s.rounds_to_target),
            "" if s is None else f"{s.wall_seconds:.1f}",
        )
    _out().print(table)


def _run_dict(r: RunRow) -> dict[str, Any]:
    d = dataclasses.asdict(r)
    d["summary"] = None if r.summary is None else r.summary.to_dict()
    return d


@runs_app.command("show")
def show_run(
    run_id: Annotated[int, typer.Argument(help="Run id (see `fedkit runs list`).", metavar="RUN")],
    runs_dir: RunsDir = DEFAULT_OUT,
    as_json: Annotated[
        bool, typer.Option("--json", help="The run, its rounds and clients as JSON.")
    ] = False,
) -> None:
    """One run: config, environment, summary and per-round metrics."""
    with _open(runs_dir) as store:
        try:
            r = store.run(run_id)
        except KeyError as e:
            raise fail(str(e.args[0]), 2) from None
        rounds = store.rounds(run_id)
        clients = store.clients(run_id) if as_json else []
    if as_json:
        d = _run_dict(r)
        d["rounds"] = [_counted(dataclasses.asdict(x)) for x in rounds]
        d["clients"] = [_counted(dataclasses.asdict(x)) for x in clients]
        typer.echo(json.dumps(d, indent=2))
        return
    con = _out()
    con.print(
        f"[bold]run {r.id}[/bold] {escape(r.name)}  study={escape(str(r.study))}  "
        f"status={r.status}",
        markup=True,
    )
    con.print(f"started {r.started}  ended {r.ended}  code {r.code_version}", markup=False)
    con.print("environment: " + json.dumps(r.environment), markup=False)
    con.print("config: " + json.dumps(r.config), markup=False)
    if r.summary is not None:
        con.print("summary: " + json.dumps(r.summary.to_dict()), markup=False)
    if r.error:
        con.print("error: " + r.error, markup=False)
    table = Table()
    personal = any(x.fed_personal_mean is not None for x in rounds)
    cols = ["round", "train loss", "test loss", "test acc", "fed mean", "fed wmean"]
    cols += ["personal mean"] if personal else []
    for col in (*cols, "fed p10", "bytes up", "bytes down", "wall s"):
        table.add_column(col, justify="right")
    for x in rounds:
        cells = [
            str(x.round + 1),
            _fmt(x.train_loss),
            _fmt(x.test_loss),
            _fmt(x.test_accuracy),
            _fmt(x.fed_mean),
            _fmt(x.fed_wmean),
        ]
        cells += [_fmt(x.fed_personal_mean)] if personal else []
        table.add_row(
            *cells, _fmt(x.fed_p10), str(x.bytes_up), str(x.bytes_down), f"{x.wall_seconds:.3f}"
        )
    con.print(table)


def _counted(row: dict[str, Any]) -> dict[str, Any]:
    """A stored round or client row with ``round`` counted from 1, as reports, progress and
    ``rounds_to_target`` count (round 1 is the first round; the database keeps the 0-based
    index)."""
    return {**row, "round": int(row["round"]) + 1}


class ExportFormat(StrEnum):
    """Formats of ``fedkit runs export``."""

    csv = "csv"
    json = "json"


class ExportTable(StrEnum):
    """What ``fedkit runs export`` writes."""

    runs = "runs"
    rounds = "rounds"
    clients = "clients"


def _flat_run(r: RunRow) -> dict[str, Any]:
    """A run as one flat CSV row (summary fields inlined, config and environment as JSON)."""
    d: dict[str, Any] = {
        "run_id": r.id,
        "name": r.name,
        "study": r.study,
        "status": r.status,
        "code_version": r.code_version,
        "started": r.started,
        "ended": r.ended,
    }
    summary = r.summary.to_dict() if r.summary is not None else {}
    from fedkit.experiment.results import RunSummary

    for f in dataclasses.fields(RunSummary):
        d[f.name] = summary.get(f.name)
    d["config"] = json.dumps(r.config, sort_keys=True)
    d["environment"] = json.dumps(r.environment, sort_keys=True)
    d["error"] = r.error
    return d


@runs_app.command("export")
def export_runs(
    runs_dir: RunsDir = DEFAULT_OUT,
    fmt: Annotated[
        ExportFormat, typer.Option("--format", "-f", help="csv or json.")
    ] = ExportFormat.csv,
    table: Annotated[
        ExportTable, typer.Option("--table", "-t", help="runs, rounds or clients.")
    ] = ExportTable.runs,
    study: Annotated[str | None, typer.Option("--study", help="Only this study's runs.")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", help="Write here instead of standard output.")
    ] = None,
) -> None:
    """Export runs (or every run's rounds or clients) as CSV or JSON."""
    with _open(runs_dir) as store:
        runs = store.runs(study=study)
        records: list[dict[str, Any]] = []
        for r in runs:
            if table is ExportTable.runs:
                records.append(_flat_run(r) if fmt is ExportFormat.csv else _run_dict(r))
            elif table is ExportTable.rounds:
                records += [
                    {"run_id": r.id, "name": r.name, **_counted(dataclasses.asdict(x))}
                    for x in store.rounds(r.id)
                ]
            else:
                records += [
                    {"run_id": r.id, "name": r.name, **_counted(dataclasses.asdict(x))}
                    for x in store.clients(r.id)
                ]
    if fmt is ExportFormat.json:
        text = json.dumps(records, indent=2) + "\n"
    else:
        buf = io.StringIO()
        if records:
            writer = csv.DictWriter(buf, fieldnames=list(records[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(records)
        text = buf.getvalue()
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        _err.print(f"wrote {len(records)} rows to {output}", markup=False, highlight=False)
