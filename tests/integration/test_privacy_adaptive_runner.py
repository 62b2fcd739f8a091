"""Adaptive clipping from the experiment file: `fedkit run` resolves the chain (k, seeded noise
and count noise, σ_b copied into the noise stage), records the clip norm of every round beside
ε, and the ε is that of one Gaussian at the total z (the count's release is inside it)."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import pytest

from fedkit.experiment.config import ConfigError, experiment_from_mapping
from fedkit.experiment.results import ResultsStore, results_path
from fedkit.experiment.runner import run_experiment
from fedkit.privacy.accounting import PrivacyAccounting, default_delta
from tests.helpers.toy import SYNTHETIC_UNIFORM

DOC = (
    SYNTHETIC_UNIFORM
    + """
[aggregator]
name = "adaptive_clip"
target_quantile = 0.5
learning_rate = 0.5
initial_norm = 0.05
count_noise = 2.0

[aggregator.inner]
name = "gaussian"
noise_multiplier = 1.5
clip_norm = 0.05

[run]
rounds = 4
clients_per_round = 4
seed = 7
"""
)


def _run(doc: dict[str, Any], tmp_path: Path) -> tuple[Any, ResultsStore]:
    cfg = experiment_from_mapping(doc, name="adaptive", study="s")
    store = ResultsStore(results_path(tmp_path))
    return run_experiment(cfg, store), store


def test_run_records_the_clip_norm_and_epsilon_at_the_total_z(tmp_path: Path) -> None:
    out, store = _run(tomllib.loads(DOC), tmp_path)
    assert out.status == "completed", out
    (run,) = store.runs()
    rows = store.rounds(run.id)
    clips = [r.details["agg_clip_norm"] for r in rows if r.details is not None]
    assert clips[0] == 0.05 and len(clips) == 4 and len(set(clips)) == 4  # C_t moved
    acc = PrivacyAccounting(
        noise_multiplier=1.5, num_clients=10, cohort=4, sampling="fixed",
        delta=default_delta(10),
    )  # fmt: skip
    for r in rows:
        assert r.details is not None
        assert r.details["dp_epsilon"] == pytest.approx(acc.epsilon(r.round + 1), rel=1e-12)
    inner = run.config["aggregator"]["inner"]
    assert run.config["aggregator"]["noise_source"] == "seeded"
    assert inner["noise_source"] == "seeded" and inner["count_noise"] == 2.0
    assert run.config["aggregator"]["expected_clients"] == 4
    # the run is reproducible: same seed, same clip norms (the count noise is seeded)
    _, again = _run(tomllib.loads(DOC), tmp_path / "again")
    (run2,) = again.runs()
    clips2 = [r.details["agg_clip_norm"] for r in again.rounds(run2.id) if r.details is not None]
    assert clips2 == clips
    assert math.isfinite(clips[-1])


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("count_noise", 0.5, "count_noise"), ("initial_norm", 0.1, "initial_norm")],
)
def test_the_runner_refuses_an_adaptive_chain_without_the_guarantee(
    tmp_path: Path, key: str, value: float, message: str
) -> None:
    doc = tomllib.loads(DOC)
    doc["aggregator"][key] = value
    with pytest.raises(ConfigError, match=message):
        _run(doc, tmp_path)
