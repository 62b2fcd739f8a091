"""Loaders on the real files in FEDKIT_DATA (skipped, naming the file, when a dataset is absent)."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from fedkit.data.datasets import DATASETS, Dataset, cache_root, load_dataset
from fedkit.data.datasets.femnist import femnist_files
from fedkit.data.datasets.mnist import MNIST_FILES
from fedkit.data.datasets.sent140 import read_sent140_csv
from fedkit.data.datasets.shakespeare import read_tff_snippets
from fedkit.data.text import CHAR_VOCAB
from fedkit.local import IGNORE_INDEX
from tests.conftest import require_data

MNIST = [f"mnist/{r.name}" for r in MNIST_FILES.values()]


@pytest.fixture(scope="module")
def cache_dir() -> Path:
    """The ordinary cache ($FEDKIT_CACHE or ~/.cache/fedkit/cache): only the first run decodes.

    The cold decode and the cache itself are tested on temporary caches in test_datasets_files.
    """
    return cache_root()


def _check(ds: Dataset) -> None:
    for split in (ds.train, ds.test):
        assert split.y.dtype == torch.int64
        assert tuple(split.x.shape[1:]) == ds.input_shape
        if split.client is not None:
            assert ds.client_names is not None
            assert split.client.dtype == torch.int64
            assert int(split.client.min()) >= 0
            assert int(split.client.max()) < len(ds.client_names)


def test_registry_names() -> None:
    assert set(DATASETS) == {
        "mnist",
        "fashion_mnist",
        "femnist",
        "shakespeare",
        "shakespeare_leaf",
        "cifar10",
        "cifar100",
        "sent140",
        "sent140_nwp",
        "synthetic",
    }


def test_mnist_checksums_shapes_and_label_counts(cache_dir: Path) -> None:
    root = require_data(*MNIST)
    for remote in MNIST_FILES.values():
        digest = hashlib.md5((root / remote.relpath).read_bytes()).hexdigest()
        assert digest == remote.digest
    ds = load_dataset("mnist", root=root, cache_dir=cache_dir)
    _check(ds)
    assert ds.train.x.shape == (60000, 1, 28, 28) and ds.test.x.shape == (10000, 1, 28, 28)
    assert ds.train.x.dtype == torch.float32
    assert float(ds.train.x.min()) == 0.0 and float(ds.train.x.max()) == 1.0
    assert ds.num_classes == 10 and ds.client_names is None and ds.train.client is None
    # the well-known per-class counts of MNIST's training and test sets
    assert ds.train.y.bincount().tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949
    ]  # fmt: skip
    assert ds.test.y.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert abs(float(ds.train.x.mean()) - 0.1307) < 1e-3
    normalized = load_dataset("mnist", root=root, cache_dir=cache_dir, normalize=True)
    assert abs(float(normalized.train.x.mean())) < 1e-3
    assert abs(float(normalized.train.x.std()) - 1.0) < 1e-2


def _leaf_headers(path: Path) -> tuple[list[str], list[int]]:
    """users and num_samples of a LEAF file, read with a regex (independent of the loader)."""
    text = gzip.decompress(path.read_bytes())
    users = re.search(rb'"users":\s*(\[[^\]]*\])', text)
    counts = re.search(rb'"num_samples":\s*(\[[^\]]*\])', text)
    assert users and counts
    return json.loads(users.group(1)), json.loads(counts.group(1))


def test_femnist_writers_deduplicated(cache_dir: Path) -> None:
    root = require_data("femnist")
    ds = load_dataset("femnist", root=root, cache_dir=cache_dir)
    _check(ds)
    assert ds.client_names is not None and len(ds.client_names) == 300
    assert ds.num_classes == 62 and ds.input_shape == (1, 28, 28)
    assert ds.train.y.unique().numel() == 62
    assert int(ds.train.y.max()) == 61
    assert ds.train.client is not None and ds.test.client is not None
    assert ds.train.client.unique().numel() == 300
    # values as LEAF stores them: k/255 in [0, 1], white background
    assert float(ds.train.x.min()) == 0.0 and float(ds.train.x.max()) == 1.0
    assert float(ds.train.x.mean()) > 0.5
    # independent count: first source in sorted order wins for a writer seen in several sources
    seen: dict[str, str] = {}
    expected_train = 0
    sources: Counter[str] = Counter()
    for source, train, _ in femnist_files(root):
        users, counts = _leaf_headers(train)
        for user, n in zip(users, counts, strict=True):
            sources[user] += 1
            if user not in seen:
                seen[user] = source
                expected_train += n
    assert len(seen) == 300
    assert sum(1 for c in sources.values() if c > 1) == 20  # as MANIFEST.md states
    assert ds.train.x.shape[0] == expected_train
    assert list(ds.client_names) == sorted(seen)


def test_shakespeare_tff_roles_and_snippets(cache_dir: Path) -> None:
    root = require_data("shakespeare/shakespeare_train.h5", "shakespeare/shakespeare_test.h5")
    train = read_tff_snippets(root / "shakespeare/shakespeare_train.h5")
    test = read_tff_snippets(root / "shakespeare/shakespeare_test.h5")
    assert len(train) == 715 and len(test) == 715
    assert sum(map(len, train.values())) == 16068
    assert sum(map(len, test.values())) == 2356
    assert sum(len(s) for v in train.values() for s in v) == 2359315
    assert sum(len(s) for v in test.values() for s in v) == 339752
    ds = load_dataset("shakespeare", root=root, cache_dir=cache_dir)
    _check(ds)
    assert ds.client_names is not None and len(ds.client_names) == 715
    assert ds.num_classes == ds.vocab_size == CHAR_VOCAB.size == 90
    assert ds.train.x.dtype == torch.int64 and ds.train.x.shape[1:] == (80,)
    # one window per 81 ids of [bos] + snippet + [eos]
    expected = sum((len(s) + 2 + 80) // 81 for v in train.values() for s in v)
    assert ds.train.x.shape[0] == expected
    nxt = ds.train.x[:, 1:]  # padding targets are IGNORE_INDEX
    assert torch.equal(ds.train.y[:, :-1], torch.where(nxt == 0, IGNORE_INDEX, nxt))
    assert ds.train.client is not None and ds.train.client.unique().numel() == 715
    role = ds.client_names.index("ALL_S_WELL_THAT_ENDS_WELL_ADAM")
    first = int((ds.train.client == role).nonzero()[0])
    assert int(ds.train.x[first, 0]) == CHAR_VOCAB.bos
    assert CHAR_VOCAB.decode(ds.train.x[first]).startswith(train[ds.client_names[role]][0][:20])


def test_shakespeare_next_word_windows(cache_dir: Path) -> None:
    root = require_data("shakespeare/shakespeare_train.h5", "shakespeare/shakespeare_test.h5")
    ds = load_dataset("shakespeare", root=root, cache_dir=cache_dir, tokens="word", seq_len=20)
    _check(ds)
    assert ds.vocab_size == ds.num_classes == 10000 + 4
    assert ds.train.x.shape[1:] == (20,) and ds.input_shape == (20,)
    nxt = ds.train.x[:, 1:]  # padding targets are IGNORE_INDEX
    assert torch.equal(ds.train.y[:, :-1], torch.where(nxt == 0, IGNORE_INDEX, nxt))
    assert int(ds.train.x.max()) < ds.vocab_size
    oov = 10001
    assert 0 < float((ds.test.y == oov).double().mean()) < 0.05  # a few unseen words


def test_shakespeare_leaf_sample(cache_dir: Path) -> None:
    root = require_data("shakespeare/leaf_sample")
    ds = load_dataset("shakespeare_leaf", root=root, cache_dir=cache_dir)
    _check(ds)
    assert ds.client_names is not None and len(ds.client_names) == 10
    assert ds.train.x.shape == (41990, 80) and ds.train.y.shape == (41990, 80)
    # the test file's num_samples sum to 4,671 but its x/y lists hold 3,881 samples
    assert ds.test.x.shape == (3881, 80)
    nxt = ds.train.x[:, 1:]  # padding targets are IGNORE_INDEX
    assert torch.equal(ds.train.y[:, :-1], torch.where(nxt == 0, IGNORE_INDEX, nxt))
    last = load_dataset("shakespeare_leaf", root=root, cache_dir=cache_dir, targets="last")
    assert last.train.y.shape == (41990,)
    assert torch.equal(last.train.y, ds.train.y[:, -1])


def test_cifar100_npz_counts_and_normalisation(cache_dir: Path) -> None:
    root = require_data("cifar100/cifar100_rebuilt_uint8.npz")
    ds = load_dataset("cifar100", root=root, cache_dir=cache_dir)
    _check(ds)
    assert ds.train.x.shape == (50000, 3, 32, 32) and ds.test.x.shape == (10000, 3, 32, 32)
    assert ds.train.y.bincount(minlength=100).tolist() == [500] * 100
    assert ds.test.y.bincount(minlength=100).tolist() == [100] * 100
    mean = ds.train.x.mean(dim=(0, 2, 3))
    second_moment = ds.train.x.square().mean(dim=(0, 2, 3))  # = variance, as the mean is 0
    assert torch.allclose(mean, torch.zeros(3), atol=1e-3)
    assert torch.allclose(second_moment, torch.ones(3), atol=1e-3)
    # shuffled: the stored file is grouped by class, the first 100 labels are not
    assert ds.train.y[:100].unique().numel() > 50
    del ds
    raw = load_dataset("cifar100", root=root, cache_dir=cache_dir, normalize=False)
    channel_mean = raw.train.x.mean(dim=(0, 2, 3)) * 255
    assert torch.allclose(channel_mean, torch.tensor([129.3, 124.1, 112.4]), atol=0.05)


def test_sent140_rows_labels_clients(cache_dir: Path) -> None:
    root = require_data("sent140/testdata.manual.2009.06.14.csv")
    rows = read_sent140_csv(root / "sent140/testdata.manual.2009.06.14.csv")
    assert len(rows) == 498
    assert Counter(r.polarity for r in rows) == {0: 177, 2: 139, 4: 182}
    ds = load_dataset("sent140", root=root, cache_dir=cache_dir)
    _check(ds)
    assert len(ds.train) + len(ds.test) == 177 + 182
    assert set(torch.cat([ds.train.y, ds.test.y]).tolist()) == {0, 1}
    assert int(torch.cat([ds.train.y, ds.test.y]).sum()) == 182
    assert ds.train.x.shape[1:] == (25,) and ds.vocab_size is not None
    assert int(ds.train.x.max()) < ds.vocab_size
    keep = load_dataset("sent140", root=root, cache_dir=cache_dir, neutral="keep")
    assert len(keep.train) + len(keep.test) == 498 and keep.num_classes == 3
    assert Counter(torch.cat([keep.train.y, keep.test.y]).tolist()) == {0: 177, 1: 182, 2: 139}
