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


def test_a_next_word_run_records_word_metrics_equal_to_its_final_models(tmp_path: Path) -> None:
    from fedkit.data.datasets import load_dataset
    from fedkit.experiment.final_model import load_final_model, model_file
    from fedkit.nwp_eval import nwp_scores
    from tests.helpers.nwp import generated_sent140

    generated_sent140(tmp_path / "data")
    doc = tomllib.loads(
        """
[data]
dataset = "sent140_nwp"
partition = "natural"
[data.options]
source = "full"
seq_len = 4
word_vocab_size = 30
cache = false
[model]
name = "nextword_lstm"
embedding_dim = 4
hidden_size = 5
[algorithm]
name = "fedavg"
[algorithm.local]
epochs = 1
batch_size = 4
lr = 0.5
[run]
rounds = 2
clients_per_round = 2
eval_every = 1
"""
    )
    with ResultsStore(results_path(tmp_path / "runs")) as store:
        (o,) = run_study(
            study_from_mapping(doc, default_name="t"), store, data_root=tmp_path / "data"
        )
        assert o.summary is not None, o.error
        rows = store.rounds(o.run_id)
    words = [sorted(k for k in r.details or {} if not k.startswith("fairness.")) for r in rows]
    assert words == [["nwp_perplexity", "nwp_top1", "nwp_top3"]] * 2  # beside per-client fairness
    final = load_final_model(model_file(tmp_path / "runs", o.run_id))
    ds = load_dataset(
        "sent140_nwp",
        root=tmp_path / "data",
        source="full",
        seq_len=4,
        word_vocab_size=30,
        cache=False,
    )
    model = final.spec.build()
    model.load_state_dict(final.params)
    v = len(final.words or ())
    s = nwp_scores(model, ds.test.x, ds.test.y, pad=0, oov=v + 1, eos=v + 3)
    last = rows[-1].details or {}
    assert (last["nwp_top1"], last["nwp_top3"]) == (s.top1, s.top3)
    assert last["nwp_perplexity"] == pytest.approx(s.perplexity, rel=1e-9)
