"""A generated Sentiment140 training CSV (the 1.6M-tweet layout) for the NWP tests."""

from __future__ import annotations

import csv
from pathlib import Path

from fedkit.data.datasets.sent140_nwp import FULL_CSV


def generated_sent140(root: Path, users: int = 12) -> list[tuple[str, str]]:
    """Write ``root/FULL_CSV``: user ``u`` has ``1 + u % 4`` tweets of 7 words each
    (``hello world from uU tT & zebraU``, the ``&`` HTML-escaped); returns ``(user, text)``."""
    rows = [
        (f"user{u}", f"hello world from u{u} t{t} &amp; zebra{u}")
        for u in range(users)
        for t in range(1 + u % 4)
    ]
    path = root / FULL_CSV
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="latin-1") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        for i, (user, text) in enumerate(rows):
            w.writerow(["0", str(1000 + i), "Mon Apr 06 22:19:45 PDT 2009", "NO_QUERY", user, text])
    return rows
