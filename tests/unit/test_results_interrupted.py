"""Interrupted runs in the results database: the schema-5 status, the migration of a database
written by schema 4 (rebuilt ``runs`` table, every row kept), and the resume operations."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from fedkit.experiment.results import SCHEMA_VERSION, ResultsStore, RoundRow, results_path

# The schema-4 DDL exactly as fedkit wrote it (before ``interrupted`` existed).
SCHEMA_4 = """
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, study TEXT,
    status TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    config TEXT NOT NULL, code_version TEXT NOT NULL, environment TEXT NOT NULL,
    started TEXT NOT NULL, ended TEXT, summary TEXT, error TEXT, pid INTEGER);
CREATE TABLE rounds (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE, round INTEGER NOT NULL,
    train_loss REAL, test_loss REAL, test_accuracy REAL, fed_mean REAL, fed_wmean REAL,
    fed_personal_mean REAL, fed_p10 REAL, fed_var REAL, fed_min REAL, fed_clients INTEGER,
    cohort_size INTEGER NOT NULL, dropped INTEGER NOT NULL, bytes_up INTEGER NOT NULL,
    bytes_down INTEGER NOT NULL, wall_seconds REAL NOT NULL, sim_seconds REAL,
    committed INTEGER NOT NULL, details TEXT, PRIMARY KEY (run_id, round));
CREATE TABLE clients (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE, round INTEGER NOT NULL,
    client_id INTEGER NOT NULL, trained INTEGER NOT NULL, num_examples INTEGER, steps INTEGER,
    train_loss REAL, work_fraction REAL, seconds REAL, eval_examples INTEGER, eval_loss REAL,
    eval_accuracy REAL, personal_loss REAL, personal_accuracy REAL,
    PRIMARY KEY (run_id, round, client_id));
CREATE INDEX runs_study ON runs(study);
PRAGMA user_version = 4;
"""


SUMMARY = {
    "rounds": 1, "final_accuracy": 0.25, "best_accuracy": 0.25, "rounds_to_target": None,
    "target_accuracy": None, "wall_seconds": 1.0, "bytes_up": 1, "bytes_down": 2,
    "model_sha256": "ab",
}  # fmt: skip


def _row(r: int, acc: float | None) -> RoundRow:
    return RoundRow(
        round=r, train_loss=1.0, test_loss=None, test_accuracy=acc, fed_mean=None, fed_p10=None,
        fed_var=None, fed_min=None, fed_clients=None, cohort_size=2, dropped=0, bytes_up=10,
        bytes_down=20, wall_seconds=0.5, sim_seconds=None, committed=True,
    )  # fmt: skip


def _schema_4_database(path: Path) -> list[tuple[object, ...]]:
    """A database as fedkit 4 left it: runs 3 and 7 (ids with a gap), rounds and clients."""
    con = sqlite3.connect(path)
    con.executescript(SCHEMA_4)
    run = "INSERT INTO runs VALUES (?, ?, ?, ?, '{}', 'git:x', '{}', 't0', ?, ?, ?, ?)"
    con.execute(run, (3, "a", "s", "completed", "t1", json.dumps(SUMMARY), None, 11))
    con.execute(run, (7, "b", None, "failed", "t2", None, "KeyboardInterrupt", 12))
    for rid, r in ((3, 0), (7, 0), (7, 1)):
        con.execute(
            "INSERT INTO rounds (run_id, round, cohort_size, dropped, bytes_up, bytes_down, "
            "wall_seconds, committed, test_accuracy) VALUES (?, ?, 2, 0, 1, 2, 0.5, 1, ?)",
            (rid, r, 0.25 * (r + 1)),
        )
        con.execute(
            "INSERT INTO clients (run_id, round, client_id, trained) VALUES (?, ?, 5, 1)",
            (rid, r),
        )
    con.commit()
    rows = con.execute("SELECT * FROM runs ORDER BY id").fetchall()
    con.close()
    return rows


def test_schema_4_database_migrates_keeping_every_row(tmp_path: Path) -> None:
    path = results_path(tmp_path)
    before = _schema_4_database(path)
    with ResultsStore(path) as store:
        assert [r.id for r in store.runs()] == [3, 7]
        assert [(r.round, r.test_accuracy) for r in store.rounds(7)] == [(0, 0.25), (1, 0.5)]
        assert [c.client_id for c in store.clients(7)] == [5, 5]
        store.interrupt_run(7, "KeyboardInterrupt")  # the new status is allowed
        assert store.run(7).status == "interrupted"
        new = store.start_run(name="c", config={}, code="x", env={})
        assert new == 8  # AUTOINCREMENT continues after the highest id kept
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    after = con.execute("SELECT * FROM runs WHERE id < 8 ORDER BY id").fetchall()
    assert after[0] == before[0] and after[1][:3] == before[1][:3]
    assert con.execute("SELECT name FROM sqlite_master WHERE name = 'runs_study'").fetchone()
    assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    # the constraint is still there: an unknown status is refused
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        con.execute("UPDATE runs SET status = 'paused' WHERE id = 3")
    con.close()
    with ResultsStore(path) as store:  # opening again changes nothing
        assert [r.status for r in store.runs()] == ["completed", "interrupted", "running"]
        assert len(store.rounds(7)) == 2


def test_deleting_a_migrated_run_still_cascades(tmp_path: Path) -> None:
    path = results_path(tmp_path)
    _schema_4_database(path)
    ResultsStore(path).close()
    con = sqlite3.connect(path)
    con.execute("PRAGMA foreign_keys = ON")
    con.execute("DELETE FROM runs WHERE id = 7")
    con.commit()
    assert con.execute("SELECT COUNT(*) FROM rounds WHERE run_id = 7").fetchone()[0] == 0
    assert con.execute("SELECT COUNT(*) FROM rounds WHERE run_id = 3").fetchone()[0] == 1
    con.close()


def test_interrupted_run_is_found_reopened_and_trimmed(tmp_path: Path) -> None:
    cfg = {"run": {"rounds": 5}, "data": {"dataset": "synthetic"}}
    with ResultsStore(results_path(tmp_path)) as store:
        other = store.start_run(name="a", config={"run": {"rounds": 4}}, code="x", env={})
        rid = store.start_run(name="a", study="s", config=cfg, code="x", env={})
        for r, acc in ((0, 0.5), (1, None), (2, 0.25)):
            store.add_round(rid, _row(r, acc))
        assert store.interrupted_run(name="a", study="s", config=cfg) is None  # still running
        store.interrupt_run(other, "KeyboardInterrupt")
        store.interrupt_run(rid, "KeyboardInterrupt; resumable")
        # (rounds, last evaluated accuracy, best): round 2 scored 0.25, round 0 the best 0.5
        assert store.progress(rid) == (3, 0.25, 0.5)
        assert store.progress(other) == (0, None, None)
        # found only with the same name, study and config (key order does not matter)
        found = store.interrupted_run(name="a", study="s", config=dict(reversed(cfg.items())))
        assert found is not None and found.id == rid
        assert store.interrupted_run(name="a", study=None, config=cfg) is None
        assert store.interrupted_run(name="a", study="s", config={"run": {"rounds": 6}}) is None
        store.reopen_run(rid)
        reopened = store.run(rid)
        assert (reopened.status, reopened.ended, reopened.error) == ("running", None, None)
        with pytest.raises(ValueError, match="not interrupted"):
            store.reopen_run(rid)  # a second resumer loses
        store.drop_rounds(rid, from_round=1)
        assert [r.round for r in store.rounds(rid)] == [0]
        assert store.run(other).status == "interrupted"
