"""Adaptive clipping (aggregator state across rounds) gives the same model and the same clip
norms under the serial, vectorised and two-gloo-rank executors: every rank clips to the C_t the
run loop holds, and the unclipped counts are reduced with the updates."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from fedkit.algorithms import FedAvg
from fedkit.params import model_params
from fedkit.privacy.adaptive_clip import CLIP_NORM, AdaptiveClip
from fedkit.privacy.gaussian import GaussianNoise
from fedkit.run import RunResult, run
from fedkit.sim.processes import ProcessExecutor
from fedkit.sim.serial import SerialExecutor
from fedkit.sim.vectorized import VectorizedExecutor
from tests.equivalence.test_executors import CONFIG, LOCAL, _close, _partial
from tests.helpers.toy import toy_model, toy_store

# DP-FedAvg with adaptive clipping and seeded noise (central); C_0 small so that C moves a lot
ALG: Any = FedAvg(
    local=LOCAL,
    weighting="uniform",
    aggregator=AdaptiveClip(
        target_quantile=0.5,
        learning_rate=0.5,
        initial_norm=0.05,
        count_noise=0.6,
        expected_clients=5,
        noise_source="seeded",
        inner=GaussianNoise(
            noise_multiplier=1.0,
            clip_norm=0.05,
            expected_clients=5,
            noise_source="seeded",
            count_noise=0.6,
        ),
    ),
)


def _serial() -> RunResult[Any]:
    ex = SerialExecutor(toy_store(8), toy_model(), participation=_partial)
    return run(ALG, ex, model_params(toy_model()), CONFIG)


def test_vectorized_equals_serial_with_adaptive_clipping() -> None:
    ref = _serial()
    ex = VectorizedExecutor(toy_store(8), toy_model(), participation=_partial, chunk_size=3)
    got = run(ALG, ex, model_params(toy_model()), CONFIG)
    assert _close(ref.params, got.params)
    assert dict(got.agg_state)[CLIP_NORM] == pytest.approx(
        dict(ref.agg_state)[CLIP_NORM], rel=1e-12
    )
    assert dict(ref.agg_state)[CLIP_NORM] != pytest.approx(0.05, rel=0.05)  # it moved


@pytest.mark.dist
def test_two_gloo_ranks_equal_serial_with_adaptive_clipping() -> None:
    ref = _serial()
    with ProcessExecutor(
        store=toy_store(8),
        model_fn=toy_model,
        store_fn=functools.partial(toy_store, 8),
        world_size=2,
        participation=_partial,
    ) as ex:
        got = run(ALG, ex, model_params(toy_model()), CONFIG)
    assert _close(ref.params, got.params)
    # Σ (b_i − ½) of halves is exact in float64 whatever the rank split: the same C_t
    assert got.agg_state == ref.agg_state
