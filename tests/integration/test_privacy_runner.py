"""DP-FedAvg from the experiment file: the chain checked, ε recorded per round, in the summary
and in the config (seeded noise), the target ε stopping a run that is still recorded completed;
the privacy study example validates."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from fedkit.experiment.config import ConfigError, experiment_from_mapping, load_study
from fedkit.experiment.results import ResultsStore, results_path
from fedkit.experiment.runner import run_experiment
from fedkit.privacy.accounting import PrivacyAccounting, default_delta
from fedkit.privacy.chain import find_noise
from fedkit.privacy.plan import plan_privacy
from tests.helpers.toy import SYNTHETIC_UNIFORM

ROOT = Path(__file__).resolve().parents[2]

TINY = (
    SYNTHETIC_UNIFORM
    + """
[aggregator]
name = "clip"
max_norm = 0.5

[aggregator.inner]
name = "gaussian"
noise_multiplier = 1.5
clip_norm = 0.5

[run]
rounds = 4
clients_per_round = 4
seed = 7
"""
)


def _doc(**inner: Any) -> dict[str, Any]:
    doc = tomllib.loads(TINY)
    doc["aggregator"]["inner"].update(inner)
    return doc


def _run(doc: dict[str, Any], tmp_path: Path) -> tuple[Any, ResultsStore]:
    cfg = experiment_from_mapping(doc, name="dp", study="s")
    store = ResultsStore(results_path(tmp_path))
    return run_experiment(cfg, store), store


def test_epsilon_is_recorded_every_round_in_the_summary_and_config(tmp_path: Path) -> None:
    outcome, store = _run(_doc(), tmp_path)
    assert outcome.status == "completed", outcome.error
    acc = PrivacyAccounting(
        noise_multiplier=1.5, num_clients=10, cohort=4, sampling="fixed", delta=default_delta(10)
    )
    rounds = store.rounds(outcome.run_id)
    assert [r.details["dp_epsilon"] for r in rounds] == [acc.epsilon(t) for t in range(1, 5)]  # type: ignore[index]
    assert outcome.to_json()["metrics"]["dp_epsilon"] == acc.epsilon(4)
    assert outcome.to_json()["stopped"] is None
    inner = store.run(outcome.run_id).config["aggregator"]["inner"]
    assert inner["noise_source"] == "seeded" and inner["expected_clients"] == 4


def test_target_epsilon_stops_the_run_and_it_is_recorded_completed(tmp_path: Path) -> None:
    acc = PrivacyAccounting(
        noise_multiplier=1.5, num_clients=10, cohort=4, sampling="fixed", delta=1e-3
    )
    target = (acc.epsilon(2) + acc.epsilon(3)) / 2
    outcome, store = _run(_doc(delta=1e-3, target_epsilon=target), tmp_path)
    assert outcome.status == "completed", outcome.error
    assert outcome.summary is not None and outcome.summary.rounds == 2
    assert outcome.summary.stopped is not None and "target_epsilon" in outcome.summary.stopped
    assert len(store.rounds(outcome.run_id)) == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"algorithm": {"weighting": "examples"}}, "weighting = 'uniform'"),
        ({"aggregator": {"max_norm": 1.0}}, "must equal max_norm"),
        ({"aggregator": {"inner": {"expected_clients": 5}}}, "cohort size"),
        ({"aggregator": {"inner": {"accountant": "pld"}}}, "PLD accountant"),
    ],
)
def test_invalid_dp_runs_are_refused_before_recording(
    change: dict[str, Any], message: str, tmp_path: Path
) -> None:
    doc = _doc()
    for section, keys in change.items():
        inner = keys.pop("inner", None) if isinstance(keys, dict) else None
        doc[section].update(keys)
        if inner:
            doc[section]["inner"].update(inner)
    cfg = experiment_from_mapping(doc, name="dp", study="s")
    store = ResultsStore(results_path(tmp_path))
    with pytest.raises(ConfigError, match=message):
        run_experiment(cfg, store)
    assert store.runs() == []


def test_privacy_study_example_validates_and_every_dp_arm_plans() -> None:
    study = load_study(ROOT / "examples" / "privacy_study.toml")
    names = [cfg.name for cfg in study.runs]
    assert names[:2] == ["fedavg-nonprivate", "clip-only"]
    zs = []
    for cfg in study.runs:
        assert cfg.algorithm is not None
        alg = cfg.algorithm.algorithm
        plan = plan_privacy(
            alg.aggregator,
            weighting=alg.weighting,
            num_clients=1000,
            cohort=cfg.run.cohort_size(1000),
            sampler=cfg.sampler,
            seeded=True,
        )
        noise = find_noise(alg.aggregator)
        assert (plan.accounting is None) == (noise is None)
        if plan.accounting is not None:
            assert plan.accounting.sampling == "poisson"
            zs.append(plan.accounting.noise_multiplier)
    assert zs == [0.5, 1.0, 2.0, 4.0, 8.0]


def _dpsgd_doc(executor: str = "serial") -> dict[str, Any]:
    doc = tomllib.loads(TINY)
    del doc["aggregator"]
    doc["algorithm"]["local"]["dp"] = {
        "noise_multiplier": 1.0,
        "max_grad_norm": 1.0,
        "noise_source": "seeded",
    }
    doc["run"].update(rounds=2, executor=executor)
    return doc


def test_dpsgd_run_records_the_per_client_epsilon_bound(tmp_path: Path) -> None:
    """Sample-level DP-SGD from [algorithm.local.dp]: details hold dpsgd_epsilon_max, the largest
    per-client ε over the clients' sizes after t + 1 rounds of their planned steps."""
    from fedkit.data.spec import build_federated
    from fedkit.data.store import ClientStore
    from fedkit.dpsgd import DPSGD, client_epsilon

    cfg = experiment_from_mapping(_dpsgd_doc(), name="dpsgd", study="s")
    outcome, store = _run(_dpsgd_doc(), tmp_path)
    assert outcome.status == "completed", outcome.error
    clients = ClientStore.from_federated(build_federated(cfg.data))
    dp = DPSGD(noise_multiplier=1.0, max_grad_norm=1.0, noise_source="seeded")
    sizes = {clients.num_examples(i) for i in range(clients.num_clients)}
    local = cfg.algorithm.local  # type: ignore[union-attr]
    assert local is not None
    for t, row in enumerate(store.rounds(outcome.run_id)):
        want = max(
            client_epsilon(dp, sample_rate=min(10, n) / n, steps=local.planned_steps(n) * (t + 1))
            for n in sizes
            if n
        )
        assert row.details is not None
        assert row.details["dpsgd_epsilon_max"] == pytest.approx(want, rel=1e-12)


def test_dpsgd_under_the_vectorised_executor_trains_client_by_client_as_serial(
    tmp_path: Path,
) -> None:
    shas = []
    for executor in ("serial", "vectorized"):
        cfg = experiment_from_mapping(_dpsgd_doc(executor), name="dpsgd", study="s")
        with ResultsStore(results_path(tmp_path / executor)) as store:
            outcome = run_experiment(cfg, store)
        assert outcome.status == "completed" and outcome.summary is not None
        shas.append(outcome.summary.model_sha256)
    assert shas[0] == shas[1]
