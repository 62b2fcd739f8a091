"""Character and word vocabularies and next-token windows: hand-checked cases."""

from __future__ import annotations

import numpy as np
import pytest

from fedkit.data.text import (
    CHAR_VOCAB,
    CharVocab,
    WordVocab,
    char_windows,
    pad_truncate,
    tokenize,
    word_windows,
)
from fedkit.local import IGNORE_INDEX

IGN = IGNORE_INDEX


def test_char_vocab_layout() -> None:
    assert len(CHAR_VOCAB.chars) == 86 and CHAR_VOCAB.size == 90
    assert (CHAR_VOCAB.pad, CHAR_VOCAB.oov, CHAR_VOCAB.bos, CHAR_VOCAB.eos) == (0, 87, 88, 89)
    assert set("azAZ09 \n\r!\"&'(),-.:;?[]_") <= set(CHAR_VOCAB.chars)
    assert CHAR_VOCAB.chars == "".join(sorted(CHAR_VOCAB.chars))
    ids = CHAR_VOCAB.encode("Ab é\n")
    assert ids[3] == CHAR_VOCAB.oov and int(ids.min()) >= 1
    assert CHAR_VOCAB.decode(ids) == "Ab \ufffd\n"
    with pytest.raises(ValueError, match="repeated"):
        CharVocab("aa")


def test_char_windows_by_hand() -> None:
    v = CharVocab("abc")  # a=1 b=2 c=3, pad 0, oov 4, bos 5, eos 6
    x, y, owner = char_windows(["abcab", "c"], seq_len=3, vocab=v)
    # "abcab" -> [5 1 2 3 1 2 6] -> chunks of 4: [5 1 2 3] [1 2 6 0]; "c" -> [5 3 6 0]
    assert x.tolist() == [[5, 1, 2], [1, 2, 6], [5, 3, 6]]
    assert y.tolist() == [[1, 2, 3], [2, 6, IGN], [3, 6, IGN]]  # padding targets are ignored
    assert owner.tolist() == [0, 0, 1]
    empty_x, empty_y, empty_owner = char_windows([], seq_len=80)
    assert empty_x.shape == (0, 80) and empty_y.shape == (0, 80) and empty_owner.shape == (0,)
    with pytest.raises(ValueError, match="seq_len=0"):
        char_windows(["a"], seq_len=0)


def test_tokenize_and_word_vocab() -> None:
    assert tokenize("Don't STOP, me-now!!") == ["don't", "stop", ",", "me", "-", "now", "!", "!"]
    vocab = WordVocab.build([["b", "a", "b"], ["c", "a", "b"]], max_size=2)
    assert vocab.words == ("b", "a")  # by count, ties alphabetical; "c" cut by the cap
    assert (vocab.pad, vocab.oov, vocab.bos, vocab.eos, vocab.size) == (0, 3, 4, 5, 6)
    assert vocab.encode(["a", "c", "b"]).tolist() == [2, 3, 1]
    assert vocab.decode([4, 2, 3, 1, 5, 0]) == ["a", "<oov>", "b"]
    assert WordVocab.build([["x", "y", "x"]], max_size=10, min_count=2).words == ("x",)
    with pytest.raises(ValueError, match="max_size=0"):
        WordVocab.build([], max_size=0)


def test_word_windows_and_pad_truncate() -> None:
    vocab = WordVocab(("the", "cat"))  # the=1 cat=2 oov=3 bos=4 eos=5
    x, y, owner = word_windows(["The cat sat", "cat"], vocab, seq_len=4)
    assert x.tolist() == [[4, 1, 2, 3], [4, 2, 5, 0]]
    assert y.tolist() == [[1, 2, 3, 5], [2, 5, IGN, IGN]]
    assert owner.tolist() == [0, 1]
    out = pad_truncate([np.array([1, 2, 3]), np.array([4])], length=2)
    assert out.tolist() == [[1, 2], [4, 0]] and out.dtype == np.int64
