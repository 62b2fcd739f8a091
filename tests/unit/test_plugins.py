"""Plugins by import path (fedkit.plugins), lazily supplied clients (fedkit.data.lazy) and the
client store's lazy mode: what a file may call, the messages, and the LRU's load counts."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit.algorithm import ClientData
from fedkit.data.datasets import Split
from fedkit.data.lazy import LRU, LazyClients
from fedkit.data.spec import DataSpec, build_federated
from fedkit.data.store import ClientStore
from fedkit.experiment.config import ConfigError, ModelSettings
from fedkit.models import build_model
from fedkit.models.spec import ModelSpec
from fedkit.plugins import PluginError, load_model
from tests.plugins import user_data
from tests.plugins.user_model import TinyNet

P = "tests.plugins.user_model"
D = "tests.plugins.user_data"


def test_module_subclass_by_path_gets_num_classes_input_shape_and_options() -> None:
    net = build_model(f"{P}:TinyNet", num_classes=3, input_shape=(2, 5), bias=False)
    assert isinstance(net, TinyNet)
    assert net.fc.weight.shape == (3, 10)  # 3 classes x (2·5) flattened inputs
    assert net.fc.bias is None


def test_marked_function_by_path_and_model_spec_is_deterministic() -> None:
    spec = ModelSpec(name=f"{P}:two_layer", num_classes=4, input_shape=(6,), options={"hidden": 3})
    a, b = spec.build(), spec.build()
    assert [p.shape for p in a.parameters()] == [(3, 6), (3,), (4, 3), (4,)]
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        (f"{P}:unmarked", "neither an nn.Module subclass nor a function marked"),
        ("os:system", "neither an nn.Module subclass"),
        ("subprocess:Popen", "neither an nn.Module subclass"),
        ("no_such_pkg_xyz.nets:Net", "add its folder to PYTHONPATH"),
        (f"{P}:Missing", "has no attribute 'Missing'"),
    ],
)
def test_file_may_not_call_anything_else(name: str, needle: str) -> None:
    with pytest.raises(PluginError, match=needle):
        load_model(name)
    with pytest.raises(ConfigError, match=r"model\.name"):
        ModelSettings.from_mapping({"name": name})


def test_plugin_options_are_checked_against_the_signature() -> None:
    ok = ModelSettings.from_mapping({"name": f"{P}:TinyNet", "bias": False})
    assert dict(ok.options) == {"bias": False}
    with pytest.raises(ConfigError, match=r"unknown key model.width .*allowed: name, bias"):
        ModelSettings.from_mapping({"name": f"{P}:TinyNet", "width": 3})
    with pytest.raises(ConfigError, match=r"model\.bias"):
        ModelSettings.from_mapping({"name": f"{P}:TinyNet", "bias": 3})


def test_builder_returning_no_module_is_refused() -> None:
    with pytest.raises(PluginError, match=r"not nn\.Module"):
        build_model(f"{P}:not_a_module", num_classes=2, input_shape=(1,))


def test_dataset_plugin_returning_a_dataset_is_partitioned_by_the_spec() -> None:
    fd = build_federated(
        DataSpec(dataset=f"{D}:tensors", partition="iid", num_clients=4, options={"n": 60})
    )
    assert fd.num_clients == 4 and fd.lazy is None
    assert sorted(len(p) for p in fd.train_parts) == [15, 15, 15, 15]  # 60 / 4
    assert torch.cat(fd.train_parts).sort().values.tolist() == list(range(60))


def test_dataset_plugin_must_be_marked_and_importable() -> None:
    with pytest.raises(ValueError, match=r"not a function marked @fedkit\.plugins\.dataset"):
        DataSpec(dataset=f"{D}:unmarked", partition="iid", num_clients=2)
    with pytest.raises(ValueError, match="PYTHONPATH"):
        DataSpec(dataset="no_such_pkg_xyz:load", partition="iid", num_clients=2)


def test_lazy_plugin_needs_natural_partition_and_a_matching_count() -> None:
    with pytest.raises(ValueError, match=r"set data\.partition = 'natural'"):
        build_federated(DataSpec(dataset=f"{D}:lazy", partition="iid", num_clients=10))
    with pytest.raises(ValueError, match="supplies 10 clients"):
        build_federated(DataSpec(dataset=f"{D}:lazy", partition="natural", num_clients=7))
    fd = build_federated(DataSpec(dataset=f"{D}:lazy", partition="natural", num_clients=10))
    assert fd.num_clients == 10 and fd.lazy is not None
    assert fd.dataset.num_classes == 3 and len(fd.dataset.test) == 12


def test_lazy_store_gives_the_supplier_data_and_loads_through_a_small_lru() -> None:
    fd = build_federated(DataSpec(dataset=f"{D}:lazy", partition="natural"))
    store = ClientStore.from_federated(fd)
    user_data.LOADS.clear()
    assert store.lazy and store.num_clients == 10 and store.has_test_data()
    # sizes are 5 + cid % 3, known without loading anything
    assert [store.num_examples(i) for i in range(5)] == [5, 6, 7, 5, 6]
    assert sum(user_data.LOADS.values()) == 0
    for cid in (0, 1, 0, 2, 1, 1, 3, 0):
        want = user_data.client_data(cid, 5 + cid % 3)
        got = store.data(cid)
        assert torch.equal(got.x_train, want.x_train) and torch.equal(got.y_train, want.y_train)
    # cache of 2: 0 miss, 1 miss, 0 hit, 2 miss (evicts 1), 1 miss (evicts 0), 1 hit,
    # 3 miss (evicts 2), 0 miss -> client 0 twice, 1 twice, 2 once, 3 once
    assert dict(user_data.LOADS) == {0: 2, 1: 2, 2: 1, 3: 1}
    with pytest.raises(IndexError, match=r"out of range \[0, 10\)"):
        store.data(10)


def test_lazy_store_matches_an_eager_store_of_the_same_clients() -> None:
    fd = build_federated(DataSpec(dataset=f"{D}:lazy", partition="natural"))
    lazy = ClientStore.from_federated(fd)
    eager = ClientStore.from_clients([user_data.client_data(c, 5 + c % 3) for c in range(10)])
    for c in range(10):
        a, b = lazy.data(c), eager.data(c)
        assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)  # type: ignore[arg-type]
    xa, ya = lazy.pooled_train()
    xb, yb = eager.pooled_train()
    assert torch.equal(xa, xb) and torch.equal(ya, yb)


def _lazy(load: object, **kw: object) -> LazyClients:
    return LazyClients(
        sizes=kw.pop("sizes", [2]),  # type: ignore[arg-type]
        load=load,  # type: ignore[arg-type]
        test=Split(torch.zeros(1, 3), torch.zeros(1, dtype=torch.int64)),
        num_classes=2,
        input_shape=(3,),
        **kw,  # type: ignore[arg-type]
    )


def test_supplier_must_keep_its_promises() -> None:
    with pytest.raises(ValueError, match=r"gave 3 training examples; sizes\[0\] = 2"):
        ClientStore.from_lazy(
            _lazy(lambda c: ClientData(torch.zeros(3, 3), torch.zeros(3, dtype=torch.int64)))
        ).data(0)
    with pytest.raises(ValueError, match=r"sample shape \(4,\) != input_shape \(3,\)"):
        ClientStore.from_lazy(
            _lazy(lambda c: ClientData(torch.zeros(2, 4), torch.zeros(2, dtype=torch.int64)))
        ).data(0)
    with pytest.raises(TypeError, match="not ClientData"):
        ClientStore.from_lazy(_lazy(lambda c: (torch.zeros(2, 3), torch.zeros(2)))).data(0)
    with pytest.raises(ValueError, match=r"sizes\[1\] must be an int >= 1"):
        _lazy(lambda c: None, sizes=[2, 0])
    with pytest.raises(ValueError, match="cache must be in"):
        _lazy(lambda c: None, cache=-1)


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.integers(0, 4),
    keys=st.lists(st.integers(0, 6), max_size=40),
)
def test_lru_loads_exactly_the_misses_of_a_reference_model(capacity: int, keys: list[int]) -> None:
    made: list[int] = []
    cache: LRU[int, int] = LRU(capacity)
    ref: list[int] = []  # most recent last
    misses = 0
    for k in keys:
        assert cache.get(k, lambda key: made.append(key) or key * 10) == k * 10
        if k in ref:
            ref.remove(k)
        else:
            misses += 1
        ref.append(k)
        ref = ref[-capacity:] if capacity else []
        assert cache.keys() == ref
    assert len(made) == misses


def test_a_plain_module_is_not_a_dataset_plugin() -> None:
    with pytest.raises(ValueError, match="not a function marked"):
        DataSpec(dataset=f"{P}:TinyNet", partition="iid", num_clients=1)
