"""The results database: one SQLite file per output directory (``OUT/results.sqlite``).

Every run of ``fedkit run`` is recorded here — its validated config, the code version and
environment it ran under, one row per round (losses, accuracies, federated-evaluation summary,
bytes, times) and one row per client per round (training metrics and, when federated evaluation ran
that round, the client's own test accuracy) — so reports compare runs from one file, not from
ad-hoc JSON. Standard library ``sqlite3`` only.

Concurrency: the database runs in WAL mode with a busy timeout, each write is one short
``BEGIN IMMEDIATE`` transaction, and each process opens its own connection, so several processes
may record different runs into the same directory at once. A run is inserted as ``running`` and
ends ``completed``, ``failed`` (an error) or ``interrupted`` (Ctrl-C, SIGTERM, a lost torchrun
rank: its rounds are kept and ``fedkit run`` resumes it into the same row from its checkpoint,
:meth:`ResultsStore.reopen_run`); other runs are never touched.

A run whose process died without a word (SIGKILL, the out-of-memory killer, a power cut) would
stay ``running`` forever: each run records its process (``pid``, and in its ``environment`` the
``host`` and the process's start time, ``process_start``), and readers and ``fedkit run`` call
:meth:`ResultsStore.mark_orphaned`, which marks ``interrupted`` (resumable like any interrupted
run) every ``running`` run of this host whose process is gone or is another process that reuses
its pid. Runs recorded on another host are left as they are (their process cannot be checked).

Schema (``PRAGMA user_version`` = :data:`SCHEMA_VERSION`): tables ``runs``, ``rounds``,
``clients``; see :class:`RunRow`, :class:`RoundRow` and :class:`ClientRow` for every column.
Readers use :class:`ResultsStore` (``runs()``, ``run(id)``, ``rounds(id)``, ``clients(id)``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, cast

__all__ = [
    "DB_NAME",
    "SCHEMA_VERSION",
    "STATUSES",
    "ClientRow",
    "ResultsStore",
    "RoundRow",
    "RunRow",
    "RunStatus",
    "RunSummary",
    "code_version",
    "environment",
    "process_alive",
    "process_identity",
    "results_path",
]

DB_NAME = "results.sqlite"
"""File name of the database inside an output directory."""

SCHEMA_VERSION = 5
"""Version of the schema below; stored as ``PRAGMA user_version`` (5: status ``interrupted``)."""

RunStatus = Literal["running", "completed", "failed", "interrupted"]
STATUSES: tuple[str, ...] = ("running", "completed", "failed", "interrupted")

BUSY_TIMEOUT_MS = 60_000
"""How long a writer waits for another process's transaction before giving up."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT NOT NULL,
    study        TEXT,
    status       TEXT NOT NULL
                 CHECK (status IN ('running', 'completed', 'failed', 'interrupted')),
    config       TEXT NOT NULL,
    code_version TEXT NOT NULL,
    environment  TEXT NOT NULL,
    started      TEXT NOT NULL,
    ended        TEXT,
    summary      TEXT,
    error        TEXT,
    pid          INTEGER
);
CREATE TABLE IF NOT EXISTS rounds (
    run_id        INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    round         INTEGER NOT NULL,
    train_loss    REAL,
    test_loss     REAL,
    test_accuracy REAL,
    fed_mean      REAL,
    fed_wmean     REAL,
    fed_personal_mean REAL,
    fed_p10       REAL,
    fed_var       REAL,
    fed_min       REAL,
    fed_clients   INTEGER,
    cohort_size   INTEGER NOT NULL,
    dropped       INTEGER NOT NULL,
    bytes_up      INTEGER NOT NULL,
    bytes_down    INTEGER NOT NULL,
    wall_seconds  REAL NOT NULL,
    sim_seconds   REAL,
    committed     INTEGER NOT NULL,
    details       TEXT,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS clients (
    run_id        INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    round         INTEGER NOT NULL,
    client_id     INTEGER NOT NULL,
    trained       INTEGER NOT NULL,
    num_examples  INTEGER,
    steps         INTEGER,
    train_loss    REAL,
    work_fraction REAL,
    seconds       REAL,
    eval_examples INTEGER,
    eval_loss     REAL,
    eval_accuracy REAL,
    personal_loss REAL,
    personal_accuracy REAL,
    PRIMARY KEY (run_id, round, client_id)
);
CREATE INDEX IF NOT EXISTS runs_study ON runs(study);
"""


_ADDED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("rounds", "details TEXT"),  # 2: per-round details (data-parallel evaluation points)
    ("rounds", "fed_wmean REAL"),  # 3: the example-weighted federated mean
    ("rounds", "fed_personal_mean REAL"),  # 4: personal models' mean accuracy
    ("clients", "personal_loss REAL"),  # 4: per-client personal model scores
    ("clients", "personal_accuracy REAL"),
)
"""Columns added to the schema-1 tables by later versions, added in place by the migration."""

_RUNS_COLUMNS = (
    "id, name, study, status, config, code_version, environment, started, ended, summary, "
    "error, pid"
)
"""Every column of ``runs`` (unchanged since schema 1), copied when the table is rebuilt."""


def results_path(out_dir: str | os.PathLike[str]) -> Path:
    """The database path of an output directory: ``out_dir/results.sqlite``."""
    return Path(out_dir) / DB_NAME


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _real(value: float | None) -> float | None:
    """NaN and infinities are stored as NULL (SQLite has no NaN) and read back as ``None``."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def code_version() -> str:
    """``git describe --always --dirty`` of the source tree, else the installed package version."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        if out.returncode == 0 and out.stdout.strip():
            return f"git:{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version

        return f"fedkit {version('fedkit')}"
    except Exception:  # package metadata missing (running from a bare checkout)
        return "unknown"


def environment(*, threads: int | None = None) -> dict[str, Any]:
    """Where a run ran: Python, torch, platform, CPU count and torch threads."""
    import torch

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks after boot (``/proc/PID/stat`` field 22);
    ``None`` where there is no such process or no ``/proc`` (not Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # "pid (comm) state ppid …": comm may hold spaces and parentheses, so split after the last
    # ")"; starttime is then the 20th field (22nd of the line, proc(5)).
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None


def process_identity(pid: int | None = None) -> dict[str, str | None]:
    """What identifies a process across time: ``host`` (this machine's name) and
    ``process_start`` (:func:`_process_start`), for ``pid`` (default: this process)."""
    return {
        "host": socket.gethostname(),
        "process_start": _process_start(os.getpid() if pid is None else pid),
    }


def process_alive(pid: int, start: str | None) -> bool:
    """Whether process ``pid`` of this host still runs and is the one that started at ``start``
    (a pid reused by a later process is not alive). Without ``/proc`` (or an unknown
    ``start``), whether any process has that pid (``kill(pid, 0)``)."""
    now = _process_start(pid)
    if now is not None and start is not None:
        return now == start
    if Path("/proc/self/stat").exists():  # Linux: no /proc/PID means no such process
        return now is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSummary:
    """The outcome of a run (the ``--json`` line of ``fedkit run`` carries these fields).

    Attributes:
        rounds: Rounds (epochs for ``centralized``) completed.
        final_accuracy: Centralised test accuracy after the last round (``None`` if never
            evaluated).
        best_accuracy: Highest centralised test accuracy seen at any evaluated round.
        rounds_to_target: First round count (1-based) at which test accuracy reached
            ``[run] target_accuracy``; ``None`` when not reached or no target was set.
        target_accuracy: The target that ``rounds_to_target`` refers to, or ``None``.
        wall_seconds: Wall-clock seconds of the whole run (data, model and rounds).
        bytes_up: Total bytes of client updates received by the server.
        bytes_down: Total bytes of messages sent to clients.
        model_sha256: :func:`fedkit.params.sha256` of the final global parameters (parity check).
        final_loss: Centralised test loss after the last round (``None`` if never evaluated).
        metrics: The last value of each probe metric of the run (``dp_epsilon`` and
            ``dp_delta`` of a DP run, an attack's success rate), ``None`` when it had none.
        stopped: Why the run stopped before its last round (e.g. its privacy budget), else
            ``None``.
    """

    rounds: int
    final_accuracy: float | None
    best_accuracy: float | None
    rounds_to_target: int | None
    target_accuracy: float | None
    wall_seconds: float
    bytes_up: int
    bytes_down: int
    model_sha256: str
    final_loss: float | None = None
    metrics: dict[str, float] | None = None
    stopped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The summary as a JSON-ready dictionary."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSummary:
        """Inverse of :meth:`to_dict` (unknown keys from newer versions are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunRow:
    """One run (a row of ``runs``).

    Attributes:
        id: Run id, unique within the database (the ``RUN`` of ``fedkit runs show``).
        name: Arm name (for a grid point, the arm name plus the grid values, e.g.
            ``fedavg[algorithm.local_epochs=5]``).
        study: Name of the study the run belongs to (the experiment file's stem or its
            ``[study] name``), ``None`` for a single run recorded without one.
        status: ``"running"``, ``"completed"``, ``"failed"`` or ``"interrupted"``.
        config: The fully resolved, validated experiment config (sections ``data``, ``model``,
            ``algorithm``, ``run`` …) as plain JSON values.
        code_version: ``git:<describe>`` of the source tree, or ``fedkit <version>``.
        environment: Python/torch versions, platform, CPU count, torch threads.
        started: UTC start time, ISO 8601.
        ended: UTC end time, ISO 8601 (``None`` while running).
        summary: The run's outcome (``None`` unless completed).
        error: For a failed run, the exception type and message; for an interrupted one, what
            interrupted it and how to resume.
        pid: Id of the process that recorded the run (to spot runs whose process died).
    """

    id: int
    name: str
    study: str | None
    status: RunStatus
    config: dict[str, Any]
    code_version: str
    environment: dict[str, Any]
    started: str
    ended: str | None
    summary: RunSummary | None
    error: str | None
    pid: int | None


@dataclasses.dataclass(frozen=True, kw_only=True)
class RoundRow:
    """One round of a run (a row of ``rounds``); metrics not measured that round are ``None``.

    Attributes:
        round: 0-based round index (epoch for ``centralized``).
        train_loss: Example-weighted mean training loss of the clients that finished.
        test_loss: Centralised test loss of the global model after the round.
        test_accuracy: Centralised test accuracy of the global model after the round.
        fed_mean: Federated evaluation: mean of per-client local test accuracy (each client
            counts once).
        fed_wmean: Federated evaluation: the example-weighted mean of per-client accuracy,
            ``Σ n_i acc_i / Σ n_i`` over local test examples n_i (the pooled accuracy of all
            clients' test examples); ``None`` in rows written before schema 3.
        fed_personal_mean: Federated evaluation of personalised algorithms: the mean of
            per-client accuracy of each client's personal model (``None`` otherwise).
        fed_p10: Federated evaluation: 10th percentile of per-client accuracy.
        fed_var: Federated evaluation: variance of per-client accuracy.
        fed_min: Federated evaluation: lowest per-client accuracy.
        fed_clients: Federated evaluation: number of clients scored.
        cohort_size: Clients selected this round.
        dropped: Selected clients whose update was not aggregated.
        bytes_up: Bytes of updates received this round.
        bytes_down: Bytes of messages sent this round.
        wall_seconds: Wall-clock seconds of the round (training, aggregation, evaluation).
        sim_seconds: Simulated round duration under a system model, else ``None``.
        committed: Whether the server applied an update (some client finished).
        details: Extra per-row measurements of the run's kind as a flat mapping (a
            data-parallel run's evaluation point: samples, epoch, compute vs communication
            seconds, syncs, H, batch size, LR, staleness, server bytes), else ``None``.
    """

    round: int
    train_loss: float | None
    test_loss: float | None
    test_accuracy: float | None
    fed_mean: float | None
    fed_wmean: float | None = None
    fed_personal_mean: float | None = None
    fed_p10: float | None
    fed_var: float | None
    fed_min: float | None
    fed_clients: int | None
    cohort_size: int
    dropped: int
    bytes_up: int
    bytes_down: int
    wall_seconds: float
    sim_seconds: float | None
    committed: bool
    details: Mapping[str, float | int] | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClientRow:
    """One client in one round (a row of ``clients``).

    A row exists for every client that trained that round and for every client scored by
    federated evaluation that round; the fields of the part that did not happen are ``None``.

    Attributes:
        round: 0-based round index.
        client_id: Client index in the partition (``-1``: the pooled centralised "client").
        trained: Whether the client trained this round (its update was aggregated).
        num_examples: Local training examples.
        steps: Local optimiser steps taken.
        train_loss: Mean local training loss.
        work_fraction: Share of the planned local work done (``< 1`` for stragglers).
        seconds: Wall-clock seconds of the client's local work.
        eval_examples: Local test examples scored by federated evaluation.
        eval_loss: Local test loss of the global model after the round.
        eval_accuracy: Local test accuracy of the global model after the round.
        personal_loss: Local test loss of the client's personal model (personalised
            algorithms only; ``None`` otherwise).
        personal_accuracy: Local test accuracy of the client's personal model.
    """

    round: int
    client_id: int
    trained: bool
    num_examples: int | None = None
    steps: int | None = None
    train_loss: float | None = None
    work_fraction: float | None = None
    seconds: float | None = None
    eval_examples: int | None = None
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    personal_loss: float | None = None
    personal_accuracy: float | None = None


class ResultsStore:
    """Read and write one results database (see module docstring).

    Args:
        path: The database file (e.g. ``results_path(out_dir)``).
        create: Create the file (and its directory) if missing; with ``False`` a missing file
            raises ``FileNotFoundError`` (what readers want).

    Raises:
        FileNotFoundError: ``create`` is false and there is no database at ``path``.
        RuntimeError: The database was written by a newer fedkit (schema version too high).
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise FileNotFoundError(
                    f"no results database at {self.path} (run `fedkit run FILE --out "
                    f"{self.path.parent}` first)"
                )
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
        )
        self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._conn.execute("PRAGMA foreign_keys = ON")
        # WAL + NORMAL: commits never corrupt the file, a crashed process loses nothing it
        # committed; only an OS crash or power cut may drop the last few commits. (FULL costs
        # an fsync per round: ~2.5 ms against ~0.15 ms on this machine.)
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._migrate()

    @classmethod
    def in_dir(cls, out_dir: str | os.PathLike[str], *, create: bool = True) -> ResultsStore:
        """The store of an output directory (``out_dir/results.sqlite``)."""
        return cls(results_path(out_dir), create=create)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction (takes the write lock up front: no upgrade races)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _migrate(self) -> None:
        mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":  # pragma: no cover - e.g. a network file system
            raise RuntimeError(f"cannot put {self.path} in WAL mode (got {mode!r})")
        version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path} has results schema version {version}, newer than this fedkit "
                f"understands ({SCHEMA_VERSION}); upgrade fedkit to read it"
            )
        if version == SCHEMA_VERSION:
            return
        # Rebuilding ``runs`` drops the old table: with foreign keys on, that would cascade to
        # every round. The pragma is a no-op inside a transaction, so it is switched around it.
        self._conn.execute("PRAGMA foreign_keys = OFF")
        try:
            with self._write() as c:
                version = int(c.execute("PRAGMA user_version").fetchone()[0])
                if version == SCHEMA_VERSION:  # another process migrated it meanwhile
                    return
                if version >= 1:  # columns added since schema 1, each once (idempotent)
                    for table, column in _ADDED_COLUMNS:
                        have = {r[1] for r in c.execute(f"PRAGMA table_info({table})")}
                        if column.split()[0] not in have:
                            c.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
                    if version < 5:
                        self._rebuild_runs(c)
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        finally:
            self._conn.execute("PRAGMA foreign_keys = ON")

    @staticmethod
    def _rebuild_runs(c: sqlite3.Connection) -> None:
        """Schema 5: rebuild ``runs`` under the new status CHECK (SQLite cannot alter a
        constraint), keeping every row and id, in the caller's transaction (SQLite's documented
        12-step procedure: create the new table, copy, drop the old one, rename)."""
        create = _SCHEMA.split(";")[0].replace(
            "CREATE TABLE IF NOT EXISTS runs", "CREATE TABLE runs_v5"
        )
        c.execute(create)
        c.execute(f"INSERT INTO runs_v5 ({_RUNS_COLUMNS}) SELECT {_RUNS_COLUMNS} FROM runs")
        c.execute("DROP TABLE runs")
        c.execute("ALTER TABLE runs_v5 RENAME TO runs")
        bad = c.execute("PRAGMA foreign_key_check").fetchall()
        if bad:  # pragma: no cover - rounds always reference a run that was copied
            raise RuntimeError(f"results migration left rows without their run: {bad[:5]}")

    # -- writing ---------------------------------------------------------------------------

    def start_run(
        self,
        *,
        name: str,
        config: Mapping[str, Any],
        study: str | None = None,
        code: str | None = None,
        env: Mapping[str, Any] | None = None,
    ) -> int:
        """Insert a ``running`` run and return its id.

        Args:
            name: Arm name.
            config: The resolved, validated config (JSON-serialisable).
            study: Study name, if any.
            code: Code version (default :func:`code_version`).
            env: Environment (default :func:`environment`); this process's
                :func:`process_identity` is added to it (what :meth:`mark_orphaned` checks).
        """
        env = {**(dict(env) if env is not None else environment()), **process_identity()}
        with self._write() as c:
            cur = c.execute(
                "INSERT INTO runs (name, study, status, config, code_version, environment, "
                "started, pid) VALUES (?, ?, 'running', ?, ?, ?, ?, ?)",
                (
                    name,
                    study,
                    json.dumps(config, sort_keys=True),
                    code if code is not None else code_version(),
                    json.dumps(env, sort_keys=True),
                    _now(),
                    os.getpid(),
                ),
            )
            run_id = cur.lastrowid
        assert run_id is not None
        return int(run_id)

    def add_round(self, run_id: int, row: RoundRow, clients: Sequence[ClientRow] = ()) -> None:
        """Record one round and its clients' rows in one transaction."""
        with self._write() as c:
            c.execute(
                "INSERT INTO rounds (run_id, round, train_loss, test_loss, test_accuracy, "
                "fed_mean, fed_wmean, fed_personal_mean, fed_p10, fed_var, fed_min, fed_clients, "
                "cohort_size, dropped, bytes_up, bytes_down, wall_seconds, sim_seconds, "
                "committed, details) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    row.round,
                    _real(row.train_loss),
                    _real(row.test_loss),
                    _real(row.test_accuracy),
                    _real(row.fed_mean),
                    _real(row.fed_wmean),
                    _real(row.fed_personal_mean),
                    _real(row.fed_p10),
                    _real(row.fed_var),
                    _real(row.fed_min),
                    row.fed_clients,
                    row.cohort_size,
                    row.dropped,
                    row.bytes_up,
                    row.bytes_down,
                    row.wall_seconds,
                    _real(row.sim_seconds),
                    int(row.committed),
                    None if row.details is None else json.dumps(dict(row.details)),
                ),
            )
            c.executemany(
                "INSERT INTO clients (run_id, round, client_id, trained, num_examples, steps, "
                "train_loss, work_fraction, seconds, eval_examples, eval_loss, eval_accuracy, "
                "personal_loss, personal_accuracy) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        run_id,
                        cr.round,
                        cr.client_id,
                        int(cr.trained),
                        cr.num_examples,
                        cr.steps,
                        _real(cr.train_loss),
                        _real(cr.work_fraction),
                        _real(cr.seconds),
                        cr.eval_examples,
                        _real(cr.eval_loss),
                        _real(cr.eval_accuracy),
                        _real(cr.personal_loss),
                        _real(cr.personal_accuracy),
                    )
                    for cr in clients
                ],
            )

    def finish_run(self, run_id: int, summary: RunSummary) -> None:
        """Mark a run ``completed`` with its summary."""
        with self._write() as c:
            c.execute(
                "UPDATE runs SET status = 'completed', ended = ?, summary = ? WHERE id = ?",
                (_now(), json.dumps(summary.to_dict()), run_id),
            )

    def fail_run(self, run_id: int, error: str) -> None:
        """Mark a run ``failed`` with the error that ended it (its rounds so far are kept)."""
        self._end(run_id, "failed", error)

    def interrupt_run(self, run_id: int, reason: str) -> None:
        """Mark a run ``interrupted`` (Ctrl-C, SIGTERM, a lost rank): its rounds are kept and
        ``fedkit run`` resumes it (:meth:`interrupted_run`, :meth:`reopen_run`)."""
        self._end(run_id, "interrupted", reason)

    def _end(self, run_id: int, status: RunStatus, error: str) -> None:
        with self._write() as c:
            c.execute(
                "UPDATE runs SET status = ?, ended = ?, error = ? WHERE id = ?",
                (status, _now(), error, run_id),
            )

    def interrupted_run(
        self, *, name: str, study: str | None, config: Mapping[str, Any]
    ) -> RunRow | None:
        """The latest ``interrupted`` run of this name, study and exactly this resolved config
        (the run a resume continues), or ``None``."""
        rows = self._select(
            "SELECT * FROM runs WHERE status = 'interrupted' AND name = ? AND study IS ? "
            "AND config = ? ORDER BY id DESC LIMIT 1",
            [name, study, json.dumps(config, sort_keys=True)],
        )
        return self._run_row(rows[0]) if rows else None

    def reopen_run(self, run_id: int) -> None:
        """Resume an interrupted run in place: ``running`` again, under this process's pid
        (its rounds stay until :meth:`drop_rounds` trims them to the checkpoint).

        Raises:
            ValueError: The run is not ``interrupted`` (nothing is changed; e.g. another
                process resumed it first).
        """
        with self._write() as c:
            row = c.execute("SELECT environment FROM runs WHERE id = ?", (run_id,)).fetchone()
            env = {**(json.loads(row[0]) if row else {}), **process_identity()}
            cur = c.execute(
                "UPDATE runs SET status = 'running', ended = NULL, error = NULL, pid = ?, "
                "environment = ? WHERE id = ? AND status = 'interrupted'",
                (os.getpid(), json.dumps(env, sort_keys=True), run_id),
            )
            if cur.rowcount != 1:
                raise ValueError(f"run {run_id} is not interrupted in {self.path}")

    def mark_orphaned(self) -> list[int]:
        """Mark ``interrupted`` every ``running`` run recorded on this host whose process is
        gone (killed by SIGKILL or the out-of-memory killer, or its machine restarted), so that
        it is listed as what it is and ``fedkit run`` resumes it; returns their ids.

        A run recorded on another host, or before hosts were recorded, is left as it is.
        """
        host = socket.gethostname()
        orphans: list[tuple[int, int]] = []
        for r in self._select(
            "SELECT id, pid, environment FROM runs WHERE status = 'running' AND pid IS NOT NULL",
            [],
        ):
            env = json.loads(r["environment"]) if r["environment"] else {}
            if not isinstance(env, dict) or env.get("host") != host:
                continue
            start = env.get("process_start")
            if not process_alive(int(r["pid"]), start if isinstance(start, str) else None):
                orphans.append((int(r["id"]), int(r["pid"])))
        marked: list[int] = []
        for run_id, pid in orphans:
            with self._write() as c:  # only if still running under that pid (no race)
                cur = c.execute(
                    "UPDATE runs SET status = 'interrupted', ended = ?, error = ? "
                    "WHERE id = ? AND status = 'running' AND pid = ?",
                    (
                        _now(),
                        f"its process {pid} on {host} ended without recording an end (killed, "
                        "e.g. by SIGKILL or out of memory); run the same command to resume it",
                        run_id,
                        pid,
                    ),
                )
                if cur.rowcount == 1:
                    marked.append(run_id)
        return marked

    def drop_rounds(self, run_id: int, *, from_round: int) -> None:
        """Delete a run's rounds (and their client rows) from ``from_round`` on: a resumed run
        repeats them from its checkpoint of ``from_round`` completed rounds."""
        with self._write() as c:
            c.execute("DELETE FROM clients WHERE run_id = ? AND round >= ?", (run_id, from_round))
            c.execute("DELETE FROM rounds WHERE run_id = ? AND round >= ?", (run_id, from_round))

    def progress(self, run_id: int) -> tuple[int, float | None, float | None]:
        """What a run has recorded so far: (rounds, last test accuracy, best test accuracy)
        from its round rows (``fedkit runs list`` shows these for runs without a summary)."""
        rows = self._select(
            "SELECT COALESCE(MAX(round) + 1, 0) AS n, MAX(test_accuracy) AS best, "
            "(SELECT test_accuracy FROM rounds WHERE run_id = ? AND test_accuracy IS NOT NULL "
            "ORDER BY round DESC LIMIT 1) AS last FROM rounds WHERE run_id = ?",
            [run_id, run_id],
        )
        r = rows[0]
        return int(r["n"]), r["last"], r["best"]

    # -- reading ---------------------------------------------------------------------------

    def runs(self, *, study: str | None = None, status: RunStatus | None = None) -> list[RunRow]:
        """All runs (optionally of one study and/or status), in id order."""
        sql = "SELECT * FROM runs"
        where: list[str] = []
        args: list[Any] = []
        if study is not None:
            where.append("study = ?")
            args.append(study)
        if status is not None:
            if status not in STATUSES:
                raise ValueError(f"status must be one of {', '.join(STATUSES)}; got {status!r}")
            where.append("status = ?")
            args.append(status)
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [self._run_row(r) for r in self._select(sql + " ORDER BY id", args)]

    def run(self, run_id: int) -> RunRow:
        """One run by id.

        Raises:
            KeyError: No run with that id (the message lists the ids present).
        """
        rows = self._select("SELECT * FROM runs WHERE id = ?", [run_id])
        if not rows:
            ids = [int(r["id"]) for r in self._select("SELECT id FROM runs ORDER BY id", [])]
            raise KeyError(f"no run {run_id} in {self.path}; runs present: {ids or 'none'}")
        return self._run_row(rows[0])

    def rounds(self, run_id: int) -> list[RoundRow]:
        """The run's rounds in order."""
        rows = self._select("SELECT * FROM rounds WHERE run_id = ? ORDER BY round", [run_id])
        return [
            RoundRow(
                round=r["round"],
                train_loss=r["train_loss"],
                test_loss=r["test_loss"],
                test_accuracy=r["test_accuracy"],
                fed_mean=r["fed_mean"],
                fed_wmean=r["fed_wmean"],
                fed_personal_mean=r["fed_personal_mean"],
                fed_p10=r["fed_p10"],
                fed_var=r["fed_var"],
                fed_min=r["fed_min"],
                fed_clients=r["fed_clients"],
                cohort_size=r["cohort_size"],
                dropped=r["dropped"],
                bytes_up=r["bytes_up"],
                bytes_down=r["bytes_down"],
                wall_seconds=r["wall_seconds"],
                sim_seconds=r["sim_seconds"],
                committed=bool(r["committed"]),
                details=None if r["details"] is None else json.loads(r["details"]),
            )
            for r in rows
        ]

    def clients(self, run_id: int, *, round: int | None = None) -> list[ClientRow]:
        """The run's client rows (optionally of one round), by round then client id."""
        sql = "SELECT * FROM clients WHERE run_id = ?"
        args: list[Any] = [run_id]
        if round is not None:
            sql += " AND round = ?"
            args.append(round)
        rows = self._select(sql + " ORDER BY round, client_id", args)
        return [
            ClientRow(
                round=r["round"],
                client_id=r["client_id"],
                trained=bool(r["trained"]),
                num_examples=r["num_examples"],
                steps=r["steps"],
                train_loss=r["train_loss"],
                work_fraction=r["work_fraction"],
                seconds=r["seconds"],
                eval_examples=r["eval_examples"],
                eval_loss=r["eval_loss"],
                eval_accuracy=r["eval_accuracy"],
                personal_loss=r["personal_loss"],
                personal_accuracy=r["personal_accuracy"],
            )
            for r in rows
        ]

    def _select(self, sql: str, args: Sequence[Any]) -> list[sqlite3.Row]:
        cur = self._conn.cursor()
        cur.row_factory = sqlite3.Row
        return cast(list[sqlite3.Row], cur.execute(sql, list(args)).fetchall())

    @staticmethod
    def _run_row(r: sqlite3.Row) -> RunRow:
        summary = r["summary"]
        return RunRow(
            id=r["id"],
            name=r["name"],
            study=r["study"],
            status=r["status"],
            config=json.loads(r["config"]),
            code_version=r["code_version"],
            environment=json.loads(r["environment"]),
            started=r["started"],
            ended=r["ended"],
            summary=RunSummary.from_dict(json.loads(summary)) if summary else None,
            error=r["error"],
            pid=r["pid"],
        )
