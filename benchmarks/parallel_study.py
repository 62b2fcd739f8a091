"""Run the data-parallel study (examples/cifar100_parallel.toml) at a reduced sample budget.

Every arm of the study file (mini-batch SGD — the baseline —, large-batch SGD and LARS, Local
SGD with H in {1, 4, 16}, SlowMo) trains LeNet-5 on CIFAR-100 for the same number of samples;
the script prints one table row per arm (accuracy, loss, steps, synchronisations, bytes per
worker, measured compute seconds, simulated communication seconds on the file's network, and the
ratios to the baseline measured in the same invocation) and writes everything as JSON.

Arms run as separate processes (``--jobs`` at a time, one torch thread each); each child writes
its result as JSON, which the parent reads (no pickles). The budget is reduced from the file's
so the whole study fits in about 15 minutes on 2 cores; LR warm-up is scaled by the same factor
and the cosine schedule spans the reduced budget.

    .venv/bin/python benchmarks/parallel_study.py [--budget 36864] [--jobs 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("FEDKIT_DATA", str((REPO / ".." / "shared" / "data").resolve()))


def reduced_spec(spec: Any, budget: int, eval_samples: int, evals: int) -> Any:
    """The arm's spec with the reduced budget (warm-up scaled, ``evals`` evaluation points)."""
    scale = budget / spec.sample_budget
    return dataclasses.replace(
        spec,
        sample_budget=budget,
        eval_every_samples=max(1, budget // evals),
        max_eval_samples=eval_samples,
        lr_warmup_epochs=spec.lr_warmup_epochs * scale,
    )


def run_arm(config: Path, name: str, budget: int, eval_samples: int, evals: int) -> dict[str, Any]:
    """Train one arm in this process and return its JSON-ready record."""
    import torch

    torch.set_num_threads(1)
    from fedkit.data.datasets import load_dataset
    from fedkit.experiment.config import load_study
    from fedkit.models.spec import ModelSpec
    from fedkit.parallel import run_parallel

    study = load_study(config)
    cfg = next(r for r in study.runs if r.name == name)
    assert cfg.parallel is not None
    spec = reduced_spec(cfg.parallel, budget, eval_samples, evals)
    ds = load_dataset(cfg.data.dataset)
    model = ModelSpec(
        name=cfg.model.name,
        num_classes=ds.num_classes,
        input_shape=tuple(ds.input_shape),
        options=dict(cfg.model.options),
        init_seed=spec.seed,
    )
    t0 = time.perf_counter()
    result = run_parallel(spec, ds, model)
    return {
        "name": name,
        "spec": json.loads(json.dumps(dataclasses.asdict(spec), default=list)),
        "model_bytes": result.model_bytes,
        "wall_seconds": time.perf_counter() - t0,
        "history": [p.to_dict() for p in result.history],
    }


def table(records: list[dict[str, Any]], baseline: str) -> str:
    """A fixed-width table of the final points, with ratios to the baseline arm."""
    base = next(r for r in records if r["name"] == baseline)["history"][-1]
    head = (
        f"{'arm':<16} {'method':<10} {'KxB':>8} {'H':>3} {'opt':<5} {'steps':>5} {'syncs':>5} "
        f"{'train':>6} {'test':>6} {'acc%':>6} {'MB/wkr':>8} {'comp s':>7} {'comm s':>7} "
        f"{'comm%':>6} {'acc/b':>6} {'bytes/b':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in records:
        s, p = r["spec"], r["history"][-1]
        total = p["compute_seconds"] + p["comm_seconds"]
        lines.append(
            f"{r['name']:<16} {s['method']:<10} {s['workers']}x{p['batch_size']:<5} "
            f"{p['local_steps']:>3} {s['optimizer']:<5} {p['step']:>5} {p['syncs']:>5} "
            f"{p['train_loss']:>6.3f} {p['test_loss']:>6.3f} {100 * p['test_accuracy']:>6.2f} "
            f"{p['bytes_per_worker'] / 1e6:>8.1f} {p['compute_seconds']:>7.1f} "
            f"{p['comm_seconds']:>7.2f} {100 * p['comm_seconds'] / max(total, 1e-12):>6.1f} "
            f"{p['test_accuracy'] / max(base['test_accuracy'], 1e-12):>6.2f} "
            f"{p['bytes_per_worker'] / max(base['bytes_per_worker'], 1e-12):>7.3f}"
        )
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, run the arms (in parallel children), print the table, write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=REPO / "examples" / "cifar100_parallel.toml")
    ap.add_argument("--budget", type=int, default=36_864, help="samples per arm (all workers)")
    ap.add_argument("--eval-samples", type=int, default=2_000, help="test samples per evaluation")
    ap.add_argument("--evals", type=int, default=3, help="evaluation points per arm")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--baseline", default="minibatch-sgd")
    ap.add_argument("--arms", nargs="*", default=None, help="subset of arm names")
    ap.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "parallel_study.json"
    )
    ap.add_argument("--only", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--record", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.only is not None:  # child: one arm
        record = run_arm(args.config, args.only, args.budget, args.eval_samples, args.evals)
        args.record.write_text(json.dumps(record))
        return

    from fedkit.experiment.config import load_study

    names = [r.name for r in load_study(args.config).runs]
    if args.arms:
        unknown = sorted(set(args.arms) - set(names))
        if unknown:
            sys.exit(f"unknown arm(s) {unknown}; the study has {names}")
        names = [n for n in names if n in args.arms or n == args.baseline]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="parallel-study-") as tmp:
        pending = list(names)
        running: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        failed: list[str] = []
        while pending or running:
            while pending and len(running) < args.jobs:
                name = pending.pop(0)
                record = Path(tmp) / f"{name}.json"
                cmd = [
                    sys.executable, __file__, "--config", str(args.config), "--budget",
                    str(args.budget), "--eval-samples", str(args.eval_samples), "--evals",
                    str(args.evals), "--only", name, "--record", str(record),
                ]  # fmt: skip
                running.append((name, subprocess.Popen(cmd), record))
                print(f"[{time.perf_counter() - started:6.0f}s] started {name}", flush=True)
            time.sleep(1.0)
            for item in list(running):
                name, proc, _ = item
                if proc.poll() is not None:
                    running.remove(item)
                    if proc.returncode != 0:
                        failed.append(name)
                    print(
                        f"[{time.perf_counter() - started:6.0f}s] finished {name} "
                        f"(exit {proc.returncode})",
                        flush=True,
                    )
        records = [
            json.loads((Path(tmp) / f"{n}.json").read_text()) for n in names if n not in failed
        ]
    print()
    print(
        f"CIFAR-100, LeNet-5, {args.budget} samples per arm ({args.budget / 50_000:.2f} epochs), "
        f"test accuracy on the first {args.eval_samples} test images; baseline {args.baseline}"
    )
    print(table(records, args.baseline))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "config": str(args.config.relative_to(REPO)),
                "budget": args.budget,
                "eval_samples": args.eval_samples,
                "baseline": args.baseline,
                "wall_seconds": time.perf_counter() - started,
                "failed": failed,
                "arms": records,
            },
            indent=1,
        )
    )
    print(f"\nwrote {args.out} in {time.perf_counter() - started:.0f} s")
    if failed:
        sys.exit(f"arms failed: {failed}")


if __name__ == "__main__":
    main()
