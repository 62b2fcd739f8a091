"""Gradient compression for synchronous data-parallel SGD with PyTorch's own DDP communication
hooks (``torch.distributed.algorithms.ddp_comm_hooks``), and the bytes each one sends.

``grad_compression`` in ``[parallel]`` chooses the hook (gloo mode, methods whose every step
all-reduces the gradient: ``sync`` and ``adaptive_batch``):

* ``fp16`` — ``fp16_compress_hook``: the gradient bucket is cast to half precision,
  all-reduced, divided by K and cast back: 2 bytes per element. (PyTorch's
  ``bf16_compress_hook`` needs NCCL; the track's gloo ranks cannot run it, so it is not offered.)
* ``powersgd`` — ``powerSGD_hook`` (Vogels et al. 2019, "PowerSGD: Practical Low-Rank Gradient
  Compression for Distributed Optimization"): each gradient matrix ``M`` (a tensor viewed as
  ``shape[0] × rest``) is replaced by a rank-``r`` product ``P Qᵀ`` from one power iteration
  (``P = M Q``, orthogonalise, ``Q = Mᵀ P``), with error feedback and warm start; ``P`` and
  ``Q`` are all-reduced instead of ``M``. A matrix is compressed only when
  ``(rows + cols) · r · 2 < rows · cols`` (the hook's ``min_compression_rate`` 2); vectors and
  small matrices are all-reduced as they are, and the first ``powersgd_start_iter`` steps run
  plain all-reduce.

The bytes of a step are counted from what the hook all-reduced: element counts from PowerSGD's
own statistics (``PowerSGDState.total_numel_after_compression``), half the bytes for fp16.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powersgd
from torch.nn.parallel import DistributedDataParallel

from fedkit.parallel.spec import GradCompression

__all__ = ["HookedModel"]


class HookedModel:
    """A replica wrapped in ``DistributedDataParallel`` with the chosen communication hook: a
    backward pass through :attr:`module` leaves the K-worker mean of the (compressed) gradient
    in every parameter's ``grad``.

    Args:
        model: the replica (parameters already equal on every rank).
        kind: ``fp16`` or ``powersgd``.
        rank: PowerSGD's matrix approximation rank ``r``.
        start_iter: PowerSGD's plain all-reduce steps before compression (>= 2).
        seed: PowerSGD's random seed (its initial ``Q``).
        group: the process group (the default world group when ``None``).
    """

    def __init__(
        self,
        model: nn.Module,
        kind: GradCompression,
        *,
        rank: int = 1,
        start_iter: int = 2,
        seed: int = 0,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        if kind not in ("fp16", "powersgd"):
            raise ValueError(f"grad_compression {kind!r} has no DDP hook")
        self.kind = kind
        self.numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.module = DistributedDataParallel(model, process_group=group)
        self.state: powersgd.PowerSGDState | None = None
        if kind == "powersgd":
            self.state = powersgd.PowerSGDState(
                process_group=group,
                matrix_approximation_rank=rank,
                start_powerSGD_iter=start_iter,
                random_seed=seed,
            )
            self.module.register_comm_hook(self.state, powersgd.powerSGD_hook)
        else:
            self.module.register_comm_hook(group, default_hooks.fp16_compress_hook)
        self._counted = 0

    def step_bytes(self) -> int:
        """The bytes the last backward pass all-reduced (per worker, before the ring factor)."""
        if self.state is None:
            return 2 * self.numel
        after = int(self.state.total_numel_after_compression)
        if after == self._counted:  # the hook's plain all-reduce steps count nothing
            return 4 * self.numel
        sent, self._counted = after - self._counted, after
        return 4 * sent
