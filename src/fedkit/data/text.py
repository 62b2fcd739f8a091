"""Text for next-token tasks: a fixed character vocabulary, a word vocabulary, and windows.

Character task (Shakespeare; McMahan et al. 2017, Reddi et al. 2021 "Adaptive Federated
Optimization"): every snippet becomes ``[bos] + chars + [eos]``, padded with ``pad`` to a multiple
of ``seq_len + 1`` and cut into chunks of ``seq_len + 1``; each chunk gives one window with
``x = chunk[:-1]`` and ``y = chunk[1:]``, i.e. a next-character target at every position. With
``seq_len = 80`` this is the setup of Reddi et al. Targets at padding positions are
``IGNORE_INDEX`` (-100), which fedkit's loss and accuracy skip.

The character vocabulary is fixed: the 86 characters of the vocabulary used in TFF's Shakespeare
experiments (letters, digits, space, newline, carriage return and 22 punctuation marks), here in
code-point order with ids 1..86, and four special ids laid out as in those experiments:
``pad = 0``, ``oov = 87``, ``bos = 88``, ``eos = 89``; 90 ids in all. Characters outside the set map
to ``oov``.

Word task: :class:`WordVocab` keeps the ``max_size`` most frequent tokens of the training text
(ties broken alphabetically, so it is deterministic), with the same special-id layout
(``pad = 0``, words ``1..V``, ``oov = V+1``, ``bos = V+2``, ``eos = V+3``). :func:`tokenize`
lower-cases and splits into words (letters/digits with inner apostrophes) and single punctuation
marks. :func:`word_windows` cuts ``[bos] + words + [eos]`` into next-word windows exactly like the
character windows.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fedkit.local import IGNORE_INDEX

__all__ = [
    "CHAR_VOCAB",
    "CharVocab",
    "WordVocab",
    "char_windows",
    "pad_truncate",
    "tokenize",
    "windows",
    "word_windows",
]

IntArray = npt.NDArray[np.int64]

_CHARS = "".join(
    sorted(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n\r!\"#$%&'()*,-./:;?@[]_"
    )
)


@dataclass(frozen=True)
class CharVocab:
    """A character vocabulary with ids ``1..len(chars)`` and four special ids.

    Attributes:
        chars: the characters, in id order (id of ``chars[i]`` is ``i + 1``).
    """

    chars: str = _CHARS
    _table: IntArray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(set(self.chars)) != len(self.chars) or not self.chars:
            raise ValueError("CharVocab.chars: must be non-empty with no repeated character")
        top = max(ord(c) for c in self.chars) + 1
        table = np.full(max(top, 128), self.oov, dtype=np.int64)
        for i, c in enumerate(self.chars):
            table[ord(c)] = i + 1
        object.__setattr__(self, "_table", table)

    @property
    def pad(self) -> int:
        """Padding id (0); a loss should ignore it."""
        return 0

    @property
    def oov(self) -> int:
        """Id of any character outside the vocabulary."""
        return len(self.chars) + 1

    @property
    def bos(self) -> int:
        """Beginning-of-snippet id."""
        return len(self.chars) + 2

    @property
    def eos(self) -> int:
        """End-of-snippet id."""
        return len(self.chars) + 3

    @property
    def size(self) -> int:
        """Number of ids, specials included (90 for the default vocabulary)."""
        return len(self.chars) + 4

    def encode(self, text: str) -> IntArray:
        """Character ids of ``text`` (no bos/eos), out-of-vocabulary characters as ``oov``."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        out = np.full(codes.shape, self.oov, dtype=np.int64)
        inside = codes < self._table.shape[0]
        out[inside] = self._table[codes[inside]]
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; pad/bos/eos are dropped and ``oov`` becomes U+FFFD."""
        chars = []
        for i in ids:
            i = int(i)
            if 1 <= i <= len(self.chars):
                chars.append(self.chars[i - 1])
            elif i == self.oov:
                chars.append("\ufffd")
        return "".join(chars)


CHAR_VOCAB = CharVocab()
"""The fixed Shakespeare character vocabulary (90 ids)."""

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*|[^\sa-z0-9]")


def tokenize(text: str) -> list[str]:
    """Lower-case ``text`` and split it into words and single punctuation marks."""
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True)
class WordVocab:
    """A word vocabulary: ids ``1..len(words)`` for the words, plus pad/oov/bos/eos.

    Attributes:
        words: the words, in id order (most frequent first).
    """

    words: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {w: i + 1 for i, w in enumerate(self.words)}
        if len(index) != len(self.words):
            raise ValueError("WordVocab.words: repeated word")
        object.__setattr__(self, "_index", index)

    @classmethod
    def build(
        cls, token_lists: Iterable[Sequence[str]], *, max_size: int, min_count: int = 1
    ) -> WordVocab:
        """Keep the ``max_size`` most frequent tokens seen at least ``min_count`` times.

        Args:
            token_lists: tokenised training texts (build only from training data).
            max_size: vocabulary size cap (words only, specials not counted); must be >= 1.
            min_count: minimum number of occurrences; must be >= 1.
        """
        if max_size < 1:
            raise ValueError(f"WordVocab.build: max_size={max_size}; must be >= 1")
        if min_count < 1:
            raise ValueError(f"WordVocab.build: min_count={min_count}; must be >= 1")
        counts: Counter[str] = Counter()
        for tokens in token_lists:
            counts.update(tokens)
        ranked = sorted(
            (w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w)
        )
        return cls(tuple(ranked[:max_size]))

    @property
    def pad(self) -> int:
        """Padding id (0)."""
        return 0

    @property
    def oov(self) -> int:
        """Id of any word outside the vocabulary."""
        return len(self.words) + 1

    @property
    def bos(self) -> int:
        """Beginning-of-text id."""
        return len(self.words) + 2

    @property
    def eos(self) -> int:
        """End-of-text id."""
        return len(self.words) + 3

    @property
    def size(self) -> int:
        """Number of ids, specials included."""
        return len(self.words) + 4

    def encode(self, tokens: Sequence[str]) -> IntArray:
        """Ids of ``tokens`` (no bos/eos), unknown tokens as ``oov``."""
        oov = self.oov
        return np.fromiter(
            (self._index.get(t, oov) for t in tokens), dtype=np.int64, count=len(tokens)
        )

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of ``ids``; pad/bos/eos dropped, ``oov`` as ``"<oov>"``."""
        out = []
        for i in ids:
            i = int(i)
            if 1 <= i <= len(self.words):
                out.append(self.words[i - 1])
            elif i == self.oov:
                out.append("<oov>")
        return out


def windows(
    sequences: Sequence[IntArray], *, seq_len: int, pad: int, bos: int, eos: int
) -> tuple[IntArray, IntArray, IntArray]:
    """Cut id sequences into next-token windows (the Reddi et al. chunking).

    Each sequence becomes ``[bos] + seq + [eos]``, padded with ``pad`` to a multiple of
    ``seq_len + 1`` and split into chunks; chunk ``c`` gives ``x = c[:-1]``, ``y = c[1:]``.
    Targets at padding positions are :data:`fedkit.local.IGNORE_INDEX`, so losses and accuracy
    skip them (padding is not a character to predict).

    Args:
        sequences: one int64 id array per text.
        seq_len: window length T (>= 1).
        pad: padding id.
        bos: beginning id.
        eos: end id.

    Returns:
        ``x`` (N, T), ``y`` (N, T) and ``owner`` (N,): the index of the sequence each window
        came from, in order.
    """
    if seq_len < 1:
        raise ValueError(f"windows: seq_len={seq_len}; must be >= 1")
    span = seq_len + 1
    lengths = np.fromiter((len(s) + 2 for s in sequences), dtype=np.int64, count=len(sequences))
    n_windows = (lengths + span - 1) // span
    total = int(n_windows.sum())
    flat = np.full(total * span, pad, dtype=np.int64)
    if total:
        parts: list[IntArray] = []
        for s in sequences:
            parts.extend(
                (
                    np.array([bos], dtype=np.int64),
                    np.asarray(s, dtype=np.int64),
                    np.array([eos], dtype=np.int64),
                )
            )
        content = np.concatenate(parts)
        chunk_start = np.concatenate(([0], np.cumsum(n_windows * span)[:-1]))
        content_start = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        positions = np.arange(content.shape[0], dtype=np.int64) + np.repeat(
            chunk_start - content_start, lengths
        )
        flat[positions] = content
    chunks = flat.reshape(total, span)
    owner = np.repeat(np.arange(len(sequences), dtype=np.int64), n_windows)
    targets = np.where(chunks[:, 1:] == pad, IGNORE_INDEX, chunks[:, 1:])
    return np.ascontiguousarray(chunks[:, :-1]), np.ascontiguousarray(targets), owner


def char_windows(
    texts: Sequence[str], *, seq_len: int = 80, vocab: CharVocab = CHAR_VOCAB
) -> tuple[IntArray, IntArray, IntArray]:
    """Next-character windows of ``texts`` (see :func:`windows`); returns ``x, y, owner``."""
    return windows(
        [vocab.encode(t) for t in texts],
        seq_len=seq_len,
        pad=vocab.pad,
        bos=vocab.bos,
        eos=vocab.eos,
    )


def word_windows(
    texts: Sequence[str], vocab: WordVocab, *, seq_len: int = 20
) -> tuple[IntArray, IntArray, IntArray]:
    """Next-word windows of ``texts`` (tokenised with :func:`tokenize`); returns ``x, y, owner``."""
    return windows(
        [vocab.encode(tokenize(t)) for t in texts],
        seq_len=seq_len,
        pad=vocab.pad,
        bos=vocab.bos,
        eos=vocab.eos,
    )


def pad_truncate(sequences: Sequence[IntArray], *, length: int, pad: int = 0) -> IntArray:
    """Stack id sequences into ``(N, length)``: longer ones truncated, shorter ones padded."""
    if length < 1:
        raise ValueError(f"pad_truncate: length={length}; must be >= 1")
    out = np.full((len(sequences), length), pad, dtype=np.int64)
    for i, s in enumerate(sequences):
        k = min(len(s), length)
        out[i, :k] = s[:k]
    return out
