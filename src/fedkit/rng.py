"""Every random draw in fedkit derives from ``(seed, round, client_id, stream)``.

A generator made here depends only on those integers — never on the order in which clients run,
on the executor, or on how many processes share the work — which is what makes seeded runs
repeatable under any executor and executor-equivalence tests possible.
"""

from __future__ import annotations

import hashlib

import torch

SERVER = -1
"""The ``client_id`` used for server-side draws (cohort sampling, server noise)."""


def derive_seed(seed: int, round_: int, client_id: int, stream: str = "") -> int:
    """A 63-bit seed from the run seed, the round, the client id and a stream name."""
    key = f"{seed}:{round_}:{client_id}:{stream}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, round_: int, client_id: int, stream: str = "") -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by :func:`derive_seed`."""
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, round_, client_id, stream))
    return g
