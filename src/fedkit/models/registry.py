"""The model registry: names to builders, and ``build_model`` with validated options.

A builder takes ``num_classes`` and ``input_shape`` plus its own keyword options; the registry
checks the name and the option names up front so a typo in an experiment file fails with the list
of what is allowed instead of a ``TypeError`` deep inside a constructor.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from torch import nn

from fedkit.models.personal import embedding_mlp, mlp_bn
from fedkit.models.resnet_gn import resnet18_bn, resnet18_gn
from fedkit.models.text import char_lstm, nextword_lstm
from fedkit.models.vision import cnn, femnist_cnn, lenet5, logreg, mlp
from fedkit.models.vit import vit_tiny
from fedkit.plugins import call_builder, is_import_path, load_model, option_names

__all__ = ["MODELS", "ModelBuilder", "build_model", "model_builder", "model_names"]

ModelBuilder = Callable[..., nn.Module]

MODELS: MappingProxyType[str, ModelBuilder] = MappingProxyType(
    {
        "logreg": logreg,
        "mlp": mlp,
        "cnn": cnn,
        "femnist_cnn": femnist_cnn,
        "lenet5": lenet5,
        "resnet18_gn": resnet18_gn,
        "resnet18_bn": resnet18_bn,
        "vit_tiny": vit_tiny,
        "char_lstm": char_lstm,
        "nextword_lstm": nextword_lstm,
        "mlp_bn": mlp_bn,
        "embedding_mlp": embedding_mlp,
    }
)


def model_names() -> tuple[str, ...]:
    """The registered model names, sorted."""
    return tuple(sorted(MODELS))


def model_builder(name: str) -> ModelBuilder:
    """The builder of a registered model, or of a plugin named by import path.

    Raises:
        ValueError: ``name`` is neither registered nor an import path (the message lists the
            names); :class:`fedkit.plugins.PluginError` (a ``ValueError``) when the import
            path cannot be loaded or is not an ``nn.Module`` subclass or marked builder.
    """
    if name in MODELS:
        return MODELS[name]
    if is_import_path(name):
        return load_model(name)
    raise ValueError(
        f"unknown model {name!r}; allowed: {', '.join(model_names())} or an import path "
        "'package.module:Name' (docs/plugins.md)"
    )


def _option_names(builder: ModelBuilder) -> list[str]:
    params = inspect.signature(builder).parameters.values()
    return sorted(
        p.name
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("num_classes", "input_shape")
    )


def build_model(
    name: str, *, num_classes: int, input_shape: tuple[int, ...], **options: Any
) -> nn.Module:
    """Build the model registered as ``name``.

    Args:
        name: One of :func:`model_names`, or an import path ``"package.module:Name"`` of an
            ``nn.Module`` subclass or a function marked ``@fedkit.plugins.model``.
        num_classes: Number of output classes (the vocabulary size for next-token models).
        input_shape: Shape of one input sample, e.g. ``(1, 28, 28)``, ``(60,)`` or ``(80,)``.
        **options: The builder's own keyword options (listed in the error when one is unknown).

    Returns:
        A freshly initialised ``nn.Module`` (deterministic given ``torch.manual_seed``).

    Raises:
        ValueError: Unknown name or option, or a bad ``num_classes`` / ``input_shape``.
    """
    builder = model_builder(name)
    plugin = name not in MODELS
    allowed = option_names(builder) if plugin else _option_names(builder)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"model {name!r}: unknown option(s) {unknown}; allowed: {allowed or 'none'}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    shape = tuple(input_shape)
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(f"input_shape must be a non-empty tuple of ints >= 1, got {input_shape!r}")
    if plugin:
        return call_builder(builder, num_classes=num_classes, input_shape=shape, options=options)
    model: nn.Module = builder(num_classes=num_classes, input_shape=shape, **options)
    return model
