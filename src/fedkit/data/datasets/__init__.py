"""Dataset loaders from canonical files, verified by checksum, with a cache of decoded arrays.

``load_dataset(name, root=None, **options)`` returns a :class:`Dataset` of tensors for one of
:data:`DATASETS`. Files are read from the data directory (``root``, else ``$FEDKIT_DATA``, else
``~/.cache/fedkit``) and checked against their published checksums; a missing file raises
:class:`DatasetNotFoundError` saying which file (and checksum) to put where, or, with
``download=True``, is fetched from its canonical URL, verified and renamed into place. Decoded
arrays are cached under ``$FEDKIT_CACHE`` (default ``~/.cache/fedkit/cache``), never in the data
directory. Options common to every loader are the fields of :class:`CommonOptions`; each
loader's module documents its own (unknown options raise ``ValueError`` listing the allowed ones).

Example:
    >>> ds = load_dataset("mnist")                      # doctest: +SKIP
    >>> ds.train.x.shape, ds.num_classes                # doctest: +SKIP
    (torch.Size([60000, 1, 28, 28]), 10)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedkit.data.datasets.base import (
    ChecksumError,
    CommonOptions,
    Dataset,
    DatasetNotFoundError,
    FedkitDataError,
    Split,
    cache_root,
    data_root,
)
from fedkit.data.datasets.cifar import load_cifar10, load_cifar100
from fedkit.data.datasets.femnist import load_femnist
from fedkit.data.datasets.mnist import load_fashion_mnist, load_mnist
from fedkit.data.datasets.sent140 import load_sent140
from fedkit.data.datasets.sent140_nwp import load_sent140_nwp
from fedkit.data.datasets.shakespeare import load_shakespeare, load_shakespeare_leaf
from fedkit.data.datasets.synthetic import load_synthetic

__all__ = [
    "DATASETS",
    "ChecksumError",
    "CommonOptions",
    "Dataset",
    "DatasetNotFoundError",
    "FedkitDataError",
    "Loader",
    "Split",
    "cache_root",
    "data_root",
    "load_dataset",
]

Loader = Callable[..., Dataset]
"""``loader(root: Path, **options) -> Dataset``."""

DATASETS: dict[str, Loader] = {
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "femnist": load_femnist,
    "shakespeare": load_shakespeare,
    "shakespeare_leaf": load_shakespeare_leaf,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "sent140": load_sent140,
    "sent140_nwp": load_sent140_nwp,
    "synthetic": load_synthetic,
}
"""Registry of dataset names to loaders."""


def load_dataset(name: str, *, root: Path | str | None = None, **options: Any) -> Dataset:
    """Load a dataset by name.

    Args:
        name: one of :data:`DATASETS`.
        root: data directory; ``None`` means :func:`data_root`.
        **options: :class:`CommonOptions` fields (``download``, ``mirror``, ``cache``,
            ``cache_dir``, ``rehash``) and the loader's own options.

    Raises:
        ValueError: unknown dataset name or option (the message lists the allowed ones).
        DatasetNotFoundError: a file is missing (the message says which, its checksum, where).
        ChecksumError: a file does not match its published checksum.
        FedkitDataError: a file passed its checksum but could not be decoded.
    """
    if name not in DATASETS:
        raise ValueError(f"dataset={name!r}: unknown; allowed: {sorted(DATASETS)}")
    return DATASETS[name](Path(root) if root is not None else data_root(), **options)
