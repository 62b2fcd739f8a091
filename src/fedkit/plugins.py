"""Plugins: one's own model and dataset, named by import path in an experiment file.

An experiment file may name code outside fedkit by its import path ``"package.module:Name"``::

    [model]
    name = "mypkg.nets:Net"     # an nn.Module subclass, or a function marked @fedkit.plugins.model
    width = 64                  # its keyword options

    [data]
    dataset = "mypkg.data:load" # a function marked @fedkit.plugins.dataset
    partition = "iid"
    num_clients = 100

A file is data, so it may only *call* what was meant to be called from a file: an ``nn.Module``
subclass (constructing a layer runs no command), or a function carrying the marker set by
:func:`model` or :func:`dataset`. Naming ``subprocess:Popen`` is refused before anything runs.

A plugin module is imported like any module (an installed package, or ``PYTHONPATH``); when it
is not found there, the current directory is tried, as ``python -m`` would. Every process of a
run (the ``processes`` executor's ranks, deployment workers) imports the same path, and one that
cannot gets a :class:`PluginError` saying which module it lacks and how to provide it.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from torch import nn

from fedkit.registry import UnknownNameError, is_import_path, load_path

__all__ = [
    "PluginError",
    "call_builder",
    "dataset",
    "is_import_path",
    "load_dataset_plugin",
    "load_model",
    "model",
    "option_names",
]

Kind = Literal["model", "dataset"]
F = TypeVar("F", bound=Callable[..., Any])
_MARK = "__fedkit_plugin__"


class PluginError(UnknownNameError):
    """A plugin named by import path cannot be imported, or is not something a file may call."""


def model(fn: F) -> F:
    """Mark a function that builds an ``nn.Module`` as nameable from an experiment file.

    The function is called with its keyword options from ``[model]`` and, when its signature has
    them, ``num_classes`` and ``input_shape`` from the dataset.
    """
    setattr(fn, _MARK, "model")
    return fn


def dataset(fn: F) -> F:
    """Mark a dataset loader as nameable from an experiment file (``[data] dataset``).

    The function is called with the keys of ``[data.options]`` and returns a
    :class:`fedkit.data.datasets.Dataset` (partitioned by ``[data] partition``), a
    :class:`fedkit.data.spec.FederatedData` (its own clients) or a
    :class:`fedkit.data.lazy.LazyClients` (each client's data supplied on demand).
    """
    setattr(fn, _MARK, "dataset")
    return fn


def _import(path: str) -> Any:
    """``load_path``, retrying from the current directory when the module is not installed."""
    try:
        return load_path(path)
    except UnknownNameError as first:
        cwd = os.getcwd()
        if not isinstance(first.__cause__, ModuleNotFoundError) or cwd in sys.path:
            raise PluginError(_advice(path, first)) from None
        sys.path.append(cwd)
        importlib.invalidate_caches()
        try:
            return load_path(path)
        except UnknownNameError as e:
            sys.path.remove(cwd)
            raise PluginError(_advice(path, e)) from None


def _advice(path: str, e: Exception) -> str:
    return (
        f"cannot load plugin {path!r} on this process (pid {os.getpid()}, cwd {os.getcwd()}): "
        f"{e}. Install the package that holds it here, add its folder to PYTHONPATH, or start "
        "from the folder that holds it; every rank and worker imports the same path"
    )


def load_model(path: str) -> Callable[..., nn.Module]:
    """The model builder named by ``path``: an ``nn.Module`` subclass or a marked function.

    Raises:
        PluginError: It cannot be imported, or it is neither of those.
    """
    obj = _import(path)
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        return obj
    if getattr(obj, _MARK, None) == "model":
        return obj  # type: ignore[no-any-return]
    raise PluginError(
        f"model {path!r} is neither an nn.Module subclass nor a function marked "
        "@fedkit.plugins.model; an experiment file may call only those"
    )


def load_dataset_plugin(path: str) -> Callable[..., Any]:
    """The dataset loader named by ``path`` (a function marked with :func:`dataset`).

    Raises:
        PluginError: It cannot be imported, or it is not marked.
    """
    obj = _import(path)
    if getattr(obj, _MARK, None) != "dataset":
        raise PluginError(
            f"dataset {path!r} is not a function marked @fedkit.plugins.dataset; an experiment "
            "file may call only marked loaders"
        )
    return obj  # type: ignore[no-any-return]


def option_names(builder: Callable[..., Any]) -> list[str]:
    """Names a builder accepts as options (``num_classes`` and ``input_shape`` excluded)."""
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sorted(
        p.name
        for p in inspect.signature(builder).parameters.values()
        if p.kind in kinds and p.name not in ("self", "num_classes", "input_shape")
    )


def call_builder(
    builder: Callable[..., nn.Module],
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    options: dict[str, Any],
) -> nn.Module:
    """Call a model builder, passing ``num_classes``/``input_shape`` only where it takes them."""
    params = inspect.signature(builder).parameters
    given = dict(options)
    if "num_classes" in params:
        given["num_classes"] = num_classes
    if "input_shape" in params:
        given["input_shape"] = input_shape
    out = builder(**given)
    if not isinstance(out, nn.Module):
        raise PluginError(f"model builder {builder!r} returned {type(out).__name__}, not nn.Module")
    return out
