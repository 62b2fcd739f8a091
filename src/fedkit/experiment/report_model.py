"""What a comparison report is made of: one :class:`Arm` per run, and its :class:`ArmSummary`.

The report code (plots, Markdown, HTML) works on these small frozen dataclasses only, never on the
results database, so it can be tested on hand-made arms and stays independent of the store's
schema; :mod:`fedkit.experiment.report` adapts stored runs into arms.

Conventions: ``RoundPoint.round`` counts rounds completed (1-based, so "rounds to target" is a
number of rounds); wall time and bytes are cumulative from the start of the run, bytes counting
both directions (a centralised run has 0 bytes).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath

from fedkit.fairness import p10

__all__ = ["Arm", "ArmSummary", "RoundPoint", "differing_settings", "labels", "summarize"]


@dataclass(frozen=True, kw_only=True)
class RoundPoint:
    """The state of a run after ``round`` rounds.

    Attributes:
        round: rounds completed (>= 1).
        accuracy: centralised test accuracy after this round, ``None`` when not evaluated.
        loss: centralised test loss after this round, ``None`` when not evaluated.
        wall_seconds: wall-clock seconds since the run started (cumulative).
        bytes_up: bytes sent by clients so far (cumulative).
        bytes_down: bytes sent to clients so far (cumulative).
    """

    round: int
    accuracy: float | None
    loss: float | None
    wall_seconds: float
    bytes_up: int
    bytes_down: int

    def __post_init__(self) -> None:
        if self.round < 1:
            raise ValueError(f"RoundPoint.round must be >= 1, got {self.round}")

    @property
    def bytes_total(self) -> int:
        """Bytes in both directions so far."""
        return self.bytes_up + self.bytes_down


@dataclass(frozen=True, kw_only=True)
class Arm:
    """One run as a report sees it.

    Attributes:
        run_id: the run's id in its results store.
        name: the run's name (the arm label in plots and tables).
        algorithm: algorithm name (``fedavg``, ``fedprox``, ``centralized``, …).
        status: the run's status in the store (``finished``, ``failed``, ``running``).
        target_accuracy: the run config's target accuracy, ``None`` when unset.
        points: one point per round, in increasing round order.
        client_accuracy: per-client accuracies of the last federated evaluation (empty when the
            run had none).
        client_round: the round (1-based) of that federated evaluation.
        personal_accuracy: per-client accuracies of the clients' personal models at that
            evaluation (personalised algorithms; empty otherwise).
        settings: flattened run configuration, ``(dotted key, value as text)`` pairs.
        metrics: the last recorded value of each named per-round measurement (the results
            database's ``details``: an attack's backdoor accuracy, a privacy accountant's ε).
        study: the study the run belongs to, if any.
        source: where the run was read from (a results directory or database).
    """

    run_id: str
    name: str
    algorithm: str
    status: str = "finished"
    target_accuracy: float | None = None
    points: tuple[RoundPoint, ...] = ()
    client_accuracy: tuple[float, ...] = ()
    client_round: int | None = None
    personal_accuracy: tuple[float, ...] = ()
    settings: tuple[tuple[str, str], ...] = ()
    metrics: tuple[tuple[str, float], ...] = ()
    study: str | None = None
    source: str = ""

    def __post_init__(self) -> None:
        rounds = [p.round for p in self.points]
        if rounds != sorted(set(rounds)):
            raise ValueError(f"Arm {self.name!r}: points must have increasing, distinct rounds")


@dataclass(frozen=True, kw_only=True)
class Section:
    """A table a report adds for a kind of study (e.g. the aggregator × attack matrix).

    Attributes:
        title: the section heading.
        header: the table's column names.
        rows: its cells.
        note: a sentence under the table.
    """

    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class ArmSummary:
    """The numbers of an arm's row in the report table (``None`` = not available)."""

    rounds: int
    final_accuracy: float | None
    best_accuracy: float | None
    best_round: int | None
    rounds_to_target: int | None
    seconds_to_target: float | None
    bytes_to_target: int | None
    wall_seconds: float
    bytes_up: int
    bytes_down: int
    client_mean: float | None
    client_p10: float | None
    client_count: int
    personal_mean: float | None = None
    personal_p10: float | None = None


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def summarize(arm: Arm) -> ArmSummary:
    """Final and best accuracy, rounds to the target, totals and the client-accuracy summary.

    ``rounds_to_target`` is the first round whose evaluated accuracy is at least
    ``arm.target_accuracy`` (``None`` when no target is set or it was never reached);
    ``seconds_to_target`` and ``bytes_to_target`` are the wall time and the bytes (up + down)
    spent until the end of that round — the fair costs when arms' rounds differ in size (a
    centralised epoch against an FL round).
    """
    scored = [p for p in arm.points if _finite(p.accuracy)]
    final = scored[-1].accuracy if scored else None
    best_point = max(scored, key=lambda p: (p.accuracy or 0.0, -p.round)) if scored else None
    hit = None
    if arm.target_accuracy is not None:
        hit = next((p for p in scored if (p.accuracy or 0.0) >= arm.target_accuracy), None)
    last = arm.points[-1] if arm.points else None
    clients = [a for a in arm.client_accuracy if math.isfinite(a)]
    own = [a for a in arm.personal_accuracy if math.isfinite(a)]
    return ArmSummary(
        rounds=last.round if last else 0,
        final_accuracy=final,
        best_accuracy=best_point.accuracy if best_point else None,
        best_round=best_point.round if best_point else None,
        rounds_to_target=hit.round if hit else None,
        seconds_to_target=hit.wall_seconds if hit else None,
        bytes_to_target=hit.bytes_total if hit else None,
        wall_seconds=last.wall_seconds if last else 0.0,
        bytes_up=last.bytes_up if last else 0,
        bytes_down=last.bytes_down if last else 0,
        client_mean=statistics.fmean(clients) if clients else None,
        client_p10=p10(clients) if clients else None,
        client_count=len(clients),
        personal_mean=statistics.fmean(own) if own else None,
        personal_p10=p10(own) if own else None,
    )


def _folder(source: str) -> str:
    """The results folder a source names: ``runs/a/results.sqlite`` -> ``runs/a``."""
    path = PurePath(source)
    return str(path.parent if path.suffix in (".sqlite", ".db", ".sqlite3") else path)


def labels(arms: Sequence[Arm]) -> list[str]:
    """Arm labels, unique: the run name; where two arms share a name, ``name [run id]``; where
    they also share the run id (runs from several folders), ``name [folder:id]`` with the
    folder's last part, or its whole path if that is still ambiguous. Arms with the same name,
    id and folder (the same run twice) keep the same label."""
    by_name: dict[str, list[Arm]] = {}
    for arm in arms:
        by_name.setdefault(arm.name, []).append(arm)
    out: list[str] = []
    for a in arms:
        same = by_name[a.name]
        if len(same) == 1:
            out.append(a.name)
        elif sum(b.run_id == a.run_id for b in same) == 1:
            out.append(f"{a.name} [{a.run_id}]")
        else:
            twins = {_folder(b.source) for b in same if b.run_id == a.run_id}
            short = {PurePath(f).name for f in twins}
            where = PurePath(_folder(a.source)).name if len(short) == len(twins) else None
            out.append(f"{a.name} [{where or _folder(a.source)}:{a.run_id}]")
    return out


def differing_settings(arms: Sequence[Arm]) -> tuple[list[tuple[str, str]], list[str]]:
    """Split the arms' settings into the ones they share and the keys on which they differ.

    Returns:
        ``(common, differing)``: ``common`` lists ``(key, value)`` pairs identical in every arm;
        ``differing`` lists the keys whose value differs or is missing in some arm, in first-seen
        order.
    """
    maps = [dict(a.settings) for a in arms]
    keys: list[str] = []
    for a in arms:
        for key, _ in a.settings:
            if key not in keys:
                keys.append(key)
    common: list[tuple[str, str]] = []
    differing: list[str] = []
    for key in keys:
        values = {m.get(key) for m in maps}
        if len(values) == 1 and None not in values:
            common.append((key, maps[0][key]))
        else:
            differing.append(key)
    return common, differing
