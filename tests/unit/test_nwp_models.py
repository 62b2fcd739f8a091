"""Next-word models: the BiLSTM and causal shapes, and tied input/output embeddings."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from fedkit.models import build_model

OPTS = {"vocab_size": 9, "embedding_dim": 4, "hidden_size": 5}


def _count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("bidirectional", [True, False])
def test_shapes_and_parameter_counts(bidirectional: bool) -> None:
    free = build_model(
        "nextword_lstm", num_classes=9, input_shape=(6,), bidirectional=bidirectional, **OPTS
    )
    tied = build_model(
        "nextword_lstm",
        num_classes=9,
        input_shape=(6,),
        bidirectional=bidirectional,
        tied=True,
        **OPTS,
    )
    x = torch.randint(0, 9, (3, 6))
    expected = (3, 9) if bidirectional else (3, 6, 9)
    assert free(x).shape == expected and tied(x).shape == expected
    d = 2 if bidirectional else 1
    # embedding 9·4 = 36; LSTM per direction 4H·E + 4H·H + 2·4H = 80 + 100 + 40 = 220
    lstm = 36 + 220 * d
    assert _count(free) == lstm + 5 * d * 9 + 9  # output layer (5d)·9 + 9
    assert _count(tied) == lstm + (5 * d * 4 + 4) + 9  # projection (5d)·4 + 4, output bias 9


def test_tied_logits_are_scored_against_the_embedding() -> None:
    torch.manual_seed(0)
    m = build_model(
        "nextword_lstm", num_classes=9, input_shape=(6,), bidirectional=False, tied=True, **OPTS
    )
    x = torch.randint(0, 9, (2, 6))
    params = dict(m.named_parameters())
    changed = {**params, "embedding.weight": params["embedding.weight"].clone()}
    changed["embedding.weight"][7] += 1.0  # id 7 is never read when absent from x...
    x = torch.where(x == 7, torch.zeros_like(x), x)
    before = functional_call(m, params, (x,))
    after = functional_call(m, changed, (x,))
    # ...so only id 7's logit moves, by proj(h)·1 (the row's added ones)
    h_proj = after[..., 7] - before[..., 7]
    assert torch.allclose(after[..., :7], before[..., :7]) and torch.allclose(
        after[..., 8], before[..., 8]
    )
    assert not torch.allclose(h_proj, torch.zeros_like(h_proj))
    loss = m(x).logsumexp(-1).sum()
    loss.backward()
    assert m.embedding.weight.grad is not None and bool(m.embedding.weight.grad[7].abs().sum() > 0)


def test_tied_needs_the_vocabulary_as_classes() -> None:
    with pytest.raises(ValueError, match="tied=True needs vocab_size == num_classes"):
        build_model("nextword_lstm", num_classes=2, input_shape=(6,), tied=True, **OPTS)
