"""The part of a report for a communication-compression study (docs/compression.md): test
accuracy against cumulative *upload* bytes, and a table of what each arm's compression cost in
accuracy and saved in upload bytes against the uncompressed (dense) arm, at the same rounds.

An arm is compressed when its aggregator chain (``aggregator``, ``aggregator.inner``, …) names a
compressor of :mod:`fedkit.compress`; the report adds this part when at least one arm is. The
dense baseline is the first federated arm without a compressor.
"""

from __future__ import annotations

import dataclasses
import math
import re
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

from fedkit.experiment.report_model import Arm, Section, labels, summarize
from fedkit.experiment.report_plots import Plot, _accuracy_figure, format_bytes

__all__ = [
    "COMPRESSORS",
    "LAST",
    "compression_plots",
    "compression_section",
    "compressor_of",
    "last_mean",
]

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


SEED_KEYS = frozenset({"run.seed", "grid_point.run.seed"})
"""Settings that tell seeds of one arm apart (the ``[grid] "run.seed"`` axis)."""

LAST = 5
"""How many final evaluations the ``last-5 mean`` column averages (the noise of one eval)."""

_SEED_IN_NAME = re.compile(r"seed=[^,\]]*,?")


@dataclasses.dataclass(frozen=True)
class _Group:
    """The runs of one arm over seeds: their label, and per seed the run's numbers."""

    label: str
    arms: tuple[Arm, ...]

    def seeds(self) -> tuple[str, ...]:
        return tuple(dict(a.settings).get("run.seed", a.run_id) for a in self.arms)


def _arm_label(name: str) -> str:
    """``"dense[seed=2]"`` -> ``"dense"``; ``"a[epochs=1,seed=0]"`` -> ``"a[epochs=1]"``."""
    if not name.endswith("]") or "[" not in name:
        return name
    head, _, inner = name[:-1].partition("[")
    rest = _SEED_IN_NAME.sub("", inner).rstrip(",")
    return f"{head}[{rest}]" if rest else head


def _groups(arms: Sequence[Arm]) -> list[_Group]:
    """Arms that differ only in their seed, together, in order of first appearance."""
    order: dict[tuple[tuple[str, str], ...], list[Arm]] = {}
    for arm in arms:
        key = tuple((k, v) for k, v in arm.settings if k not in SEED_KEYS)
        # an arm without settings (read from elsewhere) has nothing to group by: alone
        order.setdefault(key if arm.settings else (("run_id", arm.run_id),), []).append(arm)
    names = labels([runs[0] for runs in order.values()])
    return [
        _Group(label=_arm_label(runs[0].name) if len(runs) > 1 else name, arms=tuple(runs))
        for name, runs in zip(names, order.values(), strict=True)
    ]


def last_mean(arm: Arm, last: int = LAST) -> float | None:
    """The mean test accuracy of the arm's last ``last`` evaluations (``None``: none)."""
    scored = [
        p.accuracy for p in arm.points if p.accuracy is not None and math.isfinite(p.accuracy)
    ]
    return statistics.fmean(scored[-last:]) if scored else None


def _spread(values: Sequence[float], scale: float = 100.0, signed: bool = False) -> str:
    """``"61.9 ± 1.2"``: mean and sample standard deviation (× ``scale``); one value alone."""
    mean = scale * statistics.fmean(values)
    text = f"{mean:+.1f}" if signed else f"{mean:.1f}"
    if len(values) > 1:
        text += f" ± {scale * statistics.stdev(values):.1f}"
    return text


def _deltas(
    group: _Group, base: _Group, measure: Callable[[Arm], float | None]
) -> list[float] | None:
    """``measure`` of each run minus the dense run of the same seed (paired); when the seeds do
    not pair up, each run minus the dense runs' mean. ``None`` if a value is missing."""
    own = [measure(a) for a in group.arms]
    ref = [measure(a) for a in base.arms]
    if None in own or None in ref:
        return None
    mine = [float(v or 0.0) for v in own]
    dense = dict(zip(base.seeds(), (float(v or 0.0) for v in ref), strict=True))
    if all(s in dense for s in group.seeds()):
        return [v - dense[s] for v, s in zip(mine, group.seeds(), strict=True)]
    mean = statistics.fmean(dense.values())
    return [v - mean for v in mine]


def compression_section(arms: Sequence[Arm]) -> Section | None:
    """Per arm (its runs over seeds together): final accuracy and the mean of the last
    :data:`LAST` evaluations as mean ± sample std over seeds, their difference from the dense
    arm in points (paired by seed), its upload bytes and how many times fewer than dense;
    ``None`` unless an arm is compressed.

    An arm meets the issue's headline when it sends ≥ 10× fewer upload bytes than dense and
    both mean differences are ≥ −1 point.
    """
    if not _compressed(arms):
        return None
    groups = [g for g in _groups(arms) if g.arms[0].points and summarize(g.arms[0]).bytes_up > 0]
    base = next((g for g in groups if compressor_of(g.arms[0]) is None), None)

    def final(arm: Arm) -> float | None:
        return summarize(arm).final_accuracy

    rows = []
    winners = []
    for g in groups:
        up = statistics.fmean(summarize(a).bytes_up for a in g.arms)
        ratio = statistics.fmean(summarize(a).bytes_up for a in base.arms) / up if base else None
        cells = []
        deltas = []
        for measure in (final, last_mean):
            values = [measure(a) for a in g.arms]
            present = [v for v in values if v is not None]
            cells.append(_spread(present) if len(present) == len(values) and present else "—")
            d = _deltas(g, base, measure) if base is not None else None
            deltas.append(d)
        if (
            ratio is not None
            and ratio >= 10
            and all(d is not None and statistics.fmean(d) >= -0.01 for d in deltas)
        ):
            winners.append(g.label)
        rows.append(
            (
                g.label,
                compressor_of(g.arms[0]) or "none (dense)",
                str(len(g.arms)),
                str(summarize(g.arms[0]).rounds),
                *cells,
                *("—" if d is None else _spread(d, signed=True) for d in deltas),
                format_bytes(round(up)),
                "—" if ratio is None else f"{ratio:.1f}×",
            )
        )
    headline = (
        f"≥ 10× fewer upload bytes within 1 point of dense (mean over seeds, final and last "
        f"{LAST}): {', '.join(winners)}."
        if winners
        else "No arm reached ≥ 10× fewer upload bytes within 1 point of dense."
    )
    return Section(
        title="Compression: accuracy and upload bytes against the dense arm",
        header=(
            "arm",
            "compressor",
            "seeds",
            "rounds",
            "final acc. %",
            f"mean of last {LAST} evals %",
            "Δ final (pts)",
            f"Δ last {LAST} (pts)",
            "upload (per run)",
            "× fewer than dense",
        ),
        rows=tuple(rows),
        note=(
            "Upload bytes are the encoded updates the clients sent (in a deployment, plus the "
            "safetensors header of each upload). Accuracies are mean ± sample standard "
            "deviation over an arm's seeds (runs that differ only in run.seed); Δ compares each "
            "seed with the dense run of the same seed, after the same number of rounds. "
            f"{headline}"
        ),
    )
