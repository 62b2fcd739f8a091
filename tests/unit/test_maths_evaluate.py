"""Evaluation maths by hand: cross-entropy and accuracy over batches, and the per-client summary."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedkit.evaluate import ClientEval, Distribution, EvalResult, evaluate


def _identity_model() -> nn.Module:
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    return model


X = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0]])  # logits = x


@pytest.mark.parametrize("batch_size", [1, 2, 1000])
def test_evaluate_by_hand(batch_size: int) -> None:
    # CE(z, y) = log(1 + e^(z_other - z_y)):  (2, 0) y=0: log(1 + e^-2) = 0.1269280110
    # (0, 1) y=0: log(1 + e^1) = 1.3132616875;   (1, 3) y=1: log(1 + e^-2) = 0.1269280110
    # mean = 1.5671177095 / 3 = 0.5223725698; argmax 0, 1, 1 → 2 of 3 right
    r = evaluate(_identity_model(), X, torch.tensor([0, 0, 1]), batch_size=batch_size)
    assert r.loss == pytest.approx(0.5223725698, abs=1e-7)
    assert r.accuracy == pytest.approx(2 / 3)
    assert r.num_examples == 3


@pytest.mark.parametrize("batch_size", [1, 2])
def test_evaluate_skips_ignored_targets(batch_size: int) -> None:
    # the middle target is padding (-100): only samples 1 and 3 count, both right, loss 0.12693
    r = evaluate(_identity_model(), X, torch.tensor([0, -100, 1]), batch_size=batch_size)
    assert (r.num_examples, r.accuracy) == (2, 1.0)
    assert r.loss == pytest.approx(0.1269280110, abs=1e-7)
    empty = evaluate(_identity_model(), X, torch.full((3,), -100))
    assert empty.num_examples == 0 and math.isnan(empty.loss) and math.isnan(empty.accuracy)


def _e(cid: int, acc: float, n: int, personal: float | None = None) -> ClientEval:
    own = None if personal is None else EvalResult(loss=0.0, accuracy=personal, num_examples=n)
    return ClientEval(cid, EvalResult(loss=1.0, accuracy=acc, num_examples=n), own)


def test_distribution_by_hand() -> None:
    # accuracies 0.2, 0.4, 0.6, 0.8, 1.0 on 1, 1, 1, 1, 6 examples (+ one client without data)
    # mean 0.6;  weighted (0.2 + 0.4 + 0.6 + 0.8 + 6·1.0) / 10 = 0.8
    # p10 (linear interpolation, position 0.1·(5-1) = 0.4): 0.2 + 0.4·(0.4 - 0.2) = 0.28
    # variance (population): (0.16 + 0.04 + 0 + 0.04 + 0.16) / 5 = 0.08;  minimum 0.2
    # personal mean over the two clients with a personal model: (0.5 + 0.9) / 2 = 0.7
    d = Distribution.of(
        [
            _e(0, 0.6, 1, personal=0.5),
            _e(1, 1.0, 6),
            _e(2, 0.2, 1),
            _e(3, 0.0, 0, personal=0.0),
            _e(4, 0.8, 1, personal=0.9),
            _e(5, 0.4, 1),
        ]
    )
    assert d.clients == 5
    assert d.mean == pytest.approx(0.6, abs=1e-15)  # summed in float64, not float32
    assert d.weighted_mean == pytest.approx(0.8, abs=1e-15)
    assert d.p10 == pytest.approx(0.28, abs=1e-15)
    assert d.variance == pytest.approx(0.08, abs=1e-15)
    assert d.minimum == pytest.approx(0.2)
    assert d.personal_mean == pytest.approx(0.7)
    assert not d.is_empty()


def test_distribution_of_nobody_is_empty() -> None:
    for evals in ([], [_e(0, 0.0, 0)]):
        d = Distribution.of(evals)
        assert d.clients == 0 and d.is_empty()
        assert all(math.isnan(v) for v in (d.mean, d.weighted_mean, d.p10, d.variance, d.minimum))
    d = Distribution.of([_e(0, 0.5, 3)])
    assert (d.clients, d.mean, d.p10, d.variance, d.minimum) == (1, 0.5, 0.5, 0.0, 0.5)
    assert math.isnan(d.personal_mean) and not d.is_empty()
    nan = math.nan  # clients counted but no accuracy (e.g. a summary read back from NULLs)
    assert Distribution(3, nan, nan, nan, nan, nan).is_empty()
