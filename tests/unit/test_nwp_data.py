"""Word-level next-word prediction: prefix windows, held-out split, metrics, Sent140 loader."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from fedkit.data.datasets import ChecksumError, DatasetNotFoundError, load_dataset
from fedkit.data.datasets.sent140_nwp import USERS_FILE
from fedkit.data.nwp import holdout_by_user, prefix_windows
from fedkit.local import IGNORE_INDEX
from fedkit.nwp_eval import nwp_scores
from tests.conftest import require_data
from tests.helpers.nwp import generated_sent140


def test_prefix_windows_by_hand() -> None:
    # text [5, 6] with bos 9, eos 10, pad 0 and T = 2: [9, 5, 6, 10] gives three samples
    x, y, owner = prefix_windows(
        [np.array([5, 6]), np.array([], dtype=np.int64)], seq_len=2, pad=0, bos=9, eos=10
    )
    assert x.tolist() == [[0, 9], [9, 5], [5, 6], [0, 9]]
    assert y.tolist() == [5, 6, 10, 10]  # the empty text still predicts its end
    assert owner.tolist() == [0, 0, 0, 1]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(1, 50), max_size=12), max_size=6),
    st.integers(1, 7),
)
def test_prefix_windows_hold_every_target_with_its_context(
    texts: list[list[int]], seq_len: int
) -> None:
    x, y, owner = prefix_windows(
        [np.array(t, dtype=np.int64) for t in texts], seq_len=seq_len, pad=0, bos=98, eos=99
    )
    assert x.shape == (sum(len(t) + 1 for t in texts), seq_len)
    row = 0
    for i, t in enumerate(texts):
        full = [98, *t, 99]
        for j in range(1, len(full)):
            context = full[max(0, j - seq_len) : j]
            assert x[row].tolist() == [0] * (seq_len - len(context)) + context
            assert y[row] == full[j] and owner[row] == i
            row += 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 6), max_size=40), st.floats(0.05, 0.95), st.integers(0, 3))
def test_holdout_keeps_a_test_and_a_train_text_for_every_user_with_two(
    users: list[int], fraction: float, seed: int
) -> None:
    held = holdout_by_user(users, test_fraction=fraction, seed=seed)
    assert held.tolist() == holdout_by_user(users, test_fraction=fraction, seed=seed).tolist()
    for u in set(users):
        mine = [h for h, v in zip(held, users, strict=True) if v == u]
        if len(mine) == 1:
            assert mine == [False]
        else:
            n, k = len(mine), sum(mine)
            assert k == min(max(round(fraction * n), 1), n - 1)


class _Fixed(nn.Module):
    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: Tensor) -> Tensor:
        return self.logits[x[:, 0]]


def test_metrics_count_only_words_by_hand() -> None:
    # ids: pad 0, words 1 and 2, oov 3, bos 4, eos 5; every row scores logits [0, 1, 3, 2, 0, 0]
    logits = torch.tensor([[0.0, 1.0, 3.0, 2.0, 0.0, 0.0]] * 5)
    model = _Fixed(logits)
    x = torch.arange(5)[:, None]
    y = torch.tensor([1, 2, 3, 5, IGNORE_INDEX])  # oov, eos and ignored are not counted
    s = nwp_scores(model, x, y, pad=0, oov=3, eos=5, batch_size=2)
    # ranking 2 > 3 (oov) > 1: target 1 is third (top-3 hit, top-1 miss); target 2 is first
    assert (s.top1, s.top3, s.targets) == (0.5, 1.0, 2)
    # log Z = log(3 + e + e^3 + e^2) = log 33.19288 = 3.502335; NLL 2.502335 and 0.502335;
    # mean 1.502335, perplexity e^1.502335 = 4.48169 * e^0.002335 = 4.49217
    assert s.perplexity == pytest.approx(4.49217, abs=1e-4)
    none = nwp_scores(model, x[2:4], y[2:4], pad=0, oov=3, eos=5)
    assert none.targets == 0 and math.isnan(none.top1)


def test_metrics_accept_per_position_outputs() -> None:
    class Causal(nn.Module):
        def forward(self, x: Tensor) -> Tensor:  # logit 5 on the input id: predicts "repeat"
            return torch.nn.functional.one_hot(x, 6).float() * 5.0

    x = torch.tensor([[1, 2, 2]])
    y = torch.tensor([[1, 1, 0]])  # hit, miss, padding
    s = nwp_scores(Causal(), x, y, pad=0, oov=3, eos=5)
    assert (s.top1, s.targets) == (0.5, 2)


def test_full_csv_loader_on_a_generated_file(tmp_path: Path) -> None:
    root, rows = tmp_path, generated_sent140(tmp_path)
    opts = {"source": "full", "cache": False, "seq_len": 4, "word_vocab_size": 50}
    users = load_dataset("sent140_nwp", root=root, part="users", **opts)
    proxy = load_dataset("sent140_nwp", root=root, part="proxy", **opts)
    assert users.words == proxy.words and proxy.client_names is None
    assert users.client_names is not None
    # the users are split in two halves (proxy_fraction 0.5): the federated ones are the
    # non-proxy users with >= 2 tweets
    fed = set(users.client_names)
    assert all(sum(1 for u, _ in rows if u == name) >= 2 for name in fed)
    words = set(users.words)
    assert "&" in words and "amp" not in words  # the CSV's HTML escapes are undone
    # the vocabulary comes from the proxy users only: a federated user's own word is not in it
    assert all(f"zebra{name[4:]}" not in words for name in fed)
    # every text of n words gives n + 1 windows: "hello world from uU tT & zebraU" is 7 words
    assert users.train.x.shape[0] + users.test.x.shape[0] == 8 * sum(1 for u, _ in rows if u in fed)
    assert set(users.test.client.tolist()) <= set(users.train.client.tolist())  # type: ignore[union-attr]
    assert users.num_classes == len(users.words) + 4 == users.vocab_size


def test_full_csv_missing_or_altered_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"training\.1600000"):
        load_dataset("sent140_nwp", root=tmp_path, source="full", cache=False)
    root = tmp_path
    generated_sent140(root)
    with pytest.raises(ChecksumError):
        load_dataset("sent140_nwp", root=root, source="full", cache=False, full_sha256="0" * 64)


@pytest.mark.parametrize(
    ("key", "value"),
    [("part", "server"), ("windows", "both"), ("test_fraction", 1.0), ("seq_len", 0)],
)
def test_options_are_validated(tmp_path: Path, key: str, value: object) -> None:
    with pytest.raises(ValueError, match=key):
        load_dataset("sent140_nwp", root=tmp_path, **{key: value})


def test_shipped_sent140_users_and_proxy_share_the_test_tweets() -> None:
    root = require_data(USERS_FILE.relpath)
    users = load_dataset("sent140_nwp", root=root, word_vocab_size=2000)
    proxy = load_dataset("sent140_nwp", root=root, part="proxy", word_vocab_size=2000)
    assert torch.equal(users.test.x, proxy.test.x) and torch.equal(users.test.y, proxy.test.y)
    assert users.client_names is not None and len(users.client_names) == 7086
    assert users.words is not None and len(users.words) == 2000
    # about 900 users have two tweets or more; each holds at least one out
    assert users.test.client is not None
    assert 800 < len(set(users.test.client.tolist())) < 1000
    assert proxy.train.x.shape[0] > 3 * users.train.x.shape[0]  # 30k tweets against 8.7k
