"""Resume after the last *decided* round, one record of each round, and an honest final state
(issue 18, part 3), on the coordinator's pieces without sockets: the SQLite checkpointer, the
results recorder and the run loop."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fedkit.algorithm import Algorithm, RoundInfo
from fedkit.algorithms import FedAvg
from fedkit.executor import RoundOutput
from fedkit.experiment.deploy_results import ResultsRecorder
from fedkit.experiment.results import ResultsStore
from fedkit.local import LocalTraining
from fedkit.net.results import Summary
from fedkit.net.state import CoordinatorDB, SQLiteCheckpointer
from fedkit.params import Params, model_params
from fedkit.run import RoundRecord, RunConfig, run
from fedkit.sim.serial import SerialExecutor
from tests.helpers.toy import toy_model, toy_store

ALGO = FedAvg(local=LocalTraining(lr=0.05, batch_size=8))


class AbortsRound(SerialExecutor):
    """The serial executor, except that round ``bad`` misses its quorum (nothing committed)."""

    def __init__(self, bad: int) -> None:
        super().__init__(toy_store(6), toy_model(seed=99))
        self.bad = bad
        self.executed: list[int] = []

    def execute(
        self, algorithm: Algorithm[Any, Any, Any, Any], msg: Any, cohort: Sequence[int],
        info: RoundInfo,
    ) -> RoundOutput:  # fmt: skip
        self.executed.append(info.round)
        out = super().execute(algorithm, msg, cohort, info)
        if info.round == self.bad:
            return dataclasses.replace(out, accumulator=None, clients=(), dropped=tuple(cohort))
        return out


def go(rounds: int, ckpt: SQLiteCheckpointer | None, executor: AbortsRound) -> Params:
    def decide(record: RoundRecord, params: Params) -> None:  # what the coordinator does
        if ckpt is not None and not record.committed:
            ckpt.skip(record.round + 1)

    return run(
        ALGO, executor, model_params(toy_model()),
        RunConfig(rounds=rounds, clients_per_round=3, seed=5), checkpointer=ckpt,
        callbacks=[decide],
    ).params  # fmt: skip


def test_a_skipped_round_is_decided_and_not_run_again_after_a_restart(tmp_path: Path) -> None:
    db = CoordinatorDB(tmp_path / "coordinator.db")
    first = AbortsRound(bad=1)
    go(2, SQLiteCheckpointer(db), first)  # round 0 commits, round 1 is skipped, then a "crash"
    assert db.completed_rounds() == 2  # both decided: the skip is counted
    again = AbortsRound(bad=-1)  # were round 1 re-run now, it would commit
    resumed = go(4, SQLiteCheckpointer(db), again)
    assert again.executed == [2, 3]  # resumed after the skipped round
    straight = go(4, None, AbortsRound(bad=1))
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    db.close()


def test_a_skip_before_any_commit_counts_from_the_initial_state(tmp_path: Path) -> None:
    db = CoordinatorDB(tmp_path / "coordinator.db")
    go(1, SQLiteCheckpointer(db), AbortsRound(bad=0))
    assert db.completed_rounds() == 1
    resumed = go(3, SQLiteCheckpointer(db), AbortsRound(bad=-1))
    straight = go(3, None, AbortsRound(bad=0))
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    db.close()


def record(r: int, committed: bool = True) -> RoundRecord:
    return RoundRecord(round=r, cohort=(0,), clients=(), dropped=(), committed=committed,
                       train_loss=0.5, central=None, federated=None, bytes_up=1, bytes_down=1,
                       wall_seconds=0.1, sim_seconds=None)  # fmt: skip


def recorder(out: Path) -> ResultsRecorder:
    return ResultsRecorder(out, name="x", study="x", config={})


def test_results_rounds_the_coordinator_did_not_decide_are_forgotten_on_restart(
    tmp_path: Path,
) -> None:
    rec = recorder(tmp_path)
    run_id = rec.start(None)
    for r in range(3):
        rec.record(record(r))
    rec.close()  # crash after results.sqlite got round 2, before coordinator.db committed it
    rec = recorder(tmp_path)
    assert rec.start(run_id, decided=2) == run_id
    rec.record(record(2, committed=False))  # round 2 re-run, this time skipped
    with ResultsStore.in_dir(tmp_path, create=False) as store:
        rows = store.rounds(run_id)
    assert [(r.round, r.committed) for r in rows] == [(0, True), (1, True), (2, False)]
    rec.close()


def summary(committed: int, status: str) -> Summary:
    return Summary(run_id=1, name="x", status=status, rounds=3, final_accuracy=None,
                   best_accuracy=None, rounds_to_target=None, target_accuracy=None,
                   final_loss=None, wall_seconds=1.0, bytes_up=0, bytes_down=0, model_sha256="",
                   committed_rounds=committed, start_round=0, deployment_id="d")  # fmt: skip


def test_a_run_with_no_committed_round_is_not_recorded_as_completed(tmp_path: Path) -> None:
    rec = recorder(tmp_path)
    run_id = rec.start(None)
    rec.finish(summary(0, "no_rounds_committed"))
    with ResultsStore.in_dir(tmp_path, create=False) as store:
        run_row = store.run(run_id)
    assert run_row.status == "failed" and "no round of 3 was committed" in str(run_row.error)
