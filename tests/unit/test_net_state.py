"""The coordinator's SQLite record: persistent run id, atomic round commits, reload after a
restart (the checkpointer over this record is tested in test_checkpoint.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fedkit.net.state import CoordinatorDB, RoundRow, RttRow


def rtt(r: int, c: int) -> RttRow:
    return RttRow(
        round=r,
        attempt=0,
        client_id=c,
        worker_id=f"w{c}",
        rtt_s=0.5,
        compute_s=0.4,
        work_fraction=1.0,
        bytes_up=10,
    )


def row(r: int, committed: bool = True) -> RoundRow:
    return RoundRow(
        round=r,
        attempt=0,
        committed=committed,
        cohort=(0, 1),
        accepted=(0, 1),
        dropped=(),
        train_loss=1.0,
        accuracy=0.5,
        bytes_up=20,
        bytes_down=20,
        wall_s=1.0,
    )


def test_run_id_persists_and_other_experiment_is_refused(tmp_path: Path) -> None:
    db = CoordinatorDB(tmp_path / "c.db")
    rid = db.run_id("digest-a")
    db.close()
    db = CoordinatorDB(tmp_path / "c.db")
    assert db.run_id("digest-a") == rid
    with pytest.raises(RuntimeError, match="another experiment"):
        db.run_id("digest-b")


def test_commit_and_reload(tmp_path: Path) -> None:
    db = CoordinatorDB(tmp_path / "c.db")
    assert db.checkpoint_bytes() is None and db.completed_rounds() == 0
    db.stage_rtt([rtt(0, 0), rtt(0, 1)])
    db.stage_round(row(0))
    db.commit(completed_rounds=1, checkpoint=b"state-after-round-0")
    db.stage_round(row(1, committed=False))
    db.commit(completed_rounds=None, checkpoint=None)  # an aborted round keeps the checkpoint
    db.close()
    db = CoordinatorDB(tmp_path / "c.db")  # after a restart: the row is the checkpoint's home
    assert db.completed_rounds() == 1 and db.checkpoint_bytes() == b"state-after-round-0"
    assert [(r.round, r.committed) for r in db.round_rows()] == [(0, True), (1, False)]
    assert [(t.round, t.client_id) for t in db.rtt_rows()] == [(0, 0), (0, 1)]
    assert sorted(p.name for p in tmp_path.iterdir() if "checkpoint" in p.name) == []  # no file


def test_failed_commit_leaves_previous_round(tmp_path: Path) -> None:
    db = CoordinatorDB(tmp_path / "c.db")
    db.stage_round(row(0))
    db.commit(completed_rounds=1, checkpoint=b"r0")
    db.stage_rtt([rtt(1, 0)])
    db.stage_round(row(1))
    db._db.execute(
        "CREATE TRIGGER boom BEFORE INSERT ON worker_rtt BEGIN SELECT RAISE(ABORT, 'x'); END"
    )
    with pytest.raises(sqlite3.IntegrityError):
        db.commit(completed_rounds=2, checkpoint=b"r1")
    assert db.completed_rounds() == 1
    assert [r.round for r in db.round_rows()] == [0]
