"""Load test of ``fedkit serve`` with and without micro-batching, in one run.

Builds a bundle of the BiLSTM next-word model at its default size (``nextword_lstm``: embedding
96, 128 units per direction, 20-word window) over the 10,000-word ``sent140_nwp`` vocabulary
(seeded random weights: the cost of serving does not depend on training), serves it three
times as real ``fedkit serve`` processes, one torch thread each: ``--max-batch 1``
(``unbatched``), ``--max-batch N`` with the default 5 ms wait (``batched 5 ms``) and with no wait
(``batched 0 ms``). It loads all three at each level in turn, with the load generator in this
process (:func:`fedkit.serve.loadtest.compare`), and writes the table, the plot and the JSON
(``benchmarks/results/serve_loadtest/``). For reference it also times the model alone in this
process (no HTTP), in wall and CPU time: one call on 1 text against one on ``N`` texts.

    .venv/bin/python benchmarks/serve_loadtest.py [--concurrency 1,4,16,32,64] [--duration 5]
        [--max-batch 32]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("FEDKIT_DATA", str((REPO / ".." / "shared" / "data").resolve()))


def model_only(bundle: Path, max_batch: int, repeats: int = 20) -> dict[str, float]:
    """Requests per second of the predictor alone, at batch 1 and at ``max_batch``, by wall
    time and by this process's CPU time (best of five timings each)."""
    import time

    import torch

    from fedkit.serve.bundle import load_bundle
    from fedkit.serve.predictor import Predictor

    torch.set_num_threads(1)
    pred = Predictor(load_bundle(bundle))
    out = {}
    for n in (1, max_batch):
        texts, ks = ["i love my new phone and"] * n, [3] * n
        for _ in range(3):
            pred.predict(texts, ks)
        wall, cpu = [], []
        for _ in range(5):
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(repeats):
                pred.predict(texts, ks)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        out[f"batch_{n}_req_per_s"] = n * repeats / min(wall)
        out[f"batch_{n}_req_per_cpu_s"] = n * repeats / min(cpu)
    out["ratio"] = out[f"batch_{max_batch}_req_per_s"] / out["batch_1_req_per_s"]
    out["cpu_ratio"] = out[f"batch_{max_batch}_req_per_cpu_s"] / out["batch_1_req_per_cpu_s"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", default="1,4,16,32,64")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args()

    from fedkit.data.datasets import load_dataset
    from fedkit.models.spec import ModelSpec
    from fedkit.params import model_params
    from fedkit.serve.bundle import write_bundle
    from fedkit.serve.loadtest import compare, write_report

    words = load_dataset("sent140_nwp").words  # default options: 10,000 words, 20-word window
    assert words is not None
    spec = ModelSpec(name="nextword_lstm", num_classes=len(words) + 4, input_shape=(20,))
    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        write_bundle(bundle, params=model_params(spec.build()), spec=spec, words=words)
        load_before = os.getloadavg()
        alone = model_only(bundle, args.max_batch)
        common = ("--max-queue", "4096", "--threads", "1")
        b = str(args.max_batch)
        arms = {
            "unbatched": ("--max-batch", "1", *common),
            "batched 5 ms": ("--max-batch", b, "--max-wait-ms", "5", *common),
            "batched 0 ms": ("--max-batch", b, "--max-wait-ms", "0", *common),
        }
        runs = compare(bundle, arms, levels, duration=args.duration)
    meta = {
        "model": "nextword_lstm defaults (embedding 96, BiLSTM 128, window 20), 10,004 ids",
        "arms": {k: list(v) for k, v in arms.items()},
        "server_threads": 1,
        "duration_s": args.duration,
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "model_only": alone,
    }
    tmp_out = args.out / "serve_loadtest"
    lines = write_report(runs, tmp_out, meta=meta)
    print("\n".join(lines))
    n = args.max_batch
    print(
        f"\nmodel alone (no HTTP): {alone['batch_1_req_per_s']:.0f} req/s at batch 1, "
        f"{alone[f'batch_{n}_req_per_s']:.0f} at batch {n} (x{alone['ratio']:.1f}); per CPU "
        f"second {alone['batch_1_req_per_cpu_s']:.0f} and {alone[f'batch_{n}_req_per_cpu_s']:.0f}"
        f" (x{alone['cpu_ratio']:.1f}); load average {load_before[0]:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs"
    )
    print(f"\nwritten: {tmp_out}/loadtest.md, loadtest.png, loadtest.json")


if __name__ == "__main__":
    main()
