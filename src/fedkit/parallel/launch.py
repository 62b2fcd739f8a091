"""Running a data-parallel spec: ``run_parallel`` (both modes) and the gloo process launcher.

* ``mode = "replicas"``: all K workers in this process (deterministic; CI on 2 cores).
* ``mode = "gloo"``: K processes (K + 1 for ``async_ps``: rank 0 is the server) spawned with
  ``torch.multiprocessing`` on 127.0.0.1, one torch thread each. Rank 0 writes its history as
  JSON and its final parameters as safetensors to a temporary folder that the parent reads back;
  nothing crosses a process boundary as a pickle on the way back.
* Under ``torchrun`` (the process group already initialised), call ``run_rank``.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import Tensor

from fedkit.loopback import free_port, run_loopback_rank
from fedkit.parallel.async_ps import async_server, async_worker, train_async_sim
from fedkit.parallel.collective import GlooCollective, ReplicaCollective
from fedkit.parallel.result import EvalPoint, ParallelResult
from fedkit.parallel.spec import ParallelSpec
from fedkit.parallel.trainer import Callback, DatasetLike, ModelFn, train_sync_family


@dataclass(frozen=True)
class TensorSplit:
    """Inputs and labels of one split."""

    x: Tensor
    y: Tensor


@dataclass(frozen=True)
class TensorData:
    """The two splits a run needs (what is handed to spawned ranks)."""

    train: TensorSplit
    test: TensorSplit


def run_parallel(
    spec: ParallelSpec,
    dataset: DatasetLike,
    model_fn: ModelFn,
    *,
    callback: Callback | None = None,
) -> ParallelResult:
    """Train ``model_fn()`` on ``dataset`` as ``spec`` says and report every evaluation point.

    Args:
        spec: the validated run settings.
        dataset: anything with ``train``/``test`` splits holding ``x`` and ``y`` tensors.
        model_fn: builds the model (called after seeding); must be picklable (a module-level
            function or a ``functools.partial`` of one) for ``mode = "gloo"``.
        callback: called with each ``EvalPoint`` as it is produced (in gloo mode: after the
            run, in order).

    Returns:
        The history and final parameters.
    """
    if spec.mode == "gloo":
        result = run_gloo(spec, dataset, model_fn)
        if callback is not None:
            for point in result.history:
                callback(point)
        return result
    if spec.method == "async_ps":
        return train_async_sim(spec, dataset, model_fn, callback=callback)
    return train_sync_family(
        spec, dataset, model_fn, ReplicaCollective(spec.workers), callback=callback
    )


def run_rank(
    spec: ParallelSpec,
    dataset: DatasetLike,
    model_fn: ModelFn,
    *,
    callback: Callback | None = None,
) -> ParallelResult | None:
    """This process's part of a gloo run, inside an initialised process group (e.g. torchrun).

    Returns:
        The result on rank 0 (the workers' rank 0, or the server for ``async_ps``); for other
        ranks of ``async_ps`` None, for other ranks of synchronous methods a result with an
        empty history.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    if spec.method == "async_ps":
        if world != spec.workers + 1:
            raise ValueError(f"async_ps needs workers + 1 = {spec.workers + 1} ranks, got {world}")
        if rank == 0:
            return async_server(spec, dataset, model_fn, callback=callback)
        async_worker(spec, dataset, model_fn, rank)
        return None
    if world != spec.workers:
        raise ValueError(f"spec.workers = {spec.workers} but the process group has {world} ranks")
    return train_sync_family(spec, dataset, model_fn, GlooCollective(), callback=callback)


def _rank_main(
    rank: int,
    world: int,
    port: int,
    spec: ParallelSpec,
    data: TensorData,
    model_fn: ModelFn,
    out_dir: str,
) -> None:

    def work() -> None:
        result = run_rank(spec, data, model_fn)
        if rank == 0 and result is not None:
            write_result(result, Path(out_dir))

    run_loopback_rank(rank, world, port, work)


def write_result(result: ParallelResult, folder: Path) -> None:
    """Store a result as ``history.json`` + ``final.safetensors`` in ``folder``."""
    meta = {
        "history": [p.to_dict() for p in result.history],
        "model_bytes": result.model_bytes,
        "wall_seconds": result.wall_seconds,
    }
    (folder / "history.json").write_text(json.dumps(meta))
    tensors = {k: v.contiguous().clone() for k, v in result.final_params.items()}
    save_file(tensors, str(folder / "final.safetensors"))


def read_result(folder: Path) -> ParallelResult:
    """Read back what ``write_result`` stored."""
    meta = json.loads((folder / "history.json").read_text())
    return ParallelResult(
        history=tuple(EvalPoint.from_dict(p) for p in meta["history"]),
        final_params=load_file(str(folder / "final.safetensors")),
        model_bytes=int(meta["model_bytes"]),
        wall_seconds=float(meta["wall_seconds"]),
    )


def run_gloo(spec: ParallelSpec, dataset: DatasetLike, model_fn: ModelFn) -> ParallelResult:
    """Spawn the ranks of a gloo run on this machine and return rank 0's result."""
    world = spec.workers + 1 if spec.method == "async_ps" else spec.workers
    data = TensorData(
        train=TensorSplit(dataset.train.x, dataset.train.y),
        test=TensorSplit(dataset.test.x, dataset.test.y),
    )
    with tempfile.TemporaryDirectory(prefix="fedkit-gloo-") as out:
        mp.spawn(  # type: ignore[attr-defined,no-untyped-call]
            _rank_main,
            args=(world, free_port(), spec, data, model_fn, out),
            nprocs=world,
            join=True,
        )
        return read_result(Path(out))
