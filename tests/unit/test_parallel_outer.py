"""SlowMo and DiLoCo outer updates, computed by hand on scalars."""

from __future__ import annotations

import pytest
import torch

from fedkit.parallel.outer import DiLoCo, SlowMo


def test_slowmo_two_rounds_by_hand() -> None:
    x = [torch.tensor([1.0])]
    opt = SlowMo(slow_lr=2.0, slow_momentum=0.5)
    opt.step(x, [torch.tensor([0.8])], inner_lr=0.1)
    # u = 0.2 / 0.1 = 2 ; x = 1 − 2 · 0.1 · 2 = 0.6
    assert float(x[0]) == pytest.approx(0.6)
    opt.step(x, [torch.tensor([0.5])], inner_lr=0.1)
    # u = 0.5 · 2 + 0.1 / 0.1 = 2 ; x = 0.6 − 2 · 0.1 · 2 = 0.2
    assert float(x[0]) == pytest.approx(0.2)


def test_slowmo_alpha1_beta0_returns_the_average() -> None:
    x = [torch.tensor([1.0, -3.0])]
    SlowMo(slow_lr=1.0, slow_momentum=0.0).step(x, [torch.tensor([0.25, 2.0])], inner_lr=0.05)
    torch.testing.assert_close(x[0], torch.tensor([0.25, 2.0]))


def test_diloco_nesterov_two_rounds_by_hand() -> None:
    x = [torch.tensor([1.0])]
    opt = DiLoCo(outer_lr=0.7, outer_momentum=0.9)
    opt.step(x, [torch.tensor([0.8])], inner_lr=0.1)
    # Δ = 0.2 ; v = 0.2 ; x = 1 − 0.7 (0.2 + 0.9 · 0.2) = 0.734
    assert float(x[0]) == pytest.approx(0.734)
    opt.step(x, [torch.tensor([0.634])], inner_lr=0.1)
    # Δ = 0.1 ; v = 0.9 · 0.2 + 0.1 = 0.28 ; x = 0.734 − 0.7 (0.1 + 0.9 · 0.28) = 0.4876
    assert float(x[0]) == pytest.approx(0.4876)
