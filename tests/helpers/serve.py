"""Serving test helpers: a bundle with a known answer, and a real ``fedkit serve`` process."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import torch

from fedkit.models.spec import ModelSpec
from fedkit.params import model_params
from fedkit.serve.bundle import write_bundle
from fedkit.serve.loadtest import serving as loadtest_serving

WORDS = ("the", "cat", "sat", "on", "mat")
"""Ids: pad 0, the 1, cat 2, sat 3, on 4, mat 5, oov 6, bos 7, eos 8."""

LOGITS = (0.0, 0.0, 3.0, 2.0, 0.0, 1.0, 5.0, 0.0, 0.0)
"""The constant model's logits by id: oov (6) is the most likely id but is never suggested."""


def constant_bundle(out: Path, *, window: int = 64, hidden: int = 64, causal: bool = False) -> Path:
    """A next-word bundle whose model ignores its input: zero LSTM weights give h = 0 (gates
    sigmoid(0) = 0.5, candidate tanh(0) = 0, so c = h = 0), so the logits are the output bias,
    :data:`LOGITS`. ``window``/``hidden`` only set the cost of one call."""
    spec = ModelSpec(
        name="nextword_lstm",
        num_classes=len(WORDS) + 4,
        input_shape=(window,),
        options={"embedding_dim": 16, "hidden_size": hidden, "bidirectional": not causal},
    )
    params = {k: torch.zeros_like(v) for k, v in model_params(spec.build()).items()}
    params["out.bias"] = torch.tensor(LOGITS)
    write_bundle(out, params=params, spec=spec, words=WORDS)
    return out


@contextlib.contextmanager
def serving(bundle: Path, *args: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Run ``fedkit serve BUNDLE --port 0 --threads 1 ARGS`` as a real process; yields its base
    URL and the process (:func:`fedkit.serve.loadtest.serving`)."""
    with loadtest_serving(bundle, "--threads", "1", *args) as (url, proc):
        yield url, proc
