"""Personal-model scores in the results database: written, read back, and added in place to a
database of the previous schema without losing its rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fedkit.evaluate import ClientEval, Distribution, EvalResult
from fedkit.experiment.results import (
    SCHEMA_VERSION,
    ClientRow,
    ResultsStore,
    RoundRow,
    results_path,
)


def _row(r: int, personal: float | None) -> RoundRow:
    return RoundRow(
        round=r, train_loss=None, test_loss=None, test_accuracy=None, fed_mean=0.5,
        fed_personal_mean=personal, fed_p10=None, fed_var=None, fed_min=None, fed_clients=2,
        cohort_size=2, dropped=0, bytes_up=0, bytes_down=0, wall_seconds=0.0, sim_seconds=None,
        committed=True,
    )  # fmt: skip


def test_personal_mean_is_over_clients_with_a_personal_model() -> None:
    def ev(cid: int, acc: float, own: float | None) -> ClientEval:
        r = EvalResult(loss=1.0, accuracy=acc, num_examples=4)
        p = None if own is None else EvalResult(loss=0.5, accuracy=own, num_examples=4)
        return ClientEval(client_id=cid, result=r, personal=p)

    # personal accuracies 0.75 and 0.25 (client 2 has none): mean 0.5; global mean (1/3)·1.5
    d = Distribution.of([ev(0, 0.5, 0.75), ev(1, 0.5, 0.25), ev(2, 0.5, None)])
    assert d.personal_mean == 0.5 and d.mean == 0.5
    # no client with a personal model: NaN, stored as NULL
    none = Distribution.of([ev(0, 0.5, None)]).personal_mean
    assert none != none


def test_schema_3_database_gains_personal_columns_in_place(tmp_path: Path) -> None:
    path = results_path(tmp_path)
    with ResultsStore(path) as store:
        old_id = store.start_run(name="old", config={}, code="x", env={})
        store.add_round(old_id, _row(0, None), [ClientRow(round=0, client_id=3, trained=True)])
    con = sqlite3.connect(path)
    for table, gone in (
        ("rounds", {"fed_personal_mean"}),
        ("clients", {"personal_loss", "personal_accuracy"}),
    ):
        cols = [r[1] for r in con.execute(f"PRAGMA table_info({table})") if r[1] not in gone]
        con.execute(f"CREATE TABLE old_t AS SELECT {', '.join(cols)} FROM {table}")
        con.execute(f"DROP TABLE {table}")
        con.execute(f"ALTER TABLE old_t RENAME TO {table}")
    con.execute("PRAGMA user_version = 3")
    con.commit()
    con.close()
    with ResultsStore(path) as store:
        (old,) = store.rounds(old_id)
        assert old.fed_mean == 0.5 and old.fed_personal_mean is None
        assert store.clients(old_id)[0].client_id == 3
        new_id = store.start_run(name="new", config={}, code="x", env={})
        row = ClientRow(round=0, client_id=1, trained=False, eval_accuracy=0.5,
                        personal_loss=0.25, personal_accuracy=0.875)  # fmt: skip
        store.add_round(new_id, _row(0, 0.875), [row])
        assert store.rounds(new_id)[0].fed_personal_mean == 0.875
        (got,) = store.clients(new_id)
        assert (got.personal_loss, got.personal_accuracy) == (0.25, 0.875)
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    con.close()
