"""Property tests of study expansion: grids are cartesian products, configs round-trip."""

from __future__ import annotations

import math
import tomllib

from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit.experiment.config import experiment_from_mapping, parse_overrides, study_from_mapping

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

AXES = {
    "algorithm.local_epochs": st.integers(1, 20),
    "algorithm.clients_per_round": st.integers(1, 20),
    "algorithm.lr": st.floats(1e-4, 10.0),
    "algorithm.name": st.sampled_from(["fedavg", "fedprox", "fedavgm", "scaffold", "fedadam"]),
    "run.seed": st.integers(0, 2**31),
    "run.rounds": st.integers(1, 100),
    "data.seed": st.integers(0, 1000),
}


@st.composite
def grids(draw: st.DrawFn) -> dict[str, list[object]]:
    keys = draw(st.lists(st.sampled_from(sorted(AXES)), min_size=1, max_size=3, unique=True))
    return {k: draw(st.lists(AXES[k], min_size=1, max_size=3, unique=True)) for k in keys}


def get(cfg: object, dotted: str) -> object:
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


@settings(max_examples=60, deadline=None)
@given(grids())
def test_grid_is_the_cartesian_product(grid: dict[str, list[object]]) -> None:
    doc = {**BASE, "grid": grid}
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
    for cfg in study_from_mapping({**BASE, "grid": grid}, default_name="g").runs:
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
