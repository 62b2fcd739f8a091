"""``fedkit export RUN --out DIR``: a completed run's final model as a bundle.

The runner keeps each completed run's final model under ``OUT/models/`` with its recipe and
vocabulary (:mod:`fedkit.experiment.final_model`); this module checks the run is completed and
that its checksum matches the one recorded in the run's summary (``model_sha256``), then writes a
bundle (:func:`fedkit.serve.bundle.write_bundle`) whose manifest names the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fedkit.experiment.final_model import FinalModelError, load_final_model, model_file
from fedkit.experiment.results import ResultsStore, results_path
from fedkit.params import sha256
from fedkit.serve.bundle import BundleError, write_bundle

__all__ = ["export_run"]


def export_run(
    runs_dir: Path, run_id: int, out: Path, *, labels: Sequence[str] | None = None
) -> Path:
    """Write run ``run_id`` of ``runs_dir`` as a bundle in ``out``; returns the manifest path.

    Raises:
        BundleError: the run is unknown, not completed, has no kept model, or its model file
            does not match the run's recorded checksum.
    """
    try:
        with ResultsStore(results_path(runs_dir), create=False) as store:
            row = store.run(run_id)
    except (FileNotFoundError, RuntimeError) as e:
        raise BundleError(str(e)) from e
    except KeyError as e:
        raise BundleError(str(e.args[0])) from e
    if row.status != "completed" or row.summary is None:
        raise BundleError(f"run {run_id} is {row.status}: only a completed run can be exported")
    try:
        final = load_final_model(model_file(Path(runs_dir), run_id))
    except FinalModelError as e:
        raise BundleError(str(e)) from e
    if sha256(final.params) != row.summary.model_sha256:
        raise BundleError(
            f"the kept model of run {run_id} is not the one its summary records "
            f"(model_sha256 {row.summary.model_sha256[:16]}…); it cannot be exported"
        )
    source = {
        "run_id": run_id,
        "run_name": row.name,
        "study": row.study,
        "dataset": row.config.get("data", {}).get("dataset"),
        "model_sha256": row.summary.model_sha256,
        "code_version": row.code_version,
    }
    return write_bundle(
        out, params=final.params, spec=final.spec, words=final.words, labels=labels, source=source
    )
