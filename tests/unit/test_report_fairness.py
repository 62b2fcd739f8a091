"""The fairness / personalisation part of reports: Jain's index, worst 10%, the global-vs-personal
table and figure, on hand-made arms."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedkit.experiment.report import write_report
from fedkit.experiment.report_fairness import (
    fairness_section,
    jain_index,
    spread,
    worst_fraction_mean,
)
from fedkit.experiment.report_model import Arm, RoundPoint


def test_jain_index_and_worst_ten_percent_by_hand() -> None:
    # (0.5 + 1.0)² / (2 (0.25 + 1)) = 2.25 / 2.5 = 0.9
    assert jain_index([0.5, 1.0]) == pytest.approx(0.9)
    assert jain_index([0.0, 0.0, 1.0]) == pytest.approx(1 / 3)  # one client has it all
    assert math.isnan(jain_index([]))
    # 20 clients: the worst 10% are the 2 lowest
    values = [0.1, 0.3] + [0.9] * 18
    assert worst_fraction_mean(values) == pytest.approx(0.2)
    assert worst_fraction_mean([0.7, 0.2, 0.5]) == pytest.approx(0.2)  # at least one
    s = spread([0.2, 0.4, 0.6, float("nan")])
    assert s is not None and s.clients == 3
    assert s.variance == pytest.approx((0.2**2 + 0 + 0.2**2) / 3)
    assert s.worst == 0.2 and s.p10 == pytest.approx(0.24)


@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=50))
def test_jain_index_lies_between_one_over_n_and_one(values: list[float]) -> None:
    j = jain_index(values)
    if sum(values) == 0:
        assert math.isnan(j)
    else:
        assert 1 / len(values) - 1e-12 <= j <= 1 + 1e-12


def _arm(name: str, clients: tuple[float, ...], personal: tuple[float, ...] = ()) -> Arm:
    point = RoundPoint(round=1, accuracy=0.5, loss=1.0, wall_seconds=1.0, bytes_up=1, bytes_down=1)
    return Arm(
        run_id=name,
        name=name,
        algorithm=name,
        points=(point,),
        client_accuracy=clients,
        client_round=1,
        personal_accuracy=personal,
    )


def test_report_puts_personal_beside_global(tmp_path: Path) -> None:
    arms = [_arm("fedavg", (0.5, 0.7, 0.9)), _arm("ditto", (0.5, 0.7, 0.9), (0.8, 0.9, 1.0))]
    section = fairness_section(arms)
    assert section is not None
    assert [r[:3] for r in section.rows] == [
        ("fedavg", "fedavg", "global"),
        ("ditto", "ditto", "global"),
        ("ditto", "ditto", "personal"),
    ]
    personal = section.rows[2]
    assert personal[4] == "90.0" and personal[6] == "80.0"  # mean, worst
    assert personal[8] == f"{1e4 * (0.01 + 0 + 0.01) / 3:.1f}"  # variance in %²
    files = write_report(arms, tmp_path)
    assert (tmp_path / "personal_vs_global.png").is_file()
    text = files.markdown.read_text()
    assert "global vs personal" in text and "Jain" in text
    # no personal model anywhere: the table, no figure
    assert fairness_section([_arm("a", ())]) is None
    only = write_report([_arm("fedavg", (0.5, 0.7))], tmp_path / "b")
    assert not any(p.key == "personal_vs_global" for p in only.plots)
