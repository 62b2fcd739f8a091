"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009): the original python batches, or a ``.npz`` of arrays.

Sources, tried in this order with ``source="auto"``:

1. The original pickled batches, ``cifar10/cifar-10-batches-py/{data_batch_1..5,test_batch}`` and
   ``cifar100/cifar-100-python/{train,test}`` (members of the official ``.tar.gz``), verified by
   their published MD5s. They are pickles; fedkit never unpickles untrusted bytes, so (a) a file is
   read only after its checksum matched the published one, i.e. only the exact published bytes
   are ever unpickled, and (b) even then a restricted unpickler is used that resolves only the
   globals such a batch needs (numpy's ``_reconstruct``, ``ndarray`` and ``dtype``, and
   ``_codecs.encode`` for bytes in protocol-2 pickles written by Python 3) and refuses any
   other (``os.system`` and the like), so a tampered file cannot run code.
2. (CIFAR-100 only) ``cifar100/cifar100_rebuilt_uint8.npz`` with ``x_train`` (50000, 32, 32, 3)
   uint8, ``y_train_fine``, ``x_test``, ``y_test_fine``, read with ``allow_pickle=False``. Its
   splits are grouped by class, so they are shuffled with a fixed permutation
   (``shuffle_seed``, default 0; ``None`` keeps the stored order).

Output: ``x`` float32 ``(N, 3, 32, 32)``, standardised per channel with the training split's own
mean and standard deviation (``normalize=False`` gives [0, 1]); ``y`` int64 (fine labels for
CIFAR-100, or ``label="coarse"`` from the pickles). No natural clients.
"""

from __future__ import annotations

import codecs
import io
import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedkit.data.datasets.base import (
    CommonOptions,
    Dataset,
    DatasetNotFoundError,
    FedkitDataError,
    Split,
    parse_options,
)
from fedkit.data.datasets.cache import cache_key, cached
from fedkit.data.datasets.files import RemoteFile, ensure_file, not_found_message

__all__ = [
    "CIFAR10_PICKLES",
    "CIFAR100_NPZ",
    "CIFAR100_PICKLES",
    "CifarOptions",
    "load_cifar10",
    "load_cifar100",
    "read_cifar_batch",
]

_VERSION = 1
_C10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_C100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"


def _batch(folder: str, name: str, md5: str, url: str) -> RemoteFile:
    member = f"{folder.split('/')[-1]}/{name}"
    return RemoteFile(
        relpath=f"{folder}/{name}", algorithm="md5", digest=md5, urls=(url,), member=member
    )


CIFAR10_PICKLES: dict[str, list[RemoteFile]] = {
    "train": [
        _batch("cifar10/cifar-10-batches-py", f"data_batch_{i}", md5, _C10_URL)
        for i, md5 in enumerate(
            (
                "c99cafc152244af753f735de768cd75f",
                "d4bba439e000b95fd0a9bffe97cbabec",
                "54ebc095f3ab1f0389bbae665268c751",
                "634d18415352ddfa80567beed471001a",
                "482c414d41f54cd18b22e5b47cb7c3cb",
            ),
            start=1,
        )
    ],
    "test": [
        _batch(
            "cifar10/cifar-10-batches-py",
            "test_batch",
            "40351d587109b95175f43aff81a1287e",
            _C10_URL,
        )
    ],
}
"""CIFAR-10's python batches with their published MD5s."""

CIFAR100_PICKLES: dict[str, list[RemoteFile]] = {
    "train": [
        _batch("cifar100/cifar-100-python", "train", "16019d7e3df5f24257cddd939b257f8d", _C100_URL)
    ],
    "test": [
        _batch("cifar100/cifar-100-python", "test", "f0ef6b0ae62326f3e7ffdfab6717acfc", _C100_URL)
    ],
}
"""CIFAR-100's python batches with their published MD5s."""

CIFAR100_NPZ = RemoteFile(
    relpath="cifar100/cifar100_rebuilt_uint8.npz",
    algorithm="sha256",
    digest="a279c3566f5e6fddc0e1cb71854f7a62e89b844b30b25d9cd967c1af8e39afd4",
)
"""The CIFAR-100 arrays of fedkit's test data (official split, fine labels; no public URL)."""


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = _reconstruct
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(text, "latin1"); a pure function
    allowed[("_codecs", "encode")] = codecs.encode
    return allowed


class _BatchUnpickler(pickle.Unpickler):
    """Resolves only numpy's array-reconstruction globals; anything else is refused."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed in a CIFAR batch"
            ) from None


def read_cifar_batch(path: Path) -> dict[str, Any]:
    """Read one CIFAR python batch with the restricted unpickler.

    Args:
        path: a batch file (``data_batch_1``, ``test``...). Callers verify its checksum first.

    Returns:
        The batch dict with ``str`` keys (``data``, ``labels`` / ``fine_labels``...).

    Raises:
        FedkitDataError: not a batch, or it references a global other than numpy's.
    """
    try:
        obj = _BatchUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise FedkitDataError(f"{path}: not a CIFAR python batch: {e}") from e
    if not isinstance(obj, dict):
        raise FedkitDataError(f"{path}: not a CIFAR python batch (not a dict)")
    batch = {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}
    if "data" not in batch:
        raise FedkitDataError(f"{path}: not a CIFAR python batch (no 'data' entry)")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise FedkitDataError(f"{path}: 'data' is not a uint8 matrix")
    if data.shape[1] != 3072:
        raise FedkitDataError(f"{path}: 'data' rows have {data.shape[1]} values, expected 3072")
    return batch


@dataclass(frozen=True, kw_only=True)
class CifarOptions(CommonOptions):
    """CIFAR options.

    Attributes:
        source: ``"auto"``, ``"pickle"`` or ``"npz"`` (CIFAR-100 only).
        normalize: per-channel standardisation with the training split's statistics.
        shuffle_seed: seed of the fixed permutation applied to the class-grouped ``.npz``
            splits; ``None`` keeps the stored order. Not used for the pickles.
        label: ``"fine"`` or ``"coarse"`` (CIFAR-100 pickles only).
    """

    source: str = "auto"
    normalize: bool = True
    shuffle_seed: int | None = 0
    label: str = "fine"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source not in ("auto", "pickle", "npz"):
            raise ValueError(f"source={self.source!r}: allowed 'auto', 'pickle', 'npz'")
        if self.label not in ("fine", "coarse"):
            raise ValueError(f"label={self.label!r}: allowed 'fine', 'coarse'")


def _channel_stats(x: np.ndarray) -> dict[str, str]:
    """Per-channel mean and std of uint8 images ``(N, 3, H, W)`` in [0, 1] units, exactly."""
    total = np.zeros(3, dtype=np.float64)
    total_sq = np.zeros(3, dtype=np.float64)
    for start in range(0, x.shape[0], 4096):
        block = x[start : start + 4096].astype(np.int64)
        total += block.sum(axis=(0, 2, 3))
        total_sq += (block * block).sum(axis=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    var = (total_sq - count * mean * mean) / max(count - 1, 1)
    return {
        "mean": json.dumps((mean / 255.0).tolist()),
        "std": json.dumps((np.sqrt(var) / 255.0).tolist()),
    }


def _from_pickles(
    files: dict[str, list[Path]], label_key: str
) -> Callable[[], tuple[dict[str, np.ndarray], dict[str, str]]]:
    def build() -> tuple[dict[str, np.ndarray], dict[str, str]]:
        arrays: dict[str, np.ndarray] = {}
        for split, paths in files.items():
            xs, ys = [], []
            for p in paths:
                batch = read_cifar_batch(p)
                labels = np.asarray(batch.get(label_key, []), dtype=np.int64)
                if labels.shape != (batch["data"].shape[0],):
                    raise FedkitDataError(f"{p}: {label_key!r} does not match the image count")
                xs.append(batch["data"].reshape(-1, 3, 32, 32))
                ys.append(labels)
            arrays[f"x_{split}"] = np.concatenate(xs)
            arrays[f"y_{split}"] = np.concatenate(ys)
        return arrays, _channel_stats(arrays["x_train"])

    return build


def _from_npz(
    path: Path, shuffle_seed: int | None
) -> Callable[[], tuple[dict[str, np.ndarray], dict[str, str]]]:
    def build() -> tuple[dict[str, np.ndarray], dict[str, str]]:
        arrays: dict[str, np.ndarray] = {}
        try:
            with np.load(path, allow_pickle=False) as z:
                stored = {k: z[k] for k in ("x_train", "y_train_fine", "x_test", "y_test_fine")}
        except (KeyError, ValueError, OSError) as e:
            raise FedkitDataError(f"{path}: not the expected CIFAR-100 .npz: {e}") from e
        for i, split in enumerate(("train", "test")):
            x, y = stored[f"x_{split}"], stored[f"y_{split}_fine"]
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
                raise FedkitDataError(f"{path}: x_{split} is {x.dtype} {x.shape}")
            if y.shape != (x.shape[0],):
                raise FedkitDataError(f"{path}: y_{split}_fine does not match x_{split}")
            if shuffle_seed is not None:
                perm = np.random.default_rng([shuffle_seed, i]).permutation(x.shape[0])
                x, y = x[perm], y[perm]
            arrays[f"x_{split}"] = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
            arrays[f"y_{split}"] = y.astype(np.int64)
        return arrays, _channel_stats(arrays["x_train"])

    return build


def _load(name: str, num_classes: int, root: Path, options: dict[str, Any]) -> Dataset:
    opts = parse_options(CifarOptions, name, options)
    pickles = CIFAR10_PICKLES if name == "cifar10" else CIFAR100_PICKLES
    have_pickles = all((root / r.relpath).is_file() for rs in pickles.values() for r in rs)
    npz = CIFAR100_NPZ if name == "cifar100" else None
    source = opts.source
    if source == "npz" and npz is None:
        raise ValueError(f"source='npz': {name} has no .npz source; allowed 'auto', 'pickle'")
    if source == "auto":
        if have_pickles or npz is None or opts.download:
            source = "pickle"
        elif (root / npz.relpath).is_file():
            source = "npz"
        else:
            first = pickles["train"][0]
            raise DatasetNotFoundError(
                not_found_message(first, root)
                + f" (and the other batches beside it), or the arrays with {npz.checksum} at "
                f"{root / npz.relpath}"
            )
    if source == "npz" and opts.label != "fine":
        raise ValueError("label='coarse': the .npz source has fine labels only; use the pickles")
    if source == "pickle":
        label_key = "labels" if name == "cifar10" else f"{opts.label}_labels"
        paths = {s: [ensure_file(r, root, opts) for r in rs] for s, rs in pickles.items()}
        sums = [r.checksum for rs in pickles.values() for r in rs]
        build = _from_pickles(paths, label_key)
        parts: dict[str, object] = {"files": sums, "label": opts.label}
        if opts.label == "coarse":
            num_classes = 20
    else:
        assert npz is not None
        path = ensure_file(npz, root, opts)
        build = _from_npz(path, opts.shuffle_seed)
        parts = {"files": [npz.checksum], "shuffle_seed": opts.shuffle_seed}
    t, meta = cached(name, cache_key(name, _VERSION, {"source": source, **parts}), opts, build)
    for split in ("train", "test"):
        y = t[f"y_{split}"]
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise FedkitDataError(f"{name}: {split} labels outside 0..{num_classes - 1}")
    scale = 1.0 / 255.0
    x_train = t["x_train"]
    if opts.normalize:
        mean = torch.tensor(json.loads(meta["mean"]), dtype=torch.float64)
        std = torch.tensor(json.loads(meta["std"]), dtype=torch.float64)
    else:
        mean, std = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)

    def images(x: torch.Tensor) -> torch.Tensor:
        out = x.to(torch.float32).mul_(scale)
        m = mean.to(torch.float32).view(1, 3, 1, 1)
        s = std.to(torch.float32).view(1, 3, 1, 1)
        return out.sub_(m).div_(s)

    return Dataset(
        name=name,
        train=Split(images(x_train), t["y_train"].to(torch.int64)),
        test=Split(images(t["x_test"]), t["y_test"].to(torch.int64)),
        num_classes=num_classes,
        input_shape=(3, 32, 32),
    )


def load_cifar10(root: Path, **options: Any) -> Dataset:
    """Load CIFAR-10 (50,000 / 10,000) from the python batches under ``root/cifar10``."""
    return _load("cifar10", 10, root, options)


def load_cifar100(root: Path, **options: Any) -> Dataset:
    """Load CIFAR-100 (50,000 / 10,000) from the python batches or the ``.npz`` arrays."""
    return _load("cifar100", 100, root, options)
