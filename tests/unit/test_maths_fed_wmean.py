"""The example-weighted federated mean: computed by hand, stored, migrated, and written by a run.

Federated evaluation scores the global model on each client's local test split. The unweighted
mean ``(1/K) Σ acc_i`` counts every client once; the example-weighted mean
``Σ n_i acc_i / Σ n_i`` (n_i local test examples) is the accuracy on all clients' test examples
pooled. Both are stored per round (``fed_mean``, ``fed_wmean``).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fedkit.evaluate import ClientEval, Distribution, EvalResult
from fedkit.experiment.config import study_from_mapping
from fedkit.experiment.results import SCHEMA_VERSION, ResultsStore, RoundRow, results_path
from fedkit.experiment.runner import run_experiment


def _row(r: int, mean: float | None, wmean: float | None) -> RoundRow:
    return RoundRow(
        round=r,
        train_loss=None,
        test_loss=None,
        test_accuracy=None,
        fed_mean=mean,
        fed_wmean=wmean,
        fed_p10=None,
        fed_var=None,
        fed_min=None,
        fed_clients=None,
        cohort_size=1,
        dropped=0,
        bytes_up=0,
        bytes_down=0,
        wall_seconds=0.0,
        sim_seconds=None,
        committed=True,
    )


def test_weighted_and_unweighted_means_by_hand() -> None:
    # clients: acc 1.0 on 1 example, 0.5 on 3, 0.0 on 4, and one with no test data (left out)
    # mean = (1 + 0.5 + 0) / 3 = 0.5;  weighted = (1·1 + 0.5·3 + 0·4) / 8 = 2.5 / 8 = 0.3125
    evals = [
        ClientEval(0, EvalResult(loss=0.1, accuracy=1.0, num_examples=1)),
        ClientEval(1, EvalResult(loss=0.7, accuracy=0.5, num_examples=3)),
        ClientEval(2, EvalResult(loss=2.0, accuracy=0.0, num_examples=4)),
        ClientEval(3, EvalResult(loss=0.0, accuracy=0.0, num_examples=0)),
    ]
    d = Distribution.of(evals)
    assert d.clients == 3
    assert d.mean == pytest.approx(0.5)
    assert d.weighted_mean == pytest.approx(0.3125)


def test_fed_wmean_round_trips(tmp_path: Path) -> None:
    with ResultsStore(results_path(tmp_path)) as store:
        run_id = store.start_run(name="a", config={}, code="x", env={})
        store.add_round(run_id, _row(0, 0.5, 0.3125))
        store.add_round(run_id, _row(1, None, None))
        rows = store.rounds(run_id)
    assert [(r.fed_mean, r.fed_wmean) for r in rows] == [(0.5, 0.3125), (None, None)]


@pytest.mark.parametrize("old_version", [1, 2])
def test_older_databases_gain_fed_wmean_in_place(tmp_path: Path, old_version: int) -> None:
    """A database of schema 1 (no ``details``) or 2 (no ``fed_wmean``) opens, keeps its rows and
    records the weighted mean from then on."""
    path = results_path(tmp_path)
    with ResultsStore(path) as store:
        old_id = store.start_run(name="old", config={}, code="x", env={})
        store.add_round(old_id, _row(0, 0.75, 0.5))
    dropped = {"fed_wmean"} | ({"details"} if old_version == 1 else set())
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE r_old AS SELECT * FROM rounds")
    cols = [r[1] for r in con.execute("PRAGMA table_info(rounds)") if r[1] not in dropped]
    con.execute("DROP TABLE rounds")
    con.execute(f"CREATE TABLE rounds AS SELECT {', '.join(cols)} FROM r_old")
    con.execute("DROP TABLE r_old")
    con.execute(f"PRAGMA user_version = {old_version}")
    con.commit()
    con.close()
    with ResultsStore(path) as store:
        (old,) = store.rounds(old_id)
        assert (old.fed_mean, old.fed_wmean) == (0.75, None)  # never measured then
        new_id = store.start_run(name="new", config={}, code="x", env={})
        store.add_round(new_id, _row(0, 0.5, 0.3125))
        assert store.rounds(new_id)[0].fed_wmean == 0.3125
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    con.close()


def test_a_run_stores_the_example_weighted_mean_of_its_clients(tmp_path: Path) -> None:
    """``fed_wmean`` of the last round equals Σ n_i acc_i / Σ n_i over the stored client rows."""
    doc = {
        "data": {
            "dataset": "synthetic",
            "partition": "natural",
            "alpha": 1.0,
            "beta": 1.0,
            "options": {"num_users": 6},
        },
        "model": {"name": "logreg"},
        "algorithm": {"name": "fedavg", "clients_per_round": 3, "batch_size": 10, "lr": 0.05},
        "run": {"rounds": 2, "seed": 1},
    }
    (cfg,) = study_from_mapping(doc, default_name="w").runs
    with ResultsStore(results_path(tmp_path)) as store:
        outcome = run_experiment(cfg, store)
        rounds = store.rounds(outcome.run_id)
        clients = store.clients(outcome.run_id, round=1)
    scored = [c for c in clients if c.eval_accuracy is not None and c.eval_examples]
    assert len(scored) == 6
    n = [c.eval_examples or 0 for c in scored]
    acc = [c.eval_accuracy or 0.0 for c in scored]
    assert len(set(n)) > 1  # Synthetic's power-law sizes: the two means differ in general
    wmean = sum(a * k for a, k in zip(acc, n, strict=True)) / sum(n)
    assert rounds[-1].fed_wmean == pytest.approx(wmean, abs=1e-12)
    assert rounds[-1].fed_mean == pytest.approx(sum(acc) / len(acc), abs=1e-12)
    assert rounds[0].fed_wmean is None  # federated evaluation runs at the last round only
