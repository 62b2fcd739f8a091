"""The one collective the synchronous methods need: an in-place mean over all K workers.

A process holds some of the K workers: all of them in the deterministic single-process
"replicas" mode, exactly one per rank in the gloo mode. ``mean_`` averages, across every
worker, the i-th tensor of each worker's list and writes the mean back into every list, so the
training loop is the same code in both modes.

* ``ReplicaCollective`` sums in rank order 0, 1, …, K−1 and divides by K.
* ``GlooCollective`` flattens the local tensors into one buffer, ``all_reduce(SUM)`` over the
  process group, and divides by K. For K ≤ 2 the sum is bit-identical to the replicas mode;
  for larger K gloo's reduction order may differ in the last bits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.distributed as dist
from torch import Tensor


class Collective(Protocol):
    """Averaging across the K workers of a run, of which this process holds ``local_ranks``."""

    workers: int
    local_ranks: tuple[int, ...]

    @property
    def is_main(self) -> bool:
        """Whether this process records results (holds rank 0)."""
        ...

    def mean_(self, per_worker: Sequence[Sequence[Tensor]]) -> None:
        """Replace each tensor by its mean over all K workers (one list per local worker)."""
        ...

    def max_scalar(self, value: float) -> float:
        """Maximum of a per-process value over all processes."""
        ...

    def sum_scalar(self, value: float) -> float:
        """Sum of a per-process value over all processes."""
        ...


class ReplicaCollective:
    """All K workers live in this process; averaging is a rank-ordered sum."""

    def __init__(self, workers: int) -> None:
        """Hold ranks ``0 … workers − 1``."""
        self.workers = workers
        self.local_ranks: tuple[int, ...] = tuple(range(workers))

    @property
    def is_main(self) -> bool:
        """Always true: this process is the whole run."""
        return True

    @torch.no_grad()
    def mean_(self, per_worker: Sequence[Sequence[Tensor]]) -> None:
        """Average the i-th tensor of every worker in rank order and write it back."""
        if len(per_worker) != self.workers:
            raise ValueError(f"expected {self.workers} workers' tensors, got {len(per_worker)}")
        for tensors in zip(*per_worker, strict=True):
            total = tensors[0].clone()
            for t in tensors[1:]:
                total.add_(t)
            total.div_(self.workers)
            for t in tensors:
                t.copy_(total)

    def max_scalar(self, value: float) -> float:
        """Identity: one process."""
        return value

    def sum_scalar(self, value: float) -> float:
        """Identity: one process."""
        return value


class GlooCollective:
    """One worker per rank of an initialised ``torch.distributed`` process group."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        """Use ``group`` (default: the world group, which must already be initialised)."""
        if not dist.is_initialized():
            raise RuntimeError("GlooCollective needs torch.distributed.init_process_group first")
        self.group = group
        self.workers = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.local_ranks: tuple[int, ...] = (self.rank,)

    @property
    def is_main(self) -> bool:
        """Rank 0 records results."""
        return self.rank == 0

    @torch.no_grad()
    def mean_(self, per_worker: Sequence[Sequence[Tensor]]) -> None:
        """All-reduce the local worker's tensors as one flat buffer and divide by K."""
        if len(per_worker) != 1:
            raise ValueError(f"a gloo rank holds one worker, got {len(per_worker)}")
        tensors = list(per_worker[0])
        if not tensors:
            return
        buf = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=self.group)
        buf.div_(self.workers)
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(buf[offset : offset + n].view_as(t))
            offset += n

    def max_scalar(self, value: float) -> float:
        """All-reduce MAX of one float."""
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return float(t.item())

    def sum_scalar(self, value: float) -> float:
        """All-reduce SUM of one float."""
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return float(t.item())
