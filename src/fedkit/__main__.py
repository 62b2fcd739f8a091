"""``python -m fedkit …``: the ``fedkit`` command line (``fedkit launch`` spawns workers so)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

from fedkit.cli import main

main()
