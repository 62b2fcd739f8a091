"""Typed payloads (dataclasses of named tensors) to and from wire bytes.

A broadcast message or a client update is a tree (dataclass / mapping / tensor / number). Its
tensor leaves travel as one safetensors payload keyed by their tree path
(:func:`fedkit.params.tree_flatten`); its number leaves travel in the safetensors metadata, floats
as exact hexadecimal. The receiver rebuilds the tree on a *template* it built itself — the same
algorithm and model — so names, dtypes and shapes are checked before anything is used, and a peer
cannot introduce a type, a field or a tensor the receiver did not expect. Nothing is unpickled.

Round information and a client's result metrics ride in the same metadata under reserved keys.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from torch import Tensor

from fedkit.aggregate import (
    MAX_STATE_ENTRIES,
    AggState,
    AggStateError,
    check_state,
    client_value_names,
    with_client_values,
)
from fedkit.algorithm import RoundInfo
from fedkit.net.codec import Buffer, check_template, decode, encode, read_header, template_of
from fedkit.net.errors import ErrorCode, NetError
from fedkit.params import tree_flatten, tree_unflatten

T = TypeVar("T")

_SCALAR = "s:"
_INFO = "info:"
_RESULT = "result:"
_AGG_STATE_CHARS = 8192
"""Longest ``info:agg_state`` entry accepted (JSON of at most 64 short names and floats)."""


def _scalars(tree: Any, prefix: str = "") -> dict[str, str]:
    """Number / bool / str leaves of ``tree`` as tagged strings, keyed by path."""
    out: dict[str, str] = {}
    if isinstance(tree, Tensor) or tree is None:
        return out
    if isinstance(tree, bool):
        out[prefix] = f"b:{int(tree)}"
    elif isinstance(tree, int):
        out[prefix] = f"i:{tree}"
    elif isinstance(tree, float):
        out[prefix] = f"f:{tree.hex()}"
    elif isinstance(tree, str):
        out[prefix] = f"t:{tree}"
    elif isinstance(tree, Mapping):
        for k in sorted(tree):
            out.update(_scalars(tree[k], f"{prefix}/{k}" if prefix else str(k)))
    elif dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        for f in dataclasses.fields(tree):
            out.update(_scalars(getattr(tree, f.name), f"{prefix}/{f.name}" if prefix else f.name))
    return out


def _parse_scalar(path: str, tagged: str, like: Any) -> Any:
    tag, _, raw = tagged.partition(":")
    try:
        if tag == "b" and isinstance(like, bool):
            return raw == "1"
        if tag == "i" and isinstance(like, int) and not isinstance(like, bool):
            return int(raw)
        if tag == "f" and isinstance(like, float):
            return float.fromhex(raw)
        if tag == "t" and isinstance(like, str):
            return raw
    except ValueError:
        pass
    raise NetError(ErrorCode.SCHEMA_MISMATCH, f"field {path!r}: {tagged!r} does not fit {like!r}")


def _with_scalars(tree: T, values: Mapping[str, str], prefix: str = "") -> T:
    """``tree`` with its scalar leaves replaced by ``values`` (paths as in :func:`_scalars`)."""
    if isinstance(tree, Tensor) or tree is None:
        return tree
    if isinstance(tree, bool | int | float | str):
        return _parse_scalar(prefix, values[prefix], tree) if prefix in values else tree
    if isinstance(tree, Mapping):
        return {  # type: ignore[return-value]
            k: _with_scalars(v, values, f"{prefix}/{k}" if prefix else str(k))
            for k, v in tree.items()
        }
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        changes = {
            f.name: _with_scalars(
                getattr(tree, f.name), values, f"{prefix}/{f.name}" if prefix else f.name
            )
            for f in dataclasses.fields(tree)
            if f.init
        }
        return dataclasses.replace(tree, **changes)
    return tree


def encode_tree(tree: Any, extra: Mapping[str, str] | None = None) -> bytes:
    """Serialise a payload tree (and extra metadata) to safetensors bytes."""
    meta = {_SCALAR + k: v for k, v in _scalars(tree).items()}
    if extra:
        meta.update(extra)
    return encode(tree_flatten(tree), meta)


def check_tree_header(data: Buffer, template: Any) -> dict[str, str]:
    """Validate only the header of ``data`` against ``template`` (cheap: no tensor is read, so
    it also works on a partly received payload); returns the header's metadata.
    """
    specs, meta = read_header(data)
    check_template(specs, template_of(tree_flatten(template)))
    expected = set(_scalars(template))
    fields = {k[len(_SCALAR) :] for k in meta if k.startswith(_SCALAR)}
    if not fields <= expected:
        raise NetError(ErrorCode.SCHEMA_MISMATCH, f"unexpected fields {sorted(fields - expected)}")
    return meta


def decode_tree(
    data: Buffer, template: T, *, max_bytes: int | None = None
) -> tuple[T, dict[str, str]]:
    """Rebuild a payload shaped like ``template`` from ``data``; returns it and the metadata.

    Raises:
        NetError: ``SCHEMA_MISMATCH`` when names, dtypes, shapes or field types differ;
            ``MALFORMED`` / ``PAYLOAD_TOO_LARGE`` from the codec.
    """
    expected = tree_flatten(template)
    decoded = decode(data, template=template_of(expected), max_bytes=max_bytes)
    try:
        tree = tree_unflatten(template, decoded.tensors)
    except ValueError as exc:
        raise NetError(ErrorCode.SCHEMA_MISMATCH, str(exc)) from None
    scalars = {k[len(_SCALAR) :]: v for k, v in decoded.metadata.items() if k.startswith(_SCALAR)}
    unknown = sorted(set(scalars) - set(_scalars(template)))
    if unknown:
        raise NetError(ErrorCode.SCHEMA_MISMATCH, f"unexpected fields {unknown}")
    return _with_scalars(tree, scalars), decoded.metadata


def info_metadata(info: RoundInfo) -> dict[str, str]:
    """The round information as metadata entries (the aggregator's state, when it has one,
    as a JSON list of ``[name, value]`` pairs: floats round-trip exactly)."""
    meta = {
        _INFO + "round": str(info.round),
        _INFO + "seed": str(info.seed),
        _INFO + "num_clients": str(info.num_clients),
        _INFO + "cohort_size": str(info.cohort_size),
    }
    if info.agg_state:
        meta[_INFO + "agg_state"] = json.dumps([[n, v] for n, v in info.agg_state])
    return meta


def _agg_state(raw: str | None) -> AggState:
    """The peer's ``info:agg_state``, bounded and validated (finite floats, at most 64)."""
    if raw is None:
        return ()
    if len(raw) > _AGG_STATE_CHARS:
        raise NetError(ErrorCode.MALFORMED, "aggregator state too long")
    try:
        return check_state(json.loads(raw))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and AggStateError included
        msg = str(exc) if isinstance(exc, AggStateError) else "aggregator state is not JSON"
        raise NetError(ErrorCode.MALFORMED, msg) from None


def info_from_metadata(meta: Mapping[str, str]) -> RoundInfo:
    """Parse what :func:`info_metadata` wrote; ``MALFORMED`` if absent or not integers."""
    try:
        return RoundInfo(
            round=int(meta[_INFO + "round"]),
            seed=int(meta[_INFO + "seed"]),
            num_clients=int(meta[_INFO + "num_clients"]),
            cohort_size=int(meta[_INFO + "cohort_size"]),
            agg_state=_agg_state(meta.get(_INFO + "agg_state")),
        )
    except (KeyError, ValueError) as exc:
        raise NetError(
            ErrorCode.MALFORMED, f"round information missing or invalid: {exc}"
        ) from None


def task_aggregator(agg: T, client_id: int, values: Sequence[tuple[str, float]]) -> T:
    """The worker's aggregator chain ``agg`` resolved for ``client_id`` with the per-client
    values its task carried (``TaskInfo.client_values``; see "Values per client" in
    :mod:`fedkit.aggregate`); ``agg`` itself when the chain takes none and none came.

    Raises:
        NetError: ``MALFORMED`` when there are more than 64 values, one is not finite, a name
            is invalid, repeated, missing or not one the chain takes, or a stage refuses a
            value (e.g. an inclusion probability outside ``(0, 1]``, a total weight ``<= 0``).
    """
    if len(values) > MAX_STATE_ENTRIES:
        raise NetError(ErrorCode.MALFORMED, f"{len(values)} per-client values; at most 64")
    if not values and not client_value_names(agg):
        return agg
    try:
        return with_client_values(agg, client_id, check_state(list(values)))
    except ValueError as exc:  # AggStateError, InclusionError and the stages' own
        raise NetError(ErrorCode.MALFORMED, f"per-client values: {exc}") from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResultMeta:
    """What accompanies a client update: its aggregation weight and the client's metrics."""

    weight: float
    num_examples: int
    steps: int
    train_loss: float
    work_fraction: float
    compute_s: float

    def to_metadata(self) -> dict[str, str]:
        """Metadata entries (floats as exact hex)."""
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[_RESULT + f.name] = v.hex() if isinstance(v, float) else str(v)
        return out

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> ResultMeta:
        """Parse and validate; ``MALFORMED`` on missing or invalid entries."""
        try:
            r = cls(
                weight=float.fromhex(meta[_RESULT + "weight"]),
                num_examples=int(meta[_RESULT + "num_examples"]),
                steps=int(meta[_RESULT + "steps"]),
                train_loss=float.fromhex(meta[_RESULT + "train_loss"]),
                work_fraction=float.fromhex(meta[_RESULT + "work_fraction"]),
                compute_s=float.fromhex(meta[_RESULT + "compute_s"]),
            )
        except (KeyError, ValueError) as exc:
            raise NetError(
                ErrorCode.MALFORMED, f"result metadata missing or invalid: {exc}"
            ) from None
        if not (math.isfinite(r.weight) and r.weight >= 0) or r.num_examples < 0 or r.steps < 0:
            raise NetError(
                ErrorCode.MALFORMED,
                f"result weight {r.weight} / num_examples {r.num_examples} / steps {r.steps} "
                "must be finite and >= 0",
            )
        return r


_EVAL = "eval:"


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalMeta:
    """A worker's evaluation of the global parameters on its local test data, and of its
    personal model (personalised algorithms only; the two ``personal_*`` entries are absent
    otherwise)."""

    loss: float
    accuracy: float
    num_examples: int
    personal_loss: float | None = None
    personal_accuracy: float | None = None

    def to_metadata(self) -> dict[str, str]:
        """Metadata entries (floats as exact hex)."""
        out = {
            _EVAL + "loss": self.loss.hex(),
            _EVAL + "accuracy": self.accuracy.hex(),
            _EVAL + "num_examples": str(self.num_examples),
        }
        if self.personal_loss is not None and self.personal_accuracy is not None:
            out[_EVAL + "personal_loss"] = self.personal_loss.hex()
            out[_EVAL + "personal_accuracy"] = self.personal_accuracy.hex()
        return out

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> EvalMeta:
        """Parse and validate; ``MALFORMED`` on missing or invalid entries."""
        personal = (_EVAL + "personal_loss", _EVAL + "personal_accuracy")
        try:
            has_personal = [k in meta for k in personal]
            if any(has_personal) and not all(has_personal):
                raise ValueError("personal_loss and personal_accuracy come together")
            r = cls(
                loss=float.fromhex(meta[_EVAL + "loss"]),
                accuracy=float.fromhex(meta[_EVAL + "accuracy"]),
                num_examples=int(meta[_EVAL + "num_examples"]),
                personal_loss=float.fromhex(meta[personal[0]]) if all(has_personal) else None,
                personal_accuracy=float.fromhex(meta[personal[1]]) if all(has_personal) else None,
            )
        except (KeyError, ValueError) as exc:
            raise NetError(ErrorCode.MALFORMED, f"evaluation metadata invalid: {exc}") from None
        if r.num_examples < 0:
            raise NetError(ErrorCode.MALFORMED, f"evaluation num_examples {r.num_examples} < 0")
        if r.num_examples == 0:  # no local test data: the scores are not used (NaN by convention)
            return r
        losses = [r.loss] + ([] if r.personal_loss is None else [r.personal_loss])
        accuracies = [r.accuracy] + ([] if r.personal_accuracy is None else [r.personal_accuracy])
        if not all(math.isfinite(x) for x in losses) or not all(
            0.0 <= a <= 1.0 for a in accuracies
        ):
            raise NetError(
                ErrorCode.MALFORMED,
                f"evaluation of {r.num_examples} examples: loss {losses} must be finite and "
                f"accuracy {accuracies} in [0, 1]",
            )
        return r
