"""A deployment's rounds in the experiment results database (``OUT/results.sqlite``).

:class:`ResultsRecorder` is the edge's :class:`fedkit.net.results.RunRecorder`: the coordinator
records its run where ``fedkit run`` records simulations
(:class:`fedkit.experiment.results.ResultsStore`), so ``fedkit runs show`` and ``fedkit report``
work on deployments too. Per-client rows carry each worker's round-trip time (``seconds``) and its
work fraction every round. After a coordinator restart the same results run is continued (its id is
kept in the coordinator's own database).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

from fedkit.evaluate import ClientEval
from fedkit.experiment.records import client_rows, round_row
from fedkit.experiment.results import ResultsStore, RunSummary, results_path
from fedkit.net.results import Summary
from fedkit.net.state import StorageError
from fedkit.run import RoundRecord


def forget_rounds(out_dir: Path, run_id: int, first: int) -> None:
    """Delete run ``run_id``'s round and client rows from round ``first`` on, in one transaction
    (rounds recorded here that the coordinator's database never committed)."""
    path = results_path(out_dir)
    if not path.exists():
        return
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("DELETE FROM clients WHERE run_id = ? AND round >= ?", (run_id, first))
        con.execute("DELETE FROM rounds WHERE run_id = ? AND round >= ?", (run_id, first))
        con.execute("COMMIT")
    finally:
        con.close()


class ResultsRecorder:
    """Writes each round of a deployment to the results store in ``out_dir``.

    Args:
        out_dir: The coordinator's output directory (``results.sqlite`` goes there).
        name: The run's name.
        study: Its study.
        config: The validated experiment file, ``[deploy]`` included (stored with the run).
    """

    def __init__(self, out_dir: Path, *, name: str, study: str, config: Mapping[str, object]):
        self.out_dir = out_dir
        self.name = name
        self.study = study
        self.config = dict(config)
        self._store: ResultsStore | None = None
        self.run_id = 0
        self._recorded: set[int] = set()

    @property
    def store(self) -> ResultsStore:
        """The open results store (after :meth:`start`)."""
        if self._store is None:
            raise RuntimeError("ResultsRecorder.start() was not called")
        return self._store

    def start(self, resume: int | None, decided: int = 0) -> int:
        """Open the store and start a run (or continue run ``resume``, forgetting its rounds
        from ``decided`` on: the coordinator's database did not commit them); returns its id."""
        try:
            if resume is not None:
                forget_rounds(self.out_dir, resume, decided)
            self._store = ResultsStore.in_dir(self.out_dir)
            if resume is None:
                resume = self._store.start_run(name=self.name, study=self.study, config=self.config)
            else:  # the run is this process's now: not an orphan of the coordinator that died
                self._store.mark_orphaned()
                if self._store.run(resume).status == "interrupted":
                    self._store.reopen_run(resume)
            self.run_id = resume
            self._recorded = {r.round for r in self._store.rounds(resume)}
        except (sqlite3.Error, OSError) as exc:
            raise StorageError.of("results database", results_path(self.out_dir), exc) from None
        return resume

    def record(self, record: RoundRecord, evals: Sequence[ClientEval] = ()) -> None:
        """Add one round and its clients (round-trip time in ``seconds``).

        A round recorded before is left as it is (it cannot be: :meth:`start` forgets every
        round the coordinator's database did not decide).
        """
        if record.round in self._recorded:
            return
        self._recorded.add(record.round)
        row = dataclasses.replace(round_row(record, record.federated, evals), sim_seconds=None)
        self.store.add_round(self.run_id, row, client_rows(record, evals))

    def finish(self, summary: Summary) -> None:
        """Mark the run completed (failed when no round was committed) and close the store."""
        if summary.committed_rounds == 0:
            self.fail(f"no round of {summary.rounds} was committed (every round was skipped)")
            return
        self.store.finish_run(
            self.run_id,
            RunSummary(
                rounds=summary.rounds,
                final_accuracy=summary.final_accuracy,
                best_accuracy=summary.best_accuracy,
                rounds_to_target=summary.rounds_to_target,
                target_accuracy=summary.target_accuracy,
                wall_seconds=summary.wall_seconds,
                bytes_up=summary.bytes_up,
                bytes_down=summary.bytes_down,
                model_sha256=summary.model_sha256,
                final_loss=summary.final_loss,
                stopped=summary.stopped,
            ),
        )
        self.close()

    def fail(self, error: str) -> None:
        """Mark the run failed (its rounds so far are kept) and close the store."""
        if self._store is not None:
            self._store.fail_run(self.run_id, error)
        self.close()

    def close(self) -> None:
        """Close the store (idempotent)."""
        if self._store is not None:
            self._store.close()
            self._store = None
