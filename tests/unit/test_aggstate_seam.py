"""The aggregator-state seam: validation, the run loop threading the state through every step
of a round, checkpoint/resume, stateless defaults, and the wire format to workers."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from fedkit.aggregate import (
    MAX_STATE_ENTRIES,
    AggContext,
    AggStateError,
    Stage,
    WeightedMean,
    check_state,
    init_state,
)
from fedkit.algorithm import RoundInfo
from fedkit.algorithms import FedAvg
from fedkit.checkpoint import FILENAME, CheckpointError
from fedkit.local import LocalTraining
from fedkit.net.errors import NetError
from fedkit.net.payload import info_from_metadata, info_metadata
from fedkit.params import model_params
from fedkit.privacy import ClipNorm
from fedkit.privacy.adaptive_clip import CLIP_NORM, AdaptiveClip, next_clip_norm
from fedkit.privacy.clip import global_norm
from fedkit.privacy.gaussian import GaussianNoise
from fedkit.run import RunConfig, RunResult, run
from fedkit.sim.serial import SerialExecutor
from tests.helpers.toy import toy_model, toy_store

LOCAL = LocalTraining(lr=0.05, epochs=1, batch_size=8)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Spy(Stage):
    """Outermost stage recording what each client's ``prepare`` saw (same process: serial)."""

    seen: list[tuple[int, int, float, float]] = dataclasses.field(
        default_factory=list, compare=False
    )

    def prepare(self, update: Any, weight: float, ctx: AggContext) -> Any:
        self.seen.append((ctx.round, ctx.client_id, global_norm(update), ctx.value(CLIP_NORM)))
        return self.inner.prepare(update, weight, ctx)


def _adaptive(**kw: Any) -> AdaptiveClip:
    settings: dict[str, Any] = {
        "target_quantile": 0.5,
        "learning_rate": 0.3,
        "initial_norm": 0.05,
        **kw,
    }
    return AdaptiveClip(**settings)


def _run(agg: Any, rounds: int, ckpt: Path | None = None, **cfg: Any) -> RunResult[Any]:
    return run(
        FedAvg(local=LOCAL, weighting="uniform", aggregator=agg),
        SerialExecutor(toy_store(8), toy_model()),
        model_params(toy_model()),
        RunConfig(rounds=rounds, clients_per_round=4, seed=3, checkpoint_dir=ckpt, **cfg),
    )


def test_check_state_accepts_pairs_and_refuses_what_a_peer_might_send() -> None:
    assert check_state([["clip_norm", 1]]) == (("clip_norm", 1.0),)
    assert check_state(()) == ()
    bad: list[object] = [
        "clip_norm",
        [["clip_norm"]],
        [["clip_norm", math.nan]],
        [["clip_norm", math.inf]],
        [["clip_norm", True]],
        [["clip_norm", "1.0"]],
        [["", 1.0]],
        [["a" * 65, 1.0]],
        [["a b", 1.0]],
        [["x", 1.0], ["x", 2.0]],
        [[f"k{i}", 0.0] for i in range(MAX_STATE_ENTRIES + 1)],
    ]
    for raw in bad:
        with pytest.raises(AggStateError):
            check_state(raw)


def test_stateless_aggregators_keep_an_empty_state() -> None:
    assert init_state(WeightedMean()) == ()
    assert init_state(ClipNorm(max_norm=1.0)) == ()
    assert init_state(ClipNorm(max_norm=1.0, inner=_adaptive())) == ((CLIP_NORM, 0.05),)
    res = _run(ClipNorm(max_norm=1.0), 2)
    assert res.agg_state == ()


def test_run_loop_hands_each_round_its_state_and_updates_it_by_hand() -> None:
    """Every client of round t clips to the C_t the loop holds; C_{t+1} is the geometric update
    of the round's own norms (m = reporting clients, σ_b = 0), worked from what the clients saw."""
    spy = Spy(inner=_adaptive())
    res = _run(spy, 4)
    by_round: dict[int, list[tuple[float, float]]] = {}
    for r, _, norm, clip in spy.seen:
        by_round.setdefault(r, []).append((norm, clip))
    c = 0.05
    for r in range(4):
        rows = by_round[r]
        assert all(clip == c for _, clip in rows)  # one C_t for the whole round
        unclipped = sum(0.5 if norm <= c else -0.5 for norm, _ in rows)
        c = next_clip_norm(c, unclipped, 0.0, len(rows), 0.5, 0.3)
        assert res.history[r].committed
    assert dict(res.agg_state)[CLIP_NORM] == pytest.approx(c, rel=1e-12)
    assert c != pytest.approx(0.05)  # it moved


def test_resume_continues_the_clip_norm(tmp_path: Path) -> None:
    """2 rounds, stop, resume to 5 (fresh objects): same model bit for bit and the same C_5 as
    5 uninterrupted rounds; the noise follows C_t with seeded DP noise and count noise."""
    noise = GaussianNoise(
        noise_multiplier=1.0, clip_norm=0.05, expected_clients=4, noise_source="seeded"
    )
    agg = _adaptive(count_noise=1.0, expected_clients=4, noise_source="seeded", inner=noise)
    ref = _run(agg, 5)
    _run(agg, 2, ckpt=tmp_path)
    assert (tmp_path / FILENAME).exists()
    got = _run(agg, 5, ckpt=tmp_path)
    assert got.start_round == 2
    assert got.agg_state == ref.agg_state
    assert all(torch.equal(ref.params[k], got.params[k]) for k in ref.params)


def test_a_checkpoint_without_state_is_refused_for_a_stateful_chain(tmp_path: Path) -> None:
    _run(ClipNorm(max_norm=1.0), 1, ckpt=tmp_path)
    with pytest.raises(CheckpointError, match="across rounds"):
        _run(_adaptive(), 2, ckpt=tmp_path)


def test_a_stateless_run_still_resumes_an_old_style_checkpoint(tmp_path: Path) -> None:
    """Checkpoints of stateless chains are what they were (no aggregator entries)."""
    from safetensors import safe_open

    _run(ClipNorm(max_norm=1.0), 1, ckpt=tmp_path)
    with safe_open(str(tmp_path / FILENAME), "pt") as f:
        assert not any(k.startswith("server/agg") for k in f.keys())  # noqa: SIM118
    assert _run(ClipNorm(max_norm=1.0), 2, ckpt=tmp_path).start_round == 1


def test_round_info_carries_the_state_over_the_wire_exactly() -> None:
    state = ((CLIP_NORM, 0.1 + 0.2), ("other", -1e-300))
    info = RoundInfo(round=3, seed=9, num_clients=10, cohort_size=4, agg_state=state)
    back = info_from_metadata(info_metadata(info))
    assert back == info  # floats exactly (JSON repr round-trips float64)
    plain = RoundInfo(round=3, seed=9, num_clients=10, cohort_size=4)
    assert "info:agg_state" not in info_metadata(plain)
    assert info_from_metadata(info_metadata(plain)) == plain


@pytest.mark.parametrize(
    "raw",
    [
        '[["clip_norm", NaN]]',
        '[["clip_norm", Infinity]]',
        '[["clip_norm", 1e999]]',
        "[" * 5000 + "]" * 5000,
        '[["clip_norm", 1.0]' + ', ["k", 1.0]' * 100 + "]",
        "not json",
        '{"clip_norm": 1.0}',
        '[["clip_norm", 1.0], ["clip_norm", 2.0]]',
    ],
)
def test_a_worker_refuses_a_malformed_state(raw: str) -> None:
    meta = info_metadata(RoundInfo(round=0, seed=0, num_clients=2, cohort_size=1))
    meta["info:agg_state"] = raw
    with pytest.raises(NetError, match=r"MALFORMED|aggregator state"):
        info_from_metadata(meta)
