"""The SQLite results store: round trips, NaN handling, schema version, concurrent writers."""

from __future__ import annotations

import dataclasses
import math
import multiprocessing as mp
import sqlite3
from pathlib import Path

import pytest

from fedkit.experiment.results import (
    SCHEMA_VERSION,
    ClientRow,
    ResultsStore,
    RoundRow,
    RunSummary,
    process_identity,
    results_path,
)

ENV = {"python": "3", "torch": "x", "threads": 1}


def round_row(r: int, acc: float | None = 0.5) -> RoundRow:
    return RoundRow(
        round=r,
        train_loss=1.0 / (r + 1),
        test_loss=math.nan,
        test_accuracy=acc,
        fed_mean=None,
        fed_p10=None,
        fed_var=None,
        fed_min=None,
        fed_clients=None,
        cohort_size=3,
        dropped=1,
        bytes_up=100 * r,
        bytes_down=200 * r,
        wall_seconds=0.01,
        sim_seconds=None,
        committed=True,
    )


def summary(sha: str = "ab") -> RunSummary:
    return RunSummary(
        rounds=2,
        final_accuracy=0.5,
        best_accuracy=0.6,
        rounds_to_target=None,
        target_accuracy=0.9,
        wall_seconds=1.5,
        bytes_up=100,
        bytes_down=200,
        model_sha256=sha,
    )


def test_round_trip(tmp_path: Path) -> None:
    with ResultsStore(results_path(tmp_path)) as store:
        rid = store.start_run(
            name="a", study="s", config={"run": {"rounds": 2}}, code="git:x", env=ENV
        )
        store.add_round(
            rid,
            round_row(0),
            [
                ClientRow(
                    round=0, client_id=2, trained=True, num_examples=5, steps=1, train_loss=0.3
                ),
                ClientRow(round=0, client_id=7, trained=False, eval_examples=4, eval_accuracy=0.25),
            ],
        )
        store.add_round(rid, round_row(1, acc=None))
        assert store.run(rid).status == "running" and store.run(rid).summary is None
        store.finish_run(rid, summary())
    with ResultsStore(results_path(tmp_path), create=False) as store:
        (run,) = store.runs()
        assert run.id == rid and run.name == "a" and run.study == "s"
        assert run.status == "completed" and run.ended is not None
        assert run.config == {"run": {"rounds": 2}}
        assert run.environment == {**ENV, **process_identity()}  # + who recorded it
        assert run.code_version == "git:x" and run.summary == summary()
        rounds = store.rounds(rid)
        assert [r.round for r in rounds] == [0, 1]
        assert rounds[0].test_loss is None  # NaN is stored as NULL
        assert rounds[0] == dataclasses.replace(round_row(0), test_loss=None)
        assert rounds[1].test_accuracy is None
        clients = store.clients(rid)
        assert [(c.client_id, c.trained) for c in clients] == [(2, True), (7, False)]
        assert clients[1].eval_accuracy == 0.25 and clients[1].steps is None
        assert store.clients(rid, round=1) == []
        assert store.runs(status="completed") == [run] and store.runs(study="other") == []


def test_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no results database"):
        ResultsStore(results_path(tmp_path), create=False)
    assert not results_path(tmp_path).exists()
    with ResultsStore(results_path(tmp_path)) as store:
        with pytest.raises(KeyError, match=r"no run 3 .* runs present: none"):
            store.run(3)
        with pytest.raises(ValueError, match="status must be one of"):
            store.runs(status="done")  # type: ignore[arg-type]
    conn = sqlite3.connect(results_path(tmp_path))
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer than this fedkit"):
        ResultsStore(results_path(tmp_path))


def test_failed_run_keeps_its_rounds_and_others(tmp_path: Path) -> None:
    with ResultsStore(results_path(tmp_path)) as store:
        ok = store.start_run(name="ok", config={}, code="c", env=ENV)
        bad = store.start_run(name="bad", config={}, code="c", env=ENV)
        store.add_round(ok, round_row(0))
        store.add_round(bad, round_row(0))
        store.fail_run(bad, "RuntimeError: boom")
        store.finish_run(ok, summary())
        with pytest.raises(sqlite3.IntegrityError):  # a duplicate round is refused atomically
            store.add_round(ok, round_row(0), [ClientRow(round=0, client_id=1, trained=True)])
        assert store.clients(ok) == []
        runs = {r.name: r for r in store.runs()}
        assert runs["bad"].status == "failed" and runs["bad"].error == "RuntimeError: boom"
        assert runs["ok"].status == "completed"
        assert len(store.rounds(bad)) == 1 and len(store.rounds(ok)) == 1


ROUNDS_PER_WRITER = 40


def _writer(path: str, name: str) -> None:
    with ResultsStore(path) as store:
        rid = store.start_run(name=name, config={"w": name}, code="c", env=ENV)
        for r in range(ROUNDS_PER_WRITER):
            clients = [ClientRow(round=r, client_id=c, trained=True, steps=r) for c in range(5)]
            store.add_round(rid, round_row(r), clients)
        store.finish_run(rid, summary(name))


def test_concurrent_processes_write_different_runs(tmp_path: Path) -> None:
    path = str(results_path(tmp_path))
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, f"w{i}")) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    with ResultsStore(path, create=False) as store:
        runs = store.runs()
        assert sorted(r.name for r in runs) == ["w0", "w1", "w2"]
        assert len({r.id for r in runs}) == 3
        for r in runs:
            assert r.status == "completed" and r.summary is not None
            assert r.summary.model_sha256 == r.name
            assert [x.round for x in store.rounds(r.id)] == list(range(ROUNDS_PER_WRITER))
            assert len(store.clients(r.id)) == 5 * ROUNDS_PER_WRITER
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
