"""Samplers from the experiment file: the runner hands the run loop the clients' sizes and
the system model's availability (fedkit.samplers.population), so availability-aware selection
loses no selected client to unavailability while uniform selection does, and the importance
aggregate runs with the size-proportional sampler."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from fedkit.experiment.config import experiment_from_mapping
from fedkit.experiment.results import ResultsStore, results_path
from fedkit.experiment.runner import RunOutcome, run_experiment
from tests.helpers.toy import SYNTHETIC_UNIFORM

RUN = """
[run]
rounds = 4
clients_per_round = 4
seed = 3
"""


def _run(extra: str, tmp_path: Path) -> tuple[RunOutcome, ResultsStore]:
    doc: dict[str, Any] = tomllib.loads(SYNTHETIC_UNIFORM + RUN + extra)
    cfg = experiment_from_mapping(doc, name="s", study="s")
    store = ResultsStore(results_path(tmp_path))
    return run_experiment(cfg, store), store


SYSTEM = """
[system]
availability = 0.5
"""


def test_availability_sampler_loses_no_client_to_unavailability(tmp_path: Path) -> None:
    aware, store = _run('[sampler]\nname = "availability"\n' + SYSTEM, tmp_path / "a")
    assert aware.status == "completed", aware.error
    rows = store.rounds(aware.run_id)
    assert [r.dropped for r in rows] == [0, 0, 0, 0]
    uniform, ustore = _run(SYSTEM, tmp_path / "u")
    assert uniform.status == "completed", uniform.error
    # availability 0.5 over 4 rounds of 4: P(no unavailable client at all) = 2^-16
    assert sum(r.dropped for r in ustore.rounds(uniform.run_id)) > 0


def test_availability_sampler_without_a_system_model_fails_clearly(tmp_path: Path) -> None:
    out, _ = _run('[sampler]\nname = "availability"\n', tmp_path)
    assert out.status == "failed" and out.error is not None
    assert "system model" in out.error


@pytest.mark.parametrize(
    "extra",
    [
        '[sampler]\nname = "proportional"\n[aggregator]\nname = "importance"\n',
        '[sampler]\nname = "power_of_choice"\nd = 8\n',
    ],
)
def test_informed_samplers_run_from_the_file(extra: str, tmp_path: Path) -> None:
    out, store = _run(extra, tmp_path)
    assert out.status == "completed", out.error
    assert [r.cohort_size for r in store.rounds(out.run_id)] == [4, 4, 4, 4]
