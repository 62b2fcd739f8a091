"""The one local-training helper against values worked by hand: the loss it minimises, its step
count, its mean-loss bookkeeping, the extra loss term and its refusals."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedkit.local import IGNORE_INDEX, LocalTraining, classification_loss, train_local


def test_classification_loss_is_mean_cross_entropy_over_counted_targets() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]])
    targets = torch.tensor([0, 1, IGNORE_INDEX])
    # −log softmax by hand over the two counted rows
    want = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-1.0))) / 2
    assert float(classification_loss(logits, targets)) == pytest.approx(want, rel=1e-6)


def test_sequence_outputs_are_flattened_over_positions_and_padding_ignored() -> None:
    # (N=2, T=2, V=3): three counted positions, one padding position
    logits = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], [[0.0, 0.0, 3.0], [9.0, 9.0, 9.0]]])
    targets = torch.tensor([[0, 1], [2, IGNORE_INDEX]])

    def nll(row: list[float], k: int) -> float:
        return -row[k] + math.log(sum(math.exp(v) for v in row))

    want = (nll([1, 0, 0], 0) + nll([0, 2, 0], 1) + nll([0, 0, 3], 2)) / 3
    assert float(classification_loss(logits, targets)) == pytest.approx(want, rel=1e-6)


def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, generator=g), torch.randint(0, 2, (n,), generator=g)


def test_batch_size_one_takes_one_step_per_example_and_reports_its_own_loss() -> None:
    x, y = _data(5)
    cfg = LocalTraining(lr=0.1, epochs=1, batch_size=1)
    assert cfg.planned_steps(5) == 5
    m = _linear()
    one = LocalTraining(lr=0.1, steps=1, batch_size=1)
    g = torch.Generator().manual_seed(3)
    first = int(torch.randperm(5, generator=torch.Generator().manual_seed(3))[0])
    with torch.no_grad():
        want = float(classification_loss(m(x[first : first + 1]), y[first : first + 1]))
    stats = train_local(m, x, y, one, generator=g)
    assert (stats.steps, stats.examples) == (1, 1)
    assert stats.mean_loss == pytest.approx(want, rel=1e-6)


def test_mean_loss_is_the_example_weighted_mean_of_the_batch_losses() -> None:
    x, y = _data(5)
    m = _linear()
    # one full batch of 5: the mean loss is the loss at the starting point
    with torch.no_grad():
        want = float(classification_loss(m(x), y))
    stats = train_local(
        m, x, y, LocalTraining(lr=0.5, steps=1, batch_size=0), generator=torch.Generator()
    )
    assert (stats.steps, stats.examples) == (1, 5)
    assert stats.mean_loss == pytest.approx(want, rel=1e-6)


def test_an_extra_loss_term_is_trained_on_exactly_as_its_gradient() -> None:
    # c·‖w‖² has gradient 2c·w, which is SGD's weight decay λ = 2c (torch.optim.SGD's rule)
    x, y = _data(8)
    c = 0.25
    a, b = _linear(), _linear()
    train_local(
        a, x, y, LocalTraining(lr=0.1, steps=3, batch_size=4),
        generator=torch.Generator().manual_seed(2),
        loss_hook=lambda m: c * sum(p.pow(2).sum() for p in m.parameters()),
    )  # fmt: skip
    train_local(
        b, x, y, LocalTraining(lr=0.1, steps=3, batch_size=4, weight_decay=2 * c),
        generator=torch.Generator().manual_seed(2),
    )  # fmt: skip
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6)
    plain = _linear()
    train_local(
        plain, x, y, LocalTraining(lr=0.1, steps=3, batch_size=4),
        generator=torch.Generator().manual_seed(2),
    )  # fmt: skip
    assert (plain.weight - a.weight).abs().max() > 1e-4


def test_no_data_trains_nothing() -> None:
    m = _linear()
    before = m.weight.detach().clone()
    stats = train_local(
        m, torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64), LocalTraining(),
        generator=torch.Generator(),
    )  # fmt: skip
    assert (stats.steps, stats.examples) == (0, 0) and math.isnan(stats.mean_loss)
    assert torch.equal(m.weight, before)
    # one example is data: it trains
    x, y = _data(1)
    assert train_local(m, x, y, LocalTraining(), generator=torch.Generator()).steps == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0}, "lr must be a finite number > 0"),
        ({"steps": 0}, r"local_steps must be in \[1, 1000000\] or unset, got 0"),
        ({"steps": 10**12}, r"local_steps must be in \[1, 1000000\] or unset"),
        ({"epochs": 10**6 + 1}, r"local_epochs must be in \[1, 1000000\]"),
        ({"batch_size": 2**24 + 1}, r"batch_size must be in \[1, 16777216\], or 0"),
        ({"weight_decay": -0.1}, "weight_decay must be >= 0, got -0.1"),
    ],
)
def test_settings_are_refused_with_the_key_named(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LocalTraining(**kwargs)  # type: ignore[arg-type]


def test_work_fraction_outside_zero_one_is_refused() -> None:
    x, y = _data(4)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="work_fraction must be in"):
            train_local(_linear(), x, y, LocalTraining(), generator=torch.Generator(),
                        work_fraction=bad)  # fmt: skip
