"""The fairness and personalisation view of a report: per-client accuracy of the global model
beside that of each client's personal model, at the last federated evaluation.

For every arm with per-client accuracies the table gives, for the global model and (for
personalised methods) the personal models: the mean, the 10th percentile, the worst client, the
variance (population variance of the accuracies, as Li et al. 2020 report it for q-FFL), the mean
of the worst 10% of clients (q-FFL's "worst 10%") and Jain's fairness index
``J = (Σ a_i)² / (n Σ a_i²)`` (Jain, Chiu and Hawe 1984: 1 when every client has the same
accuracy, ``1/n`` when one client has it all). The figure draws the two distributions side by
side per arm. The measures themselves are :mod:`fedkit.fairness` (also stored per round).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedkit.experiment.report_model import Arm, Section, labels
from fedkit.experiment.report_plots import Plot
from fedkit.fairness import Spread, jain_index, spread, worst_fraction_mean

__all__ = [
    "Spread",
    "fairness_plots",
    "fairness_section",
    "jain_index",
    "spread",
    "worst_fraction_mean",
]


def _cells(s: Spread | None) -> tuple[str, ...]:
    if s is None:
        return ("—",) * 6
    pct = [f"{100 * v:.1f}" for v in (s.mean, s.p10, s.worst, s.worst10)]
    return (*pct, f"{1e4 * s.variance:.1f}", f"{s.jain:.3f}")


def fairness_section(arms: Sequence[Arm]) -> Section | None:
    """The table of per-client accuracy, global model beside personal models (``None`` when no
    arm has a federated evaluation)."""
    rows = []
    for label, arm in zip(labels(arms), arms, strict=True):
        glob = spread(arm.client_accuracy)
        if glob is None:
            continue
        own = spread(arm.personal_accuracy)
        rows.append((label, arm.algorithm, "global", str(glob.clients), *_cells(glob)))
        if own is not None:
            rows.append((label, arm.algorithm, "personal", str(own.clients), *_cells(own)))
    if not rows:
        return None
    return Section(
        title="Per-client accuracy: global vs personal models (fairness)",
        header=(
            "arm",
            "algorithm",
            "model",
            "clients",
            "mean %",
            "p10 %",
            "worst %",
            "worst 10% mean %",
            "variance (%²)",
            "Jain",
        ),
        rows=tuple(rows),
        note=(
            "At the last federated evaluation, on each client's local test split. Variance is "
            "the population variance of the clients' accuracies in percent²; Jain's index is "
            "(Σa)²/(n Σa²), 1 = every client equally accurate. 'personal' rows score each "
            "client's own model (FedPer/FedBN local layers, Ditto's v_k, a fine-tuned or "
            "Per-FedAvg-adapted global model)."
        ),
    )


def fairness_plots(arms: Sequence[Arm], out_dir: Path) -> list[Plot]:
    """Box plots of per-client accuracy per arm, the personal models' beside the global one's."""
    data: list[list[float]] = []
    names: list[str] = []
    colours: list[str] = []
    for label, arm in zip(labels(arms), arms, strict=True):
        glob = [100 * a for a in arm.client_accuracy if math.isfinite(a)]
        own = [100 * a for a in arm.personal_accuracy if math.isfinite(a)]
        if not glob:
            continue
        data.append(glob)
        names.append(f"{label}\nglobal")
        colours.append("tab:blue")
        if own:
            data.append(own)
            names.append(f"{label}\npersonal")
            colours.append("tab:orange")
    if not any(a.personal_accuracy for a in arms) or not data:
        return []
    fig = Figure(figsize=(max(6.0, 1.1 * len(data)), 4.4), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    box = ax.boxplot(data, patch_artist=True, showmeans=True)
    for patch, colour in zip(box["boxes"], colours, strict=True):
        patch.set_facecolor(colour)
        patch.set_alpha(0.5)
    ax.set_xticks(range(1, len(names) + 1), names, fontsize=7)
    ax.set_ylabel("per-client test accuracy (%)")
    ax.set_title("Global vs personal models, per client (triangle = mean)")
    ax.grid(axis="y", alpha=0.3)
    path = out_dir / "personal_vs_global.png"
    fig.savefig(path)
    return [
        Plot(key="personal_vs_global", title="Per-client accuracy: global vs personal", path=path)
    ]
