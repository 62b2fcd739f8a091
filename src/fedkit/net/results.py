"""A deployment's rounds in the experiment results database (``OUT/results.sqlite``).

The coordinator records its run where ``fedkit run`` records simulations
(:class:`fedkit.experiment.results.ResultsStore`), so ``fedkit runs show`` and ``fedkit report``
work on deployments too. Per-client rows carry each worker's round-trip time (``seconds``) and its
work fraction every round. After a coordinator restart the same results run is continued (its id is
kept in the coordinator's own database).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from fedkit.evaluate import ClientEval
from fedkit.experiment.results import ClientRow, ResultsStore, RoundRow, RunSummary
from fedkit.net.experiment import Experiment
from fedkit.run import RoundRecord


def _real(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else x


class ResultsRecorder:
    """Writes each round of a deployment to the results store."""

    def __init__(self, store: ResultsStore, exp: Experiment, run_id: int | None) -> None:
        self.store = store
        if run_id is None:
            run_id = store.start_run(
                name=exp.config.name,
                study=exp.config.study,
                config={**exp.config.to_mapping(), "deploy": _deploy_mapping(exp)},
            )
        self.run_id = run_id
        self._recorded = {r.round for r in store.rounds(run_id)}

    def record(self, record: RoundRecord, evals: Sequence[ClientEval] = ()) -> None:
        """Add one round and its clients (round-trip time in ``seconds``).

        A round already recorded (an aborted round re-run after a coordinator restart) is kept
        as first recorded.
        """
        if record.round in self._recorded:
            return
        self._recorded.add(record.round)
        central = record.central
        fed = record.federated
        scored = fed is not None and not fed.is_empty()
        self.store.add_round(
            self.run_id,
            RoundRow(
                round=record.round,
                train_loss=_real(record.train_loss),
                test_loss=_real(central.loss) if central else None,
                test_accuracy=_real(central.accuracy) if central else None,
                fed_mean=fed.mean if fed is not None and scored else None,
                fed_p10=fed.p10 if fed is not None and scored else None,
                fed_var=fed.variance if fed is not None and scored else None,
                fed_min=fed.minimum if fed is not None and scored else None,
                fed_clients=None if fed is None else fed.clients,
                cohort_size=len(record.cohort),
                dropped=len(record.dropped),
                bytes_up=record.bytes_up,
                bytes_down=record.bytes_down,
                wall_seconds=record.wall_seconds,
                sim_seconds=None,
                committed=record.committed,
            ),
            self._client_rows(record, evals),
        )

    @staticmethod
    def _client_rows(record: RoundRecord, evals: Sequence[ClientEval]) -> list[ClientRow]:
        rows = {
            c.client_id: ClientRow(
                round=record.round,
                client_id=c.client_id,
                trained=True,
                num_examples=c.num_examples,
                steps=c.steps,
                train_loss=_real(c.train_loss),
                work_fraction=c.work_fraction,
                seconds=c.seconds,
            )
            for c in record.clients
        }
        for e in evals:
            base = rows.get(
                e.client_id, ClientRow(round=record.round, client_id=e.client_id, trained=False)
            )
            rows[e.client_id] = dataclasses.replace(
                base,
                eval_examples=e.result.num_examples,
                eval_loss=_real(e.result.loss),
                eval_accuracy=_real(e.result.accuracy),
            )
        return [rows[k] for k in sorted(rows)]

    def finish(self, summary: RunSummary) -> None:
        """Mark the run completed."""
        self.store.finish_run(self.run_id, summary)

    def fail(self, error: str) -> None:
        """Mark the run failed (its rounds so far are kept)."""
        self.store.fail_run(self.run_id, error)


def _deploy_mapping(exp: Experiment) -> dict[str, object]:
    return dataclasses.asdict(exp.deploy)
