"""The aggregator × attack matrix of a robustness study: heatmaps and the verdict table.

A study whose runs carry an ``[attack]`` (``attack.name`` among their settings) is read as a
matrix: rows are the arms (one per aggregator; a run's name up to its grid values), columns the
attacks (``none``, the honest baseline, first), one matrix per attacker fraction. Each cell is
the run's final test accuracy and, for the backdoor, its final backdoor accuracy.

The verdict table gives, per fraction and attack, the best robust aggregator (every row but the
plain mean), its accuracy, and the gap to the same aggregator's clean run. An attack *breaks every
aggregator* when even the best one loses more than :data:`BROKEN_GAP` of accuracy to its clean
run, or (a backdoor) when every aggregator lets more than :data:`BROKEN_BACKDOOR` of triggered
inputs through.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedkit.experiment.report_model import Arm, Section, summarize
from fedkit.experiment.report_plots import Plot

CLEAN = "none"
"""The attack name of the honest baseline column."""

BROKEN_GAP = 0.10
"""Accuracy lost to the clean run beyond which an attack has broken an aggregator."""

BROKEN_BACKDOOR = 0.5
"""Backdoor accuracy beyond which a backdoor has got through an aggregator."""

Cell = tuple[float, str, str]
"""``(attacker fraction, row, attack)``."""


@dataclass(frozen=True, kw_only=True)
class AttackMatrix:
    """The study's runs as matrices (module docstring).

    Attributes:
        fractions: attacker fractions, ascending.
        rows: aggregator rows, in the study's order.
        cols: attacks, ``none`` first.
        robust: the rows that are not the plain mean.
        accuracy: final test accuracy per cell.
        backdoor: final backdoor accuracy per cell (backdoor runs only).
    """

    fractions: tuple[float, ...]
    rows: tuple[str, ...]
    cols: tuple[str, ...]
    robust: tuple[str, ...]
    accuracy: dict[Cell, float]
    backdoor: dict[Cell, float]


def _row_name(arm: Arm) -> str:
    return arm.name.split("[", 1)[0]


def attack_matrix(arms: Sequence[Arm]) -> AttackMatrix | None:
    """The matrix of the arms that ran with an ``[attack]``, or ``None`` when none did."""
    rows: list[str] = []
    cols: list[str] = []
    fractions: set[float] = set()
    robust: list[str] = []
    accuracy: dict[Cell, float] = {}
    backdoor: dict[Cell, float] = {}
    for arm in arms:
        settings = dict(arm.settings)
        attack = settings.get("attack.name")
        if attack is None:
            continue
        frac = float(settings.get("attack.fraction", "0"))
        row = _row_name(arm)
        if row not in rows:
            rows.append(row)
            if settings.get("aggregator.name", "mean") != "mean":
                robust.append(row)
        if attack not in cols:
            cols.append(attack)
        fractions.add(frac)
        final = summarize(arm).final_accuracy
        if final is not None and math.isfinite(final):
            accuracy[(frac, row, attack)] = final
        bd = dict(arm.metrics).get("backdoor_accuracy")
        if bd is not None:
            backdoor[(frac, row, attack)] = bd
    if not rows:
        return None
    cols.sort(key=lambda c: c != CLEAN)  # the clean column first, the rest in study order
    return AttackMatrix(
        fractions=tuple(sorted(fractions)),
        rows=tuple(rows),
        cols=tuple(cols),
        robust=tuple(robust),
        accuracy=accuracy,
        backdoor=backdoor,
    )


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def verdict(m: AttackMatrix, frac: float) -> Section:
    """The verdict table for one attacker fraction (module docstring)."""
    rows: list[tuple[str, ...]] = []
    broken: list[str] = []
    for attack in m.cols:
        if attack == CLEAN:
            continue
        scored = [
            (m.accuracy[(frac, r, attack)], r) for r in m.robust if (frac, r, attack) in m.accuracy
        ]
        if not scored:
            continue
        best, row = max(scored)
        clean = m.accuracy.get((frac, row, CLEAN))
        gap = None if clean is None else clean - best
        bds = [m.backdoor[(frac, r, attack)] for r in m.robust if (frac, r, attack) in m.backdoor]
        through = bool(bds) and min(bds) > BROKEN_BACKDOOR
        breaks = (gap is not None and gap > BROKEN_GAP) or through
        if breaks:
            broken.append(attack)
        rows.append(
            (
                attack,
                row,
                _pct(best),
                _pct(clean),
                "–" if gap is None else f"{100 * gap:+.1f} pts",
                "–" if not bds else _pct(min(bds)),
                "breaks every aggregator" if breaks else "held",
            )
        )
    note = (
        f"With {100 * frac:g}% attackers. Best robust aggregator = highest final accuracy among "
        "every rule but the plain mean; the gap is to that aggregator's run without attackers. "
        f"An attack breaks every aggregator when the best one loses more than "
        f"{100 * BROKEN_GAP:g} points, or when every one lets more than "
        f"{100 * BROKEN_BACKDOOR:g}% of triggered inputs through. "
        + (
            f"Attacks that break every aggregator: {', '.join(broken)}."
            if broken
            else "No attack broke every aggregator."
        )
    )
    return Section(
        title=f"Robustness at {100 * frac:g}% attackers",
        header=(
            "attack",
            "best robust aggregator",
            "its accuracy",
            "its clean accuracy",
            "gap",
            "lowest backdoor acc.",
            "verdict",
        ),
        rows=tuple(rows),
        note=note,
    )


def matrix_sections(m: AttackMatrix) -> list[Section]:
    """One verdict table per attacker fraction (fractions with attackers only)."""
    return [verdict(m, f) for f in m.fractions if f > 0]


def _heatmap(
    fig: Figure, pos: int, total: int, grid: np.ndarray, m: AttackMatrix, title: str
) -> None:
    ax = fig.add_subplot(1, total, pos)
    ax.imshow(np.ma.masked_invalid(grid), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(m.cols)), labels=list(m.cols), rotation=45, ha="right")
    ax.set_yticks(range(len(m.rows)), labels=list(m.rows))
    ax.set_title(title)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            v = grid[i, j]
            if math.isfinite(v):
                ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if v < 0.6 else "black")  # fmt: skip


def matrix_plots(m: AttackMatrix, out_dir: Path) -> list[Plot]:
    """One heatmap figure per attacker fraction: final accuracy (and backdoor accuracy)."""
    plots = []
    for frac in m.fractions:
        acc = np.full((len(m.rows), len(m.cols)), np.nan)
        bd = np.full((len(m.rows), len(m.cols)), np.nan)
        for i, r in enumerate(m.rows):
            for j, c in enumerate(m.cols):
                acc[i, j] = m.accuracy.get((frac, r, c), np.nan)
                bd[i, j] = m.backdoor.get((frac, r, c), np.nan)
        panels = 2 if np.isfinite(bd).any() else 1
        fig = Figure(
            figsize=(5.5 * panels, 1.2 + 0.38 * len(m.rows)), dpi=110, layout="constrained"
        )
        FigureCanvasAgg(fig)
        _heatmap(fig, 1, panels, acc, m, "final test accuracy (%)")
        if panels == 2:
            _heatmap(fig, 2, panels, bd, m, "backdoor accuracy (%)")
        key = f"attack_matrix_{round(100 * frac)}"
        title = f"Aggregator × attack at {100 * frac:g}% attackers"
        path = out_dir / f"{key}.png"
        fig.savefig(path)
        plots.append(Plot(key=key, title=title, path=path))
    return plots
