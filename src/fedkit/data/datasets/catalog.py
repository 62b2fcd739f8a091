"""What each known dataset reads from the data directory, for ``fedkit data list`` and ``download``.

Every dataset of :data:`fedkit.data.datasets.DATASETS` has an entry in :data:`CATALOG`: the
alternative sets of :class:`~fedkit.data.datasets.files.RemoteFile` its loader accepts (CIFAR-100
loads from the python batches *or* from fedkit's ``.npz`` arrays), the first one being the one a
download fetches. Two datasets have no fixed file list: FEMNIST is LEAF output built locally by
random sampling (its loader verifies the shards it knows and accepts any other), and ``synthetic``
is generated. :func:`dataset_status` reports each file as verified, present (not checked),
missing or corrupt, and the dataset as the state of its best alternative.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fedkit.data.datasets.base import CommonOptions, DatasetNotFoundError
from fedkit.data.datasets.cifar import CIFAR10_PICKLES, CIFAR100_NPZ, CIFAR100_PICKLES
from fedkit.data.datasets.femnist import femnist_files
from fedkit.data.datasets.files import FileStatus, RemoteFile, ensure_file, file_status
from fedkit.data.datasets.mnist import FASHION_MNIST_FILES, MNIST_FILES
from fedkit.data.datasets.sent140 import SENT140_TEST_CSV
from fedkit.data.datasets.sent140_nwp import PROXY_FILES, USERS_FILE
from fedkit.data.datasets.shakespeare import SHAKESPEARE_FILES, SHAKESPEARE_LEAF_FILES

__all__ = [
    "CATALOG",
    "DatasetStatus",
    "FileSet",
    "NotDownloadableError",
    "Status",
    "dataset_status",
    "download_dataset",
]

Status = Literal["verified", "present", "missing", "corrupt", "generated"]

# the dataset's state is its worst file's: one corrupt file makes it unusable
_RANK: dict[FileStatus, int] = {"verified": 0, "present": 1, "missing": 2, "corrupt": 3}


class NotDownloadableError(DatasetNotFoundError):
    """The dataset has no public URL to download from (built locally, or generated)."""


@dataclass(frozen=True)
class FileSet:
    """One set of files a loader accepts, all of which must be present.

    Attributes:
        label: what the set is, e.g. ``"python batches"``.
        files: the files with their checksums.
    """

    label: str
    files: tuple[RemoteFile, ...]


def _flat(files: dict[str, list[RemoteFile]]) -> tuple[RemoteFile, ...]:
    return tuple(r for rs in files.values() for r in rs)


CATALOG: dict[str, tuple[FileSet, ...]] = {
    "mnist": (FileSet("IDX files", tuple(MNIST_FILES.values())),),
    "fashion_mnist": (FileSet("IDX files", tuple(FASHION_MNIST_FILES.values())),),
    "femnist": (),
    "shakespeare": (FileSet("TFF HDF5", tuple(SHAKESPEARE_FILES.values())),),
    "shakespeare_leaf": (FileSet("LEAF sample", tuple(SHAKESPEARE_LEAF_FILES.values())),),
    "cifar10": (FileSet("python batches", _flat(CIFAR10_PICKLES)),),
    "cifar100": (
        FileSet("python batches", _flat(CIFAR100_PICKLES)),
        FileSet("fedkit .npz arrays", (CIFAR100_NPZ,)),
    ),
    "sent140": (FileSet("hand-labelled test CSV", (SENT140_TEST_CSV,)),),
    "sent140_nwp": (FileSet("training-file samples + LEAF users", (*PROXY_FILES, USERS_FILE)),),
    "synthetic": (),
}
"""Dataset name -> the file sets its loader accepts (the first is the downloadable one); empty
for FEMNIST (LEAF output, no fixed list) and ``synthetic`` (generated)."""


@dataclass(frozen=True)
class DatasetStatus:
    """One dataset's files under a data directory.

    Attributes:
        name: the dataset's name.
        status: the state of the best file set (``"generated"``: needs no files).
        source: the label of the file set reported, or a note for FEMNIST and ``synthetic``.
        files: ``(path under the data directory, status)`` of each file in that set.
    """

    name: str
    status: Status
    source: str
    files: tuple[tuple[str, FileStatus], ...]


def _set_status(statuses: list[FileStatus]) -> FileStatus:
    return max(statuses, key=_RANK.__getitem__)


def dataset_status(
    name: str, root: Path, options: CommonOptions, *, verify: bool = True
) -> DatasetStatus:
    """The state of ``name``'s files under ``root``: of the first complete file set (verified
    ahead of unchecked), else of the first set.

    FEMNIST is ``"present"`` when LEAF train/test files are found (the loader verifies the shards
    whose SHA-256 it knows when it reads them) and ``"missing"`` otherwise.

    Raises:
        KeyError: ``name`` is not in :data:`CATALOG`.
    """
    sets = CATALOG[name]
    if name == "synthetic":
        return DatasetStatus(name, "generated", "generated in memory (no files)", ())
    if not sets:  # femnist
        try:
            shards = femnist_files(root)
        except DatasetNotFoundError:
            return DatasetStatus(name, "missing", "LEAF JSON under femnist/", ())
        note = f"LEAF JSON, {len(shards)} shard(s); known shards verified when loaded"
        return DatasetStatus(name, "present", note, ())
    reports = []
    for fileset in sets:
        statuses = [file_status(r, root, options, verify=verify) for r in fileset.files]
        reports.append((_set_status(statuses), fileset, statuses))
    complete = [r for r in reports if r[0] in ("verified", "present")]
    best, fileset, statuses = min(complete, key=lambda r: _RANK[r[0]]) if complete else reports[0]
    files = tuple((r.relpath, s) for r, s in zip(fileset.files, statuses, strict=True))
    return DatasetStatus(name, best, fileset.label, files)


def download_dataset(name: str, root: Path, options: CommonOptions) -> list[Path]:
    """Fetch and verify every file of ``name``'s downloadable set into ``root`` (files already
    present are verified, not fetched again), through
    :func:`~fedkit.data.datasets.files.ensure_file` with ``download=True``.

    Returns:
        The verified paths.

    Raises:
        KeyError: ``name`` is not in :data:`CATALOG`.
        NotDownloadableError: the dataset has no public URL (FEMNIST, the LEAF Shakespeare
            sample, ``synthetic``).
        UnreachableError: no URL's host could be reached.
        DatasetNotFoundError: a download failed otherwise (e.g. HTTP 404).
        ChecksumError: a downloaded or present file does not match its checksum.
    """
    sets = CATALOG[name]
    if name == "synthetic":
        raise NotDownloadableError("synthetic is generated in memory: nothing to download")
    if not sets or not all(r.urls for r in sets[0].files):
        first = sets[0].files[0] if sets else None
        where = f"put its files under {root / first.relpath.split('/')[0]}" if first else ""
        raise NotDownloadableError(
            f"{name} has no public download: "
            + (
                "FEMNIST is LEAF output built locally (see fedkit.data.datasets.femnist)"
                if not sets
                else where
            )
        )
    opts = dataclasses.replace(options, download=True)
    return [ensure_file(r, root, opts) for r in sets[0].files]
