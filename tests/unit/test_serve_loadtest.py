"""The load test's arithmetic and report (the HTTP part runs in test_serve_http.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from fedkit.serve.loadtest import LevelResult, percentile, write_report


def test_nearest_rank_percentiles_by_hand() -> None:
    values = [float(v) for v in range(10, 0, -1)]  # 10..1, unsorted
    # nearest rank: the ceil(q/100 · 10)-th smallest
    assert percentile(values, 50) == 5.0
    assert percentile(values, 95) == 10.0  # ceil(9.5) = 10th
    assert percentile(values, 10) == 1.0
    assert percentile(values, 11) == 2.0  # ceil(1.1) = 2nd
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="q=0"):
        percentile(values, 0)


@given(st.lists(st.floats(0, 1e4, allow_nan=False), min_size=1, max_size=200))
def test_percentiles_are_ordered_members(values: list[float]) -> None:
    p50, p95, p99 = (percentile(values, q) for q in (50, 95, 99))
    assert p50 <= p95 <= p99 <= max(values) and p50 in values and p99 in values


def _level(c: int, throughput: float, p99: float) -> LevelResult:
    return LevelResult(c, 5.0, int(throughput * 5), 0, 0, throughput, p99 / 2, p99 * 0.9, p99)


def test_report_has_the_ratio_table_plot_and_json(tmp_path: Path) -> None:
    runs = {
        "unbatched": [_level(1, 100.0, 12.0), _level(16, 120.0, 150.0)],
        "batched": [_level(1, 95.0, 13.0), _level(16, 360.0, 60.0)],
    }
    lines = write_report(runs, tmp_path, meta={"bundle": "b"})
    # 95 / 100 = 0.95 and 360 / 120 = 3.00
    assert "| 1 | 0.95 | 13.0 | 12.0 |" in lines and "| 16 | 3.00 | 60.0 | 150.0 |" in lines
    assert (tmp_path / "loadtest.png").stat().st_size > 1000
    record = json.loads((tmp_path / "loadtest.json").read_text())
    assert record["runs"]["batched"][1]["throughput"] == 360.0 and record["meta"]["bundle"] == "b"
    assert (tmp_path / "loadtest.md").read_text().splitlines()[: len(lines)] == lines


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["http://x", "--bundle", "b"],
        ["http://x", "--concurrency", "0"],
        ["http://x", "--concurrency", "a"],
    ],
)
def test_loadtest_arguments_are_checked(args: list[str]) -> None:
    import typer

    from fedkit.serve.cli import loadtest

    app = typer.Typer()
    app.command()(loadtest)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
