"""The one Checkpointer interface, for both homes of a round checkpoint: the simulation's
safetensors file and the deployment's SQLite row. Same calls, same bytes, same typed errors; a
damaged or foreign checkpoint raises and is left exactly as stored."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as st_load

from fedkit.algorithms import FedAvg, Scaffold
from fedkit.checkpoint import (
    FILENAME,
    Checkpointer,
    CheckpointError,
    FileCheckpointer,
    RunKey,
    encode,
)
from fedkit.local import LocalTraining
from fedkit.net.state import CoordinatorDB, RoundRow, SQLiteCheckpointer
from fedkit.params import Params, model_params
from fedkit.run import RunConfig, run
from fedkit.sim.serial import SerialExecutor
from tests.helpers.toy import toy_model, toy_store

KEY = RunKey(algorithm="fedavg", seed=7)
STATE = {"params": {"w": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([0.5, -1.0])},
         "step": torch.tensor(4)}  # fmt: skip
CLIENTS = {"3/c/w": torch.ones(2, 3), "5/c/w": torch.full((2, 3), -2.0)}


def header_metadata(raw: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes, read from the JSON header by hand."""
    n = int.from_bytes(raw[:8], "little")
    return dict(json.loads(raw[8 : 8 + n])["__metadata__"])


def template() -> dict[str, object]:
    return {"params": {"w": torch.zeros(2, 3), "b": torch.zeros(2)}, "step": torch.tensor(0)}


@dataclass
class Home:
    """One checkpointer and access to what it stored (to damage it and to compare)."""

    ckpt: Checkpointer
    stored: Callable[[], bytes | None]
    overwrite: Callable[[bytes], None]


def file_home(tmp_path: Path) -> Iterator[Home]:
    path = tmp_path / FILENAME
    yield Home(
        FileCheckpointer(tmp_path),
        lambda: path.read_bytes() if path.exists() else None,
        path.write_bytes,
    )


def sqlite_home(tmp_path: Path) -> Iterator[Home]:
    db = CoordinatorDB(tmp_path / "coordinator.db")

    def overwrite(raw: bytes) -> None:
        db._db.execute("UPDATE checkpoint SET data=? WHERE id=1", (raw,))

    yield Home(SQLiteCheckpointer(db), db.checkpoint_bytes, overwrite)
    db.close()


@pytest.fixture(params=["file", "sqlite"])
def home(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Home]:
    yield from (file_home if request.param == "file" else sqlite_home)(tmp_path)


def test_round_trip(home: Home) -> None:
    assert home.ckpt.load(template(), KEY) is None  # a fresh run
    home.ckpt.save(1, template(), {}, KEY)
    home.ckpt.save(3, STATE, CLIENTS, KEY)  # replaces the previous round
    got = home.ckpt.load(template(), KEY)
    assert got is not None and got.completed_rounds == 3
    assert torch.equal(got.state["params"]["w"], STATE["params"]["w"])  # type: ignore[index]
    assert torch.equal(got.state["params"]["b"], STATE["params"]["b"])  # type: ignore[index]
    assert got.state["step"].item() == 4  # type: ignore[union-attr]
    assert sorted(got.client_tensors) == ["3/c/w", "5/c/w"]
    assert torch.equal(got.client_tensors["5/c/w"], CLIENTS["5/c/w"])


def test_both_homes_store_the_one_encoding(home: Home) -> None:
    """What either home stores is :func:`encode`'s safetensors (header key order may differ)."""
    home.ckpt.save(3, STATE, CLIENTS, KEY)
    stored, expected = home.stored(), encode(3, STATE, CLIENTS, KEY)
    assert stored is not None
    got, want = st_load(stored), st_load(expected)
    assert sorted(got) == sorted(want) == [
        "clients/3/c/w", "clients/5/c/w", "server/params/b", "server/params/w", "server/step"
    ]  # fmt: skip
    assert all(torch.equal(got[k], want[k]) for k in want)
    meta = header_metadata(stored)
    assert len(meta.pop("sha256")) == 64  # the checksum (test_harden_checksum.py)
    assert meta == {
        "format": "fedkit-checkpoint/1", "algorithm": "fedavg", "seed": "7", "completed_rounds": "3"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw: raw[:100], "unreadable"),  # torn
        (lambda raw: b"\xff" * 8 + raw[8:], "unreadable"),  # header length out of range
        (lambda raw: b"not a checkpoint", "unreadable"),
    ],
)
def test_damaged_checkpoint_raises_and_is_kept(
    home: Home, damage: Callable[[bytes], bytes], message: str
) -> None:
    home.ckpt.save(2, STATE, CLIENTS, KEY)
    good = home.stored()
    assert good is not None
    home.overwrite(damage(good))
    damaged = home.stored()
    for _ in range(2):  # reported every time, never repaired or replaced behind the user's back
        with pytest.raises(CheckpointError, match=message):
            home.ckpt.load(template(), KEY)
    assert home.stored() == damaged


def test_another_runs_checkpoint_is_refused_and_kept(home: Home) -> None:
    home.ckpt.save(2, STATE, CLIENTS, KEY)
    before = home.stored()
    with pytest.raises(CheckpointError, match="belongs to algorithm 'fedavg' with seed 7, not"):
        home.ckpt.load(template(), RunKey(algorithm="fedavg", seed=8))
    with pytest.raises(CheckpointError, match="not 'scaffold' with seed 7"):
        home.ckpt.load(template(), RunKey(algorithm="scaffold", seed=7))
    wider = {"params": {"w": torch.zeros(2, 4), "b": torch.zeros(2)}, "step": torch.tensor(0)}
    with pytest.raises(CheckpointError, match="does not match this model"):
        home.ckpt.load(wider, KEY)
    assert home.stored() == before


def test_sqlite_save_commits_the_staged_round_with_the_checkpoint(tmp_path: Path) -> None:
    db = CoordinatorDB(tmp_path / "c.db")
    row = RoundRow(round=0, attempt=0, committed=True, cohort=(0,), accepted=(0,), dropped=(),
                   train_loss=1.0, accuracy=None, bytes_up=1, bytes_down=1, wall_s=0.1)  # fmt: skip
    db.stage_round(row)
    assert db.round_rows() == []  # staged, not yet written
    SQLiteCheckpointer(db).save(1, STATE, {}, KEY)
    assert db.round_rows() == [row] and db.completed_rounds() == 1
    # a failing transaction writes neither the round nor the checkpoint
    db.stage_round(RoundRow(**{**row.__dict__, "round": 1}))
    db._db.execute(
        "CREATE TRIGGER boom BEFORE INSERT ON rounds BEGIN SELECT RAISE(ABORT, 'x'); END"
    )
    with pytest.raises(sqlite3.IntegrityError):
        SQLiteCheckpointer(db).save(2, STATE, {}, KEY)
    assert db.completed_rounds() == 1 and [r.round for r in db.round_rows()] == [0]
    db.close()


LOCAL = LocalTraining(lr=0.05, batch_size=8)


@pytest.mark.parametrize("algorithm", [FedAvg(local=LOCAL), Scaffold(local=LOCAL)])
def test_run_loop_resumes_from_sqlite_as_from_a_file(tmp_path: Path, algorithm: object) -> None:
    """The one run loop with the deployment's checkpointer: stop after 2 rounds, resume to 4 in a
    fresh executor (SCAFFOLD's client states come back from the row too), equal to no stop."""

    def go(rounds: int, ckpt: Checkpointer | None) -> Params:
        return run(
            algorithm,  # type: ignore[arg-type]
            SerialExecutor(toy_store(6), toy_model(seed=99)),
            model_params(toy_model()),
            RunConfig(rounds=rounds, clients_per_round=3, seed=5),
            checkpointer=ckpt,
        ).params

    db = CoordinatorDB(tmp_path / "c.db")
    go(2, SQLiteCheckpointer(db))
    assert db.completed_rounds() == 2
    resumed = go(4, SQLiteCheckpointer(db))
    straight = go(4, None)
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    db.close()


def test_run_refuses_two_checkpoint_homes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        run(
            FedAvg(local=LOCAL),
            SerialExecutor(toy_store(6), toy_model()),
            model_params(toy_model()),
            RunConfig(rounds=1, clients_per_round=3, checkpoint_dir=tmp_path),
            checkpointer=FileCheckpointer(tmp_path),
        )
