"""Recurrent models for next-token prediction.

- ``char_lstm``: the Shakespeare next-character model of McMahan et al. 2017 / Reddi et al. 2021:
  embedding 8 → LSTM 256 → LSTM 256 → linear over the vocabulary at every position; input ``(N, T)``
  token ids, output ``(N, T, V)`` logits. PyTorch LSTMs carry two bias vectors per layer
  (``b_ih`` and ``b_hh``), so the count is 2·4·256 per layer above a Keras model's; for a
  vocabulary of V it is ``8V + 272,384 + 526,336 + 257V``.
- ``nextword_lstm``: a small bidirectional-LSTM next-word model: embedding 96 → BiLSTM 128 (per
  direction) → linear over the vocabulary. A BiLSTM's backward half at position t has read token
  t+1, so per-position outputs would see their own targets; the BiLSTM therefore reads the whole
  window and predicts the word that follows it, output ``(N, V)`` (train it on the window's last
  target, ``y[:, -1]``). ``bidirectional=False`` gives a causal LSTM with per-position outputs
  ``(N, T, V)`` (the StackOverflow setting of Reddi et al. 2021, at a smaller width).
  ``tied=True`` ties the output layer to the input embedding (Press & Wolf 2017, Inan et al.
  2017; used for on-device keyboard models by Hard et al. 2018): the top hidden state is
  projected to the embedding width and scored against the embedding matrix,
  ``logits = (W_p h + b_p) E^T + b``, which removes ``V·(width - 1)`` output weights.

Recurrences run as explicit per-step matrix products by default (:class:`UnrolledLSTM`), because
``torch.func.vmap`` has no batching rule for the fused ``aten::lstm`` kernel; ``fused=True`` uses
the fused kernel (faster, e.g. cuDNN, but not vmappable). Parameters are those of ``nn.LSTM`` in
both cases, so state dicts are interchangeable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CharLSTM", "NextWordLSTM", "UnrolledLSTM", "char_lstm", "nextword_lstm"]


class UnrolledLSTM(nn.Module):
    """A batch-first ``nn.LSTM`` whose forward can run step by step (vmap-friendly).

    Args:
        input_size: Features per step.
        hidden_size: Hidden units per direction.
        num_layers: Stacked layers.
        bidirectional: Run a reverse direction too and concatenate (output ``2 * hidden_size``).
        fused: Use ``nn.LSTM``'s fused kernel instead of the explicit recurrence.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        bidirectional: bool = False,
        fused: bool = False,
    ) -> None:
        super().__init__()
        self.lstm = nn.LSTM(
            input_size, hidden_size, num_layers, batch_first=True, bidirectional=bidirectional
        )
        self.fused = fused

    def forward(self, x: Tensor) -> Tensor:
        """Hidden states of the top layer, ``(N, T, D * hidden_size)`` for inputs ``(N, T, F)``."""
        if self.fused:
            out: Tensor = self.lstm(x)[0]
            return out
        lstm = self.lstm
        suffixes = ["", "_reverse"] if lstm.bidirectional else [""]
        out = x
        for layer in range(lstm.num_layers):
            directions = []
            for suffix in suffixes:
                w_ih: Tensor = getattr(lstm, f"weight_ih_l{layer}{suffix}")
                w_hh: Tensor = getattr(lstm, f"weight_hh_l{layer}{suffix}")
                b_ih: Tensor = getattr(lstm, f"bias_ih_l{layer}{suffix}")
                b_hh: Tensor = getattr(lstm, f"bias_hh_l{layer}{suffix}")
                seq = out.flip(1) if suffix else out
                states = self._recur(seq @ w_ih.T + (b_ih + b_hh), w_hh)
                directions.append(states.flip(1) if suffix else states)
            out = torch.cat(directions, dim=-1) if len(directions) > 1 else directions[0]
        return out

    @staticmethod
    def _recur(gates_x: Tensor, w_hh: Tensor) -> Tensor:
        """The LSTM recurrence over precomputed input gates ``(N, T, 4H)`` (order i, f, g, o)."""
        hidden = w_hh.shape[1]
        h = gates_x.new_zeros(gates_x.shape[0], hidden)
        c = gates_x.new_zeros(gates_x.shape[0], hidden)
        states = []
        for t in range(gates_x.shape[1]):
            i, f, g, o = (gates_x[:, t] + h @ w_hh.T).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            states.append(h)
        return torch.stack(states, dim=1)


class CharLSTM(nn.Module):
    """Embedding → stacked LSTM → per-position logits ``(N, T, num_classes)``."""

    def __init__(
        self,
        *,
        vocab_size: int,
        num_classes: int,
        embedding_dim: int,
        hidden_size: int,
        num_layers: int,
        fused: bool,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = UnrolledLSTM(embedding_dim, hidden_size, num_layers, fused=fused)
        self.out = nn.Linear(hidden_size, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits for the next token at every position of ``tokens`` ``(N, T)``."""
        logits: Tensor = self.out(self.lstm(self.embedding(tokens)))
        return logits


class NextWordLSTM(nn.Module):
    """Embedding → (Bi)LSTM → logits; ``(N, V)`` when bidirectional, else ``(N, T, V)``."""

    def __init__(
        self,
        *,
        vocab_size: int,
        num_classes: int,
        embedding_dim: int,
        hidden_size: int,
        bidirectional: bool,
        fused: bool,
        tied: bool = False,
    ) -> None:
        super().__init__()
        self.bidirectional = bidirectional
        self.tied = tied
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = UnrolledLSTM(
            embedding_dim, hidden_size, 1, bidirectional=bidirectional, fused=fused
        )
        width = hidden_size * (2 if bidirectional else 1)
        if tied:  # scores against the embedding: (W_p h + b_p) E^T + b
            self.proj = nn.Linear(width, embedding_dim)
            self.out_bias = nn.Parameter(torch.zeros(num_classes))
        else:
            self.out = nn.Linear(width, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        """Next-word logits: after the window (bidirectional) or at every position (causal)."""
        states = self.lstm(self.embedding(tokens))
        if self.bidirectional:
            hidden = states.shape[-1] // 2
            # Forward half after the last token, backward half after reading back to the first.
            states = torch.cat([states[:, -1, :hidden], states[:, 0, hidden:]], dim=-1)
        if self.tied:
            return F.linear(self.proj(states), self.embedding.weight, self.out_bias)
        logits: Tensor = self.out(states)
        return logits


def _check_positive(model: str, **values: int) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"model {model!r}: {key} must be an int >= 1, got {value!r}")


def _sequence_length(model: str, input_shape: tuple[int, ...]) -> None:
    if len(input_shape) != 1:
        raise ValueError(f"model {model!r}: input_shape must be (T,) token ids, got {input_shape}")


def char_lstm(
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    vocab_size: int | None = None,
    embedding_dim: int = 8,
    hidden_size: int = 256,
    num_layers: int = 2,
    fused: bool = False,
) -> nn.Module:
    """Shakespeare next-character LSTM: embedding 8, two LSTM layers of 256, per-position logits.

    Args:
        num_classes: Output vocabulary size.
        input_shape: ``(T,)``, e.g. ``(80,)``.
        vocab_size: Input vocabulary size (default ``num_classes``).
        embedding_dim: Embedding width (8).
        hidden_size: LSTM width (256).
        num_layers: LSTM layers (2).
        fused: Use the fused LSTM kernel (not vmappable).
    """
    _sequence_length("char_lstm", input_shape)
    vocab = num_classes if vocab_size is None else vocab_size
    _check_positive(
        "char_lstm",
        vocab_size=vocab,
        embedding_dim=embedding_dim,
        hidden_size=hidden_size,
        num_layers=num_layers,
    )
    return CharLSTM(
        vocab_size=vocab,
        num_classes=num_classes,
        embedding_dim=embedding_dim,
        hidden_size=hidden_size,
        num_layers=num_layers,
        fused=fused,
    )


def nextword_lstm(
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    vocab_size: int | None = None,
    embedding_dim: int = 96,
    hidden_size: int = 128,
    bidirectional: bool = True,
    fused: bool = False,
    tied: bool = False,
) -> nn.Module:
    """A small next-word model: embedding 96 → BiLSTM 128 per direction → vocabulary logits.

    Args:
        num_classes: Output vocabulary size.
        input_shape: ``(T,)`` window length.
        vocab_size: Input vocabulary size (default ``num_classes``).
        embedding_dim: Embedding width (96).
        hidden_size: LSTM units per direction (128).
        bidirectional: ``True``: read the window both ways and predict the next word, ``(N, V)``;
            ``False``: causal LSTM with per-position logits ``(N, T, V)``.
        fused: Use the fused LSTM kernel (not vmappable).
        tied: Tie the output layer to the input embedding (needs ``vocab_size`` equal to
            ``num_classes``).
    """
    _sequence_length("nextword_lstm", input_shape)
    vocab = num_classes if vocab_size is None else vocab_size
    _check_positive(
        "nextword_lstm", vocab_size=vocab, embedding_dim=embedding_dim, hidden_size=hidden_size
    )
    if tied and vocab != num_classes:
        raise ValueError(
            f"model 'nextword_lstm': tied=True needs vocab_size == num_classes, got {vocab} "
            f"and {num_classes}"
        )
    return NextWordLSTM(
        vocab_size=vocab,
        num_classes=num_classes,
        embedding_dim=embedding_dim,
        hidden_size=hidden_size,
        bidirectional=bidirectional,
        fused=fused,
        tied=tied,
    )
