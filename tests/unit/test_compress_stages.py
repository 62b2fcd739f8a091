"""Each compressor on a hand-worked example (the papers' formulas applied by hand in the
comments), their settings' validation, and the composition clip → compress → mean built from an
experiment file's ``[aggregator]`` table."""

from __future__ import annotations

import pytest
import torch

from fedkit.aggregate import AggContext, WeightedMean, aggregate
from fedkit.algorithms.fedavg import FedAvg
from fedkit.compress import QSGD, ErrorFeedback, RandomK, SignCompressor, TopK, with_error_feedback
from fedkit.compress import UniformQuantizer as Uniform
from fedkit.compress.sparsify import kept
from fedkit.experiment.config import AlgorithmSettings
from fedkit.experiment.runner import build_algorithm
from fedkit.privacy.clip import ClipNorm

CTX = AggContext(round=3, seed=7, client_id=2)


def _round_trip(comp: object, values: list[float]) -> list[float]:
    enc = comp.prepare({"w": torch.tensor(values)}, 1.0, CTX)  # type: ignore[attr-defined]
    return comp.decompress(enc)["w"].tolist()  # type: ignore[attr-defined,no-any-return]


def test_uniform_quantiser_by_hand() -> None:
    # 2 bits on [0, 0.4, 0.6, 3]: lo = 0, step = 3 / (2² − 1) = 1; codes round(v) = 0, 0, 1, 3
    assert _round_trip(Uniform(bits=2), [0.0, 0.4, 0.6, 3.0]) == [0.0, 0.0, 1.0, 3.0]
    # 1 bit on [-1, 0.2, 1]: lo = -1, step = 2; codes round((v + 1) / 2) = 0, 1 (0.6), 1
    assert _round_trip(Uniform(bits=1), [-1.0, 0.2, 1.0]) == [-1.0, 1.0, 1.0]
    # a constant tensor: step 0, every code 0, decodes exactly
    assert _round_trip(Uniform(bits=4), [2.5, 2.5]) == [2.5, 2.5]
    # 8 bits: error at most step / 2 = (max - min) / 255 / 2
    x = torch.linspace(-1.0, 1.0, 1000) ** 3
    err = (torch.tensor(_round_trip(Uniform(bits=8), x.tolist())) - x).abs().max()
    assert 0.0 < float(err) <= 2.0 / 255 / 2 + 1e-6


def test_stochastic_uniform_rounds_to_the_two_neighbouring_levels() -> None:
    # 1 bit on [0, 0.25, 1]: lo = 0, step = 1; 0.25 becomes 0 or 1, nothing else
    seen = set()
    for r in range(40):
        ctx = AggContext(round=r, seed=0, client_id=0)
        enc = Uniform(bits=1, stochastic=True).prepare(
            {"w": torch.tensor([0.0, 0.25, 1.0])}, 1, ctx
        )
        out = Uniform(bits=1).decompress(enc)["w"].tolist()
        assert out[0] == 0.0 and out[2] == 1.0
        seen.add(out[1])
    assert seen == {0.0, 1.0}


def test_qsgd_by_hand() -> None:
    # s = 1 on v = [3, -4]: ‖v‖ = 5, |v| s / ‖v‖ = 0.6, 0.8 -> each coordinate is ±5 or 0
    outs = {tuple(_round_trip_at(QSGD(levels=1), [3.0, -4.0], r)) for r in range(60)}
    assert outs <= {(5.0, -5.0), (5.0, 0.0), (0.0, -5.0), (0.0, 0.0)} and len(outs) > 1
    # s = 2 on v = [0, 1]: ‖v‖ = 1; 1 · 2 / 1 = 2 exactly, level 2 -> 1 · 2 / 2 = 1; 0 stays 0
    assert _round_trip(QSGD(levels=2), [0.0, 1.0]) == [0.0, 1.0]
    assert QSGD(levels=1).bits == 2 and QSGD(levels=4).bits == 4 and QSGD(levels=127).bits == 8
    assert _round_trip(QSGD(levels=3), [0.0, 0.0]) == [0.0, 0.0]


def _round_trip_at(comp: object, values: list[float], round_: int) -> list[float]:
    ctx = AggContext(round=round_, seed=1, client_id=0)
    enc = comp.prepare({"w": torch.tensor(values)}, 1.0, ctx)  # type: ignore[attr-defined]
    return comp.decompress(enc)["w"].tolist()  # type: ignore[attr-defined,no-any-return]


def test_sign_by_hand() -> None:
    # v = [1, -3, 0, 2]: ‖v‖₁ / d = 6 / 4 = 1.5; sgn(0) = +1
    assert _round_trip(SignCompressor(), [1.0, -3.0, 0.0, 2.0]) == [1.5, -1.5, 1.5, 1.5]


def test_topk_by_hand() -> None:
    # fraction 0.5 of d = 4 -> k = 2: the largest |v| are -5 (position 1) and 3 (position 2)
    assert _round_trip(TopK(fraction=0.5), [1.0, -5.0, 3.0, 0.5]) == [0.0, -5.0, 3.0, 0.0]
    assert kept(0.01, 1000) == 10 and kept(0.01, 50) == 1 and kept(0.3, 10) == 3
    assert kept(1.0, 7) == 7 and kept(0.5, 0) == 0 and kept(0.01, 1) == 1


def test_randk_scales_what_it_keeps_by_d_over_k() -> None:
    # fraction 0.5 of d = 4 -> k = 2; kept values scaled by d / k = 2
    v = [1.0, -5.0, 3.0, 0.5]
    out = _round_trip(RandomK(fraction=0.5), v)
    nonzero = [(i, o) for i, o in enumerate(out) if o != 0.0]
    assert len(nonzero) == 2 and all(o == 2 * v[i] for i, o in nonzero)
    # the same client, round and seed draw the same positions; another client others
    assert out == _round_trip(RandomK(fraction=0.5), v)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Uniform(bits=0),
        lambda: Uniform(bits=9),
        lambda: QSGD(levels=0),
        lambda: QSGD(levels=128),
        lambda: TopK(fraction=0.0),
        lambda: RandomK(fraction=1.5),
    ],
)
def test_settings_are_validated(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


def test_the_mean_of_decoded_updates_is_what_the_server_folds() -> None:
    comp = SignCompressor(inner=WeightedMean())
    a = comp.prepare({"w": torch.tensor([1.0, -1.0])}, 1.0, CTX)  # scale 1 -> [1, -1]
    b = comp.prepare({"w": torch.tensor([-4.0, -2.0])}, 3.0, CTX)  # scale 3 -> [-3, -3]
    # (1·[1, -1] + 3·[-3, -3]) / 4 = [-2, -2.5]
    assert comp.result(aggregate(comp, [(a, 1.0), (b, 3.0)]), CTX)["w"].tolist() == [-2.0, -2.5]


def test_clip_then_compress_then_mean_from_an_experiment_table() -> None:
    settings = AlgorithmSettings.from_mapping(
        {"name": "fedavg"},
        aggregator={
            "name": "clip",
            "max_norm": 1.0,
            "inner": {"name": "topk", "fraction": 0.5, "error_feedback": True},
        },
    )
    algorithm = build_algorithm(settings)
    assert isinstance(algorithm, ErrorFeedback) and isinstance(algorithm.inner, FedAvg)
    chain = algorithm.aggregator
    assert isinstance(chain, ClipNorm) and isinstance(chain.inner, TopK)
    assert isinstance(chain.inner.inner, WeightedMean)
    # [3, 0, -4, 0.1] has norm 5.001: clipped to norm 1 ≈ [0.6, 0, -0.8, 0.02]; top-2 keeps
    # 0.6 and -0.8
    enc = chain.prepare({"w": torch.tensor([3.0, 0.0, -4.0, 0.1])}, 1.0, CTX)
    out = chain.result(chain.add(chain.zero(enc), enc, 1.0), CTX)["w"]
    s = 1.0 / float(torch.tensor([3.0, 0.0, -4.0, 0.1]).norm())
    assert out.tolist() == pytest.approx([3.0 * s, 0.0, -4.0 * s, 0.0])


def test_error_feedback_wraps_only_when_asked() -> None:
    plain = FedAvg(aggregator=TopK(fraction=0.1))
    assert with_error_feedback(plain) is plain
    assert with_error_feedback(FedAvg()) == FedAvg()
    ef = with_error_feedback(FedAvg(aggregator=TopK(fraction=0.1, error_feedback=True)))
    assert isinstance(ef, ErrorFeedback) and with_error_feedback(ef) is ef
    assert ef.name == "fedavg"
    with pytest.raises(ValueError, match="compressor"):
        ErrorFeedback(inner=FedAvg(), aggregator=WeightedMean())
