"""Parameters as plain dictionaries of tensors, and the small ops algorithms need on them.

``Params`` is ``dict[str, Tensor]`` keyed by ``state_dict`` names. Payloads between the server and
client halves of an algorithm are frozen dataclasses whose fields are ``Params``, tensors or
numbers; the *tree* helpers here map, flatten and rebuild such payloads generically, so that the
aggregator, the wire codec and checkpoints never need to know a payload's type.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

Params = dict[str, Tensor]
T = TypeVar("T")


def zeros_like(p: Mapping[str, Tensor], dtype: torch.dtype | None = None) -> Params:
    """A zero tensor of the same shape (and dtype unless given) for every entry."""
    return {k: torch.zeros_like(v, dtype=dtype) for k, v in p.items()}


def clone(p: Mapping[str, Tensor]) -> Params:
    """A detached deep copy."""
    return {k: v.detach().clone() for k, v in p.items()}


def _check_keys(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> None:
    if a.keys() != b.keys():
        missing = sorted(set(a) ^ set(b))
        raise KeyError(f"parameter sets differ in keys: {missing[:5]}")


def add(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Params:
    """``a + b`` entry by entry."""
    _check_keys(a, b)
    return {k: a[k] + b[k] for k in a}


def sub(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Params:
    """``a - b`` entry by entry."""
    _check_keys(a, b)
    return {k: a[k] - b[k] for k in a}


def scale(a: Mapping[str, Tensor], s: float) -> Params:
    """``s * a`` entry by entry."""
    return {k: v * s for k, v in a.items()}


def axpy(y: Mapping[str, Tensor], x: Mapping[str, Tensor], alpha: float) -> Params:
    """``y + alpha * x`` entry by entry."""
    _check_keys(y, x)
    return {k: y[k] + alpha * x[k] for k in y}


def dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """Inner product over all entries, accumulated in float64."""
    _check_keys(a, b)
    return float(sum(float((a[k].double() * b[k].double()).sum()) for k in a))


def norm(a: Mapping[str, Tensor]) -> float:
    """Global L2 norm over all entries, accumulated in float64."""
    total: float = sum(float((v.double() ** 2).sum()) for v in a.values())
    return math.sqrt(total)


def num_elements(a: Mapping[str, Tensor]) -> int:
    """Total number of scalars."""
    return sum(v.numel() for v in a.values())


def nbytes(a: Mapping[str, Tensor]) -> int:
    """Total raw tensor bytes (what a dense transfer costs, before framing)."""
    return sum(v.numel() * v.element_size() for v in a.values())


def sha256(a: Mapping[str, Tensor]) -> str:
    """SHA-256 over entries sorted by key (name, dtype, shape, bytes): a parity fingerprint."""
    h = hashlib.sha256()
    for k in sorted(a):
        v = a[k].detach().contiguous().cpu()
        h.update(k.encode())
        h.update(str(v.dtype).encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def model_params(model: nn.Module) -> Params:
    """The model's floating-point state (parameters and float buffers), detached copies.

    Integer buffers such as BatchNorm's ``num_batches_tracked`` are not federated.
    """
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def load_params(model: nn.Module, params: Mapping[str, Tensor]) -> None:
    """Copy ``params`` into the model's state in place (no reallocation, no autograd)."""
    state = model.state_dict()
    with torch.no_grad():
        for k, v in params.items():
            if k not in state:
                raise KeyError(f"model has no parameter or buffer named {k!r}")
            state[k].copy_(v)


# ---------------------------------------------------------------------------------------------
# Trees: a payload is a Tensor, a Mapping[str, Tensor], a number, None, or a dataclass of those.


def tree_map(fn: Callable[..., Any], tree: T, *rest: Any) -> T:
    """Apply ``fn`` to every tensor leaf of ``tree`` (and the matching leaves of ``rest``).

    Numbers and ``None`` are carried over from ``tree`` unchanged.
    """
    if isinstance(tree, Tensor):
        return fn(tree, *rest)  # type: ignore[no-any-return]
    if isinstance(tree, Mapping):
        for r in rest:
            _check_keys(tree, r)
        return {k: tree_map(fn, tree[k], *(r[k] for r in rest)) for k in tree}  # type: ignore[return-value]
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        changes = {
            f.name: tree_map(fn, getattr(tree, f.name), *(getattr(r, f.name) for r in rest))
            for f in dataclasses.fields(tree)
        }
        return dataclasses.replace(tree, **changes)
    return tree


def tree_leaves(tree: Any, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    """Yield ``(path, tensor)`` for every tensor leaf, paths joined with ``/``, in a fixed order."""
    if isinstance(tree, Tensor):
        yield prefix, tree
    elif isinstance(tree, Mapping):
        for k in sorted(tree):
            yield from tree_leaves(tree[k], f"{prefix}/{k}" if prefix else str(k))
    elif dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        for f in dataclasses.fields(tree):
            yield from tree_leaves(
                getattr(tree, f.name), f"{prefix}/{f.name}" if prefix else f.name
            )


def tree_flatten(tree: Any) -> dict[str, Tensor]:
    """The tensor leaves of ``tree`` as a flat ``{path: tensor}`` dictionary."""
    return dict(tree_leaves(tree))


def tree_unflatten(template: T, flat: Mapping[str, Tensor], *, same_shapes: bool = True) -> T:
    """Rebuild a tree shaped like ``template`` from ``flat`` (as made by :func:`tree_flatten`).

    Every leaf must be present with the template's dtype and shape (only the number of
    dimensions with ``same_shapes=False``, for buffers whose length varies); extra keys are
    rejected. This is what makes received or stored bytes safe to use: nothing outside the
    expected shape gets in.
    """
    expected = tree_flatten(template)
    extra = sorted(set(flat) - set(expected))
    if extra:
        raise ValueError(f"unexpected tensors {extra[:5]}; expected only {sorted(expected)[:5]}…")
    for path, like in expected.items():
        if path not in flat:
            raise ValueError(f"missing tensor {path!r}")
        got = flat[path]
        shape_ok = got.shape == like.shape if same_shapes else got.dim() == like.dim()
        if got.dtype != like.dtype or not shape_ok:
            raise ValueError(
                f"tensor {path!r} has dtype {got.dtype} and shape {tuple(got.shape)}; "
                f"expected {like.dtype} and {tuple(like.shape)}"
            )
    return _rebuild(template, flat, "")


def _rebuild(tree: T, flat: Mapping[str, Tensor], prefix: str) -> T:
    """Replace each tensor leaf of ``tree`` by ``flat[path]`` (paths as in :func:`tree_leaves`)."""
    if isinstance(tree, Tensor):
        return flat[prefix]  # type: ignore[return-value]
    if isinstance(tree, Mapping):
        return {  # type: ignore[return-value]
            k: _rebuild(v, flat, f"{prefix}/{k}" if prefix else str(k)) for k, v in tree.items()
        }
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        changes = {
            f.name: _rebuild(
                getattr(tree, f.name), flat, f"{prefix}/{f.name}" if prefix else f.name
            )
            for f in dataclasses.fields(tree)
        }
        return dataclasses.replace(tree, **changes)
    return tree


def tree_nbytes(tree: Any) -> int:
    """Raw tensor bytes of every leaf."""
    return sum(t.numel() * t.element_size() for _, t in tree_leaves(tree))
