"""Text in, predictions out: a bundle's model applied to a batch of texts.

Encoding follows the training data's layout (:mod:`fedkit.data.text`, :mod:`fedkit.data.nwp`):
text is tokenised with :func:`fedkit.data.text.tokenize` and mapped to the bundle's vocabulary
(unknown words to ``oov``), then

- **next word**, a model with one output per input (the BiLSTM, ``(N, V)``): the context is
  ``[bos] + ids``, its last ``T`` ids left-padded with ``pad`` to the model's window ``T``: the
  prefix windows the model was trained on. A model with an output per position (the causal
  LSTM, ``(N, T, V)``): the same context right-padded, scored at its last real position (a
  causal model never sees the padding after it). The top ``k`` *words* are returned with their
  probabilities under the full softmax; the special ids (pad, oov, bos, eos) are never
  suggested.
- **classify**: ``ids`` (no ``bos``, as :func:`fedkit.data.text.pad_truncate` lays out Sent140),
  the first ``T`` kept, right-padded; the class probabilities.

The output layout is read once, when the predictor is made, from the model's answer to one
window of padding. Recurrent layers run on the fused LSTM kernel whatever the bundle's
``fused`` option (training may need the unrolled, vmappable form; the parameters are the same).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from fedkit.data.text import WordVocab, tokenize
from fedkit.models.text import UnrolledLSTM
from fedkit.serve.bundle import Bundle

__all__ = ["ClassPrediction", "NextWords", "Prediction", "Predictor"]


@dataclasses.dataclass(frozen=True)
class NextWords:
    """The top ``k`` next words and their probabilities, most likely first."""

    words: tuple[str, ...]
    probabilities: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class ClassPrediction:
    """Every class's probability, in class order."""

    labels: tuple[str, ...]
    probabilities: tuple[float, ...]


Prediction = NextWords | ClassPrediction


class Predictor:
    """A bundle's model behind :meth:`predict` (thread-confined: call it from one thread).

    Args:
        bundle: a loaded bundle with a vocabulary (serving reads text).
        threads: torch intra-op threads for inference (``None``: leave torch's setting).

    Raises:
        ValueError: the bundle has no vocabulary, or its model's output is not
            ``(N, C)`` or ``(N, T, C)``.
    """

    def __init__(self, bundle: Bundle, *, threads: int | None = None) -> None:
        if bundle.words is None:
            raise ValueError("this bundle's model does not read words; fedkit serve reads text")
        if threads is not None:
            torch.set_num_threads(threads)
        self.bundle = bundle
        for module in bundle.model.modules():  # same parameters, the faster fused kernel
            if isinstance(module, UnrolledLSTM):
                module.fused = True
        self.vocab = WordVocab(bundle.words)
        self.window = int(bundle.spec.input_shape[0])
        self.task = bundle.task
        with torch.no_grad():
            probe = bundle.model(torch.zeros(1, self.window, dtype=torch.long))
        if probe.dim() not in (2, 3):
            raise ValueError(f"model output of shape {tuple(probe.shape)}: expected 2 or 3 dims")
        self.per_position = probe.dim() == 3
        self.num_classes = int(probe.shape[-1])
        v = self.vocab
        self._special = torch.tensor([v.pad, v.oov, v.bos, v.eos])

    def encode(self, text: str) -> list[int]:
        """The ids the model reads for ``text`` (before padding)."""
        ids = [int(i) for i in self.vocab.encode(tokenize(text))]
        if self.task == "next_word":
            return [self.vocab.bos, *ids][-self.window :]
        return ids[: self.window]

    def _batch(self, encoded: Sequence[list[int]]) -> tuple[Tensor, Tensor]:
        """``(N, T)`` padded ids and the index of each row's last real id (rows padded as
        Python lists, then one tensor: one torch call per batch, not one per row)."""
        t, pad = self.window, self.vocab.pad
        if self.task == "next_word" and not self.per_position:  # left-padded
            rows = [[pad] * (t - len(ids)) + ids for ids in encoded]
            last = [t - 1 if ids else 0 for ids in encoded]
        else:  # right-padded
            rows = [ids + [pad] * (t - len(ids)) for ids in encoded]
            last = [max(len(ids) - 1, 0) for ids in encoded]
        return torch.tensor(rows, dtype=torch.long), torch.tensor(last, dtype=torch.long)

    @torch.no_grad()
    def logits(self, encoded: Sequence[list[int]]) -> Tensor:
        """``(N, C)`` output logits (float32) for a batch of encoded texts."""
        x, last = self._batch(encoded)
        out: Tensor = self.bundle.model(x)
        if self.per_position:
            out = out[torch.arange(out.shape[0]), last]
        return out.float()

    def probabilities(self, encoded: Sequence[list[int]]) -> Tensor:
        """``(N, C)`` output probabilities (softmax) for a batch of encoded texts."""
        return torch.softmax(self.logits(encoded), dim=-1)

    def predict(self, texts: Sequence[str], ks: Sequence[int]) -> list[Prediction]:
        """One prediction per text; ``ks[i]`` words for text ``i`` (ignored for classifiers)."""
        logits = self.logits([self.encode(t) for t in texts])
        if self.task == "classify":
            labels = self.bundle.labels
            return [ClassPrediction(labels, tuple(p)) for p in logits.softmax(-1).tolist()]
        # softmax only where it is read: p_i = exp(z_i - logsumexp(z)) for the top k of the
        # logits with the special ids masked out (never suggested); the order is the same
        norm = logits.logsumexp(dim=-1, keepdim=True)
        ranked = logits.index_fill(1, self._special, -math.inf)
        k_max = min(max(ks, default=1), self.num_classes - len(self._special))
        top_z, top_i = ranked.topk(k_max, dim=-1)
        top_p = (top_z - norm).exp()
        out: list[Prediction] = []
        for row_p, row_i, k in zip(top_p.tolist(), top_i.tolist(), ks, strict=True):
            words = tuple(self.bundle.labels[i] for i in row_i[:k])
            out.append(NextWords(words, tuple(row_p[:k])))
        return out
