"""Selection with unequal, known inclusion probabilities (systematic PPS sampling).

Each client ``k`` has a selection weight ``p_k`` (its data size; a power law over client ids;
explicit weights; or a file of weights). A round draws exactly ``m`` distinct clients so that
client ``k`` is in the cohort with probability

    π_k = min(1, c · p_k),   with ``c`` chosen so that  Σ_k π_k = m

(the probabilities of clients whose share would exceed 1 are capped at 1 and the rest
rescaled, repeated until none exceeds 1). The draw is *randomised systematic sampling*
(Madow 1949; Särndal, Swensson & Wretman 1992, "Model Assisted Survey Sampling"): lay the
clients in a random order on a line as intervals of lengths ``π_k`` (total ``m``), draw
``u ~ U[0, 1)`` and take the clients whose intervals hold the points ``u, u + 1, …,
u + m - 1``. Since every ``π_k ≤ 1``, no interval holds two points, and each client is hit
with probability exactly ``π_k`` whatever the order.
Because the inclusion probabilities are exact, the Horvitz–Thompson aggregate of
:mod:`fedkit.samplers.importance` is exactly unbiased for the full-participation mean.

With ``p_k ∝ n_k`` this is "selection proportional to data size" (Li et al. 2020, FedProx,
sample ``p_k = n_k / n``; here without replacement, so the cohort has ``m`` distinct clients).
Every draw comes from the server stream ``(seed, round, "sample-probability")``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Literal

import torch

from fedkit.algorithm import RoundInfo
from fedkit.rng import SERVER, generator
from fedkit.sampling import Population, check_cohort_size

__all__ = ["LAWS", "ProbabilitySampler", "capped_inclusion", "read_weights", "systematic"]

Law = Literal["uniform", "size", "power", "weights", "file"]
LAWS: tuple[str, ...] = ("uniform", "size", "power", "weights", "file")
MAX_WEIGHTS_FILE = 16 * 2**20
"""Largest weights file read (bytes)."""


def capped_inclusion(p: torch.Tensor, m: int) -> torch.Tensor:
    """Inclusion probabilities ``π_k = min(1, c · p_k)`` summing to ``m`` (float64).

    Args:
        p: non-negative selection weights, one per client (any positive scale).
        m: the cohort size, ``1 <= m <= number of clients with p_k > 0``.

    Raises:
        ValueError: negative or non-finite weights, or fewer than ``m`` positive ones.
    """
    p = p.to(torch.float64)
    if not bool(torch.isfinite(p).all()) or bool((p < 0).any()):
        raise ValueError("selection weights must be finite and >= 0")
    positive = int((p > 0).sum())
    if not 1 <= m <= positive:
        raise ValueError(
            f"cannot draw {m} distinct clients: {positive} have a selection weight > 0"
        )
    capped = torch.zeros_like(p, dtype=torch.bool)
    while True:
        left = m - int(capped.sum())  # every capped client holds exactly 1 of the m
        share = torch.zeros_like(p)
        if left > 0:
            # c · p_k with c = left / Σ_uncapped p, computed on the uncapped weights scaled by
            # their own maximum: c stays finite when they are tiny (subnormal) beside a capped
            # one (capped entries may become inf here; they are 1 below)
            scale = float(p[~capped].max())
            share = left * (p / scale) / float((p[~capped] / scale).sum())
        now = capped | (share >= 1.0)
        if bool((now == capped).all()):
            break
        capped = now
    return torch.where(capped, torch.ones_like(p), share)


def systematic(pi: torch.Tensor, g: torch.Generator) -> list[int]:
    """Randomised systematic sampling: ``round(Σ π)`` distinct ids, id ``k`` with probability
    ``π_k`` (every ``π_k`` in [0, 1]; see the module docstring). Sorted."""
    m = round(float(pi.sum()))
    order = torch.randperm(pi.numel(), generator=g)
    cum = torch.cumsum(pi[order], 0)
    cum[-1] = float(m)  # the total is m analytically: no point may fall past the end
    u = torch.rand((), generator=g, dtype=torch.float64)
    points = u + torch.arange(m, dtype=torch.float64)
    hit = torch.searchsorted(cum, points, right=True)
    return sorted(set(order[hit].tolist()))


def read_weights(path: Path, num_clients: int) -> torch.Tensor:
    """Per-client weights from a text file: one non-negative number per line (blank lines and
    ``#`` comments skipped), exactly ``num_clients`` of them.

    Raises:
        ValueError: a file too large, a line that is not a finite number >= 0, or a count
            other than ``num_clients`` (the message names the file and the line).
    """
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ValueError(f"sampler weights file {str(path)!r}: {e.strerror or e}") from e
    if size > MAX_WEIGHTS_FILE:
        raise ValueError(f"sampler weights file {str(path)!r} is over {MAX_WEIGHTS_FILE} bytes")
    values: list[float] = []
    text = path.read_text(encoding="utf-8", errors="strict")
    for i, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            v = float(line)
        except ValueError:
            raise ValueError(f"{path}:{i}: {line!r} is not a number") from None
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{path}:{i}: weight {line!r} must be a finite number >= 0")
        values.append(v)
    if len(values) != num_clients:
        raise ValueError(
            f"sampler weights file {str(path)!r} has {len(values)} weights for {num_clients} "
            "clients (one per client, in client-id order)"
        )
    return torch.tensor(values, dtype=torch.float64)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProbabilitySampler:
    """``m`` distinct clients, client ``k`` with probability ``π_k = min(1, c · p_k)``.

    Attributes:
        law: where ``p_k`` comes from: ``"uniform"`` (1), ``"size"`` (the client's number of
            training examples), ``"power"`` (``(k + 1) ** -exponent``: a few clients are
            picked far more often than the rest), ``"weights"`` (``weights``) or ``"file"``
            (``path``: one weight per line, client-id order).
        exponent: the power law's exponent (>= 0).
        weights: explicit per-client weights (law ``"weights"``).
        path: the weights file (law ``"file"``).
    """

    law: Law = "size"
    exponent: float = 1.0
    weights: tuple[float, ...] = ()
    path: str | None = None

    def __post_init__(self) -> None:
        if self.law not in LAWS:
            raise ValueError(f"law must be one of {LAWS}, got {self.law!r}")
        if not (math.isfinite(self.exponent) and self.exponent >= 0):
            raise ValueError(f"exponent must be a finite number >= 0, got {self.exponent!r}")
        if (self.law == "weights") != bool(self.weights):
            raise ValueError("weights are given exactly when law = 'weights'")
        if (self.law == "file") != (self.path is not None):
            raise ValueError("path is given exactly when law = 'file'")

    def selection_weights(self, population: Population) -> torch.Tensor:
        """``p_k`` for every client (float64, unnormalised)."""
        n = population.num_clients
        if self.law == "uniform":
            return torch.ones(n, dtype=torch.float64)
        if self.law == "size":
            sizes = population.sizes("sampler law 'size'")
            return torch.tensor(sizes, dtype=torch.float64)
        if self.law == "power":
            return torch.arange(1, n + 1, dtype=torch.float64).pow(-self.exponent)
        if self.law == "weights":
            if len(self.weights) != n:
                raise ValueError(f"weights has {len(self.weights)} entries for {n} clients")
            return torch.tensor(self.weights, dtype=torch.float64)
        assert self.path is not None
        return read_weights(Path(self.path), n)

    def inclusion(self, population: Population, k: int, info: RoundInfo) -> tuple[float, ...]:
        """Every client's exact inclusion probability ``π_k`` in a round of ``k`` clients."""
        check_cohort_size(k, population.num_clients)
        return tuple(capped_inclusion(self.selection_weights(population), k).tolist())

    def select(self, population: Population, k: int, info: RoundInfo) -> list[int]:
        """``k`` distinct clients by systematic sampling with probabilities ``π``."""
        check_cohort_size(k, population.num_clients)
        pi = capped_inclusion(self.selection_weights(population), k)
        return systematic(pi, generator(info.seed, info.round, SERVER, "sample-probability"))

    def sample(self, num_clients: int, k: int, info: RoundInfo) -> list[int]:
        """:meth:`select` for a population known only by its size."""
        return self.select(Population(num_clients), k, info)
