"""The ``[data]`` section of an experiment (:class:`DataSpec`) and :func:`build_federated`.

A :class:`DataSpec` names a dataset and how to split it among clients; :func:`build_federated`
loads the dataset and applies the partition, giving a :class:`FederatedData` (the dataset plus one
index tensor per client into its train split, and optionally into its test split) that
``ClientStore.from_federated`` turns into per-client data.

Keys of the ``[data]`` table (see :class:`DataSpec` for each one's meaning and range)::

    [data]
    dataset = "mnist"          # a name from fedkit.data.datasets.DATASETS
    partition = "dirichlet"    # iid | dirichlet | shards | one_class | quantity | natural
    num_clients = 100
    alpha = 0.1                # Dirichlet concentration (or Synthetic's α, see below)
    seed = 0

``alpha`` and ``beta`` follow the papers' names: with ``partition = "dirichlet"`` ``alpha`` is the
Dirichlet concentration; with ``dataset = "synthetic"`` (and any other partition) ``alpha`` and
``beta`` are the α and β of Synthetic(α, β) (Li et al. 2020). To set Synthetic's α while
partitioning it by Dirichlet, put it in ``options`` (``[data.options]``), whose keys go to
``load_dataset`` unchanged (e.g. Synthetic's generator ``seed``, ``num_users``; ``cache``). The
spec's own ``seed`` drives only the partition, the natural-client subset and the local test split.

Local test sets (``test_partition``): ``"natural"`` keeps each natural client's own test samples
(the default for ``partition = "natural"``); ``"proportional"`` splits the test set so every
client's local test label distribution follows its training one
(:func:`fedkit.data.partition.local_test_split`; the default otherwise); ``"none"`` gives no local
test sets (evaluate on the global test split).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast, get_args

import numpy as np
import torch

from fedkit.data import partition as part
from fedkit.data.datasets import DATASETS, Dataset, Split, load_dataset
from fedkit.data.lazy import LazyClients
from fedkit.plugins import is_import_path, load_dataset_plugin

__all__ = [
    "PARTITIONS",
    "TEST_PARTITIONS",
    "DataSpec",
    "FederatedData",
    "build_federated",
    "partition_dataset",
]

PartitionName = Literal["iid", "dirichlet", "shards", "one_class", "quantity", "natural"]
TestPartition = Literal["auto", "proportional", "natural", "none"]
DirichletMethod = Literal["hsu", "per_class"]
MAX_CLIENTS = 10_000_000
"""Largest ``num_clients``."""
MAX_EXAMPLES = 1_000_000_000
"""Largest per-client count (``min_size``, ``shards_per_client``)."""
MAX_SEED = 2**63 - 1
"""Largest partition seed."""
MAX_DIRICHLET_ALPHA = 1e6
"""Largest Dirichlet concentration (at 1e6 the split is IID for every dataset here)."""
MAX_SYNTHETIC = 100.0
"""Largest Synthetic α and β (the papers use 0 to 1; at β = 1e6 features reach 1e6)."""
MAX_SIGMA = 10.0
"""Largest lognormal σ of ``partition = "quantity"`` (e^10 ≈ 22026× size ratios at 1σ)."""
PARTITIONS: tuple[str, ...] = get_args(PartitionName)
TEST_PARTITIONS: tuple[str, ...] = get_args(TestPartition)
DIRICHLET_METHODS: tuple[str, ...] = get_args(DirichletMethod)

# Which optional keys each partition uses; the others must be left unset.
_USES: dict[str, frozenset[str]] = {
    "iid": frozenset(),
    "dirichlet": frozenset({"alpha", "min_size", "dirichlet_method"}),
    "shards": frozenset({"shards_per_client"}),
    "one_class": frozenset(),
    "quantity": frozenset({"sigma"}),
    "natural": frozenset(),
}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    """Which dataset and how it is split among clients (the ``[data]`` section).

    Attributes:
        dataset: Dataset name, one of ``fedkit.data.datasets.DATASETS``, or the import path of a
            loader marked ``@fedkit.plugins.dataset`` (docs/plugins.md), called with ``options``.
        partition: ``"iid"``, ``"dirichlet"``, ``"shards"``, ``"one_class"``, ``"quantity"`` or
            ``"natural"`` (see :mod:`fedkit.data.partition`).
        num_clients: Number of clients (>= 1). Required except for ``"natural"``, where it is
            optional: unset uses every natural client, a number keeps a seeded random subset of
            that many natural clients (the usual FEMNIST practice).
        alpha: Dirichlet concentration (> 0), required for ``"dirichlet"``; for
            ``dataset = "synthetic"`` with another partition, Synthetic's α (>= 0).
        beta: Synthetic's β (>= 0); only for ``dataset = "synthetic"``.
        shards_per_client: Shards per client (>= 1), required for ``"shards"`` (McMahan: 2).
        sigma: Standard deviation of the lognormal log-sizes (>= 0), required for ``"quantity"``.
        min_size: Minimum samples per client for ``"dirichlet"`` (>= 0).
        dirichlet_method: ``"hsu"`` (Hsu et al. 2019, equal sizes) or ``"per_class"``.
        seed: Seed of the partition (and of the natural-client subset), >= 0.
        test_partition: ``"auto"``, ``"proportional"``, ``"natural"`` or ``"none"``.
        options: Extra keyword options for ``load_dataset`` (TOML scalars).
    """

    dataset: str
    partition: str = "iid"
    num_clients: int | None = None
    alpha: float | None = None
    beta: float | None = None
    shards_per_client: int | None = None
    sigma: float | None = None
    min_size: int = 1
    dirichlet_method: str = "hsu"
    seed: int = 0
    test_partition: str = "auto"
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if isinstance(self.dataset, str) and is_import_path(self.dataset):
            try:
                load_dataset_plugin(self.dataset)  # fails here, before anything runs
            except ValueError as e:
                raise ValueError(f"data.dataset: {e}") from None
        else:
            self._check_choice("dataset", self.dataset, tuple(sorted(DATASETS)))
        self._check_choice("partition", self.partition, PARTITIONS)
        self._check_choice("dirichlet_method", self.dirichlet_method, DIRICHLET_METHODS)
        self._check_choice("test_partition", self.test_partition, TEST_PARTITIONS)
        self._check_int("seed", self.seed, 0, MAX_SEED)
        self._check_int("min_size", self.min_size, 0, MAX_EXAMPLES)
        if self.num_clients is None:
            if self.partition != "natural":
                raise ValueError(
                    f"data.num_clients is required for partition={self.partition!r} "
                    "(an int >= 1); only partition='natural' may leave it unset"
                )
        else:
            self._check_int("num_clients", self.num_clients, 1, MAX_CLIENTS)
        synthetic = self.dataset == "synthetic"
        uses = _USES[self.partition] | ({"alpha", "beta"} if synthetic else frozenset())
        for key in ("alpha", "beta", "shards_per_client", "sigma"):
            if getattr(self, key) is not None and key not in uses:
                users = sorted(p for p, keys in _USES.items() if key in keys)
                where = f"partition in {users}" if users else "no partition"
                extra = " or dataset='synthetic'" if key in ("alpha", "beta") else ""
                value = getattr(self, key)
                raise ValueError(
                    f"data.{key} is only used with {where}{extra}; got {key}={value!r} "
                    f"with partition={self.partition!r}, dataset={self.dataset!r}"
                )
        dirichlet_alpha = self.partition == "dirichlet"
        if self.alpha is not None or dirichlet_alpha:
            if self.alpha is None or not _is_number(self.alpha):
                raise ValueError(
                    f"data.alpha must be a finite number{' > 0' if dirichlet_alpha else ' >= 0'}, "
                    f"got {self.alpha!r}"
                )
            hi = MAX_DIRICHLET_ALPHA if dirichlet_alpha else MAX_SYNTHETIC
            if (dirichlet_alpha and self.alpha <= 0) or self.alpha < 0 or self.alpha > hi:
                bound = "> 0 (the Dirichlet concentration)" if dirichlet_alpha else ">= 0"
                raise ValueError(f"data.alpha must be {bound} and <= {hi:g}, got {self.alpha!r}")
        if self.beta is not None and (
            not _is_number(self.beta) or not 0 <= self.beta <= MAX_SYNTHETIC
        ):
            raise ValueError(
                f"data.beta must be a finite number >= 0 and <= {MAX_SYNTHETIC:g}, got "
                f"{self.beta!r}"
            )
        if self.partition == "shards":
            if self.shards_per_client is None:
                raise ValueError(
                    "data.shards_per_client is required for partition='shards' "
                    "(an int >= 1; McMahan et al. use 2)"
                )
            self._check_int("shards_per_client", self.shards_per_client, 1, MAX_EXAMPLES)
        if self.partition == "quantity" and (
            self.sigma is None or not _is_number(self.sigma) or self.sigma < 0
        ):
            raise ValueError(
                f"data.sigma must be a finite number >= 0 for partition='quantity', "
                f"got {self.sigma!r}"
            )
        if self.sigma is not None and self.sigma > MAX_SIGMA:
            raise ValueError(f"data.sigma must be <= {MAX_SIGMA:g}, got {self.sigma!r}")
        if self.test_partition == "natural" and self.partition != "natural":
            raise ValueError(
                "data.test_partition='natural' needs partition='natural'; allowed here: "
                "'auto', 'proportional', 'none'"
            )
        if not isinstance(self.options, Mapping) or not all(
            isinstance(k, str) for k in self.options
        ):
            raise ValueError(f"data.options must be a table of named options, got {self.options!r}")
        if synthetic:
            clash = sorted({"alpha", "beta"} & set(self.options) & self._synthetic_keys())
            if clash:
                raise ValueError(
                    f"data.{clash[0]} is set both as a key and in data.options; set it once"
                )
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    @staticmethod
    def _check_choice(key: str, value: object, allowed: tuple[str, ...]) -> None:
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(f"data.{key} must be one of {', '.join(allowed)}; got {value!r}")

    @staticmethod
    def _check_int(key: str, value: object, minimum: int, maximum: int) -> None:
        if not _is_int(value) or cast(int, value) < minimum:
            raise ValueError(f"data.{key} must be an int >= {minimum}, got {value!r}")
        if cast(int, value) > maximum:
            raise ValueError(
                f"data.{key} must be an int >= {minimum} and <= {maximum}, got {value!r}"
            )

    def _synthetic_keys(self) -> set[str]:
        """The keys given as fields that go to the Synthetic generator."""
        keys = set()
        if self.alpha is not None and self.partition != "dirichlet":
            keys.add("alpha")
        if self.beta is not None:
            keys.add("beta")
        return keys

    @property
    def resolved_test_partition(self) -> str:
        """``test_partition`` with ``"auto"`` resolved."""
        if self.test_partition != "auto":
            return self.test_partition
        return "natural" if self.partition == "natural" else "proportional"

    def dataset_options(self) -> dict[str, Any]:
        """Keyword options for ``load_dataset`` (``options`` plus Synthetic's α and β)."""
        out = dict(self.options)
        for key in self._synthetic_keys() if self.dataset == "synthetic" else ():
            out[key] = getattr(self, key)
        return out

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> DataSpec:
        """Validate a ``[data]`` table (e.g. from ``tomllib``) and build a spec.

        Raises:
            ValueError: A key is unknown or missing, or a value is of the wrong type or out of
                range; the message names the key and the allowed keys or values.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"[data] must be a table, got {type(data).__name__}")
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ValueError(f"unknown key data.{unknown[0]} in [data]; allowed keys: {allowed}")
        if "dataset" not in data:
            raise ValueError(f"[data] needs 'dataset', one of {', '.join(sorted(DATASETS))}")
        kwargs = dict(data)
        for key in ("alpha", "beta", "sigma"):
            value = kwargs.get(key)
            if value is not None:
                if not _is_number(value):
                    raise ValueError(f"data.{key} must be a number, got {value!r}")
                kwargs[key] = float(value)
        if "options" in kwargs and not isinstance(kwargs["options"], Mapping):
            raise ValueError(f"data.options must be a table, got {kwargs['options']!r}")
        return cls(**kwargs)

    def to_mapping(self) -> dict[str, Any]:
        """The spec as a ``[data]`` table (unset keys left out); the inverse of from_mapping."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "options":
                if value:
                    out["options"] = dict(value)
            elif value is not None:
                out[f.name] = value
        return out


@dataclass(frozen=True)
class FederatedData:
    """A dataset and its partition among clients.

    Attributes:
        dataset: The loaded dataset.
        train_parts: Per-client int64 indices into ``dataset.train``.
        test_parts: Per-client int64 indices into ``dataset.test`` (local test data), or ``None``.
        client_names: For natural partitions, the natural name of each client (e.g. the writer),
            else ``None``.
        lazy: Clients supplied on demand (a dataset plugin's :class:`LazyClients`); then
            ``dataset`` holds only the central test split and ``train_parts`` is empty.
    """

    dataset: Dataset
    train_parts: list[torch.Tensor]
    test_parts: list[torch.Tensor] | None
    client_names: tuple[str, ...] | None = None
    lazy: LazyClients | None = None

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return len(self.train_parts) if self.lazy is None else self.lazy.num_clients


def _class_labels(ds: Dataset, partition_name: str) -> torch.Tensor:
    y = ds.train.y
    if y.dim() != 1:
        raise ValueError(
            f"data.partition={partition_name!r} needs one class label per sample, but dataset "
            f"{ds.name!r} has targets of shape {tuple(y.shape)}; use partition 'iid', 'quantity' "
            "or 'natural'"
        )
    return y


def partition_dataset(spec: DataSpec, ds: Dataset) -> FederatedData:
    """Apply ``spec``'s partition (and local test split) to an already loaded dataset."""
    n = len(ds.train)
    k = spec.num_clients
    names: tuple[str, ...] | None = None
    test_parts: list[torch.Tensor] | None = None
    if spec.partition == "natural":
        if ds.train.client is None or ds.client_names is None:
            raise ValueError(
                f"data.partition='natural': dataset {spec.dataset!r} has no natural clients; "
                f"allowed partitions for it: {', '.join(p for p in PARTITIONS if p != 'natural')}"
            )
        total = len(ds.client_names)
        train_parts = part.natural(ds.train.client, total)
        keep = [c for c in range(total) if len(train_parts[c]) > 0]
        if k is not None:
            if k > len(keep):
                raise ValueError(
                    f"data.num_clients must be <= {len(keep)} (the natural clients of "
                    f"{spec.dataset!r} with training data), got {k}"
                )
            rng = np.random.default_rng(spec.seed)
            keep = sorted(int(c) for c in rng.choice(keep, size=k, replace=False))
        train_parts = [train_parts[c] for c in keep]
        names = tuple(ds.client_names[c] for c in keep)
        if spec.resolved_test_partition == "natural":
            if ds.test.client is None:
                raise ValueError(
                    f"dataset {spec.dataset!r} has no natural clients in its test split"
                )
            all_test = part.natural(ds.test.client, total)
            test_parts = [all_test[c] for c in keep]
    else:
        assert k is not None  # validated by DataSpec
        if spec.partition == "iid":
            train_parts = part.iid(n, k, spec.seed)
        elif spec.partition == "quantity":
            assert spec.sigma is not None
            train_parts = part.quantity_skew(n, k, spec.sigma, spec.seed)
        elif spec.partition == "dirichlet":
            assert spec.alpha is not None
            train_parts = part.dirichlet(
                _class_labels(ds, spec.partition),
                k,
                spec.alpha,
                spec.seed,
                spec.min_size,
                method=cast(DirichletMethod, spec.dirichlet_method),
            )
        elif spec.partition == "shards":
            assert spec.shards_per_client is not None
            train_parts = part.shards(
                _class_labels(ds, spec.partition), k, spec.shards_per_client, spec.seed
            )
        else:
            train_parts = part.one_class(_class_labels(ds, spec.partition), k, spec.seed)
    if spec.resolved_test_partition == "proportional":
        # A seed distinct from the train partition's draw, still a pure function of spec.seed.
        test_parts = part.local_test_split(ds.train.y, train_parts, ds.test.y, spec.seed + 1)
    return FederatedData(
        dataset=ds, train_parts=train_parts, test_parts=test_parts, client_names=names
    )


def build_federated(spec: DataSpec, root: Path | None = None) -> FederatedData:
    """Load ``spec.dataset`` (from ``root``, default the data directory) and partition it.

    Args:
        spec: The validated ``[data]`` section.
        root: Data directory; ``None`` means ``fedkit.data.datasets.data_root()``.

    Returns:
        The dataset with per-client train (and, unless ``test_partition = "none"``, test) indices.
    """
    if is_import_path(spec.dataset):
        return _from_plugin(spec, load_dataset_plugin(spec.dataset)(**spec.dataset_options()))
    ds = load_dataset(spec.dataset, root=root, **spec.dataset_options())
    return partition_dataset(spec, ds)


def _from_plugin(spec: DataSpec, out: object) -> FederatedData:
    """A dataset plugin's result: a Dataset is partitioned by the spec; FederatedData and
    LazyClients bring their own clients (``partition = "natural"``)."""
    if isinstance(out, Dataset):
        return partition_dataset(spec, out)
    if not isinstance(out, FederatedData | LazyClients):
        raise ValueError(
            f"data.dataset {spec.dataset!r} returned {type(out).__name__}; a dataset plugin "
            "returns a Dataset, a FederatedData or a LazyClients"
        )
    if spec.partition != "natural":
        raise ValueError(
            f"data.dataset {spec.dataset!r} supplies its own clients ({type(out).__name__}): "
            f"set data.partition = 'natural', got {spec.partition!r}"
        )
    if spec.num_clients is not None and spec.num_clients != out.num_clients:
        raise ValueError(
            f"data.num_clients = {spec.num_clients} but {spec.dataset!r} supplies "
            f"{out.num_clients} clients; leave it unset or set it to {out.num_clients}"
        )
    if isinstance(out, FederatedData):
        return out
    shape = out.input_shape
    empty = Split(torch.zeros((0, *shape)), torch.zeros(0, dtype=torch.int64))
    ds = Dataset(
        name=spec.dataset,
        train=empty,
        test=Split(out.test.x, out.test.y),
        num_classes=out.num_classes,
        input_shape=shape,
    )
    return FederatedData(dataset=ds, train_parts=[], test_parts=None, lazy=out)
