"""MNIST and Fashion-MNIST from the four original IDX ``.gz`` files.

IDX format (LeCun et al.): two zero bytes, a type code (0x08 = uint8), the number of dimensions,
one big-endian uint32 per dimension, then the data in C order. The parser checks the magic, the
dimensions and that the payload has exactly the announced size before any array is built.

Output: ``x`` float32 ``(N, 1, 28, 28)`` with pixel values scaled to [0, 1] (the input of the 2NN
and CNN of McMahan et al. 2017); ``normalize=True`` instead standardises with the training-set
mean and standard deviation (MNIST 0.1307 / 0.3081, Fashion-MNIST 0.2860 / 0.3530). ``y`` int64
in 0..9. No natural clients.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedkit.data.datasets.base import (
    CommonOptions,
    Dataset,
    FedkitDataError,
    Split,
    parse_options,
)
from fedkit.data.datasets.cache import cache_key, cached
from fedkit.data.datasets.files import RemoteFile, ensure_file

__all__ = ["FASHION_MNIST_FILES", "MNIST_FILES", "load_fashion_mnist", "load_mnist", "read_idx"]

_VERSION = 1

_IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx(path: Path, *, ndim: int, tail: tuple[int, ...] = ()) -> np.ndarray:
    """Parse a (gzipped) IDX file after validating its header.

    Args:
        path: an ``.gz`` or raw IDX file.
        ndim: the expected number of dimensions.
        tail: the expected sizes of dimensions 1.. (e.g. ``(28, 28)`` for images).

    Returns:
        The array in native byte order.

    Raises:
        FedkitDataError: bad magic, dimension count, dimension sizes or payload size.
    """
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise FedkitDataError(f"{path}: cannot decompress IDX file: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise FedkitDataError(f"{path}: not an IDX file (bad magic {raw[:4].hex()})")
    if raw[3] != ndim:
        raise FedkitDataError(f"{path}: IDX file has {raw[3]} dimensions, expected {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise FedkitDataError(f"{path}: IDX header truncated")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    if tail and dims[1:] != tail:
        raise FedkitDataError(
            f"{path}: IDX dimensions {dims}, expected (N, {', '.join(map(str, tail))})"
        )
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise FedkitDataError(
            f"{path}: IDX payload is {len(raw) - header} bytes, header {dims} announces "
            f"{expected - header}"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _files(folder: str, urls: tuple[str, ...], md5: dict[str, str]) -> dict[str, RemoteFile]:
    names = {
        "x_train": "train-images-idx3-ubyte.gz",
        "y_train": "train-labels-idx1-ubyte.gz",
        "x_test": "t10k-images-idx3-ubyte.gz",
        "y_test": "t10k-labels-idx1-ubyte.gz",
    }
    return {
        key: RemoteFile(
            relpath=f"{folder}/{name}",
            algorithm="md5",
            digest=md5[name],
            urls=tuple(base + name for base in urls),
        )
        for key, name in names.items()
    }


MNIST_FILES = _files(
    "mnist",
    ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
)
"""The four MNIST files with their published MD5s."""

FASHION_MNIST_FILES = _files(
    "fashion_mnist",
    ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
)
"""The four Fashion-MNIST files with the MD5s published by Zalando Research."""

_STATS = {"mnist": (0.1307, 0.3081), "fashion_mnist": (0.2860, 0.3530)}


@dataclass(frozen=True, kw_only=True)
class MnistOptions(CommonOptions):
    """MNIST / Fashion-MNIST options.

    Attributes:
        normalize: standardise with the training mean/std instead of scaling to [0, 1].
    """

    normalize: bool = False


def _load(name: str, files: dict[str, RemoteFile], root: Path, options: dict[str, Any]) -> Dataset:
    opts = parse_options(MnistOptions, name, options)
    paths = {key: ensure_file(remote, root, opts) for key, remote in files.items()}

    def build() -> tuple[dict[str, np.ndarray], dict[str, str]]:
        arrays = {
            "x_train": read_idx(paths["x_train"], ndim=3, tail=(28, 28)),
            "y_train": read_idx(paths["y_train"], ndim=1),
            "x_test": read_idx(paths["x_test"], ndim=3, tail=(28, 28)),
            "y_test": read_idx(paths["y_test"], ndim=1),
        }
        for split in ("train", "test"):
            nx, ny = arrays[f"x_{split}"].shape[0], arrays[f"y_{split}"].shape[0]
            if nx != ny:
                raise FedkitDataError(f"{name}: {split} has {nx} images but {ny} labels")
            y = arrays[f"y_{split}"]
            if y.dtype != np.uint8 or int(y.max()) > 9:
                raise FedkitDataError(f"{name}: {split} labels outside 0..9")
        return arrays, {}

    key = cache_key(name, _VERSION, {"files": sorted(r.checksum for r in files.values())})
    t, _ = cached(name, key, opts, build)
    mean, std = _STATS[name]

    def images(x: torch.Tensor) -> torch.Tensor:
        out = x.unsqueeze(1).to(torch.float32).div_(255.0)
        return out.sub_(mean).div_(std) if opts.normalize else out

    return Dataset(
        name=name,
        train=Split(images(t["x_train"]), t["y_train"].to(torch.int64)),
        test=Split(images(t["x_test"]), t["y_test"].to(torch.int64)),
        num_classes=10,
        input_shape=(1, 28, 28),
    )


def load_mnist(root: Path, **options: Any) -> Dataset:
    """Load MNIST (60,000 / 10,000) from ``root/mnist``; see the module docstring for options."""
    return _load("mnist", MNIST_FILES, root, options)


def load_fashion_mnist(root: Path, **options: Any) -> Dataset:
    """Load Fashion-MNIST (60,000 / 10,000) from ``root/fashion_mnist``."""
    return _load("fashion_mnist", FASHION_MNIST_FILES, root, options)
