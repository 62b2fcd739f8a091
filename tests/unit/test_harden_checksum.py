"""Checkpoints and stored client states carry a checksum verified on load (issue 18, part 5).

A flipped bit or a float set to NaN — in the simulation's checkpoint file, in the coordinator's
SQLite row, or in a worker's client-state file — is refused with a :class:`CheckpointError` that
names where it is stored; nothing is overwritten.
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save

from fedkit.checkpoint import (
    CheckpointError,
    FileCheckpointer,
    RunKey,
    encode,
    load_sealed,
    sealed,
    tensor_digest,
)
from fedkit.net.state import CoordinatorDB, SQLiteCheckpointer

KEY = RunKey(algorithm="fedavg", seed=7)
STATE = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([0.5, -1.0])}


def template() -> dict[str, torch.Tensor]:
    return {"w": torch.zeros(2, 3), "b": torch.zeros(2)}


def flip_last_bit(raw: bytes) -> bytes:
    """The last byte is tensor data (safetensors stores the header first)."""
    return raw[:-1] + bytes([raw[-1] ^ 0x01])


def nan_last_float(raw: bytes) -> bytes:
    """The last 4 bytes hold a float32 element: set it to NaN."""
    return raw[:-4] + struct.pack("<f", float("nan"))


@pytest.mark.parametrize("damage", [flip_last_bit, nan_last_float], ids=["bit-flip", "nan"])
def test_damaged_checkpoint_file_is_refused_naming_it_and_kept(
    tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    ckpt = FileCheckpointer(tmp_path)
    ckpt.save(3, STATE, {}, KEY)
    assert ckpt.load(template(), KEY) is not None  # the intact file loads
    bad = damage(ckpt.path.read_bytes())
    ckpt.path.write_bytes(bad)
    with pytest.raises(CheckpointError, match=f"{ckpt.path}.*checksum does not match"):
        ckpt.load(template(), KEY)
    assert ckpt.path.read_bytes() == bad  # nothing repaired or overwritten


def test_damaged_sqlite_checkpoint_row_is_refused_naming_the_database(tmp_path: Path) -> None:
    db = CoordinatorDB(tmp_path / "coordinator.db")
    SQLiteCheckpointer(db).save(2, STATE, {}, KEY)
    raw = db.checkpoint_bytes()
    assert raw is not None
    with sqlite3.connect(db.path) as con:
        con.execute("UPDATE checkpoint SET data = ?", (flip_last_bit(raw),))
    with pytest.raises(CheckpointError, match=f"{db.path}.*checksum"):
        SQLiteCheckpointer(db).load(template(), KEY)
    assert db.checkpoint_bytes() == flip_last_bit(raw)
    db.close()


def test_a_nan_with_a_matching_checksum_is_still_refused(tmp_path: Path) -> None:
    # an attacker who recomputes the checksum: the values themselves are checked too
    poisoned = {"server/w": torch.tensor([[1.0, float("nan"), 0.0]] * 2), "server/b": STATE["b"]}
    meta = {"format": "fedkit-checkpoint/1", "algorithm": "fedavg", "seed": "7",
            "completed_rounds": "1"}  # fmt: skip
    (tmp_path / "checkpoint.safetensors").write_bytes(
        st_save(poisoned, metadata=sealed(poisoned, meta))
    )
    with pytest.raises(CheckpointError, match="'server/w' holds a NaN"):
        FileCheckpointer(tmp_path).load(template(), KEY)


def test_a_checkpoint_without_checksum_is_refused(tmp_path: Path) -> None:
    flat = {"server/w": STATE["w"], "server/b": STATE["b"]}
    meta = {"format": "fedkit-checkpoint/1", "algorithm": "fedavg", "seed": "7",
            "completed_rounds": "1"}  # fmt: skip
    (tmp_path / "checkpoint.safetensors").write_bytes(st_save(flat, metadata=meta))
    with pytest.raises(CheckpointError, match="carries no checksum"):
        FileCheckpointer(tmp_path).load(template(), KEY)


def test_a_worker_client_state_file_is_verified(tmp_path: Path) -> None:
    path = tmp_path / "client-3.safetensors"
    flat = {"c/w": torch.ones(2, 3)}
    path.write_bytes(st_save(flat, metadata=sealed(flat, {"client_id": "3"})))
    assert torch.equal(load_sealed(path.read_bytes(), where=f"client state {path}")["c/w"],
                       flat["c/w"])  # fmt: skip
    with pytest.raises(CheckpointError, match=f"client state {path}.*checksum"):
        load_sealed(flip_last_bit(path.read_bytes()), where=f"client state {path}")
    with pytest.raises(CheckpointError, match=f"client state {path} is unreadable"):
        load_sealed(b"garbage", where=f"client state {path}")


def test_the_checksum_covers_names_shapes_and_metadata() -> None:
    a = {"x": torch.arange(6.0)}
    base = tensor_digest(a, {"k": "1"})
    assert tensor_digest({"y": torch.arange(6.0)}, {"k": "1"}) != base  # name
    assert tensor_digest({"x": torch.arange(6.0).reshape(2, 3)}, {"k": "1"}) != base  # shape
    assert tensor_digest({"x": torch.arange(6.0).double()}, {"k": "1"}) != base  # dtype
    assert tensor_digest(a, {"k": "2"}) != base  # metadata (e.g. the round count)
    assert tensor_digest(a, {"k": "1", "sha256": "whatever"}) == base  # not itself


@settings(max_examples=40, deadline=None)
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_single_bit_flip_in_tensor_data_is_detected(position: int, bit: int) -> None:
    raw = encode(1, STATE, {}, KEY)
    n = int.from_bytes(raw[:8], "little")
    data_start = 8 + n
    i = data_start + position % (len(raw) - data_start)
    bad = raw[:i] + bytes([raw[i] ^ (1 << bit)]) + raw[i + 1 :]
    with pytest.raises(CheckpointError):
        load_sealed(bad, where="blob")
