"""Comparison reports over stored runs (``fedkit report RUN…|DIR --out DIR``).

A report compares *arms* — runs read from one or more results databases
(:mod:`fedkit.experiment.results`) — in a Markdown file and a self-contained HTML page with
figures: test accuracy against rounds, wall-clock time and bytes communicated, the per-client
accuracy distribution at the last federated evaluation, and a table of final and best accuracy and
rounds to the target accuracy per arm. Arms may be runs of different algorithms, including the
centralised baseline (which communicates 0 bytes).

This module selects runs (:func:`load_arms`), turns stored rows into
:class:`~fedkit.experiment.report_model.Arm` objects (:func:`arm_from_store`) and writes the files
(:func:`write_report`); the figures and the documents live in ``report_plots`` and
``report_html``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedkit.experiment.report_compress import compression_plots, compression_section
from fedkit.experiment.report_fairness import fairness_plots, fairness_section
from fedkit.experiment.report_html import ReportDocument, render_html, render_markdown
from fedkit.experiment.report_matrix import attack_matrix, matrix_plots, matrix_sections
from fedkit.experiment.report_model import Arm, RoundPoint, Section
from fedkit.experiment.report_plots import Plot, write_plots
from fedkit.experiment.results import DB_NAME, ResultsStore, RunRow

__all__ = [
    "ArmSelection",
    "ReportFiles",
    "ReportSourceError",
    "arm_from_store",
    "flatten_config",
    "latest_per_arm",
    "load_arms",
    "select_arms",
    "write_report",
]


class ReportSourceError(ValueError):
    """A ``RUN`` or ``DIR`` argument of ``fedkit report`` does not name stored runs."""


@dataclass(frozen=True, kw_only=True)
class ReportFiles:
    """The files a report consists of.

    Attributes:
        markdown: ``report.md`` (links the PNGs beside it).
        html: ``report.html`` (self-contained: figures embedded).
        plots: the figures, as PNG files beside the documents.
    """

    markdown: Path
    html: Path
    plots: tuple[Plot, ...]


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """``{"run": {"rounds": 5}}`` -> ``[("run.rounds", "5")]``; values as compact JSON text."""
    out: list[tuple[str, str]] = []
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.extend(flatten_config(value, f"{dotted}."))
        elif isinstance(value, str):
            out.append((dotted, value))
        else:
            out.append((dotted, json.dumps(value, sort_keys=True)))
    return out


def _target(run: RunRow) -> float | None:
    if run.summary is not None and run.summary.target_accuracy is not None:
        return float(run.summary.target_accuracy)
    section = run.config.get("run")
    if isinstance(section, Mapping):
        value = section.get("target_accuracy")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _algorithm(run: RunRow) -> str:
    """``[algorithm] name``, or ``parallel:<method>`` for a data-parallel (``[parallel]``) run."""
    parallel = run.config.get("parallel")
    if isinstance(parallel, Mapping) and isinstance(parallel.get("method"), str):
        return f"parallel:{parallel['method']}"
    section = run.config.get("algorithm")
    if isinstance(section, Mapping) and isinstance(section.get("name"), str):
        return str(section["name"])
    return "?"


def arm_from_store(store: ResultsStore, run_id: int) -> Arm:
    """Read one run from ``store`` as an :class:`Arm`.

    Rounds become 1-based; per-round wall time and bytes are accumulated; the per-client
    accuracies are those of the last round with a federated evaluation.
    """
    run = store.run(run_id)
    points: list[RoundPoint] = []
    metrics: dict[str, float] = {}
    wall, up, down = 0.0, 0, 0
    for row in store.rounds(run_id):
        for key, value in (row.details or {}).items():
            if isinstance(value, int | float) and math.isfinite(value):
                metrics[key] = float(value)
        wall += row.wall_seconds
        up += row.bytes_up
        down += row.bytes_down
        points.append(
            RoundPoint(
                round=row.round + 1,
                accuracy=row.test_accuracy,
                loss=row.test_loss,
                wall_seconds=wall,
                bytes_up=up,
                bytes_down=down,
            )
        )
    evaluated = [c for c in store.clients(run_id) if c.eval_accuracy is not None]
    last = max((c.round for c in evaluated), default=None)
    client_acc = tuple(
        float(c.eval_accuracy) for c in evaluated if c.round == last and c.eval_accuracy is not None
    )
    personal_acc = tuple(
        float(c.personal_accuracy)
        for c in evaluated
        if c.round == last and c.personal_accuracy is not None
    )
    return Arm(
        run_id=str(run.id),
        name=run.name,
        algorithm=_algorithm(run),
        status=run.status,
        target_accuracy=_target(run),
        points=tuple(points),
        client_accuracy=client_acc,
        client_round=None if last is None else last + 1,
        personal_accuracy=personal_acc,
        settings=tuple(flatten_config(run.config)),
        metrics=tuple(sorted(metrics.items())),
        study=run.study,
        source=str(store.path),
    )


def _database(path: Path) -> Path | None:
    if path.is_dir() and (path / DB_NAME).is_file():
        return path / DB_NAME
    if path.is_file() and path.suffix in {".sqlite", ".db", ".sqlite3"}:
        return path
    return None


def _open(db: Path) -> ResultsStore:
    """The store, with runs whose process died marked ``interrupted`` first (not reported as
    ``running`` forever)."""
    store = ResultsStore(db, create=False)
    store.mark_orphaned()
    return store


@dataclass(frozen=True)
class ArmSelection:
    """The arms a report compares and what was left out of it.

    Attributes:
        arms: the arms, in argument order.
        notes: one sentence per results directory that held runs left out (earlier runs of an
            arm, unfinished runs), saying how to include them; shown by ``fedkit report`` and
            written into the report.
    """

    arms: list[Arm]
    notes: list[str]


def latest_per_arm(runs: Sequence[RunRow]) -> list[RunRow]:
    """The latest completed run (highest id) of each arm — same study and name —, in id order:
    re-running an experiment into a folder adds runs, and a report of the folder compares the
    new ones, not a mix of both."""
    latest: dict[tuple[str | None, str], RunRow] = {}
    for r in runs:
        if r.status == "completed":
            key = (r.study, r.name)
            if key not in latest or r.id > latest[key].id:
                latest[key] = r
    return sorted(latest.values(), key=lambda r: r.id)


def load_arms(
    sources: Sequence[str],
    *,
    runs_dir: Path,
    study: str | None = None,
    include_unfinished: bool = False,
) -> list[Arm]:
    """The arms of :func:`select_arms` (without its notes)."""
    return select_arms(
        sources, runs_dir=runs_dir, study=study, include_unfinished=include_unfinished
    ).arms


def select_arms(
    sources: Sequence[str],
    *,
    runs_dir: Path,
    study: str | None = None,
    include_unfinished: bool = False,
) -> ArmSelection:
    """Resolve ``fedkit report`` arguments into arms, in argument order.

    Args:
        sources: Each is a results directory (or its ``results.sqlite``) — the latest completed
            run of each arm in it (:func:`latest_per_arm`) —, a run id in ``runs_dir``'s
            database, or ``DIR:ID`` for a run id in another directory.
        runs_dir: The output directory bare run ids refer to.
        study: Keep only runs of this study when a whole directory is given.
        include_unfinished: ``--all``: every run of a whole directory, earlier runs of an arm
            and failed, interrupted and running ones too (runs named by id are always taken,
            their status shown in the table).

    Raises:
        ReportSourceError: A source is neither a results directory nor a stored run id, or no
            run was selected.
    """
    arms: list[Arm] = []
    notes: list[str] = []
    for source in sources:
        db = _database(Path(source))
        if db is not None:
            with _open(db) as store:
                every = store.runs(study=study)
                selected = every if include_unfinished else latest_per_arm(every)
                if selected and len(selected) < len(every):
                    left = len(every) - len(selected)
                    notes.append(
                        f"{source}: the latest completed run of each arm ({len(selected)} of "
                        f"{len(every)} runs); {left} earlier or unfinished run"
                        f"{'' if left == 1 else 's'} left out (`fedkit report --all` includes "
                        "every run)"
                    )
                if not selected:
                    others = Counter(r.status for r in store.runs(study=study))
                    hint = ", ".join(f"{n} {status}" for status, n in sorted(others.items()))
                    raise ReportSourceError(
                        f"{source}: no {'' if include_unfinished else 'completed '}runs"
                        f"{'' if study is None else f' of study {study!r}'} in {db}"
                        + (f" ({hint}: pass --all to report them)" if hint else "")
                    )
                arms.extend(arm_from_store(store, r.id) for r in selected)
            continue
        where, _, ident = source.rpartition(":")
        directory = Path(where) if where else runs_dir
        if not ident.isdigit():
            raise ReportSourceError(
                f"{source!r} is neither a results directory (a folder holding {DB_NAME}) nor a "
                "run id (an integer, or DIR:ID); list runs with `fedkit runs list`"
            )
        db = _database(directory)
        if db is None:
            raise ReportSourceError(
                f"run {ident}: no results database {directory / DB_NAME} (pass --runs DIR, or "
                "DIR:ID, naming the output directory of `fedkit run`)"
            )
        with _open(db) as store:
            try:
                arms.append(arm_from_store(store, int(ident)))
            except KeyError as err:
                raise ReportSourceError(str(err.args[0])) from None
    if not arms:
        raise ReportSourceError("no runs selected: give at least one RUN id or results DIR")
    return ArmSelection(arms, notes)


def _title(arms: Sequence[Arm]) -> str:
    studies = {a.study for a in arms}
    if len(studies) == 1 and None not in studies:
        return f"fedkit report — study {studies.pop()}"
    return f"fedkit report — {len(arms)} runs"


def write_report(
    arms: Sequence[Arm],
    out_dir: str | os.PathLike[str],
    *,
    title: str | None = None,
    notes: Sequence[str] = (),
) -> ReportFiles:
    """Write ``report.md``, ``report.html`` and the figures (PNG) into ``out_dir`` (``notes``:
    what the selection left out, :attr:`ArmSelection.notes`, listed under the sources).

    Existing files of an earlier report in ``out_dir`` are replaced; the HTML is written last,
    so its presence means the report is complete.
    """
    if not arms:
        raise ValueError("write_report needs at least one arm")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots: list[Plot] = write_plots(arms, out)
    sections: list[Section] = []
    matrix = attack_matrix(arms)
    if matrix is not None:
        plots += matrix_plots(matrix, out)
        sections += matrix_sections(matrix)
    fairness = fairness_section(arms)
    if fairness is not None:
        plots += fairness_plots(arms, out)
        sections.append(fairness)
    compression = compression_section(arms)
    if compression is not None:
        plots += compression_plots(arms, out)
        sections.append(compression)
    doc = ReportDocument(
        title=title or _title(arms),
        generated=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        arms=tuple(arms),
        plots=tuple(plots),
        sections=tuple(sections),
        notes=tuple(notes),
    )
    md = out / "report.md"
    html = out / "report.html"
    md.write_text(render_markdown(doc), encoding="utf-8")
    tmp = out / ".report.html.tmp"
    tmp.write_text(render_html(doc), encoding="utf-8")
    tmp.replace(html)
    return ReportFiles(markdown=md, html=html, plots=tuple(plots))
