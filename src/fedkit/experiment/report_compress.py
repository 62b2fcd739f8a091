"""The part of a report for a communication-compression study (docs/compression.md): test
accuracy against cumulative *upload* bytes, and a table of what each arm's compression cost in
accuracy and saved in upload bytes against the uncompressed (dense) arm, at the same rounds.

An arm is compressed when its aggregator chain (``aggregator``, ``aggregator.inner``, …) names a
compressor of :mod:`fedkit.compress`; the report adds this part when at least one arm is. The
dense baseline is the first federated arm without a compressor.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fedkit.experiment.report_model import Arm, Section, labels, summarize
from fedkit.experiment.report_plots import Plot, _accuracy_figure, format_bytes

__all__ = ["COMPRESSORS", "compression_plots", "compression_section", "compressor_of"]

COMPRESSORS = ("quantize", "qsgd", "sign", "topk", "randk")
"""The registry names of the compressor stages."""


def compressor_of(arm: Arm) -> str | None:
    """``"topk fraction=0.01 +EF"``: the arm's compressor stage and its settings, or ``None``."""
    settings = dict(arm.settings)
    prefix = "aggregator."
    while settings.get(prefix + "name") not in COMPRESSORS:
        if prefix + "name" not in settings:
            return None
        prefix += "inner."
    opts = []
    feedback = False
    for key, value in settings.items():
        field = key[len(prefix) :] if key.startswith(prefix) else ""
        if not field or "." in field or field == "name" or value == "false":
            continue  # another stage's key, the inner stage, the name, an option left off
        if field == "error_feedback":
            feedback = True
        else:
            opts.append(f"{field}={value}")
    name = " ".join([settings[prefix + "name"], *opts])
    return f"{name} +EF" if feedback else name


def _compressed(arms: Sequence[Arm]) -> bool:
    return any(compressor_of(a) is not None for a in arms)


def compression_plots(arms: Sequence[Arm], out_dir: Path) -> list[Plot]:
    """Test accuracy against cumulative upload bytes (``[]`` unless an arm is compressed)."""
    if not _compressed(arms):
        return []
    plot = Plot(
        key="accuracy_vs_upload",
        title="Test accuracy vs cumulative upload bytes (clients to server)",
        path=out_dir / "accuracy_vs_upload.png",
    )
    _accuracy_figure(
        [a for a in arms if a.points and a.points[-1].bytes_up > 0],
        plot.path,
        x_of=lambda p: float(p.bytes_up),
        xlabel="upload bytes (cumulative)",
        title=plot.title,
        bytes_axis=True,
    )
    return [plot]


def compression_section(arms: Sequence[Arm]) -> Section | None:
    """Each arm's final accuracy, its difference from the dense arm's (points), its upload bytes
    and how many times fewer than dense; ``None`` unless an arm is compressed."""
    if not _compressed(arms):
        return None
    names = labels(arms)
    dense = next(
        (a for a in arms if compressor_of(a) is None and a.points and a.points[-1].bytes_up > 0),
        None,
    )
    base = summarize(dense) if dense is not None else None
    rows = []
    winners = []
    for label, arm in zip(names, arms, strict=True):
        s = summarize(arm)
        if not arm.points or s.bytes_up == 0:
            continue
        acc = s.final_accuracy
        delta = ratio = None
        if base is not None and base.final_accuracy is not None and acc is not None:
            delta = 100 * (acc - base.final_accuracy)
        if base is not None and s.bytes_up > 0:
            ratio = base.bytes_up / s.bytes_up
        if delta is not None and ratio is not None and ratio >= 10 and delta >= -1.0:
            winners.append(label)
        rows.append(
            (
                label,
                compressor_of(arm) or "none (dense)",
                str(s.rounds),
                "—" if acc is None else f"{100 * acc:.1f}",
                "—" if delta is None else f"{delta:+.1f}",
                format_bytes(s.bytes_up),
                "—" if ratio is None else f"{ratio:.1f}×",
            )
        )
    headline = (
        f"≥ 10× fewer upload bytes within 1 point of dense: {', '.join(winners)}."
        if winners
        else "No arm reached ≥ 10× fewer upload bytes within 1 point of dense."
    )
    return Section(
        title="Compression: accuracy and upload bytes against the dense arm",
        header=(
            "arm",
            "compressor",
            "rounds",
            "final acc. %",
            "Δ vs dense (pts)",
            "upload",
            "× fewer than dense",
        ),
        rows=tuple(rows),
        note=(
            "Upload bytes are the encoded updates the clients sent (in a deployment, plus the "
            "safetensors header of each upload). Δ compares final test accuracies after the same "
            f"number of rounds, one seed each. {headline}"
        ),
    )
