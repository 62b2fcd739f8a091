"""DataSpec validation (the [data] section) and build_federated on generated and real data."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit.data.datasets import Dataset, Split
from fedkit.data.spec import DataSpec, FederatedData, build_federated, partition_dataset
from tests.conftest import require_data


def spec(**kw: object) -> DataSpec:
    return DataSpec.from_mapping(kw)


def assert_disjoint_cover(parts: list[torch.Tensor], n: int, *, exact: bool = True) -> None:
    allidx = torch.cat(parts)
    assert len(allidx.unique()) == len(allidx)
    if exact:
        assert torch.equal(allidx.sort().values, torch.arange(n))


# ------------------------------------------------------------------------------- validation


def test_valid_specs_and_round_trip() -> None:
    tables = [
        {"dataset": "mnist", "partition": "iid", "num_clients": 10},
        {"dataset": "mnist", "partition": "dirichlet", "num_clients": 100, "alpha": 0.1},
        {"dataset": "cifar10", "partition": "shards", "num_clients": 5, "shards_per_client": 2},
        {"dataset": "mnist", "partition": "quantity", "num_clients": 7, "sigma": 2, "seed": 3},
        {"dataset": "femnist", "partition": "natural"},
        {"dataset": "synthetic", "partition": "natural", "alpha": 0.5, "beta": 0.5},
        {
            "dataset": "synthetic",
            "partition": "dirichlet",
            "num_clients": 4,
            "alpha": 1,
            "options": {"alpha": 0.0, "num_users": 5},
            "test_partition": "none",
        },
    ]
    for table in tables:
        s = DataSpec.from_mapping(table)
        assert DataSpec.from_mapping(s.to_mapping()) == s
        assert hash(s) == hash(DataSpec.from_mapping(s.to_mapping()))
    assert spec(dataset="mnist", partition="quantity", num_clients=7, sigma=2).sigma == 2.0


def test_spec_is_frozen() -> None:
    s = spec(dataset="mnist", num_clients=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.seed = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.options["x"] = 1  # type: ignore[index]


@pytest.mark.parametrize(
    ("table", "match"),
    [
        (
            {"dataset": "mnist", "num_clients": 2, "partiton": "iid"},
            "unknown key data.partiton.*allowed keys.*partition",
        ),
        ({"partition": "iid"}, "needs 'dataset', one of .*mnist"),
        (
            {"dataset": "imagenet", "num_clients": 2},
            "data.dataset must be one of .*cifar10.*mnist.*; got 'imagenet'",
        ),
        (
            {"dataset": "mnist", "partition": "pathological", "num_clients": 2},
            "data.partition must be one of iid, dirichlet, shards, one_class, quantity, natural; "
            "got 'pathological'",
        ),
        (
            {"dataset": "mnist", "partition": "iid"},
            "data.num_clients is required for partition='iid'",
        ),
        ({"dataset": "mnist", "num_clients": 0}, r"data.num_clients must be an int >= 1, got 0"),
        (
            {"dataset": "mnist", "num_clients": 2.5},
            r"data.num_clients must be an int >= 1, got 2.5",
        ),
        (
            {"dataset": "mnist", "num_clients": True},
            r"data.num_clients must be an int >= 1, got True",
        ),
        ({"dataset": "mnist", "num_clients": 2, "seed": -1}, "data.seed must be an int >= 0"),
        (
            {"dataset": "mnist", "partition": "dirichlet", "num_clients": 2},
            r"data.alpha must be a finite number > 0, got None",
        ),
        (
            {"dataset": "mnist", "partition": "dirichlet", "num_clients": 2, "alpha": 0},
            r"data.alpha must be > 0 \(the Dirichlet concentration\)",
        ),
        (
            {"dataset": "mnist", "partition": "dirichlet", "num_clients": 2, "alpha": "small"},
            "data.alpha must be a number",
        ),
        (
            {"dataset": "mnist", "partition": "dirichlet", "num_clients": 2, "alpha": float("inf")},
            "data.alpha must be a number",
        ),
        (
            {"dataset": "mnist", "partition": "iid", "num_clients": 2, "alpha": 0.1},
            r"data.alpha is only used with partition in \['dirichlet'\] or dataset='synthetic'",
        ),
        (
            {"dataset": "mnist", "num_clients": 2, "beta": 1},
            "data.beta is only used with no partition or dataset='synthetic'",
        ),
        (
            {"dataset": "mnist", "num_clients": 2, "sigma": 1},
            r"data.sigma is only used with partition in \['quantity'\]",
        ),
        (
            {"dataset": "mnist", "num_clients": 2, "shards_per_client": 2},
            r"shards_per_client is only used with partition in \['shards'\]",
        ),
        (
            {"dataset": "mnist", "partition": "shards", "num_clients": 2},
            r"data.shards_per_client is required for partition='shards' "
            r"\(an int >= 1; McMahan et al. use 2\)",
        ),
        (
            {"dataset": "mnist", "partition": "shards", "num_clients": 2, "shards_per_client": 0},
            "data.shards_per_client must be an int >= 1, got 0",
        ),
        (
            {"dataset": "mnist", "partition": "quantity", "num_clients": 2},
            "data.sigma must be a finite number >= 0 for partition='quantity', got None",
        ),
        (
            {"dataset": "mnist", "partition": "quantity", "num_clients": 2, "sigma": -1},
            "data.sigma must be a finite number >= 0",
        ),
        (
            {
                "dataset": "mnist",
                "partition": "dirichlet",
                "num_clients": 2,
                "alpha": 1,
                "dirichlet_method": "fedma",
            },
            "data.dirichlet_method must be one of hsu, per_class; got 'fedma'",
        ),
        (
            {"dataset": "mnist", "num_clients": 2, "test_partition": "natural"},
            "data.test_partition='natural' needs partition='natural'; "
            "allowed here: 'auto', 'proportional', 'none'",
        ),
        (
            {"dataset": "mnist", "num_clients": 2, "test_partition": "local"},
            "data.test_partition must be one of auto, proportional, natural, none",
        ),
        ({"dataset": "mnist", "num_clients": 2, "options": 3}, "data.options must be a table"),
        (
            {"dataset": "synthetic", "partition": "natural", "alpha": 1, "options": {"alpha": 2}},
            "data.alpha is set both as a key and in data.options",
        ),
        (
            {"dataset": "synthetic", "partition": "natural", "beta": -1},
            "data.beta must be a finite number >= 0",
        ),
    ],
)
def test_bad_tables_name_the_key_and_allowed_values(table: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DataSpec.from_mapping(table)


def test_resolved_test_partition_and_dataset_options() -> None:
    assert spec(dataset="femnist", partition="natural").resolved_test_partition == "natural"
    assert spec(dataset="mnist", num_clients=2).resolved_test_partition == "proportional"
    nat = spec(dataset="synthetic", partition="natural", alpha=0.5, beta=1, options={"iid": False})
    assert nat.dataset_options() == {"alpha": 0.5, "beta": 1.0, "iid": False}
    dirich = spec(dataset="synthetic", partition="dirichlet", num_clients=3, alpha=0.3, beta=1)
    assert dirich.dataset_options() == {"beta": 1.0}  # alpha is the Dirichlet concentration
    assert spec(dataset="mnist", num_clients=2, options={"cache": False}).dataset_options() == {
        "cache": False
    }


# ------------------------------------------------------------------------- build_federated


def test_synthetic_natural_keeps_users_and_their_own_test_data() -> None:
    fd = build_federated(spec(dataset="synthetic", partition="natural", alpha=1, beta=1))
    ds = fd.dataset
    assert isinstance(fd, FederatedData)
    assert fd.num_clients == 30
    assert fd.client_names == ds.client_names
    assert ds.train.client is not None and ds.test.client is not None
    assert fd.test_parts is not None
    assert_disjoint_cover(fd.train_parts, len(ds.train))
    assert_disjoint_cover(fd.test_parts, len(ds.test))
    for c, (tr, te) in enumerate(zip(fd.train_parts, fd.test_parts, strict=True)):
        assert (ds.train.client[tr] == c).all()
        assert (ds.test.client[te] == c).all()


def test_natural_subset_is_seeded_and_aligned() -> None:
    s = spec(dataset="synthetic", partition="natural", num_clients=8, seed=4)
    a, b = build_federated(s), build_federated(s)
    assert a.client_names == b.client_names and len(a.client_names or ()) == 8
    assert all(torch.equal(x, y) for x, y in zip(a.train_parts, b.train_parts, strict=True))
    ds = a.dataset
    assert ds.client_names is not None and a.client_names is not None and a.test_parts is not None
    for name, tr, te in zip(a.client_names, a.train_parts, a.test_parts, strict=True):
        cid = ds.client_names.index(name)
        assert (ds.train.client[tr] == cid).all()  # type: ignore[index]
        assert (ds.test.client[te] == cid).all()  # type: ignore[index]
    other = build_federated(spec(dataset="synthetic", partition="natural", num_clients=8, seed=5))
    assert other.client_names != a.client_names
    with pytest.raises(ValueError, match=r"data.num_clients must be <= 30"):
        build_federated(spec(dataset="synthetic", partition="natural", num_clients=31))


@pytest.mark.parametrize(
    "table",
    [
        {"partition": "iid", "num_clients": 6},
        {"partition": "dirichlet", "num_clients": 6, "alpha": 0.2},
        {"partition": "dirichlet", "num_clients": 6, "alpha": 5, "dirichlet_method": "per_class"},
        {"partition": "shards", "num_clients": 6, "shards_per_client": 2},
        {"partition": "one_class", "num_clients": 12},
        {"partition": "quantity", "num_clients": 6, "sigma": 1.0},
    ],
)
def test_every_partition_on_synthetic(table: dict[str, object]) -> None:
    s = DataSpec.from_mapping({"dataset": "synthetic", "seed": 1, **table})
    fd = build_federated(s)
    ds = fd.dataset
    assert fd.num_clients == table["num_clients"]
    assert fd.client_names is None
    assert_disjoint_cover(fd.train_parts, len(ds.train))
    assert fd.test_parts is not None and len(fd.test_parts) == fd.num_clients
    assert_disjoint_cover(fd.test_parts, len(ds.test), exact=False)
    again = build_federated(s)
    assert all(torch.equal(x, y) for x, y in zip(fd.train_parts, again.train_parts, strict=True))
    if table["partition"] == "one_class":
        assert all(len(ds.train.y[p].unique()) == 1 for p in fd.train_parts)
        assert all(
            set(ds.test.y[t].tolist()) <= set(ds.train.y[p].tolist())
            for p, t in zip(fd.train_parts, fd.test_parts, strict=True)
        )


def test_no_local_test_sets() -> None:
    s = spec(dataset="synthetic", partition="iid", num_clients=3, test_partition="none")
    assert build_federated(s).test_parts is None


def tiny_dataset(*, text: bool = False, natural: bool = False) -> Dataset:
    n = 12
    x = torch.randint(0, 5, (n, 4)) if text else torch.randn(n, 3)
    y = torch.randint(0, 5, (n, 4)) if text else torch.arange(n) % 3
    client = torch.arange(n) % 2 if natural else None
    split = Split(x=x, y=y, client=client)
    return Dataset(
        name="tiny",
        train=split,
        test=split,
        num_classes=5 if text else 3,
        input_shape=tuple(x.shape[1:]),
        client_names=("a", "b") if natural else None,
    )


def test_label_partitions_need_class_labels() -> None:
    s = spec(dataset="shakespeare", partition="dirichlet", num_clients=2, alpha=1)
    with pytest.raises(ValueError, match=r"needs one class label per sample.*'iid', 'quantity'"):
        partition_dataset(s, tiny_dataset(text=True))
    fd = partition_dataset(spec(dataset="shakespeare", num_clients=3), tiny_dataset(text=True))
    assert fd.test_parts is not None
    assert_disjoint_cover(fd.test_parts, 12)


def test_natural_needs_natural_clients() -> None:
    with pytest.raises(ValueError, match="has no natural clients; allowed partitions for it: iid"):
        partition_dataset(spec(dataset="mnist", partition="natural"), tiny_dataset())
    fd = partition_dataset(spec(dataset="femnist", partition="natural"), tiny_dataset(natural=True))
    assert fd.client_names == ("a", "b")
    assert [p.tolist() for p in fd.train_parts] == [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9, 11]]


# ------------------------------------------------------------------------------- real data

MNIST_FILES = [
    "mnist/train-images-idx3-ubyte.gz",
    "mnist/train-labels-idx1-ubyte.gz",
    "mnist/t10k-images-idx3-ubyte.gz",
    "mnist/t10k-labels-idx1-ubyte.gz",
]


def test_mcmahan_pathological_mnist() -> None:
    """McMahan et al. 2017: 100 clients x 2 shards of 300 label-sorted MNIST digits."""
    root = require_data(*MNIST_FILES)
    s = spec(dataset="mnist", partition="shards", num_clients=100, shards_per_client=2)
    fd = build_federated(s, root=root)
    y = fd.dataset.train.y
    assert_disjoint_cover(fd.train_parts, 60_000)
    assert [len(p) for p in fd.train_parts] == [600] * 100
    classes = torch.tensor([len(y[p].unique()) for p in fd.train_parts])
    # shards of 300 can straddle a digit boundary (digit counts are not multiples of 300)
    assert int(classes.max()) <= 4
    assert float(classes.float().mean()) < 2.3
    assert fd.test_parts is not None
    assert_disjoint_cover(fd.test_parts, 10_000)
    y_test = fd.dataset.test.y
    for p, t in zip(fd.train_parts, fd.test_parts, strict=True):
        assert set(y_test[t].tolist()) <= set(y[p].tolist())


def test_dirichlet_mnist_real_labels() -> None:
    root = require_data(*MNIST_FILES)
    s = spec(dataset="mnist", partition="dirichlet", num_clients=50, alpha=0.1, seed=7)
    fd = build_federated(s, root=root)
    assert_disjoint_cover(fd.train_parts, 60_000)
    assert sorted({len(p) for p in fd.train_parts}) == [1200]
    y = fd.dataset.train.y
    mean_classes = sum(len(y[p].unique()) for p in fd.train_parts) / 50
    assert mean_classes < 4  # alpha = 0.1: strongly skewed


# ------------------------------------------------------------------------------- properties


@st.composite
def valid_tables(draw: st.DrawFn) -> dict[str, object]:
    partition = draw(st.sampled_from(["iid", "dirichlet", "shards", "one_class", "quantity"]))
    table: dict[str, object] = {
        "dataset": draw(st.sampled_from(["mnist", "cifar10", "femnist", "synthetic"])),
        "partition": partition,
        "num_clients": draw(st.integers(1, 10_000)),
        "seed": draw(st.integers(0, 2**31)),
    }
    if partition == "dirichlet":
        table["alpha"] = draw(st.floats(1e-6, 1e6))
        table["dirichlet_method"] = draw(st.sampled_from(["hsu", "per_class"]))
        table["min_size"] = draw(st.integers(0, 50))
    if partition == "shards":
        table["shards_per_client"] = draw(st.integers(1, 10))
    if partition == "quantity":
        table["sigma"] = draw(st.floats(0, 5))
    table["test_partition"] = draw(st.sampled_from(["auto", "proportional", "none"]))
    return table


@settings(max_examples=100, deadline=None)
@given(table=valid_tables())
def test_from_mapping_round_trips(table: dict[str, object]) -> None:
    s = DataSpec.from_mapping(table)
    assert DataSpec.from_mapping(s.to_mapping()) == s
    assert {k: v for k, v in s.to_mapping().items() if k in table} == table


@settings(max_examples=50, deadline=None)
@given(table=valid_tables(), key=st.text(min_size=1, max_size=12))
def test_any_unknown_key_is_rejected_by_name(table: dict[str, object], key: str) -> None:
    if key in DataSpec.__dataclass_fields__:
        return
    with pytest.raises(ValueError, match="unknown key") as info:
        DataSpec.from_mapping({**table, key: 1})
    assert repr(key)[1:-1] in str(info.value) or key in str(info.value)
