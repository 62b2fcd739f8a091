"""Secure aggregation from the experiment file (``[aggregator] name = "secagg"``): the run
equals the same run without it (within the fixed-point error), under DP-FedAvg with
distributed noise too, records ``randomness = "seeded"``, counts the masked bytes, and refuses
bad settings before recording."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from fedkit.experiment.config import ConfigError, experiment_from_mapping
from fedkit.experiment.results import ResultsStore, results_path
from fedkit.experiment.runner import run_experiment
from tests.helpers.toy import SYNTHETIC_UNIFORM

TINY = (
    SYNTHETIC_UNIFORM
    + """
[run]
rounds = 3
clients_per_round = 5
seed = 7
"""
)

SECAGG = {"name": "secagg", "bits": 48, "clip_range": 4.0, "neighbours": 4}
DP = {"name": "gaussian", "noise_multiplier": 0.5, "clip_norm": 0.5, "distributed": True}


def _run(aggregator: dict[str, Any] | None, tmp_path: Path, name: str) -> tuple[Any, Any]:
    doc = tomllib.loads(TINY)
    if aggregator is not None:
        doc["aggregator"] = copy.deepcopy(aggregator)
    cfg = experiment_from_mapping(doc, name=name, study="s")
    store = ResultsStore(results_path(tmp_path / name))
    outcome = run_experiment(cfg, store)
    assert outcome.status == "completed", outcome.error
    return store.rounds(outcome.run_id), store.run(outcome.run_id).config


def test_secagg_run_equals_the_plain_run_and_records_its_randomness(tmp_path: Path) -> None:
    plain, _ = _run(None, tmp_path, "plain")
    secure, config = _run(SECAGG, tmp_path, "secure")
    assert config["aggregator"]["name"] == "secagg"
    assert config["aggregator"]["randomness"] == "seeded"
    assert config["aggregator"]["neighbours"] == 4
    for a, b in zip(plain, secure, strict=True):
        assert b.committed
        assert b.test_loss == pytest.approx(a.test_loss, abs=1e-6)
        assert b.test_accuracy == pytest.approx(a.test_accuracy, abs=1e-9)
        # the masked update is int64 words (8 bytes each) plus the masked weight, id, key id
        assert b.bytes_up > a.bytes_up


def test_distributed_dp_under_secagg_equals_distributed_dp(tmp_path: Path) -> None:
    """clip → gaussian(distributed) → secagg → mean against clip → gaussian(distributed) →
    mean: the same seeded noise shares, the same ε every round, the same model within the
    fixed-point error."""
    dp_plain = {"name": "clip", "max_norm": 0.5, "inner": DP}
    dp_secure = {"name": "clip", "max_norm": 0.5, "inner": {**DP, "inner": SECAGG}}
    a_rounds, _ = _run(dp_plain, tmp_path, "dp")
    b_rounds, config = _run(dp_secure, tmp_path, "dp-secagg")
    assert config["aggregator"]["inner"]["inner"]["randomness"] == "seeded"
    assert config["aggregator"]["inner"]["noise_source"] == "seeded"
    for a, b in zip(a_rounds, b_rounds, strict=True):
        assert b.details["dp_epsilon"] == a.details["dp_epsilon"]
        assert b.test_loss == pytest.approx(a.test_loss, abs=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"neighbours": 3}, "even integer"),
        ({"bits": 70}, "bits must be in 16..62"),
        ({"threshold": 1.5}, "threshold"),
        ({"inner": {"name": "median"}}, "plain mean"),
    ],
)
def test_bad_secagg_settings_are_refused_before_recording(
    change: dict[str, Any], message: str, tmp_path: Path
) -> None:
    doc = tomllib.loads(TINY)
    doc["aggregator"] = {**SECAGG, **change}
    with pytest.raises(ConfigError, match=message):
        cfg = experiment_from_mapping(doc, name="bad", study="s")
        run_experiment(cfg, ResultsStore(results_path(tmp_path)))
