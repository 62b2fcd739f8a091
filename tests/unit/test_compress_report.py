"""The compression study's report part: which arms are compressed and how, the table of
accuracy lost and upload bytes saved against the dense arm (hand-computed), and the accuracy vs
upload-bytes figure."""

from __future__ import annotations

from pathlib import Path

from fedkit.experiment.report import write_report
from fedkit.experiment.report_compress import (
    compression_plots,
    compression_section,
    compressor_of,
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
    assert section.rows == (
        ("dense", "none (dense)", "2", "60.0", "+0.0", "16 KB", "1.0×"),
        ("sign", "sign +EF", "2", "59.5", "-0.5", "500 B", "32.0×"),
        ("top", "topk fraction=0.01", "2", "50.0", "-10.0", "2 KB", "8.0×"),
    )
    assert "within 1 point of dense: sign." in section.note
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
