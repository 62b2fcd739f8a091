"""`[system]` (system heterogeneity) and `[deploy]` (round policy) sections in experiment files."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedkit.experiment.config import ConfigError, study_from_mapping
from fedkit.experiment.results import ResultsStore
from fedkit.experiment.runner import run_experiment
from fedkit.sim.system import SystemModel
from tests.integration.test_runner import tiny


def _one(doc: dict[str, object]):  # type: ignore[no-untyped-def]
    (cfg,) = study_from_mapping(doc, default_name="t").runs
    return cfg


def test_system_section_is_validated_and_recorded(tmp_path: Path) -> None:
    doc = tiny(
        system={
            "stragglers": 0.5,
            "straggler_work": [0.2, 1.0],
            "policy": "drop",
            "compute_speed": {"dist": "lognormal", "median": 1.0, "sigma": 0.5},
        }
    )
    cfg = _one(doc)
    assert isinstance(cfg.system, SystemModel) and cfg.system.stragglers == 0.5
    with ResultsStore.in_dir(tmp_path) as store:
        out = run_experiment(cfg, store)
        rounds = store.rounds(out.run_id)
        recorded = store.run(out.run_id).config
    assert out.status == "completed"
    assert all(r.sim_seconds is not None and r.sim_seconds > 0 for r in rounds)
    assert recorded["system"]["stragglers"] == 0.5


def test_system_changes_who_is_aggregated(tmp_path: Path) -> None:
    with ResultsStore.in_dir(tmp_path) as store:
        plain = run_experiment(_one(tiny()), store)
        drop = run_experiment(_one(tiny(system={"stragglers": 0.9, "policy": "drop"})), store)
        assert plain.summary.model_sha256 != drop.summary.model_sha256
        trained = [c for c in store.clients(drop.run_id) if c.trained]
        assert len(trained) < 3 * 4  # 90% stragglers dropped from 4-client cohorts


@pytest.mark.parametrize(
    ("system", "match"),
    [
        ({"stragglers": 1.5}, "stragglers"),
        ({"policy": "wait"}, "policy"),
        ({"warp_speed": 2}, r"unknown key\(s\) \['warp_speed'\]"),
    ],
)
def test_bad_system_values_fail_before_anything_runs(system: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _one(tiny(system=system))


def test_deploy_section_is_accepted_by_fedkit_run_and_validated() -> None:
    assert _one(tiny(deploy={"quorum": 0.5, "over_selection": 1.2})).algorithm is not None
    with pytest.raises(ConfigError, match=r"deploy.*unknown key\(s\) \['quorom'\]"):
        _one(tiny(deploy={"quorom": 0.5}))
    with pytest.raises(ConfigError, match=r"deploy\.quorum"):
        _one(tiny(deploy={"quorum": 2.0}))
