"""The aggregator × attack matrix of a robustness study: heatmaps and the verdict table.

A study whose runs carry an ``[attack]`` (``attack.name`` among their settings) is read as a
matrix: rows are the arms (one per aggregator; a run's name up to its grid values), columns the
attacks (``none``, the honest baseline, first), one matrix per attacker fraction. Each cell is
the run's final test accuracy and, for the backdoor, its final backdoor accuracy.

The verdict table gives, per fraction and attack, the best robust aggregator (every row but the
plain mean; against a backdoor, the best of those that kept it out), its accuracy, the gap to the
same aggregator's clean run, and the rules the attack broke: a rule is broken when it loses more
than :data:`BROKEN_GAP` of accuracy to its clean run or lets more than :data:`BROKEN_BACKDOOR` of
triggered inputs through. An attack that breaks every rule is named as such.
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


def _broken(m: AttackMatrix, frac: float, row: str, attack: str) -> bool:
    """Whether ``attack`` broke ``row``: more than :data:`BROKEN_GAP` below its clean run, or
    more than :data:`BROKEN_BACKDOOR` of triggered inputs let through."""
    acc = m.accuracy.get((frac, row, attack))
    clean = m.accuracy.get((frac, row, CLEAN))
    bd = m.backdoor.get((frac, row, attack))
    lost = acc is not None and clean is not None and clean - acc > BROKEN_GAP
    return lost or (bd is not None and bd > BROKEN_BACKDOOR)


def verdict(m: AttackMatrix, frac: float) -> Section:
    """The verdict table for one attacker fraction (module docstring)."""
    rows: list[tuple[str, ...]] = []
    broken_all: list[str] = []
    for attack in m.cols:
        if attack == CLEAN:
            continue
        ran = [r for r in m.robust if (frac, r, attack) in m.accuracy]
        if not ran:
            continue
        # the best defence: the highest accuracy among the rules the backdoor (if any) did not
        # get through, else among all
        row = min(
            ran,
            key=lambda r: (
                m.backdoor.get((frac, r, attack), 0.0) > BROKEN_BACKDOOR,
                -m.accuracy[(frac, r, attack)],
            ),
        )
        best = m.accuracy[(frac, row, attack)]
        clean = m.accuracy.get((frac, row, CLEAN))
        broken = [r for r in ran if _broken(m, frac, r, attack)]
        if len(broken) == len(ran):
            broken_all.append(attack)
        rows.append(
            (
                attack,
                row,
                _pct(best),
                _pct(clean),
                "–" if clean is None else f"{100 * (clean - best):+.1f} pts",
                _pct(m.backdoor.get((frac, row, attack))),
                f"{len(broken)} of {len(ran)}" + (f": {', '.join(broken)}" if broken else ""),
                "breaks every aggregator" if len(broken) == len(ran) else "held",
            )
        )
    note = (
        f"With {100 * frac:g}% attackers. The best robust aggregator is, among every rule but "
        "the plain mean, the one with the highest final accuracy (against a backdoor: among the "
        "rules that kept it out, if any did); the gap is to that rule's run without attackers. "
        f"A rule is broken when it loses more than {100 * BROKEN_GAP:g} points to its clean "
        f"run or lets more than {100 * BROKEN_BACKDOOR:g}% of triggered inputs through. "
        + (
            f"Attacks that break every aggregator: {', '.join(broken_all)}."
            if broken_all
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
            "its backdoor acc.",
            "rules broken",
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
