"""``[run] init_from``: a run starts from an exported bundle; mismatches are config errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fedkit.experiment.config import ConfigError, study_from_mapping
from fedkit.experiment.export import export_run
from fedkit.experiment.init_from import initial_model
from fedkit.experiment.results import ResultsStore, results_path
from fedkit.experiment.runner import run_study
from fedkit.models.spec import ModelSpec
from fedkit.params import model_params, sha256
from tests.helpers.toy import SYNTHETIC_UNIFORM


def _run(out: Path, extra: str = "") -> tuple[int, str]:
    doc = tomllib.loads(SYNTHETIC_UNIFORM + "\n[run]\nrounds = 2\nclients_per_round = 3\n" + extra)
    with ResultsStore(results_path(out)) as store:
        (o,) = run_study(study_from_mapping(doc, default_name="t"), store)
    assert o.summary is not None, o.error
    return o.run_id, o.summary.model_sha256


def test_a_run_starts_from_the_bundle_and_continues_it(tmp_path: Path) -> None:
    first, first_sha = _run(tmp_path / "a")
    bundle = export_run(tmp_path / "a", first, tmp_path / "bundle").parent
    store = ResultsStore(results_path(tmp_path / "a"), create=False)
    spec = ModelSpec(**{**_spec_fields(store, first), "init_seed": 99})
    store.close()
    # a different init seed: the bundle's weights replace the fresh ones exactly
    assert sha256(model_params(initial_model(spec, None, str(bundle)))) == first_sha
    assert sha256(model_params(initial_model(spec, None, None))) != first_sha
    _, fine_tuned = _run(tmp_path / "b", f'init_from = "{bundle}"\n')
    _, fresh = _run(tmp_path / "c")
    assert fresh == first_sha  # the same file without init_from reproduces the first run
    assert fine_tuned not in (first_sha, fresh)  # two more rounds from the first run's model


def _spec_fields(store: ResultsStore, run_id: int) -> dict[str, object]:
    from fedkit.experiment.final_model import load_final_model, model_file

    spec = load_final_model(model_file(store.path.parent, run_id)).spec
    return {
        "name": spec.name,
        "num_classes": spec.num_classes,
        "input_shape": spec.input_shape,
        "options": spec.options,
    }


def test_a_bundle_of_another_model_or_vocabulary_is_a_config_error(tmp_path: Path) -> None:
    first, _ = _run(tmp_path / "a")
    bundle = str(export_run(tmp_path / "a", first, tmp_path / "bundle").parent)
    spec = ModelSpec(name="logreg", num_classes=10, input_shape=(60,))
    with pytest.raises(ConfigError, match=r"run\.init_from: .* is not this run's"):
        initial_model(ModelSpec(name="mlp", num_classes=10, input_shape=(60,)), None, bundle)
    with pytest.raises(ConfigError, match="vocabulary differs"):
        initial_model(spec, ("a", "b"), bundle)
    with pytest.raises(ConfigError, match=r"no manifest\.json"):
        initial_model(spec, None, str(tmp_path))
    doc = tomllib.loads(SYNTHETIC_UNIFORM + '\n[run]\nrounds = 1\ninit_from = ""\n')
    with pytest.raises(ConfigError, match=r"run\.init_from must be a bundle directory"):
        study_from_mapping(doc, default_name="t")
