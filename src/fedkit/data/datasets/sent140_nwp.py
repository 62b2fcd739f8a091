"""Sentiment140 tweets for next-word prediction: a server proxy corpus and federated users.

The task and its layout are those of :mod:`fedkit.data.nwp` (Hard et al. 2018): a word
vocabulary from the proxy corpus only, next-word windows, each user's held-out tweets as the test
set. ``part`` chooses the training text; the test split is the same in both parts, so a
server-trained model and a federated one are scored on the same tweets.

- ``part = "users"`` (federated): train = the users' training tweets, ``client`` = the user
  (natural clients, sorted user names); test = their held-out tweets.
- ``part = "proxy"`` (server): train = the proxy corpus (no natural clients); same test split.

Sources (``source``):

- ``"shipped"`` (default): the proxy corpus is the samples of the 1.6M-tweet training file in
  ``sent140/samples/`` (``sentiment140_sample_20k.csv`` and ``sentiment140_head_10k_01labels.csv``,
  header ``target,ids,date,flag,user,text``, verified by SHA-256); the users are LEAF's Sent140 by-
  user split (``sent140/leaf_test/all_data_niid_05_keep_3_test_9.json.gz``, 8,692 tweets of
  7,086 users; ``user_data[u]["x"]`` rows ``[id, date, query, user, text, ...]``). Proxy tweets
  whose id is also a user's tweet are dropped, so no test tweet is in the server's corpus.
- ``"full"``: the whole training CSV ``sent140/training.1600000.processed.noemoticon.csv``
  (original layout, latin-1, no header, six columns; read with
  :func:`fedkit.data.datasets.sent140.read_sent140_csv`). Tweets are grouped by user as LEAF
  does; a seeded ``proxy_fraction`` of the users becomes the server's corpus and the others with
  at least ``min_user_tweets`` tweets are the federated users. fedkit has no published checksum of
  this file: set ``full_sha256`` to pin the copy you have (it is then verified); unset, the file
  is read as it is and its SHA-256 keys the cache.

Text is HTML-unescaped (the CSV stores ``&quot;``, ``&amp;``, ``&lt;``) and tokenised with
:func:`fedkit.data.text.tokenize`. ``windows = "prefix"`` (default) gives ``x`` (N, T), ``y``
(N,) for the BiLSTM; ``"chunks"`` gives ``y`` (N, T) for the causal LSTM. ``num_classes`` =
``vocab_size`` = ``word_vocab_size + 4``.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedkit.data.datasets.base import (
    CommonOptions,
    Dataset,
    DatasetNotFoundError,
    FedkitDataError,
    Split,
    parse_options,
)
from fedkit.data.datasets.cache import cache_key, cached
from fedkit.data.datasets.femnist import read_leaf_json
from fedkit.data.datasets.files import RemoteFile, ensure_file, verify_file
from fedkit.data.datasets.sent140 import read_sent140_csv
from fedkit.data.nwp import holdout_by_user, prefix_windows
from fedkit.data.text import WordVocab, tokenize, windows

__all__ = [
    "FULL_CSV",
    "PROXY_FILES",
    "USERS_FILE",
    "Sent140NWPOptions",
    "load_sent140_nwp",
    "read_proxy_csv",
]

_VERSION = 1

PROXY_FILES = (
    RemoteFile(
        relpath="sent140/samples/sentiment140_sample_20k.csv",
        algorithm="sha256",
        digest="6c5eeac8fff8feeca55dd7057aa2f6bf8e45f0cf26de46576375cbd776800f2a",
    ),
    RemoteFile(
        relpath="sent140/samples/sentiment140_head_10k_01labels.csv",
        algorithm="sha256",
        digest="d88108cfd7dd3db547a1657ff976cc5138e7d518dc3fa4c068bcc39b1aff62fe",
    ),
)
"""The proxy corpus of ``source = "shipped"``: samples of the training file (no public download)."""

USERS_FILE = RemoteFile(
    relpath="sent140/leaf_test/all_data_niid_05_keep_3_test_9.json.gz",
    algorithm="sha256",
    digest="d0fc077afaa8547e124c23aa9c975680aac627f0f9f67200b3387b45e7e1a05f",
)
"""LEAF's Sent140 by-user test split, gzipped (fedkit's test data; no public download)."""

FULL_CSV = "sent140/training.1600000.processed.noemoticon.csv"
"""Where ``source = "full"`` expects the 1.6M-tweet training CSV, under the data directory."""


@dataclass(frozen=True, kw_only=True)
class Sent140NWPOptions(CommonOptions):
    """Options of ``sent140_nwp``.

    Attributes:
        part: ``"users"`` (federated training text) or ``"proxy"`` (the server's).
        source: ``"shipped"`` or ``"full"`` (see the module docstring).
        windows: ``"prefix"`` (one target per sample) or ``"chunks"`` (a target per position).
        seq_len: window length T.
        word_vocab_size: words in the vocabulary (from the proxy corpus).
        test_fraction: share of each user's tweets held out (users with >= 2 tweets).
        split_seed: seed of the held-out choice and of the full file's user split.
        proxy_fraction: ``source = "full"``: share of users whose tweets form the proxy corpus.
        min_user_tweets: ``source = "full"``: fewest tweets of a federated user.
        full_sha256: ``source = "full"``: expected SHA-256 of the CSV (verified when set).
    """

    part: str = "users"
    source: str = "shipped"
    windows: str = "prefix"
    seq_len: int = 20
    word_vocab_size: int = 10000
    test_fraction: float = 0.3
    split_seed: int = 0
    proxy_fraction: float = 0.5
    min_user_tweets: int = 2
    full_sha256: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, allowed in (
            ("part", ("users", "proxy")),
            ("source", ("shipped", "full")),
            ("windows", ("prefix", "chunks")),
        ):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}={getattr(self, key)!r}: allowed {list(allowed)}")
        for key in ("seq_len", "word_vocab_size", "min_user_tweets"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}={getattr(self, key)}: must be >= 1")
        for key in ("test_fraction", "proxy_fraction"):
            if not 0.0 < getattr(self, key) < 1.0:
                raise ValueError(f"{key}={getattr(self, key)}: must be in (0, 1)")


@dataclass(frozen=True)
class _Tweets:
    """Tweets as (id, user, text) columns."""

    ids: list[str]
    users: list[str]
    texts: list[str]


def read_proxy_csv(path: Path) -> _Tweets:
    """A samples CSV with header ``target,ids,date,flag,user,text`` (latin-1).

    Raises:
        FedkitDataError: a missing column or a row without six fields.
    """
    reader = csv.reader(io.StringIO(path.read_bytes().decode("latin-1"), newline=""))
    header = next(reader, None)
    if header is None or [h.strip() for h in header] != [
        "target", "ids", "date", "flag", "user", "text"
    ]:  # fmt: skip
        raise FedkitDataError(f"{path}: header {header!r}, expected target,ids,date,flag,user,text")
    out = _Tweets([], [], [])
    for line, row in enumerate(reader, start=2):
        if len(row) != 6:
            raise FedkitDataError(f"{path}:{line}: {len(row)} columns, expected 6")
        out.ids.append(row[1])
        out.users.append(row[4])
        out.texts.append(row[5])
    return out


def _leaf_users(path: Path) -> _Tweets:
    data = read_leaf_json(path)
    out = _Tweets([], [], [])
    for user in data["users"]:
        entry = data["user_data"].get(user)
        rows = entry.get("x") if isinstance(entry, dict) else None
        if not isinstance(rows, list):
            raise FedkitDataError(f"{path}: user {user!r} has no 'x' list")
        for row in rows:
            if not isinstance(row, list) or len(row) < 5 or not isinstance(row[4], str):
                raise FedkitDataError(f"{path}: user {user!r}: a row without a text field")
            out.ids.append(str(row[0]))
            out.users.append(str(user))
            out.texts.append(row[4])
    return out


def _split_full(path: Path, opts: Sent140NWPOptions) -> tuple[_Tweets, _Tweets]:
    """The full CSV's users: a seeded share for the proxy corpus, the rest (with enough tweets)
    as federated users."""
    rows = read_sent140_csv(path)
    names = sorted({t.user for t in rows})
    perm = np.random.default_rng(opts.split_seed).permutation(len(names))
    n_proxy = round(len(names) * opts.proxy_fraction)
    proxy_users = {names[i] for i in perm[:n_proxy]}
    counts: dict[str, int] = {}
    for t in rows:
        counts[t.user] = counts.get(t.user, 0) + 1
    proxy, users = _Tweets([], [], []), _Tweets([], [], [])
    for i, t in enumerate(rows):
        if t.user in proxy_users:
            dest = proxy
        elif counts[t.user] >= opts.min_user_tweets:
            dest = users
        else:
            continue
        dest.ids.append(str(i))
        dest.users.append(t.user)
        dest.texts.append(t.text)
    return proxy, users


def _sources(root: Path, opts: Sent140NWPOptions) -> tuple[list[Path], list[str]]:
    """The files to read and the checksums that key the cache."""
    if opts.source == "shipped":
        files = [*PROXY_FILES, USERS_FILE]
        return [ensure_file(f, root, opts) for f in files], [f.checksum for f in files]
    path = root / FULL_CSV
    if not path.is_file():
        raise DatasetNotFoundError(
            f"sent140_nwp source='full' needs the Sentiment140 training CSV at {path} "
            "(training.1600000.processed.noemoticon.csv from the official "
            "trainingandtestdata.zip, http://help.sentiment140.com/for-students)"
        )
    if opts.full_sha256 is not None:
        verify_file(path, "sha256", opts.full_sha256, opts)
        return [path], [f"sha256:{opts.full_sha256}"]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return [path], [f"sha256:{digest}"]


def _ids(vocab: WordVocab, texts: list[str]) -> list[np.ndarray]:
    return [vocab.encode(tokenize(html.unescape(t))) for t in texts]


def load_sent140_nwp(root: Path, **options: Any) -> Dataset:
    """Load Sent140 next-word prediction (see the module docstring)."""
    opts = parse_options(Sent140NWPOptions, "sent140_nwp", options)
    paths, checksums = _sources(root, opts)

    def build() -> tuple[dict[str, np.ndarray], dict[str, str]]:
        if opts.source == "shipped":
            proxy = _Tweets([], [], [])
            for p in paths[:-1]:
                part = read_proxy_csv(p)
                proxy.ids.extend(part.ids)
                proxy.users.extend(part.users)
                proxy.texts.extend(part.texts)
            users = _leaf_users(paths[-1])
            seen = set(users.ids)  # a user's tweet never in the server's corpus
            keep = [i for i, tid in enumerate(proxy.ids) if tid not in seen]
            proxy = _Tweets(
                [proxy.ids[i] for i in keep],
                [proxy.users[i] for i in keep],
                [proxy.texts[i] for i in keep],
            )
        else:
            proxy, users = _split_full(paths[0], opts)
        if not proxy.texts or not users.texts:
            raise FedkitDataError("sent140_nwp: the proxy corpus or the users' tweets are empty")
        vocab = WordVocab.build(
            (tokenize(html.unescape(t)) for t in proxy.texts), max_size=opts.word_vocab_size
        )
        names = sorted(set(users.users))
        index = {u: i for i, u in enumerate(names)}
        owner = np.asarray([index[u] for u in users.users], dtype=np.int64)
        held = holdout_by_user(owner, test_fraction=opts.test_fraction, seed=opts.split_seed)
        user_ids = _ids(vocab, users.texts)
        texts = {
            "proxy": (_ids(vocab, proxy.texts), None),
            "users": ([user_ids[i] for i in np.flatnonzero(~held)], owner[~held]),
            "test": ([user_ids[i] for i in np.flatnonzero(held)], owner[held]),
        }
        arrays: dict[str, np.ndarray] = {}
        special = {"pad": vocab.pad, "bos": vocab.bos, "eos": vocab.eos}
        for name, (seqs, who) in texts.items():
            if opts.windows == "prefix":
                x, y, row = prefix_windows(seqs, seq_len=opts.seq_len, **special)
            else:
                x, y, row = windows(seqs, seq_len=opts.seq_len, **special)
            arrays[f"x_{name}"], arrays[f"y_{name}"] = x, y
            if who is not None:
                arrays[f"c_{name}"] = who[row]
        meta = {"words": json.dumps(vocab.words), "users": json.dumps(names)}
        return arrays, meta

    parts = {
        "files": checksums,
        "source": opts.source,
        "windows": opts.windows,
        "seq_len": opts.seq_len,
        "word_vocab_size": opts.word_vocab_size,
        "test_fraction": opts.test_fraction,
        "split_seed": opts.split_seed,
        "proxy_fraction": opts.proxy_fraction if opts.source == "full" else None,
        "min_user_tweets": opts.min_user_tweets if opts.source == "full" else None,
    }
    t, meta = cached("sent140_nwp", cache_key("sent140_nwp", _VERSION, parts), opts, build)
    words = tuple(json.loads(meta["words"]))
    size = len(words) + 4
    if opts.part == "users":
        train = Split(t["x_users"], t["y_users"], t["c_users"])
        test = Split(t["x_test"], t["y_test"], t["c_test"])
        names: tuple[str, ...] | None = tuple(json.loads(meta["users"]))
    else:
        train, test, names = (
            Split(t["x_proxy"], t["y_proxy"]),
            Split(t["x_test"], t["y_test"]),
            None,
        )
    return Dataset(
        name="sent140_nwp",
        train=train,
        test=test,
        num_classes=size,
        input_shape=(opts.seq_len,),
        client_names=names,
        vocab_size=size,
        words=words,
    )
