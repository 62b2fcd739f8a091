"""Cache of decoded arrays: one safetensors file per (dataset, source checksums, loader version).

Decoding (gunzip + IDX parse, JSON, HDF5, pickled batches) is done once; the result is stored as a
single safetensors file (memory-mapped on read, no pickle) under the cache directory, never in the
data directory. The file is written to a temporary name in the same directory and moved into place
with ``os.replace``, so a crash leaves either no entry or a complete one. An entry that cannot be
read is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fedkit.data.datasets.base import CommonOptions

__all__ = ["Arrays", "cache_key", "cached"]

Arrays = dict[str, np.ndarray]
Loaded = tuple[dict[str, torch.Tensor], dict[str, str]]


def cache_key(dataset: str, version: int, parts: Mapping[str, object]) -> str:
    """A stable hex key from the dataset name, loader version and what the decode depends on.

    Args:
        dataset: dataset name.
        version: the loader's decode version (bump it when decoding changes).
        parts: JSON-serialisable inputs of the decode (source checksums, decode options).
    """
    blob = json.dumps({"dataset": dataset, "version": version, **parts}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:40]


def cached(
    dataset: str,
    key: str,
    options: CommonOptions,
    build: Callable[[], tuple[Arrays, dict[str, str]]],
) -> Loaded:
    """Return decoded arrays from the cache, building and storing them on a miss.

    Args:
        dataset: dataset name (the entry's file name prefix).
        key: from :func:`cache_key`.
        options: common loader options (``cache`` switches the cache off, ``cache_dir``).
        build: decodes the source files; returns arrays and string metadata.

    Returns:
        Tensors (sharing memory with the cache file's mapping where possible) and metadata.
    """
    if not options.cache:
        arrays, meta = build()
        return _to_tensors(arrays), meta
    path = options.resolved_cache_dir / f"{dataset}-{key}.safetensors"
    if path.is_file():
        try:
            return _read(path)
        except (SafetensorError, OSError, ValueError):
            pass  # unreadable entry: rebuild below and replace it
    arrays, meta = build()
    tensors = _to_tensors(arrays)
    _write(path, tensors, meta)
    return tensors, meta


def _to_tensors(arrays: Arrays) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def _read(path: Path) -> Loaded:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    return load_file(str(path)), meta


def _write(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
