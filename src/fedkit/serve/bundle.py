"""Model bundles: a trained model as a folder that a server can load and verify on its own.

A bundle is a directory of three files:

- ``model.safetensors``: the parameters (``state_dict`` names), nothing pickled;
- ``vocab.json``: ``{"words": [...]}``, the word vocabulary in id order with fedkit's layout
  (:class:`fedkit.data.text.WordVocab`: ``pad = 0``, words ``1..V``, ``oov = V+1``,
  ``bos = V+2``, ``eos = V+3``); absent for a model that does not read words;
- ``manifest.json``: ``format`` (:data:`FORMAT`), ``fedkit_version``, ``task``
  (``"next_word"``: the output classes are the vocabulary's ids; ``"classify"``: ``labels``
  name the classes), ``model`` (registered name, ``num_classes``, ``input_shape``, ``options``),
  ``labels``, ``source`` (where it came from, free-form) and ``files``: each file's size and
  SHA-256.

:func:`load_bundle` trusts nothing in the folder: the manifest is size-capped JSON with
checked types, every listed file's size and SHA-256 are verified before it is parsed, the
weights are read with safetensors and must match the rebuilt model's names and shapes exactly,
and every value must be finite. Anything wrong raises :class:`BundleError` saying what.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from fedkit.models.spec import ModelSpec

__all__ = [
    "FORMAT",
    "Bundle",
    "BundleError",
    "Task",
    "load_bundle",
    "write_bundle",
]

FORMAT = "fedkit-bundle/1"
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
VOCAB = "vocab.json"
MAX_MANIFEST_BYTES = 1 << 20
MAX_FILE_BYTES = 4 << 30

Task = Literal["next_word", "classify"]


class BundleError(ValueError):
    """A bundle that cannot be written or used: missing, damaged, or not fedkit's."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Bundle:
    """A loaded, verified bundle.

    Attributes:
        model: the model in eval mode with the bundle's weights.
        spec: its recipe.
        task: ``"next_word"`` or ``"classify"``.
        words: the vocabulary's words (ids ``1..len(words)``), ``None`` for non-text models.
        labels: class names (the words plus specials for ``next_word``).
        manifest: the manifest as read.
    """

    model: nn.Module
    spec: ModelSpec
    task: Task
    words: tuple[str, ...] | None
    labels: tuple[str, ...]
    manifest: Mapping[str, Any]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fedkit_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedkit")
    except PackageNotFoundError:  # a source tree that is not installed
        from fedkit import __version__

        return __version__


def infer_task(num_classes: int, words: Sequence[str] | None) -> Task:
    """``next_word`` when the classes are the vocabulary's ids (``len(words) + 4``)."""
    return "next_word" if words is not None and num_classes == len(words) + 4 else "classify"


def write_bundle(
    out: Path,
    *,
    params: Mapping[str, Tensor],
    spec: ModelSpec,
    words: Sequence[str] | None,
    labels: Sequence[str] | None = None,
    source: Mapping[str, Any] | None = None,
) -> Path:
    """Write a bundle to the (new or empty) directory ``out``; returns the manifest's path.

    Args:
        out: target directory; created, and refused when it holds files already.
        params: the model's parameters (``state_dict`` names).
        spec: how to rebuild the model.
        words: the word vocabulary for a model that reads words, else ``None``.
        labels: class names for a classifier (default ``"0"..``); ignored for next-word models.
        source: free-form provenance (run id, name, checksum) stored in the manifest.

    Raises:
        BundleError: ``out`` is not empty, or ``params`` do not fit ``spec``'s model.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise BundleError(f"{out} is not empty: choose a new directory for the bundle")
    tensors = {k: v.detach().contiguous().cpu() for k, v in params.items()}
    _load_into(spec.build(), tensors, where="the parameters given")  # they must fit the model
    task = infer_task(spec.num_classes, words)
    names = _labels(task, spec.num_classes, words, labels)
    files = {WEIGHTS: st_save(tensors)}
    if words is not None:
        files[VOCAB] = json.dumps({"words": list(words)}, ensure_ascii=False).encode()
    manifest = {
        "format": FORMAT,
        "fedkit_version": _fedkit_version(),
        "task": task,
        "model": {
            "name": spec.name,
            "num_classes": spec.num_classes,
            "input_shape": list(spec.input_shape),
            "options": dict(spec.options),
        },
        "labels": None if task == "next_word" else list(names),
        "source": dict(source or {}),
        "files": {n: {"bytes": len(b), "sha256": _sha256(b)} for n, b in files.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (out / name).write_bytes(data)
    path = out / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def _labels(
    task: Task, num_classes: int, words: Sequence[str] | None, labels: Sequence[str] | None
) -> tuple[str, ...]:
    if task == "next_word":
        assert words is not None
        return ("<pad>", *words, "<oov>", "<bos>", "<eos>")
    names = tuple(str(i) for i in range(num_classes)) if labels is None else tuple(labels)
    if len(names) != num_classes:
        raise BundleError(f"{len(names)} labels for a model of {num_classes} classes")
    return names


def _load_into(model: nn.Module, tensors: Mapping[str, Tensor], *, where: str) -> nn.Module:
    expected = model.state_dict()
    if set(expected) != set(tensors):
        missing = sorted(set(expected) - set(tensors))[:5]
        extra = sorted(set(tensors) - set(expected))[:5]
        raise BundleError(f"{where} do not match the model: missing {missing}, unexpected {extra}")
    for name, ref in expected.items():
        t = tensors[name]
        if t.shape != ref.shape or t.dtype != ref.dtype:
            raise BundleError(
                f"{where}: {name!r} is {t.dtype}{tuple(t.shape)}, the model needs "
                f"{ref.dtype}{tuple(ref.shape)}"
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise BundleError(f"{where}: {name!r} holds a NaN or an infinite value")
    model.load_state_dict(dict(tensors), strict=True)
    return model.eval()


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"{root} is not a model bundle: no {MANIFEST} (make one: fedkit export)")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path} is over {MAX_MANIFEST_BYTES} bytes: not a fedkit manifest")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path} is not valid UTF-8 JSON ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise BundleError(f"{path}: format {got!r}, expected {FORMAT!r}")
    return manifest


def _read_file(root: Path, name: str, entry: Any) -> bytes:
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        raise BundleError(f"{root / MANIFEST}: the entry of {name!r} has no sha256")
    size = entry.get("bytes")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_FILE_BYTES:
        raise BundleError(f"{root / MANIFEST}: the entry of {name!r} has no valid size")
    path = root / name
    if not path.is_file():
        raise BundleError(f"{path} is missing (listed in the manifest)")
    if path.stat().st_size != size:
        raise BundleError(f"{path} is {path.stat().st_size} bytes, the manifest says {size}")
    data = path.read_bytes()
    if _sha256(data) != entry["sha256"]:
        raise BundleError(
            f"{path} is damaged: its SHA-256 does not match the manifest; export the bundle again"
        )
    return data


def _spec(raw: Any, where: str) -> ModelSpec:
    if not isinstance(raw, dict):
        raise BundleError(f"{where}: 'model' must be a table")
    name, classes, shape, options = (
        raw.get("name"),
        raw.get("num_classes"),
        raw.get("input_shape"),
        raw.get("options", {}),
    )
    if not isinstance(name, str) or not isinstance(classes, int) or isinstance(classes, bool):
        raise BundleError(f"{where}: 'model' needs a string name and an int num_classes")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise BundleError(f"{where}: 'model.input_shape' must be a list of ints")
    if not isinstance(options, dict):
        raise BundleError(f"{where}: 'model.options' must be a table")
    if ":" in name:
        raise BundleError(f"{where}: model {name!r} is an import path; bundles name built-ins")
    return ModelSpec(name=name, num_classes=classes, input_shape=tuple(shape), options=options)


def _words(data: bytes, where: str) -> tuple[str, ...]:
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{where} is not valid UTF-8 JSON ({e})") from e
    words = raw.get("words") if isinstance(raw, dict) else None
    if not isinstance(words, list) or not all(isinstance(w, str) and w for w in words):
        raise BundleError(f"{where}: 'words' must be a list of non-empty strings")
    if len(set(words)) != len(words):
        raise BundleError(f"{where}: a word is listed twice")
    return tuple(words)


def load_bundle(root: Path | str) -> Bundle:
    """Load and verify a bundle written by :func:`write_bundle` (see the module docstring).

    Raises:
        BundleError: what is missing, damaged or inconsistent.
    """
    root = Path(root)
    manifest = _read_manifest(root)
    where = str(root / MANIFEST)
    files = manifest.get("files")
    if not isinstance(files, dict) or WEIGHTS not in files or set(files) - {WEIGHTS, VOCAB}:
        raise BundleError(f"{where}: 'files' must list {WEIGHTS} (and at most {VOCAB})")
    spec = _spec(manifest.get("model"), where)
    words = (
        _words(_read_file(root, VOCAB, files[VOCAB]), str(root / VOCAB)) if VOCAB in files else None
    )
    task = manifest.get("task")
    if task != infer_task(spec.num_classes, words):
        raise BundleError(
            f"{where}: task {task!r} does not fit a model of {spec.num_classes} classes "
            f"and {'no vocabulary' if words is None else f'{len(words)} words'}"
        )
    labels = manifest.get("labels")
    if labels is not None and (
        not isinstance(labels, list) or not all(isinstance(s, str) for s in labels)
    ):
        raise BundleError(f"{where}: 'labels' must be a list of strings")
    try:
        names = _labels(task, spec.num_classes, words, labels)
        model = spec.build()
    except ValueError as e:  # BundleError included; unknown model or option from the registry
        raise BundleError(f"{where}: {e}") from e
    try:
        tensors = st_load(_read_file(root, WEIGHTS, files[WEIGHTS]))
    except BundleError:
        raise
    except Exception as e:  # safetensors raises several types on malformed bytes
        raise BundleError(f"{root / WEIGHTS} is not readable safetensors ({e})") from e
    _load_into(model, tensors, where=str(root / WEIGHTS))
    return Bundle(
        model=model,
        spec=spec,
        task=task,
        words=words,
        labels=names,
        manifest=manifest,
    )
