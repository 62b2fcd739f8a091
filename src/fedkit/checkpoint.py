"""Round checkpoints: one interface, one encoding, a home per setting.

The run loop (:func:`fedkit.run.run`) talks to a :class:`Checkpointer` only: ``save`` after every
committed round (server state, completed-round count, client states, and the :class:`RunKey` the
checkpoint belongs to), ``load`` once at the start. Two homes implement it:

* :class:`FileCheckpointer` — simulation: one safetensors file per run directory, replaced
  atomically (write to a temporary file in the same directory, fsync, ``os.replace``, fsync the
  directory), so a crash at any point leaves the previous checkpoint or the new one;
* ``fedkit.net.state.SQLiteCheckpointer`` — deployment: a row of the coordinator's SQLite
  database, written in the same transaction as the round's records.

Both store the same bytes (:func:`encode` / :func:`decode`: safetensors with a small metadata
header). Nothing is unpickled on load: tensors come back through safetensors and are validated
against the algorithm's state template. The header carries a SHA-256 of every tensor's name,
dtype, shape and bytes and of the other metadata (:func:`tensor_digest`), verified on load, and a
server state holding a NaN or an infinity is refused too. A checkpoint that cannot be used raises
:class:`CheckpointError` naming where it is stored, and is left exactly as it was.

Randomness needs no saved generator state: every draw derives from ``(seed, round, client)``
(:mod:`fedkit.rng`), so the seed and the committed round *are* the RNG state.

An aggregator with state across rounds (:data:`fedkit.aggregate.AggState`, e.g. adaptive
clipping's clip norm) is checkpointed with the server state: the run loop saves
:func:`with_agg_state` (``server/state/…`` and one float64 scalar ``server/agg/<name>`` per
entry, exact) and splits it again with :func:`split_agg_state`. A stateless aggregator saves the
server state alone, as before, so checkpoints written before the state existed still load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from fedkit.aggregate import AggState, check_state
from fedkit.params import tree_flatten, tree_unflatten

S = TypeVar("S")

FORMAT = "fedkit-checkpoint/1"
FILENAME = "checkpoint.safetensors"
DIGEST_KEY = "sha256"
"""Metadata key of the checksum (:func:`tensor_digest`) in a checkpoint or stored state."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used for this run (corrupt, or from another run)."""


@dataclasses.dataclass(frozen=True)
class RunKey:
    """What a checkpoint belongs to: a resumed run must have the same algorithm and seed."""

    algorithm: str
    seed: int


@dataclasses.dataclass(frozen=True)
class Checkpoint(Generic[S]):
    """A restored checkpoint."""

    completed_rounds: int
    state: S
    client_tensors: dict[str, Tensor]


class Checkpointer(Protocol):
    """Where the run loop keeps its last committed round (one home per run)."""

    def save(
        self, completed_rounds: int, state: Any, client_tensors: Mapping[str, Tensor], key: RunKey
    ) -> None:
        """Durably replace the checkpoint: all of it or (after a crash) none of it."""
        ...

    def load(self, template: S, key: RunKey) -> Checkpoint[S] | None:
        """The checkpoint, validated against ``template`` and ``key``; ``None`` if there is none.

        Raises:
            CheckpointError: the stored checkpoint is damaged or belongs to another run; it is
                left untouched.
        """
        ...


@dataclasses.dataclass(frozen=True)
class StateWithAgg(Generic[S]):
    """The server state together with the aggregator's state (one float64 scalar per entry)."""

    state: S
    agg: dict[str, Tensor]


def with_agg_state(state: Any, agg_state: AggState) -> Any:
    """What the run loop checkpoints: ``state`` alone when ``agg_state`` is empty, else
    :class:`StateWithAgg` (also the load template, built from the initial aggregator state)."""
    if not agg_state:
        return state
    agg = {name: torch.tensor(value, dtype=torch.float64) for name, value in agg_state}
    return StateWithAgg(state=state, agg=agg)


def split_agg_state(saved: Any, like: AggState) -> tuple[Any, AggState]:
    """Inverse of :func:`with_agg_state`: the server state and the aggregator state, in the
    order of ``like`` (the initial state, whose names the restored one has).

    Raises:
        CheckpointError: a restored value is not a finite number.
    """
    if not like:
        return saved, ()
    assert isinstance(saved, StateWithAgg)
    try:
        restored = check_state([(name, float(saved.agg[name])) for name, _ in like])
    except ValueError as e:
        raise CheckpointError(f"checkpoint: aggregator state is invalid ({e})") from e
    return saved.state, restored


def encode(
    completed_rounds: int, state: Any, client_tensors: Mapping[str, Tensor], key: RunKey
) -> bytes:
    """The checkpoint as safetensors bytes (``server/…`` and ``clients/…`` tensors, metadata)."""
    tensors = {
        f"server/{k}": v.detach().contiguous().clone() for k, v in tree_flatten(state).items()
    }
    tensors.update(
        {f"clients/{k}": v.detach().contiguous().clone() for k, v in client_tensors.items()}
    )
    meta = {
        "format": FORMAT,
        "algorithm": key.algorithm,
        "seed": str(key.seed),
        "completed_rounds": str(completed_rounds),
    }
    return st_save(tensors, metadata=sealed(tensors, meta))


def tensor_digest(tensors: Mapping[str, Tensor], meta: Mapping[str, str]) -> str:
    """SHA-256 (hex) of tensors and metadata: names in sorted order, each with its dtype, shape
    and raw bytes, then the metadata entries (except :data:`DIGEST_KEY`) in sorted order.

    Every field is length-prefixed, so no two different contents hash the same bytes.
    """
    h = hashlib.sha256()

    def put(b: bytes) -> None:
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)

    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        put(name.encode())
        put(str(t.dtype).encode())
        put(repr(tuple(t.shape)).encode())
        put(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    for k in sorted(meta):
        if k != DIGEST_KEY:
            put(k.encode())
            put(meta[k].encode())
    return h.hexdigest()


def sealed(tensors: Mapping[str, Tensor], meta: Mapping[str, str]) -> dict[str, str]:
    """``meta`` with the checksum of ``tensors`` and ``meta`` added under :data:`DIGEST_KEY`."""
    return {**meta, DIGEST_KEY: tensor_digest(tensors, meta)}


def verify_sealed(tensors: Mapping[str, Tensor], meta: Mapping[str, str], *, where: str) -> None:
    """Refuse tensors whose checksum is missing or differs, or whose float values are not finite.

    Raises:
        CheckpointError: naming ``where`` (the file, or the database row) and what to do.
    """
    stored = meta.get(DIGEST_KEY)
    if stored is None:
        raise CheckpointError(
            f"{where} carries no checksum ({DIGEST_KEY!r} in its metadata); it was not written "
            "by this version of fedkit or was altered: move it away to start afresh"
        )
    if not hmac.compare_digest(stored, tensor_digest(tensors, meta)):
        raise CheckpointError(
            f"{where} is damaged: its checksum does not match its contents (a flipped bit or an "
            "edited value); restore it from a backup or move it away to start afresh"
        )
    for name in sorted(tensors):
        t = tensors[name]
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(
                f"{where}: tensor {name!r} holds a NaN or an infinite value; it is not used"
            )


def load_sealed(raw: bytes, *, where: str) -> dict[str, Tensor]:
    """Tensors of safetensors bytes written with :func:`sealed` metadata, checksum verified.

    Raises:
        CheckpointError: unreadable bytes, a missing or wrong checksum, or non-finite values.
    """
    try:
        tensors = st_load(raw)
        meta = _metadata(raw)
    except Exception as e:  # safetensors raises several types on malformed input
        raise CheckpointError(f"{where} is unreadable ({e}); move it away to start afresh") from e
    verify_sealed(tensors, meta, where=where)
    return tensors


def decode(raw: bytes, template: S, key: RunKey, *, where: str) -> Checkpoint[S]:
    """Parse and validate checkpoint bytes (``where`` names their home in error messages).

    Raises:
        CheckpointError: unreadable bytes, another format, another run's key, or tensors that do
            not match ``template``.
    """
    try:
        tensors = st_load(raw)
        meta = _metadata(raw)
    except Exception as e:  # safetensors raises several types on malformed input
        raise CheckpointError(
            f"checkpoint {where} is unreadable ({e}); move it away to start afresh"
        ) from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not a fedkit checkpoint (format {meta.get('format')!r})")
    verify_sealed(tensors, meta, where=f"checkpoint {where}")
    if meta.get("algorithm") != key.algorithm or meta.get("seed") != str(key.seed):
        raise CheckpointError(
            f"checkpoint {where} belongs to algorithm {meta.get('algorithm')!r} with seed "
            f"{meta.get('seed')}, not {key.algorithm!r} with seed {key.seed}; use another "
            "output directory or remove the checkpoint"
        )
    try:
        completed = int(meta["completed_rounds"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {where} has no valid round count ({e})") from e
    server = {k[len("server/") :]: v for k, v in tensors.items() if k.startswith("server/")}
    clients = {k[len("clients/") :]: v for k, v in tensors.items() if k.startswith("clients/")}
    try:
        state = tree_unflatten(template, server)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {where} does not match this model: {e}") from e
    return Checkpoint(completed, state, clients)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class FileCheckpointer:
    """The simulation's checkpoint: ``DIRECTORY/checkpoint.safetensors``, replaced atomically."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / FILENAME

    def save(
        self, completed_rounds: int, state: Any, client_tensors: Mapping[str, Tensor], key: RunKey
    ) -> None:
        """Atomically replace the checkpoint file with this committed state."""
        write_atomic(self.path, encode(completed_rounds, state, client_tensors, key))

    def load(self, template: S, key: RunKey) -> Checkpoint[S] | None:
        """The saved checkpoint validated against ``template``, or ``None`` when there is none."""
        if not self.path.exists():
            return None
        return decode(self.path.read_bytes(), template, key, where=str(self.path))


def _metadata(raw: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors byte string (its JSON header)."""
    n = int.from_bytes(raw[:8], "little")
    if n <= 0 or 8 + n > len(raw):
        raise ValueError("bad safetensors header length")
    header = json.loads(raw[8 : 8 + n])
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict):
        raise ValueError("bad safetensors metadata")
    return {str(k): str(v) for k, v in meta.items()}
