"""Property tests of study expansion: grids are cartesian products (over new and old dotted keys),
configs round-trip through the recorded mapping."""

from __future__ import annotations

import math
import tomllib
import warnings

from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit.experiment.config import (
    LEGACY_KEYS,
    experiment_from_mapping,
    parse_overrides,
    study_from_mapping,
)

BASE = tomllib.loads(
    """
[data]
dataset = "synthetic"
partition = "iid"
num_clients = 20
[model]
name = "logreg"
[algorithm]
name = "fedavg"
[run]
rounds = 2
"""
)

NAMES = ["fedavg", "fedprox", "fedavgm", "scaffold", "fedadam", "fedyogi", "fedadagrad"]
AXES = {
    "algorithm.local.epochs": st.integers(1, 20),
    "algorithm.local_epochs": st.integers(1, 20),  # an old key: moved to algorithm.local.epochs
    "run.clients_per_round": st.integers(1, 20),
    "algorithm.local.lr": st.floats(1e-4, 10.0),
    "algorithm.server.lr": st.floats(1e-4, 10.0),
    "algorithm.name": st.sampled_from(NAMES),
    "aggregator.name": st.just("mean"),
    "run.seed": st.integers(0, 2**31),
    "run.rounds": st.integers(1, 100),
    "data.seed": st.integers(0, 1000),
}


@st.composite
def grids(draw: st.DrawFn) -> dict[str, list[object]]:
    keys = draw(st.lists(st.sampled_from(sorted(AXES)), min_size=1, max_size=3, unique=True))
    if {"algorithm.local.epochs", "algorithm.local_epochs"} <= set(keys):  # one setting
        keys.remove("algorithm.local_epochs")
    return {k: draw(st.lists(AXES[k], min_size=1, max_size=3, unique=True)) for k in keys}


OLD = {f"algorithm.{old}": new for old, new in LEGACY_KEYS.items()}


def get(cfg: object, dotted: str) -> object:
    """The value a dotted key set, read from the resolved (recorded) config."""
    node: object = cfg.to_mapping()  # type: ignore[attr-defined]
    for part in OLD.get(dotted, dotted).split("."):
        assert isinstance(node, dict)
        node = node[part]
    return node


@settings(max_examples=60, deadline=None)
@given(grids())
def test_grid_is_the_cartesian_product(grid: dict[str, list[object]]) -> None:
    doc = {**BASE, "grid": grid}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        study = study_from_mapping(doc, default_name="g")
    assert len(study.runs) == math.prod(len(v) for v in grid.values())
    points = [tuple(r.grid_point[k] for k in grid) for r in study.runs]
    assert len(set(points)) == len(points)
    assert len({r.name for r in study.runs}) == len(study.runs)
    for r in study.runs:
        assert set(r.grid_point) == set(grid)
        for k, v in r.grid_point.items():
            assert get(r, k) == v


@settings(max_examples=60, deadline=None)
@given(grids())
def test_resolved_config_round_trips(grid: dict[str, list[object]]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        runs = study_from_mapping({**BASE, "grid": grid}, default_name="g").runs
    for cfg in runs:
        plain = {k: v for k, v in cfg.to_mapping().items() if k != "grid_point"}
        again = experiment_from_mapping(
            plain, name=cfg.name, study=cfg.study, grid_point=cfg.grid_point
        )
        assert again == cfg


@given(
    st.one_of(
        st.integers(-(2**40), 2**40),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10).filter(
            lambda s: s not in ("true", "false", "inf", "nan")
        ),
    )
)
def test_override_values_parse_back(value: object) -> None:
    raw = ("true" if value else "false") if isinstance(value, bool) else repr(value)
    if isinstance(value, str):
        raw = value  # a bare word is a string
    (parsed,) = parse_overrides([f"algorithm.x={raw}"]).values()
    assert parsed == value and type(parsed) is type(value)
