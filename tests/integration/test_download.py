"""Download path of the loaders against a local HTTP server on 127.0.0.1 (no internet)."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedkit.data.datasets import (
    ChecksumError,
    CommonOptions,
    DatasetNotFoundError,
    load_dataset,
)
from fedkit.data.datasets.files import RemoteFile, ensure_file
from fedkit.data.datasets.mnist import MNIST_FILES
from tests.conftest import require_data
from tests.helpers.www import serve_folder

pytestmark = pytest.mark.net


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 serving ``tmp_path / "www"``; yields (base URL, folder)."""
    with serve_folder(tmp_path) as served:
        yield served


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def _opts(tmp_path: Path, **kw: object) -> CommonOptions:
    return CommonOptions(download=True, cache_dir=tmp_path / "cache", **kw)  # type: ignore[arg-type]


def test_download_verifies_and_renames(server: tuple[str, Path], tmp_path: Path) -> None:
    url, www = server
    payload = np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    (www / "blob.bin").write_bytes(payload)
    remote = RemoteFile(
        relpath="sub/blob.bin",
        algorithm="sha256",
        digest=hashlib.sha256(payload).hexdigest(),
        urls=(f"{url}/blob.bin",),
    )
    root = tmp_path / "data"
    path = ensure_file(remote, root, _opts(tmp_path))
    assert path == root / "sub" / "blob.bin" and path.read_bytes() == payload
    assert _leftovers(path.parent) == []
    # present now: no download needed even with download off
    assert ensure_file(remote, root, CommonOptions(cache_dir=tmp_path / "cache")) == path


def test_wrong_checksum_leaves_nothing(server: tuple[str, Path], tmp_path: Path) -> None:
    url, www = server
    (www / "blob.bin").write_bytes(b"not the published file")
    expected = hashlib.md5(b"the published file").hexdigest()
    remote = RemoteFile(
        relpath="blob.bin", algorithm="md5", digest=expected, urls=(f"{url}/blob.bin",)
    )
    root = tmp_path / "data"
    with pytest.raises(ChecksumError) as info:
        ensure_file(remote, root, _opts(tmp_path))
    assert info.value.expected == expected
    assert info.value.actual == hashlib.md5(b"not the published file").hexdigest()
    assert f"{url}/blob.bin" in str(info.value)
    assert not (root / "blob.bin").exists()
    assert _leftovers(root) == []


def test_http_error_is_reported_as_not_found(server: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = server
    remote = RemoteFile(
        relpath="gone.bin",
        algorithm="sha256",
        digest="0" * 64,
        urls=(f"{url}/gone.bin",),
    )
    with pytest.raises(DatasetNotFoundError, match=r"Download failed.*404"):
        ensure_file(remote, tmp_path / "data", _opts(tmp_path))


@pytest.mark.parametrize("kind", ["tar.gz", "tar.bz2", "zip"])
def test_archive_member_is_extracted(server: tuple[str, Path], tmp_path: Path, kind: str) -> None:
    url, www = server
    wanted, other = b"wanted member bytes" * 100, b"other member"
    archive = www / f"bundle.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("pkg/other.bin", other)
            zf.writestr("pkg/data.bin", wanted)
    else:
        with tarfile.open(archive, f"w:{kind.split('.')[1]}") as tf:
            for name, blob in (("pkg/other.bin", other), ("pkg/data.bin", wanted)):
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                tf.addfile(info, io.BytesIO(blob))
    remote = RemoteFile(
        relpath="data.bin",
        algorithm="sha256",
        digest=hashlib.sha256(wanted).hexdigest(),
        urls=(f"{url}/bundle.{kind}",),
        member="pkg/data.bin",
    )
    path = ensure_file(remote, tmp_path / "data", _opts(tmp_path))
    assert path.read_bytes() == wanted
    assert _leftovers(path.parent) == []


def test_mnist_download_from_local_mirror(server: tuple[str, Path], tmp_path: Path) -> None:
    real = require_data(*[f"mnist/{r.name}" for r in MNIST_FILES.values()])
    url, www = server
    for remote in MNIST_FILES.values():
        (www / remote.name).symlink_to(real / remote.relpath)
    root = tmp_path / "data"
    ds = load_dataset(
        "mnist", root=root, download=True, mirror=f"{url}/", cache_dir=tmp_path / "cache"
    )
    assert ds.train.x.shape == (60000, 1, 28, 28)
    for remote in MNIST_FILES.values():
        assert (root / remote.relpath).read_bytes() == (real / remote.relpath).read_bytes()


def test_mnist_download_with_wrong_files_is_refused(
    server: tuple[str, Path], tmp_path: Path
) -> None:
    url, www = server
    # well-formed IDX files that are not the published ones
    images = bytes([0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 28, 0, 0, 0, 28]) + bytes(784)
    for remote in MNIST_FILES.values():
        (www / remote.name).write_bytes(gzip.compress(images))
    root = tmp_path / "data"
    with pytest.raises(ChecksumError) as info:
        load_dataset("mnist", root=root, download=True, mirror=url, cache_dir=tmp_path / "cache")
    assert info.value.expected == MNIST_FILES["x_train"].digest
    assert not (root / MNIST_FILES["x_train"].relpath).exists()
    assert _leftovers(root / "mnist") == []
