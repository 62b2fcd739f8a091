"""Shakespeare, one natural client per speaking role: TFF's HDF5 files and LEAF's JSON.

TFF version (``shakespeare``; the files of ``tff.simulation.datasets.shakespeare``):
``shakespeare/shakespeare_{train,test}.h5`` with ``examples/<ROLE>/snippets``, one UTF-8 byte
string per line spoken; 715 roles. Each snippet becomes next-token windows with
:func:`fedkit.data.text.char_windows` (``tokens="char"``, the default: 80-character windows with a
target at every position, Reddi et al. 2021, 90-id vocabulary) or, with ``tokens="word"``,
next-word windows over a :class:`~fedkit.data.text.WordVocab` of the ``word_vocab_size`` most
frequent training words. ``x`` and ``y`` are int64 ``(N, seq_len)``; ``client`` is the role index
into ``client_names`` (sorted role ids); ``num_classes`` = ``vocab_size`` = vocabulary size.

LEAF version (``shakespeare_leaf``): ``shakespeare/leaf_sample/all_data_niid_023_keep_64_
{train,test}_9.json.gz``; ``user_data[role] = {"x": [80-char strings], "y": [next char]}``.
Encoded with the same character vocabulary. With ``targets="all"`` (default) ``y`` is the
next character at every position (``x[1:] + next``), the same task as the TFF version; with
``targets="last"`` ``y`` is LEAF's single next character, shape ``(N,)``. Samples are counted from
the ``x``/``y`` lists, not from ``num_samples``: in the shipped test file ``num_samples`` sums to
4,671 but the lists hold 3,881 samples (LEAF drops the windows that overlap the training text
without updating the count).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedkit.data.datasets.base import (
    CommonOptions,
    Dataset,
    FedkitDataError,
    Split,
    parse_options,
)
from fedkit.data.datasets.cache import cache_key, cached
from fedkit.data.datasets.femnist import read_leaf_json
from fedkit.data.datasets.files import RemoteFile, ensure_file
from fedkit.data.text import CHAR_VOCAB, WordVocab, char_windows, tokenize, word_windows

__all__ = [
    "SHAKESPEARE_FILES",
    "SHAKESPEARE_LEAF_FILES",
    "load_shakespeare",
    "load_shakespeare_leaf",
    "read_tff_snippets",
]

_VERSION = 2  # 2: padding targets are IGNORE_INDEX
_TFF_URL = "https://storage.googleapis.com/tff-datasets-public/shakespeare.tar.bz2"

SHAKESPEARE_FILES = {
    split: RemoteFile(
        relpath=f"shakespeare/shakespeare_{split}.h5",
        algorithm="sha256",
        digest=digest,
        urls=(_TFF_URL,),
        member=f"shakespeare_{split}.h5",
    )
    for split, digest in (
        ("train", "67100f52adfb6d5ece73c1a942b6863731a477bf09421a3c79c9937612895344"),
        ("test", "55d3a635bffe5c4f71610a8d0cf86c1b369bfd7793e0635b5a83cde1f195689e"),
    )
}
"""TFF's Shakespeare HDF5 files (members of ``shakespeare.tar.bz2``) and their SHA-256s."""

SHAKESPEARE_LEAF_FILES = {
    split: RemoteFile(
        relpath=f"shakespeare/leaf_sample/all_data_niid_023_keep_64_{split}_9.json.gz",
        algorithm="sha256",
        digest=digest,
    )
    for split, digest in (
        ("train", "315e08b509c100007ba3f5873edcd3bb8563fa1f8fbb7d274eb84883a7ff2ac6"),
        ("test", "3dc91843684e7fc9d8f509584a948acf6618a646a0c0745793e04b21cb7aa3be"),
    )
}
"""The 10-role LEAF Shakespeare sample in fedkit's test data (no public download)."""

_LEAF_HINT = (
    "LEAF builds these files locally (github.com/TalwalkarLab/leaf, data/shakespeare: "
    "./preprocess.sh -s niid --sf 0.2 -k 64 -t sample)"
)


@dataclass(frozen=True, kw_only=True)
class ShakespeareOptions(CommonOptions):
    """Options of the TFF Shakespeare loader.

    Attributes:
        seq_len: window length (80 in Reddi et al. 2021).
        tokens: ``"char"`` (next character) or ``"word"`` (next word).
        word_vocab_size: word vocabulary cap for ``tokens="word"``.
    """

    seq_len: int = 80
    tokens: str = "char"
    word_vocab_size: int = 10000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.seq_len < 1:
            raise ValueError(f"seq_len={self.seq_len}: must be >= 1")
        if self.tokens not in ("char", "word"):
            raise ValueError(f"tokens={self.tokens!r}: allowed 'char', 'word'")
        if self.word_vocab_size < 1:
            raise ValueError(f"word_vocab_size={self.word_vocab_size}: must be >= 1")


@dataclass(frozen=True, kw_only=True)
class ShakespeareLeafOptions(CommonOptions):
    """Options of the LEAF Shakespeare loader.

    Attributes:
        targets: ``"all"`` (next character at every position) or ``"last"`` (LEAF's one target).
    """

    targets: str = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.targets not in ("all", "last"):
            raise ValueError(f"targets={self.targets!r}: allowed 'all', 'last'")


def read_tff_snippets(path: Path) -> dict[str, list[str]]:
    """Snippets per role from a TFF Shakespeare HDF5 file, decoded from UTF-8.

    Raises:
        FedkitDataError: not HDF5, or without ``examples/<role>/snippets``.
    """
    import h5py

    try:
        with h5py.File(path, "r") as f:
            examples = f["examples"]
            return {
                role: [s.decode("utf-8") for s in examples[role]["snippets"][()]]
                for role in examples
            }
    except (OSError, KeyError, UnicodeDecodeError) as e:
        raise FedkitDataError(f"{path}: not a TFF Shakespeare HDF5 file: {e}") from e


def _flatten(snippets: dict[str, list[str]], index: dict[str, int]) -> tuple[list[str], np.ndarray]:
    texts: list[str] = []
    roles: list[int] = []
    for role, lines in snippets.items():
        texts.extend(lines)
        roles.extend([index[role]] * len(lines))
    return texts, np.asarray(roles, dtype=np.int64)


def load_shakespeare(root: Path, **options: Any) -> Dataset:
    """Load TFF Shakespeare by speaking role (see the module docstring)."""
    opts = parse_options(ShakespeareOptions, "shakespeare", options)
    paths = {s: ensure_file(r, root, opts) for s, r in SHAKESPEARE_FILES.items()}

    def build() -> tuple[dict[str, np.ndarray], dict[str, str]]:
        raw = {s: read_tff_snippets(p) for s, p in paths.items()}
        roles = sorted(set(raw["train"]) | set(raw["test"]))
        index = {r: i for i, r in enumerate(roles)}
        flat = {s: _flatten(raw[s], index) for s in raw}
        meta = {"roles": json.dumps(roles)}
        if opts.tokens == "char":
            size = CHAR_VOCAB.size
            wins = {s: char_windows(t, seq_len=opts.seq_len) for s, (t, _) in flat.items()}
        else:
            vocab = WordVocab.build(
                (tokenize(t) for t in flat["train"][0]), max_size=opts.word_vocab_size
            )
            size = vocab.size
            meta["words"] = json.dumps(vocab.words)
            wins = {s: word_windows(t, vocab, seq_len=opts.seq_len) for s, (t, _) in flat.items()}
        meta["vocab_size"] = str(size)
        arrays: dict[str, np.ndarray] = {}
        for s, (x, y, owner) in wins.items():
            arrays[f"x_{s}"], arrays[f"y_{s}"] = x, y
            arrays[f"c_{s}"] = flat[s][1][owner]
        return arrays, meta

    parts = {
        "files": [r.checksum for r in SHAKESPEARE_FILES.values()],
        "seq_len": opts.seq_len,
        "tokens": opts.tokens,
        "word_vocab_size": opts.word_vocab_size if opts.tokens == "word" else None,
    }
    t, meta = cached("shakespeare", cache_key("shakespeare", _VERSION, parts), opts, build)
    size = int(meta["vocab_size"])
    return Dataset(
        name="shakespeare",
        train=Split(t["x_train"], t["y_train"], t["c_train"]),
        test=Split(t["x_test"], t["y_test"], t["c_test"]),
        num_classes=size,
        input_shape=(opts.seq_len,),
        client_names=tuple(json.loads(meta["roles"])),
        vocab_size=size,
        words=tuple(json.loads(meta["words"])) if "words" in meta else None,
    )


def _leaf_split(
    path: Path, index: dict[str, int], all_targets: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = read_leaf_json(path)
    xs, ys, cs = [], [], []
    for user in data["users"]:
        if user not in index:
            continue
        entry = data["user_data"][user]
        xtexts, ytexts = entry.get("x", []), entry.get("y", [])
        if len(xtexts) != len(ytexts):
            raise FedkitDataError(f"{path}: role {user}: {len(xtexts)} x but {len(ytexts)} y")
        for xt, yt in zip(xtexts, ytexts, strict=True):
            if len(xt) != 80 or len(yt) != 1:
                raise FedkitDataError(f"{path}: role {user}: sample is not 80 chars + 1 char")
        x = CHAR_VOCAB.encode("".join(xtexts)).reshape(-1, 80)
        nxt = CHAR_VOCAB.encode("".join(ytexts))
        xs.append(x)
        ys.append(np.concatenate([x[:, 1:], nxt[:, None]], axis=1) if all_targets else nxt)
        cs.append(np.full(len(nxt), index[user], dtype=np.int64))
    if not xs:
        raise FedkitDataError(f"{path}: no samples")
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(cs)


def load_shakespeare_leaf(root: Path, **options: Any) -> Dataset:
    """Load the LEAF Shakespeare JSON (see the module docstring)."""
    opts = parse_options(ShakespeareLeafOptions, "shakespeare_leaf", options)
    paths = {s: ensure_file(r, root, opts, _LEAF_HINT) for s, r in SHAKESPEARE_LEAF_FILES.items()}
    all_targets = opts.targets == "all"

    def build() -> tuple[dict[str, np.ndarray], dict[str, str]]:
        users = sorted(read_leaf_json(paths["train"])["users"])
        index = {u: i for i, u in enumerate(users)}
        arrays: dict[str, np.ndarray] = {}
        for s, p in paths.items():
            arrays[f"x_{s}"], arrays[f"y_{s}"], arrays[f"c_{s}"] = _leaf_split(
                p, index, all_targets
            )
        return arrays, {"roles": json.dumps(users)}

    parts = {
        "files": [r.checksum for r in SHAKESPEARE_LEAF_FILES.values()],
        "targets": opts.targets,
    }
    key = cache_key("shakespeare_leaf", _VERSION, parts)
    t, meta = cached("shakespeare_leaf", key, opts, build)
    return Dataset(
        name="shakespeare_leaf",
        train=Split(t["x_train"], t["y_train"], t["c_train"]),
        test=Split(t["x_test"], t["y_test"], t["c_test"]),
        num_classes=CHAR_VOCAB.size,
        input_shape=(80,),
        client_names=tuple(json.loads(meta["roles"])),
        vocab_size=CHAR_VOCAB.size,
    )
