"""``python -m fedkit.net coordinator|worker|launch|certs`` (what ``fedkit launch`` spawns)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from fedkit.net.cli import app

app()
