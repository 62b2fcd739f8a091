"""Serving test helpers: a bundle with a known answer, and a real ``fedkit serve`` process."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import torch

from fedkit.models.spec import ModelSpec
from fedkit.params import model_params
from fedkit.serve.bundle import write_bundle

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
def serving(
    bundle: Path, *args: str, timeout: float = 60.0
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Run ``fedkit serve BUNDLE --port 0 ARGS`` as a real process; yields its base URL."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedkit",
            "serve",
            str(bundle),
            "--port",
            "0",
            "--threads",
            "1",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("listening on "):
            proc.kill()
            raise RuntimeError(
                f"fedkit serve did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}"
            )
        url = line.split()[-1]
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("fedkit serve did not become healthy")
            time.sleep(0.05)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
