"""Run one arm of a ``[parallel]`` experiment file, standalone or as a rank under ``torchrun``.

    python -m fedkit.parallel examples/cifar100_parallel.toml --arm localsgd-h4 --out runs/h4
    torchrun --nproc-per-node 4 -m fedkit.parallel examples/cifar100_parallel.toml \\
        --arm localsgd-h4 --set parallel.mode=gloo --out runs/h4

Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) every process joins a gloo process group and
runs its rank (K ranks, or K + 1 for ``async_ps``); otherwise ``run_parallel`` runs the spec in
its own mode. The main rank prints one line per evaluation point and, with ``--out``, writes
``history.json`` and ``final.safetensors``. Recording into the results database is the job of
``fedkit run``; this entry point exists for real multi-process and multi-node runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from fedkit.parallel.launch import run_parallel, run_rank, write_result
from fedkit.parallel.result import EvalPoint


def _print_point(p: EvalPoint) -> None:
    print(
        f"step {p.step:6d}  samples {p.samples:9d}  epoch {p.epoch:6.2f}  "
        f"train {p.train_loss:.4f}  test {p.test_loss:.4f}  acc {100 * p.test_accuracy:6.2f}%  "
        f"compute {p.compute_seconds:8.1f}s  comm {p.comm_seconds:8.2f}s  "
        f"MB sent/worker {p.bytes_per_worker / 1e6:9.1f}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, load data and model, run (or join) the arm."""
    ap = argparse.ArgumentParser(prog="python -m fedkit.parallel", description=__doc__)
    ap.add_argument("config", type=Path, help="experiment file with a [parallel] section")
    ap.add_argument("--arm", default=None, help="arm name (default: the only/first run)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, default=None, help="folder for the main rank's result")
    args = ap.parse_args(argv)

    from fedkit.data.datasets import load_dataset
    from fedkit.experiment.config import load_study
    from fedkit.models.spec import ModelSpec

    study = load_study(args.config, args.overrides)
    runs = [r for r in study.runs if args.arm is None or r.name == args.arm]
    if not runs:
        raise SystemExit(f"no arm {args.arm!r}; arms: {', '.join(r.name for r in study.runs)}")
    cfg = runs[0]
    if cfg.parallel is None:
        raise SystemExit(f"{args.config}: arm {cfg.name!r} has no [parallel] section")
    spec = cfg.parallel
    ds = load_dataset(cfg.data.dataset, **cfg.data.dataset_options())
    model_fn = ModelSpec(
        name=cfg.model.name,
        num_classes=ds.num_classes,
        input_shape=tuple(ds.input_shape),
        options=dict(cfg.model.options),
        init_seed=spec.seed,
    )
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        torch.set_num_threads(int(os.environ.get("FEDKIT_THREADS", "1")))
        dist.init_process_group("gloo", timeout=timedelta(minutes=10))
        try:
            main_rank = dist.get_rank() == 0
            result = run_rank(spec, ds, model_fn, callback=_print_point if main_rank else None)
            dist.barrier()  # leave together (see launch._rank_main)
        finally:
            dist.destroy_process_group()
        if not main_rank or result is None:
            _leave()
            return
    else:
        result = run_parallel(spec, ds, model_fn, callback=_print_point)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_result(result, args.out)
        print(f"wrote {args.out / 'history.json'} and {args.out / 'final.safetensors'}")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        _leave()


def _leave() -> None:
    """Exit a torchrun rank without interpreter teardown (see ``launch._rank_main``)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
