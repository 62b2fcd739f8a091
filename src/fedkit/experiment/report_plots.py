"""The report's figures, drawn with matplotlib's Agg backend into PNG files.

Four figures compare the arms of a report: test accuracy against rounds, against wall-clock time
and against bytes communicated (up + down), and the distribution of per-client accuracy at the
last federated evaluation. Figures are built on :class:`matplotlib.figure.Figure` objects rather
than ``pyplot``, so no global state or display is involved and reports can be made from any thread
or a headless machine.

A run that communicates nothing (the centralised baseline) cannot be placed on a bytes axis; in the
accuracy-vs-bytes figure it is drawn as a dashed horizontal reference line at its best accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from fedkit.experiment.report_model import Arm, RoundPoint, labels

__all__ = ["PLOTS", "Plot", "format_bytes", "write_plots"]

_SIZE = (7.0, 4.2)
_DPI = 110


@dataclass(frozen=True, kw_only=True)
class Plot:
    """A figure written by :func:`write_plots`.

    Attributes:
        key: stable identifier (also the PNG file stem).
        title: caption used in the report.
        path: the PNG file.
    """

    key: str
    title: str
    path: Path


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.54 KB"``: 3 significant digits, powers of 1000 (as bandwidth is quoted)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 999.5 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" or abs(n) >= 999.5 else f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


_INSIDE_LEGEND = 4
"""Up to this many arms the legend sits inside the axes; more go in columns below them."""


def _new_figure(extra_height: float = 0.0) -> Figure:
    fig = Figure(figsize=(_SIZE[0], _SIZE[1] + extra_height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _color(index: int) -> str:
    """The arm's colour, the same in every figure."""
    return f"C{index % 10}"


def _scored(arm: Arm) -> list[RoundPoint]:
    return [p for p in arm.points if p.accuracy is not None and math.isfinite(p.accuracy)]


def _accuracy_figure(
    arms: Sequence[Arm],
    path: Path,
    *,
    x_of: Callable[[RoundPoint], float],
    xlabel: str,
    title: str,
    bytes_axis: bool = False,
    integer_x: bool = False,
) -> None:
    below = len(arms) > _INSIDE_LEGEND
    fig = _new_figure(extra_height=0.2 * math.ceil(len(arms) / 2) if below else 0.0)
    ax = fig.add_subplot()
    names = labels(arms)
    drawn = 0
    for i, (arm, label) in enumerate(zip(arms, names, strict=True)):
        color = _color(i)
        pts = _scored(arm)
        if not pts:
            continue
        if bytes_axis and arm.points[-1].bytes_total == 0:  # sends nothing: a reference line
            best = max(p.accuracy or 0.0 for p in pts)
            ax.axhline(
                best, color=color, linestyle="--", linewidth=1.2, label=f"{label} (0 bytes, best)"
            )
        else:
            xs = [x_of(p) for p in pts]
            ys = [p.accuracy or 0.0 for p in pts]
            marker = "o" if len(pts) <= 30 else None
            ax.plot(xs, ys, color=color, marker=marker, markersize=3, label=label)
        drawn += 1
    targets = sorted({a.target_accuracy for a in arms if a.target_accuracy is not None})
    for t in targets:
        ax.axhline(t, color="grey", linestyle=":", linewidth=1)
        ax.annotate(
            f"target {t:.3g}",
            xy=(0, t),
            xycoords=("axes fraction", "data"),
            fontsize=8,
            color="grey",
            xytext=(2, 2),
            textcoords="offset points",
        )
    ax.set_xlim(left=0)  # rounds, seconds and bytes all start at zero
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if bytes_axis:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: format_bytes(v)))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if drawn:
        if below:
            fig.legend(loc="outside lower center", ncols=2, fontsize=7)
        else:
            ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no evaluated rounds", ha="center", va="center", transform=ax.transAxes)
    fig.savefig(path, format="png")


def _client_figure(arms: Sequence[Arm], path: Path) -> None:
    longest = max((len(label) for label in labels(arms)), default=0)
    fig = _new_figure(extra_height=0.05 * longest if len(arms) > _INSIDE_LEGEND else 0.0)
    ax = fig.add_subplot()
    names = labels(arms)
    data = [
        ([a for a in arm.client_accuracy if math.isfinite(a)], label, _color(i))
        for i, (arm, label) in enumerate(zip(arms, names, strict=True))
    ]
    data = [(values, label, color) for values, label, color in data if values]
    if data:
        positions = list(range(1, len(data) + 1))
        ax.boxplot(
            [values for values, _, _ in data],
            positions=positions,
            widths=0.5,
            showmeans=True,
            showfliers=False,  # every client is drawn as a point below
            medianprops={"color": "black"},
            meanprops={"marker": "^", "markerfacecolor": "white", "markeredgecolor": "black"},
        )
        for pos, (values, _, color) in zip(positions, data, strict=True):
            # The individual clients, jittered deterministically so small cohorts stay visible.
            xs = [pos + 0.18 * (((i * 0.618034) % 1.0) - 0.5) for i in range(len(values))]
            ax.scatter(xs, values, s=6, alpha=0.35, color=color, zorder=3)
        fig.legend(
            handles=_box_key(),
            loc="outside lower center",
            ncol=3,
            fontsize=7,
            frameon=False,
        )
        if len(data) > _INSIDE_LEGEND:  # many arms: slanted one-line labels, right-aligned
            ticks = [f"{label} (n={len(v)})" for v, label, _ in data]
            ax.set_xticks(positions, ticks, fontsize=7, rotation=30, ha="right")
        else:
            ticks = [f"{label}\n(n={len(v)})" for v, label, _ in data]
            ax.set_xticks(positions, ticks, fontsize=8)
    else:
        ax.text(
            0.5,
            0.5,
            "no per-client (federated) evaluation in these runs",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set_ylabel("client test accuracy")
    ax.set_title("Per-client accuracy at the last federated evaluation")
    ax.grid(True, axis="y", alpha=0.3)
    fig.savefig(path, format="png")


def _box_key() -> list[Artist]:
    """What the box plot's marks mean (matplotlib's defaults, with the mean shown)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    return [
        Patch(facecolor="white", edgecolor="black", label="box: middle half of clients (25-75%)"),
        Line2D([], [], color="black", label="line: median client"),
        Line2D([], [], color="black", marker="^", markerfacecolor="white", linestyle="none",
               label="triangle: mean"),
        Line2D([], [], color="black", marker="_", markersize=10, linestyle="-",
               label="whiskers: furthest client within 1.5 box heights"),
        Line2D([], [], color="C0", alpha=0.35, marker="o", markersize=3, linestyle="none",
               label="dot: one client"),
    ]  # fmt: skip


PLOTS: tuple[tuple[str, str], ...] = (
    ("accuracy_vs_rounds", "Test accuracy vs rounds"),
    ("accuracy_vs_time", "Test accuracy vs wall-clock time"),
    ("accuracy_vs_bytes", "Test accuracy vs bytes communicated (up + down)"),
    ("client_accuracy", "Per-client accuracy distribution (last federated evaluation)"),
)
"""``(key, title)`` of every figure, in report order."""


def write_plots(arms: Sequence[Arm], out_dir: Path) -> list[Plot]:
    """Write every figure of :data:`PLOTS` as ``out_dir/<key>.png``; return them in order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    titles = dict(PLOTS)
    plots = [Plot(key=k, title=t, path=out_dir / f"{k}.png") for k, t in PLOTS]
    by_key = {p.key: p.path for p in plots}
    _accuracy_figure(
        arms,
        by_key["accuracy_vs_rounds"],
        x_of=lambda p: float(p.round),
        xlabel="round",
        title=titles["accuracy_vs_rounds"],
        integer_x=True,
    )
    _accuracy_figure(
        arms,
        by_key["accuracy_vs_time"],
        x_of=lambda p: p.wall_seconds,
        xlabel="wall-clock time (s)",
        title=titles["accuracy_vs_time"],
    )
    _accuracy_figure(
        arms,
        by_key["accuracy_vs_bytes"],
        x_of=lambda p: float(p.bytes_total),
        xlabel="bytes communicated (up + down)",
        title=titles["accuracy_vs_bytes"],
        bytes_axis=True,
    )
    _client_figure(arms, by_key["client_accuracy"])
    return plots
