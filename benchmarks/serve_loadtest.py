"""Load test of ``fedkit serve`` with and without micro-batching, in one run.

Builds a bundle of the BiLSTM next-word model at its default size (``nextword_lstm``: embedding
96, 128 units per direction, 20-word window) over the 10,000-word ``sent140_nwp`` vocabulary
(seeded random weights: the cost of serving does not depend on training), serves it twice as
real ``fedkit serve`` processes (``--max-batch 1`` and ``--max-batch N``, one torch thread
each), runs the same closed-loop sweep against both (:mod:`fedkit.serve.loadtest`) and writes
the table, the plot and the JSON (``benchmarks/results/serve_loadtest.*``). For reference it also
times the model alone in this process (no HTTP): one call on 1 text against one on ``N`` texts.

    .venv/bin/python benchmarks/serve_loadtest.py [--concurrency 1,4,16,64] [--duration 5]
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
    """Requests per second of the predictor alone, at batch 1 and at ``max_batch``."""
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
        t0 = time.perf_counter()
        for _ in range(repeats):
            pred.predict(texts, ks)
        out[f"batch_{n}_req_per_s"] = n * repeats / (time.perf_counter() - t0)
    out["ratio"] = out[f"batch_{max_batch}_req_per_s"] / out["batch_1_req_per_s"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", default="1,4,16,64")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args()

    from fedkit.data.datasets import load_dataset
    from fedkit.models.spec import ModelSpec
    from fedkit.params import model_params
    from fedkit.serve.bundle import write_bundle
    from fedkit.serve.loadtest import serving, sweep, write_report

    words = load_dataset("sent140_nwp").words  # default options: 10,000 words, 20-word window
    assert words is not None
    spec = ModelSpec(name="nextword_lstm", num_classes=len(words) + 4, input_shape=(20,))
    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        write_bundle(bundle, params=model_params(spec.build()), spec=spec, words=words)
        alone = model_only(bundle, args.max_batch)
        runs = {}
        for label, batch in (("unbatched", 1), ("batched", args.max_batch)):
            flags = ("--max-batch", str(batch), "--max-queue", "4096", "--threads", "1")
            with serving(bundle, *flags) as (url, proc):
                runs[label] = sweep(url, levels, duration=args.duration, server_pid=proc.pid)
    meta = {
        "model": "nextword_lstm defaults (embedding 96, BiLSTM 128, window 20), 10,004 ids",
        "max_batch": args.max_batch,
        "max_wait_ms": 5,
        "server_threads": 1,
        "duration_s": args.duration,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "model_only": alone,
    }
    tmp_out = args.out / "serve_loadtest"
    lines = write_report(runs, tmp_out, meta=meta)
    print("\n".join(lines))
    print(
        f"\nmodel alone (no HTTP): {alone['batch_1_req_per_s']:.0f} req/s at batch 1, "
        f"{alone[f'batch_{args.max_batch}_req_per_s']:.0f} at batch {args.max_batch} "
        f"(x{alone['ratio']:.1f}); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(f"\nwritten: {tmp_out}/loadtest.md, loadtest.png, loadtest.json")


if __name__ == "__main__":
    main()
