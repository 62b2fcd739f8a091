"""Types shared by every dataset loader: ``Split``, ``Dataset``, the errors and the directories.

A loader turns canonical files into one :class:`Dataset` of tensors. The types are deliberately
plain (frozen dataclasses of tensors) so partitioners, stores and models need nothing else.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

__all__ = [
    "ChecksumError",
    "CommonOptions",
    "Dataset",
    "DatasetNotFoundError",
    "FedkitDataError",
    "Split",
    "cache_root",
    "data_root",
    "parse_options",
]


class FedkitDataError(Exception):
    """Base class of every data error raised by fedkit's loaders."""


class DatasetNotFoundError(FedkitDataError):
    """A dataset file is absent: the message names the file, its checksum and where to put it."""


class ChecksumError(FedkitDataError):
    """A file's content does not match its published checksum (corrupted, truncated or wrong)."""

    def __init__(self, path: Path | str, algorithm: str, expected: str, actual: str) -> None:
        self.path = path
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual
        advice = (
            "the server did not send the published file; nothing was saved"
            if isinstance(path, str)
            else "delete it and put the published file in its place (or load with download=True)"
        )
        super().__init__(
            f"{path}: {algorithm} checksum mismatch: expected {expected}, got {actual}. The file "
            f"is corrupted, truncated or not the published file: {advice}."
        )


@dataclass(frozen=True)
class Split:
    """One split (train or test) of a dataset.

    Attributes:
        x: float32 images ``(N, C, H, W)``, float32 features ``(N, d)`` or int64 token ids
            ``(N, T)``.
        y: int64 labels ``(N,)`` or next-token targets ``(N, T)``.
        client: int64 natural client index per sample (writer, speaking role, user), or ``None``
            when the dataset has no natural split.
    """

    x: torch.Tensor
    y: torch.Tensor
    client: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.x.shape[0]
        if self.y.shape[0] != n:
            raise ValueError(f"Split: y has {self.y.shape[0]} rows but x has {n}")
        if self.client is not None and self.client.shape != (n,):
            raise ValueError(f"Split: client has shape {tuple(self.client.shape)}, expected ({n},)")

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True, kw_only=True)
class Dataset:
    """A loaded dataset: both splits plus what a model and a partitioner need to know.

    Attributes:
        name: registry name, e.g. ``"mnist"``.
        train: the training split.
        test: the test split.
        num_classes: label count, or the vocabulary size for next-token tasks.
        input_shape: shape of one ``x`` sample, e.g. ``(1, 28, 28)`` or ``(80,)``.
        client_names: names of the natural client indices (``Split.client``), or ``None``.
        vocab_size: size of the input token vocabulary for text inputs (``None`` otherwise).
        words: the word vocabulary's words in id order (ids ``1..len(words)``, the layout of
            :class:`fedkit.data.text.WordVocab`) for word-level text, so that a trained model can
            be served on raw text (``fedkit export``); ``None`` otherwise.
    """

    name: str
    train: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]
    client_names: tuple[str, ...] | None = None
    vocab_size: int | None = None
    words: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for split_name, split in (("train", self.train), ("test", self.test)):
            if tuple(split.x.shape[1:]) != self.input_shape:
                raise ValueError(
                    f"Dataset {self.name}: {split_name}.x sample shape {tuple(split.x.shape[1:])} "
                    f"!= input_shape {self.input_shape}"
                )
            if (split.client is None) != (self.client_names is None):
                raise ValueError(
                    f"Dataset {self.name}: {split_name}.client and client_names must be both set "
                    "or both None"
                )


def data_root_lookup() -> tuple[Path, str]:
    """The data directory and how it was found, in the one documented order (a ``--data DIR``
    or ``root=`` argument, where given, comes before all of these):

    1. ``$FEDKIT_DATA`` when set;
    2. ``../shared/data`` beside the repository checkout, when fedkit runs from a source
       checkout (``pyproject.toml`` two folders above the package) and that folder exists;
    3. ``~/.cache/fedkit``.

    Returns:
        ``(directory, how)``: ``how`` says which rule chose it, for error messages.
    """
    env = os.environ.get("FEDKIT_DATA")
    if env:
        return Path(env).expanduser(), f"$FEDKIT_DATA={env}"
    checkout = Path(__file__).resolve().parents[4]
    shared = checkout.parent / "shared" / "data"
    if (checkout / "pyproject.toml").is_file() and shared.is_dir():
        return shared, f"the shared data beside the checkout {checkout} ($FEDKIT_DATA unset)"
    home = Path.home() / ".cache" / "fedkit"
    return home, (
        f"the default {home} ($FEDKIT_DATA unset, no ../shared/data beside a checkout); "
        "set FEDKIT_DATA or pass --data DIR to use another"
    )


def data_root() -> Path:
    """The data directory (see :func:`data_root_lookup` for the order)."""
    return data_root_lookup()[0]


def cache_root() -> Path:
    """The cache directory for decoded arrays: ``$FEDKIT_CACHE``, else ``~/.cache/fedkit/cache``.

    It is kept apart from the data directory, which may be read-only.
    """
    env = os.environ.get("FEDKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fedkit" / "cache"


@dataclass(frozen=True, kw_only=True)
class CommonOptions:
    """Options every loader accepts.

    Attributes:
        download: fetch missing files from their canonical URLs (verified, then renamed into
            place). Off by default: without it a missing file raises ``DatasetNotFoundError``.
        mirror: base URL tried before the canonical URLs (the file name is appended), e.g. a
            local mirror ``http://127.0.0.1:8000/mnist/``.
        cache: read and write decoded arrays in the cache directory.
        cache_dir: the cache directory; ``None`` means :func:`cache_root`.
        rehash: re-hash source files even when a verification stamp for the same size and mtime
            exists (slower; catches in-place corruption that kept size and mtime).
    """

    download: bool = False
    mirror: str | None = None
    cache: bool = True
    cache_dir: Path | None = None
    rehash: bool = False

    def __post_init__(self) -> None:
        if self.mirror is not None and not self.mirror.startswith(("http://", "https://")):
            raise ValueError(
                f"mirror={self.mirror!r}: must be an http:// or https:// base URL, or None"
            )

    @property
    def resolved_cache_dir(self) -> Path:
        """The cache directory actually used."""
        return Path(self.cache_dir) if self.cache_dir is not None else cache_root()


OptionsT = TypeVar("OptionsT", bound=CommonOptions)


def parse_options(cls: type[OptionsT], dataset: str, options: Mapping[str, Any]) -> OptionsT:
    """Build a loader's options dataclass from keyword options, rejecting unknown keys.

    Args:
        cls: the loader's options dataclass (a subclass of :class:`CommonOptions`).
        dataset: dataset name, for the error message.
        options: keyword options passed to ``load_dataset``.

    Returns:
        The validated options.

    Raises:
        ValueError: an option is unknown; the message lists the allowed ones.
    """
    allowed = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"load_dataset({dataset!r}): unknown option(s) {unknown}; allowed: {allowed}"
        )
    return cls(**options)
