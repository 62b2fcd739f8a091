"""Split learning over parties == the centralised model of the same architecture."""

from __future__ import annotations

import copy

import pytest
import torch

from fedkit.local import LocalTraining, train_local
from fedkit.vertical.split import (
    FeatureParty,
    evaluate_vertical,
    row_bands,
    split_mlp,
    train_vertical,
)


def _images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 6, 4, generator=g)
    y = (x[:, 0, :3].sum((1, 2)) > x[:, 0, 3:].sum((1, 2))).long()  # top half vs bottom half
    return x, y


def test_row_bands_by_hand() -> None:
    # a 1x4x3 image: flattened index r*3 + q; two bands = rows 0-1 (0..5) and rows 2-3 (6..11)
    top, bottom = row_bands((1, 4, 3), 2)
    assert top.tolist() == [0, 1, 2, 3, 4, 5]
    assert bottom.tolist() == [6, 7, 8, 9, 10, 11]
    # three bands of 4 rows: bounds round(4k/3) = 0, 1, 3, 4
    assert [len(b) for b in row_bands((4, 3), 3)] == [3, 6, 3]
    with pytest.raises(ValueError, match="parties must be in"):
        row_bands((1, 4, 3), 5)


@pytest.mark.parametrize("parties", [2, 3])
def test_vertical_equals_centralised(parties: int) -> None:
    x, y = _images(96)
    groups = row_bands(x.shape[1:], parties)
    local = LocalTraining(lr=0.1, epochs=2, batch_size=16, momentum=0.9, weight_decay=1e-3)
    central = split_mlp(groups, 2, embedding=8, bottom_hidden=(16,), top_hidden=(8,), seed=3)
    vertical = copy.deepcopy(central)
    # centralised: fedkit's training helper on the concatenated features
    train_local(central, x, y, local, generator=torch.Generator().manual_seed(11))
    # vertical: party k sees only its columns; the label party holds the top model and y
    flat = x.reshape(len(x), -1)
    party_list = [
        FeatureParty(b, {"train": flat[:, g], "test": flat[:, g]}, local)
        for b, g in zip(vertical.bottoms, groups, strict=True)
    ]
    stats = train_vertical(
        party_list, vertical.top, y, local, generator=torch.Generator().manual_seed(11)
    )
    assert stats.steps == 2 * 6  # 96 / 16 = 6 batches per epoch
    # per step each party sends a 16 x 8 float32 activation and receives its gradient
    assert stats.bytes_per_party == (12 * 2 * 16 * 8 * 4,) * parties
    want, got = central.state_dict(), vertical.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)
    moved = split_mlp(groups, 2, embedding=8, bottom_hidden=(16,), top_hidden=(8,), seed=3)
    assert any(not torch.allclose(moved.state_dict()[k], want[k]) for k in want)  # it trained
    ev = evaluate_vertical(party_list, vertical.top, y)
    central.eval()
    with torch.no_grad():
        acc = float((central(x).argmax(1) == y).float().mean())
    assert ev.accuracy == pytest.approx(acc)


def test_party_refuses_out_of_order_or_malformed_gradients() -> None:
    x, _ = _images(8)
    local = LocalTraining(lr=0.1)
    party = FeatureParty(torch.nn.Linear(24, 4), {"train": x.reshape(8, -1)}, local)
    with pytest.raises(ValueError, match="without its forward"):
        party.backward(0, torch.zeros(2, 4))
    party.forward("train", 5, torch.tensor([0, 1]), True)
    with pytest.raises(ValueError, match="shape"):
        party.backward(5, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="shape"):
        party.backward(5, torch.full((2, 4), float("nan")))
    with pytest.raises(ValueError, match="index into 8"):
        party.forward("train", 6, torch.tensor([8]), True)
    with pytest.raises(ValueError, match="no aligned data"):
        party.forward("test", 6, torch.tensor([0]), False)
