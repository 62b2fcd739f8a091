"""Hostile experiment files end in a ConfigError naming the problem, never a RecursionError."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedkit.experiment.config import MAX_DEPTH, ConfigError, load_study

BASE = """
[data]
dataset = "synthetic"
partition = "natural"
[model]
name = "logreg"
[algorithm]
name = "fedavg"
[run]
rounds = 1
"""


def test_deeply_nested_aggregator_tables_are_refused(tmp_path: Path) -> None:
    key, lines = "aggregator", [BASE]
    for _ in range(2000):
        lines.append(f'[{key}]\nname = "clip"')
        key += ".inner"
    f = tmp_path / "deep.toml"
    f.write_text("\n".join(lines))
    with pytest.raises(ConfigError, match=f"nested deeper than {MAX_DEPTH} levels"):
        load_study(f)


def test_deeply_nested_arrays_are_refused_by_the_parser(tmp_path: Path) -> None:
    f = tmp_path / "deep.toml"
    f.write_text(BASE + "\n[grid]\nx = " + "[" * 20000 + "]" * 20000 + "\n")
    with pytest.raises(ConfigError, match="nested"):
        load_study(f)


def test_an_honest_chain_of_stages_is_well_within_the_limit(tmp_path: Path) -> None:
    f = tmp_path / "ok.toml"
    f.write_text(
        BASE + '[aggregator]\nname = "clip"\nmax_norm = 1.0\n'
        '[aggregator.inner]\nname = "trimmed_mean"\nbeta = 0.1\n'
    )
    assert len(load_study(f).runs) == 1


def test_an_import_path_that_is_not_a_dataclass_is_never_called(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    f = tmp_path / "evil.toml"
    f.write_text(BASE + f'[aggregator]\nname = "subprocess:Popen"\nargs = ["touch", "{marker}"]\n')
    with pytest.raises(ConfigError, match="'subprocess:Popen' is not a dataclass"):
        load_study(f)
    assert not marker.exists()
