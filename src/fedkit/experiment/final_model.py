"""A completed run's final model, kept beside its results: ``OUT/models/run-<id>.safetensors``.

The runner writes the final global parameters of every completed federated or centralised run
(:func:`save_final_model`), with what is needed to rebuild and serve the model without the
experiment file: the :class:`~fedkit.models.spec.ModelSpec` (name, classes, input shape,
options) and, for word-level text, the vocabulary's words. ``fedkit export RUN`` reads it
(:func:`load_final_model`) and writes a model bundle (:mod:`fedkit.serve.bundle`).

The file is safetensors with string metadata, sealed with :func:`fedkit.checkpoint.sealed` (a
SHA-256 over every tensor and every metadata entry) and written atomically; loading verifies the
checksum, so a damaged file raises :class:`FinalModelError` instead of serving altered weights.
Nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import save as st_save
from torch import Tensor

from fedkit.checkpoint import CheckpointError, load_sealed, sealed, write_atomic
from fedkit.checkpoint import _metadata as safetensors_metadata
from fedkit.models.spec import ModelSpec

__all__ = [
    "FORMAT",
    "FinalModel",
    "FinalModelError",
    "load_final_model",
    "model_file",
    "save_final_model",
]

FORMAT = "fedkit-final-model/1"


class FinalModelError(ValueError):
    """A run's final model file that is missing, damaged or not fedkit's."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class FinalModel:
    """A run's final parameters and how to rebuild the model.

    Attributes:
        params: the final global parameters (``state_dict`` names).
        spec: the model's recipe (``init_seed`` is irrelevant once ``params`` are loaded).
        words: the word vocabulary (ids ``1..len(words)``) for word-level text, else ``None``.
    """

    params: dict[str, Tensor]
    spec: ModelSpec
    words: tuple[str, ...] | None


def model_file(out: Path, run_id: int) -> Path:
    """Where run ``run_id`` of the output directory ``out`` keeps its final model."""
    return Path(out) / "models" / f"run-{int(run_id)}.safetensors"


def save_final_model(
    path: Path, params: Mapping[str, Tensor], spec: ModelSpec, words: Sequence[str] | None
) -> None:
    """Write ``params`` with the model's recipe and vocabulary, sealed, atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in params.items()}
    meta = {
        "format": FORMAT,
        "model": json.dumps(
            {
                "name": spec.name,
                "num_classes": spec.num_classes,
                "input_shape": list(spec.input_shape),
                "options": dict(spec.options),
            },
            sort_keys=True,
        ),
        "words": json.dumps(None if words is None else list(words)),
    }
    write_atomic(path, st_save(tensors, metadata=sealed(tensors, meta)))


def _spec(raw: Any, where: str) -> ModelSpec:
    if not isinstance(raw, dict) or set(raw) != {"name", "num_classes", "input_shape", "options"}:
        raise FinalModelError(f"{where}: the model entry is not a fedkit model recipe")
    name, classes, shape, options = (
        raw["name"],
        raw["num_classes"],
        raw["input_shape"],
        raw["options"],
    )
    if (
        not isinstance(name, str)
        or not isinstance(classes, int)
        or not isinstance(shape, list)
        or not all(isinstance(d, int) for d in shape)
        or not isinstance(options, dict)
    ):
        raise FinalModelError(f"{where}: the model entry has fields of the wrong type")
    return ModelSpec(name=name, num_classes=classes, input_shape=tuple(shape), options=options)


def load_final_model(path: Path) -> FinalModel:
    """Read and verify a final model file written by :func:`save_final_model`.

    Raises:
        FinalModelError: the file is missing, unreadable, damaged (checksum) or malformed.
    """
    where = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError as e:
        raise FinalModelError(
            f"{where} does not exist: only completed federated or centralised runs keep their "
            "final model (runs recorded before fedkit kept models have none)"
        ) from e
    try:
        tensors = load_sealed(raw, where=where)
    except CheckpointError as e:
        raise FinalModelError(str(e)) from e
    meta = safetensors_metadata(raw)  # parsed once already by load_sealed
    if meta.get("format") != FORMAT:
        raise FinalModelError(
            f"{where} is not a fedkit final model (format {meta.get('format')!r})"
        )
    try:
        spec = _spec(json.loads(meta["model"]), where)
        words = json.loads(meta["words"])
    except (KeyError, json.JSONDecodeError) as e:
        raise FinalModelError(f"{where}: malformed metadata ({e})") from e
    if words is not None and (
        not isinstance(words, list) or not all(isinstance(w, str) for w in words)
    ):
        raise FinalModelError(f"{where}: the vocabulary is not a list of words")
    return FinalModel(params=tensors, spec=spec, words=None if words is None else tuple(words))
