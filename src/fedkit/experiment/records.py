"""A run loop's :class:`~fedkit.run.RoundRecord` as rows of the results database.

One translation for every writer (the simulation runner and the deployment's recorder), so a
round is stored the same way wherever it ran: the round's row (training loss, centralised and
federated evaluation — global and personal — bytes, time) and one row per client that trained or
was evaluated. NaN and infinities become ``None`` (SQLite has no NaN). A round with per-client
evaluation also stores its fairness metrics (:func:`fedkit.fairness.fairness_metrics`: variance,
worst 10%, Jain's index, p10) in its ``details`` beside the run loop's probe metrics.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from fedkit.evaluate import ClientEval, Distribution
from fedkit.experiment.results import ClientRow, RoundRow
from fedkit.fairness import fairness_metrics
from fedkit.run import RoundRecord


def finite(x: float | None) -> float | None:
    """``x``, or ``None`` when it is missing, NaN or infinite."""
    return None if x is None or not math.isfinite(x) else x


def round_row(
    record: RoundRecord, fed: Distribution | None, evals: Sequence[ClientEval] = ()
) -> RoundRow:
    """The round's row; ``fed`` is its federated evaluation summary (``None`` when none ran) and
    ``evals`` its per-client results, whose fairness metrics join the probes' in ``details``."""
    central = record.central
    scored = fed is not None and not fed.is_empty()
    details = {**record.metrics, **fairness_metrics(evals)}
    return RoundRow(
        round=record.round,
        train_loss=finite(record.train_loss),
        test_loss=finite(central.loss) if central else None,
        test_accuracy=finite(central.accuracy) if central else None,
        fed_mean=fed.mean if fed is not None and scored else None,
        fed_wmean=fed.weighted_mean if fed is not None and scored else None,
        fed_personal_mean=finite(fed.personal_mean) if fed is not None else None,
        fed_p10=fed.p10 if fed is not None and scored else None,
        fed_var=fed.variance if fed is not None and scored else None,
        fed_min=fed.minimum if fed is not None and scored else None,
        fed_clients=None if fed is None else fed.clients,
        cohort_size=len(record.cohort) if record.cohort else len(record.clients),
        dropped=len(record.dropped),
        bytes_up=record.bytes_up,
        bytes_down=record.bytes_down,
        wall_seconds=record.wall_seconds,
        sim_seconds=record.sim_seconds,
        committed=record.committed,
        details=details or None,
    )


def client_rows(record: RoundRecord, evals: Sequence[ClientEval]) -> list[ClientRow]:
    """One row per client that trained or was evaluated this round, in client order."""
    rows = {
        c.client_id: ClientRow(
            round=record.round,
            client_id=c.client_id,
            trained=True,
            num_examples=c.num_examples,
            steps=c.steps,
            train_loss=finite(c.train_loss),
            work_fraction=c.work_fraction,
            seconds=c.seconds,
        )
        for c in record.clients
    }
    for e in evals:
        base = rows.get(
            e.client_id, ClientRow(round=record.round, client_id=e.client_id, trained=False)
        )
        own = e.personal
        rows[e.client_id] = dataclasses.replace(
            base,
            eval_examples=e.result.num_examples,
            eval_loss=finite(e.result.loss),
            eval_accuracy=finite(e.result.accuracy),
            personal_loss=None if own is None else finite(own.loss),
            personal_accuracy=None if own is None else finite(own.accuracy),
        )
    return [rows[k] for k in sorted(rows)]
