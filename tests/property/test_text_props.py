"""Property tests of the text utilities: encode/decode round trips and window invariants."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit.data.text import CHAR_VOCAB, WordVocab, char_windows, tokenize, windows
from fedkit.local import IGNORE_INDEX

vocab_text = st.text(alphabet=st.sampled_from(CHAR_VOCAB.chars), max_size=300)
id_seqs = st.lists(st.lists(st.integers(1, 50), max_size=40), max_size=8)


@given(vocab_text)
def test_char_round_trip(text: str) -> None:
    ids = CHAR_VOCAB.encode(text)
    assert ids.dtype == np.int64 and len(ids) == len(text)
    assert CHAR_VOCAB.decode(ids) == text
    assert all(1 <= int(i) <= len(CHAR_VOCAB.chars) for i in ids)


@given(st.text(max_size=100))
def test_char_encode_any_text(text: str) -> None:
    ids = CHAR_VOCAB.encode(text)
    assert len(ids) == len(text)
    for ch, i in zip(text, ids.tolist(), strict=True):
        assert (i == CHAR_VOCAB.oov) == (ch not in CHAR_VOCAB.chars)


@settings(max_examples=150)
@given(id_seqs, st.integers(1, 12))
def test_windows_reconstruct_sequences(seqs: list[list[int]], seq_len: int) -> None:
    pad, bos, eos = 0, 51, 52
    arrays = [np.array(s, dtype=np.int64) for s in seqs]
    x, y, owner = windows(arrays, seq_len=seq_len, pad=pad, bos=bos, eos=eos)
    assert x.shape == y.shape == (len(owner), seq_len)
    # targets are the next token at every position, padding targets replaced by IGNORE_INDEX
    assert np.array_equal(y[:, :-1], np.where(x[:, 1:] == pad, IGNORE_INDEX, x[:, 1:]))
    y = np.where(y == IGNORE_INDEX, pad, y)
    assert np.all(np.diff(owner) >= 0)
    for k, s in enumerate(seqs):
        rows = np.nonzero(owner == k)[0]
        assert len(rows) == -(-(len(s) + 2) // (seq_len + 1))
        chunks = np.concatenate([np.append(x[r], y[r, -1]) for r in rows])
        content = [bos, *s, eos]
        assert chunks[: len(content)].tolist() == content
        assert np.all(chunks[len(content) :] == pad)


@given(st.lists(vocab_text, max_size=5), st.integers(1, 90))
def test_char_windows_cover_every_character(texts: list[str], seq_len: int) -> None:
    x, y, _ = char_windows(texts, seq_len=seq_len)
    last = np.where(y[:, -1:] == IGNORE_INDEX, CHAR_VOCAB.pad, y[:, -1:])
    chunks = np.concatenate([x, last], axis=1)  # the seq_len + 1 ids each window came from
    specials = [CHAR_VOCAB.pad, CHAR_VOCAB.bos, CHAR_VOCAB.eos]
    assert int((~np.isin(chunks, specials)).sum()) == sum(len(t) for t in texts)
    assert int((chunks == CHAR_VOCAB.bos).sum()) == len(texts)
    assert int((chunks == CHAR_VOCAB.eos).sum()) == len(texts)


words = st.sampled_from(["a", "b", "c", "d", "e", "f", "g"])


@given(st.lists(st.lists(words, max_size=10), max_size=10), st.integers(1, 8), st.randoms())
def test_word_vocab_top_k_and_order_free(
    texts: list[list[str]], max_size: int, rnd: object
) -> None:
    vocab = WordVocab.build(texts, max_size=max_size)
    shuffled = list(texts)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert WordVocab.build(shuffled, max_size=max_size) == vocab
    counts: dict[str, int] = {}
    for t in texts:
        for w in t:
            counts[w] = counts.get(w, 0) + 1
    assert len(vocab.words) == min(max_size, len(counts))
    kept = [counts[w] for w in vocab.words]
    assert kept == sorted(kept, reverse=True)
    dropped = [c for w, c in counts.items() if w not in vocab.words]
    assert not kept or not dropped or min(kept) >= max(dropped)
    for t in texts:
        ids = vocab.encode(t)
        assert [w if w in vocab.words else "<oov>" for w in t] == vocab.decode(ids)


@given(st.text(max_size=200))
def test_tokens_are_lower_case_without_space(text: str) -> None:
    for token in tokenize(text):
        assert token and token == token.lower() and not any(c.isspace() for c in token)
