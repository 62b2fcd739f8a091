"""Attacks through the experiment file: the [attack] table reaches every client it names, the
backdoor's success is recorded per round, and the model differs from the clean run only through
the attackers."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest

from fedkit.experiment.config import ConfigError, study_from_mapping
from fedkit.experiment.report import arm_from_store
from fedkit.experiment.results import ResultsStore, results_path
from fedkit.experiment.runner import run_experiment
from tests.integration.test_runner import TINY


def _doc(**attack: object) -> dict[str, object]:
    doc = tomllib.loads(TINY)
    if attack:
        doc["attack"] = dict(attack)
    return doc


def _run(doc: dict[str, object], tmp: Path) -> tuple[str, list[dict[str, float] | None]]:
    (cfg,) = study_from_mapping(doc, default_name="a").runs
    with ResultsStore(results_path(tmp)) as store:
        out = run_experiment(cfg, store)
        assert out.status == "completed" and out.summary is not None
        rows = store.rounds(out.run_id)
        config = store.run(out.run_id).config
        last = {}
        for r in rows:
            last.update({k: v for k, v in (r.details or {}).items() if not math.isnan(v)})
        assert dict(arm_from_store(store, out.run_id).metrics) == last  # what reports show
    if "attack" in doc:
        assert config["attack"]["name"] == doc["attack"]["name"]  # type: ignore[index]
    return out.summary.model_sha256, [None if r.details is None else dict(r.details) for r in rows]


def test_backdoor_is_recorded_every_round_and_changes_the_model(tmp_path: Path) -> None:
    clean, none = _run(_doc(), tmp_path / "clean")
    # no attack metric; the last round (per-client evaluation) has only its fairness metrics
    assert none[:2] == [None, None] and none[2] is not None
    assert all(k.startswith("fairness.") for k in none[2])
    bd, details = _run(_doc(name="backdoor", fraction=0.3, patch=5, value=3.0), tmp_path / "bd")
    assert bd != clean
    accs = [d["backdoor_accuracy"] for d in details if d is not None]
    assert len(accs) == 3 and all(0.0 <= a <= 1.0 for a in accs if not math.isnan(a))
    # no attacker in the population (fraction rounds to 0): the clean model, bit for bit
    same, _ = _run(_doc(name="sign_flip", fraction=0.04), tmp_path / "none")
    assert same == clean
    flipped, _ = _run(_doc(name="sign_flip", fraction=0.5), tmp_path / "flip")
    assert flipped != clean


def test_a_backdoor_target_beyond_the_datasets_classes_is_refused_before_recording(
    tmp_path: Path,
) -> None:
    (cfg,) = study_from_mapping(
        _doc(name="backdoor", fraction=0.3, target=50), default_name="a"
    ).runs
    with ResultsStore(results_path(tmp_path)) as store:
        with pytest.raises(ConfigError, match="attack: target must be below num_classes = 10"):
            run_experiment(cfg, store)
        assert store.runs() == []


def test_attack_is_refused_outside_federated_runs() -> None:
    doc = _doc(name="sign_flip", fraction=0.1)
    doc["algorithm"] = {"name": "centralized", "local": {"lr": 0.1}}
    with pytest.raises(ConfigError, match=r"\[attack\] applies to federated runs"):
        study_from_mapping(doc, default_name="c")
