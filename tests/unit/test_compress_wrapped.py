"""Error feedback around stateful algorithms, and the compressors' edge cases: with a lossless
compressor (top-k keeping everything) the wrapper is the wrapped algorithm bit for bit — its
client state, its carry, its personal model — and every compressor encodes an empty tensor,
keeps the dtype, and draws reproducibly from the client's stream (added for mutation survivors,
docs/compression.md)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedkit.aggregate import AggContext
from fedkit.algorithms.ditto import Ditto
from fedkit.algorithms.scaffold import Scaffold
from fedkit.compress import QSGD, ErrorFeedback, RandomK, SignCompressor, TopK
from fedkit.compress import UniformQuantizer as Uniform
from fedkit.local import LocalTraining
from fedkit.params import model_params, sha256, tree_flatten
from fedkit.run import RunConfig, run
from fedkit.sim.serial import SerialExecutor
from tests.helpers.toy import toy_model, toy_store

LOCAL = LocalTraining(lr=0.1, epochs=1, batch_size=10)
CTX = AggContext(round=2, seed=3, client_id=4)


def _run(algorithm: object):  # type: ignore[no-untyped-def]
    store = toy_store(5)
    model = toy_model()
    res = run(
        algorithm,  # type: ignore[arg-type]
        SerialExecutor(store, model),
        model_params(model),
        RunConfig(rounds=3, clients_per_round=3, seed=2, eval_every=0),
    )
    return res, store


@pytest.mark.parametrize(
    "inner",
    [
        Scaffold(local=LOCAL, aggregator=TopK(fraction=1.0)),
        Ditto(local=LOCAL, lam=0.5, aggregator=TopK(fraction=1.0)),
    ],
    ids=["scaffold", "ditto"],
)
def test_lossless_feedback_is_the_wrapped_algorithm(inner: object) -> None:
    # top-k with k = d sends every value exactly: C(p) = p, so e stays 0 and p = Δ
    plain, plain_store = _run(inner)
    ef = ErrorFeedback(
        inner=inner,  # type: ignore[arg-type]
        aggregator=dataclasses.replace(inner.aggregator, error_feedback=True),  # type: ignore[attr-defined]
    )
    fed, fed_store = _run(ef)
    assert sha256(fed.params) == sha256(plain.params)
    assert [r.bytes_up for r in fed.history] == [r.bytes_up for r in plain.history]
    for c in range(5):
        want, got = plain_store.get_state(c), fed_store.get_state(c)
        if want is None:
            assert got is None
            continue
        flat = tree_flatten(got.inner)
        assert {k: sha256({"t": v}) for k, v in flat.items()} == {
            k: sha256({"t": v}) for k, v in tree_flatten(want).items()
        }
        assert all(float(t.abs().max()) == 0.0 for t in tree_flatten(got.residual).values())
        mine = ef.personal_params(fed.params, got)
        theirs = inner.personal_params(plain.params, want)  # type: ignore[attr-defined]
        assert (mine is None) == (theirs is None)
        if mine is not None and theirs is not None:
            assert sha256(mine) == sha256(theirs)
    assert ef.personal_params(fed.params, None) == inner.personal_params(fed.params, None)  # type: ignore[attr-defined]
    # the server half is the wrapped one's
    info = fed.history[0]
    assert info is not None
    template = ef.client_state_template(fed.params)
    assert sha256(tree_flatten(template.inner)) == sha256(
        tree_flatten(inner.client_state_template(fed.params))  # type: ignore[attr-defined]
    )


def test_a_plan_not_made_by_the_wrapper_is_refused() -> None:
    from tests.unit.test_compress_feedback import _algorithm, _step

    ef = _algorithm()
    res, _ = _step(ef, [1.0, 2.0, 3.0, 4.0], None, 0)
    assert res.client_state is not None
    with pytest.raises(ValueError, match=r"not made by ErrorFeedback\.client_init"):
        ef.client_final(None, None, dataclasses.replace(_plan(), carry=None), None)  # type: ignore[arg-type]


def _plan():  # type: ignore[no-untyped-def]
    from fedkit.algorithm import LocalPlan

    return LocalPlan(start={"w": torch.zeros(1)}, local=LOCAL)


ALL = [
    Uniform(bits=8),
    Uniform(bits=3, stochastic=True),
    QSGD(levels=3),
    SignCompressor(),
    TopK(fraction=0.5),
    RandomK(fraction=0.5),
]


@pytest.mark.parametrize("comp", ALL, ids=lambda c: type(c).__name__)
def test_an_empty_tensor_encodes_to_nothing(comp: object) -> None:
    enc = comp.prepare({"w": torch.zeros(0)}, 1.0, CTX)  # type: ignore[attr-defined]
    out = comp.decompress(enc)["w"]  # type: ignore[attr-defined]
    assert out.shape == (0,) and out.dtype == torch.float32


@pytest.mark.parametrize("comp", ALL, ids=lambda c: type(c).__name__)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_decoding_keeps_the_dtype_and_the_draws_repeat(comp: object, dtype: torch.dtype) -> None:
    v = {"w": torch.tensor([[0.3, -1.2, 0.05], [2.0, 0.7, -0.4]], dtype=dtype)}
    a = comp.prepare(v, 1.0, CTX)  # type: ignore[attr-defined]
    b = comp.prepare(v, 1.0, CTX)  # type: ignore[attr-defined]
    assert tree_flatten(a).keys() == tree_flatten(b).keys()
    assert all(torch.equal(x, tree_flatten(b)[k]) for k, x in tree_flatten(a).items())
    out = comp.decompress(a)["w"]  # type: ignore[attr-defined]
    assert out.dtype == dtype and out.shape == (2, 3)


def test_qsgd_keeps_the_signs() -> None:
    # s = 2 on [0.6, -0.8]: ‖v‖ = 1, |v|·s = 1.2, 1.6 -> levels 1 or 2, never 0: decoded
    # coordinates are ±0.5 or ±1 with the input's signs
    for r in range(20):
        ctx = AggContext(round=r, seed=0, client_id=0)
        comp = QSGD(levels=2)
        out = comp.decompress(comp.prepare({"w": torch.tensor([0.6, -0.8])}, 1.0, ctx))["w"]
        assert float(out[0]) in (0.5, 1.0) and float(out[1]) in (-0.5, -1.0)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Uniform(bits=9), "bits must be in 1..8"),
        (lambda: QSGD(levels=0), "levels must be in 1..127"),
        (lambda: TopK(fraction=0.0), r"fraction must be in \(0, 1\]"),
        (lambda: ErrorFeedback(inner=Scaffold(), aggregator=Scaffold().aggregator), "compressor"),
    ],
)
def test_settings_errors_say_what_is_allowed(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]
    assert TopK(fraction=1.0).fraction == 1.0  # the upper end is allowed
