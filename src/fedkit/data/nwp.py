"""Word-level next-word prediction (NWP): prefix windows and the held-out split by user.

Hard et al. 2018 ("Federated Learning for Mobile Keyboard Prediction") train a next-word model
on a server's proxy corpus, then refine it with federated training on users' own text; the
vocabulary is fixed beforehand from server-side data. fedkit lays the task out as follows.

- **Tokens and vocabulary**: :func:`fedkit.data.text.tokenize` (lower case, words with inner
  apostrophes, single punctuation marks) and a :class:`~fedkit.data.text.WordVocab` of the top
  ``V`` words of the *server's proxy text only* (ids: ``pad = 0``, words ``1..V``,
  ``oov = V+1``, ``bos = V+2``, ``eos = V+3``). Users' text never shapes the vocabulary.
- **Prefix windows** (:func:`prefix_windows`), for a model that predicts one word after its
  window (the BiLSTM of :func:`fedkit.models.text.nextword_lstm`): every text becomes
  ``[bos] + ids + [eos]`` and every position ``j >= 1`` one sample: ``x`` = the ``T`` ids before
  ``j``, left-padded with ``pad``; ``y`` = the id at ``j``. A text of ``n`` words gives ``n + 1``
  samples (its last target is ``eos``).
- **Chunk windows** (:func:`fedkit.data.text.windows`), for the causal LSTM: a target at every
  position, padding targets ignored.
- **Held-out text by user** (:func:`holdout_by_user`): each user with at least two texts keeps a
  seeded ``test_fraction`` of them (at least one, at most all but one) for testing; a user with
  one text trains on it. The study's test set is therefore the same users' held-out texts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["holdout_by_user", "prefix_windows"]

IntArray = npt.NDArray[np.int64]


def prefix_windows(
    sequences: Sequence[IntArray], *, seq_len: int, pad: int, bos: int, eos: int
) -> tuple[IntArray, IntArray, IntArray]:
    """One sample per target position: the left-padded ``seq_len`` ids before it, and it.

    Args:
        sequences: one int64 id array per text (no bos/eos).
        seq_len: window length T (>= 1).
        pad: padding id.
        bos: beginning id (prepended; never a target).
        eos: end id (appended; the last target of each text).

    Returns:
        ``x`` (N, T), ``y`` (N,) and ``owner`` (N,): the index of each sample's text.
    """
    if seq_len < 1:
        raise ValueError(f"prefix_windows: seq_len={seq_len}; must be >= 1")
    lengths = np.fromiter((len(s) + 1 for s in sequences), dtype=np.int64, count=len(sequences))
    total = int(lengths.sum())
    x = np.full((total, seq_len), pad, dtype=np.int64)
    y = np.empty(total, dtype=np.int64)
    row = 0
    for s in sequences:
        full = np.concatenate(([bos], np.asarray(s, dtype=np.int64), [eos]))
        for j in range(1, len(full)):
            context = full[max(0, j - seq_len) : j]
            x[row, seq_len - len(context) :] = context
            y[row] = full[j]
            row += 1
    owner = np.repeat(np.arange(len(sequences), dtype=np.int64), lengths)
    return x, y, owner


def holdout_by_user(
    users: Sequence[int] | IntArray, *, test_fraction: float, seed: int
) -> npt.NDArray[np.bool_]:
    """Which texts are held out: per user with ``n >= 2`` texts, ``clip(round(f·n), 1, n-1)``
    of them, chosen by a permutation seeded with ``seed``; users with one text hold none out.

    Args:
        users: the user index of each text.
        test_fraction: share of a user's texts held out, in (0, 1).
        seed: seed of the choice.

    Returns:
        A boolean mask over the texts: ``True`` for held-out.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction}: must be in (0, 1)")
    owner = np.asarray(users, dtype=np.int64)
    held = np.zeros(owner.shape[0], dtype=bool)
    rng = np.random.default_rng(seed)
    order = np.argsort(owner, kind="stable")
    bounds = np.flatnonzero(np.diff(owner[order])) + 1
    for rows in np.split(order, bounds):
        n = len(rows)
        if n < 2:
            continue
        k = min(max(round(test_fraction * n), 1), n - 1)
        held[rng.permutation(rows)[:k]] = True
    return held
