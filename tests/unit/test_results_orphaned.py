"""Runs whose process died without a word (issue 19, item 6): a ``running`` run of this host
whose process is gone, or whose pid now belongs to a later process, is marked ``interrupted``
by :meth:`ResultsStore.mark_orphaned`; live runs, finished runs and other hosts' runs are not."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit.experiment.results import (
    ResultsStore,
    RunSummary,
    process_alive,
    process_identity,
    results_path,
)


def _dead_pid() -> int:
    """The pid of a child that has exited and been reaped (no process has it for now)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _set(db: Path, run_id: int, *, pid: int, **env: object) -> None:
    """Rewrite a run's pid and environment keys, as another process would have recorded them."""
    con = sqlite3.connect(db)
    try:
        (old,) = con.execute("SELECT environment FROM runs WHERE id = ?", (run_id,)).fetchone()
        new = {**json.loads(old), **env}
        con.execute(
            "UPDATE runs SET pid = ?, environment = ? WHERE id = ?",
            (pid, json.dumps(new), run_id),
        )
        con.commit()
    finally:
        con.close()


def test_a_run_records_its_host_and_process_start(tmp_path: Path) -> None:
    with ResultsStore(results_path(tmp_path)) as store:
        rid = store.start_run(name="a", config={}, code="c", env={"python": "3"})
        row = store.run(rid)
    assert row.pid == os.getpid()
    assert row.environment["python"] == "3"  # the caller's environment is kept
    assert row.environment["host"] == socket.gethostname()
    assert row.environment["process_start"] == process_identity()["process_start"]
    assert row.environment["process_start"] is not None  # Linux: /proc/self/stat


def test_dead_and_reused_pids_are_marked_live_and_foreign_runs_are_not(tmp_path: Path) -> None:
    db = results_path(tmp_path)
    host = socket.gethostname()
    me = process_identity()["process_start"]
    with ResultsStore(db) as store:
        ids = [store.start_run(name=n, config={}, code="c", env={}) for n in "abcdef"]
        done = ids[5]
        store.finish_run(
            done,
            RunSummary(
                rounds=1, final_accuracy=None, best_accuracy=None, rounds_to_target=None,
                target_accuracy=None, wall_seconds=0.0, bytes_up=0, bytes_down=0,
                model_sha256="x",
            ),
        )  # fmt: skip
    dead = _dead_pid()
    _set(db, ids[0], pid=dead, host=host)  # SIGKILLed: no such process
    _set(db, ids[1], pid=os.getpid(), host=host, process_start="1")  # pid reused by us
    # ids[2]: this (live) process, as recorded
    _set(db, ids[3], pid=dead, host=host + "-elsewhere")  # another machine: cannot tell
    _set(db, ids[4], pid=dead, host=None)  # recorded before hosts were: left alone
    _set(db, done, pid=dead, host=host)  # finished: never touched
    with ResultsStore(db, create=False) as store:
        assert store.mark_orphaned() == [ids[0], ids[1]]
        assert store.mark_orphaned() == []  # idempotent
        status = {r.id: r.status for r in store.runs()}
        assert [status[i] for i in ids] == [
            "interrupted", "interrupted", "running", "running", "running", "completed"
        ]  # fmt: skip
        err = str(store.run(ids[0]).error)
        assert f"process {dead} on {host}" in err and "resume" in err
        # an orphan is resumable like any interrupted run
        assert store.interrupted_run(name="a", study=None, config={}) is not None
        store.reopen_run(ids[0])
        again = store.run(ids[0])
        assert again.status == "running" and again.pid == os.getpid()
        assert again.environment["process_start"] == me
        assert store.mark_orphaned() == []  # now held by this live process


@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=0, max_value=10**9).map(str))
def test_own_pid_is_alive_only_with_its_own_start_time(start: str) -> None:
    me = process_identity()["process_start"]
    assert process_alive(os.getpid(), start) == (start == me)
    assert process_alive(os.getpid(), None)  # unknown start: the pid exists


def test_a_reaped_child_is_not_alive() -> None:
    assert not process_alive(_dead_pid(), None)


def test_a_restarted_coordinator_takes_its_run_back(tmp_path: Path) -> None:
    """The coordinator resumes its run by id: the row becomes this process's again (status
    ``running``, this pid), so a later ``fedkit runs list`` does not mark a live run."""
    from fedkit.experiment.deploy_results import ResultsRecorder

    rec = ResultsRecorder(tmp_path, name="x", study="x", config={})
    rid = rec.start(None)
    rec.close()
    _set(results_path(tmp_path), rid, pid=_dead_pid())  # the coordinator was SIGKILLed
    for reaped_first in (False, True):  # found still `running`, or already marked interrupted
        if reaped_first:
            _set(results_path(tmp_path), rid, pid=_dead_pid())
            with ResultsStore(results_path(tmp_path), create=False) as store:
                assert store.mark_orphaned() == [rid]
        rec = ResultsRecorder(tmp_path, name="x", study="x", config={})
        assert rec.start(rid, decided=0) == rid
        rec.close()
        with ResultsStore(results_path(tmp_path), create=False) as store:
            assert store.mark_orphaned() == []
            row = store.run(rid)
        assert (row.status, row.pid) == ("running", os.getpid())
