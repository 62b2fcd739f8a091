"""Render a comparison report as Markdown (PNG files beside it) and as self-contained HTML.

Both documents carry the same content: the summary table (one row per arm: final and best test
accuracy, rounds to the target accuracy, wall time, bytes, per-client accuracy), the figures, the
settings the arms share and the settings on which they differ. The HTML embeds its figures as
base64 ``data:`` URIs so it can be mailed or archived as one file; the Markdown links the PNGs by
relative path.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

from fedkit.experiment.report_model import (
    Arm,
    ArmSummary,
    Section,
    differing_settings,
    labels,
    summarize,
)
from fedkit.experiment.report_plots import Plot, format_bytes

__all__ = ["NOT_APPLICABLE", "ReportDocument", "render_html", "render_markdown", "summary_rows"]

NOT_APPLICABLE = "n/a"
"""The cell of a setting an arm does not have (``algorithm.mu`` of FedProx for a FedAvg arm)."""
_NA_NOTE = (
    f"{NOT_APPLICABLE}: the arm has no such setting (it belongs to another arm's algorithm or "
    "section), so it does not apply to that arm."
)

_COLUMNS = (
    "arm",
    "run",
    "algorithm",
    "status",
    "rounds",
    "final acc.",
    "best acc. (round)",
    "target",
    "rounds to target",
    "time / bytes to target",
    "wall time (rounds)",
    "bytes up + down",
    "client acc. mean / p10 (n)",
    "personal acc. mean / p10",
    "last metrics",
)


@dataclass(frozen=True, kw_only=True)
class ReportDocument:
    """What both renderers need.

    Attributes:
        title: the report title.
        generated: timestamp text shown under the title.
        arms: the runs compared, in table order.
        plots: the figures, in report order.
        sections: tables of a kind of study (e.g. the robustness verdicts), after the figures.
        notes: what the run selection left out (earlier runs of an arm, unfinished runs),
            listed under the sources.
    """

    title: str
    generated: str
    arms: tuple[Arm, ...]
    plots: tuple[Plot, ...]
    sections: tuple[Section, ...] = ()
    notes: tuple[str, ...] = ()


def _pct(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{100 * value:.2f}%"


def _row(arm: Arm, label: str, s: ArmSummary) -> list[str]:
    best = "–" if s.best_accuracy is None else f"{_pct(s.best_accuracy)} ({s.best_round})"
    if arm.target_accuracy is None:
        target, to_target, cost = "–", "–", "–"
    else:
        target = _pct(arm.target_accuracy)
        to_target = "not reached" if s.rounds_to_target is None else str(s.rounds_to_target)
        cost = "–"
        if s.seconds_to_target is not None and s.bytes_to_target is not None:
            cost = f"{s.seconds_to_target:.1f} s / {format_bytes(s.bytes_to_target)}"
    clients = (
        "–"
        if s.client_count == 0
        else f"{_pct(s.client_mean)} / {_pct(s.client_p10)} ({s.client_count})"
    )
    return [
        label,
        arm.run_id,
        arm.algorithm,
        arm.status,
        str(s.rounds),
        _pct(s.final_accuracy),
        best,
        target,
        to_target,
        cost,
        f"{s.wall_seconds:.1f} s",
        format_bytes(s.bytes_up + s.bytes_down),
        clients,
        "–" if s.personal_mean is None else f"{_pct(s.personal_mean)} / {_pct(s.personal_p10)}",
        "; ".join(f"{k} {v:.4g}" for k, v in arm.metrics) or "–",
    ]


def summary_rows(arms: Sequence[Arm]) -> list[list[str]]:
    """The summary table's cells, one row per arm, in the order of the table's columns."""
    return [_row(a, lab, summarize(a)) for a, lab in zip(arms, labels(arms), strict=True)]


def _where(arm: Arm) -> str:
    return arm.source + ("" if arm.study is None else f" (study {arm.study})")


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines.extend("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows)
    return lines


def _settings_tables(arms: Sequence[Arm]) -> tuple[list[list[str]], list[str], list[list[str]]]:
    common, differing = differing_settings(arms)
    common_rows = [[k, v] for k, v in common]
    header = ["setting", *labels(arms)]
    maps = [dict(a.settings) for a in arms]
    diff_rows = [[k, *(m.get(k, NOT_APPLICABLE) for m in maps)] for k in differing]
    return common_rows, header, diff_rows


def render_markdown(doc: ReportDocument) -> str:
    """The report as Markdown; figures are linked by file name (they sit next to the file)."""
    out = [f"# {doc.title}", "", f"_Generated {doc.generated} by `fedkit report`._", ""]
    out += ["## Summary", ""]
    out += _md_table(_COLUMNS, summary_rows(doc.arms))
    out += [
        "",
        "Accuracy is centralised test accuracy; *rounds to target* is the first round at which it "
        "reached the run's `target_accuracy`; for a centralised arm a round is one epoch over the "
        "pooled data; wall time sums the rounds (training and evaluation, not data loading); "
        "client accuracy is the mean and 10th percentile over clients at the last federated "
        "evaluation.",
        "",
        "## Figures",
        "",
    ]
    for plot in doc.plots:
        out += [f"### {plot.title}", "", f"![{plot.title}]({plot.path.name})", ""]
    for sec in doc.sections:
        out += [f"## {sec.title}", ""]
        out += _md_table(sec.header, sec.rows)
        out += ["", sec.note, ""] if sec.note else [""]
    common, header, diff = _settings_tables(doc.arms)
    if diff:
        out += ["## Settings that differ between arms", ""]
        out += _md_table(header, diff)
        out.append("")
        if any(NOT_APPLICABLE in row[1:] for row in diff):
            out += [_NA_NOTE, ""]
    if common:
        out += ["## Settings shared by all arms", ""]
        out += _md_table(["setting", "value"], common)
        out.append("")
    out += ["## Sources", ""]
    out += [f"- `{a.run_id}` ({a.name}): {_where(a)}" for a in doc.arms]
    out += [f"- {note}" for note in doc.notes]
    out.append("")
    return "\n".join(out)


_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
th { background: #f3f3f3; }
figure { margin: 1.5em 0; }
figcaption { font-weight: 600; margin-bottom: 0.4em; }
img { max-width: 100%; border: 1px solid #eee; }
.note { color: #555; font-size: 0.9em; }
"""


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    esc = html.escape
    out = ["<table>", "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows]
    out.append("</table>")
    return out


def render_html(doc: ReportDocument) -> str:
    """The report as one self-contained HTML page (figures embedded as base64 PNG)."""
    esc = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{esc(doc.title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{esc(doc.title)}</h1>",
        f'<p class="note">Generated {esc(doc.generated)} by <code>fedkit report</code>.</p>',
        "<h2>Summary</h2>",
    ]
    out += _html_table(_COLUMNS, summary_rows(doc.arms))
    out += [
        '<p class="note">Accuracy is centralised test accuracy; <em>rounds to target</em> is the '
        "first round at which it reached the run's <code>target_accuracy</code>; for a centralised "
        "arm a round is one epoch over the pooled data; wall time sums the rounds (training and "
        "evaluation, not data loading); client accuracy is the mean and 10th percentile over "
        "clients at the last federated evaluation.</p>",
        "<h2>Figures</h2>",
    ]
    for plot in doc.plots:
        data = base64.b64encode(plot.path.read_bytes()).decode("ascii")
        out += [
            f'<figure id="{esc(plot.key)}">',
            f"<figcaption>{esc(plot.title)}</figcaption>",
            f'<img alt="{esc(plot.title)}" src="data:image/png;base64,{data}">',
            "</figure>",
        ]
    for sec in doc.sections:
        out.append(f"<h2>{esc(sec.title)}</h2>")
        out += _html_table(sec.header, sec.rows)
        if sec.note:
            out.append(f'<p class="note">{esc(sec.note)}</p>')
    common, header, diff = _settings_tables(doc.arms)
    if diff:
        out.append("<h2>Settings that differ between arms</h2>")
        out += _html_table(header, diff)
        if any(NOT_APPLICABLE in row[1:] for row in diff):
            out.append(f'<p class="note">{html.escape(_NA_NOTE)}</p>')
    if common:
        out.append("<h2>Settings shared by all arms</h2>")
        out += _html_table(["setting", "value"], common)
    out.append("<h2>Sources</h2>")
    out.append("<ul>")
    out += [
        f"<li><code>{esc(a.run_id)}</code> ({esc(a.name)}): {esc(_where(a))}</li>" for a in doc.arms
    ]
    out += [f"<li>{esc(note)}</li>" for note in doc.notes]
    out += ["</ul>", "</body>", "</html>", ""]
    return "\n".join(out)
