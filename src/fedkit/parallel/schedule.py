"""Schedules of a data-parallel run: data order, learning rate, batch size and local steps H.

Every schedule is a pure function of the spec, the seed and the run's progress, so every rank
(and every replica) computes the same value without communicating.

* Data order: epoch e visits the training set in ``epoch_permutation(n, seed, e)``; a
  synchronous step with K workers of batch B takes the next K·B indices and worker k gets the
  k-th block of B. The K workers' batches of one step together are exactly the centralised
  batch of size K·B, which is what makes "H = 1 equals synchronous SGD at batch K·B" hold.
  An incomplete tail of an epoch is dropped.
* Learning rate: linear warm-up (Goyal et al. 2017) then constant, cosine or step decay.
* Batch size (Smith, Kindermans, Ying & Le, "Don't Decay the Learning Rate, Increase the Batch
  Size", ICLR 2018): at each milestone where step decay would multiply the LR by d, multiply
  the batch by 1/d instead; once the batch reaches its cap, decay the LR as usual.
* Local steps (AdaComm, Wang & Joshi, "Adaptive Communication Strategies to Achieve the Best
  Error-Runtime Trade-off in Local-Update SGD", SysML 2019): every interval,
  ``H ← max(H_min, ⌈√(F_now / F_0) · H_0⌉)`` with F the training loss, so H shrinks as the
  loss falls.
"""

from __future__ import annotations

import math

import torch

from fedkit.rng import SERVER, generator


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which epoch ``epoch`` visits ``n`` training samples.

    Drawn from ``fedkit.rng.generator(seed, epoch, SERVER, "parallel-epoch")``, so it depends on
    nothing but the seed and the epoch (not on K, the mode or the process).
    """
    return torch.randperm(n, generator=generator(seed, epoch, SERVER, "parallel-epoch"))


class BatchStream:
    """Deterministic stream of global batches over reshuffled epochs (tail dropped)."""

    def __init__(self, n: int, seed: int) -> None:
        """Create the stream for a training set of ``n`` samples."""
        self.n = n
        self.seed = seed
        self.epoch = 0
        self.cursor = 0
        self._perm = epoch_permutation(n, seed, 0)

    def next(self, size: int) -> torch.Tensor:
        """Indices of the next global batch of ``size`` samples."""
        if size > self.n:
            raise ValueError(f"global batch {size} is larger than the training set ({self.n})")
        if self.cursor + size > self.n:
            self.epoch += 1
            self.cursor = 0
            self._perm = epoch_permutation(self.n, self.seed, self.epoch)
        out = self._perm[self.cursor : self.cursor + size]
        self.cursor += size
        return out


def lr_at(
    step: int,
    samples_seen: int,
    *,
    base_lr: float,
    warmup_steps: int,
    schedule: str,
    sample_budget: int,
    sample_milestones: tuple[int, ...] = (),
    decay: float = 1.0,
    decays_skipped: int = 0,
) -> float:
    """Learning rate for the step about to be taken: linear warm-up, then the schedule.

    Warm-up ramps linearly from ``base_lr / warmup_steps`` up to ``base_lr`` over the first
    ``warmup_steps`` steps. After it, the schedule is a function of the samples seen (so runs
    with different batch sizes decay at the same point of the budget).

    Args:
        step: 0-based index of the step about to be taken.
        samples_seen: training samples consumed before this step (all workers).
        base_lr: peak learning rate.
        warmup_steps: warm-up length in steps (0: none).
        schedule: ``constant``, ``cosine`` (to 0 at the end of the budget) or ``step``.
        sample_budget: total samples of the run.
        sample_milestones: sample counts where ``step`` multiplies the LR by ``decay``.
        decay: factor per milestone.
        decays_skipped: milestones already turned into batch growth instead of LR decay.
    """
    if step < warmup_steps:
        return base_lr * ((step + 1) / warmup_steps)
    if schedule == "cosine":
        progress = min(1.0, samples_seen / sample_budget)
        return base_lr * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "step":
        passed = sum(1 for m in sample_milestones if samples_seen >= m)
        return float(base_lr * decay ** max(0, passed - decays_skipped))
    return base_lr


def grown_batch(
    samples_seen: int,
    *,
    base_batch: int,
    max_batch: int,
    sample_milestones: tuple[int, ...],
    decay: float,
) -> tuple[int, int]:
    """Per-worker batch size after the milestones passed, and how many milestones it absorbed.

    Each passed milestone multiplies the batch by ``round(1 / decay)`` while it stays within
    ``max_batch`` (0: no cap); milestones beyond the cap are left to decay the LR.

    Returns:
        ``(batch, absorbed)``: the batch size and the number of milestones turned into growth.
    """
    factor = round(1 / decay)
    batch, absorbed = base_batch, 0
    for m in sample_milestones:
        if samples_seen < m:
            break
        if max_batch and batch * factor > max_batch:
            break
        batch *= factor
        absorbed += 1
    return batch, absorbed


def adacomm_h(loss_now: float, loss_0: float, *, h0: int, h_min: int) -> int:
    """AdaComm's next H: ``max(h_min, ⌈√(loss_now / loss_0) · h0⌉)``."""
    if loss_0 <= 0 or not math.isfinite(loss_now):
        return h0
    return max(h_min, math.ceil(math.sqrt(max(loss_now, 0.0) / loss_0) * h0))
