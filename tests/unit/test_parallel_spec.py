"""ParallelSpec: TOML-table parsing and validation errors that name the key and allowed values."""

from __future__ import annotations

import pytest

from fedkit.parallel.spec import METHODS, NetworkSpec, ParallelSpec


def test_from_mapping_builds_nested_network_and_coerces_numbers() -> None:
    spec = ParallelSpec.from_mapping(
        {
            "method": "slowmo",
            "workers": 4,
            "local_steps": 8,
            "lr": 1,  # an int where a float is expected is accepted
            "lr_milestones": [0.25, 0.5],
            "network": {"latency_ms": 1, "bandwidth_gbit": 0.1},
        }
    )
    assert spec.method == "slowmo"
    assert spec.global_batch == 4 * spec.batch_size
    assert spec.lr == 1.0 and isinstance(spec.lr, float)
    assert spec.lr_milestones == (0.25, 0.5)
    assert spec.network == NetworkSpec(latency_ms=1.0, bandwidth_gbit=0.1)
    assert spec.network.bandwidth_bytes_per_s == pytest.approx(0.1e9 / 8)


def test_unknown_key_is_named_with_the_allowed_keys() -> None:
    with pytest.raises(ValueError, match=r"unknown key\(s\) in \[parallel\]: wokers;.*workers"):
        ParallelSpec.from_mapping({"wokers": 4})
    with pytest.raises(ValueError, match=r"\[parallel.network\]: speed"):
        ParallelSpec.from_mapping({"network": {"speed": 1}})


def test_bad_method_names_every_allowed_method() -> None:
    with pytest.raises(ValueError) as err:
        ParallelSpec.from_mapping({"method": "hogwild"})
    message = str(err.value)
    assert "parallel.method = 'hogwild'" in message
    for name in METHODS:
        assert name in message


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ({"workers": 0}, "parallel.workers = 0"),
        ({"workers": 2.5}, "parallel.workers = 2.5"),
        ({"momentum": 1.0}, "parallel.momentum = 1.0"),
        ({"optimizer": "adam"}, "sgd | lars | lamb | adamw"),
        ({"topology": "tree"}, "ring | ps"),
        ({"mode": "nccl"}, "replicas | gloo"),
        ({"nesterov": True}, "parallel.nesterov"),
        ({"lr_milestones": [0.75, 0.5]}, "parallel.lr_milestones"),
        ({"batch_size": 64, "max_batch_size": 32}, "parallel.max_batch_size = 32"),
        ({"network": {"bandwidth_gbit": 0}}, "parallel.network.bandwidth_gbit = 0.0"),
        ({"nesterov": 1}, "true or false"),
    ],
)
def test_bad_values_are_named(table: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError, match="allowed") as err:
        ParallelSpec.from_mapping(table)
    assert fragment in str(err.value)
