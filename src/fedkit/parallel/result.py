"""What a data-parallel run reports: one ``EvalPoint`` per evaluation and a ``ParallelResult``.

These are plain typed records, so the experiment layer can store them (one row per point) and
the gloo launcher can pass them between processes as JSON, never as pickles.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import Tensor


@dataclass(frozen=True, kw_only=True)
class EvalPoint:
    """Metrics at one evaluation of the consensus model.

    Attributes:
        step: synchronous steps taken (for ``async_ps``: server updates applied).
        samples: training samples consumed over all workers.
        epoch: ``samples / len(train)``.
        train_loss: mean mini-batch training loss since the previous point (all workers).
        test_loss: mean cross-entropy on the evaluated test samples.
        test_accuracy: top-1 accuracy on the evaluated test samples.
        compute_seconds: measured compute time on the critical path (slowest worker).
        comm_seconds: simulated communication time on the chosen network.
        sim_seconds: simulated elapsed time (compute + communication, or the async event clock).
        bytes_per_worker: bytes each worker has sent so far, for every topology (ring and
            parameter-server workers receive as much as they send), so figures compare.
        bytes_up_per_worker: bytes each worker has sent so far.
        bytes_down_per_worker: bytes each worker has received so far.
        server_bytes: bytes through the parameter server's link so far, in plus out
            (``ps`` only).
        syncs: synchronisations (all-reduces or server rounds) so far.
        local_steps: current H.
        batch_size: current per-worker batch size.
        lr: current learning rate.
        max_staleness: largest staleness of an applied update so far (``async_ps``; else 0).
    """

    step: int
    samples: int
    epoch: float
    train_loss: float
    test_loss: float
    test_accuracy: float
    compute_seconds: float
    comm_seconds: float
    sim_seconds: float
    bytes_per_worker: float
    bytes_up_per_worker: float
    bytes_down_per_worker: float
    server_bytes: float
    syncs: int
    local_steps: int
    batch_size: int
    lr: float
    max_staleness: int = 0

    def to_dict(self) -> dict[str, float | int]:
        """The point as a flat mapping of metric name to number."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalPoint:
        """Rebuild a point written by ``to_dict`` (checks every field is present)."""
        names = {f.name for f in dataclasses.fields(cls)}
        missing = names - set(data)
        if missing:
            raise ValueError(f"eval point is missing {sorted(missing)}")
        return cls(**{k: data[k] for k in names})


@dataclass(frozen=True, kw_only=True)
class ParallelResult:
    """The outcome of ``run_parallel``.

    Attributes:
        history: evaluation points in order; the last one is the final model.
        final_params: the final consensus model's parameters and buffers (CPU tensors).
        model_bytes: bytes of one copy of the trainable parameters.
        wall_seconds: real elapsed time of the run in this process.
    """

    history: tuple[EvalPoint, ...]
    final_params: dict[str, Tensor]
    model_bytes: int
    wall_seconds: float

    @property
    def final(self) -> EvalPoint:
        """The last evaluation point."""
        return self.history[-1]
