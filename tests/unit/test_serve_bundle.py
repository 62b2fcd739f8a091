"""Model bundles: write/load round trip, every kind of damage refused, and export from a run."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit.experiment.config import study_from_mapping
from fedkit.experiment.export import export_run
from fedkit.experiment.final_model import model_file
from fedkit.experiment.results import ResultsStore, results_path
from fedkit.experiment.runner import run_study
from fedkit.models.spec import ModelSpec
from fedkit.params import model_params, sha256
from fedkit.serve.bundle import BundleError, load_bundle, write_bundle
from tests.helpers.toy import SYNTHETIC_UNIFORM

WORDS = ("the", "cat", "sat", "on", "mat")
SPEC = ModelSpec(
    name="nextword_lstm",
    num_classes=len(WORDS) + 4,
    input_shape=(6,),
    options={"embedding_dim": 4, "hidden_size": 5, "bidirectional": False},
    init_seed=3,
)


def _bundle(tmp_path: Path) -> Path:
    write_bundle(tmp_path / "b", params=model_params(SPEC.build()), spec=SPEC, words=WORDS)
    return tmp_path / "b"


def test_round_trip_keeps_weights_vocabulary_and_task(tmp_path: Path) -> None:
    path = _bundle(tmp_path)
    b = load_bundle(path)
    assert sha256(model_params(b.model)) == sha256(model_params(SPEC.build()))
    assert b.words == WORDS and b.task == "next_word"
    # 5 words + pad, oov, bos, eos: ids 0..8, the WordVocab layout
    assert b.labels == ("<pad>", "the", "cat", "sat", "on", "mat", "<oov>", "<bos>", "<eos>")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["model"]["name"] == "nextword_lstm"
    assert set(manifest["files"]) == {"model.safetensors", "vocab.json"}
    assert not b.model.training


def test_classifier_bundle_keeps_labels(tmp_path: Path) -> None:
    spec = ModelSpec(
        name="nextword_lstm",
        num_classes=2,
        input_shape=(6,),
        options={"vocab_size": 9, "embedding_dim": 4, "hidden_size": 5},
    )
    write_bundle(
        tmp_path / "c",
        params=model_params(spec.build()),
        spec=spec,
        words=WORDS,
        labels=["negative", "positive"],
    )
    b = load_bundle(tmp_path / "c")
    assert b.task == "classify" and b.labels == ("negative", "positive")


def test_refuses_a_non_empty_directory_and_params_of_another_model(tmp_path: Path) -> None:
    path = _bundle(tmp_path)
    with pytest.raises(BundleError, match="not empty"):
        write_bundle(path, params=model_params(SPEC.build()), spec=SPEC, words=WORDS)
    params = model_params(SPEC.build())
    params["out.weight"] = torch.zeros(3, 5)
    with pytest.raises(BundleError, match=r"out\.weight"):
        write_bundle(tmp_path / "x", params=params, spec=SPEC, words=WORDS)


@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=0), st.integers(min_value=1, max_value=255))
def test_any_flipped_byte_of_the_weights_is_refused(
    tmp_path_factory: pytest.TempPathFactory, pos: int, bit: int
) -> None:
    path = _bundle(tmp_path_factory.mktemp("flip"))
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[pos % len(data)] ^= bit
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="SHA-256"):
        load_bundle(path)


def _edit_manifest(path: Path, **changes: object) -> None:
    m = json.loads((path / "manifest.json").read_text())
    m.update(changes)
    (path / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"format": "other/1"}, "format"),
        ({"task": "classify"}, "task"),
        (
            {
                "model": {
                    "name": "nextword_lstm",
                    "num_classes": 9,
                    "input_shape": [6],
                    "options": {"hidden_size": 7, "bidirectional": False, "embedding_dim": 4},
                }
            },
            "weight",
        ),
        ({"model": {"name": "os:system", "num_classes": 9, "input_shape": [6]}}, "import path"),
        ({"model": {"name": "no_such", "num_classes": 9, "input_shape": [6]}}, "unknown model"),
        ({"files": {"model.safetensors": {}, "../etc/passwd": {}}}, "files"),
    ],
)
def test_a_bad_manifest_gets_a_typed_error(
    tmp_path: Path, change: dict[str, object], match: str
) -> None:
    path = _bundle(tmp_path)
    _edit_manifest(path, **change)
    with pytest.raises(BundleError, match=match):
        load_bundle(path)


def test_a_wrong_size_in_the_manifest_is_refused_before_reading(tmp_path: Path) -> None:
    path = _bundle(tmp_path)
    m = json.loads((path / "manifest.json").read_text())
    m["files"]["model.safetensors"]["bytes"] += 1
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="the manifest says"):
        load_bundle(path)


def test_missing_manifest_vocab_edit_and_non_json(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        load_bundle(tmp_path)
    path = _bundle(tmp_path)
    (path / "vocab.json").write_text(json.dumps({"words": ["a", "b", "c", "d", "e"]}))
    with pytest.raises(BundleError, match=r"vocab\.json"):  # size or checksum differs
        load_bundle(path)
    (path / "manifest.json").write_bytes(b"\xff\xfe not json")
    with pytest.raises(BundleError, match="UTF-8 JSON"):
        load_bundle(path)


def test_export_writes_the_runs_final_model_and_refuses_a_tampered_one(tmp_path: Path) -> None:
    doc = tomllib.loads(SYNTHETIC_UNIFORM + "\n[run]\nrounds = 2\nclients_per_round = 3\n")
    runs = tmp_path / "runs"
    with ResultsStore(results_path(runs)) as store:
        (outcome,) = run_study(study_from_mapping(doc, default_name="exp"), store)
    assert outcome.summary is not None
    manifest = export_run(runs, outcome.run_id, tmp_path / "bundle")
    b = load_bundle(manifest.parent)
    assert sha256(model_params(b.model)) == outcome.summary.model_sha256
    assert b.task == "classify" and b.words is None  # Synthetic: 10 classes, no vocabulary
    src = json.loads(manifest.read_text())["source"]
    assert src["run_id"] == outcome.run_id and src["dataset"] == "synthetic"
    with pytest.raises(BundleError, match="run 99"):
        export_run(runs, 99, tmp_path / "b2")
    kept = model_file(runs, outcome.run_id)
    data = bytearray(kept.read_bytes())
    data[-1] ^= 1
    kept.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="damaged"):
        export_run(runs, outcome.run_id, tmp_path / "b3")


def test_export_command_exits_2_with_the_reason(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from fedkit.serve.cli import export

    app = typer.Typer()
    app.command()(export)
    result = CliRunner().invoke(app, ["7", "--out", str(tmp_path / "b"), "--runs", str(tmp_path)])
    assert result.exit_code == 2
    assert "error:" in result.output and "results" in result.output
