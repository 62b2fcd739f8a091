"""Sentiment140 (Go, Bhayani, Huang 2009) from its CSV: tweets as word ids, one client per user.

The file is the original CSV layout, latin-1, six columns: polarity (0 negative, 2 neutral,
4 positive), tweet id, date, query, user, text. fedkit's test data holds the official
hand-labelled test set (``sent140/testdata.manual.2009.06.14.csv``, 498 rows); the 1.6M-tweet
training file has no checksum fedkit can verify offline and is not read. The SHA-256 checked is
that of the shipped CSV; it is expected to equal the member of the official zip that
``download=True`` extracts, but that has not been verified against the zip itself.

Labels: 0 -> 0 and 4 -> 1. Neutral tweets (2) are dropped by default (``neutral="drop"``, the
binary task of LEAF/FedProx, 359 rows); ``neutral="keep"`` keeps them as class 2 (3 classes).
Rows are split into train and test by a seeded random permutation (``test_fraction``,
``split_seed``) because most users have a single tweet, so a per-user split is not possible.
Text is tokenised with :func:`fedkit.data.text.tokenize`, mapped with a
:class:`~fedkit.data.text.WordVocab` built from the training rows only (``word_vocab_size``), and
padded/truncated to ``seq_len`` ids (25 as in LEAF). ``client`` is the user index into
``client_names`` (sorted user names of all kept rows).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedkit.data.datasets.base import CommonOptions, Dataset, FedkitDataError, Split, parse_options
from fedkit.data.datasets.files import RemoteFile, ensure_file
from fedkit.data.text import WordVocab, pad_truncate, tokenize

__all__ = ["SENT140_TEST_CSV", "Sent140Options", "Tweet", "load_sent140", "read_sent140_csv"]

SENT140_TEST_CSV = RemoteFile(
    relpath="sent140/testdata.manual.2009.06.14.csv",
    algorithm="sha256",
    digest="c77669cc86ae85d3807d65fc13fed0c395266db518d4eaa0ff1f19bf6efbbdd3",
    urls=("http://cs.stanford.edu/people/alecmgo/trainingandtestdata.zip",),
    member="testdata.manual.2009.06.14.csv",
)
"""The hand-labelled Sentiment140 test set (member of the official zip)."""


@dataclass(frozen=True)
class Tweet:
    """One CSV row: polarity (0, 2 or 4), user and text."""

    polarity: int
    user: str
    text: str


def read_sent140_csv(path: Path) -> list[Tweet]:
    """Parse a Sentiment140 CSV (latin-1, six columns).

    Raises:
        FedkitDataError: a row without six columns or with a polarity outside {0, 2, 4}.
    """
    rows = []
    text = path.read_bytes().decode("latin-1")
    for line, row in enumerate(csv.reader(io.StringIO(text, newline="")), start=1):
        if len(row) != 6:
            raise FedkitDataError(f"{path}:{line}: {len(row)} columns, expected 6")
        if row[0] not in ("0", "2", "4"):
            raise FedkitDataError(f"{path}:{line}: polarity {row[0]!r}, expected 0, 2 or 4")
        rows.append(Tweet(int(row[0]), row[4], row[5]))
    return rows


@dataclass(frozen=True, kw_only=True)
class Sent140Options(CommonOptions):
    """Sent140 options.

    Attributes:
        neutral: ``"drop"`` (binary task) or ``"keep"`` (neutral as class 2).
        test_fraction: share of rows in the test split, in (0, 1).
        split_seed: seed of the train/test permutation.
        seq_len: ids per tweet (padded or truncated).
        word_vocab_size: word vocabulary cap (built from the training rows).
    """

    neutral: str = "drop"
    test_fraction: float = 0.2
    split_seed: int = 0
    seq_len: int = 25
    word_vocab_size: int = 10000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.neutral not in ("drop", "keep"):
            raise ValueError(f"neutral={self.neutral!r}: allowed 'drop', 'keep'")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction={self.test_fraction}: must be in (0, 1)")
        if self.seq_len < 1:
            raise ValueError(f"seq_len={self.seq_len}: must be >= 1")
        if self.word_vocab_size < 1:
            raise ValueError(f"word_vocab_size={self.word_vocab_size}: must be >= 1")


_LABEL = {0: 0, 4: 1, 2: 2}


def load_sent140(root: Path, **options: Any) -> Dataset:
    """Load the Sentiment140 CSV (see the module docstring)."""
    opts = parse_options(Sent140Options, "sent140", options)
    path = ensure_file(SENT140_TEST_CSV, root, opts)
    tweets = [t for t in read_sent140_csv(path) if opts.neutral == "keep" or t.polarity != 2]
    users = sorted({t.user for t in tweets})
    index = {u: i for i, u in enumerate(users)}
    perm = np.random.default_rng(opts.split_seed).permutation(len(tweets))
    n_test = max(1, round(len(tweets) * opts.test_fraction))
    parts = {"train": perm[n_test:], "test": perm[:n_test]}
    tokens = [tokenize(t.text) for t in tweets]
    vocab = WordVocab.build((tokens[i] for i in parts["train"]), max_size=opts.word_vocab_size)

    def split(rows: np.ndarray) -> Split:
        ids = pad_truncate([vocab.encode(tokens[i]) for i in rows], length=opts.seq_len)
        y = np.asarray([_LABEL[tweets[i].polarity] for i in rows], dtype=np.int64)
        c = np.asarray([index[tweets[i].user] for i in rows], dtype=np.int64)
        return Split(torch.from_numpy(ids), torch.from_numpy(y), torch.from_numpy(c))

    return Dataset(
        name="sent140",
        train=split(parts["train"]),
        test=split(parts["test"]),
        num_classes=3 if opts.neutral == "keep" else 2,
        input_shape=(opts.seq_len,),
        client_names=tuple(users),
        vocab_size=vocab.size,
        words=vocab.words,
    )
