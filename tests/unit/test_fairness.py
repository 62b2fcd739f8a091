"""Fairness metrics of per-client accuracy (Li et al. 2020, q-FFL; Jain et al. 1984), stored per
round in the results database's ``details`` and in ``fedkit run --json``'s summary metrics."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedkit.evaluate import ClientEval, EvalResult
from fedkit.experiment.config import study_from_mapping
from fedkit.experiment.records import round_row
from fedkit.experiment.results import ResultsStore, results_path
from fedkit.experiment.runner import run_experiment
from fedkit.fairness import fairness_metrics, jain_index, worst_fraction_mean
from fedkit.run import RoundRecord


def _evals(acc: list[float], own: list[float] | None = None, n: int = 10) -> list[ClientEval]:
    return [
        ClientEval(
            client_id=i,
            result=EvalResult(loss=1.0, accuracy=a, num_examples=n),
            personal=None if own is None else EvalResult(loss=1.0, accuracy=own[i], num_examples=n),
        )
        for i, a in enumerate(acc)
    ]


def test_fairness_metrics_by_hand() -> None:
    # a = (0.5, 1.0, 0.75, 0.25): mean 0.625; deviations ∓0.125, ±0.375 →
    # variance = (0.015625 + 0.140625 + 0.015625 + 0.140625) / 4 = 0.078125;
    # Jain = 2.5² / (4 · (0.25 + 1 + 0.5625 + 0.0625)) = 6.25 / 7.5 = 0.83333;
    # worst 10% = mean of the ceil(0.4) = 1 lowest = 0.25;
    # p10 at position 0.1 · 3 = 0.3 of (0.25, 0.5, ...) = 0.25 + 0.3 · 0.25 = 0.325.
    m = fairness_metrics(_evals([0.5, 1.0, 0.75, 0.25]))
    assert m == pytest.approx(
        {
            "fairness.variance": 0.078125,
            "fairness.jain": 6.25 / 7.5,
            "fairness.worst10": 0.25,
            "fairness.p10": 0.325,
        }
    )


def test_personal_models_get_their_own_metrics_and_unscored_clients_are_left_out() -> None:
    # personal (0.8, 0.8, 0.8, 0.4) → mean 0.7, variance 3 · 0.01 + 0.09 = 0.12 / 4 = 0.03;
    # Jain = 2.8² / (4 · (3 · 0.64 + 0.16)) = 7.84 / 8.32 = 0.94231
    evals = _evals([0.5, 1.0, 0.75, 0.25], own=[0.8, 0.8, 0.8, 0.4])
    evals.append(ClientEval(client_id=9, result=EvalResult(1.0, 0.0, 0)))  # no test examples
    m = fairness_metrics(evals)
    assert m["fairness.variance"] == pytest.approx(0.078125)
    assert m["fairness.personal.variance"] == pytest.approx(0.03)
    assert m["fairness.personal.jain"] == pytest.approx(7.84 / 8.32)
    assert m["fairness.personal.worst10"] == pytest.approx(0.4)
    assert fairness_metrics([]) == {}


def test_worst_ten_percent_of_twenty_clients_is_the_two_lowest() -> None:
    acc = [0.9] * 18 + [0.1, 0.3]
    assert worst_fraction_mean(acc) == pytest.approx(0.2)
    assert fairness_metrics(_evals(acc))["fairness.worst10"] == pytest.approx(0.2)


# accuracies: 0 or at least 1e-6 (a scaled subnormal would underflow to 0, where Jain is NaN)
ACCURACY = st.one_of(st.just(0.0), st.floats(1e-6, 1.0))


@given(st.lists(ACCURACY, min_size=1, max_size=40), st.floats(0.01, 100.0))
def test_jain_lies_between_one_over_n_and_one_and_ignores_scale(xs: list[float], c: float) -> None:
    j = jain_index(xs)
    if max(xs) == 0:
        assert math.isnan(j)
        return
    n = len(xs)
    assert 1 / n - 1e-9 <= j <= 1 + 1e-9
    assert jain_index([c * x for x in xs]) == pytest.approx(j, rel=1e-9)
    assert jain_index(xs[::-1]) == j  # exactly: results arrive in any order
    m = fairness_metrics(_evals(xs))
    assert m["fairness.worst10"] <= sum(xs) / n + 1e-12
    assert m["fairness.variance"] >= 0


def test_equal_clients_are_perfectly_fair() -> None:
    m = fairness_metrics(_evals([0.6] * 7))
    assert m["fairness.jain"] == pytest.approx(1.0) and m["fairness.variance"] == pytest.approx(0)


def test_round_row_stores_them_beside_the_probe_metrics() -> None:
    record = RoundRecord(
        round=0,
        cohort=(0,),
        clients=(),
        dropped=(),
        committed=True,
        train_loss=1.0,
        central=None,
        federated=None,
        bytes_up=0,
        bytes_down=0,
        wall_seconds=0.0,
        sim_seconds=None,
        metrics={"probe": 1.5},
    )
    row = round_row(record, None, _evals([0.5, 1.0]))
    assert row.details is not None
    assert row.details["probe"] == 1.5 and row.details["fairness.jain"] == pytest.approx(0.9)
    # without per-client evaluation, the probes only
    assert round_row(record, None).details == {"probe": 1.5}


TINY = """
[data]
dataset = "synthetic"
partition = "natural"
alpha = 1.0
beta = 1.0
[data.options]
num_users = 6

[model]
name = "logreg"

[algorithm]
name = "fedavg"

[algorithm.local]
epochs = 1
batch_size = 10
lr = 0.05

[run]
rounds = 2
clients_per_round = 3
seed = 1
federated_eval_every = 1
"""


def test_a_run_with_per_client_evaluation_stores_fairness_every_round(tmp_path: Path) -> None:
    (cfg,) = study_from_mapping(tomllib.loads(TINY), default_name="tiny").runs
    with ResultsStore(results_path(tmp_path)) as store:
        outcome = run_experiment(cfg, store)
        rounds = store.rounds(outcome.run_id)
        clients = store.clients(outcome.run_id)
    assert len(rounds) == 2
    for r in rounds:
        assert r.details is not None
        acc = [
            c.eval_accuracy for c in clients if c.round == r.round and c.eval_accuracy is not None
        ]
        assert len(acc) == 6
        want = fairness_metrics(_evals(acc))
        assert {k: r.details[k] for k in want} == pytest.approx(want)
        assert r.fed_var == pytest.approx(r.details["fairness.variance"])
    # --json prints the summary: the last round's values are among its metrics
    assert outcome.summary is not None and outcome.summary.metrics is not None
    last = rounds[-1].details
    assert last is not None
    assert outcome.summary.metrics["fairness.jain"] == pytest.approx(last["fairness.jain"])
