"""Atomic checkpoints of a run: server state, committed round, seed and client states.

One safetensors file per run directory, replaced atomically (write to a temporary file in the
same directory, fsync, ``os.replace``, fsync the directory), so a crash at any point leaves either
the previous checkpoint or the new one — never a torn file. Nothing is unpickled on load: tensors
come back through safetensors and are validated against the algorithm's state template.

Randomness needs no saved generator state: every draw derives from ``(seed, round, client)``
(:mod:`fedkit.rng`), so the seed and the committed round *are* the RNG state.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Generic, TypeVar

from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from fedkit.params import tree_flatten, tree_unflatten

S = TypeVar("S")

FORMAT = "fedkit-checkpoint/1"
FILENAME = "checkpoint.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used for this run (corrupt, or from another run)."""


@dataclasses.dataclass(frozen=True)
class Checkpoint(Generic[S]):
    """A restored checkpoint."""

    completed_rounds: int
    state: S
    client_tensors: dict[str, Tensor]


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


class Checkpointer:
    """Saves and restores the checkpoint of one run directory."""

    def __init__(self, directory: Path, *, algorithm: str, seed: int) -> None:
        self.path = Path(directory) / FILENAME
        self.algorithm = algorithm
        self.seed = seed

    def save(self, state: Any, completed_rounds: int, client_tensors: dict[str, Tensor]) -> None:
        """Atomically replace the checkpoint with this committed state."""
        tensors = {
            f"server/{k}": v.detach().contiguous().clone() for k, v in tree_flatten(state).items()
        }
        tensors.update(
            {f"clients/{k}": v.detach().contiguous().clone() for k, v in client_tensors.items()}
        )
        meta = {
            "format": FORMAT,
            "algorithm": self.algorithm,
            "seed": str(self.seed),
            "completed_rounds": str(completed_rounds),
        }
        write_atomic(self.path, st_save(tensors, metadata=meta))

    def load(self, template: S) -> Checkpoint[S] | None:
        """The saved checkpoint validated against ``template``, or ``None`` when there is none."""
        if not self.path.exists():
            return None
        raw = self.path.read_bytes()
        try:
            tensors = st_load(raw)
            meta = _metadata(raw)
        except Exception as e:  # safetensors raises several types on malformed input
            raise CheckpointError(
                f"checkpoint {self.path} is unreadable ({e}); move it away to start afresh"
            ) from e
        if meta.get("format") != FORMAT:
            raise CheckpointError(
                f"{self.path} is not a fedkit checkpoint (format {meta.get('format')!r})"
            )
        if meta.get("algorithm") != self.algorithm or meta.get("seed") != str(self.seed):
            raise CheckpointError(
                f"checkpoint {self.path} belongs to algorithm {meta.get('algorithm')!r} with seed "
                f"{meta.get('seed')}, not {self.algorithm!r} with seed {self.seed}; use another "
                "output directory or remove the checkpoint"
            )
        server = {k[len("server/") :]: v for k, v in tensors.items() if k.startswith("server/")}
        clients = {k[len("clients/") :]: v for k, v in tensors.items() if k.startswith("clients/")}
        try:
            state = tree_unflatten(template, server)
        except ValueError as e:
            raise CheckpointError(f"checkpoint {self.path} does not match this model: {e}") from e
        return Checkpoint(int(meta["completed_rounds"]), state, clients)


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
