"""``fedkit coordinator | worker | launch | certs | secrets``: the deployment commands.

Mounted by :mod:`fedkit.cli` (``fedkit …`` or ``python -m fedkit …``). They read experiment files
(:mod:`fedkit.experiment.deploy`) and hand typed objects to :mod:`fedkit.net`.

The experiment file is passed as ``fedkit run`` takes it, a FILE positional (``fedkit launch
FILE --workers 4``); ``--experiment FILE`` is kept as an alias. ``launch`` and ``coordinator``
write into ``--out``, by default ``runs/<FILE stem>`` (under ``fedkit run``'s default ``runs/``):
read it with ``fedkit runs list --runs runs/<FILE stem>`` or ``fedkit report``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from fedkit.experiment.deploy import DeploymentFile
    from fedkit.net.results import Summary
    from fedkit.net.transport import Security

# rich_markup_mode=None: help text is printed as written ("[data]" stays), flags show no <bool>
app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    help="Deployment over gRPC.",
)
certs_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    help="Deployment certificates.",
)
secrets_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    help="Enrolment secrets (plaintext mode).",
)

FileArg = Annotated[
    Path | None,
    typer.Argument(help="Experiment file (TOML), as for `fedkit run FILE`.", metavar="FILE"),
]
ExperimentOpt = Annotated[
    Path | None,
    typer.Option("--experiment", help="The experiment file, instead of FILE (older spelling)."),
]
DEFAULT_DEPLOY_OUT = Path("runs")
"""Parent of the default output folders of ``launch`` and ``coordinator``: ``runs/<FILE stem>``
(``fedkit run``'s default is ``runs/``; a deployment keeps its resumable ``coordinator.db`` per
experiment)."""
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="Data directory. Default, in order: $FEDKIT_DATA, else ../shared/data beside a "
        "source checkout, else ~/.cache/fedkit.",
    ),
]
TlsOpt = Annotated[
    Path | None,
    typer.Option("--tls-dir", help="Directory made by `fedkit certs create` (mutual TLS)."),
]
InsecureOpt = Annotated[
    bool, typer.Option("--insecure", help="Allow plaintext on a non-loopback address.")
]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help="Log progress messages (INFO level) on stderr.")
]
SecretOpt = Annotated[
    Path | None,
    typer.Option(
        "--secret-file",
        help="Enrolment secret made by `fedkit secrets create` (coordinator: run.secret; "
        "worker: client-<id>.secret).",
    ),
]


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


def _security(tls_dir: Path | None, insecure: bool) -> Security:
    from fedkit.net.transport import Security

    return Security(cert_dir=tls_dir, insecure=insecure)


def _print_summary(summary: Summary, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(dataclasses.asdict(summary)))
    else:
        typer.echo(
            f"run {summary.run_id}: {summary.committed_rounds} committed rounds, final accuracy "
            f"{summary.final_accuracy}, model sha256 {summary.model_sha256}"
        )


def _exit_for(summary: Summary) -> None:
    """Exit 0 only when every round was committed: 3 when some were skipped, 4 when none was."""
    if summary.status == "completed":
        return
    typer.echo(
        f"warning: {summary.committed_rounds} of {summary.rounds} rounds committed "
        f"({summary.status})",
        err=True,
    )
    raise typer.Exit(3 if summary.committed_rounds else 4)


def _experiment_file(file: Path | None, experiment: Path | None) -> Path:
    """The experiment file from the FILE positional or its alias ``--experiment`` (one of them;
    both only when they name the same file)."""
    if file is not None and experiment is not None and file != experiment:
        typer.echo(f"error: FILE {file} and --experiment {experiment} differ; give one", err=True)
        raise typer.Exit(2)
    chosen = file if file is not None else experiment
    if chosen is None:
        typer.echo("error: give the experiment file: FILE (or --experiment FILE)", err=True)
        raise typer.Exit(2)
    return chosen


def _default_out(out: Path | None, experiment: Path) -> Path:
    """``--out``, else ``runs/<experiment file stem>``."""
    return out if out is not None else DEFAULT_DEPLOY_OUT / experiment.stem


def _load(path: Path) -> DeploymentFile:
    from fedkit.experiment.deploy import ExperimentError, read_deployment

    try:
        return read_deployment(path)
    except ExperimentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def coordinator(
    file: FileArg = None,
    experiment: ExperimentOpt = None,
    listen: Annotated[
        str, typer.Option("--listen", help="HOST:PORT to serve on.")
    ] = "127.0.0.1:7070",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="State directory (results.sqlite, coordinator.db); default runs/<FILE stem>.",
        ),
    ] = None,
    data: DataOpt = None,
    tls_dir: TlsOpt = None,
    insecure: InsecureOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a final JSON line.")] = False,
    min_workers: Annotated[
        int, typer.Option("--min-workers", help="Wait for this many workers before round 0.")
    ] = 0,
    secret_file: SecretOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Serve an experiment to workers; resumes from OUT after a crash."""
    import sqlite3

    from fedkit.checkpoint import CheckpointError
    from fedkit.experiment.deploy import coordinate
    from fedkit.net.deployment import DeployError
    from fedkit.net.executor import QuorumError
    from fedkit.net.identity import IdentityError, load_enrolment

    _logging(verbose)
    experiment = _experiment_file(file, experiment)
    out = _default_out(out, experiment)
    exp = _load(experiment)
    sec = _security(tls_dir, insecure)
    try:
        enrolment = None if secret_file is None else load_enrolment(secret_file)
        summary = coordinate(
            exp, listen=listen, security=sec, out_dir=out, data_root=data,
            min_workers=min_workers, enrolment=enrolment,
        )  # fmt: skip
    except (DeployError, IdentityError, OSError, CheckpointError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except sqlite3.Error as exc:
        typer.echo(
            f"error: the state in {out} cannot be read or written ({exc}); check that the "
            "directory is writable and has free space",
            err=True,
        )
        raise typer.Exit(2) from None
    except QuorumError as exc:
        typer.echo(f"error: {exc} (the last committed round is kept in {out})", err=True)
        raise typer.Exit(1) from None
    _print_summary(summary, as_json)
    _exit_for(summary)


@app.command()
def worker(
    coordinator: Annotated[str, typer.Option("--coordinator", help="Coordinator HOST:PORT.")],
    file: FileArg = None,
    experiment: ExperimentOpt = None,
    client_id: Annotated[
        int | None, typer.Option("--client-id", help="The client this worker serves.")
    ] = None,
    clients: Annotated[
        str | None,
        typer.Option(
            "--clients",
            help="Instead of --client-id: the client ids this worker serves, e.g. 0-99 or 0,2-4 "
            "(one process, one resident model, their tasks one at a time).",
        ),
    ] = None,
    data: DataOpt = None,
    tls_dir: TlsOpt = None,
    tls_name: Annotated[
        str | None, typer.Option("--tls-name", help="Certificate name in --tls-dir (worker-N).")
    ] = None,
    insecure: InsecureOpt = False,
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", help="Persist client state here.")
    ] = None,
    threads: Annotated[int, typer.Option("--threads", help="torch threads.")] = 1,
    attack: Annotated[
        str | None,
        typer.Option(
            "--attack",
            help="Make this client an attacker: an attack name (label_flip, sign_flip, ipm, "
            "gaussian_noise, backdoor, alie, label_noise, input_noise) or module:Class.",
        ),
    ] = None,
    attack_set: Annotated[
        list[str] | None,
        typer.Option("--attack-set", help="An attack setting KEY=VALUE (repeat), e.g. scale=2."),
    ] = None,
    secret_file: SecretOpt = None,
    secret_dir: Annotated[
        Path | None,
        typer.Option(
            "--secret-dir",
            help="With --clients: a folder holding client-<id>.secret for each id served.",
        ),
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Serve one client's data (or several clients', --clients) to a coordinator until the run
    ends."""
    from fedkit.checkpoint import CheckpointError
    from fedkit.experiment.attack import AttackSettings
    from fedkit.experiment.config import ConfigError, parse_overrides
    from fedkit.experiment.deploy import ExperimentError, run_worker
    from fedkit.net.deployment import DeployError
    from fedkit.net.errors import NetError, TLSHandshakeError
    from fedkit.net.identity import IdentityError

    _logging(verbose)
    experiment = _experiment_file(file, experiment)
    try:
        ids = _served_ids(client_id, clients)
    except (ValueError, IdentityError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    settings = None
    if attack is not None or attack_set:
        try:
            if attack is None:
                raise ConfigError("--attack-set needs --attack NAME")
            table = {**parse_overrides(attack_set or []), "name": attack, "clients": ids}
            settings = AttackSettings.from_mapping(table)
        except ConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    try:
        rounds = run_worker(
            coordinator=coordinator,
            experiment=experiment,
            client_ids=ids,
            data_root=data,
            security=_security(tls_dir, insecure),
            tls_name=tls_name,
            state_dir=state_dir,
            threads=threads,
            attack=settings,
            secret_file=secret_file,
            secret_dir=secret_dir,
        )
    except (ExperimentError, DeployError, IdentityError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except (
        TLSHandshakeError,
        PermissionError,
        FileNotFoundError,
        ConnectionError,
        NetError,
        CheckpointError,
    ) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(3) from None
    who = f"clients {clients}" if clients is not None else f"client {client_id}"
    typer.echo(f"worker ({who}): {rounds} client rounds served")


def _served_ids(client_id: int | None, clients: str | None) -> list[int]:
    """The ids from ``--client-id`` or ``--clients`` (exactly one of them)."""
    from fedkit.net.identity import ClientIds

    if (client_id is None) == (clients is None):
        raise ValueError("give --client-id N or --clients IDS (e.g. 0-99), not both or neither")
    if client_id is not None:
        if client_id < 0:
            raise ValueError(f"--client-id must be >= 0, got {client_id}")
        return [client_id]
    assert clients is not None
    return ClientIds.parse(clients).ids()


@app.command()
def launch(
    workers: Annotated[int, typer.Option("--workers", help="Number of local workers.")],
    file: FileArg = None,
    experiment: ExperimentOpt = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output directory; default runs/<FILE stem>."),
    ] = None,
    data: DataOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a final JSON line.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Start a coordinator and N local workers (loopback) and run the experiment."""
    from fedkit.experiment.deploy import launch as do_launch

    _logging(verbose)
    experiment = _experiment_file(file, experiment)
    out = _default_out(out, experiment)
    exp = _load(experiment)
    try:
        summary = do_launch(exp, experiment.resolve(), workers=workers, out_dir=out, data_root=data)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    _print_summary(summary, as_json)
    _exit_for(summary)


@certs_app.command("create")
def certs_create(
    out: Annotated[Path, typer.Option("--out", help="Directory to write into.")],
    coordinator_host: Annotated[
        list[str], typer.Option("--coordinator-host", help="Coordinator host name or IP (repeat).")
    ],
    workers: Annotated[int, typer.Option("--workers", help="Number of worker certificates.")],
    days: Annotated[int, typer.Option("--days", help="Validity in days.")] = 365,
) -> None:
    """Create a CA, a coordinator certificate and N worker certificates."""
    from fedkit.net.tls import create_certs

    try:
        files = create_certs(out, coordinator_hosts=coordinator_host, workers=workers, days=days)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"wrote {len(files)} files to {out} (keys are mode 0600; give each worker only its own)"
    )


@certs_app.command("issue")
def certs_issue(
    cert_dir: Annotated[
        Path, typer.Option("--dir", help="Directory of `fedkit certs create` (ca.pem, ca.key).")
    ],
    name: Annotated[str, typer.Option("--name", help="Certificate name (NAME.pem, NAME.key).")],
    clients: Annotated[str, typer.Option("--clients", help="Client ids it may serve, e.g. 0,2-4.")],
    days: Annotated[int, typer.Option("--days", help="Validity in days.")] = 365,
) -> None:
    """Issue a worker certificate for a set of client ids (one machine serving several)."""
    from fedkit.net.identity import ClientIds
    from fedkit.net.tls import issue_worker

    try:
        ids = ClientIds.parse(clients)
        files = issue_worker(cert_dir, name, ids, days=days)
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {files[0]} and {files[1]} (clients {ids})")


@secrets_app.command("create")
def secrets_create(
    out: Annotated[Path, typer.Option("--out", help="Directory to write into.")],
    clients: Annotated[int, typer.Option("--clients", help="Number of client ids (0..N-1).")],
) -> None:
    """Create a run secret (coordinator) and one enrolment secret per client id (workers)."""
    from fedkit.net.identity import create_secrets

    try:
        files = create_secrets(out, clients=clients)
    except (ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"wrote {len(files)} files to {out} (mode 0600): run.secret for the coordinator "
        "(--secret-file), client-<id>.secret for worker <id> only"
    )


app.add_typer(certs_app, name="certs")
app.add_typer(secrets_app, name="secrets")


def register(root: typer.Typer) -> None:
    """Add ``coordinator``, ``worker``, ``launch``, ``certs`` and ``secrets`` to the ``fedkit``
    application."""
    root.registered_commands.extend(app.registered_commands)
    root.add_typer(certs_app, name="certs")
    root.add_typer(secrets_app, name="secrets")
