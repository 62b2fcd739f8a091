"""Shared test setup: one torch thread (2-core CI machine), data directory, skip helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

torch.set_num_threads(1)

# CI (CI=true) replays a fixed set of Hypothesis examples, so a landing run is reproducible;
# development runs keep drawing new ones (and keep a database of any failure they find).
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("FEDKIT_DATA", str((REPO / ".." / "shared" / "data").resolve()))


def data_dir() -> Path:
    """The data directory tests read real datasets from (``FEDKIT_DATA``)."""
    return Path(os.environ["FEDKIT_DATA"])


def require_data(*relative: str) -> Path:
    """Skip the calling test, naming the missing file, unless all paths exist under FEDKIT_DATA."""
    root = data_dir()
    for rel in relative:
        if not (root / rel).exists():
            pytest.skip(
                f"dataset file {root / rel} not present (set FEDKIT_DATA to a data directory)"
            )
    return root
