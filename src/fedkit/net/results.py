"""What a coordinator run produces beyond its own SQLite: a :class:`Summary`, and each round for a
:class:`RunRecorder`.

The coordinator keeps its durable record (checkpoint, attempts, round trips) in
:mod:`fedkit.net.state`. Recording rounds for people — the experiment results database that
``fedkit runs`` and ``fedkit report`` read — is the edge's business: the edge passes a recorder
(:class:`fedkit.experiment.deploy_results.ResultsRecorder`), so this package never imports
:mod:`fedkit.experiment`. Without one, :class:`NullRecorder` records nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from fedkit.evaluate import ClientEval
from fedkit.run import RoundRecord


@dataclass(frozen=True, kw_only=True)
class Summary:
    """The outcome of a coordinator run (the fields of ``fedkit run --json``)."""

    run_id: int
    name: str
    status: str
    """``completed`` (every round committed), ``partial`` (some rounds skipped) or
    ``no_rounds_committed``."""
    rounds: int
    final_accuracy: float | None
    best_accuracy: float | None
    rounds_to_target: int | None
    target_accuracy: float | None
    final_loss: float | None
    wall_seconds: float
    bytes_up: int
    bytes_down: int
    model_sha256: str
    committed_rounds: int
    start_round: int
    deployment_id: str
    stopped: str | None = None
    """Why the run ended before its last round (a privacy budget), else ``None``."""


class RunRecorder(Protocol):
    """Receives a coordinator's run, round by round."""

    def start(self, resume: int | None, decided: int = 0) -> int:
        """Open the run, or continue run ``resume`` after a coordinator restart; returns its id.

        The coordinator keeps the id in its own database and passes it back after a restart,
        with the number of rounds its database holds as decided: rounds from ``decided`` on
        were recorded here but not committed there (a crash in between), so they are forgotten
        and recorded again when they are re-run — the coordinator's database is the one record.
        """
        ...

    def record(self, record: RoundRecord, evals: Sequence[ClientEval]) -> None:
        """One round (aborted rounds too) with the clients' federated evaluations, if any ran."""
        ...

    def finish(self, summary: Summary) -> None:
        """The run completed."""
        ...

    def fail(self, error: str) -> None:
        """The run stopped with ``error`` (its rounds so far are kept)."""
        ...


class NullRecorder:
    """A :class:`RunRecorder` that records nothing (run id 0)."""

    def start(self, resume: int | None, decided: int = 0) -> int:
        """Nothing to open."""
        return 0 if resume is None else resume

    def record(self, record: RoundRecord, evals: Sequence[ClientEval]) -> None:
        """Ignore the round."""

    def finish(self, summary: Summary) -> None:
        """Nothing to close."""

    def fail(self, error: str) -> None:
        """Nothing to mark."""
