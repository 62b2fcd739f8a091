"""Experiments: TOML experiment files (``config``), the runner, the results database and the CLI.

Config is parsed and validated at the edge (:mod:`fedkit.experiment.config`); the runner
(:mod:`fedkit.experiment.runner`) turns a validated config into core objects and records the run in
the results database (:mod:`fedkit.experiment.results`).
"""

from __future__ import annotations

from fedkit.experiment.results import (
    ClientRow,
    ResultsStore,
    RoundRow,
    RunRow,
    RunSummary,
    results_path,
)

__all__ = ["ClientRow", "ResultsStore", "RoundRow", "RunRow", "RunSummary", "results_path"]
