"""The coordinator's durable record in SQLite: run identity, committed rounds, round-trip times.

SQLite is the deployment's one home of the round checkpoint: :class:`SQLiteCheckpointer` is the
run loop's :class:`fedkit.checkpoint.Checkpointer` here. Each committed round is written in one
transaction: the checkpoint (:func:`fedkit.checkpoint.encode` bytes — server state incl. model and
server-optimiser state, the completed-round count and the seed, which with the round *is* the RNG
state, see :mod:`fedkit.rng`), the round's record and every worker's round-trip time, staged by
the coordinator before the run loop saves. A skipped round is committed the same way (the state
unchanged, the round counted), so the checkpoint's round count is the number of *decided*
rounds. A SIGKILL at any point leaves the previous round or the
new one. On restart the run loop loads the checkpoint from the same row, and the run id is kept so
reconnecting workers stay in the run.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from torch import Tensor

from fedkit.checkpoint import Checkpoint, RunKey, decode, encode

S = TypeVar("S")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoint (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    completed_rounds INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    committed INTEGER NOT NULL,
    cohort TEXT NOT NULL,
    accepted TEXT NOT NULL,
    dropped TEXT NOT NULL,
    train_loss REAL,
    accuracy REAL,
    bytes_up INTEGER NOT NULL,
    bytes_down INTEGER NOT NULL,
    wall_s REAL NOT NULL,
    PRIMARY KEY (round, attempt)
);
CREATE TABLE IF NOT EXISTS worker_rtt (
    round INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    client_id INTEGER NOT NULL,
    worker_id TEXT NOT NULL,
    rtt_s REAL NOT NULL,
    compute_s REAL NOT NULL,
    work_fraction REAL NOT NULL,
    bytes_up INTEGER NOT NULL
);
"""


@dataclass(frozen=True, kw_only=True)
class RttRow:
    """One worker's round trip in one round attempt."""

    round: int
    attempt: int
    client_id: int
    worker_id: str
    rtt_s: float
    compute_s: float
    work_fraction: float
    bytes_up: int


@dataclass(frozen=True, kw_only=True)
class RoundRow:
    """One round attempt as recorded."""

    round: int
    attempt: int
    committed: bool
    cohort: tuple[int, ...]
    accepted: tuple[int, ...]
    dropped: tuple[int, ...]
    train_loss: float | None
    accuracy: float | None
    bytes_up: int
    bytes_down: int
    wall_s: float


class StorageError(OSError):
    """A state file that cannot be opened, read or written; the message names the file and what
    to do."""

    @classmethod
    def of(cls, what: str, path: Path, exc: BaseException) -> StorageError:
        """The error for ``what`` at ``path`` failing with ``exc``."""
        return cls(
            f"{what} {path} cannot be used ({exc}): check that its directory is writable and has "
            "free space; a damaged database can be moved away to start afresh (its rounds are "
            "then lost)"
        )


class CoordinatorDB:
    """SQLite file of one coordinator (WAL, synchronous=FULL; one writer: the run loop).

    Raises:
        StorageError: the file cannot be created or is not a coordinator database.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StorageError.of("coordinator database", path, exc) from None
        self._pending_rtt: list[RttRow] = []
        self._pending_rounds: list[RoundRow] = []

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def run_id(self, experiment_digest: str) -> str:
        """The persistent run id (created on first use); refuses another experiment's database."""
        row = self._db.execute("SELECT value FROM meta WHERE key='digest'").fetchone()
        if row is not None and row[0] != experiment_digest:
            raise RuntimeError(
                f"{self.path} belongs to a run of another experiment file; use another --out "
                "directory or remove it"
            )
        rid = self._db.execute("SELECT value FROM meta WHERE key='run_id'").fetchone()
        if rid is not None:
            return str(rid[0])
        new = f"run-{secrets.token_hex(8)}"
        with self._tx():
            self._db.execute("INSERT INTO meta VALUES ('run_id', ?)", (new,))
            self._db.execute("INSERT INTO meta VALUES ('digest', ?)", (experiment_digest,))
        return new

    def get_meta(self, key: str) -> str | None:
        """A value of the ``meta`` table, or None."""
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Set a value of the ``meta`` table."""
        with self._tx():
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def _tx(self) -> _Tx:
        self._db.execute("BEGIN IMMEDIATE")
        return _Tx(self._db)

    def stage_rtt(self, rows: list[RttRow]) -> None:
        """Queue round-trip rows to be written with the next commit."""
        self._pending_rtt.extend(rows)

    def stage_round(self, row: RoundRow) -> None:
        """Queue an attempt record (aborted attempts too) for the next commit."""
        self._pending_rounds.append(row)

    def commit(self, *, completed_rounds: int | None, checkpoint: bytes | None) -> None:
        """Write staged rows and (when given) the checkpoint in one transaction."""
        with self._tx():
            if checkpoint is not None and completed_rounds is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO checkpoint VALUES (1, ?, ?)",
                    (completed_rounds, checkpoint),
                )
            for r in self._pending_rounds:
                self._db.execute(
                    "INSERT OR REPLACE INTO rounds VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        r.round, r.attempt, int(r.committed), json.dumps(r.cohort),
                        json.dumps(r.accepted), json.dumps(r.dropped), r.train_loss, r.accuracy,
                        r.bytes_up, r.bytes_down, r.wall_s,
                    ),
                )  # fmt: skip
            for t in self._pending_rtt:
                self._db.execute(
                    "INSERT INTO worker_rtt VALUES (?,?,?,?,?,?,?,?)",
                    (
                        t.round, t.attempt, t.client_id, t.worker_id, t.rtt_s, t.compute_s,
                        t.work_fraction, t.bytes_up,
                    ),
                )  # fmt: skip
        self._pending_rtt.clear()
        self._pending_rounds.clear()

    def completed_rounds(self) -> int:
        """Rounds committed so far (0 for a fresh run)."""
        row = self._db.execute("SELECT completed_rounds FROM checkpoint WHERE id=1").fetchone()
        return 0 if row is None else int(row[0])

    def checkpoint_bytes(self) -> bytes | None:
        """The last committed checkpoint, or None for a fresh run."""
        row = self._db.execute("SELECT data FROM checkpoint WHERE id=1").fetchone()
        return None if row is None else bytes(row[0])

    def rtt_rows(self) -> list[RttRow]:
        """Every recorded round trip."""
        cur = self._db.execute("SELECT * FROM worker_rtt ORDER BY round, attempt, client_id")
        return [
            RttRow(
                round=r[0], attempt=r[1], client_id=r[2], worker_id=r[3], rtt_s=r[4],
                compute_s=r[5], work_fraction=r[6], bytes_up=r[7],
            )
            for r in cur.fetchall()
        ]  # fmt: skip

    def round_rows(self) -> list[RoundRow]:
        """Every recorded round attempt."""
        cur = self._db.execute("SELECT * FROM rounds ORDER BY round, attempt")
        return [
            RoundRow(
                round=r[0], attempt=r[1], committed=bool(r[2]), cohort=tuple(json.loads(r[3])),
                accepted=tuple(json.loads(r[4])), dropped=tuple(json.loads(r[5])),
                train_loss=r[6], accuracy=r[7], bytes_up=r[8], bytes_down=r[9], wall_s=r[10],
            )
            for r in cur.fetchall()
        ]  # fmt: skip


class SQLiteCheckpointer:
    """The deployment's :class:`~fedkit.checkpoint.Checkpointer`: the ``checkpoint`` row.

    ``save`` commits the checkpoint together with the rows staged since the last commit (the
    round's attempts and round-trip times) in one transaction. :meth:`skip` records a round
    decided without a commit (aborted, then skipped) the same way: the unchanged state with the
    round counted, so a restarted coordinator resumes *after* it instead of running it again.
    """

    def __init__(self, db: CoordinatorDB) -> None:
        self.db = db
        self._last: tuple[Any, RunKey] | None = None  # the state the checkpoint row holds

    def save(
        self, completed_rounds: int, state: Any, client_tensors: Mapping[str, Tensor], key: RunKey
    ) -> None:
        """Commit the checkpoint and the staged rows in one transaction."""
        blob = encode(completed_rounds, state, client_tensors, key)
        self.db.commit(completed_rounds=completed_rounds, checkpoint=blob)
        self._last = (state, key)

    def skip(self, completed_rounds: int) -> None:
        """Round ``completed_rounds - 1`` was decided without changing the state (skipped):
        commit the staged rows with the same state counted past it, in one transaction.

        Raises:
            RuntimeError: before :meth:`load` or :meth:`save` (no state to count on).
        """
        if self._last is None:
            raise RuntimeError("SQLiteCheckpointer.skip() before load() or save()")
        state, key = self._last
        self.db.commit(
            completed_rounds=completed_rounds, checkpoint=encode(completed_rounds, state, {}, key)
        )

    def load(self, template: S, key: RunKey) -> Checkpoint[S] | None:
        """The committed checkpoint validated against ``template`` and ``key``, or None.

        Raises:
            fedkit.checkpoint.CheckpointError: a damaged row or another run's checkpoint (the
                row is left untouched).
        """
        raw = self.db.checkpoint_bytes()
        if raw is None:
            self._last = (template, key)  # the run loop's initial state
            return None
        restored = decode(raw, template, key, where=f"in {self.db.path} (table checkpoint)")
        self._last = (restored.state, key)
        return restored


class _Tx:
    """Commit on success, roll back on error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        return self._db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
