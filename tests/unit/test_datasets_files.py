"""Checksums, missing and corrupted files, the cache, parsers and options of the dataset loaders."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedkit.data.datasets import (
    ChecksumError,
    CommonOptions,
    DatasetNotFoundError,
    FedkitDataError,
    cifar,
    load_dataset,
    mnist,
)
from fedkit.data.datasets import cache as cache_mod
from fedkit.data.datasets.files import RemoteFile, ensure_file
from fedkit.data.datasets.mnist import MNIST_FILES, read_idx
from tests.conftest import require_data

MNIST = [f"mnist/{r.name}" for r in MNIST_FILES.values()]


def _mirror_mnist(real: Path, dest: Path) -> Path:
    """A data directory whose mnist/ links to the real files (cheap, read-only sources)."""
    (dest / "mnist").mkdir(parents=True)
    for remote in MNIST_FILES.values():
        (dest / remote.relpath).symlink_to(real / remote.relpath)
    return dest


# ------------------------------------------------------------------ missing and corrupted files


def test_missing_file_names_file_checksum_and_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", root=tmp_path, cache_dir=tmp_path / "cache")
    msg = str(info.value)
    assert "train-images-idx3-ubyte.gz" in msg
    assert "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873" in msg
    assert str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz") in msg
    assert "download=True" in msg and "given explicitly" in msg


def test_missing_npz_and_pickles_named_for_cifar100(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar100", root=tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "cifar100" / "cifar-100-python" / "train") in msg
    assert "md5:16019d7e3df5f24257cddd939b257f8d" in msg
    assert str(tmp_path / "cifar100" / "cifar100_rebuilt_uint8.npz") in msg


def test_missing_femnist_explains_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="LEAF"):
        load_dataset("femnist", root=tmp_path)


def test_truncated_file_names_file_and_expected_checksum(tmp_path: Path) -> None:
    real = require_data(*MNIST)
    root = tmp_path / "data"
    (root / "mnist").mkdir(parents=True)
    for key, remote in MNIST_FILES.items():
        if key != "y_test":
            (root / remote.relpath).symlink_to(real / remote.relpath)
    broken = root / MNIST_FILES["y_test"].relpath
    shutil.copyfile(real / MNIST_FILES["y_test"].relpath, broken)
    with open(broken, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ChecksumError) as info:
        load_dataset("mnist", root=root, cache_dir=tmp_path / "cache")
    msg = str(info.value)
    assert str(broken) in msg
    assert "ec29112dd5afa0611ce80d1b7f02629c" in msg
    assert info.value.expected == "ec29112dd5afa0611ce80d1b7f02629c"
    assert info.value.actual == hashlib.md5(broken.read_bytes()).hexdigest()


def test_verification_stamp_does_not_hide_a_changed_file(tmp_path: Path) -> None:
    payload = tmp_path / "data" / "x.bin"
    payload.parent.mkdir()
    payload.write_bytes(b"a" * 1000)
    remote = RemoteFile(
        relpath="x.bin", algorithm="sha256", digest=hashlib.sha256(b"a" * 1000).hexdigest()
    )
    opts = CommonOptions(cache_dir=tmp_path / "cache")
    assert ensure_file(remote, tmp_path / "data", opts) == payload
    assert list((tmp_path / "cache" / "verified").iterdir())  # stamp written
    payload.write_bytes(b"a" * 999)  # size (and mtime) change: the stamp no longer applies
    with pytest.raises(ChecksumError):
        ensure_file(remote, tmp_path / "data", opts)


# ------------------------------------------------------------------ cache


def test_cache_hit_skips_decoding_and_matches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = require_data(*MNIST)
    root = _mirror_mnist(real, tmp_path / "data")
    cache = tmp_path / "cache"
    cold = load_dataset("mnist", root=root, cache_dir=cache)
    entries = list(cache.glob("mnist-*.safetensors"))
    assert len(entries) == 1

    def no_decode(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("decoded again despite a cache entry")

    monkeypatch.setattr(mnist, "read_idx", no_decode)
    warm = load_dataset("mnist", root=root, cache_dir=cache)
    assert torch.equal(warm.train.x, cold.train.x) and torch.equal(warm.test.y, cold.test.y)
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


def test_unreadable_cache_entry_is_rebuilt(tmp_path: Path) -> None:
    real = require_data(*MNIST)
    root = _mirror_mnist(real, tmp_path / "data")
    cache = tmp_path / "cache"
    first = load_dataset("mnist", root=root, cache_dir=cache)
    (entry,) = cache.glob("mnist-*.safetensors")
    with open(entry, "r+b") as f:
        f.truncate(100)
    again = load_dataset("mnist", root=root, cache_dir=cache)
    assert torch.equal(again.train.y, first.train.y)
    assert entry.stat().st_size > 100


def test_crash_while_writing_leaves_no_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(tensors: Any, path: str, metadata: Any = None) -> None:
        Path(path).write_bytes(b"half")  # a partial write, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod, "save_file", crash)
    opts = CommonOptions(cache_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        cache_mod.cached("toy", "k", opts, lambda: ({"a": np.arange(3)}, {}))
    assert list(tmp_path.iterdir()) == []


def test_cache_off_writes_nothing(tmp_path: Path) -> None:
    tensors, meta = cache_mod.cached(
        "toy",
        "k",
        CommonOptions(cache=False, cache_dir=tmp_path),
        lambda: ({"a": np.ones(2)}, {"m": "1"}),
    )
    assert tensors["a"].tolist() == [1.0, 1.0] and meta == {"m": "1"}
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


def test_cache_key_depends_on_every_part() -> None:
    base = cache_mod.cache_key("d", 1, {"files": ["md5:1"], "opt": 1})
    assert base == cache_mod.cache_key("d", 1, {"opt": 1, "files": ["md5:1"]})
    assert base != cache_mod.cache_key("d", 2, {"files": ["md5:1"], "opt": 1})
    assert base != cache_mod.cache_key("d", 1, {"files": ["md5:2"], "opt": 1})
    assert base != cache_mod.cache_key("d", 1, {"files": ["md5:1"], "opt": 2})


# ------------------------------------------------------------------ IDX parser


def _idx(data: bytes, dims: tuple[int, ...], code: int = 0x08) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + data


def test_read_idx_roundtrip_and_validation(tmp_path: Path) -> None:
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    ok = tmp_path / "ok.gz"
    ok.write_bytes(gzip.compress(_idx(images.tobytes(), (2, 28, 28))))
    assert np.array_equal(read_idx(ok, ndim=3, tail=(28, 28)), images)
    ints = tmp_path / "ints"
    ints.write_bytes(_idx(np.array([1, -2], dtype=">i4").tobytes(), (2,), code=0x0C))
    assert read_idx(ints, ndim=1).tolist() == [1, -2]
    cases = {
        "magic": b"\x01\x00\x08\x03" + b"\x00" * 20,
        "dimensions": _idx(images.tobytes(), (2, 28, 28))[:3] + b"\x02" + b"\x00" * 20,
        "payload": _idx(images.tobytes()[:-1], (2, 28, 28)),
        "expected": _idx(np.zeros(2 * 27 * 28, np.uint8).tobytes(), (2, 27, 28)),
    }
    for word, blob in cases.items():
        bad = tmp_path / f"bad-{word}"
        bad.write_bytes(blob)
        with pytest.raises(FedkitDataError, match=word) as info:
            read_idx(bad, ndim=3, tail=(28, 28))
        assert str(bad) in str(info.value)
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(_idx(images.tobytes(), (2, 28, 28)))[:50])
    with pytest.raises(FedkitDataError, match="decompress"):
        read_idx(broken, ndim=3)


# ------------------------------------------------------------------ CIFAR pickles


def _batch_bytes(n: int, seed: int, label_key: str) -> tuple[bytes, np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, n).tolist()
    obj = {
        b"batch_label": b"b",
        label_key.encode(): labels,
        b"data": data,
        b"filenames": [b"f"] * n,
    }
    return pickle.dumps(obj, protocol=2), data, labels


def test_restricted_unpickler_reads_batches_and_refuses_other_globals(tmp_path: Path) -> None:
    blob, data, labels = _batch_bytes(4, 0, "labels")
    path = tmp_path / "data_batch_1"
    path.write_bytes(blob)
    batch = cifar.read_cifar_batch(path)
    assert np.array_equal(batch["data"], data) and batch["labels"] == labels
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil"
    evil.write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    with pytest.raises(FedkitDataError, match="not allowed"):
        cifar.read_cifar_batch(evil)
    assert not marker.exists()


def test_cifar10_from_pickled_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    files: dict[str, list[RemoteFile]] = {"train": [], "test": []}
    expected: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    names = [("train", f"data_batch_{i}") for i in range(1, 6)] + [("test", "test_batch")]
    for seed, (split, name) in enumerate(names):
        blob, data, _ = _batch_bytes(3, seed, "labels")
        (folder / name).write_bytes(blob)
        expected[split].append(data)
        digest = hashlib.md5(blob).hexdigest()
        relpath = f"cifar10/cifar-10-batches-py/{name}"
        files[split].append(RemoteFile(relpath=relpath, algorithm="md5", digest=digest))
    monkeypatch.setattr(cifar, "CIFAR10_PICKLES", files)
    ds = load_dataset("cifar10", root=tmp_path, cache_dir=tmp_path / "cache", normalize=False)
    assert ds.train.x.shape == (15, 3, 32, 32) and ds.test.x.shape == (3, 3, 32, 32)
    raw = np.concatenate(expected["train"]).reshape(15, 3, 32, 32)
    assert torch.allclose(ds.train.x, torch.from_numpy(raw).float() / 255)
    normed = load_dataset("cifar10", root=tmp_path, cache_dir=tmp_path / "cache")
    assert torch.allclose(normed.train.x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)


# ------------------------------------------------------------------ Synthetic and options


def test_synthetic_is_deterministic_and_shaped() -> None:
    a = load_dataset("synthetic", alpha=0.5, beta=0.5, seed=3)
    b = load_dataset("synthetic", alpha=0.5, beta=0.5, seed=3)
    c = load_dataset("synthetic", alpha=0.5, beta=0.5, seed=4)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.train.x[:10], c.train.x[:10])
    assert a.input_shape == (60,) and a.num_classes == 10
    assert a.client_names is not None and len(a.client_names) == 30
    assert a.train.client is not None and a.test.client is not None
    train_sizes = a.train.client.bincount(minlength=30)
    test_sizes = a.test.client.bincount(minlength=30)
    totals = train_sizes + test_sizes
    assert int(totals.min()) >= 50  # floor(lognormal) + 50
    assert torch.equal(train_sizes, (0.9 * totals.double()).floor().long())
    assert int(a.train.y.max()) <= 9 and int(a.train.y.min()) >= 0
    iid = load_dataset("synthetic", iid=True, alpha=0.0, beta=0.0)
    assert iid.train.x.shape[1] == 60


def test_unknown_dataset_and_options_are_named() -> None:
    with pytest.raises(ValueError, match=r"'nope'.*allowed"):
        load_dataset("nope")
    with pytest.raises(ValueError, match=r"\['colour'\].*allowed"):
        load_dataset("synthetic", colour=1)
    with pytest.raises(ValueError, match="alpha=-1"):
        load_dataset("synthetic", alpha=-1)
    with pytest.raises(ValueError, match="mirror"):
        load_dataset("synthetic", mirror="ftp://x")
    with pytest.raises(ValueError, match="tokens='byte'"):
        load_dataset("shakespeare", tokens="byte")


def test_restricted_unpickler_rejects_non_batch(tmp_path: Path) -> None:
    path = tmp_path / "list"
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(FedkitDataError, match="not a CIFAR python batch"):
        cifar.read_cifar_batch(path)
    path.write_bytes(io.BytesIO(b"garbage").getvalue())
    with pytest.raises(FedkitDataError):
        cifar.read_cifar_batch(path)


def test_fashion_mnist_from_idx_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    files: dict[str, RemoteFile] = {}
    arrays: dict[str, np.ndarray] = {}
    for split, n in (("train", 5), ("test", 3)):
        arrays[f"x_{split}"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"y_{split}"] = rng.integers(0, 10, n, dtype=np.uint8)
    for key, remote in mnist.FASHION_MNIST_FILES.items():
        a = arrays[key]
        blob = gzip.compress(_idx(a.tobytes(), a.shape))
        path = tmp_path / remote.relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
        digest = hashlib.md5(blob).hexdigest()
        files[key] = RemoteFile(relpath=remote.relpath, algorithm="md5", digest=digest)
    monkeypatch.setattr(mnist, "FASHION_MNIST_FILES", files)
    ds = load_dataset("fashion_mnist", root=tmp_path, cache_dir=tmp_path / "cache")
    assert ds.train.x.shape == (5, 1, 28, 28) and ds.test.x.shape == (3, 1, 28, 28)
    expected = torch.from_numpy(arrays["x_train"]).float().unsqueeze(1) / 255
    assert torch.allclose(ds.train.x, expected)
    assert ds.test.y.tolist() == arrays["y_test"].tolist()
    normed = load_dataset(
        "fashion_mnist", root=tmp_path, cache_dir=tmp_path / "cache", normalize=True
    )
    assert torch.allclose(normed.train.x, (expected - 0.2860) / 0.3530, atol=1e-6)


def test_cifar100_pickles_fine_and_coarse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    files: dict[str, list[RemoteFile]] = {}
    fine: dict[str, list[int]] = {}
    for split, n in (("train", 6), ("test", 2)):
        fine[split] = rng.integers(0, 100, n).tolist()
        obj = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"fine_labels": fine[split],
            b"coarse_labels": [f // 5 for f in fine[split]],
        }
        blob = pickle.dumps(obj, protocol=2)
        relpath = f"cifar100/cifar-100-python/{split}"
        (tmp_path / relpath).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relpath).write_bytes(blob)
        digest = hashlib.md5(blob).hexdigest()
        files[split] = [RemoteFile(relpath=relpath, algorithm="md5", digest=digest)]
    monkeypatch.setattr(cifar, "CIFAR100_PICKLES", files)
    cache = tmp_path / "cache"
    ds = load_dataset("cifar100", root=tmp_path, cache_dir=cache, source="pickle")
    assert ds.num_classes == 100 and ds.train.y.tolist() == fine["train"]
    coarse = load_dataset("cifar100", root=tmp_path, cache_dir=cache, label="coarse")
    assert coarse.num_classes == 20
    assert coarse.test.y.tolist() == [f // 5 for f in fine["test"]]
    with pytest.raises(ValueError, match="coarse"):
        load_dataset("cifar100", root=tmp_path, cache_dir=cache, source="npz", label="coarse")
