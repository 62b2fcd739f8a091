"""Figures that explain themselves (issue 19, item 3): the per-client box plot says what its
marks are; a partition plot has whole-number client ticks and its partition parameters (α) in
the title."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure

from fedkit.data.cli import _save_plot, plot_title
from fedkit.experiment.report_model import Arm, RoundPoint
from fedkit.experiment.report_plots import write_plots


@pytest.fixture
def saved(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """Every figure saved while the test runs (it is still written)."""
    figures: list[Figure] = []
    original = Figure.savefig

    def keep(self: Figure, *args: Any, **kwargs: Any) -> None:
        figures.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def test_box_plot_has_a_key_to_its_marks(tmp_path: Path, saved: list[Figure]) -> None:
    pt = RoundPoint(round=1, accuracy=0.5, loss=None, wall_seconds=1, bytes_up=1, bytes_down=1)
    arms = [
        Arm(run_id=str(i), name=f"a{i}", algorithm="fedavg", points=(pt,),
            client_accuracy=(0.1, 0.4, 0.5, 0.9))
        for i in range(2)
    ]  # fmt: skip
    write_plots(arms, tmp_path)
    (box,) = [f for f in saved if "Per-client" in f.axes[0].get_title()]
    (key,) = box.legends
    texts = " | ".join(t.get_text() for t in key.get_texts())
    for mark in ("box: middle half", "line: median", "triangle: mean", "whiskers", "dot: one"):
        assert mark in texts, texts


@pytest.mark.parametrize(
    ("spec", "title"),
    [
        ({"partition": "dirichlet", "alpha": 0.5}, "mnist: dirichlet partition (α = 0.5)"),
        ({"partition": "shards", "shards_per_client": 2}, "mnist: shards partition "
         "(shards per client = 2)"),
        ({"partition": "iid", "alpha": None}, "mnist: iid partition"),
    ],
)  # fmt: skip
def test_partition_title_names_its_parameters(spec: dict[str, Any], title: str) -> None:
    assert plot_title("mnist", spec) == title


def test_partition_plot_ticks_are_whole_clients(tmp_path: Path, saved: list[Figure]) -> None:
    doc = {
        "dataset": "synthetic",
        "spec": {"partition": "dirichlet", "alpha": 0.1},
        "num_clients": 3,
        "histogram_counts": "samples",
        "clients": [{"label_histogram": h} for h in ([3, 0], [1, 2], [0, 5])],
    }
    _save_plot(doc, tmp_path / "p.png")
    (fig,) = saved
    ax = fig.axes[0]
    assert "(α = 0.1)" in ax.get_title() and ax.get_title().endswith("3 clients")
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks  # 3 bars: 0, 1, 2
    assert set(ticks) <= {0.0, 1.0, 2.0}
