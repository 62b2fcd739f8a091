"""``[run] init_from``: start a run from a saved model instead of a fresh initialisation.

Hard et al. 2018 train the keyboard model on a server's proxy data first and then refine it with
federated training; here the first step is any fedkit run (``centralized`` on the proxy part,
say), exported as a bundle (``fedkit export``), and the second a run with
``init_from = "<bundle dir>"``. The bundle is loaded and verified
(:func:`fedkit.serve.bundle.load_bundle`) and must describe the run's own model: the same
registered name, options, classes and input shape, and, for word-level text, the same vocabulary
(the ids would otherwise mean other words). A mismatch is a :class:`ConfigError` that names it,
raised before anything is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from fedkit.experiment.config import ConfigError
from fedkit.models.spec import ModelSpec
from fedkit.serve.bundle import BundleError, load_bundle

__all__ = ["initial_model"]


def initial_model(spec: ModelSpec, words: Sequence[str] | None, init_from: str | None) -> nn.Module:
    """The run's starting model: ``spec.build()``, with the bundle's weights when given.

    Raises:
        ConfigError: the bundle cannot be loaded or does not match the run's model or vocabulary.
    """
    model = spec.build()
    if init_from is None:
        return model
    try:
        bundle = load_bundle(Path(init_from))
    except BundleError as e:
        raise ConfigError(f"run.init_from: {e}") from None
    ours = (spec.name, spec.num_classes, tuple(spec.input_shape), dict(spec.options))
    b = bundle.spec
    theirs = (b.name, b.num_classes, tuple(b.input_shape), dict(b.options))
    if ours != theirs:
        raise ConfigError(
            f"run.init_from: the bundle's model (name, classes, input shape, options) {theirs} "
            f"is not this run's {ours}"
        )
    if (None if words is None else tuple(words)) != bundle.words:
        raise ConfigError(
            "run.init_from: the bundle's vocabulary differs from this run's dataset (same "
            "dataset options, word_vocab_size included, are needed so that ids mean the same words)"
        )
    model.load_state_dict(bundle.model.state_dict(), strict=True)
    return model
