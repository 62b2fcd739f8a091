"""``fedkit vertical FILE``: vertical (feature-partitioned) experiments from a TOML file.

Sections::

    [data]
    dataset = "mnist"          # an image dataset (fedkit.data.datasets.DATASETS)
    [data.options]             # optional: load_dataset's own options

    [vertical]                 # fedkit.vertical.run.VerticalSpec: parties, embedding,
    parties = 2                #   bottom_hidden, top_hidden, overlap, max_train, max_test,
                               #   mode, seed
    mode = "grpc"              # simulation | grpc | centralized | label_only
    [vertical.local]           # fedkit.local.LocalTraining: lr, epochs, batch_size, momentum, ...
    lr = 0.05

    [[arms]]                   # optional: name + dotted keys over the base
    name = "centralized"
    vertical.mode = "centralized"

Each run is recorded in ``OUT/results.sqlite`` (one row: the test accuracy after training; its
``details`` hold the common sample counts and the bytes exchanged).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedkit.experiment.arms import expand_arms, read_toml
from fedkit.experiment.config import parse_overrides
from fedkit.experiment.records import finite
from fedkit.experiment.results import ResultsStore, RoundRow, RunSummary
from fedkit.experiment.tables import ConfigError, construct, did_you_mean
from fedkit.params import model_params, sha256
from fedkit.vertical.run import VerticalSpec, run_vertical

__all__ = ["VerticalExperiment", "load_vertical", "record_vertical"]

SECTIONS = ("data", "vertical")


@dataclasses.dataclass(frozen=True)
class VerticalExperiment:
    """One vertical run, validated (name, study, dataset, its options, the spec, the source)."""

    name: str
    study: str
    dataset: str
    options: Mapping[str, Any]
    spec: VerticalSpec
    source: Mapping[str, Any]


def _one(doc: Mapping[str, Any], name: str, study: str) -> VerticalExperiment:
    from fedkit.data.datasets import DATASETS

    data = doc.get("data")
    if not isinstance(data, Mapping) or not isinstance(doc.get("vertical"), Mapping):
        raise ConfigError("a vertical experiment needs [data] and [vertical] tables")
    unknown = sorted(set(data) - {"dataset", "options"})
    if unknown:
        raise ConfigError(
            f"unknown key data.{unknown[0]}{did_you_mean(unknown[0], ['dataset', 'options'])}; "
            "allowed: dataset, options"
        )
    dataset = data.get("dataset")
    if dataset not in DATASETS:
        raise ConfigError(f"data.dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")
    options = data.get("options", {})
    if not isinstance(options, Mapping):
        raise ConfigError("[data.options] must be a table")
    spec = construct(VerticalSpec, doc["vertical"], "vertical")
    return VerticalExperiment(name, study, str(dataset), dict(options), spec, doc)


def experiments_from_mapping(
    doc: Mapping[str, Any], *, default_name: str, overrides: Mapping[str, Any] | None = None
) -> list[VerticalExperiment]:
    """Every run a file describes, validated."""
    runs = expand_arms(doc, SECTIONS, default_name=default_name, overrides=overrides)
    return [_one(d, name, study) for name, study, d in runs]


def load_vertical(path: str | Path, overrides: Sequence[str] = ()) -> list[VerticalExperiment]:
    """Read and validate a vertical experiment file (``--set`` items applied last)."""
    return experiments_from_mapping(
        read_toml(path), default_name=Path(path).stem, overrides=parse_overrides(list(overrides))
    )


def record_vertical(
    exp: VerticalExperiment, store: ResultsStore, *, data_root: Path | None = None
) -> tuple[int, RunSummary]:
    """Load the data, run ``exp`` and record it; the run id and its summary."""
    from fedkit.data.datasets import load_dataset

    try:
        ds = load_dataset(exp.dataset, root=data_root, **dict(exp.options))
    except ValueError as e:
        raise ConfigError(f"data: {e}") from e
    run_id = store.start_run(name=exp.name, study=exp.study, config=dict(exp.source))
    try:
        res = run_vertical(
            exp.spec, ds.train.x, ds.train.y, ds.test.x, ds.test.y, num_classes=ds.num_classes
        )
    except Exception as e:
        store.fail_run(run_id, f"{type(e).__name__}: {e}")
        raise
    acc, loss = finite(res.test.accuracy), finite(res.test.loss)
    store.add_round(
        run_id,
        RoundRow(
            round=0,
            train_loss=finite(res.train_loss),
            test_loss=loss,
            test_accuracy=acc,
            fed_mean=None,
            fed_p10=None,
            fed_var=None,
            fed_min=None,
            fed_clients=None,
            cohort_size=exp.spec.parties,
            dropped=0,
            bytes_up=res.bytes_exchanged,
            bytes_down=0,
            wall_seconds=res.seconds,
            sim_seconds=None,
            committed=True,
            details={
                "common_train": res.common_train,
                "common_test": res.common_test,
                "wire_bytes": res.wire_bytes,
            },
        ),
    )
    summary = RunSummary(
        rounds=1,
        final_accuracy=acc,
        best_accuracy=acc,
        rounds_to_target=None,
        target_accuracy=None,
        wall_seconds=res.seconds,
        bytes_up=res.bytes_exchanged,
        bytes_down=0,
        model_sha256=sha256(model_params(res.model)),
        final_loss=loss,
        metrics={
            "common_train": float(res.common_train),
            "wire_bytes": float(res.wire_bytes),
        },
    )
    store.finish_run(run_id, summary)
    return run_id, summary
