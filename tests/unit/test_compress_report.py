"""The compression study's report part: which arms are compressed and how, the table of
accuracy lost and upload bytes saved against the dense arm (hand-computed), and the accuracy vs
upload-bytes figure."""

from __future__ import annotations

import statistics
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit.experiment.report import write_report
from fedkit.experiment.report_compress import (
    compression_plots,
    compression_section,
    compressor_of,
    last_mean,
)
from fedkit.experiment.report_model import Arm, RoundPoint


def _arm(name: str, up: int, acc: float, **settings: str) -> Arm:
    points = tuple(
        RoundPoint(round=r, accuracy=acc * r / 2, loss=1.0, wall_seconds=r, bytes_up=up * r,
                   bytes_down=1000 * r)
        for r in (1, 2)
    )  # fmt: skip
    return Arm(
        run_id=name, name=name, algorithm="fedavg", points=points,
        settings=tuple(settings.items()),
    )  # fmt: skip


DENSE = _arm("dense", 8000, 0.60, **{"aggregator.name": "mean"})
SIGN = _arm(
    "sign", 250, 0.595,
    **{"aggregator.name": "sign", "aggregator.error_feedback": "true",
       "aggregator.inner.name": "mean"},
)  # fmt: skip
TOPK = _arm(
    "top", 1000, 0.50,
    **{"aggregator.name": "clip", "aggregator.max_norm": "1.0",
       "aggregator.inner.name": "topk", "aggregator.inner.fraction": "0.01",
       "aggregator.inner.error_feedback": "false", "aggregator.inner.inner.name": "mean"},
)  # fmt: skip


def test_compressor_of_reads_the_chain() -> None:
    assert compressor_of(DENSE) is None
    assert compressor_of(SIGN) == "sign +EF"
    assert compressor_of(TOPK) == "topk fraction=0.01"  # behind the clip stage
    assert compressor_of(_arm("c", 1, 0.1)) is None  # no aggregator at all


def test_the_table_by_hand() -> None:
    section = compression_section([DENSE, SIGN, TOPK])
    assert section is not None
    # dense: 0.60 after 2 rounds, 16000 bytes up; sign: 0.595 -> −0.5 points, 500 bytes -> 32×;
    # top: 0.50 -> −10.0 points, 2000 bytes -> 8×
    # the last-5 mean is that of both evaluations, acc/2 and acc: 0.75 · acc (dense 45.0,
    # sign 44.625 -> Δ −0.375, top 37.5 -> Δ −7.5); one seed each, so no "±"
    assert section.rows == (
        ("dense", "none (dense)", "1", "2", "60.0", "45.0", "+0.0", "+0.0", "16 KB", "1.0×"),
        ("sign", "sign +EF", "1", "2", "59.5", "44.6", "-0.5", "-0.4", "500 B", "32.0×"),
        ("top", "topk fraction=0.01", "1", "2", "50.0", "37.5", "-10.0", "-7.5", "2 KB", "8.0×"),
    )
    assert section.note.endswith(
        "within 1 point of dense (mean over seeds, final and last 5): sign."
    )
    worse = compression_section([DENSE, TOPK])
    assert worse is not None and "No arm reached" in worse.note
    assert compression_section([DENSE]) is None


def test_the_upload_figure_is_in_the_report(tmp_path: Path) -> None:
    assert compression_plots([DENSE], tmp_path) == []
    files = write_report([DENSE, SIGN, TOPK], tmp_path / "r")
    keys = [p.key for p in files.plots]
    assert keys[-1] == "accuracy_vs_upload" and files.plots[-1].path.stat().st_size > 1000
    md = (tmp_path / "r" / "report.md").read_text(encoding="utf-8")
    assert "Compression: accuracy and upload bytes" in md and "accuracy_vs_upload.png" in md
    plain = write_report([DENSE], tmp_path / "p")
    assert "accuracy_vs_upload" not in [p.key for p in plain.plots]


def _seeded(name: str, seed: int, up: int, acc: float, **settings: str) -> Arm:
    arm = _arm(f"{name}[seed={seed}]", up, acc, **settings)
    seeds = {"run.seed": str(seed), "grid_point.run.seed": str(seed)}
    return Arm(
        run_id=f"{name}{seed}",
        name=arm.name,
        algorithm=arm.algorithm,
        points=arm.points,
        settings=(*arm.settings, *seeds.items()),
    )


def test_seeds_of_an_arm_are_one_row_with_paired_deltas() -> None:
    dense = [_seeded("dense", s, 8000, a, **{"aggregator.name": "mean"}) for s, a in
             enumerate([0.60, 0.64, 0.56])]  # fmt: skip
    q = {"aggregator.name": "quantize", "aggregator.bits": "3", "aggregator.inner.name": "mean"}
    quant = [_seeded("3-bit", s, 800, a, **q) for s, a in enumerate([0.596, 0.628, 0.572])]
    section = compression_section([*dense, *quant])
    assert section is not None
    # dense finals 60, 64, 56: mean 60.0, sample std sqrt((0 + 16 + 16) / 2) = 4.0; last-5
    # means are 0.75 · final: 45.0 ± 3.0. 3-bit finals 59.6, 62.8, 57.2: mean 59.87, std
    # sqrt((0.267² + 2.933² + 2.667²) / 2) = 2.81; paired Δ −0.4, −1.2, +1.2: mean −0.13, std
    # sqrt((0.267² + 1.067² + 1.333²) / 2) = 1.22; last-5: 0.75 × those (44.9 ± 2.1, Δ −0.1 ±
    # 0.9); 2 rounds × 800 B = 1.6 KB, 8000 / 800 = 10.0×, both mean Δ ≥ −1: a winner
    assert section.rows == (
        ("dense", "none (dense)", "3", "2", "60.0 ± 4.0", "45.0 ± 3.0", "+0.0 ± 0.0",
         "+0.0 ± 0.0", "16 KB", "1.0×"),
        ("3-bit", "quantize bits=3", "3", "2", "59.9 ± 2.8", "44.9 ± 2.1", "-0.1 ± 1.2",
         "-0.1 ± 0.9", "1.6 KB", "10.0×"),
    )  # fmt: skip
    assert "(mean over seeds, final and last 5): 3-bit." in section.note
    # unpaired (the 3-bit seeds 3-5): each minus the dense mean, 60.0 -> −0.4, +2.8, −2.8
    other = [_seeded("3-bit", s + 3, 800, a, **q) for s, a in enumerate([0.596, 0.628, 0.572])]
    unpaired = compression_section([*dense, *other])
    assert unpaired is not None and unpaired.rows[1][6] == "-0.1 ± 2.8"


def test_a_mean_delta_below_minus_one_is_not_a_winner() -> None:
    dense = [_seeded("dense", s, 8000, a) for s, a in enumerate([0.60, 0.60])]
    q = {"aggregator.name": "quantize", "aggregator.bits": "2"}
    # Δ −0.5 and −1.7: mean −1.1 (below −1) although one seed is within a point
    worse = [_seeded("2-bit", s, 500, a, **q) for s, a in enumerate([0.595, 0.583])]
    section = compression_section([*dense, *worse])
    assert section is not None and section.rows[1][6] == "-1.1 ± 0.8"
    assert "No arm reached" in section.note


def test_last_mean_is_the_mean_of_the_last_five_evaluations() -> None:
    points = tuple(
        RoundPoint(round=r, accuracy=None if r % 2 else r / 100, loss=None, wall_seconds=r,
                   bytes_up=r, bytes_down=r)
        for r in range(1, 15)
    )  # fmt: skip
    # evaluated rounds 2, 4, …, 14; the last five are 6, 8, 10, 12, 14: mean 0.10
    assert last_mean(Arm(run_id="a", name="a", algorithm="fedavg", points=points)) == 0.10
    assert last_mean(Arm(run_id="b", name="b", algorithm="fedavg")) is None


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0)), min_size=1, max_size=6))
def test_paired_mean_delta_is_the_difference_of_the_means(pairs: list[tuple[float, float]]) -> None:
    dense = [_seeded("dense", s, 1000, d) for s, (d, _) in enumerate(pairs)]
    q = {"aggregator.name": "sign"}
    signs = [_seeded("sign", s, 30, c, **q) for s, (_, c) in enumerate(pairs)]
    section = compression_section([*dense, *signs])
    assert section is not None
    got = float(section.rows[1][6].split(" ")[0])
    want = 100 * (statistics.fmean(c for _, c in pairs) - statistics.fmean(d for d, _ in pairs))
    assert abs(got - want) <= 0.05 + 1e-9
    assert section.rows[1][2] == str(len(pairs))
